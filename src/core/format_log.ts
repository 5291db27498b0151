/*
 * On-disk structs of the cluster machinery kept in the server's btrees: the per-mount
 * `log_trees` item (logs_root, key LOG_TREES rid.nr) and the `mounted_client` item
 * (mounted_clients, key MOUNTED_CLIENT rid). Same conventions as format.ts: a size constant,
 * an encoder into a zeroed buffer, a validating decoder, golden fixtures in
 * test/fixtures/format/.
 *
 * A log_trees item is everything one mount's transaction owns: its metadata alloc lists
 * (avail, freed), its item btree, its bloom filter block, its data extent allocators (avail,
 * freed), and the transaction seqs the server uses to make commits idempotent across
 * reconnects and failovers (get_trans_seq = opened, commit_trans_seq = committed).
 */
import {
  ALLOC_LIST_HEAD_SIZE, ALLOC_ROOT_SIZE, type AllocListHead, type AllocRoot, BLOCK_REF_SIZE,
  type BlockRef, BTREE_ROOT_SIZE, type BtreeRoot, corrupt, emptyAllocRoot, emptyListHead,
  emptyRoot, ipv4ToU32, readAllocRoot, readBlockRef, readBtreeRoot, readListHead, readU64,
  u32ToIpv4, writeAllocRoot, writeBlockRef, writeBtreeRoot, writeListHead, writeU64,
} from "./format.js";

export const LOG_TREES_FLAG_FINALIZED = 1;

export interface LogTrees {
  metaAvail: AllocListHead;
  metaFreed: AllocListHead;
  itemRoot: BtreeRoot;
  bloomRef: BlockRef;
  dataAvail: AllocRoot;
  dataFreed: AllocRoot;
  maxItemSeq: number;
  rid: bigint;
  nr: number;
  flags: number;
  getTransSeq: number;
  commitTransSeq: number;
  finalizeSeq: number;
  inodeCountDelta: bigint;
}

const LT = {
  metaAvail: 0,
  metaFreed: ALLOC_LIST_HEAD_SIZE,
  itemRoot: 2 * ALLOC_LIST_HEAD_SIZE,
  bloom: 2 * ALLOC_LIST_HEAD_SIZE + BTREE_ROOT_SIZE,
  dataAvail: 2 * ALLOC_LIST_HEAD_SIZE + BTREE_ROOT_SIZE + BLOCK_REF_SIZE,
  dataFreed: 2 * ALLOC_LIST_HEAD_SIZE + BTREE_ROOT_SIZE + BLOCK_REF_SIZE + ALLOC_ROOT_SIZE,
  u64s: 2 * ALLOC_LIST_HEAD_SIZE + BTREE_ROOT_SIZE + BLOCK_REF_SIZE + 2 * ALLOC_ROOT_SIZE,
} as const;
export const LOG_TREES_SIZE = LT.u64s + 8 * 8;

export function emptyLogTrees(rid: bigint, nr: number): LogTrees {
  return {
    metaAvail: emptyListHead(), metaFreed: emptyListHead(), itemRoot: emptyRoot(),
    bloomRef: { blkno: 0, seq: 0 }, dataAvail: emptyAllocRoot(), dataFreed: emptyAllocRoot(),
    maxItemSeq: 0, rid, nr, flags: 0, getTransSeq: 0, commitTransSeq: 0, finalizeSeq: 0,
    inodeCountDelta: 0n,
  };
}

export function encodeLogTrees(lt: LogTrees): Buffer {
  const b = Buffer.alloc(LOG_TREES_SIZE);
  writeListHead(b, LT.metaAvail, lt.metaAvail);
  writeListHead(b, LT.metaFreed, lt.metaFreed);
  writeBtreeRoot(b, LT.itemRoot, lt.itemRoot);
  writeBlockRef(b, LT.bloom, lt.bloomRef);
  writeAllocRoot(b, LT.dataAvail, lt.dataAvail);
  writeAllocRoot(b, LT.dataFreed, lt.dataFreed);
  const o = LT.u64s;
  writeU64(b, o, lt.maxItemSeq);
  b.writeBigUInt64LE(lt.rid, o + 8);
  writeU64(b, o + 16, lt.nr);
  writeU64(b, o + 24, lt.flags);
  writeU64(b, o + 32, lt.getTransSeq);
  writeU64(b, o + 40, lt.commitTransSeq);
  writeU64(b, o + 48, lt.finalizeSeq);
  b.writeBigInt64LE(lt.inodeCountDelta, o + 56);
  return b;
}

export function decodeLogTrees(b: Buffer): LogTrees {
  if (b.length !== LOG_TREES_SIZE) throw corrupt(`log_trees size ${b.length}`);
  const o = LT.u64s;
  const lt: LogTrees = {
    metaAvail: readListHead(b, LT.metaAvail),
    metaFreed: readListHead(b, LT.metaFreed),
    itemRoot: readBtreeRoot(b, LT.itemRoot),
    bloomRef: readBlockRef(b, LT.bloom),
    dataAvail: readAllocRoot(b, LT.dataAvail),
    dataFreed: readAllocRoot(b, LT.dataFreed),
    maxItemSeq: readU64(b, o),
    rid: b.readBigUInt64LE(o + 8),
    nr: readU64(b, o + 16),
    flags: readU64(b, o + 24),
    getTransSeq: readU64(b, o + 32),
    commitTransSeq: readU64(b, o + 40),
    finalizeSeq: readU64(b, o + 48),
    inodeCountDelta: b.readBigInt64LE(o + 56),
  };
  if ((lt.flags & ~LOG_TREES_FLAG_FINALIZED) !== 0) throw corrupt(`log_trees flags ${lt.flags}`);
  if (lt.commitTransSeq > lt.getTransSeq) throw corrupt("log_trees committed an unopened seq");
  if (lt.rid === 0n || lt.nr === 0) throw corrupt("log_trees identity");
  return lt;
}

export const MOUNTED_CLIENT_FLAG_QUORUM = 1;
export interface MountedClient {
  addr: string;
  port: number;
  flags: number;
}
export const MOUNTED_CLIENT_SIZE = 8;

export function encodeMountedClient(m: MountedClient): Buffer {
  const b = Buffer.alloc(MOUNTED_CLIENT_SIZE);
  b.writeUInt32BE(ipv4ToU32(m.addr), 0);
  b.writeUInt16LE(m.port, 4);
  b[6] = m.flags;
  return b;
}

export function decodeMountedClient(b: Buffer): MountedClient {
  if (b.length !== MOUNTED_CLIENT_SIZE) throw corrupt("mounted_client size");
  if ((b[6]! & ~MOUNTED_CLIENT_FLAG_QUORUM) !== 0 || b[7] !== 0) throw corrupt("mounted_client flags");
  return { addr: u32ToIpv4(b.readUInt32BE(0)), port: b.readUInt16LE(4), flags: b[6]! };
}
