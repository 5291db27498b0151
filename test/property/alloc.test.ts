/*
 * Goal: show that the allocators (src/core/alloc.ts) never hand out a block twice and never
 * lose one.
 *
 * (a) Free-extent trees against an interval model. fast-check drives random freeExtent (of
 * allocated ranges, including whole gaps so both neighbours merge), frees that overlap free
 * space (refused with EIO, nothing changes), allocExtent(maxLen) (must return the front of
 * the lowest-addressed extent of the largest log8 order), allocExtent inside a region (must
 * return a piece of the lowest-addressed extent of the largest order among those overlapping
 * the region, clipped to it; null only when the region holds no free block), takeExtent of
 * free and of partly allocated ranges (ENOENT, nothing changes), zero and negative lengths
 * (EINVAL), commits, abandons and reopens, over small, medium and huge (2^40-based) blkno
 * universes. After every operation all items of the tree (btreeCollect MIN_KEY..MAX_KEY) are
 * decoded: the FREE_EXTENT_BLKNO (36) and FREE_EXTENT_ORDER (40) zones must describe the same
 * extents with order = U64_MAX - floor(log8(len)), nothing else may be in the tree, the
 * extents must equal the model exactly (which makes them disjoint, fully merged, and with the
 * allocated ranges covering the universe: no double allocation, no leak), and total_len must
 * be their sum. The tree under test is the super's data_alloc, emptied first.
 *
 * (b) Metadata alloc lists through Volume commits. Random transactions churn every btree of
 * the super (inserts, deletes, btreeFree of whole trees, data_alloc allocations and frees)
 * with commits, abandons and reopens on a minimum-size volume, so the server's avail list is
 * refilled from meta_alloc[0] until it is empty and then from meta_alloc[1], into which each
 * commit drains the previous commit's freed list. After every commit, abandon and reopen a
 * walker written here reads the volume from its device with a fresh cache and checks that
 * every metadata blkno in [META_DEV_START_BLKNO, total_meta_blocks) is exactly one of: a
 * block of a btree of the super (fs/logs/log_merge/mounted_clients/srch roots, both
 * meta_alloc trees, data_alloc), a block of an alloc-list chain (server_meta_avail[0..1],
 * server_meta_freed[0..1]), an entry of such a list, or a block of a meta_alloc[0..1] free
 * extent; list counts and total_len must match. src/core/fsck.ts runs as well, now and then.
 * A deterministic test grows the avail list and a pending freed list past one list block
 * (ALLOC_LIST_MAX_BLKNOS) on a large sparse volume, so multi-block chains are popped, COWed,
 * drained and accounted too.
 *
 * Seeds are fixed (override: FC_SEED=<n>) and printed on failure.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { allocExtent, type Extent, freeExtent, listEntries, listExtents, listNext, takeExtent } from "../../src/core/alloc.js";
import type { BlockCache } from "../../src/core/block.js";
import { btreeCollect, btreeDelete, btreeForce, btreeFree, btreeWalkBlocks } from "../../src/core/btree.js";
import { fsckVolume } from "../../src/core/fsck.js";
import {
  type AllocListHead, type AllocRoot, type BtreeRoot, emptyAllocRoot, Magic, META_DEV_START_BLKNO,
  type SuperBlock,
} from "../../src/core/format.js";
import { keyFields, makeKey, MAX_KEY, MIN_KEY, U64_MAX, Zone } from "../../src/core/key.js";
import { Volume, type VolumeTxn } from "../../src/core/volume.js";
import type { SimDisk } from "../../src/sim/disk.js";
import { Counters } from "../../src/util/counters.js";
import { makeTestVolume, MiB, type TestDisks } from "../helpers/volume.js";
import { makeAssertProperty } from "../helpers/property.js";
import { expectFsError } from "../helpers/errors.js";

const BASE_SEED = process.env.FC_SEED !== undefined ? Number(process.env.FC_SEED) : 0xa110c;


const assertProperty = makeAssertProperty(BASE_SEED);

const fmt = (e: Extent | null): string => (e ? `[${e.start}, +${e.len})` : "null");
const endOf = (e: Extent): number => e.start + e.len;

/** floor(log8(len)), computed from the bit length (independently of key.ts's loop). */
function log8(len: number): number {
  return Math.floor((len.toString(2).length - 1) / 3);
}

// ---------------------------------------------------------------------------------------
// (a) The interval model of free space.

class FreeModel {
  /** Free extents, sorted, disjoint, never adjacent. */
  free: Extent[] = [];

  constructor(readonly lo: number, readonly hi: number) {}

  clone(): FreeModel {
    const m = new FreeModel(this.lo, this.hi);
    m.free = this.free.map((e) => ({ ...e }));
    return m;
  }

  total(): number {
    return this.free.reduce((s, e) => s + e.len, 0);
  }

  /** The allocated ranges of [lo, hi). */
  gaps(): Extent[] {
    const out: Extent[] = [];
    let pos = this.lo;
    for (const f of this.free) {
      if (f.start > pos) out.push({ start: pos, len: f.start - pos });
      pos = endOf(f);
    }
    if (pos < this.hi) out.push({ start: pos, len: this.hi - pos });
    return out;
  }

  overlapsFree(e: Extent): boolean {
    const f = this.free[this.firstEndingAfter(e.start)];
    return f !== undefined && f.start < endOf(e);
  }

  /** The free extent holding all of e, if one does. */
  holding(e: Extent): Extent | undefined {
    const f = this.free[this.firstEndingAfter(e.start)];
    return f && f.start <= e.start && endOf(e) <= endOf(f) ? f : undefined;
  }

  /** Index of the first extent ending after blkno. */
  private firstEndingAfter(blkno: number): number {
    let lo = 0;
    let hi = this.free.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (endOf(this.free[mid]!) <= blkno) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  add(e: Extent): void {
    assert.ok(!this.overlapsFree(e), `model: free of ${fmt(e)} overlaps free space`);
    // the first extent ending at or after e.start: e's left neighbour if it ends right there
    const i = this.firstEndingAfter(e.start - 1);
    const n = { ...e };
    let del = 0;
    const prev = this.free[i];
    if (prev && endOf(prev) === e.start) {
      n.start = prev.start;
      n.len += prev.len;
      del++;
    }
    const next = this.free[i + del];
    if (next && next.start === endOf(e)) {
      n.len += next.len;
      del++;
    }
    this.free.splice(i, del, n);
  }

  remove(e: Extent): void {
    const f = this.holding(e);
    assert.ok(f, `model: ${fmt(e)} is not free`);
    const i = this.free.indexOf(f);
    const parts: Extent[] = [];
    if (e.start > f.start) parts.push({ start: f.start, len: e.start - f.start });
    if (endOf(f) > endOf(e)) parts.push({ start: endOf(e), len: endOf(f) - endOf(e) });
    this.free.splice(i, 1, ...parts);
  }

  /** What allocExtent(maxLen) must return: the front of the lowest largest-order extent. */
  expectAlloc(maxLen: number): Extent | null {
    let best: Extent | null = null;
    for (const f of this.free) if (!best || log8(f.len) > log8(best.len)) best = f;
    return best ? { start: best.start, len: Math.min(maxLen, best.len) } : null;
  }

  /**
   * What allocExtent(maxLen, region) must return: among the free extents overlapping the
   * region, the lowest-addressed one of the largest order, from max(its start, region start)
   * and clipped to the region.
   */
  expectAllocRegion(maxLen: number, r: { start: number; end: number }): Extent | null {
    let best: Extent | null = null;
    for (const f of this.free) {
      if (f.start >= r.end || endOf(f) <= r.start) continue;
      if (!best || log8(f.len) > log8(best.len)) best = f;
    }
    if (!best) return null;
    const from = Math.max(best.start, r.start);
    return { start: from, len: Math.min(maxLen, endOf(best) - from, r.end - from) };
  }
}

/** Decodes every item of an extent tree, checking both indexes against each other. */
async function extentTreeContents(cache: BlockCache, a: AllocRoot, what: string): Promise<Extent[]> {
  const items = await btreeCollect(cache, a.root, MIN_KEY, MAX_KEY);
  const byBlkno: Extent[] = [];
  const byOrder: Extent[] = [];
  for (const it of items) {
    const f = keyFields(it.key);
    assert.equal(it.val.length, 0, `${what}: extent item with a value`);
    assert.equal(f.type, 0, `${what}: extent item type`);
    assert.equal(f.fourth, 0, `${what}: extent item fourth field`);
    if (f.zone === Zone.FREE_EXTENT_BLKNO) {
      assert.equal(f.third, 0n, `${what}: blkno item third field`);
      const last = Number(f.first);
      const len = Number(f.second);
      assert.ok(len >= 1, `${what}: blkno item of length ${len}`);
      byBlkno.push({ start: last - len + 1, len });
    } else if (f.zone === Zone.FREE_EXTENT_ORDER) {
      const last = Number(f.second);
      const len = Number(f.third);
      assert.ok(len >= 1, `${what}: order item of length ${len}`);
      assert.equal(f.first, U64_MAX - BigInt(log8(len)),
        `${what}: order item of ${fmt({ start: last - len + 1, len })} has order ${U64_MAX - f.first}, want ${log8(len)}`);
      byOrder.push({ start: last - len + 1, len });
    } else {
      assert.fail(`${what}: item of zone ${f.zone} in an extent tree`);
    }
  }
  const key = (e: Extent): string => `${e.start}+${e.len}`;
  const sortedOrder = [...byOrder].sort((x, y) => x.start - y.start);
  assert.deepEqual(sortedOrder.map(key), byBlkno.map(key), `${what}: blkno and order indexes disagree`);
  // within one order the order index sorts by last blkno
  for (let i = 1; i < byOrder.length; i++) {
    const p = byOrder[i - 1]!;
    const c = byOrder[i]!;
    const po = log8(p.len);
    const co = log8(c.len);
    assert.ok(po > co || (po === co && endOf(p) < endOf(c)), `${what}: order index out of order`);
  }
  for (let i = 1; i < byBlkno.length; i++) {
    assert.ok(endOf(byBlkno[i - 1]!) < byBlkno[i]!.start,
      `${what}: extents ${fmt(byBlkno[i - 1]!)} and ${fmt(byBlkno[i]!)} overlap or are not merged`);
  }
  return byBlkno;
}

async function checkAllocTree(cache: BlockCache, a: AllocRoot, m: FreeModel, what: string,
  viaListExtents: boolean): Promise<void> {
  const got = await extentTreeContents(cache, a, what);
  const show = (l: Extent[]): string => (l.length > 12 ? `${l.slice(0, 12).map(fmt).join(" ")} ...` : l.map(fmt).join(" "));
  if (got.length !== m.free.length || got.some((e, i) => e.start !== m.free[i]!.start || e.len !== m.free[i]!.len)) {
    assert.fail(`${what}: tree holds ${got.length} extents ${show(got)}; model ${m.free.length}: ${show(m.free)}`);
  }
  assert.equal(a.totalLen, m.total(), `${what}: total_len`);
  if (viaListExtents) {
    const listed = await listExtents({ cache }, a);
    assert.deepEqual(listed.map(fmt), got.map(fmt), `${what}: listExtents`);
  }
}

type LenSpec = { kind: "one" | "small" | "pow" | "rest"; n: number };
const lenSpecArb: fc.Arbitrary<LenSpec> = fc.record({
  kind: fc.constantFrom("one" as const, "small" as const, "small" as const, "pow" as const, "pow" as const, "rest" as const),
  n: fc.nat(),
});

/** A length in [1, max]. */
function resolveLen(s: LenSpec, max: number): number {
  switch (s.kind) {
    case "one": return 1;
    case "small": return 1 + (s.n % Math.min(max, 16));
    case "pow": {
      const k = s.n % 14;
      const v = 8 ** k + ((s.n >> 4) % 3) - 1;
      return Math.max(1, Math.min(max, v));
    }
    case "rest": return max;
  }
}

type AOp =
  | { op: "free"; pick: number; at: number; len: LenSpec; whole: boolean }
  | { op: "freeOverlap"; pick: number; at: number; back: number; len: number }
  | { op: "freeComb"; pick: number; at: number; n: number; stride: number }
  | { op: "alloc"; maxLen: LenSpec | "huge" }
  | { op: "allocRegion"; a: number; span: LenSpec | "all"; maxLen: LenSpec | "huge" }
  | { op: "take"; exact: boolean; pick: number; at: number; len: LenSpec }
  | { op: "invalid"; which: number }
  | { op: "commit" | "abandon" | "reopen" };

const maxLenArb = fc.oneof({ arbitrary: lenSpecArb, weight: 5 }, { arbitrary: fc.constant("huge" as const), weight: 1 });
const aopArb: fc.Arbitrary<AOp> = fc.oneof(
  { weight: 30, arbitrary: fc.record({ op: fc.constant("free" as const), pick: fc.nat(), at: fc.nat(), len: lenSpecArb,
    whole: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("freeComb" as const), pick: fc.nat(), at: fc.nat(),
    n: fc.integer({ min: 1, max: 1500 }), stride: fc.integer({ min: 2, max: 5 }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant("freeOverlap" as const), pick: fc.nat(), at: fc.nat(),
    back: fc.nat({ max: 4 }), len: fc.integer({ min: 1, max: 12 }) }) },
  { weight: 15, arbitrary: fc.record({ op: fc.constant("alloc" as const), maxLen: maxLenArb }) },
  { weight: 12, arbitrary: fc.record({ op: fc.constant("allocRegion" as const), a: fc.nat(),
    span: fc.oneof(lenSpecArb, fc.constant("all" as const)), maxLen: maxLenArb }) },
  { weight: 10, arbitrary: fc.record({ op: fc.constant("take" as const), exact: fc.boolean(), pick: fc.nat(),
    at: fc.nat(), len: lenSpecArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("invalid" as const), which: fc.nat({ max: 7 }) }) },
  { weight: 2, arbitrary: fc.constant({ op: "commit" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "abandon" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "reopen" as const }) },
);

interface Universe {
  base: number;
  size: number;
}
const universeArb: fc.Arbitrary<Universe> = fc.oneof(
  fc.record({ base: fc.integer({ min: 0, max: 100 }), size: fc.integer({ min: 1, max: 300 }) }),
  fc.record({ base: fc.integer({ min: 0, max: 1_000_000 }), size: fc.integer({ min: 1000, max: 200_000 }) }),
  fc.record({ base: fc.integer({ min: 2 ** 40, max: 2 ** 41 }), size: fc.integer({ min: 2 ** 20, max: 2 ** 36 }) }),
);

class AllocHarness {
  txn: VolumeTxn | null = null;
  committed: FreeModel;
  ops = new Map<string, number>();

  private constructor(readonly disks: TestDisks, public vol: Volume, public model: FreeModel) {
    this.committed = model.clone();
  }

  /** A volume whose data_alloc tree is emptied: the whole universe starts allocated. */
  static async create(u: Universe, disks: TestDisks): Promise<AllocHarness> {
    const vol = await Volume.open(disks.meta);
    const t = vol.begin();
    await btreeFree(t.w, t.sb.dataAlloc.root);
    t.sb.dataAlloc = emptyAllocRoot();
    await t.commit();
    return new AllocHarness(disks, vol, new FreeModel(u.base, u.base + u.size));
  }

  root(): AllocRoot {
    return this.txn ? this.txn.sb.dataAlloc : this.vol.sb.dataAlloc;
  }

  writer(): VolumeTxn {
    this.txn ??= this.vol.begin();
    return this.txn;
  }

  async check(what: string, viaListExtents = false): Promise<void> {
    await checkAllocTree(this.vol.cache, this.root(), this.model, what, viaListExtents);
  }
}

function maxLenOf(s: LenSpec | "huge"): number {
  return s === "huge" ? Number.MAX_SAFE_INTEGER : resolveLen(s, 8 ** 13);
}

async function astep(h: AllocHarness, op: AOp): Promise<void> {
  h.ops.set(op.op, (h.ops.get(op.op) ?? 0) + 1);
  const m = h.model;
  switch (op.op) {
    case "free": {
      const gaps = m.gaps();
      if (gaps.length === 0) break;
      const g = gaps[op.pick % gaps.length]!;
      const whole = op.whole && op.at % 3 === 0;
      const start = whole ? g.start : g.start + (op.at % g.len);
      const len = whole ? g.len : resolveLen(op.len, endOf(g) - start);
      const t = h.writer();
      await freeExtent(t.w, t.sb.dataAlloc, { start, len });
      m.add({ start, len });
      break;
    }
    case "freeComb": {
      // free every stride-th block of an allocated gap: many small extents at once
      const gaps = m.gaps();
      if (gaps.length === 0) break;
      const g = gaps[op.pick % gaps.length]!;
      const t = h.writer();
      for (let b = g.start + (op.at % op.stride), i = 0; b < endOf(g) && i < op.n; b += op.stride, i++) {
        await freeExtent(t.w, t.sb.dataAlloc, { start: b, len: 1 });
        m.add({ start: b, len: 1 });
      }
      break;
    }
    case "freeOverlap": {
      if (m.free.length === 0) break;
      const f = m.free[op.pick % m.free.length]!;
      const p = f.start + (op.at % f.len);
      const start = Math.max(0, p - op.back);
      const t = h.writer();
      await expectFsError(freeExtent(t.w, t.sb.dataAlloc, { start, len: p - start + op.len }), "EIO",
        `free of [${start}, ${p + op.len}) overlapping free ${fmt(f)}`);
      break;
    }
    case "alloc": {
      const maxLen = maxLenOf(op.maxLen);
      const t = h.writer();
      const got = await allocExtent(t.w, t.sb.dataAlloc, maxLen);
      const want = m.expectAlloc(maxLen);
      assert.equal(fmt(got), fmt(want), `allocExtent(${maxLen})`);
      if (got) m.remove(got);
      break;
    }
    case "allocRegion": {
      const lo = Math.max(0, m.lo - 5);
      const span = m.hi + 5 - lo;
      const start = lo + (op.a % span);
      const end = start + (op.span === "all" ? m.hi - m.lo : resolveLen(op.span, span));
      const maxLen = maxLenOf(op.maxLen);
      const t = h.writer();
      const got = await allocExtent(t.w, t.sb.dataAlloc, maxLen, { start, end });
      const what = `allocExtent(${maxLen}, [${start}, ${end}))`;
      if (got) {
        assert.ok(got.start >= start && endOf(got) <= end && got.len >= 1 && got.len <= maxLen, `${what}: ${fmt(got)} outside`);
        assert.ok(m.holding(got), `${what}: ${fmt(got)} was not free`);
      } else {
        assert.ok(!m.overlapsFree({ start, len: end - start }), `${what}: null with free blocks in the region`);
      }
      assert.equal(fmt(got), fmt(m.expectAllocRegion(maxLen, { start, end })), what);
      if (got) m.remove(got);
      break;
    }
    case "take": {
      let e: Extent;
      if (op.exact) {
        if (m.free.length === 0) break;
        const f = m.free[op.pick % m.free.length]!;
        const start = f.start + (op.at % f.len);
        e = { start, len: resolveLen(op.len, endOf(f) - start) };
      } else {
        const start = Math.max(0, m.lo - 3 + (op.at % (m.hi - m.lo + 6)));
        e = { start, len: resolveLen(op.len, 1000) };
      }
      const t = h.writer();
      if (m.holding(e)) {
        await takeExtent(t.w, t.sb.dataAlloc, e);
        m.remove(e);
      } else {
        await expectFsError(takeExtent(t.w, t.sb.dataAlloc, e), "ENOENT", `take of ${fmt(e)}`);
      }
      break;
    }
    case "invalid": {
      const t = h.writer();
      const a = t.sb.dataAlloc;
      const at = m.lo;
      const calls: [string, () => Promise<unknown>][] = [
        ["free len 0", () => freeExtent(t.w, a, { start: at, len: 0 })],
        ["free len -1", () => freeExtent(t.w, a, { start: at, len: -1 })],
        ["free len 1.5", () => freeExtent(t.w, a, { start: at, len: 1.5 })],
        ["alloc 0", () => allocExtent(t.w, a, 0)],
        ["alloc -2", () => allocExtent(t.w, a, -2)],
        ["alloc 2.5", () => allocExtent(t.w, a, 2.5)],
        ["alloc 0 in region", () => allocExtent(t.w, a, 0, { start: m.lo, end: m.hi })],
        ["take len 0", () => takeExtent(t.w, a, { start: at, len: 0 })],
      ];
      const [what, call] = calls[op.which % calls.length]!;
      await expectFsError(call(), "EINVAL", what);
      break;
    }
    case "commit":
      await h.writer().commit();
      h.txn = null;
      h.committed = m.clone();
      break;
    case "abandon":
      h.writer().abandon();
      h.txn = null;
      h.model = h.committed.clone();
      break;
    case "reopen":
      h.txn = null;
      h.vol = await Volume.open(h.disks.meta);
      h.model = h.committed.clone();
      break;
  }
  await h.check(`after ${op.op}`, op.op === "commit" || op.op === "abandon" || op.op === "reopen");
}

async function runAllocOps(h: AllocHarness, ops: AOp[]): Promise<void> {
  for (let i = 0; i < ops.length; i++) {
    try {
      await astep(h, ops[i]!);
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      throw new Error(`op ${i} of ${ops.length} ${JSON.stringify(ops[i])} (universe [${h.model.lo}, ${h.model.hi}), ` +
        `${h.model.free.length} free extents): ${msg}`, { cause: e });
    }
  }
}

test("free-extent tree vs interval model", async () => {
  const disks = await makeTestVolume(128 * MiB, 16 * MiB);
  const seen = new Map<string, number>();
  let maxExtents = 0;
  let maxOrder = 0;
  let maxHeight = 0;
  await assertProperty("alloc extents", BASE_SEED, fc.tuple(universeArb, fc.array(aopArb, { minLength: 1, maxLength: 400, size: "max" })),
    async ([u, ops]) => {
      // every run starts from the same freshly made volume
      const h = await AllocHarness.create(u, { meta: disks.meta.snapshot(), data: disks.data });
      const probe = async (op: AOp): Promise<void> => {
        await astep(h, op);
        maxExtents = Math.max(maxExtents, h.model.free.length);
        maxHeight = Math.max(maxHeight, h.root().root.height);
        for (const f of h.model.free) maxOrder = Math.max(maxOrder, log8(f.len));
      };
      for (let i = 0; i < ops.length; i++) {
        try {
          await probe(ops[i]!);
        } catch (e) {
          const msg = e instanceof Error ? e.message : String(e);
          throw new Error(`op ${i} of ${ops.length} ${JSON.stringify(ops[i])} (universe [${h.model.lo}, ${h.model.hi}), ` +
            `${h.model.free.length} free extents): ${msg}`, { cause: e });
        }
      }
      await runAllocOps(h, [{ op: "commit" }, { op: "reopen" }]);
      for (const [k, v] of h.ops) seen.set(k, (seen.get(k) ?? 0) + v);
    }, { numRuns: 60 });
  console.log(`extent ops: ${[...seen].map(([k, v]) => `${k} ${v}`).join(", ")}; ` +
    `max free extents ${maxExtents}, max order ${maxOrder}, max tree height ${maxHeight}`);
  assert.ok(maxOrder >= 8, "large orders were exercised");
  assert.ok(maxHeight >= 2, "extent trees spanned several leaves");
});

test("extent allocation order: the lowest extent of the largest order, regions clip", async () => {
  const disks = await makeTestVolume(128 * MiB, 16 * MiB);
  const h = await AllocHarness.create({ base: 0, size: 10_000 }, disks);
  const t = h.writer();
  const a = t.sb.dataAlloc;
  // orders: 7 -> 0, 64 -> 2, 9 -> 1, 70 -> 2, 600 -> 3, 512 -> 3
  for (const e of [{ start: 10, len: 7 }, { start: 100, len: 64 }, { start: 300, len: 9 },
    { start: 400, len: 70 }, { start: 1000, len: 600 }, { start: 3000, len: 512 }]) {
    await freeExtent(t.w, a, e);
    h.model.add(e);
  }
  await h.check("setup");
  assert.deepEqual(await allocExtent(t.w, a, 5), { start: 1000, len: 5 });
  h.model.remove({ start: 1000, len: 5 });
  // [1005, +595) is still order 3 and below 3000
  assert.deepEqual(await allocExtent(t.w, a, 1000), { start: 1005, len: 595 });
  h.model.remove({ start: 1005, len: 595 });
  assert.deepEqual(await allocExtent(t.w, a, 1), { start: 3000, len: 1 });
  h.model.remove({ start: 3000, len: 1 });
  // 511 blocks is order 2 now: 100 (order 2) comes first
  assert.deepEqual(await allocExtent(t.w, a, 1), { start: 100, len: 1 });
  h.model.remove({ start: 100, len: 1 });
  // regions: the largest order overlapping [305, 420) is order 2 at 400; clipped to the region
  assert.deepEqual(await allocExtent(t.w, a, 100, { start: 305, end: 420 }), { start: 400, len: 20 });
  h.model.remove({ start: 400, len: 20 });
  assert.deepEqual(await allocExtent(t.w, a, 100, { start: 305, end: 309 }), { start: 305, len: 4 });
  h.model.remove({ start: 305, len: 4 });
  assert.equal(await allocExtent(t.w, a, 100, { start: 17, end: 100 }), null);
  await h.check("after allocations", true);
  await t.commit();
  h.txn = null;
  h.vol = await Volume.open(disks.meta);
  await h.check("after reopen", true);
});

// ---------------------------------------------------------------------------------------
// (b) Metadata block accounting through Volume commits.

interface MetaAccount {
  /** Alloc-list blocks per chain, e.g. "server_meta_avail[0]" -> 2. */
  chains: Record<string, number>;
  referenced: number;
  listEntries: number;
  freeExtents: number;
}

/**
 * Reads the committed volume from its device with a fresh cache and checks that every
 * metadata blkno is referenced, listed or free exactly once.
 */
async function accountMeta(dev: SimDisk, held: ReadonlySet<number> = new Set()): Promise<MetaAccount> {
  const vol = await Volume.open(dev, { cacheBytes: 16 * MiB });
  const sb: SuperBlock = vol.sb;
  const total = sb.totalMetaBlocks;
  const owner: (string | undefined)[] = new Array<string | undefined>(total);
  const acct: MetaAccount = { chains: {}, referenced: 0, listEntries: 0, freeExtents: 0 };
  const claim = (b: number, who: string): void => {
    assert.ok(Number.isSafeInteger(b) && b >= META_DEV_START_BLKNO && b < total,
      `${who}: blkno ${b} outside [${META_DEV_START_BLKNO}, ${total})`);
    assert.equal(owner[b], undefined, `metadata blkno ${b} is both ${owner[b]} and ${who}`);
    owner[b] = who;
  };
  const trees: [string, BtreeRoot][] = [
    ["fs_root", sb.fsRoot], ["logs_root", sb.logsRoot], ["log_merge", sb.logMerge],
    ["mounted_clients", sb.mountedClients], ["srch_root", sb.srchRoot],
    ["meta_alloc[0]", sb.metaAlloc[0].root], ["meta_alloc[1]", sb.metaAlloc[1].root],
    ["data_alloc", sb.dataAlloc.root],
  ];
  for (const [name, root] of trees) {
    await btreeWalkBlocks(vol.cache, root, (ref, level) => {
      claim(ref.blkno, `${name} btree block (level ${level})`);
      acct.referenced++;
    });
  }
  const lists: [string, AllocListHead][] = [
    ["server_meta_avail[0]", sb.serverMetaAvail[0]], ["server_meta_avail[1]", sb.serverMetaAvail[1]],
    ["server_meta_freed[0]", sb.serverMetaFreed[0]], ["server_meta_freed[1]", sb.serverMetaFreed[1]],
  ];
  for (const [name, h] of lists) {
    let ref = h.ref;
    let n = 0;
    let blocks = 0;
    while (ref.blkno !== 0) {
      assert.ok(++blocks <= total, `${name}: list chain has a cycle`);
      const buf = await vol.cache.read(ref, Magic.ALLOC_LIST);
      claim(ref.blkno, `${name} list block`);
      acct.referenced++;
      const entries = listEntries(buf);
      if (blocks === 1) assert.equal(entries.length, h.firstNr, `${name}: first_nr`);
      for (const b of entries) claim(b, `${name} list entry`);
      n += entries.length;
      ref = listNext(buf);
    }
    assert.equal(n, h.totalNr, `${name}: total_nr`);
    acct.chains[name] = blocks;
    acct.listEntries += n;
  }
  for (const i of [0, 1] as const) {
    const exts = await extentTreeContents(vol.cache, sb.metaAlloc[i], `meta_alloc[${i}]`);
    let sum = 0;
    for (const e of exts) {
      for (let b = e.start; b < endOf(e); b++) claim(b, `meta_alloc[${i}] free extent ${fmt(e)}`);
      sum += e.len;
    }
    assert.equal(sum, sb.metaAlloc[i].totalLen, `meta_alloc[${i}] total_len`);
    acct.freeExtents += sum;
  }
  for (const b of held) claim(b, "held by the test");
  const leaked: number[] = [];
  for (let b = META_DEV_START_BLKNO; b < total; b++) if (owner[b] === undefined) leaked.push(b);
  assert.deepEqual(leaked.slice(0, 20), [], `${leaked.length} metadata blocks are neither referenced, listed nor free`);
  return acct;
}

// logs_root is left out: its items must be valid log_trees structs, which fsck decodes and
// follows (their trees and lists are accounted by fsck, not by this churn)
type TreeName = "fsRoot" | "logMerge" | "mountedClients" | "srchRoot";
const TREE_NAMES: TreeName[] = ["fsRoot", "logMerge", "mountedClients", "srchRoot"];

type MOp =
  | { op: "insert"; tree: number; n: number; seed: number; big: boolean }
  | { op: "delete"; tree: number; n: number; seed: number }
  | { op: "freeTree"; tree: number }
  | { op: "dataAlloc"; n: number; len: number }
  | { op: "dataFree"; n: number }
  | { op: "commit" | "abandon" | "reopen" };

const mopArb: fc.Arbitrary<MOp> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ op: fc.constant("insert" as const), tree: fc.nat(), n: fc.integer({ min: 1, max: 400 }),
    seed: fc.nat(), big: fc.boolean() }) },
  { weight: 6, arbitrary: fc.record({ op: fc.constant("delete" as const), tree: fc.nat(), n: fc.integer({ min: 1, max: 300 }),
    seed: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("freeTree" as const), tree: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("dataAlloc" as const), n: fc.integer({ min: 1, max: 40 }),
    len: fc.integer({ min: 1, max: 64 }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("dataFree" as const), n: fc.integer({ min: 1, max: 40 }) }) },
  { weight: 4, arbitrary: fc.constant({ op: "commit" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "abandon" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "reopen" as const }) },
);

interface ChurnState {
  keys: Map<TreeName, string[]>;
  data: Extent[];
}

/**
 * fsck counts data blocks exactly: the extents this churn took from data_alloc belong to no
 * file, so fsck names them as leaked. Such a report is expected when every block it names
 * is one the model holds.
 */
function heldDataLeak(problem: string, held: Extent[]): boolean {
  const m = /^data blocks (\d+)\.\.(\d+) are neither referenced nor free \(leaked\)$/.exec(problem);
  if (m === null) return false;
  for (let b = Number(m[1]); b <= Number(m[2]); b++) {
    if (!held.some((e) => b >= e.start && b < e.start + e.len)) return false;
  }
  return true;
}

function cloneState(s: ChurnState): ChurnState {
  return { keys: new Map([...s.keys].map(([k, v]) => [k, [...v]])), data: s.data.map((e) => ({ ...e })) };
}

/** Items per tree stay under this, so the minimum-size volume never runs out of space. */
const MAX_TREE_ITEMS = 2500;

class MetaHarness {
  txn: VolumeTxn | null = null;
  state: ChurnState = { keys: new Map(TREE_NAMES.map((n) => [n, []])), data: [] };
  committed = cloneState(this.state);
  commits = 0;
  minMetaAlloc0 = Number.MAX_SAFE_INTEGER;
  fscks = 0;

  constructor(readonly disks: TestDisks, public vol: Volume) {}

  writer(): VolumeTxn {
    this.txn ??= this.vol.begin();
    return this.txn;
  }

  async verify(): Promise<void> {
    await accountMeta(this.disks.meta);
    this.minMetaAlloc0 = Math.min(this.minMetaAlloc0, this.vol.sb.metaAlloc[0].totalLen);
    // item counts of the committed trees
    for (const name of TREE_NAMES) {
      const items = await btreeCollect(this.vol.cache, this.vol.sb[name], MIN_KEY, MAX_KEY);
      const extra = name === "fsRoot" ? 2 : 0; // mkfs's root inode and its meta_seq item
      assert.equal(items.length, this.committed.keys.get(name)!.length + extra, `${name} item count`);
    }
  }
}

/** Keys the churn uses: fs_root keys avoid item types fsck decodes (inode, data extent). */
function churnKey(tree: TreeName, r: number): Buffer {
  return tree === "fsRoot" ? makeKey(Zone.FS, BigInt(1000 + (r % 50)), 200, BigInt(r >>> 6))
    : makeKey(Zone.FS + (r % 3), BigInt(r % 97), 7, BigInt(r));
}

async function mstep(h: MetaHarness, op: MOp): Promise<void> {
  const s = h.state;
  switch (op.op) {
    case "insert": {
      const tree = TREE_NAMES[op.tree % TREE_NAMES.length]!;
      const keys = s.keys.get(tree)!;
      const t = h.writer();
      let r = op.seed;
      for (let i = 0; i < op.n && keys.length < MAX_TREE_ITEMS; i++) {
        r = (Math.imul(r, 1103515245) + 12345) >>> 0;
        const key = churnKey(tree, r >>> 4);
        const len = op.big ? 600 + (r % 297) : r % 120;
        const hk = key.toString("hex");
        await btreeForce(t.w, t.sb[tree], key, Buffer.alloc(len, r & 255));
        if (!keys.includes(hk)) keys.push(hk);
      }
      break;
    }
    case "delete": {
      const tree = TREE_NAMES[op.tree % TREE_NAMES.length]!;
      const keys = s.keys.get(tree)!;
      const t = h.writer();
      let r = op.seed;
      for (let i = 0; i < op.n && keys.length > 0; i++) {
        r = (Math.imul(r, 1103515245) + 12345) >>> 0;
        const j = r % keys.length;
        const hk = keys[j]!;
        keys[j] = keys[keys.length - 1]!;
        keys.pop();
        await btreeDelete(t.w, t.sb[tree], Buffer.from(hk, "hex"));
      }
      break;
    }
    case "freeTree": {
      const tree = TREE_NAMES[1 + (op.tree % (TREE_NAMES.length - 1))]!; // never fs_root
      const t = h.writer();
      await btreeFree(t.w, t.sb[tree]);
      s.keys.set(tree, []);
      break;
    }
    case "dataAlloc": {
      const t = h.writer();
      for (let i = 0; i < op.n; i++) {
        const e = await allocExtent(t.w, t.sb.dataAlloc, op.len);
        if (e) s.data.push(e);
      }
      break;
    }
    case "dataFree": {
      const t = h.writer();
      for (let i = 0; i < op.n && s.data.length > 0; i++) {
        await freeExtent(t.w, t.sb.dataAlloc, s.data.pop()!);
      }
      break;
    }
    case "commit":
      await h.writer().commit();
      h.txn = null;
      h.committed = cloneState(s);
      h.commits++;
      await h.verify();
      if (h.commits % 15 === 0) {
        const r = await fsckVolume(h.disks.meta, h.disks.data);
        h.fscks++;
        assert.deepEqual(r.problems.filter((p) => !heldDataLeak(p, s.data)), [],
          "fsck finds no problem");
      }
      break;
    case "abandon":
      h.writer().abandon();
      h.txn = null;
      h.state = cloneState(h.committed);
      await h.verify();
      break;
    case "reopen":
      h.txn = null;
      h.vol = await Volume.open(h.disks.meta, { counters: h.vol.counters });
      h.state = cloneState(h.committed);
      await h.verify();
      break;
  }
}

test("metadata blocks: referenced + listed + free = the whole device, once each", async () => {
  const counters = new Counters();
  let stats = "";
  let minMetaAlloc0 = Number.MAX_SAFE_INTEGER;
  let dryRuns = 0;
  await assertProperty("meta accounting", BASE_SEED + 1, fc.array(mopArb, { minLength: 150, maxLength: 400, size: "max" }),
    async (ops) => {
      // the smallest volume mkfs makes: meta_alloc[0] runs dry, then meta_alloc[1] feeds the lists
      const disks = await makeTestVolume(128 * MiB, 16 * MiB);
      const h = new MetaHarness(disks, await Volume.open(disks.meta, { counters }));
      const first = await accountMeta(disks.meta);
      assert.ok(first.listEntries > 0 && first.freeExtents > 0);
      const all: MOp[] = [...ops, { op: "commit" }, { op: "reopen" }];
      for (let i = 0; i < all.length; i++) {
        try {
          await mstep(h, all[i]!);
        } catch (e) {
          const msg = e instanceof Error ? e.message : String(e);
          throw new Error(`op ${i} of ${all.length} ${JSON.stringify(all[i])} (commit ${h.commits}): ${msg}`, { cause: e });
        }
      }
      const r = await fsckVolume(disks.meta, disks.data);
      assert.deepEqual(r.problems.filter((p) => !heldDataLeak(p, h.committed.data)), [],
        "fsck finds no problem at the end");
      const last = await accountMeta(disks.meta);
      stats = `last run: ${h.commits} commits, min meta_alloc[0] ${h.minMetaAlloc0}, final ${JSON.stringify(last)}`;
      minMetaAlloc0 = Math.min(minMetaAlloc0, h.minMetaAlloc0);
      if (h.minMetaAlloc0 === 0) dryRuns++;
    }, { numRuns: 6 });
  console.log(`${dryRuns} runs drained meta_alloc[0]; ${stats}; cow ${counters.get("block_cow")} split ${counters.get("btree_split")} ` +
    `join ${counters.get("btree_join")} commits ${counters.get("server_commit")}`);
  assert.equal(minMetaAlloc0, 0, "meta_alloc[0] ran dry (meta_alloc[1] fed the avail list)");
});

test("alloc-list chains of several blocks: avail grown past one block, a freed list drained", async () => {
  // 1 GiB of sparse metadata device: room for lists of more than ALLOC_LIST_MAX_BLKNOS (8185)
  const disks = await makeTestVolume(1024 * MiB, 16 * MiB);
  let vol = await Volume.open(disks.meta);
  const N = 9000;
  const fsck = async (what: string): Promise<void> => {
    assert.deepEqual((await fsckVolume(disks.meta, disks.data)).problems, [], `fsck ${what}`);
  };
  const churn = async (t: VolumeTxn, n: number, seed: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      await btreeForce(t.w, t.sb.logMerge, makeKey(Zone.FS, 9n, 7, BigInt((seed * 7919 + i * 104729) % 5000)),
        Buffer.alloc(700, i & 255));
    }
  };
  // 1: a transaction allocates N blknos (refilling avail from meta_alloc[0] as it goes) and
  // frees them again while still dirty: they return to avail, which outgrows one list block
  let t = vol.begin();
  const grabbed: number[] = [];
  for (let i = 0; i < N; i++) grabbed.push(await t.alloc.alloc(t.w));
  assert.equal(new Set(grabbed).size, N, "no blkno handed out twice");
  for (const b of grabbed) await t.alloc.freeDirty(t.w, b);
  await t.commit();
  let a = await accountMeta(disks.meta);
  assert.ok(a.chains["server_meta_avail[0]"]! >= 2, `avail chain of ${a.chains["server_meta_avail[0]"]} blocks`);
  await fsck("after growing avail");
  // 2: ordinary transactions pop from the multi-block avail list
  for (let c = 0; c < 3; c++) {
    t = vol.begin();
    await churn(t, 300, c);
    await t.commit();
    await accountMeta(disks.meta);
  }
  // 3: the test takes N blknos and holds them across a commit (they are in use, unreferenced
  // by the super), then frees them as committed blocks: the freed list outgrows one block
  t = vol.begin();
  const held = new Set<number>();
  for (let i = 0; i < N; i++) held.add(await t.alloc.alloc(t.w));
  assert.equal(held.size, N, "no blkno handed out twice");
  await t.commit();
  await accountMeta(disks.meta, held);
  vol = await Volume.open(disks.meta);
  t = vol.begin();
  await churn(t, 100, 7);
  for (const b of held) await t.alloc.freeCommitted(t.w, b);
  await t.commit();
  a = await accountMeta(disks.meta);
  assert.ok(a.chains["server_meta_freed[1]"]! >= 2, `pending freed chain of ${a.chains["server_meta_freed[1]"]} blocks`);
  await fsck("with a long pending freed list");
  // 4: the next commit drains the whole chain into meta_alloc[1]
  t = vol.begin();
  await churn(t, 100, 8);
  await t.commit();
  a = await accountMeta(disks.meta);
  assert.ok(a.chains["server_meta_freed[1]"]! <= 1, "the long freed list was drained");
  await fsck("after draining");
  vol = await Volume.open(disks.meta);
  for (let c = 0; c < 3; c++) {
    t = vol.begin();
    await churn(t, 300, 10 + c);
    await t.commit();
    await accountMeta(disks.meta);
  }
  await fsck("at the end");
});
