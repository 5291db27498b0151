/*
 * Where a write's and a fallocate's blocks go (upstream data.c scoutfs_get_block,
 * alloc_block and fallocate_extents), computed over an ExtentMap window (data_ext.ts) with
 * the transaction's data allocator (data_alloc.ts), before any device I/O.
 *
 * Upstream maps a write one page at a time: a written block is overwritten in place, an
 * UNWRITTEN block is converted to written, and a hole gets alloc_block(), which may
 * preallocate: with data_prealloc_contig_only (default) only a streaming append does (the
 * block is past 1 and equals the count of online blocks), for up to min(iblock, next extent,
 * data_prealloc_blocks) blocks, so preallocation ramps with the file; without it, a write
 * into an aligned region of data_prealloc_blocks fills the region's hole. The preallocated
 * rest is an UNWRITTEN extent that later blocks convert. mapWrite() reproduces exactly the
 * extents that per-block sequence makes, but steps a whole run at a time: converting a run of
 * an UNWRITTEN extent at once, and allocating a run of single blocks (no preallocation) in
 * one request from the cached extent, give the same extents as block by block (the online
 * count and the block number advance together in such a run, so the streaming test cannot
 * change its answer inside it, except at blocks 0 and 1, where the run is cut).
 *
 * A request the allocator cannot meet stops the plan early (short): the caller writes what
 * was mapped, commits (the server refills the mount's allocator) and continues.
 */
import { assert } from "../../util/assert.js";
import { FsError } from "../../util/errno.js";
import type { Extent } from "../alloc.js";
import { DATA_ALLOC_LARGE_BLOCKS } from "../data_alloc.js";
import { EXTENT_FLAG_OFFLINE, EXTENT_FLAG_UNWRITTEN } from "../format.js";
import { extEnd, type ExtentMap } from "./data_ext.js";

/** Largest fallocate allocation request (upstream SCOUTFS_FALLOCATE_ALLOC_LIMIT, 128 MiB). */
export const FALLOCATE_ALLOC_LIMIT = 32_768;

export interface PreallocOptions {
  /** data_prealloc_blocks: the preallocation size (and region size without contig_only). */
  blocks: number;
  /** data_prealloc_contig_only: only streaming appends preallocate. */
  contigOnly: boolean;
}

/** A run of logical blocks and where they are on the data device. */
export interface Segment {
  iblock: number;
  len: number;
  map: number;
  /** The blocks hold nothing yet (new or UNWRITTEN): partial writes fill zeros, not reads. */
  fresh: boolean;
}

export type Allocate = (count: number) => Promise<Extent | null>;

export interface WritePlan {
  segs: Segment[];
  /** Blocks [a, end) are mapped; end <= b + 1, less when the allocator ran out (short). */
  end: number;
  short: boolean;
}

/**
 * Maps blocks [a, b] for writing. `online` is the inode's online block count before the
 * operation (the map's onlineDelta adds what the plan changes). The window must cover
 * [a - 1, b + pre.blocks + 1] (and the aligned region before a without contig_only).
 */
export async function mapWrite(m: ExtentMap, a: number, b: number, online: bigint,
  alloc: Allocate, pre: PreallocOptions): Promise<WritePlan> {
  assert(a <= b && pre.blocks >= 1, "write plan range");
  const segs: Segment[] = [];
  let i = a;
  while (i <= b) {
    const e = m.find(i);
    if (e && e.map === 0) throw new FsError("EIO", "writing an offline extent needs staging");
    if (e) {
      // written: overwrite in place; unwritten: becomes written (flags cleared as upstream)
      const n = Math.min(b, extEnd(e)) - i + 1;
      const map = e.map + (i - e.start);
      const fresh = (e.flags & EXTENT_FLAG_UNWRITTEN) !== 0;
      if (fresh) m.set(i, n, map, e.flags & ~(EXTENT_FLAG_UNWRITTEN | EXTENT_FLAG_OFFLINE));
      pushSeg(segs, { iblock: i, len: n, map, fresh });
      i += n;
      continue;
    }
    const onl = Number(online) + m.onlineDelta;
    const got = await allocHole(m, i, b, onl, alloc, pre);
    if (got === null) return { segs, end: i, short: true };
    pushSeg(segs, { iblock: i, len: got.len, map: got.map, fresh: true });
    i += got.len;
  }
  return { segs, end: b + 1, short: false };
}

function pushSeg(segs: Segment[], s: Segment): void {
  const last = segs[segs.length - 1];
  if (last && last.iblock + last.len === s.iblock && last.map + last.len === s.map &&
    last.fresh === s.fresh) {
    last.len += s.len;
  } else {
    segs.push(s);
  }
}

/** The hole run from i: up to b and the next extent. */
function holeEnd(m: ExtentMap, i: number, b: number): number {
  const nx = m.next(i);
  return nx === null ? b : Math.min(b, nx.start - 1);
}

/**
 * Allocates for the hole at block i (alloc_block): returns the blocks written from i
 * (written extent already set), or null when the allocator has nothing.
 */
async function allocHole(m: ExtentMap, i: number, b: number, online: number, alloc: Allocate,
  pre: PreallocOptions): Promise<{ len: number; map: number } | null> {
  if (pre.contigOnly && !(i > 1 && i === online)) {
    // no preallocation: single blocks, batched over the hole run (cut before block 2)
    let n = holeEnd(m, i, b) - i + 1;
    if (i - online === 0 && i <= 1) n = Math.min(n, 2 - i);
    // per-block requests are small ones, served from the cached extent
    n = Math.min(n, DATA_ALLOC_LARGE_BLOCKS - 1);
    const e = await alloc(n);
    if (e === null) return null;
    m.set(i, e.len, e.start, 0);
    return { len: e.len, map: e.start };
  }
  const r = pre.contigOnly ? contigPrealloc(m, i, pre) : regionPrealloc(m, i, pre);
  const e = await alloc(Math.min(r.count, pre.blocks));
  if (e === null) return null;
  let start = r.start;
  // an aligned attempt that got less may not cover i: move just enough to cover it
  if (start + e.len <= i) start += i - (start + e.len) + 1;
  if (e.len > 1) m.set(start, e.len, e.start, EXTENT_FLAG_UNWRITTEN);
  const map = e.start + (i - start);
  m.set(i, 1, map, 0);
  return { len: 1, map };
}

/** A streaming append: up to the next extent, ramping with the file (min(iblock, ...)). */
function contigPrealloc(m: ExtentMap, i: number, pre: PreallocOptions): { start: number;
  count: number } {
  const found = m.next(i);
  let count = found !== null && found.start > i ? found.start - i : pre.blocks;
  count = Math.min(i, count);
  return { start: i, count };
}

/** Fill the hole of the aligned region of pre.blocks that contains i. */
function regionPrealloc(m: ExtentMap, i: number, pre: PreallocOptions): { start: number;
  count: number } {
  let start = i - (i % pre.blocks);
  let count = pre.blocks;
  let found = m.next(start);
  if (found !== null && found.start < i) {
    count -= i - start;
    start = i;
    found = m.next(i);
  }
  if (found !== null && found.start > start && found.start < start + count) {
    count = found.start - start;
  }
  return { start, count };
}

export interface FallocPlan {
  /** Blocks [from, next) are allocated (or were already). */
  next: number;
  /** The allocator ran out before `last`. */
  short: boolean;
  /** Extents were added. */
  changed: boolean;
}

/**
 * fallocate_extents: UNWRITTEN extents for every unallocated block of [iblock, last], at
 * most `steps` allocations. The window must cover [iblock - 1, last + 1].
 */
export async function mapFallocate(m: ExtentMap, iblock: number, last: number, steps: number,
  alloc: Allocate): Promise<FallocPlan> {
  let i = iblock;
  let changed = false;
  for (let step = 0; i <= last && step < steps; step++) {
    const ext = m.next(i);
    let count = last - i + 1;
    if (ext !== null && ext.start <= i) {
      // allocated; or OFFLINE: upstream preallocates those for staging (OFFLINE|UNWRITTEN
      // with blocks), which the item format does not accept yet, so they are left alone
      i += Math.min(count, extEnd(ext) - i + 1);
      continue;
    }
    if (ext !== null) {
      count = Math.min(count, ext.start - i);
    }
    const e = await alloc(Math.min(count, FALLOCATE_ALLOC_LIMIT));
    if (e === null) return { next: i, short: true, changed };
    m.set(i, e.len, e.start, EXTENT_FLAG_UNWRITTEN);
    changed = true;
    i += e.len;
  }
  return { next: i, short: false, changed };
}
