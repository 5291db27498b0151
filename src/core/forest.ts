/*
 * The forest read path (upstream forest.c) and the log trees' bloom filters.
 *
 * A key's current version is the newest (greatest seq) of its versions in fs_root and in
 * every mount's log tree; a newest version that is a tombstone means the key is absent. To
 * avoid reading every log tree for every lookup, each log tree has one 64 KiB bloom block:
 * when a mount commits items it sets the bits of the *lock range start* that covered each
 * item (not of the item key), and a reader tests only the start of the range its key falls
 * in. Readers take the committed roots from the server (GET_ROOTS) and retry with newer ones
 * when a block turns out stale (withStaleRetry), since mounts COW and reuse blocks freely.
 *
 * The bloom block: header, total_set u64, then NBITS bits; three bit positions are 19-bit
 * slices of the key's FNV-1a 64 hash, modulo NBITS.
 *
 * Range reads (forestRange, forestRangeBack, forestNext, forestPrev) feed the item cache and
 * iteration: each tree is read up to a bounded number of items from the starting key, and
 * the result only claims the part of the range that *every* tree was read through (the
 * intersection of what was read, as upstream clamps to the leaves it read), so a caller may
 * record that part as completely known, absent keys included.
 *
 * Delta items (ITEM_DELTA: .totl. {total, count} contributions) are not "newest wins": a
 * key whose versions are all deltas reads as their sum, combined with btree_merge.ts's
 * sumDeltas (the merge's own rule). A merge can splice a key's combined value into fs_root
 * while the finalized trees it came from are still readable (until the round frees them),
 * so each finalized group (the trees finalized together: same finalize_seq) counts only if
 * it was not merged yet, as upstream's scoutfs_totl_merge_resolve decides it: with an
 * fs_root version, only a group holding a newer seq (the merge stamps the combined item with
 * the greatest seq of what it merged); without one, only a group whose count is positive (a
 * merged group that summed to zero deleted the fs_root item, and its count, the number of
 * contributors it removed, is then negative). Open log trees always count: nothing of them
 * is merged. Grouping by finalize_seq (upstream lumps every finalized tree together) keeps a
 * group finalized after the round's inputs from making the merged inputs count twice. A sum
 * of zero total and count is an absent key.
 *
 * Readers are handed committed roots (GET_ROOTS): the blocks they reach are never modified
 * under the same (blkno, seq), which is what lets the decoded list of log trees be memoized
 * per logs_root ref (forestLogTrees) instead of re-read for every lookup. Writers with dirty
 * roots (the server) use listLogTrees, which always reads.
 */
import { assert } from "../util/assert.js";
import type { BlockCache, MetaTxn } from "./block.js";
import { registerBlockValidator } from "./block.js";
import {
  btreeFindLeaf, btreeIterate, btreeLookup, type Item, ITEM_DELETION, ITEM_DELTA,
} from "./btree.js";
import { cmpKeyAt, itemAt, lowerBound, nrItems } from "./btree_block.js";
import { decodeDelta, isZeroDelta, sumDeltas } from "./btree_merge.js";
import {
  BLOCK_HEADER_SIZE, type BlockRef, type BtreeRoot, corrupt, Magic, META_BLOCK_SIZE, readU64,
  writeU64,
} from "./format.js";
import { decodeLogTrees, LOG_TREES_FLAG_FINALIZED, type LogTrees } from "./format_log.js";
import {
  compareKeys, KEY_SIZE, keyDec, keyInc, makeKey, MAX_KEY, MIN_KEY, U64_MAX, Zone,
} from "./key.js";

const BLOOM_TOTAL_OFF = BLOCK_HEADER_SIZE;
const BLOOM_BITS_OFF = BLOCK_HEADER_SIZE + 8;
export const BLOOM_NBITS = (META_BLOCK_SIZE - BLOOM_BITS_OFF) * 8;
const TWO32 = 0x1_0000_0000;

/**
 * FNV-1a 64 in two 32-bit halves (no BigInt on the read path). The prime is 2^40 + 435, so
 * h * prime mod 2^64 = h * 435 + (lo << 40): every partial product stays below 2^53.
 */
export function fnv1a64Parts(buf: Buffer): { hi: number; lo: number } {
  let hi = 0xcbf29ce4;
  let lo = 0x84222325;
  for (const b of buf) {
    lo = (lo ^ b) >>> 0;
    const loMul = lo * 435;
    const carry = Math.floor(loMul / TWO32);
    const newLo = loMul % TWO32;
    hi = (hi * 435 + carry + ((lo * 256) % TWO32)) % TWO32;
    lo = newLo;
  }
  return { hi, lo };
}

export function fnv1a64(buf: Buffer): bigint {
  const { hi, lo } = fnv1a64Parts(buf);
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** Three 19-bit slices of the hash (bits 0-18, 19-37, 38-56), modulo the bloom's size. */
export function bloomBits(key: Buffer): number[] {
  const { hi, lo } = fnv1a64Parts(key);
  return [lo & 0x7ffff, ((lo >>> 19) | ((hi & 0x3f) << 13)) >>> 0, (hi >>> 6) & 0x7ffff]
    .map((v) => v % BLOOM_NBITS);
}

/**
 * The start of the lock range that covers key: the bloom is keyed by it. FS items lock by
 * 1024-inode groups; every other zone (indexes, orphans, totals) locks as a whole zone here.
 */
export function lockStartFor(key: Buffer): Buffer {
  assert(key.length === KEY_SIZE, "key size");
  if (key[0] === Zone.FS) return makeKey(Zone.FS, key.readBigUInt64BE(1) & ~1023n, 0);
  return makeKey(key[0]!, 0n, 0);
}

/** Set bits per byte value (validating a bloom block counts 512 Ki bits). */
const POPCOUNT = Uint8Array.from({ length: 256 }, (_, v) => {
  let n = 0;
  for (let x = v; x; x >>= 1) n += x & 1;
  return n;
});

function validateBloom(b: Buffer): void {
  let set = 0;
  for (let i = BLOOM_BITS_OFF; i < META_BLOCK_SIZE; i++) set += POPCOUNT[b[i]!]!;
  if (readU64(b, BLOOM_TOTAL_OFF) !== set) throw corrupt("bloom block set-bit count");
}
registerBlockValidator(Magic.BLOOM, validateBloom);

function testBit(b: Buffer, bit: number): boolean {
  return (b[BLOOM_BITS_OFF + (bit >> 3)]! & (1 << (bit & 7))) !== 0;
}

/** Sets the bloom bits of each lock start in a log tree's bloom block (COW); returns its ref. */
export async function bloomAdd(w: MetaTxn, ref: BlockRef, lockStarts: Buffer[]): Promise<BlockRef> {
  let d: { ref: BlockRef; buf: Buffer };
  if (ref.blkno === 0) {
    d = await w.newBlock(Magic.BLOOM);
  } else {
    d = await w.dirtyRef(ref, Magic.BLOOM);
  }
  let total = readU64(d.buf, BLOOM_TOTAL_OFF);
  for (const k of lockStarts) {
    for (const bit of bloomBits(k)) {
      if (!testBit(d.buf, bit)) {
        d.buf[BLOOM_BITS_OFF + (bit >> 3)]! |= 1 << (bit & 7);
        total++;
      }
    }
  }
  writeU64(d.buf, BLOOM_TOTAL_OFF, total);
  return d.ref;
}

export async function bloomMayContain(cache: BlockCache, ref: BlockRef, key: Buffer):
  Promise<boolean> {
  if (ref.blkno === 0) return false;
  const b = cache.getCached(ref, Magic.BLOOM) ?? await cache.read(ref, Magic.BLOOM);
  return bloomBits(lockStartFor(key)).every((bit) => testBit(b, bit));
}

/** Every log_trees item of a logs_root. */
export async function listLogTrees(cache: BlockCache, logsRoot: BtreeRoot): Promise<LogTrees[]> {
  const out: LogTrees[] = [];
  await btreeIterate(cache, logsRoot, makeKey(Zone.LOG_TREES, 0n, 0),
    makeKey(Zone.LOG_TREES, U64_MAX, 255, U64_MAX, U64_MAX, 255),
    (it) => { out.push(decodeLogTrees(it.val)); });
  return out;
}

export interface ForestRoots {
  fsRoot: BtreeRoot;
  logsRoot: BtreeRoot;
}

// ---------------------------------------------------------------------------------------
// Combining a key's versions.

/** The group of fs_root's versions. */
const FS_GROUP = 0;
/** The group of every open (not finalized) log tree's versions. */
const OPEN_GROUP = -1;

/** The group of a log tree's versions: open, or finalized together with others (header). */
function groupOf(lt: LogTrees): number {
  if ((lt.flags & LOG_TREES_FLAG_FINALIZED) === 0) return OPEN_GROUP;
  if (lt.finalizeSeq <= 0) throw corrupt("finalized log tree without a finalize_seq");
  return lt.finalizeSeq;
}

/** One tree's version of a key and the group of that tree. */
interface Version {
  it: Item;
  group: number;
}

const isDelta = (it: Item): boolean => (it.flags & ITEM_DELTA) !== 0;

/** Whether a finalized group's deltas are still to be added to fs_root's (see the header). */
function groupUnmerged(fs: Item | undefined, items: Item[], sum: Buffer): boolean {
  if (fs !== undefined) return items.some((it) => it.seq > fs.seq);
  return decodeDelta(sum).count > 0n;
}

/** The combined value of a key whose versions are all deltas; null when it sums to zero. */
function resolveDeltas(versions: Version[]): Item | null {
  const fs = versions.find((v) => v.group === FS_GROUP)?.it;
  const groups = new Map<number, Item[]>();
  for (const v of versions) {
    if (v.group === FS_GROUP) continue;
    const g = groups.get(v.group);
    if (g === undefined) groups.set(v.group, [v.it]);
    else g.push(v.it);
  }
  const vals: Buffer[] = fs === undefined ? [] : [fs.val];
  for (const [group, items] of groups) {
    const sum = sumDeltas(items.map((it) => it.val));
    if (group === OPEN_GROUP || groupUnmerged(fs, items, sum)) vals.push(sum);
  }
  const val = sumDeltas(vals);
  if (isZeroDelta(val)) return null;
  const seq = Math.max(...versions.map((v) => v.it.seq));
  return { key: versions[0]!.it.key, val, seq, flags: ITEM_DELTA };
}

/**
 * A key's current version from its versions in the trees (fs_root's first, which wins seq
 * ties): deltas combined, anything else newest seq wins (tombstones included). Null: none.
 */
function currentVersion(versions: Version[]): Item | null {
  const first = versions[0];
  if (first === undefined) return null;
  if (versions.every((v) => isDelta(v.it))) return resolveDeltas(versions);
  let best = first.it;
  for (const v of versions) if (v.it.seq > best.seq) best = v.it;
  return best;
}

/**
 * The current version of key in fs_root and the log trees (tombstones included; deltas
 * combined), or null.
 */
export async function forestNewest(cache: BlockCache, roots: ForestRoots, key: Buffer,
  counters?: { inc(name: string): void }): Promise<Item | null> {
  const versions: Version[] = [];
  const fs = await btreeLookup(cache, roots.fsRoot, key);
  if (fs) versions.push({ it: fs, group: FS_GROUP });
  for (const lt of await forestLogTrees(cache, roots.logsRoot, counters)) {
    if (lt.itemRoot.height === 0) continue;
    if (!(await bloomMayContain(cache, lt.bloomRef, key))) {
      counters?.inc("forest_bloom_skip");
      continue;
    }
    counters?.inc("forest_read_log_tree");
    const it = await btreeLookup(cache, lt.itemRoot, key);
    if (it) versions.push({ it, group: groupOf(lt) });
  }
  return currentVersion(versions);
}

/** The current value of key, or null when absent (no version, or a newest tombstone). */
export async function forestLookup(cache: BlockCache, roots: ForestRoots, key: Buffer,
  counters?: { inc(name: string): void }): Promise<Buffer | null> {
  const it = await forestNewest(cache, roots, key, counters);
  return it && (it.flags & ITEM_DELETION) === 0 ? it.val : null;
}

/**
 * A mount's log tree keeps one version per key across all its transactions, so a delta
 * committed again must add to the delta already logged there instead of replacing it
 * (upstream's btree_insert_list combines them): adds the logged value to each delta of
 * `items`, the commit's copies, before they are inserted into `root`.
 */
export async function addLoggedDeltas(cache: BlockCache, root: BtreeRoot, items: Item[]):
  Promise<void> {
  if (root.height === 0) return;
  for (const it of items) {
    if (!isDelta(it)) continue;
    const logged = await btreeLookup(cache, root, it.key);
    if (logged !== null && isDelta(logged)) it.val = sumDeltas([logged.val, it.val]);
  }
}

// ---------------------------------------------------------------------------------------
// The log trees of a committed logs_root, memoized.

/** Decoded logs_root versions kept per block cache (a mount sees one or two at a time). */
export const LOG_TREES_MEMO_MAX = 16;
const logTreesMemo = new WeakMap<BlockCache, Map<string, readonly LogTrees[]>>();

/**
 * Every log_trees item of a *committed* logs_root, decoded once per root ref: a committed
 * block never changes under its (blkno, seq), and a stale memo can only name item roots whose
 * blocks were reused, which reads detect (ESTALE) and the caller's retry replaces the roots.
 * The returned list and its structs are shared: callers must not modify them.
 */
export async function forestLogTrees(cache: BlockCache, logsRoot: BtreeRoot,
  counters?: { inc(name: string): void }): Promise<readonly LogTrees[]> {
  if (logsRoot.height === 0) return [];
  const id = `${logsRoot.ref.blkno}.${logsRoot.ref.seq}.${logsRoot.height}`;
  let memo = logTreesMemo.get(cache);
  if (memo === undefined) {
    memo = new Map();
    logTreesMemo.set(cache, memo);
  }
  const hit = memo.get(id);
  if (hit !== undefined) {
    // most recently used last: the oldest entry is the first one dropped
    memo.delete(id);
    memo.set(id, hit);
    counters?.inc("forest_log_trees_memo_hit");
    return hit;
  }
  counters?.inc("forest_log_trees_memo_miss");
  const list: readonly LogTrees[] = Object.freeze(await listLogTrees(cache, logsRoot));
  // another reader may have decoded the same root meanwhile: both lists are equal
  memo.set(id, list);
  while (memo.size > LOG_TREES_MEMO_MAX) memo.delete(memo.keys().next().value!);
  return list;
}

// ---------------------------------------------------------------------------------------
// Range reads.

type CounterSink = { inc(name: string): void };

export interface ForestRangeOptions {
  counters?: CounterSink;
  /** Report keys whose newest version is a tombstone (as DELETION items); default hidden. */
  tombstones?: boolean;
}

/** Items read from one tree and how far (toward the read's direction) the tree was read. */
interface TreeRead {
  items: Item[];
  /** Every item of the tree between the read's first key and reach was read. */
  reach: Buffer;
}

/** Up to `limit` items of [start, end] in key order. */
async function readTreeForward(cache: BlockCache, root: BtreeRoot, start: Buffer, end: Buffer,
  limit: number): Promise<TreeRead> {
  const items: Item[] = [];
  await btreeIterate(cache, root, start, end, (it) => {
    items.push(it);
    return items.length < limit;
  });
  return { items, reach: items.length >= limit ? items[items.length - 1]!.key : end };
}

/** Up to `limit` items of [start, end], the greatest keys first (returned descending). */
async function readTreeBackward(cache: BlockCache, root: BtreeRoot, start: Buffer, end: Buffer,
  limit: number): Promise<TreeRead> {
  const items: Item[] = [];
  let k = end;
  for (;;) {
    const leaf = await btreeFindLeaf(cache, root, k);
    if (leaf === null) return { items, reach: start };
    let i = lowerBound(leaf.buf, k);
    if (i < nrItems(leaf.buf) && cmpKeyAt(leaf.buf, i, k) === 0) i++;
    for (i--; i >= 0; i--) {
      if (cmpKeyAt(leaf.buf, i, start) < 0) return { items, reach: start };
      items.push(itemAt(leaf.buf, i));
      if (items.length >= limit) return { items, reach: items[items.length - 1]!.key };
    }
    // the previous leaf ends just before this one starts
    if (compareKeys(leaf.start, start) <= 0) return { items, reach: start };
    k = keyDec(leaf.start);
  }
}

/** An item root to read and the group of its versions. */
interface Source {
  root: BtreeRoot;
  group: number;
}

/**
 * The item roots a read of [start, end] must visit: fs_root and every log tree, skipping
 * those whose bloom rules out the range. The bloom is keyed by lock range starts, so it can
 * only prune a range that lies inside one lock's range.
 */
async function rangeTrees(cache: BlockCache, roots: ForestRoots, start: Buffer, end: Buffer,
  counters?: CounterSink): Promise<Source[]> {
  const out: Source[] = [{ root: roots.fsRoot, group: FS_GROUP }];
  const oneLock = lockStartFor(start).equals(lockStartFor(end));
  for (const lt of await forestLogTrees(cache, roots.logsRoot, counters)) {
    if (lt.itemRoot.height === 0) continue;
    if (oneLock && !(await bloomMayContain(cache, lt.bloomRef, start))) {
      counters?.inc("forest_bloom_skip");
      continue;
    }
    counters?.inc("forest_read_log_tree");
    out.push({ root: lt.itemRoot, group: groupOf(lt) });
  }
  return out;
}

/**
 * The current version of each key among sorted runs read from `sources` (currentVersion:
 * earlier runs win seq ties, as fs_root does in forestNewest), in key order.
 */
function currentPerKey(runs: Item[][], sources: Source[]): Item[] {
  const all: { it: Item; run: number }[] = [];
  runs.forEach((items, run) => { for (const it of items) all.push({ it, run }); });
  all.sort((a, b) => compareKeys(a.it.key, b.it.key) || b.it.seq - a.it.seq || a.run - b.run);
  const out: Item[] = [];
  for (let i = 0; i < all.length;) {
    const newest = all[i]!.it;
    let j = i + 1;
    while (j < all.length && all[j]!.it.key.equals(newest.key)) j++;
    if (!isDelta(newest)) {
      out.push(newest); // what currentVersion picks, without building the versions
    } else {
      const versions = all.slice(i, j).map((a) => ({ it: a.it, group: sources[a.run]!.group }));
      const cur = currentVersion(versions);
      if (cur !== null) out.push(cur);
    }
    i = j;
  }
  return out;
}

const isTombstone = (it: Item): boolean => (it.flags & ITEM_DELETION) !== 0;

function checkRangeArgs(start: Buffer, end: Buffer, limit: number): void {
  assert(start.length === KEY_SIZE && end.length === KEY_SIZE, "range key size");
  assert(compareKeys(start, end) <= 0, "range start after end");
  assert(Number.isSafeInteger(limit) && limit > 0, `range limit ${limit}`);
}

/**
 * The current items of [start, end] in key order, newest version per key across fs_root and
 * the log trees, tombstones hidden (or reported with opts.tombstones). Reads at most `limit`
 * items from each tree and returns at most `limit` items; `end` of the result is the last
 * key it describes completely: every current item in [start, result.end] is in `items`, and
 * keys in that range not in `items` are absent. result.end is the requested end when the
 * whole range was read.
 */
export async function forestRange(cache: BlockCache, roots: ForestRoots, start: Buffer,
  end: Buffer, limit: number, opts: ForestRangeOptions = {}):
  Promise<{ items: Item[]; end: Buffer }> {
  checkRangeArgs(start, end, limit);
  const trees = await rangeTrees(cache, roots, start, end, opts.counters);
  const reads: TreeRead[] = [];
  for (const t of trees) reads.push(await readTreeForward(cache, t.root, start, end, limit));
  let stop = end;
  for (const r of reads) if (compareKeys(r.reach, stop) < 0) stop = r.reach;
  const runs = reads.map((r) => r.items.filter((it) => compareKeys(it.key, stop) <= 0));
  let items = currentPerKey(runs, trees);
  if (opts.tombstones !== true) items = items.filter((it) => !isTombstone(it));
  if (items.length > limit) {
    items = items.slice(0, limit);
    stop = items[limit - 1]!.key;
  }
  return { items, end: stop };
}

/**
 * forestRange read from the end backwards: at most `limit` items, the greatest keys of
 * [start, end], returned in key order with `start`, the first key the result describes
 * completely (every current item in [result.start, end] is in `items`).
 */
export async function forestRangeBack(cache: BlockCache, roots: ForestRoots, start: Buffer,
  end: Buffer, limit: number, opts: ForestRangeOptions = {}):
  Promise<{ items: Item[]; start: Buffer }> {
  checkRangeArgs(start, end, limit);
  const trees = await rangeTrees(cache, roots, start, end, opts.counters);
  const reads: TreeRead[] = [];
  for (const t of trees) reads.push(await readTreeBackward(cache, t.root, start, end, limit));
  let stop = start;
  for (const r of reads) if (compareKeys(r.reach, stop) > 0) stop = r.reach;
  const runs = reads.map((r) => r.items.filter((it) => compareKeys(it.key, stop) >= 0).reverse());
  let items = currentPerKey(runs, trees);
  if (opts.tombstones !== true) items = items.filter((it) => !isTombstone(it));
  if (items.length > limit) {
    items = items.slice(items.length - limit);
    stop = items[0]!.key;
  }
  return { items, start: stop };
}

/** Items read per tree by each step of forestNext/forestPrev (they step over tombstones). */
export const FOREST_STEP_ITEMS = 16;

/** The first current item with key <= its key <= end, or null. */
export async function forestNext(cache: BlockCache, roots: ForestRoots, key: Buffer,
  end: Buffer = MAX_KEY, counters?: CounterSink): Promise<Item | null> {
  let k = key;
  for (;;) {
    const r = await forestRange(cache, roots, k, end, FOREST_STEP_ITEMS, { counters });
    if (r.items.length > 0) return r.items[0]!;
    // each step reads through at least k, so this ends
    if (compareKeys(r.end, end) >= 0) return null;
    k = keyInc(r.end);
  }
}

/** The last current item with start <= its key <= key, or null. */
export async function forestPrev(cache: BlockCache, roots: ForestRoots, key: Buffer,
  start: Buffer = MIN_KEY, counters?: CounterSink): Promise<Item | null> {
  let k = key;
  for (;;) {
    const r = await forestRangeBack(cache, roots, start, k, FOREST_STEP_ITEMS, { counters });
    if (r.items.length > 0) return r.items[r.items.length - 1]!;
    if (compareKeys(r.start, start) <= 0) return null;
    k = keyDec(r.start);
  }
}
