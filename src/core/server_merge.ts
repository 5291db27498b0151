/*
 * Log merging, run by the server (upstream server.c log merge + forest.c merge worker).
 *
 * Mounts' log trees only grow; merging moves their items into fs_root and frees them. It runs
 * in three phases:
 *
 * 1. Finalization. Every mount's open log tree is finalized together, so that every item in a
 *    finalized tree is older than every item in the trees opened after it (otherwise merging a
 *    tombstone could resurrect an older version still sitting in an unfinalized tree). The
 *    server closes the gate for new transactions (GET_LOG_TREES waits), asks every mount to
 *    commit (SYNC_LOG_TREES), waits a bounded time until no current tree has an open
 *    transaction, then marks them all FINALIZED in one commit and reopens the gate; the next
 *    GET_LOG_TREES of each mount creates its tree nr+1 with a seq above the finalization.
 * 2. Merge. In bounded steps, each its own server commit, the finalized trees' items are merged
 *    into fs_root with btreeMerge (newest seq wins, tombstones applied and dropped, deltas
 *    summed); the resume key is stored in the log_merge btree in the same commit, so a crash
 *    or failover resumes exactly where the last durable step ended.
 * 3. Freeing. The finalized trees are deleted: their item blocks and blooms freed, their unused
 *    allocators returned to the global ones.
 *
 * Readers stay correct throughout: a key's merged version in fs_root has the same seq as in
 * its finalized tree, which readers also still see until phase 3.
 *
 * This version merges inside the server; handing key ranges to mounts (GET_LOG_MERGE /
 * COMMIT_LOG_MERGE) so merging scales with the cluster is still to be built.
 */
import { drainList, freeExtent, listExtents } from "./alloc.js";
import { btreeDelete, btreeForce, btreeFree, btreeLookup } from "./btree.js";
import { btreeMerge } from "./btree_merge.js";
import { type BtreeRoot } from "./format.js";
import { encodeLogTrees, LOG_TREES_FLAG_FINALIZED, type LogTrees } from "./format_log.js";
import { listLogTrees } from "./forest.js";
import { KEY_SIZE, logTreesKey, makeKey, MAX_KEY, MIN_KEY, Zone } from "./key.js";
import type { VolumeTxn } from "./volume.js";

/** A log tree is finalized once its item btree is this tall. */
export const FINALIZE_HEIGHT = 3;
/** Keys merged per server commit. */
export const MERGE_STEP_KEYS = 20_000;
/** How long finalization waits for every mount to commit (log_merge_wait_timeout_ms). */
export const LOG_MERGE_WAIT_TIMEOUT_MS = 500;
const POLL_MS = 5;

const statusKey = (): Buffer => makeKey(Zone.LOG_MERGE_STATUS, 0n, 0);

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
}

export class LogMerger {
  private gate: Promise<void> | null = null;
  private openGate: (() => void) | null = null;
  private running = false;
  private forced = false;

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
    const trees = await this.host.committedLogTrees();
    const finalized = trees.filter((lt) => (lt.flags & LOG_TREES_FLAG_FINALIZED) !== 0);
    const tall = trees.some((lt) => lt.itemRoot.height >= FINALIZE_HEIGHT);
    if (finalized.length === 0 && !tall && !this.forced) return;
    this.forced = false;
    if (finalized.length === 0 && !(await this.finalize())) return;
    await this.merge();
    await this.freeFinalized();
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
          .filter((lt) => (lt.flags & LOG_TREES_FLAG_FINALIZED) === 0 && lt.getTransSeq > lt.commitTransSeq);
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
          await btreeForce(t.w, t.sb.logsRoot, logTreesKey(lt.rid, BigInt(lt.nr)), encodeLogTrees(lt), { seq: 0 });
        }
        await btreeForce(t.w, t.sb.logMerge, statusKey(), Buffer.from(MIN_KEY), { seq: 0 });
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

  /** Phase 2: bounded, durable steps from the stored resume key. */
  private async merge(): Promise<void> {
    for (let done = false; !done;) {
      await this.host.hold(async (t) => {
        const status = await btreeLookup(t.w.cache, t.sb.logMerge, statusKey());
        if (!status) {
          done = true;
          return;
        }
        const inputs: BtreeRoot[] = (await listLogTrees(t.w.cache, t.sb.logsRoot))
          .filter((lt) => (lt.flags & LOG_TREES_FLAG_FINALIZED) !== 0).map((lt) => lt.itemRoot);
        const start = status.val.length === KEY_SIZE ? status.val : MIN_KEY;
        const r = await btreeMerge(t.w, t.sb.fsRoot, inputs, start, MAX_KEY,
          { dropTombstones: true, maxItems: MERGE_STEP_KEYS });
        this.host.counters.inc("log_merge_keys", r.keys);
        if (r.next) {
          await btreeForce(t.w, t.sb.logMerge, statusKey(), r.next, { seq: 0 });
        } else {
          await btreeDelete(t.w, t.sb.logMerge, statusKey());
          done = true;
        }
      });
    }
  }

  /** Phase 3: delete the merged trees and return what they held. */
  private async freeFinalized(): Promise<void> {
    await this.host.hold(async (t) => {
      if (await btreeLookup(t.w.cache, t.sb.logMerge, statusKey())) return; // not merged yet
      for (const lt of await listLogTrees(t.w.cache, t.sb.logsRoot)) {
        if ((lt.flags & LOG_TREES_FLAG_FINALIZED) === 0) continue;
        await btreeFree(t.w, lt.itemRoot);
        if (lt.bloomRef.blkno !== 0) await t.w.freeRef(lt.bloomRef);
        const free = (b: number): Promise<void> => t.alloc.freeCommitted(t.w, b);
        await drainList(t.w, lt.metaAvail, t.sb.metaAlloc[1], free);
        await drainList(t.w, lt.metaFreed, t.sb.metaAlloc[1], free);
        for (const a of [lt.dataAvail, lt.dataFreed]) {
          for (const e of await listExtents(t.w, a)) await freeExtent(t.w, t.sb.dataAlloc, e);
          await btreeFree(t.w, a.root);
        }
        await btreeDelete(t.w, t.sb.logsRoot, logTreesKey(lt.rid, BigInt(lt.nr)));
        this.host.counters.inc("log_merge_freed_trees");
      }
    });
  }
}
