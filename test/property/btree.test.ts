/*
 * Goal: show that the COW btree (src/core/btree.ts) behaves exactly like a sorted map of
 * key -> {value, seq, flags} under long random workloads, across commits, abandoned
 * transactions and reopening the volume from its device, and that its block structure stays
 * sound: every block reachable exactly once, levels descending by one, every key inside the
 * range its parent gives it, no empty blocks, and the last key of every parent equal to the
 * bound its own parent holds for it.
 *
 * Method: fast-check generates operation sequences (insert, update, force, delete, runs of
 * deletes, lookup, next, prev, bounded iteration, sorted insertList batches, btreeFree of the
 * whole tree, explicit shape checks, commit, abandon, reopen) over keys that are clustered
 * (few inodes, dense second fields) or spread over the whole key space (plus MIN_KEY and
 * MAX_KEY), with values of 0..896 bytes biased toward both ends so blocks split, join and
 * rebalance. Update and delete mostly address keys the model holds. Each result is compared
 * with a model (sorted hex keys + Map); after every commit, abandon, reopen and check the
 * tree is walked block by block (btreeWalkBlocks) and compared item by item with the model;
 * an abandon or reopen restores the model to the last commit. One long run (~20k ops, grow /
 * shrink / mixed segments) asserts that splits, joins and rebalances all happened; many short
 * runs add variety; a deterministic test grows a tree to height 3 (parent-level splits and
 * joins) and deletes it back to nothing. Small block caches (2 MiB, and 16 blocks in half of
 * the short runs) make clean blocks get evicted and re-read while dirty ones stay pinned.
 * Seeds are fixed (override: FC_SEED=<n>) and printed on failure.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  btreeCollect, btreeDelete, btreeForce, btreeFree, btreeInsert, btreeInsertList, btreeIterate,
  btreeLookup, btreeNext, btreePrev, btreeUpdate, btreeWalkBlocks, BTREE_MAX_VAL_LEN,
  type Item, type ItemOpts,
} from "../../src/core/btree.js";
import { itemAt, keyAt, nrItems, refAt } from "../../src/core/btree_block.js";
import type { BlockCache } from "../../src/core/block.js";
import { type BtreeRoot, Magic } from "../../src/core/format.js";
import { keyDec, keyInc, makeKey, MAX_KEY, MIN_KEY, U64_MAX, Zone } from "../../src/core/key.js";
import { Volume, type VolumeTxn } from "../../src/core/volume.js";
import { Counters } from "../../src/util/counters.js";
import { makeTestVolume, type TestDisks } from "../helpers/volume.js";
import { makeAssertProperty } from "../helpers/property.js";
import { expectFsError } from "../helpers/errors.js";

const BASE_SEED = process.env.FC_SEED !== undefined ? Number(process.env.FC_SEED) : 0x5c0f75;

// ---------------------------------------------------------------------------------------
// The model.

interface Entry {
  key: Buffer;
  val: Buffer;
  seq: number;
  flags: number;
}

const hex = (k: Buffer): string => k.toString("hex");

/** A sorted map keyed by hex strings (same-length lowercase hex sorts like the bytes). */
class Model {
  keys: string[] = [];
  map = new Map<string, Entry>();

  clone(): Model {
    const m = new Model();
    m.keys = [...this.keys];
    m.map = new Map(this.map);
    return m;
  }

  get size(): number {
    return this.keys.length;
  }

  /** Index of the first key >= h. */
  lowerBound(h: string): number {
    let lo = 0;
    let hi = this.keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.keys[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  get(k: Buffer): Entry | undefined {
    return this.map.get(hex(k));
  }

  set(e: Entry): void {
    const h = hex(e.key);
    if (!this.map.has(h)) this.keys.splice(this.lowerBound(h), 0, h);
    this.map.set(h, e);
  }

  delete(k: Buffer): void {
    const h = hex(k);
    if (!this.map.delete(h)) return;
    this.keys.splice(this.lowerBound(h), 1);
  }

  clear(): void {
    this.keys = [];
    this.map.clear();
  }

  at(i: number): Entry {
    return this.map.get(this.keys[i]!)!;
  }

  entries(): Entry[] {
    return this.keys.map((h) => this.map.get(h)!);
  }

  /** Entries with start <= key <= end. */
  range(start: Buffer, end: Buffer): Entry[] {
    const out: Entry[] = [];
    const e = hex(end);
    for (let i = this.lowerBound(hex(start)); i < this.keys.length && this.keys[i]! <= e; i++) {
      out.push(this.at(i));
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------
// Checks shared by the tests.

function describe(e: Entry | Item | null | undefined): string {
  if (!e) return "none";
  return `${hex(e.key)} len ${e.val.length} seq ${e.seq} flags ${e.flags}`;
}

function sameItem(a: Entry | Item | null | undefined, b: Entry | Item | null | undefined): boolean {
  if (!a || !b) return !a && !b;
  return a.key.equals(b.key) && a.val.equals(b.val) && a.seq === b.seq && a.flags === b.flags;
}

function assertItem(actual: Item | null, expect: Entry | null | undefined, what: string): void {
  if (!sameItem(actual, expect)) {
    assert.fail(`${what}: got ${describe(actual)}, model has ${describe(expect)}`);
  }
}

function assertItems(actual: Item[], expect: Entry[], what: string): void {
  const n = Math.min(actual.length, expect.length);
  for (let i = 0; i < n; i++) {
    if (!sameItem(actual[i], expect[i])) {
      assert.fail(`${what}: item ${i} is ${describe(actual[i])}, model has ${describe(expect[i])}`);
    }
  }
  if (actual.length !== expect.length) {
    assert.fail(`${what}: ${actual.length} items, model has ${expect.length}; first extra: ` +
      `${describe(actual[n] ?? expect[n])}`);
  }
}


export interface ShapeStats {
  blocks: number;
  leaves: number;
  height: number;
}

/**
 * Walks every block of the tree: each blkno once, every block non-empty, keys strictly
 * increasing and inside (parent's previous key, parent's key], a parent's last key equal to
 * its own upper bound (else keys up to that bound would find no child), leaves left to right
 * equal to the model.
 */
async function checkShape(cache: BlockCache, root: BtreeRoot, expect: Entry[], what: string):
  Promise<ShapeStats> {
  assert.equal(root.height === 0, expect.length === 0,
    `${what}: root height ${root.height} with ${expect.length} model items`);
  const seen = new Set<number>();
  const bounds = new Map<number, { lo: Buffer | null; hi: Buffer }>();
  if (root.height > 0) bounds.set(root.ref.blkno, { lo: null, hi: MAX_KEY });
  const leafItems: Item[] = [];
  let leaves = 0;
  await btreeWalkBlocks(cache, root, (ref, level, buf) => {
    const where = `${what}: block ${ref.blkno} (level ${level})`;
    assert.ok(!seen.has(ref.blkno), `${where} reached twice`);
    seen.add(ref.blkno);
    const b = bounds.get(ref.blkno);
    assert.ok(b, `${where} has no bounds from a parent`);
    const nr = nrItems(buf);
    assert.ok(nr > 0, `${where} is empty`);
    let prev: Buffer | null = b.lo;
    for (let i = 0; i < nr; i++) {
      const k = keyAt(buf, i);
      if (prev) assert.ok(Buffer.compare(prev, k) < 0, `${where} item ${i} key ${hex(k)} not above ${hex(prev)}`);
      assert.ok(Buffer.compare(k, b.hi) <= 0, `${where} item ${i} key ${hex(k)} above bound ${hex(b.hi)}`);
      prev = k;
    }
    if (level > 0) {
      assert.ok(keyAt(buf, nr - 1).equals(b.hi), `${where} last parent key is not its bound ${hex(b.hi)}`);
      for (let i = 0; i < nr; i++) {
        bounds.set(refAt(buf, i).blkno, { lo: i > 0 ? keyAt(buf, i - 1) : b.lo, hi: keyAt(buf, i) });
      }
    } else {
      leaves++;
      for (let i = 0; i < nr; i++) leafItems.push(itemAt(buf, i));
    }
  });
  assertItems(leafItems, expect, `${what}: leaf items`);
  return { blocks: seen.size, leaves, height: root.height };
}

// ---------------------------------------------------------------------------------------
// Operations.

interface ValSpec {
  len: number;
  fill: number;
}
type KeyRef =
  | { kind: "fresh"; key: Buffer }
  | { kind: "existing"; pick: number; adj: -1 | 0 | 1 };
interface OptSpec {
  seq: number;
  flags: number;
}

type Op =
  | { op: "insert" | "update" | "force"; k: KeyRef; v: ValSpec; o: OptSpec | null }
  | { op: "delete" | "lookup" | "next" | "prev"; k: KeyRef }
  | { op: "deleteRun"; pick: number; n: number }
  | { op: "iterate"; a: KeyRef; b: KeyRef; limit: number }
  | { op: "insertList"; items: { key: Buffer; v: ValSpec; o: OptSpec | null }[] }
  | { op: "free" | "commit" | "abandon" | "reopen" | "check" };

/** PATTERN[i] = 7i mod 256; never modified, so values can be views of it. */
const PATTERN = Buffer.from(Array.from({ length: 256 + BTREE_MAX_VAL_LEN + 1 }, (_, i) => (i * 7) & 255));

/** The value of v.len bytes whose byte i is (fill + 7i) mod 256 (183 = 7^-1 mod 256). */
function makeVal(v: ValSpec): Buffer {
  const off = (v.fill * 183) & 255;
  return PATTERN.subarray(off, off + v.len);
}

const clusteredKeyArb = fc.record({
  ino: fc.integer({ min: 0, max: 40 }),
  type: fc.constantFrom(4, 8, 12),
  second: fc.integer({ min: 0, max: 500 }),
}).map(({ ino, type, second }) => makeKey(Zone.FS, BigInt(ino), type, BigInt(second)));

const u64Arb = fc.oneof(fc.bigInt({ min: 0n, max: U64_MAX }), fc.constantFrom(0n, 1n, U64_MAX));
const spreadKeyArb = fc.tuple(fc.integer({ min: 0, max: 255 }), u64Arb, fc.integer({ min: 0, max: 255 }),
  u64Arb, u64Arb, fc.integer({ min: 0, max: 255 }))
  .map(([z, a, t, b, c, d]) => makeKey(z, a, t, b, c, d));

const freshKeyArb = fc.oneof(
  { arbitrary: clusteredKeyArb, weight: 12 },
  { arbitrary: spreadKeyArb, weight: 5 },
  { arbitrary: fc.constantFrom(MIN_KEY, MAX_KEY), weight: 1 },
);

const existingArb = fc.record({
  kind: fc.constant("existing" as const),
  pick: fc.nat(),
  adj: fc.constantFrom(-1 as const, 0 as const, 0 as const, 1 as const),
});
const freshRefArb = freshKeyArb.map((key) => ({ kind: "fresh" as const, key }));
/** Mostly keys the model holds (or their neighbours). */
const hitKeyArb = fc.oneof({ arbitrary: existingArb, weight: 5 }, { arbitrary: freshRefArb, weight: 1 });
/** Mostly keys not yet present. */
const newKeyArb = fc.oneof({ arbitrary: existingArb, weight: 1 }, { arbitrary: freshRefArb, weight: 8 });
const anyKeyArb = fc.oneof(existingArb, freshRefArb);

const lenArb = fc.oneof(
  { arbitrary: fc.constant(0), weight: 2 },
  { arbitrary: fc.integer({ min: 1, max: 32 }), weight: 4 },
  { arbitrary: fc.integer({ min: 33, max: 400 }), weight: 3 },
  { arbitrary: fc.integer({ min: 600, max: BTREE_MAX_VAL_LEN - 1 }), weight: 4 },
  { arbitrary: fc.constant(BTREE_MAX_VAL_LEN), weight: 2 },
);
const valArb = fc.record({ len: lenArb, fill: fc.integer({ min: 0, max: 255 }) });
const optArb = fc.option(fc.record({
  seq: fc.integer({ min: 1, max: 2 ** 48 }),
  flags: fc.integer({ min: 0, max: 3 }),
}), { freq: 3 });

const writeArb = (op: "insert" | "update" | "force", k: fc.Arbitrary<KeyRef>): fc.Arbitrary<Op> =>
  fc.record({ op: fc.constant(op), k, v: valArb, o: optArb });
const keyOpArb = (op: "delete" | "lookup" | "next" | "prev", k: fc.Arbitrary<KeyRef>): fc.Arbitrary<Op> =>
  fc.record({ op: fc.constant(op), k });
const plainArb = (op: "free" | "commit" | "abandon" | "reopen" | "check"): fc.Arbitrary<Op> =>
  fc.constant({ op });

/** A sorted batch: a clustered run (consecutive seconds of one inode) or random keys. */
const insertListArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ ino: fc.integer({ min: 0, max: 40 }), first: fc.integer({ min: 0, max: 500 }),
    vals: fc.array(fc.record({ v: valArb, o: optArb }), { minLength: 1, maxLength: 40, size: "max" }) })
    .map(({ ino, first, vals }) => ({ op: "insertList" as const, items: vals.map((x, i) => ({
      key: makeKey(Zone.FS, BigInt(ino), 4, BigInt(first + i)), v: x.v, o: x.o })) })),
  fc.array(fc.record({ key: freshKeyArb, v: valArb, o: optArb }), { minLength: 0, maxLength: 25, size: "max" })
    .map((items) => ({ op: "insertList" as const, items })),
);
const deleteRunArb: fc.Arbitrary<Op> = fc.record({
  op: fc.constant("deleteRun" as const), pick: fc.nat(), n: fc.integer({ min: 1, max: 150 }),
});
const iterateArb: fc.Arbitrary<Op> = fc.record({
  op: fc.constant("iterate" as const), a: anyKeyArb, b: anyKeyArb,
  limit: fc.oneof(fc.constant(1_000_000), fc.integer({ min: 1, max: 50 })),
});

interface Weights {
  insert: number; update: number; force: number; delete: number; deleteRun: number;
  lookup: number; next: number; prev: number; iterate: number; insertList: number;
  free: number; commit: number; abandon: number; reopen: number; check: number;
}

function opArb(wt: Weights): fc.Arbitrary<Op> {
  const parts: { arbitrary: fc.Arbitrary<Op>; weight: number }[] = [
    { arbitrary: writeArb("insert", newKeyArb), weight: wt.insert },
    { arbitrary: writeArb("update", hitKeyArb), weight: wt.update },
    { arbitrary: writeArb("force", anyKeyArb), weight: wt.force },
    { arbitrary: keyOpArb("delete", hitKeyArb), weight: wt.delete },
    { arbitrary: deleteRunArb, weight: wt.deleteRun },
    { arbitrary: keyOpArb("lookup", anyKeyArb), weight: wt.lookup },
    { arbitrary: keyOpArb("next", anyKeyArb), weight: wt.next },
    { arbitrary: keyOpArb("prev", anyKeyArb), weight: wt.prev },
    { arbitrary: iterateArb, weight: wt.iterate },
    { arbitrary: insertListArb, weight: wt.insertList },
    { arbitrary: plainArb("free"), weight: wt.free },
    { arbitrary: plainArb("commit"), weight: wt.commit },
    { arbitrary: plainArb("abandon"), weight: wt.abandon },
    { arbitrary: plainArb("reopen"), weight: wt.reopen },
    { arbitrary: plainArb("check"), weight: wt.check },
  ];
  return fc.oneof(...parts.filter((p) => p.weight > 0));
}

// weights in 1/1000ths
const GROW: Weights = { insert: 400, update: 60, force: 150, delete: 50, deleteRun: 0,
  lookup: 80, next: 50, prev: 50, iterate: 20, insertList: 40, free: 0, commit: 6,
  abandon: 1, reopen: 1, check: 1 };
const SHRINK: Weights = { insert: 60, update: 50, force: 30, delete: 500, deleteRun: 8,
  lookup: 80, next: 50, prev: 50, iterate: 20, insertList: 5, free: 0, commit: 6,
  abandon: 1, reopen: 1, check: 1 };
const MIXED: Weights = { insert: 200, update: 100, force: 100, delete: 220, deleteRun: 3,
  lookup: 80, next: 60, prev: 60, iterate: 30, insertList: 20, free: 0, commit: 8,
  abandon: 2, reopen: 1, check: 2 };
/** Short runs: frequent commits, abandons, reopens and frees. */
const SHORT: Weights = { insert: 250, update: 80, force: 100, delete: 150, deleteRun: 10,
  lookup: 60, next: 40, prev: 40, iterate: 25, insertList: 40, free: 8, commit: 40,
  abandon: 20, reopen: 15, check: 10 };

// ---------------------------------------------------------------------------------------
// The harness: a volume, its open transaction, the model and the committed model.

class Harness {
  txn: VolumeTxn | null = null;
  model = new Model();
  committed = new Model();
  verifies = 0;
  maxHeight = 0;
  maxItems = 0;
  opCounts = new Map<string, number>();

  private constructor(readonly disks: TestDisks, public vol: Volume, readonly counters: Counters) {}

  static async create(metaBytes?: number, cacheBytes?: number): Promise<Harness> {
    const disks = await makeTestVolume(metaBytes);
    const counters = new Counters();
    const h = new Harness(disks, await Volume.open(disks.meta, { counters, cacheBytes }), counters);
    h.cacheBytes = cacheBytes;
    return h;
  }

  cacheBytes: number | undefined = undefined;

  /** The tree under test (logs_root is empty after mkfs and carried by the super). */
  root(): BtreeRoot {
    return this.txn ? this.txn.sb.logsRoot : this.vol.sb.logsRoot;
  }

  writer(): VolumeTxn {
    this.txn ??= this.vol.begin();
    return this.txn;
  }

  resolve(r: KeyRef): Buffer {
    if (r.kind === "fresh") return r.key;
    if (this.model.size === 0) return makeKey(Zone.FS, BigInt(r.pick % 41), 4, BigInt(r.pick % 501));
    const k = this.model.at(r.pick % this.model.size).key;
    if (r.adj > 0 && !k.equals(MAX_KEY)) return keyInc(k);
    if (r.adj < 0 && !k.equals(MIN_KEY)) return keyDec(k);
    return k;
  }

  async verify(what: string): Promise<void> {
    this.verifies++;
    const root = this.root();
    const st = await checkShape(this.vol.cache, root, this.model.entries(), what);
    this.maxHeight = Math.max(this.maxHeight, st.height);
    assertItems(await btreeCollect(this.vol.cache, root, MIN_KEY, MAX_KEY), this.model.entries(),
      `${what}: btreeCollect`);
  }

  async commit(): Promise<void> {
    await this.writer().commit();
    this.txn = null;
    this.committed = this.model.clone();
    await this.verify("after commit");
  }

  async abandon(): Promise<void> {
    this.writer().abandon();
    this.txn = null;
    this.model = this.committed.clone();
    await this.verify("after abandon");
  }

  /** Reopens from the device; an open transaction is simply lost (never written). */
  async reopen(): Promise<void> {
    this.txn = null;
    this.vol = await Volume.open(this.disks.meta, { counters: this.counters, cacheBytes: this.cacheBytes });
    this.model = this.committed.clone();
    await this.verify("after reopen");
  }
}

function itemOpts(o: OptSpec | null): ItemOpts {
  return o ? { seq: o.seq, flags: o.flags } : {};
}

async function step(h: Harness, op: Op): Promise<void> {
  const m = h.model;
  h.opCounts.set(op.op, (h.opCounts.get(op.op) ?? 0) + 1);
  h.maxItems = Math.max(h.maxItems, m.size);
  switch (op.op) {
    case "insert":
    case "update":
    case "force": {
      const t = h.writer();
      const key = h.resolve(op.k);
      const val = makeVal(op.v);
      const entry = { key, val, seq: op.o?.seq ?? t.seq, flags: op.o?.flags ?? 0 };
      const exists = m.get(key) !== undefined;
      const fn = op.op === "insert" ? btreeInsert : op.op === "update" ? btreeUpdate : btreeForce;
      if (op.op === "insert" && exists) {
        await expectFsError(btreeInsert(t.w, t.sb.logsRoot, key, val, itemOpts(op.o)), "EEXIST", "insert of a present key");
      } else if (op.op === "update" && !exists) {
        await expectFsError(btreeUpdate(t.w, t.sb.logsRoot, key, val, itemOpts(op.o)), "ENOENT", "update of an absent key");
      } else {
        await fn(t.w, t.sb.logsRoot, key, val, itemOpts(op.o));
        m.set(entry);
      }
      break;
    }
    case "delete": {
      const t = h.writer();
      const key = h.resolve(op.k);
      if (m.get(key)) {
        await btreeDelete(t.w, t.sb.logsRoot, key);
        m.delete(key);
      } else {
        await expectFsError(btreeDelete(t.w, t.sb.logsRoot, key), "ENOENT", "delete of an absent key");
      }
      break;
    }
    case "deleteRun": {
      const t = h.writer();
      if (m.size === 0) break;
      const first = op.pick % m.size;
      const keys = m.keys.slice(first, first + op.n).map((x) => Buffer.from(x, "hex"));
      for (const k of keys) {
        await btreeDelete(t.w, t.sb.logsRoot, k);
        m.delete(k);
      }
      break;
    }
    case "lookup": {
      const key = h.resolve(op.k);
      assertItem(await btreeLookup(h.vol.cache, h.root(), key), m.get(key), `lookup ${hex(key)}`);
      break;
    }
    case "next": {
      const key = h.resolve(op.k);
      const i = m.lowerBound(hex(key));
      assertItem(await btreeNext(h.vol.cache, h.root(), key), i < m.size ? m.at(i) : null, `next ${hex(key)}`);
      break;
    }
    case "prev": {
      const key = h.resolve(op.k);
      const hk = hex(key);
      let i = m.lowerBound(hk);
      if (!(i < m.size && m.keys[i] === hk)) i--;
      assertItem(await btreePrev(h.vol.cache, h.root(), key), i >= 0 ? m.at(i) : null, `prev ${hex(key)}`);
      break;
    }
    case "iterate": {
      const a = h.resolve(op.a);
      const b = h.resolve(op.b);
      const got: Item[] = [];
      await btreeIterate(h.vol.cache, h.root(), a, b, (it) => {
        got.push(it);
        return got.length < op.limit;
      });
      assertItems(got, m.range(a, b).slice(0, op.limit), `iterate ${hex(a)}..${hex(b)} limit ${op.limit}`);
      break;
    }
    case "insertList": {
      const t = h.writer();
      const byKey = new Map<string, Entry>();
      for (const x of op.items) {
        byKey.set(hex(x.key), { key: x.key, val: makeVal(x.v), seq: x.o?.seq ?? t.seq, flags: x.o?.flags ?? 0 });
      }
      const sorted = [...byKey.keys()].sort().map((k) => byKey.get(k)!);
      await btreeInsertList(t.w, t.sb.logsRoot, sorted);
      for (const e of sorted) m.set(e);
      break;
    }
    case "free": {
      const t = h.writer();
      await btreeFree(t.w, t.sb.logsRoot);
      m.clear();
      break;
    }
    case "commit":
      await h.commit();
      break;
    case "abandon":
      await h.abandon();
      break;
    case "reopen":
      await h.reopen();
      break;
    case "check":
      await h.verify("check");
      break;
  }
  if (op.op !== "lookup" && op.op !== "next" && op.op !== "prev" && op.op !== "iterate") {
    const root = h.root();
    assert.equal(root.height === 0, h.model.size === 0,
      `after ${op.op}: root height ${root.height} with ${h.model.size} model items`);
  }
}

function opSummary(op: Op): string {
  return JSON.stringify(op, (_k, v: unknown) => {
    if (typeof v === "bigint") return v.toString();
    if (v && typeof v === "object" && (v as { type?: unknown }).type === "Buffer") {
      return Buffer.from((v as { data: number[] }).data).toString("hex");
    }
    return v;
  });
}

async function runOps(h: Harness, ops: Op[]): Promise<void> {
  for (let i = 0; i < ops.length; i++) {
    try {
      await step(h, ops[i]!);
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      throw new Error(`op ${i} of ${ops.length} ${opSummary(ops[i]!)} (model ${h.model.size} items): ${msg}`,
        { cause: e });
    }
  }
}

const assertProperty = makeAssertProperty(BASE_SEED);

// ---------------------------------------------------------------------------------------
// The tests.

test("btree model: one long run of ~20k operations", async () => {
  const seg = (w: Weights, min: number, max: number): fc.Arbitrary<Op[]> =>
    fc.array(opArb(w), { minLength: min, maxLength: max });
  const free: Op[] = [{ op: "commit" }, { op: "free" }, { op: "check" }, { op: "commit" }];
  const runArb = fc.tuple(
    seg(GROW, 5000, 5000), seg(SHRINK, 2500, 2500), seg(MIXED, 2500, 2500),
    seg(GROW, 4000, 4000), seg(SHRINK, 3000, 3000), seg(GROW, 1500, 1500),
    seg(MIXED, 1500, 1500),
  ).map(([g1, s1, m1, g2, s2, g3, m2]) =>
    [...g1, ...s1, ...m1, ...g2, ...s2, ...free, ...g3, ...m2, { op: "commit" as const }]);
  let last: Harness | null = null;
  await assertProperty("btree long run", BASE_SEED, runArb, async (ops) => {
    // a 2 MiB block cache: the tree outgrows it, so reads and COW keep re-reading the device
    const h = await Harness.create(undefined, 2 * 1024 * 1024);
    last = h;
    await runOps(h, ops);
  }, { numRuns: 1, endOnFailure: true });
  const h = last as Harness | null;
  assert.ok(h);
  const c = h.counters;
  console.log(`long run: btree_split ${c.get("btree_split")} btree_join ${c.get("btree_join")} ` +
    `btree_rebalance ${c.get("btree_rebalance")} block_cow ${c.get("block_cow")} ` +
    `block_cache_evict ${c.get("block_cache_evict")} verifies ${h.verifies} ` +
    `max height ${h.maxHeight} max items ${h.maxItems} final items ${h.model.size}`);
  console.log([...h.opCounts].map(([k, v]) => `${k} ${v}`).join(", "));
  assert.ok(c.get("btree_split") > 0, "the run split blocks");
  assert.ok(c.get("btree_join") > 0, "the run joined blocks");
  assert.ok(c.get("btree_rebalance") > 0, "the run rebalanced blocks");
  assert.ok(h.maxHeight >= 2, "the run built a multi-level tree");
  assert.ok(c.get("block_cache_evict") > 0, "the small cache evicted blocks");
});

test("btree model: many short runs", async () => {
  // half of the runs with the smallest block cache (16 blocks): clean blocks are evicted and
  // re-read from the device all the time, dirty ones stay pinned
  await assertProperty("btree short runs", BASE_SEED + 1,
    fc.tuple(fc.boolean(), fc.array(opArb(SHORT), { minLength: 1, maxLength: 250, size: "max" })),
    async ([tiny, ops]) => {
      const h = await Harness.create(undefined, tiny ? 16 * 65536 : undefined);
      await runOps(h, [...ops, { op: "commit" }]);
      await h.reopen();
    }, { numRuns: 120 });
});

test("btree: a value of 897 bytes is refused with EINVAL and nothing changes", async () => {
  const h = await Harness.create();
  const keys = Array.from({ length: 300 }, (_, i) => makeKey(Zone.FS, 7n, 4, BigInt(i)));
  for (const [i, key] of keys.entries()) {
    await step(h, { op: "insert", k: { kind: "fresh", key }, v: { len: 300 + (i % 3) * 298, fill: i }, o: null });
  }
  await h.commit();
  const big = Buffer.alloc(BTREE_MAX_VAL_LEN + 1, 0xab);
  const t = h.writer();
  const before = { ...t.sb.logsRoot, ref: { ...t.sb.logsRoot.ref } };
  const present = keys[150]!;
  const absent = makeKey(Zone.FS, 7n, 4, 100_000n);
  await expectFsError(btreeInsert(t.w, t.sb.logsRoot, absent, big), "EINVAL", "insert of 897 bytes");
  await expectFsError(btreeForce(t.w, t.sb.logsRoot, absent, big), "EINVAL", "force (new) of 897 bytes");
  await expectFsError(btreeForce(t.w, t.sb.logsRoot, present, big), "EINVAL", "force (present) of 897 bytes");
  await expectFsError(btreeUpdate(t.w, t.sb.logsRoot, present, big), "EINVAL", "update of 897 bytes");
  await expectFsError(btreeInsertList(t.w, t.sb.logsRoot, [{ key: absent, val: big, seq: 5, flags: 0 }]),
    "EINVAL", "insertList of 897 bytes");
  assert.deepEqual(t.sb.logsRoot, before, "the root is unchanged");
  assert.equal(t.w.dirtyCount, 0, "no block was dirtied");
  await h.verify("after refused 897-byte values");
  // exactly the maximum is fine
  await step(h, { op: "force", k: { kind: "fresh", key: present }, v: { len: BTREE_MAX_VAL_LEN, fill: 1 }, o: null });
  await h.commit();
  await h.reopen();
});

test("btree: grows to height 3 (parent splits) and shrinks back to empty (parent joins)", async () => {
  // 1 GiB of (sparse) metadata device: a txn deleting at random COWs most of ~1800 leaves
  const h = await Harness.create(1024 * 1024 * 1024, 64 * 1024 * 1024);
  const c = h.counters;
  // key(i) increases with i, so ascending i is key order
  const key = (i: number): Buffer => makeKey(Zone.FS, BigInt(i >> 10), 4, BigInt(i & 1023));
  const seqOf: number[] = [];
  const alive: boolean[] = [];
  const entry = (i: number): Entry =>
    ({ key: key(i), val: makeVal({ len: BTREE_MAX_VAL_LEN - (i % 5), fill: i }), seq: seqOf[i]!, flags: 0 });
  /** The model is rebuilt from `alive` only at commits (splicing 60k keys per delete is slow). */
  const commit = async (): Promise<void> => {
    h.model = new Model();
    for (let i = 0; i < alive.length; i++) {
      if (!alive[i]) continue;
      const e = entry(i);
      h.model.keys.push(hex(e.key));
      h.model.map.set(hex(e.key), e);
    }
    await h.commit();
  };
  const insert = async (t: VolumeTxn, i: number): Promise<void> => {
    seqOf[i] = t.seq;
    alive[i] = true;
    const e = entry(i);
    await btreeInsert(t.w, t.sb.logsRoot, e.key, e.val);
  };
  const splitsAtStart = c.get("btree_split");
  // ascending appends leave half-full leaves: ~1170 of them fill the level-1 root
  let n = 0;
  let t = h.writer();
  while (h.root().height < 3) {
    await insert(t, n++);
    if (n % 8000 === 0) {
      await commit();
      t = h.writer();
    }
    assert.ok(n < 100_000, "height 3 reached");
  }
  const rootSplitAt = c.get("btree_split");
  // keep appending until a level-1 parent below the root splits as well (root gets 3 items)
  for (;;) {
    await insert(t, n++);
    if (nrItems(await h.vol.cache.read(h.root().ref, Magic.BTREE)) >= 3) break;
    assert.ok(n < 150_000, "a level-1 parent split");
  }
  await commit();
  await h.reopen();
  assert.equal(h.root().height, 3);
  assert.ok(c.get("btree_split") > rootSplitAt && rootSplitAt > splitsAtStart);
  // delete everything in a random order: leaves join, and the level-1 parents must join
  // down to one before the root can collapse from height 3 to 2
  const order = Array.from({ length: n }, (_, i) => i);
  let s = 12345;
  for (let i = order.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    const j = s % (i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  t = h.writer();
  let done = 0;
  let sawHeight2 = false;
  for (const i of order) {
    await btreeDelete(t.w, t.sb.logsRoot, key(i));
    alive[i] = false;
    if (++done % 10000 === 0) {
      await commit();
      t = h.writer();
    }
    if (h.root().height === 2) sawHeight2 = true;
  }
  await commit();
  await h.reopen();
  assert.equal(h.root().height, 0);
  assert.ok(sawHeight2, "the root collapsed from height 3 to 2 on the way down");
  console.log(`height-3 test: ${n} items, split ${c.get("btree_split")} join ${c.get("btree_join")} ` +
    `rebalance ${c.get("btree_rebalance")}`);
});
