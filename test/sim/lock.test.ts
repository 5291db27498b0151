/*
 * Goal: the cluster lock protocol keeps its promises across network faults and server
 * failovers: never two conflicting grants, every read sees the latest committed write
 * (linearizable registers, exact WRITE_ONLY delta sums and index counts), write_seqs
 * strictly increase per lock, clients' locks are recovered before a new server grants
 * anything, and every lock request completes once faults heal.
 *
 * Method: src/sim/lock_workload.ts runs 1-5 mounts (LockClient over NetClient) against a
 * LockServer (over NetServer) in a SimWorld, with a shared item store, per-mount caches and
 * transactions, and the checkers listed in its header; a violation fails the run at once.
 * Fixed seeds cover every mount count, 1-4 workers per mount, 0-3 server failovers, and
 * connection cuts and partitions; a quiet set (no faults) must also agree exactly at rest;
 * one seed is run twice and must replay bit for bit. Totals over the seeds show the faults
 * and the protocol paths (invalidations, shedding, recovery, grant counting) were real.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { SimWorld } from "../../src/sim/env.js";
import {
  LOCK_WORKLOAD_FAULTS, type LockWorkloadOptions, type LockWorkloadReport, runLockWorkload,
} from "../../src/sim/lock_workload.js";

async function run(seed: number, opts: LockWorkloadOptions):
  Promise<{ report: LockWorkloadReport; digest: string }> {
  const world = new SimWorld({ seed, faults: LOCK_WORKLOAD_FAULTS });
  try {
    const report = await runLockWorkload(world, opts);
    return { report, digest: world.digest() };
  } catch (e) {
    const tail = world.trace.entries().slice(-30).map((t) => `${t.timeUs} ${t.node} ${t.msg}`);
    throw new Error(`seed ${seed} (${JSON.stringify(opts)}): ${String(e)}\n${tail.join("\n")}`,
      { cause: e });
  }
}

const totals = new Map<string, number>();

function add(r: LockWorkloadReport): void {
  for (const [k, v] of Object.entries(r)) totals.set(k, (totals.get(k) ?? 0) + v);
}

for (let seed = 1; seed <= 40; seed++) {
  const opts: LockWorkloadOptions = { mounts: 1 + (seed % 5), workersPerMount: 1 + (seed % 4),
    chaosMs: 8_000, failovers: seed % 3, netChaos: true };
  test(`locks under cuts, partitions and ${opts.failovers} failovers: ${opts.mounts} mounts, ` +
    `seed ${seed}`, async () => {
    const { report } = await run(seed, opts);
    add(report);
    assert.ok(report.ops > 0 && report.appends > 0 && report.reads > 0);
    assert.equal(report.failovers, opts.failovers);
    if (opts.mounts > 1) assert.ok(report.invalidations > 0, "mounts contended");
  });
}

for (let seed = 101; seed <= 106; seed++) {
  test(`five busy mounts through three failovers (seed ${seed})`, async () => {
    const { report } = await run(seed, { mounts: 5, workersPerMount: 4, chaosMs: 20_000,
      failovers: 3, netChaos: true });
    add(report);
    assert.ok(report.recoveredLocks > 0, "the new servers recovered held locks");
  });
}

for (const seed of [201, 202, 203]) {
  const mounts = seed - 200;
  test(`without faults the server and ${mounts} mounts agree exactly (seed ${seed})`,
    async () => {
      const { report } = await run(seed, { mounts, workersPerMount: 3, chaosMs: 4_000,
        failovers: 0, netChaos: false });
      add(report);
      assert.equal(report.conservative, 0);
      assert.equal(report.recoveredLocks, 0);
      assert.equal(report.staleInvalidations, 0);
    });
}

test("a run replays bit for bit from its seed", async () => {
  const opts = { mounts: 3, workersPerMount: 2, chaosMs: 6_000, failovers: 1, netChaos: true };
  const a = await run(7, opts);
  const b = await run(7, opts);
  assert.equal(a.digest, b.digest);
  assert.deepEqual(a.report, b.report);
});

test("the seeds exercised the faults and the protocol's paths", () => {
  const t = (k: string): number => totals.get(k) ?? 0;
  assert.ok(t("failovers") >= 50, `failovers ${t("failovers")}`);
  assert.ok(t("cuts") > 200 && t("partitions") > 50, `cuts ${t("cuts")} partitions ` +
    `${t("partitions")}`);
  assert.ok(t("sheds") > 100, `sheds ${t("sheds")}`);
  assert.ok(t("waitGrant") > 50, `invalidations that waited for a grant: ${t("waitGrant")}`);
  assert.ok(t("staleInvalidations") > 0, "stale or duplicate invalidations after failover");
  assert.ok(t("deltas") > 1000 && t("indexes") > 1000, "WRITE_ONLY writers");
});
