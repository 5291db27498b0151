/*
 * A volume opened by its writer (the server, or an offline tool), and the server-style commit
 * that makes a transaction durable (upstream server.c commit + super.c).
 *
 * A VolumeTxn works on a private copy of the super: btree roots and allocator heads change in
 * it while blocks are COWed through a MetaTxn whose metadata allocator pops the super's
 * server_meta_avail[0] list and pushes frees onto server_meta_freed[0]. commit():
 *
 *   1. drains server_meta_freed[1] (the blocks freed by the previous commit, unreferenced by
 *      the durable super) into the meta_alloc[1] extent tree,
 *   2. tops the avail list up from meta_alloc[0] (or [1] once [0] is empty),
 *   3. moves this transaction's freed list to server_meta_freed[1],
 *   4. writes every dirty block in blkno order and flushes the device,
 *   5. writes the super and flushes again: the super write is the single commit point.
 *
 * A crash anywhere before step 5 completes leaves the previous super, which references only
 * blocks this transaction never wrote, so the volume is exactly as of the previous commit.
 * Blocks freed by a transaction are reused no earlier than the transaction after it.
 */
import type { BlockDevice } from "../env/env.js";
import { assert } from "../util/assert.js";
import { Counters } from "../util/counters.js";
import { FsError } from "../util/errno.js";
import { allocExtent, drainList, ListAllocator } from "./alloc.js";
import { BlockCache, DEFAULT_CACHE_BYTES, MetaTxn } from "./block.js";
import {
  type AllocRoot, decodeSuper, emptyListHead, encodeSuper, META_BLOCK_SIZE,
  SUPER_OFFSET, SUPER_SIZE, type SuperBlock,
} from "./format.js";

/** Avail list target: 64 MiB of metadata blocks, as mkfs leaves it. */
export const SERVER_AVAIL_TARGET = 1024;
/** Refill the avail list when it drops under this many blknos. */
export const SERVER_AVAIL_LOW = 256;

export async function readSuperFrom(dev: BlockDevice, expectMeta?: boolean): Promise<SuperBlock> {
  const buf = dev.allocBuffer(SUPER_SIZE);
  if (dev.sizeBytes < SUPER_OFFSET + SUPER_SIZE) {
    throw new FsError("EINVAL", `${dev.name} is too small to hold a scoutfs super block`);
  }
  await dev.read(buf, SUPER_OFFSET);
  return decodeSuper(Buffer.from(buf), expectMeta);
}

export async function writeSuperTo(dev: BlockDevice, sb: SuperBlock, isMeta: boolean):
  Promise<void> {
  const enc = encodeSuper(sb, isMeta);
  decodeSuper(enc, isMeta);
  const buf = dev.allocBuffer(SUPER_SIZE);
  enc.copy(buf);
  await dev.write(buf, SUPER_OFFSET);
}

export function cloneSuper(sb: SuperBlock): SuperBlock {
  // structuredClone turns Buffers into plain Uint8Arrays
  return { ...structuredClone(sb), uuid: Buffer.from(sb.uuid) };
}

export interface OpenOptions {
  cacheBytes?: number;
  counters?: Counters;
}

/** Checks that a data device's super belongs with the metadata device's. */
export async function checkDataDevice(data: BlockDevice, meta: SuperBlock): Promise<SuperBlock> {
  const dsb = await readSuperFrom(data, false);
  if (dsb.hdr.fsid !== meta.hdr.fsid) {
    throw new FsError("EINVAL", "data device fsid does not match the metadata device");
  }
  if (dsb.fmtVers !== meta.fmtVers) {
    throw new FsError("EINVAL", "data device format version does not match the metadata device");
  }
  return dsb;
}

export class Volume {
  private txnOpen = false;

  private constructor(
    readonly meta: BlockDevice,
    readonly cache: BlockCache,
    readonly counters: Counters,
    /** The last committed super. */
    public sb: SuperBlock,
  ) {}

  static async open(meta: BlockDevice, opts: OpenOptions = {}): Promise<Volume> {
    const sb = await readSuperFrom(meta, true);
    if (sb.totalMetaBlocks * META_BLOCK_SIZE > meta.sizeBytes) {
      throw new FsError("EINVAL", `metadata device ${meta.name} is smaller than the volume`);
    }
    const counters = opts.counters ?? new Counters();
    const cache = new BlockCache(meta, sb.hdr.fsid, counters, opts.cacheBytes ?? DEFAULT_CACHE_BYTES,
      sb.totalMetaBlocks);
    return new Volume(meta, cache, counters, sb);
  }

  /**
   * Opens the one write transaction; EBUSY while another is open. Its blocks are stamped with
   * `seq` (default: the super's seq + 1), which must be greater than every seq committed so
   * far; the server passes seqs from its own counter, which it also hands to clients.
   */
  begin(seq?: number): VolumeTxn {
    if (this.txnOpen) throw new FsError("EBUSY", "a transaction is already open");
    const s = seq ?? this.sb.seq + 1;
    assert(s > this.sb.seq, `transaction seq ${s} not after committed seq ${this.sb.seq}`);
    this.txnOpen = true;
    return new VolumeTxn(this, cloneSuper(this.sb), s);
  }

  /** Called by VolumeTxn when it ends, committed or not. */
  endTxn(sb: SuperBlock | null): void {
    assert(this.txnOpen, "no open transaction");
    this.txnOpen = false;
    if (sb) this.sb = sb;
  }
}

export class VolumeTxn {
  readonly w: MetaTxn;
  readonly alloc: ListAllocator;
  private done = false;
  private draining = false;

  constructor(readonly vol: Volume, readonly sb: SuperBlock, seq: number) {
    this.alloc = new ListAllocator(sb.serverMetaAvail[0], sb.serverMetaFreed[0],
      (txn) => this.refillAvail(txn), SERVER_AVAIL_LOW);
    this.w = new MetaTxn(vol.cache, seq, this.alloc);
  }

  get seq(): number {
    return this.w.seq;
  }

  /** Tops the avail list up from the meta extent trees (the allocator calls this when low). */
  private async refillAvail(w: MetaTxn): Promise<void> {
    const sb = this.sb;
    while (sb.serverMetaAvail[0].totalNr < SERVER_AVAIL_TARGET) {
      // never the tree that drainPendingFreed() is in the middle of modifying
      const src = sb.metaAlloc[0].totalLen > 0 ? sb.metaAlloc[0]
        : !this.draining && sb.metaAlloc[1].totalLen > 0 ? sb.metaAlloc[1] : null;
      if (!src) return;
      const want = SERVER_AVAIL_TARGET - sb.serverMetaAvail[0].totalNr;
      const ext = await allocExtent(w, src, want);
      if (!ext) return;
      for (let b = ext.start; b < ext.start + ext.len; b++) await this.alloc.freeDirty(w, b);
    }
  }

  /** Moves the previous commit's freed blocks into the meta_alloc[1] extent tree. */
  private async drainPendingFreed(): Promise<void> {
    this.draining = true;
    try {
      await this.drainPendingFreedList();
    } finally {
      this.draining = false;
    }
  }

  private async drainPendingFreedList(): Promise<void> {
    await drainList(this.w, this.sb.serverMetaFreed[1], this.sb.metaAlloc[1],
      (blkno) => this.alloc.freeCommitted(this.w, blkno));
    this.sb.serverMetaFreed[1] = emptyListHead();
  }


  /** Data device extents, allocated in this transaction. */
  get dataAlloc(): AllocRoot {
    return this.sb.dataAlloc;
  }

  async commit(): Promise<void> {
    assert(!this.done, "transaction already ended");
    const dev = this.vol.meta;
    try {
      await this.drainPendingFreed();
      await this.refillAvail(this.w);
      this.sb.serverMetaFreed[1] = this.sb.serverMetaFreed[0];
      this.sb.serverMetaFreed[0] = emptyListHead();
      this.alloc.freed = this.sb.serverMetaFreed[0];
      // seqs handed out during the transaction (by the server) may be past the txn's own
      this.sb.seq = Math.max(this.sb.seq, this.w.seq);
      this.sb.hdr.seq = this.w.seq;
      await this.w.writeDirty();
      await dev.flush();
      await writeSuperTo(dev, this.sb, true);
      await dev.flush();
    } catch (e) {
      this.abandon();
      throw e;
    }
    this.w.markClean();
    this.done = true;
    this.vol.counters.inc("server_commit");
    this.vol.endTxn(this.sb);
  }

  /** Drops every change of this transaction; the volume stays as last committed. */
  abandon(): void {
    if (this.done) return;
    this.done = true;
    this.w.abandon();
    this.vol.endTxn(null);
  }
}
