/*
 * Goal: the reliable connection layer delivers every request and every response exactly once
 * per client/server pair across any number of broken sockets, resends to a new server term,
 * refuses foreign or malformed peers without harm, forgets departed clients, drops and
 * reports clients that do not come back, and keeps every queue within its bound.
 *
 * Method: a tiny deterministic in-memory world (a manual clock, a timer queue and a stream
 * network that splits writes into random pieces with random latency and can cut a
 * connection mid-piece, defined at the bottom of this file) runs a NetServer and NetClients
 * from fixed seeds. Handlers count every invocation by request number; the test compares the
 * counts and each response with what the request asked for. Raw peers that write frames by
 * hand exercise duplicates, gaps, bad acks, over-limit requests and foreign frames.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  encodeGreeting, encodeMsg, FrameReader, GreetingFlag, type Msg, MSG_MAX_DATA_LEN, MsgFlag,
  NetCmd, wireErrorOf, WIRE_OK,
} from "../../src/core/msg.js";
import {
  MAX_OUTSTANDING_PER_CMD, MAX_REQUEST_WAITERS, MAX_RESEND_QUEUE, NetClient,
  type NetClientOptions, NetServer, type NetServerOptions, type NetTuning,
} from "../../src/core/net.js";
import type {
  Clock, DatagramSocket, Env, LogLevel, NetAddr, Network, StreamConnection, StreamListener,
  TimerHandle, Timers,
} from "../../src/env/env.js";
import { Counters } from "../../src/util/counters.js";
import { FsError, isFsError } from "../../src/util/errno.js";
import { SimRandom } from "../../src/sim/random.js";

const FSID = 0x5c00_7f5n;
const FMT = 2;
const ADDR: NetAddr = { addr: "10.0.0.1", port: 7000 };
const TUNING: Partial<NetTuning> = {
  keepaliveTimeoutMs: 2_000, keepaliveIntervalMs: 200, greetingTimeoutMs: 2_000,
  clientReconnectTimeoutMs: 5_000, reconnectMaxMs: 200,
};

interface Tracked<T> {
  done: boolean;
  value?: T;
  error?: unknown;
}

function track<T>(p: Promise<T>): Tracked<T> {
  const r: Tracked<T> = { done: false };
  p.then((v) => {
    r.done = true;
    r.value = v;
  }, (e: unknown) => {
    r.done = true;
    r.error = e;
  });
  return r;
}

function delay(env: Env, ms: number): Promise<void> {
  return new Promise((resolve) => env.timers.after(ms, resolve));
}

async function startServer(w: FakeWorld, counters: Counters, term: number,
  opts: Partial<NetServerOptions> = {}): Promise<NetServer> {
  const s = new NetServer(w.env(`server${term}`), counters, { fsid: FSID, fmtVers: FMT,
    serverTerm: term, tuning: TUNING, ...opts });
  const p = track(s.listen(ADDR));
  await w.runUntil(() => p.done, w.now + 10);
  return s;
}

function makeClient(w: FakeWorld, counters: Counters, rid: bigint,
  opts: Partial<NetClientOptions> = {}): NetClient {
  return new NetClient(w.env(`client${rid}`), counters, { fsid: FSID, fmtVers: FMT, rid,
    quorum: false, getServerAddr: () => Promise.resolve(ADDR), tuning: TUNING, ...opts });
}

/** A request payload: its number, then filler so frames span several pieces. */
function payload(n: number, w: FakeWorld, maxFill = 3000): Buffer {
  const b = Buffer.alloc(4 + w.random.int(maxFill + 1));
  b.writeUInt32LE(n, 0);
  return b;
}

function answerFor(p: Buffer, tag: string): Buffer {
  return Buffer.from(`${tag}:${p.readUInt32LE(0)}:${p.length}`);
}

test("requests, responses and handler errors map to the requester's FsError", async () => {
  const w = new FakeWorld(1);
  const sc = new Counters();
  const cc = new Counters();
  const server = await startServer(w, sc, 1);
  server.register(NetCmd.STATFS, (p) => answerFor(p, "statfs"));
  server.register(NetCmd.ALLOC_INODES, () => {
    throw new FsError("ENOSPC");
  });
  server.register(NetCmd.GET_VOLOPT, () => Promise.reject(new FsError("EXDEV")));
  server.register(NetCmd.SET_VOLOPT, () => {
    throw new TypeError("handler bug");
  });
  server.register(NetCmd.RESIZE_DEVICES, () => Buffer.alloc(MSG_MAX_DATA_LEN + 1));
  const client = makeClient(w, cc, 7n);
  client.register(NetCmd.LOCK, async (p, peer) => {
    assert.equal(peer.rid, 7n);
    await delay(w.env("x"), 3);
    return answerFor(p, "lock");
  });
  client.start();
  const ok = track(client.request(NetCmd.STATFS, payload(1, w)));
  const errs = [NetCmd.ALLOC_INODES, NetCmd.GET_VOLOPT, NetCmd.SET_VOLOPT,
    NetCmd.RESIZE_DEVICES, NetCmd.GET_ROOTS].map((c) => track(client.request(c, Buffer.alloc(0))));
  await w.runUntil(() => ok.done && errs.every((e) => e.done), 1_000);
  assert.match(ok.value!.toString(), /^statfs:1:/);
  const codes = errs.map((e) => (isFsError(e.error) ? e.error.code : String(e.error)));
  assert.deepEqual(codes, ["ENOSPC", "EIO", "EIO", "EIO", "EOPNOTSUPP"]);
  assert.equal(sc.get("net_handler_errors"), 2);
  assert.equal(sc.get("net_handler_bugs"), 2, "the TypeError and the oversize response");
  assert.equal(sc.get("net_unhandled_cmds"), 1);
  assert.ok(w.logs.some((l) => l.includes("handler bug")), "a handler bug is logged");

  const fromServer = track(server.request(7n, NetCmd.LOCK, payload(9, w)));
  await w.runUntil(() => fromServer.done, 2_000);
  assert.match(fromServer.value!.toString(), /^lock:9:/);
  const nobody = track(server.request(8n, NetCmd.LOCK, Buffer.alloc(0)));
  await w.runUntil(() => nobody.done, 2_100);
  assert.ok(isFsError(nobody.error, "ENOTCONN"));
  assert.equal(client.serverTerm, 1);
  assert.equal(server.connection(7n)?.greeting?.rid, 7n);
  client.shutdown();
  server.shutdown();
});

/** Counts handler invocations by request number and answers with a checkable payload. */
function countingHandler(env: Env, seen: Map<number, number>, tag: string, maxDelayMs: number) {
  return async (p: Buffer): Promise<Buffer> => {
    const n = p.readUInt32LE(0);
    seen.set(n, (seen.get(n) ?? 0) + 1);
    if (maxDelayMs > 0) await delay(env, env.random.u32() % (maxDelayMs + 1));
    return answerFor(p, tag);
  };
}

/** Runs `workers` sequential request loops; each result is checked against its request. */
function requestLoops(w: FakeWorld, send: (p: Buffer) => Promise<Buffer>, base: number,
  workers: number, perWorker: number, tag: string): Tracked<number> {
  const run = async (wk: number): Promise<number> => {
    let okCount = 0;
    for (let i = 0; i < perWorker; i++) {
      const p = payload(base + wk * perWorker + i, w);
      const r = await send(p);
      assert.equal(r.toString(), answerFor(p, tag).toString());
      okCount++;
    }
    return okCount;
  };
  return track(Promise.all(Array.from({ length: workers }, (_, i) => run(i)))
    .then((counts) => counts.reduce((a, b) => a + b, 0)));
}

function assertExactlyOnce(seen: Map<number, number>, base: number, n: number): void {
  assert.equal(seen.size, n, "every request was processed");
  for (let i = base; i < base + n; i++) assert.equal(seen.get(i), 1, `request ${i} once`);
}

/** Cuts a random connection every 2..30 ms until endMs. */
function injectCuts(w: FakeWorld, endMs: number): { cuts: number } {
  const stats = { cuts: 0 };
  const tick = (): void => {
    if (w.now >= endMs) return;
    if (w.net.cutRandom()) stats.cuts++;
    w.timers.after(2 + w.random.int(29), tick);
  };
  w.timers.after(5, tick);
  return stats;
}

/** Piece sizes per seed: small pieces split every frame, large ones carry several. */
const CHUNKS = new Map([[11, 700], [12, 64], [13, 5000]]);
for (const [seed, maxChunk] of CHUNKS) {
  test(`exactly once both ways across many cuts (seed ${seed}, pieces ${maxChunk})`, async () => {
    const w = new FakeWorld(seed);
    w.net.maxChunk = maxChunk;
    const sc = new Counters();
    const cc = new Counters();
    const server = await startServer(w, sc, 3);
    const seenServer = new Map<number, number>();
    const seenClient = new Map<number, number>();
    for (const cmd of [NetCmd.GET_ROOTS, NetCmd.STATFS]) {
      server.register(cmd, countingHandler(w.env("h"), seenServer, "s", 20));
    }
    const client = makeClient(w, cc, 0x77n);
    client.register(NetCmd.LOCK, countingHandler(w.env("h"), seenClient, "c", 20));
    client.start();
    const cuts = injectCuts(w, 3_000);
    const up = requestLoops(w, (p) => client.request(
      p.readUInt32LE(0) % 2 ? NetCmd.GET_ROOTS : NetCmd.STATFS, p), 0, 30, 40, "s");
    await w.runUntil(() => server.clientRids().length === 1, 1_000);
    const down = requestLoops(w, (p) => server.request(0x77n, NetCmd.LOCK, p), 100_000, 10, 40,
      "c");
    await w.runUntil(() => up.done && down.done, 60_000);
    assert.equal(up.error, undefined, String(up.error));
    assert.equal(down.error, undefined, String(down.error));
    assert.equal(up.value, 1200);
    assertExactlyOnce(seenServer, 0, 1200);
    assertExactlyOnce(seenClient, 100_000, 400);
    assert.ok(cuts.cuts > 30, `cuts ${cuts.cuts}`);
    assert.ok(cc.get("net_reconnects") > 10, "the client reattached many times");
    assert.ok(cc.get("net_resent") + sc.get("net_resent") > 0, "unacknowledged frames resent");
    // A cut that loses the first greeting response makes the server reset the new state
    // once more; later greetings all carry term 3 and reattach.
    assert.equal(cc.get("net_new_server"), 0);
    assert.equal(client.serverTerm, 3);
    assert.equal(sc.get("net_client_timeouts"), 0);
    assert.equal(sc.get("net_protocol_errors") + cc.get("net_protocol_errors"), 0);
    assert.equal(cc.get("net_responses_stale"), 0);
    // Quiet now: acks drain both resend queues.
    await w.runFor(1_000);
    assert.equal(client.conn.resendCount, 0);
    assert.equal(server.connection(0x77n)!.resendCount, 0);
    assert.equal(client.conn.pendingCount, 0);
    client.shutdown();
    server.shutdown();
  });
}

test("a new server term: responses for the old one dropped, requests resent", async () => {
  const w = new FakeWorld(21);
  const cc = new Counters();
  const seenA = new Map<number, number>();
  const seenB = new Map<number, number>();
  const seenClient = new Map<number, number>();
  const serverA = await startServer(w, new Counters(), 5);
  serverA.register(NetCmd.GET_ROOTS, countingHandler(w.env("a"), seenA, "s", 300));
  const terms: [number, boolean][] = [];
  const client = makeClient(w, cc, 0x99n, { onConnected: (t, n) => terms.push([t, n]) });
  client.register(NetCmd.LOCK, countingHandler(w.env("c"), seenClient, "c", 400));
  client.start();
  const up = Array.from({ length: 100 }, (_, i) => {
    const p = payload(i, w);
    return { p, t: track(client.request(NetCmd.GET_ROOTS, p)) };
  });
  await w.runUntil(() => serverA.clientRids().length === 1, 100);
  const down = Array.from({ length: 20 }, (_, i) =>
    track(serverA.request(0x99n, NetCmd.LOCK, payload(1000 + i, w))));
  await w.runFor(150);
  const answeredByA = up.filter((u) => u.t.done).length;
  assert.ok(answeredByA > 0 && answeredByA < 100, `A answered ${answeredByA} before dying`);
  serverA.shutdown();
  w.net.cutAll();
  await w.runFor(50);
  assert.ok(down.every((d) => d.done && (d.error === undefined || isFsError(d.error, "ECANCELED"))),
    "requests of a server that shut down are cancelled");
  const serverB = await startServer(w, new Counters(), 6);
  serverB.register(NetCmd.GET_ROOTS, countingHandler(w.env("b"), seenB, "s", 30));
  await w.runUntil(() => up.every((u) => u.t.done), 20_000);
  for (const u of up) {
    assert.equal(u.t.error, undefined);
    assert.equal(u.t.value!.toString(), answerFor(u.p, "s").toString());
  }
  let reapplied = 0;
  for (let i = 0; i < 100; i++) {
    const a = seenA.get(i) ?? 0;
    const b = seenB.get(i) ?? 0;
    assert.ok(a <= 1 && b <= 1 && a + b >= 1, `request ${i}: A ${a} B ${b}`);
    if (a === 1 && b === 1) reapplied++;
  }
  assert.ok(reapplied > 0, "requests whose answer A never sent were applied again by B");
  assert.equal(client.serverTerm, 6);
  assert.equal(cc.get("net_new_server"), 1);
  assert.ok(cc.get("net_responses_stale") > 0, "client answers meant for A were dropped");
  assert.deepEqual(terms.filter(([, n]) => n), [[5, true], [6, true]], "one new server each");
  client.shutdown();
  serverB.shutdown();
});

test("a client of another volume or format is refused and counted; others unharmed",
  async () => {
    const w = new FakeWorld(31);
    const sc = new Counters();
    const server = await startServer(w, sc, 1);
    server.register(NetCmd.STATFS, (p) => answerFor(p, "s"));
    const good = makeClient(w, new Counters(), 1n);
    good.start();
    const foreignCounters = new Counters();
    const foreign = makeClient(w, foreignCounters, 2n, { fsid: FSID + 1n });
    foreign.start();
    const oldCounters = new Counters();
    const old = makeClient(w, oldCounters, 3n, { fmtVers: FMT - 1 });
    old.start();
    const pending = track(foreign.request(NetCmd.STATFS, payload(5, w)));
    await w.runFor(2_000);
    assert.ok(sc.get("net_frames_foreign") >= 2, "foreign greetings counted, retried");
    assert.ok(sc.get("net_greetings_refused") >= 2, "old format refused");
    assert.ok(oldCounters.get("net_greetings_refused") >= 2);
    assert.deepEqual(server.clientRids(), [1n]);
    assert.equal(pending.done, false, "the foreign client keeps waiting, harmlessly");
    assert.equal(foreign.connected || old.connected, false);
    const r = track(good.request(NetCmd.STATFS, payload(6, w)));
    await w.runUntil(() => r.done, w.now + 100);
    assert.match(r.value!.toString(), /^s:6:/);
    foreign.shutdown();
    await w.runFor(1);
    assert.ok(isFsError(pending.error, "ECANCELED"));
    for (const c of [good, old]) c.shutdown();
    server.shutdown();
  });

test("farewell forgets the client, also when its response is cut", async () => {
  for (const cutResponse of [false, true]) {
    const w = new FakeWorld(cutResponse ? 42 : 41);
    const sc = new Counters();
    const cc = new Counters();
    const gone: bigint[] = [];
    const timedOut: bigint[] = [];
    const server = await startServer(w, sc, 1, {
      onFarewell: (rid) => gone.push(rid), onClientTimeout: (rid) => timedOut.push(rid) });
    let farewells = 0;
    server.register(NetCmd.FAREWELL, () => {
      farewells++;
      if (cutResponse && farewells === 1) w.timers.after(0, () => w.net.cutAll());
      return Buffer.alloc(0);
    });
    const client = makeClient(w, cc, 0x42n, { quorum: true });
    client.start();
    await w.runUntil(() => client.connected, 100);
    assert.equal(server.connection(0x42n)!.greeting!.flags, GreetingFlag.QUORUM);
    const bye = track(client.farewell());
    await w.runUntil(() => bye.done && gone.length > 0, 1_000);
    assert.equal(bye.error, undefined);
    assert.deepEqual(gone, [0x42n]);
    assert.equal(farewells, 1, "the farewell is processed once");
    assert.deepEqual(server.clientRids(), []);
    if (cutResponse) assert.ok(cc.get("net_reconnects") >= 1, "farewell response resent");
    await w.runFor(10_000);
    assert.deepEqual(timedOut, [], "a departed client is not fenced");
    const after = track(client.request(NetCmd.STATFS, Buffer.alloc(0)));
    await w.runFor(1);
    assert.ok(isFsError(after.error, "ECANCELED"));
    assert.equal(sc.get("net_farewells"), 1);
    server.shutdown();
  }
});

test("a client that does not return in time is dropped, reported, and then refused",
  async () => {
    const w = new FakeWorld(51);
    const sc = new Counters();
    const cc = new Counters();
    const timedOut: bigint[] = [];
    const lost: FsError[] = [];
    const server = await startServer(w, sc, 4, { onClientTimeout: (rid) => timedOut.push(rid) });
    server.register(NetCmd.STATFS, (p) => answerFor(p, "s"));
    const client = makeClient(w, cc, 0x51n, { onSessionLost: (e) => lost.push(e) });
    client.start();
    await w.runUntil(() => client.connected, 100);
    w.net.refuse = true;
    w.net.cutAll();
    const toClient = track(server.request(0x51n, NetCmd.LOCK, Buffer.alloc(1)));
    const toServer = track(client.request(NetCmd.STATFS, payload(1, w)));
    await w.runFor(4_000);
    assert.deepEqual(timedOut, [], "state kept within the reconnect timeout");
    await w.runFor(1_100);
    assert.deepEqual(timedOut, [0x51n]);
    assert.ok(isFsError(toClient.error, "ENOTCONN"));
    assert.deepEqual(server.clientRids(), []);
    assert.equal(sc.get("net_client_timeouts"), 1);
    w.net.refuse = false;
    await w.runUntil(() => lost.length > 0, w.now + 1_000);
    assert.equal(lost[0]!.code, "ENOLINK");
    assert.ok(isFsError(toServer.error, "ENOLINK"), "pending requests fail with the session");
    const greetings = cc.get("net_greetings_sent");
    await w.runFor(2_000);
    assert.equal(cc.get("net_greetings_sent"), greetings, "a lost client stops reconnecting");
    server.shutdown();
  });

test("back-pressure: per-cmd outstanding bound, waiter bound, cancellation", async () => {
  const w = new FakeWorld(61);
  const sc = new Counters();
  const cc = new Counters();
  const server = await startServer(w, sc, 1);
  const gates: (() => void)[] = [];
  let started = 0;
  server.register(NetCmd.STATFS, async (p) => {
    started++;
    await new Promise<void>((resolve) => gates.push(resolve));
    return answerFor(p, "s");
  });
  server.register(NetCmd.GET_ROOTS, (p) => answerFor(p, "r"));
  const client = makeClient(w, cc, 0x61n);
  client.start();
  const extra = 50;
  const all = Array.from({ length: MAX_OUTSTANDING_PER_CMD + extra },
    (_, i) => track(client.request(NetCmd.STATFS, payload(i, w, 10))));
  const other = track(client.request(NetCmd.GET_ROOTS, payload(1, w)));
  await w.runUntil(() => other.done && started === MAX_OUTSTANDING_PER_CMD, 1_000);
  await w.runFor(500);
  assert.equal(started, MAX_OUTSTANDING_PER_CMD, "no more than the bound reach the server");
  assert.equal(client.conn.pendingCount, MAX_OUTSTANDING_PER_CMD);
  assert.equal(cc.get("net_request_waits"), extra);
  assert.ok(client.conn.resendCount <= MAX_RESEND_QUEUE);
  while (!all.every((t) => t.done)) {
    for (const g of gates.splice(0)) g();
    await w.runFor(5);
  }
  assert.equal(started, MAX_OUTSTANDING_PER_CMD + extra);
  assert.ok(all.every((t) => t.error === undefined));

  // The number of waiters is bounded too; shutdown cancels pending requests and waiters.
  const idle = makeClient(w, new Counters(), 0x62n);
  const queued = Array.from({ length: MAX_OUTSTANDING_PER_CMD + MAX_REQUEST_WAITERS },
    () => track(idle.request(NetCmd.LOCK_RECOVER, Buffer.alloc(0))));
  const tooMany = track(idle.request(NetCmd.LOCK_RECOVER, Buffer.alloc(0)));
  await w.runFor(1);
  assert.ok(isFsError(tooMany.error, "ENOBUFS"));
  idle.shutdown();
  await w.runFor(1);
  assert.ok(queued.every((t) => isFsError(t.error, "ECANCELED")));
  client.shutdown();
  server.shutdown();
});

test("keepalive: a peer that stops answering is dropped and the client reconnects",
  async () => {
    const w = new FakeWorld(71);
    const sc = new Counters();
    const cc = new Counters();
    const server = await startServer(w, sc, 1);
    server.register(NetCmd.STATFS, (p) => answerFor(p, "s"));
    const client = makeClient(w, cc, 0x71n);
    client.start();
    await w.runUntil(() => client.connected, 100);
    await w.runFor(3_000);
    assert.equal(cc.get("net_keepalive_timeouts") + sc.get("net_keepalive_timeouts"), 0,
      "idle acks keep a healthy connection alive");
    for (const s of w.net.streams) s.blackhole = true;
    const r = track(client.request(NetCmd.STATFS, payload(3, w)));
    await w.runUntil(() => r.done, w.now + 5_000);
    assert.match(r.value!.toString(), /^s:3:/);
    assert.ok(cc.get("net_keepalive_timeouts") >= 1);
    assert.ok(cc.get("net_reconnects") >= 1);
    client.shutdown();
    server.shutdown();
  });

// ---------------------------------------------------------------------------------------
// Raw peers: frames written by hand.

class RawPeer {
  readonly frames: Msg[] = [];
  closed = false;
  private readonly reader = new FrameReader();
  constructor(readonly stream: FakeStream) {
    stream.onData((c) => this.reader.push(c, (m) => {
      this.frames.push(m);
      return true;
    }));
    stream.onClose(() => {
      this.closed = true;
    });
  }
  send(m: Partial<Msg>): void {
    this.stream.write(encodeMsg({ seq: 0, recvSeq: 0, id: 0, fsid: FSID, cmd: NetCmd.GREETING,
      flags: 0, error: WIRE_OK, data: Buffer.alloc(0), ...m }));
  }
  greet(rid: bigint, serverTerm: number, recvSeq = 0): void {
    this.send({ recvSeq, data: encodeGreeting({ fsid: FSID, fmtVers: FMT, serverTerm, rid,
      flags: 0 }) });
  }
}

let rawPort = 50000;
function raw(w: FakeWorld, server: NetServer): RawPeer {
  const [a, b] = w.net.pair({ addr: "10.0.0.200", port: rawPort++ }, ADDR);
  server.accept(b);
  return new RawPeer(a);
}

test("raw peers: duplicates dropped, gaps and bad acks and floods refused", async () => {
  const w = new FakeWorld(81);
  const sc = new Counters();
  const server = await startServer(w, sc, 9);
  let handled = 0;
  server.register(NetCmd.STATFS, (p) => {
    handled++;
    return answerFor(p, "s");
  });
  server.register(NetCmd.GET_ROOTS, () => new Promise<Buffer>(() => undefined));

  const p1 = raw(w, server);
  p1.greet(0xa1n, 0);
  const req = { seq: 1, id: 5, cmd: NetCmd.STATFS, data: payload(1, w, 0) };
  p1.send(req);
  p1.send(req);
  await w.runFor(50);
  assert.equal(handled, 1, "the duplicate seq is dropped");
  assert.equal(sc.get("net_dup_dropped"), 1);
  const resp = p1.frames.find((m) => m.flags === MsgFlag.RESPONSE && m.seq === 1);
  assert.ok(resp && resp.id === 5 && resp.recvSeq === 1 && resp.error === WIRE_OK);
  p1.send({ seq: 3, id: 6, cmd: NetCmd.STATFS });
  await w.runFor(10);
  assert.ok(p1.closed, "a seq gap closes the connection");
  assert.equal(sc.get("net_protocol_errors"), 1);

  // Reattach by term: the server says what it has received (recv_seq 1), state intact.
  const p2 = raw(w, server);
  p2.greet(0xa1n, 9, 1);
  await w.runFor(10);
  assert.equal(p2.frames[0]!.recvSeq, 1);
  assert.equal(p2.frames[0]!.error, WIRE_OK);
  p2.send({ flags: MsgFlag.ACK, recvSeq: 999 });
  await w.runFor(10);
  assert.ok(p2.closed, "acknowledging an unsent seq closes the connection");

  const p3 = raw(w, server);
  p3.greet(0xa2n, 9);
  await w.runFor(10);
  assert.equal(p3.frames[0]!.error, wireErrorOf("ENOLINK"), "unknown rid claiming our term");

  const p4 = raw(w, server);
  p4.greet(0xa3n, 0);
  for (let i = 1; i <= MAX_OUTSTANDING_PER_CMD + 1; i++) {
    p4.send({ seq: i, id: i, cmd: NetCmd.GET_ROOTS });
  }
  await w.runFor(10);
  assert.ok(p4.closed);
  assert.equal(sc.get("net_peer_over_limit"), 1);

  const p5 = raw(w, server);
  p5.send({ seq: 1, id: 1, cmd: NetCmd.STATFS });
  const p6 = raw(w, server);
  p6.send({ fsid: FSID ^ 1n, data: encodeGreeting({ fsid: FSID ^ 1n, fmtVers: FMT,
    serverTerm: 0, rid: 0xa6n, flags: 0 }) });
  const p7 = raw(w, server);
  p7.stream.write(Buffer.alloc(100, 0xee));
  await w.runFor(10);
  assert.ok(p5.closed && p6.closed && p7.closed);
  assert.equal(sc.get("net_frames_foreign"), 1);
  assert.equal(sc.get("net_frames_malformed"), 1);
  assert.equal(handled, 1, "nothing refused was processed");
  assert.deepEqual(server.clientRids().sort(), [0xa1n, 0xa3n]);
  server.shutdown();
});

// ---------------------------------------------------------------------------------------
// The fake world: a manual clock, a timer queue and an in-memory stream network with chunk
// splitting, latency, graceful closes and abrupt cuts that may deliver half a piece first.
// Everything happens as a timer event; runUntil() lets every pending microtask run (one
// setImmediate turn) between events, so async core code interleaves deterministically.

interface Timer {
  id: number;
  at: number;
  fn: () => void;
  cancelled: boolean;
}

const MAX_LOG_LINES = 2000;

class FakeWorld {
  now = 0;
  private nextId = 1;
  private queue: Timer[] = [];
  private readonly byId = new Map<number, Timer>();
  readonly random: SimRandom;
  readonly logs: string[] = [];
  readonly net: FakeNet;

  constructor(seed: number) {
    this.random = new SimRandom(seed);
    this.net = new FakeNet(this);
  }

  readonly clock: Clock = {
    monotonicMs: () => this.now,
    wallTime: () => ({ sec: BigInt(Math.floor(this.now / 1000)), nsec: 0 }),
  };

  readonly timers: Timers = {
    after: (delayMs: number, fn: () => void): TimerHandle => {
      const t: Timer = { id: this.nextId++, at: this.now + Math.max(0, delayMs), fn,
        cancelled: false };
      // Keep the queue sorted by (at, id): binary search for the insertion point.
      let lo = 0;
      let hi = this.queue.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.queue[mid]!.at <= t.at) lo = mid + 1;
        else hi = mid;
      }
      this.queue.splice(lo, 0, t);
      this.byId.set(t.id, t);
      return { id: t.id };
    },
    clear: (h: TimerHandle): void => {
      const t = this.byId.get(h.id);
      if (t) t.cancelled = true;
      this.byId.delete(h.id);
    },
  };

  /** An Env for one node; its random stream is forked from the world's. */
  env(name: string): Env {
    const logs = this.logs;
    return {
      clock: this.clock, timers: this.timers, random: this.random.fork(), net: this.net,
      logger: {
        log: (level: LogLevel, msg: string): void => {
          if (logs.length < MAX_LOG_LINES) logs.push(`${this.now} ${name} ${level} ${msg}`);
        },
      },
    };
  }

  /** Runs events until cond() holds; fails past untilMs virtual ms or when nothing is due. */
  async runUntil(cond: () => boolean, untilMs: number): Promise<void> {
    for (;;) {
      await settle();
      if (cond()) return;
      const t = this.pop();
      if (!t) throw new Error(`stuck at ${this.now} ms: no event pending`);
      if (t.at > untilMs) throw new Error(`condition not met by ${untilMs} ms`);
      this.now = t.at;
      t.fn();
    }
  }

  /** Runs every event due up to now + ms. */
  async runFor(ms: number): Promise<void> {
    const end = this.now + ms;
    for (;;) {
      await settle();
      const next = this.peek();
      if (!next || next.at > end) break;
      this.pop();
      this.now = next.at;
      next.fn();
    }
    this.now = end;
    await settle();
  }

  private peek(): Timer | undefined {
    while (this.queue.length > 0 && this.queue[0]!.cancelled) this.queue.shift();
    return this.queue[0];
  }

  private pop(): Timer | undefined {
    const t = this.peek();
    if (t) {
      this.queue.shift();
      this.byId.delete(t.id);
    }
    return t;
  }
}

/** Lets every pending promise continuation run. */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function key(a: NetAddr): string {
  return `${a.addr}:${a.port}`;
}

class FakeListener implements StreamListener {
  private fn: ((c: StreamConnection) => void) | undefined;
  closed = false;
  constructor(private readonly net: FakeNet, readonly local: NetAddr) {}
  onConnection(fn: (c: StreamConnection) => void): void {
    this.fn = fn;
  }
  deliver(c: FakeStream): void {
    if (this.closed || !this.fn) c.cut(false);
    else this.fn(c);
  }
  close(): void {
    this.closed = true;
    this.net.unlisten(this);
  }
}

class FakeNet implements Network {
  private readonly listeners = new Map<string, FakeListener>();
  readonly streams = new Set<FakeStream>();
  /** Largest piece a write is split into (1 = byte by byte). */
  maxChunk = 700;
  /** Extra random latency of each piece, in ms (pieces stay in order). */
  jitterMs = 2;
  /** Connection attempts fail with ECONNREFUSED while set. */
  refuse = false;
  private nextPort = 40000;

  constructor(readonly world: FakeWorld) {}

  bindDatagram(_addr: NetAddr): Promise<DatagramSocket> {
    return Promise.reject(new FsError("EOPNOTSUPP", "no datagrams in the fake net"));
  }

  listen(addr: NetAddr): Promise<StreamListener> {
    if (this.listeners.has(key(addr))) return Promise.reject(new FsError("EINVAL", "in use"));
    const l = new FakeListener(this, addr);
    this.listeners.set(key(addr), l);
    return Promise.resolve(l);
  }

  unlisten(l: FakeListener): void {
    if (this.listeners.get(key(l.local)) === l) this.listeners.delete(key(l.local));
  }

  connect(to: NetAddr, _timeoutMs: number): Promise<StreamConnection> {
    return new Promise((resolve, reject) => {
      this.world.timers.after(1, () => {
        const l = this.listeners.get(key(to));
        if (!l || this.refuse) {
          reject(new FsError("ECONNREFUSED", key(to)));
          return;
        }
        const [a, b] = this.pair({ addr: "10.0.0.100", port: this.nextPort++ }, to);
        l.deliver(b);
        resolve(a);
      });
    });
  }

  /** A connected pair of streams (a at `from`, b at `to`). */
  pair(from: NetAddr, to: NetAddr): [FakeStream, FakeStream] {
    const a = new FakeStream(this, from, to);
    const b = new FakeStream(this, to, from);
    a.peer = b;
    b.peer = a;
    this.streams.add(a);
    this.streams.add(b);
    return [a, b];
  }

  /** Abruptly breaks one random live connection, maybe delivering half a piece first. */
  cutRandom(): boolean {
    const live = [...this.streams].filter((s) => !s.closed);
    if (live.length === 0) return false;
    this.world.random.pick(live).cut(true);
    return true;
  }

  cutAll(): void {
    for (const s of [...this.streams]) if (!s.closed) s.cut(false);
  }
}

interface Piece {
  handle: TimerHandle;
  chunk: Buffer;
}

class FakeStream implements StreamConnection {
  peer!: FakeStream;
  closed = false;
  /** Drops everything written instead of delivering it (a peer that stopped answering). */
  blackhole = false;
  private dataFn: ((chunk: Buffer) => void) | undefined;
  private closeFn: ((reason: string) => void) | undefined;
  private early: Buffer[] = [];
  private closeNotified = false;
  private readonly inflight: Piece[] = [];
  private lastAt = 0;

  constructor(private readonly net: FakeNet, readonly local: NetAddr, readonly remote: NetAddr) {}

  write(buf: Buffer): boolean {
    if (this.closed) return false;
    if (this.blackhole) return true;
    const w = this.net.world;
    for (let off = 0; off < buf.length;) {
      const n = Math.min(buf.length - off, 1 + w.random.int(this.net.maxChunk));
      const chunk = Buffer.from(buf.subarray(off, off + n));
      off += n;
      this.lastAt = Math.max(this.lastAt, w.now + 1 + w.random.int(this.net.jitterMs + 1));
      const piece: Piece = { chunk, handle: w.timers.after(this.lastAt - w.now, () => {
        this.inflight.shift();
        this.peer.receive(piece.chunk);
      }) };
      this.inflight.push(piece);
    }
    return true;
  }

  onData(fn: (chunk: Buffer) => void): void {
    this.dataFn = fn;
    for (const c of this.early.splice(0)) fn(c);
  }

  onClose(fn: (reason: string) => void): void {
    this.closeFn = fn;
  }

  /** Graceful close: what we wrote is still delivered, then the peer sees the close. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.notifyClose("closed locally");
    const last = this.inflight[this.inflight.length - 1];
    const w = this.net.world;
    w.timers.after(last ? this.lastAt - w.now : 1, () => this.peer.remoteClosed());
  }

  /** Abrupt break of both directions; with partial, half of the next piece arrives first. */
  cut(partial: boolean): void {
    for (const s of [this, this.peer]) {
      const first = s.inflight[0];
      if (partial && first && first.chunk.length > 1) {
        s.peer.receive(first.chunk.subarray(0, first.chunk.length >> 1));
      }
    }
    for (const s of [this, this.peer]) {
      for (const p of s.inflight.splice(0)) this.net.world.timers.clear(p.handle);
      s.closed = true;
    }
    this.notifyClose("cut");
    this.peer.notifyClose("cut");
  }

  private receive(chunk: Buffer): void {
    if (this.closed) return;
    if (this.dataFn) this.dataFn(chunk);
    else this.early.push(chunk);
  }

  private remoteClosed(): void {
    for (const p of this.inflight.splice(0)) this.net.world.timers.clear(p.handle);
    this.closed = true;
    this.notifyClose("closed by peer");
  }

  private notifyClose(reason: string): void {
    if (this.closeNotified) return;
    this.closeNotified = true;
    this.net.streams.delete(this);
    this.net.world.timers.after(0, () => this.closeFn?.(reason));
  }
}
