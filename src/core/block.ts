/*
 * The metadata block layer: a byte-bounded cache of verified 64 KiB blocks, and the dirty
 * block set of one writer's transaction (copy on write, sorted write-out).
 *
 * Reading a ref {blkno, seq} checks crc, magic, fsid and that the header's blkno and seq equal
 * the ref's. Any mismatch drops the cached copy and re-reads once from the device; a second
 * mismatch is ESTALE: other writers COW-rewrite and reuse blocks, so a reader following an
 * old root may legitimately find a newer block there. withStaleRetry() turns "ESTALE twice
 * with the same roots" into EIO and counts it as corruption. Wrong contents are never
 * returned: each block kind also has a structural validator run on every device read.
 *
 * Writers never modify a block that the last committed super can reach: dirtyRef() copies a
 * clean block into a newly allocated blkno (the old one goes to the transaction's freed list)
 * and a block is only modified in place while it is dirty in the current transaction. Dirty
 * blocks are pinned in the cache until written; writeDirty() checksums them, validates them
 * and writes them in blkno order. Making them durable (flush, then the super) is the caller's
 * job: the super block is the single commit point.
 */
import type { BlockDevice } from "../env/env.js";
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { FsError, isFsError } from "../util/errno.js";
import {
  BLOCK_HEADER_SIZE, type BlockRef, blockCrcValid, headerBlknoRaw, headerFsid, headerMagic,
  headerSeqRaw, magicName, META_BLOCK_SHIFT, META_BLOCK_SIZE, META_DEV_START_BLKNO, sealBlock,
  writeBlockHeader,
} from "./format.js";

/** Structural check of a block's contents, by magic. Throws an EIO FsError when invalid. */
export type BlockValidator = (buf: Buffer) => void;
const validators = new Map<number, BlockValidator>();
/** Tidies a dirty block before it is sealed (compaction, zeroing unused bytes), by magic. */
export type BlockPrepare = (buf: Buffer) => void;
const preparers = new Map<number, BlockPrepare>();

export function registerBlockValidator(magic: number, v: BlockValidator): void {
  validators.set(magic, v);
}

export function registerBlockPrepare(magic: number, p: BlockPrepare): void {
  preparers.set(magic, p);
}

interface CacheEntry {
  buf: Buffer;
  /** Pinned entries are dirty in some writer's transaction and cannot be evicted. */
  pinned: boolean;
  /** Second-chance bit for the clock eviction. */
  referenced: boolean;
}

export const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024;

export class BlockCache {
  private readonly entries = new Map<number, CacheEntry>();
  private cleanBytes = 0;

  constructor(
    readonly dev: BlockDevice,
    readonly fsid: bigint,
    readonly counters: Counters,
    readonly maxBytes: number = DEFAULT_CACHE_BYTES,
    /** Total metadata blocks; refs beyond it are corruption. */
    public totalBlocks = Math.floor(dev.sizeBytes / META_BLOCK_SIZE),
  ) {
    assert(maxBytes >= 16 * META_BLOCK_SIZE, "block cache too small");
  }

  /** The verified block for ref if it is cached, without I/O; undefined on a miss. */
  getCached(ref: BlockRef, magic: number): Buffer | undefined {
    const e = this.entries.get(ref.blkno);
    if (e === undefined) return undefined;
    const b = e.buf;
    if (headerSeqRaw(b) !== ref.seq || headerMagic(b) !== magic) return undefined;
    e.referenced = true;
    this.counters.inc("block_cache_hit");
    return b;
  }

  /** Reads and verifies the block a ref points to (cache first). ESTALE/EIO on mismatch. */
  async read(ref: BlockRef, magic: number): Promise<Buffer> {
    const cached = this.getCached(ref, magic);
    if (cached) return cached;
    this.checkBlkno(ref.blkno);
    const stale = this.entries.get(ref.blkno);
    if (stale && !stale.pinned) {
      this.counters.inc("block_cache_remove_stale");
      this.remove(ref.blkno);
    } else if (stale) {
      // a dirty block of a writer has another identity than the ref: a reader raced a COW
      throw new FsError("ESTALE", `block ${ref.blkno} rewritten in this transaction`);
    }
    let lastErr = "";
    for (let attempt = 0; attempt < 2; attempt++) {
      this.counters.inc("block_cache_miss");
      const buf = this.dev.allocBuffer(META_BLOCK_SIZE);
      await this.dev.read(buf, ref.blkno * META_BLOCK_SIZE);
      lastErr = this.verify(buf, ref, magic);
      if (lastErr === "") {
        this.insertClean(ref.blkno, buf);
        return buf;
      }
      this.counters.inc("block_cache_remove_stale");
    }
    throw new FsError("ESTALE", `block ${ref.blkno} seq ${ref.seq} (${magicName(magic)}): ${lastErr}`);
  }

  private checkBlkno(blkno: number): void {
    if (blkno < META_DEV_START_BLKNO || blkno >= this.totalBlocks) {
      this.counters.inc("corrupt_block_ref");
      throw new FsError("EIO", `block ref ${blkno} outside the metadata device`);
    }
  }

  /** Returns "" when buf is the block ref names, else why not. */
  private verify(buf: Buffer, ref: BlockRef, magic: number): string {
    if (headerMagic(buf) !== magic) return `magic ${magicName(headerMagic(buf))}`;
    if (!blockCrcValid(buf)) return "checksum mismatch";
    if (headerFsid(buf) !== this.fsid) return "fsid mismatch";
    if (headerBlknoRaw(buf) !== ref.blkno) return `header blkno ${headerBlknoRaw(buf)}`;
    if (headerSeqRaw(buf) !== ref.seq) return `header seq ${headerSeqRaw(buf)}`;
    const v = validators.get(magic);
    if (v) {
      try {
        v(buf);
      } catch (e) {
        if (isFsError(e)) return e.message;
        throw e;
      }
    }
    return "";
  }

  private insertClean(blkno: number, buf: Buffer): void {
    this.entries.set(blkno, { buf, pinned: false, referenced: false });
    this.cleanBytes += buf.length;
    this.evict();
  }

  /** Pins a writer's dirty block so readers of the writer's trees find it. */
  pinDirty(blkno: number, buf: Buffer): void {
    this.remove(blkno);
    this.entries.set(blkno, { buf, pinned: true, referenced: true });
  }

  /** A dirty block was written: it becomes an ordinary clean cached block. */
  unpin(blkno: number): void {
    const e = this.entries.get(blkno);
    if (e && e.pinned) {
      e.pinned = false;
      this.cleanBytes += e.buf.length;
    }
  }

  remove(blkno: number): void {
    const e = this.entries.get(blkno);
    if (!e) return;
    if (!e.pinned) this.cleanBytes -= e.buf.length;
    this.entries.delete(blkno);
  }

  /** Drops every clean block (print and fsck read what is on the device, not the cache). */
  dropClean(): void {
    for (const [blkno, e] of this.entries) if (!e.pinned) this.remove(blkno);
  }

  get cachedBytes(): number {
    return this.cleanBytes;
  }

  /** Clock eviction of clean blocks down to the byte bound. */
  private evict(): void {
    let budget = this.entries.size * 2;
    while (this.cleanBytes > this.maxBytes && budget-- > 0) {
      const first = this.entries.entries().next();
      if (first.done) return;
      const [blkno, e] = first.value;
      this.entries.delete(blkno);
      if (e.pinned || e.referenced) {
        e.referenced = false;
        this.entries.set(blkno, e);
        continue;
      }
      this.cleanBytes -= e.buf.length;
      this.counters.inc("block_cache_evict");
    }
  }
}

/** Where a transaction gets metadata blknos and puts the ones it frees. */
export interface MetaAllocator {
  /** A free blkno, to be written in this transaction. ENOSPC when none is left. */
  alloc(txn: MetaTxn): Promise<number>;
  /** blkno is referenced by committed state and no longer by this transaction's. */
  freeCommitted(txn: MetaTxn, blkno: number): Promise<void>;
  /** blkno was allocated in this transaction and is no longer used: reusable at once. */
  freeDirty(txn: MetaTxn, blkno: number): Promise<void>;
}

/**
 * One writer's transaction over metadata blocks: the dirty set, COW and write-out. `seq` is
 * stamped into every block it writes, so refs from older transactions never match them.
 */
export class MetaTxn {
  private readonly dirty = new Map<number, Buffer>();

  constructor(
    readonly cache: BlockCache,
    readonly seq: number,
    public alloc: MetaAllocator,
  ) {
    assert(Number.isSafeInteger(seq) && seq > 0, "txn seq");
  }

  get fsid(): bigint {
    return this.cache.fsid;
  }

  get dirtyCount(): number {
    return this.dirty.size;
  }

  isDirty(ref: BlockRef): boolean {
    return ref.seq === this.seq && this.dirty.has(ref.blkno);
  }

  /** A new zeroed block with its header written; dirty in this transaction. */
  async newBlock(magic: number): Promise<{ ref: BlockRef; buf: Buffer }> {
    const blkno = await this.alloc.alloc(this);
    return { ref: { blkno, seq: this.seq }, buf: this.installDirty(blkno, magic, null) };
  }

  /** Makes a copy of `from` dirty at blkno, which the caller already owns in this txn. */
  adoptDirty(blkno: number, magic: number, from: Buffer | null): Buffer {
    return this.installDirty(blkno, magic, from);
  }

  private installDirty(blkno: number, magic: number, from: Buffer | null): Buffer {
    if (this.dirty.has(blkno)) assert(false, `blkno ${blkno} allocated twice in one transaction`);
    const buf = this.cache.dev.allocBuffer(META_BLOCK_SIZE);
    if (from) from.copy(buf);
    buf.fill(0, 0, BLOCK_HEADER_SIZE);
    writeBlockHeader(buf, magic, this.fsid, this.seq, blkno);
    this.dirty.set(blkno, buf);
    this.cache.pinDirty(blkno, buf);
    return buf;
  }

  /**
   * The block ref points to, writable: itself if already dirty here, else a COW copy at a new
   * blkno (the caller must store the returned ref in the parent).
   */
  async dirtyRef(ref: BlockRef, magic: number): Promise<{ ref: BlockRef; buf: Buffer }> {
    if (this.isDirty(ref)) {
      const buf = this.dirty.get(ref.blkno)!;
      assert(headerMagic(buf) === magic, "dirty block magic");
      return { ref, buf };
    }
    const old = await this.cache.read(ref, magic);
    const blkno = await this.alloc.alloc(this);
    const buf = this.installDirty(blkno, magic, old);
    // the old version is referenced only by the committed state this writer is replacing:
    // keeping it cached would fill the cache with dead versions (re-read if ever needed)
    this.cache.remove(ref.blkno);
    await this.alloc.freeCommitted(this, ref.blkno);
    this.cache.counters.inc("block_cow");
    return { ref: { blkno, seq: this.seq }, buf };
  }

  /** The dirty buffer of a ref that must be dirty here. */
  dirtyBuf(ref: BlockRef): Buffer {
    if (!this.isDirty(ref)) assert(false, `block ${ref.blkno} not dirty`);
    return this.dirty.get(ref.blkno)!;
  }

  /** Frees the block a ref points to: reusable now if dirty, after commit otherwise. */
  async freeRef(ref: BlockRef): Promise<void> {
    if (this.isDirty(ref)) {
      this.dirty.delete(ref.blkno);
      this.cache.remove(ref.blkno);
      await this.alloc.freeDirty(this, ref.blkno);
    } else {
      this.cache.remove(ref.blkno);
      await this.alloc.freeCommitted(this, ref.blkno);
    }
  }

  /**
   * Drops a dirty block without freeing it (its blkno was handed back to the caller by the
   * allocator, which reuses it for something else).
   */
  forgetDirty(blkno: number): void {
    assert(this.dirty.delete(blkno), `forget of clean ${blkno}`);
    this.cache.remove(blkno);
  }

  /**
   * Seals, validates and writes every dirty block in blkno order, coalescing neighbours into
   * larger writes. The blocks stay pinned until markClean(): until the commit point is durable
   * they are not part of any committed state.
   */
  async writeDirty(maxWriteBlocks = 16): Promise<number> {
    const blknos = [...this.dirty.keys()].sort((a, b) => a - b);
    for (const blkno of blknos) {
      const buf = this.dirty.get(blkno)!;
      preparers.get(headerMagic(buf))?.(buf);
      sealBlock(buf);
      validators.get(headerMagic(buf))?.(buf);
    }
    let i = 0;
    while (i < blknos.length) {
      let j = i + 1;
      while (j < blknos.length && j - i < maxWriteBlocks && blknos[j] === blknos[j - 1]! + 1) j++;
      const bufs = blknos.slice(i, j).map((b) => this.dirty.get(b)!);
      const out = bufs.length === 1 ? bufs[0]! : this.concatAligned(bufs);
      await this.cache.dev.write(out, blknos[i]! * META_BLOCK_SIZE);
      this.cache.counters.inc("block_write", j - i);
      i = j;
    }
    return blknos.length;
  }

  private concatAligned(bufs: Buffer[]): Buffer {
    const out = this.cache.dev.allocBuffer(bufs.length << META_BLOCK_SHIFT);
    bufs.forEach((b, k) => b.copy(out, k << META_BLOCK_SHIFT));
    return out;
  }

  /** After the commit point is durable: dirty blocks become ordinary cached blocks. */
  markClean(): void {
    for (const blkno of this.dirty.keys()) this.cache.unpin(blkno);
    this.dirty.clear();
  }

  /** Abandons the transaction: its dirty blocks leave the cache, nothing was committed. */
  abandon(): void {
    for (const blkno of this.dirty.keys()) this.cache.remove(blkno);
    this.dirty.clear();
  }
}

/**
 * Runs a read that follows refs from `roots`. On ESTALE it fetches the roots again and retries;
 * if the roots did not change the stale block is real corruption: EIO, counted.
 */
export async function withStaleRetry<R, T>(
  counters: Counters,
  getRoots: () => Promise<R>,
  sameRoots: (a: R, b: R) => boolean,
  op: (roots: R) => Promise<T>,
  maxRetries = 8,
): Promise<T> {
  let roots = await getRoots();
  for (let attempt = 0; ; attempt++) {
    try {
      return await op(roots);
    } catch (e) {
      if (!isFsError(e, "ESTALE")) throw e;
      const next = await getRoots();
      if (sameRoots(roots, next) || attempt >= maxRetries) {
        counters.inc("corrupt_block");
        throw new FsError("EIO", `metadata corruption: ${e.message}`);
      }
      roots = next;
    }
  }
}
