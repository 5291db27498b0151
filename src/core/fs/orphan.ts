/*
 * Who still holds an inode, and deleting an unlinked inode's items once nobody does
 * (upstream inode.c orphan handling; the cluster-wide open map is later work).
 *
 * An inode whose nlink reached 0 got an ORPHAN item in the same transaction (dropLink). Its
 * items stay while this mount holds references: kernel lookups (FUSE lookup counts) and open
 * file handles. When the last goes, deletion runs: every FS-zone item of the inode (xattrs,
 * symlink parts, data extents via the truncate hook, leftover entries), then in the final
 * transaction the inode item, its index items and the orphan item. Deletion spans as many
 * transactions as it needs and is resumable: an orphan item left by a crash is found by
 * scanOrphans(), which deletes what no local reference holds.
 *
 * Invariant: an inode is deleted only under its group's WRITE lock with nlink 0 read under
 * that lock. Bounded: the reference table holds only inodes with references.
 */
import { assert } from "../../util/assert.js";
import { FsError } from "../../util/errno.js";
import { FsType, keyFields, makeKey, orphanKey, OrphanType, U64_MAX, Zone } from "../key.js";
import { LockMode } from "../lock_msg.js";
import { ROOT_INO } from "../mkfs.js";
import { isReg } from "./format.js";
import type { TruncateHook } from "./inode.js";
import { inos, type OpRunner } from "./op.js";

/** Items deleted per transaction while deleting an inode. */
export const DELETE_BATCH_ITEMS = 512;
/** Transactions one deletion runs before yielding (it resumes from the orphan scan). */
export const DELETE_MAX_BATCHES = 1024;
/** Orphans one scan looks at. */
export const ORPHAN_SCAN_MAX = 1024;

interface Refs {
  lookups: number;
  opens: number;
}

export class InodeRefs {
  private readonly refs = new Map<bigint, Refs>();
  /** Inodes deleted by this mount (the inode_deleted counter). */
  deleted = 0;

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

  /** Deletes every orphaned inode this mount does not hold (after a crash, or a lost race). */
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
    }
    return r;
  }

  private async dropped(ino: bigint, r: Refs): Promise<void> {
    if (r.lookups > 0 || r.opens > 0) return;
    this.refs.delete(ino);
    // the common case (the kernel forgets a linked inode) answered from the item cache
    // without a lock; an unlink this mount makes later deletes it itself (maybeDelete)
    const cached = this.runner.peekInode(ino);
    if (cached !== undefined && cached !== null && cached.nlink > 0) return;
    await this.deleteInode(ino);
  }

  /**
   * Deletes the inode's items in batches if its nlink is 0; true once it is gone. Stops
   * (false) if it was relinked or a reference appeared meanwhile.
   */
  private async deleteInode(ino: bigint): Promise<boolean> {
    if (ino === ROOT_INO) return false;
    for (let batch = 0; batch < DELETE_MAX_BATCHES; batch++) {
      if (this.refs.has(ino)) return false;
      const r = await this.runner.run({ inos: inos([ino, LockMode.WRITE]) }, async (ctx) => {
        const v = await ctx.inode(ino, LockMode.WRITE);
        if (v === null) {
          ctx.orphan(ino, false); // items already gone: only the orphan item was left
          return "gone";
        }
        if (v.nlink !== 0) return "linked";
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
        return "gone";
      });
      if (r === "linked") return false;
      if (r === "gone") {
        this.deleted++;
        return true;
      }
    }
    throw new FsError("EAGAIN", "inode deletion continues later");
  }
}
