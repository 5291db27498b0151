/*
 * Goal: the item cache (src/core/item_cache.ts) never answers wrongly. Whatever it says about
 * a key (value, known absence) or an iteration step (next/prev item, none in range) must
 * agree with "this mount's newest dirty version, else the committed state", through fills,
 * dirty puts and deletes, commits in flight (re-dirtied, failed, committed), lock
 * invalidations (keeping or dropping clean items), writes by other mounts behind an
 * invalidation, fills that raced with a removal, and evictions under a tiny byte bound. Its
 * range bookkeeping (sorted, disjoint, merged) and counts are checked after every step.
 *
 * Method: fast-check generates operation sequences over a small key universe spread over three
 * inode groups; a model holds the committed state ("truth", what a fill reads) and the dirty
 * versions; checkInvariants() runs after each operation; every answer that is not a miss is
 * compared with the model. Deterministic cases pin the range merging/trimming, the eviction
 * order, the read barrier and the counters. Seeds are fixed (override: FC_SEED=<n>).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { type Item, ITEM_DELETION } from "../../src/core/btree.js";
import { ItemCache } from "../../src/core/item_cache.js";
import {
  compareKeys, formatKey, keyDec, keyInc, makeKey, MAX_KEY, MIN_KEY, Zone,
} from "../../src/core/key.js";
import { inodeGroupRange } from "../../src/core/lock_names.js";
import { Counters } from "../../src/util/counters.js";
import { makeAssertProperty } from "../helpers/property.js";

const BASE_SEED = process.env.FC_SEED !== undefined ? Number(process.env.FC_SEED) : 0x17e3c;
const assertProperty = makeAssertProperty(BASE_SEED);

const INOS = [1n, 5n, 1030n, 4100n];
const SECONDS = 10;
const key = (ino: bigint, n: number): Buffer => makeKey(Zone.FS, ino, 8, BigInt(n));
/** Every key the workload uses, sorted. */
const KEYS: Buffer[] = INOS.flatMap((ino) =>
  Array.from({ length: SECONDS }, (_, n) => key(ino, n))).sort(compareKeys);
/** Range boundaries: the keys, the groups' bounds and the ends of the key space. */
const BOUNDS: Buffer[] = [...KEYS, ...INOS.flatMap((i) => [inodeGroupRange(i).start,
  inodeGroupRange(i).end]), MIN_KEY, MAX_KEY].sort(compareKeys);
const hex = (k: Buffer): string => k.toString("hex");

/** The committed state and this mount's dirty versions (null = deleted). */
class Model {
  readonly truth = new Map<string, string>();
  readonly dirty = new Map<string, { val: string | null; ver: number }>();
  ver = 0;

  current(k: Buffer): string | null {
    const d = this.dirty.get(hex(k));
    if (d !== undefined) return d.val;
    return this.truth.get(hex(k)) ?? null;
  }

  /** Visible items of [start, end] in key order. */
  visible(start: Buffer, end: Buffer): { key: Buffer; val: string }[] {
    const out: { key: Buffer; val: string }[] = [];
    for (const k of KEYS) {
      if (compareKeys(k, start) < 0 || compareKeys(k, end) > 0) continue;
      const v = this.current(k);
      if (v !== null) out.push({ key: k, val: v });
    }
    return out;
  }

  /** Committed items of [start, end]: what a fill reads from the forest. */
  committed(start: Buffer, end: Buffer): Item[] {
    return KEYS.filter((k) => compareKeys(k, start) >= 0 && compareKeys(k, end) <= 0 &&
      this.truth.has(hex(k))).map((k) => ({ key: k, val: Buffer.from(this.truth.get(hex(k))!),
      seq: 1, flags: 0 }));
  }
}

type Op =
  | { t: "fill"; a: number; b: number; limit: number }
  | { t: "put"; k: number; v: number }
  | { t: "del"; k: number }
  | { t: "begin" }
  | { t: "end"; ok: boolean }
  | { t: "inval"; g: number; keep: boolean }
  | { t: "remote"; k: number; v: number; del: boolean }
  | { t: "raced"; a: number; b: number; k: number }
  | { t: "get"; k: number }
  | { t: "next"; k: number; e: number }
  | { t: "prev"; k: number; s: number };

const nk = fc.nat(KEYS.length - 1);
const nb = fc.nat(BOUNDS.length - 1);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ t: fc.constant("fill" as const), a: nb, b: nb,
    limit: fc.integer({ min: 1, max: 12 }) }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant("put" as const), k: nk, v: fc.nat(999) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("del" as const), k: nk }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("begin" as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("end" as const), ok: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("inval" as const), g: fc.nat(INOS.length - 1),
    keep: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("remote" as const), k: nk, v: fc.nat(999),
    del: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("raced" as const), a: nb, b: nb, k: nk }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant("get" as const), k: nk }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant("next" as const), k: nb, e: nb }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant("prev" as const), k: nb, s: nb }) },
);

interface Harness {
  cache: ItemCache;
  model: Model;
  /** Model versions of the dirty keys the commit in flight carries. */
  inFlight: Map<string, { val: string | null; ver: number }> | null;
}

function ordered(a: Buffer, b: Buffer): [Buffer, Buffer] {
  return compareKeys(a, b) <= 0 ? [a, b] : [b, a];
}

function put(h: Harness, k: Buffer, val: string | null): void {
  h.cache.put({ key: Buffer.from(k), val: Buffer.from(val ?? ""), seq: 1,
    flags: val === null ? ITEM_DELETION : 0 });
  h.model.dirty.set(hex(k), { val, ver: ++h.model.ver });
}

function begin(h: Harness): void {
  const items = h.cache.beginCommit();
  assert.deepEqual(items.map((it) => hex(it.key)), [...h.model.dirty.keys()].sort(),
    "a commit takes every dirty item, sorted");
  for (const it of items) {
    const d = h.model.dirty.get(hex(it.key))!;
    assert.equal((it.flags & ITEM_DELETION) !== 0 ? null : it.val.toString(), d.val);
  }
  h.inFlight = new Map(h.model.dirty);
}

function end(h: Harness, ok: boolean): void {
  h.cache.endCommit(ok);
  if (ok) {
    for (const [k, d] of h.inFlight!) {
      if (d.val === null) h.model.truth.delete(k);
      else h.model.truth.set(k, d.val);
      // settled unless written again while the commit was in flight
      if (h.model.dirty.get(k)?.ver === d.ver) h.model.dirty.delete(k);
    }
  }
  h.inFlight = null;
}

function commitAll(h: Harness): void {
  if (h.inFlight !== null) end(h, true);
  begin(h);
  end(h, true);
}

/** A fill of [start, end] as a reader trimmed to `limit` items would make it. */
function fillFor(h: Harness, start: Buffer, end: Buffer, limit: number):
  { items: Item[]; end: Buffer } {
  let items = h.model.committed(start, end);
  let stop = end;
  if (items.length > limit) {
    items = items.slice(0, limit);
    stop = items[limit - 1]!.key;
  }
  return { items, end: stop };
}

function checkGet(h: Harness, k: Buffer): void {
  const got = h.cache.get(k);
  const want = h.model.current(k);
  const where = `get ${formatKey(k)}`;
  if (got.kind === "hit") assert.equal(got.val.toString(), want, where);
  if (got.kind === "negative") assert.equal(want, null, where);
}

function checkNext(h: Harness, k: Buffer, e: Buffer): void {
  const s = h.cache.next(k, e);
  const vis = h.model.visible(k, e);
  const where = `next ${formatKey(k)}..${formatKey(e)}`;
  if (s.kind === "hit") {
    assert.ok(vis.length > 0, `${where}: found ${formatKey(s.item.key)}, model has none`);
    assert.equal(hex(s.item.key), hex(vis[0]!.key), where);
    assert.equal(s.item.val.toString(), vis[0]!.val, where);
  } else if (s.kind === "none") {
    assert.equal(vis.length, 0, `${where}: none, model has ${vis.length}`);
  } else {
    assert.ok(compareKeys(s.at, k) >= 0 && compareKeys(s.at, e) <= 0, where);
    assert.ok(vis.every((v) => compareKeys(v.key, s.at) >= 0), `${where}: skipped items`);
  }
}

function checkPrev(h: Harness, k: Buffer, st: Buffer): void {
  const s = h.cache.prev(k, st);
  const vis = h.model.visible(st, k);
  const where = `prev ${formatKey(st)}..${formatKey(k)}`;
  if (s.kind === "hit") {
    assert.ok(vis.length > 0, `${where}: found ${formatKey(s.item.key)}, model has none`);
    assert.equal(hex(s.item.key), hex(vis[vis.length - 1]!.key), where);
    assert.equal(s.item.val.toString(), vis[vis.length - 1]!.val, where);
  } else if (s.kind === "none") {
    assert.equal(vis.length, 0, where);
  } else {
    assert.ok(compareKeys(s.at, st) >= 0 && compareKeys(s.at, k) <= 0, where);
    assert.ok(vis.every((v) => compareKeys(v.key, s.at) <= 0), `${where}: skipped items`);
  }
}

function apply(h: Harness, op: Op): void {
  switch (op.t) {
    case "fill": {
      const [s, e] = ordered(BOUNDS[op.a]!, BOUNDS[op.b]!);
      const f = fillFor(h, s, e, op.limit);
      assert.ok(h.cache.fill(s, f.end, f.items, h.cache.gen), "a fill with the current gen");
      break;
    }
    case "put": put(h, KEYS[op.k]!, `v${op.v}`); break;
    case "del": put(h, KEYS[op.k]!, null); break;
    case "begin": if (h.inFlight === null) begin(h); break;
    case "end": if (h.inFlight !== null) end(h, op.ok); break;
    case "inval": {
      const r = inodeGroupRange(INOS[op.g]!);
      h.cache.invalidate(r.start, r.end, op.keep);
      break;
    }
    case "remote": {
      // another mount writes behind the lock protocol: we commit, drop the group, it writes
      const k = KEYS[op.k]!;
      commitAll(h);
      const r = inodeGroupRange(k.readBigUInt64BE(1));
      h.cache.invalidate(r.start, r.end, false);
      if (op.del) h.model.truth.delete(hex(k));
      else h.model.truth.set(hex(k), `r${op.v}`);
      break;
    }
    case "raced": {
      // a reader reads the forest, a write of ours commits meanwhile, then the reader fills
      const [s, e] = ordered(BOUNDS[op.a]!, BOUNDS[op.b]!);
      const gen = h.cache.gen;
      const f = fillFor(h, s, e, 1000);
      put(h, KEYS[op.k]!, `w${h.model.ver}`);
      commitAll(h);
      h.cache.fill(s, f.end, f.items, gen);
      break;
    }
    case "get": checkGet(h, KEYS[op.k]!); break;
    case "next": checkNext(h, ...ordered(BOUNDS[op.k]!, BOUNDS[op.e]!)); break;
    case "prev": {
      const [s, k] = ordered(BOUNDS[op.s]!, BOUNDS[op.k]!);
      checkPrev(h, k, s);
      break;
    }
  }
}

async function runOps(maxBytes: number, ops: Op[]): Promise<void> {
  const h: Harness = { cache: new ItemCache(new Counters(), { maxBytes }), model: new Model(),
    inFlight: null };
  for (const op of ops) {
    apply(h, op);
    h.cache.checkInvariants();
    if (maxBytes >= 1 << 20) assert.ok(h.cache.bytes <= maxBytes);
  }
  // at the end, every key and every iteration must be answerable once filled
  if (h.inFlight !== null) end(h, true);
  h.cache.fill(MIN_KEY, MAX_KEY, h.model.committed(MIN_KEY, MAX_KEY), h.cache.gen);
  for (const k of KEYS) {
    const got = h.cache.get(k);
    if (maxBytes >= 1 << 20) assert.notEqual(got.kind, "miss");
    checkGet(h, k);
  }
}

test("the item cache agrees with a model: fills, commits, invalidations, evictions", async () => {
  await assertProperty("item cache model", BASE_SEED,
    fc.tuple(fc.constantFrom(900, 2500, 1 << 20),
      fc.array(opArb, { minLength: 1, maxLength: 160, size: "max" })),
    ([maxBytes, ops]) => runOps(maxBytes, ops), { numRuns: 400 });
});

test("long runs with a tiny bound: evictions happen and answers stay right", async () => {
  await assertProperty("item cache long", BASE_SEED + 1,
    fc.array(opArb, { minLength: 1500, maxLength: 2500 }),
    (ops) => runOps(1800, ops), { numRuns: 8 });
});

// ---------------------------------------------------------------------------------------
// Deterministic cases.

const k1 = (n: number): Buffer => key(1n, n);
const item = (k: Buffer, v: string): Item => ({ key: k, val: Buffer.from(v), seq: 1, flags: 0 });
const ranges = (c: ItemCache): string[] =>
  c.completeRanges().map((r) => `${formatKey(r.start)}..${formatKey(r.end)}`);

test("complete ranges merge when they overlap or touch, and invalidation trims them", () => {
  const c = new ItemCache(new Counters());
  assert.ok(c.fill(k1(2), k1(4), [item(k1(3), "a")], c.gen));
  assert.ok(c.fill(k1(6), k1(8), [], c.gen));
  assert.equal(c.rangeCount, 2);
  // (4, 6) touches both: one range
  assert.ok(c.fill(keyInc(k1(4)), keyDec(k1(6)), [], c.gen));
  assert.deepEqual(ranges(c), [`${formatKey(k1(2))}..${formatKey(k1(8))}`]);
  // touching by keyInc of the end
  assert.ok(c.fill(keyInc(k1(8)), k1(9), [], c.gen));
  assert.equal(c.rangeCount, 1);
  assert.equal(c.get(k1(3)).kind, "hit");
  assert.equal(c.get(k1(7)).kind, "negative");
  assert.equal(c.get(k1(1)).kind, "miss");
  // a group spanning range split by invalidating another group in the middle
  assert.ok(c.fill(key(1n, 0), key(4100n, 3), [item(key(1030n, 1), "x")], c.gen));
  c.invalidate(inodeGroupRange(1030n).start, inodeGroupRange(1030n).end, false);
  const g = inodeGroupRange(1030n);
  assert.deepEqual(ranges(c), [`${formatKey(key(1n, 0))}..${formatKey(keyDec(g.start))}`,
    `${formatKey(keyInc(g.end))}..${formatKey(key(4100n, 3))}`]);
  assert.equal(c.rangeCount, 2);
  assert.equal(c.get(key(1030n, 1)).kind, "miss", "the invalidated group is unknown");
  assert.equal(c.get(key(4100n, 2)).kind, "negative", "the rest stays known");
  c.checkInvariants();
});

test("downgrade keeps clean items, a drop keeps dirty ones", () => {
  const counters = new Counters();
  const c = new ItemCache(counters);
  const g = inodeGroupRange(1n);
  assert.ok(c.fill(g.start, g.end, [item(k1(1), "clean")], c.gen));
  c.put({ key: k1(2), val: Buffer.from("dirty"), seq: 1, flags: 0 });
  c.invalidate(g.start, g.end, true);
  assert.equal(c.get(k1(1)).kind, "hit");
  c.invalidate(g.start, g.end, false);
  assert.equal(c.get(k1(1)).kind, "miss");
  const d = c.get(k1(2));
  assert.ok(d.kind === "hit" && d.val.toString() === "dirty");
  assert.equal(counters.get("item_cache_invalidate"), 2);
  c.checkInvariants();
});

test("a fill that raced with a removal is refused (the read barrier)", () => {
  const counters = new Counters();
  const c = new ItemCache(counters);
  const gen = c.gen;
  // our write of k1(4) commits while a reader was reading the old committed state
  c.put({ key: k1(4), val: Buffer.from("new"), seq: 9, flags: 0 });
  c.beginCommit();
  c.endCommit(true);
  assert.equal(c.get(k1(4)).kind, "miss", "committed outside a complete range: dropped");
  assert.equal(c.fill(k1(0), k1(9), [item(k1(4), "old")], gen), false);
  assert.equal(counters.get("item_cache_fill_raced"), 1);
  assert.equal(c.get(k1(4)).kind, "miss");
});

test("commits in flight: re-dirtied items stay dirty, failed ones too, the count splits", () => {
  const c = new ItemCache(new Counters());
  const g = inodeGroupRange(1n);
  assert.ok(c.fill(g.start, g.end, [], c.gen));
  c.put({ key: k1(1), val: Buffer.from("a"), seq: 1, flags: 0 });
  c.put({ key: k1(2), val: Buffer.alloc(0), seq: 1, flags: ITEM_DELETION });
  assert.equal(c.beginCommit().length, 2);
  assert.equal(c.pendingDirtyCount, 0);
  c.put({ key: k1(1), val: Buffer.from("b"), seq: 2, flags: 0 });
  assert.equal(c.pendingDirtyCount, 1);
  assert.ok(c.isPendingDirty(k1(1)) && !c.isPendingDirty(k1(2)));
  c.endCommit(true);
  assert.equal(c.dirtyCount, 1, "the re-dirtied item waits for the next commit");
  assert.equal(c.get(k1(2)).kind, "negative", "a committed tombstone leaves a known absence");
  const items = c.beginCommit();
  assert.deepEqual(items.map((i) => i.val.toString()), ["b"]);
  c.endCommit(false);
  assert.equal(c.pendingDirtyCount, 1, "a failed commit leaves its items dirty");
  c.checkInvariants();
});

function fillGroups(c: ItemCache, groups: bigint[], warm: Buffer): void {
  for (const ino of groups) {
    const r = inodeGroupRange(ino);
    c.put({ key: key(ino, 0), val: Buffer.alloc(800, 2), seq: 1, flags: 0 });
    const items = Array.from({ length: 8 }, (_, i): Item => ({ key: key(ino + BigInt(i + 1), 1),
      val: Buffer.alloc(800, 1), seq: 1, flags: 0 }));
    assert.ok(c.fill(r.start, r.end, items, c.gen));
    c.get(warm);
    c.checkInvariants();
  }
}

test("eviction drops clean items of the least recently used range, never dirty ones", () => {
  const counters = new Counters();
  const c = new ItemCache(counters, { maxBytes: 40 * 1024 });
  // groups 2048 apart: separate ranges
  const groups = Array.from({ length: 8 }, (_, g) => BigInt(g * 2048));
  fillGroups(c, groups, key(1n, 1));
  assert.ok(counters.get("item_cache_evict") > 0);
  assert.ok(c.bytes <= 40 * 1024, `bytes ${c.bytes}`);
  assert.equal(c.get(key(1n, 1)).kind, "hit", "the recently used range survived");
  assert.equal(c.get(key(2049n, 1)).kind, "miss", "an old range was evicted");
  for (const ino of groups) assert.equal(c.get(key(ino, 0)).kind, "hit", "dirty items stay");
  assert.equal(c.dirtyCount, 8);
});

test("adjacent groups merge into one range and still respect the bound", () => {
  const counters = new Counters();
  const c = new ItemCache(counters, { maxBytes: 40 * 1024 });
  const groups = Array.from({ length: 16 }, (_, g) => BigInt(g * 1024));
  fillGroups(c, groups, key(1n, 1));
  assert.ok(counters.get("item_cache_evict") > 0);
  // over the bound by at most the dirty items (never evicted)
  assert.ok(c.bytes <= 40 * 1024 + 16 * 1000, `bytes ${c.bytes}`);
  const last = groups[groups.length - 1]!;
  assert.equal(c.get(key(last + 1n, 1)).kind, "hit", "the last fill is kept");
  assert.ok(c.rangeCount >= 1);
});

test("counters: hits, misses, fills", () => {
  const counters = new Counters();
  const c = new ItemCache(counters);
  c.get(k1(1));
  assert.ok(c.fill(k1(0), k1(3), [item(k1(1), "x")], c.gen));
  c.get(k1(1));
  c.get(k1(2));
  assert.equal(counters.get("item_cache_miss"), 1);
  assert.equal(counters.get("item_cache_hit"), 2);
  assert.equal(counters.get("item_cache_fill"), 1);
});
