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
 * Reads: the dirty items live in the item cache (src/core/item_cache.ts) with the clean
 * items read under cluster locks. lookupLocked/nextLocked/prevLocked/rangeLocked read under
 * a READ or WRITE lock the caller holds and are served from the cache, filled from the forest
 * on a miss; the invalidation hook commits what the lock dirtied and then drops the range
 * (a downgrade to READ keeps it). lookup/next/prev without a lock read the forest each time
 * (plus this mount's dirty items) and cache nothing.
 *
 * Item versions: every item written in a transaction gets at least the transaction's seq (the
 * lock layer raises it to the lock's write_seq when that is greater), so "newest seq wins"
 * orders versions across mounts' independently committed trees.
 */
import type { BlockDevice, Env, NetAddr, TimerHandle } from "../env/env.js";
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { FsError } from "../util/errno.js";
import { ListAllocator } from "./alloc.js";
import { BlockCache, MetaTxn, withStaleRetry } from "./block.js";
import { DataTrans } from "./data_alloc.js";
import { btreeInsertList, type Item, ITEM_DELETION, ITEM_DELTA } from "./btree.js";
import { BTREE_MAX_VAL_LEN } from "./btree_block.js";
import { decodeDelta } from "./btree_merge.js";
import { decodeLogTrees, encodeLogTrees, type LogTrees } from "./format_log.js";
import {
  addLoggedDeltas, bloomAdd, forestNewest, forestNext, forestPrev, forestRange, forestRangeBack,
  type ForestRoots, lockStartFor,
} from "./forest.js";
import {
  addDirtyDelta, ITEM_CACHE_FILL_ITEMS, ITEM_CACHE_FILL_RETRIES, ItemCache, type KeyVal,
} from "./item_cache.js";
import { compareKeys, keyDec, keyInc, MAX_KEY, MIN_KEY } from "./key.js";
import { LockMode, lockModeName } from "./lock_msg.js";
import { type LockRange, rangeContainsKey } from "./lock_names.js";
import { NetCmd } from "./msg.js";
import { type MergeWorker, startMergeWorker } from "./merge_client.js";
import { NetClient, type NetTuning } from "./net.js";
import { OpenInoMaps, serveOpenInoMap } from "./omap.js";
import { decodeRoots } from "./server.js";
import { type HeldLock, LockClient, lockItemSeq, type LockModeChange } from "./lock.js";

export interface MountClientOptions {
  fsid: bigint;
  fmtVers: number;
  rid: bigint;
  quorum: boolean;
  getServerAddr: () => Promise<NetAddr>;
  cacheBytes?: number;
  /** Byte bound of the item cache (default ITEM_CACHE_DEFAULT_BYTES). */
  itemCacheBytes?: number;
  totalMetaBlocks: number;
  /** The data device (4 KiB blocks of file data); without it files cannot hold data. */
  data?: BlockDevice;
  /** Messaging timeouts (tests shorten them). */
  netTuning?: Partial<NetTuning>;
  /** The commit timer (default TRANS_SYNC_DELAY_MS). */
  commitDelayMs?: number;
  /** Every change of a lock's mode at this mount (checkers watch grants). */
  onLockModeChange?: (c: LockModeChange) => void;
  /**
   * Called when a lock is lowered, after its items were written out and dropped and before
   * the server is answered: the host drops what its own caches (the kernel's) hold under the
   * range, so nothing stale is served once another mount may change it.
   */
  onInvalidateRange?: (range: LockRange, newMode: LockMode) => Promise<void>;
}

/** Dirty items held before a commit is forced (bounds memory and commit size). */
export const MAX_DIRTY_ITEMS = 100_000;
/** Dirty items are committed at most this long after the first (upstream TRANS_SYNC_DELAY). */
export const TRANS_SYNC_DELAY_MS = 10_000;
/** Metadata blocks a commit may need beyond its items' leaves (paths, bloom, list blocks). */
export const COMMIT_META_RESERVE = 16;
/** Dirty items assumed per metadata block written (<= 1 KiB items in half-full 64 KiB leaves). */
const ITEMS_PER_DIRTY_BLOCK = 32;
/** Lock-less iteration steps re-read after racing a commit before giving up (EAGAIN). */
export const UNLOCKED_READ_RETRIES = 16;

export class MountClient {
  readonly net: NetClient;
  readonly cache: BlockCache;
  readonly locks: LockClient;
  private lt: LogTrees | null = null;
  private txn: MetaTxn | null = null;
  /** Clean items read under locks and the dirty items of the open transaction. */
  readonly items: ItemCache;
  /** The log merge worker, started by mount() (public so tests can stop or retune it). */
  mergeWorker: MergeWorker | null = null;
  private committing: Promise<void> | null = null;
  /**
   * The transaction that items recorded now belong to, for the locks' dirty tracking: the
   * open one's seq, or, from the moment a commit took its items until the next transaction
   * is open, one past the committing seq (those items go to the next transaction, whose seq
   * the server makes greater; attributing them to the committing one would let a lock
   * believe they were committed and skip the commit its invalidation needs).
   */
  private recordSeq = 0;
  /**
   * this.lt/this.txn are a transaction the server opened and nobody committed yet. False
   * after a commit until GET_LOG_TREES succeeds: committing the old, already committed
   * transaction again would look like a resend to the server, which acknowledges it without
   * recording anything, and its items would be lost.
   */
  private transOpen = false;
  private commitTimer: TimerHandle | null = null;
  private shutDown = false;
  /** The data device, and the data allocator and holds of the transaction (data_alloc.ts). */
  readonly dataDev: BlockDevice | null;
  readonly dataTrans: DataTrans;
  /**
   * The inodes this mount holds, per inode group (omap.ts): the namespace layer counts its
   * references here and the server asks for a group's bitmap (OPEN_INO_MAP) before another
   * mount deletes an unlinked inode. Without a namespace layer nothing is held.
   */
  readonly omap = new OpenInoMaps();

  constructor(readonly env: Env, readonly meta: BlockDevice, readonly counters: Counters,
    readonly opts: MountClientOptions) {
    this.dataDev = opts.data ?? null;
    this.dataTrans = new DataTrans({
      env, counters,
      open: () => (this.transOpen && this.txn && this.lt ? { w: this.txn, lt: this.lt } : null),
      ensureOpen: () => this.commit(),
      requestCommit: () => { this.kickCommit(); },
    });
    this.items = new ItemCache(counters, { maxBytes: opts.itemCacheBytes });
    this.cache = new BlockCache(meta, opts.fsid, counters, opts.cacheBytes ?? 64 * 1024 * 1024,
      opts.totalMetaBlocks);
    this.net = new NetClient(env, counters, { fsid: opts.fsid, fmtVers: opts.fmtVers, rid: opts.rid,
      quorum: opts.quorum, getServerAddr: opts.getServerAddr, name: `client-${opts.rid.toString(16)}`,
      tuning: opts.netTuning,
      onConnected: (term, newServer) => { if (newServer) this.locks.serverChanged(term); } });
    this.locks = new LockClient({
      env, counters, name: `locks-${opts.rid.toString(16)}`,
      transport: { request: (p) => this.net.request(NetCmd.LOCK, p), serverTerm: () => this.net.serverTerm },
      onModeChange: opts.onLockModeChange,
      grantProblem: (range, cachedAllowed) =>
        this.items.grantProblem(range.start, range.end, cachedAllowed),
      // a lock dirtied the open transaction: commit it so the next holder reads our writes,
      // then drop the range's cached items (kept when downgraded to READ: still current)
      onInvalidate: async (range, mode, dirtied) => {
        if (dirtied) await this.commit();
        this.items.invalidate(range.start, range.end, mode === LockMode.READ);
        await opts.onInvalidateRange?.(range, mode);
      },
    });
    this.net.register(NetCmd.LOCK, (p) => this.locks.handleInvalidate(p));
    this.net.register(NetCmd.LOCK_RECOVER, (p) => this.locks.handleRecover(p));
    this.net.register(NetCmd.OPEN_INO_MAP, (p) => serveOpenInoMap(this.omap, p));
  }

  /**
   * Records a new version of key under a held WRITE or WRITE_ONLY lock: its seq is the lock's
   * write_seq when that is greater than the transaction's, which makes it newer than every
   * version another mount wrote under an earlier grant.
   */
  putLocked(held: HeldLock, key: Buffer, val: Buffer, owned = false): void {
    assert(this.lt, "no open transaction");
    this.put(key, val, lockItemSeq(held, this.lt.getTransSeq), owned);
    this.locks.markDirtied(held, this.recordSeq);
  }

  /** Records a deletion of key under a held WRITE or WRITE_ONLY lock (see putLocked). */
  deleteLocked(held: HeldLock, key: Buffer, owned = false): void {
    assert(this.lt, "no open transaction");
    assert(rangeContainsKey(held.range, key), "item deleted outside its lock's range");
    this.delete(key, lockItemSeq(held, this.lt.getTransSeq), owned);
    this.locks.markDirtied(held, this.recordSeq);
  }

  /**
   * Adds a delta ({total, count}, encodeDelta: a .totl. contribution) to key under a held
   * WRITE_ONLY lock. Readers see the sum over every mount's deltas (forest.ts, item_cache.ts).
   */
  deltaLocked(held: HeldLock, key: Buffer, delta: Buffer): void {
    assert(this.lt, "no open transaction");
    assert(held.mode === LockMode.WRITE_ONLY, `delta under a ${lockModeName(held.mode)} lock`);
    assert(rangeContainsKey(held.range, key), "delta outside its lock's range");
    decodeDelta(delta); // asserts its size
    this.record({ key: Buffer.from(key), val: Buffer.from(delta),
      seq: lockItemSeq(held, this.lt.getTransSeq), flags: ITEM_DELTA });
    this.locks.markDirtied(held, this.recordSeq);
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
    this.mergeWorker = startMergeWorker(this); // merges log trees for the server (merge_client.ts)
  }

  get transSeq(): number {
    assert(this.lt, "no open transaction");
    return this.lt.getTransSeq;
  }

  /** Dirty items of the open transaction (not those of a commit in flight). */
  get dirtyCount(): number {
    return this.items.pendingDirtyCount;
  }

  private async openTrans(): Promise<void> {
    const lt = decodeLogTrees(await this.net.request(NetCmd.GET_LOG_TREES, Buffer.alloc(0)));
    if (lt.rid !== this.opts.rid) throw new FsError("EPROTO", "server opened another mount's log tree");
    this.lt = lt;
    this.recordSeq = lt.getTransSeq;
    this.txn = new MetaTxn(this.cache, lt.getTransSeq, new ListAllocator(lt.metaAvail, lt.metaFreed));
    // a failed commit's data allocations are replayed on the transaction handed out again
    await this.dataTrans.opened(this.txn, lt);
    this.transOpen = true;
    this.counters.inc("trans_open");
  }

  /** Records a new version of key in the open transaction (seq at least the txn's). */
  /**
   * With `owned` the caller hands key and val over (fresh buffers it never touches again,
   * as an operation's write phase does): kept as they are instead of copied. The cache and
   * the commits never change an item's buffers, so one value may back several items.
   */
  put(key: Buffer, val: Buffer, seq = 0, owned = false): void {
    if (val.length > BTREE_MAX_VAL_LEN) throw new FsError("EINVAL", "item value too large");
    this.record({ key: owned ? key : Buffer.from(key),
      val: val.length === 0 ? EMPTY_VAL : owned ? val : Buffer.from(val), seq, flags: 0 });
  }

  /** Records a deletion (a tombstone that hides older versions in other trees). */
  delete(key: Buffer, seq = 0, owned = false): void {
    this.record({ key: owned ? key : Buffer.from(key), val: EMPTY_VAL, seq,
      flags: ITEM_DELETION });
  }

  private record(it: Item): void {
    assert(this.lt, "no open transaction");
    if (this.items.pendingDirtyCount >= MAX_DIRTY_ITEMS && !this.items.isPendingDirty(it.key)) {
      throw new FsError("EAGAIN", "transaction full: commit first");
    }
    it.seq = Math.max(it.seq, this.lt.getTransSeq);
    this.items.put(it);
    this.commitTriggers();
  }

  /**
   * Commit triggers besides sync, invalidation and unmount: a timer armed by the first dirty
   * item (commits within TRANS_SYNC_DELAY_MS), and allocator pressure: when the mount's
   * metadata avail list could not hold the blocks the dirty items need, commit now (the next
   * transaction gets a refilled list) instead of failing the commit later.
   */
  private commitTriggers(): void {
    const dirty = this.items.pendingDirtyCount;
    if (dirty === 0) return;
    const avail = this.lt?.metaAvail.totalNr ?? 0;
    if (this.transOpen && !this.committing &&
      avail < COMMIT_META_RESERVE + Math.ceil(dirty / ITEMS_PER_DIRTY_BLOCK)) {
      this.counters.inc("trans_commit_alloc_low");
      this.kickCommit();
      return;
    }
    if (this.commitTimer) return;
    this.commitTimer = this.env.timers.after(this.opts.commitDelayMs ?? TRANS_SYNC_DELAY_MS, () => {
      this.commitTimer = null;
      this.counters.inc("trans_commit_timer");
      this.kickCommit();
    });
  }

  /** A commit nobody waits for: a failure leaves the items dirty for the next trigger. */
  private kickCommit(): void {
    if (this.shutDown) return;
    this.commit().catch((e: unknown) => {
      this.env.logger.log("warn", `background commit failed: ${String(e)}`);
    });
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
    if (this.commitTimer) this.env.timers.clear(this.commitTimer);
    this.commitTimer = null;
    // data holders finish first: their allocations, frees and items share one transaction
    await this.dataTrans.closeGate();
    try {
      await this.commitAndReopen();
    } finally {
      this.dataTrans.openGate();
      // items recorded while it ran, or kept after a failure, are committed by the next trigger
      if (!this.shutDown) this.commitTriggers();
    }
  }

  private async commitAndReopen(): Promise<void> {
    if (!this.transOpen) await this.openTrans(); // the last open after a commit failed
    const lt = this.lt;
    const w = this.txn;
    assert(lt && w && this.transOpen, "no open transaction");
    // sorted copies; the cached entries stay dirty (and readable) until the commit settles
    const items = this.items.beginCommit();
    // items recorded while no transaction was open carry an older seq: never below this txn's
    for (const it of items) it.seq = Math.max(it.seq, lt.getTransSeq);
    this.recordSeq = lt.getTransSeq + 1;
    try {
      await addLoggedDeltas(w.cache, lt.itemRoot, items); // deltas add to earlier commits'
      await btreeInsertList(w, lt.itemRoot, items);
      const starts = new Map(items.map((it) => [lockStartFor(it.key).toString("hex"), lockStartFor(it.key)]));
      if (starts.size > 0) lt.bloomRef = await bloomAdd(w, lt.bloomRef, [...starts.values()]);
      lt.maxItemSeq = Math.max(lt.maxItemSeq, ...items.map((i) => i.seq));
      await this.dataTrans.prepareCommit(w, lt);
      // file data the committed extents reference is durable before they are; the data
      // device's flush runs beside the metadata writes (independent devices: one wait)
      const dataFlushed = this.dataDev && this.dataTrans.needsFlush ? this.dataDev.flush() : null;
      try {
        await w.writeDirty();
        await this.meta.flush();
      } finally {
        await dataFlushed;
      }
      await this.net.request(NetCmd.COMMIT_LOG_TREES, encodeLogTrees(lt));
    } catch (e) {
      // nothing was committed: the items stay dirty for the next attempt
      w.abandon();
      this.items.endCommit(false);
      this.transOpen = false;
      this.counters.inc("trans_commit_failed");
      // the server still has this transaction open (a resent GET_LOG_TREES returns it)
      await this.openTrans().catch(() => undefined);
      throw e;
    }
    this.transOpen = false;
    w.markClean();
    this.items.endCommit(true);
    this.dataTrans.committed();
    this.locks.transCommitted(lt.getTransSeq);
    this.counters.inc("trans_commit");
    // if this fails the next commit opens the transaction first (records need none open)
    await this.openTrans().catch((e: unknown) => {
      this.env.logger.log("warn", `opening the next transaction failed: ${String(e)}`);
    });
  }

  /** The last committed roots, from the server. */
  async getRoots(): Promise<ForestRoots> {
    return decodeRoots(await this.net.request(NetCmd.GET_ROOTS, Buffer.alloc(0)));
  }

  /** The current value of key: this mount's dirty version, else the committed forest's. */
  async lookup(key: Buffer): Promise<Buffer | null> {
    for (let races = 0; races <= UNLOCKED_READ_RETRIES; races++) {
      const epoch = this.items.commitEpoch;
      const d = this.items.getDirty(key);
      if (d && (d.flags & ITEM_DELTA) === 0) {
        return (d.flags & ITEM_DELETION) !== 0 ? null : Buffer.from(d.val);
      }
      // a key not dirty now was committed (if ever written here) before the roots are fetched
      const f = await this.readForest((roots) => forestNewest(this.cache, roots, key,
        this.counters));
      const cur = d === undefined ? f : await this.overDirty(f, d, epoch);
      if (cur === undefined) continue;
      return cur && (cur.flags & ITEM_DELETION) === 0 ? Buffer.from(cur.val) : null;
    }
    throw new FsError("EAGAIN", "lock-less read kept racing with commits");
  }

  /**
   * A lock-less read's version of a key this mount holds dirty (d) over the forest's (f,
   * read from commit epoch `epoch` on): d itself; for a delta, f's value plus d's (null when
   * zero). Undefined when a commit took or settled the dirty items since: d may then be in f
   * as well, or in neither; the caller reads again (after the commit in flight settled).
   */
  private async overDirty(f: Item | null, d: Item, epoch: number):
    Promise<Item | null | undefined> {
    if ((d.flags & ITEM_DELTA) === 0) return d;
    if (this.items.commitInFlight || this.items.commitEpoch !== epoch) {
      await this.committing?.catch(() => undefined);
      return undefined;
    }
    return addDirtyDelta(f !== null && f.key.equals(d.key) ? f : null, d);
  }

  /**
   * The current value of key under `held`, a READ or WRITE lock the caller holds whose range
   * covers key: served from the item cache, which a miss fills from the forest.
   */
  async lookupLocked(held: HeldLock, key: Buffer): Promise<Buffer | null> {
    this.checkReadable(held, key, key);
    for (let tries = 0; tries < ITEM_CACHE_FILL_RETRIES; tries++) {
      const got = this.items.get(key);
      if (got.kind === "hit") return Buffer.from(got.val);
      if (got.kind === "negative") return null;
      await this.fillForward(key, held.range.end);
    }
    // fills kept racing with commits, invalidations or evictions: read without caching
    return this.lookup(key);
  }

  /** The first current item with key <= its key <= end (default: the lock's end), cached. */
  async nextLocked(held: HeldLock, key: Buffer, end: Buffer = held.range.end):
    Promise<KeyVal | null> {
    if (compareKeys(key, end) > 0) {
      // stepping past the end of the range (keyInc of the last item) finds nothing
      this.checkReadable(held, end, end);
      return null;
    }
    this.checkReadable(held, key, end);
    let p = key;
    let lastMiss: Buffer | null = null;
    for (let races = 0; races < ITEM_CACHE_FILL_RETRIES;) {
      const s = this.items.next(p, end);
      if (s.kind === "hit") return ownVal(s.item);
      if (s.kind === "none") return null;
      // missing again where we just filled: the fill was evicted or dropped meanwhile
      if (lastMiss !== null && s.at.equals(lastMiss)) races++;
      // fill toward the lock's end, not the caller's: the next reads nearby hit (a lookup
      // of one name hash would otherwise fill only that hash, one forest read per name)
      if (!(await this.fillForward(s.at, held.range.end))) races++;
      lastMiss = s.at;
      p = s.at;
    }
    return this.next(p, end);
  }

  /** The last current item with start <= its key <= key (default: the lock's start), cached. */
  async prevLocked(held: HeldLock, key: Buffer, start: Buffer = held.range.start):
    Promise<KeyVal | null> {
    if (compareKeys(key, start) < 0) {
      this.checkReadable(held, start, start);
      return null;
    }
    this.checkReadable(held, start, key);
    let p = key;
    let lastMiss: Buffer | null = null;
    for (let races = 0; races < ITEM_CACHE_FILL_RETRIES;) {
      const s = this.items.prev(p, start);
      if (s.kind === "hit") return ownVal(s.item);
      if (s.kind === "none") return null;
      if (lastMiss !== null && s.at.equals(lastMiss)) races++;
      if (!(await this.fillBackward(held.range.start, s.at))) races++;
      lastMiss = s.at;
      p = s.at;
    }
    return this.prev(p, start);
  }

  /**
   * Calls fn with the value of each current item of [start, end] in key order while it
   * returns true, under `held` (cached, filling what is missing toward the lock's end). fn
   * gets the cache's buffer, valid only during the call (copy what you keep).
   */
  async scanLocked(held: HeldLock, start: Buffer, end: Buffer,
    fn: (val: Buffer) => boolean): Promise<void> {
    this.checkReadable(held, start, end);
    let p = start;
    let lastMiss: Buffer | null = null;
    for (let races = 0; races < ITEM_CACHE_FILL_RETRIES;) {
      // items before a miss were handed to fn already: the scan goes on from the miss
      const r = this.items.scan(p, end, fn);
      if (r.kind === "done") return;
      if (lastMiss !== null && r.at.equals(lastMiss)) races++;
      if (!(await this.fillForward(r.at, held.range.end))) races++;
      lastMiss = r.at;
      p = r.at;
    }
    // fills kept racing: the rest one item at a time (nextLocked reads without caching last)
    for (let it = await this.nextLocked(held, p, end); it !== null;
      it = compareKeys(it.key, end) >= 0 ? null : await this.nextLocked(held, keyInc(it.key), end)) {
      if (!fn(it.val)) return;
    }
  }

  /** Up to `limit` current items of [start, end] in key order, under `held` (cached). */
  async rangeLocked(held: HeldLock, start: Buffer, end: Buffer, limit: number):
    Promise<KeyVal[]> {
    if (!Number.isSafeInteger(limit) || limit <= 0) assert(false, `range limit ${limit}`);
    const out: KeyVal[] = [];
    let p = start;
    while (out.length < limit) {
      const it = await this.nextLocked(held, p, end);
      if (it === null) break;
      out.push(it);
      if (compareKeys(it.key, end) >= 0) break;
      p = keyInc(it.key);
    }
    return out;
  }

  /**
   * The first current item with key <= its key <= end, without a lock: the forest merged
   * with this mount's dirty items, nothing cached. Not coherent with other mounts' uncommitted
   * writes (that is what locks are for).
   */
  async next(key: Buffer, end: Buffer = MAX_KEY): Promise<KeyVal | null> {
    return this.walkUnlocked(key, end, true);
  }

  /** The last current item with start <= its key <= key, without a lock (see next). */
  async prev(key: Buffer, start: Buffer = MIN_KEY): Promise<KeyVal | null> {
    return this.walkUnlocked(key, start, false);
  }

  /**
   * next() (forward) and prev(): the forest's nearest item toward `bound`, overlaid with this
   * mount's dirty items; a dirty deletion (or deltas summing to zero) hides the forest's item
   * and the walk steps past it.
   */
  private async walkUnlocked(key: Buffer, bound: Buffer, forward: boolean):
    Promise<KeyVal | null> {
    const sign = forward ? 1 : -1;
    let p = key;
    let f: Item | null | undefined;
    let epoch = 0;
    for (let races = 0; races <= UNLOCKED_READ_RETRIES;) {
      if (sign * compareKeys(p, bound) > 0) return null;
      if (f === undefined) {
        const commits = this.items.commits;
        epoch = this.items.commitEpoch;
        const from = p;
        f = await this.readForest((roots) => forward
          ? forestNext(this.cache, roots, from, bound, this.counters)
          : forestPrev(this.cache, roots, from, bound, this.counters));
        // a commit settled meanwhile: its items left the dirty set, maybe after our roots
        if (this.items.commits !== commits) {
          f = undefined;
          races++;
          continue;
        }
      }
      const limit = f === null ? bound : f.key;
      const d = forward ? this.items.nextDirty(p, limit) : this.items.prevDirty(p, limit);
      if (d === undefined) return f === null ? null : copyKeyVal(f);
      const cur = await this.overDirty(f, d, epoch);
      if (cur === undefined) {
        f = undefined;
        races++;
        continue;
      }
      if (cur !== null && (cur.flags & ITEM_DELETION) === 0) return copyKeyVal(cur);
      if (d.key.equals(forward ? MAX_KEY : MIN_KEY)) return null;
      p = forward ? keyInc(d.key) : keyDec(d.key);
      if (f !== null && sign * compareKeys(f.key, d.key) <= 0) f = undefined;
    }
    throw new FsError("EAGAIN", "lock-less read kept racing with commits");
  }

  /** A read under a held lock may use the cache: READ or WRITE, covering [start, end]. */
  private checkReadable(held: HeldLock, start: Buffer, end: Buffer): void {
    assert(held.mode === LockMode.READ || held.mode === LockMode.WRITE,
      `cached read under a ${lockModeName(held.mode)} lock`);
    assert(compareKeys(start, end) <= 0 && rangeContainsKey(held.range, start) &&
      rangeContainsKey(held.range, end), "cached read outside the held lock's range");
    const granted = this.locks.grantedModeAt(start);
    assert(granted === LockMode.READ || granted === LockMode.WRITE,
      `cached read under a lock granted ${lockModeName(granted)}`);
  }

  /** Fills the cache from key toward end, up to the next complete range; false if raced. */
  private async fillForward(key: Buffer, end: Buffer): Promise<boolean> {
    const gen = this.items.gen;
    const stop = this.items.fillEnd(key, end);
    const r = await this.readForest((roots) => forestRange(this.cache, roots, key, stop,
      ITEM_CACHE_FILL_ITEMS, { counters: this.counters }));
    return this.items.fill(key, r.end, r.items, gen);
  }

  /** Fills the cache from key back toward start, down to the previous complete range. */
  private async fillBackward(start: Buffer, key: Buffer): Promise<boolean> {
    const gen = this.items.gen;
    const from = this.items.fillStart(key, start);
    const r = await this.readForest((roots) => forestRangeBack(this.cache, roots, from, key,
      ITEM_CACHE_FILL_ITEMS, { counters: this.counters }));
    return this.items.fill(r.start, key, r.items, gen);
  }

  /** Runs a forest read with the last committed roots, refetching them on ESTALE. */
  private readForest<T>(op: (roots: ForestRoots) => Promise<T>): Promise<T> {
    return withStaleRetry(this.counters, () => this.getRoots(),
      (a, b) => a.fsRoot.ref.seq === b.fsRoot.ref.seq && a.logsRoot.ref.seq === b.logsRoot.ref.seq &&
        a.fsRoot.ref.blkno === b.fsRoot.ref.blkno && a.logsRoot.ref.blkno === b.logsRoot.ref.blkno,
      op);
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
    await this.mergeWorker?.stop(); // before the farewell: its request is answered or failed
    if (this.items.dirtyCount > 0) await this.commit();
    this.shutDown = true;
    if (this.commitTimer) this.env.timers.clear(this.commitTimer);
    this.commitTimer = null;
    this.locks.shutdown();
    await this.net.farewell();
    this.net.shutdown();
  }
}

/** The value of every empty item (index and orphan items, tombstones): never written to. */
const EMPTY_VAL = Buffer.alloc(0);

/** A cache hit for a caller: the key is already a fresh buffer (ItemCache keeps strings). */
function ownVal(it: KeyVal): KeyVal {
  return { key: it.key, val: Buffer.from(it.val) };
}

/** A caller's own copy of a cached or read item (the cache keeps its buffers). */
function copyKeyVal(it: KeyVal): KeyVal {
  return { key: Buffer.from(it.key), val: Buffer.from(it.val) };
}
