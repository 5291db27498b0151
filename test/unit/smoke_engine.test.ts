/* Goal: a first end-to-end check of mkfs, btree inserts across commits and reopen. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { btreeInsert, btreeLookup, btreeDelete, btreeCollect } from "../../src/core/btree.js";
import { makeKey, MIN_KEY, MAX_KEY } from "../../src/core/key.js";
import { makeTestVolume, openTestVolume } from "../helpers/volume.js";

test("insert 20000 items over commits, reopen, read back", async () => {
  const d = await makeTestVolume();
  let vol = await openTestVolume(d);
  for (let c = 0; c < 4; c++) {
    const t = vol.begin();
    for (let i = 0; i < 5000; i++) {
      const n = c * 5000 + i;
      await btreeInsert(t.w, t.sb.fsRoot, makeKey(16, BigInt(n * 7919 % 100003), 4), Buffer.alloc(n % 100, n & 255));
    }
    await t.commit();
  }
  vol = await openTestVolume(d);
  const all = await btreeCollect(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY);
  assert.equal(all.length, 20002);
  const t = vol.begin();
  for (let n = 0; n < 20000; n += 2) {
    await btreeDelete(t.w, t.sb.fsRoot, makeKey(16, BigInt(n * 7919 % 100003), 4));
  }
  await t.commit();
  vol = await openTestVolume(d);
  const it = await btreeLookup(vol.cache, vol.sb.fsRoot, makeKey(16, BigInt(1 * 7919 % 100003), 4));
  assert.ok(it);
  assert.equal((await btreeCollect(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY)).length, 10002);
  console.log(vol.sb.fsRoot, vol.sb.serverMetaAvail[0].totalNr, vol.sb.serverMetaFreed[1].totalNr, vol.sb.metaAlloc.map(a=>a.totalLen));
});

test("fsck of a fresh and of a churned volume is clean; print runs", async () => {
  const { fsckVolume } = await import("../../src/core/fsck.js");
  const { printVolume } = await import("../../src/core/print.js");
  const d = await makeTestVolume();
  let r = await fsckVolume(d.meta, d.data);
  assert.deepEqual(r.problems, []);
  const vol = await openTestVolume(d);
  for (let c = 0; c < 3; c++) {
    const t = vol.begin();
    for (let i = 0; i < 3000; i++) await btreeInsert(t.w, t.sb.fsRoot, makeKey(16, BigInt(c * 100000 + i), 200), Buffer.alloc(300));
    for (let i = 0; i < 1000; i++) await btreeDelete(t.w, t.sb.fsRoot, makeKey(16, BigInt(c * 100000 + i * 3), 200));
    await t.commit();
  }
  r = await fsckVolume(d.meta, d.data);
  assert.deepEqual(r.problems, []);
  const lines: string[] = [];
  assert.equal(await printVolume(d.meta, (l) => lines.push(l), { skipLikelyHuge: true }), null);
  console.log(lines.slice(0, 40).join("\n"));
  console.log(r);
});
