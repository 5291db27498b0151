/*
 * A mount's data allocator and transaction holds (upstream data.c datinf + alloc.c
 * scoutfs_alloc_data + the hold half of trans.c), owned by its MountClient.
 *
 * File data blocks come from the open transaction's data_avail extent tree (the server fills
 * it at GET_LOG_TREES, server.ts refillData); blocks freed go to data_freed, which the server
 * returns to the global allocator at the mount's next GET_LOG_TREES, so a freed block is never
 * reused before the transaction that stopped referencing it is durable. Both trees are COWed
 * in the transaction's MetaTxn and travel in the log_trees struct of COMMIT_LOG_TREES.
 *
 * Holds: an operation that changes extents (write, truncate, fallocate, deletion) holds the
 * transaction from after it took its cluster locks until its items are applied (OpCtx.onEnd).
 * A commit closes the gate: new holders wait, the current ones finish, and only then are the
 * dirty items taken. So an operation's allocations, frees and extent items always land in the
 * same transaction, and nothing touches the allocator trees while the commit writes them.
 * Reads take a read hold, which never waits: a commit waits for the reads that started before
 * it (they may have found a mapping to a block freed in this transaction, which becomes
 * reusable once the commit is done), not for later ones, so readers cannot starve commits.
 *
 * Allocation (alloc_data): requests of DATA_ALLOC_LARGE_BLOCKS or more come straight from the
 * tree (front of the largest free extent); smaller ones from a cached extent of that size
 * taken from the tree, so streaming small allocations stay contiguous and cost no item work.
 * Everything taken from the tree is remembered (takes): if the commit fails, the reopened
 * transaction's tree is the one the server opened, and the takes are replayed on it, because
 * dirty extent items still reference them. Allocations of an abandoned operation return to
 * `spare` (reused first); frees are recorded only when the operation applied (never before
 * the items stop referencing the blocks). The commit puts the cached and spare extents back
 * into data_avail and the frees into data_freed.
 *
 * Invariants: the allocator trees change only inside a hold or the commit (never both); a
 * block is in at most one of: data_avail, cached, spare, an operation's allocations, a file
 * extent, frees/data_freed.
 */
import type { Env } from "../env/env.js";
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { isFsError } from "../util/errno.js";
import { allocExtent, type Extent, freeExtent, takeExtent } from "./alloc.js";
import type { MetaTxn } from "./block.js";
import type { LogTrees } from "./format_log.js";

/** Allocations at least this long come straight from the tree (upstream LG_THRESH, 8 MiB). */
export const DATA_ALLOC_LARGE_BLOCKS = 2048;
/** Below this many avail blocks the data path asks for a commit (upstream REFILL_THRESH). */
export const DATA_REFILL_THRESH_BLOCKS = 65_536;
/** Spare extents (abandoned allocations) kept before they go back to the tree at commit. */
export const DATA_SPARE_MAX = 4096;

export interface DataTransHost {
  env: Env;
  counters: Counters;
  /** The open transaction's writer and log trees, or null while none is open. */
  open(): { w: MetaTxn; lt: LogTrees } | null;
  /** Gets a transaction opened (a commit does it) when none is. */
  ensureOpen(): Promise<void>;
  /** Asks for a commit nobody waits for (allocator pressure). */
  requestCommit(): void;
}

/** One operation's hold: what it allocated and freed, settled when the operation ends. */
export class DataHold {
  readonly allocs: Extent[] = [];
  readonly frees: Extent[] = [];
  private ended = false;

  constructor(private readonly trans: DataTrans) {}

  /** Up to `count` blocks (fewer, or null when this transaction has none left). */
  async alloc(count: number): Promise<Extent | null> {
    assert(!this.ended, "allocation after the hold ended");
    const e = await this.trans.allocate(count);
    if (e) this.allocs.push(e);
    return e;
  }

  /** Blocks the operation stops referencing (freed only if it applies). */
  free(e: Extent): void {
    assert(!this.ended && e.len > 0, "free in a hold");
    this.frees.push({ ...e });
  }

  /** Data blocks are being written: the commit must flush the data device. */
  wroteData(): void {
    this.trans.noteDataWrite();
  }

  /** The operation ended: applied, or abandoned. Releases the hold. */
  end(applied: boolean): void {
    if (this.ended) return;
    this.ended = true;
    this.trans.settle(this, applied);
  }
}

export class DataTrans {
  private holders = 0;
  private gateClosed = false;
  private gateWaiters: (() => void)[] = [];
  private drained: (() => void) | null = null;
  private readEpoch = 0;
  private readonly readers = new Map<number, number>();

  /** Transaction the allocator state below belongs to (0: none yet). */
  private stateSeq = 0;
  private takes: Extent[] = [];
  private cached: Extent | null = null;
  private spare: Extent[] = [];
  private frees: Extent[] = [];
  private allocChain: Promise<unknown> = Promise.resolve();
  private dataDirty = false;
  private openAvail = 0;
  private pressureKicked = false;

  constructor(private readonly host: DataTransHost) {}

  // -------------------------------------------------------------------------------------
  // Holds and the commit gate.

  /** Holds the open transaction for an extent-changing operation (waits out a commit). */
  async hold(): Promise<DataHold> {
    for (;;) {
      if (this.gateClosed) {
        await new Promise<void>((r) => { this.gateWaiters.push(r); });
        continue;
      }
      if (this.host.open() === null) {
        await this.host.ensureOpen();
        continue;
      }
      this.holders++;
      return new DataHold(this);
    }
  }

  /** A read hold: never waits; the next commit waits for it. Returns its release. */
  readHold(): () => void {
    const epoch = this.readEpoch;
    this.readers.set(epoch, (this.readers.get(epoch) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.readers.get(epoch) ?? 0) - 1;
      assert(n >= 0, "read hold count");
      if (n === 0) this.readers.delete(epoch);
      else this.readers.set(epoch, n);
      this.checkDrained();
    };
  }

  /** The commit's first step: new holders wait; resolves once the current ones are done. */
  async closeGate(): Promise<void> {
    assert(!this.gateClosed, "commit gate closed twice");
    this.gateClosed = true;
    this.readEpoch++;
    if (this.isDrained()) return;
    await new Promise<void>((r) => { this.drained = r; });
  }

  /** The commit is over: holders waiting for it go on. */
  openGate(): void {
    assert(this.gateClosed, "commit gate opened twice");
    this.gateClosed = false;
    for (const w of this.gateWaiters.splice(0)) w();
  }

  get holding(): number {
    return this.holders;
  }

  private isDrained(): boolean {
    if (this.holders > 0) return false;
    for (const epoch of this.readers.keys()) if (epoch < this.readEpoch) return false;
    return true;
  }

  private checkDrained(): void {
    if (this.drained && this.isDrained()) {
      const d = this.drained;
      this.drained = null;
      d();
    }
  }

  settle(h: DataHold, applied: boolean): void {
    assert(this.holders > 0, "settling without a hold");
    if (applied && h.frees.length > 0) {
      const o = this.host.open();
      assert(o !== null, "frees without an open transaction");
      this.own(o.lt);
      for (const f of h.frees) this.frees.push(f);
      this.host.counters.inc("data_free_extents", h.frees.length);
    } else if (!applied) {
      // nothing references them: reusable at once (the commit returns what is left)
      for (const a of h.allocs) this.spare.push(a);
      if (h.allocs.length > 0) this.host.counters.inc("data_alloc_abandoned", h.allocs.length);
    }
    this.holders--;
    this.checkDrained();
  }

  // -------------------------------------------------------------------------------------
  // Allocation.

  /** Blocks available to this transaction without a refill. */
  get availBlocks(): number {
    const o = this.host.open();
    let n = o ? o.lt.dataAvail.totalLen : 0;
    if (this.cached) n += this.cached.len;
    for (const s of this.spare) n += s.len;
    return n;
  }

  noteDataWrite(): void {
    this.dataDirty = true;
  }

  /** Data was written since the last successful commit (its flush is due). */
  get needsFlush(): boolean {
    return this.dataDirty;
  }

  /** Serialized: one tree change at a time (the caller holds the transaction). */
  allocate(count: number): Promise<Extent | null> {
    assert(this.holders > 0, "allocation outside a hold");
    const run = this.allocChain.then(() => this.allocateNow(count));
    this.allocChain = run.catch(() => undefined);
    return run;
  }

  private async allocateNow(count: number): Promise<Extent | null> {
    assert(Number.isSafeInteger(count) && count >= 1, `data allocation of ${count}`);
    const o = this.host.open();
    assert(o !== null, "allocation without an open transaction");
    this.own(o.lt);
    let got: Extent | null;
    if (count >= DATA_ALLOC_LARGE_BLOCKS && this.spare.length === 0) {
      got = await this.take(o.w, o.lt, count);
    } else {
      if (this.cached === null || this.cached.len === 0) {
        this.cached = this.spare.pop() ?? await this.take(o.w, o.lt, DATA_ALLOC_LARGE_BLOCKS);
      }
      got = null;
      if (this.cached) {
        const len = Math.min(count, this.cached.len);
        got = { start: this.cached.start, len };
        this.cached = { start: this.cached.start + len, len: this.cached.len - len };
      }
    }
    this.host.counters.inc(got ? "data_alloc" : "data_alloc_empty");
    this.checkPressure();
    return got;
  }

  private async take(w: MetaTxn, lt: LogTrees, count: number): Promise<Extent | null> {
    const e = await allocExtent(w, lt.dataAvail, count);
    if (e) this.takes.push({ ...e });
    return e;
  }

  /** The state now belongs to lt's transaction (the first change of a transaction). */
  private own(lt: LogTrees): void {
    if (this.stateSeq === lt.getTransSeq) return;
    assert(!this.hasState(), "data allocator state of another transaction");
    this.stateSeq = lt.getTransSeq;
    this.openAvail = lt.dataAvail.totalLen;
    this.pressureKicked = false;
  }

  private hasState(): boolean {
    return this.takes.length > 0 || this.cached !== null || this.spare.length > 0 ||
      this.frees.length > 0;
  }

  /** Below a quarter of what the transaction opened with: commit so the server refills. */
  private checkPressure(): void {
    if (this.pressureKicked) return;
    const low = Math.min(DATA_REFILL_THRESH_BLOCKS, Math.floor(this.openAvail / 4));
    if (this.availBlocks >= low) return;
    this.pressureKicked = true;
    this.host.counters.inc("data_commit_alloc_low");
    this.host.requestCommit();
  }

  // -------------------------------------------------------------------------------------
  // Commit steps (called by the MountClient with the gate closed).

  /** Puts the cached and spare extents back into data_avail and the frees into data_freed. */
  async prepareCommit(w: MetaTxn, lt: LogTrees): Promise<void> {
    assert(this.holders === 0, "commit with data holders");
    if (!this.hasState()) return;
    assert(this.stateSeq === lt.getTransSeq, "data allocator state of another transaction");
    const back = [...this.spare];
    if (this.cached && this.cached.len > 0) back.push(this.cached);
    for (const e of back) await freeExtent(w, lt.dataAvail, e);
    for (const f of this.frees) await freeExtent(w, lt.dataFreed, f);
  }

  /** The commit is durable: the state is in the committed trees. */
  committed(): void {
    this.takes = [];
    this.cached = null;
    this.spare = [];
    this.frees = [];
    this.dataDirty = false;
  }

  /**
   * A transaction was opened. If it is the one our state belongs to, a commit of it failed
   * and the server handed it out again as it was opened: replay what we took from its
   * data_avail (dirty extent items reference those blocks). A different seq means the server
   * closed that transaction (it did commit, or the mount was reclaimed): nothing to replay.
   */
  async opened(w: MetaTxn, lt: LogTrees): Promise<void> {
    if (!this.hasState()) {
      this.stateSeq = 0;
      return;
    }
    if (this.stateSeq !== lt.getTransSeq) {
      this.host.counters.inc("data_alloc_state_dropped");
      this.committed();
      this.stateSeq = 0;
      return;
    }
    for (const t of this.takes) {
      try {
        await takeExtent(w, lt.dataAvail, t);
      } catch (e) {
        if (!isFsError(e, "ENOENT")) throw e;
        this.host.counters.inc("data_alloc_replay_missing");
      }
    }
    this.host.counters.inc("data_alloc_replayed");
  }
}
