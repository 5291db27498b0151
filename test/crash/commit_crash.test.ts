/*
 * Goal: RELIABILITY.md promise 2, "atomic transactions": whatever a power cut leaves on the
 * metadata device, the volume opens, fsck finds nothing, and fs_root shows exactly the state
 * of one committed transaction: the last one whose super write was flushed, or the next one
 * if its super write had been issued (never a mix, never an older one). Also: a torn super
 * block is caught by its checksum; an abandoned or failed transaction leaves the committed
 * state intact and the next transaction works.
 *
 * Method: after mkfs, the metadata SimDisk is wrapped in a RecordingDisk and a seeded workload
 * of transactions runs on it (inserts, updates to other sizes, deletes, 896-byte values, data
 * extents allocated and freed; enough to split, join, grow and shrink fs_root and to drain
 * and refill the allocators across commits). After every commit the expected fs_root content
 * (a digest of the model Map) is stored. Then for recorded states (the device after the first
 * n logged writes/flushes, n = 0..all) we crash the state in each mode of SimDisk.crash():
 * lose-all, keep-all, random-subset (3 seeds, keep probability 0.5/0.25/0.75) and torn (3
 * seeds, same probabilities, 4 KiB sectors). Each crash image is opened with a fresh Volume;
 * its super seq names the commit it shows. With j = the number of super writes in the state's
 * prefix: if super write j was followed by a flush, the image must show commit j; otherwise
 * commit j-1 or j, and exactly j-1 for lose-all and j for keep-all. fs_root must equal that
 * commit's model exactly and fsckVolume must report no problem. Identical images are checked
 * once (a state without unflushed writes gives one image in every mode; lose-all images only
 * change at flushes).
 *
 * Coverage: EVERY recorded state of the short workload (8 transactions) and of the long one
 * (14 larger transactions on a 2048-block volume; it exhausts meta_alloc[0], so later refills
 * come from meta_alloc[1]) is checked in all 8 crash variants. A third workload (one
 * transaction that COWs ~800 leaves, so the avail list runs under its low water mark and is
 * refilled in the middle of the transaction) is too slow to enumerate fully (each image holds
 * ~27k items, ~50 MB): it checks a sampled subset (every state from one op before to two ops
 * after each super write, plus every 16th state) in lose-all, keep-all and torn.
 *
 * The super is written as one 4 KiB sector, which the fault model treats as atomic. To show
 * that a super torn anyway is refused rather than read as a mix, the super's in-flight write
 * is torn on a disk with 512-byte sectors (all 256 subsets; with our layout every field a
 * commit changes sits in the first 512 bytes, so none of these mixes) and by hand at every
 * byte between the first and last byte the commit changed, both ways round.
 *
 * Counts and runtimes are printed; the file runs in about 25 s (816 crash images of 172
 * states, plus 1252 torn-super images).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { allocExtent, freeExtent } from "../../src/core/alloc.js";
import {
  btreeCollect, btreeDelete, btreeInsert, btreeUpdate, BTREE_MAX_VAL_LEN, type Item,
} from "../../src/core/btree.js";
import { encodeDataExtent, SUPER_OFFSET, SUPER_SIZE, type SuperBlock } from "../../src/core/format.js";
import { fsckVolume } from "../../src/core/fsck.js";
import { dataExtentKey, FsType, makeKey, MAX_KEY, MIN_KEY, Zone } from "../../src/core/key.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { SERVER_AVAIL_TARGET, Volume, type VolumeTxn } from "../../src/core/volume.js";
import { type CrashMode, type DiskOp, RecordingDisk, SimDisk } from "../../src/sim/disk.js";
import { SimRandom } from "../../src/sim/random.js";
import { Counters } from "../../src/util/counters.js";
import { isFsError } from "../../src/util/errno.js";
import { MiB, mkfsParams } from "../helpers/volume.js";

const SEED = 0xc4a5_4001;
const CACHE_BYTES = 32 * MiB;

// ---------------------------------------------------------------------------------------
// The model and the workload.

type Model = Map<string, Buffer>;

/** Digest of fs_root content (key, flags, value), in key order. */
function digestItems(items: { key: Buffer; val: Buffer; flags: number }[]): string {
  const h = createHash("sha256");
  const n = Buffer.alloc(3);
  for (const it of items) {
    n.writeUInt16LE(it.val.length, 0);
    n.writeUInt8(it.flags, 2);
    h.update(it.key).update(n).update(it.val);
  }
  return `${items.length}:${h.digest("hex")}`;
}

function digestModel(m: Model): string {
  // equal-length lowercase hex sorts like the keys' bytes
  const keys = [...m.keys()].sort();
  return digestItems(keys.map((k) => ({ key: Buffer.from(k, "hex"), val: m.get(k)!, flags: 0 })));
}

function valLen(rng: SimRandom, large: boolean): number {
  if (large && rng.chance(0.6)) return BTREE_MAX_VAL_LEN - rng.int(32);
  const r = rng.int(8);
  if (r === 0) return 0;
  if (r < 4) return 1 + rng.int(48);
  if (r < 7) return 64 + rng.int(400);
  return BTREE_MAX_VAL_LEN - rng.int(200);
}

function randomVal(rng: SimRandom, len: number): Buffer {
  const v = Buffer.alloc(len);
  rng.fill(v);
  return v;
}

interface TxnSpec {
  insert?: number;
  update?: number;
  del?: number;
  large?: boolean;
  dataAlloc?: number;
  dataFree?: number;
  /** Inserts of 896-byte values at ascending keys (leaves split half full). */
  seqInsert?: number;
  /** Rewrites (same size) every n-th key in key order: COWs every leaf of a large tree. */
  touchEvery?: number;
}

interface DataExtent {
  key: string;
  start: number;
  len: number;
}

class Workload {
  readonly model: Model = new Map();
  private readonly extents: DataExtent[] = [];
  private nextIblock = 0n;
  private nextName = 0n;

  constructor(readonly rng: SimRandom) {}

  private xattrKeys(): string[] {
    return [...this.model.keys()].filter((k) => Buffer.from(k, "hex")[9] === FsType.XATTR);
  }

  async apply(t: VolumeTxn, s: TxnSpec): Promise<void> {
    const rng = this.rng;
    for (let i = 0; i < (s.seqInsert ?? 0); i++) {
      const key = makeKey(Zone.FS, 100_000n + this.nextName++, FsType.XATTR);
      const val = randomVal(rng, BTREE_MAX_VAL_LEN);
      await btreeInsert(t.w, t.sb.fsRoot, key, val);
      this.model.set(key.toString("hex"), val);
    }
    if (s.touchEvery !== undefined) {
      const sorted = [...this.model.keys()].sort();
      for (let i = 0; i < sorted.length; i += s.touchEvery) {
        const k = sorted[i]!;
        const val = randomVal(rng, this.model.get(k)!.length);
        await btreeUpdate(t.w, t.sb.fsRoot, Buffer.from(k, "hex"), val);
        this.model.set(k, val);
      }
    }
    for (let i = 0; i < (s.insert ?? 0); i++) {
      const key = makeKey(Zone.FS, BigInt(3000 + rng.int(64)), FsType.XATTR, BigInt(rng.u32()),
        this.nextName++);
      const val = randomVal(rng, valLen(rng, s.large ?? false));
      await btreeInsert(t.w, t.sb.fsRoot, key, val);
      this.model.set(key.toString("hex"), val);
    }
    const keys = rng.shuffle(this.xattrKeys());
    const upd = keys.slice(0, Math.min(s.update ?? 0, keys.length));
    const del = keys.slice(upd.length, upd.length + Math.min(s.del ?? 0, keys.length - upd.length));
    for (const k of upd) {
      const val = randomVal(rng, valLen(rng, s.large ?? false));
      await btreeUpdate(t.w, t.sb.fsRoot, Buffer.from(k, "hex"), val);
      this.model.set(k, val);
    }
    for (const k of del) {
      await btreeDelete(t.w, t.sb.fsRoot, Buffer.from(k, "hex"));
      this.model.delete(k);
    }
    for (let i = 0; i < (s.dataFree ?? 0) && this.extents.length > 0; i++) {
      const [e] = this.extents.splice(rng.int(this.extents.length), 1);
      await btreeDelete(t.w, t.sb.fsRoot, Buffer.from(e!.key, "hex"));
      this.model.delete(e!.key);
      await freeExtent(t.w, t.sb.dataAlloc, { start: e!.start, len: e!.len });
    }
    for (let i = 0; i < (s.dataAlloc ?? 0); i++) {
      const e = await allocExtent(t.w, t.sb.dataAlloc, 1 + rng.int(24));
      assert.ok(e, "data allocation");
      this.nextIblock += BigInt(e.len) + 3n;
      const key = dataExtentKey(4000n, this.nextIblock, BigInt(e.len)).toString("hex");
      const val = encodeDataExtent({ blkno: e.start, flags: 0 });
      await btreeInsert(t.w, t.sb.fsRoot, Buffer.from(key, "hex"), val);
      this.model.set(key, val);
      this.extents.push({ key, ...e });
    }
  }
}

async function fsContent(vol: Volume): Promise<Item[]> {
  return btreeCollect(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY);
}

async function newDisks(sectorBytes?: number, metaBytes = 128 * MiB):
  Promise<{ meta: SimDisk; data: SimDisk }> {
  const opts = sectorBytes === undefined ? {} : { sectorBytes };
  const meta = new SimDisk("meta", metaBytes, opts); // default 2048 metadata blocks: the minimum
  const data = new SimDisk("data", 16 * MiB);
  await makeVolume(mkfsParams(meta, data));
  return { meta, data };
}

interface Recorded {
  rec: RecordingDisk;
  data: SimDisk;
  /** digests[k]: fs_root after commit k (0 = as mkfs left it). */
  digests: string[];
  /** seqs[k]: the super seq of commit k. */
  seqs: number[];
  /** Log index of each commit's super write (commit k at superWrites[k - 1]). */
  superWrites: number[];
  counters: Counters;
  /** [meta_alloc[0], meta_alloc[1], avail] totals after each commit (what was exercised). */
  metaAllocTotals: [number, number, number][];
  /** Extent allocations made while each transaction ran, before its commit. */
  allocsInTxn: number[];
  /** Time spent building and recording the workload. */
  ms: number;
}

interface RecordOptions {
  metaBytes?: number;
  /** Transactions committed before recording starts (their states are not enumerated). */
  prebuild?: TxnSpec[];
}

function isSuperWrite(op: DiskOp): boolean {
  return op.kind === "write" && op.offset === SUPER_OFFSET && op.data.length === SUPER_SIZE;
}

async function record(seed: number, specs: TxnSpec[], opts: RecordOptions = {}): Promise<Recorded> {
  const started = Date.now();
  const { meta, data } = await newDisks(undefined, opts.metaBytes);
  const w = new Workload(new SimRandom(seed));
  if (opts.prebuild) {
    const pre = await Volume.open(meta, { cacheBytes: CACHE_BYTES });
    for (const it of await fsContent(pre)) w.model.set(it.key.toString("hex"), it.val);
    for (const s of opts.prebuild) {
      const t = pre.begin();
      await w.apply(t, s);
      await t.commit();
    }
  }
  const rec = new RecordingDisk(meta);
  const counters = new Counters();
  const vol = await Volume.open(rec, { cacheBytes: CACHE_BYTES, counters });
  w.model.clear();
  for (const it of await fsContent(vol)) w.model.set(it.key.toString("hex"), it.val);
  const allocsInTxn = [0];
  const digests = [digestModel(w.model)];
  const seqs = [vol.sb.seq];
  const totals = (sb: SuperBlock): [number, number, number] =>
    [sb.metaAlloc[0].totalLen, sb.metaAlloc[1].totalLen, sb.serverMetaAvail[0].totalNr];
  const metaAllocTotals = [totals(vol.sb)];
  for (const s of specs) {
    const t = vol.begin();
    const allocs = counters.get("alloc_alloc_extent");
    await w.apply(t, s);
    allocsInTxn.push(counters.get("alloc_alloc_extent") - allocs);
    await t.commit();
    const d = digestModel(w.model);
    assert.equal(digestItems(await fsContent(vol)), d, "the live volume matches the model");
    assert.ok(!digests.includes(d), "every commit changes fs_root");
    digests.push(d);
    seqs.push(vol.sb.seq);
    metaAllocTotals.push(totals(vol.sb));
  }
  rec.stop();
  const superWrites: number[] = [];
  rec.log().forEach((op, i) => { if (isSuperWrite(op)) superWrites.push(i); });
  assert.equal(superWrites.length, specs.length, "one super write per commit");
  const r = await fsckVolume(meta, data);
  assert.deepEqual(r.problems, [], "the final volume is clean");
  return { rec, data, digests, seqs, superWrites, counters, metaAllocTotals, allocsInTxn,
    ms: Date.now() - started };
}

// ---------------------------------------------------------------------------------------
// Checking crash images.

interface Variant {
  mode: CrashMode;
  p: number;
  v: number;
}

const ALL_VARIANTS: Variant[] = [
  { mode: "lose-all", p: 0.5, v: 0 },
  { mode: "keep-all", p: 0.5, v: 0 },
  { mode: "random-subset", p: 0.5, v: 0 },
  { mode: "random-subset", p: 0.25, v: 1 },
  { mode: "random-subset", p: 0.75, v: 2 },
  { mode: "torn", p: 0.5, v: 0 },
  { mode: "torn", p: 0.25, v: 1 },
  { mode: "torn", p: 0.75, v: 2 },
];
const FEW_VARIANTS = ALL_VARIANTS.filter((x) => x.v === 0);

function describe(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ""}` : String(e);
}

/** Opens a crash image and checks it shows commit `allowed` exactly; returns that commit. */
async function checkImage(r: Recorded, img: SimDisk, allowed: number[], ctx: string): Promise<number> {
  let vol: Volume;
  try {
    vol = await Volume.open(img, { cacheBytes: CACHE_BYTES });
  } catch (e) {
    assert.fail(`${ctx}: the crashed volume does not open: ${describe(e)}`);
  }
  const k = r.seqs.indexOf(vol.sb.seq);
  assert.ok(k >= 0, `${ctx}: super seq ${vol.sb.seq} is no commit's`);
  assert.ok(allowed.includes(k), `${ctx}: shows commit ${k}, expected one of ${allowed.join("/")}`);
  let items: Item[];
  try {
    items = await fsContent(vol);
  } catch (e) {
    assert.fail(`${ctx}: reading fs_root of commit ${k} failed: ${describe(e)}`);
  }
  assert.equal(digestItems(items), r.digests[k], `${ctx}: fs_root differs from commit ${k}'s`);
  let problems: string[];
  try {
    problems = (await fsckVolume(img, r.data)).problems;
  } catch (e) {
    assert.fail(`${ctx}: fsck failed: ${describe(e)}`);
  }
  assert.deepEqual(problems, [], `${ctx}: fsck problems`);
  return k;
}

interface Stats {
  states: number;
  images: number;
  byMode: Map<string, number>;
  shown: Map<number, number>;
}

/** Checks the states for which `pick(afterOp)` is true, in the given crash variants. */
async function checkStates(r: Recorded, seed: number, variants: Variant[],
  pick: (afterOp: number) => boolean): Promise<Stats> {
  const log = r.rec.log();
  const st: Stats = { states: 0, images: 0, byMode: new Map(), shown: new Map() };
  let supers = 0;
  let lastFlush = -1;
  let lastLoseAllFlush = -2;
  for (const { afterOp, disk } of r.rec.states()) {
    if (afterOp > 0) {
      const op = log[afterOp - 1]!;
      if (isSuperWrite(op)) supers++;
      if (op.kind === "flush") lastFlush = afterOp - 1;
    }
    if (!pick(afterOp)) continue;
    st.states++;
    // supers issued in this prefix = the newest commit that may show; durable once flushed
    const flushed = supers === 0 || r.superWrites[supers - 1]! < lastFlush;
    const durable = flushed ? supers : supers - 1;
    const pending = disk.unflushedWrites();
    for (const x of variants) {
      if (pending === 0 && x.mode !== "lose-all") continue; // the same image in every mode
      if (x.mode === "lose-all") {
        if (lastFlush === lastLoseAllFlush) continue; // durable image unchanged since last check
        lastLoseAllFlush = lastFlush;
      }
      const rng = new SimRandom((BigInt(seed) << 24n) | BigInt(afterOp * 8 + ALL_VARIANTS.indexOf(x)));
      const img = disk.crash(rng, x.mode, { keepProbability: x.p });
      const allowed = x.mode === "lose-all" ? [durable] : x.mode === "keep-all" ? [supers]
        : [durable, supers];
      const ctx = `state ${afterOp}/${log.length} (${pending} unflushed) ${x.mode} p=${x.p}`;
      const k = await checkImage(r, img, [...new Set(allowed)], ctx);
      st.images++;
      st.byMode.set(x.mode, (st.byMode.get(x.mode) ?? 0) + 1);
      st.shown.set(k, (st.shown.get(k) ?? 0) + 1);
    }
  }
  return st;
}

function summary(r: Recorded, s: Stats): string {
  const modes = [...s.byMode].map(([m, n]) => `${m} ${n}`).join(", ");
  return `${r.rec.log().length} ops (recorded in ${r.ms} ms), ${s.states} states, ` +
    `${s.images} crash images (${modes}), ${s.shown.size} distinct commits seen`;
}

// ---------------------------------------------------------------------------------------

const SHORT: TxnSpec[] = [
  { insert: 600 },                                          // grow: splits, height 2
  { insert: 120, update: 150, del: 30, large: true },       // values change size
  { insert: 10, del: 450, dataAlloc: 20 },                  // joins
  { insert: 300, update: 60, dataAlloc: 10, dataFree: 8 },
  { insert: 5, del: 700, dataFree: 10 },                    // shrink back towards one leaf
  { insert: 250, large: true },
  { update: 200, del: 20, dataFree: 4, dataAlloc: 6 },
  { insert: 40, update: 40, del: 40 },
];

test("every recorded state of a short workload crashes into exactly one committed state",
  async () => {
    const started = Date.now();
    const r = await record(SEED, SHORT);
    assert.ok(r.counters.get("btree_split") > 0, "the workload splits blocks");
    assert.ok(r.counters.get("btree_join") + r.counters.get("btree_rebalance") > 0,
      "the workload joins blocks");
    const t = r.metaAllocTotals;
    assert.ok(t[t.length - 1]![1] > t[0]![1], "freed blocks were drained into meta_alloc[1]");
    assert.ok(t[t.length - 1]![0] < t[0]![0], "the avail list was refilled from meta_alloc[0]");
    const s = await checkStates(r, SEED, ALL_VARIANTS, () => true);
    assert.equal(s.states, r.rec.log().length + 1, "every state checked");
    assert.equal(s.shown.size, SHORT.length + 1, "every commit was seen in some crash image");
    console.log(`short workload: ${SHORT.length} commits, ${summary(r, s)}, ` +
      `${Date.now() - started} ms`);
  });

const LONG: TxnSpec[] = [
  { insert: 1500, large: true },
  { insert: 1500, large: true, dataAlloc: 30 },
  { insert: 1000, update: 500, large: true },
  ...Array.from({ length: 8 }, (_, i): TxnSpec => ({
    insert: 300 + 50 * i, update: 700, del: 400 + 40 * i, large: i % 2 === 0, dataAlloc: 8, dataFree: 6,
  })),
  { insert: 2500, large: true },                            // refill from meta_alloc[1]
  { del: 3000, dataFree: 20 },
  { insert: 800, update: 200 },
];

test("every recorded state of a long workload that exhausts meta_alloc[0]", async () => {
  const started = Date.now();
  const r = await record(SEED + 1, LONG);
  const t = r.metaAllocTotals;
  const drained = t.findIndex(([a]) => a === 0);
  assert.ok(drained > 0, `meta_alloc[0] ran dry (totals ${JSON.stringify(t)})`);
  assert.ok(t.slice(drained + 1).some(([, b, avail], i) => b < t[drained + i]![1] &&
    avail === SERVER_AVAIL_TARGET), `later refills came from meta_alloc[1] (totals ${JSON.stringify(t)})`);
  const s = await checkStates(r, SEED + 1, ALL_VARIANTS, () => true);
  assert.equal(s.states, r.rec.log().length + 1, "every state checked");
  assert.equal(s.shown.size, LONG.length + 1, "every commit was seen in some crash image");
  console.log(`long workload: ${LONG.length} commits, ${summary(r, s)}, ` +
    `meta_alloc totals ${JSON.stringify(t)}, ${Date.now() - started} ms`);
});

test("sampled states of one transaction large enough to refill its avail list mid-way",
  async () => {
    const started = Date.now();
    // ~800 half-full leaves, then one transaction that COWs every leaf (> 768 allocations)
    const r = await record(SEED + 7, [
      { touchEvery: 16 },
      { insert: 200, update: 200, del: 200, dataAlloc: 4 },
      { del: 8000 },
    ], { metaBytes: 256 * MiB, prebuild: [{ seqInsert: 9000 }, { seqInsert: 9000 }, { seqInsert: 9000 }] });
    assert.ok(r.allocsInTxn[1]! > 0, "the avail list was refilled during the big transaction");
    const near = new Set<number>();
    for (const w of r.superWrites) for (let d = -1; d <= 2; d++) near.add(w + d);
    const s = await checkStates(r, SEED + 7, FEW_VARIANTS.filter((x) => x.mode !== "random-subset"),
      (n) => near.has(n) || n % 16 === 0);
    assert.equal(s.shown.size, 4, "every commit was seen in some crash image");
    console.log(`big transaction: ${summary(r, s)}, ` +
      `extent allocations inside transactions ${JSON.stringify(r.allocsInTxn)}, ${Date.now() - started} ms`);
  });

test("a torn super block is caught by its checksum, never read as a mix", async () => {
  const { meta, data } = await newDisks(512);
  let vol = await Volume.open(meta, { cacheBytes: CACHE_BYTES });
  const w = new Workload(new SimRandom(SEED + 3));
  for (const it of await fsContent(vol)) w.model.set(it.key.toString("hex"), it.val);
  let t = vol.begin();
  await w.apply(t, { insert: 400, dataAlloc: 5 });
  await t.commit();
  const oldDigest = digestModel(w.model);
  const oldSuper = meta.readDurable(SUPER_OFFSET, SUPER_SIZE);

  const rec = new RecordingDisk(meta);
  vol = await Volume.open(rec, { cacheBytes: CACHE_BYTES });
  t = vol.begin();
  await w.apply(t, { insert: 100, update: 100, del: 100, dataFree: 2 });
  await t.commit();
  rec.stop();
  const newDigest = digestModel(w.model);
  const newSuper = meta.readDurable(SUPER_OFFSET, SUPER_SIZE);
  const at = rec.log().findIndex(isSuperWrite);
  assert.ok(at > 0);
  // the new super's write is issued and unflushed; everything it references is durable
  const state = rec.stateAfter(at + 1);
  assert.deepEqual(state.unflushedWriteExtents(), [{ offset: SUPER_OFFSET, length: SUPER_SIZE }]);

  const checked = new Set<string>();
  const expectImage = async (img: SimDisk, ctx: string): Promise<"whole" | "mixed"> => {
    const sup = img.readDurable(SUPER_OFFSET, SUPER_SIZE);
    if (sup.equals(oldSuper) || sup.equals(newSuper)) {
      const which = sup.equals(oldSuper) ? "old" : "new";
      if (!checked.has(which)) {
        checked.add(which);
        const v = await Volume.open(img, { cacheBytes: CACHE_BYTES });
        assert.equal(digestItems(await fsContent(v)), which === "old" ? oldDigest : newDigest, ctx);
        assert.deepEqual((await fsckVolume(img, data)).problems, [], ctx);
      }
      return "whole";
    }
    await assert.rejects(Volume.open(img), (e: unknown) => {
      assert.ok(isFsError(e, "EIO"), `${ctx}: open must fail with EIO, got ${describe(e)}`);
      assert.match(e.message, /super block checksum/, ctx);
      return true;
    }, ctx);
    await assert.rejects(fsckVolume(img, data), (e: unknown) => {
      assert.ok(isFsError(e, "EIO"), `${ctx}: fsck must fail with EIO, got ${describe(e)}`);
      return true;
    }, ctx);
    return "mixed";
  };

  // every subset of the super's 512-byte sectors persisted
  const sectors = SUPER_SIZE / 512;
  let sectorMixed = 0;
  for (let mask = 0; mask < 1 << sectors; mask++) {
    const img = state.crashTorn((_w, sector) => ((mask >> sector) & 1) === 1);
    const r = await expectImage(img, `super sectors kept 0b${mask.toString(2).padStart(sectors, "0")}`);
    if (r === "mixed") sectorMixed++;
  }

  // torn by hand at every byte between the first and last byte that differ, both ways round
  const diffs = [...oldSuper.keys()].filter((i) => oldSuper[i] !== newSuper[i]);
  const first = diffs[0]!;
  const last = diffs[diffs.length - 1]!;
  let byteMixed = 0;
  let images = 0;
  for (let k = first; k <= last + 1; k++) {
    for (const [head, tail, name] of [[newSuper, oldSuper, "new|old"], [oldSuper, newSuper, "old|new"]] as const) {
      const mix = Buffer.concat([head.subarray(0, k), tail.subarray(k)]);
      const img = state.crash(new SimRandom(0), "lose-all");
      img.applyWrite(mix, SUPER_OFFSET);
      img.applyFlush();
      images++;
      if (await expectImage(img, `super torn ${name} at byte ${k}`) === "mixed") byteMixed++;
    }
  }
  assert.ok(checked.has("old") && checked.has("new"));
  assert.ok(byteMixed > 0);
  console.log(`torn super: 512-byte sector subsets: ${1 << sectors} images, ${sectorMixed} mixed ` +
    `(the fields a commit changes span bytes ${first}..${last}); byte-level tears: ${images} images, ` +
    `${byteMixed} mixed; every mixed image refused with EIO`);
});

test("an abandoned or failed transaction leaves the committed state, and the next one works",
  async () => {
    const { meta, data } = await newDisks();
    const vol = await Volume.open(meta, { cacheBytes: CACHE_BYTES });
    const w = new Workload(new SimRandom(SEED + 4));
    for (const it of await fsContent(vol)) w.model.set(it.key.toString("hex"), it.val);
    let t = vol.begin();
    await w.apply(t, { insert: 800, large: true, dataAlloc: 10 });
    await t.commit();
    const committed = digestModel(w.model);
    const sbJson = (sb: SuperBlock): string =>
      JSON.stringify(sb, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
    const sbBefore = sbJson(vol.sb);

    // abandon a big transaction (splits, COW, frees, allocations) on a throwaway model
    const writes = meta.counters.writes;
    t = vol.begin();
    const scratch = new Workload(new SimRandom(SEED + 5));
    for (const [k, v] of w.model) scratch.model.set(k, v);
    await scratch.apply(t, { insert: 1500, update: 300, del: 300, large: true, dataAlloc: 10 });
    assert.ok(t.w.dirtyCount > 10, "the abandoned transaction dirtied blocks");
    t.abandon();
    assert.equal(meta.counters.writes, writes, "an abandoned transaction writes nothing");
    assert.equal(sbJson(vol.sb), sbBefore, "the committed super is unchanged");
    assert.equal(digestItems(await fsContent(vol)), committed, "the cache shows the committed state");
    assert.equal(digestItems(await fsContent(await Volume.open(meta))), committed);
    assert.deepEqual((await fsckVolume(meta, data)).problems, []);

    // the next transaction works and commits
    t = vol.begin();
    await w.apply(t, { insert: 300, update: 200, del: 200, dataAlloc: 4, dataFree: 3 });
    await t.commit();
    assert.equal(digestItems(await fsContent(vol)), digestModel(w.model));
    assert.equal(digestItems(await fsContent(await Volume.open(meta))), digestModel(w.model));
    assert.deepEqual((await fsckVolume(meta, data)).problems, []);

    // a commit whose super write (then: whose block writes) fail is abandoned; retry works
    for (const failAt of ["super", "blocks"] as const) {
      const good = digestModel(w.model);
      const goodSb = sbJson(vol.sb);
      t = vol.begin();
      const failed = new Workload(new SimRandom(SEED + 6));
      for (const [k, v] of w.model) failed.model.set(k, v);
      await failed.apply(t, { insert: 200, update: 100, del: 100 });
      meta.failWrites((off) => (failAt === "super" ? off === SUPER_OFFSET : off > SUPER_OFFSET));
      await assert.rejects(t.commit(), (e: unknown) => isFsError(e, "EIO"), failAt);
      meta.failWrites(null);
      assert.equal(sbJson(vol.sb), goodSb, `${failAt}: the committed super is unchanged`);
      assert.equal(digestItems(await fsContent(vol)), good, `${failAt}: cache`);
      assert.equal(digestItems(await fsContent(await Volume.open(meta))), good, `${failAt}: disk`);
      assert.deepEqual((await fsckVolume(meta, data)).problems, [], failAt);
      t = vol.begin();
      await w.apply(t, { insert: 150, update: 150, del: 150, dataAlloc: 2, dataFree: 2 });
      await t.commit();
      assert.equal(digestItems(await fsContent(await Volume.open(meta))), digestModel(w.model), failAt);
      assert.deepEqual((await fsckVolume(meta, data)).problems, [], failAt);
    }
    // and a second transaction may not open while one is
    t = vol.begin();
    assert.throws(() => vol.begin(), (e: unknown) => isFsError(e, "EBUSY"));
    t.abandon();
    vol.begin().abandon();
  });
