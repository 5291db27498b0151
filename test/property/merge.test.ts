/*
 * Goal: show that btreeMerge (src/core/btree_merge.ts) merges read-only input trees into a
 * destination exactly as specified, including when it is bounded and resumed across
 * commits, abandoned transactions and reopens, and that it touches nothing outside the
 * merged range and never modifies its inputs.
 *
 * Method: fast-check builds 0..5 input trees over a shared key universe (so keys collide
 * across inputs) whose items carry distinct seqs: ordinary items, tombstones (ITEM_DELETION)
 * and, in a separate key zone, DELTA items (encodeDelta(total, count) with small values so
 * sums often cancel), plus a destination (fs_root) whose items have odd seqs below, between
 * and above the inputs' even ones (items newer than every input must survive) and existing
 * delta totals. The merge runs over the whole key
 * space or a random subrange, with random maxItems bounds (and sometimes maxDirtyBlocks),
 * resuming from `next` until null; between calls it continues in the same transaction,
 * commits (the destination and the resume key become durable together), abandons or reopens
 * the volume (both roll back to the last committed destination and resume key). A model
 * applies, key by key in order: for delta keys, the sum of the input deltas and the
 * destination's delta, with the greatest seq, deleted when total and count are both zero;
 * otherwise the input version with the greatest seq wins unless the destination's item is
 * newer, and a winning tombstone deletes (dropTombstones) or is stored as a tombstone. Each
 * call must report exactly the keys it applied and the next key to resume from; after each
 * commit, abandon and reopen the destination must equal the model; at the end the inputs
 * must be unchanged, and sometimes the merge is repeated (ordinary keys must not change).
 * Seeds are fixed (override: FC_SEED=<n>) and printed on failure.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { btreeCollect, btreeInsert, type Item } from "../../src/core/btree.js";
import { ITEM_DELETION, ITEM_DELTA } from "../../src/core/btree_block.js";
import { btreeMerge, decodeDelta, encodeDelta } from "../../src/core/btree_merge.js";
import { type BtreeRoot, emptyRoot } from "../../src/core/format.js";
import { keyDec, keyInc, makeKey, MAX_KEY, MIN_KEY, Zone } from "../../src/core/key.js";
import { Volume, type VolumeTxn } from "../../src/core/volume.js";
import { Counters } from "../../src/util/counters.js";
import { makeTestVolume, type TestDisks } from "../helpers/volume.js";
import { makeAssertProperty } from "../helpers/property.js";

const BASE_SEED = process.env.FC_SEED !== undefined ? Number(process.env.FC_SEED) : 0x3e76e;

const assertProperty = makeAssertProperty(BASE_SEED);

const hex = (k: Buffer): string => k.toString("hex");

function describe(e: Item | undefined): string {
  if (!e) return "none";
  const v = (e.flags & ITEM_DELTA) !== 0 && e.val.length === 16
    ? `delta ${JSON.stringify(decodeDelta(e.val), (_k, x: unknown) => (typeof x === "bigint" ? x.toString() : x))}`
    : `len ${e.val.length}`;
  return `${hex(e.key)} ${v} seq ${e.seq} flags ${e.flags}`;
}

function sameItem(a: Item | undefined, b: Item | undefined): boolean {
  if (!a || !b) return !a && !b;
  return a.key.equals(b.key) && a.val.equals(b.val) && a.seq === b.seq && a.flags === b.flags;
}

/** Compares a tree's items with a model map (any order). */
function assertTree(actual: Item[], expect: Map<string, Item>, what: string): void {
  const want = [...expect.keys()].sort().map((k) => expect.get(k)!);
  const n = Math.min(actual.length, want.length);
  for (let i = 0; i < n; i++) {
    if (!sameItem(actual[i], want[i])) {
      assert.fail(`${what}: item ${i} is ${describe(actual[i])}, model has ${describe(want[i])}`);
    }
  }
  if (actual.length !== want.length) {
    assert.fail(`${what}: ${actual.length} items, model has ${want.length}; first extra ${describe(actual[n] ?? want[n])}`);
  }
}

// ---------------------------------------------------------------------------------------
// The key universe: index order is key order; delta keys (.totl.-like zone) sort first.

function keyOf(idx: number, deltaKeys: number): Buffer {
  return idx < deltaKeys ? makeKey(Zone.XATTR_TOTL, 0n, 0, BigInt(idx), 0n)
    : makeKey(Zone.FS, BigInt(2 + Math.floor(idx / 500)), 8, BigInt(idx % 500));
}

const PATTERN = Buffer.from(Array.from({ length: 256 + 897 }, (_, i) => (i * 7) & 255));
const makeVal = (len: number, fill: number): Buffer => PATTERN.subarray(fill & 255, (fill & 255) + len);

const lenArb = fc.oneof(
  { arbitrary: fc.constant(0), weight: 2 },
  { arbitrary: fc.integer({ min: 1, max: 64 }), weight: 4 },
  { arbitrary: fc.integer({ min: 65, max: 500 }), weight: 2 },
  { arbitrary: fc.integer({ min: 700, max: 896 }), weight: 2 },
);

interface InSpec {
  k: number;
  tomb: boolean;
  len: number;
  fill: number;
  total: number;
  count: number;
  rank: number;
}
const inSpecArb: fc.Arbitrary<InSpec> = fc.record({
  k: fc.nat(), tomb: fc.nat({ max: 3 }).map((x) => x === 0), len: lenArb, fill: fc.nat({ max: 255 }),
  total: fc.integer({ min: -3, max: 3 }), count: fc.integer({ min: -2, max: 2 }), rank: fc.nat(),
});

interface DestSpec {
  k: number;
  /** Seq just above or below the newest input version of the key (the boundary). */
  near: boolean;
  newer: boolean;
  tomb: boolean;
  len: number;
  fill: number;
  total: number;
  count: number;
  r: number;
}
const destSpecArb: fc.Arbitrary<DestSpec> = fc.record({
  k: fc.nat(), near: fc.nat({ max: 2 }).map((x) => x === 0), newer: fc.boolean(), tomb: fc.boolean(), len: lenArb, fill: fc.nat({ max: 255 }),
  total: fc.integer({ min: -4, max: 4 }), count: fc.integer({ min: -3, max: 3 }), r: fc.nat(),
});

const itemsArb = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T[]> => fc.oneof(
  { weight: 3, arbitrary: fc.array(arb, { maxLength: 60, size: "max" }) },
  { weight: 1, arbitrary: fc.array(arb, { minLength: 300, maxLength: 1000, size: "max" }) },
);

type Action = "continue" | "commit" | "abandon" | "reopen";

interface MergeCase {
  universe: number;
  deltaPct: number;
  inputs: InSpec[][];
  dest: DestSpec[];
  drop: boolean;
  range: { a: number; b: number; adjA: number; adjB: number } | null;
  bounds: number[];
  dirtyLimit: number | null;
  actions: Action[];
  repeat: boolean;
}

const caseArb: fc.Arbitrary<MergeCase> = fc.record({
  universe: fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 41, max: 3000 })),
  deltaPct: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 60 }), fc.constant(100)),
  inputs: fc.array(itemsArb(inSpecArb), { minLength: 0, maxLength: 5, size: "max" }),
  dest: itemsArb(destSpecArb),
  drop: fc.boolean(),
  range: fc.option(fc.record({ a: fc.nat(), b: fc.nat(), adjA: fc.integer({ min: -1, max: 1 }),
    adjB: fc.integer({ min: -1, max: 1 }) }), { freq: 3 }),
  bounds: fc.array(fc.oneof(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 6, max: 300 })),
    { minLength: 1, maxLength: 6 }),
  dirtyLimit: fc.option(fc.integer({ min: 1, max: 40 }), { freq: 3 }),
  actions: fc.array(fc.constantFrom<Action>("continue", "continue", "commit", "commit", "abandon", "reopen"),
    { minLength: 1, maxLength: 8 }),
  repeat: fc.boolean(),
});

// ---------------------------------------------------------------------------------------
// Building the trees and the model.

interface Built {
  deltaKeys: number;
  inputs: Map<string, Item>[];
  /** Every key present in some input, sorted. */
  union: string[];
  dest: Map<string, Item>;
}

function buildModel(c: MergeCase, mkfsItems: Item[]): Built {
  const deltaKeys = Math.floor((c.universe * c.deltaPct) / 100);
  // distinct even input seqs 2000, 2002, ... in the order of the generated ranks; destination
  // seqs are odd (never equal to an input's), below, between or above the input seqs
  const all: { s: InSpec; input: number; i: number }[] = [];
  c.inputs.forEach((items, input) => items.forEach((s, i) => all.push({ s, input, i })));
  all.sort((x, y) => x.s.rank - y.s.rank || x.input - y.input || x.i - y.i);
  const seqOf = new Map(all.map((x, j) => [x.s, 2 * (1000 + j)]));
  const maxInputSeq = 2 * (1000 + all.length);
  const inputs = c.inputs.map((items) => {
    const m = new Map<string, Item>();
    for (const s of items) {
      const idx = s.k % c.universe;
      const key = keyOf(idx, deltaKeys);
      const seq = seqOf.get(s)!;
      const it: Item = idx < deltaKeys
        ? { key, val: encodeDelta(BigInt(s.total), BigInt(s.count)), seq, flags: ITEM_DELTA }
        : s.tomb ? { key, val: Buffer.alloc(0), seq, flags: ITEM_DELETION }
          : { key, val: makeVal(s.len, s.fill), seq, flags: 0 };
      m.set(hex(key), it);
    }
    return m;
  });
  const union = [...new Set(inputs.flatMap((m) => [...m.keys()]))].sort();
  const dest = new Map<string, Item>(mkfsItems.map((it) => [hex(it.key), it]));
  for (const s of c.dest) {
    const idx = s.k % c.universe;
    const key = keyOf(idx, deltaKeys);
    const newest = Math.max(0, ...inputs.map((m) => m.get(hex(key))?.seq ?? 0));
    const seq = s.near && newest > 0 ? newest + (s.newer ? 1 : -1)
      : s.newer ? maxInputSeq + 1 + 2 * (s.r % 500) : 1 + 2 * (s.r % Math.floor(maxInputSeq / 2));
    const it: Item = idx < deltaKeys
      ? { key, val: encodeDelta(BigInt(s.total), BigInt(s.count)), seq, flags: ITEM_DELTA }
      : { key, val: s.tomb ? Buffer.alloc(0) : makeVal(s.len, s.fill), seq, flags: s.tomb ? ITEM_DELETION : 0 };
    dest.set(hex(key), it);
  }
  return { deltaKeys, inputs, union, dest };
}

/** The model of merging one key into dest. */
function applyKeyModel(dest: Map<string, Item>, versions: Item[], drop: boolean): void {
  const key = versions[0]!.key;
  const h = hex(key);
  const existing = dest.get(h);
  if (versions.every((v) => (v.flags & ITEM_DELTA) !== 0)) {
    let total = 0n;
    let count = 0n;
    for (const v of versions) {
      const d = decodeDelta(v.val);
      total += d.total;
      count += d.count;
    }
    if (existing && (existing.flags & ITEM_DELTA) !== 0) {
      const d = decodeDelta(existing.val);
      total += d.total;
      count += d.count;
    }
    if (total === 0n && count === 0n) {
      dest.delete(h);
    } else {
      const seq = Math.max(...versions.map((v) => v.seq), existing?.seq ?? 0);
      dest.set(h, { key, val: encodeDelta(total, count), seq, flags: ITEM_DELTA });
    }
    return;
  }
  const win = versions.reduce((a, b) => (b.seq > a.seq ? b : a));
  if (existing && existing.seq > win.seq) return;
  if ((win.flags & ITEM_DELETION) !== 0 && drop) {
    dest.delete(h);
    return;
  }
  dest.set(h, win);
}

async function buildTree(t: VolumeTxn, root: BtreeRoot, items: Iterable<Item>): Promise<void> {
  for (const it of items) await btreeInsert(t.w, root, it.key, it.val, { seq: it.seq, flags: it.flags });
}

function lowerBound(sorted: string[], h: string): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! < h) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

interface RunStats {
  calls: number;
  commits: number;
  abandons: number;
  reopens: number;
  keys: number;
  multiLeafInputs: number;
}

async function runCase(disks: TestDisks, c: MergeCase, stats: RunStats): Promise<void> {
  let vol = await Volume.open(disks.meta);
  const mkfsItems = await btreeCollect(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY);
  const b = buildModel(c, mkfsItems);
  // build the inputs (held here: committed blocks no super references, so nothing reuses
  // them) and the destination fs_root in one transaction
  let t: VolumeTxn | null = vol.begin();
  const inputRoots = b.inputs.map(() => emptyRoot());
  for (const [i, m] of b.inputs.entries()) {
    await buildTree(t, inputRoots[i]!, [...m.keys()].sort().map((k) => m.get(k)!));
  }
  await buildTree(t, t.sb.fsRoot, [...b.dest.values()].filter((it) => !mkfsItems.some((x) => x.key.equals(it.key))));
  await t.commit();
  t = null;
  stats.multiLeafInputs += inputRoots.filter((r) => r.height > 1).length;
  assertTree(await btreeCollect(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY), b.dest, "destination as built");

  // the range
  let start = MIN_KEY;
  let end = MAX_KEY;
  if (c.range) {
    const lo = Math.min(c.range.a, c.range.b) % c.universe;
    const hi = Math.max(lo, Math.max(c.range.a, c.range.b) % c.universe);
    start = keyOf(lo, b.deltaKeys);
    end = keyOf(hi, b.deltaKeys);
    if (c.range.adjA < 0) start = keyDec(start);
    if (c.range.adjA > 0) start = keyInc(start);
    if (c.range.adjB < 0) end = keyDec(end);
    if (c.range.adjB > 0) end = keyInc(end);
    if (Buffer.compare(start, end) > 0) [start, end] = [end, start];
  }
  const outside = (h: string): boolean => h < hex(start) || h > hex(end);
  const before = new Map(b.dest);

  const mergeAll = async (): Promise<void> => {
    let model = new Map(b.dest);
    let committedModel = new Map(model);
    let resume: Buffer | null = start;
    let committedResume: Buffer | null = start;
    let call = 0;
    let rollbacks = 0;
    const rollback = (): void => {
      model = new Map(committedModel);
      resume = committedResume;
      rollbacks++;
    };
    const verify = async (what: string): Promise<void> => {
      assertTree(await btreeCollect(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY), committedModel, what);
    };
    while (committedResume !== null) {
      assert.ok(call < 5000, "the merge terminates");
      if (resume !== null) {
        const maxItems = c.bounds[call % c.bounds.length]!;
        t ??= vol.begin();
        const r = await btreeMerge(t.w, t.sb.fsRoot, inputRoots, resume, end,
          c.dirtyLimit === null ? { dropTombstones: c.drop, maxItems }
            : { dropTombstones: c.drop, maxItems, maxDirtyBlocks: c.dirtyLimit });
        stats.calls++;
        const first = lowerBound(b.union, hex(resume));
        let last = first;
        while (last < b.union.length && b.union[last]! <= hex(end)) last++;
        const remaining = last - first;
        const what: string = `call ${call} from ${hex(resume)} maxItems ${maxItems}`;
        assert.ok(r.keys <= maxItems && r.keys <= remaining, `${what}: applied ${r.keys} of ${remaining} keys`);
        if (c.dirtyLimit === null) assert.equal(r.keys, Math.min(maxItems, remaining), `${what}: keys applied`);
        const wantNext = r.keys < remaining ? b.union[first + r.keys]! : null;
        assert.equal(r.next === null ? null : hex(r.next), wantNext, `${what}: next`);
        for (let i = first; i < first + r.keys; i++) {
          const h = b.union[i]!;
          applyKeyModel(model, b.inputs.flatMap((m) => m.get(h) ?? []), c.drop);
        }
        stats.keys += r.keys;
        resume = r.next;
        if (r.keys === 0 && r.next !== null) {
          // the transaction holds maxDirtyBlocks already: commit to make progress
          assert.ok(c.dirtyLimit !== null && t.w.dirtyCount >= c.dirtyLimit, `${what}: no progress`);
        }
      }
      let action = c.actions[call % c.actions.length]!;
      call++;
      if ((action === "abandon" || action === "reopen") && rollbacks >= 4) action = "commit";
      const full = t !== null && c.dirtyLimit !== null && t.w.dirtyCount >= c.dirtyLimit;
      if (action === "continue" && (resume === null || full)) action = "commit";
      if (action === "commit") {
        await (t ?? vol.begin()).commit();
        t = null;
        committedModel = new Map(model);
        committedResume = resume;
        stats.commits++;
        // every third commit and the last one (a small maxDirtyBlocks makes many commits)
        if (stats.commits % 3 === 0 || resume === null) await verify(`after commit ${call}`);
      } else if (action === "abandon") {
        (t ?? vol.begin()).abandon();
        t = null;
        rollback();
        stats.abandons++;
        await verify(`after abandon ${call}`);
      } else if (action === "reopen") {
        t = null;
        vol = await Volume.open(disks.meta);
        rollback();
        stats.reopens++;
        await verify(`after reopen ${call}`);
      }
    }
    b.dest = committedModel;
  };

  await mergeAll();
  // nothing outside [start, end] changed
  const after = await btreeCollect(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY);
  const outsideAfter = new Map(after.filter((it) => outside(hex(it.key))).map((it) => [hex(it.key), it]));
  assertTree([...outsideAfter.keys()].sort().map((k) => outsideAfter.get(k)!),
    new Map([...before].filter(([h]) => outside(h))), "destination outside the merged range");
  // the inputs are read-only
  for (const [i, root] of inputRoots.entries()) {
    assertTree(await btreeCollect(vol.cache, root, MIN_KEY, MAX_KEY), b.inputs[i]!, `input ${i} after the merge`);
  }
  if (c.repeat) {
    // merging the same inputs again: ordinary keys stay as they are, deltas add up again
    const ordinary = (m: Map<string, Item>): Map<string, Item> =>
      new Map([...m].filter(([, it]) => (it.flags & ITEM_DELTA) === 0));
    const once = ordinary(b.dest);
    await mergeAll();
    assertTree([...ordinary(b.dest).keys()].sort().map((k) => b.dest.get(k)!), once,
      "ordinary items after merging the same inputs again");
  }
}

test("btreeMerge vs model: resumed, bounded, across commits, abandons and reopens", async () => {
  const disks = await makeTestVolume();
  const stats: RunStats = { calls: 0, commits: 0, abandons: 0, reopens: 0, keys: 0, multiLeafInputs: 0 };
  await assertProperty("merge", BASE_SEED, caseArb, async (c) => {
    // every case starts from the same freshly made volume
    await runCase({ meta: disks.meta.snapshot(), data: disks.data }, c, stats);
  }, { numRuns: 300 });
  console.log(`merge: ${JSON.stringify(stats)}`);
  assert.ok(stats.abandons > 0 && stats.reopens > 0 && stats.commits > 0 && stats.multiLeafInputs > 0);
});

test("btreeMerge: a delta summing to zero deletes, a newer destination item survives, tombstones", async () => {
  const disks = await makeTestVolume();
  const vol = await Volume.open(disks.meta, { counters: new Counters() });
  const t = vol.begin();
  const dk = (n: number): Buffer => makeKey(Zone.XATTR_TOTL, 0n, 0, BigInt(n), 0n);
  const fk = (n: number): Buffer => makeKey(Zone.FS, 5n, 8, BigInt(n));
  const a = emptyRoot();
  const bIn = emptyRoot();
  const delta = (total: bigint, count: bigint): Buffer => encodeDelta(total, count);
  await btreeInsert(t.w, a, dk(1), delta(5n, 1n), { seq: 10, flags: ITEM_DELTA });
  await btreeInsert(t.w, bIn, dk(1), delta(-2n, 0n), { seq: 11, flags: ITEM_DELTA });
  await btreeInsert(t.w, a, dk(2), delta(3n, 1n), { seq: 12, flags: ITEM_DELTA });
  await btreeInsert(t.w, a, fk(1), Buffer.from("old"), { seq: 13, flags: 0 });
  await btreeInsert(t.w, bIn, fk(1), Buffer.alloc(0), { seq: 14, flags: ITEM_DELETION });
  await btreeInsert(t.w, a, fk(2), Buffer.from("input"), { seq: 15, flags: 0 });
  await btreeInsert(t.w, a, fk(3), Buffer.alloc(0), { seq: 16, flags: ITEM_DELETION });
  const dest = t.sb.logMerge;
  await btreeInsert(t.w, dest, dk(1), delta(-3n, -1n), { seq: 5, flags: ITEM_DELTA });
  await btreeInsert(t.w, dest, dk(2), delta(1n, 1n), { seq: 99, flags: ITEM_DELTA });
  await btreeInsert(t.w, dest, fk(1), Buffer.from("dest"), { seq: 1, flags: 0 });
  await btreeInsert(t.w, dest, fk(2), Buffer.from("newer"), { seq: 100, flags: 0 });
  const r = await btreeMerge(t.w, dest, [a, bIn], MIN_KEY, MAX_KEY, { dropTombstones: true, maxItems: 100 });
  assert.deepEqual(r, { next: null, keys: 5 });
  const got = await btreeCollect(vol.cache, dest, MIN_KEY, MAX_KEY);
  assert.deepEqual(got.map((it) => [hex(it.key), it.val.toString("hex"), it.seq, it.flags]), [
    // dk(1): 5 - 2 - 3 = 0 and 1 + 0 - 1 = 0: deleted
    [hex(dk(2)), delta(4n, 2n).toString("hex"), 99, ITEM_DELTA],
    // fk(1): the tombstone (seq 14) wins and deletes; fk(3) had nothing to delete
    [hex(fk(2)), Buffer.from("newer").toString("hex"), 100, 0],
  ]);
  // kept tombstones when the destination is itself a log tree
  const dest2 = t.sb.srchRoot;
  await btreeMerge(t.w, dest2, [a, bIn], MIN_KEY, MAX_KEY, { dropTombstones: false, maxItems: 100 });
  const got2 = await btreeCollect(vol.cache, dest2, MIN_KEY, MAX_KEY);
  assert.deepEqual(got2.filter((it) => it.key[0] === Zone.FS).map((it) => [hex(it.key), it.seq, it.flags]), [
    [hex(fk(1)), 14, ITEM_DELETION], [hex(fk(2)), 15, 0], [hex(fk(3)), 16, ITEM_DELETION],
  ]);
  t.abandon();
});
