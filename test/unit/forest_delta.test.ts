/*
 * Goal: forest reads combine delta items (.totl. {total, count}) across fs_root and the log
 * trees instead of taking the newest version, and never count a finalized tree's deltas
 * twice while a merge round has already put them into fs_root: every case of upstream's
 * scoutfs_totl_merge_resolve (fs only; open logs always added; a finalized group added when
 * newer than fs_root's item, skipped once merged; without an fs_root item, added when
 * creating, skipped when its merge deleted the item) plus two finalized groups of which only
 * the first was merged, and sums of zero reading as absent. Point reads (forestNewest,
 * forestLookup), range reads both ways and forestNext/forestPrev agree.
 *
 * Method: each case writes fs_root items and log trees (open or finalized with a
 * finalize_seq, with blooms) on a simulated volume in one commit, then reads one key of each
 * case every way and compares with the expected {total, count} or absence.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { btreeInsert, btreeInsertList, type Item, ITEM_DELTA } from "../../src/core/btree.js";
import { decodeDelta, encodeDelta } from "../../src/core/btree_merge.js";
import {
  bloomAdd, type ForestRoots, forestLookup, forestNewest, forestNext, forestPrev, forestRange,
  forestRangeBack, lockStartFor,
} from "../../src/core/forest.js";
import {
  emptyLogTrees, encodeLogTrees, LOG_TREES_FLAG_FINALIZED,
} from "../../src/core/format_log.js";
import { logTreesKey, makeKey, MAX_KEY, MIN_KEY, Zone } from "../../src/core/key.js";
import { Volume, type VolumeTxn } from "../../src/core/volume.js";
import { Counters } from "../../src/util/counters.js";
import { makeTestVolume, MiB } from "../helpers/volume.js";

const totlKey = (n: number): Buffer => makeKey(Zone.XATTR_TOTL, 1n, 0, 2n, BigInt(n));
const delta = (n: number, total: number, count: number, seq: number): Item =>
  ({ key: totlKey(n), val: encodeDelta(BigInt(total), BigInt(count)), seq, flags: ITEM_DELTA });

/** A log tree: open (finalizeSeq 0) or finalized with that finalize_seq. */
interface Log {
  finalizeSeq: number;
  items: Item[];
}

interface Case {
  what: string;
  fs: Item[];
  logs: Log[];
  /** [total, count], or null for an absent key. */
  want: [number, number] | null;
}

// key n of each case is n: cases are read together from one forest
const CASES: Case[] = [
  { what: "open logs add up", fs: [], want: [12, 2],
    logs: [{ finalizeSeq: 0, items: [delta(0, 5, 1, 10)] }, { finalizeSeq: 0, items: [delta(0, 7, 1, 11)] }] },
  { what: "fs_root alone", fs: [delta(1, 9, 3, 4)], logs: [], want: [9, 3] },
  { what: "an unmerged finalized group is added to fs_root", fs: [delta(2, 10, 2, 5)], want: [13, 3],
    logs: [{ finalizeSeq: 20, items: [delta(2, 3, 1, 12)] }] },
  { what: "a merged finalized group is not added again; open logs are", fs: [delta(3, 13, 3, 12)],
    want: [14, 4], logs: [{ finalizeSeq: 20, items: [delta(3, 3, 1, 12)] },
      { finalizeSeq: 0, items: [delta(3, 1, 1, 30)] }] },
  { what: "a merge that deleted the fs_root item (count went down)", fs: [], want: [2, 1],
    logs: [{ finalizeSeq: 20, items: [delta(4, -5, -1, 12)] }, { finalizeSeq: 0, items: [delta(4, 2, 1, 30)] }] },
  { what: "a finalized group creating the key", fs: [], want: [4, 1],
    logs: [{ finalizeSeq: 20, items: [delta(5, 4, 1, 12)] }] },
  { what: "two finalized groups, the first merged", fs: [delta(6, 8, 2, 15)], want: [11, 3],
    logs: [{ finalizeSeq: 20, items: [delta(6, 5, 1, 15)] }, { finalizeSeq: 20, items: [delta(6, 3, 1, 14)] },
      { finalizeSeq: 40, items: [delta(6, 3, 1, 35)] }] },
  { what: "deltas summing to zero are absent", fs: [], want: null,
    logs: [{ finalizeSeq: 0, items: [delta(7, 5, 1, 10)] }, { finalizeSeq: 0, items: [delta(7, -5, -1, 11)] }] },
  { what: "a merged group that deleted the item, alone", fs: [], want: null,
    logs: [{ finalizeSeq: 20, items: [delta(8, -6, -2, 12)] }] },
];

async function writeLog(t: VolumeTxn, nr: number, log: Log): Promise<void> {
  const lt = emptyLogTrees(BigInt(0x200 + nr), 1);
  const items = [...log.items].sort((a, b) => Buffer.compare(a.key, b.key));
  await btreeInsertList(t.w, lt.itemRoot, items);
  lt.bloomRef = await bloomAdd(t.w, lt.bloomRef, [lockStartFor(totlKey(0))]);
  if (log.finalizeSeq !== 0) {
    lt.flags |= LOG_TREES_FLAG_FINALIZED;
    lt.finalizeSeq = log.finalizeSeq;
  }
  await btreeInsert(t.w, t.sb.logsRoot, logTreesKey(lt.rid, 1n), encodeLogTrees(lt));
}

async function build(): Promise<{ vol: Volume; roots: ForestRoots }> {
  const disks = await makeTestVolume(128 * MiB, 64 * MiB);
  const vol = await Volume.open(disks.meta, { counters: new Counters() });
  const t = vol.begin();
  await btreeInsertList(t.w, t.sb.fsRoot, CASES.flatMap((c) => c.fs));
  // log tree i holds the i-th log of every case that has one
  const width = Math.max(...CASES.map((c) => c.logs.length));
  let nr = 0;
  for (let i = 0; i < width; i++) {
    for (const finalizeSeq of [0, 20, 40]) {
      const items = CASES.flatMap((c) => c.logs[i]?.finalizeSeq === finalizeSeq ? c.logs[i]!.items : []);
      if (items.length > 0) await writeLog(t, nr++, { finalizeSeq, items });
    }
  }
  await t.commit();
  return { vol, roots: { fsRoot: vol.sb.fsRoot, logsRoot: vol.sb.logsRoot } };
}

const show = (v: Buffer | null): string => {
  if (v === null) return "absent";
  const d = decodeDelta(v);
  return `${d.total}/${d.count}`;
};
const want = (c: Case): string => (c.want === null ? "absent" : `${c.want[0]}/${c.want[1]}`);

test("delta items read as their combined sum, merged finalized groups counted once", async () => {
  const { vol, roots } = await build();
  const start = totlKey(0);
  const end = totlKey(CASES.length - 1);
  const fwd = await forestRange(vol.cache, roots, MIN_KEY, MAX_KEY, 100);
  const back = await forestRangeBack(vol.cache, roots, MIN_KEY, MAX_KEY, 100);
  for (const [n, c] of CASES.entries()) {
    const k = totlKey(n);
    assert.equal(show(await forestLookup(vol.cache, roots, k)), want(c), `lookup: ${c.what}`);
    const newest = await forestNewest(vol.cache, roots, k);
    assert.equal(show(newest?.val ?? null), want(c), `newest: ${c.what}`);
    for (const [name, items] of [["range", fwd.items], ["range back", back.items]] as const) {
      const it = items.find((x) => x.key.equals(k));
      assert.equal(show(it?.val ?? null), want(c), `${name}: ${c.what}`);
      if (it) assert.equal(it.flags, ITEM_DELTA, `${name}: a delta item`);
    }
    const next = await forestNext(vol.cache, roots, k, end);
    const prev = await forestPrev(vol.cache, roots, k, start);
    if (c.want !== null) {
      assert.ok(next?.key.equals(k), `next lands on ${c.what}`);
      assert.equal(show(next!.val), want(c), `next: ${c.what}`);
      assert.ok(prev?.key.equals(k), `prev lands on ${c.what}`);
      assert.equal(show(prev!.val), want(c), `prev: ${c.what}`);
    } else {
      assert.ok(!next?.key.equals(k) && !prev?.key.equals(k), `next/prev skip ${c.what}`);
    }
  }
});
