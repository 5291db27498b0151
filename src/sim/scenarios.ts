/*
 * Named simulation scenarios, replayable from a seed.
 *
 * A scenario is a function that drives a SimWorld (adds nodes, starts their code with their
 * Env, injects faults, runs virtual time) and throws if a checker finds a violation. The
 * registry lets later workloads (quorum election, lock server, whole clusters) register
 * themselves; src/sim/replay.ts runs one by name and seed (bin/sim-replay on the command
 * line), and the seed printed by a failing run reproduces it exactly.
 *
 * The "echo" scenario, the simulator's own end-to-end check: several nodes, written only
 * against the Env interface as core code is, exchange
 *  - datagrams: pings to random peers, answered by pongs; every datagram carries a checksum
 *    and (sender, incarnation, seq); checkers: nothing arrives corrupted or that was never
 *    sent; duplicates and losses happen and are counted;
 *  - streams: each node keeps a connection to its successor, sends length-prefixed frames
 *    with consecutive sequence numbers and random payloads, the server echoes each frame
 *    back; frames are reassembled from arbitrary chunk boundaries; checkers: per connection
 *    frames arrive in order, without gaps or duplicates, byte for byte; broken connections
 *    are re-established with backoff;
 * under loss, duplication, reordering, chunk splitting and merging, random cuts, symmetric
 * and asymmetric partitions, isolation and node crashes with restarts (the "chaos" task).
 * The last LIVENESS_PHASE_MS of the run are a liveness phase: everything heals, and after a
 * grace period for broken streams to time out and reconnect, every node must again get
 * stream echoes and datagram pongs from every peer.
 */

import type { Env, NetAddr, StreamConnection } from "../env/env.js";
import { assert } from "../util/assert.js";
import { crc32c } from "../util/crc32c.js";
import { isFsError } from "../util/errno.js";
import type { SimNode, SimWorld } from "./env.js";
import type { NetFaults } from "./net.js";

export interface ScenarioContext {
  readonly world: SimWorld;
  /** Virtual duration asked for (the scenario's default unless overridden). */
  readonly durationMs: number;
}

export interface Scenario {
  readonly name: string;
  readonly description: string;
  readonly defaultDurationMs: number;
  /** Network faults the world is created with. */
  readonly faults?: Partial<NetFaults>;
  /** Runs the scenario to its end; throws on a violation. */
  run(ctx: ScenarioContext): Promise<void>;
}

/** Bound on registered scenarios (a registry is not a data store). */
export const MAX_SCENARIOS = 256;
const registry = new Map<string, Scenario>();

/** Registers a scenario under its (unique) name. */
export function registerScenario(s: Scenario): void {
  assert(/^[a-z0-9][a-z0-9_-]*$/.test(s.name), `scenario name ${JSON.stringify(s.name)}`);
  assert(!registry.has(s.name), `scenario ${s.name} registered twice`);
  assert(registry.size < MAX_SCENARIOS, `more than ${MAX_SCENARIOS} scenarios`);
  registry.set(s.name, s);
}

export function findScenario(name: string): Scenario | undefined {
  return registry.get(name);
}

/** Registered scenarios, sorted by name. */
export function listScenarios(): Scenario[] {
  return [...registry.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
}

// ---------------------------------------------------------------------------------------
// echo

const ECHO_NODES = 4;
const ECHO_UDP_PORT = 7000;
const ECHO_TCP_PORT = 7001;
const DG_HEADER_BYTES = 17; // kind u8, sender u8, incarnation u32, seq u32, crc u32, len u16
const DG_MAX_PAYLOAD = 48;
const DG_PING = 1;
const DG_PONG = 2;
const FRAME_HEADER_BYTES = 8; // body length u32, seq u32
const FRAME_MAX_BODY = 3000;
/** Frames awaiting their echo on one connection; the client pauses beyond it. */
const MAX_OUTSTANDING_FRAMES = 64;
/** Distinct datagrams a receiver remembers for duplicate detection. */
const MAX_TRACKED_DATAGRAMS = 1 << 18;
const CONNECT_TIMEOUT_MS = 300;
const ECHO_BREAK_AFTER_MS = 1500;
/** After the final heal, time allowed to reconnect before liveness is checked. */
const LIVENESS_GRACE_MS = ECHO_BREAK_AFTER_MS + 1000;
/** The healed final phase: grace, then a window in which every node must progress. */
const LIVENESS_PHASE_MS = LIVENESS_GRACE_MS + 1500;
/** The shortest run worth making: some chaos before the liveness phase. */
const ECHO_MIN_DURATION_MS = LIVENESS_PHASE_MS + 2000;

/** Everything the checkers know, shared by all nodes (the checker's global view). */
class EchoChecker {
  /** Highest datagram seq sent per "sender/incarnation". */
  readonly dgSent = new Map<string, number>();
  readonly dgSeen = new Set<string>();
  /** Last virtual time (ms) each node got a stream echo; and a pong from each peer. */
  readonly lastEchoMs = new Map<string, number>();
  readonly lastPongMs = new Map<string, number>();
  stats = {
    dgSent: 0, dgReceived: 0, dgDuplicates: 0, pongs: 0, framesSent: 0, framesEchoed: 0,
    connects: 0, connectFailures: 0, sessionsClosed: 0, crashes: 0, cuts: 0, partitions: 0,
  };
  stopping = false;
}

interface EchoNodeCtx {
  readonly env: Env;
  readonly index: number;
  readonly name: string;
  readonly incarnation: number;
  readonly peers: readonly { name: string; index: number; addr: string }[];
  readonly checker: EchoChecker;
}

/** Starts the echo program of one node (its datagram, listener and client loops). */
function startEchoNode(node: SimNode, index: number, names: readonly string[],
  checker: EchoChecker): void {
  const world = node.world;
  const peers = names.map((name, i) => ({ name, index: i, addr: world.node(name).addr }))
    .filter((p) => p.index !== index);
  const ctx: EchoNodeCtx = {
    env: node.env, index, name: node.name, incarnation: node.incarnation, peers, checker,
  };
  node.spawn("udp", () => datagramLoop(ctx));
  node.spawn("server", () => echoServer(ctx));
  const next = names[(index + 1) % names.length]!;
  node.spawn("client", () => clientLoop(ctx, { addr: world.node(next).addr,
    port: ECHO_TCP_PORT }));
}

function sleep(env: Env, ms: number): Promise<void> {
  return new Promise((resolve) => { env.timers.after(ms, resolve); });
}

async function datagramLoop(ctx: EchoNodeCtx): Promise<void> {
  const { env, checker } = ctx;
  const sock = await env.net.bindDatagram({ addr: "0.0.0.0", port: ECHO_UDP_PORT });
  sock.onMessage((buf, from) => {
    const d = decodeDatagram(buf);
    const key = `${d.sender}/${d.incarnation}/${d.kind}/${d.seq}`;
    const sentMax = checker.dgSent.get(`${d.sender}/${d.incarnation}/${d.kind}`) ?? -1;
    assert(d.seq <= sentMax, `datagram ${key} was never sent`);
    checker.stats.dgReceived++;
    if (checker.dgSeen.has(key)) checker.stats.dgDuplicates++;
    else {
      assert(checker.dgSeen.size < MAX_TRACKED_DATAGRAMS, "too many datagrams tracked");
      checker.dgSeen.add(key);
    }
    if (d.kind === DG_PING && !checker.stopping) {
      sendDatagram(ctx, sock.send.bind(sock), from, DG_PONG, d.seq);
    } else if (d.kind === DG_PONG) {
      checker.stats.pongs++;
      checker.lastPongMs.set(`${ctx.name}<${d.sender}`, env.clock.monotonicMs());
    }
  });
  let seq = 0;
  while (!checker.stopping) {
    const peer = ctx.peers[env.random.u32() % ctx.peers.length]!;
    sendDatagram(ctx, sock.send.bind(sock), { addr: peer.addr, port: ECHO_UDP_PORT },
      DG_PING, seq++);
    await sleep(env, 3 + (env.random.u32() % 5));
  }
  sock.close();
}

function sendDatagram(ctx: EchoNodeCtx, send: (b: Buffer, to: NetAddr) => void, to: NetAddr,
  kind: number, seq: number): void {
  const payload = Buffer.alloc(ctx.env.random.u32() % (DG_MAX_PAYLOAD + 1));
  ctx.env.random.fill(payload);
  const buf = Buffer.alloc(DG_HEADER_BYTES + payload.length);
  buf.writeUInt8(kind, 0);
  buf.writeUInt8(ctx.index, 1);
  buf.writeUInt32BE(ctx.incarnation, 2);
  buf.writeUInt32BE(seq, 6);
  buf.writeUInt32BE(crc32c(payload), 10);
  buf.writeUInt16BE(payload.length, 14);
  payload.copy(buf, DG_HEADER_BYTES);
  const key = `${ctx.index}/${ctx.incarnation}/${kind}`;
  ctx.checker.dgSent.set(key, Math.max(seq, ctx.checker.dgSent.get(key) ?? -1));
  ctx.checker.stats.dgSent++;
  send(buf, to);
}

function decodeDatagram(buf: Buffer): { kind: number; sender: number; incarnation: number;
  seq: number } {
  assert(buf.length >= DG_HEADER_BYTES, `datagram of ${buf.length} bytes`);
  const len = buf.readUInt16BE(14);
  assert(buf.length === DG_HEADER_BYTES + len, "datagram length field");
  assert(crc32c(buf.subarray(DG_HEADER_BYTES)) === buf.readUInt32BE(10), "datagram checksum");
  const kind = buf.readUInt8(0);
  assert(kind === DG_PING || kind === DG_PONG, `datagram kind ${kind}`);
  return { kind, sender: buf.readUInt8(1), incarnation: buf.readUInt32BE(2),
    seq: buf.readUInt32BE(6) };
}

/** Reassembles length-prefixed frames from arbitrary chunks; bounded by one frame. */
class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer, onFrame: (seq: number, frame: Buffer) => void): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    while (this.buf.length >= FRAME_HEADER_BYTES) {
      const bodyLen = this.buf.readUInt32BE(0);
      assert(bodyLen <= FRAME_MAX_BODY, `frame body length ${bodyLen}: framing lost`);
      const total = FRAME_HEADER_BYTES + bodyLen;
      if (this.buf.length < total) break;
      const frame = this.buf.subarray(0, total);
      this.buf = this.buf.subarray(total);
      onFrame(frame.readUInt32BE(4), frame);
    }
    assert(this.buf.length < FRAME_HEADER_BYTES + FRAME_MAX_BODY, "reassembly buffer bound");
  }
}

async function echoServer(ctx: EchoNodeCtx): Promise<void> {
  const listener = await ctx.env.net.listen({ addr: "0.0.0.0", port: ECHO_TCP_PORT });
  listener.onConnection((conn) => {
    const reader = new FrameReader();
    let expect = 0;
    conn.onData((chunk) => reader.push(chunk, (seq, frame) => {
      assert(seq === expect, `${ctx.name} server: frame ${seq}, expected ${expect}`);
      expect++;
      conn.write(frame);
    }));
    conn.onClose(() => undefined);
  });
  while (!ctx.checker.stopping) await sleep(ctx.env, 100);
  listener.close();
}

async function clientLoop(ctx: EchoNodeCtx, server: NetAddr): Promise<void> {
  const { env, checker } = ctx;
  while (!checker.stopping) {
    let conn: StreamConnection;
    try {
      conn = await env.net.connect(server, CONNECT_TIMEOUT_MS);
    } catch (e) {
      assert(isFsError(e, "ECONNREFUSED") || isFsError(e, "ETIMEDOUT"), `connect: ${e}`);
      checker.stats.connectFailures++;
      await sleep(env, 20 + (env.random.u32() % 100));
      continue;
    }
    checker.stats.connects++;
    await clientSession(ctx, conn);
    checker.stats.sessionsClosed++;
    await sleep(env, 10 + (env.random.u32() % 50));
  }
}

/** Sends frames and checks their echoes until the connection closes. */
function clientSession(ctx: EchoNodeCtx, conn: StreamConnection): Promise<void> {
  const { env, checker } = ctx;
  const outstanding = new Map<number, Buffer>();
  const reader = new FrameReader();
  let nextSeq = 0;
  let expectEcho = 0;
  return new Promise((resolve) => {
    conn.onData((chunk) => reader.push(chunk, (seq, frame) => {
      assert(seq === expectEcho, `${ctx.name} client: echo ${seq}, expected ${expectEcho}`);
      const sent = outstanding.get(seq);
      assert(sent !== undefined && sent.equals(frame), `${ctx.name}: echo ${seq} differs`);
      outstanding.delete(seq);
      expectEcho++;
      checker.stats.framesEchoed++;
      checker.lastEchoMs.set(ctx.name, env.clock.monotonicMs());
    }));
    conn.onClose(() => resolve());
    const tick = (): void => {
      if (conn.closed) return;
      if (checker.stopping) { conn.close(); return; }
      if (outstanding.size < MAX_OUTSTANDING_FRAMES) {
        const frame = makeFrame(env, nextSeq);
        outstanding.set(nextSeq++, frame);
        checker.stats.framesSent++;
        conn.write(frame);
      }
      env.timers.after(1 + (env.random.u32() % 5), tick);
    };
    tick();
  });
}

function makeFrame(env: Env, seq: number): Buffer {
  const bodyLen = 1 + (env.random.u32() % FRAME_MAX_BODY);
  const frame = Buffer.alloc(FRAME_HEADER_BYTES + bodyLen);
  frame.writeUInt32BE(bodyLen, 0);
  frame.writeUInt32BE(seq, 4);
  env.random.fill(frame.subarray(FRAME_HEADER_BYTES));
  return frame;
}

/** Injects one random fault every few hundred ms until `untilMs`, then heals everything. */
async function chaos(world: SimWorld, names: readonly string[], checker: EchoChecker,
  untilMs: number, restart: (name: string) => void): Promise<void> {
  const rng = world.random;
  const crashed = new Set<string>();
  const wait = (ms: number): Promise<void> => sleepWorld(world, ms);
  while (world.nowMs() + 1500 < untilMs) {
    await wait(200 + rng.int(1000));
    const a = rng.pick(names);
    const b = rng.pick(names.filter((n) => n !== a));
    switch (rng.int(7)) {
      case 0: world.partition(a, b); checker.stats.partitions++; break;
      case 1: world.block(a, b); checker.stats.partitions++; break;
      case 2: world.isolate(a); checker.stats.partitions++; break;
      case 3: case 4: world.heal(); break;
      case 5: {
        const conns = world.net.connections();
        if (conns.length > 0) { world.net.cut(rng.pick(conns)); checker.stats.cuts++; }
        break;
      }
      default:
        if (crashed.has(a) || crashed.size > 0) break; // one crashed node at a time
        world.crash(a);
        crashed.add(a);
        checker.stats.crashes++;
        await wait(100 + rng.int(700));
        restart(a);
        crashed.delete(a);
    }
  }
  world.heal();
  world.log("chaos over: healed, liveness phase");
}

/** Sleeps in virtual time from the driver's side (not any node's). */
function sleepWorld(world: SimWorld, ms: number): Promise<void> {
  return new Promise((resolve) => { world.scheduler.after(ms, resolve, "driver sleep"); });
}

async function runEcho({ world, durationMs }: ScenarioContext): Promise<void> {
  const checker = new EchoChecker();
  const names = Array.from({ length: ECHO_NODES }, (_, i) => `n${i + 1}`);
  for (const name of names) world.addNode(name);
  const restart = (name: string): void => {
    startEchoNode(world.restart(name), names.indexOf(name), names, checker);
  };
  names.forEach((name, i) => startEchoNode(world.node(name), i, names, checker));
  assert(durationMs >= ECHO_MIN_DURATION_MS, `echo needs at least ${ECHO_MIN_DURATION_MS} ms`);
  const healAtMs = durationMs - LIVENESS_PHASE_MS;
  world.spawn("chaos", () => chaos(world, names, checker, healAtMs, restart));
  await world.runUntil(durationMs);
  checkLiveness(world, names, checker, healAtMs + LIVENESS_GRACE_MS);
  checker.stopping = true;
  const r = await world.runFor(2000);
  world.log(`echo: ${JSON.stringify(checker.stats)}`);
  assert(r.stop === "idle", `echo: still ${world.scheduler.pending} events pending at the end`);
}

function checkLiveness(world: SimWorld, names: readonly string[], checker: EchoChecker,
  sinceMs: number): void {
  for (const name of names) {
    const echo = checker.lastEchoMs.get(name) ?? -1;
    assert(echo >= sinceMs, `liveness: ${name} got no stream echo after ${sinceMs} ms ` +
      `(last ${echo})`);
    for (let i = 0; i < names.length; i++) {
      if (names[i] === name) continue;
      const pong = checker.lastPongMs.get(`${name}<${i}`) ?? -1;
      assert(pong >= sinceMs, `liveness: ${name} got no pong from ${names[i]} after ` +
        `${sinceMs} ms (last ${pong})`);
    }
  }
  world.log(`liveness ok since ${sinceMs} ms`);
}

registerScenario({
  name: "echo",
  description: "4 nodes exchange checked datagrams and stream frames under every network " +
    "fault and crashes, then heal and must all make progress again",
  defaultDurationMs: 20_000,
  faults: {
    delayMinMs: 0.2, delayMaxMs: 15, datagramLossProbability: 0.05,
    datagramDuplicateProbability: 0.05, streamSplitProbability: 0.5,
    streamCoalesceProbability: 0.3, streamCutProbability: 0.0005,
    streamBreakAfterMs: ECHO_BREAK_AFTER_MS, resetNoticeMaxMs: 50,
  },
  run: runEcho,
});

// =======================================================================================
// BEGIN quorum block: the quorum election (src/core/quorum.ts) in a simulated cluster.
//
// QuorumSimCluster runs one QuorumAgent per configured slot, each on its own node (host
// 10.0.0.N is slot N-1's address), all sharing one SimDisk metadata device made by mkfs,
// with a model server (startServer/stopServer take a few ms) and a model fence agent (it
// kills the fenced rid's process, as upstream's test agent force-unmounts it, unless a
// simulated failure is drawn). QuorumSimChecker watches every quorum block write on the
// shared device and every server start, and fails the run (scheduler.fail) on a violation:
//  - at most one leader per term (every ELECT ever written),
//  - persisted terms never go backwards (each slot's TERM event and greatest event term),
//  - no server starts while another live process still runs one,
//  - a server starts only after every earlier server that did not record STOP was fenced,
//  - no agent fails (an assertion inside an agent is caught by its loop: we surface it).
// runQuorumChaos() adds the faults (datagram loss/dup/delay from the world, symmetric and
// asymmetric partitions, isolating the leader, crashes and restarts of any node, leader
// servers failing on their own, clean unmounts, clock steps) until the liveness phase: then
// everything heals and restarts, and within a bound a single leader with a running server
// must be followed by all, readLeader() must name it, and clean unmounts of everyone must
// leave no leader recorded.
// =======================================================================================

import type { BlockDevice } from "../env/env.js";
import {
  decodeQuorumBlock, QUORUM_BLKNO, QUORUM_BLOCK_SIZE, QUORUM_MAX_SLOTS, type QuorumBlock,
  type QuorumConfig, QuorumEvent,
} from "../core/format.js";
import { makeVolume, MIN_DATA_BLOCKS, MIN_META_BLOCKS } from "../core/mkfs.js";
import {
  type LeaderInfo, type PrevLeader, QuorumAgent, QuorumRole, readLeader,
} from "../core/quorum.js";
import { readSuperFrom } from "../core/volume.js";
import { SimDisk } from "./disk.js";
import { SIM_WALL_EPOCH_SEC } from "./env.js";

/** UDP port of every quorum slot (hosts differ). */
export const QSIM_PORT = 7200;
const QSIM_FSID = 0x5c07_f5ae_c0de_0001n;
const QSIM_MAX_RECORDS = 1 << 16;
/** Model server start and stop durations, and fence durations: uniform in [MIN, MAX]. */
const QSIM_SERVER_MS: readonly [number, number] = [5, 100];
const QSIM_FENCE_MS: readonly [number, number] = [5, 60];

export interface QuorumSimOptions {
  /** Configured quorum slots, one mount each. */
  slots: number;
  /** quorum_heartbeat_timeout_ms of every agent (default 2000, the smallest). */
  heartbeatTimeoutMs?: number;
  /** Chance that a fence request fails, so the new leader must resign. Default 0. */
  fenceFailProbability?: number;
}

export interface QuorumSimMount {
  readonly name: string;
  readonly slot: number;
  readonly node: SimNode;
  readonly rid: bigint;
  readonly agent: QuorumAgent;
  /** The model server of this process, as its callbacks left it. */
  server: { term: number; state: "starting" | "up" | "stopping" } | null;
}

interface QuorumSimElection { slot: number; rid: bigint; term: number; atMs: number }

/** The global view: see the block comment above. */
export class QuorumSimChecker {
  readonly elections: QuorumSimElection[] = [];
  readonly serverStarts: { name: string; rid: bigint; term: number; atMs: number }[] = [];
  readonly fenceCalls: { by: string; prev: PrevLeader; atMs: number }[] = [];
  /** rids whose fence request completed. */
  readonly fenced = new Set<bigint>();
  private readonly leaderOfTerm = new Map<number, bigint>();
  private readonly stopTerm = new Map<bigint, number>();
  private readonly lastBlock: (QuorumBlock | null)[] = [];
  violations = 0;

  constructor(private readonly world: SimWorld) {}

  violation(msg: string): void {
    this.violations++;
    this.world.log(`quorum checker: ${msg}`, "error");
    this.world.scheduler.fail(new Error(`quorum checker: ${msg}`));
  }

  /** Every write of a quorum block, in disk order. */
  onBlockWrite(slot: number, blk: QuorumBlock): void {
    const prev = this.lastBlock[slot] ?? null;
    this.lastBlock[slot] = blk;
    const term = blk.events[QuorumEvent.TERM]!.term;
    const greatest = Math.max(...blk.events.filter((e) => e.rid !== 0n).map((e) => e.term), 0);
    if (prev !== null) {
      const prevTerm = prev.events[QuorumEvent.TERM]!.term;
      const prevGreatest = Math.max(...prev.events.map((e) => e.term));
      if (term < prevTerm) this.violation(`slot ${slot} TERM went back ${prevTerm} -> ${term}`);
      if (greatest < prevGreatest) {
        this.violation(`slot ${slot} greatest term went back ${prevGreatest} -> ${greatest}`);
      }
    }
    const elect = blk.events[QuorumEvent.ELECT]!;
    if (elect.rid !== 0n && elect.writeNr !== prev?.events[QuorumEvent.ELECT]!.writeNr) {
      this.onElect({ slot, rid: elect.rid, term: elect.term, atMs: this.world.nowMs() });
    }
    const stop = blk.events[QuorumEvent.STOP]!;
    if (stop.rid !== 0n && stop.term > (this.stopTerm.get(stop.rid) ?? 0)) {
      this.stopTerm.set(stop.rid, stop.term);
    }
  }

  private onElect(e: QuorumSimElection): void {
    const other = this.leaderOfTerm.get(e.term);
    if (other !== undefined && other !== e.rid) {
      this.violation(`two leaders in term ${e.term}: rid ${other.toString(16)} and ` +
        `${e.rid.toString(16)} (slot ${e.slot})`);
    }
    this.leaderOfTerm.set(e.term, e.rid);
    assert(this.elections.length < QSIM_MAX_RECORDS, "quorum checker: too many elections");
    this.elections.push(e);
  }

  /** A server starts: nobody else may run one, earlier unstopped servers must be fenced. */
  onServerStart(m: QuorumSimMount, term: number, others: readonly QuorumSimMount[]): void {
    for (const o of others) {
      if (o !== m && o.node.alive && o.server !== null) {
        this.violation(`${m.name} starts a server for term ${term} while ${o.name}'s server ` +
          `of term ${o.server.term} is ${o.server.state}`);
      }
    }
    for (const s of this.serverStarts) {
      if (s.term >= term || s.rid === m.rid) continue;
      if ((this.stopTerm.get(s.rid) ?? 0) >= s.term || this.fenced.has(s.rid)) continue;
      this.violation(`${m.name} starts a server for term ${term} before the server of ` +
        `${s.name} (rid ${s.rid.toString(16)}, term ${s.term}) stopped or was fenced`);
    }
    assert(this.serverStarts.length < QSIM_MAX_RECORDS, "quorum checker: too many servers");
    this.serverStarts.push({ name: m.name, rid: m.rid, term, atMs: this.world.nowMs() });
  }
}

/** Passes I/O through and shows every completed write to a callback (checkers watch). */
export class WriteWatchDevice implements BlockDevice {
  constructor(private readonly inner: BlockDevice,
    private readonly onWrite: (buf: Buffer, offset: number) => void) {}

  get name(): string { return this.inner.name; }
  get sizeBytes(): number { return this.inner.sizeBytes; }
  get alignment(): number { return this.inner.alignment; }
  read(buf: Buffer, offset: number): Promise<void> { return this.inner.read(buf, offset); }
  flush(): Promise<void> { return this.inner.flush(); }
  allocBuffer(bytes: number): Buffer { return this.inner.allocBuffer(bytes); }
  close(): Promise<void> { return this.inner.close(); }

  async write(buf: Buffer, offset: number): Promise<void> {
    await this.inner.write(buf, offset);
    this.onWrite(buf, offset);
  }
}

/** Shows a write to the checker if it is a whole quorum block. */
export function observeQuorumWrite(checker: QuorumSimChecker, fsid: bigint, buf: Buffer,
  offset: number): void {
  const slot = offset / QUORUM_BLOCK_SIZE - QUORUM_BLKNO;
  if (Number.isInteger(slot) && slot >= 0 && slot < QUORUM_MAX_SLOTS &&
    buf.length === QUORUM_BLOCK_SIZE) {
    checker.onBlockWrite(slot, decodeQuorumBlock(buf, fsid, slot));
  }
}

function qsimSleep(env: Env, ms: number): Promise<void> {
  return new Promise((resolve) => { env.timers.after(ms, resolve); });
}

/** A quorum of simulated mounts on one shared metadata device: see the block comment. */
export class QuorumSimCluster {
  readonly names: string[];
  readonly checker: QuorumSimChecker;
  readonly mounts = new Map<string, QuorumSimMount>();
  /** When set, crashed nodes are restarted after a delay drawn from this range (ms). */
  autoRestartMs: readonly [number, number] | null = null;
  fenceFailProbability: number;
  stats = { crashes: 0, fencedKills: 0, restarts: 0, fenceFailures: 0, unmounts: 0 };
  private readonly byRid = new Map<bigint, QuorumSimMount>();
  private readonly restartPending = new Set<string>();
  private readonly watched: BlockDevice;

  private constructor(readonly world: SimWorld, readonly disk: SimDisk,
    readonly qconf: QuorumConfig, readonly opts: QuorumSimOptions) {
    this.names = Array.from({ length: opts.slots }, (_, i) => `q${i}`);
    this.checker = new QuorumSimChecker(world);
    this.fenceFailProbability = opts.fenceFailProbability ?? 0;
    this.watched = new WriteWatchDevice(disk,
      (buf, offset) => { observeQuorumWrite(this.checker, QSIM_FSID, buf, offset); });
    for (const name of this.names) world.addNode(name);
  }

  /** mkfs with `slots` slots at 10.0.0.1.. port QSIM_PORT, then one node per slot. */
  static async create(world: SimWorld, opts: QuorumSimOptions): Promise<QuorumSimCluster> {
    assert(opts.slots >= 1 && opts.slots <= QUORUM_MAX_SLOTS, `quorum slots ${opts.slots}`);
    const meta = new SimDisk("meta", MIN_META_BLOCKS * 65_536);
    const data = new SimDisk("data", MIN_DATA_BLOCKS * 4096);
    await makeVolume({
      meta, data, totalMetaBlocks: MIN_META_BLOCKS, totalDataBlocks: MIN_DATA_BLOCKS,
      slots: Array.from({ length: opts.slots }, (_, nr) =>
        ({ nr, addr: `10.0.0.${nr + 1}`, port: QSIM_PORT })),
      dataAllocZoneBlocks: null, formatVersion: 2, fsid: QSIM_FSID,
      uuid: Buffer.alloc(16, 0x5c), nowSec: BigInt(SIM_WALL_EPOCH_SEC), nowNsec: 0,
    });
    const sb = await readSuperFrom(meta, true);
    return new QuorumSimCluster(world, meta, sb.qconf, opts);
  }

  get fsid(): bigint { return QSIM_FSID; }

  /** Starts a quorum agent (a new mount, new rid) on the node's current process. */
  mount(name: string): QuorumSimMount {
    const node = this.world.node(name);
    const slot = this.names.indexOf(name);
    let rid = 0n;
    while (rid === 0n || this.byRid.has(rid)) {
      rid = (BigInt(this.world.random.u32()) << 32n) | BigInt(this.world.random.u32());
    }
    const m: QuorumSimMount = {
      name, slot, node, rid, server: null,
      agent: new QuorumAgent(node.env, node.device(this.watched), {
        fsid: QSIM_FSID, slot, qconf: this.qconf, rid,
        heartbeatTimeoutMs: this.opts.heartbeatTimeoutMs ?? 2000,
        callbacks: {
          startServer: (term) => this.startServer(m, term),
          stopServer: () => this.stopServer(m),
          fence: (prev) => this.fence(m, prev),
        },
      }),
    };
    this.mounts.set(name, m);
    this.byRid.set(rid, m);
    node.spawn("quorum-start", () => m.agent.start());
    return m;
  }

  mountAll(): void {
    for (const name of this.names) this.mount(name);
  }

  /** kill -9 of a node (its server dies with it); restarted later if autoRestartMs is set. */
  crash(name: string, why = "crash"): void {
    const m = this.mounts.get(name);
    if (m === undefined || !m.node.alive) return;
    this.world.log(`quorum sim: ${why} ${name} (rid ${m.rid.toString(16)})`);
    this.world.crash(name);
    m.server = null;
    this.stats.crashes++;
    if (this.autoRestartMs !== null) {
      const [lo, hi] = this.autoRestartMs;
      this.scheduleRestart(name, lo + this.world.random.int(hi - lo + 1));
    }
  }

  /** Restarts a crashed node with a new mount (the restart of a dead mount). */
  restart(name: string, clockSkewMs?: number): QuorumSimMount {
    this.restartPending.delete(name);
    const opts = clockSkewMs === undefined ? {} : { clockSkewMs };
    this.world.restart(name, opts);
    this.stats.restarts++;
    return this.mount(name);
  }

  /** Restarts every crashed node now. */
  restartAllDead(): void {
    for (const name of this.names) if (!this.world.node(name).alive) this.restart(name);
  }

  /** The leader's server stops on its own (a persistent error). */
  failServer(name: string): boolean {
    const m = this.mounts.get(name);
    if (m === undefined || !m.node.alive || m.server?.state !== "up") return false;
    this.world.log(`quorum sim: server of ${name} fails`);
    m.server = null;
    m.agent.serverStopped();
    return true;
  }

  /** A clean unmount, then the process exits (restarted later like a crash). */
  unmount(name: string): void {
    const m = this.mounts.get(name);
    if (m === undefined || !m.node.alive) return;
    this.stats.unmounts++;
    this.world.log(`quorum sim: unmount ${name}`);
    m.node.spawn("unmount", async () => {
      await m.agent.stop();
      this.crash(name, "exit after unmount");
    });
  }

  /** Live mounts whose agent runs. */
  live(): QuorumSimMount[] {
    return [...this.mounts.values()].filter((m) => m.node.alive && m.agent.running);
  }

  /** The one live leader whose server is up, if exactly one. */
  leader(): QuorumSimMount | null {
    const leaders = this.live().filter((m) => m.agent.isLeader && m.server?.state === "up" &&
      m.agent.serverState === "up");
    return leaders.length === 1 ? leaders[0]! : null;
  }

  /** Liveness: every slot's mount runs, one leads with its server up, all follow its term. */
  converged(): boolean {
    const l = this.leader();
    if (l === null || this.live().length !== this.names.length) return false;
    return this.live().every((m) => m === l ||
      (m.agent.term === l.agent.term && m.agent.role === QuorumRole.FOLLOWER));
  }

  /** Fails the run if any agent stopped on an error. */
  checkAgents(): void {
    for (const m of this.mounts.values()) {
      if (m.node.alive && m.agent.failed !== null) {
        this.checker.violation(`agent ${m.name} failed: ${m.agent.failed.stack}`);
      }
    }
  }

  /** What a client would find (read straight from the shared device). */
  readLeader(): Promise<LeaderInfo | null> {
    return readLeader(this.disk, QSIM_FSID, this.qconf);
  }

  private scheduleRestart(name: string, afterMs: number): void {
    if (this.restartPending.has(name)) return;
    this.restartPending.add(name);
    this.world.scheduler.after(afterMs, () => {
      if (!this.restartPending.has(name) || this.world.node(name).alive) return;
      const skew = this.world.random.int(10_001) - 5000;
      this.restart(name, skew);
    }, `restart ${name}`);
  }

  private drawMs(range: readonly [number, number]): number {
    return range[0] + this.world.random.int(range[1] - range[0] + 1);
  }

  private async startServer(m: QuorumSimMount, term: number): Promise<void> {
    this.checker.onServerStart(m, term, [...this.mounts.values()]);
    m.server = { term, state: "starting" };
    await qsimSleep(m.node.env, this.drawMs(QSIM_SERVER_MS));
    if (m.server?.term === term) m.server.state = "up";
  }

  private async stopServer(m: QuorumSimMount): Promise<void> {
    if (m.server !== null) m.server.state = "stopping";
    await qsimSleep(m.node.env, this.drawMs(QSIM_SERVER_MS));
    m.server = null;
  }

  /** The fence agent: kills the rid's process if it still runs; may fail on purpose. */
  private async fence(by: QuorumSimMount, prev: PrevLeader): Promise<void> {
    assert(this.checker.fenceCalls.length < QSIM_MAX_RECORDS, "too many fence calls");
    this.checker.fenceCalls.push({ by: by.name, prev, atMs: this.world.nowMs() });
    const fails = this.world.random.chance(this.fenceFailProbability);
    const victim = this.byRid.get(prev.rid);
    if (!fails && victim !== undefined && victim.node.alive) {
      this.stats.fencedKills++;
      this.crash(victim.name, `fenced by ${by.name}:`);
    }
    await qsimSleep(by.node.env, this.drawMs(QSIM_FENCE_MS));
    if (fails) {
      this.stats.fenceFailures++;
      throw new Error(`simulated failure fencing rid ${prev.rid.toString(16)}`);
    }
    this.checker.fenced.add(prev.rid);
  }
}

/** The quorum chaos run's figures, logged at the end as "quorum: {json}". */
export interface QuorumChaosStats {
  slots: number;
  elections: number;
  serverStarts: number;
  fenceCalls: number;
  crashes: number;
  fencedKills: number;
  restarts: number;
  unmounts: number;
  serverFailures: number;
  partitions: number;
  skews: number;
  fenceFailures: number;
  /** Virtual ms from the final heal to a converged cluster. */
  convergeMs: number;
  finalTerm: number;
}

/** After the final heal, the bound on reaching a single followed leader. */
export function quorumLivenessBoundMs(heartbeatTimeoutMs: number): number {
  return 2 * heartbeatTimeoutMs + 4000;
}

/** Injects one random fault every 100-1000 ms until untilMs. */
async function quorumChaos(c: QuorumSimCluster, untilMs: number,
  counts: { serverFailures: number; partitions: number; skews: number }): Promise<void> {
  const world = c.world;
  const rng = world.random;
  const sleep = (ms: number): Promise<void> => sleepWorld(world, ms);
  while (world.nowMs() < untilMs) {
    await sleep(100 + rng.int(900));
    if (world.nowMs() >= untilMs) break;
    c.checkAgents();
    const a = rng.pick(c.names);
    const others = c.names.filter((n) => n !== a);
    const b = others.length > 0 ? rng.pick(others) : a;
    const leader = c.leader()?.name ?? a;
    switch (rng.int(12)) {
      case 0: if (a !== b) { world.partition(a, b); counts.partitions++; } break;
      case 1: if (a !== b) { world.block(a, b); counts.partitions++; } break;
      case 2: world.isolate(leader); counts.partitions++; break;
      case 3: world.isolate(a); counts.partitions++; break;
      case 4: case 5: world.heal(); break;
      case 6: c.crash(leader); break;
      case 7: c.crash(a); break;
      case 8: if (c.failServer(leader)) counts.serverFailures++; break;
      case 9: c.unmount(rng.chance(0.5) ? leader : a); break;
      case 10: world.node(a).clockSkewMs = rng.int(20_001) - 10_000; counts.skews++; break;
      default: break; // a quiet spell
    }
  }
}

/**
 * Runs a quorum cluster under chaos for durationMs of virtual time, the last part of it the
 * liveness phase; throws on any checker violation. Used by the "quorum" scenario and tests.
 */
export async function runQuorumChaos(world: SimWorld, durationMs: number,
  opts: QuorumSimOptions): Promise<QuorumChaosStats> {
  const hbMs = opts.heartbeatTimeoutMs ?? 2000;
  const bound = quorumLivenessBoundMs(hbMs);
  const healAtMs = durationMs - bound - 2000;
  assert(healAtMs >= 1000, `quorum chaos needs more than ${bound + 3000} ms`);
  const c = await QuorumSimCluster.create(world, opts);
  c.autoRestartMs = [200, 3000];
  c.mountAll();
  const counts = { serverFailures: 0, partitions: 0, skews: 0 };
  world.spawn("quorum-chaos", () => quorumChaos(c, healAtMs, counts));
  await world.runUntil(healAtMs);
  world.heal();
  c.restartAllDead();
  c.autoRestartMs = [200, 1000]; // a mount fenced after the heal comes back too
  world.log("quorum: chaos over, healed and restarted: liveness phase");
  const stableAtMs = await awaitStableLeader(c, healAtMs + bound);
  const convergeMs = stableAtMs - healAtMs;
  const leader = c.leader()!;
  await checkReadLeader(c, leader);
  c.autoRestartMs = null;
  await unmountAll(c);
  return {
    slots: opts.slots, elections: c.checker.elections.length,
    serverStarts: c.checker.serverStarts.length, fenceCalls: c.checker.fenceCalls.length,
    crashes: c.stats.crashes, fencedKills: c.stats.fencedKills, restarts: c.stats.restarts,
    unmounts: c.stats.unmounts, fenceFailures: c.stats.fenceFailures, ...counts, convergeMs,
    finalTerm: leader.agent.term,
  };
}

/** How long a converged cluster must keep the same leader to count as live. */
const QSIM_STABLE_MS = 1000;

/**
 * Liveness: by `deadlineMs` the cluster must have converged (converged()) and stayed so,
 * with the same leader, for QSIM_STABLE_MS. Returns when that stable period began.
 */
async function awaitStableLeader(c: QuorumSimCluster, deadlineMs: number): Promise<number> {
  const world = c.world;
  for (;;) {
    await world.runUntil(() => c.converged() || world.nowMs() >= deadlineMs);
    c.checkAgents();
    assert(c.converged(), `quorum liveness: no single followed leader by ${deadlineMs} ms ` +
      `(${describeQuorum(c)})`);
    const since = world.nowMs();
    const leader = c.leader();
    const stableUntil = since + QSIM_STABLE_MS;
    assert(stableUntil <= deadlineMs, `quorum liveness: leadership not stable for ` +
      `${QSIM_STABLE_MS} ms by ${deadlineMs} ms (${describeQuorum(c)})`);
    await world.runUntil(() => !c.converged() || c.leader() !== leader ||
      world.nowMs() >= stableUntil);
    if (c.converged() && c.leader() === leader) return since;
  }
}

/** A client finds the current leader's slot, term and address. */
async function checkReadLeader(c: QuorumSimCluster, leader: QuorumSimMount): Promise<void> {
  const found = await c.world.settle(c.readLeader());
  assert(found !== null && found.slot === leader.slot && found.term === leader.agent.term &&
    found.rid === leader.rid && found.addr.addr === leader.node.addr &&
    found.addr.port === QSIM_PORT,
  `readLeader: ${JSON.stringify(found, (_, v: unknown) => typeof v === "bigint" ? String(v) : v)}` +
    ` but ${leader.name} leads term ${leader.agent.term}`);
}

/** Everyone unmounts cleanly: afterwards no leader is recorded and no server runs. */
async function unmountAll(c: QuorumSimCluster): Promise<void> {
  const stops = c.live().map((m) => m.agent.stop());
  await c.world.settle(Promise.all(stops));
  c.checkAgents();
  for (const m of c.mounts.values()) {
    assert(!m.node.alive || m.server === null, `${m.name}: server still running after unmount`);
  }
  const found = await c.world.settle(c.readLeader());
  assert(found === null, `a leader is still recorded after every mount unmounted: slot ` +
    `${found?.slot} term ${found?.term}`);
}

function describeQuorum(c: QuorumSimCluster): string {
  return [...c.mounts.values()].map((m) => `${m.name}:${m.node.alive ? "" : "dead,"}` +
    `${m.agent.running ? "" : "stopped,"}role ${m.agent.role} term ${m.agent.term} ` +
    `server ${m.agent.serverState}/${m.server?.state ?? "none"}`).join("; ");
}

const QUORUM_SCENARIO_SLOTS = [1, 2, 3, 5] as const;

registerScenario({
  name: "quorum",
  description: "quorum election among 1, 2, 3 or 5 slots (drawn from the seed) under " +
    "datagram faults, partitions, crashes, server failures, unmounts and clock steps; " +
    "checks one leader per term, terms never going back, fencing before a server starts, " +
    "then liveness and readLeader after healing",
  defaultDurationMs: 40_000,
  faults: { delayMinMs: 0.2, delayMaxMs: 20, datagramLossProbability: 0.1,
    datagramDuplicateProbability: 0.05 },
  run: async ({ world, durationMs }) => {
    const slots = world.random.pick(QUORUM_SCENARIO_SLOTS);
    world.log(`quorum: ${slots} slots`);
    const stats = await runQuorumChaos(world, durationMs,
      { slots, fenceFailProbability: 0.1 });
    world.log(`quorum: ${JSON.stringify(stats)}`);
  },
});
// END quorum block
// =======================================================================================

// =======================================================================================
// BEGIN locks block: the cluster lock protocol (src/core/lock.ts, lock_server.ts) over the
// reliable messaging, with server failovers and network faults; the workload and its
// checkers (no conflicting grants, linearizable registers, write_seq order, recovery before
// grants, liveness after healing) live in src/sim/lock_workload.ts. Mounts: 2..5 by seed.
// =======================================================================================

import { LOCK_WORKLOAD_FAULTS, runLockWorkload } from "./lock_workload.js";

/** Virtual time per server failover in the locks scenario. */
const LOCKS_MS_PER_FAILOVER = 8_000;

registerScenario({
  name: "locks",
  description: "2-5 mounts read and write registers, deltas and index items under cluster " +
    "locks while connections are cut, links partitioned and the lock server fails over",
  defaultDurationMs: 16_000,
  faults: LOCK_WORKLOAD_FAULTS,
  run: async ({ world, durationMs }) => {
    assert(durationMs >= 2_000, "locks needs at least 2000 ms");
    const report = await runLockWorkload(world, {
      mounts: 2 + Number(world.seed % 4n), workersPerMount: 3, chaosMs: durationMs,
      failovers: Math.max(1, Math.floor(durationMs / LOCKS_MS_PER_FAILOVER)), netChaos: true,
    });
    world.log(`locks: ${JSON.stringify(report)}`);
  },
});
// END locks block
// =======================================================================================
