/*
 * The control socket's wire format: how the scoutfs CLI asks a mount daemon what upstream's
 * CLI asks the kernel with ioctls (src/cli/control.ts carries it over a unix socket).
 *
 * A frame is a u32 little-endian body length followed by the body. Every body starts with a
 * 24-byte little-endian header:
 *
 *     0  magic    u32  CONTROL_MAGIC ("SCTL")
 *     4  version  u8   CONTROL_VERSION
 *     5  kind     u8   1 request, 2 reply
 *     6  op       u8   ControlOp
 *     7  pad      u8   zero
 *     8  id       u32  request id; the reply echoes it
 *    12  errno    u32  replies: 0 ok, else the Linux errno of the failure; requests: zero
 *    16  fsid     u64  requests: the volume the client talks to (0 only in hello);
 *                      replies: the mount's fsid
 *
 * then the payload: a request's arguments, or an ok reply's result (a failed reply has none).
 * u64 values are bigints, written as little-endian u64s; byte strings carry their length
 * before them; lists their count. Every operation's arguments and result have an encoder and
 * a decoder here (OPS); decoders accept exactly what the encoders can produce: known magic,
 * version, kind and op, zero pad and reserved fields, booleans 0/1, lengths and counts within
 * their named bounds, no trailing bytes. Anything else is an FsError EBADMSG, and a peer that
 * sent it is cut off (its byte stream can no longer be trusted).
 *
 * Frame bounds: a request body is at most CONTROL_MAX_REQUEST_BYTES (arguments are small), a
 * reply body at most CONTROL_MAX_REPLY_BYTES (the largest results, 1024 referring entries
 * with 255-byte names or ALLOC_DETAIL_MAX allocators, stay well below it).
 */
import { assert } from "../util/assert.js";
import { FsError } from "../util/errno.js";
import {
  ALLOC_DETAIL_MAX, type AllocDetailEntry, ALLOCATED_INOS_MAX, type AllocatedInosArgs,
  FIEMAP_EXTENTS_MAX, type FiemapArgs, type FiemapExtent, INO_PATH_MAX, type InoPathArgs,
  type InoPathResult, LISTXATTR_HIDDEN_MAX_BYTES, type ListxattrHiddenArgs,
  type ListxattrHiddenResult, REFERRING_ENTRIES_MAX, type ReferringEntriesArgs,
  type ReferringEntry, type StatfsMore, type StatMore, WALK_INODES_MAX, WalkIndex,
  type WalkInodesArgs, type WalkPos,
} from "../core/fs/ioctl.js";

export const CONTROL_MAGIC = 0x4c544353;
export const CONTROL_VERSION = 1;
export const CONTROL_HEADER_SIZE = 24;
/** The u32 length in front of every body. */
export const FRAME_LEN_SIZE = 4;
export const CONTROL_MAX_REQUEST_BYTES = 4096;
export const CONTROL_MAX_REPLY_BYTES = 1 << 20;
const NAME_MAX = 255;
const U32_MAX = 0xffff_ffff;
const U64_MAX = 0xffff_ffff_ffff_ffffn;
/** Linux errnos are below 4096 (MAX_ERRNO): anything else in a reply is garbage. */
const ERRNO_MAX = 4095;

export const FrameKind = { REQUEST: 1, REPLY: 2 } as const;

/** Operation codes (the wire values). */
export const ControlOp = {
  hello: 1, walkInodes: 2, inoPath: 3, getReferringEntries: 4, listxattrHidden: 5,
  statMore: 6, statfsMore: 7, allocDetail: 8, getAllocatedInos: 9, fiemap: 10,
} as const;
export type ControlOpName = keyof typeof ControlOp;
const OP_NAMES = new Map<number, ControlOpName>(
  Object.entries(ControlOp).map(([k, v]) => [v, k as ControlOpName]));

/** The hello reply: which mount answers (the client then sends its fsid with every request). */
export interface Hello {
  fsid: bigint;
  rid: bigint;
}

type NoArgs = Record<string, never>;

/** Arguments and result of every operation. */
export interface ControlOps {
  hello: { args: NoArgs; result: Hello };
  walkInodes: { args: WalkInodesArgs; result: WalkPos[] };
  inoPath: { args: InoPathArgs; result: InoPathResult };
  getReferringEntries: { args: ReferringEntriesArgs; result: ReferringEntry[] };
  listxattrHidden: { args: ListxattrHiddenArgs; result: ListxattrHiddenResult };
  statMore: { args: { ino: bigint }; result: StatMore };
  statfsMore: { args: NoArgs; result: StatfsMore };
  allocDetail: { args: NoArgs; result: AllocDetailEntry[] };
  getAllocatedInos: { args: AllocatedInosArgs; result: bigint[] };
  fiemap: { args: FiemapArgs; result: FiemapExtent[] };
}
export type ArgsOf<N extends ControlOpName> = ControlOps[N]["args"];
export type ResultOf<N extends ControlOpName> = ControlOps[N]["result"];

export type ControlRequest = { [N in ControlOpName]:
  { id: number; op: N; fsid: bigint; args: ArgsOf<N> } }[ControlOpName];
export type ControlReply = { [N in ControlOpName]:
  { id: number; op: N; fsid: bigint; errno: 0; result: ResultOf<N> } |
  { id: number; op: N; fsid: bigint; errno: number } }[ControlOpName];

function bad(what: string): FsError {
  return new FsError("EBADMSG", `control message: ${what}`);
}

// ---------------------------------------------------------------------------------------
// Writer and Reader: fields in order, every check in one place.

/** Collects zero-filled field buffers; the frame is their concatenation. */
export class Writer {
  private readonly parts: Buffer[] = [];

  private put(size: number, fill: (b: Buffer) => void): void {
    const b = Buffer.alloc(size);
    fill(b);
    this.parts.push(b);
  }

  u8(n: number): void {
    assert(Number.isInteger(n) && n >= 0 && n <= 0xff, `u8 ${n}`);
    this.put(1, (b) => { b[0] = n; });
  }

  u16(n: number): void {
    assert(Number.isInteger(n) && n >= 0 && n <= 0xffff, `u16 ${n}`);
    this.put(2, (b) => b.writeUInt16LE(n, 0));
  }

  u32(n: number): void {
    assert(Number.isInteger(n) && n >= 0 && n <= U32_MAX, `u32 ${n}`);
    this.put(4, (b) => b.writeUInt32LE(n, 0));
  }

  u64(n: bigint): void {
    assert(n >= 0n && n <= U64_MAX, `u64 ${n}`);
    this.put(8, (b) => b.writeBigUInt64LE(n, 0));
  }

  bool(v: boolean): void {
    this.u8(v ? 1 : 0);
  }

  /** A byte string of minLen..maxLen bytes, its length as a u16 first. */
  bytes(v: Buffer, minLen: number, maxLen: number): void {
    assert(v.length >= minLen && v.length <= maxLen && maxLen <= 0xffff, `byte string ${v.length}`);
    this.u16(v.length);
    this.parts.push(Buffer.from(v));
  }

  /** A list of at most max items, its count as a u32 first. */
  list<T>(items: readonly T[], max: number, each: (w: Writer, it: T) => void): void {
    assert(items.length <= max, `list of ${items.length} items, max ${max}`);
    this.u32(items.length);
    for (const it of items) each(this, it);
  }

  get length(): number {
    return this.parts.reduce((n, p) => n + p.length, 0);
  }

  finish(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** Reads fields in order; any violation is EBADMSG. */
export class Reader {
  private off = 0;

  constructor(private readonly b: Buffer) {}

  private take(n: number, what: string): Buffer {
    if (this.off + n > this.b.length) throw bad(`truncated ${what}`);
    const s = this.b.subarray(this.off, this.off + n);
    this.off += n;
    return s;
  }

  u8(what = "u8"): number {
    return this.take(1, what)[0]!;
  }

  u16(what = "u16"): number {
    return this.take(2, what).readUInt16LE(0);
  }

  u32(what = "u32"): number {
    return this.take(4, what).readUInt32LE(0);
  }

  u64(what = "u64"): bigint {
    return this.take(8, what).readBigUInt64LE(0);
  }

  bool(what: string): boolean {
    const v = this.u8(what);
    if (v > 1) throw bad(`${what} is ${v}, not a boolean`);
    return v === 1;
  }

  bytes(minLen: number, maxLen: number, what: string): Buffer {
    const n = this.u16(what);
    if (n < minLen || n > maxLen) throw bad(`${what} of ${n} bytes`);
    return Buffer.from(this.take(n, what));
  }

  /** A count, then each item (at most max). */
  list<T>(max: number, what: string, each: (r: Reader) => T): T[] {
    const n = this.u32(what);
    if (n > max) throw bad(`${n} ${what}, max ${max}`);
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(each(this));
    return out;
  }

  /** In 1..max (the request bounds of counts). */
  count(max: number, what: string): number {
    const n = this.u32(what);
    if (n < 1 || n > max) throw bad(`${what} ${n} outside 1..${max}`);
    return n;
  }

  end(): void {
    if (this.off !== this.b.length) throw bad(`${this.b.length - this.off} trailing bytes`);
  }
}

// ---------------------------------------------------------------------------------------
// Per-operation codecs.

interface OpCodec<A, R> {
  encArgs(w: Writer, a: A): void;
  decArgs(r: Reader): A;
  encResult(w: Writer, x: R): void;
  decResult(r: Reader): R;
}

const none = {
  encArgs: (): void => undefined,
  decArgs: (): NoArgs => ({}),
};

function encPos(w: Writer, p: WalkPos): void {
  w.u64(p.major);
  w.u32(p.minor);
  w.u64(p.ino);
}

function decPos(r: Reader): WalkPos {
  return { major: r.u64(), minor: r.u32(), ino: r.u64() };
}

function encCursor(w: Writer, a: InoPathArgs): void {
  w.u64(a.ino);
  w.u64(a.dirIno);
  w.u64(a.dirPos);
}

function decCursor(r: Reader): InoPathArgs {
  return { ino: r.u64(), dirIno: r.u64(), dirPos: r.u64() };
}

const walkInodesCodec: OpCodec<WalkInodesArgs, WalkPos[]> = {
  encArgs: (w, a) => { w.u8(a.index); encPos(w, a.first); encPos(w, a.last); w.u32(a.max); },
  decArgs: (r) => {
    const index = r.u8("walk index");
    if (index !== WalkIndex.META_SEQ && index !== WalkIndex.DATA_SEQ) {
      throw bad(`walk index ${index}`);
    }
    return { index, first: decPos(r), last: decPos(r), max: r.count(WALK_INODES_MAX, "walk max") };
  },
  encResult: (w, x) => w.list(x, WALK_INODES_MAX, encPos),
  decResult: (r) => r.list(WALK_INODES_MAX, "walk entries", decPos),
};

const inoPathCodec: OpCodec<InoPathArgs, InoPathResult> = {
  encArgs: encCursor,
  decArgs: decCursor,
  encResult: (w, x) => { w.u64(x.dirIno); w.u64(x.dirPos); w.bytes(x.path, 1, INO_PATH_MAX - 1); },
  decResult: (r) => {
    const res = { dirIno: r.u64(), dirPos: r.u64(), path: r.bytes(1, INO_PATH_MAX - 1, "path") };
    if (res.path.includes(0)) throw bad("NUL in a path");
    return res;
  },
};

function encEntry(w: Writer, e: ReferringEntry): void {
  w.u64(e.dirIno);
  w.u64(e.dirPos);
  w.u64(e.ino);
  w.u8(e.type);
  w.bool(e.last);
  w.bytes(e.name, 1, NAME_MAX);
}

function decEntry(r: Reader): ReferringEntry {
  return { dirIno: r.u64(), dirPos: r.u64(), ino: r.u64(), type: r.u8(), last: r.bool("last"),
    name: r.bytes(1, NAME_MAX, "entry name") };
}

const referringCodec: OpCodec<ReferringEntriesArgs, ReferringEntry[]> = {
  encArgs: (w, a) => { encCursor(w, a); w.u32(a.max); },
  decArgs: (r) => ({ ...decCursor(r), max: r.count(REFERRING_ENTRIES_MAX, "entries max") }),
  encResult: (w, x) => w.list(x, REFERRING_ENTRIES_MAX, encEntry),
  decResult: (r) => r.list(REFERRING_ENTRIES_MAX, "referring entries", decEntry),
};

const HIDDEN_NAMES_MAX = LISTXATTR_HIDDEN_MAX_BYTES / 2;

const listxattrHiddenCodec: OpCodec<ListxattrHiddenArgs, ListxattrHiddenResult> = {
  encArgs: (w, a) => { w.u64(a.ino); w.u64(a.hashPos); w.u64(a.idPos); },
  decArgs: (r) => ({ ino: r.u64(), hashPos: r.u64(), idPos: r.u64() }),
  encResult: (w, x) => {
    w.u64(x.hashPos);
    w.u64(x.idPos);
    w.bool(x.done);
    w.list(x.names, HIDDEN_NAMES_MAX, (ww, n) => ww.bytes(n, 1, NAME_MAX));
  },
  decResult: (r) => ({ hashPos: r.u64(), idPos: r.u64(), done: r.bool("done"),
    names: r.list(HIDDEN_NAMES_MAX, "hidden names", (rr) => rr.bytes(1, NAME_MAX, "xattr name")) }),
};

const statMoreCodec: OpCodec<{ ino: bigint }, StatMore> = {
  encArgs: (w, a) => w.u64(a.ino),
  decArgs: (r) => ({ ino: r.u64() }),
  encResult: (w, x) => {
    for (const v of [x.metaSeq, x.dataSeq, x.dataVersion, x.onlineBlocks, x.offlineBlocks,
      x.crtimeSec]) w.u64(v);
    w.u32(x.crtimeNsec);
  },
  decResult: (r) => {
    const s = { metaSeq: r.u64(), dataSeq: r.u64(), dataVersion: r.u64(), onlineBlocks: r.u64(),
      offlineBlocks: r.u64(), crtimeSec: r.u64(), crtimeNsec: r.u32() };
    if (s.crtimeNsec > 999_999_999) throw bad(`crtime nsec ${s.crtimeNsec}`);
    return s;
  },
};

const STATFS_FIELDS = ["fsid", "rid", "committedSeq", "totalMetaBlocks", "totalDataBlocks",
  "reservedMetaBlocks"] as const;

const statfsMoreCodec: OpCodec<NoArgs, StatfsMore> = {
  ...none,
  encResult: (w, x) => { for (const f of STATFS_FIELDS) w.u64(x[f]); },
  decResult: (r) => ({ fsid: r.u64(), rid: r.u64(), committedSeq: r.u64(),
    totalMetaBlocks: r.u64(), totalDataBlocks: r.u64(), reservedMetaBlocks: r.u64() }),
};

const allocDetailCodec: OpCodec<NoArgs, AllocDetailEntry[]> = {
  ...none,
  encResult: (w, x) => w.list(x, ALLOC_DETAIL_MAX, (ww, e) => {
    ww.u64(e.id);
    ww.u64(e.blocks);
    ww.u8(e.type);
    ww.bool(e.meta);
    ww.bool(e.avail);
  }),
  decResult: (r) => r.list(ALLOC_DETAIL_MAX, "allocators", (rr) => ({ id: rr.u64(),
    blocks: rr.u64(), type: rr.u8(), meta: rr.bool("meta"), avail: rr.bool("avail") })),
};

const allocatedInosCodec: OpCodec<AllocatedInosArgs, bigint[]> = {
  encArgs: (w, a) => { w.u64(a.startIno); w.u32(a.max); },
  decArgs: (r) => ({ startIno: r.u64(), max: r.count(ALLOCATED_INOS_MAX, "inos max") }),
  encResult: (w, x) => w.list(x, ALLOCATED_INOS_MAX, (ww, n) => ww.u64(n)),
  decResult: (r) => r.list(ALLOCATED_INOS_MAX, "inode numbers", (rr) => rr.u64()),
};

const fiemapCodec: OpCodec<FiemapArgs, FiemapExtent[]> = {
  encArgs: (w, a) => { w.u64(a.ino); w.u64(a.start); w.u32(a.max); },
  decArgs: (r) => ({ ino: r.u64(), start: r.u64(),
    max: r.count(FIEMAP_EXTENTS_MAX, "fiemap max") }),
  encResult: (w, x) => w.list(x, FIEMAP_EXTENTS_MAX, (ww, e) => {
    ww.u64(e.logical);
    ww.u64(e.physical);
    ww.u64(e.length);
    ww.u32(e.flags);
  }),
  decResult: (r) => r.list(FIEMAP_EXTENTS_MAX, "extents", (rr) => ({ logical: rr.u64(),
    physical: rr.u64(), length: rr.u64(), flags: rr.u32() })),
};

const helloCodec: OpCodec<NoArgs, Hello> = {
  ...none,
  encResult: (w, x) => { w.u64(x.fsid); w.u64(x.rid); },
  decResult: (r) => ({ fsid: r.u64(), rid: r.u64() }),
};

const OPS: { [N in ControlOpName]: OpCodec<ArgsOf<N>, ResultOf<N>> } = {
  hello: helloCodec, walkInodes: walkInodesCodec, inoPath: inoPathCodec,
  getReferringEntries: referringCodec, listxattrHidden: listxattrHiddenCodec,
  statMore: statMoreCodec, statfsMore: statfsMoreCodec, allocDetail: allocDetailCodec,
  getAllocatedInos: allocatedInosCodec, fiemap: fiemapCodec,
};

// ---------------------------------------------------------------------------------------
// Frames.

interface Header {
  kind: number;
  op: ControlOpName;
  id: number;
  errno: number;
  fsid: bigint;
}

function encHeader(w: Writer, h: Header): void {
  w.u32(CONTROL_MAGIC);
  w.u8(CONTROL_VERSION);
  w.u8(h.kind);
  w.u8(ControlOp[h.op]);
  w.u8(0);
  w.u32(h.id);
  w.u32(h.errno);
  w.u64(h.fsid);
}

function decHeader(r: Reader, kind: number): Header {
  if (r.u32("magic") !== CONTROL_MAGIC) throw bad("magic");
  const version = r.u8("version");
  if (version !== CONTROL_VERSION) throw bad(`version ${version}`);
  const k = r.u8("kind");
  if (k !== kind) throw bad(`kind ${k}, want ${kind}`);
  const code = r.u8("op");
  const op = OP_NAMES.get(code);
  if (op === undefined) throw bad(`unknown op ${code}`);
  if (r.u8("pad") !== 0) throw bad("pad");
  const id = r.u32("id");
  const errno = r.u32("errno");
  const fsid = r.u64("fsid");
  if (kind === FrameKind.REQUEST && errno !== 0) throw bad("errno in a request");
  if (errno > ERRNO_MAX) throw bad(`errno ${errno}`);
  return { kind: k, op, id, errno, fsid };
}

/** Prefixes a body with its u32 length. */
function framed(body: Buffer, max: number): Buffer {
  assert(body.length <= max, `control frame body of ${body.length} bytes`);
  const len = Buffer.alloc(FRAME_LEN_SIZE);
  len.writeUInt32LE(body.length, 0);
  return Buffer.concat([len, body]);
}

export function encodeRequest(q: ControlRequest): Buffer {
  const w = new Writer();
  encHeader(w, { kind: FrameKind.REQUEST, op: q.op, id: q.id, errno: 0, fsid: q.fsid });
  (OPS[q.op] as OpCodec<typeof q.args, unknown>).encArgs(w, q.args);
  return framed(w.finish(), CONTROL_MAX_REQUEST_BYTES);
}

/** Decodes a request body (without its length prefix). */
export function decodeRequest(body: Buffer): ControlRequest {
  if (body.length > CONTROL_MAX_REQUEST_BYTES) throw bad(`request of ${body.length} bytes`);
  const r = new Reader(body);
  const h = decHeader(r, FrameKind.REQUEST);
  const args = OPS[h.op].decArgs(r);
  r.end();
  return { id: h.id, op: h.op, fsid: h.fsid, args } as ControlRequest;
}

export function encodeReply(p: ControlReply): Buffer {
  const w = new Writer();
  encHeader(w, { kind: FrameKind.REPLY, op: p.op, id: p.id, errno: p.errno, fsid: p.fsid });
  assert(p.errno >= 0 && p.errno <= ERRNO_MAX, `reply errno ${p.errno}`);
  if (p.errno === 0 && "result" in p) {
    (OPS[p.op] as OpCodec<unknown, typeof p.result>).encResult(w, p.result);
  } else {
    assert(p.errno !== 0, "an ok reply carries a result");
  }
  return framed(w.finish(), CONTROL_MAX_REPLY_BYTES);
}

/** Decodes a reply body (without its length prefix). */
export function decodeReply(body: Buffer): ControlReply {
  if (body.length > CONTROL_MAX_REPLY_BYTES) throw bad(`reply of ${body.length} bytes`);
  const r = new Reader(body);
  const h = decHeader(r, FrameKind.REPLY);
  if (h.errno !== 0) {
    r.end();
    return { id: h.id, op: h.op, fsid: h.fsid, errno: h.errno };
  }
  const result = OPS[h.op].decResult(r);
  r.end();
  return { id: h.id, op: h.op, fsid: h.fsid, errno: 0, result } as ControlReply;
}

/**
 * Splits a byte stream into frame bodies of at most maxBody bytes. A length above the bound
 * poisons the reader (EBADMSG now and for every later push): the stream is not trustworthy.
 */
export class FrameReader {
  private buf = Buffer.alloc(0);
  private poisoned = false;

  constructor(private readonly maxBody: number) {}

  push(chunk: Buffer): Buffer[] {
    if (this.poisoned) throw bad("stream already failed");
    this.buf = this.buf.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buf, chunk]);
    const out: Buffer[] = [];
    while (this.buf.length >= FRAME_LEN_SIZE) {
      const len = this.buf.readUInt32LE(0);
      if (len > this.maxBody || len < CONTROL_HEADER_SIZE) {
        this.poisoned = true;
        throw bad(`frame of ${len} bytes`);
      }
      if (this.buf.length < FRAME_LEN_SIZE + len) break;
      out.push(Buffer.from(this.buf.subarray(FRAME_LEN_SIZE, FRAME_LEN_SIZE + len)));
      this.buf = this.buf.subarray(FRAME_LEN_SIZE + len);
    }
    return out;
  }

  /** Bytes of a partial frame held (at most FRAME_LEN_SIZE + maxBody). */
  get pending(): number {
    return this.buf.length;
  }
}
