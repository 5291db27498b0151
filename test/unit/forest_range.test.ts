/*
 * Goal: the forest's range reads (forestRange, forestRangeBack, forestNext, forestPrev) return
 * exactly the newest version of every key across fs_root and several log trees, with
 * tombstones hiding older versions (or reported when asked), honour their limits, and claim
 * only ranges they read completely, so that stepping from each result's end covers the whole
 * range. Point reads (forestNewest, forestLookup) agree with them, the blooms prune trees
 * without changing answers, and the memoized list of log trees follows the logs_root ref.
 *
 * Method: fast-check generates fs_root items and 1-5 log trees over keys in a few inode
 * groups (values up to 890 bytes so trees span several leaves; distinct seqs per key so the
 * newest is unambiguous; some tombstones), writes them with real btrees, bloom blocks and
 * log_trees items on a simulated volume, commits, and compares random range/next/prev/point
 * queries with a model. Seeds are fixed (override: FC_SEED=<n>).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  btreeCollect, btreeInsert, btreeInsertList, type Item, ITEM_DELETION,
} from "../../src/core/btree.js";
import {
  bloomAdd, type ForestRoots, forestLogTrees, forestLookup, forestNewest, forestNext,
  forestPrev, forestRange, forestRangeBack, LOG_TREES_MEMO_MAX, lockStartFor,
} from "../../src/core/forest.js";
import { emptyLogTrees, encodeLogTrees } from "../../src/core/format_log.js";
import {
  compareKeys, formatKey, keyDec, keyInc, logTreesKey, makeKey, MAX_KEY, MIN_KEY, Zone,
} from "../../src/core/key.js";
import { inodeGroupRange } from "../../src/core/lock_names.js";
import { Volume, type VolumeTxn } from "../../src/core/volume.js";
import { Counters } from "../../src/util/counters.js";
import { makeAssertProperty } from "../helpers/property.js";
import { makeTestVolume, MiB } from "../helpers/volume.js";

const BASE_SEED = process.env.FC_SEED !== undefined ? Number(process.env.FC_SEED) : 0xf0e57;
const assertProperty = makeAssertProperty(BASE_SEED);

const INOS = [1n, 2n, 1025n, 1030n, 5000n];
const SECONDS = 40;
const key = (i: number): Buffer =>
  makeKey(Zone.FS, INOS[Math.floor(i / SECONDS) % INOS.length]!, 100, BigInt(i % SECONDS));
const NKEYS = INOS.length * SECONDS;
const hex = (k: Buffer): string => k.toString("hex");

interface Gen {
  /** Key index, seq rank, tombstone, value length. */
  k: number;
  rank: number;
  del: boolean;
  vlen: number;
}

const genItem = fc.record({
  k: fc.nat(NKEYS - 1), rank: fc.nat(1000), del: fc.nat(4).map((n) => n === 0),
  vlen: fc.oneof({ weight: 1, arbitrary: fc.nat(16) },
    { weight: 3, arbitrary: fc.integer({ min: 500, max: 890 }) }),
});
/** Small trees (one leaf) and large ones (several leaves: most keys with big values). */
const treeArb = fc.oneof(fc.array(genItem, { maxLength: 12 }),
  fc.array(genItem, { minLength: 150, maxLength: 500, size: "max" }));

type Query =
  | { t: "range"; a: number; b: number; limit: number; tomb: boolean; back: boolean }
  | { t: "next"; a: number; b: number }
  | { t: "prev"; a: number; b: number }
  | { t: "point"; a: number };

/** Bounds: every key, its neighbours, the groups' ends and the key space's ends. */
const BOUNDS: Buffer[] = [
  ...Array.from({ length: NKEYS }, (_, i) => [key(i), keyInc(key(i)), keyDec(key(i))]).flat(),
  ...INOS.flatMap((i) => [inodeGroupRange(i).start, inodeGroupRange(i).end]), MIN_KEY, MAX_KEY,
].sort(compareKeys);
const nb = fc.nat(BOUNDS.length - 1);
const queryArb: fc.Arbitrary<Query> = fc.oneof(
  fc.record({ t: fc.constant("range" as const), a: nb, b: nb,
    limit: fc.oneof(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 6, max: 400 })),
    tomb: fc.boolean(), back: fc.boolean() }),
  fc.record({ t: fc.constant("next" as const), a: nb, b: nb }),
  fc.record({ t: fc.constant("prev" as const), a: nb, b: nb }),
  fc.record({ t: fc.constant("point" as const), a: nb }),
);

/** The newest version per key (hex) over every tree, tombstones included. */
type Model = Map<string, Item>;

function toItems(gens: Gen[], tree: number): Item[] {
  const byKey = new Map<string, Item>();
  for (const g of gens) {
    const k = key(g.k);
    // distinct seqs for one key across trees: the newest is never a tie
    byKey.set(hex(k), { key: k, val: g.del ? Buffer.alloc(0) : Buffer.alloc(g.vlen, g.rank & 255),
      seq: 10 + g.rank * 8 + tree, flags: g.del ? ITEM_DELETION : 0 });
  }
  return [...byKey.values()].sort((a, b) => compareKeys(a.key, b.key));
}

async function writeLogTree(t: VolumeTxn, nr: number, items: Item[]): Promise<void> {
  const lt = emptyLogTrees(BigInt(0x100 + nr), 1);
  await btreeInsertList(t.w, lt.itemRoot, items);
  const starts = new Map(items.map((it) => [hex(lockStartFor(it.key)), lockStartFor(it.key)]));
  if (starts.size > 0) lt.bloomRef = await bloomAdd(t.w, lt.bloomRef, [...starts.values()]);
  await btreeInsert(t.w, t.sb.logsRoot, logTreesKey(lt.rid, 1n), encodeLogTrees(lt));
}

async function build(fsGen: Gen[], logs: Gen[][]): Promise<{ vol: Volume; model: Model }> {
  const disks = await makeTestVolume(128 * MiB, 64 * MiB);
  const vol = await Volume.open(disks.meta, { counters: new Counters() });
  const model: Model = new Map();
  const put = (it: Item): void => {
    const cur = model.get(hex(it.key));
    if (cur === undefined || it.seq > cur.seq) model.set(hex(it.key), it);
  };
  for (const it of await btreeCollect(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY)) put(it);
  const t = vol.begin();
  const fsItems = toItems(fsGen, 0);
  await btreeInsertList(t.w, t.sb.fsRoot, fsItems);
  fsItems.forEach(put);
  for (const [i, gens] of logs.entries()) {
    const items = toItems(gens, i + 1);
    await writeLogTree(t, i, items);
    items.forEach(put);
  }
  await t.commit();
  return { vol, model };
}

function modelRange(model: Model, start: Buffer, end: Buffer, tomb: boolean): Item[] {
  return [...model.values()].filter((it) => compareKeys(it.key, start) >= 0 &&
    compareKeys(it.key, end) <= 0 && (tomb || (it.flags & ITEM_DELETION) === 0))
    .sort((a, b) => compareKeys(a.key, b.key));
}

const show = (items: Item[]): string[] =>
  items.map((it) => `${formatKey(it.key)}@${it.seq}${(it.flags & ITEM_DELETION) !== 0 ? "x" : ""}`);

function sameItems(got: Item[], want: Item[], where: string): void {
  assert.deepEqual(show(got), show(want), where);
  got.forEach((it, i) => assert.ok(it.val.equals(want[i]!.val), `${where}: value`));
}

async function checkRange(vol: Volume, roots: ForestRoots, model: Model, q: Query & { t: "range" },
  counters: Counters): Promise<void> {
  const [start, end] = ordered(BOUNDS[q.a]!, BOUNDS[q.b]!);
  const where = `range ${formatKey(start)}..${formatKey(end)} limit ${q.limit}`;
  const opts = { tombstones: q.tomb, counters };
  const all: Item[] = [];
  if (!q.back) {
    let s = start;
    for (let steps = 0; ; steps++) {
      assert.ok(steps <= NKEYS + 2, `${where}: no progress`);
      const r = await forestRange(vol.cache, roots, s, end, q.limit, opts);
      assert.ok(compareKeys(r.end, s) >= 0 && compareKeys(r.end, end) <= 0, `${where}: end`);
      assert.ok(r.items.length <= q.limit, `${where}: limit`);
      sameItems(r.items, modelRange(model, s, r.end, q.tomb), `${where} step ${steps}`);
      all.push(...r.items);
      if (compareKeys(r.end, end) >= 0) break;
      s = keyInc(r.end);
    }
  } else {
    let e = end;
    for (let steps = 0; ; steps++) {
      assert.ok(steps <= NKEYS + 2, `${where}: no progress`);
      const r = await forestRangeBack(vol.cache, roots, start, e, q.limit, opts);
      assert.ok(compareKeys(r.start, start) >= 0 && compareKeys(r.start, e) <= 0,
        `${where}: start`);
      assert.ok(r.items.length <= q.limit, `${where}: limit`);
      sameItems(r.items, modelRange(model, r.start, e, q.tomb), `${where} back step ${steps}`);
      all.unshift(...r.items);
      if (compareKeys(r.start, start) <= 0) break;
      e = keyDec(r.start);
    }
  }
  sameItems(all, modelRange(model, start, end, q.tomb), `${where}: whole range`);
}

function ordered(a: Buffer, b: Buffer): [Buffer, Buffer] {
  return compareKeys(a, b) <= 0 ? [a, b] : [b, a];
}

async function checkQuery(vol: Volume, roots: ForestRoots, model: Model, q: Query,
  counters: Counters): Promise<void> {
  switch (q.t) {
    case "range": return checkRange(vol, roots, model, q, counters);
    case "next": {
      const [k, end] = ordered(BOUNDS[q.a]!, BOUNDS[q.b]!);
      const got = await forestNext(vol.cache, roots, k, end, counters);
      const want = modelRange(model, k, end, false)[0] ?? null;
      assert.deepEqual(got && show([got]), want && show([want]), `next ${formatKey(k)}`);
      return;
    }
    case "prev": {
      const [start, k] = ordered(BOUNDS[q.a]!, BOUNDS[q.b]!);
      const got = await forestPrev(vol.cache, roots, k, start, counters);
      const want = modelRange(model, start, k, false).at(-1) ?? null;
      assert.deepEqual(got && show([got]), want && show([want]), `prev ${formatKey(k)}`);
      return;
    }
    case "point": {
      const k = BOUNDS[q.a]!;
      const newest = await forestNewest(vol.cache, roots, k, counters);
      const want = model.get(hex(k)) ?? null;
      assert.deepEqual(newest && show([newest]), want && show([want]), `newest ${formatKey(k)}`);
      const v = await forestLookup(vol.cache, roots, k, counters);
      const live = want !== null && (want.flags & ITEM_DELETION) === 0 ? want.val : null;
      assert.ok(v === null ? live === null : live !== null && v.equals(live),
        `lookup ${formatKey(k)}`);
    }
  }
}

test("forest range reads agree with a model of fs_root and log trees", async () => {
  const totals = new Counters();
  await assertProperty("forest range model", BASE_SEED,
    fc.record({ fs: treeArb, logs: fc.array(treeArb, { minLength: 1, maxLength: 5 }),
      queries: fc.array(queryArb, { minLength: 1, maxLength: 30, size: "max" }) }),
    async (c) => {
      const { vol, model } = await build(c.fs, c.logs);
      const roots = { fsRoot: vol.sb.fsRoot, logsRoot: vol.sb.logsRoot };
      for (const q of c.queries) await checkQuery(vol, roots, model, q, totals);
      for (const lt of await forestLogTrees(vol.cache, vol.sb.logsRoot)) {
        if (lt.itemRoot.height > 1) totals.inc("tall_log_trees");
      }
    }, { numRuns: 40 });
  assert.ok(totals.get("forest_bloom_skip") > 0, "blooms pruned trees for one-group ranges");
  assert.ok(totals.get("forest_log_trees_memo_hit") > 0, "the log trees list was memoized");
  assert.ok(totals.get("tall_log_trees") > 0, "log trees spanning several leaves were read");
});

test("the memoized log trees follow the logs_root ref and stay bounded", async () => {
  const disks = await makeTestVolume(128 * MiB, 64 * MiB);
  const vol = await Volume.open(disks.meta, { counters: new Counters() });
  const counters = new Counters();
  const roots: ForestRoots[] = [];
  for (let n = 0; n < LOG_TREES_MEMO_MAX + 4; n++) {
    const t = vol.begin();
    await writeLogTree(t, n, [{ key: key(n), val: Buffer.from(`v${n}`), seq: 100 + n, flags: 0 }]);
    await t.commit();
    roots.push({ fsRoot: vol.sb.fsRoot, logsRoot: { ...vol.sb.logsRoot } });
    const list = await forestLogTrees(vol.cache, vol.sb.logsRoot, counters);
    assert.equal(list.length, n + 1, "a new logs_root ref is read, not served from the memo");
    assert.equal(await forestLogTrees(vol.cache, vol.sb.logsRoot, counters), list);
  }
  assert.equal(counters.get("forest_log_trees_memo_hit"), LOG_TREES_MEMO_MAX + 4);
  // the oldest roots were dropped from the memo: read again (their blocks may be reused,
  // which is the caller's ESTALE retry; here they are intact)
  const before = counters.get("forest_log_trees_memo_miss");
  const last = roots.at(-1)!;
  await forestLogTrees(vol.cache, last.logsRoot, counters);
  assert.equal(counters.get("forest_log_trees_memo_miss"), before, "the newest is memoized");
  const v = await forestLookup(vol.cache, last, key(3), counters);
  assert.equal(v?.toString(), "v3");
});
