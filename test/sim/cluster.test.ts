/*
 * Goal: whole clusters of real mounts (quorum, server, client, locks, transactions, forest,
 * merging, recovery and fencing) keep every promise of RELIABILITY.md under the whole fault
 * model: see src/sim/cluster.ts for the workload and the checkers.
 *
 * Method: runClusterChaos() over a fixed seed set per cluster shape (quorums of 1, 3 and 5
 * with 1 to 5 mounts); SCOUTFS_SIM_SEEDS=N runs N seeds per shape instead. The long soak is
 * bin/sim-soak (docs/status.md records its figure). Every seed that ever failed is kept in
 * REGRESSIONS with what it found.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { CLUSTER_SHAPES, runClusterChaos, type ClusterReport } from "../../src/sim/cluster.js";
import { runScenario } from "../../src/sim/replay.js";

const EXTRA = Number(process.env["SCOUTFS_SIM_SEEDS"] ?? "0");
const CI_SEEDS = [11, 12, 13];

/** Seeds that found bugs: [slots, mounts, seed, what it found]. */
const REGRESSIONS: readonly [number, number, number, string][] = [
  [3, 3, 1, "items recorded while a commit was in flight were attributed to the committing " +
    "transaction: the lock thought them committed and its invalidation skipped the commit"],
  [3, 3, 7, "after a commit whose next GET_LOG_TREES failed, the client committed the old " +
    "transaction again; the server took it for a resend and acknowledged it without recording"],
  [3, 5, 8, "the same, found by a different fault order (5 mounts)"],
];

function summary(rs: ClusterReport[]): string {
  const sum = (f: (r: ClusterReport) => number): number => rs.reduce((n, r) => n + f(r), 0);
  return `${rs.length} runs, ${(sum((r) => r.virtualMs) / 1000).toFixed(0)} virtual s, ` +
    `${sum((r) => r.ops)} ops, ${sum((r) => r.acked)} acked, ${sum((r) => r.crashes)} crashes, ` +
    `${sum((r) => r.pauses)} pauses, ${sum((r) => r.powerLosses)} power losses, ` +
    `${sum((r) => r.fences)} fences, ${sum((r) => r.elections)} servers, ` +
    `${sum((r) => r.merges)} merges, ${sum((r) => r.lostAppends)} unacked appends lost`;
}

test("a quiet cluster: no faults, every operation of every mount checked", async () => {
  const r = await runClusterChaos(1, { slots: 3, mounts: 3, faultEveryMs: 0, chaosMs: 5000 });
  assert.ok(r.appends > 100 && r.acked > 100 && r.regReads > 50 && r.invalidations > 50, JSON.stringify(r));
  assert.equal(r.crashes + r.lostAppends + r.opErrors, 0);
});

test("regression: soak seed 422, a stale greeting reset a live session", async () => {
  // Found by bin/sim-soak at commit b7a1dc3: a greeting the client sent before it learned the
  // new server's term arrived late on an abandoned link and reset its live session; requests
  // in flight were dropped (a lock was granted over an unanswered invalidation) and every
  // reconnect after it was a protocol error. The server now closes such a stale link. (Later
  // commits changed the timing: this seed replays the failure only at b7a1dc3.)
  const r = await runScenario("cluster-soak", 422);
  assert.ok(r.ok, r.error?.message);
});

test("regression: soak seed 52, a killed node's held write landed after its fencing", async () => {
  // Found by bin/sim-soak at commit e384dcb: the leader n2 was paused in the middle of a
  // server commit, fenced (killed) by the next leader, and the write it had asked for before
  // the pause ended was issued anyway when the pause ran out (SimNode.device let I/O held by
  // a pause through after death). It overwrote block 1101, which the new server had meanwhile
  // given a new mount as an alloc list block; that mount's commits then failed with ESTALE
  // forever (operations pending after healing). A simulator bug, not a core one: a stopped
  // process that is killed never issues its I/O (test/sim/node_device.test.ts).
  const r = await runScenario("cluster-soak", 52);
  assert.ok(r.ok, r.error?.message);
});

test("regression seeds", async () => {
  for (const [slots, mounts, seed] of REGRESSIONS) {
    await runClusterChaos(seed, { slots, mounts, faultEveryMs: seed === 1 ? 0 : 1500, chaosMs: 20_000 });
  }
});

for (const [slots, mounts] of CLUSTER_SHAPES) {
  test(`chaos: quorum of ${slots}, ${mounts} mounts`, async () => {
    const seeds = EXTRA > 0 ? Array.from({ length: EXTRA }, (_, i) => 1000 + i) : CI_SEEDS;
    const reports: ClusterReport[] = [];
    for (const seed of seeds) reports.push(await runClusterChaos(seed, { slots, mounts }));
    console.log(`quorum ${slots}, ${mounts} mounts: ${summary(reports)}`);
    assert.ok(reports.every((r) => r.acked > 0), "every run acknowledged writes");
    if (mounts > 1) assert.ok(reports.some((r) => r.crashes > 0), "crashes were exercised");
  });
}
