/*
 * Goal: RELIABILITY.md promise 3, "corruption is never returned as data" (and the device part
 * of promise 6). A metadata block whose bytes changed on the media must be reported as an
 * FsError (ESTALE from the block cache, EIO once withStaleRetry sees the same roots again),
 * counted, and never reach a caller as item data, a list entry or a decoded struct; fsck must
 * notice it; and nothing may crash with a non-FsError exception. Also: a corrupt super makes
 * Volume.open fail with a clear EIO, a foreign or swapped data device is refused, and a device
 * read error surfaces as an FsError EIO.
 *
 * Method: one volume is built with a fixed seed: a two-level fs_root of ~3000 items with
 * values of 0..896 bytes plus data extent items, a fragmented data_alloc extent tree, meta
 * extent trees fed by several commits' frees, and avail/freed alloc lists. Every metadata
 * block it references is found by walking every tree of the super (btreeWalkBlocks) and every
 * alloc list chain. For each block kind (btree leaf, btree parent, extent-tree block, alloc
 * list block, the metadata super, the data super, a quorum block) we choose byte positions:
 * every byte of the 32-byte block header and of the kind's structural header (btree header
 * and first/last item headers and first value; list next/start/nr and first/last entries;
 * every field byte of the super and quorum structs), plus a seeded random sample of other
 * offsets. For each position, a fresh snapshot of the committed disk gets that byte XORed
 * with a non-zero mask, then:
 *   - reading everything through a fresh Volume (every tree iterated with btreeCollect and a
 *     sample of keys looked up with btreeLookup, inside withStaleRetry with roots re-read from
 *     the super; every alloc list chain walked; every quorum block decoded) must return
 *     exactly the original content or throw an FsError ESTALE/EIO. Because every block is
 *     fully checksummed, we require that each flip in a referenced block is actually detected,
 *     and that corrupt_block and block_cache_remove_stale move when a cached block kind is hit;
 *   - fsckVolume must report a problem or throw an FsError.
 * As a control, flips in free (unreferenced) metadata blocks must change nothing and leave
 * fsck clean. The seed is fixed, so CI runs the same ~3700 flips every time (~20 s).
 *
 * Beyond bit flips: blocks that carry a valid checksum but the wrong identity (another
 * block's bytes, an older seq, another fsid, zeros, another block kind: what lost and
 * misdirected writes leave) or a broken structure resealed as a buggy writer would (counts,
 * levels, offsets, key order, flags, refs outside the device) must be refused the same way.
 * A parent whose checksummed ref names a valid sibling is beyond identity checks: readers
 * must only not crash, and fsck must report it. Device read errors (SimDisk.failReads) on the
 * super, on each block kind and on everything must surface as FsError EIO, and reads must
 * work again once the device does.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { allocExtent, freeExtent, listEntries, listExtents, listNext } from "../../src/core/alloc.js";
import { type BlockCache, withStaleRetry } from "../../src/core/block.js";
import {
  btreeCollect, btreeDelete, btreeInsert, btreeLookup, btreeUpdate, btreeWalkBlocks,
  BTREE_MAX_VAL_LEN, type Item,
} from "../../src/core/btree.js";
import { BT_ITEMS, ITEM_HDR_SIZE, itemOff, nrItems } from "../../src/core/btree_block.js";
import {
  ALLOC_LIST_BLKNOS_OFF, ALLOC_LIST_MAX_BLKNOS, ALLOC_LIST_NR_OFF, ALLOC_LIST_START_OFF, type AllocListHead, BLOCK_HEADER_SIZE, type BlockRef, type BtreeRoot,
  decodeQuorumBlock, encodeDataExtent, Magic, META_BLOCK_SIZE, QUORUM_BLKNO, QUORUM_BLOCK_SIZE,
  QUORUM_MAX_SLOTS, QUORUM_STRUCT_SIZE, sealBlock, SUPER_OFFSET, SUPER_SIZE, SUPER_STRUCT_SIZE,
  type SuperBlock, writeU64,
} from "../../src/core/format.js";
import { fsckVolume } from "../../src/core/fsck.js";
import { dataExtentKey, FsType, makeKey, MAX_KEY, MIN_KEY, Zone } from "../../src/core/key.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { checkDataDevice, readSuperFrom, Volume, writeSuperTo } from "../../src/core/volume.js";
import { SimDisk } from "../../src/sim/disk.js";
import { SimRandom } from "../../src/sim/random.js";
import { Counters } from "../../src/util/counters.js";
import { isFsError } from "../../src/util/errno.js";
import { makeTestVolume, MiB, mkfsParams, openTestVolume, type TestDisks } from "../helpers/volume.js";

const SEED = 0x5c0f_7e57;
const CACHE_BYTES = 16 * MiB;

// ---------------------------------------------------------------------------------------
// Building the volume.

function randomLen(rng: SimRandom): number {
  const r = rng.int(10);
  if (r === 0) return 0;
  if (r < 4) return 1 + rng.int(64);
  if (r < 8) return 100 + rng.int(300);
  return BTREE_MAX_VAL_LEN - rng.int(100);
}

function randomVal(rng: SimRandom, len: number): Buffer {
  const v = Buffer.alloc(len);
  rng.fill(v);
  return v;
}

interface Built {
  d: TestDisks;
  /** Every key of fs_root (for lookups). */
  fsKeys: Buffer[];
  /** The committed super. */
  sb: SuperBlock;
}

async function buildVolume(): Promise<Built> {
  const rng = new SimRandom(SEED);
  const d = await makeTestVolume(128 * MiB, 64 * MiB);
  const vol = await openTestVolume(d);
  const model = new Map<string, Buffer>();

  // 1: ~3000 items with varied values, and data extents carved out of data_alloc
  let t = vol.begin();
  for (let i = 0; i < 3000; i++) {
    const key = makeKey(Zone.FS, BigInt(2000 + rng.int(500)), FsType.XATTR, BigInt(rng.u32()),
      BigInt(i), rng.int(4));
    const val = randomVal(rng, randomLen(rng));
    await btreeInsert(t.w, t.sb.fsRoot, key, val);
    model.set(key.toString("hex"), val);
  }
  const extents: { start: number; len: number }[] = [];
  for (let i = 0; i < 150; i++) {
    const e = await allocExtent(t.w, t.sb.dataAlloc, 1 + rng.int(16));
    assert.ok(e, "data extent allocation");
    extents.push(e);
  }
  let iblock = 0n;
  for (const [i, e] of extents.entries()) {
    if (i % 3 === 1) {
      await freeExtent(t.w, t.sb.dataAlloc, e);
      continue;
    }
    iblock += BigInt(e.len);
    const key = dataExtentKey(5000n, iblock - 1n, BigInt(e.len));
    const val = encodeDataExtent({ blkno: e.start, flags: 0 });
    await btreeInsert(t.w, t.sb.fsRoot, key, val);
    model.set(key.toString("hex"), val);
  }
  await t.commit();

  // 2..4: updates and deletes (COW frees feed the freed lists and meta_alloc[1])
  for (let c = 0; c < 3; c++) {
    t = vol.begin();
    const keys = [...model.keys()].filter((k) => Buffer.from(k, "hex")[9] === FsType.XATTR);
    for (let i = 0; i < 300; i++) {
      const k = rng.pick(keys);
      if (!model.has(k)) continue;
      if (rng.chance(0.5)) {
        await btreeDelete(t.w, t.sb.fsRoot, Buffer.from(k, "hex"));
        model.delete(k);
      } else {
        const val = randomVal(rng, randomLen(rng));
        await btreeUpdate(t.w, t.sb.fsRoot, Buffer.from(k, "hex"), val);
        model.set(k, val);
      }
    }
    await t.commit();
  }
  const fsKeys = [...model.keys()].map((k) => Buffer.from(k, "hex"));
  return { d, fsKeys, sb: vol.sb };
}

// ---------------------------------------------------------------------------------------
// Reading everything back, the way a mount would.

interface Roots {
  trees: [string, BtreeRoot][];
  lists: [string, AllocListHead][];
}

function rootsOf(sb: SuperBlock): Roots {
  return {
    trees: [
      ["fs_root", sb.fsRoot], ["logs_root", sb.logsRoot], ["log_merge", sb.logMerge],
      ["mounted_clients", sb.mountedClients], ["srch_root", sb.srchRoot],
      ["meta_alloc[0]", sb.metaAlloc[0].root], ["meta_alloc[1]", sb.metaAlloc[1].root],
      ["data_alloc", sb.dataAlloc.root],
    ],
    lists: [
      ["server_meta_avail[0]", sb.serverMetaAvail[0]], ["server_meta_avail[1]", sb.serverMetaAvail[1]],
      ["server_meta_freed[0]", sb.serverMetaFreed[0]], ["server_meta_freed[1]", sb.serverMetaFreed[1]],
    ],
  };
}

function sameRoots(a: Roots, b: Roots): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function tree(r: Roots, name: string): BtreeRoot {
  const e = r.trees.find(([n]) => n === name);
  assert.ok(e, `tree ${name}`);
  return e[1];
}

function digestItems(items: Item[]): string {
  const h = createHash("sha256");
  const n = Buffer.alloc(12);
  for (const it of items) {
    n.writeUInt16LE(it.val.length, 0);
    n.writeUInt8(it.flags, 2);
    n.writeDoubleLE(it.seq, 4);
    h.update(it.key).update(n).update(it.val);
  }
  return `${items.length}:${h.digest("hex")}`;
}

async function walkList(cache: BlockCache, head: AllocListHead, limit: number):
  Promise<{ blocks: BlockRef[]; entries: number[] }> {
  const blocks: BlockRef[] = [];
  const entries: number[] = [];
  let ref = head.ref;
  while (ref.blkno !== 0) {
    assert.ok(blocks.length < limit, "alloc list chain longer than the device");
    const buf = await cache.read(ref, Magic.ALLOC_LIST);
    blocks.push(ref);
    entries.push(...listEntries(buf));
    ref = listNext(buf);
  }
  return { blocks, entries };
}

type Content = Record<string, string>;

/**
 * Everything a mount could read, as digests: each tree's items, each list's entries, lookups
 * of `keys` in fs_root, every quorum block. Throws whatever the engine throws.
 */
async function readEverything(meta: SimDisk, counters: Counters, keys: Buffer[]): Promise<Content> {
  const vol = await Volume.open(meta, { cacheBytes: CACHE_BYTES, counters });
  const getRoots = async (): Promise<Roots> => rootsOf(await readSuperFrom(meta, true));
  const out: Content = {};
  for (const [name] of rootsOf(vol.sb).trees) {
    const items = await withStaleRetry(counters, getRoots, sameRoots,
      (r) => btreeCollect(vol.cache, tree(r, name), MIN_KEY, MAX_KEY));
    out[name] = digestItems(items);
  }
  const found: Item[] = [];
  for (const k of keys) {
    const it = await withStaleRetry(counters, getRoots, sameRoots,
      (r) => btreeLookup(vol.cache, tree(r, "fs_root"), k));
    if (it) found.push(it);
  }
  out.lookups = digestItems(found);
  for (const [name, head] of rootsOf(vol.sb).lists) {
    const l = await withStaleRetry(counters, getRoots, sameRoots, async (r) => {
      const h = r.lists.find(([n]) => n === name);
      assert.ok(h);
      return walkList(vol.cache, h[1], vol.sb.totalMetaBlocks);
    });
    out[name] = `${head.totalNr}:${l.entries.join(",")}`;
  }
  for (let slot = 0; slot < QUORUM_MAX_SLOTS; slot++) {
    const buf = Buffer.alloc(QUORUM_BLOCK_SIZE);
    await meta.read(buf, (QUORUM_BLKNO + slot) * QUORUM_BLOCK_SIZE);
    const q = decodeQuorumBlock(buf, vol.sb.hdr.fsid, slot);
    out[`quorum[${slot}]`] = JSON.stringify(q, (_k, v: unknown) => typeof v === "bigint" ? v.toString() : v);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Targets and flips.

type Kind = "btree leaf" | "btree parent" | "extent tree block" | "alloc list block" |
  "meta super" | "data super" | "quorum block";

interface Target {
  kind: Kind;
  what: string;
  /** Byte offset of the block on its device. */
  base: number;
  /** Offsets inside the block to corrupt. */
  offsets: number[];
  /** True when the block lives on the data device. */
  onData?: boolean;
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}

function sample(rng: SimRandom, n: number, from: number, to: number): number[] {
  return Array.from({ length: n }, () => from + rng.int(to - from));
}

function uniq(xs: number[]): number[] {
  return [...new Set(xs)].sort((a, b) => a - b);
}

function btreeOffsets(rng: SimRandom, buf: Buffer, nRandom: number): number[] {
  const nr = nrItems(buf);
  const valStart = buf.readUInt32LE(BLOCK_HEADER_SIZE + 4);
  const offs = [
    ...range(0, BT_ITEMS), // block header + btree header
    ...range(itemOff(0), itemOff(0) + ITEM_HDR_SIZE),
    ...range(itemOff(nr - 1), itemOff(nr - 1) + ITEM_HDR_SIZE),
    ...range(valStart, Math.min(valStart + 16, META_BLOCK_SIZE)),
    ...range(itemOff(nr), itemOff(nr) + 4), // first unused (zero) bytes after the items
    META_BLOCK_SIZE - 1,
    ...sample(rng, nRandom, 0, META_BLOCK_SIZE),
  ];
  return uniq(offs);
}

function listOffsets(rng: SimRandom, buf: Buffer, nRandom: number): number[] {
  const nr = listEntries(buf).length;
  const end = ALLOC_LIST_BLKNOS_OFF + nr * 8;
  return uniq([
    ...range(0, ALLOC_LIST_BLKNOS_OFF + 24),
    ...range(end - 8, end + 8),
    META_BLOCK_SIZE - 1,
    ...sample(rng, nRandom, 0, META_BLOCK_SIZE),
  ]);
}

interface Collected {
  targets: Target[];
  /** Every referenced metadata blkno. */
  referenced: Set<number>;
}

async function collectTargets(b: Built, rng: SimRandom): Promise<Collected> {
  const vol = await Volume.open(b.d.meta, { cacheBytes: CACHE_BYTES });
  const referenced = new Set<number>();
  const leaves: { ref: BlockRef; buf: Buffer }[] = [];
  const parents: { ref: BlockRef; buf: Buffer }[] = [];
  const extentBlocks: { name: string; ref: BlockRef; buf: Buffer }[] = [];
  for (const [name, root] of rootsOf(vol.sb).trees) {
    await btreeWalkBlocks(vol.cache, root, (ref, level, buf) => {
      assert.ok(!referenced.has(ref.blkno), `block ${ref.blkno} referenced twice`);
      referenced.add(ref.blkno);
      const copy = Buffer.from(buf);
      if (name === "fs_root") (level === 0 ? leaves : parents).push({ ref, buf: copy });
      else extentBlocks.push({ name, ref, buf: copy });
    });
  }
  const listBlocks: { name: string; ref: BlockRef; buf: Buffer }[] = [];
  for (const [name, head] of rootsOf(vol.sb).lists) {
    const l = await walkList(vol.cache, head, vol.sb.totalMetaBlocks);
    for (const ref of l.blocks) {
      referenced.add(ref.blkno);
      listBlocks.push({ name, ref, buf: Buffer.from(await vol.cache.read(ref, Magic.ALLOC_LIST)) });
    }
  }
  assert.ok(vol.sb.fsRoot.height >= 2, `fs_root is multi-level (height ${vol.sb.fsRoot.height})`);
  assert.ok(leaves.length >= 10, `fs_root has ${leaves.length} leaves`);
  assert.ok(new Set(extentBlocks.map((e) => e.name)).size >= 3, "meta and data extent trees");
  assert.ok(new Set(listBlocks.map((e) => e.name)).size >= 2, "avail and freed lists");

  const targets: Target[] = [];
  const at = (blkno: number): number => blkno * META_BLOCK_SIZE;
  for (const leaf of [leaves[0]!, leaves[Math.floor(leaves.length / 2)]!, leaves[leaves.length - 1]!]) {
    targets.push({ kind: "btree leaf", what: `fs_root leaf ${leaf.ref.blkno}`, base: at(leaf.ref.blkno),
      offsets: btreeOffsets(rng, leaf.buf, 60) });
  }
  for (const p of parents) {
    targets.push({ kind: "btree parent", what: `fs_root parent ${p.ref.blkno}`, base: at(p.ref.blkno),
      offsets: btreeOffsets(rng, p.buf, 120) });
  }
  const seenTree = new Set<string>();
  for (const e of extentBlocks) {
    if (seenTree.has(e.name)) continue;
    seenTree.add(e.name);
    targets.push({ kind: "extent tree block", what: `${e.name} block ${e.ref.blkno}`, base: at(e.ref.blkno),
      offsets: btreeOffsets(rng, e.buf, 30) });
  }
  const seenList = new Set<string>();
  for (const l of listBlocks) {
    if (seenList.has(l.name)) continue;
    seenList.add(l.name);
    targets.push({ kind: "alloc list block", what: `${l.name} block ${l.ref.blkno}`, base: at(l.ref.blkno),
      offsets: listOffsets(rng, l.buf, 50) });
  }
  targets.push({ kind: "meta super", what: "metadata device super", base: SUPER_OFFSET,
    offsets: uniq([...range(0, SUPER_STRUCT_SIZE), ...sample(rng, 40, SUPER_STRUCT_SIZE, SUPER_SIZE)]) });
  targets.push({ kind: "data super", what: "data device super", base: SUPER_OFFSET, onData: true,
    offsets: uniq([...range(0, 200), ...sample(rng, 40, 200, SUPER_SIZE)]) });
  for (const slot of [0, 7]) {
    targets.push({ kind: "quorum block", what: `quorum block ${slot}`,
      base: (QUORUM_BLKNO + slot) * QUORUM_BLOCK_SIZE,
      offsets: uniq([...range(0, QUORUM_STRUCT_SIZE),
        ...sample(rng, 30, QUORUM_STRUCT_SIZE, QUORUM_BLOCK_SIZE)]) });
  }
  return { targets, referenced };
}

/** XORs the stored byte at `offset` with mask (non-zero), bit by bit. */
function flipByte(disk: SimDisk, offset: number, mask: number): void {
  assert.ok(mask > 0 && mask < 256);
  for (let bit = 0; bit < 8; bit++) if (mask & (1 << bit)) disk.flipBit(offset, bit);
}

function describe(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ""}` : String(e);
}

type ReadOutcome = { ok: true; content: Content } | { ok: false; err: unknown };

async function tryRead(meta: SimDisk, counters: Counters, keys: Buffer[]): Promise<ReadOutcome> {
  try {
    return { ok: true, content: await readEverything(meta, counters, keys) };
  } catch (err) {
    return { ok: false, err };
  }
}

/** fsck's verdict: true when it reported a problem or refused with an FsError. */
async function fsckFinds(meta: SimDisk, data: SimDisk, ctx: string): Promise<{ found: boolean; why: string }> {
  try {
    const r = await fsckVolume(meta, data);
    return { found: r.problems.length > 0, why: r.problems[0] ?? "" };
  } catch (e) {
    assert.ok(isFsError(e), `${ctx}: fsck crashed with a non-FsError: ${describe(e)}`);
    return { found: true, why: e.message };
  }
}

// ---------------------------------------------------------------------------------------

test("every byte flip in a referenced metadata block is detected, never returned as data",
  async () => {
    const started = Date.now();
    const rng = new SimRandom(SEED + 1);
    const b = await buildVolume();
    const { targets, referenced } = await collectTargets(b, rng);
    const lookupKeys = [...Array.from({ length: 40 }, () => rng.pick(b.fsKeys)),
      b.fsKeys.reduce((m, k) => (Buffer.compare(k, m) < 0 ? k : m)),
      b.fsKeys.reduce((m, k) => (Buffer.compare(k, m) > 0 ? k : m))];
    const baseline = await readEverything(b.d.meta, new Counters(), lookupKeys);
    const clean = await fsckVolume(b.d.meta, b.d.data);
    assert.deepEqual(clean.problems, [], "the built volume is clean");

    const perKind = new Map<Kind, number>();
    let flips = 0;
    for (const t of targets) {
      for (const off of t.offsets) {
        const mask = off % 2 === 0 ? 1 << rng.int(8) : 1 + rng.int(255);
        const ctx = `${t.what} byte ${off} ^ 0x${mask.toString(16)}`;
        const meta = t.onData ? b.d.meta : b.d.meta.snapshot();
        const data = t.onData ? b.d.data.snapshot() : b.d.data;
        flipByte(t.onData ? data : meta, t.base + off, mask);
        const counters = new Counters();

        if (t.kind === "meta super") {
          await assert.rejects(Volume.open(meta), (e: unknown) => {
            assert.ok(isFsError(e, "EIO"), `${ctx}: open must fail with EIO, got ${describe(e)}`);
            assert.match(e.message, /super/, `${ctx}: the message names the super block`);
            return true;
          }, ctx);
        } else if (t.kind === "data super") {
          const sb = await readSuperFrom(meta, true);
          await assert.rejects(checkDataDevice(data, sb), (e: unknown) => {
            assert.ok(isFsError(e, "EIO"), `${ctx}: data device check must fail with EIO, got ${describe(e)}`);
            return true;
          }, ctx);
        } else {
          const r = await tryRead(meta, counters, lookupKeys);
          if (r.ok) {
            assert.fail(`${ctx}: corruption was not detected (content ${
              JSON.stringify(r.content) === JSON.stringify(baseline) ? "unchanged" : "CHANGED"})`);
          }
          const err = r.err;
          assert.ok(isFsError(err), `${ctx}: a non-FsError escaped: ${describe(err)}`);
          assert.ok(err.code === "EIO" || err.code === "ESTALE", `${ctx}: error code ${err.code}`);
          if (t.kind !== "quorum block") {
            assert.ok(counters.get("corrupt_block") >= 1, `${ctx}: corrupt_block counted`);
            assert.ok(counters.get("block_cache_remove_stale") >= 2,
              `${ctx}: block_cache_remove_stale counted the read and the re-read`);
          }
        }
        const f = await fsckFinds(meta, data, ctx);
        assert.ok(f.found, `${ctx}: fsck found nothing`);
        perKind.set(t.kind, (perKind.get(t.kind) ?? 0) + 1);
        flips++;
      }
    }

    // control: flips in free metadata blocks (some hold stale old blocks) change nothing
    const vol = await Volume.open(b.d.meta, { cacheBytes: CACHE_BYTES });
    const free = [...await listExtents(vol, vol.sb.metaAlloc[1]), ...await listExtents(vol, vol.sb.metaAlloc[0])];
    const freeBlknos = free.flatMap((e) => range(e.start, e.start + Math.min(e.len, 4)))
      .filter((blkno) => !referenced.has(blkno)).slice(0, 8);
    assert.ok(freeBlknos.length > 0, "some free metadata blocks");
    for (const blkno of freeBlknos) {
      const meta = b.d.meta.snapshot();
      for (const off of [0, 4, 24, 40, ...sample(rng, 4, 0, META_BLOCK_SIZE)]) {
        flipByte(meta, blkno * META_BLOCK_SIZE + off, 1 + rng.int(255));
      }
      const ctx = `free block ${blkno}`;
      const r = await tryRead(meta, new Counters(), lookupKeys);
      assert.ok(r.ok, `${ctx}: flips in a free block must not matter: ${r.ok ? "" : describe(r.err)}`);
      assert.deepEqual(r.content, baseline, ctx);
      const f = await fsckFinds(meta, b.d.data, ctx);
      assert.ok(!f.found, `${ctx}: fsck reported ${f.why}`);
    }

    const ms = Date.now() - started;
    console.log(`corruption: ${flips} flips in ${targets.length} blocks (${
      [...perKind].map(([k, n]) => `${k} ${n}`).join(", ")}), ${freeBlknos.length} free-block controls, ${ms} ms`);
    console.log(`corruption targets: ${targets.map((t) => `${t.what} (${t.offsets.length})`).join("; ")}`);
  });

test("blocks with a valid checksum but the wrong identity or a broken structure are refused",
  async () => {
    const b = await buildVolume();
    const vol = await Volume.open(b.d.meta, { cacheBytes: CACHE_BYTES });
    const leaves: BlockRef[] = [];
    const parents: BlockRef[] = [];
    await btreeWalkBlocks(vol.cache, vol.sb.fsRoot, (ref, level) => {
      (level === 0 ? leaves : parents).push(ref);
    });
    const leaf = leaves[1]!;
    const other = leaves[2]!;
    const parent = parents[0]!;
    const list = vol.sb.serverMetaAvail[0].ref;
    const keys = b.fsKeys.slice(0, 10);
    const read = (d: SimDisk, blkno: number): Buffer => d.readDurable(blkno * META_BLOCK_SIZE, META_BLOCK_SIZE);
    const put = (d: SimDisk, blkno: number, buf: Buffer, reseal = true): void => {
      if (reseal) sealBlock(buf);
      d.applyWrite(buf, blkno * META_BLOCK_SIZE);
      d.applyFlush();
    };
    const item = (i: number, field: number): number => itemOff(i) + field;
    type Case = [string, (d: SimDisk) => void];
    const edit = (blkno: number, fn: (buf: Buffer) => void): (d: SimDisk) => void => (d) => {
      const buf = read(d, blkno);
      fn(buf);
      put(d, blkno, buf);
    };
    const cases: Case[] = [
      // identity: what lost and misdirected writes leave behind
      ["another leaf's block (misdirected write)", (d) => put(d, leaf.blkno, read(d, other.blkno), false)],
      ["an older version of the block (lost write)", edit(leaf.blkno, (x) => writeU64(x, 16, leaf.seq - 1))],
      ["a block of another volume", edit(leaf.blkno, (x) => x.writeBigUInt64LE(x.readBigUInt64LE(8) ^ 1n, 8))],
      ["a never-written (zero) block", (d) => put(d, leaf.blkno, Buffer.alloc(META_BLOCK_SIZE), false)],
      ["an alloc list block where a btree block belongs", (d) => {
        const x = read(d, list.blkno);
        writeU64(x, 16, leaf.seq);
        writeU64(x, 24, leaf.blkno);
        put(d, leaf.blkno, x);
      }],
      // structure, resealed as a buggy writer would
      ["leaf nr + 1", edit(leaf.blkno, (x) => x.writeUInt16LE(x.readUInt16LE(32) + 1, 32))],
      ["leaf nr = 0xffff", edit(leaf.blkno, (x) => x.writeUInt16LE(0xffff, 32))],
      ["leaf marked level 1", edit(leaf.blkno, (x) => { x[34] = 1; })],
      ["leaf level 200", edit(leaf.blkno, (x) => { x[34] = 200; })],
      ["leaf val_start past the block", edit(leaf.blkno, (x) => x.writeUInt32LE(META_BLOCK_SIZE + 1, 36))],
      ["leaf val_bytes + 1", edit(leaf.blkno, (x) => x.writeUInt32LE(x.readUInt32LE(40) + 1, 40))],
      ["leaf keys out of order", edit(leaf.blkno, (x) => {
        const a = Buffer.from(x.subarray(itemOff(0), itemOff(1)));
        x.copy(x, itemOff(0), itemOff(1), itemOff(2));
        a.copy(x, itemOff(1));
      })],
      ["leaf duplicate key", edit(leaf.blkno, (x) => { x.copy(x, itemOff(1), itemOff(0), itemOff(0) + 27); })],
      ["leaf unknown item flag", edit(leaf.blkno, (x) => { x[item(0, 27)] = 0x80; })],
      ["leaf item seq >= 2^53", edit(leaf.blkno, (x) => x.writeUInt32LE(0xffffffff, item(0, 32)))],
      ["leaf value offset past the block", edit(leaf.blkno, (x) => x.writeUInt16LE(0xfff0, item(0, 36)))],
      ["leaf value offset into the item array", edit(leaf.blkno, (x) => x.writeUInt16LE(BT_ITEMS, item(0, 36)))],
      ["leaf value length 1000", edit(leaf.blkno, (x) => x.writeUInt16LE(1000, item(0, 38)))],
      ["parent child ref to blkno 1", edit(parent.blkno, (x) => writeU64(x, x.readUInt16LE(item(0, 36)), 1))],
      ["parent child ref past the device", edit(parent.blkno, (x) =>
        writeU64(x, x.readUInt16LE(item(0, 36)), vol.sb.totalMetaBlocks + 5))],
      ["parent child ref with the wrong seq", edit(parent.blkno, (x) => {
        const o = x.readUInt16LE(item(0, 36)) + 8;
        writeU64(x, o, x.readUInt32LE(o) + 1);
      })],
      ["parent item value length 8", edit(parent.blkno, (x) => x.writeUInt16LE(8, item(0, 38)))],
      ["list nr past its capacity", edit(list.blkno, (x) => x.writeUInt32LE(ALLOC_LIST_MAX_BLKNOS + 1, ALLOC_LIST_NR_OFF))],
      ["list start field set", edit(list.blkno, (x) => x.writeUInt32LE(1, ALLOC_LIST_START_OFF))],
      ["list garbage after its entries", edit(list.blkno, (x) => { x[META_BLOCK_SIZE - 1] = 1; })],
      ["list entry >= 2^53", edit(list.blkno, (x) => x.writeUInt32LE(0xffffffff, ALLOC_LIST_BLKNOS_OFF + 4))],
    ];
    for (const [what, corrupt] of cases) {
      const meta = b.d.meta.snapshot();
      corrupt(meta);
      const r = await tryRead(meta, new Counters(), keys);
      assert.ok(!r.ok, `${what}: not detected`);
      assert.ok(isFsError(r.err) && (r.err.code === "EIO" || r.err.code === "ESTALE"),
        `${what}: ${describe(r.err)}`);
      const f = await fsckFinds(meta, b.d.data, what);
      assert.ok(f.found, `${what}: fsck found nothing`);
    }

    // A parent whose (checksummed) ref names a valid block at the wrong place in the tree is
    // beyond what identity checks can see: readers must not crash, and fsck must report it.
    const meta = b.d.meta.snapshot();
    edit(parent.blkno, (x) => {
      const o0 = x.readUInt16LE(item(1, 36));
      const o1 = x.readUInt16LE(item(2, 36));
      x.copy(x, o0, o1, o1 + 16); // child 1 now points at child 2
    })(meta);
    const r = await tryRead(meta, new Counters(), keys);
    assert.ok(r.ok || isFsError(r.err), `misplaced child: ${r.ok ? "" : describe(r.err)}`);
    const f = await fsckFinds(meta, b.d.data, "misplaced child");
    assert.ok(f.found, "misplaced child: fsck found nothing");
    console.log(`identity/structure: ${cases.length} crafted blocks refused; a misplaced child ` +
      `(valid ref to a sibling) reads as ${r.ok ? (JSON.stringify(r.content) === JSON.stringify(
        await readEverything(b.d.meta, new Counters(), keys)) ? "the original data" : "other data")
        : "an error"}; fsck: ${f.why}`);
  });

test("a data device of another volume, or the metadata device as data, is refused", async () => {
  const d = await makeTestVolume(128 * MiB, 64 * MiB);
  const sb = await readSuperFrom(d.meta, true);
  assert.equal((await checkDataDevice(d.data, sb)).hdr.fsid, sb.hdr.fsid);

  // another volume's data device
  const other = { meta: new SimDisk("meta2", 128 * MiB), data: new SimDisk("data2", 64 * MiB) };
  await makeVolume(mkfsParams(other.meta, other.data, { fsid: 0x0bad_f00d_0bad_f00dn }));
  await assert.rejects(checkDataDevice(other.data, sb), (e: unknown) => {
    assert.ok(isFsError(e, "EINVAL"), `got ${describe(e)}`);
    assert.match(e.message, /fsid/);
    return true;
  });
  const r = await fsckVolume(d.meta, other.data);
  assert.ok(r.problems.some((p) => /data device super.*fsid/.test(p)), r.problems.join("\n"));

  // our own data super, rewritten (validly) with another fsid
  const forged = d.data.snapshot();
  const dsb = await readSuperFrom(forged, false);
  await writeSuperTo(forged, { ...dsb, hdr: { ...dsb.hdr, fsid: dsb.hdr.fsid ^ 1n } }, false);
  await assert.rejects(checkDataDevice(forged, sb), (e: unknown) => isFsError(e, "EINVAL"));

  // the metadata device passed as the data device, and the other way round
  await assert.rejects(checkDataDevice(d.meta, sb), (e: unknown) => {
    assert.ok(isFsError(e, "EINVAL"), `got ${describe(e)}`);
    assert.match(e.message, /META/);
    return true;
  });
  await assert.rejects(Volume.open(d.data), (e: unknown) => isFsError(e, "EINVAL"));
  // a blank device is no volume
  await assert.rejects(Volume.open(new SimDisk("blank", 128 * MiB)), (e: unknown) => {
    assert.ok(isFsError(e, "EIO"), `got ${describe(e)}`);
    assert.match(e.message, /super/);
    return true;
  });
});

test("device read errors surface as FsError EIO, never a crash", async () => {
  const b = await buildVolume();
  const rng = new SimRandom(SEED + 2);
  const { targets } = await collectTargets(b, rng);
  const keys = b.fsKeys.slice(0, 20);

  // the super
  let meta = b.d.meta.snapshot();
  meta.failReads((off, len) => off < SUPER_OFFSET + SUPER_SIZE && off + len > SUPER_OFFSET);
  await assert.rejects(Volume.open(meta), (e: unknown) => isFsError(e, "EIO"));
  await assert.rejects(fsckVolume(meta, b.d.data), (e: unknown) => isFsError(e, "EIO"));

  // each kind of referenced block, one at a time
  for (const t of targets.filter((x) => !x.onData && x.kind !== "meta super")) {
    meta = b.d.meta.snapshot();
    const size = t.kind === "quorum block" ? QUORUM_BLOCK_SIZE : META_BLOCK_SIZE;
    meta.failReads((off, len) => off < t.base + size && off + len > t.base);
    const counters = new Counters();
    const r = await tryRead(meta, counters, keys);
    assert.ok(!r.ok, `${t.what}: a failed read must not return data`);
    assert.ok(isFsError(r.err, "EIO"), `${t.what}: got ${describe(r.err)}`);
    const f = await fsckFinds(meta, b.d.data, t.what);
    assert.ok(f.found, `${t.what}: fsck must report the read error`);
    // the error is transient: once the device reads again, everything is there
    meta.failReads(null);
    const again = await tryRead(meta, new Counters(), keys);
    assert.ok(again.ok, `${t.what}: reads work again: ${again.ok ? "" : describe(again.err)}`);
  }

  // every read failing after open
  meta = b.d.meta.snapshot();
  const vol = await Volume.open(meta, { cacheBytes: CACHE_BYTES });
  meta.failReads(() => true);
  await assert.rejects(btreeCollect(vol.cache, vol.sb.fsRoot, MIN_KEY, MAX_KEY),
    (e: unknown) => isFsError(e, "EIO"));
  await assert.rejects(btreeLookup(vol.cache, vol.sb.fsRoot, keys[0]!), (e: unknown) => isFsError(e, "EIO"));

  // the data device's super unreadable
  const data = b.d.data.snapshot();
  data.failReads(() => true);
  await assert.rejects(checkDataDevice(data, b.sb), (e: unknown) => isFsError(e, "EIO"));
});
