/*
 * Encoded directory listings for READDIR (reference/fuse.md: encoding entries one by one in
 * JS costs about 1 µs each; a cached block costs a copy).
 *
 * A listing is a directory's whole READDIR stream, ".", ".." and every entry in position
 * order, encoded once as fuse_dirent records in one buffer, with each record's start and
 * position. A READDIR at offset `off` (the d_off of the last entry the kernel consumed, so the
 * next entry is the first whose position is >= off) is answered with a view of the records
 * that fit the kernel's buffer: a binary search and no copy (the reply is written before the
 * next request is read).
 *
 * Validity: a listing is keyed on the directory inode's version, which changes with every
 * entry added or removed (the inode is rewritten); the caller reads the version under the
 * directory's lock before using a listing, so a change by another mount (whose WRITE lock
 * revoked ours first) is seen too. Bounds: one listing holds at most LISTING_MAX_BYTES
 * (larger directories are answered entry by entry), all of them at most LISTINGS_MAX_BYTES,
 * least recently used dropped first.
 */

import { assert } from "../util/assert.js";

/** Bytes one listing may take (about 400,000 entries of short names); larger: not cached. */
export const LISTING_MAX_BYTES = 16 << 20;
/** Bytes all listings may take together. */
export const LISTINGS_MAX_BYTES = 64 << 20;

const DIRENT_HEAD = 24;
const TWO32 = 0x1_0000_0000;
const direntBytes = (nameLen: number): number => (DIRENT_HEAD + nameLen + 7) & ~7;

/** One directory's encoded READDIR stream. */
export class DirListing {
  constructor(readonly version: bigint, private readonly buf: Buffer,
    /** Byte start of record i; starts[count] is the end. */
    private readonly starts: Uint32Array,
    /** Position of record i ("." 0, ".." 1, entries from 2). */
    private readonly pos: Float64Array, readonly count: number) {}

  /** Bytes held (the cache's accounting). */
  get bytes(): number {
    return this.buf.length + this.starts.byteLength + this.pos.byteLength;
  }

  /** Index of the first record whose position is >= off (count if none). */
  private first(off: number): number {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.pos[mid]! < off) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The records from offset `off` on that fit in `size` bytes (a view: use it at once). */
  slice(off: number, size: number): Buffer {
    const i = this.first(off);
    if (i >= this.count) return this.buf.subarray(0, 0);
    const limit = this.starts[i]! + size;
    // the last record end <= limit
    let lo = i;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.starts[mid]! <= limit) lo = mid;
      else hi = mid - 1;
    }
    return this.buf.subarray(this.starts[i]!, this.starts[lo]!);
  }

  /** Records from offset `off` on, at most `max`, decoded (READDIRPLUS packs them itself). */
  entries(off: number, max: number): { name: Buffer; next: number; ino: number; type: number }[] {
    const out: { name: Buffer; next: number; ino: number; type: number }[] = [];
    for (let i = this.first(off); i < this.count && out.length < max; i++) {
      const at = this.starts[i]!;
      const ino = this.buf.readUInt32LE(at + 4) * TWO32 + this.buf.readUInt32LE(at);
      const next = this.buf.readUInt32LE(at + 12) * TWO32 + this.buf.readUInt32LE(at + 8);
      const len = this.buf.readUInt32LE(at + 16);
      out.push({ name: this.buf.subarray(at + DIRENT_HEAD, at + DIRENT_HEAD + len), next, ino,
        type: this.buf.readUInt32LE(at + 20) });
    }
    return out;
  }
}

/** Encodes a listing entry by entry; add() false once it would exceed maxBytes. */
export class DirListingBuilder {
  private buf: Buffer;
  /** buf's bytes as a DataView: setUint32 is several times cheaper than writeUInt32LE. */
  private dv: DataView;
  private used = 0;
  private starts: Uint32Array;
  private pos: Float64Array;
  private n = 0;

  constructor(private readonly maxBytes: number, dirIno: number) {
    this.buf = Buffer.alloc(64 * 1024);
    this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.length);
    this.starts = new Uint32Array(1024);
    this.pos = new Float64Array(1024);
    this.put(DOT, 0, DOT.length, 0, dirIno, DT_DIR);
    this.put(DOTDOT, 0, DOTDOT.length, 1, 0, DT_DIR); // its inode number: see finish()
  }

  /**
   * Adds the entry named src[at, at + len) at position pos (>= 2, increasing); false when
   * the listing would grow past its bound.
   */
  add(src: Buffer, at: number, len: number, pos: number, ino: number, type: number): boolean {
    if (!(pos > this.pos[this.n - 1]!)) assert(false, "listing positions increase");
    return this.put(src, at, len, pos, ino, type);
  }

  finish(version: bigint, parentIno: number): DirListing {
    // ".." is record 1: its inode number
    const at = this.starts[1]!;
    this.buf.writeUInt32LE(parentIno % TWO32, at);
    this.buf.writeUInt32LE(Math.floor(parentIno / TWO32), at + 4);
    const starts = this.starts.slice(0, this.n + 1);
    starts[this.n] = this.used;
    return new DirListing(version, Buffer.from(this.buf.subarray(0, this.used)), starts,
      this.pos.slice(0, this.n), this.n);
  }

  private put(src: Buffer, from: number, len: number, pos: number, ino: number, type: number):
    boolean {
    const size = direntBytes(len);
    if (this.used + size > this.maxBytes) return false;
    if (this.used + size > this.buf.length) {
      const b = Buffer.alloc(Math.min(this.maxBytes, Math.max(this.buf.length * 2, this.used + size)));
      this.buf.copy(b, 0, 0, this.used);
      this.buf = b;
      this.dv = new DataView(b.buffer, b.byteOffset, b.length);
    }
    if (this.n + 1 >= this.starts.length) {
      const s = new Uint32Array(this.starts.length * 2);
      s.set(this.starts);
      this.starts = s;
      const p = new Float64Array(this.pos.length * 2);
      p.set(this.pos);
      this.pos = p;
    }
    const b = this.buf;
    const dv = this.dv;
    const at = this.used;
    const off = pos + 1; // d_off: where the next READDIR starts
    dv.setUint32(at, ino % TWO32, true);
    dv.setUint32(at + 4, Math.floor(ino / TWO32), true);
    dv.setUint32(at + 8, off % TWO32, true);
    dv.setUint32(at + 12, Math.floor(off / TWO32), true);
    dv.setUint32(at + 16, len, true);
    dv.setUint32(at + 20, type, true);
    for (let i = 0; i < len; i++) b[at + DIRENT_HEAD + i] = src[from + i]!;
    // padding: the buffer is zeroed and each byte is written once
    this.starts[this.n] = at;
    this.pos[this.n] = pos;
    this.n++;
    this.used += size;
    return true;
  }
}

/** Listings by directory node id, bounded in bytes, least recently used dropped first. */
export class DirListingCache {
  private readonly map = new Map<number, DirListing>();
  private bytes = 0;

  constructor(private readonly maxBytes = LISTINGS_MAX_BYTES) {}

  get(nodeid: number): DirListing | undefined {
    const l = this.map.get(nodeid);
    if (l !== undefined) {
      this.map.delete(nodeid); // most recently used last
      this.map.set(nodeid, l);
    }
    return l;
  }

  set(nodeid: number, l: DirListing): void {
    this.drop(nodeid);
    if (l.bytes > this.maxBytes) return;
    this.map.set(nodeid, l);
    this.bytes += l.bytes;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.maxBytes) break;
      this.map.delete(k);
      this.bytes -= v.bytes;
    }
  }

  drop(nodeid: number): void {
    const l = this.map.get(nodeid);
    if (l === undefined) return;
    this.map.delete(nodeid);
    this.bytes -= l.bytes;
  }

  get size(): number {
    return this.map.size;
  }

  get totalBytes(): number {
    return this.bytes;
  }
}

const DOT = Buffer.from(".");
const DOTDOT = Buffer.from("..");
const DT_DIR = 4;
