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
import { assert } from "../util/assert.js";
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

// ---------------------------------------------------------------------------------------
// Log merging (server_merge.ts, merge_client.ts): the items of the server's log_merge btree
// and the two merge messages. Keys (zone LOG_MERGE_*) are built in server_merge.ts.
//
//   status    (LOG_MERGE_STATUS)   the merge round in progress: its seq. Inputs are the log
//                                  trees finalized before it (finalize_seq < round_seq).
//   range     (LOG_MERGE_RANGE)    a key range still to merge, keyed by an id.
//   request   (LOG_MERGE_REQUEST)  work handed to a mount, keyed by (rid, seq); it owns the
//                                  meta_avail list it gave the mount until the mount's
//                                  completion is spliced or the request is cancelled. Also
//                                  the GET_LOG_MERGE response payload.
//   splice    (LOG_MERGE_COMPLETE) a spliced subtree whose root must be rebalanced by the
//                                  server before the rest of its range is handed out again.
//   completion                     the COMMIT_LOG_MERGE payload: the mount's new subtree
//                                  root, what is left of its allocator, the resume key.

const KEY_FIELD = 27;
const readKeyField = (b: Buffer, off: number): Buffer =>
  Buffer.from(b.subarray(off, off + KEY_FIELD));
function writeKeyField(b: Buffer, off: number, key: Buffer): void {
  assert(key.length === KEY_FIELD, `log_merge key of ${key.length} bytes`);
  key.copy(b, off);
}
const isZero = (b: Buffer, from: number, to: number): boolean =>
  b.subarray(from, to).every((x) => x === 0);

export interface LogMergeStatus {
  /** Greater than the finalize_seq of every input tree; identifies the round. */
  roundSeq: number;
}
export const LOG_MERGE_STATUS_SIZE = 16;

export function encodeLogMergeStatus(s: LogMergeStatus): Buffer {
  const b = Buffer.alloc(LOG_MERGE_STATUS_SIZE);
  writeU64(b, 0, s.roundSeq);
  return b;
}

export function decodeLogMergeStatus(b: Buffer): LogMergeStatus {
  if (b.length !== LOG_MERGE_STATUS_SIZE) throw corrupt(`log_merge status size ${b.length}`);
  const s = { roundSeq: readU64(b, 0) };
  if (s.roundSeq === 0 || !isZero(b, 8, 16)) throw corrupt("log_merge status fields");
  return s;
}

export interface LogMergeRange {
  start: Buffer;
  end: Buffer;
}
export const LOG_MERGE_RANGE_SIZE = 56;

export function encodeLogMergeRange(r: LogMergeRange): Buffer {
  const b = Buffer.alloc(LOG_MERGE_RANGE_SIZE);
  writeKeyField(b, 0, r.start);
  writeKeyField(b, KEY_FIELD, r.end);
  return b;
}

export function decodeLogMergeRange(b: Buffer): LogMergeRange {
  if (b.length !== LOG_MERGE_RANGE_SIZE) throw corrupt(`log_merge range size ${b.length}`);
  const r = { start: readKeyField(b, 0), end: readKeyField(b, KEY_FIELD) };
  if (Buffer.compare(r.start, r.end) > 0 || !isZero(b, 54, 56)) throw corrupt("log_merge range");
  return r;
}

/** The subtree is the whole fs_root (height <= 2): the splice replaces the root. */
export const LOG_MERGE_REQUEST_WHOLE = 1;

export interface LogMergeRequest {
  rid: bigint;
  /** Unique server seq: the request's id and the seq of every block the mount writes for it. */
  seq: number;
  roundSeq: number;
  flags: number;
  /** Blocks the mount may allocate; the server's copy is the original list. */
  metaAvail: AllocListHead;
  /** The fs_root subtree to merge into, as it is in the committed fs_root. */
  root: BtreeRoot;
  /** A committed logs_root holding the round's finalized input trees. */
  logsRoot: BtreeRoot;
  start: Buffer;
  end: Buffer;
  /** How many input trees the round has: the mount checks it found them all. */
  nrInputs: number;
}
export const LOG_MERGE_REQUEST_SIZE = 176;

export function encodeLogMergeRequest(r: LogMergeRequest): Buffer {
  const b = Buffer.alloc(LOG_MERGE_REQUEST_SIZE);
  b.writeBigUInt64LE(r.rid, 0);
  writeU64(b, 8, r.seq);
  writeU64(b, 16, r.roundSeq);
  writeU64(b, 24, r.flags);
  writeListHead(b, 32, r.metaAvail);
  writeBtreeRoot(b, 64, r.root);
  writeBtreeRoot(b, 88, r.logsRoot);
  writeKeyField(b, 112, r.start);
  writeKeyField(b, 139, r.end);
  writeU64(b, 168, r.nrInputs);
  return b;
}

export function decodeLogMergeRequest(b: Buffer): LogMergeRequest {
  if (b.length !== LOG_MERGE_REQUEST_SIZE) throw corrupt(`log_merge request size ${b.length}`);
  const r: LogMergeRequest = {
    rid: b.readBigUInt64LE(0), seq: readU64(b, 8), roundSeq: readU64(b, 16), flags: readU64(b, 24),
    metaAvail: readListHead(b, 32), root: readBtreeRoot(b, 64), logsRoot: readBtreeRoot(b, 88),
    start: readKeyField(b, 112), end: readKeyField(b, 139), nrInputs: readU64(b, 168),
  };
  if ((r.flags & ~LOG_MERGE_REQUEST_WHOLE) !== 0) {
    throw corrupt(`log_merge request flags ${r.flags}`);
  }
  if (r.rid === 0n || r.seq === 0 || r.roundSeq === 0) throw corrupt("log_merge request identity");
  if ((r.flags & LOG_MERGE_REQUEST_WHOLE) === 0 && r.root.height !== 2) {
    throw corrupt(`log_merge request subtree height ${r.root.height}`);
  }
  if (Buffer.compare(r.start, r.end) > 0 || !isZero(b, 166, 168)) {
    throw corrupt("log_merge request range");
  }
  return r;
}

/** The mount failed: nothing of its work is used, the server reclaims the request. */
export const LOG_MERGE_COMP_ERROR = 1;
/** The mount stopped at `remain`: [remain, end] is still to merge. */
export const LOG_MERGE_COMP_REMAIN = 2;

export interface LogMergeCompletion {
  rid: bigint;
  seq: number;
  flags: number;
  /** Keys merged (counters only). */
  keys: number;
  /** The new subtree root. */
  root: BtreeRoot;
  /** What is left of the request's meta_avail, and the blocks the merge freed. */
  metaAvail: AllocListHead;
  metaFreed: AllocListHead;
  remain: Buffer;
}
export const LOG_MERGE_COMPLETION_SIZE = 152;

export function encodeLogMergeCompletion(c: LogMergeCompletion): Buffer {
  const b = Buffer.alloc(LOG_MERGE_COMPLETION_SIZE);
  b.writeBigUInt64LE(c.rid, 0);
  writeU64(b, 8, c.seq);
  writeU64(b, 16, c.flags);
  writeU64(b, 24, c.keys);
  writeBtreeRoot(b, 32, c.root);
  writeListHead(b, 56, c.metaAvail);
  writeListHead(b, 88, c.metaFreed);
  writeKeyField(b, 120, c.remain);
  return b;
}

export function decodeLogMergeCompletion(b: Buffer): LogMergeCompletion {
  if (b.length !== LOG_MERGE_COMPLETION_SIZE) {
    throw corrupt(`log_merge completion size ${b.length}`);
  }
  const c: LogMergeCompletion = {
    rid: b.readBigUInt64LE(0), seq: readU64(b, 8), flags: readU64(b, 16), keys: readU64(b, 24),
    root: readBtreeRoot(b, 32), metaAvail: readListHead(b, 56), metaFreed: readListHead(b, 88),
    remain: readKeyField(b, 120),
  };
  const known = LOG_MERGE_COMP_ERROR | LOG_MERGE_COMP_REMAIN;
  if ((c.flags & ~known) !== 0 || c.flags === known) {
    throw corrupt(`log_merge completion flags ${c.flags}`);
  }
  if (c.rid === 0n || c.seq === 0 || !isZero(b, 147, 152)) {
    throw corrupt("log_merge completion identity");
  }
  if ((c.flags & LOG_MERGE_COMP_REMAIN) === 0 && !isZero(b, 120, 147)) {
    throw corrupt("log_merge completion remain key without REMAIN");
  }
  if ((c.flags & LOG_MERGE_COMP_ERROR) !== 0 && !isZero(b, 24, 120)) {
    throw corrupt("log_merge error completion carries work");
  }
  return c;
}

/** The splice left a remaining range [start, end]. */
export const LOG_MERGE_SPLICE_REMAIN = 1;

export interface LogMergeSplice {
  /** A key inside the spliced subtree: the server rebalances the fs_root path to it. */
  at: Buffer;
  flags: number;
  start: Buffer;
  end: Buffer;
}
export const LOG_MERGE_SPLICE_SIZE = 88;

export function encodeLogMergeSplice(s: LogMergeSplice): Buffer {
  const b = Buffer.alloc(LOG_MERGE_SPLICE_SIZE);
  writeKeyField(b, 0, s.at);
  writeKeyField(b, 27, s.start);
  writeKeyField(b, 54, s.end);
  b[81] = s.flags;
  return b;
}

export function decodeLogMergeSplice(b: Buffer): LogMergeSplice {
  if (b.length !== LOG_MERGE_SPLICE_SIZE) throw corrupt(`log_merge splice size ${b.length}`);
  const s = { at: readKeyField(b, 0), start: readKeyField(b, 27), end: readKeyField(b, 54),
    flags: b[81]! };
  if ((s.flags & ~LOG_MERGE_SPLICE_REMAIN) !== 0 || !isZero(b, 82, 88)) {
    throw corrupt("log_merge splice flags");
  }
  const remain = (s.flags & LOG_MERGE_SPLICE_REMAIN) !== 0;
  if (remain ? Buffer.compare(s.start, s.end) > 0 : !isZero(b, 27, 81)) {
    throw corrupt("log_merge splice range");
  }
  return s;
}

// freeing  (LOG_MERGE_FREEING)  a merged log tree whose blocks the server is freeing, a
//                                bounded number per commit (server_merge.ts, btree_free.ts):
//                                its item root, the log tree it was (rid, nr, for reports)
//                                and the progress key: blocks whose range ends before it are
//                                freed. Keyed by a seq.

export interface LogMergeFreeing {
  root: BtreeRoot;
  rid: bigint;
  nr: number;
  next: Buffer;
}
export const LOG_MERGE_FREEING_SIZE = 72;

export function encodeLogMergeFreeing(f: LogMergeFreeing): Buffer {
  const b = Buffer.alloc(LOG_MERGE_FREEING_SIZE);
  writeBtreeRoot(b, 0, f.root);
  b.writeBigUInt64LE(f.rid, 24);
  writeU64(b, 32, f.nr);
  writeKeyField(b, 40, f.next);
  return b;
}

export function decodeLogMergeFreeing(b: Buffer): LogMergeFreeing {
  if (b.length !== LOG_MERGE_FREEING_SIZE) throw corrupt(`log_merge freeing size ${b.length}`);
  const f = { root: readBtreeRoot(b, 0), rid: b.readBigUInt64LE(24), nr: readU64(b, 32),
    next: readKeyField(b, 40) };
  // a tree with no block left is deleted, never stored
  if (f.root.height === 0 || f.root.ref.blkno === 0 || f.rid === 0n || !isZero(b, 67, 72)) {
    throw corrupt("log_merge freeing fields");
  }
  return f;
}
