/*
 * The deterministic discrete-event scheduler at the heart of the simulator.
 *
 * A SimWorld (src/sim/env.ts) owns one Scheduler; simulated timers, the simulated network and
 * scenario drivers put events on it, and tests drive it with run(), runUntil(), runFor(),
 * step() and settle(). Nothing in a simulated run happens except as an event here or as a
 * promise continuation (microtask) that follows one.
 *
 * Time: virtual, monotonic, an integer number of MICROSECONDS (`nowUs`), exposed in
 * milliseconds (`nowMs()` = nowUs / 1000, so at most three decimals). Delays given in
 * milliseconds are rounded to the nearest microsecond. Integers make ordering exact: no
 * float accumulation can make two runs disagree about which of two events comes first.
 *
 * Queue: a binary min-heap of pending events ordered by (timeUs, seq), seq being a global
 * insertion counter, so events at the same instant run in the order they were scheduled.
 * Each entry knows its heap index, so cancel() removes it at once (O(log n)) and the heap
 * holds live events only; its size is bounded (maxPendingEvents, asserted).
 *
 * Async code: the core is written with Promises and await. The rule that keeps runs
 * deterministic is: after each event's callback returns, EVERY microtask it caused (promise
 * continuations, including chains of any depth and the ones they start) has run before the
 * next event is taken. drainMicrotasks() provides this without leaving the current
 * macrotask: it queues a microtask that queues a process.nextTick callback. Node runs
 * nextTick callbacks only once V8's microtask queue is completely empty (V8 drains it to
 * exhaustion, including microtasks queued while draining, before returning to Node's tick
 * processing), so when the tick fires no microtask is pending anywhere; it resolves the
 * promise the scheduler loop awaits. The queueMicrotask hop first matters: a tick queued
 * from plain synchronous code would run BEFORE pending microtasks; one queued from inside
 * a microtask runs after all of them. This works from any calling context (top level,
 * timers, I/O callbacks, other ticks), costs about a third of a microsecond, and never gives
 * node's event loop a turn, so no real I/O or timer can interleave with a simulated run.
 *
 * The determinism guarantee: given the same seed, the same code and the same Node/V8
 * version, a run executes the same events at the same virtual times in the same order, and
 * every callback and continuation in the same interleaving, bit for bit. It holds as long as
 * simulated code reaches the world only through its Env, SimDisks and this scheduler (lint
 * enforces the globals: no Date, Math.random, timers), does not await anything real (a real
 * fs/net promise would resume in a later macrotask, at an arbitrary virtual time), and does
 * not use process.nextTick, WeakRef or FinalizationRegistry (GC timing is not
 * deterministic). The digest (a 64-bit hash of every event's (time, seq) in execution
 * order) lets tests compare whole runs cheaply.
 *
 * Failures: a callback that throws, or a task started with spawn() that rejects, is a bug
 * in the simulated code or a checker's verdict; the scheduler records the first one and the
 * run call that is driving it rejects with it. A run is not re-entrant (asserted).
 */

import { assert } from "../util/assert.js";

/** Default bound on events pending at once: a leak of timers fails loudly. */
export const SCHED_MAX_PENDING_EVENTS = 1 << 20;
/** Default bound on events executed by one run call: a livelock fails instead of hanging. */
export const SCHED_MAX_EVENTS_PER_RUN = 50_000_000;
const US_PER_MS = 1000;

/** A scheduled event; cancel it with Scheduler.cancel(). */
export interface EventHandle {
  /** Unique per scheduler (the insertion sequence number). */
  readonly id: number;
  /** When it is (or was) due, in virtual microseconds. */
  readonly timeUs: number;
}

interface Entry extends EventHandle {
  readonly label: string;
  fn: (() => void) | null;
  /** Position in the heap, -1 once run or cancelled. */
  heapIndex: number;
}

export interface SchedulerOptions {
  maxPendingEvents?: number;
}

export interface RunOptions {
  /** Bound on events this call may execute (default SCHED_MAX_EVENTS_PER_RUN). */
  maxEvents?: number;
}

/** Why a run call returned. */
export type RunStop = "idle" | "time" | "predicate" | "max-events";

export interface RunResult {
  readonly stop: RunStop;
  /** Events executed by this call. */
  readonly events: number;
  readonly nowMs: number;
}

export interface SchedulerCounters {
  scheduled: number;
  executed: number;
  cancelled: number;
  /** Largest number of events pending at once. */
  maxPending: number;
  spawned: number;
}

export class Scheduler {
  readonly counters: SchedulerCounters = {
    scheduled: 0, executed: 0, cancelled: 0, maxPending: 0, spawned: 0,
  };
  readonly maxPendingEvents: number;
  private heap: Entry[] = [];
  private seq = 0;
  private timeUs = 0;
  private running = false;
  private failure: Error | null = null;
  private readonly hash = new Digest64();

  constructor(opts: SchedulerOptions = {}) {
    this.maxPendingEvents = opts.maxPendingEvents ?? SCHED_MAX_PENDING_EVENTS;
    assert(Number.isSafeInteger(this.maxPendingEvents) && this.maxPendingEvents > 0,
      `maxPendingEvents ${this.maxPendingEvents}`);
  }

  /** Virtual time in microseconds. */
  get nowUs(): number {
    return this.timeUs;
  }

  /** Virtual time in milliseconds (microsecond resolution). */
  nowMs(): number {
    return this.timeUs / US_PER_MS;
  }

  /** Number of events pending. */
  get pending(): number {
    return this.heap.length;
  }

  /** Time of the next pending event in ms, or null when idle. */
  nextEventMs(): number | null {
    const head = this.heap[0];
    return head === undefined ? null : head.timeUs / US_PER_MS;
  }

  /** The first failure recorded (callback threw, spawned task rejected), if any. */
  get failed(): Error | null {
    return this.failure;
  }

  /** A hex digest of every event executed so far: (time, seq) in execution order. */
  digest(): string {
    return this.hash.hex();
  }

  /** Schedules fn after delayMs (>= 0) of virtual time. */
  after(delayMs: number, fn: () => void, label = ""): EventHandle {
    return this.atUs(this.timeUs + msToUs(delayMs), fn, label);
  }

  /** Schedules fn at absolute virtual time atMs (not in the past). */
  at(atMs: number, fn: () => void, label = ""): EventHandle {
    return this.atUs(msToUs(atMs), fn, label);
  }

  /** Schedules fn at absolute virtual time timeUs (an integer, not in the past). */
  atUs(timeUs: number, fn: () => void, label = ""): EventHandle {
    assert(Number.isSafeInteger(timeUs) && timeUs >= this.timeUs,
      `event at ${timeUs} us is not an integer time at or after now (${this.timeUs} us)`);
    assert(this.heap.length < this.maxPendingEvents,
      `more than ${this.maxPendingEvents} pending events`);
    const e: Entry = { id: ++this.seq, timeUs, label, fn, heapIndex: this.heap.length };
    this.heap.push(e);
    this.siftUp(e.heapIndex);
    this.counters.scheduled++;
    if (this.heap.length > this.counters.maxPending) this.counters.maxPending = this.heap.length;
    return e;
  }

  /** Cancels a pending event; true if it was pending (false once run or cancelled). */
  cancel(h: EventHandle): boolean {
    const e = h as Entry;
    if (e.heapIndex < 0 || this.heap[e.heapIndex] !== e) return false;
    this.removeAt(e.heapIndex);
    e.fn = null;
    this.counters.cancelled++;
    return true;
  }

  /** True if the event is still pending. */
  isPending(h: EventHandle): boolean {
    const e = h as Entry;
    return e.heapIndex >= 0 && this.heap[e.heapIndex] === e;
  }

  /**
   * Starts an async task at the current virtual time (as an event, so its start is ordered
   * with everything else). If it rejects, the run fails with the rejection (unless
   * `onError` is given: then it decides, returning true to absorb the error).
   */
  spawn(name: string, fn: () => Promise<void>, onError?: (e: unknown) => boolean): void {
    this.counters.spawned++;
    this.after(0, () => {
      fn().catch((e: unknown) => {
        if (onError?.(e) === true) return;
        this.fail(new Error(`task ${name} failed: ${describe(e)}`, { cause: e }));
      });
    }, `spawn ${name}`);
  }

  /** Records a failure: the run in progress (or the next one) rejects with it. */
  fail(e: unknown): void {
    this.failure ??= e instanceof Error ? e : new Error(describe(e));
  }

  /** Runs exactly one event (if any) and drains the microtasks it caused. */
  async step(): Promise<boolean> {
    this.enter();
    try {
      await drainMicrotasks();
      this.throwIfFailed();
      if (this.heap.length === 0) return false;
      this.runNext();
      await drainMicrotasks();
      this.throwIfFailed();
      return true;
    } finally {
      this.running = false;
    }
  }

  /** Runs until no event is pending (or maxEvents). */
  run(opts: RunOptions = {}): Promise<RunResult> {
    return this.runLoop(Number.POSITIVE_INFINITY, null, opts);
  }

  /**
   * Runs until `stop`: an absolute virtual time in ms (every event due at or before it runs,
   * then the clock is set to it) or a predicate, checked before the first event and after
   * each one. Also stops when idle or after maxEvents.
   */
  runUntil(stop: number | (() => boolean), opts: RunOptions = {}): Promise<RunResult> {
    if (typeof stop === "number") return this.runLoop(msToUs(stop), null, opts);
    return this.runLoop(Number.POSITIVE_INFINITY, stop, opts);
  }

  /** Runs for durationMs of virtual time from now. */
  runFor(durationMs: number, opts: RunOptions = {}): Promise<RunResult> {
    return this.runLoop(this.timeUs + msToUs(durationMs), null, opts);
  }

  /**
   * Runs until `p` settles and returns its value (or throws its rejection). Throws if the
   * world goes idle or hits maxEvents first: nothing could ever settle it (a deadlock).
   */
  async settle<T>(p: Promise<T>, opts: RunOptions = {}): Promise<T> {
    let done = false;
    const watched = p.then(
      (v) => { done = true; return v; },
      (e: unknown) => { done = true; throw e; },
    );
    watched.catch(() => undefined); // observed below; avoid an unhandled-rejection report
    const r = await this.runUntil(() => done, opts);
    if (!done) {
      throw new Error(`settle: the promise is still pending at ${this.nowMs()} ms ` +
        `(run stopped: ${r.stop})`);
    }
    return watched;
  }

  private async runLoop(untilUs: number, pred: (() => boolean) | null, opts: RunOptions):
    Promise<RunResult> {
    const maxEvents = opts.maxEvents ?? SCHED_MAX_EVENTS_PER_RUN;
    this.enter();
    let events = 0;
    const result = (stop: RunStop): RunResult => ({ stop, events, nowMs: this.nowMs() });
    try {
      await drainMicrotasks(); // whatever the caller started before running settles first
      this.throwIfFailed();
      for (;;) {
        if (pred?.() === true) return result("predicate");
        const head = this.heap[0];
        if (head === undefined || head.timeUs > untilUs) {
          if (Number.isFinite(untilUs)) this.timeUs = Math.max(this.timeUs, untilUs);
          return result(head === undefined ? "idle" : "time");
        }
        if (events >= maxEvents) return result("max-events");
        this.runNext();
        events++;
        await drainMicrotasks();
        this.throwIfFailed();
      }
    } finally {
      this.running = false;
    }
  }

  private enter(): void {
    assert(!this.running, "the scheduler is already running (run calls do not nest)");
    this.running = true;
  }

  private throwIfFailed(): void {
    if (this.failure !== null) throw this.failure;
  }

  /** Pops the earliest event, advances the clock to it and calls it. */
  private runNext(): void {
    const e = this.heap[0]!;
    this.removeAt(0);
    assert(e.timeUs >= this.timeUs, "virtual time must not go back");
    this.timeUs = e.timeUs;
    this.counters.executed++;
    this.hash.mix(e.timeUs);
    this.hash.mix(e.id);
    const fn = e.fn!;
    e.fn = null;
    try {
      fn();
    } catch (err) {
      this.fail(err);
    }
  }

  private removeAt(i: number): void {
    const e = this.heap[i]!;
    const last = this.heap.pop()!;
    e.heapIndex = -1;
    if (last === e) return;
    this.heap[i] = last;
    last.heapIndex = i;
    this.siftDown(i);
    this.siftUp(last.heapIndex);
  }

  private siftUp(i: number): void {
    const heap = this.heap;
    const e = heap[i]!;
    while (i > 0) {
      const parentIndex = (i - 1) >> 1;
      const parent = heap[parentIndex]!;
      if (!before(e, parent)) break;
      heap[i] = parent;
      parent.heapIndex = i;
      i = parentIndex;
    }
    heap[i] = e;
    e.heapIndex = i;
  }

  private siftDown(i: number): void {
    const heap = this.heap;
    const n = heap.length;
    const e = heap[i]!;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const child = r < n && before(heap[r]!, heap[l]!) ? r : l;
      const c = heap[child]!;
      if (!before(c, e)) break;
      heap[i] = c;
      c.heapIndex = i;
      i = child;
    }
    heap[i] = e;
    e.heapIndex = i;
  }
}

/**
 * Resolves once every pending microtask (of any depth) has run; see the header. The one use
 * of process.nextTick in simulated code, and the reason simulated code must not use it.
 */
export function drainMicrotasks(): Promise<void> {
  return new Promise((resolve) => {
    queueMicrotask(() => process.nextTick(resolve));
  });
}

/** Converts a delay or time in ms to whole microseconds (nearest). */
export function msToUs(ms: number): number {
  assert(Number.isFinite(ms) && ms >= 0, `virtual time ${ms} ms must be finite and >= 0`);
  const us = Math.round(ms * US_PER_MS);
  assert(Number.isSafeInteger(us), `virtual time ${ms} ms out of range`);
  return us;
}

function before(a: Entry, b: Entry): boolean {
  return a.timeUs < b.timeUs || (a.timeUs === b.timeUs && a.id < b.id);
}

function describe(e: unknown): string {
  return e instanceof Error ? (e.stack ?? e.message) : String(e);
}

/**
 * A running 64-bit digest (two independent 32-bit multiply-xorshift lanes) of a sequence of
 * numbers and strings: equal digests mean, with overwhelming probability, equal sequences.
 */
export class Digest64 {
  private a = 0x811c9dc5;
  private b = 0x01000193;

  /** Folds in a safe integer (any sign) or float, exactly. */
  mix(x: number): void {
    const lo = Number.isSafeInteger(x) ? x >>> 0 : hashFloat(x);
    const hi = Number.isSafeInteger(x) ? Math.floor(x / 0x1_0000_0000) >>> 0 : 0x7ff;
    this.word(lo);
    this.word(hi);
  }

  /** Folds in a string (its UTF-16 code units and its length). */
  mixString(s: string): void {
    for (let i = 0; i < s.length; i++) this.word(s.charCodeAt(i));
    this.word(s.length);
  }

  hex(): string {
    return (this.a >>> 0).toString(16).padStart(8, "0") +
      (this.b >>> 0).toString(16).padStart(8, "0");
  }

  private word(w: number): void {
    this.a = Math.imul(this.a ^ w, 0x01000193);
    this.a ^= this.a >>> 15;
    this.b = Math.imul(this.b + w, 0x5bd1e995);
    this.b ^= this.b >>> 13;
    this.b = Math.imul(this.b, 0x85ebca6b);
  }
}

function hashFloat(x: number): number {
  const s = String(x);
  let h = 0x9e3779b9;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
