/*
 * The lock client (upstream lock.c): a mount's cache of cluster locks.
 *
 * Who calls it: every VFS operation locks the ranges (src/core/lock_names.ts) covering the
 * items it reads or writes: `const h = await locks.lock(ranges, mode)` ... `locks.unlock(h)`.
 * The transaction calls markDirtied(held, transSeq) when it dirties an item under a lock and
 * transCommitted(seq) after each commit; the item cache computes item versions with
 * lockItemSeq(). client.ts wires the transport and the two server->client handlers:
 *   net.register(NetCmd.LOCK, (p) => locks.handleInvalidate(p))
 *   net.register(NetCmd.LOCK_RECOVER, (p) => locks.handleRecover(p))
 *   onConnected: (term, newServer) => { if (newServer) locks.serverChanged(term) }
 * and the transaction/item-cache owner provides onInvalidate (see InvalidateHook) and
 * grantProblem (see GrantCheck).
 *
 * Model. Each lock the mount knows has a granted `mode` (what the server records once our
 * replies reached it), users per mode, FIFO waiters, at most one request in flight and at
 * most one invalidation running. A user may proceed when the granted mode satisfies it
 * (equal, or WRITE for a READ user) and nothing is taking the lock away. Unused locks stay
 * cached (granted) in an LRU; past lockIdleCount the oldest are shed: written out and
 * dropped locally, then released to the server with a NULL request.
 *
 * Invalidation (the server asks us to drop to READ or NULL so another mount can have it):
 *  1. wait until we processed as many grants as the server had sent us (grants_sent): the
 *     net layer runs handlers concurrently, so a grant's response and a later invalidation
 *     can be seen in either order; counting makes the order explicit. Counts are per server
 *     term; an invalidation of an older term is stale and answered without effect.
 *  2. if we already hold no more than asked (a duplicate or stale request after failover,
 *     or a lock we shed), answer at once with what we hold;
 *  3. set the target first, which blocks new users it does not allow, wait for the current
 *     users it does not allow, call onInvalidate (commit if the lock dirtied the
 *     transaction, drop cached items of the range unless keeping READ), lower the mode and
 *     answer with it. Invalidations of one lock run one at a time.
 *
 * Recovery: a new server asks (LOCK_RECOVER) for our locks; we answer in key-ordered batches
 * with the granted mode and write_seq of each non-NULL lock. While an invalidation runs the
 * reported mode is still the old one (we may still be using or caching it): conservative.
 *
 * Invariants: no user ever holds a mode the granted mode does not satisfy; the mode is only
 * lowered after onInvalidate returned; a lock with users, waiters, a request or an
 * invalidation is never freed; refresh_gen changes on every grant out of NULL; every grant
 * is applied over an item cache holding nothing stale in its range (asserted through
 * grantProblem: no dirty item, nothing cached unless both modes read). Bounds:
 * LOCK_CLIENT_MAX_LOCKS locks, LOCK_CLIENT_MAX_WAITERS waiters, LOCK_MAX_RANGES_PER_HANDLE
 * ranges per handle, LOCK_SHED_MAX_IN_FLIGHT sheds at once.
 *
 * Deadlock avoidance is the callers': everything taken by one operation is acquired in key
 * order (one lock()/lockEach() call sorts; separate calls must come in increasing order),
 * and cluster locks are acquired before holding the transaction.
 */
import type { Env } from "../env/env.js";
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { FsError, isFsError } from "../util/errno.js";
import {
  decodeLockGrant, decodeLockInvalidate, decodeLockRecoverRequest, encodeLockInvalidateReply,
  encodeLockRecoverReply, encodeLockRequest, isWriteMode, type LockGrant, LockMode,
  lockModeName, type LockRecoverEntry, LOCK_RECOVER_MAX_ENTRIES,
} from "./lock_msg.js";
import {
  compareRanges, formatRange, type LockRange, rangeContainsKey, rangeProblem, rangesOverlap,
  RangeTable,
} from "./lock_names.js";
import { formatKey } from "./key.js";

/** Mount option lock_idle_count: default and accepted range (upstream's). */
export const LOCK_IDLE_COUNT_DEFAULT = 10_000;
export const LOCK_IDLE_COUNT_MIN = 32;
export const LOCK_IDLE_COUNT_MAX = 100_000;
/** Locks known at once (idle, used or changing); beyond it lock() fails ENOMEM. */
export const LOCK_CLIENT_MAX_LOCKS = 1 << 20;
/** Users waiting for locks at once; beyond it lock() fails ENOBUFS. */
export const LOCK_CLIENT_MAX_WAITERS = 1 << 16;
/** Ranges one handle may hold (a rename takes a handful). */
export const LOCK_MAX_RANGES_PER_HANDLE = 64;
/** NULL requests shedding idle locks at once (well under the net's per-cmd limit). */
export const LOCK_SHED_MAX_IN_FLIGHT = 32;

/** Why a lock_idle_count value is refused, or undefined if it is valid. */
export function lockIdleCountProblem(n: number): string | undefined {
  if (!Number.isSafeInteger(n) || n < LOCK_IDLE_COUNT_MIN || n > LOCK_IDLE_COUNT_MAX) {
    return `invalid lock_idle_count value ${n}, must be between ${LOCK_IDLE_COUNT_MIN} and ` +
      `${LOCK_IDLE_COUNT_MAX}`;
  }
  return undefined;
}

export type LockCounter =
  | "lock_alloc" | "lock_free" | "lock_lock" | "lock_lock_error" | "lock_wait"
  | "lock_nonblock_eagain" | "lock_unlock" | "lock_grant_request" | "lock_grant_response"
  | "lock_invalidate_request" | "lock_invalidate_response" | "lock_invalidate_sync"
  | "lock_invalidate_stale" | "lock_invalidate_absent" | "lock_invalidate_wait_grant"
  | "lock_invalidate_error" | "lock_recover_request" | "lock_shrink_attempted"
  | "lock_shrink_request_failed" | "lock_refresh" | "lock_grant_deferred";

/** How the client reaches the current server (NetClient). */
export interface LockTransport {
  /** Sends a LOCK request and resolves with the response payload. */
  request(payload: Buffer): Promise<Buffer>;
  /**
   * The term of the server whose messages are being delivered (NetClient.serverTerm). Read
   * when a message arrives: terms only change between network events.
   */
  serverTerm(): number;
}

/**
 * Called before a lock is lowered (server invalidation or idle shedding), once no user
 * needs what is being taken away: commit the transaction if `dirtied` (the lock dirtied
 * items of the open transaction), then drop every cached item of `range` unless newMode is
 * READ (a WRITE lock kept as READ: its cache stays valid once written). A rejection leaves
 * the lock held; the server asks again.
 */
export type InvalidateHook = (range: LockRange, newMode: LockMode, dirtied: boolean) =>
  Promise<void>;

/**
 * Asked as each grant is applied, before the mode changes: why the item cache may not
 * receive it, or null. `cachedAllowed` says whether cached items may lie in the range (both
 * the old and the new mode may read); dirty items never may. A problem is a bug: asserted.
 */
export type GrantCheck = (range: LockRange, cachedAllowed: boolean) => string | null;

/** A change of a lock's granted mode, for observers (tests, traces). */
export interface LockModeChange {
  range: LockRange;
  from: LockMode;
  to: LockMode;
  writeSeq: number;
  why: "grant" | "invalidate" | "shed";
}

export interface LockClientOptions {
  env: Env;
  counters: Counters;
  transport: LockTransport;
  onInvalidate: InvalidateHook;
  /** The item cache's grant-time check (none: nothing cached, e.g. lock-only tests). */
  grantProblem?: GrantCheck;
  /** Mount option lock_idle_count (default LOCK_IDLE_COUNT_DEFAULT). */
  lockIdleCount?: number;
  onModeChange?: (c: LockModeChange) => void;
  name?: string;
}

/** A lock as one handle holds it. writeSeq and refreshGen are read live. */
export interface HeldLock {
  readonly range: LockRange;
  /** The mode this handle uses it in. */
  readonly mode: LockMode;
  /** write_seq of the current WRITE/WRITE_ONLY grant (0 if never granted for writing). */
  readonly writeSeq: number;
  /** Changes on every grant out of NULL: cached inode state older than it is stale. */
  readonly refreshGen: number;
}

export interface LockHandle {
  /** The held locks, sorted by range. */
  readonly held: readonly HeldLock[];
  /** The held lock whose range contains key. */
  covering(key: Buffer): HeldLock | undefined;
}

/** True if a granted mode lets a user of mode `want` proceed. */
export function modeSatisfies(granted: LockMode, want: LockMode): boolean {
  return granted === want || (granted === LockMode.WRITE && want === LockMode.READ);
}

/** Modes whose holders may read, and so cache, items. */
export function modeCanRead(m: LockMode): boolean {
  return m === LockMode.READ || m === LockMode.WRITE;
}

/**
 * Asserts that the item cache may receive a grant of `range` from `from` to `to` (see
 * GrantCheck): nothing cached unless both modes read, nothing dirty.
 */
export function assertGrantConsistent(check: GrantCheck | undefined, range: LockRange,
  from: LockMode, to: LockMode): void {
  const problem = check?.(range, modeCanRead(from) && modeCanRead(to)) ?? null;
  assert(problem === null, `grant of ${formatRange(range)} ${lockModeName(from)} -> ` +
    `${lockModeName(to)} over an inconsistent item cache: ${problem}`);
}

/** The mode an invalidation to `target` leaves a lock granted `cur` in. */
export function invalidatedMode(cur: LockMode, target: LockMode): LockMode {
  if (target === LockMode.READ && (cur === LockMode.READ || cur === LockMode.WRITE)) {
    return LockMode.READ;
  }
  return LockMode.NULL;
}

/** An item's version: max(transaction seq, the lock's write_seq) (reference 1.8). */
export function lockItemSeq(held: HeldLock, transSeq: number): number {
  return Math.max(transSeq, held.writeSeq);
}

interface Waiter {
  readonly mode: LockMode;
  readonly resolve: () => void;
  readonly reject: (e: Error) => void;
}

class ClientLock {
  mode: LockMode = LockMode.NULL;
  writeSeq = 0;
  refreshGen = 0;
  /** Users by mode (index = LockMode). */
  readonly users = [0, 0, 0, 0];
  readonly waiters: Waiter[] = [];
  /** Mode of the request in flight. */
  requesting: LockMode | undefined;
  /** The request in flight is a NULL shed: nobody may use the lock until it is granted. */
  shedding = false;
  /** Target of the invalidation running: blocks users it does not allow. */
  invalidating: LockMode | undefined;
  /** Invalidations (and sheds) run one at a time: the running one and those queued. */
  invalBusy = false;
  readonly invalQueue: (() => void)[] = [];
  /** A grant that arrived during an older term's invalidation, applied after it. */
  deferredGrant: LockGrant | undefined;
  /** Seq of the latest transaction this lock dirtied (0: none). */
  dirtySeq = 0;
  /** Resolves an invalidation waiting for users to drain. */
  drained: { target: LockMode; resolve: () => void } | undefined;
  /** Shedding failed (the hook refused): not shed again until next used. */
  shedFailed = false;

  constructor(readonly range: LockRange) {}

  get userCount(): number {
    return this.users[0]! + this.users[1]! + this.users[2]! + this.users[3]!;
  }

  /** Users a lock lowered to `target` could not keep. */
  usersBlocking(target: LockMode): number {
    let n = 0;
    for (let m = 1; m < this.users.length; m++) {
      if (!modeSatisfies(target, m as LockMode)) n += this.users[m]!;
    }
    return n;
  }

  get busy(): boolean {
    return this.userCount > 0 || this.waiters.length > 0 || this.requesting !== undefined ||
      this.invalidating !== undefined || this.invalBusy || this.invalQueue.length > 0 ||
      this.shedding;
  }
}

class Held implements HeldLock {
  constructor(readonly lock: ClientLock, readonly mode: LockMode) {}
  get range(): LockRange { return this.lock.range; }
  get writeSeq(): number { return this.lock.writeSeq; }
  get refreshGen(): number { return this.lock.refreshGen; }
}

class Handle implements LockHandle {
  released = false;
  constructor(readonly held: readonly Held[]) {}

  covering(key: Buffer): HeldLock | undefined {
    return this.held.find((h) => rangeContainsKey(h.range, key));
  }
}

export class LockClient {
  private readonly table = new RangeTable<ClientLock>();
  /** Idle granted locks, least recently used first. */
  private readonly idle = new Map<ClientLock, true>();
  private readonly idleCount: number;
  private purging = false;
  private shedsInFlight = 0;
  private waiterCount = 0;
  private refreshGenNext = 1;
  private committedSeq = 0;
  /** The server term whose grants are being counted, and the count. */
  private term = 0;
  private grantsProcessed = 0;
  private grantWaiters: { n: number; resolve: (current: boolean) => void }[] = [];
  private stopped = false;
  private readonly name: string;

  constructor(private readonly opts: LockClientOptions) {
    this.idleCount = opts.lockIdleCount ?? LOCK_IDLE_COUNT_DEFAULT;
    assert(lockIdleCountProblem(this.idleCount) === undefined,
      lockIdleCountProblem(this.idleCount));
    this.name = opts.name ?? "lock client";
  }

  // -------------------------------------------------------------------------------------
  // Users.

  /** Locks every range in `mode` (sorted by key first) and returns the handle. */
  lock(ranges: readonly LockRange[], mode: LockMode): Promise<LockHandle> {
    return this.lockEach(ranges.map((range) => ({ range, mode })));
  }

  /** Locks ranges in their own modes, in key order (one call per operation). */
  async lockEach(reqs: readonly { range: LockRange; mode: LockMode }[]): Promise<LockHandle> {
    const sorted = this.checkRequests(reqs);
    // the common case, every lock granted and usable now: taken at once, no await per lock
    const ready = this.stopped ? [] : sorted.map((r) => this.table.get(r.range));
    if (ready.length === sorted.length &&
      ready.every((l, i) => l !== undefined && this.canUse(l, sorted[i]!.mode))) {
      return new Handle(sorted.map((r, i) => {
        this.take(ready[i]!, r.mode);
        return new Held(ready[i]!, r.mode);
      }));
    }
    const held: Held[] = [];
    try {
      for (const r of sorted) {
        const lock = this.lockObject(r.range);
        await this.acquire(lock, r.mode);
        held.push(new Held(lock, r.mode));
      }
    } catch (e) {
      for (const h of held) this.release(h);
      throw e;
    }
    return new Handle(held);
  }

  /** The nonblocking form: every lock must be usable at once, else EAGAIN (nothing held). */
  tryLock(ranges: readonly LockRange[], mode: LockMode): LockHandle {
    const sorted = this.checkRequests(ranges.map((range) => ({ range, mode })));
    const locks = sorted.map((r) => this.table.get(r.range));
    if (!locks.every((l) => l !== undefined && this.canUse(l, mode))) {
      this.count("lock_nonblock_eagain");
      throw new FsError("EAGAIN", "lock not available without waiting");
    }
    return new Handle(locks.map((l) => {
      this.take(l!, mode);
      return new Held(l!, mode);
    }));
  }

  unlock(handle: LockHandle): void {
    assert(handle instanceof Handle && !handle.released, "unlock of a released handle");
    handle.released = true;
    for (const h of handle.held) this.release(h);
  }

  /** The transaction dirtied an item under `held` in transaction `transSeq`. */
  markDirtied(held: HeldLock, transSeq: number): void {
    assert(held instanceof Held && isWriteMode(held.mode), "dirtied under a write lock");
    if (!Number.isSafeInteger(transSeq) || transSeq <= 0) assert(false, `trans seq ${transSeq}`);
    held.lock.dirtySeq = Math.max(held.lock.dirtySeq, transSeq);
  }

  /** Every transaction up to `transSeq` is committed: locks they dirtied are clean. */
  transCommitted(transSeq: number): void {
    this.committedSeq = Math.max(this.committedSeq, transSeq);
  }

  /** The granted mode of the lock covering key (NULL if none): for item cache checks. */
  grantedModeAt(key: Buffer): LockMode {
    return this.table.find(key)?.value.mode ?? LockMode.NULL;
  }

  /** Sheds every unused lock (the statfs_lock_purge trigger). */
  purgeIdle(): void {
    this.purging = true;
    this.shedExcess();
  }

  /** Fails every waiter with ECANCELED; later lock() calls fail too. */
  shutdown(): void {
    if (this.stopped) return;
    this.stopped = true;
    const err = new FsError("ECANCELED", "lock client shut down");
    for (const lock of this.table.values()) {
      for (const w of lock.waiters.splice(0)) {
        this.waiterCount--;
        w.reject(err);
      }
    }
    this.resolveGrantWaiters(false);
  }

  get lockCount(): number {
    return this.table.size;
  }

  get idleLocks(): number {
    return this.idle.size;
  }

  /** The client_locks debug file, one line per lock in key order. */
  dumpLocks(): string[] {
    const lines: string[] = [];
    for (const l of this.table.values()) {
      const w = [0, 0, 0, 0];
      for (const x of l.waiters) w[x.mode]!++;
      lines.push(`start ${formatKey(l.range.start)} end ${formatKey(l.range.end)} ` +
        `refresh_gen ${l.refreshGen} mode ${lockModeName(l.mode)} ` +
        `waiters: rd ${w[1]} wr ${w[2]} wo ${w[3]} ` +
        `users: rd ${l.users[1]} wr ${l.users[2]} wo ${l.users[3]}`);
    }
    return lines;
  }

  private checkRequests(reqs: readonly { range: LockRange; mode: LockMode }[]):
    { range: LockRange; mode: LockMode }[] {
    if (this.stopped) throw new FsError("ECANCELED", "lock client shut down");
    assert(reqs.length > 0 && reqs.length <= LOCK_MAX_RANGES_PER_HANDLE,
      `${reqs.length} ranges in one lock call`);
    const sorted = reqs.length === 1 ? [reqs[0]!] :
      [...reqs].sort((a, b) => compareRanges(a.range, b.range));
    // messages built only on failure: this runs for every operation
    sorted.forEach((r, i) => {
      if (rangeProblem(r.range) !== undefined) assert(false, `lock range ${formatRange(r.range)}`);
      assert(r.mode !== LockMode.NULL, "lock in NULL mode");
      const prev = sorted[i - 1];
      if (prev !== undefined && rangesOverlap(prev.range, r.range)) {
        assert(false, `ranges ${formatRange(r.range)} overlap in one lock call`);
      }
    });
    return sorted;
  }

  private lockObject(range: LockRange): ClientLock {
    const found = this.table.get(range);
    if (found !== undefined) return found;
    const other = this.table.overlap(range);
    if (other !== undefined) {
      assert(false, `lock ${formatRange(range)} overlaps ${formatRange(other)}`);
    }
    if (this.table.size >= LOCK_CLIENT_MAX_LOCKS) {
      throw new FsError("ENOMEM", `already ${LOCK_CLIENT_MAX_LOCKS} locks`);
    }
    const lock = new ClientLock(range);
    this.table.insert(range, lock);
    this.count("lock_alloc");
    return lock;
  }

  private canUse(lock: ClientLock, mode: LockMode): boolean {
    return !lock.shedding && modeSatisfies(lock.mode, mode) &&
      (lock.invalidating === undefined || modeSatisfies(lock.invalidating, mode));
  }

  private take(lock: ClientLock, mode: LockMode): void {
    lock.users[mode]!++;
    lock.shedFailed = false;
    this.idle.delete(lock);
    this.count("lock_lock");
  }

  private async acquire(lock: ClientLock, mode: LockMode): Promise<void> {
    if (this.stopped) throw new FsError("ECANCELED", "lock client shut down");
    if (this.canUse(lock, mode)) {
      this.take(lock, mode);
      return;
    }
    if (this.waiterCount >= LOCK_CLIENT_MAX_WAITERS) {
      this.settle(lock);
      throw new FsError("ENOBUFS", `${LOCK_CLIENT_MAX_WAITERS} lock waiters`);
    }
    this.count("lock_wait");
    this.waiterCount++;
    this.idle.delete(lock);
    // wakeWaiters() takes the user count for us before resolving.
    await new Promise<void>((resolve, reject) => {
      lock.waiters.push({ mode, resolve, reject });
      this.maybeRequest(lock);
    });
  }

  private release(h: Held): void {
    const lock = h.lock;
    assert(lock.users[h.mode]! > 0, "release without a user");
    lock.users[h.mode]!--;
    this.count("lock_unlock");
    this.settle(lock);
  }

  /** Re-evaluates a lock after any change: waiters, drained users, requests, idleness. */
  private settle(lock: ClientLock): void {
    this.wakeWaiters(lock);
    const d = lock.drained;
    if (d !== undefined && lock.usersBlocking(d.target) === 0) {
      lock.drained = undefined;
      d.resolve();
    }
    this.maybeRequest(lock);
    this.maybeIdle(lock);
  }

  private wakeWaiters(lock: ClientLock): void {
    for (let i = 0; i < lock.waiters.length;) {
      const w = lock.waiters[i]!;
      if (!this.canUse(lock, w.mode)) {
        i++;
        continue;
      }
      lock.waiters.splice(i, 1);
      this.waiterCount--;
      this.take(lock, w.mode);
      w.resolve();
    }
  }

  private maybeIdle(lock: ClientLock): void {
    if (lock.busy) {
      this.idle.delete(lock);
      return;
    }
    if (lock.mode === LockMode.NULL) {
      this.free(lock);
      return;
    }
    this.idle.delete(lock);
    // A lock whose write-out failed stays out of the LRU: retrying at once would spin.
    if (lock.shedFailed) return;
    this.idle.set(lock, true);
    this.shedExcess();
  }

  private free(lock: ClientLock): void {
    assert(!lock.busy && lock.mode === LockMode.NULL, "free of a busy lock");
    this.idle.delete(lock);
    if (this.table.get(lock.range) === lock) {
      this.table.delete(lock.range);
      this.count("lock_free");
    }
  }

  // -------------------------------------------------------------------------------------
  // Requests and grants.

  /** Sends a request if the oldest waiter needs a mode we do not hold. */
  private maybeRequest(lock: ClientLock): void {
    if (this.stopped || lock.requesting !== undefined || lock.shedding) return;
    // An invalidation in progress will lower the mode; decide once it is done.
    if (lock.invalidating !== undefined) return;
    const head = lock.waiters[0];
    if (head === undefined || this.canUse(lock, head.mode)) return;
    let want = head.mode;
    // A READ waiter behind a WRITE one: ask for WRITE, which serves both.
    if (want === LockMode.READ && lock.waiters.some((w) => w.mode === LockMode.WRITE)) {
      want = LockMode.WRITE;
    }
    if (modeSatisfies(lock.mode, want)) return;
    lock.requesting = want;
    this.count("lock_grant_request");
    void this.requestGrant(lock, lock.mode, want);
  }

  private async requestGrant(lock: ClientLock, old: LockMode, want: LockMode): Promise<void> {
    let resp: Buffer;
    try {
      resp = await this.opts.transport.request(encodeLockRequest({ range: lock.range,
        oldMode: old, newMode: want }));
    } catch (e) {
      this.requestFailed(lock, e);
      return;
    }
    // Count first, synchronously on arrival: invalidations wait for this count.
    this.grantArrived();
    let g: LockGrant;
    try {
      g = decodeLockGrant(resp);
      if (g.mode !== want) {
        throw new FsError("EIO", `asked ${lockModeName(want)}, granted ${lockModeName(g.mode)}`);
      }
    } catch (e) {
      this.requestFailed(lock, e);
      return;
    }
    if (lock.invalidating !== undefined) {
      // An older term's invalidation is still writing out: apply the grant after it.
      this.count("lock_grant_deferred");
      lock.deferredGrant = g;
      return;
    }
    this.applyGrantOrFail(lock, g);
  }

  /**
   * Applies a grant; one refused by the grant-time assertion (a bug: see GrantCheck) fails
   * the request instead, so that the waiting callers get the assertion error rather than wait
   * for a mode that never comes.
   */
  private applyGrantOrFail(lock: ClientLock, g: LockGrant): void {
    try {
      this.applyGrant(lock, g);
    } catch (e) {
      this.requestFailed(lock, e);
    }
  }

  private applyGrant(lock: ClientLock, g: LockGrant): void {
    const prev = lock.mode;
    assertGrantConsistent(this.opts.grantProblem, lock.range, prev, g.mode);
    const wasShed = lock.shedding;
    lock.requesting = undefined;
    lock.shedding = false;
    lock.mode = g.mode;
    if (isWriteMode(g.mode)) lock.writeSeq = g.writeSeq;
    if (prev === LockMode.NULL && g.mode !== LockMode.NULL) {
      lock.refreshGen = this.refreshGenNext++;
      this.count("lock_refresh");
    }
    this.count("lock_grant_response");
    if (prev !== g.mode) this.changed(lock, prev, "grant");
    if (wasShed) this.shedsInFlight--;
    this.settle(lock);
    if (wasShed) this.shedExcess();
  }

  private requestFailed(lock: ClientLock, e: unknown): void {
    const err = e instanceof Error ? e : new Error(String(e));
    if (!isFsError(err, "ECANCELED")) {
      this.log("warn", `lock request for ${formatRange(lock.range)} failed: ${err.message}`);
    }
    if (lock.shedding) {
      this.shedsInFlight--;
      this.count("lock_shrink_request_failed");
    }
    lock.requesting = undefined;
    lock.shedding = false;
    // Waiters that the granted mode does not serve cannot be served: fail them.
    for (let i = 0; i < lock.waiters.length;) {
      const w = lock.waiters[i]!;
      if (this.canUse(lock, w.mode)) {
        i++;
        continue;
      }
      lock.waiters.splice(i, 1);
      this.waiterCount--;
      this.count("lock_lock_error");
      w.reject(err);
    }
    this.settle(lock);
  }

  // -------------------------------------------------------------------------------------
  // Server terms and grant counting.

  /** A (new) server term is current: counts restart, older invalidations become stale. */
  serverChanged(term: number): void {
    if (term <= this.term) return;
    this.term = term;
    this.grantsProcessed = 0;
    this.resolveGrantWaiters(false);
  }

  private grantArrived(): void {
    const term = this.opts.transport.serverTerm();
    this.serverChanged(term);
    if (term !== this.term) return;
    this.grantsProcessed++;
    const ready = this.grantWaiters.filter((w) => w.n <= this.grantsProcessed);
    this.grantWaiters = this.grantWaiters.filter((w) => w.n > this.grantsProcessed);
    for (const w of ready) w.resolve(true);
  }

  /** Waits until `n` grants of `term` were processed; false if the term is no longer current. */
  private waitGrants(term: number, n: number): Promise<boolean> {
    if (term !== this.term || this.stopped) return Promise.resolve(false);
    if (this.grantsProcessed >= n) return Promise.resolve(true);
    this.count("lock_invalidate_wait_grant");
    return new Promise((resolve) => this.grantWaiters.push({ n, resolve }));
  }

  private resolveGrantWaiters(current: boolean): void {
    const all = this.grantWaiters;
    this.grantWaiters = [];
    for (const w of all) w.resolve(current);
  }

  // -------------------------------------------------------------------------------------
  // Invalidation.

  /** The server's LOCK request: lower a lock (see the header). Answers with the mode held. */
  async handleInvalidate(payload: Buffer): Promise<Buffer> {
    const term = this.opts.transport.serverTerm();
    this.serverChanged(term);
    const inv = decodeLockInvalidate(payload);
    this.count("lock_invalidate_request");
    if (!(await this.waitGrants(term, inv.grantsSent))) {
      // Sent by a server that is gone: its answer would be dropped; the new one recovers.
      this.count("lock_invalidate_stale");
      return encodeLockInvalidateReply(this.table.get(inv.range)?.mode ?? LockMode.NULL);
    }
    const lock = this.table.get(inv.range);
    if (lock === undefined) {
      const other = this.table.overlap(inv.range);
      if (other !== undefined) {
        throw new FsError("EINVAL", `invalidation of ${formatRange(inv.range)} overlaps ` +
          `${formatRange(other)}`);
      }
      this.count("lock_invalidate_absent");
      return encodeLockInvalidateReply(LockMode.NULL);
    }
    await this.enterInval(lock);
    try {
      return encodeLockInvalidateReply(await this.invalidate(lock, inv.newMode));
    } finally {
      this.leaveInval(lock);
    }
  }

  /** Lowers the lock to what `target` leaves of it; returns the mode now granted. */
  private async invalidate(lock: ClientLock, target: LockMode): Promise<LockMode> {
    const result = invalidatedMode(lock.mode, target);
    if (result === lock.mode) {
      this.count("lock_invalidate_stale");
      return result;
    }
    lock.invalidating = result;
    this.idle.delete(lock);
    try {
      await this.dropCached(lock, result);
    } catch (e) {
      this.count("lock_invalidate_error");
      this.log("warn", `invalidating ${formatRange(lock.range)}: ${String(e)}`);
      lock.invalidating = undefined;
      throw isFsError(e) ? e : new FsError("EIO", `invalidate hook failed: ${String(e)}`);
    }
    const prev = lock.mode;
    lock.mode = result;
    lock.invalidating = undefined;
    if (result === LockMode.NULL) lock.writeSeq = 0;
    this.count("lock_invalidate_response");
    this.changed(lock, prev, "invalidate");
    const g = lock.deferredGrant;
    lock.deferredGrant = undefined;
    if (g !== undefined) this.applyGrantOrFail(lock, g);
    return result;
  }

  /** Waits out users `result` does not allow, then lets the hook write out and drop. */
  private async dropCached(lock: ClientLock, result: LockMode): Promise<void> {
    if (lock.usersBlocking(result) > 0) {
      await new Promise<void>((resolve) => { lock.drained = { target: result, resolve }; });
    }
    const dirtied = lock.dirtySeq > this.committedSeq;
    await this.opts.onInvalidate(lock.range, result, dirtied);
    if (dirtied) {
      this.count("lock_invalidate_sync");
      lock.dirtySeq = 0;
    }
  }

  private enterInval(lock: ClientLock): Promise<void> {
    if (!lock.invalBusy) {
      lock.invalBusy = true;
      return Promise.resolve();
    }
    return new Promise((resolve) => lock.invalQueue.push(resolve));
  }

  private leaveInval(lock: ClientLock): void {
    const next = lock.invalQueue.shift();
    if (next !== undefined) {
      next();
      return;
    }
    lock.invalBusy = false;
    this.settle(lock);
  }

  // -------------------------------------------------------------------------------------
  // Idle shedding.

  private shedExcess(): void {
    const keep = this.purging ? 0 : this.idleCount;
    while (this.idle.size > keep && this.shedsInFlight < LOCK_SHED_MAX_IN_FLIGHT &&
      !this.stopped) {
      const oldest = this.idle.keys().next().value!;
      this.idle.delete(oldest);
      if (oldest.busy || oldest.mode === LockMode.NULL) continue;
      void this.shed(oldest);
    }
    if (this.idle.size === 0) this.purging = false;
  }

  /** Writes out and drops an unused lock, then tells the server with a NULL request. */
  private async shed(lock: ClientLock): Promise<void> {
    lock.shedding = true;
    this.shedsInFlight++;
    this.count("lock_shrink_attempted");
    await this.enterInval(lock);
    try {
      if (lock.mode === LockMode.NULL) {
        lock.shedding = false;
        this.shedsInFlight--;
        return;
      }
      lock.invalidating = LockMode.NULL;
      try {
        await this.dropCached(lock, LockMode.NULL);
      } catch (e) {
        this.log("warn", `shedding ${formatRange(lock.range)}: ${String(e)}`);
        this.count("lock_shrink_request_failed");
        lock.invalidating = undefined;
        lock.shedding = false;
        lock.shedFailed = true;
        this.shedsInFlight--;
        return;
      }
      lock.invalidating = undefined;
      // Nothing is cached and nobody may use it: relinquished. The server learns it from
      // the NULL request; an invalidation crossing it finds NULL and is answered at once.
      const prev = lock.mode;
      lock.mode = LockMode.NULL;
      lock.writeSeq = 0;
      this.changed(lock, prev, "shed");
      lock.requesting = LockMode.NULL;
      this.count("lock_grant_request");
      void this.requestGrant(lock, prev, LockMode.NULL);
    } finally {
      this.leaveInval(lock);
    }
  }

  // -------------------------------------------------------------------------------------
  // Recovery.

  /** The new server's LOCK_RECOVER request: one batch of our locks from the cursor on. */
  handleRecover(payload: Buffer): Buffer {
    this.serverChanged(this.opts.transport.serverTerm());
    const cursor = decodeLockRecoverRequest(payload);
    this.count("lock_recover_request");
    const entries: LockRecoverEntry[] = [];
    let more = false;
    for (const lock of this.table.values(cursor)) {
      if (lock.mode === LockMode.NULL) continue;
      if (entries.length === LOCK_RECOVER_MAX_ENTRIES) {
        more = true;
        break;
      }
      entries.push({ range: lock.range, mode: lock.mode, writeSeq: lock.writeSeq });
    }
    return encodeLockRecoverReply({ entries, more });
  }

  // -------------------------------------------------------------------------------------

  private changed(lock: ClientLock, from: LockMode, why: LockModeChange["why"]): void {
    this.opts.onModeChange?.({ range: lock.range, from, to: lock.mode, writeSeq: lock.writeSeq,
      why });
  }

  private count(c: LockCounter): void {
    this.opts.counters.inc(c);
  }

  private log(level: "debug" | "info" | "warn" | "error", msg: string): void {
    this.opts.env.logger.log(level, `${this.name}: ${msg}`);
  }
}
