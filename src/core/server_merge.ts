/*
 * Log merging, the server's half (upstream server.c log merge; the mounts' half is
 * merge_client.ts).
 *
 * Mounts' log trees only grow; merging moves their items into fs_root and frees them. A round
 * runs in three phases:
 *
 * 1. Finalization. Every mount's open log tree is finalized together, so that every item in a
 *    finalized tree is older than every item in the trees opened after it (otherwise merging a
 *    tombstone could resurrect an older version still sitting in an unfinalized tree). The
 *    server closes the gate for new transactions (GET_LOG_TREES waits), asks every mount to
 *    commit (SYNC_LOG_TREES), waits a bounded time until no current tree has an open
 *    transaction, then marks them all FINALIZED and creates the round's status item (its
 *    round_seq is above every input's finalize_seq) and one range item covering every key,
 *    in one commit.
 * 2. Merge, by the mounts. A mount's merge worker asks for work (GET_LOG_MERGE). The server
 *    takes a range, finds the first input key in it, and hands out the fs_root subtree that
 *    holds that key (btree_subtree.ts: a level-1 block and its leaves, or the whole tree when
 *    fs_root is at most 2 high), the part of the range inside that subtree, the committed
 *    logs_root and a metadata allocator filled for the COW. The request is recorded durably
 *    (a REQUEST item keyed by rid and seq, owning the allocator) in the same commit as the
 *    range change, before the mount sees it. The mount merges the finalized trees' items of
 *    its range into its copy of the subtree, writes the blocks and sends COMMIT_LOG_MERGE with
 *    the new subtree root, its leftover allocator and a resume key when it stopped early. In
 *    one commit the server splices the new root in place of the old ref (COWing the path
 *    above it), frees the replaced blocks the mount recorded and its unused blocks, deletes
 *    the request, and queues the rest of the range. Subtrees of outstanding requests are
 *    disjoint (no two requests share a subtree root) and a splice leaves every other
 *    subtree's ref as it is, so completions can be spliced in any order.
 *    A subtree root that filled up or emptied cannot be rebalanced while other requests rely
 *    on the parents around it: its splice leaves a SPLICE item, no new requests are handed out
 *    until the outstanding ones drain, then the server rebalances the path (split/join at
 *    level 1) and queues the remaining range.
 * 3. Freeing (upstream's log merge freeing). When no range, request or splice is left, the
 *    round's input trees are retired: each one's log_trees item is deleted (readers stop
 *    seeing it: every item of it is in fs_root), its bloom block freed, its allocators
 *    returned to the global ones, and its item root recorded in a FREEING item; the status
 *    item goes with the last one (the round is over). Then the server frees the recorded
 *    trees' blocks, at most freeBlocksPerCommit (MERGE_FREE_BLOCKS_PER_COMMIT) per commit, a
 *    retirement's bloom blocks included, each commit recording how far it got
 *    (btree_free.ts: a resumed step frees exactly what was left), so a huge round never
 *    makes one huge commit and every other request keeps being served between the steps.
 *    A new server finishes freeing left by its predecessor before it starts a round; fsck
 *    counts the blocks a FREEING item still owns.
 *
 * Failover and dead mounts. Everything above is in the log_merge btree, so a new server
 * continues the round. A request is cancelled (its range queued again, its original
 * allocator returned) when its mount asks for work again (the worker runs one request at a
 * time, so it has given that one up, e.g. its GET response was lost with the old server),
 * when the mount says it failed, or when the mount's mounted_clients item is gone (farewell,
 * or fencing and reclaim): never while its mount may still be writing the request's blocks.
 * A completion whose request is gone (resent after it was applied, or cancelled) changes
 * nothing and is answered ESTALE; the mount then drops its work, whose blocks all came from
 * the request's allocator and are free again.
 *
 * Fallback: when no mount is connected, or none has asked for work for
 * MERGE_FALLBACK_IDLE_MS, and no request is outstanding, the server merges a bounded step of
 * a range into fs_root itself, one commit per step.
 *
 * Readers stay correct throughout: a key's merged version in fs_root has the same seq as in
 * its finalized tree, which readers also still see until phase 3; partially spliced fs_root
 * never hides anything because the finalized trees still hold every input version. Delta
 * items are summed, not replaced: their merged sum carries the greatest seq of what it
 * summed, which is how readers (forest.ts) tell a merged finalized tree from one still to
 * add.
 */
import { assert } from "../util/assert.js";
import { FsError } from "../util/errno.js";
import {
  allocExtent, listEntries, listNext, prependListBlocks,
} from "./alloc.js";
import type { BlockCache } from "./block.js";
import {
  btreeCollect, btreeDelete, btreeForce, btreeInsert, btreeLookup, btreeNext, btreeRebalance,
} from "./btree.js";
import { BTREE_FREE_MIN_BLOCKS, btreeFreeStep } from "./btree_free.js";
import { btreeMerge } from "./btree_merge.js";
import {
  btreeGetParent, btreeSetParent, readSubtreeRoot, sameRef, sameRoot, type Subtree,
  subtreeRootBalanced,
} from "./btree_subtree.js";
import {
  type AllocListHead, type BtreeRoot, corrupt, emptyListHead, Magic, type SuperBlock,
} from "./format.js";
import {
  decodeLogMergeFreeing, decodeLogMergeRange, decodeLogMergeRequest, decodeLogMergeSplice,
  decodeLogMergeStatus, decodeLogMergeCompletion, encodeLogMergeFreeing, encodeLogMergeRange,
  encodeLogMergeRequest, encodeLogMergeSplice, encodeLogMergeStatus, encodeLogTrees,
  LOG_MERGE_COMP_ERROR, LOG_MERGE_COMP_REMAIN, LOG_MERGE_REQUEST_WHOLE, LOG_MERGE_SPLICE_REMAIN,
  LOG_TREES_FLAG_FINALIZED, type LogMergeCompletion, type LogMergeFreeing, type LogMergeRange,
  type LogMergeRequest, type LogMergeSplice, type LogMergeStatus, type LogTrees,
} from "./format_log.js";
import { listLogTrees } from "./forest.js";
import {
  keyInc, keySecond, keyZone, logTreesKey, makeKey, MAX_KEY, MIN_KEY, mountedClientKey, Zone,
} from "./key.js";
import { returnLogTreeAllocators } from "./server_recovery.js";
import type { VolumeTxn } from "./volume.js";

/** A log tree is finalized once its item btree is this tall. */
export const FINALIZE_HEIGHT = 3;
/** Keys the server merges per commit when it merges by itself. */
export const MERGE_STEP_KEYS = 20_000;
/** How long finalization waits for every mount to commit (log_merge_wait_timeout_ms). */
export const LOG_MERGE_WAIT_TIMEOUT_MS = 500;
/** Metadata blocks given with each merge request: the mount's COW budget. */
export const MERGE_REQUEST_AVAIL_BLOCKS = 192;
/** Requests outstanding at once, at most. */
export const MAX_MERGE_REQUESTS = 64;
/** Range items at most: each request, completion or cancellation adds at most one. */
export const MAX_MERGE_RANGES = 4096;
/** Splice items rebalanced per server commit. */
export const MAX_SPLICES_PER_COMMIT = 64;
/** Blocks of merged trees (item btree and bloom blocks) freed per server commit, at most. */
export const MERGE_FREE_BLOCKS_PER_COMMIT = 512;
/** Freeing items at most: one per retired log tree, a round's inputs at a time. */
export const MAX_MERGE_FREEING = 4096;
assert(MERGE_FREE_BLOCKS_PER_COMMIT >= BTREE_FREE_MIN_BLOCKS, "merge free step bound");
/** Work waited this long without any mount asking for it: the server merges by itself. */
export const MERGE_FALLBACK_IDLE_MS = 2_000;
const POLL_MS = 5;
/** How often a running round looks at its state (read-only unless there is work). */
const ROUND_POLL_MS = 50;

const statusKey = (): Buffer => makeKey(Zone.LOG_MERGE_STATUS, 0n, 0);
const rangeKey = (id: number): Buffer => makeKey(Zone.LOG_MERGE_RANGE, 0n, 0, BigInt(id));
const requestKey = (rid: bigint, seq: number): Buffer =>
  makeKey(Zone.LOG_MERGE_REQUEST, rid, 0, BigInt(seq));
const spliceKey = (seq: number): Buffer => makeKey(Zone.LOG_MERGE_COMPLETE, 0n, 0, BigInt(seq));
const freeingKey = (seq: number): Buffer => makeKey(Zone.LOG_MERGE_FREEING, 0n, 0, BigInt(seq));

/** What the merge needs from the server. */
export interface MergeHost {
  hold(fn: (t: VolumeTxn) => Promise<void>): Promise<void>;
  nextSeq(): number;
  committedLogTrees(): Promise<LogTrees[]>;
  syncClients(): void;
  sleep(ms: number): Promise<void>;
  monotonicMs(): number;
  counters: { inc(name: string, by?: number): void };
  /** A round failed (the server stopping, an I/O error): it is retried on the next kick. */
  onError(e: unknown): void;
  /** The last committed super and the cache to read it through (looks without a commit). */
  stableSuper(): SuperBlock;
  cache: BlockCache;
  /** Mounts the server holds a connection for. */
  connectedClients(): number;
  stopped(): boolean;
}

/** Everything in the log_merge btree. */
interface MergeState {
  status: LogMergeStatus | null;
  ranges: { id: number; range: LogMergeRange }[];
  requests: LogMergeRequest[];
  splices: { seq: number; splice: LogMergeSplice }[];
  /** Retired trees whose blocks are being freed, oldest first. */
  freeing: { seq: number; fr: LogMergeFreeing }[];
}

async function readState(cache: BlockCache, logMerge: BtreeRoot): Promise<MergeState> {
  const s: MergeState = { status: null, ranges: [], requests: [], splices: [], freeing: [] };
  for (const it of await btreeCollect(cache, logMerge, MIN_KEY, MAX_KEY)) {
    const zone = keyZone(it.key);
    if (zone === Zone.LOG_MERGE_STATUS) s.status = decodeLogMergeStatus(it.val);
    else if (zone === Zone.LOG_MERGE_RANGE) {
      s.ranges.push({ id: Number(keySecond(it.key)), range: decodeLogMergeRange(it.val) });
    } else if (zone === Zone.LOG_MERGE_REQUEST) s.requests.push(decodeLogMergeRequest(it.val));
    else if (zone === Zone.LOG_MERGE_COMPLETE) {
      s.splices.push({ seq: Number(keySecond(it.key)), splice: decodeLogMergeSplice(it.val) });
    } else if (zone === Zone.LOG_MERGE_FREEING) {
      s.freeing.push({ seq: Number(keySecond(it.key)), fr: decodeLogMergeFreeing(it.val) });
    } else throw corrupt(`log_merge item of zone ${zone}`);
  }
  if (s.ranges.length > MAX_MERGE_RANGES || s.requests.length > MAX_MERGE_REQUESTS ||
    s.freeing.length > MAX_MERGE_FREEING) {
    throw corrupt(`log_merge holds ${s.ranges.length} ranges, ${s.requests.length} requests, ` +
      `${s.freeing.length} freeing trees`);
  }
  s.ranges.sort((a, b) => Buffer.compare(a.range.start, b.range.start));
  return s;
}

const isInput = (lt: LogTrees, roundSeq: number): boolean =>
  (lt.flags & LOG_TREES_FLAG_FINALIZED) !== 0 && lt.finalizeSeq < roundSeq;

/** The round's input trees: finalized before the round began. */
async function inputTrees(cache: BlockCache, logsRoot: BtreeRoot, roundSeq: number):
  Promise<LogTrees[]> {
  return (await listLogTrees(cache, logsRoot)).filter((lt) => isInput(lt, roundSeq));
}

/** The first key in [start, end] that some input holds, or null. */
async function nextInputKey(cache: BlockCache, inputs: BtreeRoot[], start: Buffer, end: Buffer):
  Promise<Buffer | null> {
  let min: Buffer | null = null;
  for (const root of inputs) {
    const it = await btreeNext(cache, root, start);
    if (it && Buffer.compare(it.key, end) <= 0 && (!min || Buffer.compare(it.key, min) < 0)) {
      min = it.key;
    }
  }
  return min;
}

function minKey(a: Buffer, b: Buffer): Buffer {
  return Buffer.compare(a, b) <= 0 ? a : b;
}

export class LogMerger {
  private gate: Promise<void> | null = null;
  private openGate: (() => void) | null = null;
  private running = false;
  private forced = false;
  /** When a mount last asked for work or completed some (for the fallback). */
  private lastAskMs = 0;
  /** Blocks of merged trees freed per commit (tests lower it to see many steps). */
  freeBlocksPerCommit = MERGE_FREE_BLOCKS_PER_COMMIT;

  constructor(private readonly host: MergeHost) {}

  /** GET_LOG_TREES waits here while a finalization is in progress. */
  async waitGate(): Promise<void> {
    while (this.gate) await this.gate;
  }

  /** Starts a merge round now (trigger log_merge_force_finalize_ours), or soon if busy. */
  request(): void {
    this.forced = true;
    this.kick();
  }

  /** Called after commits: starts a round when some tree is tall enough. */
  kick(): void {
    if (this.running) return;
    this.running = true;
    void this.round()
      .catch((e: unknown) => { this.host.onError(e); })
      .finally(() => { this.running = false; });
  }

  private async round(): Promise<void> {
    const stable = await readState(this.host.cache, this.host.stableSuper().logMerge);
    if (!stable.status && stable.freeing.length > 0) {
      // the freeing of an ended round, left by a previous server
      if (!(await this.freeAll())) return;
      this.host.counters.inc("log_merge_complete");
    }
    if (!stable.status) {
      const trees = await this.host.committedLogTrees();
      const finalized = trees.filter((lt) => (lt.flags & LOG_TREES_FLAG_FINALIZED) !== 0);
      const tall = trees.some((lt) => lt.itemRoot.height >= FINALIZE_HEIGHT);
      if (finalized.length === 0 && !tall && !this.forced) return;
      this.forced = false;
      if (finalized.length > 0) {
        await this.host.hold((t) => this.createStatus(t)); // e.g. reclaimed mounts' trees
      } else if (!(await this.finalize())) {
        return;
      }
    }
    this.lastAskMs = this.host.monotonicMs();
    if (!(await this.drive())) return;
    if (!(await this.retireAll()) || !(await this.freeAll())) return;
    this.host.counters.inc("log_merge_complete");
  }

  /** Phase 1: returns false when the mounts did not all commit in time. */
  private async finalize(): Promise<boolean> {
    this.gate = new Promise((r) => { this.openGate = r; });
    try {
      this.host.syncClients();
      const until = this.host.monotonicMs() + LOG_MERGE_WAIT_TIMEOUT_MS;
      let polls = 0;
      for (;;) {
        const open = (await this.host.committedLogTrees())
          .filter((lt) => (lt.flags & LOG_TREES_FLAG_FINALIZED) === 0 &&
            lt.getTransSeq > lt.commitTransSeq);
        if (open.length === 0) break;
        if (++polls % 10 === 0) this.host.syncClients(); // mounts that opened a txn meanwhile
        if (this.host.monotonicMs() >= until) {
          this.host.counters.inc("log_merge_wait_timeout");
          return false;
        }
        await this.host.sleep(POLL_MS);
      }
      await this.host.hold(async (t) => {
        const seq = this.host.nextSeq();
        for (const lt of await listLogTrees(t.w.cache, t.sb.logsRoot)) {
          if ((lt.flags & LOG_TREES_FLAG_FINALIZED) !== 0 || lt.itemRoot.height === 0) continue;
          lt.flags |= LOG_TREES_FLAG_FINALIZED;
          lt.finalizeSeq = seq;
          await btreeForce(t.w, t.sb.logsRoot, logTreesKey(lt.rid, BigInt(lt.nr)),
            encodeLogTrees(lt), { seq: 0 });
        }
        await this.createStatus(t);
      });
      this.host.counters.inc("log_merge_start");
      return true;
    } finally {
      const open = this.openGate;
      this.gate = null;
      this.openGate = null;
      open?.();
    }
  }

  /** The round's status (round_seq above every input's finalize_seq) and one full range. */
  private async createStatus(t: VolumeTxn): Promise<void> {
    if (await btreeLookup(t.w.cache, t.sb.logMerge, statusKey())) return;
    const status: LogMergeStatus = { roundSeq: this.host.nextSeq() };
    await btreeInsert(t.w, t.sb.logMerge, statusKey(), encodeLogMergeStatus(status), { seq: 0 });
    await this.addRange(t, { start: MIN_KEY, end: MAX_KEY });
  }

  /**
   * Phase 2 as seen by the server: watches the state (read-only) until every range is merged,
   * stepping in when a request's mount is gone, when splices wait for rebalancing with no
   * request outstanding, or when no mount asks for the work. False if the server stopped.
   */
  private async drive(): Promise<boolean> {
    for (;;) {
      if (this.host.stopped()) return false;
      const sb = this.host.stableSuper();
      const s = await readState(this.host.cache, sb.logMerge);
      if (!s.status) return false;
      if (s.ranges.length === 0 && s.requests.length === 0 && s.splices.length === 0) return true;
      if (await this.needsServerStep(s, sb)) await this.host.hold((t) => this.serverStep(t));
      await this.host.sleep(ROUND_POLL_MS);
    }
  }

  private fallbackDue(): boolean {
    return this.host.connectedClients() === 0 ||
      this.host.monotonicMs() - this.lastAskMs >= MERGE_FALLBACK_IDLE_MS;
  }

  private async needsServerStep(s: MergeState, sb: SuperBlock): Promise<boolean> {
    for (const r of s.requests) {
      const key = mountedClientKey(r.rid);
      if (!(await btreeLookup(this.host.cache, sb.mountedClients, key))) return true;
    }
    if (s.requests.length > 0) return false;
    return s.splices.length > 0 || (s.ranges.length > 0 && this.fallbackDue());
  }

  private async serverStep(t: VolumeTxn): Promise<void> {
    const s = await readState(t.w.cache, t.sb.logMerge);
    if (!s.status) return;
    const live = await this.cancelRequests(t, s.requests, null);
    if (live.length > 0) return;
    if (s.splices.length > 0) {
      await this.rebalanceSplices(t, s.splices);
      return;
    }
    if (this.fallbackDue()) await this.localStep(t, s.status);
  }

  private async mounted(t: VolumeTxn, rid: bigint): Promise<boolean> {
    return (await btreeLookup(t.w.cache, t.sb.mountedClients, mountedClientKey(rid))) !== null;
  }

  /** Cancels the requests of `asking` (it gave them up) and of unmounted rids; returns the rest. */
  private async cancelRequests(t: VolumeTxn, reqs: LogMergeRequest[], asking: bigint | null):
    Promise<LogMergeRequest[]> {
    const live: LogMergeRequest[] = [];
    for (const r of reqs) {
      if (r.rid === asking || !(await this.mounted(t, r.rid))) await this.cancel(t, r);
      else live.push(r);
    }
    return live;
  }

  /** The request's range goes back to the queue and its original allocator to the server. */
  private async cancel(t: VolumeTxn, req: LogMergeRequest): Promise<void> {
    await this.returnList(t, req.metaAvail);
    await this.addRange(t, { start: req.start, end: req.end });
    await btreeDelete(t.w, t.sb.logMerge, requestKey(req.rid, req.seq));
    this.host.counters.inc("log_merge_request_cancel");
  }

  /**
   * Frees every blkno an alloc list holds and its list blocks, through the server's freed list:
   * reusable after this commit, since the committed state may still reference them (the
   * replaced subtree blocks of a completion, the list blocks of a request item).
   */
  private async returnList(t: VolumeTxn, head: AllocListHead): Promise<void> {
    let ref = head.ref;
    let total = 0;
    for (let blocks = 0; ref.blkno !== 0; blocks++) {
      if (blocks > t.sb.totalMetaBlocks) throw corrupt("log merge alloc list has a cycle");
      const buf = await t.w.cache.read(ref, Magic.ALLOC_LIST);
      const entries = listEntries(buf);
      const next = listNext(buf);
      for (const b of entries) await t.alloc.freeCommitted(t.w, b);
      await t.w.freeRef(ref);
      total += entries.length;
      ref = next;
    }
    if (total !== head.totalNr) throw corrupt("log merge alloc list total count");
  }

  private async addRange(t: VolumeTxn, r: LogMergeRange): Promise<void> {
    await btreeInsert(t.w, t.sb.logMerge, rangeKey(this.host.nextSeq()), encodeLogMergeRange(r),
      { seq: 0 });
  }

  // -------------------------------------------------------------------------------------
  // GET_LOG_MERGE.

  /** Hands the next piece of merge work to rid; ENOENT without a round, EAGAIN for "later". */
  async getLogMerge(p: Buffer, rid: bigint): Promise<Buffer> {
    if (p.length !== 0) throw new FsError("EINVAL", "get log merge payload");
    this.lastAskMs = this.host.monotonicMs();
    this.kick();
    const s = await readState(this.host.cache, this.host.stableSuper().logMerge);
    if (!s.status) throw new FsError("ENOENT", "no log merge in progress");
    if (!this.mayIssue(s, rid)) throw new FsError("EAGAIN", "no log merge work to hand out now");
    const roundSeq = s.status.roundSeq;
    const out: { req: LogMergeRequest | null } = { req: null };
    await this.host.hold(async (t) => { out.req = await this.issue(t, rid, roundSeq); });
    if (!out.req) throw new FsError("EAGAIN", "no log merge work to hand out now");
    this.host.counters.inc("log_merge_requests");
    return encodeLogMergeRequest(out.req);
  }

  /** A look at the committed state: is a commit for this GET worth it? */
  private mayIssue(s: MergeState, rid: bigint): boolean {
    if (s.requests.some((r) => r.rid === rid)) return true;
    if (s.splices.length > 0) return s.requests.length === 0;
    return s.ranges.length > 0 && s.requests.length < MAX_MERGE_REQUESTS;
  }

  private async issue(t: VolumeTxn, rid: bigint, roundSeq: number):
    Promise<LogMergeRequest | null> {
    let s = await readState(t.w.cache, t.sb.logMerge);
    // the stable super the mount will read logs_root from must be of this round
    if (!s.status || s.status.roundSeq !== roundSeq) return null;
    const live = await this.cancelRequests(t, s.requests, rid);
    if (s.splices.length > 0) {
      if (live.length > 0) return null; // the barrier: parents must not move under requests
      await this.rebalanceSplices(t, s.splices);
    }
    if (live.length >= MAX_MERGE_REQUESTS) return null;
    if (t.sb.metaAlloc[0].totalLen + t.sb.metaAlloc[1].totalLen < 2 * MERGE_REQUEST_AVAIL_BLOCKS) {
      this.host.counters.inc("log_merge_request_enospc"); // later, when space was freed
      return null;
    }
    s = await readState(t.w.cache, t.sb.logMerge);
    if (s.splices.length > 0) return null;
    const trees = await inputTrees(t.w.cache, t.sb.logsRoot, roundSeq);
    const inputs = trees.map((lt) => lt.itemRoot).filter((r) => r.height > 0);
    for (const { id, range } of s.ranges) {
      const k = await nextInputKey(t.w.cache, inputs, range.start, range.end);
      if (!k) {
        await btreeDelete(t.w, t.sb.logMerge, rangeKey(id)); // nothing left to merge in it
        continue;
      }
      const sub = await btreeGetParent(t.w.cache, t.sb.fsRoot, k);
      if (live.some((r) => sub.whole || (r.flags & LOG_MERGE_REQUEST_WHOLE) !== 0 ||
        sameRef(r.root.ref, sub.root.ref))) continue;
      if (!sub.whole) this.host.counters.inc("log_merge_subtree_requests");
      if (live.length > 0) this.host.counters.inc("log_merge_concurrent_requests");
      return this.makeRequest(t,
        { rid, roundSeq, id, range, start: k, sub, nrInputs: trees.length });
    }
    return null;
  }

  private async makeRequest(t: VolumeTxn, a: { rid: bigint; roundSeq: number; id: number;
    range: LogMergeRange; start: Buffer; sub: Subtree; nrInputs: number }):
    Promise<LogMergeRequest> {
    const end = minKey(a.range.end, a.sub.end);
    await btreeDelete(t.w, t.sb.logMerge, rangeKey(a.id));
    if (Buffer.compare(end, a.range.end) < 0) {
      await this.addRange(t, { start: keyInc(end), end: a.range.end });
    }
    const req: LogMergeRequest = {
      rid: a.rid, seq: this.host.nextSeq(), roundSeq: a.roundSeq,
      flags: a.sub.whole ? LOG_MERGE_REQUEST_WHOLE : 0, metaAvail: await this.fillAvail(t),
      root: a.sub.root, logsRoot: this.host.stableSuper().logsRoot, start: a.start, end,
      nrInputs: a.nrInputs,
    };
    await btreeInsert(t.w, t.sb.logMerge, requestKey(req.rid, req.seq),
      encodeLogMergeRequest(req), { seq: 0 });
    return req;
  }

  /** A new alloc list of free metadata blocks for a request. */
  private async fillAvail(t: VolumeTxn): Promise<AllocListHead> {
    const blknos: number[] = [];
    while (blknos.length < MERGE_REQUEST_AVAIL_BLOCKS) {
      const src = t.sb.metaAlloc[0].totalLen > 0 ? t.sb.metaAlloc[0] : t.sb.metaAlloc[1];
      const e = await allocExtent(t.w, src, MERGE_REQUEST_AVAIL_BLOCKS - blknos.length);
      if (!e) throw new FsError("ENOSPC", "no metadata space for a log merge request");
      for (let b = e.start; b < e.start + e.len; b++) blknos.push(b);
    }
    const head = emptyListHead();
    prependListBlocks(t.w, head, blknos);
    return head;
  }

  // -------------------------------------------------------------------------------------
  // COMMIT_LOG_MERGE.

  /** Splices a mount's completed work; ESTALE (changing nothing) for a request that is gone. */
  async commitLogMerge(p: Buffer, rid: bigint): Promise<Buffer> {
    const comp = decodeLogMergeCompletion(p);
    if (comp.rid !== rid) throw new FsError("EINVAL", "log merge completion of another mount");
    this.lastAskMs = this.host.monotonicMs();
    const out = { stale: true };
    await this.host.hold(async (t) => { out.stale = !(await this.complete(t, comp)); });
    this.kick();
    if (out.stale) {
      this.host.counters.inc("log_merge_commit_stale");
      throw new FsError("ESTALE", "log merge request is no longer current");
    }
    return Buffer.alloc(0);
  }

  /** False when the completion is stale (nothing of it was used). */
  private async complete(t: VolumeTxn, comp: LogMergeCompletion): Promise<boolean> {
    const item = await btreeLookup(t.w.cache, t.sb.logMerge, requestKey(comp.rid, comp.seq));
    if (!item) return false;
    const req = decodeLogMergeRequest(item.val);
    const status = await btreeLookup(t.w.cache, t.sb.logMerge, statusKey());
    assert(status && decodeLogMergeStatus(status.val).roundSeq === req.roundSeq,
      "log merge request of another round");
    if ((comp.flags & LOG_MERGE_COMP_ERROR) !== 0) {
      this.host.counters.inc("log_merge_request_error");
      await this.cancel(t, req);
      return true;
    }
    const remain = (comp.flags & LOG_MERGE_COMP_REMAIN) !== 0 ? comp.remain : null;
    if (remain && (Buffer.compare(remain, req.start) < 0 || Buffer.compare(remain, req.end) > 0)) {
      throw new FsError("EINVAL", "log merge completion resumes outside its range");
    }
    const whole = (req.flags & LOG_MERGE_REQUEST_WHOLE) !== 0;
    if (!sameRoot(comp.root, req.root) &&
      !(await btreeSetParent(t.w, t.sb.fsRoot, req.start, req.root, comp.root, whole))) {
      this.host.counters.inc("log_merge_splice_stale");
      await this.cancel(t, req);
      return false;
    }
    await this.returnList(t, comp.metaAvail);
    await this.returnList(t, comp.metaFreed);
    await btreeDelete(t.w, t.sb.logMerge, requestKey(req.rid, req.seq));
    this.host.counters.inc("log_merge_completions");
    this.host.counters.inc("log_merge_keys", comp.keys);
    await this.afterSplice(t, req, comp.root, remain, whole);
    return true;
  }

  /** Queues the rest of the range, or leaves it for after a rebalance of the new subtree. */
  private async afterSplice(t: VolumeTxn, req: LogMergeRequest, root: BtreeRoot,
    remain: Buffer | null, whole: boolean): Promise<void> {
    if (!whole && !subtreeRootBalanced(await readSubtreeRoot(t.w.cache, root))) {
      const splice: LogMergeSplice = { at: req.start, flags: remain ? LOG_MERGE_SPLICE_REMAIN : 0,
        start: remain ?? MIN_KEY, end: remain ? req.end : MIN_KEY };
      await btreeInsert(t.w, t.sb.logMerge, spliceKey(req.seq), encodeLogMergeSplice(splice),
        { seq: 0 });
    } else if (remain) {
      await this.addRange(t, { start: remain, end: req.end });
    }
  }

  /** With no request outstanding: rebalance spliced subtrees, queue their remaining ranges. */
  private async rebalanceSplices(t: VolumeTxn, splices: MergeState["splices"]): Promise<void> {
    for (const { seq, splice } of splices.slice(0, MAX_SPLICES_PER_COMMIT)) {
      await btreeRebalance(t.w, t.sb.fsRoot, splice.at);
      if ((splice.flags & LOG_MERGE_SPLICE_REMAIN) !== 0) {
        await this.addRange(t, { start: splice.start, end: splice.end });
      }
      await btreeDelete(t.w, t.sb.logMerge, spliceKey(seq));
      this.host.counters.inc("log_merge_rebalance");
    }
  }

  // -------------------------------------------------------------------------------------
  // The server merging by itself, and phase 3.

  /** One bounded step of the first range with input items, straight into fs_root. */
  private async localStep(t: VolumeTxn, status: LogMergeStatus): Promise<void> {
    const s = await readState(t.w.cache, t.sb.logMerge);
    assert(s.requests.length === 0 && s.splices.length === 0, "local merge beside mounts' work");
    const inputs = (await inputTrees(t.w.cache, t.sb.logsRoot, status.roundSeq))
      .map((lt) => lt.itemRoot).filter((r) => r.height > 0);
    for (const { id, range } of s.ranges) {
      const k = await nextInputKey(t.w.cache, inputs, range.start, range.end);
      await btreeDelete(t.w, t.sb.logMerge, rangeKey(id));
      if (!k) continue;
      const r = await btreeMerge(t.w, t.sb.fsRoot, inputs, k, range.end,
        { dropTombstones: true, maxItems: MERGE_STEP_KEYS });
      if (r.next) await this.addRange(t, { start: r.next, end: range.end });
      this.host.counters.inc("log_merge_keys", r.keys);
      this.host.counters.inc("log_merge_local_steps");
      return;
    }
  }

  /** Phase 3, retiring: true once the round ended (every input retired), false if stopped. */
  private async retireAll(): Promise<boolean> {
    for (;;) {
      if (this.host.stopped()) return false;
      const out = { ended: false };
      await this.host.hold(async (t) => { out.ended = await this.retireStep(t); });
      if (out.ended) return true;
    }
  }

  /**
   * Retires input trees, their bloom blocks counting against the step's bound; with the last
   * one, deletes the round's status. True when the round ended (or had ended already).
   */
  private async retireStep(t: VolumeTxn): Promise<boolean> {
    const s = await readState(t.w.cache, t.sb.logMerge);
    if (!s.status) return true;
    assert(s.ranges.length + s.requests.length + s.splices.length === 0,
      "log merge freeing before the merge is done");
    let freed = 0;
    for (const lt of await inputTrees(t.w.cache, t.sb.logsRoot, s.status.roundSeq)) {
      const bloom = lt.bloomRef.blkno !== 0 ? 1 : 0;
      if (freed + bloom > this.freeBlocksPerCommit) return false;
      await this.retire(t, lt);
      freed += bloom;
    }
    this.host.counters.inc("log_merge_freed_blocks", freed);
    await btreeDelete(t.w, t.sb.logMerge, statusKey());
    return true;
  }

  /** A merged tree leaves logs_root; its item blocks are freed later, by freeStep. */
  private async retire(t: VolumeTxn, lt: LogTrees): Promise<void> {
    if (lt.bloomRef.blkno !== 0) await t.w.freeRef(lt.bloomRef);
    await returnLogTreeAllocators(t, lt, "all");
    await btreeDelete(t.w, t.sb.logsRoot, logTreesKey(lt.rid, BigInt(lt.nr)));
    if (lt.itemRoot.height > 0) {
      const fr: LogMergeFreeing = { root: lt.itemRoot, rid: lt.rid, nr: lt.nr, next: MIN_KEY };
      await btreeInsert(t.w, t.sb.logMerge, freeingKey(this.host.nextSeq()),
        encodeLogMergeFreeing(fr), { seq: 0 });
    }
    this.host.counters.inc("log_merge_retired_trees");
  }

  /** Phase 3, freeing, one bounded commit at a time: true once nothing is left to free. */
  private async freeAll(): Promise<boolean> {
    for (;;) {
      if (this.host.stopped()) return false;
      const out = { more: false };
      await this.host.hold(async (t) => { out.more = await this.freeStep(t); });
      if (!out.more) return true;
    }
  }

  /** Frees up to freeBlocksPerCommit blocks of the retired trees; true if some are left. */
  private async freeStep(t: VolumeTxn): Promise<boolean> {
    const s = await readState(t.w.cache, t.sb.logMerge);
    let budget = this.freeBlocksPerCommit;
    if (s.freeing.length > 0) this.host.counters.inc("log_merge_free_steps");
    for (const { seq, fr } of s.freeing) {
      if (budget < BTREE_FREE_MIN_BLOCKS) return true;
      const r = await btreeFreeStep(t.w, fr.root, fr.next, budget);
      budget -= r.freed;
      this.host.counters.inc("log_merge_freed_blocks", r.freed);
      if (r.next === null) {
        await btreeDelete(t.w, t.sb.logMerge, freeingKey(seq));
        this.host.counters.inc("log_merge_freed_trees");
        continue;
      }
      await btreeForce(t.w, t.sb.logMerge, freeingKey(seq),
        encodeLogMergeFreeing({ ...fr, next: r.next }), { seq: 0 });
      return true;
    }
    return false;
  }
}

