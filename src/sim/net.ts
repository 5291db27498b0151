/*
 * The simulated network: datagrams and byte streams between simulated hosts, with faults.
 *
 * A SimWorld (src/sim/env.ts) owns one SimNetwork and gives each simulated node a
 * NodeNetwork: the Network of src/env/env.ts bound to that node's host address. Tests and
 * scenarios inject faults through the SimNetwork (partition, block, heal, cut, crashHost,
 * setFaults, setLinkFaults). Nothing real is sent: hosts are address strings ("10.0.0.N"),
 * every delivery is a scheduler event, every random choice comes from the SimRandom handed
 * to the constructor, so a run replays exactly from its seed.
 *
 * Datagrams (the quorum's UDP): each send is, independently, blocked by a partition on its
 * path (checked when sent: a datagram already in flight when a partition starts still
 * arrives), lost (datagramLossProbability), duplicated (datagramDuplicateProbability) and
 * delayed by a uniform draw in [delayMinMs, delayMaxMs] per copy, so a spread of delays
 * reorders them. A datagram to an address with no bound socket, or a socket without a
 * handler, is silently dropped, as UDP does. Sizes over DATAGRAM_MAX_BYTES are dropped.
 *
 * Streams (the client/server TCP): connect() takes a SYN and a SYN-ACK one-way delay each.
 * A live host without a listener at the port answers with a reset: ECONNREFUSED after the
 * round trip. An unknown host, a blocked path (either direction) or a handshake longer than
 * timeoutMs gets no answer: ETIMEDOUT exactly timeoutMs after the call. Bytes arrive in
 * order, unaltered, each write split at random points (streamSplitProbability, repeatedly)
 * and consecutive chunks sometimes merged (streamCoalesceProbability): receivers must
 * reassemble frames from arbitrary chunk boundaries, as with real TCP.
 *
 * Breaking streams:
 *  - cut(conn) (and the random cut, streamCutProbability per delivered chunk) breaks a
 *    connection at once: bytes already delivered stay delivered, everything in flight is
 *    lost, so a message may be cut in the middle. Each side notices independently after a
 *    random delay in [0, resetNoticeMaxMs]: until then its writes are accepted and lost, then
 *    `closed` becomes true and onClose fires.
 *  - A partition STALLS the streams crossing it: chunks due on a blocked path wait, and
 *    resume in order (after a fresh delay) if the path heals. If the path stays blocked in
 *    either direction for streamBreakAfterMs (TCP's retransmission/keepalive timeout), the
 *    connection breaks as by cut(). Idle streams are broken the same way, so after a long
 *    partition no stream crosses it. The core's own heartbeats usually notice sooner.
 *  - close() is graceful: the peer receives what was written before, then onClose("closed
 *    by peer"); the closing side's onClose("closed locally") fires at once (as an event).
 *  - crashHost() is a kill -9 of the host's process: its sockets and listeners vanish, its
 *    endpoints never call back again, and each peer sees onClose("connection reset by peer")
 *    one delay later (the kernel's RST). The host keeps its address; to model a host that
 *    goes silent instead, isolate() it first.
 *
 * Invariants: callbacks never run synchronously inside the call that caused them; bytes are
 * delivered in order or not at all; each endpoint's onClose fires at most once and nothing
 * is delivered to it afterwards; every queue is bounded (NET_MAX_INFLIGHT_DATAGRAMS,
 * STREAM_MAX_QUEUED_BYTES per direction and per receive buffer, SIM_MAX_CONNECTIONS,
 * SIM_MAX_SPLITS_PER_WRITE).
 * Counters record every send, delivery, drop and fault.
 */

import type {
  DatagramSocket, NetAddr, Network, StreamConnection, StreamListener,
} from "../env/env.js";
import { assert } from "../util/assert.js";
import { Errno, FsError, type ErrnoCode } from "../util/errno.js";
import type { SimRandom } from "./random.js";
import { msToUs, type EventHandle, type Scheduler } from "./scheduler.js";

/** Largest datagram payload (as over real UDP/IPv4). Must equal src/env/real/net.ts. */
export const DATAGRAM_MAX_BYTES = 65_507;
/** Bound on bytes queued per stream direction, and per receive buffer. Same as real. */
export const STREAM_MAX_QUEUED_BYTES = 64 << 20;
/** Bound on datagrams in flight in the whole network; beyond it sends are dropped. */
export const NET_MAX_INFLIGHT_DATAGRAMS = 1 << 16;
/** Bound on connections open at once in the whole network: a leak fails loudly. */
export const SIM_MAX_CONNECTIONS = 1 << 16;
/** Bound on the extra split points drawn for one write. */
export const SIM_MAX_SPLITS_PER_WRITE = 8;
/** Ephemeral port range (Linux's default ip_local_port_range). */
export const EPHEMERAL_PORT_FIRST = 32_768;
export const EPHEMERAL_PORT_LAST = 60_999;
const MAX_PORT = 65_535;
const ANY_ADDR = "0.0.0.0";

/** Fault and timing knobs; every probability is in [0, 1]. */
export interface NetFaults {
  /** One-way delay of a datagram or stream chunk: uniform in [delayMinMs, delayMaxMs]. */
  delayMinMs: number;
  delayMaxMs: number;
  datagramLossProbability: number;
  datagramDuplicateProbability: number;
  /** Chance, drawn repeatedly (up to SIM_MAX_SPLITS_PER_WRITE), of one more split point. */
  streamSplitProbability: number;
  /** Chance that a delivered chunk absorbs the next one already due. */
  streamCoalesceProbability: number;
  /** Chance that delivering a chunk instead cuts its connection. */
  streamCutProbability: number;
  /** How long a path must stay blocked before the streams crossing it break. */
  streamBreakAfterMs: number;
  /** Largest delay before a side notices a cut connection. */
  resetNoticeMaxMs: number;
}

/** A quiet LAN: short variable delays, no losses, no cuts. */
export const NET_FAULTS_NONE: Readonly<NetFaults> = {
  delayMinMs: 0.05, delayMaxMs: 0.5,
  datagramLossProbability: 0, datagramDuplicateProbability: 0,
  streamSplitProbability: 0, streamCoalesceProbability: 0, streamCutProbability: 0,
  streamBreakAfterMs: 10_000, resetNoticeMaxMs: 1,
};

export interface SimNetCounters {
  datagramsSent: number;
  datagramsDelivered: number;
  datagramsLost: number;
  datagramsDuplicated: number;
  datagramsBlocked: number;
  /** No socket bound at the destination when it arrived. */
  datagramsUnreachable: number;
  /** Sent by a closed socket, or arrived at a socket without a handler. */
  datagramsDiscarded: number;
  /** Oversized, or over NET_MAX_INFLIGHT_DATAGRAMS. */
  datagramsOverflow: number;
  connectsStarted: number;
  connectsRefused: number;
  connectsTimedOut: number;
  connectionsAccepted: number;
  streamWrites: number;
  streamBytesWritten: number;
  streamChunksDelivered: number;
  streamBytesDelivered: number;
  /** In flight when a connection broke, or written after it broke. */
  streamBytesLost: number;
  /** Arrived at an endpoint already closed. */
  streamBytesDiscarded: number;
  streamSplits: number;
  streamCoalesced: number;
  streamStalls: number;
  streamCuts: number;
  streamPartitionBreaks: number;
  streamOverflows: number;
  streamGracefulCloses: number;
  topologyChanges: number;
  hostCrashes: number;
}

function zeroCounters(): SimNetCounters {
  return {
    datagramsSent: 0, datagramsDelivered: 0, datagramsLost: 0, datagramsDuplicated: 0,
    datagramsBlocked: 0, datagramsUnreachable: 0, datagramsDiscarded: 0, datagramsOverflow: 0,
    connectsStarted: 0, connectsRefused: 0, connectsTimedOut: 0, connectionsAccepted: 0,
    streamWrites: 0, streamBytesWritten: 0, streamChunksDelivered: 0, streamBytesDelivered: 0,
    streamBytesLost: 0, streamBytesDiscarded: 0, streamSplits: 0, streamCoalesced: 0,
    streamStalls: 0, streamCuts: 0, streamPartitionBreaks: 0, streamOverflows: 0,
    streamGracefulCloses: 0, topologyChanges: 0, hostCrashes: 0,
  };
}

/** One simulated machine: its address, its current process and its ports. */
interface Host {
  readonly addr: string;
  /** Bumped by each crash: a NodeNetwork of an older incarnation is a dead process. */
  incarnation: number;
  readonly udp: Map<number, SimDatagramSocket>;
  readonly listeners: Map<number, SimStreamListener>;
  /** Local TCP ports held by listeners and by outgoing connections. */
  readonly tcpPorts: Set<number>;
  nextUdpPort: number;
  nextTcpPort: number;
}

export interface SimNetworkOptions {
  faults?: Partial<NetFaults>;
  /** Receives notable events (partitions, cuts, crashes) for the world's trace. */
  trace?: (msg: string) => void;
}

export class SimNetwork {
  readonly counters: SimNetCounters = zeroCounters();
  private faults: NetFaults;
  private readonly linkOverrides = new Map<string, Partial<NetFaults>>();
  private readonly linkFaults = new Map<string, NetFaults>();
  private readonly hosts = new Map<string, Host>();
  private readonly blocked = new Set<string>();
  /** Open connections, in creation order (so iteration is deterministic). */
  private readonly conns = new Set<SimConnection>();
  private inflightDatagrams = 0;
  private nextConnId = 1;
  private readonly traceFn: (msg: string) => void;

  constructor(
    readonly scheduler: Scheduler,
    readonly random: SimRandom,
    opts: SimNetworkOptions = {},
  ) {
    this.faults = checkFaults({ ...NET_FAULTS_NONE, ...opts.faults });
    this.traceFn = opts.trace ?? (() => undefined);
  }

  // ---- hosts ----

  /** Registers a host address and returns the Network of its first process. */
  addHost(addr: string): NodeNetwork {
    assert(isIPv4(addr) && addr !== ANY_ADDR, `host address ${addr}`);
    assert(!this.hosts.has(addr), `host ${addr} already exists`);
    const host: Host = {
      addr, incarnation: 1, udp: new Map(), listeners: new Map(), tcpPorts: new Set(),
      nextUdpPort: EPHEMERAL_PORT_FIRST, nextTcpPort: EPHEMERAL_PORT_FIRST,
    };
    this.hosts.set(addr, host);
    return new NodeNetwork(this, host, host.incarnation);
  }

  /** The Network of the host's current process (a new one after each crash). */
  currentProcess(addr: string): NodeNetwork {
    const host = this.host(addr);
    return new NodeNetwork(this, host, host.incarnation);
  }

  /** Kills the host's process (kill -9): see the header. */
  crashHost(addr: string): void {
    const host = this.host(addr);
    this.counters.hostCrashes++;
    this.traceFn(`crash host ${addr} (incarnation ${host.incarnation})`);
    host.incarnation++;
    for (const s of [...host.udp.values()]) s.close();
    for (const l of [...host.listeners.values()]) l.close();
    host.tcpPorts.clear();
    for (const conn of [...this.conns]) {
      const dead = conn.endpoints().filter((e) => e.local.addr === addr);
      if (dead.length === 0) continue;
      for (const e of dead) e.dead = true;
      this.breakConnection(conn, "connection reset by peer",
        () => this.delayUs(addr, conn.other(dead[0]!).local.addr));
    }
  }

  // ---- faults ----

  /** Replaces the global fault knobs (unset fields keep their current values). */
  setFaults(f: Partial<NetFaults>): void {
    this.faults = checkFaults({ ...this.faults, ...f });
    for (const [key, o] of this.linkOverrides) {
      this.linkFaults.set(key, checkFaults({ ...this.faults, ...o }));
    }
  }

  getFaults(): Readonly<NetFaults> {
    return this.faults;
  }

  /** Overrides knobs for one direction (from -> to); null removes the override. */
  setLinkFaults(from: string, to: string, f: Partial<NetFaults> | null): void {
    const key = linkKey(from, to);
    if (f === null) {
      this.linkOverrides.delete(key);
      this.linkFaults.delete(key);
      return;
    }
    this.linkOverrides.set(key, f);
    this.linkFaults.set(key, checkFaults({ ...this.faults, ...f }));
  }

  /** Blocks both directions between two hosts. */
  partition(a: string, b: string): void {
    this.setBlocked(a, b, true);
    this.setBlocked(b, a, true);
    this.topologyChanged(`partition ${a} <-> ${b}`);
  }

  /** Blocks one direction only (asymmetric partition): from can no longer reach to. */
  block(from: string, to: string): void {
    this.setBlocked(from, to, true);
    this.topologyChanged(`block ${from} -> ${to}`);
  }

  unblock(from: string, to: string): void {
    this.setBlocked(from, to, false);
    this.topologyChanged(`unblock ${from} -> ${to}`);
  }

  /** Blocks every path to and from a host. */
  isolate(addr: string): void {
    for (const other of this.hosts.keys()) {
      if (other === addr) continue;
      this.setBlocked(addr, other, true);
      this.setBlocked(other, addr, true);
    }
    this.topologyChanged(`isolate ${addr}`);
  }

  /** Removes every block to or from addr. */
  unisolate(addr: string): void {
    for (const other of this.hosts.keys()) {
      if (other === addr) continue;
      this.setBlocked(addr, other, false);
      this.setBlocked(other, addr, false);
    }
    this.topologyChanged(`unisolate ${addr}`);
  }

  /** Removes every block. */
  heal(): void {
    this.blocked.clear();
    this.topologyChanged("heal");
  }

  isBlocked(from: string, to: string): boolean {
    return from !== to && this.blocked.has(linkKey(from, to));
  }

  /** Open connections (both directions of each), in creation order. */
  connections(): readonly SimConnection[] {
    return [...this.conns];
  }

  /** Breaks a connection now (see the header); a no-op if it is already broken or closed. */
  cut(conn: SimConnection, reason = "connection reset (simulated cut)"): void {
    this.breakConnection(conn, reason, () => this.noticeUs(conn));
  }

  // ---- internals used by NodeNetwork and the endpoints ----

  /** @internal */
  host(addr: string): Host {
    const h = this.hosts.get(addr);
    assert(h !== undefined, `no simulated host ${addr}`);
    return h;
  }

  /** @internal */
  trace(msg: string): void {
    this.traceFn(msg);
  }

  /** @internal A one-way delay from one host to another, in whole microseconds. */
  delayUs(from: string, to: string): number {
    const f = this.faultsFor(from, to);
    const lo = msToUs(f.delayMinMs);
    return lo + this.random.int(msToUs(f.delayMaxMs) - lo + 1);
  }

  /** @internal */
  faultsFor(from: string, to: string): NetFaults {
    return this.linkFaults.get(linkKey(from, to)) ?? this.faults;
  }

  /** @internal */
  sendDatagram(sock: SimDatagramSocket, buf: Buffer, to: NetAddr): void {
    const c = this.counters;
    if (sock.closed) { c.datagramsDiscarded++; return; }
    c.datagramsSent++;
    const from = sock.local;
    if (buf.length > DATAGRAM_MAX_BYTES) { c.datagramsOverflow++; return; }
    if (this.isBlocked(from.addr, to.addr)) { c.datagramsBlocked++; return; }
    const f = this.faultsFor(from.addr, to.addr);
    if (this.random.chance(f.datagramLossProbability)) { c.datagramsLost++; return; }
    const copies = this.random.chance(f.datagramDuplicateProbability) ? 2 : 1;
    if (copies === 2) c.datagramsDuplicated++;
    const data = Buffer.from(buf);
    const dest = { addr: to.addr, port: to.port };
    for (let i = 0; i < copies; i++) {
      if (this.inflightDatagrams >= NET_MAX_INFLIGHT_DATAGRAMS) { c.datagramsOverflow++; return; }
      this.inflightDatagrams++;
      this.scheduler.atUs(this.scheduler.nowUs + this.delayUs(from.addr, to.addr),
        () => this.deliverDatagram(data, from, dest), "datagram");
    }
  }

  private deliverDatagram(data: Buffer, from: NetAddr, to: NetAddr): void {
    this.inflightDatagrams--;
    const sock = this.hosts.get(to.addr)?.udp.get(to.port);
    if (sock === undefined) { this.counters.datagramsUnreachable++; return; }
    const handler = sock.handler;
    if (handler === null) { this.counters.datagramsDiscarded++; return; }
    this.counters.datagramsDelivered++;
    handler(Buffer.from(data), from); // each receiver gets its own copy (duplicates too)
  }

  /** @internal */
  allocPort(host: Host, kind: "udp" | "tcp"): number | null {
    const span = EPHEMERAL_PORT_LAST - EPHEMERAL_PORT_FIRST + 1;
    for (let i = 0; i < span; i++) {
      const port = kind === "udp" ? host.nextUdpPort : host.nextTcpPort;
      const next = port >= EPHEMERAL_PORT_LAST ? EPHEMERAL_PORT_FIRST : port + 1;
      if (kind === "udp") host.nextUdpPort = next;
      else host.nextTcpPort = next;
      const used = kind === "udp" ? host.udp.has(port) : host.tcpPorts.has(port);
      if (!used) return port;
    }
    return null;
  }

  /** @internal The handshake of NodeNetwork.connect(). */
  startConnect(from: NodeNetwork, to: NetAddr, timeoutMs: number,
    resolve: (c: StreamConnection) => void, reject: (e: FsError) => void): void {
    this.counters.connectsStarted++;
    const src = from.host.addr;
    const startUs = this.scheduler.nowUs;
    const timeoutUs = Math.max(1, msToUs(timeoutMs));
    const timedOut = (): void => {
      this.scheduler.atUs(startUs + timeoutUs, () => {
        if (!from.alive) return; // a dead process awaits nothing
        this.counters.connectsTimedOut++;
        reject(new FsError("ETIMEDOUT", `no answer within ${timeoutMs} ms`, "connect",
          formatAddr(to)));
      }, "connect timeout");
    };
    const dest = this.hosts.get(to.addr);
    const synUs = this.delayUs(src, to.addr);
    const ackUs = this.delayUs(to.addr, src);
    if (dest === undefined || this.pathBlocked(src, to.addr) || synUs + ackUs >= timeoutUs) {
      timedOut();
      return;
    }
    this.scheduler.atUs(startUs + synUs, () => {
      if (!from.alive) return;
      if (this.pathBlocked(src, to.addr)) { timedOut(); return; }
      const listener = dest.listeners.get(to.port);
      if (listener === undefined) {
        this.scheduler.atUs(this.scheduler.nowUs + ackUs, () => {
          if (!from.alive) return;
          this.counters.connectsRefused++;
          reject(new FsError("ECONNREFUSED", undefined, "connect", formatAddr(to)));
        }, "connect refused");
        return;
      }
      this.accept(from, listener, ackUs, resolve, reject);
    }, "connect syn");
  }

  private accept(from: NodeNetwork, listener: SimStreamListener, ackUs: number,
    resolve: (c: StreamConnection) => void, reject: (e: FsError) => void): void {
    const port = this.allocPort(from.host, "tcp");
    if (port === null) {
      reject(new FsError(netCode("EADDRNOTAVAIL", "EAGAIN"), "no free ephemeral port",
        "connect", formatAddr(listener.local)));
      return;
    }
    assert(this.conns.size < SIM_MAX_CONNECTIONS,
      `more than ${SIM_MAX_CONNECTIONS} simulated connections open`);
    from.host.tcpPorts.add(port);
    const conn = new SimConnection(this, this.nextConnId++, { addr: from.host.addr, port },
      listener.local);
    this.conns.add(conn);
    this.counters.connectionsAccepted++;
    if (this.pathBlocked(conn.client.local.addr, conn.server.local.addr)) {
      this.watchBlocked(conn);
    }
    listener.accept(conn.server);
    this.scheduler.atUs(this.scheduler.nowUs + ackUs, () => {
      if (from.alive) resolve(conn.client);
    }, "connect established");
  }

  /** @internal Either direction between a and b blocked. */
  pathBlocked(a: string, b: string): boolean {
    return this.isBlocked(a, b) || this.isBlocked(b, a);
  }

  /** @internal Removes a finished connection. */
  forget(conn: SimConnection): void {
    this.conns.delete(conn);
  }

  /** @internal Breaks conn; each live side notices after noticeUs(). */
  breakConnection(conn: SimConnection, reason: string, noticeUs: () => number): void {
    if (conn.broken || !this.conns.has(conn)) return;
    this.counters.streamCuts++;
    this.trace(`stream #${conn.id} ${formatAddr(conn.client.local)} -> ` +
      `${formatAddr(conn.server.local)} broken: ${reason}`);
    conn.breakNow(reason, noticeUs);
    this.conns.delete(conn);
  }

  /** @internal A random delay for a side to notice a cut. */
  noticeUs(conn: SimConnection): number {
    const f = this.faultsFor(conn.client.local.addr, conn.server.local.addr);
    return this.random.int(msToUs(f.resetNoticeMaxMs) + 1);
  }

  private setBlocked(from: string, to: string, on: boolean): void {
    assert(from !== to, `cannot block a host (${from}) from itself`);
    this.host(from);
    this.host(to);
    if (on) this.blocked.add(linkKey(from, to));
    else this.blocked.delete(linkKey(from, to));
  }

  /** Starts break timers for newly blocked streams and resumes healed ones. */
  private topologyChanged(what: string): void {
    this.counters.topologyChanges++;
    this.trace(what);
    for (const conn of this.conns) {
      const blocked = this.pathBlocked(conn.client.local.addr, conn.server.local.addr);
      if (blocked && conn.blockedSinceUs === null) this.watchBlocked(conn);
      if (!blocked && conn.blockedSinceUs !== null) {
        conn.blockedSinceUs = null;
        conn.resumeStalled();
      }
    }
  }

  private watchBlocked(conn: SimConnection): void {
    const since = this.scheduler.nowUs;
    conn.blockedSinceUs = since;
    const f = this.faultsFor(conn.client.local.addr, conn.server.local.addr);
    this.scheduler.atUs(since + msToUs(f.streamBreakAfterMs), () => {
      if (conn.blockedSinceUs !== since) return; // healed (and maybe blocked again) since
      this.counters.streamPartitionBreaks++;
      this.breakConnection(conn, "connection timed out (partition)", () => this.noticeUs(conn));
    }, "partition break check");
  }
}

/** The Network of one simulated process on one host. */
export class NodeNetwork implements Network {
  constructor(
    readonly net: SimNetwork,
    /** @internal */ readonly host: Host,
    readonly incarnation: number,
  ) {}

  /** False once the host's process crashed: nothing of this Network settles any more. */
  get alive(): boolean {
    return this.host.incarnation === this.incarnation;
  }

  get addr(): string {
    return this.host.addr;
  }

  bindDatagram(addr: NetAddr): Promise<DatagramSocket> {
    if (!this.alive) return never();
    const bad = this.checkLocal(addr, "bind");
    if (bad) return Promise.reject(bad);
    let port = addr.port;
    if (port === 0) {
      const p = this.net.allocPort(this.host, "udp");
      if (p === null) return Promise.reject(new FsError("EAGAIN", "no free port", "bind"));
      port = p;
    } else if (this.host.udp.has(port)) {
      return Promise.reject(inUse("bind", { addr: this.host.addr, port }));
    }
    const sock = new SimDatagramSocket(this.net, this.host, { addr: this.host.addr, port });
    this.host.udp.set(port, sock);
    return Promise.resolve(sock);
  }

  listen(addr: NetAddr): Promise<StreamListener> {
    if (!this.alive) return never();
    const bad = this.checkLocal(addr, "listen");
    if (bad) return Promise.reject(bad);
    let port = addr.port;
    if (port === 0) {
      const p = this.net.allocPort(this.host, "tcp");
      if (p === null) return Promise.reject(new FsError("EAGAIN", "no free port", "listen"));
      port = p;
    } else if (this.host.tcpPorts.has(port)) {
      return Promise.reject(inUse("listen", { addr: this.host.addr, port }));
    }
    const l = new SimStreamListener(this.net, this.host, { addr: this.host.addr, port });
    this.host.listeners.set(port, l);
    this.host.tcpPorts.add(port);
    return Promise.resolve(l);
  }

  connect(to: NetAddr, timeoutMs: number): Promise<StreamConnection> {
    if (!this.alive) return never();
    if (!isIPv4(to.addr) || !isPort(to.port) || to.port === 0) {
      return Promise.reject(new FsError("EINVAL", `bad address ${formatAddr(to)}`, "connect"));
    }
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      return Promise.reject(new FsError("EINVAL", `connect timeout ${timeoutMs} ms`, "connect"));
    }
    return new Promise((resolve, reject) => {
      this.net.startConnect(this, to, timeoutMs, resolve, reject);
    });
  }

  private checkLocal(addr: NetAddr, syscall: string): FsError | null {
    if (!isPort(addr.port)) return new FsError("EINVAL", `bad port ${addr.port}`, syscall);
    if (addr.addr !== this.host.addr && addr.addr !== ANY_ADDR) {
      return new FsError(netCode("EADDRNOTAVAIL", "EINVAL"),
        `EADDRNOTAVAIL: ${addr.addr} is not an address of host ${this.host.addr}`, syscall);
    }
    return null;
  }
}

class SimDatagramSocket implements DatagramSocket {
  /** @internal */ handler: ((buf: Buffer, from: NetAddr) => void) | null = null;
  /** @internal */ closed = false;

  constructor(
    private readonly net: SimNetwork,
    private readonly host: Host,
    readonly local: NetAddr,
  ) {}

  send(buf: Buffer, to: NetAddr): void {
    this.net.sendDatagram(this, buf, to);
  }

  onMessage(fn: (buf: Buffer, from: NetAddr) => void): void {
    if (!this.closed) this.handler = fn;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handler = null;
    if (this.host.udp.get(this.local.port) === this) this.host.udp.delete(this.local.port);
  }
}

class SimStreamListener implements StreamListener {
  private handler: ((c: StreamConnection) => void) | null = null;
  private closed = false;

  constructor(
    private readonly net: SimNetwork,
    private readonly host: Host,
    readonly local: NetAddr,
  ) {}

  onConnection(fn: (c: StreamConnection) => void): void {
    if (!this.closed) this.handler = fn;
  }

  /** Stops accepting; accepted connections stay open. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handler = null;
    if (this.host.listeners.get(this.local.port) === this) {
      this.host.listeners.delete(this.local.port);
      this.host.tcpPorts.delete(this.local.port);
    }
  }

  /** @internal A handshake reached us: hand the server side over (closed if nobody takes it). */
  accept(server: SimStreamEndpoint): void {
    const handler = this.handler;
    if (handler === null) {
      server.close();
      return;
    }
    handler(server);
  }
}

/** A chunk in flight on one direction; data null is the FIN of a graceful close. */
interface Chunk {
  readonly data: Buffer | null;
  readonly dueUs: number;
}

/** One direction of a connection: an ordered, bounded queue of chunks in flight. */
class Pipe {
  private chunks: Chunk[] = [];
  private head = 0;
  queuedBytes = 0;
  lastDueUs = 0;
  event: EventHandle | null = null;
  stalled = false;

  get length(): number {
    return this.chunks.length - this.head;
  }

  peek(): Chunk | undefined {
    return this.chunks[this.head];
  }

  push(c: Chunk): void {
    this.chunks.push(c);
    this.queuedBytes += c.data?.length ?? 0;
  }

  shift(): Chunk {
    const c = this.chunks[this.head]!;
    this.head++;
    this.queuedBytes -= c.data?.length ?? 0;
    // Compact now and then so a long-lived queue does not keep delivered chunks alive.
    if (this.head >= 1024 && this.head * 2 >= this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
    return c;
  }

  /** Drops everything in flight; returns the number of data bytes dropped. */
  clear(): number {
    const bytes = this.queuedBytes;
    this.chunks = [];
    this.head = 0;
    this.queuedBytes = 0;
    return bytes;
  }
}

/** A stream between a client endpoint and a server endpoint, with one Pipe per direction. */
export class SimConnection {
  readonly client: SimStreamEndpoint;
  readonly server: SimStreamEndpoint;
  broken = false;
  /** When its path became blocked, or null while the path is open. */
  blockedSinceUs: number | null = null;

  constructor(readonly net: SimNetwork, readonly id: number, clientAddr: NetAddr,
    serverAddr: NetAddr) {
    this.client = new SimStreamEndpoint(this, clientAddr, serverAddr);
    this.server = new SimStreamEndpoint(this, serverAddr, clientAddr);
  }

  endpoints(): SimStreamEndpoint[] {
    return [this.client, this.server];
  }

  other(e: SimStreamEndpoint): SimStreamEndpoint {
    return e === this.client ? this.server : this.client;
  }

  /** Schedules the next delivery on the pipe leaving `from`, if any and not stalled. */
  schedule(from: SimStreamEndpoint): void {
    const pipe = from.out;
    const head = pipe.peek();
    if (head === undefined || pipe.event !== null || pipe.stalled || this.broken) return;
    const s = this.net.scheduler;
    pipe.event = s.atUs(Math.max(head.dueUs, s.nowUs), () => this.deliver(from), "stream chunk");
  }

  /** Appends bytes (or the FIN, data null) to the pipe leaving `from`. */
  enqueue(from: SimStreamEndpoint, data: Buffer | null): void {
    const pipe = from.out;
    const now = this.net.scheduler.nowUs;
    const dueUs = Math.max(pipe.lastDueUs, now + this.net.delayUs(from.local.addr,
      from.remote.addr));
    pipe.lastDueUs = dueUs;
    pipe.push({ data, dueUs });
    this.schedule(from);
  }

  /** Called after a heal: stalled pipes start again after a fresh delay. */
  resumeStalled(): void {
    for (const from of this.endpoints()) {
      const pipe = from.out;
      if (!pipe.stalled) continue;
      pipe.stalled = false;
      pipe.lastDueUs = this.net.scheduler.nowUs +
        this.net.delayUs(from.local.addr, from.remote.addr);
      const head = pipe.peek();
      if (head !== undefined) {
        pipe.event = this.net.scheduler.atUs(Math.max(head.dueUs, pipe.lastDueUs),
          () => this.deliver(from), "stream resume");
      }
    }
  }

  /** Breaks the connection now: drops what is in flight, each live side notices later. */
  breakNow(reason: string, noticeUs: () => number): void {
    this.broken = true;
    for (const e of this.endpoints()) {
      if (e.out.event !== null) this.net.scheduler.cancel(e.out.event);
      e.out.event = null;
      this.net.counters.streamBytesLost += e.out.clear();
    }
    for (const e of this.endpoints()) {
      if (e.dead || e.notified) continue;
      this.net.scheduler.atUs(this.net.scheduler.nowUs + noticeUs(),
        () => e.notifyClosed(reason), "stream reset notice");
    }
  }

  private deliver(from: SimStreamEndpoint): void {
    const pipe = from.out;
    pipe.event = null;
    if (this.broken || pipe.peek() === undefined) return;
    const net = this.net;
    if (net.isBlocked(from.local.addr, from.remote.addr)) {
      pipe.stalled = true; // resumeStalled() restarts it on heal
      net.counters.streamStalls++;
      return;
    }
    const f = net.faultsFor(from.local.addr, from.remote.addr);
    if (pipe.peek()!.data !== null && net.random.chance(f.streamCutProbability)) {
      net.cut(this);
      return;
    }
    let chunk = pipe.shift();
    const now = net.scheduler.nowUs;
    while (chunk.data !== null && net.random.chance(f.streamCoalesceProbability)) {
      const next = pipe.peek();
      if (next === undefined || next.data === null || next.dueUs > now) break;
      chunk = { data: Buffer.concat([chunk.data, pipe.shift().data!]), dueUs: now };
      net.counters.streamCoalesced++;
    }
    const to = this.other(from);
    if (chunk.data === null) to.peerClosed();
    else to.receive(chunk.data);
    this.schedule(from);
  }
}

/** One end of a simulated stream: what the core holds as its StreamConnection. */
export class SimStreamEndpoint implements StreamConnection {
  readonly out = new Pipe();
  /** The process owning this end crashed: it never calls back again. */
  dead = false;
  /** onClose has been decided (fired, or waiting for a handler). */
  notified = false;
  private isClosed = false;
  private dataFn: ((chunk: Buffer) => void) | null = null;
  private closeFn: ((reason: string) => void) | null = null;
  private closeReason: string | null = null;
  private closeFired = false;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private flushEvent: EventHandle | null = null;

  constructor(readonly conn: SimConnection, readonly local: NetAddr, readonly remote: NetAddr) {}

  get closed(): boolean {
    return this.isClosed || this.dead;
  }

  write(buf: Buffer): boolean {
    if (this.isClosed || this.dead) return false;
    const net = this.conn.net;
    if (this.conn.broken) {
      net.counters.streamBytesLost += buf.length; // the break is not noticed yet
      return true;
    }
    if (this.out.queuedBytes + buf.length > STREAM_MAX_QUEUED_BYTES) {
      net.counters.streamOverflows++;
      net.breakConnection(this.conn, `send queue over ${STREAM_MAX_QUEUED_BYTES} bytes`,
        () => 0);
      return false;
    }
    net.counters.streamWrites++;
    net.counters.streamBytesWritten += buf.length;
    for (const piece of this.split(Buffer.from(buf))) this.conn.enqueue(this, piece);
    return true;
  }

  onData(fn: (chunk: Buffer) => void): void {
    this.dataFn = fn;
    this.scheduleFlush();
  }

  onClose(fn: (reason: string) => void): void {
    this.closeFn = fn;
    if (this.closeReason !== null && !this.closeFired) this.scheduleCloseCallback();
  }

  close(): void {
    if (this.isClosed || this.dead) return;
    this.conn.net.counters.streamGracefulCloses++;
    this.markClosed("closed locally");
    if (!this.conn.broken) {
      this.conn.enqueue(this, null); // FIN after everything written before
      if (this.other().closed) this.conn.net.forget(this.conn);
    }
  }

  /** @internal Bytes arrived from the peer. */
  receive(data: Buffer): void {
    const c = this.conn.net.counters;
    if (this.isClosed || this.dead) {
      c.streamBytesDiscarded += data.length;
      return;
    }
    c.streamChunksDelivered++;
    c.streamBytesDelivered += data.length;
    if (this.dataFn !== null && this.pending.length === 0) {
      this.dataFn(data);
      return;
    }
    this.pending.push(data);
    this.pendingBytes += data.length;
    if (this.pendingBytes > STREAM_MAX_QUEUED_BYTES) {
      c.streamOverflows++;
      this.conn.net.breakConnection(this.conn,
        `receive buffer over ${STREAM_MAX_QUEUED_BYTES} bytes`, () => 0);
    }
  }

  /** @internal The peer's FIN arrived after all its data. */
  peerClosed(): void {
    if (this.isClosed || this.dead) {
      this.conn.net.forget(this.conn);
      return;
    }
    this.markClosed("closed by peer", true); // unread bytes stay readable, then onClose
    this.conn.net.counters.streamBytesLost += this.out.clear(); // nobody left to read it
    this.conn.net.forget(this.conn);
  }

  /** @internal The break of the connection is noticed by this side. */
  notifyClosed(reason: string): void {
    if (this.dead || this.isClosed) return;
    this.markClosed(reason);
  }

  private other(): SimStreamEndpoint {
    return this.conn.other(this);
  }

  /** Closes this end; unread bytes are dropped unless keepUnread (the peer's FIN). */
  private markClosed(reason: string, keepUnread = false): void {
    this.isClosed = true;
    this.notified = true;
    this.closeReason = reason;
    if (!keepUnread) {
      this.pending = [];
      this.pendingBytes = 0;
    }
    this.releasePort();
    this.scheduleCloseCallback();
  }

  /** Client ends hold an ephemeral port until they close. */
  private releasePort(): void {
    if (this === this.conn.client && !this.dead) {
      this.conn.net.host(this.local.addr).tcpPorts.delete(this.local.port);
    }
  }

  /** Runs onClose as its own event, once, and only after unread bytes were delivered. */
  private scheduleCloseCallback(): void {
    if (this.closeFn === null || this.closeFired || this.pending.length > 0) return;
    this.closeFired = true; // decided now; runs as its own event, never inside the caller
    const fn = this.closeFn;
    const reason = this.closeReason!;
    this.conn.net.scheduler.after(0, () => fn(reason), "stream onClose");
  }

  private scheduleFlush(): void {
    if (this.pending.length === 0 || this.flushEvent !== null) return;
    this.flushEvent = this.conn.net.scheduler.after(0, () => {
      this.flushEvent = null;
      // A local close() or a cut inside dataFn empties `pending`, which ends the loop.
      while (this.pending.length > 0 && this.dataFn !== null && !this.dead) {
        const data = this.pending.shift()!;
        this.pendingBytes -= data.length;
        this.dataFn(data);
      }
      if (this.isClosed) this.scheduleCloseCallback();
    }, "stream flush");
  }

  /** Cuts a write into pieces at random points (each split counted). */
  private split(buf: Buffer): Buffer[] {
    const net = this.conn.net;
    const p = net.faultsFor(this.local.addr, this.remote.addr).streamSplitProbability;
    if (buf.length < 2 || p <= 0) return [buf];
    const points: number[] = [];
    for (let i = 0; i < SIM_MAX_SPLITS_PER_WRITE && net.random.chance(p); i++) {
      points.push(1 + net.random.int(buf.length - 1));
    }
    if (points.length === 0) return [buf];
    points.sort((a, b) => a - b);
    const pieces: Buffer[] = [];
    let start = 0;
    for (const at of points) {
      if (at <= start) continue;
      pieces.push(buf.subarray(start, at));
      start = at;
    }
    pieces.push(buf.subarray(start));
    net.counters.streamSplits += pieces.length - 1;
    return pieces;
  }
}

function checkFaults(f: NetFaults): NetFaults {
  assert(Number.isFinite(f.delayMinMs) && f.delayMinMs >= 0 && f.delayMaxMs >= f.delayMinMs,
    `delay range [${f.delayMinMs}, ${f.delayMaxMs}] ms`);
  for (const [name, p] of [["datagramLossProbability", f.datagramLossProbability],
    ["datagramDuplicateProbability", f.datagramDuplicateProbability],
    ["streamSplitProbability", f.streamSplitProbability],
    ["streamCoalesceProbability", f.streamCoalesceProbability],
    ["streamCutProbability", f.streamCutProbability]] as const) {
    assert(p >= 0 && p <= 1, `${name} ${p} not in [0, 1]`);
  }
  assert(f.streamBreakAfterMs >= 0 && f.resetNoticeMaxMs >= 0, "stream timeouts must be >= 0");
  return f;
}

function linkKey(from: string, to: string): string {
  return `${from}>${to}`;
}

function formatAddr(a: NetAddr): string {
  return `${a.addr}:${a.port}`;
}

function isIPv4(s: string): boolean {
  const parts = s.split(".");
  return parts.length === 4 && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}

function isPort(p: number): boolean {
  return Number.isInteger(p) && p >= 0 && p <= MAX_PORT;
}

/**
 * A network errno: the code itself once src/util/errno.ts lists it, else the fallback the
 * real network uses too (src/env/real/net.ts NET_CODE_FALLBACK).
 */
function netCode(code: string, fallback: ErrnoCode): ErrnoCode {
  return code in Errno ? (code as ErrnoCode) : fallback;
}

function inUse(syscall: string, a: NetAddr): FsError {
  return new FsError(netCode("EADDRINUSE", "EBUSY"),
    `EADDRINUSE: address already in use ${formatAddr(a)}`, syscall);
}

/** The promise a crashed process waits on: it never settles. */
function never<T>(): Promise<T> {
  return new Promise<T>(() => undefined);
}
