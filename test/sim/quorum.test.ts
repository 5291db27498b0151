/*
 * Goal: the quorum election (src/core/quorum.ts) elects exactly one leader per term, never
 * lets a term go backwards, fences every earlier leader that did not record a clean stop
 * before a new server starts, replaces a resigning leader much faster than the heartbeat
 * timeout, and always ends with a single leader, which readLeader() finds, once faults heal;
 * with 1, 2, 3 and 5 slots, under datagram loss, duplication and delay, partitions
 * (symmetric, asymmetric, isolating the leader), crashes and restarts of any node, server
 * failures, unmounts and clock steps.
 *
 * Method: three layers, all in SimWorld with one shared SimDisk metadata device made by mkfs.
 *  1. Pure helpers (votesNeeded, findOldLeaders, readLeader) on crafted quorum blocks.
 *  2. One real agent among fake peers: the test binds the other slots' UDP addresses itself
 *     and sends hand-made datagrams, so each protocol rule (vote once per term, persist the
 *     term before voting, no vote in the start term after a restart, a resigning leader keeps
 *     its vote, greater terms demote, invalid datagrams are counted) is checked exactly.
 *  3. Whole clusters through QuorumSimCluster (src/sim/scenarios.ts), whose checker watches
 *     every quorum block write and server start and fails the run on a violation: targeted
 *     failovers, then runQuorumChaos() on many fixed seeds per slot count.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  emptyQuorumBlock, encodeQuorumBlock, QUORUM_BLOCK_SIZE, quorumBlkno, type QuorumBlock,
  type QuorumConfig, QuorumEvent,
} from "../../src/core/format.js";
import {
  checkHeartbeatTimeoutMs, findOldLeaders, QuorumAgent, QuorumRole,
  readQuorumBlock, votesNeeded, QUORUM_ELECT_MIN_MS, QUORUM_ELECT_VAR_MS,
} from "../../src/core/quorum.js";
import {
  decodeQuorumMsg, encodeQuorumMsg, type QuorumMsg, QuorumMsgType, slotMaskOf,
} from "../../src/core/quorum_msg.js";
import type { DatagramSocket } from "../../src/env/env.js";
import { SimDisk } from "../../src/sim/disk.js";
import { SimWorld } from "../../src/sim/env.js";
import type { NetFaults } from "../../src/sim/net.js";
import {
  QSIM_PORT, QuorumSimCluster, type QuorumSimMount, runQuorumChaos,
} from "../../src/sim/scenarios.js";
import { runScenario } from "../../src/sim/replay.js";
import { isFsError } from "../../src/util/errno.js";

const LOSSY: Partial<NetFaults> = { delayMinMs: 0.2, delayMaxMs: 20,
  datagramLossProbability: 0.1, datagramDuplicateProbability: 0.05 };

function qconfOf(n: number): QuorumConfig {
  return { version: 1, slots: Array.from({ length: 15 }, (_, i) =>
    (i < n ? { addr: `10.0.0.${i + 1}`, port: QSIM_PORT } : null)) };
}

/** Runs until pred() or maxMs of virtual time pass; returns pred(). */
async function runUntilOr(world: SimWorld, pred: () => boolean, maxMs: number):
  Promise<boolean> {
  const deadline = world.nowMs() + maxMs;
  await world.runUntil(() => pred() || world.nowMs() >= deadline);
  return pred();
}

async function cluster(slots: number, seed: number, faults: Partial<NetFaults> = {},
  heartbeatTimeoutMs = 2000): Promise<QuorumSimCluster> {
  const world = new SimWorld({ seed, faults });
  return QuorumSimCluster.create(world, { slots, heartbeatTimeoutMs });
}

/**
 * Mounts every slot and waits for a converged cluster; returns its leader. With `settleMs`
 * it then waits until every follower has heard heartbeats (a follower that only voted
 * still runs its short election timeout) and checks the leader did not change.
 */
async function elect(c: QuorumSimCluster, maxMs = 5000, settleMs = 0):
  Promise<QuorumSimMount> {
  c.mountAll();
  assert.ok(await runUntilOr(c.world, () => c.converged(), maxMs), "no leader elected");
  const l = c.leader()!;
  if (settleMs > 0) {
    await c.world.runFor(settleMs);
    assert.equal(c.leader(), l, "leadership changed without faults");
  }
  return l;
}

// ---------------------------------------------------------------------------------------
// 1. pure helpers

test("votes needed, heartbeat timeout option, config validation", () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 15].map((n) => votesNeeded(qconfOf(n))),
    [1, 1, 2, 3, 3, 4, 4, 8]);
  assert.equal(checkHeartbeatTimeoutMs(2000), 2000);
  assert.equal(checkHeartbeatTimeoutMs(60_000), 60_000);
  for (const bad of [1999, 60_001, 2500.5, Number.NaN]) {
    assert.throws(() => checkHeartbeatTimeoutMs(bad),
      (e: unknown) => isFsError(e, "EINVAL") &&
        /invalid quorum_heartbeat_timeout_ms/.test(e.message));
  }
  const world = new SimWorld({ seed: 1 });
  const node = world.addNode("a");
  const callbacks = { startServer: async (): Promise<void> => undefined,
    stopServer: async (): Promise<void> => undefined, fence: async (): Promise<void> => undefined };
  const dev = node.device(new SimDisk("meta", 1 << 20));
  const make = (over: object): QuorumAgent => new QuorumAgent(node.env, dev,
    { fsid: 1n, slot: 0, qconf: qconfOf(3), rid: 5n, callbacks, ...over });
  assert.doesNotThrow(() => make({}));
  assert.throws(() => make({ slot: 3 }), new RegExp("quorum_slot_nr=3 option references " +
    "unused slot, must be one of the following configured slots: 0,1,2"));
  assert.throws(() => make({ heartbeatTimeoutMs: 100 }), /invalid quorum_heartbeat_timeout_ms/);
  assert.throws(() => make({ rid: 0n }), /nonzero/);
  const dup = qconfOf(2);
  dup.slots[1] = { addr: "10.0.0.1", port: QSIM_PORT };
  assert.throws(() => make({ qconf: dup }), /same address/);
  assert.throws(() => make({ qconf: qconfOf(0) }), /no populated quorum slots/);
});

/** A block with chosen (rid, term) events. */
function blk(slot: number, ev: Partial<Record<"elect" | "fence" | "stop" | "term",
  [bigint, number]>>): QuorumBlock {
  const b = emptyQuorumBlock(7n, slot);
  const set = (i: number, v: [bigint, number] | undefined): void => {
    if (v !== undefined) b.events[i] = { writeNr: 1, rid: v[0], term: v[1], sec: 0n, nsec: 0 };
  };
  set(QuorumEvent.ELECT, ev.elect);
  set(QuorumEvent.FENCE, ev.fence);
  set(QuorumEvent.STOP, ev.stop);
  set(QuorumEvent.TERM, ev.term);
  return b;
}

test("findOldLeaders: which earlier leaders to fence, and when to give up", () => {
  const me = 0x99n;
  const rids = (r: ReturnType<typeof findOldLeaders>): string[] =>
    r.fence.map((p) => `${p.slot}:${p.rid}:${p.term}`);
  // an unstopped election is fenced; a stopped one (same rid) is not; our own is skipped
  let r = findOldLeaders([blk(0, { elect: [1n, 3] }), blk(1, { elect: [2n, 4], stop: [2n, 4] }),
    blk(2, { elect: [me, 9] }), null], 9, me);
  assert.deepEqual(rids(r), ["0:1:3"]);
  assert.equal(r.newer, null);
  // a previous incarnation's FENCE record under a newer ELECT is fenced too
  r = findOldLeaders([blk(0, { fence: [1n, 3], elect: [2n, 5] })], 9, me);
  assert.deepEqual(rids(r), ["0:2:5", "0:1:3"]);
  // ... even when the newer incarnation recorded STOP (upstream's term-only rule missed it)
  r = findOldLeaders([blk(0, { fence: [1n, 3], elect: [2n, 5], stop: [2n, 5] })], 9, me);
  assert.deepEqual(rids(r), ["0:1:3"]);
  // leaders older than the greatest FENCE were fenced by its leader
  r = findOldLeaders([blk(0, { elect: [1n, 3] }), blk(1, { elect: [2n, 6], fence: [2n, 6] })],
    9, me);
  assert.deepEqual(rids(r), ["1:2:6"]);
  // any term above ours recorded anywhere: our election is stale
  r = findOldLeaders([blk(0, { elect: [1n, 12], stop: [1n, 12] }), blk(1, { term: [2n, 10] })],
    9, me);
  assert.deepEqual(r.newer, { slot: 0, rid: 1n, term: 12 });
});

test("readLeader: the greatest unstopped election not older than any FENCE", async () => {
  const world = new SimWorld({ seed: 2 });
  const c = await QuorumSimCluster.create(world, { slots: 3 });
  const put = (b: QuorumBlock): void => {
    const buf = Buffer.alloc(QUORUM_BLOCK_SIZE);
    encodeQuorumBlock({ ...b, fsid: c.fsid }).copy(buf);
    c.disk.applyWrite(buf, quorumBlkno(b.slot) * QUORUM_BLOCK_SIZE);
  };
  assert.equal(await world.settle(c.readLeader()), null);
  put(blk(0, { elect: [1n, 3] }));
  put(blk(2, { elect: [3n, 5], fence: [3n, 5] }));
  const l = await world.settle(c.readLeader());
  assert.deepEqual(l, { term: 5, slot: 2, rid: 3n, addr: { addr: "10.0.0.3", port: QSIM_PORT } });
  put(blk(2, { elect: [3n, 5], fence: [3n, 5], stop: [3n, 5] }));
  // slot 0's term 3 is older than slot 2's FENCE 5: fenced, not a leader
  assert.equal(await world.settle(c.readLeader()), null);
  put(blk(1, { elect: [2n, 7] }));
  assert.equal((await world.settle(c.readLeader()))?.slot, 1);
});

// ---------------------------------------------------------------------------------------
// 2. one real agent among fake peers

interface FakePeer {
  readonly slot: number;
  readonly got: QuorumMsg[];
  send(type: QuorumMsgType, term: number, toSlot: number): void;
}

async function fakePeer(c: QuorumSimCluster, slot: number): Promise<FakePeer> {
  const node = c.world.node(c.names[slot]!);
  const sock: DatagramSocket = await c.world.settle(
    node.env.net.bindDatagram({ addr: node.addr, port: QSIM_PORT }));
  const got: QuorumMsg[] = [];
  const mask = slotMaskOf(c.qconf.slots);
  sock.onMessage((buf) => {
    const d = decodeQuorumMsg(buf, c.fsid, mask);
    assert.ok(d.ok, "the agent sent a datagram that does not decode");
    got.push(d.msg);
  });
  return {
    slot, got,
    send: (type, term, toSlot) => sock.send(encodeQuorumMsg({ fsid: c.fsid, term, type,
      from: slot }), { addr: `10.0.0.${toSlot + 1}`, port: QSIM_PORT }),
  };
}

function votesFrom(p: FakePeer): number[] {
  return p.got.filter((m) => m.type === QuorumMsgType.VOTE).map((m) => m.term);
}

test("voting: once per term, term persisted first, never in the start term", async () => {
  const c = await cluster(3, 3, { delayMinMs: 1, delayMaxMs: 1 }, 60_000);
  const a = await fakePeer(c, 0);
  const cc = await fakePeer(c, 2);
  let b = c.mount("q1");
  await c.world.runFor(50);
  assert.equal(b.agent.term, 0);
  a.send(QuorumMsgType.REQUEST_VOTE, 4, 1);
  await c.world.runFor(10);
  assert.deepEqual(votesFrom(a), [4], "votes for the first candidate of a new term");
  assert.equal(b.agent.term, 4);
  assert.equal(b.agent.voteFor, 0);
  const onDisk = await c.world.settle(readQuorumBlock(c.disk, c.fsid, 1));
  assert.equal(onDisk.events[QuorumEvent.TERM]!.term, 4, "term persisted before the vote");
  cc.send(QuorumMsgType.REQUEST_VOTE, 4, 1);
  a.send(QuorumMsgType.REQUEST_VOTE, 3, 1); // an older term: ignored
  await c.world.runFor(10);
  assert.deepEqual(votesFrom(cc), [], "one vote per term");
  assert.equal(b.agent.counters.get("quorum_recv_stale"), 1);
  // restart: it may have voted in its start term before, so it never votes in it again
  c.crash("q1");
  b = c.restart("q1");
  await c.world.runFor(50);
  assert.equal(b.agent.term, 4, "starts from the greatest term on disk");
  cc.send(QuorumMsgType.REQUEST_VOTE, 4, 1);
  await c.world.runFor(10);
  assert.deepEqual(votesFrom(cc), []);
  assert.equal(b.agent.counters.get("quorum_vote_refused_start_term"), 1);
  cc.send(QuorumMsgType.REQUEST_VOTE, 5, 1);
  await c.world.runFor(10);
  assert.deepEqual(votesFrom(cc), [5]);
});

test("a leader: heartbeats, keeps its vote when it resigns, steps down for a greater term",
  async () => {
    const c = await cluster(3, 4, { delayMinMs: 1, delayMaxMs: 1 });
    const b = await fakePeer(c, 1);
    const cc = await fakePeer(c, 2);
    const a = c.mount("q0");
    // no leader recorded: a election timeout, then it asks both peers
    await runUntilOr(c.world, () => b.got.length > 0, 1000);
    assert.ok(c.world.nowMs() <= 50 + QUORUM_ELECT_MIN_MS + QUORUM_ELECT_VAR_MS);
    const req = b.got[0]!;
    assert.equal(req.type, QuorumMsgType.REQUEST_VOTE);
    assert.equal(a.agent.role, QuorumRole.CANDIDATE);
    b.send(QuorumMsgType.VOTE, req.term, 0);
    assert.ok(await runUntilOr(c.world, () => a.server?.state === "up", 1000));
    assert.equal(a.agent.isLeaderText(), "1");
    const hb0 = cc.got.filter((m) => m.type === QuorumMsgType.HEARTBEAT).length;
    await c.world.runFor(1000);
    const hbs = cc.got.filter((m) => m.type === QuorumMsgType.HEARTBEAT).length - hb0;
    assert.ok(hbs >= 9 && hbs <= 11, `${hbs} heartbeats in a second`);
    // its server fails: it resigns, and never votes again in the term it led
    c.failServer("q0");
    await c.world.runFor(5);
    assert.ok(cc.got.some((m) => m.type === QuorumMsgType.RESIGNATION && m.term === req.term));
    assert.equal(a.agent.role, QuorumRole.FOLLOWER);
    assert.equal(a.agent.voteFor, 0);
    cc.send(QuorumMsgType.REQUEST_VOTE, req.term, 0);
    await c.world.runFor(5);
    assert.deepEqual(votesFrom(cc), [], "a resigned leader keeps its vote in its term");
    // re-elected later, then a greater term demotes it and stops its server
    await runUntilOr(c.world, () => a.agent.role === QuorumRole.CANDIDATE, 1000);
    b.send(QuorumMsgType.VOTE, a.agent.term, 0);
    assert.ok(await runUntilOr(c.world, () => a.server?.state === "up", 1000));
    const led = a.agent.term;
    cc.send(QuorumMsgType.HEARTBEAT, led + 3, 0);
    assert.ok(await runUntilOr(c.world, () => a.server === null &&
      a.agent.serverState === "down", 1000));
    assert.equal(a.agent.term, led + 3);
    assert.equal(a.agent.role, QuorumRole.FOLLOWER);
    await c.world.runFor(5);
    const blk0 = await c.world.settle(readQuorumBlock(c.disk, c.fsid, 0));
    assert.equal(blk0.events[QuorumEvent.STOP]!.term, led, "STOP recorded for its term");
    assert.equal(blk0.events[QuorumEvent.TERM]!.term, led + 3);
    assert.equal(a.agent.counters.get("quorum_term_follower"), 1);
  });

test("invalid datagrams are counted and dropped", async () => {
  const c = await cluster(3, 5, { delayMinMs: 1, delayMaxMs: 1 }, 60_000);
  const b = await fakePeer(c, 1);
  const a = c.mount("q0");
  await c.world.runFor(20);
  const node = c.world.node("q1");
  const raw = await c.world.settle(node.env.net.bindDatagram({ addr: node.addr, port: 9 }));
  const to = { addr: "10.0.0.1", port: QSIM_PORT };
  const good = encodeQuorumMsg({ fsid: c.fsid, term: 50, type: QuorumMsgType.HEARTBEAT,
    from: 1 });
  raw.send(Buffer.from("hello"), to);
  const badCrc = Buffer.from(good);
  badCrc[3] = badCrc[3]! ^ 0xff;
  raw.send(badCrc, to);
  raw.send(encodeQuorumMsg({ fsid: c.fsid + 1n, term: 50, type: 2, from: 1 }), to);
  raw.send(encodeQuorumMsg({ fsid: c.fsid, term: 50, type: 2, from: 7 }), to);
  raw.send(encodeQuorumMsg({ fsid: c.fsid, term: 50, type: 2, from: 0 }), to);
  await c.world.runFor(10);
  const k = a.agent.counters;
  assert.equal(k.get("quorum_recv_invalid"), 4);
  for (const r of ["size", "crc", "fsid", "slot"]) {
    assert.equal(k.get(`quorum_recv_invalid_${r}`), 1, r);
  }
  assert.equal(k.get("quorum_recv_own_slot"), 1);
  assert.equal(a.agent.term, 0, "nothing invalid changed the term");
  b.send(QuorumMsgType.HEARTBEAT, 50, 0);
  await c.world.runFor(10);
  assert.equal(a.agent.term, 50);
});

// ---------------------------------------------------------------------------------------
// 3. whole clusters

test("one slot: elects itself at once; status files; clean stop records STOP and END",
  async () => {
    const c = await cluster(1, 6);
    const l = await elect(c, QUORUM_ELECT_MIN_MS + QUORUM_ELECT_VAR_MS + 200);
    assert.equal(l.agent.term, 1);
    assert.equal(l.agent.isLeaderText(), "1");
    const lines = l.agent.statusText().split("\n");
    assert.deepEqual(lines.slice(0, 7), ["quorum_slot_nr 0", "term 1", "server_start_term 1",
      "server_event 3", "role 2 (leader)", "vote_for 0", "vote_bits 0x1 (count 1)"]);
    assert.match(lines[7]!, /^timeout_in_secs 0\.\d{9}$/);
    assert.equal(lines.length, 9, "no peers: no last_send/last_recv lines");
    assert.equal(lines[8], "");
    assert.equal((await c.world.settle(c.readLeader()))?.slot, 0);
    await c.world.settle(l.agent.stop());
    assert.equal(l.server, null);
    const b = await c.world.settle(readQuorumBlock(c.disk, c.fsid, 0));
    assert.deepEqual(b.events.map((e) => e.term), [0, 1, 1, 1, 1, 1]);
    assert.ok(b.events.every((e) => e.rid === l.rid));
    assert.equal(await c.world.settle(c.readLeader()), null);
    assert.equal(l.agent.isLeaderText(), "0");
  });

test("status text of a follower lists its peers' last messages", async () => {
  const c = await cluster(3, 7, { delayMinMs: 1, delayMaxMs: 1 });
  const l = await elect(c);
  const f = [...c.mounts.values()].find((m) => m !== l)!;
  await c.world.runFor(1000);
  const text = f.agent.statusText();
  assert.match(text, new RegExp(`^role 0 \\(follower\\)$`, "m"));
  assert.match(text, new RegExp(`^term ${l.agent.term}$`, "m"));
  assert.match(text, new RegExp(`^last_recv from ${l.slot} term ${l.agent.term} type 2 ` +
    "secs_since 0\\.\\d{9}$", "m"));
  assert.match(text, /^timeout_in_secs [12]\.\d{9}$/m);
  assert.equal(f.agent.isLeaderText(), "0");
  assert.doesNotMatch(text, /HB Delay/);
  // a 1.5 s gap in heartbeats (under the 2 s timeout) shows in the delay histogram
  c.world.block(l.name, f.name);
  await c.world.runFor(1500);
  c.world.unblock(l.name, f.name);
  await c.world.runFor(500);
  const hist = f.agent.statusText().split("\n");
  const at = hist.indexOf("HB Delay(s)      Count  Secs Since");
  assert.ok(at > 0, "histogram header");
  assert.match(hist[at + 1]!, /^ {10}1 {10}1  0\.\d{9}$/);
  assert.equal(f.agent.role, QuorumRole.FOLLOWER);
});

test("leader crash: a new leader fences it before its server starts", async () => {
  for (const slots of [3, 5]) {
    for (const seed of [10, 11, 12]) {
      const c = await cluster(slots, seed, LOSSY);
      const old = await elect(c, 5000, 500);
      const oldTerm = old.agent.term;
      const t0 = c.world.nowMs();
      c.crash(old.name);
      assert.ok(await runUntilOr(c.world, () => c.leader() !== null, 5000), "no new leader");
      const l = c.leader()!;
      const took = c.world.nowMs() - t0;
      assert.ok(took >= 1900 && took < 4000, `failover took ${took} ms`);
      const fence = c.checker.fenceCalls.find((f) => f.prev.rid === old.rid);
      assert.ok(fence, "the crashed leader was fenced");
      assert.deepEqual(fence.prev, { slot: old.slot, rid: old.rid, term: oldTerm });
      const start = c.checker.serverStarts.find((s) => s.rid === l.rid)!;
      assert.ok(fence.atMs <= start.atMs && c.checker.fenced.has(old.rid));
      assert.equal((await c.world.settle(c.readLeader()))?.rid, l.rid);
    }
  }
});

test("a resigning leader is replaced much faster than the heartbeat timeout", async () => {
  for (const seed of [20, 21, 22, 23]) {
    for (const how of ["server fails", "unmount"] as const) {
      const c = await cluster(seed % 2 === 0 ? 3 : 5, seed, LOSSY, 10_000);
      const old = await elect(c);
      const t0 = c.world.nowMs();
      if (how === "server fails") c.failServer(old.name);
      else c.unmount(old.name);
      const replaced = (): boolean => c.checker.serverStarts.some((s) => s.atMs > t0);
      assert.ok(await runUntilOr(c.world, replaced, 10_000), "not replaced");
      const took = c.world.nowMs() - t0;
      assert.ok(took < 1500, `${how}: replaced after ${took} ms (heartbeat timeout 10 s)`);
    }
  }
});

test("two slots: a partition elects both (different terms), fencing settles it",
  async () => {
    const c = await cluster(2, 30, LOSSY);
    c.autoRestartMs = [500, 1000];
    const first = await elect(c);
    c.world.partition("q0", "q1");
    await c.world.runFor(6000);
    // the follower elected itself; the leader of the greater term fenced the other
    assert.ok(c.checker.elections.length >= 2);
    for (const e of c.checker.elections) assert.equal(e.term % 2, e.slot, "slot parity terms");
    assert.ok(c.checker.fenceCalls.some((f) => f.prev.rid === first.rid));
    c.world.heal();
    assert.ok(await runUntilOr(c.world, () => c.converged(), 8000), "converged after heal");
  });

test("isolating the leader: the majority elects another, which fences it", async () => {
  const c = await cluster(5, 31, LOSSY);
  c.autoRestartMs = [500, 1000];
  const old = await elect(c);
  c.world.isolate(old.name);
  assert.ok(await runUntilOr(c.world, () => c.checker.fenced.has(old.rid), 5000));
  assert.equal(old.node.alive, false, "the fenced leader's process was killed");
  assert.ok(await runUntilOr(c.world, () => c.leader() !== null, 1000));
  assert.ok(c.leader()!.agent.term > old.agent.term);
  c.world.heal();
  assert.ok(await runUntilOr(c.world, () => c.converged(), 8000), "converged after heal");
  assert.equal(c.world.node(old.name).alive, true, "restarted and following");
});

test("failed fencing: the new leader gives up and resigns, a later one succeeds",
  async () => {
    const c = await cluster(3, 32, {});
    const old = await elect(c);
    c.fenceFailProbability = 1;
    c.crash(old.name);
    await c.world.runFor(3500);
    const failedStarts = c.checker.serverStarts.filter((s) => s.atMs > 0 && s.rid !== old.rid);
    assert.equal(failedStarts.length, 0, "no server starts while fencing fails");
    assert.ok(c.checker.fenceCalls.length >= 1);
    const leaders = [...c.mounts.values()].filter((m) => m.agent.counters
      .get("quorum_server_start_error") > 0);
    assert.ok(leaders.length >= 1, "a leader gave up");
    c.fenceFailProbability = 0;
    assert.ok(await runUntilOr(c.world, () => c.leader() !== null, 3000));
    assert.ok(c.checker.fenced.has(old.rid));
  });

test("a second mount writing our slot's block stops our agent and its server", async () => {
  const c = await cluster(3, 33, {});
  const l = await elect(c);
  // another mount "begins" in the leader's slot: its next update sees a foreign BEGIN rid
  const b = await c.world.settle(readQuorumBlock(c.disk, c.fsid, l.slot));
  b.events[QuorumEvent.BEGIN] = { ...b.events[QuorumEvent.BEGIN]!, rid: 0x1234n };
  const buf = Buffer.alloc(QUORUM_BLOCK_SIZE);
  encodeQuorumBlock(b).copy(buf);
  c.disk.applyWrite(buf, quorumBlkno(l.slot) * QUORUM_BLOCK_SIZE);
  c.failServer(l.name); // its next block update (STOP) must notice
  assert.ok(await runUntilOr(c.world, () => l.agent.failed !== null, 1000));
  assert.ok(isFsError(l.agent.failed, "EIO"));
  assert.match(l.agent.failed.message, /are multiple mounts configured with this slot\?/);
  assert.equal(l.agent.running, false);
  assert.ok(c.world.trace.entries().some((e) => /no longer participating in quorum/.test(e.msg)));
  // binding a slot address already in use fails the mount cleanly
  const f = [...c.mounts.values()].find((m) => m !== l && m.node.alive)!;
  const dup = new QuorumAgent(f.node.env, f.node.device(c.disk), { fsid: c.fsid,
    slot: f.slot, qconf: c.qconf, rid: 77n, callbacks: { startServer: async () => undefined,
      stopServer: async () => undefined, fence: async () => undefined } });
  await assert.rejects(c.world.settle(dup.start()), /EADDRINUSE/);
});

test("metadata write errors stop the leader's agent; the others take over", async () => {
  const c = await cluster(3, 34, {});
  c.autoRestartMs = [500, 1000];
  const l = await elect(c);
  const off = quorumBlkno(l.slot) * QUORUM_BLOCK_SIZE;
  c.disk.failWrites((o) => o === off);
  c.failServer(l.name);
  assert.ok(await runUntilOr(c.world, () => l.agent.failed !== null, 1000));
  c.disk.failWrites(null);
  assert.ok(await runUntilOr(c.world, () => c.checker.serverStarts.some((s) =>
    s.rid !== l.rid), 5000), "another leader");
  // the failed mount no longer participates: the checker still sees no violation
  assert.equal(c.checker.violations, 0);
});

test("the heartbeat timeout option sets the failover time", async () => {
  for (const hb of [2000, 5000]) {
    const c = await cluster(3, 35, {}, hb);
    const old = await elect(c, 5000, 500);
    const t0 = c.world.nowMs();
    c.crash(old.name);
    assert.ok(await runUntilOr(c.world, () => c.leader() !== null, hb + 2000));
    const took = c.world.nowMs() - t0;
    assert.ok(took >= hb && took < hb + 1000, `timeout ${hb}: failover ${took} ms`);
  }
  const c = await cluster(3, 36, {});
  await elect(c);
  const f = [...c.mounts.values()].find((m) => !m.agent.isLeader)!;
  f.agent.setHeartbeatTimeoutMs(3000);
  assert.throws(() => f.agent.setHeartbeatTimeoutMs(70_000), /invalid/);
});

// ---------------------------------------------------------------------------------------
// chaos on fixed seeds

const CHAOS_SEEDS_PER_SLOT_COUNT = 100;
const CHAOS_DURATION_MS = 40_000;

for (const slots of [1, 2, 3, 5]) {
  test(`chaos: ${slots} slot(s), ${CHAOS_SEEDS_PER_SLOT_COUNT} seeds`, async () => {
    let elections = 0;
    let fences = 0;
    let worstConvergeMs = 0;
    for (let i = 0; i < CHAOS_SEEDS_PER_SLOT_COUNT; i++) {
      const seed = 1000 * slots + i;
      const world = new SimWorld({ seed, faults: LOSSY });
      try {
        const s = await runQuorumChaos(world, CHAOS_DURATION_MS,
          { slots, fenceFailProbability: 0.1 });
        elections += s.elections;
        fences += s.fenceCalls;
        worstConvergeMs = Math.max(worstConvergeMs, s.convergeMs);
      } catch (e) {
        const tail = world.trace.entries().slice(-30).map((t) => `${t.node} ${t.msg}`);
        assert.fail(`seed ${seed} (${slots} slots): ${String(e)}\n${tail.join("\n")}`);
      }
    }
    assert.ok(elections >= CHAOS_SEEDS_PER_SLOT_COUNT * 3, `only ${elections} elections`);
    if (slots > 1) assert.ok(fences > CHAOS_SEEDS_PER_SLOT_COUNT, `only ${fences} fences`);
    assert.ok(worstConvergeMs < 8000, `worst convergence ${worstConvergeMs} ms`);
  });
}

test("the quorum scenario replays identically from its seed", async () => {
  const a = await runScenario("quorum", 77);
  const b = await runScenario("quorum", 77);
  assert.equal(a.ok, true, a.error?.stack);
  assert.equal(a.digest, b.digest);
  assert.deepEqual(a.trace, b.trace);
  const c = await runScenario("quorum", 78);
  assert.equal(c.ok, true, c.error?.stack);
  assert.notEqual(a.digest, c.digest);
});
