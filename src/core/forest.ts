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
 */
import { assert } from "../util/assert.js";
import type { BlockCache, MetaTxn } from "./block.js";
import { registerBlockValidator } from "./block.js";
import { btreeIterate, btreeLookup, type Item, ITEM_DELETION } from "./btree.js";
import {
  BLOCK_HEADER_SIZE, type BlockRef, type BtreeRoot, corrupt, Magic, META_BLOCK_SIZE, readU64,
  writeU64,
} from "./format.js";
import { decodeLogTrees, type LogTrees } from "./format_log.js";
import { KEY_SIZE, makeKey, U64_MAX, Zone } from "./key.js";

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

function validateBloom(b: Buffer): void {
  let set = 0;
  for (let i = BLOOM_BITS_OFF; i < META_BLOCK_SIZE; i++) {
    let v = b[i]!;
    while (v) {
      set += v & 1;
      v >>= 1;
    }
  }
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

/** The newest version of key in fs_root and the log trees (tombstones included), or null. */
export async function forestNewest(cache: BlockCache, roots: ForestRoots, key: Buffer,
  counters?: { inc(name: string): void }): Promise<Item | null> {
  let best = await btreeLookup(cache, roots.fsRoot, key);
  for (const lt of await listLogTrees(cache, roots.logsRoot)) {
    if (lt.itemRoot.height === 0) continue;
    if (!(await bloomMayContain(cache, lt.bloomRef, key))) {
      counters?.inc("forest_bloom_skip");
      continue;
    }
    counters?.inc("forest_read_log_tree");
    const it = await btreeLookup(cache, lt.itemRoot, key);
    if (it && (!best || it.seq > best.seq)) best = it;
  }
  return best;
}

/** The current value of key, or null when absent (no version, or a newest tombstone). */
export async function forestLookup(cache: BlockCache, roots: ForestRoots, key: Buffer,
  counters?: { inc(name: string): void }): Promise<Buffer | null> {
  const it = await forestNewest(cache, roots, key, counters);
  return it && (it.flags & ITEM_DELETION) === 0 ? it.val : null;
}
