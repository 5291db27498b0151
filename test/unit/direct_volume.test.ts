/*
 * Goal: the whole engine works on real devices opened with O_DIRECT (the mode for shared block
 * devices across hosts, where the page cache must be bypassed): mkfs, transactions, commits,
 * reopen, fsck; and a volume written buffered reads back identically through O_DIRECT.
 *
 * Method: sparse files in /var/tmp (disk, not tmpfs: tmpfs refuses O_DIRECT), devices opened
 * with {direct: true}; every buffer the engine hands to the device comes from allocBuffer(),
 * so a misaligned one would bounce (counted) or fail.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { mkdtemp, open, rm, truncate } from "node:fs/promises";
import path from "node:path";
import { btreeCollect, btreeInsert } from "../../src/core/btree.js";
import { fsckVolume } from "../../src/core/fsck.js";
import { makeKey, MAX_KEY, MIN_KEY } from "../../src/core/key.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { Volume } from "../../src/core/volume.js";
import { openRealBlockDevice, type RealBlockDevice } from "../../src/env/real/blockdev.js";
import { SimDisk } from "../../src/sim/disk.js";
import { mkfsParams } from "../helpers/volume.js";

async function sparse(dir: string, name: string, bytes: number): Promise<string> {
  const f = path.join(dir, name);
  await (await open(f, "w")).close();
  await truncate(f, bytes);
  return f;
}

test("mkfs, commits, reopen and fsck on O_DIRECT devices", async (t) => {
  const dir = await mkdtemp(path.join("/var/tmp", "scoutfs-direct-"));
  const devs: RealBlockDevice[] = [];
  try {
    const metaPath = await sparse(dir, "meta", 256 * 1024 * 1024);
    const dataPath = await sparse(dir, "data", 1024 * 1024 * 1024);
    let meta: RealBlockDevice;
    try {
      meta = await openRealBlockDevice(metaPath, { direct: true });
    } catch {
      t.skip("this filesystem refuses O_DIRECT");
      return;
    }
    const data = await openRealBlockDevice(dataPath, { direct: true });
    devs.push(meta, data);
    await makeVolume({ ...mkfsParams(new SimDisk("x", 1), new SimDisk("y", 1)), meta, data,
      totalMetaBlocks: 4096, totalDataBlocks: 262144 });
    let vol = await Volume.open(meta);
    for (let c = 0; c < 3; c++) {
      const txn = vol.begin();
      for (let i = 0; i < 4000; i++) {
        await btreeInsert(txn.w, txn.sb.fsRoot, makeKey(16, BigInt(2000 + c * 4000 + i), 200),
          Buffer.alloc(i % 300, i & 0xff));
      }
      await txn.commit();
    }
    vol = await Volume.open(meta);
    const items = await btreeCollect(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY);
    assert.equal(items.length, 12002);
    assert.deepEqual((await fsckVolume(meta, data)).problems, []);
    // the same bytes through the page cache
    const buffered = await openRealBlockDevice(metaPath, { readOnly: true });
    devs.push(buffered);
    const bvol = await Volume.open(buffered);
    const again = await btreeCollect(bvol.cache, bvol.sb.fsRoot, MIN_KEY, MAX_KEY);
    assert.deepEqual(again.map((i) => i.val), items.map((i) => i.val));
    assert.equal(meta.counters.bounced, 0, "the engine's buffers are all aligned");
  } finally {
    for (const d of devs) await d.close();
    await rm(dir, { recursive: true, force: true });
  }
});
