/*
 * Test helper: exact accounting of a volume's data blocks, offline, from the metadata device.
 * Every data block in [DATA_DEV_START_BLKNO, total_data_blocks) must be free in exactly one
 * allocator (the global data_alloc, or a log tree's data_avail / data_freed) or mapped by
 * exactly one file extent of the forest (fs_root and the log trees, newest versions, so
 * extents deleted in unmerged log trees do not count). fsck's data check looks at fs_root
 * extents only and does not look for leaks; this is the stronger check the data tests use.
 */
import { listExtents } from "../../src/core/alloc.js";
import { BlockCache } from "../../src/core/block.js";
import { forestRange, listLogTrees } from "../../src/core/forest.js";
import {
  type AllocRoot, DATA_DEV_START_BLKNO, decodeDataExtent, EXTENT_FLAG_OFFLINE,
} from "../../src/core/format.js";
import {
  compareKeys, FsType, keyInc, keyThird, keyType, makeKey, U64_MAX, Zone,
} from "../../src/core/key.js";
import { readSuperFrom } from "../../src/core/volume.js";
import type { BlockDevice } from "../../src/env/env.js";
import { Counters } from "../../src/util/counters.js";

const CACHE_BYTES = 64 * 1024 * 1024;
/** Problems reported at most (and gaps named in the leak report). */
const MAX_REPORTED = 8;

interface Owned {
  start: number;
  len: number;
  owner: string;
}

export interface DataAccounting {
  problems: string[];
  /** Blocks mapped by file extents (written or unwritten). */
  used: number;
  /** Blocks free in some allocator. */
  free: number;
}

async function freeExtents(meta: BlockDevice, cache: BlockCache): Promise<Owned[]> {
  const sb = await readSuperFrom(meta, true);
  const out: Owned[] = [];
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

async function mappedExtents(meta: BlockDevice, cache: BlockCache): Promise<Owned[]> {
  const sb = await readSuperFrom(meta, true);
  const roots = { fsRoot: sb.fsRoot, logsRoot: sb.logsRoot };
  const end = makeKey(Zone.FS, U64_MAX, 255, U64_MAX, U64_MAX, 255);
  const out: Owned[] = [];
  for (let k = makeKey(Zone.FS, 0n, 0); ;) {
    const got = await forestRange(cache, roots, k, end, 512);
    for (const it of got.items) {
      if (keyType(it.key) !== FsType.DATA_EXTENT) continue;
      const v = decodeDataExtent(it.val);
      if ((v.flags & EXTENT_FLAG_OFFLINE) !== 0) continue;
      out.push({ start: v.blkno, len: Number(keyThird(it.key)),
        owner: `extent ${it.key.toString("hex").slice(2, 18)}` });
    }
    if (compareKeys(got.end, end) >= 0) return out;
    k = keyInc(got.end);
  }
}

export async function dataAccounting(meta: BlockDevice): Promise<DataAccounting> {
  const sb = await readSuperFrom(meta, true);
  const cache = new BlockCache(meta, sb.hdr.fsid, new Counters(), CACHE_BYTES, sb.totalMetaBlocks);
  const free = await freeExtents(meta, cache);
  const used = await mappedExtents(meta, cache);
  const ivs = [...free, ...used].sort((a, b) => a.start - b.start);
  const problems: string[] = [];
  const gaps: string[] = [];
  let pos = DATA_DEV_START_BLKNO;
  let prev: Owned | null = null;
  for (const iv of ivs) {
    if (prev && iv.start < pos && problems.length < MAX_REPORTED) {
      problems.push(`blocks ${iv.start}.. are ${prev.owner} and ${iv.owner}`);
    }
    if (iv.start > pos && gaps.length < MAX_REPORTED) gaps.push(`${pos}..${iv.start - 1}`);
    if (iv.start + iv.len > pos) {
      pos = iv.start + iv.len;
      prev = iv;
    }
  }
  if (pos < sb.totalDataBlocks) gaps.push(`${pos}..${sb.totalDataBlocks - 1}`);
  if (pos > sb.totalDataBlocks) problems.push(`blocks past the device end (${pos})`);
  const sum = (xs: Owned[]): number => xs.reduce((n, x) => n + x.len, 0);
  const total = sb.totalDataBlocks - DATA_DEV_START_BLKNO;
  if (sum(free) + sum(used) !== total || gaps.length > 0) {
    problems.push(`${sum(used)} used + ${sum(free)} free of ${total} data blocks; ` +
      `neither free nor used: ${gaps.join(", ") || "none"}`);
  }
  return { problems, used: sum(used), free: sum(free) };
}
