/*
 * The Env: everything the core may know about the world outside it.
 *
 * Core code (src/core, src/util, src/sim) never touches the operating system, the wall clock
 * or a random source directly; it is handed an Env. The real Env (src/env/real) wraps node:fs,
 * node:dgram and node:net; the simulated Env (src/sim) is a deterministic discrete-event world
 * in which one seed replays a whole cluster run. This file only declares the interfaces so
 * that both sides depend on it and not on each other.
 */

/** A block device: a regular file, a loop device or a block device, addressed in bytes. */
export interface BlockDevice {
  /** Human readable name (the path for real devices). */
  readonly name: string;
  /** Usable size in bytes, as found when the device was opened. */
  readonly sizeBytes: number;
  /**
   * Alignment (bytes) required of offsets, lengths and buffers; 1 for buffered devices,
   * 512 or 4096 with O_DIRECT. Callers allocate buffers with allocBuffer() to honour it.
   */
  readonly alignment: number;
  /** Fills buf entirely from byte offset `offset`; a short read is an EIO FsError. */
  read(buf: Buffer, offset: number): Promise<void>;
  /** Writes buf entirely at byte offset `offset`; not durable until flush() resolves. */
  write(buf: Buffer, offset: number): Promise<void>;
  /** Makes every write that has resolved so far durable (fdatasync). */
  flush(): Promise<void>;
  /** Returns a zeroed buffer of `bytes` bytes suitable for this device's I/O alignment. */
  allocBuffer(bytes: number): Buffer;
  /** Gives a buffer from allocBuffer() back for reuse (optional: others are left to GC). */
  releaseBuffer?(buf: Buffer): void;
  close(): Promise<void>;
}

export interface Clock {
  /** Monotonic milliseconds (virtual in the simulator). */
  monotonicMs(): number;
  /** Wall-clock time as seconds and nanoseconds since the epoch (virtual in the simulator). */
  wallTime(): { sec: bigint; nsec: number };
}

export interface Random {
  /** A uniformly random unsigned 32-bit integer. */
  u32(): number;
  /** Fills buf with random bytes. */
  fill(buf: Buffer): void;
}

export type LogLevel = "debug" | "info" | "warn" | "error";
export interface Logger {
  log(level: LogLevel, msg: string): void;
}

/** A pending timer; cancel it with Timers.clear(). */
export interface TimerHandle {
  readonly id: number;
}

export interface Timers {
  /** Calls fn once after delayMs milliseconds of (virtual, in the simulator) monotonic time. */
  after(delayMs: number, fn: () => void): TimerHandle;
  /** Cancels a pending timer; clearing a fired or cleared timer does nothing. */
  clear(h: TimerHandle): void;
}

/** An IPv4 address and port (the quorum slot addresses of the super block). */
export interface NetAddr {
  readonly addr: string;
  readonly port: number;
}

/** Unreliable datagrams (UDP): the quorum election's transport. */
export interface DatagramSocket {
  readonly local: NetAddr;
  /** Sends one datagram; it may be lost, duplicated, delayed or reordered. Never throws. */
  send(buf: Buffer, to: NetAddr): void;
  /** Sets the receiver (one per socket); datagrams arriving before it is set are dropped. */
  onMessage(fn: (buf: Buffer, from: NetAddr) => void): void;
  close(): void;
}

/**
 * A byte stream (TCP) between a client and the server. Bytes arrive in order and unaltered,
 * or the connection breaks: then onClose fires once and nothing more is delivered (a break
 * may cut a message in the middle).
 */
export interface StreamConnection {
  readonly local: NetAddr;
  readonly remote: NetAddr;
  /** Queues bytes for sending; false (and nothing queued) once the connection is closed. */
  write(buf: Buffer): boolean;
  onData(fn: (chunk: Buffer) => void): void;
  /** Fires once when the connection breaks or either side closes it. */
  onClose(fn: (reason: string) => void): void;
  close(): void;
  readonly closed: boolean;
}

export interface StreamListener {
  readonly local: NetAddr;
  onConnection(fn: (c: StreamConnection) => void): void;
  close(): void;
}

export interface Network {
  /** Binds a datagram socket at addr (EADDRINUSE-like FsError if taken). */
  bindDatagram(addr: NetAddr): Promise<DatagramSocket>;
  listen(addr: NetAddr): Promise<StreamListener>;
  /** Connects to a listener; rejects with an FsError (ECONNREFUSED, ETIMEDOUT) on failure. */
  connect(to: NetAddr, timeoutMs: number): Promise<StreamConnection>;
}

export interface Env {
  readonly clock: Clock;
  readonly timers: Timers;
  readonly random: Random;
  readonly logger: Logger;
  readonly net: Network;
}
