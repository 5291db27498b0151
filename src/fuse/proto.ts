/*
 * The FUSE kernel protocol (include/uapi/linux/fuse.h, protocol 7.45) as bytes: opcodes, flags,
 * every request and reply struct this daemon uses, validating decoders and zero-filling
 * encoders, directory entry packing and the reverse notifications.
 *
 * Who calls it: session.ts decodes each request read from /dev/fuse with these functions and
 * encodes each reply; ops.ts re-exports the request and reply shapes that a filesystem sees;
 * tests use the encoders of the kernel's side (requests) and decoders of our side (replies)
 * to round-trip and to build malformed input.
 *
 * Invariants:
 *  - Structs are host-endian in the kernel ABI; this module asserts a little-endian host at
 *    load and every struct's size equals the sum of its fields (checked at load).
 *  - A decoder never trusts a length from the wire: a payload shorter than its struct, a name
 *    without its terminating NUL, a count or size running past the payload is an EINVAL
 *    FsError (the session replies with it), never an exception of another kind.
 *  - Numbers: node ids, file handles, offsets and sizes are JS numbers, exact below 2^53; a
 *    u64 from the kernel that does not fit is refused with EOVERFLOW (a file offset beyond
 *    8 PiB). Request uniques, lock owners, lock ranges and ioctl arguments stay bigint since
 *    the kernel fills all 64 bits. Encoders assert that numbers are safe integers: a value
 *    that is not is a bug of the filesystem and becomes EIO plus a logged report upstream.
 *  - Encoders zero-fill: padding and reserved bytes of every reply are 0.
 *  - Names (entries, xattrs, symlink targets) are raw bytes (Buffer), copied out of the read
 *    buffer, because Linux names are byte strings and the read buffer is reused.
 */

import { endianness } from "node:os";
import { assert, assertSafeU } from "../util/assert.js";
import { FsError } from "../util/errno.js";

export const FUSE_KERNEL_VERSION = 7;
/** The minor version whose structs this file describes. */
export const FUSE_KERNEL_MINOR_VERSION = 45;
/**
 * Oldest kernel minor accepted: 7.31 (Linux 5.8) has every struct layout used here except the
 * later additions we treat as optional (flags2, total_extlen, which older kernels send as 0).
 */
export const FUSE_MIN_KERNEL_MINOR = 31;
export const FUSE_ROOT_ID = 1;
/** Set in the unique of an INTERRUPT request (the interrupted request's unique is even). */
export const FUSE_INT_REQ_BIT = 1n;
/** The read buffer must hold the largest WRITE: its data plus headers (libfuse uses a page). */
export const FUSE_BUFFER_HEADER_BYTES = 4096;
export const FUSE_MIN_READ_BUFFER = 8192;
/** Longest name the kernel accepts in a dirent or notification (FUSE_NAME_MAX). */
export const FUSE_NAME_MAX = 1024;
/** Largest xattr value the kernel passes (XATTR_SIZE_MAX) and list size (XATTR_LIST_MAX). */
export const XATTR_SIZE_MAX = 65536;
export const XATTR_LIST_MAX = 65536;
/** Bound on READ, READDIR and ioctl out sizes we will allocate for: 16 MiB. */
export const FUSE_MAX_REPLY_BYTES = 16 << 20;

export const Opcode = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9,
  UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17,
  RELEASE: 18, FSYNC: 20, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24,
  FLUSH: 25, INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, FSYNCDIR: 30, GETLK: 31,
  SETLK: 32, SETLKW: 33, ACCESS: 34, CREATE: 35, INTERRUPT: 36, BMAP: 37, DESTROY: 38,
  IOCTL: 39, POLL: 40, NOTIFY_REPLY: 41, BATCH_FORGET: 42, FALLOCATE: 43, READDIRPLUS: 44,
  RENAME2: 45, LSEEK: 46, COPY_FILE_RANGE: 47, SETUPMAPPING: 48, REMOVEMAPPING: 49,
  SYNCFS: 50, TMPFILE: 51, STATX: 52, COPY_FILE_RANGE_64: 53,
} as const;
export type OpcodeName = keyof typeof Opcode;

const opcodeNames = new Map<number, OpcodeName>(
  Object.entries(Opcode).map(([k, v]) => [v, k as OpcodeName]));

/** "LOOKUP", or "OP_<n>" for a number this file does not know. */
export function opcodeName(opcode: number): string {
  return opcodeNames.get(opcode) ?? `OP_${opcode}`;
}

export const NotifyCode = {
  POLL: 1, INVAL_INODE: 2, INVAL_ENTRY: 3, STORE: 4, RETRIEVE: 5, DELETE: 6, RESEND: 7,
  INC_EPOCH: 8, PRUNE: 9,
} as const;

/** INIT flags, low 32 bits (fuse_init_in.flags / fuse_init_out.flags). */
export const InitFlag = {
  ASYNC_READ: 1 << 0, POSIX_LOCKS: 1 << 1, FILE_OPS: 1 << 2, ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4, BIG_WRITES: 1 << 5, DONT_MASK: 1 << 6, SPLICE_WRITE: 1 << 7,
  SPLICE_MOVE: 1 << 8, SPLICE_READ: 1 << 9, FLOCK_LOCKS: 1 << 10, HAS_IOCTL_DIR: 1 << 11,
  AUTO_INVAL_DATA: 1 << 12, DO_READDIRPLUS: 1 << 13, READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15, WRITEBACK_CACHE: 1 << 16, NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18, HANDLE_KILLPRIV: 1 << 19, POSIX_ACL: 1 << 20,
  ABORT_ERROR: 1 << 21, MAX_PAGES: 1 << 22, CACHE_SYMLINKS: 1 << 23,
  NO_OPENDIR_SUPPORT: 1 << 24, EXPLICIT_INVAL_DATA: 1 << 25, MAP_ALIGNMENT: 1 << 26,
  SUBMOUNTS: 1 << 27, HANDLE_KILLPRIV_V2: 1 << 28, SETXATTR_EXT: 1 << 29, INIT_EXT: 1 << 30,
} as const;

/** INIT flags, high 32 bits, shifted down into fuse_init_{in,out}.flags2. */
export const InitFlag2 = {
  SECURITY_CTX: 1 << 0, HAS_INODE_DAX: 1 << 1, CREATE_SUPP_GROUP: 1 << 2,
  HAS_EXPIRE_ONLY: 1 << 3, DIRECT_IO_ALLOW_MMAP: 1 << 4, PASSTHROUGH: 1 << 5,
  NO_EXPORT_SUPPORT: 1 << 6, HAS_RESEND: 1 << 7, ALLOW_IDMAP: 1 << 8, OVER_IO_URING: 1 << 9,
  REQUEST_TIMEOUT: 1 << 10,
} as const;

/** fuse_setattr_in.valid bits. */
export const Fattr = {
  MODE: 1 << 0, UID: 1 << 1, GID: 1 << 2, SIZE: 1 << 3, ATIME: 1 << 4, MTIME: 1 << 5,
  FH: 1 << 6, ATIME_NOW: 1 << 7, MTIME_NOW: 1 << 8, LOCKOWNER: 1 << 9, CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** fuse_open_out.open_flags bits. */
export const Fopen = {
  DIRECT_IO: 1 << 0, KEEP_CACHE: 1 << 1, NONSEEKABLE: 1 << 2, CACHE_DIR: 1 << 3,
  STREAM: 1 << 4, NOFLUSH: 1 << 5, PARALLEL_DIRECT_WRITES: 1 << 6, PASSTHROUGH: 1 << 7,
} as const;

export const FUSE_RELEASE_FLUSH = 1 << 0;
export const FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1;
export const FUSE_GETATTR_FH = 1 << 0;
export const FUSE_LK_FLOCK = 1 << 0;
export const FUSE_WRITE_CACHE = 1 << 0;
export const FUSE_WRITE_LOCKOWNER = 1 << 1;
export const FUSE_WRITE_KILL_SUIDGID = 1 << 2;
export const FUSE_READ_LOCKOWNER = 1 << 1;
export const FUSE_OPEN_KILL_SUIDGID = 1 << 0;
export const FUSE_FSYNC_FDATASYNC = 1 << 0;
export const FUSE_EXPIRE_ONLY = 1 << 0;
export const FUSE_ATTR_SUBMOUNT = 1 << 0;

export const IoctlFlag = {
  COMPAT: 1 << 0, UNRESTRICTED: 1 << 1, RETRY: 1 << 2, BIT32: 1 << 3, DIR: 1 << 4,
  COMPAT_X32: 1 << 5,
} as const;
/** Largest in/out size of a restricted ioctl that reaches a FUSE filesystem (reference/fuse.md). */
export const FUSE_IOCTL_MAX_BYTES = 16384;

/** rename2 flags (linux/fs.h). */
export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
export const RENAME_WHITEOUT = 1 << 2;
/** setxattr flags (linux/xattr.h). */
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

// ---------------------------------------------------------------------------------------------
// Struct codecs: a struct is a list of named fields; the field kinds map to TS types so the
// decoded value type follows from the definition.

/** Field kinds: unsigned/signed integers, u64 kept bigint ("b64"), or a count of pad bytes. */
export type Kind = "u16" | "u32" | "i32" | "u64" | "i64" | "b64" | number;
interface KindValue { u16: number; u32: number; i32: number; u64: number; i64: number;
  b64: bigint }
export type Field = readonly [string, Kind];
export type StructOf<S extends readonly Field[]> = {
  [F in S[number] as F[1] extends number ? never : F[0]]:
    F[1] extends keyof KindValue ? KindValue[F[1]] : never;
};

const KIND_BYTES = { u16: 2, u32: 4, i32: 4, u64: 8, i64: 8, b64: 8 } as const;
const TWO32 = 0x1_0000_0000;
/** 2^53 / 2^32: a high word at or above this makes a u64 unsafe as a JS number. */
const SAFE_HI = 0x20_0000;

function kindBytes(k: Kind): number {
  return typeof k === "number" ? k : KIND_BYTES[k];
}

export function einval(what: string): FsError {
  return new FsError("EINVAL", `malformed FUSE message: ${what}`);
}

/** Reads a u64 as an exact JS number, refusing values at or above 2^53. */
export function readU64(buf: Buffer, off: number, what: string): number {
  const hi = buf.readUInt32LE(off + 4);
  if (hi >= SAFE_HI) throw new FsError("EOVERFLOW", `${what} does not fit 53 bits`);
  return hi * TWO32 + buf.readUInt32LE(off);
}

/** Reads an s64 as an exact JS number, refusing magnitudes at or above 2^53. */
export function readI64(buf: Buffer, off: number, what: string): number {
  const hi = buf.readInt32LE(off + 4);
  if (hi >= SAFE_HI || hi < -SAFE_HI) {
    throw new FsError("EOVERFLOW", `${what} does not fit 53 bits`);
  }
  return hi * TWO32 + buf.readUInt32LE(off);
}

export function writeU64(buf: Buffer, off: number, n: number, what: string): void {
  assertSafeU(n, what);
  buf.writeUInt32LE(n % TWO32, off);
  buf.writeUInt32LE(Math.floor(n / TWO32), off + 4);
}

export function writeI64(buf: Buffer, off: number, n: number, what: string): void {
  if (!Number.isSafeInteger(n)) assert(false, `${what} ${n} not a safe integer`);
  const hi = Math.floor(n / TWO32);
  buf.writeUInt32LE(n - hi * TWO32, off);
  buf.writeInt32LE(hi, off + 4);
}

/** One fixed-size struct: its size, a validating decoder and a zero-filling encoder. */
export class Struct<T> {
  readonly name: string;
  readonly size: number;
  /** The fields in wire order (pad fields carry their byte count as kind). */
  readonly fields: readonly Field[];
  private readonly offsets: readonly number[];
  /** "struct.field" per field, for error messages (built once: decode/encode are hot). */
  private readonly whats: readonly string[];

  constructor(name: string, size: number, fields: readonly Field[]) {
    this.name = name;
    this.size = size;
    this.fields = fields;
    const offsets: number[] = [];
    let off = 0;
    for (const [, k] of fields) {
      offsets.push(off);
      off += kindBytes(k);
    }
    assert(off === size, `${name}: fields add up to ${off} bytes, not ${size}`);
    this.offsets = offsets;
    this.whats = fields.map(([f]) => `${name}.${f}`);
  }

  /** Decodes the struct at buf[off..]; a short buffer is EINVAL. */
  decode(buf: Buffer, off = 0): T {
    if (off < 0 || buf.length - off < this.size) {
      throw einval(`${this.name} needs ${this.size} bytes, got ${buf.length - off}`);
    }
    const out: Record<string, number | bigint> = {};
    for (let i = 0; i < this.fields.length; i++) {
      const [name, k] = this.fields[i]!;
      if (typeof k === "number") continue;
      out[name] = readField(buf, off + this.offsets[i]!, k, this.whats[i]!);
    }
    return out as unknown as T;
  }

  /**
   * Encodes v into buf at off (a fresh buffer by default); every byte is written, pad bytes
   * as zeros (so a fresh buffer need not be zeroed: allocUnsafe takes a slice of Node's pool
   * instead of an ArrayBuffer of its own per reply).
   */
  encode(v: T, buf: Buffer = Buffer.allocUnsafe(this.size), off = 0): Buffer {
    if (buf.length - off < this.size) assert(false, `${this.name}: encode buffer too small`);
    const rec = v as unknown as Record<string, number | bigint>;
    for (let i = 0; i < this.fields.length; i++) {
      const [name, k] = this.fields[i]!;
      const at = off + this.offsets[i]!;
      if (typeof k === "number") buf.fill(0, at, at + k);
      else writeField(buf, at, k, rec[name], this.whats[i]!);
    }
    return buf;
  }
}

function readField(buf: Buffer, off: number, k: Exclude<Kind, number>, what: string):
  number | bigint {
  switch (k) {
    case "u16": return buf.readUInt16LE(off);
    case "u32": return buf.readUInt32LE(off);
    case "i32": return buf.readInt32LE(off);
    case "u64": return readU64(buf, off, what);
    case "i64": return readI64(buf, off, what);
    case "b64": return buf.readBigUInt64LE(off);
  }
}

function writeField(buf: Buffer, off: number, k: Exclude<Kind, number>,
  v: number | bigint | undefined, what: string): void {
  if (k === "b64") {
    if (typeof v !== "bigint") assert(false, `${what} must be a bigint`);
    buf.writeBigUInt64LE(BigInt.asUintN(64, v), off);
    return;
  }
  if (typeof v !== "number" || !Number.isInteger(v)) {
    assert(false, `${what} must be an integer, got ${v}`);
  }
  switch (k) {
    case "u16": buf.writeUInt16LE(v, off); return;
    case "u32": buf.writeUInt32LE(v, off); return;
    case "i32": buf.writeInt32LE(v, off); return;
    case "u64": writeU64(buf, off, v, what); return;
    case "i64": writeI64(buf, off, v, what); return;
  }
}

function defineStruct<const S extends readonly Field[]>(name: string, size: number, fields: S):
  Struct<StructOf<S>> {
  return new Struct<StructOf<S>>(name, size, fields);
}

// ---------------------------------------------------------------------------------------------
// The structs (field names are fuse.h's, camelCased).

export const InHeaderStruct = defineStruct("fuse_in_header", 40, [
  ["len", "u32"], ["opcode", "u32"], ["unique", "b64"], ["nodeid", "u64"], ["uid", "u32"],
  ["gid", "u32"], ["pid", "u32"], ["totalExtlen", "u16"], ["_pad", 2]]);
/** The decoded fuse_in_header. */
export type InHeader = ReturnType<typeof InHeaderStruct.decode>;
export const IN_HEADER_SIZE = InHeaderStruct.size;

export const OutHeaderStruct = defineStruct("fuse_out_header", 16, [
  ["len", "u32"], ["error", "i32"], ["unique", "b64"]]);
export const OUT_HEADER_SIZE = OutHeaderStruct.size;

export const AttrStruct = defineStruct("fuse_attr", 88, [
  ["ino", "u64"], ["size", "u64"], ["blocks", "u64"], ["atime", "i64"], ["mtime", "i64"],
  ["ctime", "i64"], ["atimensec", "u32"], ["mtimensec", "u32"], ["ctimensec", "u32"],
  ["mode", "u32"], ["nlink", "u32"], ["uid", "u32"], ["gid", "u32"], ["rdev", "u32"],
  ["blksize", "u32"], ["flags", "u32"]]);
/** Inode attributes as the kernel caches them (times: seconds since the epoch + nsec). */
export type Attr = ReturnType<typeof AttrStruct.decode>;

const EntryHeadStruct = defineStruct("fuse_entry_out head", 40, [
  ["nodeid", "u64"], ["generation", "u64"], ["entryValid", "u64"], ["attrValid", "u64"],
  ["entryValidNsec", "u32"], ["attrValidNsec", "u32"]]);
export const ENTRY_OUT_SIZE = EntryHeadStruct.size + AttrStruct.size;

const AttrOutHeadStruct = defineStruct("fuse_attr_out head", 16, [
  ["attrValid", "u64"], ["attrValidNsec", "u32"], ["_dummy", 4]]);
export const ATTR_OUT_SIZE = AttrOutHeadStruct.size + AttrStruct.size;

export const KstatfsStruct = defineStruct("fuse_kstatfs", 80, [
  ["blocks", "u64"], ["bfree", "u64"], ["bavail", "u64"], ["files", "u64"], ["ffree", "u64"],
  ["bsize", "u32"], ["namelen", "u32"], ["frsize", "u32"], ["_pad", 4], ["_spare", 24]]);
/** statfs figures: counts of blocks of frsize bytes and of inodes. */
export type Statfs = ReturnType<typeof KstatfsStruct.decode>;

export const InitInStruct = defineStruct("fuse_init_in", 64, [
  ["major", "u32"], ["minor", "u32"], ["maxReadahead", "u32"], ["flags", "u32"],
  ["flags2", "u32"], ["_unused", 44]]);
export type InitIn = ReturnType<typeof InitInStruct.decode>;
/** fuse_init_in before 7.36 had only the first four fields. */
const INIT_IN_COMPAT_SIZE = 16;

export const InitOutStruct = defineStruct("fuse_init_out", 64, [
  ["major", "u32"], ["minor", "u32"], ["maxReadahead", "u32"], ["flags", "u32"],
  ["maxBackground", "u16"], ["congestionThreshold", "u16"], ["maxWrite", "u32"],
  ["timeGran", "u32"], ["maxPages", "u16"], ["mapAlignment", "u16"], ["flags2", "u32"],
  ["maxStackDepth", "u32"], ["requestTimeout", "u16"], ["_unused", 22]]);
export type InitOut = ReturnType<typeof InitOutStruct.decode>;

export const ForgetInStruct = defineStruct("fuse_forget_in", 8, [["nlookup", "u64"]]);
export const ForgetOneStruct = defineStruct("fuse_forget_one", 16, [
  ["nodeid", "u64"], ["nlookup", "u64"]]);
export const BatchForgetInStruct = defineStruct("fuse_batch_forget_in", 8, [
  ["count", "u32"], ["_dummy", 4]]);
export const GetattrInStruct = defineStruct("fuse_getattr_in", 16, [
  ["getattrFlags", "u32"], ["_dummy", 4], ["fh", "u64"]]);
export const MknodInStruct = defineStruct("fuse_mknod_in", 16, [
  ["mode", "u32"], ["rdev", "u32"], ["umask", "u32"], ["_pad", 4]]);
export const MkdirInStruct = defineStruct("fuse_mkdir_in", 8, [["mode", "u32"], ["umask", "u32"]]);
export const RenameInStruct = defineStruct("fuse_rename_in", 8, [["newdir", "u64"]]);
export const Rename2InStruct = defineStruct("fuse_rename2_in", 16, [
  ["newdir", "u64"], ["flags", "u32"], ["_pad", 4]]);
export const LinkInStruct = defineStruct("fuse_link_in", 8, [["oldnodeid", "u64"]]);
export const SetattrInStruct = defineStruct("fuse_setattr_in", 88, [
  ["valid", "u32"], ["_pad", 4], ["fh", "u64"], ["size", "u64"], ["lockOwner", "b64"],
  ["atime", "i64"], ["mtime", "i64"], ["ctime", "i64"], ["atimensec", "u32"],
  ["mtimensec", "u32"], ["ctimensec", "u32"], ["mode", "u32"], ["_unused4", 4], ["uid", "u32"],
  ["gid", "u32"], ["_unused5", 4]]);
export const OpenInStruct = defineStruct("fuse_open_in", 8, [
  ["flags", "u32"], ["openFlags", "u32"]]);
export const CreateInStruct = defineStruct("fuse_create_in", 16, [
  ["flags", "u32"], ["mode", "u32"], ["umask", "u32"], ["openFlags", "u32"]]);
export const OpenOutStruct = defineStruct("fuse_open_out", 16, [
  ["fh", "u64"], ["openFlags", "u32"], ["backingId", "i32"]]);
export const ReleaseInStruct = defineStruct("fuse_release_in", 24, [
  ["fh", "u64"], ["flags", "u32"], ["releaseFlags", "u32"], ["lockOwner", "b64"]]);
export const FlushInStruct = defineStruct("fuse_flush_in", 24, [
  ["fh", "u64"], ["_unused", 4], ["_pad", 4], ["lockOwner", "b64"]]);
export const ReadInStruct = defineStruct("fuse_read_in", 40, [
  ["fh", "u64"], ["offset", "u64"], ["size", "u32"], ["readFlags", "u32"],
  ["lockOwner", "b64"], ["flags", "u32"], ["_pad", 4]]);
export const WriteInStruct = defineStruct("fuse_write_in", 40, [
  ["fh", "u64"], ["offset", "u64"], ["size", "u32"], ["writeFlags", "u32"],
  ["lockOwner", "b64"], ["flags", "u32"], ["_pad", 4]]);
export const WriteOutStruct = defineStruct("fuse_write_out", 8, [["size", "u32"], ["_pad", 4]]);
export const FsyncInStruct = defineStruct("fuse_fsync_in", 16, [
  ["fh", "u64"], ["fsyncFlags", "u32"], ["_pad", 4]]);
/** The 8-byte form: FUSE_SETXATTR_EXT (the 16-byte form) is not negotiated. */
export const SetxattrInStruct = defineStruct("fuse_setxattr_in", 8, [
  ["size", "u32"], ["flags", "u32"]]);
export const GetxattrInStruct = defineStruct("fuse_getxattr_in", 8, [["size", "u32"], ["_pad", 4]]);
export const GetxattrOutStruct = defineStruct("fuse_getxattr_out", 8, [
  ["size", "u32"], ["_pad", 4]]);
export const LkInStruct = defineStruct("fuse_lk_in", 48, [
  ["fh", "u64"], ["owner", "b64"], ["start", "b64"], ["end", "b64"], ["type", "u32"],
  ["pid", "u32"], ["lkFlags", "u32"], ["_pad", 4]]);
export const LkOutStruct = defineStruct("fuse_lk_out", 24, [
  ["start", "b64"], ["end", "b64"], ["type", "u32"], ["pid", "u32"]]);
export const AccessInStruct = defineStruct("fuse_access_in", 8, [["mask", "u32"], ["_pad", 4]]);
export const InterruptInStruct = defineStruct("fuse_interrupt_in", 8, [["unique", "b64"]]);
export const IoctlInStruct = defineStruct("fuse_ioctl_in", 32, [
  ["fh", "u64"], ["flags", "u32"], ["cmd", "u32"], ["arg", "b64"], ["inSize", "u32"],
  ["outSize", "u32"]]);
export const IoctlOutStruct = defineStruct("fuse_ioctl_out", 16, [
  ["result", "i32"], ["flags", "u32"], ["inIovs", "u32"], ["outIovs", "u32"]]);
export const FallocateInStruct = defineStruct("fuse_fallocate_in", 32, [
  ["fh", "u64"], ["offset", "u64"], ["length", "u64"], ["mode", "u32"], ["_pad", 4]]);
export const LseekInStruct = defineStruct("fuse_lseek_in", 24, [
  ["fh", "u64"], ["offset", "u64"], ["whence", "u32"], ["_pad", 4]]);
export const LseekOutStruct = defineStruct("fuse_lseek_out", 8, [["offset", "u64"]]);
export const CopyFileRangeInStruct = defineStruct("fuse_copy_file_range_in", 56, [
  ["fhIn", "u64"], ["offIn", "u64"], ["nodeidOut", "u64"], ["fhOut", "u64"], ["offOut", "u64"],
  ["len", "u64"], ["flags", "u64"]]);
export const NotifyInvalInodeStruct = defineStruct("fuse_notify_inval_inode_out", 24, [
  ["ino", "u64"], ["off", "i64"], ["len", "i64"]]);
export const NotifyInvalEntryStruct = defineStruct("fuse_notify_inval_entry_out", 16, [
  ["parent", "u64"], ["namelen", "u32"], ["flags", "u32"]]);
export const NotifyDeleteStruct = defineStruct("fuse_notify_delete_out", 24, [
  ["parent", "u64"], ["child", "u64"], ["namelen", "u32"], ["_pad", 4]]);
export const DirentHeadStruct = defineStruct("fuse_dirent head", 24, [
  ["ino", "u64"], ["off", "u64"], ["namelen", "u32"], ["type", "u32"]]);

assert(endianness() === "LE", "the FUSE structs are encoded little-endian; host is big-endian");
assert(ENTRY_OUT_SIZE === 128 && ATTR_OUT_SIZE === 104, "entry_out/attr_out sizes");
assert(InHeaderStruct.size === 40 && OutHeaderStruct.size === 16, "header sizes");

// ---------------------------------------------------------------------------------------------
// Headers.

/**
 * Decodes and checks the header of a request of n bytes read from /dev/fuse: the kernel's
 * len must equal what the read returned and the extensions (total_extlen, 8-byte units) must
 * fit inside it. The returned header's payload is buf[IN_HEADER_SIZE, payloadEnd(h)).
 */
export function decodeInHeader(buf: Buffer, n: number): InHeader {
  if (n < IN_HEADER_SIZE || buf.length < n) throw einval(`request of ${n} bytes`);
  const h = InHeaderStruct.decode(buf, 0);
  if (h.len !== n) throw einval(`header len ${h.len} but ${n} bytes read`);
  if (h.totalExtlen * 8 > n - IN_HEADER_SIZE) throw einval(`extensions overrun the request`);
  return h;
}

/** End of a request's own arguments: extensions (security contexts, groups) come after. */
export function payloadEnd(h: InHeader): number {
  return h.len - h.totalExtlen * 8;
}

/** Writes a reply header for a reply of totalLen bytes (header included). */
export function encodeOutHeader(buf: Buffer, totalLen: number, error: number, unique: bigint):
  Buffer {
  buf.writeUInt32LE(totalLen, 0);
  buf.writeInt32LE(error, 4);
  buf.writeBigUInt64LE(unique, 8);
  return buf;
}

/** Builds a whole request as the kernel would (tests and benchmarks feed these to a session). */
export function encodeRequest(h: Omit<InHeader, "len" | "totalExtlen">,
  parts: readonly Buffer[]): Buffer {
  const bodyLen = parts.reduce((n, p) => n + p.length, 0);
  const head = InHeaderStruct.encode({ ...h, len: IN_HEADER_SIZE + bodyLen, totalExtlen: 0 });
  return Buffer.concat([head, ...parts]);
}

/** A name as the kernel sends it: the bytes and a terminating NUL. */
export function cstr(name: string | Buffer): Buffer {
  const b = typeof name === "string" ? Buffer.from(name) : name;
  return Buffer.concat([b, Buffer.alloc(1)]);
}

// ---------------------------------------------------------------------------------------------
// Request shapes handed to the filesystem (ops.ts). Names are copies; WRITE data is a view
// of the read buffer that stays valid until the handler settles (session.ts).

export interface Timespec { sec: number; nsec: number }
export interface NodeReq { nodeid: number }
export interface NameReq { parent: number; name: Buffer }
export interface ForgetReq { nodeid: number; nlookup: number }
export interface GetattrReq { nodeid: number; fh: number | null }
export interface SetattrReq {
  nodeid: number;
  /** The raw FATTR_* mask; the fields below are null when their bit is clear. */
  valid: number;
  fh: number | null;
  mode: number | null;
  uid: number | null;
  gid: number | null;
  size: number | null;
  /** "now": set to the current time (utimensat UTIME_NOW). */
  atime: Timespec | "now" | null;
  mtime: Timespec | "now" | null;
  ctime: Timespec | null;
  lockOwner: bigint | null;
  /** HANDLE_KILLPRIV_V2: clear suid (and sgid if group-executable) as part of this change. */
  killSuidgid: boolean;
}
export interface SymlinkReq { parent: number; name: Buffer; target: Buffer }
/** mode carries the file type bits (S_IFREG, S_IFIFO, ...) and permissions before umask. */
export interface MknodReq { parent: number; name: Buffer; mode: number; rdev: number;
  umask: number }
/** mode: permission bits (and S_ISVTX); the kernel has already applied umask unless DONT_MASK. */
export interface MkdirReq { parent: number; name: Buffer; mode: number; umask: number }
/** flags: RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT (0 for plain RENAME). */
export interface RenameReq { parent: number; name: Buffer; newParent: number; newName: Buffer;
  flags: number }
export interface LinkReq { nodeid: number; newParent: number; newName: Buffer }
export interface OpenReq { nodeid: number; flags: number; killSuidgid: boolean }
export interface ReadReq { nodeid: number; fh: number; offset: number; size: number;
  flags: number; lockOwner: bigint | null }
export interface WriteReq { nodeid: number; fh: number; offset: number; data: Buffer;
  flags: number; lockOwner: bigint | null;
  /** Delayed write from the page cache (writeback): fh is a guess, the caller is gone. */
  cache: boolean;
  killSuidgid: boolean }
export interface ReleaseReq { nodeid: number; fh: number; flags: number; lockOwner: bigint;
  flush: boolean; flockUnlock: boolean }
export interface FlushReq { nodeid: number; fh: number; lockOwner: bigint }
export interface FsyncReq { nodeid: number; fh: number; datasync: boolean }
export interface SetxattrReq { nodeid: number; name: Buffer; value: Buffer; flags: number }
export interface GetxattrReq { nodeid: number; name: Buffer; size: number }
export interface ListxattrReq { nodeid: number; size: number }
export interface RemovexattrReq { nodeid: number; name: Buffer }
export interface AccessReq { nodeid: number; mask: number }
export interface CreateReq { parent: number; name: Buffer; flags: number; mode: number;
  umask: number; killSuidgid: boolean }
export interface LkReq { nodeid: number; fh: number; owner: bigint; start: bigint; end: bigint;
  type: number; pid: number; flock: boolean }
export interface IoctlReq { nodeid: number; fh: number; flags: number; cmd: number; arg: bigint;
  input: Buffer; outSize: number }
export interface FallocateReq { nodeid: number; fh: number; offset: number; length: number;
  mode: number }
export interface LseekReq { nodeid: number; fh: number; offset: number; whence: number }
export interface CopyFileRangeReq { nodeid: number; fhIn: number; offIn: number;
  nodeidOut: number; fhOut: number; offOut: number; len: number; flags: number }
export interface ReaddirReq { nodeid: number; fh: number; offset: number; size: number }
export interface BatchForgetReq { items: ForgetReq[] }

// ---------------------------------------------------------------------------------------------
// Request decoders: p is the payload (after the header, before extensions).

const PATH_MAX = 4096;
const XATTR_NAME_MAX = 255;

/**
 * Takes a NUL-terminated byte string at p[off..]: returns a copy and the offset after the NUL.
 * Entry names must be 1..FUSE_NAME_MAX bytes without '/'; other strings (symlink targets,
 * xattr names) pass their own maximum and allow '/'.
 */
export function takeName(p: Buffer, off: number, what: string, max = FUSE_NAME_MAX,
  entryName = true): [Buffer, number] {
  const end = off < p.length ? p.indexOf(0, off) : -1;
  if (end < 0) throw einval(`${what} has no terminating NUL`);
  const len = end - off;
  if (len === 0) throw einval(`${what} is empty`);
  if (len > max) throw new FsError("ENAMETOOLONG", `${what} of ${len} bytes`);
  const name = Buffer.from(p.subarray(off, end));
  if (entryName && name.includes(0x2f)) throw einval(`${what} contains '/'`);
  return [name, end + 1];
}

export function decodeNameReq(h: InHeader, p: Buffer): NameReq {
  return { parent: h.nodeid, name: takeName(p, 0, "name")[0] };
}

export function decodeForget(h: InHeader, p: Buffer): ForgetReq {
  return { nodeid: h.nodeid, nlookup: ForgetInStruct.decode(p).nlookup };
}

/** BATCH_FORGET: a count and that many (nodeid, nlookup) pairs, all inside the payload. */
export function decodeBatchForget(_h: InHeader, p: Buffer): BatchForgetReq {
  const { count } = BatchForgetInStruct.decode(p);
  const need = BatchForgetInStruct.size + count * ForgetOneStruct.size;
  if (need > p.length) throw einval(`batch_forget of ${count} entries in ${p.length} bytes`);
  const items: ForgetReq[] = [];
  for (let i = 0; i < count; i++) {
    items.push(ForgetOneStruct.decode(p, BatchForgetInStruct.size + i * ForgetOneStruct.size));
  }
  return { items };
}

export function decodeGetattr(h: InHeader, p: Buffer): GetattrReq {
  // Kernels before 7.9 sent no argument; an empty payload means "no file handle".
  if (p.length === 0) return { nodeid: h.nodeid, fh: null };
  const g = GetattrInStruct.decode(p);
  return { nodeid: h.nodeid, fh: (g.getattrFlags & FUSE_GETATTR_FH) !== 0 ? g.fh : null };
}

export function decodeSetattr(h: InHeader, p: Buffer): SetattrReq {
  const s = SetattrInStruct.decode(p);
  const v = s.valid;
  const has = (bit: number): boolean => (v & bit) !== 0;
  return {
    nodeid: h.nodeid, valid: v,
    fh: has(Fattr.FH) ? s.fh : null,
    mode: has(Fattr.MODE) ? s.mode : null,
    uid: has(Fattr.UID) ? s.uid : null,
    gid: has(Fattr.GID) ? s.gid : null,
    size: has(Fattr.SIZE) ? s.size : null,
    atime: has(Fattr.ATIME_NOW) ? "now"
      : has(Fattr.ATIME) ? timespec(s.atime, s.atimensec, "atime") : null,
    mtime: has(Fattr.MTIME_NOW) ? "now"
      : has(Fattr.MTIME) ? timespec(s.mtime, s.mtimensec, "mtime") : null,
    ctime: has(Fattr.CTIME) ? timespec(s.ctime, s.ctimensec, "ctime") : null,
    lockOwner: has(Fattr.LOCKOWNER) ? s.lockOwner : null,
    killSuidgid: has(Fattr.KILL_SUIDGID),
  };
}

function timespec(sec: number, nsec: number, what: string): Timespec {
  if (nsec >= 1e9) throw einval(`${what} nsec ${nsec}`);
  return { sec, nsec };
}

export function decodeSymlink(h: InHeader, p: Buffer): SymlinkReq {
  const [name, off] = takeName(p, 0, "name");
  const [target] = takeName(p, off, "symlink target", PATH_MAX, false);
  return { parent: h.nodeid, name, target };
}

export function decodeMknod(h: InHeader, p: Buffer): MknodReq {
  const m = MknodInStruct.decode(p);
  const [name] = takeName(p, MknodInStruct.size, "name");
  return { parent: h.nodeid, name, mode: m.mode, rdev: m.rdev, umask: m.umask };
}

export function decodeMkdir(h: InHeader, p: Buffer): MkdirReq {
  const m = MkdirInStruct.decode(p);
  const [name] = takeName(p, MkdirInStruct.size, "name");
  return { parent: h.nodeid, name, mode: m.mode, umask: m.umask };
}

export function decodeRename(h: InHeader, p: Buffer): RenameReq {
  const r = RenameInStruct.decode(p);
  return renameNames(h, p, RenameInStruct.size, r.newdir, 0);
}

export function decodeRename2(h: InHeader, p: Buffer): RenameReq {
  const r = Rename2InStruct.decode(p);
  return renameNames(h, p, Rename2InStruct.size, r.newdir, r.flags);
}

function renameNames(h: InHeader, p: Buffer, off: number, newParent: number, flags: number):
  RenameReq {
  const [name, next] = takeName(p, off, "old name");
  const [newName] = takeName(p, next, "new name");
  return { parent: h.nodeid, name, newParent, newName, flags };
}

export function decodeLink(h: InHeader, p: Buffer): LinkReq {
  const l = LinkInStruct.decode(p);
  const [newName] = takeName(p, LinkInStruct.size, "name");
  return { nodeid: l.oldnodeid, newParent: h.nodeid, newName };
}

export function decodeOpen(h: InHeader, p: Buffer): OpenReq {
  const o = OpenInStruct.decode(p);
  return { nodeid: h.nodeid, flags: o.flags,
    killSuidgid: (o.openFlags & FUSE_OPEN_KILL_SUIDGID) !== 0 };
}

export function decodeCreate(h: InHeader, p: Buffer): CreateReq {
  const c = CreateInStruct.decode(p);
  const [name] = takeName(p, CreateInStruct.size, "name");
  return { parent: h.nodeid, name, flags: c.flags, mode: c.mode, umask: c.umask,
    killSuidgid: (c.openFlags & FUSE_OPEN_KILL_SUIDGID) !== 0 };
}

/** TMPFILE carries a create_in and the placeholder name "/" of the unnamed dentry. */
export function decodeTmpfile(h: InHeader, p: Buffer): CreateReq {
  const c = CreateInStruct.decode(p);
  return { parent: h.nodeid, name: Buffer.alloc(0), flags: c.flags, mode: c.mode,
    umask: c.umask, killSuidgid: (c.openFlags & FUSE_OPEN_KILL_SUIDGID) !== 0 };
}

export function decodeRead(h: InHeader, p: Buffer): ReadReq {
  const r = ReadInStruct.decode(p);
  if (r.size > FUSE_MAX_REPLY_BYTES) throw einval(`read of ${r.size} bytes`);
  return { nodeid: h.nodeid, fh: r.fh, offset: r.offset, size: r.size, flags: r.flags,
    lockOwner: (r.readFlags & FUSE_READ_LOCKOWNER) !== 0 ? r.lockOwner : null };
}

/** WRITE: the data follows the struct; it must all be there. data is a view, not a copy. */
export function decodeWrite(h: InHeader, p: Buffer): WriteReq {
  const w = WriteInStruct.decode(p);
  const end = WriteInStruct.size + w.size;
  if (end > p.length) throw einval(`write of ${w.size} bytes with ${p.length - 40} present`);
  return { nodeid: h.nodeid, fh: w.fh, offset: w.offset,
    data: p.subarray(WriteInStruct.size, end), flags: w.flags,
    lockOwner: (w.writeFlags & FUSE_WRITE_LOCKOWNER) !== 0 ? w.lockOwner : null,
    cache: (w.writeFlags & FUSE_WRITE_CACHE) !== 0,
    killSuidgid: (w.writeFlags & FUSE_WRITE_KILL_SUIDGID) !== 0 };
}

export function decodeRelease(h: InHeader, p: Buffer): ReleaseReq {
  const r = ReleaseInStruct.decode(p);
  return { nodeid: h.nodeid, fh: r.fh, flags: r.flags, lockOwner: r.lockOwner,
    flush: (r.releaseFlags & FUSE_RELEASE_FLUSH) !== 0,
    flockUnlock: (r.releaseFlags & FUSE_RELEASE_FLOCK_UNLOCK) !== 0 };
}

export function decodeFlush(h: InHeader, p: Buffer): FlushReq {
  const f = FlushInStruct.decode(p);
  return { nodeid: h.nodeid, fh: f.fh, lockOwner: f.lockOwner };
}

export function decodeFsync(h: InHeader, p: Buffer): FsyncReq {
  const f = FsyncInStruct.decode(p);
  return { nodeid: h.nodeid, fh: f.fh, datasync: (f.fsyncFlags & FUSE_FSYNC_FDATASYNC) !== 0 };
}

export function decodeSetxattr(h: InHeader, p: Buffer): SetxattrReq {
  const s = SetxattrInStruct.decode(p);
  if (s.size > XATTR_SIZE_MAX) throw new FsError("E2BIG", `xattr value of ${s.size} bytes`);
  const [name, off] = takeName(p, SetxattrInStruct.size, "xattr name", XATTR_NAME_MAX, false);
  if (off + s.size > p.length) throw einval(`xattr value of ${s.size} bytes overruns request`);
  return { nodeid: h.nodeid, name, value: Buffer.from(p.subarray(off, off + s.size)),
    flags: s.flags };
}

export function decodeGetxattr(h: InHeader, p: Buffer): GetxattrReq {
  const g = GetxattrInStruct.decode(p);
  const [name] = takeName(p, GetxattrInStruct.size, "xattr name", XATTR_NAME_MAX, false);
  return { nodeid: h.nodeid, name, size: g.size };
}

export function decodeListxattr(h: InHeader, p: Buffer): ListxattrReq {
  return { nodeid: h.nodeid, size: GetxattrInStruct.decode(p).size };
}

export function decodeRemovexattr(h: InHeader, p: Buffer): RemovexattrReq {
  const [name] = takeName(p, 0, "xattr name", XATTR_NAME_MAX, false);
  return { nodeid: h.nodeid, name };
}

export function decodeAccess(h: InHeader, p: Buffer): AccessReq {
  return { nodeid: h.nodeid, mask: AccessInStruct.decode(p).mask };
}

/** READDIR and READDIRPLUS reuse fuse_read_in: fh, offset (the d_off cookie) and size. */
export function decodeReaddir(h: InHeader, p: Buffer): ReaddirReq {
  const r = ReadInStruct.decode(p);
  if (r.size > FUSE_MAX_REPLY_BYTES) throw einval(`readdir of ${r.size} bytes`);
  return { nodeid: h.nodeid, fh: r.fh, offset: r.offset, size: r.size };
}

export function decodeLk(h: InHeader, p: Buffer): LkReq {
  const l = LkInStruct.decode(p);
  return { nodeid: h.nodeid, fh: l.fh, owner: l.owner, start: l.start, end: l.end,
    type: l.type, pid: l.pid, flock: (l.lkFlags & FUSE_LK_FLOCK) !== 0 };
}

export function decodeInterrupt(_h: InHeader, p: Buffer): bigint {
  return InterruptInStruct.decode(p).unique;
}

/** INIT: kernels before 7.36 send the 16-byte form; the rest reads as zero. */
export function decodeInit(_h: InHeader, p: Buffer): InitIn {
  if (p.length < INIT_IN_COMPAT_SIZE) throw einval(`init of ${p.length} bytes`);
  if (p.length >= InitInStruct.size) return InitInStruct.decode(p);
  const full = Buffer.alloc(InitInStruct.size);
  p.copy(full, 0, 0, p.length);
  return InitInStruct.decode(full);
}

export function decodeIoctl(h: InHeader, p: Buffer): IoctlReq {
  const i = IoctlInStruct.decode(p);
  if (i.inSize > FUSE_MAX_REPLY_BYTES || i.outSize > FUSE_MAX_REPLY_BYTES) {
    throw einval(`ioctl sizes ${i.inSize}/${i.outSize}`);
  }
  const end = IoctlInStruct.size + i.inSize;
  if (end > p.length) throw einval(`ioctl input of ${i.inSize} bytes overruns request`);
  return { nodeid: h.nodeid, fh: i.fh, flags: i.flags, cmd: i.cmd, arg: i.arg,
    input: Buffer.from(p.subarray(IoctlInStruct.size, end)), outSize: i.outSize };
}

export function decodeFallocate(h: InHeader, p: Buffer): FallocateReq {
  const f = FallocateInStruct.decode(p);
  return { nodeid: h.nodeid, fh: f.fh, offset: f.offset, length: f.length, mode: f.mode };
}

export function decodeLseek(h: InHeader, p: Buffer): LseekReq {
  const l = LseekInStruct.decode(p);
  return { nodeid: h.nodeid, fh: l.fh, offset: l.offset, whence: l.whence };
}

export function decodeCopyFileRange(h: InHeader, p: Buffer): CopyFileRangeReq {
  const c = CopyFileRangeInStruct.decode(p);
  return { nodeid: h.nodeid, fhIn: c.fhIn, offIn: c.offIn, nodeidOut: c.nodeidOut,
    fhOut: c.fhOut, offOut: c.offOut, len: c.len, flags: c.flags };
}

export function decodeNode(h: InHeader, _p: Buffer): NodeReq {
  return { nodeid: h.nodeid };
}

// ---------------------------------------------------------------------------------------------
// Reply shapes and encoders.

/**
 * A directory entry's identity and attributes. nodeid 0 is a negative entry: the kernel
 * caches "no such name" for entryValidMs (only LOOKUP may return it). Validity times are in
 * milliseconds (fractions allowed), split into seconds and nanoseconds on the wire.
 */
export interface EntryOut {
  nodeid: number;
  generation: number;
  entryValidMs: number;
  attrValidMs: number;
  attr: Attr;
}
export interface AttrOut { attrValidMs: number; attr: Attr }
/** fh: any u53 the filesystem chooses; openFlags: Fopen bits. */
export interface OpenOut { fh: number; openFlags: number }
export interface CreateOut { entry: EntryOut; open: OpenOut }
export interface LockOut { start: bigint; end: bigint; type: number; pid: number }
/** result: the ioctl's return value (>= 0); data: at most the request's outSize bytes. */
export interface IoctlOut { result: number; data: Buffer | null }

/** All-zero attributes (for negative entries and tests). */
export function zeroAttr(): Attr {
  return { ino: 0, size: 0, blocks: 0, atime: 0, mtime: 0, ctime: 0, atimensec: 0,
    mtimensec: 0, ctimensec: 0, mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0,
    flags: 0 };
}

export function negativeEntry(entryValidMs: number): EntryOut {
  return { nodeid: 0, generation: 0, entryValidMs, attrValidMs: 0, attr: zeroAttr() };
}

/** Splits a validity in milliseconds into (seconds, nanoseconds). */
export function splitValidMs(ms: number, what: string): [number, number] {
  assert(Number.isFinite(ms) && ms >= 0, `${what} ${ms} ms`);
  const sec = Math.floor(ms / 1000);
  const nsec = Math.min(999_999_999, Math.round((ms - sec * 1000) * 1e6));
  return [sec, nsec];
}

export function encodeEntryOut(e: EntryOut, buf: Buffer = Buffer.allocUnsafe(ENTRY_OUT_SIZE),
  off = 0): Buffer {
  const [entryValid, entryValidNsec] = splitValidMs(e.entryValidMs, "entryValidMs");
  const [attrValid, attrValidNsec] = splitValidMs(e.attrValidMs, "attrValidMs");
  EntryHeadStruct.encode({ nodeid: e.nodeid, generation: e.generation, entryValid, attrValid,
    entryValidNsec, attrValidNsec }, buf, off);
  AttrStruct.encode(e.attr, buf, off + EntryHeadStruct.size);
  return buf;
}

export function decodeEntryOut(buf: Buffer, off = 0): EntryOut {
  const h = EntryHeadStruct.decode(buf, off);
  return { nodeid: h.nodeid, generation: h.generation,
    entryValidMs: h.entryValid * 1000 + h.entryValidNsec / 1e6,
    attrValidMs: h.attrValid * 1000 + h.attrValidNsec / 1e6,
    attr: AttrStruct.decode(buf, off + EntryHeadStruct.size) };
}

export function encodeAttrOut(a: AttrOut): Buffer {
  const buf = Buffer.allocUnsafe(ATTR_OUT_SIZE); // both structs write every byte
  const [attrValid, attrValidNsec] = splitValidMs(a.attrValidMs, "attrValidMs");
  AttrOutHeadStruct.encode({ attrValid, attrValidNsec }, buf, 0);
  AttrStruct.encode(a.attr, buf, AttrOutHeadStruct.size);
  return buf;
}

export function decodeAttrOut(buf: Buffer): AttrOut {
  const h = AttrOutHeadStruct.decode(buf);
  return { attrValidMs: h.attrValid * 1000 + h.attrValidNsec / 1e6,
    attr: AttrStruct.decode(buf, AttrOutHeadStruct.size) };
}

export function encodeOpenOut(o: OpenOut): Buffer {
  return OpenOutStruct.encode({ fh: o.fh, openFlags: o.openFlags, backingId: 0 });
}

/** CREATE and TMPFILE reply with an entry_out followed by an open_out. */
export function encodeCreateOut(c: CreateOut): Buffer {
  const buf = Buffer.allocUnsafe(ENTRY_OUT_SIZE + OpenOutStruct.size); // all bytes written
  encodeEntryOut(c.entry, buf, 0);
  OpenOutStruct.encode({ fh: c.open.fh, openFlags: c.open.openFlags, backingId: 0 }, buf,
    ENTRY_OUT_SIZE);
  return buf;
}

export function encodeWriteOut(size: number): Buffer {
  return WriteOutStruct.encode({ size });
}

export function encodeStatfsOut(s: Statfs): Buffer {
  return KstatfsStruct.encode(s);
}

export function encodeXattrSize(size: number): Buffer {
  return GetxattrOutStruct.encode({ size });
}

export function encodeLkOut(l: LockOut): Buffer {
  return LkOutStruct.encode(l);
}

export function encodeLseekOut(offset: number): Buffer {
  return LseekOutStruct.encode({ offset });
}

export function encodeIoctlOut(result: number): Buffer {
  return IoctlOutStruct.encode({ result, flags: 0, inIovs: 0, outIovs: 0 });
}

export function encodeInitOut(o: InitOut): Buffer {
  return InitOutStruct.encode(o);
}

/** Packs xattr names as listxattr returns them: each followed by a NUL. */
export function packXattrNames(names: readonly Buffer[]): Buffer {
  const parts: Buffer[] = [];
  for (const n of names) {
    assert(n.length > 0 && n.length <= XATTR_NAME_MAX && !n.includes(0), "xattr name");
    parts.push(n, Buffer.alloc(1));
  }
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------------
// Directory entries.

/** d_type of a mode: DT_REG 8, DT_DIR 4, DT_LNK 10, ... (the S_IFMT bits shifted down). */
export function direntType(mode: number): number {
  return (mode >>> 12) & 0o17;
}

/** Rounds up to the 8-byte record alignment of fuse_dirent (FUSE_REC_ALIGN). */
export function recAlign(n: number): number {
  return (n + 7) & ~7;
}

export function direntSize(nameLen: number): number {
  return recAlign(DirentHeadStruct.size + nameLen);
}

export function direntplusSize(nameLen: number): number {
  return recAlign(ENTRY_OUT_SIZE + DirentHeadStruct.size + nameLen);
}

function isDotOrDotDot(name: Buffer): boolean {
  return name.length <= 2 && name[0] === 0x2e && (name.length === 1 || name[1] === 0x2e);
}

/**
 * Fills one READDIR or READDIRPLUS reply of at most sizeBytes. The filesystem adds entries
 * in order until an add returns false (the entry did not fit: the next call resumes from
 * the offset of the last entry that did). Each entry carries nextOffset, the d_off cookie
 * the kernel passes back to continue after it (telldir/seekdir positions).
 *
 * Lookup counting: in READDIRPLUS mode every entry added with addEntry whose nodeid is not 0
 * and whose name is not "." or ".." makes the kernel take one lookup reference on that node,
 * exactly like a LOOKUP reply. Those node ids are collected in `lookups` (with repetition):
 * the filesystem must count them before its handler returns, and the session calls forget
 * for them if the reply cannot be delivered (interrupted request).
 */
export class DirentPacker {
  readonly plus: boolean;
  readonly sizeBytes: number;
  readonly lookups: number[] = [];
  /** Allocated (zeroed) at the first entry: a reply from a cached block never needs it. */
  private bufNow: Buffer | null = null;
  private used = 0;
  private count = 0;
  private encoded: Buffer | null = null;

  constructor(sizeBytes: number, plus: boolean) {
    assertSafeU(sizeBytes, "readdir size");
    assert(sizeBytes <= FUSE_MAX_REPLY_BYTES, `readdir size ${sizeBytes}`);
    this.sizeBytes = sizeBytes;
    this.plus = plus;
  }

  private get buf(): Buffer {
    this.bufNow ??= Buffer.alloc(this.sizeBytes);
    return this.bufNow;
  }

  /** Entries added so far. */
  get entries(): number {
    return this.count;
  }

  /**
   * Adds an entry known only by inode number and d_type. In READDIRPLUS mode it goes out with
   * an empty entry_out (node id 0): the kernel takes no lookup and will LOOKUP it when used.
   */
  add(name: Buffer, nextOffset: number, ino: number, type: number): boolean {
    checkDirentName(name);
    const size = this.plus ? direntplusSize(name.length) : direntSize(name.length);
    if (this.used + size > this.sizeBytes || this.encoded !== null) return false;
    const at = this.plus ? this.used + ENTRY_OUT_SIZE : this.used;
    this.writeDirent(at, name, nextOffset, ino, type);
    this.used += size;
    this.count++;
    return true;
  }

  /** Adds an entry with its attributes; in plain READDIR mode only ino and type are sent. */
  addEntry(name: Buffer, nextOffset: number, entry: EntryOut): boolean {
    if (!this.plus) {
      return this.add(name, nextOffset, entry.attr.ino, direntType(entry.attr.mode));
    }
    checkDirentName(name);
    const size = direntplusSize(name.length);
    if (this.used + size > this.sizeBytes || this.encoded !== null) return false;
    encodeEntryOut(entry, this.buf, this.used);
    this.writeDirent(this.used + ENTRY_OUT_SIZE, name, nextOffset, entry.attr.ino,
      direntType(entry.attr.mode));
    this.used += size;
    this.count++;
    if (entry.nodeid !== 0 && !isDotOrDotDot(name)) this.lookups.push(entry.nodeid);
    return true;
  }

  /**
   * Replaces the entries by a block encoded earlier (a cache of whole READDIR replies, which
   * saves the per-entry encoding cost: reference/fuse.md). Plain READDIR only: READDIRPLUS
   * entries carry lookups that must be counted per reply.
   */
  useEncoded(block: Buffer): void {
    assert(!this.plus, "a READDIRPLUS reply must be packed entry by entry (lookup counting)");
    assert(this.count === 0 && this.encoded === null, "useEncoded after adding entries");
    assert(block.length <= this.sizeBytes, `readdir block of ${block.length} > ${this.sizeBytes}`);
    this.encoded = block;
  }

  /** The reply payload: the bytes used so far (a view of the packer's buffer). */
  finish(): Buffer {
    return this.encoded ?? (this.bufNow ?? EMPTY_REPLY).subarray(0, this.used);
  }

  private writeDirent(at: number, name: Buffer, nextOffset: number, ino: number,
    type: number): void {
    DirentHeadStruct.encode({ ino, off: nextOffset, namelen: name.length, type }, this.buf, at);
    name.copy(this.buf, at + DirentHeadStruct.size);
    // The alignment padding is already zero: the buffer was zeroed and is written once.
  }
}

const EMPTY_REPLY = Buffer.alloc(0);

function checkDirentName(name: Buffer): void {
  assert(name.length > 0 && name.length <= FUSE_NAME_MAX, `dirent name of ${name.length} bytes`);
  assert(!name.includes(0) && !name.includes(0x2f), "dirent name contains NUL or '/'");
}

/** Decodes a READDIR reply (tests): [name, nextOffset, ino, type] per entry. */
export function decodeDirents(buf: Buffer): { name: Buffer; off: number; ino: number;
  type: number }[] {
  const out: { name: Buffer; off: number; ino: number; type: number }[] = [];
  for (let at = 0; at < buf.length;) {
    const d = DirentHeadStruct.decode(buf, at);
    const nameAt = at + DirentHeadStruct.size;
    if (nameAt + d.namelen > buf.length) throw einval("dirent name overruns the buffer");
    out.push({ name: Buffer.from(buf.subarray(nameAt, nameAt + d.namelen)), off: d.off,
      ino: d.ino, type: d.type });
    at += direntSize(d.namelen);
  }
  return out;
}

/** Decodes a READDIRPLUS reply (tests). */
export function decodeDirentplus(buf: Buffer): { entry: EntryOut; name: Buffer; off: number;
  type: number }[] {
  const out: { entry: EntryOut; name: Buffer; off: number; type: number }[] = [];
  for (let at = 0; at < buf.length;) {
    const entry = decodeEntryOut(buf, at);
    const d = DirentHeadStruct.decode(buf, at + ENTRY_OUT_SIZE);
    const nameAt = at + ENTRY_OUT_SIZE + DirentHeadStruct.size;
    if (nameAt + d.namelen > buf.length) throw einval("direntplus name overruns the buffer");
    out.push({ entry, name: Buffer.from(buf.subarray(nameAt, nameAt + d.namelen)), off: d.off,
      type: d.type });
    at += direntplusSize(d.namelen);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reverse notifications: a whole message (out header with unique 0 and the notify code in
// the error field, then the struct, then a NUL-terminated name where there is one).

function notifyMessage(code: number, parts: readonly Buffer[]): Buffer {
  const len = OUT_HEADER_SIZE + parts.reduce((n, p) => n + p.length, 0);
  const head = encodeOutHeader(Buffer.alloc(OUT_HEADER_SIZE), len, code, 0n);
  return Buffer.concat([head, ...parts], len);
}

/**
 * Drops cached attributes of ino and, unless offset < 0, its cached pages from offset for
 * length bytes (length <= 0: to the end of the file).
 */
export function encodeNotifyInvalInode(ino: number, offset: number, length: number): Buffer {
  return notifyMessage(NotifyCode.INVAL_INODE,
    [NotifyInvalInodeStruct.encode({ ino, off: offset, len: length })]);
}

/** Drops the dentry name in directory parent (expireOnly: mark it stale, kernel 6.2+). */
export function encodeNotifyInvalEntry(parent: number, name: Buffer, expireOnly: boolean):
  Buffer {
  checkDirentName(name);
  return notifyMessage(NotifyCode.INVAL_ENTRY, [NotifyInvalEntryStruct.encode(
    { parent, namelen: name.length, flags: expireOnly ? FUSE_EXPIRE_ONLY : 0 }), cstr(name)]);
}

/** Tells the kernel that name in parent, which was child, is gone (and drops the dentry). */
export function encodeNotifyDelete(parent: number, child: number, name: Buffer): Buffer {
  checkDirentName(name);
  return notifyMessage(NotifyCode.DELETE, [NotifyDeleteStruct.encode(
    { parent, child, namelen: name.length }), cstr(name)]);
}
