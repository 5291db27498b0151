/*
 * Copy-on-write btrees of items on 64 KiB blocks (upstream btree.c).
 *
 * Every metadata structure is one of these trees: fs_root, each mount's log tree, the server's
 * logs/mounted-clients/merge trees and the free-extent allocators. Parent items are keyed by
 * the greatest key their child may hold and the rightmost parent item of every level holds
 * MAX_KEY, so a descent always finds a child and appends never update parents.
 *
 * Writers descend once from the root: each block on the path is made dirty (COW through the
 * transaction, see block.ts), and a child that could not take the change is split (insert
 * path) or joined with a sibling (delete path) before we step into it, so a change never has to
 * walk back up. Readers never modify anything and may read a tree a writer is modifying only
 * through the same transaction's cache (dirty blocks are pinned there).
 *
 * Callers provide all locking. Item seqs and the DELETION (tombstone) and DELTA flags are
 * stored for log trees; btreeMerge() combines read-only trees into a writable one with them.
 */
import { assert } from "../util/assert.js";
import { FsError } from "../util/errno.js";
import type { BlockCache, MetaTxn } from "./block.js";
import {
  type BlockRef, BTREE_MAX_HEIGHT, type BtreeRoot, corrupt, Magic, META_BLOCK_SIZE,
} from "./format.js";
import { KEY_SIZE, keyDec, keyInc, MAX_KEY, MIN_KEY } from "./key.js";
import {
  appendFrom, blockLevel, BTREE_BLOCK_CAPACITY, BTREE_LOW_WATER, BTREE_MAX_VAL_LEN, cmpKeyAt,
  deleteAt, flagsAt, freeBytes, initBtreeBlock, insertAt, ITEM_HDR_SIZE, type Item, itemAt,
  keepRange, keyAt, lowerBound, nrItems, PARENT_ITEM_SIZE, refAt, refBytes, seqAt, setItemAt,
  setKeyAt, setRefAt, usedBytes, valLenAt,
} from "./btree_block.js";

export type { Item } from "./btree_block.js";
export { BTREE_MAX_VAL_LEN, ITEM_DELETION, ITEM_DELTA } from "./btree_block.js";

async function readBlock(cache: BlockCache, ref: BlockRef): Promise<Buffer> {
  return cache.getCached(ref, Magic.BTREE) ?? await cache.read(ref, Magic.BTREE);
}

function checkLevel(b: Buffer, expect: number): void {
  if (blockLevel(b) !== expect) throw corrupt(`btree block level ${blockLevel(b)} != ${expect}`);
}

/**
 * A block's keys must lie in the range its parent gives it, (start, end]: a ref that points at
 * a valid block of the wrong place (a misdirected write, a corrupt parent) is caught here.
 */
function checkBounds(b: Buffer, start: Buffer | null, end: Buffer): void {
  const nr = nrItems(b);
  if (nr === 0) return;
  if ((start && cmpKeyAt(b, 0, start) <= 0) || cmpKeyAt(b, nr - 1, end) > 0) {
    throw corrupt("btree block keys outside the range its parent gives it");
  }
}

function checkKey(key: Buffer): void {
  assert(key.length === KEY_SIZE, "btree key size");
}

// ---------------------------------------------------------------------------------------
// Reading.

/** The item with exactly this key, or null. */
export async function btreeLookup(cache: BlockCache, root: BtreeRoot, key: Buffer):
  Promise<Item | null> {
  checkKey(key);
  if (root.height === 0) return null;
  let ref = root.ref;
  for (let level = root.height - 1; ; level--) {
    const b = await readBlock(cache, ref);
    checkLevel(b, level);
    const i = lowerBound(b, key);
    if (level === 0) return i < nrItems(b) && cmpKeyAt(b, i, key) === 0 ? itemAt(b, i) : null;
    if (i >= nrItems(b)) throw corrupt("btree parent without a child for key");
    ref = refAt(b, i);
  }
}

export interface Leaf {
  /** The leaf block (read-only). */
  buf: Buffer;
  /** Every key in [start, end] that the tree holds is in this leaf. */
  start: Buffer;
  end: Buffer;
}

/** The leaf that covers key, with the key range it covers. null for an empty tree. */
export async function btreeFindLeaf(cache: BlockCache, root: BtreeRoot, key: Buffer):
  Promise<Leaf | null> {
  checkKey(key);
  if (root.height === 0) return null;
  let ref = root.ref;
  let start: Buffer | null = null;
  let end: Buffer = MAX_KEY;
  for (let level = root.height - 1; ; level--) {
    const b = await readBlock(cache, ref);
    checkLevel(b, level);
    checkBounds(b, start, end);
    if (level === 0) return { buf: b, start: start ? keyInc(start) : MIN_KEY, end };
    const i = lowerBound(b, key);
    if (i >= nrItems(b)) throw corrupt("btree parent without a child for key");
    // deeper parents hold tighter bounds: the child covers (key[i-1], key[i]]
    end = keyAt(b, i);
    if (i > 0) start = keyAt(b, i - 1);
    ref = refAt(b, i);
  }
}

/** The first item with a key >= key, or null. */
export async function btreeNext(cache: BlockCache, root: BtreeRoot, key: Buffer):
  Promise<Item | null> {
  let k = key;
  for (;;) {
    const leaf = await btreeFindLeaf(cache, root, k);
    if (!leaf) return null;
    const i = lowerBound(leaf.buf, k);
    if (i < nrItems(leaf.buf)) return itemAt(leaf.buf, i);
    if (leaf.end.equals(MAX_KEY)) return null;
    k = keyInc(leaf.end);
  }
}

/** The last item with a key <= key, or null. */
export async function btreePrev(cache: BlockCache, root: BtreeRoot, key: Buffer):
  Promise<Item | null> {
  let k = key;
  for (;;) {
    const leaf = await btreeFindLeaf(cache, root, k);
    if (!leaf) return null;
    let i = lowerBound(leaf.buf, k);
    if (i < nrItems(leaf.buf) && cmpKeyAt(leaf.buf, i, k) === 0) return itemAt(leaf.buf, i);
    i--;
    if (i >= 0) return itemAt(leaf.buf, i);
    if (leaf.start.equals(MIN_KEY)) return null;
    // the previous leaf ends just before this one starts
    k = keyDec(leaf.start);
  }
}

/**
 * Calls fn for every item with start <= key <= end in order, until fn returns false.
 * Reads a leaf at a time; fn may not modify the tree.
 */
export async function btreeIterate(cache: BlockCache, root: BtreeRoot, start: Buffer,
  end: Buffer, fn: (item: Item) => unknown): Promise<void> {
  let k = start;
  while (Buffer.compare(k, end) <= 0) {
    const leaf = await btreeFindLeaf(cache, root, k);
    if (!leaf) return;
    const nr = nrItems(leaf.buf);
    for (let i = lowerBound(leaf.buf, k); i < nr; i++) {
      if (cmpKeyAt(leaf.buf, i, end) > 0) return;
      if (fn(itemAt(leaf.buf, i)) === false) return;
    }
    if (leaf.end.equals(MAX_KEY) || Buffer.compare(leaf.end, end) >= 0) return;
    k = keyInc(leaf.end);
  }
}

/** All items with start <= key <= end (for tests and small ranges). */
export async function btreeCollect(cache: BlockCache, root: BtreeRoot, start: Buffer,
  end: Buffer): Promise<Item[]> {
  const out: Item[] = [];
  await btreeIterate(cache, root, start, end, (it) => { out.push(it); });
  return out;
}

// ---------------------------------------------------------------------------------------
// Writing.

interface WriteOp {
  /** Bytes a leaf must have free (0: no insert can happen). */
  leafNeed: number;
  /** Join underfull children on the way down. */
  shrink: boolean;
  /** Create the root leaf of an empty tree. */
  create: boolean;
}

async function dirtyChild(w: MetaTxn, parent: Buffer, i: number): Promise<Buffer> {
  const ref = refAt(parent, i);
  const d = await w.dirtyRef(ref, Magic.BTREE);
  if (d.ref.blkno !== ref.blkno || d.ref.seq !== ref.seq) setRefAt(parent, i, d.ref);
  return d.buf;
}

/** Moves the lower half (by bytes) of child i into a new left sibling. */
async function split(w: MetaTxn, parent: Buffer, i: number, child: Buffer): Promise<void> {
  const nr = nrItems(child);
  assert(nr >= 2, "split of a block with fewer than two items");
  const half = (usedBytes(child) - ITEM_HDR_SIZE) / 2;
  let m = 0;
  let acc = 0;
  while (m < nr - 1 && acc < half) {
    acc += ITEM_HDR_SIZE + valLenAt(child, m);
    m++;
  }
  const left = await w.newBlock(Magic.BTREE);
  initBtreeBlock(left.buf, blockLevel(child));
  for (let j = 0; j < m; j++) appendFrom(left.buf, child, j);
  keepRange(child, m, nr);
  insertAt(parent, i, keyAt(left.buf, m - 1), refBytes(left.ref), 0, 0);
  w.cache.counters.inc("btree_split");
}

/** Joins an underfull child i with a sibling: merge both, or move items to balance them. */
async function join(w: MetaTxn, parent: Buffer, i: number): Promise<void> {
  const si = i + 1 < nrItems(parent) ? i + 1 : i - 1;
  const li = Math.min(i, si);
  const left = await dirtyChild(w, parent, li);
  const right = await dirtyChild(w, parent, li + 1);
  const merged = usedBytes(left) + usedBytes(right) - (META_BLOCK_SIZE - BTREE_BLOCK_CAPACITY);
  if (merged <= (META_BLOCK_SIZE * 3) / 4) {
    const copy = Buffer.from(right);
    keepRange(right, 0, 0);
    for (let j = 0; j < nrItems(left); j++) appendFrom(right, left, j);
    for (let j = 0; j < nrItems(copy); j++) appendFrom(right, copy, j);
    const leftRef = refAt(parent, li);
    deleteAt(parent, li);
    await w.freeRef(leftRef);
    w.cache.counters.inc("btree_join");
    return;
  }
  balance(left, right);
  setKeyAt(parent, li, keyAt(left, nrItems(left) - 1));
  w.cache.counters.inc("btree_rebalance");
}

/** Moves items across the boundary of two siblings until their used bytes are about equal. */
function balance(left: Buffer, right: Buffer): void {
  const target = (usedBytes(left) + usedBytes(right)) / 2;
  if (usedBytes(left) < usedBytes(right)) {
    let n = 0;
    const nr = nrItems(right);
    while (n < nr - 1 && usedBytes(left) < target) appendFrom(left, right, n++);
    keepRange(right, n, nr);
  } else {
    const nl = nrItems(left);
    let n = nl;
    let moved = usedBytes(right);
    while (n > 1 && moved < target) {
      n--;
      moved += ITEM_HDR_SIZE + valLenAt(left, n);
    }
    const copy = Buffer.from(right);
    keepRange(right, 0, 0);
    for (let j = n; j < nl; j++) appendFrom(right, left, j);
    for (let j = 0; j < nrItems(copy); j++) appendFrom(right, copy, j);
    keepRange(left, 0, n);
  }
}

function needAt(level: number, op: WriteOp): number {
  if (op.leafNeed === 0) return 0;
  return level === 0 ? op.leafNeed : PARENT_ITEM_SIZE;
}

/** Makes the root dirty, growing it or collapsing it as the operation needs. */
async function dirtyRoot(w: MetaTxn, root: BtreeRoot, op: WriteOp): Promise<Buffer | null> {
  if (root.height === 0) {
    if (!op.create) return null;
    const n = await w.newBlock(Magic.BTREE);
    initBtreeBlock(n.buf, 0);
    root.ref = n.ref;
    root.height = 1;
    return n.buf;
  }
  for (;;) {
    const d = await w.dirtyRef(root.ref, Magic.BTREE);
    root.ref = d.ref;
    checkLevel(d.buf, root.height - 1);
    if (op.shrink && root.height > 1 && nrItems(d.buf) === 1) {
      const child = refAt(d.buf, 0);
      await w.freeRef(root.ref);
      root.ref = child;
      root.height--;
      continue;
    }
    const need = needAt(root.height - 1, op);
    if (need > 0 && freeBytes(d.buf) < need) {
      if (root.height >= BTREE_MAX_HEIGHT) throw new FsError("EFBIG", "btree too tall");
      const n = await w.newBlock(Magic.BTREE);
      initBtreeBlock(n.buf, root.height);
      insertAt(n.buf, 0, MAX_KEY, refBytes(root.ref), 0, 0);
      await split(w, n.buf, 0, d.buf);
      root.ref = n.ref;
      root.height++;
      return n.buf;
    }
    return d.buf;
  }
}

/** Descends to the leaf for key, dirtying, splitting and joining on the way. */
async function walkDirty(w: MetaTxn, root: BtreeRoot, key: Buffer, op: WriteOp):
  Promise<Buffer | null> {
  checkKey(key);
  let b = await dirtyRoot(w, root, op);
  if (!b) return null;
  while (blockLevel(b) > 0) {
    let i = lowerBound(b, key);
    if (i >= nrItems(b)) throw corrupt("btree parent without a child for key");
    let child = await dirtyChild(w, b, i);
    checkLevel(child, blockLevel(b) - 1);
    const need = needAt(blockLevel(child), op);
    if (need > 0 && freeBytes(child) < need) {
      await split(w, b, i, child);
      i = lowerBound(b, key);
      child = w.dirtyBuf(refAt(b, i));
    } else if (op.shrink && usedBytes(child) < BTREE_LOW_WATER && nrItems(b) > 1) {
      await join(w, b, i);
      i = lowerBound(b, key);
      child = w.dirtyBuf(refAt(b, i));
    }
    b = child;
  }
  return b;
}

function checkVal(val: Buffer): void {
  if (val.length > BTREE_MAX_VAL_LEN) {
    throw new FsError("EINVAL", `item value of ${val.length} bytes exceeds ${BTREE_MAX_VAL_LEN}`);
  }
}

export interface ItemOpts {
  seq?: number;
  flags?: number;
}

/** Inserts a new item; EEXIST if the key exists. */
export async function btreeInsert(w: MetaTxn, root: BtreeRoot, key: Buffer, val: Buffer,
  opts: ItemOpts = {}): Promise<void> {
  checkVal(val);
  const op = { leafNeed: ITEM_HDR_SIZE + val.length, shrink: false, create: true };
  const leaf = (await walkDirty(w, root, key, op))!;
  const i = lowerBound(leaf, key);
  if (i < nrItems(leaf) && cmpKeyAt(leaf, i, key) === 0) throw new FsError("EEXIST");
  insertAt(leaf, i, key, val, opts.seq ?? w.seq, opts.flags ?? 0);
}

/** Replaces an existing item's value (and seq/flags); ENOENT if absent. */
export async function btreeUpdate(w: MetaTxn, root: BtreeRoot, key: Buffer, val: Buffer,
  opts: ItemOpts = {}): Promise<void> {
  checkVal(val);
  const op = { leafNeed: ITEM_HDR_SIZE + val.length, shrink: false, create: false };
  const leaf = await walkDirty(w, root, key, op);
  const i = leaf ? lowerBound(leaf, key) : 0;
  if (!leaf || i >= nrItems(leaf) || cmpKeyAt(leaf, i, key) !== 0) throw new FsError("ENOENT");
  setItemAt(leaf, i, val, opts.seq ?? w.seq, opts.flags ?? 0);
}

/** Inserts or replaces. */
export async function btreeForce(w: MetaTxn, root: BtreeRoot, key: Buffer, val: Buffer,
  opts: ItemOpts = {}): Promise<void> {
  checkVal(val);
  const op = { leafNeed: ITEM_HDR_SIZE + val.length, shrink: false, create: true };
  const leaf = (await walkDirty(w, root, key, op))!;
  const i = lowerBound(leaf, key);
  if (i < nrItems(leaf) && cmpKeyAt(leaf, i, key) === 0) {
    setItemAt(leaf, i, val, opts.seq ?? w.seq, opts.flags ?? 0);
  } else {
    insertAt(leaf, i, key, val, opts.seq ?? w.seq, opts.flags ?? 0);
  }
}

/** Deletes an item; ENOENT if absent. An emptied tree frees its last block. */
export async function btreeDelete(w: MetaTxn, root: BtreeRoot, key: Buffer): Promise<void> {
  const leaf = await walkDirty(w, root, key, { leafNeed: 0, shrink: true, create: false });
  const i = leaf ? lowerBound(leaf, key) : 0;
  if (!leaf || i >= nrItems(leaf) || cmpKeyAt(leaf, i, key) !== 0) throw new FsError("ENOENT");
  deleteAt(leaf, i);
  if (root.height === 1 && nrItems(leaf) === 0) {
    await w.freeRef(root.ref);
    root.ref = { blkno: 0, seq: 0 };
    root.height = 0;
  }
}

/** Writes a sorted list of items (insert or replace each), e.g. a commit's dirty items. */
export async function btreeInsertList(w: MetaTxn, root: BtreeRoot, items: Item[]):
  Promise<void> {
  for (let i = 0; i < items.length; i++) {
    const it = items[i]!;
    if (i > 0) assert(Buffer.compare(items[i - 1]!.key, it.key) < 0, "insert list sorted");
    await btreeForce(w, root, it.key, it.val, { seq: it.seq, flags: it.flags });
  }
}

/**
 * Makes every block on the path to key balanced (upstream scoutfs_btree_rebalance): a single
 * child root collapses, a child without room for a maximal insert is split and one under the
 * low water mark is joined with a sibling. Log merging calls it after splicing a subtree whose
 * root filled up or emptied while a mount merged into it.
 */
export async function btreeRebalance(w: MetaTxn, root: BtreeRoot, key: Buffer): Promise<void> {
  await walkDirty(w, root, key,
    { leafNeed: ITEM_HDR_SIZE + BTREE_MAX_VAL_LEN, shrink: true, create: false });
}

/** Frees every block of a tree without reading its leaves; the root becomes empty. */
export async function btreeFree(w: MetaTxn, root: BtreeRoot): Promise<void> {
  if (root.height > 0) await freeSubtree(w, root.ref, root.height - 1);
  root.ref = { blkno: 0, seq: 0 };
  root.height = 0;
}

async function freeSubtree(w: MetaTxn, ref: BlockRef, level: number): Promise<void> {
  if (level > 0) {
    const b = await readBlock(w.cache, ref);
    checkLevel(b, level);
    const refs = Array.from({ length: nrItems(b) }, (_, i) => refAt(b, i));
    for (const r of refs) await freeSubtree(w, r, level - 1);
  }
  await w.freeRef(ref);
}

/** Calls visit for every block of a tree, parents before children (fsck, print). */
export async function btreeWalkBlocks(cache: BlockCache, root: BtreeRoot,
  visit: (ref: BlockRef, level: number, buf: Buffer) => void | Promise<void>): Promise<void> {
  if (root.height === 0) return;
  const walk = async (ref: BlockRef, level: number): Promise<void> => {
    const b = await readBlock(cache, ref);
    checkLevel(b, level);
    await visit(ref, level, b);
    if (level === 0) return;
    const refs = Array.from({ length: nrItems(b) }, (_, i) => refAt(b, i));
    for (const r of refs) await walk(r, level - 1);
  };
  await walk(root.ref, root.height - 1);
}

export { flagsAt, seqAt };
