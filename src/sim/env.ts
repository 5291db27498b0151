/*
 * The simulated world: one scheduler, one network, and an Env per simulated node.
 *
 * Simulation tests and replayable scenarios (src/sim/scenarios.ts) build a SimWorld from a
 * seed, add nodes, start each node's code with the node's `env` (exactly the Env interface
 * the real daemon gets from realEnv()), inject faults and drive virtual time:
 *
 *   const world = new SimWorld({ seed: 42, faults: { datagramLossProbability: 0.1 } });
 *   const a = world.addNode("a");                 // host 10.0.0.1
 *   a.spawn("main", async () => { await startMount(a.env, a.device(metaDisk)); });
 *   await world.runFor(10_000);                    // ten virtual seconds
 *   world.crash("a"); const a2 = world.restart("a");
 *
 * What a node's Env is made of:
 *  - clock: monotonicMs() is the world's virtual time (shared by all nodes: only differences
 *    mean anything); wallTime() is a fixed epoch (SIM_WALL_EPOCH_SEC) plus virtual time plus
 *    the node's clockSkewMs, which tests may change at any moment (a clock step).
 *  - timers: scheduler events owned by the node, cancelled all at once when it crashes.
 *  - random: the node's own SimRandom, forked from the world's root stream when the node
 *    (or its restarted incarnation) is created, so one node's draws never shift another's.
 *  - logger: records "<virtual time> <node> <level> <msg>" into the world's bounded trace
 *    ring (and, optionally, echoes it); the trace digest covers every entry ever recorded.
 *  - net: the node's NodeNetwork on the shared SimNetwork.
 *
 * Crash and restart: crash() is a kill -9 of the node's process. Its timers never fire, its
 * sockets vanish (peers see resets), the promises of its pending network calls and of I/O
 * through node.device() never settle, its log lines are dropped, and failures of its tasks
 * are ignored: code that was running stops having effects, as a killed process would
 * (JavaScript cannot be stopped mid-flight, so the ties to the world are cut instead).
 * restart() creates a new SimNode (a fresh incarnation) at the same address.
 *
 * Determinism: every random choice of the world comes from SimRandom streams forked from
 * the seed in a fixed order (network first, then nodes in creation order), every action is
 * an event of the one scheduler (see src/sim/scheduler.ts for the exact guarantee).
 */

import type {
  BlockDevice, Clock, Env, LogLevel, Logger, TimerHandle, Timers,
} from "../env/env.js";
import { assert } from "../util/assert.js";
import { NodeNetwork, SimNetwork, type NetFaults } from "./net.js";
import { SimRandom } from "./random.js";
import {
  Digest64, Scheduler, type EventHandle, type RunOptions, type RunResult,
} from "./scheduler.js";

/** Trace entries kept by default (older ones are dropped; the digest still covers them). */
export const TRACE_RING_DEFAULT_ENTRIES = 10_000;
export const TRACE_RING_MAX_ENTRIES = 1_000_000;
/** Nodes per world: addresses are 10.0.0.1 ... 10.0.0.254. */
export const SIM_MAX_NODES = 254;
/** Timers pending at once per node. */
export const SIM_MAX_TIMERS_PER_NODE = 1 << 16;
/** Virtual wall-clock time at virtual time zero (2023-11-14T22:13:20Z). */
export const SIM_WALL_EPOCH_SEC = 1_700_000_000;
const US_PER_SEC = 1_000_000;
const LEVEL_RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export interface TraceEntry {
  readonly timeUs: number;
  /** Node name, or "world" / "net" for the simulator's own entries. */
  readonly node: string;
  readonly level: LogLevel;
  readonly msg: string;
}

/** A bounded ring of trace entries plus a digest of every entry ever recorded. */
export class TraceRing {
  readonly capacity: number;
  private ring: TraceEntry[] = [];
  private next = 0;
  private count = 0;
  private readonly hash = new Digest64();

  constructor(capacity = TRACE_RING_DEFAULT_ENTRIES) {
    assert(Number.isSafeInteger(capacity) && capacity > 0 && capacity <= TRACE_RING_MAX_ENTRIES,
      `trace capacity ${capacity}`);
    this.capacity = capacity;
  }

  record(e: TraceEntry): void {
    this.hash.mix(e.timeUs);
    this.hash.mixString(e.node);
    this.hash.mixString(e.level);
    this.hash.mixString(e.msg);
    this.count++;
    if (this.ring.length < this.capacity) {
      this.ring.push(e);
      return;
    }
    this.ring[this.next] = e;
    this.next = (this.next + 1) % this.capacity;
  }

  /** Entries still held, oldest first. */
  entries(): TraceEntry[] {
    return [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)];
  }

  /** Entries recorded since the start, including the ones the ring dropped. */
  get total(): number {
    return this.count;
  }

  digest(): string {
    return this.hash.hex();
  }

  /** "   12.345678s node level msg" */
  static format(e: TraceEntry): string {
    const sec = Math.floor(e.timeUs / US_PER_SEC);
    const frac = String(e.timeUs % US_PER_SEC).padStart(6, "0");
    return `${String(sec).padStart(6)}.${frac}s ${e.node} ${e.level} ${e.msg}`;
  }
}

export interface SimWorldOptions {
  seed: number | bigint;
  faults?: Partial<NetFaults>;
  traceEntries?: number;
  /** Receives each trace line as it is recorded (for a live view); default none. */
  echo?: (line: string) => void;
  /** Least severe level echoed (default "debug": everything). */
  echoLevel?: LogLevel;
  maxPendingEvents?: number;
}

export interface SimNodeOptions {
  /** Host address; default 10.0.0.N for the N-th node. */
  addr?: string;
  clockSkewMs?: number;
}

export class SimWorld {
  readonly seed: bigint;
  readonly scheduler: Scheduler;
  /** The root stream: the network and each node fork from it; drivers may draw from it. */
  readonly random: SimRandom;
  readonly net: SimNetwork;
  readonly trace: TraceRing;
  private readonly current = new Map<string, SimNode>();
  private readonly echo: ((line: string) => void) | null;
  private readonly echoRank: number;

  constructor(opts: SimWorldOptions) {
    this.random = new SimRandom(opts.seed);
    this.seed = this.random.seed;
    this.scheduler = new Scheduler({ maxPendingEvents: opts.maxPendingEvents });
    this.trace = new TraceRing(opts.traceEntries);
    this.echo = opts.echo ?? null;
    this.echoRank = LEVEL_RANK[opts.echoLevel ?? "debug"];
    this.net = new SimNetwork(this.scheduler, this.random.fork(), {
      faults: opts.faults, trace: (msg) => this.record("net", "info", msg),
    });
  }

  /** Adds a node (a host with its first process). */
  addNode(name: string, opts: SimNodeOptions = {}): SimNode {
    assert(/^[A-Za-z0-9_.-]+$/.test(name) && name !== "world" && name !== "net",
      `node name ${JSON.stringify(name)}`);
    assert(!this.current.has(name), `node ${name} already exists`);
    assert(this.current.size < SIM_MAX_NODES, `more than ${SIM_MAX_NODES} nodes`);
    const addr = opts.addr ?? `10.0.0.${this.current.size + 1}`;
    const node = new SimNode(this, name, this.net.addHost(addr), opts.clockSkewMs ?? 0);
    this.current.set(name, node);
    this.record("world", "info", `add node ${name} at ${addr}`);
    return node;
  }

  /** The current incarnation of a node. */
  node(name: string): SimNode {
    const n = this.current.get(name);
    assert(n !== undefined, `no node ${name}`);
    return n;
  }

  /** Current incarnations, in creation order. */
  nodes(): SimNode[] {
    return [...this.current.values()];
  }

  /** kill -9 of a node's process (see the header). */
  crash(name: string): void {
    this.node(name).crash();
  }

  /** Starts a new process on a crashed node's host; returns its SimNode. */
  restart(name: string, opts: { clockSkewMs?: number } = {}): SimNode {
    const old = this.node(name);
    assert(!old.alive, `node ${name} is running; crash it first`);
    const node = new SimNode(this, name, this.net.currentProcess(old.addr),
      opts.clockSkewMs ?? old.clockSkewMs);
    this.current.set(name, node);
    this.record("world", "info", `restart node ${name} (incarnation ${node.incarnation})`);
    return node;
  }

  partition(a: string, b: string): void {
    this.net.partition(this.node(a).addr, this.node(b).addr);
  }

  block(from: string, to: string): void {
    this.net.block(this.node(from).addr, this.node(to).addr);
  }

  unblock(from: string, to: string): void {
    this.net.unblock(this.node(from).addr, this.node(to).addr);
  }

  isolate(name: string): void {
    this.net.isolate(this.node(name).addr);
  }

  heal(): void {
    this.net.heal();
  }

  /** Records a line of the scenario driver's own into the trace. */
  log(msg: string, level: LogLevel = "info"): void {
    this.record("world", level, msg);
  }

  /** Starts a driver task (not owned by any node); a rejection fails the run. */
  spawn(name: string, fn: () => Promise<void>): void {
    this.scheduler.spawn(name, fn);
  }

  nowMs(): number {
    return this.scheduler.nowMs();
  }

  run(opts?: RunOptions): Promise<RunResult> {
    return this.scheduler.run(opts);
  }

  runUntil(stop: number | (() => boolean), opts?: RunOptions): Promise<RunResult> {
    return this.scheduler.runUntil(stop, opts);
  }

  runFor(durationMs: number, opts?: RunOptions): Promise<RunResult> {
    return this.scheduler.runFor(durationMs, opts);
  }

  settle<T>(p: Promise<T>, opts?: RunOptions): Promise<T> {
    return this.scheduler.settle(p, opts);
  }

  /** Digest of the whole run so far: the event sequence and every trace entry. */
  digest(): string {
    return `${this.scheduler.digest()}${this.trace.digest()}`;
  }

  /** @internal */
  record(node: string, level: LogLevel, msg: string): void {
    const e: TraceEntry = { timeUs: this.scheduler.nowUs, node, level, msg };
    this.trace.record(e);
    if (this.echo !== null && LEVEL_RANK[level] >= this.echoRank) this.echo(TraceRing.format(e));
  }
}

/** One process on one simulated host, and the Env its code runs with. */
export class SimNode {
  readonly env: Env;
  readonly random: SimRandom;
  /** Added to the node's wall clock (not its monotonic clock); may change at any time. */
  clockSkewMs: number;
  private readonly timers: NodeTimers;

  constructor(
    readonly world: SimWorld,
    readonly name: string,
    readonly network: NodeNetwork,
    clockSkewMs: number,
  ) {
    this.clockSkewMs = clockSkewMs;
    this.random = world.random.fork();
    this.timers = new NodeTimers(this);
    const clock: Clock = {
      monotonicMs: () => world.scheduler.nowMs(),
      wallTime: () => this.wallTime(),
    };
    const logger: Logger = {
      log: (level, msg) => { if (this.alive) world.record(name, level, msg); },
    };
    this.env = { clock, timers: this.timers, random: this.random, logger, net: network };
  }

  get addr(): string {
    return this.network.addr;
  }

  /** 1 for the first process on this host, +1 per restart. */
  get incarnation(): number {
    return this.network.incarnation;
  }

  /** False once this process crashed (a restart is a different SimNode). */
  get alive(): boolean {
    return this.network.alive;
  }

  /** Virtual ms until which the process is paused (SIGSTOP): 0 when running. */
  pausedUntilMs = 0;

  get paused(): boolean {
    return this.world.nowMs() < this.pausedUntilMs;
  }

  /**
   * Stops the process for `ms` (SIGSTOP, a long GC or VM pause, then SIGCONT): its timers and
   * the completions of its device I/O are held until then, and the host is isolated from the
   * network meanwhile (its peers hear nothing; what they send is lost, as with a full socket
   * buffer). When the pause ends the isolation is lifted (and with it any other block that
   * involved this host).
   */
  pause(ms: number): void {
    assert(Number.isFinite(ms) && ms > 0, `pause ${ms} ms`);
    if (!this.alive) return;
    const until = Math.max(this.pausedUntilMs, this.world.nowMs() + ms);
    this.pausedUntilMs = until;
    this.world.record("world", "warn", `pause node ${this.name} for ${ms} ms`);
    this.world.net.isolate(this.addr);
    this.world.scheduler.after(until - this.world.nowMs(), () => {
      if (!this.alive || this.pausedUntilMs !== until) return;
      this.pausedUntilMs = 0;
      this.world.net.unisolate(this.addr);
      this.world.record("world", "warn", `resume node ${this.name}`);
    }, `resume ${this.name}`);
  }

  /** Resolves once the process is not paused. */
  async whenRunning(): Promise<void> {
    while (this.alive && this.paused) {
      await new Promise<void>((r) => {
        this.world.scheduler.after(this.pausedUntilMs - this.world.nowMs(), r, `paused ${this.name}`);
      });
    }
  }

  /** Timers of this node pending now. */
  get pendingTimers(): number {
    return this.timers.pending;
  }

  /** kill -9: see SimWorld's header. Idempotent. */
  crash(): void {
    if (!this.alive) return;
    this.world.record("world", "warn", `crash node ${this.name}`);
    this.timers.cancelAll();
    this.world.net.crashHost(this.addr);
  }

  /** Starts a task of this node; its failure fails the run, unless the node crashed. */
  spawn(name: string, fn: () => Promise<void>): void {
    this.world.scheduler.spawn(`${this.name}/${name}`, async () => {
      if (this.alive) await fn();
    }, () => !this.alive);
  }

  /** A view of a (shared) device whose I/O stops having effects when this node crashes. */
  device(dev: BlockDevice): BlockDevice {
    return new NodeDevice(this, dev);
  }

  private wallTime(): { sec: bigint; nsec: number } {
    const us = SIM_WALL_EPOCH_SEC * US_PER_SEC + Math.round(this.clockSkewMs * 1000) +
      this.world.scheduler.nowUs;
    assert(Number.isSafeInteger(us) && us >= 0, `wall time ${us} us`);
    const sec = Math.floor(us / US_PER_SEC);
    return { sec: BigInt(sec), nsec: (us - sec * US_PER_SEC) * 1000 };
  }
}

class NodeTimers implements Timers {
  private readonly live = new Map<number, EventHandle>();

  constructor(private readonly node: SimNode) {}

  get pending(): number {
    return this.live.size;
  }

  after(delayMs: number, fn: () => void): TimerHandle {
    assert(Number.isFinite(delayMs) && delayMs >= 0, `timer delay ${delayMs} ms`);
    if (!this.node.alive) return { id: 0 }; // a dead process's timer never fires
    assert(this.live.size < SIM_MAX_TIMERS_PER_NODE,
      `node ${this.node.name}: more than ${SIM_MAX_TIMERS_PER_NODE} pending timers`);
    const id = this.schedule(0, delayMs, fn);
    return { id };
  }

  /** Schedules fn under a stable id; a paused node's timers fire once it resumes. */
  private schedule(id: number, delayMs: number, fn: () => void): number {
    const h = this.node.world.scheduler.after(delayMs, () => {
      if (!this.node.alive) {
        this.live.delete(key);
        return;
      }
      if (this.node.paused) {
        this.schedule(key, this.node.pausedUntilMs - this.node.world.nowMs(), fn);
        return;
      }
      this.live.delete(key);
      fn();
    }, `timer ${this.node.name}`);
    const key = id === 0 ? h.id : id;
    this.live.set(key, h);
    return key;
  }

  clear(h: TimerHandle): void {
    const e = this.live.get(h.id);
    if (e === undefined) return;
    this.node.world.scheduler.cancel(e);
    this.live.delete(h.id);
  }

  cancelAll(): void {
    for (const e of this.live.values()) this.node.world.scheduler.cancel(e);
    this.live.clear();
  }
}

/** A device as seen by one process: after the process dies its I/O never completes. */
class NodeDevice implements BlockDevice {
  constructor(private readonly node: SimNode, private readonly inner: BlockDevice) {}

  get name(): string { return this.inner.name; }
  get sizeBytes(): number { return this.inner.sizeBytes; }
  get alignment(): number { return this.inner.alignment; }

  read(buf: Buffer, offset: number): Promise<void> {
    return this.guard(() => this.inner.read(buf, offset));
  }

  write(buf: Buffer, offset: number): Promise<void> {
    return this.guard(() => this.inner.write(buf, offset));
  }

  flush(): Promise<void> {
    return this.guard(() => this.inner.flush());
  }

  allocBuffer(bytes: number): Buffer {
    return this.inner.allocBuffer(bytes);
  }

  close(): Promise<void> {
    return this.guard(() => this.inner.close());
  }

  private async guard(io: () => Promise<void>): Promise<void> {
    if (!this.node.alive) return never();
    await this.node.whenRunning();
    // killed while stopped before issuing it: the I/O was never issued (whenRunning returns
    // on death too; a write let through here would land after the node was fenced)
    if (!this.node.alive) return never();
    await io();
    await this.node.whenRunning(); // a paused process sees the completion when it resumes
    if (!this.node.alive) return never(); // died while it was in flight: nobody hears back
  }
}

function never(): Promise<void> {
  return new Promise<void>(() => undefined);
}
