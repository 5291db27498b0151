/*
 * Quorum: electing the one mount that runs the server (upstream quorum.c).
 *
 * Mounts given a quorum slot (mount option quorum_slot_nr) each run a QuorumAgent. The agents
 * elect a leader with raft's leader election only (no replicated log) over UDP datagrams
 * (src/core/quorum_msg.ts) sent between the slot addresses of the super block's quorum
 * config; the leader fences earlier leaders and starts the server, and heartbeats every
 * QUORUM_HEARTBEAT_INTERVAL_MS so the others do not elect a new one. Who calls it: the mount
 * daemon creates an agent after reading the super, start()s it, reads its status for the
 * quorum/status and quorum/is_leader files, reports a server that stopped on its own with
 * serverStopped(), and stop()s it at unmount. Clients (members or not) find the server with
 * readLeader(), which reads the quorum blocks.
 *
 * The protocol, one step per received datagram, timeout or server change (step()):
 *  - Messages of older terms are ignored; a greater term is adopted at once and makes us a
 *    follower (a leader so demoted stops its server).
 *  - Followers wait heartbeatTimeoutMs (the quorum_heartbeat_timeout_ms option) for
 *    heartbeats, candidates a randomized election timeout (250-350 ms from env.random).
 *    On timeout a member whose own server is down becomes a candidate: term + 1, votes for
 *    itself, sends REQUEST_VOTE to every other slot.
 *  - A follower votes once per term, for the first candidate that asks.
 *  - A candidate with votesNeeded votes (a majority of the configured slots; 1 with one or
 *    two slots) becomes leader: it sends a heartbeat, records ELECT in its quorum block, then
 *    in the background fences earlier leaders whose blocks show an election without a later
 *    STOP, records FENCE and starts the server. Heartbeats continue meanwhile.
 *  - When the server stops (demotion, its own error, a failed fence, unmount) the member
 *    records STOP; a leader also broadcasts RESIGNATION so the followers elect at once
 *    instead of waiting for their heartbeat timeout.
 *
 * Persistence (each member's own 4 KiB quorum block, read-modify-write then flush, one update
 * at a time): BEGIN at start, TERM before acting in a new term (voting or campaigning),
 * ELECT on winning, FENCE after fencing, STOP after the server stopped, END at stop. Members
 * start from the greatest term found in any quorum block. Upstream's server fences the old
 * leaders as it starts and quorum records FENCE once the server is up; here the agent
 * fences (through the fence callback, i.e. the fence requests) before starting the server,
 * so the server needs to know nothing about quorum blocks, and FENCE precedes the start.
 *
 * Invariants, and where we are stricter than upstream (each keeps "one leader per term"
 * under crashes and restarts, which the simulation checks):
 *  - Terms never go backwards, in memory (asserted at every change) or on disk (asserted
 *    before each TERM write); a term is persisted before any message is sent in it.
 *  - Votes are not persisted (the block has no field for them), so a member never votes in
 *    the term it started with: it may have voted in it before it restarted. Upstream does.
 *  - A leader whose server stops keeps its self-vote in that term (upstream clears vote_for,
 *    which could hand a second leader the same term).
 *  - With exactly two slots (one vote suffices) a candidate takes the next term of its own
 *    parity (its rank among the configured slots), so the two can never win the same term;
 *    upstream accepts same-term split elections there and relies on fencing alone.
 *  - A new leader that finds any term GREATER than its own recorded in a quorum block gives
 *    up instead of starting its server (upstream starts it unless that term is a stopped
 *    election, and waits to be demoted): since every leader writes ELECT before reading the
 *    other blocks, of two overlapping leaders at least one sees the other, so no two
 *    servers run unfenced, and a stale election won late never runs a server that later
 *    leaders would skip as already fenced.
 *  - An election (ELECT or FENCE record) counts as stopped only by a STOP of the same rid
 *    (upstream compares terms only, which let a newer incarnation's STOP hide an older
 *    incarnation's unfenced server).
 *  - Everything is bounded: the inbox (QUORUM_INBOX_MAX datagrams), fencing
 *    (QUORUM_FENCE_TIMEOUT_MS), per-slot status records, the heartbeat delay histogram.
 *  - All time comes from env.clock and env.timers, all randomness from env.random.
 */
import type { BlockDevice, DatagramSocket, Env, NetAddr, TimerHandle } from "../env/env.js";
import { assert, assertSafeU } from "../util/assert.js";
import { Counters } from "../util/counters.js";
import { FsError } from "../util/errno.js";
import {
  decodeQuorumBlock, encodeQuorumBlock, QUORUM_BLOCK_SIZE, QUORUM_MAX_SLOTS, quorumBlkno,
  type QuorumBlock, type QuorumConfig, QuorumEvent, type QuorumEventRecord,
} from "./format.js";
import {
  decodeQuorumMsg, encodeQuorumMsg, type QuorumMsg, QuorumMsgType, slotMaskOf,
} from "./quorum_msg.js";

/** The leader's heartbeat period (upstream SCOUTFS_QUORUM_HB_IVAL_MS). */
export const QUORUM_HEARTBEAT_INTERVAL_MS = 100;
export const QUORUM_HEARTBEAT_TIMEOUT_DEFAULT_MS = 10_000;
export const QUORUM_HEARTBEAT_TIMEOUT_MIN_MS = 2_000;
export const QUORUM_HEARTBEAT_TIMEOUT_MAX_MS = 60_000;
/** Election timeouts are uniform in [MIN, MIN + VAR). */
export const QUORUM_ELECT_MIN_MS = 250;
export const QUORUM_ELECT_VAR_MS = 100;
/** How long a new leader waits for fencing before giving up (upstream 15 s). */
export const QUORUM_FENCE_TIMEOUT_MS = 15_000;
/** Datagrams received but not yet processed; more are dropped (quorum_recv_dropped). */
export const QUORUM_INBOX_MAX = 64;
/** Timers may fire this early (real ones do); a deadline this close counts as reached. */
const TIMER_SLACK_MS = 1;
/** Heartbeat delay histogram buckets, one per whole second up to the largest timeout. */
const HB_DELAY_NR = QUORUM_HEARTBEAT_TIMEOUT_MAX_MS / 1000;

assert(QUORUM_HEARTBEAT_INTERVAL_MS * 10 <= QUORUM_HEARTBEAT_TIMEOUT_MIN_MS,
  "followers must see several heartbeats per timeout");
assert(QUORUM_ELECT_MIN_MS + QUORUM_ELECT_VAR_MS < QUORUM_HEARTBEAT_TIMEOUT_MIN_MS,
  "elections are faster than heartbeat timeouts");

export const QuorumRole = { FOLLOWER: 0, CANDIDATE: 1, LEADER: 2 } as const;
export type QuorumRole = (typeof QuorumRole)[keyof typeof QuorumRole];
const ROLE_NAMES = ["follower", "candidate", "leader"] as const;

/** An earlier leader found in the quorum blocks, to be fenced. */
export interface PrevLeader {
  slot: number;
  rid: bigint;
  term: number;
}

export interface QuorumCallbacks {
  /** Starts the server for `term`; resolves once it serves, rejects if it failed to start. */
  startServer(term: number): Promise<void>;
  /** Stops the running server; resolves once it stopped. */
  stopServer(): Promise<void>;
  /** Fences an earlier leader; resolves once it is fenced, rejects if it cannot be. */
  fence(prev: PrevLeader): Promise<void>;
}

export interface QuorumOptions {
  fsid: bigint;
  /** Our quorum slot (quorum_slot_nr): must be configured in qconf. */
  slot: number;
  qconf: QuorumConfig;
  /** This mount's random id, nonzero; recorded with each event of our quorum block. */
  rid: bigint;
  /** quorum_heartbeat_timeout_ms, default 10000, 2000..60000. */
  heartbeatTimeoutMs?: number;
  /** The mount's counters (quorum_* are added); a private set if absent. */
  counters?: Counters;
  callbacks: QuorumCallbacks;
}

/** Where clients find the server. */
export interface LeaderInfo {
  term: number;
  slot: number;
  rid: bigint;
  addr: NetAddr;
}

/** A snapshot of the agent's state (the quorum/status file's fields). */
export interface QuorumStatus {
  slot: number;
  term: number;
  serverStartTerm: number;
  serverEvent: number;
  role: QuorumRole;
  voteFor: number;
  voteBits: number;
  /** Until the current timeout; negative once it passed. */
  timeoutInMs: number;
}

/** The server as the agent drives it; "starting" covers fencing. */
export type QuorumServerState = "down" | "starting" | "up" | "stopping";
type AgentState = "new" | "starting" | "running" | "stopping" | "stopped" | "failed";

interface LastMsg {
  term: number;
  type: number;
  atMs: number;
}

/** Validates the quorum_heartbeat_timeout_ms option. */
export function checkHeartbeatTimeoutMs(ms: number): number {
  if (!Number.isSafeInteger(ms) || ms < QUORUM_HEARTBEAT_TIMEOUT_MIN_MS ||
    ms > QUORUM_HEARTBEAT_TIMEOUT_MAX_MS) {
    throw new FsError("EINVAL", `invalid quorum_heartbeat_timeout_ms value ${ms}, must be ` +
      `between ${QUORUM_HEARTBEAT_TIMEOUT_MIN_MS} and ${QUORUM_HEARTBEAT_TIMEOUT_MAX_MS}`);
  }
  return ms;
}

/** Slot numbers configured in the super block's quorum config, ascending. */
export function configuredSlots(qconf: QuorumConfig): number[] {
  const out: number[] = [];
  qconf.slots.forEach((s, i) => { if (s !== null && i < QUORUM_MAX_SLOTS) out.push(i); });
  return out;
}

/** Votes to win: a majority of the configured slots, but 1 with one or two slots. */
export function votesNeeded(qconf: QuorumConfig): number {
  const n = configuredSlots(qconf).length;
  return n < 3 ? 1 : Math.floor(n / 2) + 1;
}

/** Reads and validates one slot's quorum block (FsError EIO if corrupt). */
export async function readQuorumBlock(dev: BlockDevice, fsid: bigint, slot: number):
  Promise<QuorumBlock> {
  const buf = dev.allocBuffer(QUORUM_BLOCK_SIZE);
  await dev.read(buf, quorumBlkno(slot) * QUORUM_BLOCK_SIZE);
  return decodeQuorumBlock(buf, fsid, slot);
}

/**
 * The server's address for clients: the unstopped election (see electionStopped()) with the
 * greatest term. A FENCE does not end an election (the leader itself records it once it
 * fenced the others); elections older than the greatest FENCE term in any block were fenced
 * or stopped by then, so they are skipped (upstream keeps them: after the newest leader
 * stops cleanly a client could chase a long-dead one). Null when no leader is recorded. A
 * stale answer (a leader that crashed) costs the client a failed connection and a retry, as
 * upstream. Read errors propagate.
 */
export async function readLeader(dev: BlockDevice, fsid: bigint, qconf: QuorumConfig):
  Promise<LeaderInfo | null> {
  let best: LeaderInfo | null = null;
  let fenced = 0;
  for (const slot of configuredSlots(qconf)) {
    const blk = await readQuorumBlock(dev, fsid, slot);
    const elect = blk.events[QuorumEvent.ELECT]!;
    fenced = Math.max(fenced, blk.events[QuorumEvent.FENCE]!.term);
    if (elect.term > (best?.term ?? 0) && !electionStopped(blk, elect)) {
      const s = qconf.slots[slot]!;
      best = { term: elect.term, slot, rid: elect.rid, addr: { addr: s.addr, port: s.port } };
    }
  }
  return best !== null && best.term >= fenced ? best : null;
}

/**
 * Whether the server of a recorded election (its ELECT or FENCE event) has stopped: only a
 * STOP by the same rid, of its term or later, says so. Upstream compares terms alone, so a
 * STOP by a newer incarnation of the slot (after, say, its failed fence) hid an older
 * incarnation's FENCE record whose server was never fenced; the simulation found it.
 */
export function electionStopped(blk: QuorumBlock, rec: QuorumEventRecord): boolean {
  const stop = blk.events[QuorumEvent.STOP]!;
  return stop.rid === rec.rid && stop.term >= rec.term;
}

/** The greatest term of any recorded event in any readable configured block. */
async function readGreatestTerm(dev: BlockDevice, fsid: bigint, slots: readonly number[],
  counters: Counters): Promise<number> {
  let term = 0;
  for (const slot of slots) {
    let blk: QuorumBlock;
    try {
      blk = await readQuorumBlock(dev, fsid, slot);
    } catch {
      counters.inc("quorum_read_error"); // best effort, as upstream: skip unreadable blocks
      continue;
    }
    for (const e of blk.events) if (e.rid !== 0n) term = Math.max(term, e.term);
  }
  return term;
}

/**
 * Which earlier leaders a new leader at `ourTerm` must fence (upstream
 * scoutfs_quorum_fence_leaders): per slot, an ELECT whose server has not stopped (a leader
 * that may still run) and an unstopped FENCE older than the slot's ELECT (a previous
 * incarnation's server, whose ELECT a re-election overwrote). Leaders older than the
 * greatest recorded FENCE term were fenced by that leader. Our own records are skipped.
 * `newer` is the greatest event term above ours in any block, if any: someone has already
 * moved past our term, so our election is stale and we must not start a server. (Upstream
 * only skips unstopped newer elections; then a stale election won with delayed votes could
 * start a server that later leaders, seeing its term below their FENCE, never fence.)
 */
export function findOldLeaders(blocks: readonly (QuorumBlock | null)[], ourTerm: number,
  ourRid: bigint): { fence: PrevLeader[]; newer: PrevLeader | null } {
  const found: PrevLeader[] = [];
  let fenced = 0;
  let newer: PrevLeader | null = null;
  blocks.forEach((b, slot) => {
    if (b === null) return;
    const elect = b.events[QuorumEvent.ELECT]!;
    const fence = b.events[QuorumEvent.FENCE]!;
    if (elect.term > 0 && !electionStopped(b, elect)) {
      found.push({ slot, rid: elect.rid, term: elect.term });
    }
    if (fence.term > 0 && fence.term < elect.term && !electionStopped(b, fence)) {
      found.push({ slot, rid: fence.rid, term: fence.term });
    }
    fenced = Math.max(fenced, fence.term);
    for (const e of b.events) {
      if (e.rid !== 0n && e.term > ourTerm && e.term > (newer?.term ?? 0)) {
        newer = { slot, rid: e.rid, term: e.term };
      }
    }
  });
  const fence: PrevLeader[] = [];
  for (const p of found) {
    if (p.rid === ourRid || p.term > ourTerm || p.term < fenced) continue;
    if (!fence.some((f) => f.rid === p.rid)) fence.push(p);
  }
  return { fence, newer };
}

function popcount(bits: number): number {
  let n = 0;
  for (let b = bits >>> 0; b !== 0; b &= b - 1) n++;
  return n;
}

function ridHex(rid: bigint): string {
  return rid.toString(16).padStart(16, "0");
}

/** "S.NNNNNNNNN" of a duration in ms, floored like the kernel's ktime_to_timespec64. */
function secsText(ms: number): string {
  const ns = Math.round(ms * 1e6);
  const sec = Math.floor(ns / 1e9);
  return `${sec}.${String(ns - sec * 1e9).padStart(9, "0")}`;
}

/** Thrown inside the server start task when it must not go on (not a failure of ours). */
class GiveUp extends Error {}

/** One quorum member: see the header. */
export class QuorumAgent {
  readonly counters: Counters;
  private readonly fsid: bigint;
  private readonly slot: number;
  private readonly rid: bigint;
  private readonly qconf: QuorumConfig;
  private readonly cb: QuorumCallbacks;
  private readonly slots: readonly number[];
  private readonly slotMask: number;
  private readonly votesNeeded: number;
  private hbTimeoutMs: number;

  // Election state: changed only by the loop (step()), except serverEvent (server task).
  private curRole: QuorumRole = QuorumRole.FOLLOWER;
  private curTerm = 0;
  private serverStartTerm = 0;
  private serverEvent = 0;
  private curVoteFor = -1;
  private voteBits = 0;
  private timeoutMs = 0;
  /** The term we started in: we may have voted in it before a restart, so we never do. */
  private noVoteTerm = 0;

  private server: QuorumServerState = "down";
  private serverDiedEarly = false;
  private serverTask: Promise<void> | null = null;
  private state: AgentState = "new";
  private startPromise: Promise<void> | null = null;
  private loopDone: Promise<void> | null = null;
  private failure: Error | null = null;
  private sock: DatagramSocket | null = null;
  private readonly inbox: QuorumMsg[] = [];
  private wake: (() => void) | null = null;
  /** Serializes read-modify-writes of our quorum block. */
  private blockChain: Promise<void> = Promise.resolve();
  private ownSlotWarned = false;

  private readonly lastSend: (LastMsg | null)[] = new Array<LastMsg | null>(QUORUM_MAX_SLOTS)
    .fill(null);
  private readonly lastRecv: (LastMsg | null)[] = new Array<LastMsg | null>(QUORUM_MAX_SLOTS)
    .fill(null);
  private hbPrevMs = 0;
  private hbCount = 0;
  private maxHbDelay = 0;
  private readonly hbDelay = Array.from({ length: HB_DELAY_NR }, () => ({ count: 0, atMs: 0 }));

  constructor(private readonly env: Env, private readonly dev: BlockDevice,
    opts: QuorumOptions) {
    this.fsid = opts.fsid;
    this.slot = opts.slot;
    this.rid = opts.rid;
    this.qconf = opts.qconf;
    this.cb = opts.callbacks;
    this.counters = opts.counters ?? new Counters();
    this.hbTimeoutMs = checkHeartbeatTimeoutMs(
      opts.heartbeatTimeoutMs ?? QUORUM_HEARTBEAT_TIMEOUT_DEFAULT_MS);
    if (opts.rid === 0n || BigInt.asUintN(64, opts.rid) !== opts.rid) {
      throw new FsError("EINVAL", `quorum rid ${opts.rid} must be a nonzero u64`);
    }
    this.slots = checkQuorumConfig(opts.qconf, opts.slot);
    this.slotMask = slotMaskOf(opts.qconf.slots);
    this.votesNeeded = votesNeeded(opts.qconf);
  }

  // ---- inspection ----

  get role(): QuorumRole { return this.curRole; }
  get term(): number { return this.curTerm; }
  /** The slot we voted for in the current term, -1 if none. */
  get voteFor(): number { return this.curVoteFor; }
  get isLeader(): boolean { return this.curRole === QuorumRole.LEADER; }
  /** The server as this agent sees it: down, starting (fencing included), up, stopping. */
  get serverState(): QuorumServerState { return this.server; }
  /** The error that stopped the agent, if one did. */
  get failed(): Error | null { return this.failure; }
  get running(): boolean { return this.state === "running"; }

  status(): QuorumStatus {
    return {
      slot: this.slot, term: this.curTerm, serverStartTerm: this.serverStartTerm,
      serverEvent: this.serverEvent, role: this.curRole, voteFor: this.curVoteFor,
      voteBits: this.voteBits, timeoutInMs: this.timeoutMs - this.now(),
    };
  }

  /** The quorum/status file, upstream's lines and formats exactly. */
  statusText(): string {
    const s = this.status();
    const now = this.now();
    const lines = [
      `quorum_slot_nr ${s.slot}`, `term ${s.term}`, `server_start_term ${s.serverStartTerm}`,
      `server_event ${s.serverEvent}`, `role ${s.role} (${ROLE_NAMES[s.role]})`,
      `vote_for ${s.voteFor}`,
      `vote_bits 0x${(s.voteBits >>> 0).toString(16)} (count ${popcount(s.voteBits)})`,
      `timeout_in_secs ${secsText(s.timeoutInMs)}`,
    ];
    const last = (dir: string, recs: readonly (LastMsg | null)[]): void => {
      recs.forEach((m, i) => {
        if (m === null || m.term === 0) return;
        lines.push(`last_${dir} ${i} term ${m.term} type ${m.type} secs_since ` +
          secsText(now - m.atMs));
      });
    };
    last("send to", this.lastSend);
    last("recv from", this.lastRecv);
    if (this.maxHbDelay > 0) lines.push("HB Delay(s)      Count  Secs Since");
    for (let i = 1; i <= this.maxHbDelay && i < HB_DELAY_NR; i++) {
      const cr = this.hbDelay[i]!;
      if (cr.count === 0) continue;
      lines.push(`${String(i).padStart(11)}  ${String(cr.count).padStart(9)}  ` +
        secsText(now - cr.atMs));
    }
    return lines.map((l) => `${l}\n`).join("");
  }

  /** The quorum/is_leader file: "0" or "1", no newline. */
  isLeaderText(): string {
    return this.curRole === QuorumRole.LEADER ? "1" : "0";
  }

  /** Changes quorum_heartbeat_timeout_ms; it takes effect at the next heartbeat. */
  setHeartbeatTimeoutMs(ms: number): void {
    this.hbTimeoutMs = checkHeartbeatTimeoutMs(ms);
  }

  // ---- life cycle ----

  /**
   * Binds our slot's UDP address, finds the greatest term, records BEGIN and starts the
   * election loop. Rejects (and leaves nothing running) if the address cannot be bound or
   * our block cannot be written: the mount fails.
   */
  start(): Promise<void> {
    assert(this.state === "new", `quorum agent start in state ${this.state}`);
    this.state = "starting";
    this.startPromise = this.doStart();
    return this.startPromise;
  }

  /**
   * Unmount: stops the election loop; if we lead, stops the server, resigns and records
   * STOP; records END; closes the socket. Resolves when all that is done.
   */
  async stop(): Promise<void> {
    if (this.state === "new") {
      this.state = "stopped";
      return;
    }
    if (this.state === "starting") await this.startPromise?.catch(() => undefined);
    if (this.state === "running") {
      this.state = "stopping";
      this.wakeLoop();
    }
    await this.loopDone;
  }

  /** The server owner reports that the server stopped by itself (an error, say). */
  serverStopped(): void {
    if (this.server === "up") {
      this.server = "down";
      this.env.logger.log("warn", `quorum: server for term ${this.serverStartTerm} stopped`);
      this.wakeLoop();
    } else if (this.server === "starting") {
      this.serverDiedEarly = true;
    }
  }

  private async doStart(): Promise<void> {
    const me = this.qconf.slots[this.slot]!;
    const sock = await this.env.net.bindDatagram({ addr: me.addr, port: me.port });
    try {
      const term = await readGreatestTerm(this.dev, this.fsid, this.slots, this.counters);
      const leader = await readLeader(this.dev, this.fsid, this.qconf).catch(() => null);
      this.curTerm = term;
      this.noVoteTerm = term;
      // a recorded leader gets a heartbeat timeout to show up before we stand ourselves
      this.timeoutMs = leader !== null ? this.heartbeatDeadline() : this.electionDeadline();
      await this.updateBlock(QuorumEvent.BEGIN, term, false);
    } catch (e) {
      sock.close();
      this.state = "failed";
      this.failure = e instanceof Error ? e : new Error(String(e));
      throw e;
    }
    this.sock = sock;
    sock.onMessage((buf) => this.receive(buf));
    this.env.logger.log("info", `quorum slot ${this.slot} rid ${ridHex(this.rid)} starting ` +
      `at term ${this.curTerm}, ${this.votesNeeded} of ${this.slots.length} votes needed`);
    if (this.state === "starting") this.state = "running";
    this.loopDone = this.runLoop();
  }

  private async runLoop(): Promise<void> {
    try {
      while (this.state === "running") {
        const msg = await this.nextEvent();
        if (this.state !== "running") break;
        await this.step(msg);
      }
      await this.shutdown();
    } catch (e) {
      await this.fail(e);
    }
  }

  /** The next datagram, or null when the timeout passed or something else woke us. */
  private nextEvent(): Promise<QuorumMsg | null> {
    const queued = this.inbox.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    const delayMs = this.timeoutMs - this.now();
    if (delayMs <= TIMER_SLACK_MS) return Promise.resolve(null);
    return new Promise((resolve) => {
      let timer: TimerHandle | null = null;
      const done = (): void => {
        if (timer !== null) this.env.timers.clear(timer);
        this.wake = null;
        resolve(this.inbox.shift() ?? null);
      };
      timer = this.env.timers.after(delayMs, done);
      this.wake = done;
    });
  }

  private wakeLoop(): void {
    this.wake?.();
  }

  private receive(buf: Buffer): void {
    if (this.state !== "running") return;
    const d = decodeQuorumMsg(buf, this.fsid, this.slotMask);
    if (!d.ok) {
      this.counters.inc("quorum_recv_invalid");
      this.counters.inc(`quorum_recv_invalid_${d.reason}`);
      return;
    }
    const m = d.msg;
    if (m.from === this.slot) {
      this.counters.inc("quorum_recv_own_slot");
      if (!this.ownSlotWarned) {
        this.ownSlotWarned = true;
        this.env.logger.log("warn", `quorum: received a message from our own slot ` +
          `${this.slot}, are there multiple mounts with quorum_slot_nr=${this.slot}?`);
      }
      return;
    }
    this.lastRecv[m.from] = { term: m.term, type: m.type, atMs: this.now() };
    if (this.inbox.length >= QUORUM_INBOX_MAX) {
      this.counters.inc("quorum_recv_dropped");
      return;
    }
    this.inbox.push(m);
    this.wakeLoop();
  }

  // ---- the protocol ----

  /** One turn of the election loop (upstream's worker loop body), in a fixed order. */
  private async step(received: QuorumMsg | null): Promise<void> {
    let msg = received;
    let recordHb = false;
    if (msg !== null && msg.term < this.curTerm) {
      this.counters.inc("quorum_recv_stale");
      msg = null;
    }
    if (msg !== null && msg.term > this.curTerm) {
      await this.adoptTerm(msg);
      if (this.state !== "running") return;
    }
    if (msg !== null) recordHb = this.sameTermMessage(msg);
    this.stopStaleServer();
    if (this.serverStartTerm > 0 && this.server === "down") {
      await this.recordServerDown();
      if (this.state !== "running") return;
    }
    if (this.curRole !== QuorumRole.LEADER && this.expired()) {
      await this.campaign();
      if (this.state !== "running") return;
    }
    if (this.curRole === QuorumRole.CANDIDATE && popcount(this.voteBits) >= this.votesNeeded) {
      await this.becomeLeader();
      if (this.state !== "running") return;
    }
    if (this.curRole === QuorumRole.LEADER && this.expired()) {
      this.sendHeartbeats();
      recordHb = true;
    }
    if (msg?.type === QuorumMsgType.REQUEST_VOTE) this.maybeVote(msg);
    this.recordHbDelay(recordHb);
  }

  /** A greater term always wins: persist it, then follow in it. */
  private async adoptTerm(msg: QuorumMsg): Promise<void> {
    if (this.curRole === QuorumRole.LEADER) {
      this.env.logger.log("warn", `quorum: saw msg type ${msg.type} from ${msg.from} for ` +
        `term ${msg.term} while leader in term ${this.curTerm}, shutting down server.`);
      this.clearHbDelay();
    }
    await this.persistTerm(msg.term);
    this.setTerm(msg.term);
    this.curRole = QuorumRole.FOLLOWER;
    this.curVoteFor = -1;
    this.voteBits = 0;
    this.timeoutMs = msg.type === QuorumMsgType.HEARTBEAT
      ? this.heartbeatDeadline() : this.electionDeadline();
    this.counters.inc("quorum_term_follower");
  }

  /** A message of our own term; true if it was a heartbeat we follow. */
  private sameTermMessage(msg: QuorumMsg): boolean {
    switch (msg.type) {
      case QuorumMsgType.HEARTBEAT:
        if (this.curRole === QuorumRole.LEADER) {
          // two leaders in one term: only if slots are misconfigured; keep counting
          this.counters.inc("quorum_recv_heartbeat_leader");
          return false;
        }
        if (this.curRole === QuorumRole.CANDIDATE) {
          // raft: a candidate that hears its term's leader follows it (our self-vote stays)
          this.curRole = QuorumRole.FOLLOWER;
          this.voteBits = 0;
          this.counters.inc("quorum_candidate_heartbeat");
        }
        this.timeoutMs = this.heartbeatDeadline();
        this.counters.inc("quorum_recv_heartbeat");
        return true;
      case QuorumMsgType.RESIGNATION:
        if (this.curRole === QuorumRole.FOLLOWER) {
          this.timeoutMs = this.electionDeadline();
          this.counters.inc("quorum_recv_resignation");
        }
        return false;
      case QuorumMsgType.VOTE:
        if (this.curRole === QuorumRole.CANDIDATE) {
          if ((this.voteBits & (1 << msg.from)) !== 0) this.counters.inc("quorum_recv_vote_dup");
          this.voteBits |= 1 << msg.from;
          this.counters.inc("quorum_recv_vote");
        }
        return false;
      case QuorumMsgType.REQUEST_VOTE:
        return false; // answered at the end of the step, once our state settled
    }
  }

  /** Stops a server that no longer belongs to our leadership (demoted, or re-elected). */
  private stopStaleServer(): void {
    if (this.server !== "up") return;
    if (this.curRole === QuorumRole.LEADER && this.curTerm === this.serverStartTerm) return;
    this.server = "stopping";
    this.serverTask = this.runServerStop().finally(() => this.serverTaskDone());
  }

  /** Our server is down after an election: resign if still leader, then record STOP. */
  private async recordServerDown(): Promise<void> {
    const term = this.serverStartTerm;
    if (this.curRole === QuorumRole.LEADER) {
      this.curRole = QuorumRole.FOLLOWER;
      this.voteBits = 0; // voteFor stays ourselves: we voted in this term
      this.timeoutMs = this.electionDeadline();
      this.counters.inc("quorum_server_shutdown");
      this.sendOthers(QuorumMsgType.RESIGNATION, term);
      this.counters.inc("quorum_send_resignation");
      this.clearHbDelay();
      this.env.logger.log("info", `quorum: leader of term ${term} resigned`);
    }
    await this.updateBlock(QuorumEvent.STOP, term);
    this.serverStartTerm = 0;
  }

  /** The timeout passed without a leader: stand for election if our server is down. */
  private async campaign(): Promise<void> {
    if (this.server !== "down" || this.serverStartTerm !== 0) {
      this.timeoutMs = this.electionDeadline();
      this.counters.inc("quorum_candidate_server_stopping");
      return;
    }
    const term = this.nextCandidateTerm();
    await this.persistTerm(term);
    if (this.state !== "running") return;
    this.setTerm(term);
    this.curRole = QuorumRole.CANDIDATE;
    this.curVoteFor = this.slot;
    this.voteBits = 1 << this.slot;
    this.timeoutMs = this.electionDeadline();
    this.sendOthers(QuorumMsgType.REQUEST_VOTE, term);
    this.counters.inc("quorum_send_request");
  }

  /** term + 1; with two slots, the next term of our parity (see the header). */
  private nextCandidateTerm(): number {
    let term = this.curTerm + 1;
    if (this.slots.length === 2) {
      const rank = this.slots.indexOf(this.slot);
      if (term % 2 !== rank) term++;
    }
    assertSafeU(term, "quorum term");
    return term;
  }

  /** Won: heartbeat at once, record ELECT, then fence and start the server meanwhile. */
  private async becomeLeader(): Promise<void> {
    const term = this.curTerm;
    this.curRole = QuorumRole.LEADER;
    this.counters.inc("quorum_elected");
    this.sendHeartbeats();
    this.clearHbDelay();
    // from here on an ELECT may be on disk: whatever happens, STOP must follow it
    this.serverStartTerm = term;
    this.serverEvent = QuorumEvent.ELECT;
    await this.updateBlock(QuorumEvent.ELECT, term);
    this.env.logger.log("info", `quorum: elected leader in term ${term} with votes ` +
      `0x${this.voteBits.toString(16)}`);
    if (this.state !== "running") return;
    this.server = "starting";
    this.serverDiedEarly = false;
    this.serverTask = this.runServerStart(term).finally(() => this.serverTaskDone());
  }

  private sendHeartbeats(): void {
    this.sendOthers(QuorumMsgType.HEARTBEAT, this.curTerm);
    this.timeoutMs = this.now() + QUORUM_HEARTBEAT_INTERVAL_MS;
    this.counters.inc("quorum_send_heartbeat");
  }

  /** Followers vote once per term, for the first candidate asking. */
  private maybeVote(msg: QuorumMsg): void {
    if (this.curRole !== QuorumRole.FOLLOWER || msg.term !== this.curTerm) return;
    if (this.curVoteFor !== -1) return;
    if (this.curTerm === this.noVoteTerm) {
      this.counters.inc("quorum_vote_refused_start_term");
      return;
    }
    this.curVoteFor = msg.from;
    this.sendTo(QuorumMsgType.VOTE, this.curTerm, msg.from);
    this.counters.inc("quorum_send_vote");
  }

  // ---- the server, started and stopped in the background ----

  /** Fence earlier leaders, record FENCE, start the server; never rejects. */
  private async runServerStart(term: number): Promise<void> {
    try {
      await this.fenceOldLeaders(term);
      this.checkStillLeader(term);
      await this.updateBlock(QuorumEvent.FENCE, term);
      this.serverEvent = QuorumEvent.FENCE;
      this.checkStillLeader(term);
      await this.cb.startServer(term);
      // a demotion meanwhile is the loop's business: it stops an "up" server that is stale
      this.server = this.serverDiedEarly ? "down" : "up";
      this.counters.inc(this.serverDiedEarly ? "quorum_server_died_starting"
        : "quorum_server_started");
      this.env.logger.log("info", `quorum: server ${this.serverDiedEarly ? "died while " +
        "starting" : "started"} for term ${term}`);
    } catch (e) {
      this.server = "down";
      const giveUp = e instanceof GiveUp;
      this.counters.inc(giveUp ? "quorum_server_start_abandoned" : "quorum_server_start_error");
      this.env.logger.log(giveUp ? "info" : "warn",
        `quorum: not starting server for term ${term}: ${e instanceof Error ? e.message : e}`);
    }
  }

  private checkStillLeader(term: number): void {
    if (this.state !== "running") throw new GiveUp("quorum agent stopping");
    if (this.curRole !== QuorumRole.LEADER || this.curTerm !== term) {
      throw new GiveUp(`no longer leader (term ${this.curTerm})`);
    }
  }

  private async runServerStop(): Promise<void> {
    try {
      await this.cb.stopServer();
    } catch (e) {
      this.counters.inc("quorum_server_stop_error");
      this.env.logger.log("warn", `quorum: stopping server: ${e instanceof Error ? e.message : e}`);
    }
    this.server = "down";
    this.counters.inc("quorum_server_stopped");
  }

  private serverTaskDone(): void {
    this.serverTask = null;
    this.wakeLoop();
  }

  /** Fences every earlier leader the blocks show (bounded by QUORUM_FENCE_TIMEOUT_MS). */
  private async fenceOldLeaders(term: number): Promise<void> {
    const blocks: (QuorumBlock | null)[] = new Array<QuorumBlock | null>(QUORUM_MAX_SLOTS)
      .fill(null);
    for (const slot of this.slots) blocks[slot] = await readQuorumBlock(this.dev, this.fsid, slot);
    const { fence, newer } = findOldLeaders(blocks, term, this.rid);
    if (newer !== null) {
      this.counters.inc("quorum_fence_newer_leader");
      throw new GiveUp(`slot ${newer.slot} rid ${ridHex(newer.rid)} already recorded later ` +
        `term ${newer.term}`);
    }
    for (const p of fence) {
      this.counters.inc("quorum_fence_leader");
      const a = this.qconf.slots[p.slot]!;
      this.env.logger.log("info", `quorum: fencing previous leader rid ${ridHex(p.rid)} at ` +
        `term ${p.term} in slot ${p.slot} with address ${a.addr}:${a.port}`);
    }
    if (fence.length === 0) return;
    try {
      await this.withTimeout(Promise.all(fence.map((p) => this.cb.fence(p))),
        QUORUM_FENCE_TIMEOUT_MS, "fencing previous leaders");
    } catch (e) {
      this.counters.inc("quorum_fence_error");
      throw e;
    }
  }

  private withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = this.env.timers.after(ms, () => {
        reject(new FsError("ETIMEDOUT", `${what} timed out after ${ms} ms`));
      });
      p.then((v) => { this.env.timers.clear(timer); resolve(v); },
        (e: unknown) => { this.env.timers.clear(timer); reject(e); });
    });
  }

  // ---- ending ----

  /** The orderly end (stop()): server down, resign, STOP, END, close. */
  private async shutdown(): Promise<void> {
    while (this.serverTask !== null) await this.serverTask;
    if (this.server === "up") {
      this.server = "stopping";
      await this.runServerStop();
    }
    if (this.serverStartTerm > 0) {
      if (this.curRole === QuorumRole.LEADER) {
        this.sendOthers(QuorumMsgType.RESIGNATION, this.curTerm);
        this.counters.inc("quorum_send_resignation");
      }
      await this.updateBlock(QuorumEvent.STOP, this.serverStartTerm);
      this.serverStartTerm = 0;
    }
    this.curRole = QuorumRole.FOLLOWER;
    await this.updateBlock(QuorumEvent.END, this.curTerm);
    this.closeSocket();
    this.state = "stopped";
    this.env.logger.log("info", `quorum slot ${this.slot} stopped at term ${this.curTerm}`);
  }

  /** A persistent error: stop our server, leave the election (the mount must remount). */
  private async fail(e: unknown): Promise<void> {
    this.failure = e instanceof Error ? e : new Error(String(e));
    this.state = "failed";
    this.counters.inc("quorum_error");
    this.env.logger.log("error", `quorum service saw error ${this.failure.message}, shutting ` +
      "down.  This mount is no longer participating in quorum.  It should be remounted to " +
      "restore service.");
    this.curRole = QuorumRole.FOLLOWER;
    this.closeSocket();
    while (this.serverTask !== null) await this.serverTask;
    if (this.server === "up") {
      this.server = "stopping";
      await this.runServerStop();
    }
  }

  private closeSocket(): void {
    this.sock?.close();
    this.sock = null;
    this.inbox.length = 0;
  }

  // ---- the quorum block ----

  /** Persists a greater term before it is used (asserted never to go backwards). */
  private persistTerm(term: number): Promise<void> {
    assert(term > this.curTerm, `quorum term ${term} after ${this.curTerm}`);
    return this.updateBlock(QuorumEvent.TERM, term);
  }

  private setTerm(term: number): void {
    assert(term >= this.curTerm, `quorum term went back from ${this.curTerm} to ${term}`);
    this.curTerm = term;
  }

  /** Records an event in our block: read, check, modify, write, flush; one at a time. */
  private updateBlock(event: number, term: number, checkRid = true): Promise<void> {
    const op = this.blockChain.then(() => this.writeEvent(event, term, checkRid));
    this.blockChain = op.catch(() => undefined);
    return op;
  }

  private async writeEvent(event: number, term: number, checkRid: boolean): Promise<void> {
    const blk = await readQuorumBlock(this.dev, this.fsid, this.slot);
    const begin = blk.events[QuorumEvent.BEGIN]!;
    if (checkRid && begin.rid !== this.rid) {
      throw new FsError("EIO", `quorum block begin rid ${ridHex(begin.rid)} != our rid ` +
        `${ridHex(this.rid)}, are multiple mounts configured with this slot?`);
    }
    const recorded = blk.events[QuorumEvent.TERM]!.term;
    assert(event !== QuorumEvent.TERM || term >= recorded,
      `quorum slot ${this.slot}: persisted term would go back from ${recorded} to ${term}`);
    const ts = this.env.clock.wallTime();
    blk.writeNr++;
    blk.events[event] = { writeNr: blk.writeNr, rid: this.rid, term, sec: ts.sec, nsec: ts.nsec };
    const buf = this.dev.allocBuffer(QUORUM_BLOCK_SIZE);
    encodeQuorumBlock(blk).copy(buf);
    await this.dev.write(buf, quorumBlkno(this.slot) * QUORUM_BLOCK_SIZE);
    await this.dev.flush();
    this.counters.inc("quorum_block_write");
  }

  // ---- sending, time, status records ----

  private sendOthers(type: QuorumMsgType, term: number): void {
    for (const slot of this.slots) if (slot !== this.slot) this.sendTo(type, term, slot);
  }

  private sendTo(type: QuorumMsgType, term: number, slot: number): void {
    const sock = this.sock;
    const to = this.qconf.slots[slot];
    if (sock === null || to === null || to === undefined) return;
    sock.send(encodeQuorumMsg({ fsid: this.fsid, term, type, from: this.slot }),
      { addr: to.addr, port: to.port });
    this.lastSend[slot] = { term, type, atMs: this.now() };
  }

  private now(): number {
    return this.env.clock.monotonicMs();
  }

  private expired(): boolean {
    return this.now() >= this.timeoutMs - TIMER_SLACK_MS;
  }

  private electionDeadline(): number {
    return this.now() + QUORUM_ELECT_MIN_MS + (this.env.random.u32() % QUORUM_ELECT_VAR_MS);
  }

  private heartbeatDeadline(): number {
    return this.now() + this.hbTimeoutMs;
  }

  private clearHbDelay(): void {
    this.maxHbDelay = 0;
    for (const d of this.hbDelay) { d.count = 0; d.atMs = 0; }
  }

  /**
   * Records long gaps between consecutive heartbeats sent (leader) or received (follower),
   * in whole seconds, as upstream: any step without a heartbeat restarts the measurement.
   */
  private recordHbDelay(recordHb: boolean): void {
    if (!recordHb) {
      this.hbCount = 0;
      return;
    }
    const now = this.now();
    if (this.hbCount < 2 && ++this.hbCount < 2) {
      this.hbPrevMs = now;
      return;
    }
    const s = Math.floor((now - this.hbPrevMs) / 1000);
    this.hbPrevMs = now;
    if (s <= 0 || s >= HB_DELAY_NR) return;
    if (this.maxHbDelay < s) {
      this.maxHbDelay = s;
      if (s >= 3) {
        this.env.logger.log("info", `longest quorum heartbeat ` +
          `${this.curRole === QuorumRole.LEADER ? "send" : "recv"} delay of ${s} sec`);
      }
    }
    const d = this.hbDelay[s]!;
    d.count++;
    d.atMs = now;
  }
}

/**
 * Checks the quorum config the way a mount does (upstream verify_quorum_slots): at least one
 * slot, valid distinct unicast addresses, our slot among them. Returns the configured slots.
 */
function checkQuorumConfig(qconf: QuorumConfig, slot: number): number[] {
  assert(qconf.slots.length <= QUORUM_MAX_SLOTS, "quorum config slots");
  const slots = configuredSlots(qconf);
  if (slots.length === 0) throw new FsError("EINVAL", "no populated quorum slots in superblock");
  const seen = new Set<string>();
  for (const i of slots) {
    const s = qconf.slots[i]!;
    if (s.port === 0 || s.port === 0xffff || s.addr === "0.0.0.0") {
      throw new FsError("EINVAL", `quorum slot #${i} has invalid address: ${s.addr}:${s.port}`);
    }
    const key = `${s.addr}:${s.port}`;
    if (seen.has(key)) {
      throw new FsError("EINVAL", `quorum slots have the same address: ${key}`);
    }
    seen.add(key);
  }
  if (!Number.isInteger(slot) || !slots.includes(slot)) {
    throw new FsError("EINVAL", `quorum_slot_nr=${slot} option references unused slot, must ` +
      `be one of the following configured slots: ${slots.join(",")}`);
  }
  return slots;
}
