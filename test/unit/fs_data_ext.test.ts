/*
 * Goal: the in-memory extent editor (src/core/fs/data_ext.ts) splits and merges exactly as
 * upstream's ext_set, keeps online/offline accounting and reports the item changes that take
 * the loaded window to the edited one; the write planner (data_plan.ts), which steps whole
 * runs, makes exactly the extents upstream's block-by-block get_block/alloc_block sequence
 * makes (preallocation ramp, contig-only and aligned-region modes, unwritten conversion);
 * fallocate's planner covers holes with UNWRITTEN extents and skips allocated ones.
 *
 * Method: hand-made cases for each ext_set rule; fast-check sequences of random changes
 * checked against a block-by-block array model; fast-check write sequences run through
 * mapWrite and through a transliteration of upstream's per-block code, with identical
 * allocator models (a cached extent refilled from a fragmenting bump allocator), compared
 * extent for extent after every write.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import type { Extent } from "../../src/core/alloc.js";
import { DATA_ALLOC_LARGE_BLOCKS } from "../../src/core/data_alloc.js";
import { EXTENT_FLAG_OFFLINE as OFF, EXTENT_FLAG_UNWRITTEN as UNW } from "../../src/core/format.js";
import { encodeDataExtent } from "../../src/core/format.js";
import { dataExtentKey } from "../../src/core/key.js";
import type { KeyVal } from "../../src/core/item_cache.js";
import { loadExtents } from "../../src/core/fs/data.js";
import { checkFileExtent, ExtentMap, type FileExtent } from "../../src/core/fs/data_ext.js";
import type { OpCtx } from "../../src/core/fs/op.js";
import { Counters } from "../../src/util/counters.js";
import { mapFallocate, mapWrite, type PreallocOptions } from "../../src/core/fs/data_plan.js";
import { isFsError } from "../../src/util/errno.js";
import { makeAssertProperty } from "../helpers/property.js";

const BASE_SEED = Number(process.env.FC_SEED ?? 0x5eed_da7a);
const assertProperty = makeAssertProperty(BASE_SEED);
const E = (start: number, len: number, map: number, flags = 0): FileExtent =>
  ({ start, len, map, flags });

test("ext_set: merging with neighbours, splits that do not merge, removal, item changes", () => {
  const m = new ExtentMap([], 0, 100);
  m.set(10, 5, 1000, 0);
  m.set(15, 5, 1005, 0); // physically contiguous: merges left
  m.set(5, 5, 995, 0); // and right
  assert.deepEqual(m.all(), [E(5, 15, 995)]);
  assert.equal(m.onlineDelta, 15);
  const removed = m.set(12, 2, 0, 0); // punch: split edges stay apart
  assert.deepEqual(removed, [E(12, 2, 1002)]);
  assert.deepEqual(m.all(), [E(5, 7, 995), E(14, 6, 1004)]);
  assert.equal(m.onlineDelta, 13);
  m.set(12, 2, 1002, 0); // refilling the hole merges both sides back
  assert.deepEqual(m.all(), [E(5, 15, 995)]);
  m.set(20, 3, 2000, 0); // not physically contiguous: no merge
  assert.equal(m.all().length, 2);
  assert.deepEqual(m.changes(), { deletes: [], puts: [E(5, 15, 995), E(20, 3, 2000)] });

  // converting inside an unwritten extent: the split edges do not merge with the change
  const u = new ExtentMap([E(0, 10, 500, UNW)], 0, 100);
  u.set(4, 2, 504, 0);
  assert.deepEqual(u.all(), [E(0, 4, 500, UNW), E(4, 2, 504), E(6, 4, 506, UNW)]);
  assert.equal(u.onlineDelta, 2);
  assert.deepEqual(u.changes().deletes, [E(0, 10, 500, UNW)]);
  // converting from the front merges with a written left neighbour
  const s = new ExtentMap([E(0, 1, 499), E(1, 9, 500, UNW)], 0, 100);
  s.set(1, 3, 500, 0);
  assert.deepEqual(s.all(), [E(0, 4, 499), E(4, 6, 503, UNW)]);
  assert.deepEqual(s.changes(), { deletes: [E(0, 1, 499), E(1, 9, 500, UNW)],
    puts: [E(0, 4, 499), E(4, 6, 503, UNW)] });
  // offline extents (no blocks) count as offline, merge when logically adjacent
  const o = new ExtentMap([E(0, 4, 0, OFF)], 0, 100);
  o.set(4, 4, 0, OFF);
  assert.deepEqual(o.all(), [E(0, 8, 0, OFF)]);
  assert.equal(o.offlineDelta, 4);
  // removing a range never merges with a neighbour, even one whose blkno equals the
  // removed length (upstream's can_merge would take 0 + 5 == 5 as contiguous)
  const z = new ExtentMap([E(0, 5, 900), E(5, 3, 5)], 0, 100);
  assert.deepEqual(z.set(0, 5, 0, 0), [E(0, 5, 900)]);
  assert.deepEqual(z.all(), [E(5, 3, 5)]);
  // a change must lie inside one existing extent, and inside the window
  assert.throws(() => s.set(3, 3, 900, 0), /not inside/);
  assert.throws(() => new ExtentMap([], 10, 20).set(10, 1, 5, 0), /outside the window/);
  assert.throws(() => new ExtentMap([], 10, 20).set(15, 7, 5, 0), /outside the window/);
  assert.throws(() => new ExtentMap([E(0, 5, 1), E(4, 2, 9)], 0, 10),
    (e: unknown) => isFsError(e, "EIO"));
  for (const bad of [E(-1, 1, 5), E(0, 0, 5), E(0, 1, 0, 0), E(0, 1, 5, 8)]) {
    assert.throws(() => checkFileExtent(bad), (e: unknown) => isFsError(e, "EIO"));
  }
});

/** One block of the array model: mapping and flags, or null for a hole. */
type Blk = { map: number; flags: number } | null;

function blocksOf(exts: FileExtent[], n: number): Blk[] {
  const out: Blk[] = new Array<Blk>(n).fill(null);
  for (const e of exts) {
    for (let i = e.start; i < e.start + e.len; i++) {
      out[i] = { map: e.map === 0 ? 0 : e.map + (i - e.start), flags: e.flags };
    }
  }
  return out;
}

const online = (b: Blk[]): number =>
  b.filter((x) => x !== null && x.map !== 0 && (x.flags & UNW) === 0).length;

test("ext_set matches a block-by-block model under random changes", async () => {
  const N = 64;
  const change = fc.record({
    start: fc.integer({ min: 1, max: 50 }), len: fc.integer({ min: 1, max: 12 }),
    kind: fc.constantFrom("written", "unwritten", "offline", "hole"),
    map: fc.integer({ min: 1, max: 12 }),
  });
  await assertProperty("ext_set model", BASE_SEED, fc.array(change, { minLength: 5, maxLength: 40 }),
    async (cs) => {
    const m = new ExtentMap([], 0, N);
    let model: Blk[] = new Array<Blk>(N + 1).fill(null);
    for (const c of cs) {
      const cur = m.next(c.start);
      // ext_set's rule: a change overlapping an extent must lie inside it
      if (cur && cur.start <= c.start + c.len - 1 &&
        !(cur.start <= c.start && cur.start + cur.len >= c.start + c.len)) continue;
      // small maps: a blkno may equal a length (merging must still need both mapped)
      const map = c.kind === "written" || c.kind === "unwritten" ? c.map : 0;
      const flags = c.kind === "unwritten" ? UNW : c.kind === "offline" ? OFF : 0;
      const before = m.all();
      m.set(c.start, c.len, map, flags);
      for (let i = c.start; i < c.start + c.len; i++) {
        model[i] = map === 0 && flags === 0 ? null : { map: map === 0 ? 0 : map + i - c.start, flags };
      }
      assert.deepEqual(blocksOf(m.all(), N + 1), model,
        `after ${JSON.stringify(c)} on ${JSON.stringify(before)}`);
    }
    assert.equal(m.onlineDelta, online(model));
    // the item changes take the (empty) loaded window to the current extents
    const ch = m.changes();
    assert.deepEqual(ch.deletes, []);
    assert.deepEqual(ch.puts, m.all());
    model = [];
  }, { numRuns: 1500 });
});

/**
 * The allocator the planner sees, as data_alloc.ts behaves: small requests from a cached
 * extent of DATA_ALLOC_LARGE_BLOCKS, large ones straight from the tree; the "tree" hands out
 * pieces whose lengths come from `caps` (fragmentation), with gaps between them.
 */
class ModelAlloc {
  private cursor = 1000;
  private cached: Extent | null = null;
  private k = 0;
  constructor(private readonly caps: number[], private budget: number) {}

  private take(count: number): Extent | null {
    if (this.budget <= 0) return null;
    const cap = this.caps.length > 0 ? this.caps[this.k++ % this.caps.length]! : count;
    const len = Math.min(count, cap, this.budget);
    const e = { start: this.cursor, len };
    this.cursor += len + 3;
    this.budget -= len;
    return e;
  }

  alloc(count: number): Promise<Extent | null> {
    if (count >= DATA_ALLOC_LARGE_BLOCKS) return Promise.resolve(this.take(count));
    if (this.cached === null || this.cached.len === 0) this.cached = this.take(DATA_ALLOC_LARGE_BLOCKS);
    if (this.cached === null) return Promise.resolve(null);
    const len = Math.min(count, this.cached.len);
    const got = { start: this.cached.start, len };
    this.cached = { start: got.start + len, len: this.cached.len - len };
    return Promise.resolve(got);
  }
}

/** Upstream's scoutfs_get_block + alloc_block for one block, transliterated. */
async function upstreamBlock(m: ExtentMap, i: number, alloc: ModelAlloc, pre: PreallocOptions):
  Promise<boolean> {
  const e = m.find(i);
  if (e && (e.flags & UNW) === 0) return true;
  if (e) {
    m.set(i, 1, e.map + (i - e.start), e.flags & ~(UNW | OFF));
    return true;
  }
  let start = i;
  let count = 1;
  const onl = m.onlineDelta;
  if (pre.contigOnly) {
    if (i > 1 && i === onl) {
      const f = m.next(i);
      count = f && f.start > i ? f.start - i : pre.blocks;
      count = Math.min(i, count);
    }
  } else {
    start = i - (i % pre.blocks);
    count = pre.blocks;
    let f = m.next(start);
    if (f && f.start < i) {
      count -= i - start;
      start = i;
      f = m.next(i);
    }
    if (f && f.start > start && f.start < start + count) count = f.start - start;
  }
  count = Math.min(count, pre.blocks);
  const got = await alloc.alloc(count);
  if (got === null) return false;
  if (start + got.len <= i) start += i - (start + got.len) + 1;
  if (got.len > 1) m.set(start, got.len, got.start, UNW);
  m.set(i, 1, got.start + (i - start), 0);
  return true;
}

test("mapWrite makes the extents of upstream's block-by-block write path", async () => {
  const HI = 4000;
  const write = fc.record({ a: fc.integer({ min: 0, max: 600 }), n: fc.integer({ min: 1, max: 160 }),
    append: fc.boolean() });
  const arb = fc.record({
    writes: fc.array(write, { minLength: 1, maxLength: 30 }),
    blocks: fc.constantFrom(1, 2, 3, 8, 16, 64, 2048),
    contigOnly: fc.boolean(),
    caps: fc.array(fc.integer({ min: 1, max: 300 }), { maxLength: 4 }),
    budget: fc.integer({ min: 50, max: 5000 }),
  });
  await assertProperty("mapWrite vs upstream", BASE_SEED + 1, arb, async (t) => {
    const pre = { blocks: t.blocks, contigOnly: t.contigOnly };
    const mine = new ExtentMap([], 0, HI);
    const ref = new ExtentMap([], 0, HI);
    const am = new ModelAlloc(t.caps, t.budget);
    const ar = new ModelAlloc(t.caps, t.budget);
    let eof = 0;
    for (const w of t.writes) {
      const a = w.append ? eof : w.a;
      const b = Math.min(a + w.n - 1, 1000);
      if (a > b) continue;
      const plan = await mapWrite(mine, a, b, 0n, (c) => am.alloc(c), pre);
      let end = a;
      while (end <= b && await upstreamBlock(ref, end, ar, pre)) end++;
      assert.equal(plan.end, end, "blocks mapped before the allocator ran out");
      assert.equal(plan.short, end <= b);
      assert.deepEqual(mine.all(), ref.all(), `extents after writing [${a}, ${b}]`);
      // the segments map every written block where the extents say
      for (const s of plan.segs) {
        for (let k = 0; k < s.len; k++) {
          const e = ref.find(s.iblock + k)!;
          assert.equal(s.map + k, e.map + (s.iblock + k - e.start));
          assert.equal(e.flags, 0);
        }
      }
      eof = Math.max(eof, end);
      if (plan.short) break;
    }
  }, { numRuns: 400 });
});

test("streaming appends preallocate with a ramp; leftovers stay unwritten", async () => {
  const m = new ExtentMap([], 0, 10_000);
  const alloc = new ModelAlloc([], 100_000);
  const pre = { blocks: 8, contigOnly: true };
  for (let i = 0; i < 5; i++) await mapWrite(m, i, i, 0n, (c) => alloc.alloc(c), pre);
  // block 2 preallocated 2 blocks, block 4 four: the file is [0,5) written, [5,8) unwritten
  assert.deepEqual(m.all(), [E(0, 5, 1000), E(5, 3, 1005, UNW)]);
  for (let i = 5; i < 30; i++) await mapWrite(m, i, i, 0n, (c) => alloc.alloc(c), pre);
  // the ramp is capped at data_prealloc_blocks (8): 24..31 was the last preallocation
  assert.deepEqual(m.all(), [E(0, 30, 1000), E(30, 2, 1030, UNW)]);
  // a non-streaming write into a hole allocates only its blocks
  await mapWrite(m, 100, 101, 0n, (c) => alloc.alloc(c), pre);
  assert.deepEqual(m.all().slice(2), [E(100, 2, 1032)]);
  // aligned regions (contig_only=0): the hole of the region is preallocated
  const r = new ExtentMap([E(0, 2, 5000)], 0, 10_000);
  await mapWrite(r, 9, 9, 2n, (c) => alloc.alloc(c), { blocks: 8, contigOnly: false });
  assert.deepEqual(r.all(), [E(0, 2, 5000), E(8, 1, 1034, UNW), E(9, 1, 1035), E(10, 6, 1036, UNW)]);
});

test("mapFallocate: unwritten extents over holes, allocated blocks skipped, limits", async () => {
  const m = new ExtentMap([E(4, 2, 700), E(10, 2, 0, OFF)], 0, 100);
  const alloc = new ModelAlloc([3], 1000);
  const p = await mapFallocate(m, 0, 15, 100, (c) => alloc.alloc(c));
  assert.deepEqual(p, { next: 16, short: false, changed: true });
  for (let i = 0; i <= 15; i++) {
    const e = m.find(i);
    if (i === 10 || i === 11) continue;
    assert.ok(e && e.map !== 0, `block ${i} allocated`);
    if (i < 4 || i > 5) assert.equal(e.flags & UNW, UNW, `block ${i} unwritten`);
  }
  // the offline extent is left alone (staging preallocation needs OFFLINE with blocks)
  assert.deepEqual(m.find(10), E(10, 2, 0, OFF));
  assert.equal(m.onlineDelta, 0, "unwritten blocks are not online");
  // a step limit and an empty allocator stop it early
  const n = new ExtentMap([], 0, 100);
  assert.deepEqual(await mapFallocate(n, 0, 50, 2, (c) => new ModelAlloc([5], 100).alloc(c)),
    { next: 10, short: false, changed: true });
  assert.deepEqual(await mapFallocate(new ExtentMap([], 0, 100), 0, 50, 8,
    (c) => new ModelAlloc([], 0).alloc(c)), { next: 0, short: true, changed: false });
});

/** An OpCtx stand-in serving extent items from a list that `onNext` may change between steps. */
function scriptedCtx(items: FileExtent[], onNext: (call: number) => void):
  { ctx: OpCtx; counters: Counters } {
  const counters = new Counters();
  let calls = 0;
  const next = (key: Buffer): Promise<KeyVal | null> => {
    onNext(calls++);
    const all = items.map((e) => ({ key: dataExtentKey(7n, BigInt(e.start + e.len - 1), BigInt(e.len)),
      val: encodeDataExtent({ blkno: e.map, flags: e.flags }) }));
    return Promise.resolve(all.find((kv) => Buffer.compare(kv.key, key) >= 0) ?? null);
  };
  return { ctx: { next, client: { counters } } as unknown as OpCtx, counters };
}

test("extent walks: a reader restarts when a local append changes items under it", async () => {
  const items = [E(0, 10, 100), E(10, 6, 110, UNW)];
  // between the reader's first and second step the append merges 10..11 into the first extent
  const append = (call: number): void => {
    if (call === 1) items.splice(0, 2, E(0, 12, 100), E(12, 4, 112, UNW));
  };
  const r = scriptedCtx(items, append);
  const w = await loadExtents(r.ctx, 7n, 0, 100, 64, true);
  assert.deepEqual(w.exts, [E(0, 12, 100), E(12, 4, 112, UNW)]);
  assert.equal(r.counters.get("data_extent_walk_raced"), 1);
  // a writer (exclusive) seeing overlapping items has found corruption
  const items2 = [E(0, 10, 100), E(10, 6, 110, UNW)];
  const c = scriptedCtx(items2, (call) => {
    if (call === 1) items2.splice(0, 2, E(0, 12, 100), E(12, 4, 112, UNW));
  });
  await assert.rejects(loadExtents(c.ctx, 7n, 0, 100, 64), (e: unknown) => isFsError(e, "EIO"));
  // the window bound: at most `max` extents, hi lowered to what is fully known
  const many = scriptedCtx(Array.from({ length: 10 }, (_, i) => E(i * 2, 1, 100 + i)), () => undefined);
  const part = await loadExtents(many.ctx, 7n, 0, 1000, 4);
  assert.equal(part.exts.length, 4);
  assert.equal(part.hi, 5, "known through block 5: the 4th extent starts at 6");
});
