/*
 * Request readers: how requests get from /dev/fuse into the event loop.
 *
 * session.ts picks one when it starts serving (after mount(8) succeeded) and gives it a
 * sink; each read returns exactly one request, which the reader hands to sink.onRequest()
 * synchronously. Two implementations, measured in reference/fuse.md:
 *
 *  - "pipe" (default): the fd wrapped in a libuv pipe handle through the internal
 *    process.binding('pipe_wrap') (DEP0111), read by a net.Socket in `onread` mode, so reads
 *    happen on the main loop's epoll with no thread hop: about 1.2x the C libfuse cost.
 *    libuv puts the fd in O_NONBLOCK mode and owns it: destroying the socket closes it.
 *  - "threadpool" (fallback, when the internal binding is missing): one fs.read at a time on
 *    libuv's threadpool, about 2.3x. It occupies one threadpool thread while idle, never
 *    more (K blocked threads with K >= UV_THREADPOOL_SIZE would starve every other fs call).
 *    Its close() cannot interrupt the blocked read: close it only after unmount.
 *
 * Buffers: a read needs a buffer of at least max_write + one page. The session supplies
 * buffers through sink.nextBuffer() before every read, so a request whose bytes must outlive
 * the read callback (a large WRITE handled asynchronously) keeps its buffer while the next
 * read gets another one (ReadBuffers below, a bounded free list).
 */

import fs from "node:fs";
import net from "node:net";
import { assert } from "../util/assert.js";
import { FsError, fromNodeError } from "../util/errno.js";

export interface RequestSink {
  /** The buffer the next read fills. */
  nextBuffer(): Buffer;
  /** One request of n bytes is in buf[0, n). Called synchronously from the read callback. */
  onRequest(buf: Buffer, n: number): void;
  /**
   * Reading stopped for good: err is null after close(), an FsError otherwise (ENODEV once
   * the filesystem was unmounted or the connection aborted through fusectl; ABORT_ERROR,
   * which would make that ECONNABORTED, is not negotiated).
   */
  onEnd(err: FsError | null): void;
}

export type ReaderKind = "pipe" | "threadpool";

export interface RequestReader {
  readonly kind: ReaderKind;
  start(sink: RequestSink): void;
  /** Stops issuing reads until resume() (backpressure: too many requests in flight). */
  pause(): void;
  resume(): void;
  /** Stops reading and releases the fd (the pipe reader closes it). */
  close(): void;
  /** True when the reader closes the fd itself (the session must not close it again). */
  readonly ownsFd: boolean;
}

/** Builds the requested reader; "auto" is the pipe reader when available, else threadpool. */
export function createReader(fd: number, kind: ReaderKind | "auto"): RequestReader {
  if (kind !== "threadpool") {
    const binding = pipeBinding();
    if (binding !== null) return new PipeReader(fd, binding);
    if (kind === "pipe") throw new FsError("ENOSYS", "process.binding('pipe_wrap') missing");
  }
  return new ThreadpoolReader(fd);
}

interface PipeHandle { open(fd: number): number }
interface PipeBinding { Pipe: new (type: number) => PipeHandle; constants: { SOCKET: number } }

/** The internal pipe_wrap binding, or null when this node does not expose it. */
function pipeBinding(): PipeBinding | null {
  try {
    const proc = process as unknown as { binding?: (name: string) => unknown };
    if (typeof proc.binding !== "function") return null;
    const b = proc.binding("pipe_wrap") as Partial<PipeBinding> | null;
    if (b === null || typeof b.Pipe !== "function") return null;
    if (typeof b.constants?.SOCKET !== "number") return null;
    return b as PipeBinding;
  } catch {
    return null; // removed or forbidden (--no-deprecation-binding in a future node)
  }
}

class PipeReader implements RequestReader {
  readonly kind = "pipe";
  readonly ownsFd = true;
  private socket: net.Socket | null = null;
  private ended = false;

  constructor(private readonly fd: number, private readonly binding: PipeBinding) {}

  start(sink: RequestSink): void {
    assert(this.socket === null, "reader started twice");
    const handle = new this.binding.Pipe(this.binding.constants.SOCKET);
    const err = handle.open(this.fd);
    if (err !== 0) throw new FsError("EIO", `pipe_wrap open of /dev/fuse failed (${err})`);
    const opts: net.SocketConstructorOpts & { handle: PipeHandle; onread: net.OnReadOpts } = {
      handle, readable: true, writable: false,
      onread: {
        buffer: () => sink.nextBuffer(),
        callback: (n: number, buf: Uint8Array) => {
          sink.onRequest(buf as Buffer, n);
          return true;
        },
      },
    };
    const socket = new net.Socket(opts);
    this.socket = socket;
    const end = (e: FsError | null): void => {
      if (this.ended) return;
      this.ended = true;
      sink.onEnd(e);
    };
    socket.on("error", (e: unknown) => end(fromNodeError(e, "read", "/dev/fuse")));
    socket.on("end", () => end(new FsError("ENODEV", "end of /dev/fuse")));
    socket.on("close", () => end(null));
  }

  pause(): void {
    this.socket?.pause();
  }

  resume(): void {
    this.socket?.resume();
  }

  close(): void {
    this.socket?.destroy();
  }
}

class ThreadpoolReader implements RequestReader {
  readonly kind = "threadpool";
  readonly ownsFd = false;
  private sink: RequestSink | null = null;
  private reading = false;
  private paused = false;
  private closed = false;

  constructor(private readonly fd: number) {}

  start(sink: RequestSink): void {
    assert(this.sink === null, "reader started twice");
    this.sink = sink;
    this.readNext();
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    if (!this.reading) this.readNext();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sink?.onEnd(null);
  }

  private readNext(): void {
    const sink = this.sink;
    if (sink === null || this.closed || this.paused || this.reading) return;
    const buf = sink.nextBuffer();
    this.reading = true;
    fs.read(this.fd, buf, 0, buf.length, null, (err, n) => {
      this.reading = false;
      if (this.closed) return;
      if (err !== null) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "EINTR" || code === "EAGAIN") {
          this.readNext();
          return;
        }
        this.closed = true;
        sink.onEnd(fromNodeError(err, "read", "/dev/fuse"));
        return;
      }
      sink.onRequest(buf, n);
      this.readNext();
    });
  }
}

/**
 * Read buffers: one current buffer, reused by every read unless a handler retained it; then
 * the next read takes one from a bounded free list (or a new allocation). Released buffers
 * beyond the bound are left to the GC.
 */
export class ReadBuffers {
  readonly sizeBytes: number;
  private current: Buffer;
  private currentRetained = false;
  private readonly free: Buffer[] = [];
  private readonly maxFree: number;

  constructor(sizeBytes: number, maxFree: number) {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 8192, `read buffer ${sizeBytes}`);
    this.sizeBytes = sizeBytes;
    this.maxFree = maxFree;
    this.current = Buffer.allocUnsafe(sizeBytes);
  }

  /** The buffer for the next read. */
  next(): Buffer {
    if (this.currentRetained) {
      this.current = this.free.pop() ?? Buffer.allocUnsafe(this.sizeBytes);
      this.currentRetained = false;
    }
    return this.current;
  }

  /** Takes the buffer of the request being dispatched away from the reader. */
  retain(buf: Buffer): void {
    assert(buf === this.current && !this.currentRetained, "retain of a buffer not current");
    this.currentRetained = true;
  }

  release(buf: Buffer): void {
    if (buf.length === this.sizeBytes && this.free.length < this.maxFree) this.free.push(buf);
  }
}
