/*
 * Goal: delta items (.totl. {total, count} contributions) written by several mounts under
 * WRITE_ONLY locks read as their sum from every mount, however they are spread: over the
 * mounts' dirty items (a mount's own uncommitted deltas, one added while its commit is in
 * flight included), their committed log trees, finalized trees being merged and fs_root
 * after the merge, through lock-less reads and through the item cache under a READ lock
 * (whose grant makes the writers commit). A read during a merge round must not count twice
 * what a merge already put in fs_root while the finalized trees are still readable.
 *
 * Method: a SimWorld per seed with a server and 3 mounts (light network delay). Mounts A and
 * B add random deltas to a few totl keys over several transactions; a model sums what each
 * mount added and what is committed. Reads are compared with the model: lock-less on each
 * mount (its committed-by-all sum plus its own dirty part), and under C's READ lock (all).
 * Merge rounds are forced (the server's freeing slowed to small steps), and C reads the keys
 * lock-less every millisecond of the round; reads made while fs_root already held a key's
 * merged value and finalized trees were still present are counted and must have occurred.
 * SCOUTFS_SIM_SEEDS=N runs N more seeds.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { btreeLookup } from "../../src/core/btree.js";
import { decodeDelta, encodeDelta } from "../../src/core/btree_merge.js";
import { BTREE_FREE_MIN_BLOCKS } from "../../src/core/btree_free.js";
import type { MountClient } from "../../src/core/client.js";
import { listLogTrees } from "../../src/core/forest.js";
import { LOG_TREES_FLAG_FINALIZED } from "../../src/core/format_log.js";
import { fsckVolume } from "../../src/core/fsck.js";
import { makeKey, Zone } from "../../src/core/key.js";
import { LockMode } from "../../src/core/lock_msg.js";
import { totlZoneRange } from "../../src/core/lock_names.js";
import type { SimRandom } from "../../src/sim/random.js";
import { type SimCluster, simMountClient, startSimCluster } from "../helpers/sim_fs.js";
import { MiB } from "../helpers/volume.js";

const KEYS = 4;
const EXTRA_SEEDS = Number(process.env.SCOUTFS_SIM_SEEDS ?? 0);

const totlKey = (n: number): Buffer => makeKey(Zone.XATTR_TOTL, 7n, 0, 9n, BigInt(n));

interface Cluster extends SimCluster {
  seed: number;
  mounts: MountClient[];
}

/**
 * Per key, the [total, count] each mount added: committed, and still dirty. Deltas are what
 * .totl. xattrs make (an xattr set: +value, +1; removed: -value, -1; changed: the
 * difference, 0), so a key's count is the number of its live xattrs and a count of 0 means a
 * total of 0 (the forest relies on it, as upstream does).
 */
class Model {
  readonly committed = Array.from({ length: KEYS }, () => [0, 0]);
  readonly dirty = [0, 1].map(() => Array.from({ length: KEYS }, () => [0, 0]));
  /** The values of the xattrs each mount set, per key. */
  readonly live = [0, 1].map(() => Array.from({ length: KEYS }, (): number[] => []));

  /** A random xattr change of mount m on key k: the delta it makes. */
  change(m: number, k: number, r: SimRandom): [number, number] {
    const live = this.live[m]![k]!;
    const d: [number, number] = [0, 0];
    const i = live.length > 0 ? r.int(live.length) : -1;
    if (i >= 0 && r.chance(0.3)) {
      d[0] = -live[i]!;
      d[1] = -1;
      live.splice(i, 1);
    } else if (i >= 0 && r.chance(0.3)) {
      const v = 1 + r.int(50);
      d[0] = v - live[i]!;
      live[i] = v;
    } else {
      const v = 1 + r.int(50);
      d[0] = v;
      d[1] = 1;
      live.push(v);
    }
    const dirty = this.dirty[m]![k]!;
    dirty[0]! += d[0];
    dirty[1]! += d[1];
    return d;
  }

  commit(m: number): void {
    for (let k = 0; k < KEYS; k++) {
      const d = this.dirty[m]![k]!;
      const c = this.committed[k]!;
      c[0]! += d[0]!;
      c[1]! += d[1]!;
      d[0] = 0;
      d[1] = 0;
    }
  }

  /** What mount m reads lock-less (committed plus its own dirty deltas), as "total/count". */
  seenBy(m: number, k: number): string {
    const c = this.committed[k]!;
    const d = this.dirty[m]?.[k] ?? [0, 0];
    const t = c[0]! + d[0]!;
    const n = c[1]! + d[1]!;
    return t === 0 && n === 0 ? "absent" : `${t}/${n}`;
  }
}

const show = (v: Buffer | null): string => {
  if (v === null) return "absent";
  const d = decodeDelta(v);
  return `${d.total}/${d.count}`;
};

async function newCluster(seed: number): Promise<Cluster> {
  const c = await startSimCluster(seed, { faults: { delayMinMs: 0.1, delayMaxMs: 2 },
    metaBytes: 256 * MiB,
    beforeStart: (server) => { server.merger.freeBlocksPerCommit = BTREE_FREE_MIN_BLOCKS; } });
  const mounts = [0, 1, 2].map((i) => simMountClient(c, c.world.addNode(`m${i}`), {
    rid: BigInt(0xe0 + i),
    // no timer commits: the model knows what is committed (locks and syncs still commit)
    commitDelayMs: 3_600_000,
  }));
  await c.world.settle(Promise.all(mounts.map((m) => m.mount())));
  return { ...c, seed, mounts };
}

/** Mount m adds a few random deltas under a WRITE_ONLY lock; maybe one during its commit. */
async function addDeltas(c: Cluster, model: Model, m: number, r: SimRandom, commit: boolean):
  Promise<void> {
  const mount = c.mounts[m]!;
  await c.world.settle((async () => {
    const h = await mount.locks.lock([totlZoneRange()], LockMode.WRITE_ONLY);
    const add = (): void => {
      const k = r.int(KEYS);
      const [total, count] = model.change(m, k, r);
      mount.deltaLocked(h.held[0]!, totlKey(k), encodeDelta(BigInt(total), BigInt(count)));
    };
    for (let i = 0; i < 1 + r.int(4); i++) add();
    if (commit) {
      model.commit(m);
      const p = mount.commit();
      // once the commit took the dirty deltas, the next add is kept apart from them
      for (let spins = 0; !mount.items.commitInFlight; spins++) {
        assert.ok(spins < 10_000, `seed ${c.seed}: the commit took the deltas`);
        await Promise.resolve();
      }
      add(); // still dirty once the commit settles (the model's dirty part)
      await p;
    }
    mount.locks.unlock(h);
  })());
}

/** Lock-less reads on every mount against what each should see. */
async function checkLockless(c: Cluster, model: Model, what: string): Promise<void> {
  for (const [m, mount] of c.mounts.entries()) {
    for (let k = 0; k < KEYS; k++) {
      const got = show(await c.world.settle(mount.lookup(totlKey(k))));
      assert.equal(got, model.seenBy(m, k), `seed ${c.seed} ${what}: m${m} key ${k}`);
    }
  }
}

/** C reads under READ: the writers commit (invalidation), then everything is committed. */
async function checkLocked(c: Cluster, model: Model, what: string): Promise<void> {
  const reader = c.mounts[2]!;
  const got = await c.world.settle((async () => {
    const h = await reader.locks.lock([totlZoneRange()], LockMode.READ);
    try {
      const out: string[] = [];
      for (let k = 0; k < KEYS; k++) out.push(show(await reader.lookupLocked(h.held[0]!, totlKey(k))));
      const first = await reader.nextLocked(h.held[0]!, totlZoneRange().start);
      out.push(first === null ? "none" : first.key.toString("hex"));
      return out;
    } finally {
      reader.locks.unlock(h);
    }
  })());
  model.commit(0);
  model.commit(1);
  const want = Array.from({ length: KEYS }, (_, k) => model.seenBy(2, k));
  const firstKey = want.findIndex((w) => w !== "absent");
  want.push(firstKey < 0 ? "none" : totlKey(firstKey).toString("hex"));
  assert.deepEqual(got, want, `seed ${c.seed} ${what}: under a READ lock`);
}

/**
 * A merge round with C reading lock-less every millisecond; returns how many reads saw a key
 * whose merged value was in fs_root while finalized trees were still in logs_root.
 */
async function mergeWhileReading(c: Cluster, model: Model): Promise<number> {
  const before = c.server.counters.get("log_merge_complete");
  const reader = c.mounts[2]!;
  let window = 0;
  c.server.requestMerge();
  await c.world.settle((async () => {
    while (c.server.counters.get("log_merge_complete") === before) {
      const vol = c.server.vol;
      const finalized = (await listLogTrees(vol.cache, vol.sb.logsRoot))
        .some((lt) => (lt.flags & LOG_TREES_FLAG_FINALIZED) !== 0);
      for (let k = 0; k < KEYS; k++) {
        const inFs = finalized && (await btreeLookup(vol.cache, vol.sb.fsRoot, totlKey(k))) !== null;
        const got = show(await reader.lookup(totlKey(k)));
        assert.equal(got, model.seenBy(2, k), `seed ${c.seed} during a merge: key ${k}`);
        if (inFs) window++;
      }
      await new Promise<void>((r) => { reader.env.timers.after(1, r); });
    }
  })());
  return window;
}

async function deltaSeed(seed: number): Promise<number> {
  const c = await newCluster(seed);
  const model = new Model();
  const r = c.world.random.fork();
  let window = 0;
  for (let round = 0; round < 4; round++) {
    for (let i = 0; i < 3; i++) {
      await addDeltas(c, model, 0, r, r.chance(0.5));
      await addDeltas(c, model, 1, r, r.chance(0.5));
    }
    await checkLockless(c, model, `round ${round}, dirty and committed`);
    await c.world.settle(Promise.all([c.mounts[0]!.commit(), c.mounts[1]!.commit()]));
    model.commit(0);
    model.commit(1);
    await checkLockless(c, model, `round ${round}, committed`);
    await addDeltas(c, model, 0, r, false);
    await checkLocked(c, model, `round ${round}`);
    if (round % 2 === 1) {
      window += await mergeWhileReading(c, model);
      await checkLockless(c, model, `round ${round}, after the merge`);
      await checkLocked(c, model, `round ${round}, after the merge`);
    }
  }
  await c.world.settle(Promise.all(c.mounts.map((m) => m.unmount())));
  const report = await fsckVolume(c.meta, null);
  assert.deepEqual(report.problems, [], `seed ${seed}: fsck`);
  return window;
}

test("deltas from several mounts read as their sum before, during and after merges", async () => {
  let window = 0;
  for (let seed = 1; seed <= 3 + EXTRA_SEEDS; seed++) window += await deltaSeed(seed);
  assert.ok(window > 0, "reads happened while merged values and finalized trees coexisted");
});
