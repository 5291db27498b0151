/*
 * Reverse notifications (INVAL_INODE, INVAL_ENTRY, DELETE), written off the serving path.
 *
 * The session owns one NotifyQueue; the vfs layer calls FuseSession.notify*() when a cluster
 * lock is revoked and the kernel's caches must drop what the lock covered.
 *
 * Why a queue on the threadpool: a notify write can block inside the kernel. INVAL_INODE on a
 * file with dirty pages makes the kernel write them back (WRITE requests to this daemon)
 * before write() returns; done synchronously on the main thread, which is the thread that
 * must answer those WRITEs, it hung the daemon in D state (reference/fuse.md). So messages
 * go out with async fs.write on libuv's threadpool, at most maxConcurrent at a time (leaving
 * threads for other fs work), with at most maxPending waiting; beyond that send() rejects
 * with ENOBUFS instead of growing without bound.
 *
 * Results: ENOENT from the kernel means it had nothing cached for that inode or name, which is
 * what the caller wanted: resolved. After close() every send rejects with ENOTCONN.
 */

import { assert } from "../util/assert.js";
import { FsError, fromNodeError } from "../util/errno.js";

export const NOTIFY_MAX_PENDING = 65_536;
export const NOTIFY_MAX_CONCURRENT = 2;

interface Pending { msg: Buffer; resolve: () => void; reject: (e: FsError) => void }

/** Writes one whole message to /dev/fuse without blocking the caller (threadpool fs.write). */
export type NotifyWrite = (msg: Buffer, done: (err: NodeJS.ErrnoException | null) => void) =>
  void;

export interface NotifyCounters { sent: number; absent: number; failed: number; refused: number }

export class NotifyQueue {
  readonly counters: NotifyCounters = { sent: 0, absent: 0, failed: 0, refused: 0 };
  private readonly waiting: Pending[] = [];
  private running = 0;
  private closed = false;
  private drainWaiters: (() => void)[] = [];

  constructor(private readonly write: NotifyWrite,
    private readonly maxPending = NOTIFY_MAX_PENDING,
    private readonly maxConcurrent = NOTIFY_MAX_CONCURRENT) {
    assert(maxConcurrent >= 1 && maxPending >= 1, "notify queue bounds");
  }

  /** Queues one whole notification message; resolves once the kernel has processed it. */
  send(msg: Buffer): Promise<void> {
    if (this.closed) return Promise.reject(new FsError("ENOTCONN", "FUSE session closed"));
    if (this.waiting.length >= this.maxPending) {
      this.counters.refused++;
      return Promise.reject(new FsError("ENOBUFS",
        `more than ${this.maxPending} FUSE notifications pending`));
    }
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ msg, resolve, reject });
      this.pump();
    });
  }

  /** Number of notifications queued or being written. */
  get pending(): number {
    return this.waiting.length + this.running;
  }

  /** Refuses new messages, fails the queued ones and waits for those being written. */
  async close(): Promise<void> {
    this.closed = true;
    for (const p of this.waiting.splice(0)) {
      p.reject(new FsError("ENOTCONN", "FUSE session closed"));
    }
    while (this.running > 0) await new Promise<void>((r) => this.drainWaiters.push(r));
  }

  private pump(): void {
    while (this.running < this.maxConcurrent && this.waiting.length > 0 && !this.closed) {
      const p = this.waiting.shift()!;
      this.running++;
      try {
        this.write(p.msg, (err) => this.done(p, err));
      } catch (e) {
        // A writer that throws instead of calling back still completes this message.
        const err = e instanceof Error ? e : new Error(String(e));
        queueMicrotask(() => this.done(p, err as NodeJS.ErrnoException));
      }
    }
  }

  private done(p: Pending, err: NodeJS.ErrnoException | null): void {
    this.running--;
    if (err === null) {
      this.counters.sent++;
      p.resolve();
    } else if (err.code === "ENOENT") {
      this.counters.absent++;
      p.resolve();
    } else {
      this.counters.failed++;
      p.reject(fromNodeError(err, "fuse notify"));
    }
    if (this.running === 0) {
      for (const w of this.drainWaiters.splice(0)) w();
    }
    this.pump();
  }
}
