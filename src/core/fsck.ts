/*
 * fsck: an offline consistency check of a whole volume (upstream has none; every crash test
 * relies on this one).
 *
 * It reads only what is on the devices (its own fresh cache) and reports every finding as a
 * precise line; it never changes anything. Checks:
 *   - both supers decode, agree (fsid, format version) and carry the META flag only on the
 *     metadata device; every quorum block decodes;
 *   - every btree of the super: every ref resolves (crc, magic, fsid, blkno, seq), levels
 *     descend by one, keys are sorted inside blocks and lie inside the range their parent
 *     item gives the child;
 *   - every alloc list chain: blocks valid, counts equal the head's;
 *   - every free-extent tree: its blkno and order indexes describe the same extents, extents
 *     are fully merged, its total_len is their sum;
 *   - every metadata block in [META_DEV_START_BLKNO, total_meta_blocks) is referenced exactly
 *     once or free exactly once (in an alloc list or a meta free extent);
 *   - every data block in [DATA_DEV_START_BLKNO, total_data_blocks) is owned exactly once:
 *     free in one data allocator or mapped by one current file extent. Extents are read
 *     through the forest (fs_root plus every log tree, newest version per key, deletions
 *     hiding older versions: fsck_data.ts), so extents not merged yet count and extents a
 *     log tree deleted or truncated do not; unowned blocks are leaks, others double use;
 *   - the root inode exists and inode items decode.
 */
import type { BlockDevice } from "../env/env.js";
import { Counters } from "../util/counters.js";
import { isFsError } from "../util/errno.js";
import { listEntries, listNext, listNr } from "./alloc.js";
import { BlockCache } from "./block.js";
import { btreeLookup, btreeWalkBlocks } from "./btree.js";
import { blockLevel, cmpKeyAt, itemAt, keyAt, nrItems } from "./btree_block.js";
import {
  type AllocListHead, type AllocRoot, type BtreeRoot, DATA_DEV_START_BLKNO, decodeDataExtent,
  decodeInode, decodeQuorumBlock, Magic, META_DEV_START_BLKNO,
  QUORUM_BLKNO, QUORUM_BLOCK_SIZE, QUORUM_MAX_SLOTS, type SuperBlock,
} from "./format.js";
import {
  extentOrder, FsType, inodeKey, keyFirst, keySecond, keyThird, keyType, keyZone,
  MAX_KEY, U64_MAX, Zone,
} from "./key.js";
import { ROOT_INO } from "./mkfs.js";
import { checkDataDevice, readSuperFrom } from "./volume.js";
import { forestDataExtents } from "./fsck_data.js";
import {
  decodeLogMergeFreeing, decodeLogMergeRequest, decodeLogTrees, type LogTrees,
} from "./format_log.js";
import { btreeFreeingBlocks } from "./btree_free.js";
import "./forest.js"; // registers the bloom block validator

export interface FsckReport {
  problems: string[];
  metaBlocksReferenced: number;
  metaBlocksFree: number;
  items: number;
  btreeBlocks: number;
}

interface Interval {
  start: number;
  len: number;
  owner: string;
}

const MAX_PROBLEMS = 1000;

class Checker {
  readonly problems: string[] = [];
  readonly meta: Interval[] = [];
  readonly data: Interval[] = [];
  items = 0;
  btreeBlocks = 0;
  referenced = 0;
  free = 0;

  constructor(readonly cache: BlockCache, readonly sb: SuperBlock) {}

  problem(msg: string): void {
    if (this.problems.length < MAX_PROBLEMS) this.problems.push(msg);
    else if (this.problems.length === MAX_PROBLEMS) this.problems.push("too many problems");
  }

  async guard(what: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      if (!isFsError(e)) throw e;
      this.problem(`${what}: ${e.message}`);
    }
  }
}

/** Walks a btree: block identities, levels, key bounds; visits every leaf item. */
async function checkTree(c: Checker, name: string, root: BtreeRoot,
  onItem?: (key: Buffer, val: Buffer) => void): Promise<void> {
  const bounds = new Map<number, { lo: Buffer | null; hi: Buffer }>();
  if (root.height > 0) bounds.set(root.ref.blkno, { lo: null, hi: MAX_KEY });
  await c.guard(`${name} btree`, () => btreeWalkBlocks(c.cache, root, (ref, level, buf) => {
    c.btreeBlocks++;
    c.referenced++;
    c.meta.push({ start: ref.blkno, len: 1, owner: `${name} btree block` });
    const b = bounds.get(ref.blkno) ?? { lo: null, hi: MAX_KEY };
    const nr = nrItems(buf);
    if (nr === 0 && !(level === 0 && ref.blkno === root.ref.blkno)) {
      c.problem(`${name} btree block ${ref.blkno} level ${level} is empty`);
    }
    for (let i = 0; i < nr; i++) {
      if ((b.lo && cmpKeyAt(buf, i, b.lo) <= 0) || cmpKeyAt(buf, i, b.hi) > 0) {
        c.problem(`${name} btree block ${ref.blkno} item ${i} key outside its parent's range`);
        break;
      }
    }
    if (level > 0) {
      if (blockLevel(buf) !== level) c.problem(`${name} btree block ${ref.blkno} level`);
      for (let i = 0; i < nr; i++) {
        const child = itemAt(buf, i);
        bounds.set(child.val.readUInt32LE(0) + child.val.readUInt32LE(4) * 2 ** 32,
          { lo: i > 0 ? keyAt(buf, i - 1) : b.lo, hi: child.key });
      }
      if (ref.blkno === root.ref.blkno && nr > 0 && !keyAt(buf, nr - 1).equals(MAX_KEY)) {
        c.problem(`${name} btree root's last parent key is not the maximal key`);
      }
    } else {
      for (let i = 0; i < nr; i++) {
        c.items++;
        if (onItem) {
          const it = itemAt(buf, i);
          onItem(it.key, it.val);
        }
      }
    }
    bounds.delete(ref.blkno);
  }));
}

async function checkList(c: Checker, name: string, h: AllocListHead): Promise<void> {
  let ref = h.ref;
  let total = 0;
  let blocks = 0;
  await c.guard(`${name} alloc list`, async () => {
    while (ref.blkno !== 0) {
      if (++blocks > c.sb.totalMetaBlocks) {
        c.problem(`${name} alloc list has a cycle`);
        return;
      }
      const buf = await c.cache.read(ref, Magic.ALLOC_LIST);
      if (blocks === 1 && listNr(buf) !== h.firstNr) c.problem(`${name} first_nr mismatch`);
      c.referenced++;
      c.meta.push({ start: ref.blkno, len: 1, owner: `${name} list block` });
      for (const b of listEntries(buf)) {
        c.free++;
        c.meta.push({ start: b, len: 1, owner: `${name} list entry` });
      }
      total += listNr(buf);
      ref = listNext(buf);
    }
  });
  if (total !== h.totalNr) c.problem(`${name} total_nr ${h.totalNr} but lists hold ${total}`);
}

/** Checks an extent tree's two indexes; returns its extents. */
async function checkExtents(c: Checker, name: string, a: AllocRoot): Promise<Interval[]> {
  const byBlkno: string[] = [];
  const byOrder: string[] = [];
  const out: Interval[] = [];
  await checkTree(c, name, a.root, (key) => {
    if (keyZone(key) === Zone.FREE_EXTENT_BLKNO) {
      const last = Number(keyFirst(key));
      const len = Number(keySecond(key));
      byBlkno.push(`${last}/${len}`);
      out.push({ start: last - len + 1, len, owner: `${name} free extent` });
    } else if (keyZone(key) === Zone.FREE_EXTENT_ORDER) {
      const last = Number(keySecond(key));
      const len = Number(keyThird(key));
      if (len < 1 || keyFirst(key) !== U64_MAX - BigInt(extentOrder(len))) {
        c.problem(`${name} order item for extent ${last}/${len} has the wrong order`);
      }
      byOrder.push(`${last}/${len}`);
    } else {
      c.problem(`${name} holds an item of zone ${keyZone(key)}`);
    }
  });
  byOrder.sort();
  const sortedBlkno = [...byBlkno].sort();
  if (sortedBlkno.join() !== byOrder.join()) {
    c.problem(`${name} blkno and order indexes disagree (${byBlkno.length} vs ${byOrder.length} extents)`);
  }
  let sum = 0;
  for (let i = 0; i < out.length; i++) {
    sum += out[i]!.len;
    if (i > 0 && out[i - 1]!.start + out[i - 1]!.len === out[i]!.start) {
      c.problem(`${name} extents at ${out[i - 1]!.start} and ${out[i]!.start} are not merged`);
    }
  }
  if (sum !== a.totalLen) c.problem(`${name} total_len ${a.totalLen} but extents hold ${sum}`);
  return out;
}

/** Every unit in [lo, hi) must be covered exactly once by the intervals. */
function checkCoverage(c: Checker, what: string, ivs: Interval[], lo: number, hi: number,
  requireFull: boolean): void {
  ivs.sort((a, b) => a.start - b.start || a.len - b.len);
  let pos = lo;
  let prev: Interval | null = null;
  for (const iv of ivs) {
    if (iv.start < lo || iv.start + iv.len > hi) {
      c.problem(`${what} ${iv.start} (+${iv.len}) of ${iv.owner} outside [${lo}, ${hi})`);
      continue;
    }
    if (iv.start < pos && prev) {
      c.problem(`${what} ${iv.start} (+${iv.len}) is both ${prev.owner} and ${iv.owner}`);
    } else if (iv.start > pos && requireFull) {
      c.problem(`${what}s ${pos}..${iv.start - 1} are neither referenced nor free (leaked)`);
    }
    if (iv.start + iv.len > pos) {
      pos = iv.start + iv.len;
      prev = iv;
    }
  }
  if (pos < hi && requireFull) c.problem(`${what}s ${pos}..${hi - 1} are neither referenced nor free (leaked)`);
}

/** fs_root items decode (the blocks extents own are counted from the forest, below). */
function fsItem(c: Checker, key: Buffer, val: Buffer): void {
  if (keyZone(key) !== Zone.FS) return;
  const ino = keyFirst(key);
  try {
    if (keyType(key) === FsType.INODE) decodeInode(val, c.sb.fmtVers);
    if (keyType(key) === FsType.DATA_EXTENT) decodeDataExtent(val);
  } catch (e) {
    if (!isFsError(e)) throw e;
    c.problem(`fs_root item of inode ${ino} type ${keyType(key)}: ${e.message}`);
  }
}

/** logs_root and everything each mount's log_trees item owns. */
async function checkLogTrees(c: Checker, logsRoot: BtreeRoot): Promise<void> {
  const items: Buffer[] = [];
  await checkTree(c, "logs_root", logsRoot, (_k, v) => { items.push(v); });
  for (const v of items) {
    let lt: LogTrees;
    try {
      lt = decodeLogTrees(v);
    } catch (e) {
      if (!isFsError(e)) throw e;
      c.problem(`logs_root item: ${e.message}`);
      continue;
    }
    const name = `log tree ${lt.rid.toString(16)}.${lt.nr}`;
    await checkTree(c, name, lt.itemRoot);
    await checkList(c, `${name} meta_avail`, lt.metaAvail);
    await checkList(c, `${name} meta_freed`, lt.metaFreed);
    if (lt.bloomRef.blkno !== 0) {
      await c.guard(`${name} bloom`, async () => {
        await c.cache.read(lt.bloomRef, Magic.BLOOM);
        c.referenced++;
        c.meta.push({ start: lt.bloomRef.blkno, len: 1, owner: `${name} bloom block` });
      });
    }
    c.data.push(...await checkExtents(c, `${name} data_avail`, lt.dataAvail));
    c.data.push(...await checkExtents(c, `${name} data_freed`, lt.dataFreed));
  }
}

/**
 * The log_merge btree: a merge request owns the alloc list it gave its mount, a freeing item
 * the blocks of its merged tree that are not freed yet.
 */
async function checkLogMerge(c: Checker, root: BtreeRoot): Promise<void> {
  const requests: Buffer[] = [];
  const freeing: Buffer[] = [];
  await checkTree(c, "log_merge", root, (k, v) => {
    if (keyZone(k) === Zone.LOG_MERGE_REQUEST) requests.push(v);
    if (keyZone(k) === Zone.LOG_MERGE_FREEING) freeing.push(v);
  });
  for (const v of freeing) {
    await c.guard("log_merge freeing", async () => {
      const f = decodeLogMergeFreeing(v);
      const name = `freeing log tree ${f.rid.toString(16)}.${f.nr}`;
      await btreeFreeingBlocks(c.cache, f.root, f.next, (ref) => {
        c.referenced++;
        c.meta.push({ start: ref.blkno, len: 1, owner: `${name} btree block` });
      });
    });
  }
  for (const v of requests) {
    await c.guard("log_merge request", async () => {
      const r = decodeLogMergeRequest(v);
      const name = `log merge request ${r.rid.toString(16)}.${r.seq} meta_avail`;
      await checkList(c, name, r.metaAvail);
    });
  }
}

export async function fsckVolume(meta: BlockDevice, data: BlockDevice | null):
  Promise<FsckReport> {
  const sb = await readSuperFrom(meta, true);
  const cache = new BlockCache(meta, sb.hdr.fsid, new Counters(), 64 * 1024 * 1024, sb.totalMetaBlocks);
  const c = new Checker(cache, sb);
  if (data) await c.guard("data device super", async () => { await checkDataDevice(data, sb); });
  await c.guard("quorum blocks", async () => {
    for (let slot = 0; slot < QUORUM_MAX_SLOTS; slot++) {
      const buf = meta.allocBuffer(QUORUM_BLOCK_SIZE);
      await meta.read(buf, (QUORUM_BLKNO + slot) * QUORUM_BLOCK_SIZE);
      await c.guard(`quorum block ${slot}`, async () => {
        decodeQuorumBlock(Buffer.from(buf), sb.hdr.fsid, slot);
      });
    }
  });
  await checkTree(c, "fs_root", sb.fsRoot, (k, v) => fsItem(c, k, v));
  await c.guard("root inode", async () => {
    if (!(await btreeLookup(cache, sb.fsRoot, inodeKey(ROOT_INO)))) c.problem("root inode missing");
  });
  await checkLogTrees(c, sb.logsRoot);
  await c.guard("file extents", async () => {
    c.data.push(...await forestDataExtents(cache, { fsRoot: sb.fsRoot, logsRoot: sb.logsRoot },
      (msg) => c.problem(msg)));
  });
  await checkLogMerge(c, sb.logMerge);
  for (const [name, root] of [
    ["mounted_clients", sb.mountedClients], ["srch_root", sb.srchRoot]] as const) {
    await checkTree(c, name, root);
  }
  for (const [i, h] of sb.serverMetaAvail.entries()) await checkList(c, `server_meta_avail[${i}]`, h);
  for (const [i, h] of sb.serverMetaFreed.entries()) await checkList(c, `server_meta_freed[${i}]`, h);
  for (const [i, a] of sb.metaAlloc.entries()) {
    const ext = await checkExtents(c, `meta_alloc[${i}]`, a);
    for (const e of ext) c.free += e.len;
    c.meta.push(...ext);
  }
  c.data.push(...await checkExtents(c, "data_alloc", sb.dataAlloc));
  checkCoverage(c, "metadata block", c.meta, META_DEV_START_BLKNO, sb.totalMetaBlocks, true);
  // every owner of data blocks is walked: current file extents of the forest, data_alloc and
  // each log tree's data_avail and data_freed; a gap is a leak, an overlap double use
  checkCoverage(c, "data block", c.data, DATA_DEV_START_BLKNO, sb.totalDataBlocks, true);
  return { problems: c.problems, metaBlocksReferenced: c.referenced, metaBlocksFree: c.free,
    items: c.items, btreeBlocks: c.btreeBlocks };
}
