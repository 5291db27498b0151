/*
 * Item values of the POSIX namespace (upstream format.h): directory entries, xattr parts,
 * symlink target parts, plus the name hashes that place them in the key space and the limits
 * the VFS operations enforce.
 *
 * Who calls it: the namespace operations in src/core/fs/ and their tests. The inode item
 * itself is in src/core/format.ts (encodeInode/decodeInode); this file adds what sits beside
 * it in the FS zone.
 *
 * Invariants: every value has a size-then-encode encoder writing into a zeroed buffer and a
 * decoder that validates (FsError EIO on nonsense); integers are little-endian like the inode.
 * A dirent value is identical in its three items (DIRENT, READDIR, LINK_BACKREF) so that any
 * one of them finds the other two.
 */
import { assert } from "../../util/assert.js";
import { crc32c } from "../../util/crc32c.js";
import { FsError } from "../../util/errno.js";
import { BTREE_MAX_VAL_LEN } from "../btree_block.js";
import { corrupt } from "../format.js";

/** Longest name of a directory entry (upstream SCOUTFS_NAME_LEN). */
export const NAME_LEN_MAX = 255;
/** Links to one inode at most (upstream SCOUTFS_LINK_MAX = S32_MAX). */
export const LINK_MAX = 0x7fff_ffff;
/** Longest symlink target, counting the stored NUL (upstream SCOUTFS_SYMLINK_MAX_SIZE). */
export const SYMLINK_MAX_SIZE = 4096;
/** Longest xattr name and value (upstream SCOUTFS_XATTR_MAX_NAME_LEN / MAX_VAL_LEN). */
export const XATTR_NAME_MAX = 255;
export const XATTR_VALUE_MAX = 65535;
/** Readdir positions: 0 and 1 are "." and "..", entries start at 2, U64_MAX - 1 ends. */
export const READDIR_POS_FIRST = 2n;
export const READDIR_POS_END = 0xffff_ffff_ffff_fffen;

// ---------------------------------------------------------------------------------------
// File types: mode bits and the d_type of directory entries.

export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;
export const S_ISUID = 0o4000;
export const S_ISGID = 0o2000;
export const S_ISVTX = 0o1000;

export const isDir = (mode: number): boolean => (mode & S_IFMT) === S_IFDIR;
export const isReg = (mode: number): boolean => (mode & S_IFMT) === S_IFREG;
export const isLnk = (mode: number): boolean => (mode & S_IFMT) === S_IFLNK;

const FILE_TYPES = [S_IFSOCK, S_IFLNK, S_IFREG, S_IFBLK, S_IFDIR, S_IFCHR, S_IFIFO];

export function validFileType(mode: number): boolean {
  return FILE_TYPES.includes(mode & S_IFMT);
}

/** The d_type of a mode (DT_REG 8, DT_DIR 4, ...): the file type bits shifted down. */
export function direntType(mode: number): number {
  return (mode & S_IFMT) >>> 12;
}

// ---------------------------------------------------------------------------------------
// Name hashes.

/** FNV-1a 32-bit of the name bytes. */
export function fnv1a32(name: Buffer, from = 0): number {
  let h = 0x811c9dc5;
  // indexed, not for..of (the iterator showed in profiles); int32 steps, the same bits
  for (let i = from; i < name.length; i++) {
    h ^= name[i]!;
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * The dirent key's hash: fnv1a32 in the low half and, in the high half, the name's first
 * four bytes (zero padded) so that names sort roughly by prefix in the key space, which keeps
 * entries of similar names in neighbouring leaves (upstream's "fingerprint").
 */
export function direntNameHash(name: Buffer): bigint {
  const n = name.length;
  const fp = (((n > 0 ? name[0]! : 0) << 24) | ((n > 1 ? name[1]! : 0) << 16) |
    ((n > 2 ? name[2]! : 0) << 8) | (n > 3 ? name[3]! : 0)) >>> 0;
  return (BigInt(fp) << 32n) | BigInt(fnv1a32(name));
}

/** The xattr key's hash: crc32c of the name (upstream). */
export function xattrNameHash(name: Buffer): bigint {
  return BigInt(crc32c(name) >>> 0);
}

// ---------------------------------------------------------------------------------------
// Directory entry value: {ino u64, hash u64, pos u64, type u8, pad[7]} + name.

export const DIRENT_HEADER_SIZE = 32;

export interface DirentValue {
  ino: bigint;
  hash: bigint;
  pos: bigint;
  type: number;
  name: Buffer;
}

export function encodeDirent(d: DirentValue): Buffer {
  assert(d.name.length >= 1 && d.name.length <= NAME_LEN_MAX, "dirent name length");
  assert(d.type >= 1 && d.type <= 15, "dirent type");
  const b = Buffer.alloc(DIRENT_HEADER_SIZE + d.name.length);
  b.writeBigUInt64LE(d.ino, 0);
  b.writeBigUInt64LE(d.hash, 8);
  b.writeBigUInt64LE(d.pos, 16);
  b[24] = d.type;
  d.name.copy(b, DIRENT_HEADER_SIZE);
  return b;
}

export function decodeDirent(b: Buffer): DirentValue {
  if (b.length <= DIRENT_HEADER_SIZE || b.length > DIRENT_HEADER_SIZE + NAME_LEN_MAX) {
    throw corrupt(`dirent value size ${b.length}`);
  }
  const type = b[24]!;
  if (!validFileType(type << 12)) throw corrupt(`dirent type ${type}`);
  if (!b.subarray(25, DIRENT_HEADER_SIZE).every((x) => x === 0)) throw corrupt("dirent pad");
  const name = Buffer.from(b.subarray(DIRENT_HEADER_SIZE));
  const hash = b.readBigUInt64LE(8);
  if (hash !== direntNameHash(name)) throw corrupt("dirent hash does not match its name");
  const pos = b.readBigUInt64LE(16);
  if (pos < READDIR_POS_FIRST || pos >= READDIR_POS_END) throw corrupt(`dirent pos ${pos}`);
  const ino = b.readBigUInt64LE(0);
  if (ino === 0n) throw corrupt("dirent ino 0");
  return { ino, hash, pos, type, name };
}

/**
 * direntNumbers()'s receiver: the name is value[nameAt, nameAt + nameLen), inode number and
 * position as numbers.
 */
export type DirentNumbersFn = (value: Buffer, nameAt: number, nameLen: number, pos: number,
  ino: number, type: number) => boolean;

const TWO32 = 0x1_0000_0000;

/**
 * decodeDirent()'s checks without a BigInt or an object per entry: hands the fields to fn
 * (inode number and position as numbers, EOVERFLOW past 2^53, which no allocator reaches;
 * the name left in place) and returns what fn returns. For listing caches, which go through
 * tens of thousands of entries per directory (a fifth of decodeDirent's cost).
 */
export function direntNumbers(b: Buffer, fn: DirentNumbersFn): boolean {
  if (b.length <= DIRENT_HEADER_SIZE || b.length > DIRENT_HEADER_SIZE + NAME_LEN_MAX) {
    throw corrupt(`dirent value size ${b.length}`);
  }
  const type = b[24]!;
  if (!validFileType(type << 12)) throw corrupt(`dirent type ${type}`);
  if (b[25] !== 0 || b.readUInt16LE(26) !== 0 || b.readUInt32LE(28) !== 0) {
    throw corrupt("dirent pad");
  }
  const at = DIRENT_HEADER_SIZE;
  const n = b.length - at;
  const fp = (((n > 0 ? b[at]! : 0) << 24) | ((n > 1 ? b[at + 1]! : 0) << 16) |
    ((n > 2 ? b[at + 2]! : 0) << 8) | (n > 3 ? b[at + 3]! : 0)) >>> 0;
  if (b.readUInt32LE(12) !== fp || b.readUInt32LE(8) !== fnv1a32(b, at)) {
    throw corrupt("dirent hash does not match its name");
  }
  const posHi = b.readUInt32LE(20);
  const inoHi = b.readUInt32LE(4);
  if (posHi >= 0x20_0000 || inoHi >= 0x20_0000) {
    throw new FsError("EOVERFLOW", "dirent ino or pos beyond 2^53");
  }
  const pos = posHi * TWO32 + b.readUInt32LE(16);
  if (pos < Number(READDIR_POS_FIRST)) throw corrupt(`dirent pos ${pos}`);
  const ino = inoHi * TWO32 + b.readUInt32LE(0);
  if (ino === 0) throw corrupt("dirent ino 0");
  return fn(b, at, n, pos, ino, type);
}

/**
 * decodeDirent() with the same checks, the name a view of b (no copy): for walks that use
 * each entry at once (readdir). b must not change while the result is used.
 */
export function decodeDirentView(b: Buffer): DirentValue {
  if (b.length <= DIRENT_HEADER_SIZE || b.length > DIRENT_HEADER_SIZE + NAME_LEN_MAX) {
    throw corrupt(`dirent value size ${b.length}`);
  }
  const type = b[24]!;
  if (!validFileType(type << 12)) throw corrupt(`dirent type ${type}`);
  if (b[25] !== 0 || b.readUInt16LE(26) !== 0 || b.readUInt32LE(28) !== 0) {
    throw corrupt("dirent pad");
  }
  const name = b.subarray(DIRENT_HEADER_SIZE);
  const hash = b.readBigUInt64LE(8);
  if (hash !== direntNameHash(name)) throw corrupt("dirent hash does not match its name");
  const pos = b.readBigUInt64LE(16);
  if (pos < READDIR_POS_FIRST || pos >= READDIR_POS_END) throw corrupt(`dirent pos ${pos}`);
  const ino = b.readBigUInt64LE(0);
  if (ino === 0n) throw corrupt("dirent ino 0");
  return { ino, hash, pos, type, name };
}

// ---------------------------------------------------------------------------------------
// Xattr parts: part 0 = {val_len u16, name_len u8} + name + value..., later parts continue
// the same byte stream; each part holds at most BTREE_MAX_VAL_LEN bytes.

export const XATTR_HEADER_SIZE = 3;
export const XATTR_PART_MAX = BTREE_MAX_VAL_LEN;
/** Parts of the largest xattr: header + 255-byte name + 65535-byte value. */
export const XATTR_MAX_PARTS = Math.ceil((XATTR_HEADER_SIZE + XATTR_NAME_MAX + XATTR_VALUE_MAX) /
  XATTR_PART_MAX);
assert(XATTR_MAX_PARTS <= 255, "xattr part number fits the key's u8");

export interface XattrValue {
  name: Buffer;
  value: Buffer;
}

/** Number of parts the xattr's stream fills. */
export function xattrParts(nameLen: number, valueLen: number): number {
  return Math.ceil((XATTR_HEADER_SIZE + nameLen + valueLen) / XATTR_PART_MAX);
}

/** The xattr's item values, part 0 first. */
export function encodeXattrParts(x: XattrValue): Buffer[] {
  assert(x.name.length >= 1 && x.name.length <= XATTR_NAME_MAX, "xattr name length");
  assert(x.value.length <= XATTR_VALUE_MAX, "xattr value length");
  const all = Buffer.alloc(XATTR_HEADER_SIZE + x.name.length + x.value.length);
  all.writeUInt16LE(x.value.length, 0);
  all[2] = x.name.length;
  x.name.copy(all, XATTR_HEADER_SIZE);
  x.value.copy(all, XATTR_HEADER_SIZE + x.name.length);
  const parts: Buffer[] = [];
  for (let off = 0; off < all.length; off += XATTR_PART_MAX) {
    parts.push(Buffer.from(all.subarray(off, off + XATTR_PART_MAX)));
  }
  return parts;
}

/** The header of part 0: lengths and the name (part 0 always holds the whole name). */
export function decodeXattrHeader(part0: Buffer): { name: Buffer; valueLen: number;
  parts: number } {
  if (part0.length < XATTR_HEADER_SIZE + 1 || part0.length > XATTR_PART_MAX) {
    throw corrupt(`xattr part 0 size ${part0.length}`);
  }
  const valueLen = part0.readUInt16LE(0);
  const nameLen = part0[2]!;
  if (nameLen === 0) throw corrupt("xattr name length 0");
  const parts = xattrParts(nameLen, valueLen);
  const want = parts === 1 ? XATTR_HEADER_SIZE + nameLen + valueLen : XATTR_PART_MAX;
  if (part0.length !== want) throw corrupt(`xattr part 0 size ${part0.length}, want ${want}`);
  return { name: Buffer.from(part0.subarray(XATTR_HEADER_SIZE, XATTR_HEADER_SIZE + nameLen)),
    valueLen, parts };
}

/** Joins all parts (in order) back into the xattr, validating every part's size. */
export function decodeXattrParts(parts: readonly Buffer[]): XattrValue {
  const p0 = parts[0];
  if (p0 === undefined) throw corrupt("xattr without parts");
  const h = decodeXattrHeader(p0);
  if (parts.length !== h.parts) throw corrupt(`xattr has ${parts.length} parts, want ${h.parts}`);
  const total = XATTR_HEADER_SIZE + h.name.length + h.valueLen;
  parts.forEach((p, i) => {
    const want = i < h.parts - 1 ? XATTR_PART_MAX : total - i * XATTR_PART_MAX;
    if (p.length !== want) throw corrupt(`xattr part ${i} size ${p.length}, want ${want}`);
  });
  const all = Buffer.concat(parts as Buffer[]);
  return { name: h.name, value: Buffer.from(all.subarray(XATTR_HEADER_SIZE + h.name.length)) };
}

// ---------------------------------------------------------------------------------------
// Symlink target: the target bytes plus a NUL, split into parts of at most
// BTREE_MAX_VAL_LEN bytes (parts 0, 1, ... in the SYMLINK items).

export const SYMLINK_PART_MAX = BTREE_MAX_VAL_LEN;

export function encodeSymlinkParts(target: Buffer): Buffer[] {
  assert(target.length >= 1 && target.length + 1 <= SYMLINK_MAX_SIZE, "symlink target length");
  assert(!target.includes(0), "symlink target without NUL bytes");
  const all = Buffer.alloc(target.length + 1);
  target.copy(all);
  const parts: Buffer[] = [];
  for (let off = 0; off < all.length; off += SYMLINK_PART_MAX) {
    parts.push(Buffer.from(all.subarray(off, off + SYMLINK_PART_MAX)));
  }
  return parts;
}

/** The target from its parts, checked against the inode's size (the target length). */
export function decodeSymlinkParts(parts: readonly Buffer[], size: bigint): Buffer {
  const len = Number(size);
  if (len < 1 || len + 1 > SYMLINK_MAX_SIZE) throw corrupt(`symlink size ${size}`);
  const want = Math.ceil((len + 1) / SYMLINK_PART_MAX);
  if (parts.length !== want) throw corrupt(`symlink has ${parts.length} parts, want ${want}`);
  const all = Buffer.concat(parts as Buffer[]);
  if (all.length !== len + 1 || all[len] !== 0 || all.subarray(0, len).includes(0)) {
    throw corrupt("symlink target bytes");
  }
  return Buffer.from(all.subarray(0, len));
}

// ---------------------------------------------------------------------------------------
// statfs: the server's STATFS reply and what statfs(2) reports (reference 1.2).

export const STATFS_REPLY_SIZE = 56;
export const SCOUTFS_SUPER_MAGIC = 0x554f4353;

export interface StatfsReply {
  totalMetaBlocks: bigint;
  freeMetaBlocks: bigint;
  totalDataBlocks: bigint;
  freeDataBlocks: bigint;
  inodeCount: bigint;
  uuid: Buffer;
}

export function decodeStatfsReply(b: Buffer): StatfsReply {
  if (b.length !== STATFS_REPLY_SIZE) throw corrupt(`statfs reply size ${b.length}`);
  const r = {
    totalMetaBlocks: b.readBigUInt64LE(0), freeMetaBlocks: b.readBigUInt64LE(8),
    totalDataBlocks: b.readBigUInt64LE(16), freeDataBlocks: b.readBigUInt64LE(24),
    inodeCount: b.readBigUInt64LE(32), uuid: Buffer.from(b.subarray(40, 56)),
  };
  if (r.freeMetaBlocks > r.totalMetaBlocks || r.freeDataBlocks > r.totalDataBlocks) {
    throw corrupt("statfs free blocks exceed totals");
  }
  return r;
}
