/*
 * The lock server (upstream lock_server.c): the leader's authority over which mount may
 * hold which cluster lock in which mode.
 *
 * Who calls it: server.ts creates one LockServer per server term. It registers
 *   net.register(NetCmd.LOCK, (p, peer) => lockServer.handleRequest(peer.rid, p))
 * and calls clientGreeted(rid) after each greeting (once the connection is admitted, e.g. a
 * zero timer from NetServer's onGreeting: a LOCK_RECOVER sent before admission fails with
 * ENOTCONN and is retried after retryMs), removeClient(rid) when a client says
 * farewell, is fenced or misses the recovery timeout, and shutdown() when it stops. The
 * server hands in sendToClient (NetServer.request) and nextSeq (its global seq).
 *
 * State: per lock (a key range, src/core/lock_names.ts; ranges never overlap partially), the
 * mode granted to each rid and a FIFO of requests. Requests of one lock are processed
 * strictly one at a time in arrival order: the head request's conflicting holders are sent
 * invalidations, and only once all of them answered (or left) is the request granted and
 * the next one looked at. Handlers of the net layer run concurrently; this per-lock FIFO is
 * what orders them.
 *
 * Compatibility (upstream's client_entries_compatible): READ/READ and WRITE_ONLY/WRITE_ONLY
 * share; NULL is compatible with everything; a rid's own READ does not conflict with its
 * WRITE request (the upgrade keeps its cache) and a rid's own mode never conflicts with a
 * request for the same mode (a request resent to a new server); everything else conflicts.
 * A conflicting holder is asked to drop to READ if it holds WRITE and the request is for
 * READ (its cache stays valid once written out), to NULL otherwise.
 *
 * Grants of WRITE and WRITE_ONLY carry a fresh write_seq from nextSeq(); per lock they
 * strictly increase (asserted), so the newest writer of a key always has the largest item
 * seq. After a failover nextSeq() must exceed every write_seq the clients report: the
 * server advances its seq past maxWriteSeq when recovery completes (onRecovered tells it).
 *
 * Ordering against the client: every invalidation carries the number of grants this server
 * had sent the client (grantsSent). A grant's response and a later invalidation can be
 * processed in either order by the client's concurrent handlers; the client waits for that
 * many grants before acting on the invalidation (src/core/lock.ts).
 *
 * Recovery: after a failover the new LockServer starts with the rids of the mounts the old
 * server had (mounted_clients). As each greets, it is sent LOCK_RECOVER requests, batch by
 * batch, and its reported locks become the granted state. Every request is held until each
 * expected rid has recovered or was removed; then they are processed in arrival order.
 *
 * Bounds: LOCK_SERVER_MAX_LOCKS locks, LOCK_SERVER_MAX_CLIENTS clients, one queued request
 * per rid per lock (a second is a protocol error), one invalidation per holder at a time.
 */
import type { Env } from "../env/env.js";
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { FsError, isFsError } from "../util/errno.js";
import { formatKey, keyInc, MAX_KEY, MIN_KEY } from "./key.js";
import {
  decodeLockInvalidateReply, decodeLockRecoverReply, decodeLockRequest, encodeLockGrant,
  encodeLockInvalidate, encodeLockRecoverRequest, isWriteMode, LockMode, lockModeName,
  type LockRecoverEntry,
} from "./lock_msg.js";
import { formatRange, type LockRange, RangeTable } from "./lock_names.js";
import { NetCmd } from "./msg.js";
import { MAX_SERVER_CLIENTS } from "./net.js";

/** Locks the server tracks at once (held or requested); beyond it requests fail ENOMEM. */
export const LOCK_SERVER_MAX_LOCKS = 1 << 22;
/** Clients with lock state at once (the net layer's bound). */
export const LOCK_SERVER_MAX_CLIENTS = MAX_SERVER_CLIENTS;
/** Requests queued per lock: one per client. */
export const LOCK_SERVER_MAX_QUEUE = LOCK_SERVER_MAX_CLIENTS;
/** Delay before asking a client again after a failed invalidation or recover request. */
export const LOCK_SERVER_RETRY_MS = 50;
/** Lines of one debug dump. */
export const LOCK_SERVER_DUMP_MAX_LINES = 1 << 20;

export type LockServerCounter =
  | "lock_server_requests" | "lock_server_grants" | "lock_server_invalidations"
  | "lock_server_invalidate_errors" | "lock_server_invalidate_bad_replies"
  | "lock_server_bad_requests" | "lock_server_recover_requests" | "lock_server_recover_errors"
  | "lock_server_recovered_clients" | "lock_server_recovered_locks"
  | "lock_server_recover_conflicts" | "lock_server_clients_removed";

/** What a LockServer reports to an observer (tests, traces). */
export type LockServerEvent =
  | { kind: "grant"; rid: bigint; range: LockRange; mode: LockMode; writeSeq: number }
  | { kind: "invalidated"; rid: bigint; range: LockRange; mode: LockMode }
  | { kind: "recovered"; rid: bigint; range: LockRange; mode: LockMode; writeSeq: number }
  | { kind: "removed"; rid: bigint }
  | { kind: "recovery_done"; maxWriteSeq: number };

export interface LockServerOptions {
  env: Env;
  counters: Counters;
  /** Sends a request to a client (NetServer.request); rejects if it cannot be delivered. */
  sendToClient: (rid: bigint, cmd: NetCmd, payload: Buffer) => Promise<Buffer>;
  /** The server's next global seq: strictly greater than any earlier one. */
  nextSeq: () => number;
  /** After a failover: the rids whose locks must be recovered before anything is granted. */
  recoverRids?: Iterable<bigint>;
  /** Recovery finished: the server must make nextSeq() exceed maxWriteSeq before it returns. */
  onRecovered?: (maxWriteSeq: number) => void;
  onEvent?: (e: LockServerEvent) => void;
  retryMs?: number;
  name?: string;
}

/**
 * True if a holder's mode and a request can be granted at once (upstream's
 * client_entries_compatible, plus a rid's re-request of the mode it already holds).
 */
export function lockModesCompatible(held: LockMode, heldRid: bigint, want: LockMode,
  wantRid: bigint): boolean {
  if (held === LockMode.NULL || want === LockMode.NULL) return true;
  if (held === want && (held === LockMode.READ || held === LockMode.WRITE_ONLY)) return true;
  if (heldRid !== wantRid) return false;
  return held === want || (held === LockMode.READ && want === LockMode.WRITE);
}

/** The mode a conflicting holder is asked to drop to. */
export function invalidationTarget(held: LockMode, want: LockMode): LockMode {
  return held === LockMode.WRITE && want === LockMode.READ ? LockMode.READ : LockMode.NULL;
}

interface Holder {
  mode: LockMode;
  writeSeq: number;
}

interface Waiting {
  readonly rid: bigint;
  readonly mode: LockMode;
  /** Arrival number, shown as net_id in dumps. */
  readonly netId: number;
  readonly resolve: (grant: Buffer) => void;
  readonly reject: (err: FsError) => void;
  cancelled: boolean;
}

class ServerLock {
  readonly holders = new Map<bigint, Holder>();
  queue: Waiting[] = [];
  /** A drain loop owns the queue head. */
  busy = false;
  lastWriteSeq = 0;
  /** Outstanding invalidations by rid: target mode and number (for dumps). */
  readonly invalidating = new Map<bigint, { target: LockMode; netId: number }>();

  constructor(readonly range: LockRange) {}
}

interface ClientState {
  readonly rid: bigint;
  /** Grants sent in this term; copied into invalidations (see the header). */
  grantsSent: number;
  departed: boolean;
  /** Wakes work waiting on this client when it departs. */
  readonly onDepart: Set<() => void>;
  recoverStarted: boolean;
}

export class LockServer {
  private readonly table = new RangeTable<ServerLock>();
  private readonly clients = new Map<bigint, ClientState>();
  /** Rids still to recover; recovery lasts while it is non-empty. */
  private readonly expected: Set<bigint>;
  private recoveringNow: boolean;
  private stopped = false;
  private nextNetId = 1;
  private maxSeq = 0;
  private readonly retryMs: number;
  private readonly name: string;

  constructor(private readonly opts: LockServerOptions) {
    this.expected = new Set(opts.recoverRids ?? []);
    this.recoveringNow = this.expected.size > 0;
    this.retryMs = opts.retryMs ?? LOCK_SERVER_RETRY_MS;
    this.name = opts.name ?? "lock server";
    assert(this.retryMs > 0, "retry delay");
    if (this.recoveringNow) {
      this.log("info", `recovering locks of ${this.expected.size} clients`);
    }
  }

  /** True until every expected client has recovered or was removed. */
  get recovering(): boolean {
    return this.recoveringNow;
  }

  /** Rids still expected to recover (the caller fences them at its recovery timeout). */
  pendingRecovery(): bigint[] {
    return [...this.expected];
  }

  /** Largest write_seq granted or recovered. */
  get maxWriteSeq(): number {
    return this.maxSeq;
  }

  get lockCount(): number {
    return this.table.size;
  }

  /**
   * A client's LOCK request (the NetCmd.LOCK handler). Resolves with the grant once the
   * request reaches the head of its lock's queue and every conflicting holder complied.
   */
  handleRequest(rid: bigint, payload: Buffer): Promise<Buffer> {
    if (this.stopped) return Promise.reject(new FsError("ECANCELED", "lock server stopped"));
    try {
      const req = decodeLockRequest(payload);
      const client = this.clientFor(rid);
      const lock = this.lockFor(req.range);
      if (lock.queue.some((w) => w.rid === rid && !w.cancelled)) {
        throw this.badRequest(rid, `second request for ${formatRange(req.range)}`);
      }
      assert(lock.queue.length < LOCK_SERVER_MAX_QUEUE, "lock queue bound");
      this.count("lock_server_requests");
      return new Promise<Buffer>((resolve, reject) => {
        lock.queue.push({ rid: client.rid, mode: req.newMode, netId: this.nextNetId++, resolve,
          reject, cancelled: false });
        this.kick(lock);
      });
    } catch (e) {
      if (isFsError(e, "EBADMSG") || isFsError(e, "EINVAL")) {
        this.count("lock_server_bad_requests");
        this.log("warn", `refused a lock request of ${ridHex(rid)}: ${String(e)}`);
      }
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
  }

  /** A client greeted (new or reconnected); during recovery its locks are asked for. */
  clientGreeted(rid: bigint): void {
    if (this.stopped) return;
    const client = this.clientFor(rid);
    if (!this.recoveringNow || !this.expected.has(rid) || client.recoverStarted) return;
    client.recoverStarted = true;
    void this.recoverClient(client);
  }

  /**
   * A client is gone for good (farewell, fenced, recovery timeout): its locks and requests
   * are dropped, work waiting on its answers proceeds.
   */
  removeClient(rid: bigint): void {
    const client = this.clients.get(rid);
    this.expected.delete(rid);
    if (client !== undefined) {
      client.departed = true;
      this.clients.delete(rid);
      this.wake(client);
    }
    const gone = new FsError("ENOTCONN", `client ${ridHex(rid)} left`);
    for (const lock of [...this.table.values()]) {
      lock.holders.delete(rid);
      for (const w of lock.queue) {
        if (w.rid !== rid || w.cancelled) continue;
        w.cancelled = true;
        w.reject(gone);
      }
      // The drain loop removes the head it is working on itself.
      lock.queue = lock.queue.filter((w, i) => !w.cancelled || (lock.busy && i === 0));
      this.kick(lock);
      this.maybeFree(lock);
    }
    this.count("lock_server_clients_removed");
    this.opts.onEvent?.({ kind: "removed", rid });
    this.log("info", `removed client ${ridHex(rid)}`);
    this.maybeFinishRecovery();
  }

  /** Stops: queued requests fail with ECANCELED, loops end at their next step. */
  shutdown(): void {
    if (this.stopped) return;
    this.stopped = true;
    const err = new FsError("ECANCELED", "lock server stopped");
    for (const lock of this.table.values()) {
      for (const w of lock.queue) {
        if (!w.cancelled) w.reject(err);
        w.cancelled = true;
      }
    }
    for (const c of this.clients.values()) this.wake(c);
  }

  /** The server_locks debug file: `<key> <mode> <list> rid <16hex> net_id N` lines. */
  dumpLocks(maxLines = LOCK_SERVER_DUMP_MAX_LINES): string[] {
    const lines: string[] = [];
    const add = (lock: ServerLock, mode: LockMode, list: string, rid: bigint, id: number):
      void => {
      if (lines.length < maxLines) {
        lines.push(`${formatKey(lock.range.start)} ${lockModeName(mode)} ${list} ` +
          `rid ${ridHex(rid)} net_id ${id}`);
      }
    };
    for (const lock of this.table.values()) {
      const rids = [...lock.holders.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      for (const rid of rids) add(lock, lock.holders.get(rid)!.mode, "granted", rid, 0);
      for (const w of lock.queue) if (!w.cancelled) add(lock, w.mode, "requested", w.rid, w.netId);
      for (const [rid, i] of lock.invalidating) add(lock, i.target, "invalidated", rid, i.netId);
    }
    return lines;
  }

  /** Ranges of every lock held or requested, in key order (tests, debugging). */
  lockRanges(): LockRange[] {
    return [...this.table.values()].map((l) => l.range);
  }

  /** The modes granted on the lock with exactly this range (tests, debugging). */
  granted(range: LockRange): Map<bigint, LockMode> {
    const lock = this.table.get(range);
    return new Map([...(lock?.holders ?? [])].map(([rid, h]) => [rid, h.mode]));
  }

  // -------------------------------------------------------------------------------------
  // Processing requests.

  private kick(lock: ServerLock): void {
    if (lock.busy || this.recoveringNow || this.stopped || lock.queue.length === 0) return;
    lock.busy = true;
    this.drain(lock).catch((e: unknown) => {
      this.log("error", `lock ${formatRange(lock.range)} processing failed: ${String(e)}`);
      throw e;
    });
  }

  /** Grants the lock's requests one by one, in arrival order. */
  private async drain(lock: ServerLock): Promise<void> {
    try {
      while (!this.stopped) {
        const req = lock.queue[0];
        if (req === undefined) break;
        if (!req.cancelled) await this.resolveConflicts(lock, req);
        assert(lock.queue[0] === req, "only the drain loop removes the queue head");
        lock.queue.shift();
        if (!req.cancelled && !this.stopped) this.grant(lock, req);
      }
    } finally {
      lock.busy = false;
      this.maybeFree(lock);
    }
  }

  /** Invalidates conflicting holders until none is left (or the requester left). */
  private async resolveConflicts(lock: ServerLock, req: Waiting): Promise<void> {
    let previous = "";
    for (;;) {
      if (req.cancelled || this.stopped) return;
      const conflicts = [...lock.holders].filter(([rid, h]) =>
        !lockModesCompatible(h.mode, rid, req.mode, req.rid));
      if (conflicts.length === 0) return;
      // The same conflicts after a round: a client failed to comply; do not spin.
      const now = conflicts.map(([rid, h]) => `${rid}:${h.mode}`).join(",");
      if (now === previous) await this.sleep(this.retryMs);
      previous = now;
      await Promise.all(conflicts.map(([rid, h]) =>
        this.invalidate(lock, rid, h.mode, invalidationTarget(h.mode, req.mode))));
    }
  }

  /** Asks one holder to drop to `target` and records the mode it answers with. */
  private async invalidate(lock: ServerLock, rid: bigint, held: LockMode, target: LockMode):
    Promise<void> {
    const client = this.clients.get(rid);
    if (client === undefined || client.departed) {
      lock.holders.delete(rid);
      return;
    }
    const payload = encodeLockInvalidate({ range: lock.range, oldMode: held, newMode: target,
      grantsSent: client.grantsSent });
    lock.invalidating.set(rid, { target, netId: this.nextNetId++ });
    this.count("lock_server_invalidations");
    try {
      const reply = await this.untilDeparted(client,
        this.opts.sendToClient(rid, NetCmd.LOCK, payload));
      if (reply === undefined || this.stopped) return;
      this.applyReply(lock, rid, target, decodeLockInvalidateReply(reply));
    } catch (e) {
      if (this.stopped || client.departed) return;
      // The holder keeps its recorded mode; resolveConflicts asks again after a delay.
      this.count("lock_server_invalidate_errors");
      this.log("warn", `invalidating ${formatRange(lock.range)} at ${ridHex(rid)}: ${String(e)}`);
    } finally {
      lock.invalidating.delete(rid);
    }
  }

  private applyReply(lock: ServerLock, rid: bigint, target: LockMode, mode: LockMode): void {
    const h = lock.holders.get(rid);
    if (h === undefined) return;
    if (!(mode === LockMode.NULL || (mode === LockMode.READ && target === LockMode.READ))) {
      // Record what the client says it holds: the conflict loop asks again.
      this.count("lock_server_invalidate_bad_replies");
      this.log("error", `client ${ridHex(rid)} kept ${lockModeName(mode)} of ` +
        `${formatRange(lock.range)} when asked for ${lockModeName(target)}`);
    }
    if (mode === LockMode.NULL) lock.holders.delete(rid);
    else h.mode = mode;
    this.opts.onEvent?.({ kind: "invalidated", rid, range: lock.range, mode });
  }

  private grant(lock: ServerLock, req: Waiting): void {
    const client = this.clients.get(req.rid);
    assert(client !== undefined && !client.departed, "a departed client's request is cancelled");
    let writeSeq = 0;
    if (isWriteMode(req.mode)) {
      writeSeq = this.opts.nextSeq();
      assert(Number.isSafeInteger(writeSeq) && writeSeq > lock.lastWriteSeq,
        `write_seq ${writeSeq} not above ${lock.lastWriteSeq} of ${formatRange(lock.range)} ` +
        "(the server seq must pass every recovered write_seq)");
      lock.lastWriteSeq = writeSeq;
      this.maxSeq = Math.max(this.maxSeq, writeSeq);
    }
    if (req.mode === LockMode.NULL) lock.holders.delete(req.rid);
    else lock.holders.set(req.rid, { mode: req.mode, writeSeq });
    client.grantsSent++;
    this.count("lock_server_grants");
    this.opts.onEvent?.({ kind: "grant", rid: req.rid, range: lock.range, mode: req.mode,
      writeSeq });
    req.resolve(encodeLockGrant({ mode: req.mode, writeSeq }));
  }

  // -------------------------------------------------------------------------------------
  // Recovery.

  /** Asks one client for its locks, batch by batch, retrying until it answers or leaves. */
  private async recoverClient(client: ClientState): Promise<void> {
    let cursor: Buffer | undefined = MIN_KEY;
    while (cursor !== undefined) {
      if (this.stopped || client.departed) return;
      this.count("lock_server_recover_requests");
      let entries: LockRecoverEntry[];
      let more: boolean;
      try {
        const reply = await this.untilDeparted(client, this.opts.sendToClient(client.rid,
          NetCmd.LOCK_RECOVER, encodeLockRecoverRequest(cursor)));
        if (reply === undefined || this.stopped) return;
        ({ entries, more } = decodeLockRecoverReply(reply));
        const first = entries[0];
        if (first !== undefined && Buffer.compare(first.range.start, cursor) < 0) {
          throw new FsError("EBADMSG", "recover entry before the cursor");
        }
      } catch (e) {
        if (this.stopped || client.departed) return;
        // Expected while the client's connection is not admitted yet (ENOTCONN).
        this.count("lock_server_recover_errors");
        this.log("debug", `recovering ${ridHex(client.rid)}: ${String(e)}`);
        await this.sleep(this.retryMs);
        continue;
      }
      for (const e of entries) this.recoverEntry(client.rid, e);
      const last = entries[entries.length - 1];
      cursor = more && last !== undefined && !last.range.end.equals(MAX_KEY)
        ? keyInc(last.range.end) : undefined;
    }
    if (!this.expected.delete(client.rid)) return;
    this.count("lock_server_recovered_clients");
    this.log("info", `recovered locks of ${ridHex(client.rid)}, ${this.expected.size} to go`);
    this.maybeFinishRecovery();
  }

  private recoverEntry(rid: bigint, e: LockRecoverEntry): void {
    let lock = this.table.get(e.range);
    if (lock === undefined) {
      const other = this.table.overlap(e.range);
      if (other !== undefined) {
        this.count("lock_server_recover_conflicts");
        this.log("error", `client ${ridHex(rid)} recovered ${formatRange(e.range)} which ` +
          `overlaps ${formatRange(other)}`);
        return;
      }
      assert(this.table.size < LOCK_SERVER_MAX_LOCKS, "recovered locks exceed the bound");
      lock = new ServerLock(e.range);
      this.table.insert(e.range, lock);
    }
    for (const [other, h] of lock.holders) {
      if (other !== rid && !lockModesCompatible(h.mode, other, e.mode, rid)) {
        this.count("lock_server_recover_conflicts");
        this.log("error", `recovered ${lockModeName(e.mode)} of ${formatRange(e.range)} at ` +
          `${ridHex(rid)} conflicts with ${lockModeName(h.mode)} at ${ridHex(other)}`);
      }
    }
    lock.holders.set(rid, { mode: e.mode, writeSeq: e.writeSeq });
    lock.lastWriteSeq = Math.max(lock.lastWriteSeq, e.writeSeq);
    this.maxSeq = Math.max(this.maxSeq, e.writeSeq);
    this.count("lock_server_recovered_locks");
    this.opts.onEvent?.({ kind: "recovered", rid, range: e.range, mode: e.mode,
      writeSeq: e.writeSeq });
  }

  private maybeFinishRecovery(): void {
    if (!this.recoveringNow || this.expected.size > 0 || this.stopped) return;
    this.recoveringNow = false;
    this.log("info", `lock recovery complete, max write_seq ${this.maxSeq}`);
    this.opts.onRecovered?.(this.maxSeq);
    this.opts.onEvent?.({ kind: "recovery_done", maxWriteSeq: this.maxSeq });
    for (const lock of [...this.table.values()]) this.kick(lock);
  }

  // -------------------------------------------------------------------------------------
  // Helpers.

  private clientFor(rid: bigint): ClientState {
    let c = this.clients.get(rid);
    if (c === undefined) {
      if (this.clients.size >= LOCK_SERVER_MAX_CLIENTS) {
        throw new FsError("ENOMEM", `already ${LOCK_SERVER_MAX_CLIENTS} lock clients`);
      }
      c = { rid, grantsSent: 0, departed: false, onDepart: new Set(), recoverStarted: false };
      this.clients.set(rid, c);
    }
    return c;
  }

  private lockFor(range: LockRange): ServerLock {
    const found = this.table.get(range);
    if (found !== undefined) return found;
    const other = this.table.overlap(range);
    if (other !== undefined) {
      throw new FsError("EINVAL", `lock ${formatRange(range)} overlaps ${formatRange(other)}`);
    }
    if (this.table.size >= LOCK_SERVER_MAX_LOCKS) {
      throw new FsError("ENOMEM", `already ${LOCK_SERVER_MAX_LOCKS} locks`);
    }
    const lock = new ServerLock(range);
    this.table.insert(range, lock);
    return lock;
  }

  private maybeFree(lock: ServerLock): void {
    if (lock.busy || lock.holders.size > 0 || lock.queue.length > 0) return;
    if (this.table.get(lock.range) === lock) this.table.delete(lock.range);
  }

  private badRequest(rid: bigint, what: string): FsError {
    return new FsError("EINVAL", `client ${ridHex(rid)}: ${what}`);
  }

  /** Resolves with p's value, or undefined as soon as the client departs (or we stop). */
  private untilDeparted(client: ClientState, p: Promise<Buffer>): Promise<Buffer | undefined> {
    return new Promise<Buffer | undefined>((resolve, reject) => {
      const gone = (): void => resolve(undefined);
      client.onDepart.add(gone);
      p.then((v) => {
        client.onDepart.delete(gone);
        resolve(v);
      }, (e: unknown) => {
        client.onDepart.delete(gone);
        reject(e instanceof Error ? e : new Error(String(e)));
      });
    });
  }

  private wake(client: ClientState): void {
    const fns = [...client.onDepart];
    client.onDepart.clear();
    for (const fn of fns) fn();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => { this.opts.env.timers.after(ms, resolve); });
  }

  private count(c: LockServerCounter): void {
    this.opts.counters.inc(c);
  }

  private log(level: "debug" | "info" | "warn" | "error", msg: string): void {
    this.opts.env.logger.log(level, `${this.name}: ${msg}`);
  }
}

function ridHex(rid: bigint): string {
  return rid.toString(16).padStart(16, "0");
}
