/*
 * Who still holds an inode, and deleting an unlinked inode's items once no mount does
 * (upstream inode.c orphan handling and try_delete_inode_items, with omap.c's open map).
 *
 * An inode whose nlink reached 0 got an ORPHAN item in the same transaction (dropLink). Its
 * items stay while any mount holds references: kernel lookups (FUSE lookup counts) and open
 * file handles. This mount counts its own here and mirrors them in the client's open map
 * (omap.ts: a bit per held inode, per 1024-inode group), which other mounts' deleters read
 * through the server. When the last local reference goes (or this mount unlinked an inode
 * it did not hold), deletion is tried: under the group's WRITE lock, with nlink 0 read under
 * it, the server is asked for the OR of the other mounts' maps of the group (OPEN_INO_MAP);
 * only a clear bit lets it go on. A failed or timed-out answer means "maybe held": the
 * inode stays, and the orphan scanner of some mount (orphan_scan.ts) tries again later, as
 * it does for inodes held by another mount when this one unlinked them.
 *
 * Deletion removes every FS-zone item of the inode (xattrs, symlink parts, data extents via
 * the truncate hook, leftover entries), then in the final transaction the inode item, its
 * index items and the orphan item. It spans as many transactions as it needs and is
 * resumable: an orphan item left by a crash is found by the scanner (or scanOrphans()).
 *
 * Invariant: an inode is deleted only under its group's WRITE lock with nlink 0 read under
 * that lock, no local reference, and the open map gathered under that lock grant showing no
 * other mount holding it. Bounded: the reference table holds only inodes with references;
 * the cache of gathered maps holds OMAP_MAP_CACHE_GROUPS groups.
 */
import { assert } from "../../util/assert.js";
import { FsError } from "../../util/errno.js";
import { FsType, keyFields, makeKey, orphanKey, OrphanType, U64_MAX, Zone } from "../key.js";
import { LockMode } from "../lock_msg.js";
import { ROOT_INO } from "../mkfs.js";
import { isReg } from "./format.js";
import type { TruncateHook } from "./inode.js";
import { omapBitSet, omapGroupOf, requestOpenInoMap } from "../omap.js";
import { inos, type OpCtx, type OpRunner } from "./op.js";

/** Items deleted per transaction while deleting an inode. */
export const DELETE_BATCH_ITEMS = 512;
/** Transactions one deletion runs before yielding (it resumes from the orphan scan). */
export const DELETE_MAX_BATCHES = 1024;
/** Orphans one scan looks at. */
export const ORPHAN_SCAN_MAX = 1024;
/** Gathered open maps kept for reuse while their lock grant lasts (see omap.ts). */
export const OMAP_MAP_CACHE_GROUPS = 64;

/**
 * What one deletion attempt found: deleted now; absent (deleted before); linked (nlink > 0);
 * held (this or another mount holds it); unknown (the open map could not be had).
 */
export type DeleteOutcome = "deleted" | "absent" | "linked" | "held" | "unknown";

interface Refs {
  lookups: number;
  opens: number;
}

export class InodeRefs {
  private readonly refs = new Map<bigint, Refs>();
  /** Inodes deleted by this mount (also counted as inode_deleted). */
  deleted = 0;
  /** Open maps gathered under a WRITE grant of their group, keyed by group (see omap.ts). */
  private readonly mapCache = new Map<bigint, { writeSeq: number; bits: Buffer }>();

  constructor(private readonly runner: OpRunner, private readonly truncate: TruncateHook) {}

  /** True if this mount holds a lookup or an open of ino. */
  held(ino: bigint): boolean {
    return this.refs.has(ino);
  }

  counts(ino: bigint): Refs {
    const r = this.refs.get(ino);
    return r ? { ...r } : { lookups: 0, opens: 0 };
  }

  lookup(ino: bigint, n: number): void {
    assert(Number.isSafeInteger(n) && n > 0, "lookup count");
    this.entry(ino).lookups += n;
  }

  open(ino: bigint): void {
    this.entry(ino).opens++;
  }

  async forget(ino: bigint, n: number): Promise<void> {
    const r = this.refs.get(ino);
    if (r === undefined) return; // forgetting what was never counted (the root): nothing
    r.lookups = Math.max(0, r.lookups - n);
    await this.dropped(ino, r);
  }

  async release(ino: bigint): Promise<void> {
    const r = this.refs.get(ino);
    assert(r !== undefined && r.opens > 0, "release without open");
    r.opens--;
    await this.dropped(ino, r);
  }

  /** Deletes ino if it is unlinked and this mount holds no reference. */
  async maybeDelete(ino: bigint): Promise<void> {
    if (!this.refs.has(ino)) await this.deleteInode(ino);
  }

  /**
   * Deletes every orphaned inode no mount holds, its orphan items read through the forest
   * (this mount's uncommitted ones included), not only the merged fs_root the background
   * scanner reads (orphan_scan.ts): for tests and tools, after a crash or a lost race.
   */
  async scanOrphans(): Promise<number> {
    const c = this.runner.client;
    let n = 0;
    let key = orphanKey(0n);
    const end = makeKey(Zone.ORPHAN, 0n, OrphanType.ORPHAN, U64_MAX, U64_MAX, 255);
    for (let i = 0; i < ORPHAN_SCAN_MAX; i++) {
      const it = await c.next(key, end);
      if (it === null) break;
      const ino = keyFields(it.key).second;
      if (!this.refs.has(ino) && await this.deleteInode(ino)) n++;
      if (ino === U64_MAX) break;
      key = orphanKey(ino + 1n);
    }
    return n;
  }

  private entry(ino: bigint): Refs {
    let r = this.refs.get(ino);
    if (r === undefined) {
      r = { lookups: 0, opens: 0 };
      this.refs.set(ino, r);
      this.runner.client.omap.inc(ino);
    }
    return r;
  }

  private async dropped(ino: bigint, r: Refs): Promise<void> {
    if (r.lookups > 0 || r.opens > 0) return;
    this.refs.delete(ino);
    this.runner.client.omap.dec(ino);
    // the common case (the kernel forgets a linked inode) answered from the item cache
    // without a lock; an unlink this mount makes later deletes it itself (maybeDelete)
    const cached = this.runner.peekInode(ino);
    if (cached !== undefined && cached !== null && cached.nlink > 0) return;
    await this.deleteInode(ino);
  }

  /** Deletes the inode's items if nobody holds it; true if this call deleted it. */
  private async deleteInode(ino: bigint): Promise<boolean> {
    return (await this.tryDelete(ino)) === "deleted";
  }

  /**
   * Deletes the inode's items in batches if its nlink is 0 and no mount holds it. Stops if
   * it was relinked or a reference appeared meanwhile; EAGAIN after DELETE_MAX_BATCHES
   * transactions (the orphan scan resumes it).
   */
  async tryDelete(ino: bigint): Promise<DeleteOutcome> {
    if (ino === ROOT_INO) return "linked";
    const state = { omapChecked: false };
    for (let batch = 0; batch < DELETE_MAX_BATCHES; batch++) {
      if (this.refs.has(ino)) return "held";
      const r = await this.runner.run({ inos: inos([ino, LockMode.WRITE]) },
        (ctx) => this.deleteBatch(ctx, ino, state));
      if (r === "more") continue;
      if (r === "deleted") {
        this.deleted++;
        this.runner.client.counters.inc("inode_deleted");
      }
      return r;
    }
    throw new FsError("EAGAIN", "inode deletion continues later");
  }

  /**
   * One transaction of a deletion, under the group's WRITE lock. The open map is checked
   * once per attempt: after a clear bit with nlink 0 nobody can gain a reference (no entry
   * leads to the inode), so later batches need not ask again.
   */
  private async deleteBatch(ctx: OpCtx, ino: bigint, state: { omapChecked: boolean }):
    Promise<DeleteOutcome | "more"> {
    const v = await ctx.inode(ino, LockMode.WRITE);
    if (v === null) {
      // deleted before; its orphan item goes with the inode item, so one is left only by a
      // deletion not merged yet, or by an older volume: removed if still current
      if (await this.runner.client.lookup(orphanKey(ino)) !== null) ctx.orphan(ino, false);
      return "absent";
    }
    if (v.nlink !== 0) return "linked";
    if (!state.omapChecked) {
      const other = await this.heldElsewhere(ctx, ino);
      if (other !== "free") return other;
      // a reference of this mount may have come while the server was asked
      if (this.refs.has(ino)) return "held";
      state.omapChecked = true;
    }
    // data extents first (preallocated ones too, even at size 0), their blocks freed in
    // batches: true means more remain for the next batch
    if (isReg(v.mode) && await this.truncate(ctx, ino, v.size, 0n) === true) return "more";
    const start = makeKey(Zone.FS, ino, FsType.INODE + 1);
    const end = makeKey(Zone.FS, ino, 255, U64_MAX, U64_MAX, 255);
    const items = await ctx.range(start, end, ino, DELETE_BATCH_ITEMS);
    for (const it of items) ctx.del(it.key, ino);
    if (items.length === DELETE_BATCH_ITEMS) return "more";
    ctx.deleteInode(ino);
    ctx.orphan(ino, false);
    return "deleted";
  }

  /**
   * Whether another mount holds ino, from the open map of its group gathered under the
   * WRITE grant the caller holds (reused while that grant lasts: bits of nlink-0 inodes can
   * only clear during it). "unknown" when the server could not gather it.
   */
  private async heldElsewhere(ctx: OpCtx, ino: bigint): Promise<"free" | "held" | "unknown"> {
    const { groupNr, bit } = omapGroupOf(ino);
    const writeSeq = ctx.need(ino, LockMode.WRITE).writeSeq;
    let bits = this.mapCache.get(groupNr)?.writeSeq === writeSeq
      ? this.mapCache.get(groupNr)!.bits : null;
    if (bits === null) {
      bits = await requestOpenInoMap(this.runner.client, groupNr);
      if (bits === null) return "unknown";
      this.mapCache.delete(groupNr);
      this.mapCache.set(groupNr, { writeSeq, bits });
      while (this.mapCache.size > OMAP_MAP_CACHE_GROUPS) {
        this.mapCache.delete(this.mapCache.keys().next().value!);
      }
    }
    if (!omapBitSet(bits, bit)) return "free";
    this.runner.client.counters.inc("omap_inode_held");
    return "held";
  }
}
