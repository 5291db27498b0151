/*
 * Allocators (upstream alloc.c).
 *
 * Two kinds, for two jobs:
 *
 * - Alloc lists feed metadata blknos to a transaction. COWing an extent btree needs blocks,
 *   so transactions never allocate from extent trees directly (that would recurse): they pop
 *   blknos from an `avail` list and push the blknos they free onto a `freed` list. A list is a
 *   chain of 64 KiB blocks of up to 8185 blknos each. List blocks are themselves COWed with
 *   blknos taken from the lists, never from anywhere else. Blocks freed while still dirty in
 *   the same transaction go straight back to avail; blocks that committed state references go
 *   to freed and are reusable only after the commit that stopped referencing them is durable.
 *
 * - Free-extent btrees hold free space: every extent is stored twice, by blkno (zone
 *   FREE_EXTENT_BLKNO: last blkno, length) to find and merge neighbours on free, and by the
 *   log8 order of its length (zone FREE_EXTENT_ORDER: U64_MAX - order, last blkno, length),
 *   largest order first, so a search for a large extent inside a blkno region skips at most
 *   EXTENT_ORDER_MAX + 1 orders. Allocation takes the front of the largest extent, which lets
 *   small freed fragments age and merge. Both indexes always describe the same set of extents;
 *   fsck checks it.
 */
import { assert } from "../util/assert.js";
import { FsError } from "../util/errno.js";
import type { MetaAllocator, MetaTxn } from "./block.js";
import { registerBlockValidator } from "./block.js";
import { btreeDelete, btreeInsert, btreeNext } from "./btree.js";
import {
  ALLOC_LIST_BLKNOS_OFF, ALLOC_LIST_MAX_BLKNOS, ALLOC_LIST_NEXT_OFF, ALLOC_LIST_NR_OFF,
  ALLOC_LIST_START_OFF, type AllocListHead, type AllocRoot, type BlockRef, corrupt, Magic,
  META_BLOCK_SIZE, readBlockRef, readU64, sealBlock, writeBlockHeader, writeBlockRef, writeU64,
} from "./format.js";
import {
  EXTENT_ORDER_MAX, extentOrder, freeExtentBlknoKey, freeExtentOrderKey, keyFirst, keySecond,
  keyThird, keyZone, U64_MAX, Zone,
} from "./key.js";

// ---------------------------------------------------------------------------------------
// Alloc list blocks.

export const listNr = (b: Buffer): number => b.readUInt32LE(ALLOC_LIST_NR_OFF);
export const listNext = (b: Buffer): BlockRef => readBlockRef(b, ALLOC_LIST_NEXT_OFF);
export const listEntry = (b: Buffer, i: number): number => readU64(b, ALLOC_LIST_BLKNOS_OFF + i * 8);
const setListNr = (b: Buffer, n: number): void => { b.writeUInt32LE(n, ALLOC_LIST_NR_OFF); };

export function listEntries(b: Buffer): number[] {
  return Array.from({ length: listNr(b) }, (_, i) => listEntry(b, i));
}

function initListBlock(b: Buffer, next: BlockRef): void {
  b.fill(0, ALLOC_LIST_NEXT_OFF);
  writeBlockRef(b, ALLOC_LIST_NEXT_OFF, next);
}

export interface ListBlock {
  next: BlockRef;
  blknos: number[];
}

/** A whole alloc-list block (mkfs, tests); transactions edit dirty blocks in place. */
export function encodeListBlock(fsid: bigint, seq: number, blkno: number, lb: ListBlock): Buffer {
  assert(lb.blknos.length <= ALLOC_LIST_MAX_BLKNOS, "alloc list block capacity");
  const b = Buffer.alloc(META_BLOCK_SIZE);
  writeBlockHeader(b, Magic.ALLOC_LIST, fsid, seq, blkno);
  initListBlock(b, lb.next);
  lb.blknos.forEach((n, i) => writeU64(b, ALLOC_LIST_BLKNOS_OFF + i * 8, n));
  setListNr(b, lb.blknos.length);
  sealBlock(b);
  validateListBlock(b);
  return b;
}

/** Decodes the contents of a verified alloc-list block (identity is checked by the cache). */
export function decodeListBlock(b: Buffer): ListBlock {
  validateListBlock(b);
  return { next: listNext(b), blknos: listEntries(b) };
}

function validateListBlock(b: Buffer): void {
  const nr = listNr(b);
  if (b.readUInt32LE(ALLOC_LIST_START_OFF) !== 0) throw corrupt("alloc list start");
  if (nr > ALLOC_LIST_MAX_BLKNOS) throw corrupt(`alloc list nr ${nr}`);
  listNext(b);
  for (let i = 0; i < nr; i++) listEntry(b, i);
  const end = ALLOC_LIST_BLKNOS_OFF + nr * 8;
  if (b.compare(ZERO_BLOCK, end, META_BLOCK_SIZE, end, META_BLOCK_SIZE) !== 0) {
    throw corrupt("alloc list unused bytes");
  }
}
/** Compared against (never written): unused bytes of list blocks must be zero. */
const ZERO_BLOCK = Buffer.alloc(META_BLOCK_SIZE);
registerBlockValidator(Magic.ALLOC_LIST, validateListBlock);

function sameRef(a: BlockRef, b: BlockRef): boolean {
  return a.blkno === b.blkno && a.seq === b.seq;
}

/**
 * A transaction's metadata allocator over an avail and a freed list. The heads are mutated in
 * place; the owner stores them (in the super or a log_trees item) when it commits.
 */
export class ListAllocator implements MetaAllocator {
  constructor(
    public avail: AllocListHead,
    public freed: AllocListHead,
    /** Called (not re-entered) when avail runs low, to refill it from an extent tree. */
    private readonly onLow?: (txn: MetaTxn) => Promise<void>,
    private readonly lowWater = 64,
  ) {}

  private refilling = false;

  async alloc(txn: MetaTxn): Promise<number> {
    if (this.onLow && !this.refilling && this.avail.totalNr < this.lowWater) {
      this.refilling = true;
      try {
        await this.onLow(txn);
      } finally {
        this.refilling = false;
      }
    }
    return this.pop(txn);
  }

  private async pop(txn: MetaTxn): Promise<number> {
    const h = this.avail;
    for (;;) {
      if (h.ref.blkno === 0) {
        txn.cache.counters.inc("alloc_list_enospc");
        throw new FsError("ENOSPC", "metadata alloc list is empty");
      }
      if (!txn.isDirty(h.ref)) {
        await this.cowAvailHead(txn);
        continue;
      }
      const buf = txn.dirtyBuf(h.ref);
      const nr = listNr(buf);
      if (nr > 0) {
        const blkno = listEntry(buf, nr - 1);
        writeU64(buf, ALLOC_LIST_BLKNOS_OFF + (nr - 1) * 8, 0);
        setListNr(buf, nr - 1);
        h.totalNr--;
        h.firstNr = nr - 1;
        return blkno;
      }
      // an empty dirty list block was allocated in this txn: hand out the block itself
      const blkno = h.ref.blkno;
      const next = listNext(buf);
      txn.forgetDirty(blkno);
      await this.setHead(txn, h, next);
      return blkno;
    }
  }

  /** COWs the clean avail head into one of its own entries (or drops it if empty). */
  private async cowAvailHead(txn: MetaTxn): Promise<void> {
    const h = this.avail;
    const oldRef = h.ref;
    const old = await txn.cache.read(oldRef, Magic.ALLOC_LIST);
    const nr = listNr(old);
    if (nr === 0) {
      await this.setHead(txn, h, listNext(old));
    } else {
      const blkno = listEntry(old, nr - 1);
      const buf = txn.adoptDirty(blkno, Magic.ALLOC_LIST, old);
      writeU64(buf, ALLOC_LIST_BLKNOS_OFF + (nr - 1) * 8, 0);
      setListNr(buf, nr - 1);
      h.ref = { blkno, seq: txn.seq };
      h.totalNr--;
      h.firstNr = nr - 1;
    }
    await this.freeCommitted(txn, oldRef.blkno);
  }

  private async setHead(txn: MetaTxn, h: AllocListHead, next: BlockRef): Promise<void> {
    h.ref = { ...next };
    h.firstNr = next.blkno === 0 ? 0 : listNr(await txn.cache.read(next, Magic.ALLOC_LIST));
    if (next.blkno === 0 && h.totalNr !== 0) throw corrupt("alloc list total count");
  }

  async freeDirty(txn: MetaTxn, blkno: number): Promise<void> {
    const h = this.avail;
    for (;;) {
      if (h.ref.blkno !== 0 && !txn.isDirty(h.ref)) {
        await this.cowAvailHead(txn);
        continue;
      }
      if (h.ref.blkno === 0 || listNr(txn.dirtyBuf(h.ref)) >= ALLOC_LIST_MAX_BLKNOS) {
        // the freed block itself becomes the new head list block
        const buf = txn.adoptDirty(blkno, Magic.ALLOC_LIST, null);
        initListBlock(buf, h.ref);
        h.ref = { blkno, seq: txn.seq };
        h.firstNr = 0;
        return;
      }
      this.append(txn, h, blkno);
      return;
    }
  }

  async freeCommitted(txn: MetaTxn, blkno: number): Promise<void> {
    const h = this.freed;
    for (;;) {
      if (h.ref.blkno !== 0 && txn.isDirty(h.ref) &&
        listNr(txn.dirtyBuf(h.ref)) < ALLOC_LIST_MAX_BLKNOS) {
        this.append(txn, h, blkno);
        return;
      }
      const before = { ...h.ref };
      const old = h.ref.blkno === 0 || txn.isDirty(h.ref) ? null
        : await txn.cache.read(h.ref, Magic.ALLOC_LIST);
      const nb = await this.alloc(txn);
      if (!sameRef(before, h.ref)) {
        // allocating changed the freed list (it freed a committed avail head): retry
        await this.freeDirty(txn, nb);
        continue;
      }
      const buf = txn.adoptDirty(nb, Magic.ALLOC_LIST, null);
      if (old && listNr(old) < ALLOC_LIST_MAX_BLKNOS - 1) {
        old.copy(buf, ALLOC_LIST_NEXT_OFF, ALLOC_LIST_NEXT_OFF);
        h.ref = { blkno: nb, seq: txn.seq };
        this.append(txn, h, before.blkno);
      } else {
        initListBlock(buf, before);
        h.ref = { blkno: nb, seq: txn.seq };
        h.firstNr = 0;
      }
    }
  }

  private append(txn: MetaTxn, h: AllocListHead, blkno: number): void {
    const buf = txn.dirtyBuf(h.ref);
    const nr = listNr(buf);
    assert(nr < ALLOC_LIST_MAX_BLKNOS, "alloc list block full");
    writeU64(buf, ALLOC_LIST_BLKNOS_OFF + nr * 8, blkno);
    setListNr(buf, nr + 1);
    h.totalNr++;
    h.firstNr = nr + 1;
  }
}

/** Sorted runs of consecutive blknos; a blkno listed twice is corruption. */
export function coalesce(blknos: number[]): Extent[] {
  const sorted = [...blknos].sort((a, b) => a - b);
  const out: Extent[] = [];
  for (const b of sorted) {
    const last = out[out.length - 1];
    if (last && last.start + last.len === b) last.len++;
    else {
      if (last && b < last.start + last.len) throw corrupt(`blkno ${b} listed twice`);
      out.push({ start: b, len: 1 });
    }
  }
  return out;
}

/**
 * Empties a committed alloc-list chain into a free-extent tree: its entries become free
 * extents and its (committed) list blocks are handed to `freeListBlock`, which must not make
 * them reusable before this transaction commits. The head is left empty.
 */
export async function drainList(w: MetaTxn, h: AllocListHead, into: AllocRoot,
  freeListBlock: (blkno: number) => Promise<void>): Promise<void> {
  while (h.ref.blkno !== 0) {
    const buf = await w.cache.read(h.ref, Magic.ALLOC_LIST);
    const entries = listEntries(buf);
    for (const run of coalesce(entries)) await freeExtent(w, into, run);
    const blkno = h.ref.blkno;
    h.ref = listNext(buf);
    h.totalNr -= entries.length;
    h.firstNr = 0;
    await freeListBlock(blkno);
  }
  if (h.totalNr !== 0) throw corrupt("alloc list total count");
  h.ref = { blkno: 0, seq: 0 };
  h.firstNr = 0;
}

/**
 * Prepends new list blocks holding `blknos` (free, owned by this transaction) to a chain that
 * some other writer owns; the chain's existing blocks are not touched, so they need no COW.
 * The first blkno of each run of 8186 becomes the list block holding the other 8185.
 */
export function prependListBlocks(w: MetaTxn, h: AllocListHead, blknos: number[]): void {
  for (let i = 0; i < blknos.length; i += ALLOC_LIST_MAX_BLKNOS + 1) {
    const chunk = blknos.slice(i, i + ALLOC_LIST_MAX_BLKNOS + 1);
    const at = chunk[0]!;
    const entries = chunk.slice(1);
    const buf = w.adoptDirty(at, Magic.ALLOC_LIST, null);
    initListBlock(buf, h.ref);
    entries.forEach((n, k) => writeU64(buf, ALLOC_LIST_BLKNOS_OFF + k * 8, n));
    setListNr(buf, entries.length);
    h.ref = { blkno: at, seq: w.seq };
    h.totalNr += entries.length;
    h.firstNr = entries.length;
  }
}

// ---------------------------------------------------------------------------------------
// Free-extent btrees.

export interface Extent {
  start: number;
  len: number;
}

const EMPTY = Buffer.alloc(0);

function extentFromBlknoKey(k: Buffer): Extent {
  const last = Number(keyFirst(k));
  const len = Number(keySecond(k));
  return { start: last - len + 1, len };
}

function extentFromOrderKey(k: Buffer): Extent {
  const last = Number(keySecond(k));
  const len = Number(keyThird(k));
  return { start: last - len + 1, len };
}

async function insertExtentItems(w: MetaTxn, a: AllocRoot, e: Extent): Promise<void> {
  const last = e.start + e.len - 1;
  await btreeInsert(w, a.root, freeExtentBlknoKey(last, e.len), EMPTY, { seq: 0 });
  await btreeInsert(w, a.root, freeExtentOrderKey(extentOrder(e.len), last, e.len), EMPTY,
    { seq: 0 });
  a.totalLen += e.len;
}

async function deleteExtentItems(w: MetaTxn, a: AllocRoot, e: Extent): Promise<void> {
  const last = e.start + e.len - 1;
  await btreeDelete(w, a.root, freeExtentBlknoKey(last, e.len));
  await btreeDelete(w, a.root, freeExtentOrderKey(extentOrder(e.len), last, e.len));
  a.totalLen -= e.len;
}

/** The free extent with the lowest last blkno >= blkno, if any. */
async function extentAtOrAfter(w: MetaTxn, a: AllocRoot, blkno: number): Promise<Extent | null> {
  const it = await btreeNext(w.cache, a.root, freeExtentBlknoKey(blkno, 0));
  if (!it || keyZone(it.key) !== Zone.FREE_EXTENT_BLKNO) return null;
  return extentFromBlknoKey(it.key);
}

function checkExtent(e: Extent): void {
  assert(Number.isSafeInteger(e.start) && e.start >= 0, "extent start");
  if (!Number.isSafeInteger(e.len) || e.len < 1) {
    throw new FsError("EINVAL", `extent length ${e.len}`);
  }
}

/** Adds [start, start+len) to the free extents, merging with free neighbours. */
export async function freeExtent(w: MetaTxn, a: AllocRoot, e: Extent): Promise<void> {
  checkExtent(e);
  const merged = { ...e };
  const after = await extentAtOrAfter(w, a, e.start);
  if (after && after.start < e.start + e.len) {
    throw corrupt(`free of [${e.start}, +${e.len}) overlaps free extent [${after.start}, +${after.len})`);
  }
  if (after && after.start === e.start + e.len) {
    await deleteExtentItems(w, a, after);
    merged.len += after.len;
  }
  if (e.start > 0) {
    const prev = await btreeLookupLast(w, a, e.start - 1);
    if (prev) {
      await deleteExtentItems(w, a, prev);
      merged.start = prev.start;
      merged.len += prev.len;
    }
  }
  await insertExtentItems(w, a, merged);
  w.cache.counters.inc("alloc_free_extent");
}

/** The free extent whose last blkno is exactly `last`, if any. */
async function btreeLookupLast(w: MetaTxn, a: AllocRoot, last: number): Promise<Extent | null> {
  const it = await btreeNext(w.cache, a.root, freeExtentBlknoKey(last, 0));
  if (!it || keyZone(it.key) !== Zone.FREE_EXTENT_BLKNO || Number(keyFirst(it.key)) !== last) {
    return null;
  }
  return extentFromBlknoKey(it.key);
}

export interface AllocRegion {
  /** Only blknos in [start, end) may be returned. */
  start: number;
  end: number;
}

/**
 * Allocates up to maxLen blocks from the front of the largest free extent (inside `region`
 * when given). Returns null when nothing fits.
 */
export async function allocExtent(w: MetaTxn, a: AllocRoot, maxLen: number,
  region?: AllocRegion): Promise<Extent | null> {
  if (!Number.isSafeInteger(maxLen) || maxLen < 1) {
    throw new FsError("EINVAL", `allocation of ${maxLen} blocks`);
  }
  const found = region ? await findInRegion(w, a, region) : await findLargest(w, a);
  if (!found) return null;
  const { ext, from } = found;
  const len = Math.min(maxLen, ext.start + ext.len - from,
    region ? region.end - from : Number.MAX_SAFE_INTEGER);
  assert(len >= 1, "allocation length");
  await removeFromExtent(w, a, ext, { start: from, len });
  w.cache.counters.inc("alloc_alloc_extent");
  return { start: from, len };
}

async function findLargest(w: MetaTxn, a: AllocRoot): Promise<{ ext: Extent; from: number } | null> {
  const it = await btreeNext(w.cache, a.root, freeExtentOrderKey(EXTENT_ORDER_MAX, 0, 0));
  if (!it || keyZone(it.key) !== Zone.FREE_EXTENT_ORDER) return null;
  const ext = extentFromOrderKey(it.key);
  return { ext, from: ext.start };
}

/** Largest order first; within an order the lowest extent ending at or after region.start. */
async function findInRegion(w: MetaTxn, a: AllocRoot, r: AllocRegion):
  Promise<{ ext: Extent; from: number } | null> {
  assert(r.start < r.end, "allocation region");
  for (let order = EXTENT_ORDER_MAX; order >= 0; order--) {
    // the first extent of this order ending at or after region.start
    const it = await btreeNext(w.cache, a.root, freeExtentOrderKey(order, r.start, 0));
    if (it && keyZone(it.key) === Zone.FREE_EXTENT_ORDER &&
      keyFirst(it.key) === U64_MAX - BigInt(order)) {
      const ext = extentFromOrderKey(it.key);
      if (ext.start >= r.end) continue;
      // ext ends at or after region.start and starts before region.end: they overlap
      return { ext, from: Math.max(ext.start, r.start) };
    }
  }
  return null;
}

async function removeFromExtent(w: MetaTxn, a: AllocRoot, ext: Extent, take: Extent):
  Promise<void> {
  assert(take.start >= ext.start && take.start + take.len <= ext.start + ext.len, "take inside");
  await deleteExtentItems(w, a, ext);
  if (take.start > ext.start) {
    await insertExtentItems(w, a, { start: ext.start, len: take.start - ext.start });
  }
  const tail = ext.start + ext.len - (take.start + take.len);
  if (tail > 0) await insertExtentItems(w, a, { start: take.start + take.len, len: tail });
}

/** Removes exactly [start, start+len) from the free extents; ENOENT unless all of it is free. */
export async function takeExtent(w: MetaTxn, a: AllocRoot, take: Extent): Promise<void> {
  checkExtent(take);
  const ext = await extentAtOrAfter(w, a, take.start);
  if (!ext || ext.start > take.start || ext.start + ext.len < take.start + take.len) {
    throw new FsError("ENOENT", `[${take.start}, +${take.len}) is not free`);
  }
  await removeFromExtent(w, a, ext, take);
}

/** Every free extent in blkno order (fsck, print, tests). */
export async function listExtents(w: { cache: MetaTxn["cache"] }, a: AllocRoot):
  Promise<Extent[]> {
  const out: Extent[] = [];
  let k = freeExtentBlknoKey(0, 0);
  for (;;) {
    const it = await btreeNext(w.cache, a.root, k);
    if (!it || keyZone(it.key) !== Zone.FREE_EXTENT_BLKNO) return out;
    const e = extentFromBlknoKey(it.key);
    out.push(e);
    k = freeExtentBlknoKey(e.start + e.len, 0);
  }
}
