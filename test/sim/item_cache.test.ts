/*
 * Goal: mounts reading and writing shared keys through their item caches under cluster locks
 * always read the linearizable value: the one last written under the lock by any mount
 * (committed by the invalidation that moved the lock here) or by this mount itself. Cached
 * items never outlive the lock that covered them (checked at every grant out of NULL), lock
 * conflicts really invalidate caches, reads are mostly served from memory, and reads without
 * a lock (forest + own dirty items) agree once everything is committed.
 *
 * Method: a SimWorld per seed with a server and 3 mounts (one with a tiny item cache so it
 * evicts), light network faults. Groups: two small inode groups of contended keys and one
 * large group (600 keys written first, so iterations need several bounded fills). Two
 * workers per mount loop: lock one group READ or WRITE, then lookups, next/prev steps, range
 * reads, puts and deletes; sometimes commit or shed idle locks. A model keeps every key's
 * history of writes on a logical clock: a lookup must return a value current at some point
 * of its interval; iterations are compared exactly when no write touched the group during
 * them. A log merge runs between two phases. Removing the invalidation's drop of cached
 * items (ItemCache.invalidate as a no-op) makes this test fail: stale reads.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { MountClient } from "../../src/core/client.js";
import { fsckVolume } from "../../src/core/fsck.js";
import { compareKeys, formatKey, keyInc, makeKey, Zone } from "../../src/core/key.js";
import type { HeldLock } from "../../src/core/lock.js";
import { LockMode } from "../../src/core/lock_msg.js";
import { inodeGroupRange, type LockRange } from "../../src/core/lock_names.js";
import type { SimRandom } from "../../src/sim/random.js";
import type { Counters } from "../../src/util/counters.js";
import { type SimCluster, simMountClient, startSimCluster } from "../helpers/sim_fs.js";
import { MiB } from "../helpers/volume.js";

interface Group {
  ino: bigint;
  range: LockRange;
  keys: Buffer[];
}

const key = (ino: bigint, n: number): Buffer => makeKey(Zone.FS, ino, 100, BigInt(n));
const groupOf = (ino: bigint, inos: number, per: number): Group => ({
  ino, range: inodeGroupRange(ino),
  keys: Array.from({ length: inos * per }, (_, i) =>
    key(ino + BigInt(Math.floor(i / per)), i % per)).sort(compareKeys),
});
// away from the root inode (ino 1), whose mkfs items the model does not know
const GROUPS: Group[] = [groupOf(10_240n, 3, 4), groupOf(11_264n, 3, 4), groupOf(12_288n, 6, 100)];
const BIG = GROUPS[2]!;
const hex = (k: Buffer): string => k.toString("hex");

// ---------------------------------------------------------------------------------------
// The model: every key's writes on a logical clock.

class Model {
  clock = 0;
  private readonly history = new Map<string, { at: number; val: string | null }[]>();
  /** Last write time per group (by range start). */
  private readonly groupWrite = new Map<string, number>();
  checkedExact = 0;
  skippedExact = 0;
  lookups = 0;

  write(g: Group, k: Buffer, val: string | null): void {
    const at = ++this.clock;
    const h = this.history.get(hex(k)) ?? [];
    h.push({ at, val });
    this.history.set(hex(k), h);
    this.groupWrite.set(hex(g.range.start), at);
  }

  /** The value of k at time t. */
  valueAt(k: Buffer, t: number): string | null {
    let v: string | null = null;
    for (const w of this.history.get(hex(k)) ?? []) if (w.at <= t) v = w.val;
    return v;
  }

  /** Values k had at some point of [t0, t1]. */
  acceptable(k: Buffer, t0: number, t1: number): (string | null)[] {
    const out = [this.valueAt(k, t0)];
    for (const w of this.history.get(hex(k)) ?? []) if (w.at > t0 && w.at <= t1) out.push(w.val);
    return out;
  }

  /** True if nothing in g was written in (t0, t1]: an iteration has one right answer. */
  quiet(g: Group, t0: number): boolean {
    return (this.groupWrite.get(hex(g.range.start)) ?? 0) <= t0;
  }

  /** Live keys of g in [from, to] at time t, in order. */
  live(g: Group, from: Buffer, to: Buffer, t: number): { key: Buffer; val: string }[] {
    return g.keys.filter((k) => compareKeys(k, from) >= 0 && compareKeys(k, to) <= 0)
      .map((k) => ({ key: k, val: this.valueAt(k, t) }))
      .filter((x): x is { key: Buffer; val: string } => x.val !== null);
  }
}

// ---------------------------------------------------------------------------------------
// The cluster.

interface Cluster extends SimCluster {
  mounts: MountClient[];
  /** Grants out of NULL that found cached items of their range. */
  staleAtGrant: string[];
}

async function newCluster(seed: number): Promise<Cluster> {
  const c: Cluster = { ...await startSimCluster(seed, {
    faults: { delayMinMs: 0.1, delayMaxMs: 2, streamSplitProbability: 0.2,
      streamCutProbability: 0.001 },
    metaBytes: 256 * MiB, dataBytes: 1024 * MiB,
  }), mounts: [], staleAtGrant: [] };
  for (let i = 0; i < 3; i++) {
    const m: MountClient = simMountClient(c, c.world.addNode(`m${i + 1}`), {
      rid: BigInt(0xc0 + i),
      // the third mount's cache holds a few dozen items: it evicts all the time
      itemCacheBytes: i === 2 ? 6000 : undefined,
      onLockModeChange: (ch) => {
        if (ch.why !== "grant" || ch.from !== LockMode.NULL) return;
        const left = m.items.cleanIn(ch.range.start, ch.range.end);
        if (left.entries + left.ranges > 0) {
          c.staleAtGrant.push(`m${i + 1} ${formatKey(ch.range.start)}: ${JSON.stringify(left)}`);
        }
      },
    });
    c.mounts.push(m);
  }
  await c.world.settle(Promise.all(c.mounts.map((m) => m.mount())));
  return c;
}

function sleep(m: MountClient, ms: number): Promise<void> {
  return new Promise((resolve) => { m.env.timers.after(ms, resolve); });
}

// ---------------------------------------------------------------------------------------
// Workers.

async function checkLookup(model: Model, m: MountClient, h: HeldLock, k: Buffer): Promise<void> {
  const t0 = model.clock;
  const got = (await m.lookupLocked(h, k))?.toString() ?? null;
  const ok = model.acceptable(k, t0, model.clock);
  model.lookups++;
  assert.ok(ok.includes(got), `lookup ${formatKey(k)}: got ${got}, model ${JSON.stringify(ok)}`);
}

async function checkIterate(model: Model, m: MountClient, h: HeldLock, g: Group, r: SimRandom):
  Promise<void> {
  const t0 = model.clock;
  const a = g.keys[r.int(g.keys.length)]!;
  const kind = r.int(3);
  let got: { key: Buffer; val: Buffer }[];
  let want: { key: Buffer; val: string }[];
  if (kind === 0) {
    const x = await m.nextLocked(h, a);
    got = x === null ? [] : [x];
    want = model.live(g, a, g.range.end, t0).slice(0, 1);
  } else if (kind === 1) {
    const x = await m.prevLocked(h, a);
    got = x === null ? [] : [x];
    want = model.live(g, g.range.start, a, t0).slice(-1);
  } else {
    const limit = 1 + r.int(400);
    got = await m.rangeLocked(h, a, g.range.end, limit);
    want = model.live(g, a, g.range.end, t0).slice(0, limit);
  }
  if (!model.quiet(g, t0)) {
    model.skippedExact++;
    return;
  }
  model.checkedExact++;
  const show = (xs: { key: Buffer; val: Buffer | string }[]): string[] =>
    xs.map((x) => `${formatKey(x.key)}=${x.val.toString()}`);
  assert.deepEqual(show(got), show(want), `iteration ${kind} from ${formatKey(a)}`);
}

async function underLock(c: Cluster, model: Model, mi: number, r: SimRandom, op: number):
  Promise<void> {
  const m = c.mounts[mi]!;
  const g = r.chance(0.3) ? BIG : GROUPS[r.int(2)]!;
  const write = r.chance(0.4);
  const handle = await m.locks.lock([g.range], write ? LockMode.WRITE : LockMode.READ);
  const h = handle.held[0]!;
  try {
    for (let n = 1 + r.int(6); n > 0; n--) {
      const k = g.keys[r.int(g.keys.length)]!;
      const what = r.int(10);
      if (write && what < 3) {
        const v = `m${mi + 1}.${op}.${n}`;
        m.putLocked(h, k, Buffer.from(v));
        model.write(g, k, v);
      } else if (write && what < 4) {
        m.deleteLocked(h, k);
        model.write(g, k, null);
      } else if (what < 8) {
        await checkLookup(model, m, h, k);
      } else {
        await checkIterate(model, m, h, g, r);
      }
      if (r.chance(0.3)) await sleep(m, r.int(3));
    }
  } finally {
    m.locks.unlock(handle);
  }
}

async function worker(c: Cluster, model: Model, mi: number, r: SimRandom, ops: number):
  Promise<void> {
  const m = c.mounts[mi]!;
  for (let op = 0; op < ops; op++) {
    await underLock(c, model, mi, r, op);
    if (r.chance(0.08)) await m.commit();
    if (r.chance(0.03)) m.locks.purgeIdle();
    await sleep(m, r.int(4));
  }
}

async function phase(c: Cluster, model: Model, ops: number): Promise<void> {
  await c.world.settle(Promise.all(c.mounts.flatMap((_, mi) => [0, 1].map((w) =>
    worker(c, model, mi, c.world.random.fork(), ops + w)))));
}

/** Forces a log merge (the forest's items move into fs_root) and waits for it. */
async function mergeNow(c: Cluster): Promise<void> {
  const before = c.server.counters.get("log_merge_complete");
  c.server.requestMerge();
  await c.world.settle((async () => {
    while (c.server.counters.get("log_merge_complete") === before) {
      await new Promise<void>((res) => { c.serverNode.env.timers.after(10, res); });
    }
  })());
}

/** At rest: every mount reads the model's final values with and without locks. */
async function checkAtRest(c: Cluster, model: Model): Promise<void> {
  await c.world.settle(Promise.all(c.mounts.map((m) => m.commit())));
  for (const [mi, m] of c.mounts.entries()) {
    for (const g of GROUPS) {
      const want = model.live(g, g.range.start, g.range.end, model.clock)
        .map((x) => `${formatKey(x.key)}=${x.val}`);
      const locked = await c.world.settle((async () => {
        const handle = await m.locks.lock([g.range], LockMode.READ);
        try {
          return await m.rangeLocked(handle.held[0]!, g.range.start, g.range.end, 10_000);
        } finally {
          m.locks.unlock(handle);
        }
      })());
      assert.deepEqual(locked.map((x) => `${formatKey(x.key)}=${x.val.toString()}`), want,
        `m${mi + 1} locked range of ${formatKey(g.range.start)}`);
      const unlocked: string[] = [];
      let p = g.range.start;
      for (;;) {
        const x = await c.world.settle(m.next(p, g.range.end));
        if (x === null) break;
        unlocked.push(`${formatKey(x.key)}=${x.val.toString()}`);
        p = keyInc(x.key);
      }
      assert.deepEqual(unlocked, want,
        `m${mi + 1} lock-less next over ${formatKey(g.range.start)}`);
      for (const k of g.keys.slice(0, 12)) {
        const v = await c.world.settle(m.lookup(k));
        assert.equal(v?.toString() ?? null, model.valueAt(k, model.clock), `m${mi + 1} lookup`);
      }
    }
  }
}

async function runSeed(seed: number): Promise<{ model: Model; counters: Counters[] }> {
  const c = await newCluster(seed);
  const model = new Model();
  // the large group, written and committed by the first mount
  await c.world.settle((async () => {
    const m = c.mounts[0]!;
    const handle = await m.locks.lock([BIG.range], LockMode.WRITE);
    BIG.keys.forEach((k, i) => {
      if (i % 7 === 3) return;
      m.putLocked(handle.held[0]!, k, Buffer.from(`init${i}`));
      model.write(BIG, k, `init${i}`);
    });
    m.locks.unlock(handle);
    await m.commit();
  })());
  await phase(c, model, 40);
  await mergeNow(c);
  await phase(c, model, 40);
  await checkAtRest(c, model);
  assert.deepEqual(c.staleAtGrant, [], "no cached items outlived their lock");
  const counters = c.mounts.map((m) => m.counters);
  await c.world.settle(Promise.all(c.mounts.map((m) => m.unmount())));
  c.server.stop();
  const report = await fsckVolume(c.meta, c.data);
  assert.deepEqual(report.problems, [], `seed ${seed}: fsck`);
  return { model, counters };
}

test("three mounts read shared keys through their item caches under locks", async () => {
  const sum = (cs: Counters[], name: string): number => cs.reduce((s, k) => s + k.get(name), 0);
  for (const seed of [11, 12, 13]) {
    const { model, counters } = await runSeed(seed);
    const where = `seed ${seed}`;
    assert.ok(model.lookups > 100 && model.checkedExact > 20, `${where}: reads were checked`);
    assert.ok(sum(counters, "lock_invalidate_request") > 10, `${where}: locks conflicted`);
    assert.ok(sum(counters, "item_cache_invalidate") > 10, `${where}: caches were invalidated`);
    assert.ok(sum(counters, "item_cache_fill") > 10, `${where}: misses filled the caches`);
    assert.ok(sum(counters, "item_cache_hit") > 2 * sum(counters, "item_cache_fill"),
      `${where}: most reads were served from memory`);
    assert.ok(counters[2]!.get("item_cache_evict") > 0, `${where}: the small cache evicted`);
  }
});
