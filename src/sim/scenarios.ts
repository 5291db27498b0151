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
