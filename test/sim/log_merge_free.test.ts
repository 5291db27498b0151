/*
 * Goal: after a merge round, the server frees the merged log trees incrementally
 * (server_merge.ts phase 3, btree_free.ts): no server commit frees more than the bound of
 * their blocks, no block is freed twice, a server failover in the middle of the freeing
 * resumes it without leaking or double-freeing (fsck: every metadata block free once or
 * referenced once), and the mounts keep committing and reading while it goes on.
 *
 * Method: a SimWorld per seed with a server node and 3 mounts on shared simulated devices
 * with network delay. Each mount writes ~1500 items of 800 bytes (log trees of dozens of
 * leaves) and commits; the blocks of every log tree (item btree and bloom) are recorded. The
 * server's freeing bound is lowered to the smallest step (BTREE_FREE_MIN_BLOCKS) so freeing
 * takes many commits, and every server transaction is wrapped to count the recorded blocks
 * it frees; a count enters the tally only once its commit is durable. A merge round is
 * forced; after a few freeing commits (2-5 by seed) the next one stalls before writing and
 * the server node crashes and restarts, the new server
 * finishes the freeing while a mount writes and commits, then everything is unmounted and
 * fsck'd. SCOUTFS_SIM_SEEDS=N runs N more seeds.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { NetAddr } from "../../src/env/env.js";
import { btreeCollect, btreeWalkBlocks } from "../../src/core/btree.js";
import { BTREE_FREE_MIN_BLOCKS } from "../../src/core/btree_free.js";
import { MountClient } from "../../src/core/client.js";
import { listLogTrees } from "../../src/core/forest.js";
import { fsckVolume } from "../../src/core/fsck.js";
import { makeKey, U64_MAX, Zone } from "../../src/core/key.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { Server } from "../../src/core/server.js";
import { Volume } from "../../src/core/volume.js";
import { SimDisk } from "../../src/sim/disk.js";
import { SimWorld, type SimNode } from "../../src/sim/env.js";
import { Counters } from "../../src/util/counters.js";
import { mkfsParams } from "../helpers/volume.js";

const MiB = 1024 * 1024;
const FSID = 0x1234_5678_9abc_def0n;
const PORT = 7000;
const RIDS = [0xd1n, 0xd2n, 0xd3n];
const ITEMS_PER_MOUNT = 1500;
const EXTRA_SEEDS = Number(process.env.SCOUTFS_SIM_SEEDS ?? 0);
const FREE_COMMIT_MS = 3;

const key = (m: number, n: number): Buffer => makeKey(Zone.FS, BigInt(10_000 * (m + 1)), 100, BigInt(n));

interface Tally {
  /** The merged trees' blocks (item btrees and blooms) as the round found them. */
  blocks: Set<number>;
  /** How many times each was freed by a durable server commit. */
  freed: Map<number, number>;
  /** Blocks of `blocks` freed per durable server commit (commits freeing none omitted). */
  perCommit: number[];
  /** After this many such commits the next one never starts writing (the server then dies). */
  stallAfter: number;
}

interface Cluster {
  seed: number;
  world: SimWorld;
  meta: SimDisk;
  serverNode: SimNode;
  server: Server | null;
  driver: SimNode;
  addr: NetAddr;
  term: number;
  tally: Tally;
}

/**
 * Counts, per server transaction, the recorded blocks it frees; tallied once it is durable.
 * Such a commit also takes FREE_COMMIT_MS of virtual time (simulated devices take none), so
 * that the mounts' requests have time to arrive between two freeing steps.
 */
function watchFrees(vol: Volume, node: SimNode, tally: Tally): void {
  const begin = vol.begin.bind(vol);
  vol.begin = (seq?: number) => {
    const t = begin(seq);
    const mine: number[] = [];
    const freeRef = t.w.freeRef.bind(t.w);
    t.w.freeRef = (ref) => {
      if (tally.blocks.has(ref.blkno)) mine.push(ref.blkno);
      return freeRef(ref);
    };
    const commit = t.commit.bind(t);
    t.commit = async () => {
      if (mine.length > 0 && tally.perCommit.length >= tally.stallAfter) {
        await new Promise<void>(() => undefined); // until the crash
      }
      if (mine.length > 0) await new Promise<void>((r) => { node.env.timers.after(FREE_COMMIT_MS, r); });
      await commit();
      if (mine.length === 0) return;
      tally.perCommit.push(mine.length);
      for (const b of mine) tally.freed.set(b, (tally.freed.get(b) ?? 0) + 1);
    };
    return t;
  };
}

async function startServer(c: Cluster): Promise<void> {
  const node = c.serverNode;
  c.term++;
  await c.world.settle((async () => {
    const vol = await Volume.open(node.device(c.meta));
    watchFrees(vol, node, c.tally);
    const server = new Server(node.env, vol, new Counters(), { fsid: FSID, fmtVers: 2, term: c.term,
      clientMetaAvailTarget: 256, clientDataAvailTarget: 4096 });
    server.merger.freeBlocksPerCommit = BTREE_FREE_MIN_BLOCKS;
    c.addr = await server.start({ addr: node.addr, port: PORT });
    c.server = server;
  })());
}

async function newCluster(seed: number): Promise<Cluster> {
  const world = new SimWorld({ seed, faults: { delayMinMs: 0.1, delayMaxMs: 2 } });
  const meta = new SimDisk("meta", 1024 * MiB);
  const data = new SimDisk("data", 256 * MiB);
  await makeVolume(mkfsParams(meta, data, { fsid: FSID }));
  const c: Cluster = { seed, world, meta, serverNode: world.addNode("server"), server: null,
    driver: world.addNode("driver"), addr: { addr: "", port: 0 }, term: 0,
    tally: { blocks: new Set(), freed: new Map(), perCommit: [], stallAfter: 2 + (seed % 4) } };
  await startServer(c);
  return c;
}

function newMount(c: Cluster, i: number): MountClient {
  const node = c.world.addNode(`m${i}`);
  return new MountClient(node.env, node.device(c.meta), new Counters(), {
    fsid: FSID, fmtVers: 2, rid: RIDS[i]!, quorum: false, totalMetaBlocks: (1024 * MiB) / 65536,
    getServerAddr: () => Promise.resolve(c.addr),
  });
}

async function waitUntil(c: Cluster, what: string, cond: () => boolean | Promise<boolean>,
  limitMs = 120_000): Promise<void> {
  const until = c.world.nowMs() + limitMs;
  await c.world.settle((async () => {
    while (!(await cond())) {
      assert.ok(c.world.nowMs() < until, `seed ${c.seed}: timed out waiting for ${what}`);
      await new Promise<void>((r) => { c.driver.env.timers.after(1, r); });
    }
  })());
}

/** Every block of every log tree now committed (the round's inputs once it finalizes). */
async function recordTrees(c: Cluster): Promise<void> {
  const vol = c.server!.vol;
  for (const lt of await listLogTrees(vol.cache, vol.sb.logsRoot)) {
    await btreeWalkBlocks(vol.cache, lt.itemRoot, (ref) => { c.tally.blocks.add(ref.blkno); });
    if (lt.bloomRef.blkno !== 0) c.tally.blocks.add(lt.bloomRef.blkno);
  }
}

async function freeingItems(c: Cluster): Promise<number> {
  const vol = c.server!.vol;
  return (await btreeCollect(vol.cache, vol.sb.logMerge, makeKey(Zone.LOG_MERGE_FREEING, 0n, 0),
    makeKey(Zone.LOG_MERGE_FREEING, U64_MAX, 255, U64_MAX, U64_MAX, 255))).length;
}

const value = (seed: number, i: number, n: number): Buffer =>
  Buffer.from(`${seed}.${i}.${n}.`.padEnd(800, "x"));

/** A sample of each mount's items, read through the next mount. */
async function checkReads(c: Cluster, mounts: MountClient[], what: string): Promise<void> {
  for (let i = 0; i < mounts.length; i++) {
    for (let n = 0; n < ITEMS_PER_MOUNT; n += 97) {
      const got = await c.world.settle(mounts[(i + 1) % mounts.length]!.lookup(key(i, n)));
      assert.ok(got?.equals(value(c.seed, i, n)), `seed ${c.seed} ${what}: m${i} item ${n}`);
    }
  }
}

async function freeSeed(seed: number): Promise<void> {
  const c = await newCluster(seed);
  const mounts = [0, 1, 2].map((i) => newMount(c, i));
  await c.world.settle(Promise.all(mounts.map((m) => m.mount())));
  await c.world.settle(Promise.all(mounts.map(async (m, i) => {
    for (let n = 0; n < ITEMS_PER_MOUNT; n++) m.put(key(i, n), value(seed, i, n));
    await m.commit();
  })));
  await recordTrees(c);
  assert.ok(c.tally.blocks.size > 10 * BTREE_FREE_MIN_BLOCKS, `seed ${seed}: ${c.tally.blocks.size} blocks to free`);
  c.server!.requestMerge();
  // the server dies between two freeing commits
  await waitUntil(c, "some freeing steps", () => c.tally.perCommit.length >= c.tally.stallAfter);
  c.world.crash("server");
  c.tally.stallAfter = Infinity;
  c.serverNode = c.world.restart("server");
  await startServer(c);
  assert.ok(await freeingItems(c) > 0, `seed ${seed}: the failover hit the freeing`);
  // the new server resumes the freeing (kicked by the first commit); a mount keeps writing
  // and committing meanwhile, each commit durable between two freeing steps
  let during = 0;
  const done = async (): Promise<boolean> =>
    c.server!.counters.get("log_merge_complete") > 0 && (await freeingItems(c)) === 0;
  await c.world.settle((async () => {
    for (let n = 0; n < 200 && !(await done()); n++) {
      mounts[0]!.put(key(3, n), value(seed, 3, n));
      await mounts[0]!.commit();
      if ((await freeingItems(c)) > 0) during++;
    }
  })());
  assert.ok(during > 0, `seed ${seed}: mounts committed while the freeing went on`);
  await waitUntil(c, "the freeing", done);
  await checkReads(c, mounts, "after the freeing");
  await c.world.settle(Promise.all(mounts.map((m) => m.unmount())));
  const t = c.tally;
  for (const n of t.perCommit) assert.ok(n <= BTREE_FREE_MIN_BLOCKS, `seed ${seed}: a commit freed ${n}`);
  assert.ok(t.perCommit.length >= t.blocks.size / BTREE_FREE_MIN_BLOCKS - 1, `seed ${seed}: many commits`);
  for (const [b, n] of t.freed) assert.equal(n, 1, `seed ${seed}: block ${b} freed ${n} times`);
  // a crash can take a commit's acknowledgement (not the commit): at most one step uncounted
  assert.ok(t.freed.size >= t.blocks.size - BTREE_FREE_MIN_BLOCKS,
    `seed ${seed}: ${t.freed.size} of ${t.blocks.size} merged blocks freed`);
  const report = await fsckVolume(c.meta, null);
  assert.deepEqual(report.problems, [], `seed ${seed}: fsck`);
}

test("merged trees are freed a bounded step per commit, across a server failover", async () => {
  for (let seed = 1; seed <= 2 + EXTRA_SEEDS; seed++) await freeSeed(seed);
});
