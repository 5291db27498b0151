/*
 * What the kernel caches of a scoutfs mount, tracked so that a revoked cluster lock can
 * invalidate it (issue 4 point 3; reference/fuse.md "Reverse notifications").
 *
 * The kernel keeps attributes and pages per node id and dentries per (parent, name) for as
 * long as the entry/attribute validity we reply with. Those validities are long (the cluster
 * locks, not timers, keep them coherent, as upstream's VFS caches are), so when this mount
 * loses a lock on an inode group, everything the kernel may hold under it is invalidated:
 * NOTIFY_INVAL_INODE for every node of the group the kernel holds (attributes and page
 * cache), NOTIFY_INVAL_ENTRY for every name handed out under a directory of the group.
 *
 * The name set is bounded (KCACHE_NAMES_MAX): a name pushed out is invalidated in the kernel
 * right away, so the kernel never holds a dentry we could not invalidate later. Node ids are
 * tracked while their lookup count is nonzero (the core's InodeRefs counts them; this file
 * only groups them by lock group).
 *
 * Notifications are sent by the session off the serving path (NotifyQueue); an invalidation
 * never waits for them (a notification may make the kernel write dirty pages back, which
 * needs this daemon to serve WRITE requests).
 */

import { LOCK_INODE_GROUP_NR } from "../core/lock_names.js";

/** Names (parent, name) remembered for invalidation at most. */
export const KCACHE_NAMES_MAX = 1 << 20;

export interface KernelNotifier {
  invalInode(ino: number): void;
  invalEntry(parent: number, name: Buffer): void;
}

export class KernelCacheTracker {
  /** Lock group -> node ids the kernel holds in it. */
  private readonly groups = new Map<bigint, Set<number>>();
  /** Parent node id -> names handed out under it (insertion order = age). */
  private readonly names = new Map<number, Set<string>>();
  /** Lock group -> parents with names in `names` (the root is never "held" but has names). */
  private readonly parentGroups = new Map<bigint, Set<number>>();
  private nameCount = 0;
  /** FIFO of (parent, name) for the bound, lazily pruned. */
  private readonly fifo: [number, string][] = [];
  private fifoHead = 0;

  constructor(private readonly notifier: KernelNotifier) {}

  /** The kernel took a reference on ino (first lookup). */
  nodeHeld(ino: number): void {
    const g = BigInt(ino) / LOCK_INODE_GROUP_NR;
    let s = this.groups.get(g);
    if (s === undefined) {
      s = new Set();
      this.groups.set(g, s);
    }
    s.add(ino);
  }

  /** The kernel forgot ino entirely (lookup count back to 0). */
  nodeDropped(ino: number): void {
    const g = BigInt(ino) / LOCK_INODE_GROUP_NR;
    const s = this.groups.get(g);
    if (s === undefined) return;
    s.delete(ino);
    if (s.size === 0) this.groups.delete(g);
    // the kernel dropped this directory's inode, and with it every dentry under it
    const n = this.names.get(ino);
    if (n !== undefined) this.dropParent(ino, n);
  }

  /** A dentry (parent, name) was handed to the kernel. */
  nameHeld(parent: number, name: Buffer): void {
    const key = name.toString("latin1");
    let s = this.names.get(parent);
    if (s === undefined) {
      s = new Set();
      this.names.set(parent, s);
      const g = BigInt(parent) / LOCK_INODE_GROUP_NR;
      let pg = this.parentGroups.get(g);
      if (pg === undefined) {
        pg = new Set();
        this.parentGroups.set(g, pg);
      }
      pg.add(parent);
    }
    if (s.has(key)) return;
    s.add(key);
    this.nameCount++;
    this.fifo.push([parent, key]);
    while (this.nameCount > KCACHE_NAMES_MAX) this.evictOldest();
    if (this.fifoHead > 4096 && this.fifoHead * 2 > this.fifo.length) {
      this.fifo.splice(0, this.fifoHead);
      this.fifoHead = 0;
    }
    // names dropped by nameGone/invalidation leave stale FIFO slots: rebuild when they
    // dominate, so the FIFO stays within twice the name bound
    if (this.fifo.length - this.fifoHead > 2 * Math.max(this.nameCount, 4096)) this.rebuildFifo();
  }

  /** The name no longer exists (unlink/rename through this mount): stop tracking it. */
  nameGone(parent: number, name: Buffer): void {
    const s = this.names.get(parent);
    if (s?.delete(name.toString("latin1")) === true) this.nameCount--;
  }

  /** Invalidates everything the kernel holds under inode lock groups [first, last]. */
  invalidateGroups(firstGroup: bigint, lastGroup: bigint): number {
    let sent = 0;
    for (const [g, inos] of this.groups) {
      if (g < firstGroup || g > lastGroup) continue;
      for (const ino of inos) {
        this.notifier.invalInode(ino);
        sent++;
      }
    }
    for (const [g, parents] of [...this.parentGroups]) {
      if (g < firstGroup || g > lastGroup) continue;
      for (const p of [...parents]) sent += this.invalidateNamesUnder(p);
    }
    return sent;
  }

  /** Invalidates one inode's attributes/pages and the names under it (local changes made
   * behind the kernel's back, e.g. by control-socket requests). */
  invalidateNode(ino: number): void {
    this.notifier.invalInode(ino);
    this.invalidateNamesUnder(ino);
  }

  get trackedNames(): number {
    return this.nameCount;
  }

  private invalidateNamesUnder(parent: number): number {
    const s = this.names.get(parent);
    if (s === undefined) return 0;
    for (const n of s) this.notifier.invalEntry(parent, Buffer.from(n, "latin1"));
    this.dropParent(parent, s);
    return s.size;
  }

  private dropParent(parent: number, s: Set<string>): void {
    this.names.delete(parent);
    this.nameCount -= s.size;
    const g = BigInt(parent) / LOCK_INODE_GROUP_NR;
    const pg = this.parentGroups.get(g);
    pg?.delete(parent);
    if (pg?.size === 0) this.parentGroups.delete(g);
  }

  private rebuildFifo(): void {
    const live: [number, string][] = [];
    const seen = new Set<string>();
    for (let i = this.fifoHead; i < this.fifo.length; i++) {
      const e = this.fifo[i];
      if (e === undefined) continue;
      const id = `${e[0]}/${e[1]}`;
      if (seen.has(id) || this.names.get(e[0])?.has(e[1]) !== true) continue;
      seen.add(id);
      live.push(e);
    }
    this.fifo.length = 0;
    for (const e of live) this.fifo.push(e);
    this.fifoHead = 0;
  }

  private evictOldest(): void {
    while (this.fifoHead < this.fifo.length) {
      const e = this.fifo[this.fifoHead++];
      if (e === undefined) break;
      const [parent, key] = e;
      const s = this.names.get(parent);
      if (s?.delete(key) !== true) continue;
      this.nameCount--;
      if (s.size === 0) this.dropParent(parent, s);
      this.notifier.invalEntry(parent, Buffer.from(key, "latin1"));
      return;
    }
  }
}
