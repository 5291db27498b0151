/*
 * Goal: freeing a merged log tree a bounded number of blocks at a time (btree_free.ts) frees
 * every block exactly once, never more than the bound per step, and what btreeFreeingBlocks
 * reports as still owned (what fsck counts) is exactly what the later steps free, so a step
 * resumed from any committed progress key (a failover) neither leaks nor double-frees. The
 * freeing item's codec (format_log.ts) round-trips, keeps its bytes and refuses damage.
 *
 * Method: fast-check builds trees of 1 to ~250 items with random leaf and parent fan-outs
 * (test/helpers/btree_build.ts: heights 1 to 7), sometimes made irregular (a parent whose
 * range ends past its last child's, which leaves it childless before its range is done), and
 * frees each with a random step bound from BTREE_FREE_MIN_BLOCKS up, through a transaction
 * whose freeRef only records (the tree stays readable, as the committed blocks do for a
 * server); after every step the recorded frees and the reported remainder must partition the
 * blocks the tree had. Seeds are fixed (override: FC_SEED=<n>).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import type { MetaTxn } from "../../src/core/block.js";
import { btreeWalkBlocks, type Item } from "../../src/core/btree.js";
import { keyAt, nrItems, setKeyAt } from "../../src/core/btree_block.js";
import {
  BTREE_FREE_MIN_BLOCKS, btreeFreeingBlocks, btreeFreeStep,
} from "../../src/core/btree_free.js";
import type { BlockRef, BtreeRoot } from "../../src/core/format.js";
import {
  decodeLogMergeFreeing, encodeLogMergeFreeing, LOG_MERGE_FREEING_SIZE, type LogMergeFreeing,
} from "../../src/core/format_log.js";
import { keyInc, makeKey, MAX_KEY, MIN_KEY, Zone } from "../../src/core/key.js";
import { Volume } from "../../src/core/volume.js";
import { Counters } from "../../src/util/counters.js";
import { isFsError } from "../../src/util/errno.js";
import { buildTree } from "../helpers/btree_build.js";
import { goldenIn } from "../helpers/golden.js";
import { makeAssertProperty } from "../helpers/property.js";
import { makeTestVolume, MiB } from "../helpers/volume.js";

const BASE_SEED = process.env.FC_SEED !== undefined ? Number(process.env.FC_SEED) : 0xf4ee;
const assertProperty = makeAssertProperty(BASE_SEED);

// even seconds only: keyInc of an item key is never another item's key
const key = (n: number): Buffer => makeKey(Zone.FS, 7n, 100, BigInt(2 * n));

interface Shape {
  items: number;
  leafFan: number[];
  parentFan: number[];
  irregular: boolean;
  budget: number;
}

const shapeArb: fc.Arbitrary<Shape> = fc.record({
  items: fc.integer({ min: 1, max: 250 }),
  leafFan: fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 8 }),
  parentFan: fc.array(fc.integer({ min: 2, max: 5 }), { minLength: 1, maxLength: 8 }),
  irregular: fc.boolean(),
  budget: fc.oneof(fc.constant(BTREE_FREE_MIN_BLOCKS),
    fc.integer({ min: BTREE_FREE_MIN_BLOCKS, max: 40 })),
});

/**
 * Moves the range end of every root child but the last just past its last key: the child's
 * own last child then ends before the child does (a parent left with no child).
 */
function makeIrregular(w: MetaTxn, root: BtreeRoot): void {
  if (root.height < 3) return;
  const buf = w.dirtyBuf(root.ref);
  for (let i = 0; i < nrItems(buf) - 1; i++) setKeyAt(buf, i, keyInc(keyAt(buf, i)));
}

let shared: Volume | null = null;

async function checkShape(s: Shape): Promise<void> {
  // one volume for every case: each builds its tree in a transaction it abandons
  shared ??= await Volume.open((await makeTestVolume(128 * MiB, 64 * MiB)).meta,
    { counters: new Counters() });
  const t = shared.begin();
  const items: Item[] = Array.from({ length: s.items }, (_, n) =>
    ({ key: key(n), val: Buffer.from(`v${n}`), seq: 1, flags: 0 }));
  const root = await buildTree(t.w, items, (level, i) =>
    level === 0 ? s.leafFan[i % s.leafFan.length]! : s.parentFan[i % s.parentFan.length]!);
  if (s.irregular) makeIrregular(t.w, root);
  const all = new Set<number>();
  await btreeWalkBlocks(t.w.cache, root, (ref) => { all.add(ref.blkno); });
  const freed = new Set<number>();
  let step: number[] = [];
  const w = { cache: t.w.cache, freeRef: (ref: BlockRef) => {
    step.push(ref.blkno);
    return Promise.resolve();
  } } as unknown as MetaTxn;
  const remaining = async (next: Buffer): Promise<Set<number>> => {
    const out = new Set<number>();
    await btreeFreeingBlocks(t.w.cache, root, next, (ref) => { out.add(ref.blkno); });
    return out;
  };
  let next: Buffer | null = MIN_KEY;
  for (let steps = 0; next !== null; steps++) {
    assert.ok(steps <= all.size, "freeing makes progress");
    const before = await remaining(next);
    step = [];
    const r = await btreeFreeStep(w, root, next, s.budget);
    assert.equal(r.freed, step.length, "freed count");
    assert.ok(step.length >= 1 && step.length <= s.budget, `step freed ${step.length}`);
    for (const b of step) {
      assert.ok(all.has(b) && !freed.has(b), `block ${b} freed once, and is the tree's`);
      assert.ok(before.has(b), `block ${b} was still owned before its step`);
      freed.add(b);
    }
    next = r.next;
    const after = next === null ? new Set<number>() : await remaining(next);
    assert.equal(after.size + freed.size, all.size, "owned and freed partition the tree");
    for (const b of after) assert.ok(!freed.has(b), `block ${b} both freed and owned`);
  }
  assert.equal(freed.size, all.size, "every block freed");
  t.abandon();
}

test("bounded freeing frees every block once; the remainder is what fsck counts", async () => {
  await assertProperty("btree free", BASE_SEED, shapeArb, checkShape, { numRuns: 60 });
});

test("a step never frees more than its bound, even with the tallest victim chain", async () => {
  // 4-child parents over one-item leaves: the right spine ends at MAX_KEY at every level
  await checkShape({ items: 200, leafFan: [1], parentFan: [4], irregular: false,
    budget: BTREE_FREE_MIN_BLOCKS });
  await checkShape({ items: 200, leafFan: [1], parentFan: [3], irregular: true,
    budget: BTREE_FREE_MIN_BLOCKS });
});

const golden = goldenIn("merge");

test("log merge freeing item: golden bytes, round trip, validation", () => {
  const f: LogMergeFreeing = { root: { ref: { blkno: 4242, seq: 99_000 }, height: 3 },
    rid: 0xfeed_0000_0000_00a1n, nr: 7, next: makeKey(Zone.FS, 0x1234n, 8, 0x55n, 7n, 3) };
  const b = encodeLogMergeFreeing(f);
  assert.equal(b.length, LOG_MERGE_FREEING_SIZE);
  golden("freeing", b);
  assert.deepEqual(decodeLogMergeFreeing(b), f);
  const atMax = { ...f, next: MAX_KEY };
  assert.deepEqual(decodeLogMergeFreeing(encodeLogMergeFreeing(atMax)), atMax);
  const eio = (d: Buffer, what: string): void => {
    assert.throws(() => decodeLogMergeFreeing(d), (e: unknown) => isFsError(e, "EIO"), what);
  };
  eio(b.subarray(0, LOG_MERGE_FREEING_SIZE - 1), "short");
  eio(encodeLogMergeFreeing({ ...f, root: { ref: { blkno: 0, seq: 0 }, height: 0 } }), "empty root");
  eio(encodeLogMergeFreeing({ ...f, rid: 0n }), "rid 0");
  const pad = Buffer.from(b);
  pad[70] = 1;
  eio(pad, "padding");
});
