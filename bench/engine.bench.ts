/*
 * Storage-engine micro benchmarks (docs/performance.md records the figures).
 *
 * On sparse files in a temp directory on disk (buffered I/O: commits write to the page
 * cache; --sim uses in-memory SimDisks instead), with a warm block cache, one thread:
 *   - random inserts/s building a tree of N items (committing every 50,000 inserts),
 *   - random lookups/s at N items, random deletes/s, sequential iteration items/s,
 *   - merge throughput: items/s merging 4 log-tree-like inputs into a destination,
 *   - extent allocations and frees per second,
 *   - crc32c MB/s over 64 KiB blocks.
 * Usage: node dist/bench/engine.bench.js [--items N] [--runs R] [--val BYTES]; prints one
 * `ENGINE metric=... value=... unit=...` line per figure (the median of R runs where timed).
 */
import { mkdtemp, open, rm, truncate } from "node:fs/promises";
import path from "node:path";
import { performance } from "node:perf_hooks";
import type { BlockDevice } from "../src/env/env.js";
import { openRealBlockDevice } from "../src/env/real/blockdev.js";
import { allocExtent, freeExtent } from "../src/core/alloc.js";
import { btreeDelete, btreeInsert, btreeIterate, btreeLookup } from "../src/core/btree.js";
import { btreeMerge } from "../src/core/btree_merge.js";
import { emptyAllocRoot, emptyRoot, type BtreeRoot } from "../src/core/format.js";
import { makeKey, MAX_KEY, MIN_KEY } from "../src/core/key.js";
import { makeVolume } from "../src/core/mkfs.js";
import { Volume, type VolumeTxn } from "../src/core/volume.js";
import { SimDisk } from "../src/sim/disk.js";
import { SimRandom } from "../src/sim/random.js";
import { crc32c } from "../src/util/crc32c.js";

const GiB = 1024 ** 3;

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

function report(metric: string, value: number, unit: string): void {
  console.log(`ENGINE metric=${metric} value=${Math.round(value)} unit=${unit}`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const cleanups: (() => Promise<void>)[] = [];

async function device(name: string, bytes: number): Promise<BlockDevice> {
  if (process.argv.includes("--sim")) return new SimDisk(name, bytes);
  const dir = await mkdtemp(path.join(process.env.TMPDIR ?? "/var/tmp", "scoutfs-bench-"));
  const file = path.join(dir, name);
  await (await open(file, "w")).close();
  await truncate(file, bytes);
  const dev = await openRealBlockDevice(file);
  cleanups.push(async () => {
    await dev.close();
    await rm(dir, { recursive: true, force: true });
  });
  return dev;
}

async function newVolume(): Promise<Volume> {
  const meta = await device("meta", 16 * GiB);
  const data = await device("data", 64 * GiB);
  await makeVolume({
    meta, data, totalMetaBlocks: (16 * GiB) / 65536, totalDataBlocks: (64 * GiB) / 4096,
    slots: [{ nr: 0, addr: "127.0.0.1", port: 19700 }], dataAllocZoneBlocks: null,
    formatVersion: 2, fsid: 1n, uuid: Buffer.alloc(16, 1), nowSec: 0n, nowNsec: 0,
  });
  return Volume.open(meta, { cacheBytes: 2 * GiB });
}

const key = (n: number): Buffer => makeKey(16, BigInt(n), 4, BigInt(n % 7), 0n, 0);
let VAL = Buffer.alloc(16, 7);

function shuffled(n: number, rng: SimRandom): number[] {
  const a = Array.from({ length: n }, (_, i) => i * 3);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

async function timed(n: number, fn: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return n / ((performance.now() - t0) / 1000);
}

async function inTxns(vol: Volume, items: number[], per: number,
  fn: (t: VolumeTxn, n: number) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += per) {
    const t = vol.begin();
    for (const n of items.slice(i, i + per)) await fn(t, n);
    await t.commit();
  }
}

async function treeBench(n: number, runs: number): Promise<void> {
  const rng = new SimRandom(42);
  const vol = await newVolume();
  const keys = shuffled(n, rng);
  report("btree_insert_random", await timed(n, () =>
    inTxns(vol, keys, 50_000, (t, k) => btreeInsert(t.w, t.sb.fsRoot, key(k), VAL))), "ops/s");
  const probe = shuffled(n, rng).slice(0, 200_000);
  const look: number[] = [];
  for (let r = 0; r < runs; r++) {
    look.push(await timed(probe.length, async () => {
      for (const k of probe) if (!(await btreeLookup(vol.cache, vol.sb.fsRoot, key(k)))) throw new Error("miss");
    }));
  }
  report("btree_lookup_random", median(look), "ops/s");
  let seen = 0;
  report("btree_iterate", await timed(n, () => btreeIterate(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY,
    () => { seen++; })), "items/s");
  report("btree_height", vol.sb.fsRoot.height, "levels");
  const del = probe.slice(0, 100_000);
  report("btree_delete_random", await timed(del.length, () =>
    inTxns(vol, del, 50_000, (t, k) => btreeDelete(t.w, t.sb.fsRoot, key(k)))), "ops/s");
  report("btree_cache_mib", vol.cache.cachedBytes / 1024 / 1024, "MiB");
  if (seen < n) throw new Error("iteration missed items");
}

async function mergeBench(n: number): Promise<void> {
  const vol = await newVolume();
  const inputs: BtreeRoot[] = [];
  for (let t = 0; t < 4; t++) {
    const root = emptyRoot();
    const txn = vol.begin();
    for (let i = 0; i < n / 4; i++) {
      await btreeInsert(txn.w, root, key(i * 4 + t), VAL, { seq: 10 + t });
    }
    await txn.commit();
    inputs.push(root);
  }
  const dest = emptyRoot();
  let total = 0;
  const rate = await timed(n, async () => {
    let start: Buffer | null = MIN_KEY;
    while (start) {
      const txn = vol.begin();
      const r = await btreeMerge(txn.w, dest, inputs, start, MAX_KEY,
        { dropTombstones: true, maxItems: 100_000 });
      await txn.commit();
      total += r.keys;
      start = r.next;
    }
  });
  if (total !== n) throw new Error(`merged ${total} of ${n}`);
  report("btree_merge_4_inputs", rate, "items/s");
}

async function allocBench(): Promise<void> {
  const vol = await newVolume();
  const t = vol.begin();
  const a = emptyAllocRoot();
  await freeExtent(t.w, a, { start: 1000, len: 10_000_000 });
  const n = 50_000;
  const got: { start: number; len: number }[] = [];
  report("alloc_extent", await timed(n, async () => {
    for (let i = 0; i < n; i++) got.push((await allocExtent(t.w, a, 8))!);
  }), "ops/s");
  const rng = new SimRandom(7);
  for (let i = got.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [got[i], got[j]] = [got[j]!, got[i]!];
  }
  report("free_extent_random", await timed(n, async () => {
    for (const e of got) await freeExtent(t.w, a, e);
  }), "ops/s");
  await t.commit();
}

function crcBench(): void {
  const buf = Buffer.alloc(65536, 0x5a);
  const n = 20_000;
  const t0 = performance.now();
  let x = 0;
  for (let i = 0; i < n; i++) x ^= crc32c(buf);
  const s = (performance.now() - t0) / 1000;
  report("crc32c_64k", (n * buf.length) / s / 1e6, "MB/s");
  if (x === 0.5) console.log(x);
}

async function main(): Promise<void> {
  const items = arg("--items", 1_000_000);
  VAL = Buffer.alloc(arg("--val", 16), 7);
  const runs = arg("--runs", 3);
  crcBench();
  await allocBench();
  await treeBench(items, runs);
  await mergeBench(Math.min(items, 400_000));
}

try {
  await main();
} finally {
  for (const c of cleanups) await c();
}
