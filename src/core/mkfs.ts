/*
 * Making a new volume (the core of `scoutfs mkfs`; the CLI checks arguments and devices).
 *
 * mkfs builds the first committed state with the same machinery every later commit uses: a
 * MetaTxn (seq 1) whose alloc list is laid out by hand at the first metadata block, so every
 * block mkfs writes comes from that list and whatever is left in it becomes the server's first
 * server_meta_avail. It writes:
 *   - fs_root: the root inode (ino 1, a 0755 directory, nlink 2, next_readdir_pos 2, all four
 *     times = mkfs time) and its meta_seq index item;
 *   - data_alloc: the whole data device after its reserved start as one free extent;
 *   - meta_alloc[0] and [1]: the remaining metadata blocks, split in two halves;
 *   - zeroed quorum blocks for all 15 slots;
 *   - the super: first to the data device, then (META flag set) to the metadata device, each
 *     after flushing what it references. next_ino 1024, inode_count 1, seq 1, qconf version 1.
 */
import type { BlockDevice } from "../env/env.js";
import { assert } from "../util/assert.js";
import { Counters } from "../util/counters.js";
import { FsError } from "../util/errno.js";
import { encodeListBlock, freeExtent, ListAllocator } from "./alloc.js";
import { BlockCache, MetaTxn } from "./block.js";
import { btreeInsert } from "./btree.js";
import {
  DATA_BLOCK_SIZE, DATA_DEV_START_BLKNO,
  emptyAllocRoot, emptyListHead, emptyQuorumBlock, emptyRoot, encodeInode, encodeQuorumBlock,
  FORMAT_VERSION_MAX, FORMAT_VERSION_MIN, type InodeValue, Magic, META_BLOCK_SIZE,
  META_DEV_START_BLKNO, QUORUM_BLKNO, QUORUM_BLOCK_SIZE, QUORUM_MAX_SLOTS, type SuperBlock,
} from "./format.js";
import { inodeKey, metaSeqKey } from "./key.js";
import { SERVER_AVAIL_TARGET, writeSuperTo } from "./volume.js";

export interface QuorumSlotConfig {
  nr: number;
  addr: string;
  port: number;
}

export interface MkfsParams {
  meta: BlockDevice;
  data: BlockDevice;
  /** 64 KiB blocks of the whole volume on the metadata device, reserved start included. */
  totalMetaBlocks: number;
  /** 4 KiB blocks of the whole volume on the data device, reserved start included. */
  totalDataBlocks: number;
  slots: QuorumSlotConfig[];
  dataAllocZoneBlocks: number | null;
  formatVersion: 1 | 2;
  fsid: bigint;
  uuid: Buffer;
  nowSec: bigint;
  nowNsec: number;
}

export const ROOT_INO = 1n;
export const MKFS_NEXT_INO = 1024n;
/** Blocks mkfs puts in the initial avail list: the server's target plus its own needs. */
const MKFS_AVAIL_BLOCKS = SERVER_AVAIL_TARGET + 64;
/** The smallest volumes mkfs makes (with --allow-small-size). */
export const MIN_META_BLOCKS = 2048;
export const MIN_DATA_BLOCKS = 4096;

export const ROOT_MODE = 0o40755;

function rootInode(p: MkfsParams): InodeValue {
  const t = { sec: p.nowSec, nsec: p.nowNsec };
  return {
    size: 0n, metaSeq: 1n, dataSeq: 0n, dataVersion: 0n, onlineBlocks: 0n, offlineBlocks: 0n,
    nextReaddirPos: 2n, nextXattrId: 0n, version: 1n, nlink: 2, uid: 0, gid: 0,
    mode: ROOT_MODE, rdev: 0, flags: 0, atime: t, ctime: t, mtime: t, crtime: t, proj: 0n,
  };
}

function checkParams(p: MkfsParams): void {
  if (p.totalMetaBlocks < MIN_META_BLOCKS) {
    throw new FsError("EINVAL", `metadata device needs at least ${MIN_META_BLOCKS} 64KB blocks`);
  }
  if (p.totalDataBlocks < MIN_DATA_BLOCKS) {
    throw new FsError("EINVAL", `data device needs at least ${MIN_DATA_BLOCKS} 4KB blocks`);
  }
  if (p.totalMetaBlocks * META_BLOCK_SIZE > p.meta.sizeBytes ||
    p.totalDataBlocks * DATA_BLOCK_SIZE > p.data.sizeBytes) {
    throw new FsError("EINVAL", "volume larger than its devices");
  }
  assert(p.formatVersion >= FORMAT_VERSION_MIN && p.formatVersion <= FORMAT_VERSION_MAX,
    "mkfs format version");
  assert(p.fsid !== 0n && p.uuid.length === 16, "mkfs identity");
  const seen = new Set<number>();
  for (const s of p.slots) {
    assert(s.nr >= 0 && s.nr < QUORUM_MAX_SLOTS && !seen.has(s.nr), `quorum slot ${s.nr}`);
    seen.add(s.nr);
  }
  assert(p.slots.length > 0, "mkfs needs a quorum slot");
}

function newSuper(p: MkfsParams): SuperBlock {
  const slots: SuperBlock["qconf"]["slots"] = Array.from({ length: QUORUM_MAX_SLOTS }, () => null);
  for (const s of p.slots) slots[s.nr] = { addr: s.addr, port: s.port };
  return {
    hdr: { fsid: p.fsid, seq: 1 }, fmtVers: p.formatVersion, flags: 0n, uuid: Buffer.from(p.uuid),
    seq: 1, nextIno: MKFS_NEXT_INO, inodeCount: 1n, totalMetaBlocks: p.totalMetaBlocks,
    totalDataBlocks: p.totalDataBlocks, qconf: { version: 1, slots },
    metaAlloc: [emptyAllocRoot(), emptyAllocRoot()], dataAlloc: emptyAllocRoot(),
    serverMetaAvail: [emptyListHead(), emptyListHead()],
    serverMetaFreed: [emptyListHead(), emptyListHead()],
    fsRoot: emptyRoot(), logsRoot: emptyRoot(), logMerge: emptyRoot(),
    mountedClients: emptyRoot(), srchRoot: emptyRoot(),
    volopt: { dataAllocZoneBlocks: p.dataAllocZoneBlocks },
  };
}

export async function makeVolume(p: MkfsParams): Promise<void> {
  checkParams(p);
  const sb = newSuper(p);
  const cache = new BlockCache(p.meta, p.fsid, new Counters(), 64 * 1024 * 1024, p.totalMetaBlocks);
  // the alloc list block at the first metadata blkno, holding the blknos right after it
  const listBlkno = META_DEV_START_BLKNO;
  const first = listBlkno + 1;
  const avail = { ref: { blkno: listBlkno, seq: 1 }, totalNr: MKFS_AVAIL_BLOCKS,
    firstNr: MKFS_AVAIL_BLOCKS, flags: 0 };
  const alloc = new ListAllocator(avail, emptyListHead());
  const w = new MetaTxn(cache, 1, alloc);
  // popped from the end: stored descending so the lowest blknos are used first
  const blknos = Array.from({ length: MKFS_AVAIL_BLOCKS }, (_, i) => first + MKFS_AVAIL_BLOCKS - 1 - i);
  w.adoptDirty(listBlkno, Magic.ALLOC_LIST,
    encodeListBlock(p.fsid, 1, listBlkno, { next: { blkno: 0, seq: 0 }, blknos }));

  await btreeInsert(w, sb.fsRoot, inodeKey(ROOT_INO), encodeInode(rootInode(p), p.formatVersion),
    { seq: 1 });
  await btreeInsert(w, sb.fsRoot, metaSeqKey(1n, ROOT_INO), Buffer.alloc(0), { seq: 1 });
  await freeExtent(w, sb.dataAlloc,
    { start: DATA_DEV_START_BLKNO, len: p.totalDataBlocks - DATA_DEV_START_BLKNO });
  const metaStart = first + MKFS_AVAIL_BLOCKS;
  const metaLen = p.totalMetaBlocks - metaStart;
  const half = Math.floor(metaLen / 2);
  await freeExtent(w, sb.metaAlloc[0], { start: metaStart, len: half });
  await freeExtent(w, sb.metaAlloc[1], { start: metaStart + half, len: metaLen - half });
  assert(alloc.freed.totalNr === 0 && alloc.freed.ref.blkno === 0, "mkfs freed nothing");
  sb.serverMetaAvail[0] = alloc.avail;

  await w.writeDirty();
  await writeQuorumBlocks(p);
  await p.meta.flush();
  await writeSuperTo(p.data, sb, false);
  await p.data.flush();
  await writeSuperTo(p.meta, sb, true);
  await p.meta.flush();
  w.markClean();
}

async function writeQuorumBlocks(p: MkfsParams): Promise<void> {
  for (let slot = 0; slot < QUORUM_MAX_SLOTS; slot++) {
    const buf = p.meta.allocBuffer(QUORUM_BLOCK_SIZE);
    encodeQuorumBlock(emptyQuorumBlock(p.fsid, slot)).copy(buf);
    await p.meta.write(buf, (QUORUM_BLKNO + slot) * QUORUM_BLOCK_SIZE);
  }
}
