/*
 * The generic key. All metadata is items addressed by one key shape:
 * (zone u8, first u64, type u8, second u64, third u64, fourth u8), sorted in that order.
 *
 * A key is a 27-byte big-endian Buffer laid out in sort order, so Buffer.compare gives the
 * key order at memcmp speed and a key can be incremented or decremented as one big number
 * (which is what upstream's key inc/dec do across fields). Callers build keys with the
 * per-item constructors below, never by hand, so that each item type's field mapping lives
 * in one place (reference section 1.5).
 */
import { assert } from "../util/assert.js";

export const KEY_SIZE = 27;
const OFF_ZONE = 0;
const OFF_FIRST = 1;
const OFF_TYPE = 9;
const OFF_SECOND = 10;
const OFF_THIRD = 18;
const OFF_FOURTH = 26;

export const U64_MAX = 0xffff_ffff_ffff_ffffn;

export const Zone = {
  INODE_INDEX: 4, ORPHAN: 8, QUOTA: 10, XATTR_TOTL: 12, XATTR_INDX: 14, FS: 16, LOCK: 20,
  LOG_TREES: 24, MOUNTED_CLIENT: 28, SRCH: 32, FREE_EXTENT_BLKNO: 36, FREE_EXTENT_ORDER: 40,
  LOG_MERGE_STATUS: 44, LOG_MERGE_RANGE: 48, LOG_MERGE_REQUEST: 52, LOG_MERGE_COMPLETE: 56,
  LOG_MERGE_FREEING: 60,
} as const;

export const FsType = {
  INODE: 4, XATTR: 8, DIRENT: 12, READDIR: 16, LINK_BACKREF: 20, SYMLINK: 24, DATA_EXTENT: 28,
} as const;
export const InodeIndexType = { META_SEQ: 4, DATA_SEQ: 8 } as const;
export const OrphanType = { ORPHAN: 4 } as const;
export const QuotaType = { RULE: 4 } as const;
export const LockType = { RENAME: 4 } as const;
export const SrchType = { LOG: 4, BLOCKS: 8, PENDING: 12, BUSY: 16 } as const;

export interface KeyFields {
  zone: number;
  first: bigint;
  type: number;
  second: bigint;
  third: bigint;
  fourth: number;
}

export function makeKey(zone: number, first: bigint, type: number, second = 0n, third = 0n,
  fourth = 0): Buffer {
  assert(zone >= 0 && zone <= 255 && type >= 0 && type <= 255 && fourth >= 0 && fourth <= 255,
    "key byte fields");
  const k = Buffer.allocUnsafe(KEY_SIZE);
  k[OFF_ZONE] = zone;
  putU64(k, OFF_FIRST, first);
  k[OFF_TYPE] = type;
  putU64(k, OFF_SECOND, second);
  putU64(k, OFF_THIRD, third);
  k[OFF_FOURTH] = fourth;
  return k;
}

const TWO32 = 0x1_0000_0000n;

/**
 * A u64 field, big-endian. Keys are built for every item an operation touches: values below
 * 2^32 (most inode numbers, positions, seqs) are written as bytes, about twice as fast as
 * writeBigUInt64BE.
 */
function putU64(k: Buffer, off: number, v: bigint): void {
  if (v >= 0n && v < TWO32) {
    const n = Number(v);
    k[off] = 0;
    k[off + 1] = 0;
    k[off + 2] = 0;
    k[off + 3] = 0;
    k[off + 4] = n >>> 24;
    k[off + 5] = (n >>> 16) & 0xff;
    k[off + 6] = (n >>> 8) & 0xff;
    k[off + 7] = n & 0xff;
    return;
  }
  assert(v >= 0n && v <= U64_MAX, "key u64 fields");
  k.writeBigUInt64BE(v, off);
}

export function keyFields(k: Buffer): KeyFields {
  assert(k.length === KEY_SIZE, "key size");
  return {
    zone: k[OFF_ZONE]!, first: k.readBigUInt64BE(OFF_FIRST), type: k[OFF_TYPE]!,
    second: k.readBigUInt64BE(OFF_SECOND), third: k.readBigUInt64BE(OFF_THIRD),
    fourth: k[OFF_FOURTH]!,
  };
}

export const keyZone = (k: Buffer): number => k[OFF_ZONE]!;
export const keyType = (k: Buffer): number => k[OFF_TYPE]!;
export const keyFirst = (k: Buffer): bigint => k.readBigUInt64BE(OFF_FIRST);
export const keySecond = (k: Buffer): bigint => k.readBigUInt64BE(OFF_SECOND);
export const keyThird = (k: Buffer): bigint => k.readBigUInt64BE(OFF_THIRD);

export const MIN_KEY: Buffer = Buffer.alloc(KEY_SIZE, 0);
export const MAX_KEY: Buffer = Buffer.alloc(KEY_SIZE, 0xff);

export function compareKeys(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b);
}

/** The next key in sort order; asserts k is not MAX_KEY. */
export function keyInc(k: Buffer): Buffer {
  const r = Buffer.from(k);
  for (let i = KEY_SIZE - 1; i >= 0; i--) {
    if (r[i] !== 0xff) {
      r[i]! += 1;
      return r;
    }
    r[i] = 0;
  }
  throw new Error("keyInc of MAX_KEY");
}

/** The previous key in sort order; asserts k is not MIN_KEY. */
export function keyDec(k: Buffer): Buffer {
  const r = Buffer.from(k);
  for (let i = KEY_SIZE - 1; i >= 0; i--) {
    if (r[i] !== 0) {
      r[i]! -= 1;
      return r;
    }
    r[i] = 0xff;
  }
  throw new Error("keyDec of MIN_KEY");
}

/** Upstream's printed form: zone.first.type.second.third.fourth in decimal. */
export function formatKey(k: Buffer): string {
  const f = keyFields(k);
  return `${f.zone}.${f.first}.${f.type}.${f.second}.${f.third}.${f.fourth}`;
}

// ---------------------------------------------------------------------------------------
// Per-item key constructors (reference section 1.5 table).

export const inodeKey = (ino: bigint): Buffer => makeKey(Zone.FS, ino, FsType.INODE);
export const xattrKey = (ino: bigint, nameHash: bigint, id: bigint, part: number): Buffer =>
  makeKey(Zone.FS, ino, FsType.XATTR, nameHash, id, part);
export const direntKey = (dir: bigint, nameHash: bigint, pos: bigint): Buffer =>
  makeKey(Zone.FS, dir, FsType.DIRENT, nameHash, pos);
export const readdirKey = (dir: bigint, pos: bigint): Buffer =>
  makeKey(Zone.FS, dir, FsType.READDIR, pos, 0n);
export const linkBackrefKey = (ino: bigint, dir: bigint, pos: bigint): Buffer =>
  makeKey(Zone.FS, ino, FsType.LINK_BACKREF, dir, pos);
export const symlinkKey = (ino: bigint, part: bigint): Buffer =>
  makeKey(Zone.FS, ino, FsType.SYMLINK, part);
export const dataExtentKey = (ino: bigint, lastIblock: bigint, len: bigint): Buffer =>
  makeKey(Zone.FS, ino, FsType.DATA_EXTENT, lastIblock, len);
export const metaSeqKey = (seq: bigint, ino: bigint): Buffer =>
  makeKey(Zone.INODE_INDEX, 0n, InodeIndexType.META_SEQ, seq, ino);
export const dataSeqKey = (seq: bigint, ino: bigint): Buffer =>
  makeKey(Zone.INODE_INDEX, 0n, InodeIndexType.DATA_SEQ, seq, ino);
export const orphanKey = (ino: bigint): Buffer =>
  makeKey(Zone.ORPHAN, 0n, OrphanType.ORPHAN, ino);
export const totlKey = (a: bigint, b: bigint, c: bigint): Buffer =>
  makeKey(Zone.XATTR_TOTL, a, 0, b, c);
export const logTreesKey = (rid: bigint, nr: bigint): Buffer =>
  makeKey(Zone.LOG_TREES, rid, 0, nr);
export const mountedClientKey = (rid: bigint): Buffer =>
  makeKey(Zone.MOUNTED_CLIENT, rid, 0);
export const renameLockKey = (): Buffer => makeKey(Zone.LOCK, 0n, LockType.RENAME);

/**
 * .indx. entries sort by (major u8, minor u64, ino u64, xattr id u64) = 25 bytes spread over
 * the key's first/second/third/fourth fields after the zone byte (upstream packs them the
 * same way so that key order equals index order).
 */
export function indxKey(major: number, minor: bigint, ino: bigint, id: bigint): Buffer {
  assert(major >= 0 && major <= 255, "indx major");
  const packed = Buffer.alloc(KEY_SIZE - 1);
  packed[0] = major;
  packed.writeBigUInt64BE(minor, 1);
  packed.writeBigUInt64BE(ino, 9);
  packed.writeBigUInt64BE(id, 17);
  const k = Buffer.alloc(KEY_SIZE);
  k[OFF_ZONE] = Zone.XATTR_INDX;
  packed.copy(k, 1);
  return k;
}

export function indxFields(k: Buffer): { major: number; minor: bigint; ino: bigint; id: bigint } {
  assert(k[OFF_ZONE] === Zone.XATTR_INDX, "indx key zone");
  return { major: k[1]!, minor: k.readBigUInt64BE(2), ino: k.readBigUInt64BE(10),
    id: k.readBigUInt64BE(18) };
}

/** Free extents are indexed by position (to merge neighbours) ... */
export function freeExtentBlknoKey(last: number, len: number): Buffer {
  return makeKey(Zone.FREE_EXTENT_BLKNO, BigInt(last), 0, BigInt(len));
}

/**
 * ... and by the log8 order of their length, largest first (U64_MAX - order), so a search for
 * a large extent within a blkno region skips at most ORDER_MAX orders.
 */
export function freeExtentOrderKey(order: number, last: number, len: number): Buffer {
  return makeKey(Zone.FREE_EXTENT_ORDER, U64_MAX - BigInt(order), 0, BigInt(last), BigInt(len));
}

/** floor(log8(len)) for len >= 1. A zero length has no order: callers must not ask. */
export function extentOrder(len: number): number {
  assert(Number.isSafeInteger(len) && len >= 1, `extent order of length ${len}`);
  let order = 0;
  let n = len;
  while (n >= 8) {
    n = Math.floor(n / 8);
    order++;
  }
  return order;
}
/** Orders of lengths below 2^53: 0..17. */
export const EXTENT_ORDER_MAX = 17;
