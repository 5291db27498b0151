/*
 * Goal: over the deterministic simulated network, with chunk splitting and merging, random
 * connection cuts (mid-message), delays, symmetric and asymmetric partitions shorter than
 * the server's reconnect timeout, every request and every response between a NetServer and
 * several NetClients is processed exactly once per client/server pair; after a crash of the
 * server and a restart with a new term, every client request still completes exactly once
 * from the caller's view and is applied at most once by each server.
 *
 * Method: one SimWorld per fixed seed with a server node and three client nodes. Clients
 * run sequential request loops (numbered payloads of random sizes); the server runs loops of
 * requests to each client. Handlers count every invocation by (rid, number) and answer with a
 * payload derived from the request, which the caller checks. A chaos task cuts connections
 * and partitions links during the safety phase; then everything heals and the liveness phase
 * must complete all work. Counters must show the faults were real (reconnects, resends) and
 * that nothing was refused, fenced or malformed. Server crashes restart it with a new term
 * (clients resend, each server applies a request at most once); a client partitioned longer
 * than the reconnect timeout is dropped and reported, then refused with ENOLINK while the
 * others carry on; one seed is run twice and must give the same run digest.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { NetCmd } from "../../src/core/msg.js";
import { NetClient, NetServer, type NetTuning } from "../../src/core/net.js";
import type { Env, NetAddr } from "../../src/env/env.js";
import { SimWorld, type SimNode } from "../../src/sim/env.js";
import { Counters } from "../../src/util/counters.js";

const FSID = 0xfeed_5c00n;
const FMT = 2;
const PORT = 7000;
const CLIENTS = ["c1", "c2", "c3"] as const;
const TUNING: Partial<NetTuning> = {
  keepaliveTimeoutMs: 3_000, keepaliveIntervalMs: 500, greetingTimeoutMs: 3_000,
  clientReconnectTimeoutMs: 20_000, reconnectMaxMs: 500,
};
const FAULTS = {
  delayMinMs: 0.05, delayMaxMs: 3, streamSplitProbability: 0.4,
  streamCoalesceProbability: 0.3, streamCutProbability: 0.002, resetNoticeMaxMs: 200,
  streamBreakAfterMs: 6_000,
};
const SAFETY_MS = 30_000;
const THINK_MAX_MS = 400;
/** Requests per worker loop: with the think time, the loops outlast the fault phase. */
const PER_WORKER = 150;
const CRASH_PER_WORKER = 100;

function ridOf(name: string): bigint {
  return 0x1000n + BigInt(CLIENTS.indexOf(name as (typeof CLIENTS)[number]) + 1);
}

function delay(env: Env, ms: number): Promise<void> {
  return new Promise((resolve) => env.timers.after(ms, resolve));
}

function payload(env: Env, n: number): Buffer {
  const b = Buffer.alloc(8 + (env.random.u32() % 3000));
  b.writeUInt32LE(n, 0);
  return b;
}

function answer(tag: string, p: Buffer): string {
  return `${tag}:${p.readUInt32LE(0)}:${p.length}`;
}

/** Counts invocations by key and answers after a short random delay. */
function handler(env: Env, seen: Map<string, number>, tag: string, rid: () => bigint) {
  return async (p: Buffer): Promise<Buffer> => {
    const key = `${rid().toString(16)}/${p.readUInt32LE(0)}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
    await delay(env, env.random.u32() % 30);
    return Buffer.from(answer(tag, p));
  };
}

interface Work {
  done: number;
  failures: string[];
}

/** Sequential request loops; each answer is compared with what its request asked. */
function loops(env: Env, world: SimWorld, work: Work, base: number, workers: number,
  perWorker: number, tag: string, send: (p: Buffer) => Promise<Buffer>): void {
  for (let wk = 0; wk < workers; wk++) {
    world.spawn(`${tag}-${base}-${wk}`, async () => {
      for (let i = 0; i < perWorker; i++) {
        // Think time spreads the work over the whole fault phase.
        await delay(env, env.random.u32() % THINK_MAX_MS);
        const p = payload(env, base + wk * perWorker + i);
        try {
          const r = (await send(p)).toString();
          if (r !== answer(tag, p)) work.failures.push(`${r} != ${answer(tag, p)}`);
        } catch (e) {
          work.failures.push(String(e));
        }
        work.done++;
      }
    });
  }
}

function startServer(node: SimNode, term: number, seen: Map<string, number>,
  counters: Counters, onClientTimeout?: (rid: bigint) => void): NetServer {
  const server = new NetServer(node.env, counters, { fsid: FSID, fmtVers: FMT, serverTerm: term,
    tuning: TUNING, name: `server term ${term}`, onClientTimeout });
  let current = 0n;
  const h = handler(node.env, seen, "s", () => current);
  for (const cmd of [NetCmd.GET_ROOTS, NetCmd.GET_LAST_SEQ]) {
    server.register(cmd, (p, peer) => {
      current = peer.rid;
      return h(p);
    });
  }
  node.spawn("listen", async () => {
    await server.listen({ addr: node.addr, port: PORT });
  });
  return server;
}

function startClient(node: SimNode, serverAddr: NetAddr, seen: Map<string, number>,
  counters: Counters, onSessionLost?: (e: Error) => void): NetClient {
  const rid = ridOf(node.name);
  const client = new NetClient(node.env, counters, { fsid: FSID, fmtVers: FMT, rid,
    quorum: false, getServerAddr: () => Promise.resolve(serverAddr), tuning: TUNING,
    name: `client ${node.name}`, onSessionLost });
  client.register(NetCmd.LOCK, handler(node.env, seen, "c", () => rid));
  client.start();
  return client;
}

/** Cuts connections and partitions links at random until endMs. */
function chaos(world: SimWorld, endMs: number): { cuts: number; partitions: number } {
  const stats = { cuts: 0, partitions: 0 };
  const r = world.random.fork();
  world.spawn("chaos", async () => {
    while (world.nowMs() < endMs) {
      await new Promise<void>((res) => world.scheduler.after(20 + r.int(300), res));
      const conns = world.net.connections();
      if (r.chance(0.75) && conns.length > 0) {
        world.net.cut(r.pick(conns));
        stats.cuts++;
      } else if (r.chance(0.5)) {
        const c = r.pick(CLIENTS);
        if (r.chance(0.5)) world.partition("server", c);
        else if (r.chance(0.5)) world.block("server", c);
        else world.block(c, "server");
        stats.partitions++;
        // Shorter than the reconnect timeout: the server must keep the client's state.
        await new Promise<void>((res) => world.scheduler.after(200 + r.int(5_000), res));
        world.heal();
      }
    }
    world.heal();
  });
  return stats;
}

function checkOnce(seen: Map<string, number>, expected: number, what: string): void {
  assert.equal(seen.size, expected, `${what}: every request processed`);
  for (const [k, v] of seen) assert.equal(v, 1, `${what}: ${k} processed ${v} times`);
}

/** One run of the cuts-and-partitions workload with its checks; returns the run's digest. */
async function cutsAndPartitions(seed: number): Promise<string> {
  const world = new SimWorld({ seed, faults: FAULTS });
  const serverNode = world.addNode("server");
  const serverAddr = { addr: serverNode.addr, port: PORT };
  const seenServer = new Map<string, number>();
  const seenClients = new Map<string, number>();
  const sc = new Counters();
  const cc = new Counters();
  const server = startServer(serverNode, 1, seenServer, sc);
  const work: Work = { done: 0, failures: [] };
  for (const name of CLIENTS) {
    const node = world.addNode(name);
    const client = startClient(node, serverAddr, seenClients, cc);
    loops(node.env, world, work, 0, 4, PER_WORKER, "s", (p) =>
      client.request(p.readUInt32LE(0) % 2 ? NetCmd.GET_ROOTS : NetCmd.GET_LAST_SEQ, p));
    loops(serverNode.env, world, work, 0, 3, PER_WORKER, "c", async (p) => {
      // The server can address a client once it has greeted.
      while (!server.connection(ridOf(name))) await delay(serverNode.env, 10);
      return server.request(ridOf(name), NetCmd.LOCK, p);
    });
  }
  const stats = chaos(world, SAFETY_MS);
  const total = CLIENTS.length * 7 * PER_WORKER;
  const r = await world.runUntil(() => work.done === total && world.nowMs() > SAFETY_MS,
    { maxEvents: 20_000_000 });
  assert.equal(r.stop, "predicate", `run stopped: ${r.stop} at ${r.nowMs} ms`);
  assert.deepEqual(work.failures, []);
  checkOnce(seenServer, CLIENTS.length * 4 * PER_WORKER, "client requests");
  checkOnce(seenClients, CLIENTS.length * 3 * PER_WORKER, "server requests");
  assert.ok(stats.cuts + stats.partitions > 20, JSON.stringify(stats));
  assert.ok(cc.get("net_reconnects") > 20, "clients reattached");
  assert.ok(cc.get("net_resent") + sc.get("net_resent") > 20, "unacknowledged frames resent");
  for (const c of ["net_protocol_errors", "net_frames_malformed", "net_frames_foreign",
    "net_sessions_lost", "net_new_server", "net_greetings_refused"] as const) {
    assert.equal(sc.get(c) + cc.get(c), 0, c);
  }
  assert.equal(sc.get("net_client_timeouts"), 0);
  assert.equal(server.clientRids().length, CLIENTS.length);
  return world.digest();
}

for (let seed = 1; seed <= 24; seed++) {
  test(`exactly once under cuts and partitions (seed ${seed})`, async () => {
    await cutsAndPartitions(seed);
  });
}

test("a run replays bit for bit from its seed (the net layer uses only its Env)", async () => {
  assert.equal(await cutsAndPartitions(5), await cutsAndPartitions(5));
});

for (const seed of [101, 102, 103, 104]) {
  test(`server crashes and restarts with new terms (seed ${seed})`, async () => {
    const world = new SimWorld({ seed, faults: FAULTS });
    let serverNode = world.addNode("server");
    const serverAddr = { addr: serverNode.addr, port: PORT };
    const seen = [new Map<string, number>()];
    startServer(serverNode, 1, seen[0]!, new Counters());
    const cc = new Counters();
    const work: Work = { done: 0, failures: [] };
    for (const name of CLIENTS) {
      const node = world.addNode(name);
      const client = startClient(node, serverAddr, new Map(), cc);
      loops(node.env, world, work, 0, 6, CRASH_PER_WORKER, "s",
        (p) => client.request(NetCmd.GET_ROOTS, p));
    }
    const r = world.random.fork();
    let crashesDone = false;
    world.spawn("crashes", async () => {
      for (let term = 2; term <= 4; term++) {
        await new Promise<void>((res) => world.scheduler.after(2_000 + r.int(3_000), res));
        world.crash("server");
        await new Promise<void>((res) => world.scheduler.after(r.int(3_000), res));
        serverNode = world.restart("server");
        seen.push(new Map());
        startServer(serverNode, term, seen[seen.length - 1]!, new Counters());
      }
      crashesDone = true;
    });
    const total = CLIENTS.length * 6 * CRASH_PER_WORKER;
    const res = await world.runUntil(() => work.done === total && crashesDone,
      { maxEvents: 20_000_000 });
    assert.equal(res.stop, "predicate", `run stopped: ${res.stop} at ${res.nowMs} ms`);
    assert.deepEqual(work.failures, [], "every request completed once, with its own answer");
    let reapplied = 0;
    for (const name of CLIENTS) {
      for (let n = 0; n < 6 * CRASH_PER_WORKER; n++) {
        const key = `${ridOf(name).toString(16)}/${n}`;
        const counts = seen.map((m) => m.get(key) ?? 0);
        assert.ok(counts.every((c) => c <= 1), `${key} at most once per server: ${counts}`);
        assert.ok(counts.some((c) => c === 1), `${key} processed`);
        if (counts.filter((c) => c === 1).length > 1) reapplied++;
      }
    }
    assert.equal(seen.length, 4);
    assert.ok(cc.get("net_new_server") >= CLIENTS.length, "clients followed the new terms");
    // Requests a dead server had applied without its answer reaching the client are applied
    // again by the next one: the handlers' idempotence is what makes that safe.
    world.log(`requests applied by two servers: ${reapplied}`);
  });
}

test("a client partitioned beyond the reconnect timeout is dropped, then refused", async () => {
  const world = new SimWorld({ seed: 201, faults: FAULTS });
  const serverNode = world.addNode("server");
  const serverAddr = { addr: serverNode.addr, port: PORT };
  const timedOut: bigint[] = [];
  const sc = new Counters();
  startServer(serverNode, 1, new Map(), sc, (rid) => timedOut.push(rid));
  const lost: string[] = [];
  const work: Work = { done: 0, failures: [] };
  const clients = new Map<string, NetClient>();
  for (const name of CLIENTS) {
    const node = world.addNode(name);
    const client = startClient(node, serverAddr, new Map(), new Counters(),
      (e) => lost.push(`${name} ${e.message}`));
    clients.set(name, client);
    if (name !== "c1") {
      loops(node.env, world, work, 0, 2, 100, "s", (p) => client.request(NetCmd.GET_ROOTS, p));
    }
  }
  await world.runUntil(() => clients.get("c1")!.connected);
  world.partition("server", "c1");
  const c1 = clients.get("c1")!;
  let c1Error: unknown;
  c1.request(NetCmd.GET_ROOTS, Buffer.alloc(8)).catch((e: unknown) => {
    c1Error = e;
  });
  await world.runFor(26_000);
  assert.deepEqual(timedOut, [ridOf("c1")], "dropped after the reconnect timeout");
  world.heal();
  const res = await world.runUntil(() => lost.length > 0 && work.done === 2 * 2 * 100,
    { maxEvents: 20_000_000 });
  assert.equal(res.stop, "predicate");
  assert.equal(lost.length, 1);
  assert.match(lost[0]!, /^c1 ENOLINK/);
  assert.match(String(c1Error), /ENOLINK/);
  assert.deepEqual(work.failures, [], "the other clients were unaffected");
  assert.equal(sc.get("net_client_timeouts"), 1);
});
