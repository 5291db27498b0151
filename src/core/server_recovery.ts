/*
 * Client recovery, fencing and reclaim (upstream server.c: recovery, fence-pending-recovery
 * worker, reclaim_rid).
 *
 * A mount that stops talking to the server without a farewell may still be alive somewhere
 * (partitioned, paused, its clock stepped), holding locks and writing blocks from its
 * allocators. Nothing it held can be given to others until it is certainly dead: the server
 * asks for it to be fenced (the host's fence callback: upstream's fence requests served by
 * scoutfs-fenced; in the simulator the agent kills the node), and only once fencing succeeded
 * does it reclaim the mount's resources in one server commit:
 *  - the mount's current (unfinalized) log tree is closed: an open transaction is abandoned
 *    (its items were never acknowledged; the blocks it wrote are unreferenced and come from
 *    its committed avail list, which is returned below), so commitTransSeq = getTransSeq;
 *  - its metadata avail/freed lists and data avail/freed extents go back to the global
 *    allocators;
 *  - an empty item tree is deleted outright; a non-empty one stays (its committed items are
 *    what readers see) and a log merge is requested, which finalizes it together with every
 *    other open tree (finalizing it alone could let a merged tombstone resurrect an older
 *    version in another mount's open tree) and frees it once merged;
 *  - its mounted_clients item is deleted, and its locks are removed from the lock server.
 *
 * When: (1) after a failover, every rid in mounted_clients must greet the new server within
 * recoveryTimeoutMs (upstream 30 s) or is fenced for "client_recovery"; (2) a connected client
 * whose connection broke and did not come back within the messaging layer's reconnect timeout
 * is fenced for "client_reconnect". A fenced rid that greets again is refused with ENOLINK
 * (its session is gone): so is a rid that greets with an earlier server's term but has no
 * mounted_clients item (it was reclaimed under an earlier server).
 *
 * A fence that fails is a persistent error: the server stops (onFatal) so that another
 * leader is elected and retries, as upstream.
 */
import type { Env, TimerHandle } from "../env/env.js";
import type { Counters } from "../util/counters.js";
import { FsError } from "../util/errno.js";
import { drainList, freeExtent, listExtents } from "./alloc.js";
import { btreeDelete, btreeForce, btreeFree, btreeLookup, btreeNext, btreePrev } from "./btree.js";
import type { BlockCache } from "./block.js";
import type { BtreeRoot } from "./format.js";
import {
  decodeLogTrees, encodeLogTrees, LOG_TREES_FLAG_FINALIZED, type LogTrees,
} from "./format_log.js";
import { keyFirst, logTreesKey, mountedClientKey, U64_MAX, Zone } from "./key.js";
import type { VolumeTxn } from "./volume.js";

/** Upstream's client recovery timeout after a failover. */
export const CLIENT_RECOVERY_TIMEOUT_MS = 30_000;
/** Fenced rids remembered per server term (refused if they greet again). */
export const MAX_FENCED_RIDS = 4096;

export type FenceReason = "client_recovery" | "client_reconnect";

export interface RecoveryHost {
  env: Env;
  counters: Counters;
  hold(fn: (t: VolumeTxn) => Promise<void>): Promise<void>;
  /** Resolves once the rid can no longer write (fenced); rejects if fencing failed. */
  fence(rid: bigint, reason: FenceReason): Promise<void>;
  /**
   * True if the host knows the rid's mount is dead (its process is gone): recovery fences
   * and reclaims it at once instead of waiting out the timeout for a reconnect that cannot
   * come. Absent or false: wait.
   */
  knownDead?(rid: bigint): Promise<boolean>;
  /** The fenced rid's locks are released. */
  removeLocks(rid: bigint): void;
  /** A reclaimed non-empty log tree must be finalized and merged. */
  requestMerge(): void;
  /** A persistent failure: the server must stop so that another leader retries. */
  onFatal(e: unknown): void;
  stopped(): boolean;
}

export class ClientRecovery {
  private readonly pending = new Set<bigint>();
  private readonly fenced = new Set<bigint>();
  private readonly inFlight = new Map<bigint, Promise<void>>();
  private timer: TimerHandle | null = null;

  constructor(private readonly host: RecoveryHost) {}

  /** After a failover: these rids must greet within timeoutMs or be fenced. */
  start(rids: readonly bigint[], timeoutMs: number): void {
    for (const rid of rids) this.pending.add(rid);
    if (this.pending.size === 0) return;
    this.host.env.logger.log("info", `waiting up to ${timeoutMs} ms for ${this.pending.size} ` +
      "mounts to reconnect");
    this.timer = this.host.env.timers.after(timeoutMs, () => {
      this.timer = null;
      for (const rid of [...this.pending]) this.fenceAndReclaim(rid, "client_recovery");
    });
    const dead = this.host.knownDead;
    if (dead === undefined) return;
    for (const rid of [...this.pending]) {
      void dead(rid).then((yes) => {
        if (yes && this.pending.has(rid) && !this.host.stopped()) {
          this.host.counters.inc("fence_known_dead");
          void this.fenceAndReclaim(rid, "client_recovery");
        }
      }, () => undefined);
    }
  }

  /** Rids of the previous server's mounts that have not greeted yet. */
  get pendingRids(): bigint[] {
    return [...this.pending];
  }

  isFenced(rid: bigint): boolean {
    return this.fenced.has(rid) || this.inFlight.has(rid);
  }

  greeted(rid: bigint): void {
    this.pending.delete(rid);
    if (this.pending.size === 0 && this.timer) {
      this.host.env.timers.clear(this.timer);
      this.timer = null;
    }
  }

  stop(): void {
    if (this.timer) this.host.env.timers.clear(this.timer);
    this.timer = null;
  }

  /** Fences the rid, then reclaims what it held; idempotent per rid. */
  fenceAndReclaim(rid: bigint, reason: FenceReason): Promise<void> {
    const cur = this.inFlight.get(rid);
    if (cur) return cur;
    this.pending.delete(rid);
    const p = this.run(rid, reason).finally(() => { this.inFlight.delete(rid); });
    this.inFlight.set(rid, p);
    return p;
  }

  private async run(rid: bigint, reason: FenceReason): Promise<void> {
    const name = rid.toString(16).padStart(16, "0");
    this.host.env.logger.log("warn", `fencing rid ${name} for ${reason}`);
    this.host.counters.inc(`fence_${reason}`);
    try {
      await this.host.fence(rid, reason);
    } catch (e) {
      if (this.host.stopped()) return;
      this.host.counters.inc("fence_errors");
      this.host.env.logger.log("error", `fencing rid ${name} failed: ${String(e)}`);
      this.host.onFatal(e);
      return;
    }
    this.rememberFenced(rid);
    this.host.removeLocks(rid);
    let merge = false;
    try {
      await this.host.hold(async (t) => { merge = await reclaimRid(t, rid, this.host.counters); });
    } catch (e) {
      if (!this.host.stopped()) this.host.onFatal(e);
      return;
    }
    this.host.counters.inc("reclaimed_rids");
    this.host.env.logger.log("info", `reclaimed resources of rid ${name}`);
    if (merge) this.host.requestMerge();
  }

  private rememberFenced(rid: bigint): void {
    if (this.fenced.size >= MAX_FENCED_RIDS) {
      const oldest = this.fenced.values().next().value;
      if (oldest !== undefined) this.fenced.delete(oldest);
    }
    this.fenced.add(rid);
  }
}

/** The rid's newest log tree in logs_root, if any. */
export async function currentLogTrees(cache: BlockCache, root: BtreeRoot, rid: bigint):
  Promise<LogTrees | null> {
  const it = await btreePrev(cache, root, logTreesKey(rid, U64_MAX));
  if (!it || it.key[0] !== Zone.LOG_TREES || keyFirst(it.key) !== rid) return null;
  return decodeLogTrees(it.val);
}

/**
 * Reclaims a fenced rid inside a server commit (see the header). Returns whether a log
 * merge is needed for the committed items its tree still holds.
 */
export async function reclaimRid(t: VolumeTxn, rid: bigint, counters: Counters):
  Promise<boolean> {
  let merge = false;
  const lt = await currentLogTrees(t.w.cache, t.sb.logsRoot, rid);
  if (lt && (lt.flags & LOG_TREES_FLAG_FINALIZED) === 0) {
    if (lt.getTransSeq > lt.commitTransSeq) {
      counters.inc("reclaimed_open_logs");
      lt.commitTransSeq = lt.getTransSeq;
    }
    await returnLogTreeAllocators(t, lt, "all");
    const key = logTreesKey(rid, BigInt(lt.nr));
    if (lt.itemRoot.height === 0) {
      if (lt.bloomRef.blkno !== 0) await t.w.freeRef(lt.bloomRef);
      await btreeDelete(t.w, t.sb.logsRoot, key);
    } else {
      await btreeForce(t.w, t.sb.logsRoot, key, encodeLogTrees(lt), { seq: 0 });
      merge = true;
    }
  }
  const mc = mountedClientKey(rid);
  if (await btreeLookup(t.w.cache, t.sb.mountedClients, mc)) {
    await btreeDelete(t.w, t.sb.mountedClients, mc);
  }
  return merge;
}

/**
 * Gives a log tree's allocators back to the global ones in a server commit: its freed lists
 * only (a mount's next transaction: what its last commit freed is reusable now), or all of
 * them (a fenced mount, a merged tree). The heads are left empty.
 */
export async function returnLogTreeAllocators(t: VolumeTxn, lt: LogTrees, which: "freed" | "all"):
  Promise<void> {
  const free = (b: number): Promise<void> => t.alloc.freeCommitted(t.w, b);
  const meta = which === "all" ? [lt.metaAvail, lt.metaFreed] : [lt.metaFreed];
  for (const h of meta) await drainList(t.w, h, t.sb.metaAlloc[1], free);
  const data = which === "all" ? [lt.dataAvail, lt.dataFreed] : [lt.dataFreed];
  for (const a of data) {
    for (const e of await listExtents(t.w, a)) await freeExtent(t.w, t.sb.dataAlloc, e);
    await btreeFree(t.w, a.root);
    a.totalLen = 0;
  }
}

/** The rids of the mounted_clients items (the mounts the previous server had). */
export async function mountedRids(cache: BlockCache, root: BtreeRoot): Promise<bigint[]> {
  const out: bigint[] = [];
  let k = mountedClientKey(0n);
  for (;;) {
    const it = await btreeNext(cache, root, k);
    if (!it || it.key[0] !== Zone.MOUNTED_CLIENT) return out;
    const rid = keyFirst(it.key);
    out.push(rid);
    if (out.length > 1_000_000) throw new FsError("EIO", "mounted_clients has too many items");
    if (rid === U64_MAX) return out;
    k = mountedClientKey(rid + 1n);
  }
}
