/*
 * Log merging, the mount's half (upstream forest.c merge worker): the merge worker.
 *
 * While the mount is mounted, its worker asks the server for merge work (GET_LOG_MERGE).
 * A request gives it an fs_root subtree, a key range inside it, a committed logs_root to find
 * the round's finalized input trees, and an alloc list of free blocks. The worker merges the
 * inputs' items of the range into its copy of the subtree (btree_subtree.ts subtreeMerge: COW
 * in a private MetaTxn stamped with the request's seq, every block from the request's list,
 * every replaced block recorded in a freed list), stopping early when it reaches its dirty
 * budget, when its allocator runs low or when the subtree's root could not take another
 * key. It writes and flushes its blocks, then sends COMMIT_LOG_MERGE with the new subtree
 * root, both lists and the key to resume from. The server splices it (server_merge.ts).
 *
 * The worker runs one request at a time and asks for the next only after the server has
 * answered the completion: the server relies on that to cancel a request whose mount asks
 * again (that mount is no longer working on it). Failures are reported as an ERROR
 * completion so the server can reclaim the request at once; a completion the server refuses
 * (ESTALE: it was already applied before a failover, or cancelled) is dropped: every block
 * it wrote came from the request's list, which the server owns again.
 *
 * Polling: "no round" (ENOENT) backs off from idleMinMs to idleMaxMs, "nothing to hand out
 * right now" (EAGAIN) from busyMinMs to busyMaxMs, doubling each time; work resets both.
 * Every wait is an env timer, cancelled by stop().
 */
import type { BlockDevice, Env, TimerHandle } from "../env/env.js";
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { FsError, isFsError } from "../util/errno.js";
import { ListAllocator } from "./alloc.js";
import { type BlockCache, MetaTxn } from "./block.js";
import { subtreeMerge } from "./btree_subtree.js";
import { type BtreeRoot, emptyListHead, emptyRoot } from "./format.js";
import {
  decodeLogMergeRequest, encodeLogMergeCompletion, LOG_MERGE_COMP_ERROR, LOG_MERGE_COMP_REMAIN,
  LOG_MERGE_REQUEST_WHOLE, LOG_TREES_FLAG_FINALIZED, type LogMergeCompletion,
  type LogMergeRequest,
} from "./format_log.js";
import { type ForestRoots, listLogTrees } from "./forest.js";
import { MIN_KEY } from "./key.js";
import { NetCmd } from "./msg.js";

export interface MergeWorkerTuning {
  /** Dirty blocks one request may COW before the worker stops and sends what it has. */
  maxDirtyBlocks: number;
  /** Keys merged per request at most. */
  maxItems: number;
  /** Stop when the request's allocator holds fewer blocks than this (one key needs < 8). */
  availReserve: number;
  idleMinMs: number;
  idleMaxMs: number;
  busyMinMs: number;
  busyMaxMs: number;
}

export const DEFAULT_MERGE_WORKER_TUNING: Readonly<MergeWorkerTuning> = Object.freeze({
  maxDirtyBlocks: 64, maxItems: 100_000, availReserve: 24,
  idleMinMs: 100, idleMaxMs: 1000, busyMinMs: 10, busyMaxMs: 500,
});

/** Times the worker re-reads the input list after a stale logs_root. */
const MAX_INPUT_RETRIES = 4;

export interface MergeWorkerOptions {
  env: Env;
  cache: BlockCache;
  meta: BlockDevice;
  counters: Counters;
  rid: bigint;
  request(cmd: NetCmd, payload: Buffer): Promise<Buffer>;
  /** The last committed roots, from the server. */
  getRoots(): Promise<ForestRoots>;
  tuning?: Partial<MergeWorkerTuning>;
}

type Answer = { kind: "work"; req: LogMergeRequest } | { kind: "idle" } | { kind: "busy" };

export class MergeWorker {
  private readonly tuning: MergeWorkerTuning;
  private loop: Promise<void> | null = null;
  private stopping = false;
  private timer: TimerHandle | null = null;
  private wake: (() => void) | null = null;

  constructor(private readonly opts: MergeWorkerOptions) {
    this.tuning = { ...DEFAULT_MERGE_WORKER_TUNING, ...opts.tuning };
    assert(this.tuning.availReserve >= 8 && this.tuning.maxDirtyBlocks >= 4, "merge worker tuning");
  }

  start(): void {
    assert(!this.loop, "merge worker started twice");
    this.loop = this.run().catch((e: unknown) => {
      this.opts.env.logger.log("error", `log merge worker stopped: ${String(e)}`);
    });
  }

  /** Stops after the request in hand (completed or reported failed); resolves when idle. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) this.opts.env.timers.clear(this.timer);
    this.timer = null;
    this.wake?.();
    this.wake = null;
    await this.loop;
  }

  private async run(): Promise<void> {
    const t = this.tuning;
    let idleMs = t.idleMinMs;
    let busyMs = t.busyMinMs;
    while (!this.stopping) {
      const a = await this.ask();
      if (a.kind === "work") {
        idleMs = t.idleMinMs;
        busyMs = t.busyMinMs;
        await this.work(a.req);
        continue;
      }
      if (a.kind === "busy") {
        await this.sleep(busyMs);
        busyMs = Math.min(busyMs * 2, t.busyMaxMs);
      } else {
        await this.sleep(idleMs);
        idleMs = Math.min(idleMs * 2, t.idleMaxMs);
        busyMs = t.busyMinMs;
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    if (this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      this.wake = resolve;
      this.timer = this.opts.env.timers.after(ms, () => {
        this.timer = null;
        this.wake = null;
        resolve();
      });
    });
  }

  private async ask(): Promise<Answer> {
    try {
      const p = await this.opts.request(NetCmd.GET_LOG_MERGE, Buffer.alloc(0));
      return { kind: "work", req: decodeLogMergeRequest(p) };
    } catch (e) {
      if (isFsError(e, "EAGAIN")) return { kind: "busy" };
      if (isFsError(e, "ENOENT")) return { kind: "idle" };
      if (!isFsError(e)) throw e;
      // no connection, the server stopping, a failed server commit: ask again later
      this.opts.counters.inc("log_merge_worker_ask_errors");
      return { kind: "idle" };
    }
  }

  private async work(req: LogMergeRequest): Promise<void> {
    if (req.rid !== this.opts.rid) {
      throw new FsError("EPROTO", "log merge request for another mount");
    }
    this.opts.counters.inc("log_merge_worker_requests");
    const done: MergeDone = this.stopping ? { comp: errorCompletion(req), w: null }
      : await this.merge(req);
    try {
      await this.opts.request(NetCmd.COMMIT_LOG_MERGE, encodeLogMergeCompletion(done.comp));
      done.w?.markClean();
      this.opts.counters.inc("log_merge_worker_keys", done.comp.keys);
    } catch (e) {
      if (!isFsError(e)) throw e;
      // refused (ESTALE) or unanswered: the server still owns every block we wrote
      done.w?.abandon();
      this.opts.counters.inc(isFsError(e, "ESTALE") ? "log_merge_worker_stale"
        : "log_merge_worker_commit_errors");
    }
  }

  private merge(req: LogMergeRequest): Promise<MergeDone> {
    return mergeRequest({ ...this.opts, log: (m) => { this.opts.env.logger.log("warn", m); } },
      req, this.tuning);
  }
}

/** What merging one request needs from its mount. */
export interface MergeContext {
  cache: BlockCache;
  meta: BlockDevice;
  counters: Counters;
  /** The last committed roots, from the server. */
  getRoots(): Promise<ForestRoots>;
  log(msg: string): void;
}

/** A request's completion, and the transaction that wrote its blocks (null on failure). */
export interface MergeDone {
  comp: LogMergeCompletion;
  w: MetaTxn | null;
}

/**
 * Merges one request's range into its subtree and writes the blocks durably; an ERROR
 * completion when anything fails (nothing of the work is then used). The caller sends the
 * completion, then marks w clean (accepted) or abandons it (refused).
 */
export async function mergeRequest(ctx: MergeContext, req: LogMergeRequest,
  tuning: MergeWorkerTuning = DEFAULT_MERGE_WORKER_TUNING): Promise<MergeDone> {
  const avail = { ...req.metaAvail, ref: { ...req.metaAvail.ref } };
  const freed = emptyListHead();
  const w = new MetaTxn(ctx.cache, req.seq, new ListAllocator(avail, freed));
  const root: BtreeRoot = { ref: { ...req.root.ref }, height: req.root.height };
  try {
    const inputs = await mergeInputs(ctx, req);
    const r = await subtreeMerge(w, root, inputs, req.start, req.end, {
      whole: (req.flags & LOG_MERGE_REQUEST_WHOLE) !== 0, maxItems: tuning.maxItems,
      maxDirtyBlocks: tuning.maxDirtyBlocks, allocLow: () => avail.totalNr < tuning.availReserve,
    });
    await w.writeDirty();
    await ctx.meta.flush();
    const comp: LogMergeCompletion = {
      rid: req.rid, seq: req.seq, flags: r.next ? LOG_MERGE_COMP_REMAIN : 0, keys: r.keys,
      root, metaAvail: avail, metaFreed: freed, remain: r.next ?? MIN_KEY,
    };
    return { comp, w };
  } catch (e) {
    if (!isFsError(e)) throw e;
    w.abandon();
    ctx.counters.inc("log_merge_worker_errors");
    ctx.log(`log merge request ${req.seq} failed: ${e.message}`);
    return { comp: errorCompletion(req), w: null };
  }
}

/** The round's finalized input trees, from the request's logs_root or newer roots. */
async function mergeInputs(ctx: MergeContext, req: LogMergeRequest): Promise<BtreeRoot[]> {
  let logsRoot = req.logsRoot;
  for (let attempt = 0; ; attempt++) {
    try {
      const trees = (await listLogTrees(ctx.cache, logsRoot)).filter((lt) =>
        (lt.flags & LOG_TREES_FLAG_FINALIZED) !== 0 && lt.finalizeSeq < req.roundSeq);
      if (trees.length !== req.nrInputs) {
        throw new FsError("ESTALE", `found ${trees.length} of ${req.nrInputs} merge inputs`);
      }
      return trees.map((lt) => lt.itemRoot).filter((r) => r.height > 0);
    } catch (e) {
      if (!isFsError(e, "ESTALE") || attempt >= MAX_INPUT_RETRIES) throw e;
      logsRoot = (await ctx.getRoots()).logsRoot;
    }
  }
}

/** The completion of a request the mount gives up (the server reclaims it at once). */
export function errorCompletion(req: LogMergeRequest): LogMergeCompletion {
  return { rid: req.rid, seq: req.seq, flags: LOG_MERGE_COMP_ERROR, keys: 0, root: emptyRoot(),
    metaAvail: emptyListHead(), metaFreed: emptyListHead(), remain: MIN_KEY };
}

/** What a mount hands its worker (structural, so this file needs nothing from client.ts). */
export interface MergeWorkerMount {
  env: Env;
  cache: BlockCache;
  meta: BlockDevice;
  counters: Counters;
  opts: { rid: bigint };
  net: { request(cmd: NetCmd, payload: Buffer): Promise<Buffer> };
  getRoots(): Promise<ForestRoots>;
}

/** Starts the merge worker of a mount (client.ts mount()). */
export function startMergeWorker(m: MergeWorkerMount, tuning?: Partial<MergeWorkerTuning>):
  MergeWorker {
  const worker = new MergeWorker({ env: m.env, cache: m.cache, meta: m.meta, counters: m.counters,
    rid: m.opts.rid, request: (cmd, p) => m.net.request(cmd, p), getRoots: () => m.getRoots(),
    tuning });
  worker.start();
  return worker;
}
