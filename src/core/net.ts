/*
 * Reliable messaging between a mount's client and the server (upstream net.c, after commit
 * 74366f0d "make networking more reliable").
 *
 * Who calls it: client.ts builds one NetClient per mount; server.ts builds one NetServer while
 * its mount is the elected leader. Both register request handlers per NetCmd and send
 * requests that resolve with the peer's response payload or reject with the peer's FsError.
 *
 * The model. A NetConnection is the state of one client/server pair and outlives sockets
 * (Links). Every request and response gets the next send seq and stays on the resend queue
 * until the peer's recv_seq (piggybacked on every frame, or sent alone in an ACK frame when
 * idle) covers it; requests also stay in the pending map until their response arrives. On
 * every (re)connect the client sends a GREETING {fsid, fmt_vers, server_term, rid, flags}:
 *
 *  - server_term equals the server's term: a reconnect to the same server. The server must
 *    still hold the rid's state (kept CLIENT_RECONNECT_TIMEOUT after a disconnect); both sides
 *    drop what the other's recv_seq acknowledges and resend the rest in seq order; the
 *    receiver drops duplicates by seq. Each request and response is therefore processed
 *    exactly once per client/server pair. If the server no longer has the state (timed out
 *    and fenced, or farewelled) it refuses with ENOLINK and the client's session is lost.
 *  - server_term differs (first connect, or a new leader): a new session. Both sides reset
 *    their seqs, drop queued responses (meant for the old peer) and resend their pending
 *    requests; a handler still running for the old session has its response dropped.
 *    Handlers must therefore tolerate a request that a previous server already applied.
 *
 * A server-side state whose client does not come back within the reconnect timeout is
 * dropped and reported (onClientTimeout: the server fences the rid). A successful FAREWELL
 * response, once acknowledged by the client (or at that timeout), makes the server forget
 * the client (onFarewell) without fencing.
 *
 * Invariants and bounds (all named constants below):
 *  - Frames carry the fsid; a foreign or malformed frame closes the Link, is counted and
 *    changes no state. Any protocol violation (seq gap, ack of an unsent seq, over-limit
 *    requests) closes the Link the same way.
 *  - At most MAX_OUTSTANDING_PER_CMD of our requests per cmd await responses; further
 *    request() calls wait (back-pressure), at most MAX_REQUEST_WAITERS of them.
 *  - A peer's request holds one of our slots for its cmd from arrival until our response is
 *    acknowledged. A peer that respects its own limit (the same constant) never exceeds ours:
 *    the ack of every response it has received rides on the frame of its next request. So the
 *    resend queue never holds more than 2 * NET_CMD_NR * MAX_OUTSTANDING_PER_CMD entries.
 *  - recvSeq only advances by one, in order; a frame with seq <= recvSeq is a duplicate.
 *  - Handlers are started in arrival order and may run concurrently; ordering between
 *    requests that need it (per lock) is the handler's job. A handler that throws an FsError
 *    answers with its wire errno; anything else is logged and answered with EIO.
 */
import type { Env, NetAddr, StreamConnection, StreamListener, TimerHandle } from "../env/env.js";
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { type ErrnoCode, FsError, isFsError } from "../util/errno.js";
import {
  cmdName, decodeGreeting, describeMsg, encodeGreeting, encodeMsg, FrameReader, fsErrorFromWire,
  type Greeting, GreetingFlag, type Msg, MSG_MAX_DATA_LEN, MsgFlag, NET_CMD_NR, NetCmd,
  wireErrorOf, WIRE_OK,
} from "./msg.js";

/** Our requests of one cmd that may await responses at once (and peer requests we hold). */
export const MAX_OUTSTANDING_PER_CMD = 128;
/** Bound of the resend queue: our requests plus our unacknowledged responses. */
export const MAX_RESEND_QUEUE = 2 * NET_CMD_NR * MAX_OUTSTANDING_PER_CMD;
/** request() calls waiting for a slot; beyond this request() fails with ENOBUFS. */
export const MAX_REQUEST_WAITERS = 4096;
/** Client states a server keeps (connected or awaiting reconnection). */
export const MAX_SERVER_CLIENTS = 4096;
/** Accepted sockets that have not completed a greeting; more are closed at once. */
export const MAX_GREETING_LINKS = 64;

export interface NetTuning {
  /** A Link that has received nothing for this long is closed (upstream's TCP keepalive). */
  keepaliveTimeoutMs: number;
  /** Idle Links send an ACK this often, which keeps the peer's keepalive satisfied. */
  keepaliveIntervalMs: number;
  /** A Link whose greeting has not completed after this long is closed. */
  greetingTimeoutMs: number;
  /** Timeout of one connection attempt (upstream: 1 s). */
  connectTimeoutMs: number;
  /** Delay before reconnecting after a session that had greeted successfully. */
  reconnectMinMs: number;
  /** Upper bound of the exponential back-off between failed connection attempts. */
  reconnectMaxMs: number;
  /** How long a server keeps a disconnected client's state (upstream: 20 s). */
  clientReconnectTimeoutMs: number;
  /** Delay of an explicit ACK when no frame carries recv_seq back sooner. */
  ackDelayMs: number;
}

export const DEFAULT_NET_TUNING: Readonly<NetTuning> = Object.freeze({
  keepaliveTimeoutMs: 24_000,
  keepaliveIntervalMs: 1_000,
  greetingTimeoutMs: 24_000,
  connectTimeoutMs: 1_000,
  reconnectMinMs: 10,
  reconnectMaxMs: 2_000,
  clientReconnectTimeoutMs: 20_000,
  ackDelayMs: 10,
});

function checkTuning(t: NetTuning): void {
  for (const [k, v] of Object.entries(t)) {
    assert(typeof v === "number" && Number.isFinite(v) && v > 0, `net tuning ${k}=${String(v)}`);
  }
  assert(t.keepaliveIntervalMs < t.keepaliveTimeoutMs, "keepalive interval below timeout");
  assert(t.reconnectMinMs <= t.reconnectMaxMs, "reconnect back-off bounds");
}

export type NetCounter =
  | "net_frames_sent" | "net_frames_recv" | "net_requests_sent" | "net_requests_recv"
  | "net_responses_sent" | "net_responses_recv" | "net_acks_sent" | "net_resent"
  | "net_dup_dropped" | "net_frames_malformed" | "net_frames_foreign" | "net_protocol_errors"
  | "net_greetings_sent" | "net_greetings_recv" | "net_greetings_refused" | "net_reconnects"
  | "net_new_server" | "net_session_resets" | "net_stale_greetings" | "net_stale_server"
  | "net_connect_failures"
  | "net_disconnects" | "net_handler_errors" | "net_handler_bugs" | "net_unhandled_cmds"
  | "net_client_timeouts" | "net_farewells" | "net_keepalive_timeouts"
  | "net_greeting_timeouts" | "net_responses_stale" | "net_responses_unmatched"
  | "net_request_waits" | "net_peer_over_limit" | "net_links_refused" | "net_sessions_lost";

/**
 * Answers one request: returns the response payload (at most MSG_MAX_DATA_LEN bytes) or
 * throws an FsError whose code travels back to the requester.
 */
export type RequestHandler = (payload: Buffer, peer: NetConnection) => Promise<Buffer> | Buffer;

/** What the endpoint (client or server) shares with its connections and links. */
interface NetContext {
  readonly env: Env;
  readonly counters: Counters;
  readonly tuning: NetTuning;
  readonly fsid: bigint;
  readonly name: string;
  readonly role: "client" | "server";
  readonly handlers: Map<NetCmd, RequestHandler>;
}

function count(ctx: NetContext, c: NetCounter): void {
  ctx.counters.inc(c);
}

function log(ctx: NetContext, level: "debug" | "info" | "warn" | "error", msg: string): void {
  ctx.env.logger.log(level, `${ctx.name}: ${msg}`);
}

function makeContext(env: Env, counters: Counters, role: "client" | "server", fsid: bigint,
  name: string, tuning: Partial<NetTuning> | undefined): NetContext {
  const t: NetTuning = { ...DEFAULT_NET_TUNING, ...tuning };
  checkTuning(t);
  return { env, counters, tuning: t, fsid, name, role, handlers: new Map() };
}

function registerHandler(ctx: NetContext, cmd: NetCmd, handler: RequestHandler): void {
  assert(cmd !== NetCmd.GREETING, "the greeting is handled by the net layer");
  assert(!ctx.handlers.has(cmd), `handler for ${cmdName(cmd)} registered twice`);
  ctx.handlers.set(cmd, handler);
}

// ---------------------------------------------------------------------------------------
// Link: one socket. Reassembles frames, checks their fsid, runs the keepalive.

/** Receives what a Link reports; the owner changes from greeter to NetConnection. */
interface LinkOwner {
  onFrame(link: Link, m: Msg): void;
  onLinkDead(link: Link, reason: string): void;
  /** Called when nothing has been sent for keepaliveIntervalMs on a greeted Link. */
  onIdle(link: Link): void;
}

class Link {
  private readonly reader = new FrameReader();
  private keepalive: TimerHandle | undefined;
  private readonly openedMs: number;
  private lastRecvMs: number;
  private lastSendMs: number;
  /** Set once the greeting exchange succeeded; sequenced frames flow only then. */
  greeted = false;
  /** Server side: the greeting was read (and is being handled or was refused). */
  greetingSeen = false;
  dead = false;

  constructor(private readonly ctx: NetContext, readonly conn: StreamConnection,
    public owner: LinkOwner) {
    this.openedMs = ctx.env.clock.monotonicMs();
    this.lastRecvMs = this.openedMs;
    this.lastSendMs = this.openedMs;
  }

  /** Starts receiving; separate from the constructor so the owner can record the Link first. */
  start(): void {
    this.conn.onData((chunk) => this.onData(chunk));
    this.conn.onClose((reason) => this.close(`closed: ${reason}`));
    if (this.conn.closed) this.close("closed before start");
    else this.armKeepalive();
  }

  get remote(): string {
    return `${this.conn.remote.addr}:${this.conn.remote.port}`;
  }

  write(frame: Buffer): void {
    if (this.dead) return;
    this.lastSendMs = this.ctx.env.clock.monotonicMs();
    count(this.ctx, "net_frames_sent");
    this.conn.write(frame);
  }

  /** Closes the socket once; the owner hears about it synchronously. */
  close(reason: string): void {
    if (this.dead) return;
    this.dead = true;
    if (this.keepalive) this.ctx.env.timers.clear(this.keepalive);
    this.keepalive = undefined;
    if (!this.conn.closed) this.conn.close();
    this.owner.onLinkDead(this, reason);
  }

  private onData(chunk: Buffer): void {
    if (this.dead) return;
    try {
      this.reader.push(chunk, (m) => this.onMsg(m));
    } catch (e) {
      if (!isFsError(e, "EBADMSG")) {
        this.close("bug while receiving");
        throw e;
      }
      count(this.ctx, "net_frames_malformed");
      log(this.ctx, "warn", `malformed frame from ${this.remote}: ${e.message}`);
      this.close("malformed frame");
    }
  }

  private onMsg(m: Msg): boolean {
    if (this.dead) return false;
    if (m.fsid !== this.ctx.fsid) {
      count(this.ctx, "net_frames_foreign");
      log(this.ctx, "warn", `frame from ${this.remote} for fsid ${m.fsid.toString(16)}, ` +
        `ours is ${this.ctx.fsid.toString(16)}: closing`);
      this.close("foreign fsid");
      return false;
    }
    this.lastRecvMs = this.ctx.env.clock.monotonicMs();
    count(this.ctx, "net_frames_recv");
    this.owner.onFrame(this, m);
    return !this.dead;
  }

  private armKeepalive(): void {
    this.keepalive = this.ctx.env.timers.after(this.ctx.tuning.keepaliveIntervalMs,
      () => this.tick());
  }

  private tick(): void {
    this.keepalive = undefined;
    if (this.dead) return;
    const now = this.ctx.env.clock.monotonicMs();
    const t = this.ctx.tuning;
    if (!this.greeted && now - this.openedMs >= t.greetingTimeoutMs) {
      count(this.ctx, "net_greeting_timeouts");
      this.close("greeting timeout");
      return;
    }
    if (now - this.lastRecvMs >= t.keepaliveTimeoutMs) {
      count(this.ctx, "net_keepalive_timeouts");
      log(this.ctx, "warn", `nothing from ${this.remote} for ${now - this.lastRecvMs} ms`);
      this.close("keepalive timeout");
      return;
    }
    if (this.greeted && now - this.lastSendMs >= t.keepaliveIntervalMs) this.owner.onIdle(this);
    this.armKeepalive();
  }
}

/** A Link's owner before it is attached: frames it does not expect close it. */
function protocolError(ctx: NetContext, link: Link, what: string): void {
  count(ctx, "net_protocol_errors");
  log(ctx, "warn", `protocol error from ${link.remote}: ${what}`);
  link.close(`protocol error: ${what}`);
}

function greetingFrame(ctx: NetContext, recvSeq: number, flags: number, error: number,
  data: Buffer): Buffer {
  return encodeMsg({ seq: 0, recvSeq, id: 0, fsid: ctx.fsid, cmd: NetCmd.GREETING, flags,
    error, data });
}

// ---------------------------------------------------------------------------------------
// NetConnection: the state of one client/server pair, across Links.

interface Queued {
  seq: number;
  id: number;
  cmd: NetCmd;
  response: boolean;
  error: number;
  data: Buffer;
  /** Written to some Link at least once (a later write is a resend). */
  sent: boolean;
}

interface Pending {
  cmd: NetCmd;
  /** Kept until answered: a new server is sent the request again. */
  data: Buffer;
  resolve: (data: Buffer) => void;
  reject: (err: FsError) => void;
}

interface Waiter {
  resolve: () => void;
  reject: (err: FsError) => void;
}

/** Callbacks from a NetConnection to its endpoint. */
interface ConnectionHooks {
  onDetached(conn: NetConnection, link: Link, reason: string): void;
  onFarewellAcked(conn: NetConnection): void;
}

export class NetConnection implements LinkOwner {
  /** The peer's last greeting (server side) or the server's greeting response (client). */
  greeting: Greeting | undefined;
  private link: Link | undefined;
  private nextSeq = 1;
  private recvSeq = 0;
  /** recv_seq last written to the peer; an ACK is due while it is below recvSeq. */
  private ackedSeq = 0;
  private readonly resend: Queued[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  /** Per cmd: our pending requests plus slots handed to waiters. */
  private readonly outstanding: number[] = new Array<number>(NET_CMD_NR).fill(0);
  /** Per cmd: peer requests received whose response the peer has not acknowledged. */
  private readonly peerHeld: number[] = new Array<number>(NET_CMD_NR).fill(0);
  private readonly waiters: Waiter[][] = Array.from({ length: NET_CMD_NR }, () => []);
  private waiterCount = 0;
  /** Bumped when the session resets or dies; handler results of older epochs are dropped. */
  private epoch = 0;
  private ackTimer: TimerHandle | undefined;
  /** Server side: seq of our successful FAREWELL response, 0 if none. */
  private farewellSeq = 0;
  private deadErr: FsError | undefined;

  /** @internal built by NetClient / NetServer. */
  constructor(private readonly ctx: NetContext, readonly rid: bigint,
    private readonly hooks: ConnectionHooks) {}

  /** True while a greeted Link is attached. */
  get connected(): boolean {
    return this.link !== undefined && this.link.greeted && !this.link.dead;
  }

  get dead(): boolean {
    return this.deadErr !== undefined;
  }

  /** Greatest seq received from the peer (what our next frame acknowledges). */
  get receivedSeq(): number {
    return this.recvSeq;
  }

  /** Our requests awaiting a response. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** Requests and responses the peer has not acknowledged yet. */
  get resendCount(): number {
    return this.resend.length;
  }

  /** The server side has sent a successful FAREWELL response to this client. */
  get farewellSent(): boolean {
    return this.farewellSeq !== 0;
  }

  /**
   * Sends a request and resolves with the response payload; rejects with the peer's FsError,
   * or with the connection's error (ENOLINK session lost, ENOTCONN client dropped, ECANCELED
   * shutdown). Waits while MAX_OUTSTANDING_PER_CMD requests of this cmd are pending.
   */
  async request(cmd: NetCmd, payload: Buffer): Promise<Buffer> {
    assert(cmd !== NetCmd.GREETING, "greetings are sent by the net layer");
    assert(payload.length <= MSG_MAX_DATA_LEN, `${cmdName(cmd)} payload ${payload.length}`);
    const data = Buffer.from(payload);
    await this.acquireSlot(cmd);
    if (this.deadErr) {
      this.releaseSlot(cmd);
      throw this.deadErr;
    }
    const id = this.nextId++;
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(id, { cmd, data, resolve, reject });
      count(this.ctx, "net_requests_sent");
      this.enqueue({ seq: 0, id, cmd, response: false, error: WIRE_OK, data, sent: false });
    });
  }

  private async acquireSlot(cmd: NetCmd): Promise<void> {
    if (this.deadErr) throw this.deadErr;
    const queue = this.waiters[cmd]!;
    if (this.outstanding[cmd]! < MAX_OUTSTANDING_PER_CMD && queue.length === 0) {
      this.outstanding[cmd]!++;
      return;
    }
    if (this.waiterCount >= MAX_REQUEST_WAITERS) {
      throw new FsError("ENOBUFS", `${MAX_REQUEST_WAITERS} requests already waiting`);
    }
    count(this.ctx, "net_request_waits");
    this.waiterCount++;
    // The slot is handed over by releaseSlot(), so a newcomer cannot take it first.
    await new Promise<void>((resolve, reject) => queue.push({ resolve, reject }));
  }

  private releaseSlot(cmd: NetCmd): void {
    const w = this.waiters[cmd]!.shift();
    if (w) {
      this.waiterCount--;
      w.resolve();
      return;
    }
    assert(this.outstanding[cmd]! > 0, "slot release without acquire");
    this.outstanding[cmd]!--;
  }

  /** Assigns the next seq, keeps the message until acknowledged, writes it if connected. */
  private enqueue(q: Queued): void {
    q.seq = this.nextSeq++;
    this.resend.push(q);
    assert(this.resend.length <= MAX_RESEND_QUEUE, "resend queue bound");
    if (this.connected) this.transmit(q);
  }

  private transmit(q: Queued): void {
    const link = this.link;
    assert(link !== undefined, "transmit without a link");
    if (q.sent) count(this.ctx, "net_resent");
    q.sent = true;
    const flags = q.response ? MsgFlag.RESPONSE : 0;
    link.write(encodeMsg({ seq: q.seq, recvSeq: this.recvSeq, id: q.id, fsid: this.ctx.fsid,
      cmd: q.cmd, flags, error: q.error, data: q.data }));
    this.noteAckWritten();
  }

  private noteAckWritten(): void {
    this.ackedSeq = this.recvSeq;
    if (this.ackTimer) this.ctx.env.timers.clear(this.ackTimer);
    this.ackTimer = undefined;
  }

  /** Writes a bare ACK now (also the keepalive); a no-op without a greeted Link. */
  sendAck(): void {
    if (!this.connected) return;
    count(this.ctx, "net_acks_sent");
    this.link!.write(encodeMsg({ seq: 0, recvSeq: this.recvSeq, id: 0, fsid: this.ctx.fsid,
      cmd: NetCmd.GREETING, flags: MsgFlag.ACK, error: WIRE_OK, data: Buffer.alloc(0) }));
    this.noteAckWritten();
  }

  private scheduleAck(): void {
    if (this.ackTimer || !this.connected) return;
    this.ackTimer = this.ctx.env.timers.after(this.ctx.tuning.ackDelayMs, () => {
      this.ackTimer = undefined;
      if (this.recvSeq > this.ackedSeq) this.sendAck();
    });
  }

  /**
   * @internal Drops what the peer acknowledges. False when it acknowledges a seq we never
   * sent (a protocol violation: the caller closes the Link).
   */
  applyAck(ack: number): boolean {
    if (ack >= this.nextSeq) return false;
    while (this.resend.length > 0 && this.resend[0]!.seq <= ack) {
      const q = this.resend.shift()!;
      if (q.response) {
        assert(this.peerHeld[q.cmd]! > 0, "peer slot accounting");
        this.peerHeld[q.cmd]!--;
      }
    }
    if (this.farewellSeq !== 0 && ack >= this.farewellSeq) this.hooks.onFarewellAcked(this);
    return true;
  }

  /**
   * @internal Makes `link` the live Link (after a successful greeting) and writes everything the peer
   * has not acknowledged, in seq order. A previous Link is closed.
   */
  attach(link: Link): void {
    assert(!this.deadErr, "attach to a dead connection");
    const old = this.link;
    this.link = link;
    if (old && old !== link) old.close("replaced by a new connection");
    link.owner = this;
    link.greeted = true;
    for (const q of this.resend) this.transmit(q);
    if (this.recvSeq > this.ackedSeq) this.sendAck();
  }

  /**
   * @internal The peer is a new incarnation (new server term): forget seqs and queued responses, drop
   * results of handlers still running, and queue every pending request again in id order.
   */
  resetSession(): void {
    assert(!this.deadErr, "reset of a dead connection");
    // A Link of the old session must not carry frames of the new one.
    const old = this.link;
    this.link = undefined;
    old?.close("session reset");
    this.epoch++;
    this.nextSeq = 1;
    this.recvSeq = 0;
    this.ackedSeq = 0;
    this.farewellSeq = 0;
    // Responses queued for the old peer have no request to answer at the new one.
    for (const q of this.resend) if (q.response) count(this.ctx, "net_responses_stale");
    this.resend.length = 0;
    this.peerHeld.fill(0);
    if (this.ackTimer) this.ctx.env.timers.clear(this.ackTimer);
    this.ackTimer = undefined;
    // Requests are re-read from the peer's point of view: resend them (the map keeps id order).
    const again = [...this.pending.entries()];
    this.pending.clear();
    for (const [id, p] of again) this.requeue(id, p);
  }

  private requeue(id: number, p: Pending): void {
    this.pending.set(id, p);
    this.enqueue({ seq: 0, id, cmd: p.cmd, response: false, error: WIRE_OK, data: p.data,
      sent: false });
  }

  /** @internal Ends the connection for good: everything pending fails with err. */
  kill(err: FsError): void {
    if (this.deadErr) return;
    this.deadErr = err;
    this.epoch++;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    for (const queue of this.waiters) {
      for (const w of queue.splice(0)) w.reject(err);
    }
    this.waiterCount = 0;
    this.resend.length = 0;
    if (this.ackTimer) this.ctx.env.timers.clear(this.ackTimer);
    this.ackTimer = undefined;
    const link = this.link;
    this.link = undefined;
    link?.close(err.message);
  }

  /** Closes the live Link (the state stays; the client will reconnect). */
  disconnect(reason: string): void {
    this.link?.close(reason);
  }

  /** @internal (LinkOwner) */
  onLinkDead(link: Link, reason: string): void {
    if (link !== this.link) return;
    this.link = undefined;
    if (this.ackTimer) this.ctx.env.timers.clear(this.ackTimer);
    this.ackTimer = undefined;
    count(this.ctx, "net_disconnects");
    log(this.ctx, "debug", `rid ${this.rid.toString(16)} disconnected: ${reason}`);
    this.hooks.onDetached(this, link, reason);
  }

  /** @internal (LinkOwner) */
  onIdle(_link: Link): void {
    this.sendAck();
  }

  /** @internal (LinkOwner) */
  onFrame(link: Link, m: Msg): void {
    if (link !== this.link || this.deadErr) return;
    if (!this.applyAck(m.recvSeq)) {
      protocolError(this.ctx, link, `recv_seq ${m.recvSeq} beyond sent ${this.nextSeq - 1}`);
      return;
    }
    // The ack may have completed a farewell, which ends this connection.
    if (m.flags === MsgFlag.ACK || this.deadErr) return;
    if (m.seq === 0) {
      protocolError(this.ctx, link, `unsequenced ${describeMsg(m)}`);
      return;
    }
    if (m.seq <= this.recvSeq) {
      count(this.ctx, "net_dup_dropped");
      return;
    }
    if (m.seq !== this.recvSeq + 1) {
      protocolError(this.ctx, link, `seq ${m.seq} after ${this.recvSeq}`);
      return;
    }
    const response = (m.flags & MsgFlag.RESPONSE) !== 0;
    if (!response && this.peerHeld[m.cmd]! >= MAX_OUTSTANDING_PER_CMD) {
      count(this.ctx, "net_peer_over_limit");
      protocolError(this.ctx, link, `more than ${MAX_OUTSTANDING_PER_CMD} ${cmdName(m.cmd)}`);
      return;
    }
    this.recvSeq = m.seq;
    this.scheduleAck();
    if (response) {
      this.complete(m);
    } else {
      this.peerHeld[m.cmd]!++;
      count(this.ctx, "net_requests_recv");
      void this.runHandler(m, this.epoch);
    }
  }

  /** A response arrived: settle its request's promise. */
  private complete(m: Msg): void {
    count(this.ctx, "net_responses_recv");
    const p = this.pending.get(m.id);
    if (!p) {
      count(this.ctx, "net_responses_unmatched");
      log(this.ctx, "warn", `unmatched ${describeMsg(m)}`);
      return;
    }
    this.pending.delete(m.id);
    this.releaseSlot(p.cmd);
    if (p.cmd !== m.cmd) {
      count(this.ctx, "net_protocol_errors");
      log(this.ctx, "warn", `response ${describeMsg(m)} to a ${cmdName(p.cmd)} request`);
      p.reject(new FsError("EIO", `response cmd mismatch for ${cmdName(p.cmd)}`));
    } else if (m.error !== WIRE_OK) {
      p.reject(fsErrorFromWire(m.error));
    } else {
      p.resolve(m.data);
    }
  }

  /** Runs the handler of a peer request and queues its response (never throws). */
  private async runHandler(m: Msg, epoch: number): Promise<void> {
    let error: number = WIRE_OK;
    let data: Buffer = Buffer.alloc(0);
    const handler = this.ctx.handlers.get(m.cmd) ??
      (m.cmd === NetCmd.FAREWELL && this.ctx.role === "server" ? farewellOk : undefined);
    if (!handler) {
      count(this.ctx, "net_unhandled_cmds");
      error = wireErrorOf("EOPNOTSUPP");
    } else {
      try {
        data = await handler(m.data, this);
        if (data.length > MSG_MAX_DATA_LEN) {
          throw new Error(`${cmdName(m.cmd)} response of ${data.length} bytes`);
        }
      } catch (e) {
        data = Buffer.alloc(0);
        error = this.handlerError(m, e);
      }
    }
    if (epoch !== this.epoch) {
      count(this.ctx, "net_responses_stale");
      return;
    }
    count(this.ctx, "net_responses_sent");
    const q: Queued = { seq: 0, id: m.id, cmd: m.cmd, response: true, error, data, sent: false };
    this.enqueue(q);
    if (m.cmd === NetCmd.FAREWELL && error === WIRE_OK && this.ctx.role === "server") {
      this.farewellSeq = q.seq;
    }
  }

  private handlerError(m: Msg, e: unknown): number {
    if (isFsError(e)) {
      count(this.ctx, "net_handler_errors");
      return wireErrorOf(e.code);
    }
    count(this.ctx, "net_handler_bugs");
    const text = e instanceof Error ? (e.stack ?? e.message) : String(e);
    log(this.ctx, "error", `${cmdName(m.cmd)} handler failed (answered EIO): ${text}`);
    return wireErrorOf("EIO");
  }
}

/** The server's FAREWELL answer when server.ts has not registered its own. */
function farewellOk(): Buffer {
  return Buffer.alloc(0);
}

// ---------------------------------------------------------------------------------------
// NetServer: the leader's listener and the state of every client, keyed by rid.

export interface NetServerOptions {
  fsid: bigint;
  fmtVers: number;
  /** This server's quorum term: > 0 and different from every earlier server's. */
  serverTerm: number;
  /**
   * Validates a greeting and records the client (upstream: the mounted_clients item); throw
   * an FsError to refuse it. Called on every (re)connect; reattach says the client had state.
   */
  onGreeting?: (g: Greeting, reattach: boolean) => Promise<void>;
  /** A disconnected client did not come back in time: its state is gone, fence the rid. */
  onClientTimeout?: (rid: bigint) => void;
  /** A client's farewell completed: its state is gone, nothing to fence. */
  onFarewell?: (rid: bigint) => void;
  tuning?: Partial<NetTuning>;
  /** Prefix of log lines. */
  name?: string;
}

interface Refusal {
  code: ErrnoCode;
  why: string;
}

export class NetServer implements LinkOwner {
  private readonly ctx: NetContext;
  private listener: StreamListener | undefined;
  private readonly sessions = new Map<bigint, NetConnection>();
  private readonly reconnectTimers = new Map<bigint, TimerHandle>();
  private readonly greetingLinks = new Set<Link>();
  private readonly hooks: ConnectionHooks;
  private stopped = false;

  constructor(env: Env, counters: Counters, private readonly opts: NetServerOptions) {
    assert(Number.isSafeInteger(opts.serverTerm) && opts.serverTerm > 0, "server term");
    this.ctx = makeContext(env, counters, "server", opts.fsid, opts.name ?? "net server",
      opts.tuning);
    this.hooks = {
      onDetached: (conn) => this.onDetached(conn),
      onFarewellAcked: (conn) => this.forget(conn),
    };
  }

  get serverTerm(): number {
    return this.opts.serverTerm;
  }

  register(cmd: NetCmd, handler: RequestHandler): void {
    registerHandler(this.ctx, cmd, handler);
  }

  /** Listens at addr and returns the bound address. */
  async listen(addr: NetAddr): Promise<NetAddr> {
    assert(this.listener === undefined, "listen twice");
    if (this.stopped) throw new FsError("ECANCELED", "server shut down");
    const l = await this.ctx.env.net.listen(addr);
    if (this.stopped) {
      l.close();
      throw new FsError("ECANCELED", "server shut down");
    }
    this.listener = l;
    l.onConnection((c) => this.accept(c));
    return l.local;
  }

  /** Takes an accepted stream (from listen(), or handed in by a test). */
  accept(stream: StreamConnection): void {
    if (this.stopped || this.greetingLinks.size >= MAX_GREETING_LINKS) {
      count(this.ctx, "net_links_refused");
      stream.close();
      return;
    }
    const link = new Link(this.ctx, stream, this);
    this.greetingLinks.add(link);
    link.start();
  }

  /** Sends a request to a client; ENOTCONN when the server holds no state for the rid. */
  request(rid: bigint, cmd: NetCmd, payload: Buffer): Promise<Buffer> {
    const s = this.sessions.get(rid);
    if (!s) return Promise.reject(new FsError("ENOTCONN", `no client rid ${rid.toString(16)}`));
    return s.request(cmd, payload);
  }

  /** The state of a client, connected or awaiting its reconnection. */
  connection(rid: bigint): NetConnection | undefined {
    return this.sessions.get(rid);
  }

  clientRids(): bigint[] {
    return [...this.sessions.keys()];
  }

  /** Closes everything; pending requests in both directions fail with ECANCELED. */
  shutdown(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.listener?.close();
    for (const link of [...this.greetingLinks]) link.close("server shutdown");
    for (const t of this.reconnectTimers.values()) this.ctx.env.timers.clear(t);
    this.reconnectTimers.clear();
    const err = new FsError("ECANCELED", "server shut down");
    for (const s of this.sessions.values()) s.kill(err);
    this.sessions.clear();
  }

  // LinkOwner of Links that have not greeted yet.

  onFrame(link: Link, m: Msg): void {
    if (link.greetingSeen) {
      protocolError(this.ctx, link, `${describeMsg(m)} before the greeting completed`);
      return;
    }
    if (m.cmd !== NetCmd.GREETING || m.flags !== 0 || m.seq !== 0) {
      protocolError(this.ctx, link, `first frame ${describeMsg(m)} is not a greeting`);
      return;
    }
    link.greetingSeen = true;
    count(this.ctx, "net_greetings_recv");
    void this.greet(link, m);
  }

  onLinkDead(link: Link): void {
    this.greetingLinks.delete(link);
  }

  onIdle(): void {
    // Links are idle-acked only once greeted, and then their owner is a NetConnection.
  }

  private async greet(link: Link, m: Msg): Promise<void> {
    let g: Greeting;
    try {
      g = decodeGreeting(m.data);
    } catch (e) {
      count(this.ctx, "net_frames_malformed");
      log(this.ctx, "warn", `greeting from ${link.remote}: ${String(e)}`);
      link.close("malformed greeting");
      return;
    }
    const reattach = g.serverTerm === this.opts.serverTerm;
    if (!reattach && this.sessions.get(g.rid)?.connected) {
      // A greeting the client sent before it learned our term, delivered late on a link it
      // gave up: the client already has a live session with us. Resetting that session would
      // drop requests in flight both ways (an invalidation among them) and leave the client
      // acknowledging seqs we no longer know.
      count(this.ctx, "net_stale_greetings");
      link.close("stale greeting: the client has a live session with this server");
      return;
    }
    const bad = this.checkGreeting(g, reattach);
    if (bad) {
      this.refuse(link, bad);
      return;
    }
    try {
      await this.opts.onGreeting?.(g, reattach);
    } catch (e) {
      this.refuse(link, greetingHookRefusal(this.ctx, e));
      return;
    }
    if (link.dead || this.stopped) return;
    // The rid's state may have timed out or been replaced while onGreeting ran.
    const again = this.checkGreeting(g, reattach);
    if (again) {
      this.refuse(link, again);
      return;
    }
    this.admit(link, m, g, reattach);
  }

  private checkGreeting(g: Greeting, reattach: boolean): Refusal | undefined {
    if (g.fsid !== this.ctx.fsid) {
      return { code: "EINVAL", why: `greeting fsid ${g.fsid.toString(16)}` };
    }
    if (g.fmtVers !== this.opts.fmtVers) {
      return { code: "EINVAL", why: `format version ${g.fmtVers}, ours is ${this.opts.fmtVers}` };
    }
    const s = this.sessions.get(g.rid);
    if (reattach && !s) {
      return { code: "ENOLINK", why: `rid ${g.rid.toString(16)} has no state left` };
    }
    if (!s && this.sessions.size >= MAX_SERVER_CLIENTS) {
      return { code: "ENOMEM", why: `already ${MAX_SERVER_CLIENTS} clients` };
    }
    return undefined;
  }

  /** Answers the greeting with an error; the client closes, or the greeting timeout does. */
  private refuse(link: Link, r: Refusal): void {
    count(this.ctx, "net_greetings_refused");
    log(this.ctx, "warn", `refused greeting from ${link.remote}: ${r.code} ${r.why}`);
    link.write(greetingFrame(this.ctx, 0, MsgFlag.RESPONSE, wireErrorOf(r.code),
      Buffer.alloc(0)));
  }

  /** The greeting is accepted: attach the Link to the rid's state (new, reset or restored). */
  private admit(link: Link, m: Msg, g: Greeting, reattach: boolean): void {
    let s = this.sessions.get(g.rid);
    if (reattach) {
      assert(s !== undefined, "reattach without state");
      if (!s.applyAck(m.recvSeq)) {
        protocolError(this.ctx, link, `greeting recv_seq ${m.recvSeq} beyond what we sent`);
        return;
      }
      if (s.dead) {
        // That ack completed the client's farewell: nothing is left to reattach to.
        this.refuse(link, { code: "ENOLINK", why: "farewell already completed" });
        return;
      }
      count(this.ctx, "net_reconnects");
    } else if (s) {
      count(this.ctx, "net_session_resets");
      s.resetSession();
    } else {
      s = new NetConnection(this.ctx, g.rid, this.hooks);
      this.sessions.set(g.rid, s);
    }
    s.greeting = g;
    this.clearReconnectTimer(g.rid);
    this.greetingLinks.delete(link);
    const reply = encodeGreeting({ fsid: this.ctx.fsid, fmtVers: this.opts.fmtVers,
      serverTerm: this.opts.serverTerm, rid: g.rid, flags: g.flags });
    link.write(greetingFrame(this.ctx, s.receivedSeq, MsgFlag.RESPONSE, WIRE_OK, reply));
    s.attach(link);
  }

  private clearReconnectTimer(rid: bigint): void {
    const t = this.reconnectTimers.get(rid);
    if (t) this.ctx.env.timers.clear(t);
    this.reconnectTimers.delete(rid);
  }

  /** A client's Link broke: keep its state for clientReconnectTimeoutMs. */
  private onDetached(conn: NetConnection): void {
    if (this.stopped || conn.dead || this.sessions.get(conn.rid) !== conn) return;
    this.clearReconnectTimer(conn.rid);
    this.reconnectTimers.set(conn.rid, this.ctx.env.timers.after(
      this.ctx.tuning.clientReconnectTimeoutMs, () => this.expire(conn)));
  }

  private expire(conn: NetConnection): void {
    this.reconnectTimers.delete(conn.rid);
    if (this.stopped || this.sessions.get(conn.rid) !== conn || conn.connected) return;
    if (conn.farewellSent) {
      // The client left after its farewell was answered; it only missed acknowledging it.
      this.forget(conn);
      return;
    }
    count(this.ctx, "net_client_timeouts");
    log(this.ctx, "warn", `client rid ${conn.rid.toString(16)} did not reconnect within ` +
      `${this.ctx.tuning.clientReconnectTimeoutMs} ms: dropping its state`);
    this.sessions.delete(conn.rid);
    conn.kill(new FsError("ENOTCONN", `client rid ${conn.rid.toString(16)} timed out`));
    this.opts.onClientTimeout?.(conn.rid);
  }

  /** The client's farewell is complete: forget it without fencing. */
  private forget(conn: NetConnection): void {
    if (this.sessions.get(conn.rid) !== conn) return;
    count(this.ctx, "net_farewells");
    this.sessions.delete(conn.rid);
    this.clearReconnectTimer(conn.rid);
    conn.kill(new FsError("ENOTCONN", `client rid ${conn.rid.toString(16)} said farewell`));
    this.opts.onFarewell?.(conn.rid);
  }
}

function greetingHookRefusal(ctx: NetContext, e: unknown): Refusal {
  if (isFsError(e)) return { code: e.code, why: `onGreeting: ${e.message}` };
  count(ctx, "net_handler_bugs");
  const text = e instanceof Error ? (e.stack ?? e.message) : String(e);
  log(ctx, "error", `onGreeting failed (refused with EIO): ${text}`);
  return { code: "EIO", why: "onGreeting failed" };
}

// ---------------------------------------------------------------------------------------
// NetClient: a mount's connection to whichever server is current.

export interface NetClientOptions {
  fsid: bigint;
  fmtVers: number;
  rid: bigint;
  /** The mount owns a quorum slot (greeting flag QUORUM). */
  quorum: boolean;
  /** Where the current server listens; a rejection is retried with back-off. */
  getServerAddr: () => Promise<NetAddr>;
  /** Each successful greeting; newServer when the term differs from the last one seen. */
  onConnected?: (serverTerm: number, newServer: boolean) => void;
  /**
   * The server refused us with ENOLINK: it had our state and dropped it (we were too slow to
   * reconnect and are being fenced, or our farewell completed). Everything pending failed.
   */
  onSessionLost?: (err: FsError) => void;
  tuning?: Partial<NetTuning>;
  name?: string;
}

export class NetClient implements LinkOwner {
  /** The state shared with the server; handlers receive it as `peer`. */
  readonly conn: NetConnection;
  private readonly ctx: NetContext;
  private lastServerTerm = 0;
  /** The Link being greeted or attached, and how to tell run() it ended. */
  private link: Link | undefined;
  private linkDone: ((greeted: boolean) => void) | undefined;
  private linkGreeted = false;
  private sleepTimer: TimerHandle | undefined;
  private wake: (() => void) | undefined;
  private started = false;
  private stopped = false;
  private farewellStarted = false;

  constructor(env: Env, counters: Counters, private readonly opts: NetClientOptions) {
    this.ctx = makeContext(env, counters, "client", opts.fsid, opts.name ?? "net client",
      opts.tuning);
    this.conn = new NetConnection(this.ctx, opts.rid, {
      onDetached: (_conn, link) => this.linkFinished(link),
      onFarewellAcked: () => undefined,
    });
  }

  /** Term of the server last greeted, 0 before the first greeting. */
  get serverTerm(): number {
    return this.lastServerTerm;
  }

  get connected(): boolean {
    return this.conn.connected;
  }

  register(cmd: NetCmd, handler: RequestHandler): void {
    registerHandler(this.ctx, cmd, handler);
  }

  /** Starts connecting (and reconnecting until shutdown). Requests may be queued before. */
  start(): void {
    assert(!this.started, "client started twice");
    this.started = true;
    void this.run();
  }

  request(cmd: NetCmd, payload: Buffer): Promise<Buffer> {
    return this.conn.request(cmd, payload);
  }

  /**
   * Departs for good: sends FAREWELL, waits for its response, acknowledges it and shuts the
   * client down. Rejects with ENOLINK if the server no longer knows us (upstream then checks
   * the mounted_clients item to learn whether the farewell was processed).
   */
  async farewell(): Promise<void> {
    this.farewellStarted = true;
    await this.conn.request(NetCmd.FAREWELL, Buffer.alloc(0));
    // Acknowledge at once so the server forgets us now, not at its reconnect timeout.
    this.conn.sendAck();
    this.stop(new FsError("ECANCELED", "client said farewell"));
  }

  /** Stops reconnecting and closes; pending requests fail with ECANCELED. */
  shutdown(): void {
    this.stop(new FsError("ECANCELED", "client shut down"));
  }

  /** Drops the current socket (tests; or a caller that knows the server moved). */
  disconnect(reason: string): void {
    this.link?.close(reason);
  }

  private stop(err: FsError): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.sleepTimer) this.ctx.env.timers.clear(this.sleepTimer);
    this.sleepTimer = undefined;
    this.wake?.();
    this.wake = undefined;
    const link = this.link;
    this.conn.kill(err);
    link?.close("client stopped");
    if (link) this.linkFinished(link);
  }

  private async run(): Promise<void> {
    let delayMs = 0;
    while (!this.stopped) {
      if (delayMs > 0) await this.sleep(delayMs);
      if (this.stopped) break;
      const greeted = await this.connectOnce();
      delayMs = greeted ? this.ctx.tuning.reconnectMinMs : this.backoff(delayMs);
    }
  }

  private backoff(prevMs: number): number {
    const t = this.ctx.tuning;
    const base = Math.min(t.reconnectMaxMs, Math.max(t.reconnectMinMs, prevMs * 2));
    // Jitter keeps the clients of a failed server from reconnecting in lockstep.
    const half = Math.floor(base / 2);
    return base - half + (this.ctx.env.random.u32() % (half + 1));
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.wake = resolve;
      this.sleepTimer = this.ctx.env.timers.after(ms, () => {
        this.sleepTimer = undefined;
        this.wake = undefined;
        resolve();
      });
    });
  }

  /** One connection: connect, greet, serve until the Link dies. True if it greeted. */
  private async connectOnce(): Promise<boolean> {
    let stream: StreamConnection;
    try {
      const addr = await this.opts.getServerAddr();
      if (this.stopped) return false;
      stream = await this.ctx.env.net.connect(addr, this.ctx.tuning.connectTimeoutMs);
    } catch (e) {
      count(this.ctx, "net_connect_failures");
      log(this.ctx, isFsError(e) ? "debug" : "error", `connect failed: ${String(e)}`);
      return false;
    }
    if (this.stopped) {
      stream.close();
      return false;
    }
    return new Promise<boolean>((resolve) => {
      const link = new Link(this.ctx, stream, this);
      this.link = link;
      this.linkGreeted = false;
      this.linkDone = resolve;
      link.start();
      if (!link.dead) this.sendGreeting(link);
    });
  }

  private sendGreeting(link: Link): void {
    const flags = (this.opts.quorum ? GreetingFlag.QUORUM : 0) |
      (this.farewellStarted ? GreetingFlag.FAREWELL : 0);
    const g = encodeGreeting({ fsid: this.ctx.fsid, fmtVers: this.opts.fmtVers,
      serverTerm: this.lastServerTerm, rid: this.opts.rid, flags });
    count(this.ctx, "net_greetings_sent");
    link.write(greetingFrame(this.ctx, this.conn.receivedSeq, 0, WIRE_OK, g));
  }

  private linkFinished(link: Link): void {
    if (link !== this.link) return;
    this.link = undefined;
    const done = this.linkDone;
    this.linkDone = undefined;
    done?.(this.linkGreeted);
  }

  // LinkOwner until the greeting response arrives.

  onLinkDead(link: Link): void {
    this.linkFinished(link);
  }

  onIdle(): void {
    // Only greeted Links are idle-acked, and those belong to the NetConnection.
  }

  onFrame(link: Link, m: Msg): void {
    if (link !== this.link) return;
    if (m.cmd !== NetCmd.GREETING || m.flags !== MsgFlag.RESPONSE || m.seq !== 0) {
      protocolError(this.ctx, link, `${describeMsg(m)} before the greeting response`);
      return;
    }
    if (m.error !== WIRE_OK) {
      this.refused(link, fsErrorFromWire(m.error));
      return;
    }
    let g: Greeting;
    try {
      g = decodeGreeting(m.data);
    } catch (e) {
      count(this.ctx, "net_frames_malformed");
      log(this.ctx, "warn", `greeting response: ${String(e)}`);
      link.close("malformed greeting response");
      return;
    }
    if (g.fsid !== this.ctx.fsid || g.rid !== this.opts.rid ||
      g.fmtVers !== this.opts.fmtVers || g.serverTerm === 0) {
      protocolError(this.ctx, link, "greeting response does not match our greeting");
      return;
    }
    this.greeted(link, m, g);
  }

  private greeted(link: Link, m: Msg, g: Greeting): void {
    if (g.serverTerm < this.lastServerTerm) {
      // An old leader still answering: a newer one exists, look for it again.
      count(this.ctx, "net_stale_server");
      link.close(`stale server term ${g.serverTerm} < ${this.lastServerTerm}`);
      return;
    }
    const newServer = g.serverTerm !== this.lastServerTerm;
    if (newServer) {
      if (this.lastServerTerm !== 0) count(this.ctx, "net_new_server");
      this.conn.resetSession();
      this.lastServerTerm = g.serverTerm;
    } else if (!this.conn.applyAck(m.recvSeq)) {
      protocolError(this.ctx, link, `greeting recv_seq ${m.recvSeq} beyond what we sent`);
      return;
    } else {
      count(this.ctx, "net_reconnects");
    }
    this.conn.greeting = g;
    this.linkGreeted = true;
    this.conn.attach(link);
    this.opts.onConnected?.(g.serverTerm, newServer);
  }

  private refused(link: Link, err: FsError): void {
    count(this.ctx, "net_greetings_refused");
    if (err.code !== "ENOLINK") {
      log(this.ctx, "warn", `server refused our greeting: ${err.message}`);
      link.close("greeting refused");
      return;
    }
    count(this.ctx, "net_sessions_lost");
    log(this.ctx, "error", `server no longer knows rid ${this.opts.rid.toString(16)}`);
    this.stop(err);
    this.opts.onSessionLost?.(err);
  }
}
