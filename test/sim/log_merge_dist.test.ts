/*
 * Goal: log merging is done by the mounts (GET_LOG_MERGE / COMMIT_LOG_MERGE, server_merge.ts +
 * merge_client.ts) over real messaging: several mounts merge disjoint fs_root subtrees at
 * once, every mount reads the newest version of every key throughout, a server failover or a
 * mount's crash in the middle of a round loses nothing and leaks no block (fsck), and with no
 * mount asking for work the server merges by itself.
 *
 * Method: a SimWorld per seed with a server node and 3 mounts on shared simulated devices,
 * network delay, chunk splitting and occasional connection cuts. fs_root starts tall
 * (test/helpers/btree_build.ts): healthy level-1 subtrees (~300 leaves each, so several mounts
 * get requests at once) or, for the failover cases, small underfull ones (every splice then
 * waits for the server's rebalance). The mounts' merge workers are tuned to merge at most a
 * few dozen keys per request, so a round is many requests. Each mount writes and deletes keys
 * spread over the whole fs key space (each key has one writer), commits, and a merge round is
 * forced; a model holds every key's last committed value. Counters say who merged.
 * SCOUTFS_SIM_SEEDS=N runs N more seeds of each scenario; SCOUTFS_DEBUG=1 echoes warnings.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { NetAddr } from "../../src/env/env.js";
import { btreeCollect, btreeFree, type Item } from "../../src/core/btree.js";
import { MountClient } from "../../src/core/client.js";
import { fsckVolume } from "../../src/core/fsck.js";
import { makeKey, MAX_KEY, MIN_KEY, Zone } from "../../src/core/key.js";
import { type MergeWorkerTuning, startMergeWorker } from "../../src/core/merge_client.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { Server } from "../../src/core/server.js";
import { Volume } from "../../src/core/volume.js";
import { SimDisk } from "../../src/sim/disk.js";
import { SimWorld, type SimNode } from "../../src/sim/env.js";
import { Counters } from "../../src/util/counters.js";
import { buildTree } from "../helpers/btree_build.js";
import { mkfsParams } from "../helpers/volume.js";

const MiB = 1024 * 1024;
const FSID = 0x1234_5678_9abc_def0n;
const PORT = 7000;
const BASE_INO = 100_000;
const RIDS = [0xc1n, 0xc2n, 0xc3n];
const EXTRA_SEEDS = Number(process.env.SCOUTFS_SIM_SEEDS ?? 0);
const TUNING: Partial<MergeWorkerTuning> = { maxItems: 40, busyMinMs: 2, busyMaxMs: 50, idleMinMs: 20, idleMaxMs: 100 };

const key = (ino: number, n: number): Buffer => makeKey(Zone.FS, BigInt(BASE_INO + ino), 100, BigInt(n));
const hex = (k: Buffer): string => k.toString("hex");

interface Cluster {
  seed: number;
  world: SimWorld;
  meta: SimDisk;
  data: SimDisk;
  serverNode: SimNode;
  server: Server | null;
  driver: SimNode;
  addr: NetAddr;
  term: number;
  /** Every key's last committed value ("" = deleted). */
  model: Map<string, string>;
  /** The server's fence callback (server_recovery.ts), when the scenario fences mounts. */
  fence?: (rid: bigint) => Promise<void>;
}

async function startServer(c: Cluster): Promise<void> {
  const node = c.serverNode;
  c.term++;
  await c.world.settle((async () => {
    const vol = await Volume.open(node.device(c.meta));
    const server = new Server(node.env, vol, new Counters(), { fsid: FSID, fmtVers: 2, term: c.term,
      clientMetaAvailTarget: 256, clientDataAvailTarget: 4096,
      ...(c.fence ? { fenceClient: c.fence } : {}) });
    c.addr = await server.start({ addr: node.addr, port: PORT });
    c.server = server;
  })());
}

/**
 * A volume whose fs_root has `subtrees` level-1 blocks of `leaves` two-item leaves (inos
 * 0 .. subtrees * leaves - 1, items n = 0 and 1).
 */
async function newCluster(seed: number, subtrees: number, leaves: number,
  fence?: Cluster["fence"]): Promise<Cluster> {
  const world = new SimWorld({ seed, faults: { delayMinMs: 0.1, delayMaxMs: 2,
    streamSplitProbability: 0.3, streamCutProbability: 0.002 },
  ...(process.env.SCOUTFS_DEBUG ? { echo: (l: string) => { console.error(l); }, echoLevel: "warn" as const } : {}) });
  const meta = new SimDisk("meta", 1024 * MiB);
  const data = new SimDisk("data", 1024 * MiB);
  await makeVolume(mkfsParams(meta, data, { fsid: FSID }));
  const model = new Map<string, string>();
  const vol = await Volume.open(meta);
  const t = vol.begin();
  const items: Item[] = await btreeCollect(vol.cache, t.sb.fsRoot, MIN_KEY, MAX_KEY);
  for (let ino = 0; ino < subtrees * leaves; ino++) {
    for (const n of [0, 1]) {
      const v = `fs ${ino}.${n}`;
      items.push({ key: key(ino, n), val: Buffer.from(v), seq: 1, flags: 0 });
      model.set(hex(key(ino, n)), v);
    }
  }
  items.sort((a, b) => Buffer.compare(a.key, b.key));
  await btreeFree(t.w, t.sb.fsRoot);
  // mkfs's items share the first leaf
  t.sb.fsRoot = await buildTree(t.w, items, (level, i) =>
    level === 0 ? (i === 0 ? items.length - 2 * subtrees * leaves : 2) : level === 1 ? (i === 0 ? leaves + 1 : leaves) : 64);
  await t.commit();
  const c: Cluster = { seed, world, meta, data, serverNode: world.addNode("server"), server: null,
    driver: world.addNode("driver"), addr: { addr: "", port: 0 }, term: 0, model,
    ...(fence ? { fence } : {}) };
  await startServer(c);
  return c;
}

function newMount(c: Cluster, node: SimNode, rid: bigint): MountClient {
  return new MountClient(node.env, node.device(c.meta), new Counters(), {
    fsid: FSID, fmtVers: 2, rid, quorum: false, totalMetaBlocks: (1024 * MiB) / 65536,
    getServerAddr: () => Promise.resolve(c.addr),
  });
}

/** Mounts and swaps the default merge worker for one tuned to merge in small requests. */
async function mountTuned(c: Cluster, m: MountClient): Promise<void> {
  await c.world.settle(m.mount());
  await c.world.settle(m.mergeWorker!.stop());
  m.mergeWorker = startMergeWorker(m, TUNING);
}

/** Polls cond every millisecond of virtual time (on a node that never crashes). */
async function waitUntil(c: Cluster, what: string, cond: () => boolean | Promise<boolean>,
  limitMs = 120_000): Promise<void> {
  const until = c.world.nowMs() + limitMs;
  await c.world.settle((async () => {
    while (!(await cond())) {
      if (c.world.nowMs() >= until && process.env.SCOUTFS_DEBUG) console.error(c.server?.counters.entries());
      assert.ok(c.world.nowMs() < until, `seed ${c.seed}: timed out waiting for ${what}`);
      await new Promise<void>((r) => { c.driver.env.timers.after(1, r); });
    }
  })());
}

/** Each mount writes and deletes keys of its own (ino % 3) across all subtrees, and commits. */
async function writeRound(c: Cluster, mounts: MountClient[], round: number, inos: number): Promise<void> {
  const r = c.world.random.fork();
  await c.world.settle(Promise.all(mounts.map(async (m, i) => {
    for (let n = 0; n < 60; n++) {
      const ino = 3 * r.int(Math.floor(inos / 3)) + i;
      const k = key(ino, r.int(4));
      if (r.chance(0.2)) {
        m.delete(k);
        c.model.set(hex(k), "");
      } else {
        const v = `${c.seed}.${round}.${i}.${n}`;
        m.put(k, Buffer.from(v));
        c.model.set(hex(k), v);
      }
    }
    await m.commit();
  })));
}

/** Every key of the model read through each mount (a sample of the untouched ones). */
async function checkReads(c: Cluster, mounts: MountClient[], what: string): Promise<void> {
  const entries = [...c.model.entries()];
  for (const [j, m] of mounts.entries()) {
    for (const [i, [h, want]] of entries.entries()) {
      if (!want.startsWith(String(c.seed)) && (i + j) % 17 !== 0) continue;
      const got = await c.world.settle(m.lookup(Buffer.from(h, "hex")));
      assert.equal(got?.toString() ?? "", want, `seed ${c.seed} ${what}: key ${h}`);
    }
  }
}

function merged(c: Cluster): number {
  return c.server!.counters.get("log_merge_complete");
}

async function forceMerge(c: Cluster): Promise<void> {
  const before = merged(c);
  c.server!.requestMerge();
  await waitUntil(c, "a merge round", () => merged(c) > before);
}

async function finish(c: Cluster, mounts: MountClient[]): Promise<void> {
  await c.world.settle(Promise.all(mounts.map((m) => m.unmount())));
  assert.equal(c.server!.vol.sb.logMerge.height, 0, `seed ${c.seed}: no merge state left`);
  const report = await fsckVolume(c.meta, c.data);
  assert.deepEqual(report.problems, [], `seed ${c.seed}: fsck`);
}

function workersThatMerged(mounts: MountClient[]): number {
  return mounts.filter((m) => m.counters.get("log_merge_worker_requests") > 0).length;
}

interface ParallelStats {
  concurrent: number;
  /** Seeds in which more than one mount merged. */
  shared: number;
}

async function parallelSeed(seed: number, st: ParallelStats): Promise<void> {
  const c = await newCluster(seed, 4, 300);
  assert.equal(c.server!.vol.sb.fsRoot.height, 3);
  const mounts = RIDS.map((rid, i) => newMount(c, c.world.addNode(`m${i}`), rid));
  for (const m of mounts) await mountTuned(c, m);
  for (let round = 0; round < 3; round++) {
    await writeRound(c, mounts, round, 1200);
    await forceMerge(c);
    await checkReads(c, mounts, `after merge ${round}`);
  }
  const k = c.server!.counters;
  assert.equal(k.get("log_merge_local_steps"), 0, `seed ${seed}: the server merged by itself`);
  assert.ok(k.get("log_merge_subtree_requests") > 10, `seed ${seed}: subtree requests`);
  assert.ok(k.get("log_merge_keys") >= 3 * 3 * 40, `seed ${seed}: keys merged by the mounts`);
  // how much the mounts overlap is a matter of timing: counted over all seeds
  st.concurrent += k.get("log_merge_concurrent_requests");
  if (workersThatMerged(mounts) > 1) st.shared++;
  await finish(c, mounts);
}

test("mounts merge disjoint fs_root subtrees at once; reads stay newest; fsck clean", async () => {
  const st: ParallelStats = { concurrent: 0, shared: 0 };
  const seeds = 2 + EXTRA_SEEDS;
  for (let seed = 1; seed <= seeds; seed++) await parallelSeed(seed, st);
  assert.ok(st.concurrent > 0, "mounts held requests for different subtrees at once");
  assert.ok(st.shared >= seeds / 2, "the work was shared between mounts");
});

async function failoverSeed(seed: number): Promise<void> {
  const c = await newCluster(seed, 6, 12);
  const mounts = RIDS.map((rid, i) => newMount(c, c.world.addNode(`m${i}`), rid));
  for (const m of mounts) await mountTuned(c, m);
  await writeRound(c, mounts, 0, 72);
  // the server dies once mounts hold requests (some mid-merge, some completions in flight)
  const r = c.world.random.fork();
  const after = 1 + r.int(4);
  c.server!.requestMerge();
  await waitUntil(c, "merge requests", () => c.server!.counters.get("log_merge_requests") >= after);
  const state = await btreeCollect(c.server!.vol.cache, c.server!.vol.sb.logMerge, MIN_KEY, MAX_KEY);
  c.world.crash("server");
  c.serverNode = c.world.restart("server");
  await startServer(c);
  // the mounts' resent GET/COMMIT requests and workers carry the round on with the new server
  await waitUntil(c, "the round on the new server", () => merged(c) > 0);
  assert.ok(state.length > 1, `seed ${seed}: the failover hit a round in progress`);
  await checkReads(c, mounts, "after the failover");
  await writeRound(c, mounts, 1, 72);
  await forceMerge(c);
  await checkReads(c, mounts, "after the next merge");
  assert.equal(c.server!.counters.get("log_merge_local_steps"), 0, `seed ${seed}: mounts merged`);
  await finish(c, mounts);
}

test("the server fails over in the middle of a merge round: nothing lost, nothing leaked", async () => {
  for (let seed = 11; seed <= 13 + EXTRA_SEEDS; seed++) await failoverSeed(seed);
});

/** Requests the server has durably handed to rid. */
async function requestsOf(c: Cluster, rid: bigint): Promise<number> {
  return (await btreeCollect(c.server!.vol.cache, c.server!.vol.sb.logMerge,
    makeKey(Zone.LOG_MERGE_REQUEST, rid, 0), makeKey(Zone.LOG_MERGE_REQUEST, rid, 255))).length;
}

async function mountCrashSeed(seed: number): Promise<void> {
  const c = await newCluster(seed, 6, 12);
  const mounts = RIDS.map((rid, i) => newMount(c, c.world.addNode(`m${i}`), rid));
  for (const m of mounts) await mountTuned(c, m);
  await writeRound(c, mounts, 0, 72);
  // only m0 asks for work until it dies holding a request
  for (const m of mounts.slice(1)) await c.world.settle(m.mergeWorker!.stop());
  c.server!.requestMerge();
  await waitUntil(c, "a request held by m0", async () => (await requestsOf(c, RIDS[0]!)) > 0);
  c.world.crash("m0");
  for (const m of mounts.slice(1)) m.mergeWorker = startMergeWorker(m, TUNING);
  // the others cannot finish the round while m0's request is outstanding ...
  await c.world.runFor(3_000);
  assert.equal(merged(c), 0, `seed ${seed}: the round waits for m0's request`);
  assert.equal(await requestsOf(c, RIDS[0]!), 1);
  // ... until m0 comes back (same rid): its first GET_LOG_MERGE hands the range out again
  const back = newMount(c, c.world.restart("m0"), RIDS[0]!);
  await mountTuned(c, back);
  mounts[0] = back;
  await waitUntil(c, "the round", () => merged(c) > 0);
  assert.ok(c.server!.counters.get("log_merge_request_cancel") >= 1, `seed ${seed}: m0's request handed out again`);
  await checkReads(c, mounts, "after m0 came back");
  await finish(c, mounts);
}

test("a mount crashes holding a merge request: the range is handed out again", async () => {
  for (let seed = 21; seed <= 22 + EXTRA_SEEDS; seed++) await mountCrashSeed(seed);
});

async function fencedSeed(seed: number): Promise<void> {
  // fencing (server_recovery.ts) kills the mount's node, as the sim cluster's agent does
  const fenced: bigint[] = [];
  const c: Cluster = await newCluster(seed, 6, 12, (rid) => {
    fenced.push(rid);
    const node = c.world.node(`m${RIDS.indexOf(rid)}`);
    if (node.alive) c.world.crash(node.name);
    return Promise.resolve();
  });
  const mounts = RIDS.map((rid, i) => newMount(c, c.world.addNode(`m${i}`), rid));
  for (const m of mounts) await mountTuned(c, m);
  await writeRound(c, mounts, 0, 72);
  for (const m of mounts.slice(1)) await c.world.settle(m.mergeWorker!.stop());
  c.server!.requestMerge();
  await waitUntil(c, "a request held by m0", async () => (await requestsOf(c, RIDS[0]!)) > 0);
  c.world.crash("m0");
  for (const m of mounts.slice(1)) m.mergeWorker = startMergeWorker(m, TUNING);
  // m0 never comes back: after the reconnect timeout it is fenced and reclaimed, which
  // deletes its mounted_clients item; the server then cancels its request
  await waitUntil(c, "the round", () => merged(c) > 0);
  assert.ok(c.server!.counters.get("log_merge_request_cancel") >= 1, `seed ${seed}: handed out again`);
  assert.equal(await requestsOf(c, RIDS[0]!), 0);
  assert.deepEqual(fenced, [RIDS[0]]);
  // m0's committed items stay (its reclaimed log tree is merged by a later round)
  const live = mounts.slice(1);
  await checkReads(c, live, "after m0 was fenced");
  await finish(c, live);
}

test("a mount dies for good holding a merge request: fenced, its range handed to the others", async () => {
  for (let seed = 41; seed <= 41 + EXTRA_SEEDS; seed++) await fencedSeed(seed);
});

test("with no mount asking for merge work the server merges by itself", async () => {
  const c = await newCluster(31, 3, 40);
  const mounts = RIDS.map((rid, i) => newMount(c, c.world.addNode(`m${i}`), rid));
  for (const m of mounts) await mountTuned(c, m);
  await writeRound(c, mounts, 0, 120);
  for (const m of mounts) await c.world.settle(m.mergeWorker!.stop());
  await forceMerge(c);
  await checkReads(c, mounts, "after the server's own merge");
  assert.ok(c.server!.counters.get("log_merge_local_steps") > 0, "the server merged");
  assert.equal(c.server!.counters.get("log_merge_requests"), 0, "no mount asked");
  await finish(c, mounts);
});
