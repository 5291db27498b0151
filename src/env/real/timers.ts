/*
 * Real timers: Env.timers over node's setTimeout/clearTimeout, for the mount daemon.
 *
 * realEnv() builds one RealTimers per process; the core arms every timeout it needs
 * (heartbeats, election timeouts, lock and commit deadlines) through it, never through the
 * globals, so the simulator can substitute virtual time (src/sim/scheduler.ts).
 *
 * Invariants and choices:
 *  - A callback runs at most once, never synchronously inside after(), and never after
 *    clear() returned. Handles are plain ids, so a stale handle cannot cancel a newer timer.
 *  - Timers keep a reference on the event loop (they are not unref'd): a daemon's heartbeat
 *    timer is exactly what must keep the process alive. The consequence is that an owner
 *    must clear its timers on shutdown (clearAll() does it wholesale) or the process lingers
 *    until they fire.
 *  - Delays longer than node's limit (2^31-1 ms, about 24.8 days) are chained rather than
 *    silently clamped to 1 ms as setTimeout would.
 *  - A callback that throws is a bug; it must not escape into node's event loop (which would
 *    kill the daemon), so it is logged with its stack at "error" level and swallowed.
 *  - The number of pending timers is bounded (REAL_TIMERS_MAX_PENDING): a leak shows up as an
 *    assertion rather than as slowly growing memory.
 */

import type { Logger, TimerHandle, Timers } from "../env.js";
import { assert } from "../../util/assert.js";

/** Bound on timers pending at once in one process. */
export const REAL_TIMERS_MAX_PENDING = 1 << 20;
/** Largest delay node's setTimeout honours; longer delays are chained. */
const NODE_MAX_TIMEOUT_MS = 2 ** 31 - 1;

export class RealTimers implements Timers {
  private nextId = 1;
  private readonly pending = new Map<number, NodeJS.Timeout>();
  private readonly logger: Logger;

  constructor(logger: Logger) {
    this.logger = logger;
  }

  after(delayMs: number, fn: () => void): TimerHandle {
    assert(Number.isFinite(delayMs) && delayMs >= 0, `timer delay ${delayMs} ms`);
    assert(this.pending.size < REAL_TIMERS_MAX_PENDING,
      `more than ${REAL_TIMERS_MAX_PENDING} pending timers`);
    const id = this.nextId++;
    this.arm(id, delayMs, fn);
    return { id };
  }

  clear(h: TimerHandle): void {
    const t = this.pending.get(h.id);
    if (t === undefined) return;
    clearTimeout(t);
    this.pending.delete(h.id);
  }

  /** Number of timers armed and not yet fired or cleared. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** Cancels every pending timer (shutdown). */
  clearAll(): void {
    for (const t of this.pending.values()) clearTimeout(t);
    this.pending.clear();
  }

  private arm(id: number, remainingMs: number, fn: () => void): void {
    const stepMs = Math.min(remainingMs, NODE_MAX_TIMEOUT_MS);
    const t = setTimeout(() => {
      if (!this.pending.has(id)) return; // cleared while node was already running it
      if (remainingMs > stepMs) {
        this.arm(id, remainingMs - stepMs, fn);
        return;
      }
      this.pending.delete(id);
      runGuarded(this.logger, "timer", fn);
    }, stepMs);
    this.pending.set(id, t);
  }
}

/**
 * Calls fn and returns true, or logs what it threw (a bug) and returns false: the guard every
 * callback from node's event loop into our code goes through (timers, sockets).
 */
export function runGuarded(logger: Logger, what: string, fn: () => void): boolean {
  try {
    fn();
    return true;
  } catch (e) {
    const detail = e instanceof Error ? (e.stack ?? e.message) : String(e);
    try {
      logger.log("error", `${what} callback threw (a bug): ${detail}`);
    } catch {
      // The logger itself failed; there is nowhere left to report to.
    }
    return false;
  }
}
