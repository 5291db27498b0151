/*
 * One mount of a volume: the cluster engine's parts put together the way a mount daemon runs
 * them (upstream super.c fill_super: quorum, server, client, transactions).
 *
 * A mount reads the super from the metadata device, then:
 *  - with a quorum slot (quorum_slot_nr) runs a QuorumAgent; when it is elected, the agent
 *    fences earlier leaders and calls startServer(term), which opens the volume afresh (the
 *    last server's super) and starts a Server listening on the slot's address; when the
 *    server stops on its own (a fence failed, an I/O error) the agent is told and resigns;
 *  - always runs a MountClient whose server address comes from the quorum blocks (the leader
 *    with the greatest elected term, src/core/quorum.ts readLeader), polled until a leader is
 *    recorded; the messaging layer reconnects and resends across failovers.
 * unmount() commits, says farewell, then stops the agent (which stops our server and resigns,
 * so the remaining members elect at once).
 *
 * The host supplies the fence actions: fenceLeader for an earlier leader found in the quorum
 * blocks, fenceClient for a mount that vanished without a farewell (server_recovery.ts). The
 * real daemon serves them with fence requests; the simulator kills the node.
 */
import type { BlockDevice, Env, NetAddr } from "../env/env.js";
import { assert } from "../util/assert.js";
import { Counters } from "../util/counters.js";
import { FsError } from "../util/errno.js";
import { MountClient, type MountClientOptions } from "./client.js";
import type { QuorumConfig, SuperBlock } from "./format.js";
import type { LockModeChange } from "./lock.js";
import type { NetTuning } from "./net.js";
import { type PrevLeader, QuorumAgent, readLeader } from "./quorum.js";
import { Server, type ServerOptions } from "./server.js";
import type { FenceReason } from "./server_recovery.js";
import { readSuperFrom, Volume } from "./volume.js";

/** How often a mount re-reads the quorum blocks while no leader is recorded. */
export const LEADER_POLL_MS = 100;

export interface ScoutMountOptions {
  /** This mount's random id (nonzero, fresh for every mount). */
  rid: bigint;
  /** quorum_slot_nr, or null for a mount that never runs the server. */
  quorumSlot: number | null;
  /** The data device (the mount source), where file contents live. */
  data?: BlockDevice;
  heartbeatTimeoutMs?: number;
  fenceLeader(prev: PrevLeader): Promise<void>;
  fenceClient(rid: bigint, reason: FenceReason): Promise<void>;
  /** The host knows this rid's mount is dead: a new server reclaims it without waiting. */
  ridKnownDead?(rid: bigint): Promise<boolean>;
  recoveryTimeoutMs?: number;
  netTuning?: Partial<NetTuning>;
  cacheBytes?: number;
  /** Server tuning (allocator refill targets). */
  server?: Pick<ServerOptions, "clientMetaAvailTarget" | "clientDataAvailTarget">;
  counters?: Counters;
  /** Every change of a lock's mode at this mount (checkers watch grants). */
  onLockModeChange?: (c: LockModeChange) => void;
  /** See MountClientOptions.onInvalidateRange (the daemon drops the kernel's caches). */
  onInvalidateRange?: MountClientOptions["onInvalidateRange"];
  /** Called for every server this mount starts (tests watch servers). */
  onServer?: (s: Server | null) => void;
}

export class ScoutMount {
  readonly counters: Counters;
  readonly client: MountClient;
  readonly quorum: QuorumAgent | null;
  private serverNow: Server | null = null;
  private unmounted = false;

  private constructor(readonly env: Env, readonly meta: BlockDevice, readonly sb: SuperBlock,
    readonly opts: ScoutMountOptions) {
    this.counters = opts.counters ?? new Counters();
    const qconf = sb.qconf;
    this.quorum = opts.quorumSlot === null ? null : new QuorumAgent(env, meta, {
      fsid: sb.hdr.fsid, slot: opts.quorumSlot, qconf, rid: opts.rid,
      heartbeatTimeoutMs: opts.heartbeatTimeoutMs, counters: this.counters,
      callbacks: {
        startServer: (term) => this.startServer(term),
        stopServer: () => this.stopServer(),
        fence: (prev) => opts.fenceLeader(prev),
      },
    });
    this.client = new MountClient(env, meta, this.counters, {
      fsid: sb.hdr.fsid, fmtVers: sb.fmtVers, rid: opts.rid, quorum: this.quorum !== null,
      totalMetaBlocks: sb.totalMetaBlocks, cacheBytes: opts.cacheBytes, data: opts.data,
      getServerAddr: () => this.findServer(qconf), netTuning: opts.netTuning,
      onLockModeChange: opts.onLockModeChange, onInvalidateRange: opts.onInvalidateRange,
    });
  }

  /** Reads the super and builds the mount's parts; start() brings it up. */
  static async open(env: Env, meta: BlockDevice, opts: ScoutMountOptions): Promise<ScoutMount> {
    const sb = await readSuperFrom(meta, true);
    if (opts.quorumSlot !== null && !sb.qconf.slots[opts.quorumSlot]) {
      throw new FsError("EINVAL", `quorum_slot_nr ${opts.quorumSlot} is not configured`);
    }
    return new ScoutMount(env, meta, sb, opts);
  }

  /** Starts the quorum agent (if a member) and opens the first transaction. */
  async start(): Promise<void> {
    if (this.quorum) await this.quorum.start();
    try {
      await this.client.mount();
    } catch (e) {
      await this.quorum?.stop();
      throw e;
    }
  }

  /** open() then start(). */
  static async mount(env: Env, meta: BlockDevice, opts: ScoutMountOptions): Promise<ScoutMount> {
    const m = await ScoutMount.open(env, meta, opts);
    await m.start();
    return m;
  }

  /** The server this mount runs, if it is the leader and its server is up. */
  get server(): Server | null {
    return this.serverNow;
  }

  /** Waits for a recorded leader; its slot address is where its server listens. */
  private async findServer(qconf: QuorumConfig): Promise<NetAddr> {
    for (;;) {
      if (this.unmounted) throw new FsError("ENOLINK", "unmounted");
      const l = await readLeader(this.meta, this.sb.hdr.fsid, qconf);
      if (l) return l.addr;
      await new Promise<void>((r) => { this.env.timers.after(LEADER_POLL_MS, r); });
    }
  }

  private async startServer(term: number): Promise<void> {
    assert(this.serverNow === null, "a server is already running");
    assert(this.opts.quorumSlot !== null, "server without a slot");
    const slot = this.sb.qconf.slots[this.opts.quorumSlot]!;
    const vol = await Volume.open(this.meta, { cacheBytes: this.opts.cacheBytes });
    const server = new Server(this.env, vol, this.counters, {
      fsid: this.sb.hdr.fsid, fmtVers: this.sb.fmtVers, term, ...this.opts.server,
      fenceClient: (rid, reason) => this.opts.fenceClient(rid, reason),
      ridKnownDead: this.opts.ridKnownDead === undefined ? undefined
        : (rid) => this.opts.ridKnownDead!(rid),
      recoveryTimeoutMs: this.opts.recoveryTimeoutMs, netTuning: this.opts.netTuning,
      onFatal: () => {
        if (this.serverNow !== server) return;
        this.serverNow = null;
        this.opts.onServer?.(null);
        this.quorum?.serverStopped();
      },
    });
    await server.start({ addr: slot.addr, port: slot.port });
    this.serverNow = server;
    this.opts.onServer?.(server);
  }

  private async stopServer(): Promise<void> {
    const s = this.serverNow;
    this.serverNow = null;
    if (s) {
      this.opts.onServer?.(null);
      await s.stop();
    }
  }

  /** Commits, says farewell, stops the quorum agent (and with it our server). */
  async unmount(): Promise<void> {
    await this.client.unmount();
    this.unmounted = true;
    await this.quorum?.stop();
  }
}
