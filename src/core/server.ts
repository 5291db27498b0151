/*
 * The server (upstream server.c): run by the elected leader, it owns the super block, fs_root,
 * the global allocators and the list of mounts, and coordinates every mount's transactions.
 *
 * Requests are served through NetServer (net.ts). Every change is made by a "holder" inside a
 * server transaction; holders that arrive while a commit is being prepared share the next
 * commit (one VolumeTxn for all of them), and each is answered only once that commit is
 * durable. Handlers are idempotent because the messaging layer resends requests to a new
 * server after a failover: a request that a previous server already applied must do nothing
 * new (GET_LOG_TREES returns the still-open transaction, COMMIT_LOG_TREES of an already
 * committed seq succeeds).
 *
 * Served here: GREETING (mounted_clients item), ALLOC_INODES, GET_LOG_TREES (reclaim the
 * mount's freed blocks, refill its allocators, open a transaction with a fresh seq),
 * COMMIT_LOG_TREES (record the mount's new roots), GET_ROOTS (the last committed roots),
 * GET_LAST_SEQ, STATFS, OPEN_INO_MAP (the OR of the other mounts' open maps of an inode
 * group, omap_server.ts) and FAREWELL. The server's global seq counter also stamps its own
 * transactions, so every seq it hands out is unique and greater than anything committed.
 */
import type { Env, NetAddr } from "../env/env.js";
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { FsError } from "../util/errno.js";
import {
  allocExtent, type Extent, freeExtent, prependListBlocks,
} from "./alloc.js";
import { btreeDelete, btreeForce, btreeLookup } from "./btree.js";
import { type BtreeRoot, BTREE_ROOT_SIZE, readBtreeRoot, writeBtreeRoot } from "./format.js";
import {
  decodeLogTrees, emptyLogTrees, encodeLogTrees, encodeMountedClient, LOG_TREES_FLAG_FINALIZED,
  type LogTrees, MOUNTED_CLIENT_FLAG_QUORUM,
} from "./format_log.js";
import { logTreesKey, mountedClientKey, U64_MAX } from "./key.js";
import { type Greeting, GreetingFlag, NetCmd } from "./msg.js";
import { NetServer, type NetTuning } from "./net.js";
import type { Volume, VolumeTxn } from "./volume.js";
import { LogMerger } from "./server_merge.js";
import { LockServer } from "./lock_server.js";
import { OmapServer } from "./omap_server.js";
import { listLogTrees } from "./forest.js";
import {
  ClientRecovery, CLIENT_RECOVERY_TIMEOUT_MS, currentLogTrees, type FenceReason, mountedRids,
  returnLogTreeAllocators,
} from "./server_recovery.js";

export interface ServerOptions {
  fsid: bigint;
  fmtVers: number;
  /** The quorum term that elected this server: greater than every earlier server's. */
  term: number;
  /** Metadata blocks a mount's avail list is refilled to when it falls below half. */
  clientMetaAvailTarget?: number;
  /** Data blocks a mount's data_avail is refilled to when it falls below a quarter. */
  clientDataAvailTarget?: number;
  /**
   * Fences a mount that vanished without a farewell (server_recovery.ts): resolves once it
   * can no longer write. Without one, such mounts are never reclaimed (tests of one server).
   */
  fenceClient?: (rid: bigint, reason: FenceReason) => Promise<void>;
  /** The host knows this rid's mount is dead (recovery need not wait for it). */
  ridKnownDead?: (rid: bigint) => Promise<boolean>;
  /** How long previously mounted clients have to reconnect after a failover. */
  recoveryTimeoutMs?: number;
  /** The server stopped on a persistent error (the quorum agent must resign). */
  onFatal?: (e: unknown) => void;
  /** Messaging timeouts (tests shorten the reconnect timeout). */
  netTuning?: Partial<NetTuning>;
}

export const DEFAULT_CLIENT_META_AVAIL = 2048;
export const DEFAULT_CLIENT_DATA_AVAIL = 262_144;
/** Inode numbers handed out per ALLOC_INODES at most (upstream's batch size). */
export const ALLOC_INODES_MAX = 10_240;
/** Holders waiting for the next commit, at most (back-pressure beyond). */
export const MAX_COMMIT_HOLDERS = 1024;

type Holder = (t: VolumeTxn) => Promise<void>;

interface Waiting {
  fn: Holder;
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class Server {
  readonly net: NetServer;
  private seq: number;
  private queue: Waiting[] = [];
  private committing = false;
  private stopped = false;
  private readonly metaTarget: number;
  private readonly dataTarget: number;
  readonly merger: LogMerger;
  private lockServer: LockServer | null = null;
  readonly recovery: ClientRecovery;
  /** OPEN_INO_MAP gathers (omap_server.ts). */
  readonly omap: OmapServer;

  constructor(readonly env: Env, readonly vol: Volume, readonly counters: Counters,
    readonly opts: ServerOptions) {
    this.seq = vol.sb.seq;
    this.metaTarget = opts.clientMetaAvailTarget ?? DEFAULT_CLIENT_META_AVAIL;
    this.dataTarget = opts.clientDataAvailTarget ?? DEFAULT_CLIENT_DATA_AVAIL;
    this.net = new NetServer(env, counters, {
      fsid: opts.fsid, fmtVers: opts.fmtVers, serverTerm: opts.term,
      onGreeting: (g) => this.onGreeting(g),
      onFarewell: (rid) => {
        this.lockServer?.removeClient(rid);
        void this.forget(rid).catch(() => undefined);
      },
      onClientTimeout: (rid) => { this.clientLost(rid); },
      tuning: opts.netTuning,
      name: "server",
    });
    this.recovery = new ClientRecovery({
      env, counters, hold: (fn) => this.hold(fn),
      fence: (rid, reason) => opts.fenceClient!(rid, reason),
      knownDead: opts.ridKnownDead,
      removeLocks: (rid) => { this.lockServer?.removeClient(rid); },
      requestMerge: () => { this.requestMerge(); },
      onFatal: (e) => { this.fatal(e); },
      stopped: () => this.stopped,
    });
    this.omap = new OmapServer({
      env, counters, mountedRids: () => mountedRids(this.vol.cache, this.vol.sb.mountedClients),
      connected: (rid) => this.net.connection(rid)?.connected === true,
      request: (rid, p) => this.net.request(rid, NetCmd.OPEN_INO_MAP, p),
    });
    this.register();
    this.merger = new LogMerger({
      hold: (fn) => this.hold(fn),
      nextSeq: () => this.nextSeq(),
      committedLogTrees: () => listLogTrees(this.vol.cache, this.vol.sb.logsRoot),
      syncClients: () => this.syncClients(),
      sleep: (ms) => new Promise<void>((r) => { this.env.timers.after(ms, r); }),
      monotonicMs: () => this.env.clock.monotonicMs(),
      counters: this.counters,
      onError: (e) => {
        if (!this.stopped) this.env.logger.log("warn", `log merge round failed: ${String(e)}`);
      },
      stableSuper: () => this.vol.sb,
      cache: this.vol.cache,
      connectedClients: () => this.net.clientRids().length,
      stopped: () => this.stopped,
    });
  }

  /** Asks every connected mount to commit now (finalization for log merging). */
  private syncClients(): void {
    for (const rid of this.net.clientRids()) {
      this.net.request(rid, NetCmd.SYNC_LOG_TREES, Buffer.alloc(0)).catch(() => undefined);
    }
  }

  /** Starts a log merge round now (trigger log_merge_force_finalize_ours). */
  requestMerge(): void {
    this.merger.request();
  }

  /** The lock service (created by start(), in recovery of the previous server's mounts). */
  get locks(): LockServer {
    assert(this.lockServer, "server not started");
    return this.lockServer;
  }

  /**
   * Restores the seq counter past every seq already used by a mount, starts the lock server
   * in recovery of the mounts the previous server had (mounted_clients) and the timer that
   * fences those that do not come back, then listens.
   */
  async start(addr: NetAddr): Promise<NetAddr> {
    for (const lt of await listLogTrees(this.vol.cache, this.vol.sb.logsRoot)) {
      this.seq = Math.max(this.seq, lt.getTransSeq, lt.maxItemSeq);
    }
    const rids = await mountedRids(this.vol.cache, this.vol.sb.mountedClients);
    this.lockServer = new LockServer({
      env: this.env, counters: this.counters, nextSeq: () => this.nextSeq(),
      sendToClient: (rid, cmd, payload) => this.net.request(rid, cmd, payload),
      recoverRids: rids,
      onRecovered: (maxWriteSeq) => { this.seq = Math.max(this.seq, maxWriteSeq); },
      name: "server locks",
    });
    if (this.opts.fenceClient) {
      this.recovery.start(rids, this.opts.recoveryTimeoutMs ?? CLIENT_RECOVERY_TIMEOUT_MS);
    }
    return this.net.listen(addr);
  }

  /** A client's connection broke and it did not come back in time: fence and reclaim it. */
  private clientLost(rid: bigint): void {
    if (this.stopped || !this.opts.fenceClient) return;
    void this.recovery.fenceAndReclaim(rid, "client_reconnect");
  }

  /** A persistent error: stop serving so that another leader is elected. */
  private fatal(e: unknown): void {
    if (this.stopped) return;
    this.env.logger.log("error", `server stopping on error: ${String(e)}`);
    void this.stop().finally(() => { this.opts.onFatal?.(e); });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.recovery.stop();
    this.lockServer?.shutdown();
    this.net.shutdown();
    while (this.committing) await new Promise<void>((r) => { this.env.timers.after(1, r); });
  }

  /** The global sequence: item versions, transaction seqs and lock write_seqs. */
  nextSeq(): number {
    return ++this.seq;
  }

  private register(): void {
    this.net.register(NetCmd.ALLOC_INODES, (p, peer) => this.allocInodes(p, peer.rid));
    this.net.register(NetCmd.GET_LOG_TREES, (_p, peer) => this.getLogTrees(peer.rid));
    this.net.register(NetCmd.COMMIT_LOG_TREES, (p, peer) => this.commitLogTrees(p, peer.rid));
    this.net.register(NetCmd.GET_ROOTS, () => this.getRoots());
    this.net.register(NetCmd.LOCK, (p, peer) => this.locks.handleRequest(peer.rid, p));
    this.net.register(NetCmd.GET_LAST_SEQ, () => this.getLastSeq());
    this.net.register(NetCmd.STATFS, () => this.statfs());
    this.net.register(NetCmd.OPEN_INO_MAP, (p, peer) => this.omap.handle(p, peer.rid));
    this.net.register(NetCmd.GET_LOG_MERGE, (p, peer) => this.merger.getLogMerge(p, peer.rid));
    this.net.register(NetCmd.COMMIT_LOG_MERGE, (p, peer) => this.merger.commitLogMerge(p, peer.rid));
    this.net.register(NetCmd.FAREWELL, async (_p, peer) => {
      await this.forget(peer.rid);
      return Buffer.alloc(0);
    });
  }

  // -------------------------------------------------------------------------------------
  // Commits shared by concurrent holders.

  /** Runs fn inside the next server commit; resolves once that commit is durable. */
  hold(fn: Holder): Promise<void> {
    if (this.stopped) return Promise.reject(new FsError("ENOLINK", "server stopped"));
    if (this.queue.length >= MAX_COMMIT_HOLDERS) {
      return Promise.reject(new FsError("EAGAIN", "server commit queue full"));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ fn, resolve, reject });
      if (!this.committing) void this.commitLoop();
    });
  }

  private async commitLoop(): Promise<void> {
    this.committing = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.queue.length);
        await this.commitBatch(batch);
      }
    } finally {
      this.committing = false;
    }
  }

  private async commitBatch(batch: Waiting[]): Promise<void> {
    const t = this.vol.begin(this.nextSeq());
    const done: Waiting[] = [];
    for (const h of batch) {
      try {
        await h.fn(t);
        done.push(h);
      } catch (e) {
        // a holder that fails changes nothing it had not finished: abandon and retry the rest
        t.abandon();
        h.reject(e);
        this.queue.unshift(...batch.filter((x) => x !== h));
        return;
      }
    }
    try {
      t.sb.seq = Math.max(t.sb.seq, this.seq);
      await t.commit();
      this.counters.inc("server_commit_batch");
      for (const h of done) h.resolve();
    } catch (e) {
      for (const h of done) h.reject(e);
    }
  }

  // -------------------------------------------------------------------------------------
  // Handlers.

  private async onGreeting(g: Greeting): Promise<void> {
    const rid = g.rid.toString(16);
    if (this.recovery.isFenced(g.rid)) throw new FsError("ENOLINK", `rid ${rid} was fenced`);
    const known = await btreeLookup(this.vol.cache, this.vol.sb.mountedClients, mountedClientKey(g.rid));
    if (g.serverTerm !== 0 && g.serverTerm !== this.opts.term && !known) {
      // mounted under an earlier server, and reclaimed since: its state is gone
      throw new FsError("ENOLINK", `rid ${rid} was reclaimed`);
    }
    this.recovery.greeted(g.rid);
    // the lock server may talk to the mount once its connection is admitted (after this)
    this.env.timers.after(0, () => { this.lockServer?.clientGreeted(g.rid); });
    if (known) return; // a reconnect: the item is already durable
    await this.hold(async (t) => {
      const flags = (g.flags & GreetingFlag.QUORUM) !== 0 ? MOUNTED_CLIENT_FLAG_QUORUM : 0;
      await btreeForce(t.w, t.sb.mountedClients, mountedClientKey(g.rid),
        encodeMountedClient({ addr: "0.0.0.0", port: 0, flags }), { seq: 0 });
    });
  }

  private async forget(rid: bigint): Promise<void> {
    await this.hold(async (t) => {
      const key = mountedClientKey(rid);
      if (await btreeLookup(t.w.cache, t.sb.mountedClients, key)) {
        await btreeDelete(t.w, t.sb.mountedClients, key);
      }
    });
  }

  private async allocInodes(p: Buffer, _rid: bigint): Promise<Buffer> {
    if (p.length !== 8) throw new FsError("EINVAL", "alloc inodes payload");
    const want = Math.min(Number(p.readBigUInt64LE(0)), ALLOC_INODES_MAX);
    const out = Buffer.alloc(16);
    await this.hold(async (t) => {
      const ino = t.sb.nextIno;
      const nr = ino >= U64_MAX - BigInt(want) ? 0n : BigInt(want);
      t.sb.nextIno = ino + nr;
      out.writeBigUInt64LE(nr === 0n ? U64_MAX : ino, 0);
      out.writeBigUInt64LE(nr, 8);
    });
    return out;
  }

  private async getLogTrees(rid: bigint): Promise<Buffer> {
    await this.merger.waitGate();
    let out: LogTrees | null = null;
    await this.hold(async (t) => {
      let lt = await currentLogTrees(t.w.cache, t.sb.logsRoot, rid);
      if (lt && lt.getTransSeq > lt.commitTransSeq) {
        out = lt; // a resent request: the transaction it opened is still open
        return;
      }
      if (!lt || (lt.flags & LOG_TREES_FLAG_FINALIZED) !== 0) lt = emptyLogTrees(rid, (lt?.nr ?? 0) + 1);
      await this.reclaim(t, lt);
      await this.refill(t, lt);
      lt.getTransSeq = this.nextSeq();
      await btreeForce(t.w, t.sb.logsRoot, logTreesKey(rid, BigInt(lt.nr)), encodeLogTrees(lt), { seq: 0 });
      out = lt;
    });
    this.counters.inc("server_get_log_trees");
    return encodeLogTrees(out!);
  }

  /** The mount's freed blocks from its last commit go back to the global allocators. */
  private async reclaim(t: VolumeTxn, lt: LogTrees): Promise<void> {
    await returnLogTreeAllocators(t, lt, "freed");
  }

  private async refill(t: VolumeTxn, lt: LogTrees): Promise<void> {
    if (lt.metaAvail.totalNr < this.metaTarget / 2) {
      const blknos: number[] = [];
      const want = this.metaTarget - lt.metaAvail.totalNr + Math.ceil(this.metaTarget / 8185) + 1;
      while (blknos.length < want) {
        const src = t.sb.metaAlloc[0].totalLen > 0 ? t.sb.metaAlloc[0] : t.sb.metaAlloc[1];
        const e = await allocExtent(t.w, src, want - blknos.length);
        if (!e) break;
        for (let b = e.start; b < e.start + e.len; b++) blknos.push(b);
      }
      if (blknos.length < 2 && lt.metaAvail.totalNr === 0) throw new FsError("ENOSPC", "no metadata space");
      if (blknos.length >= 2) prependListBlocks(t.w, lt.metaAvail, blknos);
    }
    if (lt.dataAvail.totalLen < this.dataTarget / 4) await this.refillData(t, lt);
  }

  private async refillData(t: VolumeTxn, lt: LogTrees): Promise<void> {
    let want = this.dataTarget - lt.dataAvail.totalLen;
    while (want > 0) {
      const e: Extent | null = await allocExtent(t.w, t.sb.dataAlloc, want);
      if (!e) break;
      await freeExtent(t.w, lt.dataAvail, e);
      want -= e.len;
    }
  }

  private async commitLogTrees(p: Buffer, rid: bigint): Promise<Buffer> {
    const lt = decodeLogTrees(p);
    if (lt.rid !== rid) throw new FsError("EINVAL", "commit of another mount's log trees");
    await this.hold(async (t) => {
      const cur = await currentLogTrees(t.w.cache, t.sb.logsRoot, rid);
      if (!cur || cur.nr !== lt.nr) throw new FsError("EINVAL", "commit of an unknown log tree");
      if (cur.commitTransSeq >= lt.getTransSeq) return; // already committed: a resend
      if (cur.getTransSeq !== lt.getTransSeq) throw new FsError("EINVAL", "commit of a stale transaction");
      lt.commitTransSeq = lt.getTransSeq;
      this.seq = Math.max(this.seq, lt.maxItemSeq);
      await btreeForce(t.w, t.sb.logsRoot, logTreesKey(rid, BigInt(lt.nr)), encodeLogTrees(lt), { seq: 0 });
    });
    this.counters.inc("server_commit_log_trees");
    this.merger.kick();
    return Buffer.alloc(0);
  }

  /** fs_root, logs_root and srch_root of the last committed super. */
  private getRoots(): Buffer {
    const sb = this.vol.sb;
    const out = Buffer.alloc(3 * BTREE_ROOT_SIZE);
    [sb.fsRoot, sb.logsRoot, sb.srchRoot].forEach((r, i) => writeBtreeRoot(out, i * BTREE_ROOT_SIZE, r));
    return out;
  }

  /** The last seq no still-open mount transaction can commit below (bounds index walks). */
  private async getLastSeq(): Promise<Buffer> {
    let last = this.vol.sb.seq;
    for (const lt of await listLogTrees(this.vol.cache, this.vol.sb.logsRoot)) {
      if (lt.getTransSeq > lt.commitTransSeq) last = Math.min(last, lt.getTransSeq - 1);
    }
    const out = Buffer.alloc(8);
    out.writeBigUInt64LE(BigInt(last), 0);
    return out;
  }

  private statfs(): Buffer {
    const sb = this.vol.sb;
    const out = Buffer.alloc(56);
    out.writeBigUInt64LE(BigInt(sb.totalMetaBlocks), 0);
    out.writeBigUInt64LE(BigInt(sb.metaAlloc[0].totalLen + sb.metaAlloc[1].totalLen), 8);
    out.writeBigUInt64LE(BigInt(sb.totalDataBlocks), 16);
    out.writeBigUInt64LE(BigInt(sb.dataAlloc.totalLen), 24);
    out.writeBigUInt64LE(sb.inodeCount, 32);
    sb.uuid.copy(out, 40);
    return out;
  }
}

export interface Roots {
  fsRoot: BtreeRoot;
  logsRoot: BtreeRoot;
  srchRoot: BtreeRoot;
}

export function decodeRoots(b: Buffer): Roots {
  assert(b.length === 3 * BTREE_ROOT_SIZE, "roots payload");
  return { fsRoot: readBtreeRoot(b, 0), logsRoot: readBtreeRoot(b, BTREE_ROOT_SIZE),
    srchRoot: readBtreeRoot(b, 2 * BTREE_ROOT_SIZE) };
}
