/*
 * A mount's client side of the cluster engine (upstream client.c + trans.c, reduced to what
 * exists so far): the connection to the server, the mount's transaction over its own log
 * tree, and forest reads.
 *
 * A transaction is opened by GET_LOG_TREES, which hands the mount its log_trees struct: alloc
 * lists and data extents the server filled for it, its item btree, a fresh seq. Item changes
 * collect in memory (the dirty set, bounded); commit() writes them sorted into the log btree
 * with blocks from the mount's own avail list (COW, so the committed tree is untouched), sets
 * the bloom bits of their lock ranges, writes and flushes the blocks, then sends the new roots
 * with COMMIT_LOG_TREES. The transaction is durable once the server's commit of that request
 * is; only then are the items clean and the next transaction opened. No shared block is ever
 * written by two mounts: each writes only blocks from its own lists.
 *
 * Item versions: every item written in a transaction gets at least the transaction's seq (the
 * lock layer raises it to the lock's write_seq when that is greater), so "newest seq wins"
 * orders versions across mounts' independently committed trees.
 */
import type { BlockDevice, Env, NetAddr } from "../env/env.js";
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { FsError } from "../util/errno.js";
import { ListAllocator } from "./alloc.js";
import { BlockCache, MetaTxn, withStaleRetry } from "./block.js";
import { btreeInsertList, type Item, ITEM_DELETION } from "./btree.js";
import { BTREE_MAX_VAL_LEN } from "./btree_block.js";
import { decodeLogTrees, encodeLogTrees, type LogTrees } from "./format_log.js";
import { bloomAdd, forestLookup, type ForestRoots, lockStartFor } from "./forest.js";
import { NetCmd } from "./msg.js";
import { NetClient } from "./net.js";
import { decodeRoots } from "./server.js";
import { type HeldLock, LockClient, lockItemSeq } from "./lock.js";

export interface MountClientOptions {
  fsid: bigint;
  fmtVers: number;
  rid: bigint;
  quorum: boolean;
  getServerAddr: () => Promise<NetAddr>;
  cacheBytes?: number;
  totalMetaBlocks: number;
}

/** Dirty items held before a commit is forced (bounds memory and commit size). */
export const MAX_DIRTY_ITEMS = 100_000;

export class MountClient {
  readonly net: NetClient;
  readonly cache: BlockCache;
  readonly locks: LockClient;
  private lt: LogTrees | null = null;
  private txn: MetaTxn | null = null;
  private dirty = new Map<string, Item>();
  private committing: Promise<void> | null = null;

  constructor(readonly env: Env, readonly meta: BlockDevice, readonly counters: Counters,
    readonly opts: MountClientOptions) {
    this.cache = new BlockCache(meta, opts.fsid, counters, opts.cacheBytes ?? 64 * 1024 * 1024,
      opts.totalMetaBlocks);
    this.net = new NetClient(env, counters, { fsid: opts.fsid, fmtVers: opts.fmtVers, rid: opts.rid,
      quorum: opts.quorum, getServerAddr: opts.getServerAddr, name: `client-${opts.rid.toString(16)}`,
      onConnected: (term, newServer) => { if (newServer) this.locks.serverChanged(term); } });
    this.locks = new LockClient({
      env, counters, name: `locks-${opts.rid.toString(16)}`,
      transport: { request: (p) => this.net.request(NetCmd.LOCK, p), serverTerm: () => this.net.serverTerm },
      // a lock dirtied the open transaction: commit it so the next holder reads our writes;
      // reads go through the forest each time, so there is no item cache to drop yet
      onInvalidate: async (_range, _mode, dirtied) => { if (dirtied) await this.commit(); },
    });
    this.net.register(NetCmd.LOCK, (p) => this.locks.handleInvalidate(p));
    this.net.register(NetCmd.LOCK_RECOVER, (p) => this.locks.handleRecover(p));
  }

  /**
   * Records a new version of key under a held WRITE or WRITE_ONLY lock: its seq is the lock's
   * write_seq when that is greater than the transaction's, which makes it newer than every
   * version another mount wrote under an earlier grant.
   */
  putLocked(held: HeldLock, key: Buffer, val: Buffer): void {
    assert(this.lt, "no open transaction");
    this.put(key, val, lockItemSeq(held, this.lt.getTransSeq));
    this.locks.markDirtied(held, this.lt.getTransSeq);
  }

  /** Connects to the server and opens the first transaction. */
  async mount(): Promise<void> {
    // the server asks for a commit when it finalizes log trees for merging; answer at once
    this.net.register(NetCmd.SYNC_LOG_TREES, () => {
      this.commit().catch((e: unknown) => {
        this.env.logger.log("warn", `commit asked by the server failed: ${String(e)}`);
      });
      return Buffer.alloc(0);
    });
    this.net.start();
    await this.openTrans();
  }

  get transSeq(): number {
    assert(this.lt, "no open transaction");
    return this.lt.getTransSeq;
  }

  get dirtyCount(): number {
    return this.dirty.size;
  }

  private async openTrans(): Promise<void> {
    const lt = decodeLogTrees(await this.net.request(NetCmd.GET_LOG_TREES, Buffer.alloc(0)));
    if (lt.rid !== this.opts.rid) throw new FsError("EPROTO", "server opened another mount's log tree");
    this.lt = lt;
    this.txn = new MetaTxn(this.cache, lt.getTransSeq, new ListAllocator(lt.metaAvail, lt.metaFreed));
    this.counters.inc("trans_open");
  }

  /** Records a new version of key in the open transaction (seq at least the txn's). */
  put(key: Buffer, val: Buffer, seq = 0): void {
    if (val.length > BTREE_MAX_VAL_LEN) throw new FsError("EINVAL", "item value too large");
    this.record({ key: Buffer.from(key), val: Buffer.from(val), seq, flags: 0 });
  }

  /** Records a deletion (a tombstone that hides older versions in other trees). */
  delete(key: Buffer, seq = 0): void {
    this.record({ key: Buffer.from(key), val: Buffer.alloc(0), seq, flags: ITEM_DELETION });
  }

  private record(it: Item): void {
    assert(this.lt, "no open transaction");
    if (this.dirty.size >= MAX_DIRTY_ITEMS && !this.dirty.has(it.key.toString("hex"))) {
      throw new FsError("EAGAIN", "transaction full: commit first");
    }
    it.seq = Math.max(it.seq, this.lt.getTransSeq);
    this.dirty.set(it.key.toString("hex"), it);
  }

  /** Commits the open transaction (concurrent callers share one commit) and opens the next. */
  async commit(): Promise<void> {
    while (this.committing) await this.committing;
    this.committing = this.commitOnce();
    try {
      await this.committing;
    } finally {
      this.committing = null;
    }
  }

  private async commitOnce(): Promise<void> {
    const lt = this.lt;
    const w = this.txn;
    assert(lt && w, "no open transaction");
    const items = [...this.dirty.values()].sort((a, b) => Buffer.compare(a.key, b.key));
    // items recorded while no transaction was open carry an older seq: never below this txn's
    for (const it of items) it.seq = Math.max(it.seq, lt.getTransSeq);
    const taken = this.dirty;
    this.dirty = new Map();
    try {
      await btreeInsertList(w, lt.itemRoot, items);
      const starts = new Map(items.map((it) => [lockStartFor(it.key).toString("hex"), lockStartFor(it.key)]));
      if (starts.size > 0) lt.bloomRef = await bloomAdd(w, lt.bloomRef, [...starts.values()]);
      lt.maxItemSeq = Math.max(lt.maxItemSeq, ...items.map((i) => i.seq));
      await w.writeDirty();
      await this.meta.flush();
      await this.net.request(NetCmd.COMMIT_LOG_TREES, encodeLogTrees(lt));
    } catch (e) {
      // nothing was committed: the items stay dirty for the next attempt
      w.abandon();
      for (const [k, v] of taken) if (!this.dirty.has(k)) this.dirty.set(k, v);
      this.txn = null;
      await this.openTrans();
      throw e;
    }
    w.markClean();
    this.locks.transCommitted(lt.getTransSeq);
    this.counters.inc("trans_commit");
    await this.openTrans();
  }

  /** The last committed roots, from the server. */
  async getRoots(): Promise<ForestRoots> {
    return decodeRoots(await this.net.request(NetCmd.GET_ROOTS, Buffer.alloc(0)));
  }

  /** The current value of key: this mount's dirty version, else the committed forest's. */
  async lookup(key: Buffer): Promise<Buffer | null> {
    const d = this.dirty.get(key.toString("hex"));
    if (d) return (d.flags & ITEM_DELETION) !== 0 ? null : Buffer.from(d.val);
    return withStaleRetry(this.counters, () => this.getRoots(),
      (a, b) => a.fsRoot.ref.seq === b.fsRoot.ref.seq && a.logsRoot.ref.seq === b.logsRoot.ref.seq &&
        a.fsRoot.ref.blkno === b.fsRoot.ref.blkno && a.logsRoot.ref.blkno === b.logsRoot.ref.blkno,
      (roots) => forestLookup(this.cache, roots, key, this.counters));
  }

  /** Inode numbers from the server: [ino, ino + nr). */
  async allocInodes(count: number): Promise<{ ino: bigint; nr: bigint }> {
    const p = Buffer.alloc(8);
    p.writeBigUInt64LE(BigInt(count), 0);
    const r = await this.net.request(NetCmd.ALLOC_INODES, p);
    return { ino: r.readBigUInt64LE(0), nr: r.readBigUInt64LE(8) };
  }

  /** Commits what is dirty, says farewell and disconnects. */
  async unmount(): Promise<void> {
    if (this.dirty.size > 0) await this.commit();
    this.locks.shutdown();
    await this.net.farewell();
    this.net.shutdown();
  }
}
