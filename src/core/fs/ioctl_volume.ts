/*
 * The volume-wide ioctl twins (upstream ioctl.c walk_inodes, statfs_more, alloc_detail):
 * queries that read committed structures rather than one inode under its lock.
 *
 *  - walkInodes reads the meta_seq / data_seq index items of the committed forest, bounded by
 *    the server's last stable seq (GET_LAST_SEQ): every index entry with a seq at or below it
 *    is committed, so the walk never shows a position that could still fill in behind it. The
 *    view is relaxed on purpose (reference 1.23): an inode changed in an open transaction
 *    appears at its new seq once that transaction is committed and the stable seq passes it.
 *  - statfsMore and allocDetail read the super block from the metadata device, as upstream
 *    does (scoutfs_read_super), and walk its log_trees and log_merge items through the
 *    mount's block cache; a block reused under us (ESTALE) makes them read the super again.
 *
 * Who calls it: controlHandlerFor() in ioctl.ts (the control socket), tests in the simulator.
 */
import { FsError, isFsError } from "../../util/errno.js";
import { btreeIterate } from "../btree.js";
import type { MountClient } from "../client.js";
import { type ForestRoots, forestRange, listLogTrees } from "../forest.js";
import { withStaleRetry } from "../block.js";
import type { SuperBlock } from "../format.js";
import { decodeLogMergeRequest } from "../format_log.js";
import {
  compareKeys, dataSeqKey, keyInc, keySecond, keyThird, makeKey, metaSeqKey, U64_MAX, Zone,
} from "../key.js";
import { NetCmd } from "../msg.js";
import { readSuperFrom } from "../volume.js";

/** Entries one walkInodes call returns at most (the CLI asks for 128). */
export const WALK_INODES_MAX = 1024;
/** Index items read from the forest per step of a walk. */
const WALK_STEP_ITEMS = 128;
/** Allocators allocDetail reports at most (upstream: EOVERFLOW when the buffer is short). */
export const ALLOC_DETAIL_MAX = 16_384;
/** Times allocDetail re-reads the super after a block it followed was reused. */
const ALLOC_DETAIL_RETRIES = 8;
const U32_MAX = 0xffff_ffff;

/** SCOUTFS_IOC_WALK_INODES_META_SEQ / _DATA_SEQ. */
export const WalkIndex = { META_SEQ: 0, DATA_SEQ: 1 } as const;
export type WalkIndex = (typeof WalkIndex)[keyof typeof WalkIndex];

/** A walk position and a returned entry (struct scoutfs_ioctl_walk_inodes_entry). */
export interface WalkPos {
  major: bigint;
  /** u32; seq indexes have no minor: ignored in positions, 0 in entries. */
  minor: number;
  ino: bigint;
}

export interface WalkInodesArgs {
  index: WalkIndex;
  first: WalkPos;
  last: WalkPos;
  /** Entries wanted, 1..WALK_INODES_MAX. */
  max: number;
}

/** struct scoutfs_ioctl_statfs_more. */
export interface StatfsMore {
  fsid: bigint;
  rid: bigint;
  /** Every seq up to and including this one is committed (the last stable seq). */
  committedSeq: bigint;
  totalMetaBlocks: bigint;
  totalDataBlocks: bigint;
  reservedMetaBlocks: bigint;
}

/** Owners of allocators (upstream SCOUTFS_ALLOC_OWNER_*). */
export const AllocOwner = { SERVER: 1, MOUNT: 2, SRCH: 3, LOG_MERGE: 4 } as const;

/** struct scoutfs_ioctl_alloc_detail_entry. */
export interface AllocDetailEntry {
  id: bigint;
  blocks: bigint;
  /** The owner (AllocOwner); upstream leaves this 0, we say whose allocator it is. */
  type: number;
  meta: boolean;
  avail: boolean;
}

/** GET_LAST_SEQ: the greatest seq below which no open transaction can still commit. */
export async function getLastSeq(client: MountClient): Promise<bigint> {
  const r = await client.net.request(NetCmd.GET_LAST_SEQ, Buffer.alloc(0));
  if (r.length !== 8) throw new FsError("EPROTO", `GET_LAST_SEQ reply of ${r.length} bytes`);
  return r.readBigUInt64LE(0);
}

function sameRoots(a: ForestRoots, b: ForestRoots): boolean {
  return a.fsRoot.ref.blkno === b.fsRoot.ref.blkno && a.fsRoot.ref.seq === b.fsRoot.ref.seq &&
    a.logsRoot.ref.blkno === b.logsRoot.ref.blkno && a.logsRoot.ref.seq === b.logsRoot.ref.seq;
}

function indexKey(index: WalkIndex, major: bigint, ino: bigint): Buffer {
  return index === WalkIndex.META_SEQ ? metaSeqKey(major, ino) : dataSeqKey(major, ino);
}

/**
 * Up to a.max index entries in [first, last] (ordered by major, then ino), last clamped to
 * the last stable seq as upstream's scoutfs_ioc_walk_inodes does.
 */
export async function walkInodes(client: MountClient, a: WalkInodesArgs):
  Promise<WalkPos[]> {
  if (a.index !== WalkIndex.META_SEQ && a.index !== WalkIndex.DATA_SEQ) {
    throw new FsError("EINVAL", `walk index ${String(a.index)}`);
  }
  if (!Number.isInteger(a.max) || a.max < 1 || a.max > WALK_INODES_MAX) {
    throw new FsError("EINVAL", `walk of ${a.max} entries`);
  }
  let last = a.last;
  const stable = await getLastSeq(client);
  if (stable < last.major) last = { major: stable, minor: U32_MAX, ino: U64_MAX };
  let start = indexKey(a.index, a.first.major, a.first.ino);
  const end = indexKey(a.index, last.major, last.ino);
  const out: WalkPos[] = [];
  while (out.length < a.max && compareKeys(start, end) <= 0) {
    const from = start;
    const limit = Math.min(a.max - out.length, WALK_STEP_ITEMS);
    const r = await withStaleRetry(client.counters, () => client.getRoots(), sameRoots,
      (roots) => forestRange(client.cache, roots, from, end, limit, { counters: client.counters }));
    for (const it of r.items) {
      out.push({ major: keySecond(it.key), minor: 0, ino: keyThird(it.key) });
    }
    // each step reads through at least `from`, so the walk advances
    if (compareKeys(r.end, end) >= 0) break;
    start = keyInc(r.end);
  }
  return out;
}

/** STATFS_MORE: the super's identity and totals, and the last stable seq. */
export async function statfsMore(client: MountClient): Promise<StatfsMore> {
  const sb = await readSuperFrom(client.meta, true);
  if (sb.hdr.fsid !== client.opts.fsid) throw new FsError("EIO", "super block of another volume");
  return {
    fsid: sb.hdr.fsid, rid: client.opts.rid, committedSeq: await getLastSeq(client),
    totalMetaBlocks: BigInt(sb.totalMetaBlocks), totalDataBlocks: BigInt(sb.totalDataBlocks),
    // our server keeps no reserve that clients cannot allocate from (upstream's reserve
    // policy is not reproduced), so none is subtracted from df's free metadata blocks
    reservedMetaBlocks: 0n,
  };
}

/**
 * ALLOC_DETAIL: every allocator the volume has, in upstream's order (scoutfs_alloc_foreach):
 * the server's (meta_alloc[0..1], data_alloc, server_meta_avail[0..1], server_meta_freed[0..1]),
 * each log_trees item's (meta avail, meta freed, data avail, data freed), then each log merge
 * request's meta_avail. EOVERFLOW beyond ALLOC_DETAIL_MAX entries.
 */
export async function allocDetail(client: MountClient): Promise<AllocDetailEntry[]> {
  let prev: SuperBlock | null = null;
  for (let attempt = 0; ; attempt++) {
    const sb = await readSuperFrom(client.meta, true);
    try {
      return await allocDetailOf(client, sb);
    } catch (e) {
      if (!isFsError(e, "ESTALE")) throw e;
      // the same super twice means the stale block is real corruption
      if (attempt >= ALLOC_DETAIL_RETRIES || (prev !== null && prev.seq === sb.seq)) {
        client.counters.inc("corrupt_block");
        throw new FsError("EIO", `metadata corruption: ${e.message}`);
      }
      prev = sb;
    }
  }
}

async function allocDetailOf(client: MountClient, sb: SuperBlock): Promise<AllocDetailEntry[]> {
  const out: AllocDetailEntry[] = [];
  const add = (type: number, id: bigint, meta: boolean, avail: boolean, blocks: number): void => {
    if (out.length >= ALLOC_DETAIL_MAX) throw new FsError("EOVERFLOW", "too many allocators");
    out.push({ id, blocks: BigInt(blocks), type, meta, avail });
  };
  const S = AllocOwner.SERVER;
  add(S, 0n, true, true, sb.metaAlloc[0].totalLen);
  add(S, 0n, true, true, sb.metaAlloc[1].totalLen);
  add(S, 0n, false, true, sb.dataAlloc.totalLen);
  for (const h of sb.serverMetaAvail) add(S, 1n, true, true, h.totalNr);
  for (const h of sb.serverMetaFreed) add(S, 1n, true, false, h.totalNr);
  for (const lt of await listLogTrees(client.cache, sb.logsRoot)) {
    add(AllocOwner.MOUNT, lt.rid, true, true, lt.metaAvail.totalNr);
    add(AllocOwner.MOUNT, lt.rid, true, false, lt.metaFreed.totalNr);
    add(AllocOwner.MOUNT, lt.rid, false, true, lt.dataAvail.totalLen);
    add(AllocOwner.MOUNT, lt.rid, false, false, lt.dataFreed.totalLen);
  }
  await btreeIterate(client.cache, sb.logMerge, makeKey(Zone.LOG_MERGE_REQUEST, 0n, 0),
    makeKey(Zone.LOG_MERGE_REQUEST, U64_MAX, 255, U64_MAX, U64_MAX, 255), (it) => {
      const r = decodeLogMergeRequest(it.val);
      add(AllocOwner.LOG_MERGE, r.rid, true, true, r.metaAvail.totalNr);
    });
  return out;
}
