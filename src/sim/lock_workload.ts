/*
 * The lock workload: a cluster of mounts using the real lock client and lock server over the
 * real reliable messaging, inside the simulator, with checkers of the lock protocol's
 * promises. Used by test/sim/lock.test.ts (many fixed seeds) and the "locks" scenario.
 *
 * The world: a "server" node runs a NetServer and a LockServer; mounts m1..mN each run a
 * NetClient and a LockClient. The item store is a Map shared by everyone (the stand-in for
 * the shared devices); each mount has its own item cache and transaction: writes go to the
 * cache as dirty items and reach the store only when the mount commits (periodically, or
 * in onInvalidate when the lock dirtied the transaction); an invalidation to NULL drops the
 * cached items of the range. So a lock protocol bug shows up as a stale read or a lost
 * write, not only as a bad state.
 *
 * Operations (several workers per mount): read a register (READ on its inode group), append
 * to a register's list (WRITE), append to two registers in two groups (one lockEach: key
 * order), read one group and write another (mixed modes), add a delta item (WRITE_ONLY on
 * the totl zone) or an index item (WRITE_ONLY on an inode index group), and read the sum of
 * deltas or the count of index items (READ). There are more inode groups than
 * lock_idle_count, so idle locks are shed.
 *
 * Checkers:
 *  - no conflicting grants: every mode change of every mount is observed (LockClient
 *    onModeChange) and at every instant the modes different mounts hold on a lock are
 *    compatible;
 *  - linearizable registers: a read under READ sees exactly the model's latest list; an
 *    append under WRITE starts from it; delta sums and index counts read under READ equal
 *    the model's (every WRITE_ONLY writer was made to commit first);
 *  - cached items only under granted locks; a dirty item in an invalidated range implies
 *    the dirtied marker; committed item versions increase across mounts;
 *  - write_seqs strictly increase per lock (server grants across servers, and every WRITE
 *    grant seen by a mount is above every write_seq seen before on that lock);
 *  - after a failover nothing is granted before recovery completes;
 *  - liveness: after faults heal every worker finishes its operations in bounded time; at
 *    rest server and mounts agree on every granted mode.
 */
import type { Env, NetAddr } from "../env/env.js";
import { assert } from "../util/assert.js";
import { Counters } from "../util/counters.js";
import { inodeKey, InodeIndexType, makeKey, metaSeqKey, Zone } from "../core/key.js";
import { type HeldLock, LockClient, lockItemSeq, type LockModeChange } from "../core/lock.js";
import { LockMode, lockModeName } from "../core/lock_msg.js";
import {
  formatRange, inodeGroupRange, inodeIndexRange, type LockRange, rangeContainsKey, rangeId,
  totlZoneRange,
} from "../core/lock_names.js";
import { LockServer, type LockServerEvent } from "../core/lock_server.js";
import { NetCmd } from "../core/msg.js";
import { NetClient, NetServer, type NetTuning } from "../core/net.js";
import type { SimNode, SimWorld } from "./env.js";
import type { NetFaults } from "./net.js";

const FSID = 0x10c4_5eedn;
const FMT = 2;
const PORT = 7100;
/** Inode groups holding registers: more than the idle bound, so locks get shed. */
const REGISTER_GROUPS = 48;
/** Registers sharing a group with another (several items under one lock). */
const SHARED_GROUP_REGISTERS = 4;
const INDEX_GROUPS = 2;
const LOCK_IDLE_COUNT = 32;
const COMMIT_MIN_MS = 50;
const COMMIT_MAX_MS = 300;
const THINK_MAX_MS = 25;
const SLOW_WRITEOUT_PERCENT = 3;
const SLOW_WRITEOUT_MS = 800;
const HOLD_MAX_MS = 4;
/** Operations each worker makes after the faults healed (the liveness phase). */
const AFTER_HEAL_OPS = 6;
/** Virtual time allowed after healing for every worker to finish. */
const LIVENESS_BOUND_MS = 40_000;
/** Virtual time allowed for recovery before the driver fences laggards (it never should). */
const RECOVERY_TIMEOUT_MS = 30_000;
/** Bound on a register's list (a register is reset when it grows past it). */
const MAX_LIST = 64;

export const LOCK_WORKLOAD_TUNING: Partial<NetTuning> = {
  keepaliveTimeoutMs: 3_000, keepaliveIntervalMs: 500, greetingTimeoutMs: 3_000,
  clientReconnectTimeoutMs: 20_000, reconnectMaxMs: 500,
};

export const LOCK_WORKLOAD_FAULTS: Partial<NetFaults> = {
  delayMinMs: 0.05, delayMaxMs: 3, streamSplitProbability: 0.4,
  streamCoalesceProbability: 0.3, streamCutProbability: 0.001, resetNoticeMaxMs: 200,
  streamBreakAfterMs: 6_000,
};

export interface LockWorkloadOptions {
  mounts: number;
  workersPerMount: number;
  /** Length of the fault phase (virtual ms); then everything heals. */
  chaosMs: number;
  /** Server crashes (each restarted with a new term) during the fault phase. */
  failovers: number;
  /** Connection cuts and short partitions during the fault phase. */
  netChaos: boolean;
}

export interface LockWorkloadReport {
  ops: number;
  reads: number;
  appends: number;
  deltas: number;
  indexes: number;
  grants: number;
  invalidations: number;
  sheds: number;
  recoveredLocks: number;
  failovers: number;
  cuts: number;
  partitions: number;
  commits: number;
  conservative: number;
  finishedMs: number;
  /** Client counters summed over the mounts (the protocol paths exercised). */
  waitGrant: number;
  staleInvalidations: number;
  absentInvalidations: number;
  deferredGrants: number;
}

function sleep(env: Env, ms: number): Promise<void> {
  return new Promise((resolve) => { env.timers.after(ms, resolve); });
}

function ridOf(index: number): bigint {
  return 0x5a00_0000_0000_0000n + BigInt(index + 1);
}

/** Modes two different mounts may hold at once. */
export function mountsCompatible(a: LockMode, b: LockMode): boolean {
  return a === LockMode.NULL || b === LockMode.NULL ||
    (a === b && (a === LockMode.READ || a === LockMode.WRITE_ONLY));
}

interface StoredItem {
  key: Buffer;
  value: string;
  version: number;
  writer: string;
}

interface CachedItem {
  key: Buffer;
  value: string;
  dirty: boolean;
  version: number;
}

/** Everything shared by the world: the item store, the seq, the model and the checkers. */
class Shared {
  readonly store = new Map<string, StoredItem>();
  /** The server's persistent global seq (survives failovers, as the super block does). */
  seq = 0;
  /** Model: each register's list; the delta total; index items per group. */
  readonly truth = new Map<number, string[]>();
  deltaTotal = 0;
  readonly indexCounts = new Map<number, number>();
  /** lock id -> mount -> mode, as the mounts see it. */
  readonly modes = new Map<string, Map<string, LockMode>>();
  readonly ranges = new Map<string, LockRange>();
  private readonly seenWriteSeq = new Map<string, number>();
  private readonly serverWriteSeq = new Map<string, number>();
  /** The current LockServer has completed recovery (or had none). */
  serverRecovered = true;
  readonly report: LockWorkloadReport = {
    ops: 0, reads: 0, appends: 0, deltas: 0, indexes: 0, grants: 0, invalidations: 0, sheds: 0,
    recoveredLocks: 0, failovers: 0, cuts: 0, partitions: 0, commits: 0, conservative: 0,
    finishedMs: 0, waitGrant: 0, staleInvalidations: 0, absentInvalidations: 0,
    deferredGrants: 0,
  };

  constructor(private readonly world: SimWorld) {}

  nextSeq(): number {
    return ++this.seq;
  }

  /** Records a violation: the run fails at its next step. */
  violation(msg: string): void {
    this.world.log(`VIOLATION: ${msg}`, "error");
    this.world.scheduler.fail(new Error(`lock workload violation: ${msg}`));
  }

  check(cond: boolean, msg: () => string): void {
    if (!cond) this.violation(msg());
  }

  /** A mount's lock changed mode: modes of different mounts must stay compatible. */
  modeChanged(mount: string, c: LockModeChange): void {
    const id = rangeId(c.range);
    this.ranges.set(id, c.range);
    let m = this.modes.get(id);
    if (m === undefined) this.modes.set(id, m = new Map());
    if (c.to === LockMode.NULL) m.delete(mount);
    else m.set(mount, c.to);
    for (const [other, mode] of m) {
      this.check(other === mount || mountsCompatible(mode, c.to), () =>
        `${mount} got ${lockModeName(c.to)} of ${formatRange(c.range)} while ${other} holds ` +
        lockModeName(mode));
    }
    if (c.why === "grant" && c.to !== LockMode.NULL) this.report.grants++;
    if (c.why === "invalidate") this.report.invalidations++;
    if (c.why === "shed") this.report.sheds++;
    if (c.why !== "grant" || (c.to !== LockMode.WRITE && c.to !== LockMode.WRITE_ONLY)) return;
    const seen = this.seenWriteSeq.get(id) ?? 0;
    this.check(c.to !== LockMode.WRITE || c.writeSeq > seen, () =>
      `${mount} WRITE grant of ${formatRange(c.range)} with write_seq ${c.writeSeq} <= ${seen}`);
    this.seenWriteSeq.set(id, Math.max(seen, c.writeSeq));
  }

  /** The server's view: write_seqs strictly increase per lock, no grant during recovery. */
  serverEvent(e: LockServerEvent): void {
    if (e.kind === "grant") {
      this.check(this.serverRecovered, () => `grant of ${formatRange(e.range)} during recovery`);
      if (e.writeSeq === 0) return;
      const id = rangeId(e.range);
      const last = this.serverWriteSeq.get(id) ?? 0;
      this.check(e.writeSeq > last, () => `server write_seq ${e.writeSeq} of ` +
        `${formatRange(e.range)} after ${last}`);
      this.serverWriteSeq.set(id, e.writeSeq);
    } else if (e.kind === "recovered") {
      this.report.recoveredLocks++;
      const id = rangeId(e.range);
      this.serverWriteSeq.set(id, Math.max(this.serverWriteSeq.get(id) ?? 0, e.writeSeq));
    } else if (e.kind === "recovery_done") {
      this.serverRecovered = true;
    }
  }

  /** Writes a committed item: versions of one key only grow across mounts. */
  storeWrite(writer: string, it: CachedItem): void {
    const hex = it.key.toString("hex");
    const old = this.store.get(hex);
    this.check(old === undefined || it.version > old.version ||
      (it.version === old.version && old.writer === writer), () =>
      `item ${hex} version ${it.version} by ${writer} after ${old?.version} by ${old?.writer}`);
    this.store.set(hex, { key: it.key, value: it.value, version: it.version, writer });
  }

  storeScan(range: LockRange): StoredItem[] {
    return [...this.store.values()].filter((s) => rangeContainsKey(range, s.key));
  }
}

/** One mount: its net client, lock client, item cache and transaction. */
class Mount {
  readonly cache = new Map<string, CachedItem>();
  readonly net: NetClient;
  readonly locks: LockClient;
  readonly counters = new Counters();
  transSeq: number;
  private counter = 0;
  private commitBusy = false;

  constructor(readonly node: SimNode, readonly index: number, readonly shared: Shared,
    server: NetAddr) {
    const env = node.env;
    this.transSeq = shared.nextSeq();
    this.net = new NetClient(env, this.counters, { fsid: FSID, fmtVers: FMT,
      rid: ridOf(index), quorum: false, getServerAddr: () => Promise.resolve(server),
      tuning: LOCK_WORKLOAD_TUNING, name: `${node.name} net`,
      onConnected: (term, newServer) => { if (newServer) this.locks.serverChanged(term); },
      onSessionLost: (e) => shared.violation(`${node.name} lost its session: ${e.message}`) });
    this.locks = new LockClient({ env, counters: this.counters,
      transport: { request: (p) => this.net.request(NetCmd.LOCK, p),
        serverTerm: () => this.net.serverTerm },
      onInvalidate: (range, mode, dirtied) => this.onInvalidate(range, mode, dirtied),
      lockIdleCount: LOCK_IDLE_COUNT, name: `${node.name} locks`,
      onModeChange: (c) => shared.modeChanged(node.name, c) });
    this.net.register(NetCmd.LOCK, (p) => this.locks.handleInvalidate(p));
    this.net.register(NetCmd.LOCK_RECOVER, (p) => this.locks.handleRecover(p));
    this.net.start();
  }

  get name(): string {
    return this.node.name;
  }

  uniq(): bigint {
    return BigInt(this.index) << 32n | BigInt(++this.counter);
  }

  /** Commits the whole transaction: every dirty item reaches the store. */
  commit(): void {
    const seq = this.transSeq;
    for (const it of this.cache.values()) {
      if (!it.dirty) continue;
      this.shared.storeWrite(this.name, it);
      it.dirty = false;
    }
    this.locks.transCommitted(seq);
    this.transSeq = this.shared.nextSeq();
    this.shared.report.commits++;
  }

  async committer(stop: () => boolean): Promise<void> {
    const env = this.node.env;
    while (!stop()) {
      await sleep(env, COMMIT_MIN_MS + env.random.u32() % (COMMIT_MAX_MS - COMMIT_MIN_MS));
      if (this.commitBusy) continue;
      this.commitBusy = true;
      await sleep(env, env.random.u32() % 3); // the write-out takes a while
      this.commit();
      this.commitBusy = false;
    }
  }

  async onInvalidate(range: LockRange, mode: LockMode, dirtied: boolean): Promise<void> {
    for (const it of this.cache.values()) {
      this.shared.check(!it.dirty || dirtied || !rangeContainsKey(range, it.key), () =>
        `${this.name}: dirty item in ${formatRange(range)} without the dirtied marker`);
    }
    const env = this.node.env;
    // Now and then a slow write-out, so that failovers land in the middle of invalidations.
    const slow = env.random.u32() % 100 < SLOW_WRITEOUT_PERCENT;
    await sleep(env, slow ? SLOW_WRITEOUT_MS / 4 + env.random.u32() % SLOW_WRITEOUT_MS
      : env.random.u32() % 3);
    if (dirtied) this.commit();
    if (mode === LockMode.NULL) {
      for (const [hex, it] of this.cache) {
        if (rangeContainsKey(range, it.key)) this.cache.delete(hex);
      }
    }
    await sleep(env, env.random.u32() % 2);
  }

  read(held: HeldLock, key: Buffer): string {
    this.shared.check(held.mode === LockMode.READ || held.mode === LockMode.WRITE, () =>
      `read under ${lockModeName(held.mode)}`);
    const hex = key.toString("hex");
    const cached = this.cache.get(hex);
    if (cached !== undefined) return cached.value;
    const granted = this.locks.grantedModeAt(key);
    this.shared.check(granted === LockMode.READ || granted === LockMode.WRITE, () =>
      `${this.name} caches ${hex} under ${lockModeName(granted)}`);
    const s = this.shared.store.get(hex);
    const it = { key, value: s?.value ?? "", dirty: false, version: s?.version ?? 0 };
    this.cache.set(hex, it);
    return it.value;
  }

  write(held: HeldLock, key: Buffer, value: string): void {
    const granted = this.locks.grantedModeAt(key);
    this.shared.check(granted === held.mode && (granted === LockMode.WRITE ||
      granted === LockMode.WRITE_ONLY), () => `${this.name} writes under ${lockModeName(granted)}`);
    const version = lockItemSeq(held, this.transSeq);
    this.cache.set(key.toString("hex"), { key, value, dirty: true, version });
    this.locks.markDirtied(held, this.transSeq);
  }
}

// ---------------------------------------------------------------------------------------
// Operations.

function registerIno(r: number): bigint {
  // The first registers share the group of another register.
  const group = r < REGISTER_GROUPS ? r : r - REGISTER_GROUPS;
  return BigInt(group + 1) * 1024n + (r < REGISTER_GROUPS ? 5n : 7n);
}

const REGISTERS = REGISTER_GROUPS + SHARED_GROUP_REGISTERS;

function hold(env: Env): Promise<void> {
  return sleep(env, env.random.u32() % HOLD_MAX_MS);
}

async function readRegister(m: Mount, r: number): Promise<void> {
  const ino = registerIno(r);
  const h = await m.locks.lock([inodeGroupRange(ino)], LockMode.READ);
  const got = m.read(h.held[0]!, inodeKey(ino));
  const want = (m.shared.truth.get(r) ?? []).join(",");
  m.shared.check(got === want, () => `${m.name} read register ${r}: "${got}", latest "${want}"`);
  await hold(m.node.env);
  m.locks.unlock(h);
  m.shared.report.reads++;
}

function appendTo(m: Mount, held: HeldLock, r: number): void {
  const ino = registerIno(r);
  const got = m.read(held, inodeKey(ino));
  const list = m.shared.truth.get(r) ?? [];
  m.shared.check(got === list.join(","), () =>
    `${m.name} append to register ${r} read "${got}", latest "${list.join(",")}"`);
  const next = list.length >= MAX_LIST ? [] : [...list];
  next.push(`${m.index}.${m.uniq() & 0xffffffffn}`);
  m.shared.truth.set(r, next);
  m.write(held, inodeKey(ino), next.join(","));
  m.shared.report.appends++;
}

async function appendRegisters(m: Mount, regs: number[]): Promise<void> {
  const groups = new Map<string, LockRange>();
  for (const r of regs) groups.set(rangeId(inodeGroupRange(registerIno(r))),
    inodeGroupRange(registerIno(r)));
  const h = await m.locks.lock([...groups.values()], LockMode.WRITE);
  for (const r of regs) appendTo(m, h.covering(inodeKey(registerIno(r)))!, r);
  await hold(m.node.env);
  m.locks.unlock(h);
}

/** READ one register's group, WRITE another's: one lockEach with mixed modes. */
async function copyRegister(m: Mount, from: number, to: number): Promise<void> {
  const a = inodeGroupRange(registerIno(from));
  const b = inodeGroupRange(registerIno(to));
  if (rangeId(a) === rangeId(b)) return;
  const h = await m.locks.lockEach([{ range: a, mode: LockMode.READ },
    { range: b, mode: LockMode.WRITE }]);
  const got = m.read(h.covering(a.start)!, inodeKey(registerIno(from)));
  const want = (m.shared.truth.get(from) ?? []).join(",");
  m.shared.check(got === want, () => `${m.name} copy read register ${from}: "${got}" ` +
    `latest "${want}"`);
  appendTo(m, h.covering(b.start)!, to);
  await hold(m.node.env);
  m.locks.unlock(h);
}

function deltaKey(m: Mount): Buffer {
  return makeKey(Zone.XATTR_TOTL, 1n, 0, 2n, m.uniq());
}

async function addDelta(m: Mount): Promise<void> {
  const h = await m.locks.lock([totlZoneRange()], LockMode.WRITE_ONLY);
  const d = 1 + m.node.env.random.u32() % 9;
  m.write(h.held[0]!, deltaKey(m), String(d));
  m.shared.deltaTotal += d;
  await hold(m.node.env);
  m.locks.unlock(h);
  m.shared.report.deltas++;
}

async function readDeltas(m: Mount): Promise<void> {
  const range = totlZoneRange();
  const h = await m.locks.lock([range], LockMode.READ);
  const sum = m.shared.storeScan(range).reduce((s, it) => s + Number(it.value), 0);
  m.shared.check(sum === m.shared.deltaTotal, () =>
    `${m.name} delta sum ${sum}, model ${m.shared.deltaTotal}`);
  m.locks.unlock(h);
  m.shared.report.reads++;
}

async function addIndex(m: Mount, g: number): Promise<void> {
  const seq = BigInt(g) * 1024n + BigInt(m.node.env.random.u32() % 1024);
  const h = await m.locks.lock([inodeIndexRange(InodeIndexType.META_SEQ, seq)],
    LockMode.WRITE_ONLY);
  m.write(h.held[0]!, metaSeqKey(seq, m.uniq()), "");
  m.shared.indexCounts.set(g, (m.shared.indexCounts.get(g) ?? 0) + 1);
  await hold(m.node.env);
  m.locks.unlock(h);
  m.shared.report.indexes++;
}

async function readIndex(m: Mount, g: number): Promise<void> {
  const range = inodeIndexRange(InodeIndexType.META_SEQ, BigInt(g) * 1024n);
  const h = await m.locks.lock([range], LockMode.READ);
  const n = m.shared.storeScan(range).length;
  const want = m.shared.indexCounts.get(g) ?? 0;
  m.shared.check(n === want, () => `${m.name} index group ${g} has ${n} items, model ${want}`);
  m.locks.unlock(h);
  m.shared.report.reads++;
}

async function oneOp(m: Mount): Promise<void> {
  const rnd = m.node.env.random;
  const reg = (): number => rnd.u32() % REGISTERS;
  const p = rnd.u32() % 100;
  if (p < 35) await readRegister(m, reg());
  else if (p < 60) await appendRegisters(m, [reg()]);
  else if (p < 68) await appendRegisters(m, [reg(), reg()]);
  else if (p < 75) await copyRegister(m, reg(), reg());
  else if (p < 84) await addDelta(m);
  else if (p < 88) await readDeltas(m);
  else if (p < 96) await addIndex(m, rnd.u32() % INDEX_GROUPS);
  else await readIndex(m, rnd.u32() % INDEX_GROUPS);
  m.shared.report.ops++;
}

async function worker(m: Mount, healedAt: () => number | undefined, done: () => void):
  Promise<void> {
  let after = 0;
  while (after < AFTER_HEAL_OPS) {
    await sleep(m.node.env, m.node.env.random.u32() % THINK_MAX_MS);
    await oneOp(m);
    if (healedAt() !== undefined) after++;
  }
  done();
}

// ---------------------------------------------------------------------------------------
// The server and the faults.

class ServerSide {
  net: NetServer | undefined;
  locks: LockServer | undefined;
  term = 0;

  constructor(private readonly world: SimWorld, private readonly shared: Shared,
    private readonly rids: bigint[]) {}

  start(node: SimNode, recover: boolean): void {
    const env = node.env;
    const shared = this.shared;
    this.term++;
    const term = this.term;
    const counters = new Counters();
    shared.serverRecovered = !recover;
    const locks = new LockServer({ env, counters, name: `lock server term ${term}`,
      sendToClient: (rid, cmd, p) => net.request(rid, cmd, p),
      nextSeq: () => shared.nextSeq(),
      recoverRids: recover ? this.rids : [],
      onRecovered: (max) => { shared.seq = Math.max(shared.seq, max); },
      onEvent: (e) => shared.serverEvent(e) });
    const net: NetServer = new NetServer(env, counters, { fsid: FSID, fmtVers: FMT,
      serverTerm: term, tuning: LOCK_WORKLOAD_TUNING, name: `server term ${term}`,
      // Admission completes right after this hook: ask for recovery once it has.
      onGreeting: (g) => {
        env.timers.after(0, () => locks.clientGreeted(g.rid));
        return Promise.resolve();
      },
      onClientTimeout: (rid) => shared.violation(`server timed out client ${rid.toString(16)}`),
      onFarewell: (rid) => locks.removeClient(rid) });
    net.register(NetCmd.LOCK, (p, peer) => locks.handleRequest(peer.rid, p));
    this.net = net;
    this.locks = locks;
    node.spawn("listen", async () => {
      await net.listen({ addr: node.addr, port: PORT });
    });
    if (recover) {
      env.timers.after(RECOVERY_TIMEOUT_MS, () => {
        if (locks.recovering) {
          shared.violation(`recovery incomplete after ${RECOVERY_TIMEOUT_MS} ms: ` +
            `${locks.pendingRecovery().map((r) => r.toString(16)).join(" ")}`);
        }
      });
    }
  }
}

function sleepWorld(world: SimWorld, ms: number): Promise<void> {
  return new Promise((resolve) => { world.scheduler.after(ms, resolve, "lock driver sleep"); });
}

/** Cuts connections, partitions links and fails the server over until endMs. */
async function chaos(world: SimWorld, shared: Shared, server: ServerSide,
  opts: LockWorkloadOptions, mounts: readonly string[], endMs: number): Promise<void> {
  const r = world.random.fork();
  const failoverAt = Array.from({ length: opts.failovers }, () =>
    1_000 + r.int(Math.max(1, endMs - 4_000))).sort((a, b) => a - b);
  while (world.nowMs() < endMs) {
    await sleepWorld(world, 20 + r.int(300));
    if (failoverAt.length > 0 && world.nowMs() >= failoverAt[0]!) {
      failoverAt.shift();
      world.crash("server");
      await sleepWorld(world, r.int(1_500));
      shared.report.failovers++;
      server.start(world.restart("server"), true);
      continue;
    }
    if (!opts.netChaos) continue;
    const conns = world.net.connections();
    if (r.chance(0.6) && conns.length > 0) {
      world.net.cut(r.pick(conns));
      shared.report.cuts++;
    } else if (r.chance(0.3)) {
      const c = r.pick(mounts);
      if (r.chance(0.5)) world.partition("server", c);
      else if (r.chance(0.5)) world.block("server", c);
      else world.block(c, "server");
      shared.report.partitions++;
      // Far shorter than the reconnect timeout: nobody is fenced.
      await sleepWorld(world, 100 + r.int(3_000));
      world.heal();
    }
  }
  world.heal();
}

/** At rest: the server records what each mount holds (or more, after a failover). */
function checkAgreement(shared: Shared, server: LockServer, mounts: readonly Mount[]): void {
  const ids = new Set<string>([...shared.modes.keys()]);
  for (const range of server.lockRanges()) {
    ids.add(rangeId(range));
    shared.ranges.set(rangeId(range), range);
  }
  for (const id of ids) {
    const range = shared.ranges.get(id)!;
    const granted = server.granted(range);
    const held = shared.modes.get(id) ?? new Map<string, LockMode>();
    for (const m of mounts) {
      const mine = held.get(m.name) ?? LockMode.NULL;
      const theirs = granted.get(ridOf(m.index)) ?? LockMode.NULL;
      if (mine === theirs) continue;
      // After a failover a mount reports a lock it was still lowering: the server may
      // record more than the mount holds, never less.
      shared.check(mine === LockMode.NULL || (mine === LockMode.READ && theirs === LockMode.WRITE),
        () => `${m.name} holds ${lockModeName(mine)} of ${formatRange(range)}, server ` +
        `records ${lockModeName(theirs)}`);
      shared.report.conservative++;
    }
  }
}

/** Final state: every committed register and total equals the model. */
function checkFinal(shared: Shared, mounts: readonly Mount[]): void {
  for (const m of mounts) m.commit();
  for (let r = 0; r < REGISTERS; r++) {
    const stored = shared.store.get(inodeKey(registerIno(r)).toString("hex"))?.value ?? "";
    const want = (shared.truth.get(r) ?? []).join(",");
    shared.check(stored === want, () => `register ${r} stored "${stored}", model "${want}"`);
  }
  const sum = shared.storeScan(totlZoneRange()).reduce((s, it) => s + Number(it.value), 0);
  shared.check(sum === shared.deltaTotal, () => `final delta sum ${sum} != ${shared.deltaTotal}`);
}

/**
 * Runs the workload in `world` (which must be fresh) and returns its report; violations
 * fail the world's run (the returned promise rejects).
 */
export async function runLockWorkload(world: SimWorld, opts: LockWorkloadOptions):
  Promise<LockWorkloadReport> {
  assert(opts.mounts >= 1 && opts.mounts <= 5 && opts.workersPerMount >= 1, "workload shape");
  const shared = new Shared(world);
  const serverNode = world.addNode("server");
  const names = Array.from({ length: opts.mounts }, (_, i) => `m${i + 1}`);
  const server = new ServerSide(world, shared, names.map((_, i) => ridOf(i)));
  server.start(serverNode, false);
  const addr = { addr: serverNode.addr, port: PORT };
  let healedAt: number | undefined;
  let running = opts.mounts * opts.workersPerMount;
  const mounts = names.map((name, i) => new Mount(world.addNode(name), i, shared, addr));
  for (const m of mounts) {
    m.node.spawn("committer", () => m.committer(() => running === 0));
    for (let w = 0; w < opts.workersPerMount; w++) {
      m.node.spawn(`worker${w}`, () => worker(m, () => healedAt, () => { running--; }));
    }
  }
  world.spawn("chaos", async () => {
    await chaos(world, shared, server, opts, names, opts.chaosMs);
    healedAt = world.nowMs();
    world.log("lock workload: faults healed");
  });
  const r = await world.runUntil(() => running === 0 || (healedAt !== undefined &&
    world.nowMs() > healedAt + LIVENESS_BOUND_MS), { maxEvents: 30_000_000 });
  assert(running === 0, `liveness: ${running} workers unfinished ${LIVENESS_BOUND_MS} ms ` +
    `after healing (run stopped: ${r.stop} at ${r.nowMs} ms)\n` +
    mounts.map((m) => `${m.name}:\n  ${m.locks.dumpLocks().join("\n  ")}`).join("\n") +
    `\nserver:\n  ${server.locks?.dumpLocks().join("\n  ")}`);
  shared.report.finishedMs = world.nowMs() - (healedAt ?? 0);
  await world.runFor(1_000); // the last committers stop, answers settle
  checkAgreement(shared, server.locks!, mounts);
  checkFinal(shared, mounts);
  const rep = shared.report;
  for (const m of mounts) {
    rep.waitGrant += m.counters.get("lock_invalidate_wait_grant");
    rep.staleInvalidations += m.counters.get("lock_invalidate_stale");
    rep.absentInvalidations += m.counters.get("lock_invalidate_absent");
    rep.deferredGrants += m.counters.get("lock_grant_deferred");
  }
  world.log(`lock workload: ${JSON.stringify(shared.report)}`);
  for (const m of mounts) m.net.shutdown();
  server.net?.shutdown();
  server.locks?.shutdown();
  await world.runFor(1_000);
  const failed = world.scheduler.failed;
  if (failed !== null) throw failed;
  return shared.report;
}
