/*
 * Item cache micro benchmark: lookups per second of one mount, cached against uncached.
 *
 * A simulated cluster (server + one mount, in-memory disks, no network faults and the
 * smallest delays) holds N committed keys in one inode group spread over several log trees
 * and fs_root. Measured in wall-clock time, one thread:
 *   - uncached lookups: MountClient.lookup (GET_ROOTS round trip + forest read per lookup),
 *   - forest lookups with fixed roots: forestLookup alone (what a lookup costs without the
 *     round trip: warm block cache, memoized log trees),
 *   - cached lookups: MountClient.lookupLocked under one READ lock (after the first fill),
 *   - ItemCache.get alone,
 *   - iteration: nextLocked over the group (cached) against next() (lock-less, uncached).
 * Usage: node dist/bench/item_cache.bench.js [--keys N] [--lookups M]; prints one
 * `ITEM_CACHE metric=... value=... unit=...` line per figure.
 */
import { performance } from "node:perf_hooks";
import { MountClient } from "../src/core/client.js";
import { forestLookup } from "../src/core/forest.js";
import { keyInc, makeKey, Zone } from "../src/core/key.js";
import { LockMode } from "../src/core/lock_msg.js";
import { inodeGroupRange } from "../src/core/lock_names.js";
import { makeVolume } from "../src/core/mkfs.js";
import { Server } from "../src/core/server.js";
import { Volume } from "../src/core/volume.js";
import { SimDisk } from "../src/sim/disk.js";
import { SimWorld } from "../src/sim/env.js";
import { SimRandom } from "../src/sim/random.js";
import { Counters } from "../src/util/counters.js";
import { mkfsParams } from "../test/helpers/volume.js";

const MiB = 1024 * 1024;
const FSID = 0x1234_5678_9abc_def0n;
const INO = 10_240n;

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

function report(metric: string, value: number, unit: string): void {
  console.log(`ITEM_CACHE metric=${metric} value=${Math.round(value)} unit=${unit}`);
}

const key = (n: number): Buffer => makeKey(Zone.FS, INO + BigInt(n % 1000), 100, BigInt(n));

async function timed(n: number, fn: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return n / ((performance.now() - t0) / 1000);
}

async function main(): Promise<void> {
  const nKeys = arg("--keys", 5000);
  const nLookups = arg("--lookups", 20_000);
  const world = new SimWorld({ seed: 1, faults: { delayMinMs: 0.01, delayMaxMs: 0.02 } });
  const meta = new SimDisk("meta", 512 * MiB);
  const data = new SimDisk("data", 256 * MiB);
  await makeVolume(mkfsParams(meta, data, { fsid: FSID }));
  const sn = world.addNode("server");
  const server = await world.settle((async () => new Server(sn.env,
    await Volume.open(sn.device(meta)), new Counters(), { fsid: FSID, fmtVers: 2, term: 1 }))());
  const addr = await world.settle(server.start({ addr: sn.addr, port: 7000 }));
  const node = world.addNode("m1");
  const m = new MountClient(node.env, node.device(meta), new Counters(), { fsid: FSID,
    fmtVers: 2, rid: 0xa1n, quorum: false, totalMetaBlocks: (512 * MiB) / 65536,
    getServerAddr: () => Promise.resolve(addr) });
  await world.settle(m.mount());
  const range = inodeGroupRange(INO);
  // several commits: several versions of the log tree's items
  await world.settle((async () => {
    for (let c = 0; c < 4; c++) {
      const h = await m.locks.lock([range], LockMode.WRITE);
      for (let i = c; i < nKeys; i += 4) m.putLocked(h.held[0]!, key(i), Buffer.alloc(64, i));
      m.locks.unlock(h);
      await m.commit();
    }
  })());
  const rng = new SimRandom(7);
  const picks = Array.from({ length: nLookups }, () => key(rng.int(nKeys)));

  const uncachedN = Math.min(nLookups, 5000);
  report("lookup_uncached", await timed(uncachedN, () => world.settle((async () => {
    for (let i = 0; i < uncachedN; i++) await m.lookup(picks[i]!);
  })())), "ops/s");

  const roots = await world.settle(m.getRoots());
  report("forest_lookup_fixed_roots", await timed(nLookups, async () => {
    for (const k of picks) await forestLookup(m.cache, roots, k);
  }), "ops/s");

  const h = await world.settle(m.locks.lock([range], LockMode.READ));
  const held = h.held[0]!;
  // fill the group once (bounded fills), then measure hits
  await world.settle((async () => { for (const k of picks) await m.lookupLocked(held, k); })());
  report("lookup_cached", await timed(nLookups, () => world.settle((async () => {
    for (const k of picks) await m.lookupLocked(held, k);
  })())), "ops/s");
  report("item_cache_get", await timed(nLookups * 5, async () => {
    for (let r = 0; r < 5; r++) for (const k of picks) m.items.get(k);
  }), "ops/s");

  report("iterate_cached", await timed(nKeys, () => world.settle((async () => {
    let p = range.start;
    for (let x = await m.nextLocked(held, p); x !== null; x = await m.nextLocked(held, p)) {
      p = keyInc(x.key);
    }
  })())), "items/s");
  const iterN = Math.min(nKeys, 2000);
  report("iterate_uncached", await timed(iterN, () => world.settle((async () => {
    let p = range.start;
    for (let n = 0; n < iterN; n++) {
      const x = await m.next(p, range.end);
      if (x === null) break;
      p = keyInc(x.key);
    }
  })())), "items/s");
  m.locks.unlock(h);
  report("cached_items", m.items.entryCount, "items");
  report("cache_bytes", m.items.bytes, "bytes");
  await world.settle(m.unmount());
  server.stop();
}

await main();
