/*
 * Goal: show that distributed log merging (server_merge.ts handing out fs_root subtrees,
 * merge_client.ts mergeRequest() merging into them, btree_subtree.ts splicing them back) gives
 * exactly the fs_root a single merge of the same inputs gives, keeps fs_root a valid btree
 * after every splice, and never leaks or double-frees a block, whatever the order of requests
 * and completions, partial completions, failed, abandoned, resent and stale completions, and
 * mounts that disappear (their requests reclaimed, the server finishing by itself).
 *
 * Method: fast-check builds a tall fs_root (test/helpers/btree_build.ts: heights 1..5 from a
 * few hundred items, with random fan-outs, so subtrees are small, often underfull or
 * single-child) and 1..4 finalized input log trees over a shared key universe: ordinary
 * items, tombstones and, in the .totl. zone, delta items; destination seqs below, between and
 * above the inputs'. A LogMerger runs against the volume through a minimal in-process host
 * (serialized holds, no network); three fake mounts, each with its own block cache, follow a
 * random script: ask for work (which abandons the request they hold), merge a request with
 * random small bounds (maxItems, dirty limit) so most completions are partial, send or resend
 * a completion, report a failure. After each step fs_root's structure is checked (levels,
 * bounds, non-empty blocks, right spine) and sometimes fsck runs mid-round (requests own their
 * lists). Some cases end with the mounts "fenced" (mounted_clients items deleted) and the
 * server finishing by itself. The final fs_root is compared with a model of the merge rules
 * (newest seq wins unless the destination is newer, tombstones delete, deltas sum and vanish
 * at zero), the input trees must be gone, and fsck must find nothing.
 *
 * The deterministic tests below cover a full (1169-child) and a single-child subtree root, the
 * stop-and-rebalance path that keeps a subtree's height valid for splicing, and a stale splice.
 * Seeds are fixed (override: FC_SEED=<n>); SCOUTFS_PROP_RUNS=<n> runs more cases.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { allocExtent, ListAllocator, prependListBlocks } from "../../src/core/alloc.js";
import {
  btreeCollect, btreeDelete, btreeFree, btreeInsert, btreeRebalance, btreeWalkBlocks, type Item,
} from "../../src/core/btree.js";
import { BlockCache, MetaTxn } from "../../src/core/block.js";
import {
  cmpKeyAt, freeBytes, ITEM_DELETION, ITEM_DELTA, keyAt, nrItems, refAt,
} from "../../src/core/btree_block.js";
import { decodeDelta, encodeDelta } from "../../src/core/btree_merge.js";
import { btreeGetParent, btreeSetParent, subtreeMerge } from "../../src/core/btree_subtree.js";
import { type BtreeRoot, emptyListHead, Magic, type SuperBlock } from "../../src/core/format.js";
import {
  decodeLogMergeRequest, emptyLogTrees, encodeLogMergeCompletion, encodeLogTrees,
  encodeMountedClient, LOG_MERGE_COMP_ERROR, LOG_MERGE_REQUEST_WHOLE, LOG_TREES_FLAG_FINALIZED,
  type LogMergeRequest,
} from "../../src/core/format_log.js";
import { listLogTrees } from "../../src/core/forest.js";
import { fsckVolume } from "../../src/core/fsck.js";
import { logTreesKey, makeKey, MAX_KEY, MIN_KEY, mountedClientKey, Zone } from "../../src/core/key.js";
import { errorCompletion, type MergeContext, type MergeDone, mergeRequest } from "../../src/core/merge_client.js";
import { LogMerger, type MergeHost } from "../../src/core/server_merge.js";
import { Volume, type VolumeTxn } from "../../src/core/volume.js";
import { Counters } from "../../src/util/counters.js";
import { isFsError } from "../../src/util/errno.js";
import { buildTree, type Fanout } from "../helpers/btree_build.js";
import { makeAssertProperty } from "../helpers/property.js";
import { makeTestVolume, type TestDisks } from "../helpers/volume.js";

const BASE_SEED = process.env.FC_SEED !== undefined ? Number(process.env.FC_SEED) : 0x5b7ee;
const RUNS = Number(process.env.SCOUTFS_PROP_RUNS ?? 50);
const assertProperty = makeAssertProperty(BASE_SEED);
const hex = (k: Buffer): string => k.toString("hex");
const RIDS = [0xa1n, 0xa2n, 0xa3n];

// ---------------------------------------------------------------------------------------
// A LogMerger on a volume, without a network: holds run one at a time, as in a server.

interface Harness {
  disks: TestDisks;
  vol: Volume;
  merger: LogMerger;
  counters: Counters;
  seq: number;
  /** While true the merger's background round only watches (no fallback, no phase 3). */
  quiet: boolean;
  connected: number;
  errors: unknown[];
  hold(fn: (t: VolumeTxn) => Promise<void>): Promise<void>;
}

const tick = (): Promise<void> => new Promise((r) => { setImmediate(r); });

async function newHarness(): Promise<Harness> {
  const disks = await makeTestVolume();
  const vol = await Volume.open(disks.meta);
  let chain: Promise<void> = Promise.resolve();
  const h = { disks, vol, counters: new Counters(), seq: vol.sb.seq, quiet: true, connected: 3,
    errors: [] as unknown[] } as Harness;
  h.hold = (fn) => {
    const p = chain.then(async () => {
      const t = vol.begin(++h.seq);
      try {
        await fn(t);
      } catch (e) {
        t.abandon();
        throw e;
      }
      t.sb.seq = Math.max(t.sb.seq, h.seq);
      await t.commit();
    });
    chain = p.catch(() => undefined);
    return p;
  };
  let clock = 0;
  const host: MergeHost = {
    hold: (fn) => h.hold(fn), nextSeq: () => ++h.seq,
    committedLogTrees: () => listLogTrees(vol.cache, vol.sb.logsRoot), syncClients: () => undefined,
    sleep: async () => { clock += 1000; await tick(); }, monotonicMs: () => clock,
    counters: h.counters, onError: (e) => { h.errors.push(e); }, stableSuper: () => vol.sb,
    cache: vol.cache, connectedClients: () => h.connected, stopped: () => h.quiet,
  };
  h.merger = new LogMerger(host);
  return h;
}

const statusKey = makeKey(Zone.LOG_MERGE_STATUS, 0n, 0);

async function waitFor(what: string, cond: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 20_000; i++) {
    if (await cond()) return;
    await tick();
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** Starts the round over the finalized trees (the status item appears). */
async function startRound(h: Harness): Promise<void> {
  h.merger.request();
  await waitFor("the merge status", async () =>
    (await btreeCollect(h.vol.cache, h.vol.sb.logMerge, statusKey, statusKey)).length === 1);
}

/** Lets the server finish by itself (fallback when no mount is connected) and free the inputs. */
async function finishRound(h: Harness, connected: number): Promise<void> {
  h.quiet = false;
  h.connected = connected;
  const before = h.counters.get("log_merge_complete");
  h.merger.kick();
  await waitFor("the end of the round", async () => {
    assert.deepEqual(h.errors, [], "merge rounds failed");
    h.merger.kick(); // a round started while quiet may just have given up
    return h.counters.get("log_merge_complete") > before;
  });
  assert.deepEqual(h.errors, [], "merge rounds failed");
}

// ---------------------------------------------------------------------------------------
// Structure of fs_root after every step.

async function checkStructure(cache: BlockCache, root: BtreeRoot, what: string): Promise<void> {
  const bounds = new Map<number, { lo: Buffer | null; hi: Buffer }>();
  if (root.height > 0) bounds.set(root.ref.blkno, { lo: null, hi: MAX_KEY });
  await btreeWalkBlocks(cache, root, (ref, level, buf) => {
    const b = bounds.get(ref.blkno)!;
    const nr = nrItems(buf);
    assert.ok(nr > 0 || (level === 0 && ref.blkno === root.ref.blkno), `${what}: empty block ${ref.blkno}`);
    for (let i = 0; i < nr; i++) {
      assert.ok(!(b.lo && cmpKeyAt(buf, i, b.lo) <= 0) && cmpKeyAt(buf, i, b.hi) <= 0,
        `${what}: block ${ref.blkno} level ${level} key ${i} outside its parent's range`);
    }
    if (level > 0) {
      assert.equal(cmpKeyAt(buf, nr - 1, b.hi), 0, `${what}: parent ${ref.blkno}'s last key is not its bound`);
      for (let i = 0; i < nr; i++) {
        bounds.set(refAt(buf, i).blkno, { lo: i > 0 ? keyAt(buf, i - 1) : b.lo, hi: keyAt(buf, i) });
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// The cases and the model.

interface Spec {
  k: number;
  kind: number;
  len: number;
  total: number;
  count: number;
  rank: number;
}
const specArb: fc.Arbitrary<Spec> = fc.record({
  k: fc.nat(), kind: fc.nat({ max: 9 }), len: fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 300, max: 896 })),
  total: fc.integer({ min: -2, max: 2 }), count: fc.integer({ min: -1, max: 1 }), rank: fc.nat(),
});

type Step = "get" | "commit" | "resend" | "fail" | "abandon" | "fsck";
interface Case {
  universe: number;
  deltaPct: number;
  dest: Spec[];
  inputs: Spec[][];
  fanLeaf: number[];
  fanParent: number[];
  steps: Step[];
  maxItems: number[];
  maxDirty: number[];
  fence: boolean;
}
const caseArb: fc.Arbitrary<Case> = fc.record({
  universe: fc.integer({ min: 4, max: 600 }),
  deltaPct: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 40 })),
  dest: fc.oneof(fc.array(specArb, { maxLength: 30 }),
    fc.array(specArb, { minLength: 60, maxLength: 400, size: "max" })),
  inputs: fc.array(fc.array(specArb, { maxLength: 160, size: "max" }), { minLength: 1, maxLength: 4 }),
  fanLeaf: fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 5 }),
  fanParent: fc.array(fc.oneof({ weight: 1, arbitrary: fc.constant(1) }, { weight: 6, arbitrary: fc.integer({ min: 2, max: 5 }) }),
    { minLength: 1, maxLength: 5 }),
  steps: fc.array(fc.constantFrom<Step>("get", "get", "get", "commit", "commit", "commit", "resend", "fail", "abandon", "fsck"),
    { minLength: 10, maxLength: 80, size: "max" }),
  maxItems: fc.array(fc.oneof(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 7, max: 400 })), { minLength: 1, maxLength: 4 }),
  maxDirty: fc.array(fc.integer({ min: 4, max: 64 }), { minLength: 1, maxLength: 3 }),
  fence: fc.boolean(),
});

function keyOf(idx: number, deltaKeys: number): Buffer {
  return idx < deltaKeys ? makeKey(Zone.XATTR_TOTL, 7n, 0, BigInt(idx), 0n)
    : makeKey(Zone.FS, BigInt(5000 + Math.floor(idx / 64)), 100, BigInt(idx % 64));
}

const PATTERN = Buffer.from(Array.from({ length: 1200 }, (_, i) => (i * 13) & 255));

function itemOf(c: Case, s: Spec, seq: number, deltaKeys: number, dest: boolean): Item {
  const idx = s.k % c.universe;
  const key = keyOf(idx, deltaKeys);
  if (idx < deltaKeys) return { key, val: encodeDelta(BigInt(s.total), BigInt(s.count)), seq, flags: ITEM_DELTA };
  if (s.kind === 0 && !dest) return { key, val: Buffer.alloc(0), seq, flags: ITEM_DELETION };
  return { key, val: PATTERN.subarray(s.rank % 256, (s.rank % 256) + s.len), seq, flags: 0 };
}

interface Built {
  inputs: Map<string, Item>[];
  dest: Map<string, Item>;
}

function buildModel(c: Case): Built {
  const deltaKeys = Math.floor((c.universe * c.deltaPct) / 100);
  const all = c.inputs.flatMap((items, input) => items.map((s, i) => ({ s, input, i })));
  all.sort((x, y) => x.s.rank - y.s.rank || x.input - y.input || x.i - y.i);
  const seqOf = new Map(all.map((x, j) => [x.s, 2 * (1000 + j)]));
  const inputs = c.inputs.map((items) => {
    const m = new Map<string, Item>();
    for (const s of items) {
      // tombstones mostly hit existing destination keys (deletes shrink subtrees)
      const hit = s.kind === 0 && c.dest.length > 0 && s.len % 4 !== 0;
      const it = itemOf(c, hit ? { ...s, k: c.dest[s.rank % c.dest.length]!.k } : s, seqOf.get(s)!, deltaKeys, false);
      m.set(hex(it.key), it);
    }
    return m;
  });
  const top = 2 * (1000 + all.length);
  const dest = new Map<string, Item>();
  for (const s of c.dest) {
    // odd seqs: below, among or above the inputs' even ones
    const it = itemOf(c, s, 1 + 2 * (s.rank % (top / 2 + 50)), deltaKeys, true);
    dest.set(hex(it.key), it);
  }
  return { inputs, dest };
}

/** The merge rules of btree_merge.ts, key by key. */
function mergeModel(b: Built): Map<string, Item> {
  const out = new Map(b.dest);
  const keys = new Set(b.inputs.flatMap((m) => [...m.keys()]));
  for (const h of keys) {
    const versions = b.inputs.map((m) => m.get(h)).filter((x): x is Item => x !== undefined);
    const existing = out.get(h);
    if (versions.every((v) => (v.flags & ITEM_DELTA) !== 0)) {
      let total = 0n;
      let count = 0n;
      for (const v of [...versions, ...(existing ? [existing] : [])]) {
        const d = decodeDelta(v.val);
        total += d.total;
        count += d.count;
      }
      if (total === 0n && count === 0n) out.delete(h);
      else {
        out.set(h, { key: versions[0]!.key, val: encodeDelta(total, count),
          seq: Math.max(...versions.map((v) => v.seq), existing?.seq ?? 0), flags: ITEM_DELTA });
      }
      continue;
    }
    const win = versions.reduce((a, v) => (v.seq > a.seq ? v : a));
    if (existing && existing.seq > win.seq) continue;
    if ((win.flags & ITEM_DELETION) !== 0) out.delete(h);
    else out.set(h, win);
  }
  return out;
}

function assertItems(actual: Item[], expect: Map<string, Item>, what: string): void {
  const want = [...expect.keys()].sort().map((k) => expect.get(k)!);
  assert.equal(actual.length, want.length, `${what}: item count`);
  for (let i = 0; i < want.length; i++) {
    const a = actual[i]!;
    const w = want[i]!;
    assert.ok(a.key.equals(w.key) && a.val.equals(w.val) && a.seq === w.seq && a.flags === w.flags,
      `${what}: item ${i} ${hex(a.key)} seq ${a.seq} vs model ${hex(w.key)} seq ${w.seq}`);
  }
}

/** fs_root = mkfs items + the case's destination, tall; finalized input trees; mounts. */
async function setUp(h: Harness, c: Case, b: Built): Promise<void> {
  const fan: Fanout = (level, i) => (level === 0 ? c.fanLeaf[i % c.fanLeaf.length]! : c.fanParent[i % c.fanParent.length]!);
  await h.hold(async (t) => {
    const mkfs = await btreeCollect(t.w.cache, t.sb.fsRoot, MIN_KEY, MAX_KEY);
    for (const it of mkfs) b.dest.set(hex(it.key), it);
    await btreeFree(t.w, t.sb.fsRoot);
    t.sb.fsRoot = await buildTree(t.w, [...b.dest.keys()].sort().map((k) => b.dest.get(k)!), fan);
    for (const [i, m] of b.inputs.entries()) {
      const lt = emptyLogTrees(RIDS[i % RIDS.length]!, 1 + Math.floor(i / RIDS.length));
      lt.itemRoot = await buildTree(t.w, [...m.keys()].sort().map((k) => m.get(k)!), fan);
      lt.flags = LOG_TREES_FLAG_FINALIZED;
      lt.finalizeSeq = ++h.seq;
      await btreeInsert(t.w, t.sb.logsRoot, logTreesKey(lt.rid, BigInt(lt.nr)), encodeLogTrees(lt), { seq: 0 });
    }
    for (const rid of RIDS) {
      await btreeInsert(t.w, t.sb.mountedClients, mountedClientKey(rid),
        encodeMountedClient({ addr: "0.0.0.0", port: 0, flags: 0 }), { seq: 0 });
    }
  });
}

interface FakeMount {
  rid: bigint;
  ctx: MergeContext;
  /** A completed merge not yet sent, or sent and to be resent. */
  held: { req: LogMergeRequest; done: MergeDone; sent: boolean } | null;
}

function newMount(h: Harness, rid: bigint): FakeMount {
  const cache = new BlockCache(h.disks.meta, h.vol.sb.hdr.fsid, new Counters(), 16 * 1024 * 1024, h.vol.sb.totalMetaBlocks);
  return { rid, held: null, ctx: { cache, meta: h.disks.meta, counters: new Counters(), log: () => undefined,
    getRoots: () => Promise.resolve({ fsRoot: h.vol.sb.fsRoot, logsRoot: h.vol.sb.logsRoot }) } };
}

async function send(h: Harness, m: FakeMount, comp: Buffer): Promise<"ok" | "stale"> {
  try {
    await h.merger.commitLogMerge(comp, m.rid);
    return "ok";
  } catch (e) {
    if (isFsError(e, "ESTALE")) return "stale";
    throw e;
  }
}

interface Stats {
  requests: number; partial: number; stale: number; failed: number; abandoned: number;
  splices: number; subtreeRequests: number; concurrentSubtrees: number; rebalances: number;
  heights: number[];
}

/** One scripted step of one mount. */
async function step(h: Harness, c: Case, m: FakeMount, s: Step, n: number, st: Stats,
  others: FakeMount[]): Promise<void> {
  if (s === "fsck") {
    const r = await fsckVolume(h.disks.meta, h.disks.data);
    assert.deepEqual(r.problems, [], "fsck mid-round");
    return;
  }
  if (s === "get" || s === "abandon") {
    if (m.held && !m.held.sent) {
      if (s === "get") return; // a real worker sends what it has first
      m.held.done.w?.abandon(); // gives it up: the next GET cancels it
      st.abandoned++;
    }
    m.held = null;
    let req: LogMergeRequest;
    try {
      req = decodeLogMergeRequest(await h.merger.getLogMerge(Buffer.alloc(0), m.rid));
    } catch (e) {
      if (isFsError(e, "EAGAIN") || isFsError(e, "ENOENT")) return;
      throw e;
    }
    st.requests++;
    if ((req.flags & LOG_MERGE_REQUEST_WHOLE) === 0) {
      st.subtreeRequests++;
      if (others.some((o) => o.held && !o.held.sent)) st.concurrentSubtrees++;
    }
    const done = await mergeRequest(m.ctx, req, { maxItems: c.maxItems[n % c.maxItems.length]!,
      maxDirtyBlocks: c.maxDirty[n % c.maxDirty.length]!, availReserve: 24, idleMinMs: 1, idleMaxMs: 1,
      busyMinMs: 1, busyMaxMs: 1 });
    assert.equal(done.comp.flags & LOG_MERGE_COMP_ERROR, 0, "the merge itself succeeds");
    m.held = { req, done, sent: false };
    return;
  }
  if (!m.held) return;
  const held = m.held;
  if (s === "fail" && !held.sent) {
    held.done.w?.abandon();
    assert.equal(await send(h, m, encodeLogMergeCompletion(errorCompletion(held.req))), "ok");
    st.failed++;
    m.held = null;
    return;
  }
  const r = await send(h, m, encodeLogMergeCompletion(held.done.comp));
  if (held.sent) {
    assert.equal(r, "stale", "a resent completion is refused");
    st.stale++;
    m.held = null;
    return;
  }
  assert.equal(r, "ok", "a current completion is spliced");
  held.done.w?.markClean();
  if (held.done.comp.flags !== 0) st.partial++;
  st.splices++;
  held.sent = true;
  if (s !== "resend") m.held = null;
}

async function runCase(c: Case, st: Stats): Promise<void> {
  const h = await newHarness();
  const b = buildModel(c);
  await setUp(h, c, b);
  const want = mergeModel(b);
  await checkStructure(h.vol.cache, h.vol.sb.fsRoot, "as built");
  st.heights.push(h.vol.sb.fsRoot.height);
  await startRound(h);
  const mounts = RIDS.map((rid) => newMount(h, rid));
  let n = 0;
  const script = async (s: Step): Promise<void> => {
    await step(h, c, mounts[n % mounts.length]!, s, n, st, mounts);
    n++;
    await checkStructure(h.vol.cache, h.vol.sb.fsRoot, `after step ${n} (${s})`);
  };
  for (const s of c.steps) await script(s);
  if (c.fence) {
    // the mounts vanish: reclaim deletes their mounted_clients items; the server cancels their
    // requests and finishes alone
    for (const m of mounts) m.held?.done.w?.abandon();
    await h.hold(async (t) => {
      for (const rid of RIDS) await btreeDelete(t.w, t.sb.mountedClients, mountedClientKey(rid));
    });
    await finishRound(h, 0);
  } else {
    // the mounts finish the work: every held completion sent, then ask until nothing is left
    for (let round = 0; ; round++) {
      assert.ok(round < 20_000, "the distributed merge terminates");
      const m = mounts[round % mounts.length]!;
      if (m.held) await step(h, c, m, "commit", round, st, mounts);
      else await step(h, c, m, "get", round, st, mounts);
      const left = await btreeCollect(h.vol.cache, h.vol.sb.logMerge, MIN_KEY, MAX_KEY);
      if (left.length === 1 && mounts.every((x) => !x.held)) break;
    }
    assert.equal(h.counters.get("log_merge_local_steps"), 0, "the mounts did all the merging");
    await finishRound(h, 3);
  }
  st.rebalances += h.counters.get("log_merge_rebalance");
  await checkStructure(h.vol.cache, h.vol.sb.fsRoot, "at the end");
  assertItems(await btreeCollect(h.vol.cache, h.vol.sb.fsRoot, MIN_KEY, MAX_KEY), want, "merged fs_root");
  assert.equal((await listLogTrees(h.vol.cache, h.vol.sb.logsRoot)).length, 0, "inputs freed");
  assert.equal(h.vol.sb.logMerge.height, 0, "log_merge emptied");
  const r = await fsckVolume(h.disks.meta, h.disks.data);
  assert.deepEqual(r.problems, [], "fsck after the round");
}

test("distributed merge through fs_root subtrees equals one merge, leaks nothing", async () => {
  const st: Stats = { requests: 0, partial: 0, stale: 0, failed: 0, abandoned: 0, splices: 0, subtreeRequests: 0,
    concurrentSubtrees: 0, rebalances: 0, heights: [] };
  await assertProperty("subtree merge", BASE_SEED, caseArb, async (c) => {
    try {
      await runCase(c, st);
    } catch (e) {
      if (process.env.SCOUTFS_DEBUG) console.error(e);
      throw e;
    }
  },
    { numRuns: RUNS, endOnFailure: true });
  // the script reached every path
  if (process.env.SCOUTFS_DEBUG) console.error(st);
  for (const [k, v] of Object.entries(st)) if (typeof v === "number") assert.ok(v > 0, `no ${k} in ${RUNS} cases`);
  assert.ok(st.heights.filter((x) => x >= 3).length >= RUNS / 3, "tall fs_roots (subtrees) in a third of the cases");
});

// ---------------------------------------------------------------------------------------
// Deterministic edges of the subtree guard and of setParent.

/** Dest items are 1000 keys apart so that inputs can add many keys under one leaf. */
function item(i: number, seq: number, len = 8): Item {
  return { key: makeKey(Zone.FS, 9000n, 100, BigInt(i) * 1000n), val: PATTERN.subarray(0, len), seq, flags: 0 };
}

/** Large new items: `per` keys after each of the first `leaves` dest keys. */
function bigInputs(leaves: number, per: number): Item[] {
  const out: Item[] = [];
  for (let l = 0; l < leaves; l++) {
    for (let j = 1; j <= per; j++) {
      out.push({ key: makeKey(Zone.FS, 9000n, 100, BigInt(l) * 1000n + BigInt(j)), val: PATTERN.subarray(0, 896), seq: 9, flags: 0 });
    }
  }
  return out;
}

/** A height-3 fs_root whose first level-1 block has `children` one-item leaves. */
async function tallVolume(children: number, rest: number): Promise<{ h: Harness; items: Item[] }> {
  const h = await newHarness();
  const items = Array.from({ length: children + rest }, (_, i) => item(i, 5));
  await h.hold(async (t) => {
    await btreeFree(t.w, t.sb.fsRoot);
    t.sb.fsRoot = await buildTree(t.w, items, (level, i) => (level === 0 ? 1 : level === 1 && i === 0 ? children : 8));
  });
  return { h, items };
}

async function inputTree(h: Harness, items: Item[]): Promise<BtreeRoot> {
  let root: BtreeRoot = { ref: { blkno: 0, seq: 0 }, height: 0 };
  await h.hold(async (t) => { root = await buildTree(t.w, items, () => 60); });
  return root;
}

interface MountMerge {
  sub: Awaited<ReturnType<typeof btreeGetParent>>;
  root: BtreeRoot;
  next: Buffer | null;
  keys: number;
}

/** One mount-side merge of [start, end] into the subtree holding start, blocks written. */
async function mountMerge(h: Harness, inputs: BtreeRoot[], start: Buffer, end: Buffer, sb: SuperBlock):
  Promise<MountMerge> {
  const sub = await btreeGetParent(h.vol.cache, sb.fsRoot, start);
  const cache = new BlockCache(h.disks.meta, sb.hdr.fsid, new Counters(), 16 * 1024 * 1024, sb.totalMetaBlocks);
  const avail = emptyListHead();
  await h.hold(async (t) => {
    const e = await allocExtent(t.w, t.sb.metaAlloc[0], 64);
    assert.ok(e && e.len === 64);
    prependListBlocks(t.w, avail, Array.from({ length: 64 }, (_, i) => e.start + i));
  });
  const w = new MetaTxn(cache, ++h.seq, new ListAllocator(avail, emptyListHead()));
  const root = { ...sub.root, ref: { ...sub.root.ref } };
  const r = await subtreeMerge(w, root, inputs, start, end,
    { whole: sub.whole, maxItems: 1000, maxDirtyBlocks: 1000, allocLow: () => false });
  await w.writeDirty();
  w.markClean();
  return { sub, root, next: r.next, keys: r.keys };
}

test("a full subtree root stops the mount's merge; after a splice and a rebalance it resumes", async () => {
  // 1169 parent items fill a level-1 block: not one leaf split fits
  const full = await tallVolume(1169, 40);
  const in1 = bigInputs(3, 80);
  const r1 = await mountMerge(full.h, [await inputTree(full.h, in1)], in1[0]!.key, in1.at(-1)!.key, full.h.vol.sb);
  assert.equal(full.h.vol.sb.fsRoot.height, 3);
  assert.equal(r1.sub.whole, false);
  assert.equal(r1.keys, 0, "no key fits under a full subtree root");
  assert.ok(r1.next?.equals(in1[0]!.key), "resumes where it stopped");

  // room for exactly one more parent item: the merge stops once a leaf split took it
  const { h, items } = await tallVolume(1168, 40);
  const input = bigInputs(3, 80);
  const inRoot = await inputTree(h, input);
  const last = input.at(-1)!.key;
  const first = await mountMerge(h, [inRoot], input[0]!.key, last, h.vol.sb);
  assert.ok(first.keys > 0 && first.next !== null, "merged some keys, then stopped");
  assert.equal(first.root.height, 2, "the subtree kept its height");
  const rootBuf = await h.vol.cache.read(first.root.ref, Magic.BTREE);
  assert.ok(freeBytes(rootBuf) < 56 && nrItems(rootBuf) === 1169, "stopped when the root filled");
  let r: MountMerge = first;
  let from = input[0]!.key;
  for (let i = 0; ; i++) {
    assert.ok(i < 20, "the range gets merged");
    // the server's side: splice, and rebalance the path where the mount stopped
    await h.hold(async (t) => {
      assert.ok(await btreeSetParent(t.w, t.sb.fsRoot, from, r.sub.root, r.root, r.sub.whole));
      if (r.next) await btreeRebalance(t.w, t.sb.fsRoot, r.next);
    });
    await checkStructure(h.vol.cache, h.vol.sb.fsRoot, `after splice ${i}`);
    if (!r.next) break;
    from = r.next;
    r = await mountMerge(h, [inRoot], from, last, h.vol.sb);
  }
  const model = new Map([...items, ...input].map((it) => [hex(it.key), it]));
  assertItems(await btreeCollect(h.vol.cache, h.vol.sb.fsRoot, MIN_KEY, MAX_KEY), model, "full-root merge");
});

test("a single-child subtree root stops before a delete could collapse it", async () => {
  const { h, items } = await tallVolume(1, 30);
  const tomb = { ...items[0]!, val: Buffer.alloc(0), seq: 9, flags: ITEM_DELETION };
  const r = await mountMerge(h, [await inputTree(h, [tomb])], tomb.key, tomb.key, h.vol.sb);
  assert.equal(r.sub.whole, false);
  assert.equal(r.keys, 0, "a one-item root cannot take a change");
  assert.equal(r.root.height, 2);
});

test("setParent refuses a stale subtree and a subtree of another range, changing nothing", async () => {
  const { h, items } = await tallVolume(8, 40);
  const sb = h.vol.sb;
  const a = await btreeGetParent(h.vol.cache, sb.fsRoot, items[0]!.key);
  const b = await btreeGetParent(h.vol.cache, sb.fsRoot, items.at(-1)!.key);
  assert.ok(!a.whole && !b.whole && a.root.ref.blkno !== b.root.ref.blkno);
  await h.hold(async (t) => {
    const before = { ...t.sb.fsRoot, ref: { ...t.sb.fsRoot.ref } };
    // b's ref is not at a's place: stale
    assert.equal(await btreeSetParent(t.w, t.sb.fsRoot, items[0]!.key, b.root, a.root, false), false);
    assert.deepEqual(t.sb.fsRoot, before);
    assert.equal(t.w.dirtyCount, 0, "nothing dirtied");
    // a's place given b's root (other keys): refused as corrupt before anything is dirtied
    await assert.rejects(btreeSetParent(t.w, t.sb.fsRoot, items[0]!.key, a.root, b.root, false),
      (e: unknown) => isFsError(e, "EIO"));
    assert.equal(t.w.dirtyCount, 0, "nothing dirtied");
  });
});
