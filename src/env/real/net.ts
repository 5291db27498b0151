/*
 * The real Network: UDP datagrams over node:dgram and TCP streams over node:net.
 *
 * realEnv() builds one RealNetwork per process; the quorum agent binds its datagram socket
 * through it, the server listens and the clients connect. The simulated twin is
 * src/sim/net.ts: both implement the Network of src/env/env.ts with the same limits and the
 * same callback rules, so the core cannot tell them apart.
 *
 * Rules shared with the simulator:
 *  - Addresses are IPv4 literals. Port 0 binds an ephemeral port; `local` reports the port
 *    actually bound.
 *  - No callback ever runs synchronously inside the call that caused it, and the Promise
 *    methods report every failure as a rejection (an FsError), never as a synchronous throw.
 *  - write() and send() copy the caller's buffer, so it may be reused at once.
 *  - A connection's onClose fires exactly once: when the peer closes, the connection breaks,
 *    or promptly after a local close() (with reason "closed locally"). Nothing is delivered
 *    after it, and `closed` is true from the moment it fires (from close() itself locally).
 *  - A send queue beyond STREAM_MAX_QUEUED_BYTES breaks the connection: a peer that stops
 *    reading must not make a daemon grow without bound. Datagrams over DATAGRAM_MAX_BYTES
 *    are dropped (counted), like every other undeliverable datagram.
 *
 * Robustness: every socket has an 'error' listener from its creation (an EventEmitter
 * 'error' without one would throw into node's event loop), and every call into core code
 * goes through runGuarded(): a stream handler that throws gets its connection closed, a
 * datagram handler that throws loses that datagram only (the election must keep its
 * transport; the bug is logged with its stack).
 *
 * TCP options: TCP_NODELAY (messages are small and latency-bound) and SO_KEEPALIVE. Node can
 * only set keepalive's initial delay, so a dead peer is found by the kernel after minutes:
 * the core's own heartbeats must detect failures and close the connection.
 * close() sends FIN after the queued bytes (socket.end()) and destroys the socket if the
 * peer has not finished closing within CLOSE_LINGER_MS.
 *
 * Errors: node's error codes become FsErrors through fromNodeError. Codes that
 * src/util/errno.ts does not list yet are mapped to the nearest listed one, keeping the
 * original code in the message (NET_CODE_FALLBACK); a connect that does not complete within
 * its timeoutMs rejects with ETIMEDOUT.
 */

import dgram from "node:dgram";
import net from "node:net";
import type {
  DatagramSocket, Logger, NetAddr, Network, StreamConnection, StreamListener,
} from "../env.js";
import { Errno, FsError, fromNodeError, type ErrnoCode } from "../../util/errno.js";
import { runGuarded } from "./timers.js";

/** Largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header bytes). Same in src/sim. */
export const DATAGRAM_MAX_BYTES = 65_507;
/** Bound on bytes queued for sending on one connection. Same in src/sim. */
export const STREAM_MAX_QUEUED_BYTES = 64 << 20;
/** Bound on connections one listener keeps accepted at once. */
export const LISTENER_MAX_CONNECTIONS = 1024;
/** Idle time before the kernel starts keepalive probes. */
export const KEEPALIVE_INITIAL_DELAY_MS = 10_000;
/** How long a closed connection may take to finish its FIN exchange before it is destroyed. */
export const CLOSE_LINGER_MS = 2_000;
const MAX_PORT = 65_535;

/** Network error codes absent from Errno, and the listed code they are reported as. */
const NET_CODE_FALLBACK: Readonly<Record<string, ErrnoCode>> = {
  EADDRINUSE: "EBUSY", EADDRNOTAVAIL: "EINVAL", ECONNRESET: "ENOTCONN", EPIPE: "ENOTCONN",
  ECONNABORTED: "ENOTCONN", EHOSTUNREACH: "ETIMEDOUT", ENETUNREACH: "ETIMEDOUT",
  EHOSTDOWN: "ETIMEDOUT", ENETDOWN: "ETIMEDOUT", EMSGSIZE: "EINVAL",
};

export interface RealNetCounters {
  datagramsSent: number;
  datagramsReceived: number;
  /** Not sent: socket closed, oversized, or the kernel refused it. */
  datagramsDropped: number;
  /** Received with no handler set, or whose handler threw. */
  datagramsDiscarded: number;
  connectsStarted: number;
  connectsFailed: number;
  connectionsAccepted: number;
  /** Accepted connections closed at once because no onConnection handler was set. */
  connectionsRejected: number;
  connectionsBroken: number;
  handlerErrors: number;
}

export class RealNetwork implements Network {
  readonly counters: RealNetCounters = {
    datagramsSent: 0, datagramsReceived: 0, datagramsDropped: 0, datagramsDiscarded: 0,
    connectsStarted: 0, connectsFailed: 0, connectionsAccepted: 0, connectionsRejected: 0,
    connectionsBroken: 0, handlerErrors: 0,
  };
  private readonly logger: Logger;

  constructor(logger: Logger) {
    this.logger = logger;
  }

  bindDatagram(addr: NetAddr): Promise<DatagramSocket> {
    const bad = checkAddr(addr, "bind", true);
    if (bad) return Promise.reject(bad);
    return new Promise((resolve, reject) => {
      const sock = dgram.createSocket({ type: "udp4", reuseAddr: false });
      const onError = (e: unknown): void => {
        safeClose(() => sock.close());
        reject(netError(e, "bind", formatAddr(addr)));
      };
      sock.once("error", onError);
      try {
        sock.bind({ address: addr.addr, port: addr.port, exclusive: true }, () => {
          sock.off("error", onError);
          resolve(new RealDatagramSocket(sock, this.logger, this.counters));
        });
      } catch (e) {
        onError(e);
      }
    });
  }

  listen(addr: NetAddr): Promise<StreamListener> {
    const bad = checkAddr(addr, "listen", true);
    if (bad) return Promise.reject(bad);
    return new Promise((resolve, reject) => {
      const server = net.createServer({ allowHalfOpen: false });
      const onError = (e: unknown): void => {
        safeClose(() => server.close());
        reject(netError(e, "listen", formatAddr(addr)));
      };
      server.once("error", onError);
      try {
        server.listen({ host: addr.addr, port: addr.port, exclusive: true }, () => {
          server.off("error", onError);
          resolve(new RealStreamListener(server, this.logger, this.counters));
        });
      } catch (e) {
        onError(e);
      }
    });
  }

  connect(to: NetAddr, timeoutMs: number): Promise<StreamConnection> {
    const bad = checkAddr(to, "connect", false) ?? (Number.isFinite(timeoutMs) && timeoutMs > 0
      ? null : new FsError("EINVAL", `connect timeout ${timeoutMs} ms`, "connect"));
    if (bad) return Promise.reject(bad);
    this.counters.connectsStarted++;
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: to.addr, port: to.port, allowHalfOpen: false });
      let settled = false;
      const fail = (err: FsError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.counters.connectsFailed++;
        sock.destroy();
        reject(err);
      };
      const timer = setTimeout(() => fail(new FsError("ETIMEDOUT",
        `no connection within ${timeoutMs} ms`, "connect", formatAddr(to))), timeoutMs);
      sock.once("error", (e: unknown) => fail(netError(e, "connect", formatAddr(to))));
      sock.once("connect", () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        // The wrapper adds its own 'error' listener first, so there is never a moment
        // without one; the once-listener above is then harmless (settled).
        resolve(new RealStreamConnection(sock, this.logger, this.counters));
      });
    });
  }
}

class RealDatagramSocket implements DatagramSocket {
  readonly local: NetAddr;
  private handler: ((buf: Buffer, from: NetAddr) => void) | null = null;
  private closed = false;

  constructor(
    private readonly sock: dgram.Socket,
    private readonly logger: Logger,
    private readonly counters: RealNetCounters,
  ) {
    const a = sock.address();
    this.local = { addr: a.address, port: a.port };
    sock.on("error", (e: unknown) => {
      // After bind, errors are per-datagram (e.g. ICMP unreachable); the socket stays usable.
      this.logger.log("debug", `udp ${formatAddr(this.local)}: ${describe(e)}`);
    });
    sock.on("message", (msg: Buffer, rinfo: dgram.RemoteInfo) => this.receive(msg, rinfo));
  }

  send(buf: Buffer, to: NetAddr): void {
    if (this.closed || buf.length > DATAGRAM_MAX_BYTES || !validAddr(to, false)) {
      this.counters.datagramsDropped++;
      return;
    }
    try {
      // A copy: node may still hold the buffer after send() returns.
      this.sock.send(Buffer.from(buf), to.port, to.addr, (err) => {
        if (err) {
          this.counters.datagramsDropped++;
          this.logger.log("debug", `udp send to ${formatAddr(to)}: ${describe(err)}`);
        }
      });
      this.counters.datagramsSent++;
    } catch (e) {
      this.counters.datagramsDropped++;
      this.logger.log("debug", `udp send to ${formatAddr(to)}: ${describe(e)}`);
    }
  }

  onMessage(fn: (buf: Buffer, from: NetAddr) => void): void {
    this.handler = fn;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handler = null;
    safeClose(() => this.sock.close());
  }

  private receive(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const handler = this.handler;
    if (this.closed || handler === null) {
      this.counters.datagramsDiscarded++;
      return;
    }
    this.counters.datagramsReceived++;
    const from = { addr: rinfo.address, port: rinfo.port };
    if (!runGuarded(this.logger, `udp ${formatAddr(this.local)} message`,
      () => handler(msg, from))) {
      this.counters.handlerErrors++;
      this.counters.datagramsDiscarded++;
    }
  }
}

class RealStreamListener implements StreamListener {
  readonly local: NetAddr;
  private handler: ((c: StreamConnection) => void) | null = null;
  private closed = false;

  constructor(
    private readonly server: net.Server,
    private readonly logger: Logger,
    private readonly counters: RealNetCounters,
  ) {
    this.local = socketAddr(server.address());
    server.maxConnections = LISTENER_MAX_CONNECTIONS;
    server.on("error", (e: unknown) => {
      this.logger.log("warn", `tcp listener ${formatAddr(this.local)}: ${describe(e)}`);
    });
    server.on("connection", (sock: net.Socket) => this.accept(sock));
  }

  onConnection(fn: (c: StreamConnection) => void): void {
    this.handler = fn;
  }

  /** Stops accepting; connections already accepted stay open (their owners close them). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handler = null;
    safeClose(() => this.server.close());
  }

  private accept(sock: net.Socket): void {
    const handler = this.handler;
    if (this.closed || handler === null) {
      sock.on("error", () => undefined); // the reset below may report one
      sock.destroy();
      this.counters.connectionsRejected++;
      return;
    }
    const conn = new RealStreamConnection(sock, this.logger, this.counters);
    this.counters.connectionsAccepted++;
    if (!runGuarded(this.logger, `tcp ${formatAddr(this.local)} connection`,
      () => handler(conn))) {
      this.counters.handlerErrors++;
      conn.close();
    }
  }
}

class RealStreamConnection implements StreamConnection {
  readonly local: NetAddr;
  readonly remote: NetAddr;
  private dataFn: ((chunk: Buffer) => void) | null = null;
  private closeFn: ((reason: string) => void) | null = null;
  /** Set once: why the connection ended (its onClose argument). */
  private endReason: string | null = null;
  private closeFired = false;
  /** First error the socket reported: the reason given when it then closes. */
  private errorReason: string | null = null;

  constructor(
    private readonly sock: net.Socket,
    private readonly logger: Logger,
    private readonly counters: RealNetCounters,
  ) {
    sock.on("error", (e: unknown) => { this.errorReason ??= describe(e); });
    sock.on("close", () => this.ended(this.errorReason ?? "closed by peer"));
    this.local = { addr: sock.localAddress ?? "", port: sock.localPort ?? 0 };
    this.remote = { addr: sock.remoteAddress ?? "", port: sock.remotePort ?? 0 };
    sock.setNoDelay(true);
    sock.setKeepAlive(true, KEEPALIVE_INITIAL_DELAY_MS);
  }

  get closed(): boolean {
    return this.endReason !== null;
  }

  write(buf: Buffer): boolean {
    if (this.closed) return false;
    if (this.sock.writableLength + buf.length > STREAM_MAX_QUEUED_BYTES) {
      this.abort(`send queue over ${STREAM_MAX_QUEUED_BYTES} bytes`);
      return false;
    }
    this.sock.write(Buffer.from(buf)); // a copy: node keeps the buffer until it is sent
    return true;
  }

  onData(fn: (chunk: Buffer) => void): void {
    const first = this.dataFn === null;
    this.dataFn = fn;
    // Only now switch the socket to flowing mode: bytes that arrived earlier wait in node.
    if (first) this.sock.on("data", (chunk: Buffer) => this.deliver(chunk));
  }

  onClose(fn: (reason: string) => void): void {
    this.closeFn = fn;
    if (this.endReason !== null && !this.closeFired) setImmediate(() => this.fireClose());
  }

  close(): void {
    if (this.closed) return;
    this.endReason = "closed locally";
    this.sock.end(); // FIN after whatever is queued
    const linger = setTimeout(() => this.sock.destroy(), CLOSE_LINGER_MS);
    linger.unref(); // only a backstop: must not keep the process alive by itself
    this.sock.once("close", () => clearTimeout(linger));
    setImmediate(() => this.fireClose());
  }

  private deliver(chunk: Buffer): void {
    const fn = this.dataFn;
    if (this.closed || fn === null) return;
    if (!runGuarded(this.logger, `tcp ${formatAddr(this.local)} data`, () => fn(chunk))) {
      this.counters.handlerErrors++;
      this.abort("data handler threw");
    }
  }

  /** Breaks the connection at once (RST, queued bytes discarded). */
  private abort(reason: string): void {
    if (this.closed) return;
    this.counters.connectionsBroken++;
    this.endReason = reason;
    this.sock.destroy();
    setImmediate(() => this.fireClose());
  }

  /** The socket is gone (peer FIN, reset, or our own end/destroy finished). */
  private ended(reason: string): void {
    if (this.endReason === null) {
      this.endReason = reason;
      if (reason !== "closed by peer") this.counters.connectionsBroken++;
    }
    this.fireClose();
  }

  private fireClose(): void {
    const fn = this.closeFn;
    if (this.closeFired || fn === null || this.endReason === null) return;
    this.closeFired = true;
    const reason = this.endReason;
    if (!runGuarded(this.logger, `tcp ${formatAddr(this.local)} close`, () => fn(reason))) {
      this.counters.handlerErrors++;
    }
  }
}

/** "a.b.c.d:port", for messages. */
export function formatAddr(a: NetAddr): string {
  return `${a.addr}:${a.port}`;
}

/** Converts a node network error into an FsError (see NET_CODE_FALLBACK). */
export function netError(e: unknown, syscall: string, where: string): FsError {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === "string" && !(code in Errno)) {
    const fallback = NET_CODE_FALLBACK[code];
    if (fallback !== undefined) return new FsError(fallback, describe(e), syscall, where);
  }
  if (typeof code === "string" && code.startsWith("ERR_")) {
    return new FsError("EINVAL", describe(e), syscall, where); // node's argument checks
  }
  return fromNodeError(e, syscall, where);
}

function validAddr(a: NetAddr, allowPortZero: boolean): boolean {
  return net.isIPv4(a.addr) && Number.isInteger(a.port) && a.port <= MAX_PORT &&
    a.port >= (allowPortZero ? 0 : 1);
}

/** An EINVAL FsError for a malformed address (returned as a rejection, never thrown). */
function checkAddr(a: NetAddr, syscall: string, allowPortZero: boolean): FsError | null {
  return validAddr(a, allowPortZero) ? null
    : new FsError("EINVAL", `bad IPv4 address or port ${formatAddr(a)}`, syscall);
}

function socketAddr(a: string | net.AddressInfo | null): NetAddr {
  if (a === null || typeof a === "string") return { addr: String(a), port: 0 };
  return { addr: a.address, port: a.port };
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Runs a close that may throw because the handle is already closed. */
function safeClose(fn: () => void): void {
  try {
    fn();
  } catch {
    // Already closed or never opened: closing is idempotent for our callers.
  }
}
