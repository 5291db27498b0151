/*
 * Whole clusters in the simulator: real mounts (src/core/mount.ts: quorum agent, server,
 * client, locks, transactions, forest reads, log merging) on simulated nodes sharing one
 * metadata device, running a register and list-append workload under locks while faults
 * strike, checked throughout and at the end.
 *
 * Topology: `mounts` nodes n0.. at 10.0.0.1..; the first `slots` are quorum members (mkfs
 * configures exactly those slots), the rest are clients only. Every mount is a new rid.
 *
 * Workload (per mount, `workers` tasks): on a few list keys (spread over inode groups, two
 * per group so one lock covers several keys) an append reads the list under a WRITE lock
 * and writes it back with a new unique element; on register keys a write stores a new
 * unique value under WRITE and a read reads under READ; lists are also read under READ; a
 * sync commits the mount's transaction and acknowledges everything that mount wrote before
 * it. Within a mount a per-key mutex plays the kernel's inode mutex.
 *
 * Faults during the chaos phase: crash and later restart of any node (the leader too),
 * pauses longer than the heartbeat timeout, symmetric partitions and isolation, clock steps,
 * transient read errors of the metadata device, whole-cluster power loss (every node dies
 * and the devices keep a random subset of their unflushed writes), forced log merges, and
 * (from the world's NetFaults) datagram loss/duplication, delays and connection cuts.
 *
 * Checkers (a violation fails the run at once, through the scheduler):
 *  - quorum: one leader per term, terms never go back, a server starts only after earlier
 *    ones stopped or were fenced (QuorumSimChecker on every quorum block write);
 *  - never two servers committing: a super block written by a server whose term is below
 *    the greatest term of any server started;
 *  - no conflicting lock grants among live mounts (every mode change at every mount);
 *  - lists: every read list is a prefix of the final list, except that a crashed mount may
 *    have seen its own trailing unacknowledged appends, which were lost; every acknowledged
 *    append is in the final list; no element twice; the final list is the same from every
 *    mount, before and after a forced merge (newest version wins through merges);
 *  - registers: a read returns a value at least as new as every write acknowledged before it
 *    began and as every value a read that ended before it began returned (other mounts'
 *    values are durable: a mount only sees another's write after that one committed), never
 *    another mount's lost write; the final value is at least as new as every acknowledged
 *    write;
 *  - liveness: after the faults heal, every mount mounts and completes a round of operations
 *    within LIVENESS_BOUND_MS;
 *  - fsck of the metadata device after every mount unmounted: every block referenced once
 *    or free once, all checksums and structures valid.
 */
import type { BlockDevice, Env } from "../env/env.js";
import { assert } from "../util/assert.js";
import { isFsError } from "../util/errno.js";
import { fsckVolume } from "../core/fsck.js";
import type { QuorumConfig } from "../core/format.js";
import { META_DEV_START_BLKNO, SUPER_OFFSET } from "../core/format.js";
import { makeKey, Zone } from "../core/key.js";
import { type HeldLock, type LockModeChange } from "../core/lock.js";
import { LockMode, lockModeName } from "../core/lock_msg.js";
import { formatRange, inodeGroupRange } from "../core/lock_names.js";
import { makeVolume, MIN_DATA_BLOCKS, MIN_META_BLOCKS } from "../core/mkfs.js";
import { ScoutMount } from "../core/mount.js";
import type { Server } from "../core/server.js";
import { readSuperFrom } from "../core/volume.js";
import { SimDisk } from "./disk.js";
import { SimWorld, type SimNode } from "./env.js";
import type { NetFaults } from "./net.js";
import { mountsCompatible } from "./lock_workload.js";
import { SimRandom } from "./random.js";
import {
  observeQuorumWrite, QuorumSimChecker, type QuorumSimMount, registerScenario, WriteWatchDevice,
} from "./scenarios.js";

export const CLUSTER_FSID = 0x5c0f_c1a5_7e40_0001n;
export const CLUSTER_PORT = 7300;
/** Elements per list at most (4 bytes each in a value of at most 896 bytes). */
export const LIST_MAX = 200;
/** After healing: time for a leader, recovery and one round of every mount's operations. */
export const LIVENESS_BOUND_MS = 60_000;

export const CLUSTER_FAULTS: Partial<NetFaults> = {
  delayMinMs: 0.05, delayMaxMs: 3, datagramLossProbability: 0.02,
  datagramDuplicateProbability: 0.01, streamSplitProbability: 0.3,
  streamCoalesceProbability: 0.2, streamCutProbability: 0.0005, resetNoticeMaxMs: 200,
  streamBreakAfterMs: 6_000,
};

export interface ClusterOptions {
  /** Quorum members (1, 3 or 5 in the chaos runs). */
  slots: number;
  /** Mounts in all, >= slots. */
  mounts: number;
  workersPerMount: number;
  /** Length of the fault phase in virtual ms. */
  chaosMs: number;
  /** Mean virtual ms between faults (0: no faults). */
  faultEveryMs: number;
  /** Each worker waits 1..opGapMs virtual ms between operations. */
  opGapMs: number;
  /** Allow whole-cluster power loss among the faults. */
  powerLoss: boolean;
  heartbeatTimeoutMs: number;
}

export const DEFAULT_CLUSTER_OPTIONS: ClusterOptions = {
  slots: 3, mounts: 3, workersPerMount: 2, chaosMs: 20_000, faultEveryMs: 1500, opGapMs: 30,
  powerLoss: true, heartbeatTimeoutMs: 2000,
};

/** The soak's pacing: long runs, a lighter load, faults every few seconds. */
export const SOAK_CLUSTER_OPTIONS: Partial<ClusterOptions> = {
  chaosMs: 600_000, faultEveryMs: 6000, opGapMs: 1500,
};

export interface ClusterReport {
  seed: number;
  slots: number;
  mounts: number;
  virtualMs: number;
  ops: number;
  appends: number;
  acked: number;
  listReads: number;
  regWrites: number;
  regReads: number;
  syncs: number;
  opErrors: number;
  crashes: number;
  pauses: number;
  partitions: number;
  powerLosses: number;
  readFaults: number;
  merges: number;
  fences: number;
  elections: number;
  grants: number;
  invalidations: number;
  lostAppends: number;
}

interface MountState {
  name: string;
  index: number;
  node: SimNode;
  rid: bigint;
  /** Unique per process: "n1#3". */
  inc: string;
  sm: ScoutMount | null;
  /** start() completed: the first transaction is open. */
  mounted: boolean;
  qm: QuorumSimMount | null;
  /** Appends and register writes not yet acknowledged by a sync of this process. */
  unacked: number[];
  keyLocks: Map<string, Promise<void>>;
  /** Worker operations in flight (the final reads wait for them). */
  ops: number;
}

interface ListElem {
  key: string;
  inc: string;
  acked: boolean;
}

interface RegWrite {
  key: string;
  pos: number;
  inc: string;
  acked: boolean;
}

interface RegRead {
  key: string;
  inc: string;
  id: number | null;
  startMs: number;
  endMs: number;
  /** Position of the newest write acknowledged when the read began. */
  minPos: number;
}

const LIST_GROUPS = 3;
const LISTS = 6;
const REGS = 4;

function listKey(i: number): Buffer {
  return makeKey(Zone.FS, BigInt(1024 * (1 + (i % LIST_GROUPS)) + Math.floor(i / LIST_GROUPS)), 100, 0n);
}

function regKey(i: number): Buffer {
  return makeKey(Zone.FS, BigInt(1024 * (1 + (i % LIST_GROUPS)) + 512 + i), 101, 0n);
}

function inoOf(key: Buffer): bigint {
  return key.readBigUInt64BE(1);
}

function encodeIds(ids: readonly number[]): Buffer {
  const b = Buffer.alloc(ids.length * 4);
  ids.forEach((id, i) => b.writeUInt32LE(id, i * 4));
  return b;
}

function sleep(env: Env, ms: number): Promise<void> {
  return new Promise((r) => { env.timers.after(ms, r); });
}

/** The global view of the run: model, histories and checks (see the header). */
export class ClusterChecker {
  readonly quorum: QuorumSimChecker;
  private nextId = 1;
  readonly elems = new Map<number, ListElem>();
  readonly listObs: { key: string; inc: string; ids: number[] }[] = [];
  readonly regWrites = new Map<number, RegWrite>();
  readonly regReads: RegRead[] = [];
  private readonly regPos = new Map<string, number>();
  private readonly regAckedPos = new Map<string, number>();
  private readonly modes = new Map<string, Map<string, LockMode>>();
  private maxServerTerm = 0;
  readonly crashed = new Set<string>();

  constructor(private readonly world: SimWorld) {
    this.quorum = new QuorumSimChecker(world);
  }

  violation(msg: string): void {
    this.world.log(`cluster checker: ${msg}`, "error");
    this.world.scheduler.fail(new Error(`cluster checker: ${msg}`));
  }

  check(cond: boolean, msg: () => string): void {
    if (!cond) this.violation(msg());
  }

  newAppend(key: string, inc: string): number {
    const id = this.nextId++;
    this.elems.set(id, { key, inc, acked: false });
    return id;
  }

  newRegWrite(key: string, inc: string): number {
    const id = this.nextId++;
    const pos = (this.regPos.get(key) ?? 0) + 1;
    this.regPos.set(key, pos);
    this.regWrites.set(id, { key, pos, inc, acked: false });
    return id;
  }

  ack(ids: readonly number[]): void {
    for (const id of ids) {
      const e = this.elems.get(id);
      if (e) e.acked = true;
      const w = this.regWrites.get(id);
      if (w) {
        w.acked = true;
        this.regAckedPos.set(w.key, Math.max(this.regAckedPos.get(w.key) ?? 0, w.pos));
      }
    }
  }

  regAckedNow(key: string): number {
    return this.regAckedPos.get(key) ?? 0;
  }

  /** A list value read: well formed, only elements appended to this key, no duplicates. */
  decodeList(key: string, val: Buffer | null, inc: string): number[] {
    if (val === null) return [];
    this.check(val.length % 4 === 0 && val.length <= LIST_MAX * 4,
      () => `${inc} read a list of ${val.length} bytes at ${key}`);
    const ids: number[] = [];
    for (let i = 0; i + 4 <= val.length; i += 4) ids.push(val.readUInt32LE(i));
    this.check(new Set(ids).size === ids.length, () => `${inc} read duplicates at ${key}: ${ids.join(",")}`);
    for (const id of ids) {
      this.check(this.elems.get(id)?.key === key, () => `${inc} read element ${id} at ${key}, never appended there`);
    }
    this.listObs.push({ key, inc, ids });
    return ids;
  }

  regRead(r: RegRead): void {
    if (r.id !== null) {
      const w = this.regWrites.get(r.id);
      this.check(w?.key === r.key, () => `${r.inc} read register value ${r.id} never written at ${r.key}`);
    }
    this.regReads.push(r);
  }

  regPosOf(id: number | null): number {
    return id === null ? 0 : this.regWrites.get(id)?.pos ?? 0;
  }

  /** A mount's lock changed mode: live mounts' modes must stay compatible. */
  modeChanged(inc: string, c: LockModeChange): void {
    const id = formatRange(c.range);
    let m = this.modes.get(id);
    if (!m) this.modes.set(id, m = new Map());
    if (c.to === LockMode.NULL) m.delete(inc);
    else m.set(inc, c.to);
    for (const [other, mode] of m) {
      if (other === inc || this.crashed.has(other)) continue;
      const ok = mountsCompatible(mode, c.to);
      this.check(ok, () => `${inc} got ${lockModeName(c.to)} of ${id} while ${other} holds ${lockModeName(mode)}`);
    }
  }

  processDied(inc: string): void {
    this.crashed.add(inc);
    for (const m of this.modes.values()) m.delete(inc);
  }

  serverStarted(term: number): void {
    this.maxServerTerm = Math.max(this.maxServerTerm, term);
  }

  /** A super block write by `inc`, whose server (if any) has `term`. */
  superWrite(inc: string, term: number | null): void {
    this.check(term !== null, () => `${inc} wrote the super without running a server`);
    this.check(term === null || term >= this.maxServerTerm,
      () => `${inc}'s server of term ${term} committed after a server of term ${this.maxServerTerm} started`);
  }

  /** End of run: the final lists and registers against every history. */
  checkFinal(lists: Map<string, number[]>, regs: Map<string, number | null>): number {
    let lost = 0;
    for (const [id, e] of this.elems) {
      const fin = lists.get(e.key) ?? [];
      if (fin.includes(id)) continue;
      this.check(!e.acked, () => `acknowledged append ${id} by ${e.inc} lost from ${e.key}`);
      this.check(this.crashed.has(e.inc), () => `append ${id} by ${e.inc}, which did not crash, is lost`);
      lost++;
    }
    for (const o of this.listObs) this.checkListObs(o, lists.get(o.key) ?? []);
    for (const [key, id] of regs) {
      const pos = this.regPosOf(id);
      this.check(pos >= this.regAckedNow(key), () => `register ${key} ends at ${pos} below acked ${this.regAckedNow(key)}`);
      for (const r of this.regReads) {
        if (r.key !== key || r.id === null) continue;
        const w = this.regWrites.get(r.id)!;
        if (w.inc !== r.inc) this.check(pos >= w.pos, () => `register ${key} ends at ${pos} below a value another mount read (${w.pos})`);
      }
    }
    this.checkRegReads();
    return lost;
  }

  private checkListObs(o: { key: string; inc: string; ids: number[] }, fin: number[]): void {
    let n = o.ids.length;
    // trailing elements the observer appended itself and lost in its crash
    while (n > 0 && !fin.includes(o.ids[n - 1]!) && this.elems.get(o.ids[n - 1]!)?.inc === o.inc &&
      this.crashed.has(o.inc)) n--;
    for (let i = 0; i < n; i++) {
      this.check(fin[i] === o.ids[i], () => `${o.inc} read [${o.ids.join(",")}] at ${o.key}, ` +
        `not a prefix of the final [${fin.join(",")}]`);
    }
  }

  private checkRegReads(): void {
    const byKey = new Map<string, RegRead[]>();
    for (const r of this.regReads) {
      let a = byKey.get(r.key);
      if (!a) byKey.set(r.key, a = []);
      a.push(r);
    }
    for (const reads of byKey.values()) {
      // realtime order: a read that began after another ended sees at least its value, unless
      // that value was the other reader's own unacknowledged write (possibly lost)
      let floor = 0;
      const byEnd = [...reads].sort((a, b) => a.endMs - b.endMs);
      const byStart = [...reads].sort((a, b) => a.startMs - b.startMs);
      let j = 0;
      for (const r of byStart) {
        while (j < byEnd.length && byEnd[j]!.endMs < r.startMs) {
          const e = byEnd[j++]!;
          const w = e.id === null ? null : this.regWrites.get(e.id)!;
          if (w === null || w.inc !== e.inc || w.acked) floor = Math.max(floor, this.regPosOf(e.id));
        }
        const pos = this.regPosOf(r.id);
        this.check(pos >= r.minPos, () => `${r.inc} read register ${r.key} at ${pos} below acked ${r.minPos}`);
        this.check(pos >= floor, () => `${r.inc} read register ${r.key} at ${pos} after a read saw ${floor}`);
      }
    }
  }
}

/** A cluster of real mounts on simulated nodes: see the header. */
export class ClusterSim {
  readonly checker: ClusterChecker;
  readonly names: string[];
  readonly states = new Map<string, MountState>();
  readonly report: ClusterReport;
  meta: SimDisk;
  data: SimDisk;
  private readonly rng: SimRandom;
  /** chaos: workers run; final: each mount's final round; stopped: no more operations. */
  private phase: "chaos" | "final" | "stopped" = "chaos";
  /** Mounts (by node name) whose final round completed on a live process. */
  private readonly roundDone = new Set<string>();
  private incs = 0;
  private readonly servers = new Map<string, Server>();

  private constructor(readonly world: SimWorld, meta: SimDisk, data: SimDisk,
    readonly qconf: QuorumConfig, readonly opts: ClusterOptions, seed: number) {
    this.meta = meta;
    this.data = data;
    this.checker = new ClusterChecker(world);
    this.rng = world.random.fork();
    this.names = Array.from({ length: opts.mounts }, (_, i) => `n${i}`);
    for (const name of this.names) world.addNode(name);
    this.report = {
      seed, slots: opts.slots, mounts: opts.mounts, virtualMs: 0, ops: 0, appends: 0, acked: 0,
      listReads: 0, regWrites: 0, regReads: 0, syncs: 0, opErrors: 0, crashes: 0, pauses: 0,
      partitions: 0, powerLosses: 0, readFaults: 0, merges: 0, fences: 0, elections: 0,
      grants: 0, invalidations: 0, lostAppends: 0,
    };
  }

  /** mkfs with the quorum slots, then one node per mount in `world`. */
  static async create(world: SimWorld, opts: ClusterOptions): Promise<ClusterSim> {
    assert(opts.slots >= 1 && opts.slots <= opts.mounts && opts.mounts <= 15, "cluster shape");
    const meta = new SimDisk("meta", MIN_META_BLOCKS * 65_536);
    const data = new SimDisk("data", MIN_DATA_BLOCKS * 4096);
    await makeVolume({
      meta, data, totalMetaBlocks: MIN_META_BLOCKS, totalDataBlocks: MIN_DATA_BLOCKS,
      slots: Array.from({ length: opts.slots }, (_, nr) => ({ nr, addr: `10.0.0.${nr + 1}`, port: CLUSTER_PORT })),
      dataAllocZoneBlocks: null, formatVersion: 2, fsid: CLUSTER_FSID,
      uuid: Buffer.alloc(16, 0xc1), nowSec: 1_700_000_000n, nowNsec: 0,
    });
    const sb = await readSuperFrom(meta, true);
    return new ClusterSim(world, meta, data, sb.qconf, opts, Number(world.seed));
  }

  // ---- processes ----

  /** Starts a new mount (new rid) on the node's current process, with its workers. */
  startMount(name: string): void {
    const index = this.names.indexOf(name);
    const node = this.world.node(name);
    let rid = 0n;
    while (rid === 0n) rid = (BigInt(this.rng.u32()) << 32n) | BigInt(this.rng.u32());
    const st: MountState = { name, index, node, rid, inc: `${name}#${++this.incs}`, sm: null, mounted: false, qm: null,
      unacked: [], keyLocks: new Map(), ops: 0 };
    this.states.set(name, st);
    node.spawn("mount", () => this.mountLoop(st));
  }

  /** The metadata device as st's process sees it: quorum block and super writes checked. */
  private device(st: MountState): BlockDevice {
    return st.node.device(new WriteWatchDevice(this.meta, (buf, offset) => {
      observeQuorumWrite(this.checker.quorum, CLUSTER_FSID, buf, offset);
      if (offset === SUPER_OFFSET) this.checker.superWrite(st.inc, st.qm?.server?.term ?? null);
    }));
  }

  private async mountLoop(st: MountState): Promise<void> {
    const slot = st.index < this.opts.slots ? st.index : null;
    for (let attempt = 0; ; attempt++) {
      try {
        const sm = await ScoutMount.open(st.node.env, this.device(st), {
          rid: st.rid, quorumSlot: slot, heartbeatTimeoutMs: this.opts.heartbeatTimeoutMs,
          fenceLeader: (prev) => this.fence(st, prev.rid),
          fenceClient: (rid) => this.fence(st, rid),
          recoveryTimeoutMs: 4000,
          netTuning: { clientReconnectTimeoutMs: 4000, keepaliveTimeoutMs: 3000, greetingTimeoutMs: 3000 },
          server: { clientMetaAvailTarget: 64, clientDataAvailTarget: 1024 },
          cacheBytes: 32 * 1024 * 1024,
          onLockModeChange: (c) => {
            if (c.why === "grant") this.report.grants++;
            if (c.why === "invalidate") this.report.invalidations++;
            this.checker.modeChanged(st.inc, c);
          },
          onServer: (s) => { this.onServer(st, s); },
        });
        st.sm = sm;
        if (sm.quorum) st.qm = { name: st.name, slot: st.index, node: st.node, rid: st.rid, agent: sm.quorum, server: null };
        await sm.start();
        st.mounted = true;
        break;
      } catch (e) {
        if (!isFsError(e) || attempt > 50) throw e;
        await sleep(st.node.env, 500);
      }
    }
    if (this.phase === "final") {
      st.node.spawn("final round", () => this.roundOf(st));
      return;
    }
    for (let w = 0; w < this.opts.workersPerMount; w++) {
      const r = this.rng.fork();
      st.node.spawn(`worker${w}`, () => this.worker(st, r));
    }
  }

  private onServer(st: MountState, s: Server | null): void {
    if (s === null) {
      if (st.qm) st.qm.server = null;
      this.servers.delete(st.name);
      return;
    }
    const term = s.opts.term;
    const qm = st.qm;
    assert(qm, "a server started by a mount without a quorum slot");
    const others = [...this.states.values()].filter((o) => o !== st && o.qm).map((o) => o.qm!);
    this.checker.quorum.onServerStart(qm, term, others);
    this.checker.serverStarted(term);
    qm.server = { term, state: "up" };
    this.servers.set(st.name, s);
    this.report.elections++;
  }

  /** The fence agent: kills the process that runs rid, if any (upstream's test agent). */
  private async fence(by: MountState, rid: bigint): Promise<void> {
    this.report.fences++;
    for (const st of this.states.values()) {
      if (st.rid === rid && st.node.alive) {
        this.world.log(`${by.inc} fences ${st.inc}`, "warn");
        this.crash(st.name);
        this.restartLater(st.name);
      }
    }
    this.checker.quorum.fenced.add(rid);
    await sleep(by.node.env, 5);
  }

  crash(name: string): void {
    const st = this.states.get(name);
    if (!st || !st.node.alive) return;
    this.world.crash(name);
    this.checker.processDied(st.inc);
    this.servers.delete(name);
    this.report.crashes++;
  }

  /** Restarts a crashed node with a new mount. */
  restart(name: string): void {
    if (this.world.node(name).alive) return;
    this.world.restart(name);
    this.startMount(name);
  }

  leaderName(): string | null {
    for (const [name, s] of this.servers) if (this.world.node(name).alive && s) return name;
    return null;
  }

  // ---- workload ----

  private async withKey<T>(st: MountState, key: string, fn: () => Promise<T>): Promise<T> {
    const prev = st.keyLocks.get(key) ?? Promise.resolve();
    let done!: () => void;
    const mine = new Promise<void>((r) => { done = r; });
    st.keyLocks.set(key, prev.then(() => mine));
    await prev;
    try {
      return await fn();
    } finally {
      done();
      if (st.keyLocks.get(key) === mine) st.keyLocks.delete(key);
    }
  }

  private async locked<T>(st: MountState, key: Buffer, mode: LockMode, fn: (h: HeldLock) => Promise<T>): Promise<T> {
    const locks = st.sm!.client.locks;
    const h = await locks.lock([inodeGroupRange(inoOf(key))], mode);
    try {
      return await fn(h.held[0]!);
    } finally {
      locks.unlock(h);
    }
  }

  private async worker(st: MountState, r: SimRandom): Promise<void> {
    while (this.phase === "chaos") {
      await sleep(st.node.env, 1 + r.int(this.opts.opGapMs));
      if (this.phase !== "chaos") return;
      st.ops++;
      try {
        await this.oneOp(st, r.int(100), r);
      } catch (e) {
        if (!isFsError(e)) throw e;
        this.report.opErrors++;
      } finally {
        st.ops--;
      }
    }
  }

  async oneOp(st: MountState, pick: number, r: SimRandom): Promise<void> {
    this.report.ops++;
    if (pick < 40) await this.append(st, r.int(LISTS));
    else if (pick < 55) await this.readList(st, r.int(LISTS));
    else if (pick < 70) await this.writeReg(st, r.int(REGS));
    else if (pick < 90) await this.readReg(st, r.int(REGS));
    else await this.sync(st);
  }

  async append(st: MountState, i: number): Promise<void> {
    const key = listKey(i);
    const hex = key.toString("hex");
    const client = st.sm!.client;
    await this.withKey(st, hex, () => this.locked(st, key, LockMode.WRITE, async (h) => {
      const cur = this.checker.decodeList(hex, await client.lookup(key), st.inc);
      if (cur.length >= LIST_MAX) return;
      const id = this.checker.newAppend(hex, st.inc);
      client.putLocked(h, key, encodeIds([...cur, id]));
      st.unacked.push(id);
      this.report.appends++;
    }));
  }

  async readList(st: MountState, i: number): Promise<number[]> {
    const key = listKey(i);
    const hex = key.toString("hex");
    const ids = await this.withKey(st, hex, () => this.locked(st, key, LockMode.READ,
      async () => this.checker.decodeList(hex, await st.sm!.client.lookup(key), st.inc)));
    this.report.listReads++;
    return ids;
  }

  private async writeReg(st: MountState, i: number): Promise<void> {
    const key = regKey(i);
    const hex = key.toString("hex");
    const client = st.sm!.client;
    await this.withKey(st, hex, () => this.locked(st, key, LockMode.WRITE, async (h) => {
      const id = this.checker.newRegWrite(hex, st.inc);
      const b = Buffer.alloc(4);
      b.writeUInt32LE(id, 0);
      client.putLocked(h, key, b);
      st.unacked.push(id);
      this.report.regWrites++;
    }));
  }

  async readReg(st: MountState, i: number): Promise<number | null> {
    const key = regKey(i);
    const hex = key.toString("hex");
    const startMs = this.world.nowMs();
    const minPos = this.checker.regAckedNow(hex);
    const v = await this.withKey(st, hex, () => this.locked(st, key, LockMode.READ,
      async () => st.sm!.client.lookup(key)));
    this.checker.check(v === null || v.length === 4, () => `${st.inc} read a register of ${v?.length} bytes`);
    const id = v === null ? null : v.readUInt32LE(0);
    this.checker.regRead({ key: hex, inc: st.inc, id, startMs, endMs: this.world.nowMs(), minPos });
    this.report.regReads++;
    return id;
  }

  async sync(st: MountState): Promise<void> {
    const ids = st.unacked.splice(0);
    try {
      await st.sm!.client.commit();
    } catch (e) {
      st.unacked.unshift(...ids);
      throw e;
    }
    this.checker.ack(ids);
    this.report.acked += ids.length;
    this.report.syncs++;
  }

  // ---- faults ----

  private async chaos(untilMs: number): Promise<void> {
    while (this.world.nowMs() < untilMs) {
      await this.worldSleep(this.rng.int(2 * this.opts.faultEveryMs) + 1);
      if (this.world.nowMs() >= untilMs) return;
      this.oneFault();
    }
  }

  private worldSleep(ms: number): Promise<void> {
    return new Promise((r) => { this.world.scheduler.after(ms, r, "cluster chaos"); });
  }

  private oneFault(): void {
    const name = this.rng.pick(this.names);
    const pick = this.rng.int(100);
    if (pick < 20) {
      this.crash(name);
      this.restartLater(name);
    } else if (pick < 30) {
      const l = this.leaderName();
      if (l) {
        this.crash(l);
        this.restartLater(l);
      }
    } else if (pick < 42) {
      if (this.world.node(name).alive) {
        this.world.node(name).pause(this.opts.heartbeatTimeoutMs + 500 + this.rng.int(2000));
        this.report.pauses++;
      }
    } else if (pick < 57) {
      const other = this.rng.pick(this.names);
      if (other !== name) {
        this.world.partition(name, other);
        this.report.partitions++;
        this.world.scheduler.after(200 + this.rng.int(4000), () => { this.world.heal(); }, "heal");
      }
    } else if (pick < 65) {
      this.world.isolate(name);
      this.report.partitions++;
      this.world.scheduler.after(200 + this.rng.int(5000), () => { this.world.heal(); }, "heal");
    } else if (pick < 72) {
      this.world.node(name).clockSkewMs += this.rng.int(20_000) - 10_000;
    } else if (pick < 80) {
      this.readFaults(100 + this.rng.int(400));
    } else if (pick < 93) {
      const l = this.leaderName();
      if (l) {
        this.servers.get(l)!.requestMerge();
        this.report.merges++;
      }
    } else if (this.opts.powerLoss && this.report.powerLosses < 1) {
      this.powerLoss();
    }
  }

  private restartLater(name: string): void {
    this.world.scheduler.after(200 + this.rng.int(3000), () => {
      if (this.phase !== "stopped") this.restart(name);
    }, `restart ${name}`);
  }

  /** A window of transient metadata read errors (1 read in 20 fails). */
  private readFaults(ms: number): void {
    const r = this.rng.fork();
    this.report.readFaults++;
    // metadata blocks only: the super and quorum blocks live below the first metadata block
    this.meta.failReads((off) => off >= META_DEV_START_BLKNO * 65_536 && r.chance(0.05));
    this.world.scheduler.after(ms, () => { this.meta.failReads(null); }, "read faults end");
  }

  /** Every node dies at once; the devices keep a random subset of their unflushed writes. */
  private powerLoss(): void {
    this.report.powerLosses++;
    for (const name of this.names) this.crash(name);
    this.meta.failReads(null);
    this.meta = this.meta.crash(this.rng, "random-subset");
    this.data = this.data.crash(this.rng, "random-subset");
    for (const name of this.names) this.restartLater(name);
  }

  // ---- run ----

  /** Mounts everything, runs the chaos phase, heals, checks liveness and the final state. */
  async run(): Promise<ClusterReport> {
    for (const name of this.names) this.startMount(name);
    const chaosEnd = this.world.nowMs() + this.opts.chaosMs;
    let chaosDone = false;
    this.world.spawn("chaos", async () => {
      if (this.opts.faultEveryMs > 0) await this.chaos(chaosEnd);
      else await this.worldSleep(this.opts.chaosMs);
      chaosDone = true;
    });
    await this.world.runUntil(() => chaosDone);
    await this.heal();
    await this.finalRound();
    this.report.virtualMs = this.world.nowMs();
    return this.report;
  }

  private async heal(): Promise<void> {
    this.world.heal();
    this.meta.failReads(null);
    for (const name of this.names) if (!this.world.node(name).alive) this.restart(name);
    const deadline = this.world.nowMs() + LIVENESS_BOUND_MS;
    await this.world.runUntil(() => this.allMounted() || this.world.nowMs() >= deadline);
    this.checker.check(this.allMounted(), () => `not every mount is up ${LIVENESS_BOUND_MS} ms after healing`);
  }

  private allMounted(): boolean {
    return this.names.every((n) => this.world.node(n).alive && this.states.get(n)?.mounted);
  }

  /** One mount's final round: an append to every list, a read of every register, a sync. */
  private async roundOf(st: MountState): Promise<void> {
    for (let i = 0; i < LISTS; i++) await this.retry(st, () => this.append(st, i));
    for (let i = 0; i < REGS; i++) await this.retry(st, () => this.readReg(st, i));
    await this.retry(st, () => this.sync(st));
    this.roundDone.add(st.name);
  }

  /**
   * Every mount completes a round within the bound (a mount that dies meanwhile, fenced for
   * instance, is restarted and runs its round again); then the final reads and checks.
   */
  private async finalRound(): Promise<void> {
    this.phase = "final";
    for (const st of this.states.values()) {
      if (st.mounted && st.node.alive) st.node.spawn("final round", () => this.roundOf(st));
    }
    const deadline = this.world.nowMs() + LIVENESS_BOUND_MS;
    const done = (): boolean => this.names.every((n) => this.roundDone.has(n));
    await this.world.runUntil(() => done() || this.world.nowMs() >= deadline);
    this.checker.check(done(), () => `operations pending ${LIVENESS_BOUND_MS} ms after healing`);
    this.phase = "stopped";
    const live = this.names.map((n) => this.states.get(n)!);
    this.checker.check(live.every((st) => st.node.alive && st.mounted), () => "a mount died at the end");
    const busy = (): number => live.reduce((n, st) => n + st.ops, 0);
    await this.world.runUntil(() => busy() === 0 || this.world.nowMs() >= deadline);
    this.checker.check(busy() === 0, () => `${busy()} operations still pending at the end`);
    const lists = await this.finalLists(live);
    // newest version wins through merges: force one and read everything again
    const leader = this.leaderName();
    if (leader) {
      const s = this.servers.get(leader)!;
      const before = s.counters.get("log_merge_complete");
      s.requestMerge();
      await this.world.runUntil(() => s.counters.get("log_merge_complete") > before ||
        this.world.nowMs() >= deadline + LIVENESS_BOUND_MS);
      const again = await this.finalLists(live);
      for (const [k, v] of lists) {
        this.checker.check(v.join() === (again.get(k) ?? []).join(), () => `list ${k} changed across a merge`);
      }
    }
    const regs = new Map<string, number | null>();
    for (let i = 0; i < REGS; i++) {
      const vals = await this.world.settle(Promise.all(live.map((st) => this.readReg(st, i))));
      this.checker.check(vals.every((v) => v === vals[0]), () => `mounts disagree on register ${i}: ${vals.join(",")}`);
      regs.set(regKey(i).toString("hex"), vals[0]!);
    }
    this.report.lostAppends = this.checker.checkFinal(lists, regs);
    await this.unmountAll(live);
    const rep = await fsckVolume(this.meta, null);
    this.checker.check(rep.problems.length === 0, () => `fsck: ${rep.problems.slice(0, 5).join("; ")}`);
  }

  private async retry<T>(st: MountState, fn: () => Promise<T>): Promise<T> {
    for (let i = 0; ; i++) {
      try {
        return await fn();
      } catch (e) {
        if (!isFsError(e) || i >= 20) throw e;
        await sleep(st.node.env, 100);
      }
    }
  }

  private async finalLists(live: MountState[]): Promise<Map<string, number[]>> {
    const out = new Map<string, number[]>();
    for (let i = 0; i < LISTS; i++) {
      const seen = await this.world.settle(Promise.all(live.map((st) => this.readList(st, i))));
      this.checker.check(seen.every((s) => s.join() === seen[0]!.join()),
        () => `mounts disagree on list ${i}: ${seen.map((s) => `[${s.join(",")}]`).join(" ")}`);
      out.set(listKey(i).toString("hex"), seen[0]!);
    }
    return out;
  }

  private async unmountAll(live: MountState[]): Promise<void> {
    // clients and followers first, the leader last (its server must see the farewells)
    const leader = this.leaderName();
    const order = [...live.filter((s) => s.name !== leader), ...live.filter((s) => s.name === leader)];
    for (const st of order) {
      await this.world.settle(st.sm!.unmount());
      this.checker.processDied(st.inc);
    }
  }
}

/** One seeded run in a new world. */
export async function runClusterChaos(seed: number, opts: Partial<ClusterOptions> = {},
  faults: Partial<NetFaults> = CLUSTER_FAULTS): Promise<ClusterReport> {
  const world = new SimWorld({ seed, faults });
  const c = await ClusterSim.create(world, { ...DEFAULT_CLUSTER_OPTIONS, ...opts });
  return c.run();
}

/** The cluster shapes of the chaos runs: [quorum slots, mounts]. */
export const CLUSTER_SHAPES: readonly (readonly [number, number])[] =
  [[1, 1], [1, 3], [3, 3], [3, 5], [5, 5]];

/** The shape a seed runs in the "cluster" scenario and the soak. */
export function shapeOfSeed(seed: bigint): readonly [number, number] {
  return CLUSTER_SHAPES[Number(seed % BigInt(CLUSTER_SHAPES.length))]!;
}

registerScenario({
  name: "cluster",
  description: "real mounts (quorum of 1, 3 or 5, 1-5 mounts, drawn from the seed) run a " +
    "register and list-append workload under locks through crashes, pauses, partitions, " +
    "read errors, power loss and merges; checks quorum, servers, locks, histories, liveness, fsck",
  defaultDurationMs: 20_000,
  faults: CLUSTER_FAULTS,
  run: async ({ world, durationMs }) => {
    const [slots, mounts] = shapeOfSeed(world.seed);
    world.log(`cluster: ${slots} quorum slots, ${mounts} mounts`);
    const c = await ClusterSim.create(world, { ...DEFAULT_CLUSTER_OPTIONS, slots, mounts, chaosMs: durationMs });
    const r = await c.run();
    world.log(`cluster report: ${JSON.stringify(r)}`);
  },
});

registerScenario({
  name: "cluster-soak",
  description: "the cluster scenario with the soak's pacing: long runs (10 virtual minutes by " +
    "default), a lighter load, a fault every 4 s on average",
  defaultDurationMs: SOAK_CLUSTER_OPTIONS.chaosMs!,
  faults: CLUSTER_FAULTS,
  run: async ({ world, durationMs }) => {
    const [slots, mounts] = shapeOfSeed(world.seed);
    world.log(`cluster-soak: ${slots} quorum slots, ${mounts} mounts`);
    const c = await ClusterSim.create(world, { ...DEFAULT_CLUSTER_OPTIONS, ...SOAK_CLUSTER_OPTIONS,
      slots, mounts, chaosMs: durationMs });
    const r = await c.run();
    world.log(`cluster report: ${JSON.stringify(r)}`);
  },
});
