/*
 * Exact accounting of a volume's data blocks, offline, from the metadata device: who owns
 * every data block. Used by fsck (fsck.ts) and by tests through dataAccounting().
 *
 * Every data block in [DATA_DEV_START_BLKNO, total_data_blocks) must be owned exactly once:
 * free in one allocator (the super's data_alloc, a log tree's data_avail or data_freed) or
 * mapped by one current file extent. "Current" is the forest's view, not fs_root's: extents
 * still only in mounts' log trees (not merged yet) count, and an extent deleted or replaced
 * in an unmerged log tree (a truncate, a deletion, a rewrite) no longer counts even though
 * fs_root still holds its older version, whose blocks the deleting mount's data_freed now
 * owns. Reading fs_root alone both misses the first (a leak that is not one) and counts the
 * second (a block "free and used" that is not). So extents are read with forestRange:
 * fs_root plus every log tree, newest version per key, tombstones hiding older versions.
 * Offline extents (released data) own no block. Blocks owned by nobody are leaks; blocks
 * owned twice are double use; both are reported with their owners.
 *
 * Bounds: extents are read FOREST_SCAN_ITEMS items at a time; at most MAX_REPORTED problems
 * and gap ranges are named by dataAccounting (fsck has its own problem bound).
 */
import type { BlockDevice } from "../env/env.js";
import { Counters } from "../util/counters.js";
import { isFsError } from "../util/errno.js";
import { listExtents } from "./alloc.js";
import { BlockCache } from "./block.js";
import type { Item } from "./btree.js";
import { forestRange, type ForestRoots, listLogTrees } from "./forest.js";
import {
  type AllocRoot, DATA_DEV_START_BLKNO, decodeDataExtent, EXTENT_FLAG_OFFLINE, type SuperBlock,
} from "./format.js";
import {
  compareKeys, FsType, keyFirst, keyInc, keyThird, keyType, makeKey, U64_MAX, Zone,
} from "./key.js";
import { readSuperFrom } from "./volume.js";

/** Items read per forest step while looking for extents. */
export const FOREST_SCAN_ITEMS = 512;
/** Problems (and leaked ranges) dataAccounting names at most. */
export const MAX_REPORTED = 8;
const CACHE_BYTES = 64 * 1024 * 1024;

/** A run of data blocks and who owns it. */
export interface DataOwner {
  start: number;
  len: number;
  owner: string;
}

/** The blocks a current extent item maps, null when none (offline) or malformed. */
function extentOwner(it: Item, problem: (msg: string) => void): DataOwner | null {
  const ino = keyFirst(it.key);
  try {
    const v = decodeDataExtent(it.val);
    if ((v.flags & EXTENT_FLAG_OFFLINE) !== 0) return null;
    const len = keyThird(it.key);
    if (len < 1n || len > BigInt(Number.MAX_SAFE_INTEGER)) {
      problem(`inode ${ino} extent of ${len} blocks`);
      return null;
    }
    return { start: v.blkno, len: Number(len), owner: `inode ${ino} extent` };
  } catch (e) {
    if (!isFsError(e)) throw e;
    problem(`inode ${ino} extent item: ${e.message}`);
    return null;
  }
}

/** Every data block run mapped by a current file extent of the forest (see the header). */
export async function forestDataExtents(cache: BlockCache, roots: ForestRoots,
  problem: (msg: string) => void): Promise<DataOwner[]> {
  const end = makeKey(Zone.FS, U64_MAX, 255, U64_MAX, U64_MAX, 255);
  const out: DataOwner[] = [];
  for (let k = makeKey(Zone.FS, 0n, 0); ;) {
    const got = await forestRange(cache, roots, k, end, FOREST_SCAN_ITEMS);
    for (const it of got.items) {
      if (keyType(it.key) !== FsType.DATA_EXTENT) continue;
      const o = extentOwner(it, problem);
      if (o !== null) out.push(o);
    }
    if (compareKeys(got.end, end) >= 0) return out;
    k = keyInc(got.end);
  }
}

/** The free extents of every data allocator: the super's and each log tree's. */
export async function dataFreeExtents(cache: BlockCache, sb: SuperBlock): Promise<DataOwner[]> {
  const out: DataOwner[] = [];
  const add = async (owner: string, a: AllocRoot): Promise<void> => {
    for (const e of await listExtents({ cache }, a)) out.push({ ...e, owner });
  };
  await add("data_alloc", sb.dataAlloc);
  for (const lt of await listLogTrees(cache, sb.logsRoot)) {
    const name = `log tree ${lt.rid.toString(16)}.${lt.nr}`;
    await add(`${name} data_avail`, lt.dataAvail);
    await add(`${name} data_freed`, lt.dataFreed);
  }
  return out;
}

/**
 * Walks owners in block order: calls double() for each run that overlaps an earlier one and
 * gap() for each run of blocks in [lo, hi) owned by nobody. Runs outside [lo, hi) are the
 * caller's to report (outside() is called for them and they are skipped).
 */
export function walkOwners(owners: DataOwner[], lo: number, hi: number, cb: {
  double(prev: DataOwner, cur: DataOwner): void;
  gap(start: number, end: number): void;
  outside(o: DataOwner): void;
}): void {
  const sorted = [...owners].sort((a, b) => a.start - b.start || a.len - b.len);
  let pos = lo;
  let prev: DataOwner | null = null;
  for (const o of sorted) {
    if (o.start < lo || o.start + o.len > hi) {
      cb.outside(o);
      continue;
    }
    if (prev !== null && o.start < pos) cb.double(prev, o);
    else if (o.start > pos) cb.gap(pos, o.start - 1);
    if (o.start + o.len > pos) {
      pos = o.start + o.len;
      prev = o;
    }
  }
  if (pos < hi) cb.gap(pos, hi - 1);
}

export interface DataAccounting {
  problems: string[];
  /** Blocks mapped by current file extents (written or unwritten). */
  used: number;
  /** Blocks free in some allocator. */
  free: number;
}

/** The exact accounting of the volume on `meta` (its own fresh cache, nothing changed). */
export async function dataAccounting(meta: BlockDevice): Promise<DataAccounting> {
  const sb = await readSuperFrom(meta, true);
  const cache = new BlockCache(meta, sb.hdr.fsid, new Counters(), CACHE_BYTES, sb.totalMetaBlocks);
  const problems: string[] = [];
  const problem = (m: string): void => { if (problems.length < MAX_REPORTED) problems.push(m); };
  const free = await dataFreeExtents(cache, sb);
  const used = await forestDataExtents(cache, { fsRoot: sb.fsRoot, logsRoot: sb.logsRoot },
    problem);
  const gaps: string[] = [];
  walkOwners([...free, ...used], DATA_DEV_START_BLKNO, sb.totalDataBlocks, {
    double: (p, o) => problem(`blocks ${o.start}.. are ${p.owner} and ${o.owner}`),
    gap: (s, e) => { if (gaps.length < MAX_REPORTED) gaps.push(`${s}..${e}`); },
    outside: (o) => problem(`${o.owner} blocks ${o.start} (+${o.len}) outside the device`),
  });
  const sum = (xs: DataOwner[]): number => xs.reduce((n, x) => n + x.len, 0);
  const total = sb.totalDataBlocks - DATA_DEV_START_BLKNO;
  if (sum(free) + sum(used) !== total || gaps.length > 0) {
    problems.push(`${sum(used)} used + ${sum(free)} free of ${total} data blocks; ` +
      `neither free nor used: ${gaps.join(", ") || "none"}`);
  }
  return { problems, used: sum(used), free: sum(free) };
}
