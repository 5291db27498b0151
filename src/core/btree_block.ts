/*
 * The layout of one btree block and the in-place edits of a dirty one.
 *
 * A 64 KiB btree block is: the block header, a small btree header {nr u16, level u8, pad,
 * val_start u32, val_bytes u32}, then a dense array of 40-byte item headers sorted by key
 * {key[27], flags u8, seq u64, val_off u16, val_len u16} growing up from the front, and the
 * values packed from the end of the block downward. Lookups binary-search the header array in
 * place (no decoding), so a clean cached block is used exactly as read from disk.
 *
 * Leaves (level 0) hold items with values of at most 896 bytes; parents hold one item per
 * child keyed by the greatest key the child may hold, whose value is the child's block ref.
 * Deleting or shrinking a value leaves a hole that compaction reclaims when space is needed
 * and before the block is written (so unused bytes on disk are always zero).
 */
import { assert } from "../util/assert.js";
import {
  BLOCK_HEADER_SIZE, BLOCK_REF_SIZE, type BlockRef, BTREE_MAX_HEIGHT, corrupt, Magic,
  META_BLOCK_SIZE, readBlockRef, readU64, writeBlockRef, writeU64,
} from "./format.js";
import { KEY_SIZE } from "./key.js";
import { registerBlockPrepare, registerBlockValidator } from "./block.js";

export const BTREE_MAX_VAL_LEN = 896;
export const ITEM_DELETION = 1;
export const ITEM_DELTA = 2;
const ITEM_FLAGS_KNOWN = ITEM_DELETION | ITEM_DELTA;

const BT_NR = BLOCK_HEADER_SIZE;
const BT_LEVEL = BLOCK_HEADER_SIZE + 2;
const BT_VAL_START = BLOCK_HEADER_SIZE + 4;
const BT_VAL_BYTES = BLOCK_HEADER_SIZE + 8;
export const BT_ITEMS = BLOCK_HEADER_SIZE + 16;
export const ITEM_HDR_SIZE = 40;
const IT_FLAGS = KEY_SIZE;
const IT_SEQ = 28;
const IT_VAL_OFF = 36;
const IT_VAL_LEN = 38;
export const PARENT_ITEM_SIZE = ITEM_HDR_SIZE + BLOCK_REF_SIZE;
/** The most item bytes a block can hold. */
export const BTREE_BLOCK_CAPACITY = META_BLOCK_SIZE - BT_ITEMS;
/** Blocks using less than this are joined with a sibling on the delete path. */
export const BTREE_LOW_WATER = Math.floor(META_BLOCK_SIZE / 4);

export interface Item {
  key: Buffer;
  val: Buffer;
  seq: number;
  flags: number;
}

export const nrItems = (b: Buffer): number => b.readUInt16LE(BT_NR);
export const blockLevel = (b: Buffer): number => b[BT_LEVEL]!;
const valStart = (b: Buffer): number => b.readUInt32LE(BT_VAL_START);
const valBytes = (b: Buffer): number => b.readUInt32LE(BT_VAL_BYTES);
const setNr = (b: Buffer, n: number): void => { b.writeUInt16LE(n, BT_NR); };
const setValStart = (b: Buffer, n: number): void => { b.writeUInt32LE(n, BT_VAL_START); };
const setValBytes = (b: Buffer, n: number): void => { b.writeUInt32LE(n, BT_VAL_BYTES); };
export const itemOff = (i: number): number => BT_ITEMS + i * ITEM_HDR_SIZE;
export const valLenAt = (b: Buffer, i: number): number => b.readUInt16LE(itemOff(i) + IT_VAL_LEN);
const valOffAt = (b: Buffer, i: number): number => b.readUInt16LE(itemOff(i) + IT_VAL_OFF);
export const flagsAt = (b: Buffer, i: number): number => b[itemOff(i) + IT_FLAGS]!;
export const seqAt = (b: Buffer, i: number): number => readU64(b, itemOff(i) + IT_SEQ);

export function initBtreeBlock(b: Buffer, level: number): void {
  b.fill(0, BLOCK_HEADER_SIZE);
  b[BT_LEVEL] = level;
  setValStart(b, META_BLOCK_SIZE);
}

/** Bytes in use: headers, item headers and live values. */
export function usedBytes(b: Buffer): number {
  return BT_ITEMS + nrItems(b) * ITEM_HDR_SIZE + valBytes(b);
}

export function freeBytes(b: Buffer): number {
  return META_BLOCK_SIZE - usedBytes(b);
}

/** Sign of (key of item i) - key, compared as big-endian words. */
export function cmpKeyAt(b: Buffer, i: number, key: Buffer): number {
  const o = itemOff(i);
  for (let w = 0; w < 24; w += 4) {
    const x = b.readUInt32BE(o + w);
    const y = key.readUInt32BE(w);
    if (x !== y) return x < y ? -1 : 1;
  }
  for (let w = 24; w < KEY_SIZE; w++) {
    const x = b[o + w]!;
    const y = key[w]!;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

/** Index of the first item whose key is >= key (nr when there is none). */
export function lowerBound(b: Buffer, key: Buffer): number {
  let lo = 0;
  let hi = nrItems(b);
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cmpKeyAt(b, mid, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export function keyAt(b: Buffer, i: number): Buffer {
  const o = itemOff(i);
  return Buffer.from(b.subarray(o, o + KEY_SIZE));
}

export function valAt(b: Buffer, i: number): Buffer {
  const len = valLenAt(b, i);
  if (len === 0) return Buffer.alloc(0);
  const off = valOffAt(b, i);
  return Buffer.from(b.subarray(off, off + len));
}

export function itemAt(b: Buffer, i: number): Item {
  return { key: keyAt(b, i), val: valAt(b, i), seq: seqAt(b, i), flags: flagsAt(b, i) };
}

export function refAt(b: Buffer, i: number): BlockRef {
  return readBlockRef(b, valOffAt(b, i));
}

export function setRefAt(b: Buffer, i: number, ref: BlockRef): void {
  assert(valLenAt(b, i) === BLOCK_REF_SIZE, "parent item value is a ref");
  writeBlockRef(b, valOffAt(b, i), ref);
}

export function refBytes(ref: BlockRef): Buffer {
  const v = Buffer.alloc(BLOCK_REF_SIZE);
  writeBlockRef(v, 0, ref);
  return v;
}

/** Replaces the key of item i; the caller keeps the array sorted. */
export function setKeyAt(b: Buffer, i: number, key: Buffer): void {
  key.copy(b, itemOff(i), 0, KEY_SIZE);
}

const scratch = Buffer.alloc(META_BLOCK_SIZE);

/** Packs values densely at the end of the block, in item order, closing every hole. */
export function compactValues(b: Buffer): void {
  const nr = nrItems(b);
  b.copy(scratch);
  let end = META_BLOCK_SIZE;
  for (let i = 0; i < nr; i++) {
    const len = valLenAt(b, i);
    if (len === 0) continue;
    const off = scratch.readUInt16LE(itemOff(i) + IT_VAL_OFF);
    end -= len;
    scratch.copy(b, end, off, off + len);
    b.writeUInt16LE(end, itemOff(i) + IT_VAL_OFF);
  }
  setValStart(b, end);
  assert(META_BLOCK_SIZE - end === valBytes(b), "compaction value bytes");
}

function contigFree(b: Buffer): number {
  return valStart(b) - itemOff(nrItems(b));
}

function placeValue(b: Buffer, i: number, val: Buffer): void {
  const o = itemOff(i);
  if (val.length === 0) {
    b.writeUInt16LE(0, o + IT_VAL_OFF);
    b.writeUInt16LE(0, o + IT_VAL_LEN);
    return;
  }
  const start = valStart(b) - val.length;
  val.copy(b, start);
  setValStart(b, start);
  setValBytes(b, valBytes(b) + val.length);
  b.writeUInt16LE(start, o + IT_VAL_OFF);
  b.writeUInt16LE(val.length, o + IT_VAL_LEN);
}

/** Inserts an item at index i (the caller found i by lowerBound and checked freeBytes). */
export function insertAt(b: Buffer, i: number, key: Buffer, val: Buffer, seq: number,
  flags: number): void {
  const nr = nrItems(b);
  assert(i >= 0 && i <= nr, "insert index");
  assert(freeBytes(b) >= ITEM_HDR_SIZE + val.length, "btree block has room for the item");
  if (contigFree(b) < ITEM_HDR_SIZE + val.length) compactValues(b);
  b.copyWithin(itemOff(i + 1), itemOff(i), itemOff(nr));
  const o = itemOff(i);
  key.copy(b, o, 0, KEY_SIZE);
  b[o + IT_FLAGS] = flags;
  writeU64(b, o + IT_SEQ, seq);
  setNr(b, nr + 1);
  b.writeUInt16LE(0, o + IT_VAL_LEN);
  placeValue(b, i, val);
}

function releaseValue(b: Buffer, i: number): void {
  const len = valLenAt(b, i);
  if (len === 0) return;
  const off = valOffAt(b, i);
  if (off === valStart(b)) setValStart(b, off + len);
  setValBytes(b, valBytes(b) - len);
  b.writeUInt16LE(0, itemOff(i) + IT_VAL_OFF);
  b.writeUInt16LE(0, itemOff(i) + IT_VAL_LEN);
}

export function deleteAt(b: Buffer, i: number): void {
  const nr = nrItems(b);
  assert(i >= 0 && i < nr, "delete index");
  releaseValue(b, i);
  b.copyWithin(itemOff(i), itemOff(i + 1), itemOff(nr));
  b.fill(0, itemOff(nr - 1), itemOff(nr));
  setNr(b, nr - 1);
}

/** Replaces item i's value, seq and flags; the caller checked room for a growing value. */
export function setItemAt(b: Buffer, i: number, val: Buffer, seq: number, flags: number): void {
  const o = itemOff(i);
  const oldLen = valLenAt(b, i);
  if (val.length > 0 && val.length === oldLen) {
    val.copy(b, valOffAt(b, i));
  } else {
    releaseValue(b, i);
    assert(freeBytes(b) >= val.length, "btree block has room for the value");
    if (contigFree(b) < val.length) compactValues(b);
    placeValue(b, i, val);
  }
  b[o + IT_FLAGS] = flags;
  writeU64(b, o + IT_SEQ, seq);
}

/** Appends item i of src at the end of dst (keys must stay sorted). */
export function appendFrom(dst: Buffer, src: Buffer, i: number): void {
  const nr = nrItems(dst);
  const len = valLenAt(src, i);
  assert(freeBytes(dst) >= ITEM_HDR_SIZE + len, "append room");
  if (contigFree(dst) < ITEM_HDR_SIZE + len) compactValues(dst);
  src.copy(dst, itemOff(nr), itemOff(i), itemOff(i) + IT_VAL_OFF);
  setNr(dst, nr + 1);
  const off = valOffAt(src, i);
  placeValue(dst, nr, len === 0 ? Buffer.alloc(0) : src.subarray(off, off + len));
}

/** Rewrites b to hold only its items [from, to), densely. */
export function keepRange(b: Buffer, from: number, to: number): void {
  const copy = Buffer.from(b);
  initBtreeBlock(b, blockLevel(copy));
  for (let i = from; i < to; i++) appendFrom(b, copy, i);
}

/** Before a dirty block is sealed: values packed and every unused byte zero. */
function prepareBtreeBlock(b: Buffer): void {
  if (META_BLOCK_SIZE - valStart(b) !== valBytes(b)) compactValues(b);
  b.fill(0, itemOff(nrItems(b)), valStart(b));
}

/** Full structural check of a btree block, run on every device read and before writing. */
export function validateBtreeBlock(b: Buffer): void {
  const nr = nrItems(b);
  const level = blockLevel(b);
  if (level >= BTREE_MAX_HEIGHT) throw corrupt(`btree block level ${level}`);
  const vs = valStart(b);
  if (itemOff(nr) > vs || vs > META_BLOCK_SIZE) throw corrupt("btree block item/value overlap");
  if (valBytes(b) > META_BLOCK_SIZE - vs) throw corrupt("btree block value bytes");
  if (b[BT_LEVEL + 1] !== 0 || b.readUInt32LE(BT_VAL_BYTES + 4) !== 0) throw corrupt("btree pad");
  let live = 0;
  for (let i = 0; i < nr; i++) {
    const len = valLenAt(b, i);
    const off = valOffAt(b, i);
    if ((flagsAt(b, i) & ~ITEM_FLAGS_KNOWN) !== 0) throw corrupt("btree item flags");
    if (level > 0 ? len !== BLOCK_REF_SIZE : len > BTREE_MAX_VAL_LEN) {
      throw corrupt(`btree item value length ${len}`);
    }
    if (len === 0 ? off !== 0 : off < vs || off + len > META_BLOCK_SIZE) {
      throw corrupt("btree item value offset");
    }
    // compare(target = item i, source = item i-1) is the sign of (key[i-1] - key[i])
    if (i > 0 && b.compare(b, itemOff(i), itemOff(i) + KEY_SIZE, itemOff(i - 1),
      itemOff(i - 1) + KEY_SIZE) >= 0) throw corrupt("btree keys not sorted");
    live += len;
    readU64(b, itemOff(i) + IT_SEQ);
  }
  if (live !== valBytes(b)) throw corrupt("btree block value accounting");
}

registerBlockValidator(Magic.BTREE, validateBtreeBlock);
registerBlockPrepare(Magic.BTREE, prepareBtreeBlock);
