/*
 * File data (upstream data.c and file.c): read, write, truncate, fallocate, fiemap and the
 * freeing of an unlinked inode's blocks, over data extent items and the data device.
 *
 * Every operation runs through the OpRunner (op.ts) under its inode group's cluster lock:
 * READ for read and fiemap, WRITE for the rest. A changing operation then holds the
 * transaction (data_alloc.ts) until its items are applied, so its allocations, frees and
 * extent items commit together; a read takes a read hold, so no block it maps is freed and
 * reused under it. An operation reads the extents of the region it touches with one ordered
 * item walk into an ExtentMap (data_ext.ts), plans with upstream's rules (data_plan.ts),
 * does its device I/O (one write per contiguous run of blocks, data_io.ts), then records
 * only the changed extent items and the inode.
 *
 * Bounded work per operation: a write changes at most WRITE_CHUNK_BLOCKS blocks, a truncate
 * step frees at most TRUNCATE_BATCH_EXTENTS extents and a fallocate step makes at most
 * FALLOC_STEPS_PER_OP allocations; longer requests run as several operations. A truncate
 * that cannot free everything at once marks the inode INODE_FLAG_TRUNCATE (persistent, so a
 * crash leaves the work to be finished) and finishes it in further operations; operations
 * that would extend the file first finish a pending truncate.
 *
 * On-disk invariant kept for the last partial block: bytes past i_size in it are zero (a
 * shrinking truncate zeroes them, as upstream's block_truncate_page), so extending the file
 * exposes zeros. Unwritten extents and holes read as zeros. Extents past i_size are only
 * UNWRITTEN preallocations.
 *
 * Inode accounting as upstream: data_version and data_seq move on every change of contents
 * or size, online_blocks counts mapped written blocks, offline_blocks OFFLINE ones; write
 * sets mtime and ctime and drops set-id bits when the writer is not root.
 */
import { assert } from "../../util/assert.js";
import { FsError } from "../../util/errno.js";
import type { MountClient } from "../client.js";
import type { DataHold, DataTrans } from "../data_alloc.js";
import {
  DATA_BLOCK_SHIFT, DATA_BLOCK_SIZE, decodeDataExtent, encodeDataExtent, EXTENT_FLAG_OFFLINE,
  EXTENT_FLAG_UNWRITTEN, INODE_FLAG_TRUNCATE, type InodeValue, type Timespec,
} from "../format.js";
import { dataExtentKey, FsType, keySecond, keyThird, makeKey, U64_MAX, Zone } from "../key.js";
import { LockMode } from "../lock_msg.js";
import { canMerge, checkFileExtent, extEnd, type FileExtent, ExtentMap } from "./data_ext.js";
import { DataDevice, DATA_IO_MAX_BYTES } from "./data_io.js";
import { mapFallocate, mapWrite, type PreallocOptions, type Segment } from "./data_plan.js";
import { isDir, isReg, S_ISGID, S_ISUID } from "./format.js";
import { checkNotRetained, FILE_SIZE_MAX } from "./inode.js";
import { inos, OP_MAX_WRITES, type OpCtx, type OpRunner } from "./op.js";
import type { Cred } from "./perm.js";

/** Blocks one write operation maps at most (4 MiB); longer writes are several operations. */
export const WRITE_CHUNK_BLOCKS = 1024;
/** Extent items one operation reads into its window at most. */
export const EXTENT_LOAD_MAX = 4096;
/** Extents one truncate step frees at most (upstream frees 8 per transaction hold). */
export const TRUNCATE_BATCH_EXTENTS = 1024;
/** Truncate steps one call runs before giving up (EAGAIN); a file has fewer extents. */
export const TRUNCATE_MAX_STEPS = 1 << 20;
/** Allocations one fallocate operation makes (upstream EXTENTS_PER_HOLD). */
export const FALLOC_STEPS_PER_OP = 8;
/** Bytes one read call returns at most (Linux MAX_RW_COUNT, rounded to blocks). */
export const READ_MAX_BYTES = 0x7fff_f000;
/** Reads of at least this many bytes use the O_DIRECT device's pooled aligned buffers. */
const READ_POOL_MIN_BYTES = 64 * 1024;
/** Extents fiemap reports at most. */
export const FIEMAP_MAX_EXTENTS = 1 << 20;
/** Operations a data call re-runs after finishing a pending truncate, at most. */
const TRUNCATE_RETRIES = 8;
/** Times a reader restarts an extent walk that raced a local writer, at most. */
const LOAD_RETRIES = 16;
// a write chunk's window (its blocks and a neighbour each side) fits one extent read, and
// what one operation deletes and inserts (about two items per extent touched) fits OpCtx
assert(EXTENT_LOAD_MAX >= WRITE_CHUNK_BLOCKS + 3, "extent read bound below a write chunk");
assert(2 * (WRITE_CHUNK_BLOCKS + 8) <= OP_MAX_WRITES && TRUNCATE_BATCH_EXTENTS + 8 <= OP_MAX_WRITES,
  "data operations fit an operation's write bound");

/** Logical blocks of the largest file. */
export const MAX_IBLOCK = Number(FILE_SIZE_MAX >> BigInt(DATA_BLOCK_SHIFT));
/** Past every extent (preallocation may run a little past MAX_IBLOCK): "to the end". */
const INF_IBLOCK = 2 ** 52;

/** Upstream defaults of the mount options data_prealloc_blocks / data_prealloc_contig_only. */
export const DEFAULT_PREALLOC_BLOCKS = 2048;
export const DEFAULT_PREALLOC_CONTIG_ONLY = true;
/** fallocate(2) modes: only KEEP_SIZE is supported besides 0 (as upstream). */
export const FALLOC_FL_KEEP_SIZE = 0x01;
/** fiemap extent flags. */
export const FIEMAP_EXTENT_LAST = 0x1;
export const FIEMAP_EXTENT_UNKNOWN = 0x2;
export const FIEMAP_EXTENT_UNWRITTEN = 0x800;

export interface FiemapExtent {
  logical: bigint;
  physical: bigint;
  length: bigint;
  flags: number;
}

/** The data mount options (readable and writable at run time, as upstream's sysfs). */
export interface DataOptions {
  preallocBlocks: number;
  preallocContigOnly: boolean;
}

/** An operation found a pending truncate: it must finish before the operation runs. */
class TruncatePending extends Error {
  constructor() {
    super("truncate pending");
  }
}

const BS = DATA_BLOCK_SIZE;
const blockOf = (byte: bigint): number => Number(byte >> BigInt(DATA_BLOCK_SHIFT));
/** Blocks needed to hold `size` bytes. */
const blocksFor = (size: bigint): number =>
  Number((size + BigInt(BS - 1)) >> BigInt(DATA_BLOCK_SHIFT));
const extentKey = (ino: bigint, e: FileExtent): Buffer =>
  dataExtentKey(ino, BigInt(extEnd(e)), BigInt(e.len));
const extentsEnd = (ino: bigint): Buffer =>
  makeKey(Zone.FS, ino, FsType.DATA_EXTENT, U64_MAX, U64_MAX, 255);

function extentFromItem(key: Buffer, val: Buffer): FileExtent {
  const last = keySecond(key);
  const len = keyThird(key);
  if (len < 1n || last >= BigInt(INF_IBLOCK) || len > last + 1n) {
    throw new FsError("EIO", `data extent item last ${last} len ${len}`);
  }
  const v = decodeDataExtent(val);
  const e = { start: Number(last - len + 1n), len: Number(len), map: v.blkno, flags: v.flags };
  checkFileExtent(e);
  return e;
}

/**
 * The extents of ino ending at or after `lo`, through the first one starting after `hi`
 * (ExtentMap's window contract), at most `max`: when it stops early the returned hi is
 * lowered to what is fully known.
 *
 * The walk reads one item at a time. A writer holds its group's WRITE lock and the local
 * mutex, so nothing changes under it and overlapping items are corruption. A reader
 * (`reader`) shares the lock with this mount's writers, whose items can change between its
 * steps (an append replaces the last extent by a longer one): it starts the walk again.
 */
export async function loadExtents(ctx: OpCtx, ino: bigint, lo: number, hi: number, max: number,
  reader = false): Promise<{ exts: FileExtent[]; hi: number }> {
  assert(max >= 2 && lo <= hi, "extent load bounds");
  for (let attempt = 0; ; attempt++) {
    const w = await walkExtents(ctx, ino, lo, hi, max);
    if (w !== null) return w;
    if (!reader || attempt >= LOAD_RETRIES) {
      throw new FsError("EIO", `data extents of inode ${ino} out of order`);
    }
    ctx.client.counters.inc("data_extent_walk_raced");
  }
}

/** One walk of loadExtents; null if the items seen overlap (changed meanwhile, or corrupt). */
async function walkExtents(ctx: OpCtx, ino: bigint, lo: number, hi: number, max: number):
  Promise<{ exts: FileExtent[]; hi: number } | null> {
  const out: FileExtent[] = [];
  const end = extentsEnd(ino);
  let key = dataExtentKey(ino, BigInt(lo), 0n);
  for (;;) {
    const it = await ctx.next(key, end, ino);
    if (it === null) return { exts: out, hi };
    const e = extentFromItem(it.key, it.val);
    const prev = out[out.length - 1];
    if (extEnd(e) < lo || (prev && prev.start + prev.len > e.start)) return null;
    out.push(e);
    if (e.start > hi) return { exts: out, hi };
    if (out.length >= max) return { exts: out, hi: e.start - 1 };
    key = dataExtentKey(ino, BigInt(extEnd(e)) + 1n, 0n);
  }
}

/** Records the window's changed extent items in the operation. */
function recordExtents(ctx: OpCtx, ino: bigint, m: ExtentMap): void {
  const { deletes, puts } = m.changes();
  for (const e of deletes) ctx.del(extentKey(ino, e), ino);
  for (const e of puts) {
    ctx.put(extentKey(ino, e), encodeDataExtent({ blkno: e.map, flags: e.flags }), ino);
  }
}

/** Adds the window's online/offline changes to the inode. */
function accountBlocks(v: InodeValue, m: ExtentMap): void {
  v.onlineBlocks += BigInt(m.onlineDelta);
  v.offlineBlocks += BigInt(m.offlineDelta);
  if (v.onlineBlocks < 0n || v.offlineBlocks < 0n) {
    throw new FsError("EIO", "inode online/offline block counts went negative");
  }
}

function checkRegular(v: InodeValue): void {
  if (isDir(v.mode)) throw new FsError("EISDIR");
  if (!isReg(v.mode)) throw new FsError("EINVAL", "not a regular file");
}

export class DataOps {
  private readonly trans: DataTrans;
  private dev: DataDevice | null;

  constructor(private readonly runner: OpRunner, private readonly client: MountClient,
    readonly opts: DataOptions, private readonly now: () => Timespec) {
    this.trans = client.dataTrans;
    const d = client.dataDev;
    this.dev = d ? new DataDevice(d, client.counters, Math.floor(d.sizeBytes / BS)) : null;
    checkDataOptions(opts);
  }

  private device(): DataDevice {
    if (this.dev === null) throw new FsError("ENXIO", "the mount has no data device");
    return this.dev;
  }

  private prealloc(): PreallocOptions {
    checkDataOptions(this.opts);
    return { blocks: this.opts.preallocBlocks, contigOnly: this.opts.preallocContigOnly };
  }

  /** Holds the transaction for this run of ctx's operation (released when it ends). */
  private async hold(ctx: OpCtx): Promise<DataHold> {
    const h = await this.trans.hold();
    ctx.onEnd((applied) => { h.end(applied); });
    return h;
  }

  // -------------------------------------------------------------------------------------
  // read

  /** Up to `size` bytes from `offset` (short at EOF); holes and unwritten extents are zeros. */
  async read(ino: bigint, offset: bigint, size: number): Promise<Buffer> {
    if (offset < 0n || !Number.isSafeInteger(size) || size < 0) throw new FsError("EINVAL");
    const want = Math.min(size, READ_MAX_BYTES);
    return this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      const v = await ctx.mustInode(ino);
      checkRegular(v);
      if (offset >= v.size || want === 0) return Buffer.alloc(0);
      const n = Number(v.size - offset < BigInt(want) ? v.size - offset : BigInt(want));
      const release = this.trans.readHold();
      ctx.onEnd(() => { release(); });
      const out = this.readBuffer(n);
      try {
        await this.readInto(ctx, ino, offset, out);
      } catch (e) {
        this.releaseRead(out);
        throw e;
      }
      this.client.counters.inc("data_read");
      return out;
    });
  }

  /**
   * The buffer a read returns. On an O_DIRECT device (alignment > 1) one of the device's
   * aligned buffers, so whole blocks are read straight into it (no bounce copy) and the
   * caller gives it back with releaseRead() once it has sent it.
   */
  private readBuffer(n: number): Buffer {
    const d = this.client.dataDev;
    if (d === null || d.alignment === 1 || d.releaseBuffer === undefined ||
      n < READ_POOL_MIN_BYTES) return Buffer.allocUnsafe(n);
    return d.allocBuffer(n);
  }

  /** A buffer read() returned is no longer used (optional: unreturned ones are collected). */
  releaseRead(buf: Buffer): void {
    this.client.dataDev?.releaseBuffer?.(buf);
  }

  /**
   * Fills out with the file's bytes from `offset`, window by window. Byte positions are
   * relative to block a (file offsets past 2^53 are not exact as numbers).
   */
  private async readInto(ctx: OpCtx, ino: bigint, offset: bigint, out: Buffer): Promise<void> {
    const a = blockOf(offset);
    const b = blockOf(offset + BigInt(out.length - 1));
    const r0 = Number(offset % BigInt(BS));
    /** Where block x starts in out (negative for the first block when r0 > 0). */
    const at = (x: number): number => (x - a) * BS - r0;
    let filled = 0;
    for (let from = a; from <= b;) {
      const w = await loadExtents(ctx, ino, from, b, EXTENT_LOAD_MAX, true);
      const upTo = Math.min(b, w.hi);
      const runs: { off: number; len: number; map: number; inRun: number }[] = [];
      for (const e of w.exts) {
        const s = Math.max(e.start, from);
        const t = Math.min(extEnd(e), upTo);
        if (s > t || (e.flags & EXTENT_FLAG_UNWRITTEN) !== 0) continue;
        if (e.map === 0) throw new FsError("EIO", "reading an offline extent needs staging");
        const off = Math.max(at(s), 0);
        const end = Math.min(at(t + 1), out.length);
        if (off > filled) out.fill(0, filled, off);
        pushRun(runs, { off, len: end - off, map: e.map + (s - e.start), inRun: off - at(s) });
        filled = end;
      }
      const windowEnd = Math.min(at(upTo + 1), out.length);
      if (windowEnd > filled) out.fill(0, filled, windowEnd);
      filled = windowEnd;
      const dev = runs.length > 0 ? this.device() : null;
      for (const r of runs) await dev!.read(out, r.off, r.len, r.map, r.inRun);
      from = upTo + 1;
    }
  }

  // -------------------------------------------------------------------------------------
  // write

  /** Writes data at offset; returns the bytes written (short only when space ran out). */
  async write(ino: bigint, offset: bigint, data: Buffer, cred: Cred): Promise<number> {
    if (offset < 0n) throw new FsError("EINVAL");
    if (data.length === 0) return 0;
    if (offset + BigInt(data.length) > FILE_SIZE_MAX) throw new FsError("EFBIG");
    let done = 0;
    let refilled = false;
    while (done < data.length) {
      const pos = offset + BigInt(done);
      const room = (WRITE_CHUNK_BLOCKS - (blockOf(pos) % WRITE_CHUNK_BLOCKS)) * BS -
        Number(pos % BigInt(BS));
      const chunk = data.subarray(done, Math.min(data.length, done + room));
      const r = await this.withTruncate(ino, () => this.writeChunk(ino, pos, chunk, cred));
      done += r.written;
      if (!r.short) continue;
      if (r.written > 0) {
        refilled = false;
        continue;
      }
      if (refilled) break; // a fresh transaction had no space either: the volume is full
      await this.client.commit(); // the server refills the mount's allocator
      refilled = true;
    }
    if (done === 0) throw new FsError("ENOSPC");
    return done;
  }

  private async writeChunk(ino: bigint, pos: bigint, data: Buffer, cred: Cred):
    Promise<{ written: number; short: boolean }> {
    return this.runner.run({ inos: inos([ino, LockMode.WRITE]) }, async (ctx) => {
      const v = await ctx.mustInode(ino, LockMode.WRITE);
      checkRegular(v);
      checkNotRetained(v);
      if ((v.flags & INODE_FLAG_TRUNCATE) !== 0) throw new TruncatePending();
      const dev = this.device();
      const hold = await this.hold(ctx);
      const a = blockOf(pos);
      const b = blockOf(pos + BigInt(data.length - 1));
      const { m, pre } = await this.writeWindow(ctx, ino, a, b);
      const plan = await mapWrite(m, a, b, v.onlineBlocks, (n) => hold.alloc(n), pre);
      const p0 = Number(pos % BigInt(BS));
      const written = Math.min(data.length, (plan.end - a) * BS - p0);
      if (written <= 0) return { written: 0, short: true };
      await this.writeSegments(dev, hold, plan.segs, data.subarray(0, written), a, p0);
      recordExtents(ctx, ino, m);
      this.wroteInode(ctx, ino, v, m, pos + BigInt(written), cred);
      this.client.counters.inc("data_write");
      return { written, short: plan.short };
    });
  }

  /** The window a write of [a, b] plans in, and the preallocation that fits it. */
  private async writeWindow(ctx: OpCtx, ino: bigint, a: number, b: number):
    Promise<{ m: ExtentMap; pre: PreallocOptions }> {
    let pre = this.prealloc();
    let lo = Math.max(0, a - 1);
    if (!pre.contigOnly) lo = Math.max(0, Math.min(lo, a - (a % pre.blocks) - 1));
    let w = await loadExtents(ctx, ino, lo, Math.min(INF_IBLOCK - 1, b + pre.blocks + 1),
      EXTENT_LOAD_MAX);
    if (w.hi < b + 2) {
      // the region before a is crowded with extents: no region preallocation this time
      assert(lo < a - 1, "a write chunk's own blocks hold fewer extents than the read bound");
      lo = Math.max(0, a - 1);
      pre = { contigOnly: true, blocks: pre.blocks };
      w = await loadExtents(ctx, ino, lo, Math.min(INF_IBLOCK - 1, b + pre.blocks + 1),
        EXTENT_LOAD_MAX);
    }
    const m = new ExtentMap(w.exts, lo, w.hi);
    // a crowded window: preallocate less rather than read more (a region would move, so
    // region preallocation is off then), never past the largest file
    const room = Math.min(w.hi - b - 1, MAX_IBLOCK - b);
    if (room >= pre.blocks) return { m, pre };
    return { m, pre: { contigOnly: true, blocks: Math.max(1, pre.contigOnly ? room : 1) } };
  }

  private wroteInode(ctx: OpCtx, ino: bigint, v: InodeValue, m: ExtentMap, end: bigint,
    cred: Cred): void {
    ctx.dataChanged(ino);
    accountBlocks(v, m);
    if (end > v.size) v.size = end;
    v.dataVersion += 1n;
    const now = this.now();
    v.mtime = { ...now };
    v.ctime = { ...now };
    // a write by anyone but root drops set-id bits (file_remove_privs)
    if (cred.uid !== 0 && ((v.mode & S_ISUID) !== 0 || (v.mode & (S_ISGID | 0o010)) ===
      (S_ISGID | 0o010))) {
      v.mode &= ~S_ISUID;
      if ((v.mode & 0o010) !== 0) v.mode &= ~S_ISGID;
    }
  }

  /**
   * One device write per contiguous run of blocks: whole aligned runs straight from the
   * caller's buffer, runs with a partial first or last block composed (old contents of a
   * written block read back, zeros for fresh blocks).
   */
  private async writeSegments(dev: DataDevice, hold: DataHold, segs: readonly Segment[],
    data: Buffer, a: number, p0: number): Promise<void> {
    for (const s of segs) {
      for (let done = 0; done < s.len;) {
        const len = Math.min(s.len - done, DATA_IO_MAX_BYTES / BS);
        const run = { ...s, iblock: s.iblock + done, len, map: s.map + done };
        const buf = await this.composeRun(dev, run, data, a, p0);
        hold.wroteData();
        await dev.write(buf, run.map);
        done += len;
      }
    }
  }

  /** Byte positions are relative to block a; the data starts p0 bytes into it. */
  private async composeRun(dev: DataDevice, s: Segment, data: Buffer, a: number, p0: number):
    Promise<Buffer> {
    const runS = (s.iblock - a) * BS;
    const runT = runS + s.len * BS;
    const dS = Math.max(runS, p0);
    const dT = Math.min(runT, p0 + data.length);
    assert(dS < dT, "write run outside the data");
    if (dS === runS && dT === runT) return data.subarray(dS - p0, dT - p0);
    const buf = Buffer.allocUnsafe(runT - runS);
    if (dS > runS) await this.edgeBlock(dev, s, 0, buf);
    const lastOff = (s.len - 1) * BS;
    if (dT < runT && (lastOff > 0 || dS === runS)) await this.edgeBlock(dev, s, s.len - 1, buf);
    data.copy(buf, dS - runS, dS - p0, dT - p0);
    return buf;
  }

  /** Block k of the run as it is (zeros when fresh) into buf. */
  private async edgeBlock(dev: DataDevice, s: Segment, k: number, buf: Buffer): Promise<void> {
    if (s.fresh) {
      buf.fill(0, k * BS, (k + 1) * BS);
      return;
    }
    (await dev.readBlock(s.map + k)).copy(buf, k * BS);
  }

  // -------------------------------------------------------------------------------------
  // truncate (the TruncateHook of setattr and inode deletion)

  /**
   * Frees the blocks past newSize (newSize <= oldSize; deletion passes 0) and zeroes the
   * tail of a new partial last block. Growing only finishes a pending truncate. Returns true
   * when extents remain (the inode is marked INODE_FLAG_TRUNCATE; the caller continues).
   */
  async truncate(ctx: OpCtx, ino: bigint, oldSize: bigint, newSize: bigint): Promise<boolean> {
    const v = await ctx.mustInode(ino, LockMode.WRITE);
    const pending = (v.flags & INODE_FLAG_TRUNCATE) !== 0;
    if (newSize > oldSize && !pending) return false;
    const hold = await this.hold(ctx);
    ctx.dirty(ino);
    const from = blocksFor(newSize < oldSize ? newSize : oldSize);
    const more = await this.freeFrom(ctx, hold, ino, v, from);
    if (newSize > oldSize && more) throw new TruncatePending(); // finish before growing
    if (newSize < oldSize && newSize % BigInt(BS) !== 0n) {
      await this.zeroTail(ctx, hold, ino, newSize);
    }
    if (more) v.flags |= INODE_FLAG_TRUNCATE;
    else v.flags &= ~INODE_FLAG_TRUNCATE;
    return more;
  }

  /** Frees up to TRUNCATE_BATCH_EXTENTS extents at or past block `from`; true if more remain. */
  private async freeFrom(ctx: OpCtx, hold: DataHold, ino: bigint, v: InodeValue, from: number):
    Promise<boolean> {
    const lo = Math.max(0, from - 1);
    const w = await loadExtents(ctx, ino, lo, INF_IBLOCK, TRUNCATE_BATCH_EXTENTS + 1);
    const m = new ExtentMap(w.exts, lo, w.hi);
    for (const e of w.exts) {
      const s = Math.max(e.start, from);
      if (extEnd(e) < s || s > w.hi) continue;
      for (const r of m.set(s, extEnd(e) - s + 1, 0, 0)) {
        if (r.map !== 0) hold.free({ start: r.map, len: r.len });
      }
    }
    recordExtents(ctx, ino, m);
    accountBlocks(v, m);
    return w.hi < INF_IBLOCK;
  }

  /** Zeroes the bytes past `size` in its (written) block. */
  private async zeroTail(ctx: OpCtx, hold: DataHold, ino: bigint, size: bigint): Promise<void> {
    const blk = blockOf(size);
    const w = await loadExtents(ctx, ino, blk, blk, 2);
    const e = w.exts[0];
    if (!e || e.start > blk || e.map === 0 || (e.flags & EXTENT_FLAG_UNWRITTEN) !== 0) return;
    const dev = this.device();
    const map = e.map + (blk - e.start);
    const buf = await dev.readBlock(map);
    buf.fill(0, Number(size % BigInt(BS)));
    hold.wroteData();
    await dev.write(buf, map);
  }

  /** Finishes a pending truncate (INODE_FLAG_TRUNCATE) in as many operations as it takes. */
  async finishTruncate(ino: bigint): Promise<void> {
    for (let step = 0; step < TRUNCATE_MAX_STEPS; step++) {
      const more = await this.runner.run({ inos: inos([ino, LockMode.WRITE]) }, async (ctx) => {
        const v = await ctx.inode(ino, LockMode.WRITE);
        if (v === null || (v.flags & INODE_FLAG_TRUNCATE) === 0) return false;
        const hold = await this.hold(ctx);
        ctx.dirty(ino);
        this.client.counters.inc("data_truncate_step");
        const left = await this.freeFrom(ctx, hold, ino, v, blocksFor(v.size));
        if (!left) v.flags &= ~INODE_FLAG_TRUNCATE;
        return left;
      });
      if (!more) return;
    }
    throw new FsError("EAGAIN", "truncate continues later");
  }

  /** Runs op; when it finds a truncate pending, finishes that first and runs it again. */
  async withTruncate<T>(ino: bigint, op: () => Promise<T>): Promise<T> {
    for (let i = 0; ; i++) {
      try {
        return await op();
      } catch (e) {
        if (!(e instanceof TruncatePending) || i >= TRUNCATE_RETRIES) throw e;
      }
      await this.finishTruncate(ino);
    }
  }

  // -------------------------------------------------------------------------------------
  // fallocate, fiemap

  /** fallocate(2) modes 0 and FALLOC_FL_KEEP_SIZE: UNWRITTEN extents over the holes. */
  async fallocate(ino: bigint, mode: number, offset: bigint, length: bigint, _cred: Cred):
    Promise<void> {
    if ((mode & ~FALLOC_FL_KEEP_SIZE) !== 0) throw new FsError("EOPNOTSUPP");
    if (offset < 0n || length <= 0n) throw new FsError("EINVAL");
    if (offset + length > FILE_SIZE_MAX) throw new FsError("EFBIG");
    const last = blockOf(offset + length - 1n);
    let refilled = false;
    for (let i = blockOf(offset); i <= last;) {
      const from = i;
      const r = await this.withTruncate(ino,
        () => this.fallocOp(ino, mode, offset, length, from, last));
      if (r.next > i) refilled = false;
      i = r.next;
      if (!r.short) continue;
      if (refilled) throw new FsError("ENOSPC");
      await this.client.commit();
      refilled = true;
    }
  }

  private async fallocOp(ino: bigint, mode: number, offset: bigint, length: bigint,
    from: number, last: number): Promise<{ next: number; short: boolean }> {
    return this.runner.run({ inos: inos([ino, LockMode.WRITE]) }, async (ctx) => {
      const v = await ctx.mustInode(ino, LockMode.WRITE);
      checkRegular(v);
      checkNotRetained(v);
      if ((v.flags & INODE_FLAG_TRUNCATE) !== 0) throw new TruncatePending();
      const hold = await this.hold(ctx);
      const lo = Math.max(0, from - 1);
      const w = await loadExtents(ctx, ino, lo, last + 1, EXTENT_LOAD_MAX);
      const opLast = Math.min(last, w.hi - 1);
      assert(opLast >= from, "a fallocate window holds at least one block");
      const m = new ExtentMap(w.exts, lo, w.hi);
      const plan = await mapFallocate(m, from, opLast, FALLOC_STEPS_PER_OP, (n) => hold.alloc(n));
      const now = this.now();
      let grew = false;
      if ((mode & FALLOC_FL_KEEP_SIZE) === 0) {
        const reached = BigInt(plan.next) << BigInt(DATA_BLOCK_SHIFT);
        const end = reached < offset + length ? reached : offset + length;
        if (end > v.size) {
          ctx.dataChanged(ino);
          v.size = end;
          v.dataVersion += 1n;
          v.mtime = { ...now };
          grew = true;
        }
      }
      if (plan.changed || grew) {
        recordExtents(ctx, ino, m);
        ctx.dirty(ino);
        accountBlocks(v, m);
        v.ctime = { ...now };
      }
      return { next: plan.next, short: plan.short };
    });
  }

  /** Every extent of the file in bytes, adjacent compatible ones merged (as upstream). */
  async fiemap(ino: bigint): Promise<FiemapExtent[]> {
    return this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      const v = await ctx.mustInode(ino);
      if (!isReg(v.mode)) return [];
      const out: FileExtent[] = [];
      let from = 0;
      let complete = false;
      while (out.length < FIEMAP_MAX_EXTENTS) {
        const w = await loadExtents(ctx, ino, from, INF_IBLOCK - 1, EXTENT_LOAD_MAX, true);
        for (const e of w.exts) {
          if (e.start < from || e.start > w.hi) continue;
          const cur = out[out.length - 1];
          if (cur && canMerge(cur, e)) cur.len += e.len;
          else out.push(e);
        }
        if (w.hi >= INF_IBLOCK - 1) {
          complete = true;
          break;
        }
        from = w.hi + 1;
      }
      return out.map((e, i) => fiemapExtent(e, complete && i === out.length - 1));
    });
  }

  /** fsync/fdatasync: commits the mount's transaction when it holds anything. */
  async fsync(_ino: bigint, _datasync: boolean): Promise<void> {
    if (this.client.items.dirtyCount === 0 && !this.trans.needsFlush) return;
    await this.client.commit();
  }
}

function fiemapExtent(e: FileExtent, last: boolean): FiemapExtent {
  let flags = last ? FIEMAP_EXTENT_LAST : 0;
  if ((e.flags & EXTENT_FLAG_OFFLINE) !== 0) flags |= FIEMAP_EXTENT_UNKNOWN;
  else if ((e.flags & EXTENT_FLAG_UNWRITTEN) !== 0) flags |= FIEMAP_EXTENT_UNWRITTEN;
  const sh = BigInt(DATA_BLOCK_SHIFT);
  return { logical: BigInt(e.start) << sh, physical: BigInt(e.map) << sh,
    length: BigInt(e.len) << sh, flags };
}

/** Joins a device read to the previous one when the bytes continue on the device. */
function pushRun(runs: { off: number; len: number; map: number; inRun: number }[],
  r: { off: number; len: number; map: number; inRun: number }): void {
  const last = runs[runs.length - 1];
  if (last && last.off + last.len === r.off &&
    last.map * BS + last.inRun + last.len === r.map * BS + r.inRun &&
    last.len + r.len <= DATA_IO_MAX_BYTES) {
    last.len += r.len;
  } else {
    runs.push(r);
  }
}

export function checkDataOptions(o: DataOptions): void {
  if (!Number.isSafeInteger(o.preallocBlocks) || o.preallocBlocks < 1 ||
    o.preallocBlocks > MAX_IBLOCK) {
    throw new FsError("EINVAL", `data_prealloc_blocks ${o.preallocBlocks}`);
  }
}
