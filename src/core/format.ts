/*
 * The on-disk format: constants, the block header, block refs, btree and allocator roots, the
 * super block, quorum blocks and the scoutfs inode item.
 *
 * The format is ours (see docs/format.md) but keeps upstream's concepts: two devices, the super
 * at byte 64 KiB of both (META flag only on the metadata copy), 15 quorum blocks after it,
 * 64 KiB metadata blocks from 64 KiB block 2, 4 KiB data blocks from 4 KiB block 64, and every
 * metadata block opening with {crc, magic, fsid, seq, blkno} so that reading a ref {blkno, seq}
 * checks both content (crc) and identity (blkno, seq).
 *
 * Each struct has a size constant, an encoder that writes into a zeroed buffer and a decoder
 * that validates what it reads (an FsError EIO on nonsense, never a silently wrong value).
 * Integers are little-endian except keys (src/core/key.ts), which are big-endian so that
 * Buffer.compare sorts them. Block numbers and seqs are JS numbers asserted < 2^53; identities
 * (fsid, rid) and inode numbers are bigints.
 */
import { assert } from "../util/assert.js";
import { readU53, writeU53 } from "../util/u53.js";
import { crc32c } from "../util/crc32c.js";
import { FsError } from "../util/errno.js";

export const META_BLOCK_SHIFT = 16;
export const META_BLOCK_SIZE = 1 << META_BLOCK_SHIFT;
export const DATA_BLOCK_SHIFT = 12;
export const DATA_BLOCK_SIZE = 1 << DATA_BLOCK_SHIFT;
/** 4 KiB data blocks per 64 KiB metadata block. */
export const META_TO_DATA_BLOCKS = META_BLOCK_SIZE / DATA_BLOCK_SIZE;

/** The super block: 4 KiB at byte 64 KiB of both devices (4 KiB block 16). */
export const SUPER_BLKNO = 16;
export const SUPER_OFFSET = SUPER_BLKNO * DATA_BLOCK_SIZE;
export const SUPER_SIZE = DATA_BLOCK_SIZE;
/** Quorum blocks: 4 KiB blocks 17..31 of the metadata device, one per slot. */
export const QUORUM_BLKNO = 17;
export const QUORUM_MAX_SLOTS = 15;
export const QUORUM_BLOCK_SIZE = DATA_BLOCK_SIZE;
/** First 64 KiB block available to metadata (byte 128 KiB). */
export const META_DEV_START_BLKNO = 2;
/** First 4 KiB block available to file data (byte 256 KiB). */
export const DATA_DEV_START_BLKNO = 64;

export const FORMAT_VERSION_MIN = 1;
export const FORMAT_VERSION_MAX = 2;

/** Value of super.id: "scoutfs\0" read as a little-endian u64, identifies our super. */
export const SUPER_ID = 0x0073667475_6f6373n;
export const SUPER_FLAG_IS_META_BDEV = 1n;

/** Distinct magic per block kind, so a block of one kind can never be read as another. */
export const Magic = {
  SUPER: 0x103c428b,
  BTREE: 0xe597f96d,
  BLOOM: 0x31995604,
  SRCH_BLOCK: 0x897e4a7d,
  SRCH_PARENT: 0xb23a2a8b,
  ALLOC_LIST: 0x8a93ac83,
  QUORUM: 0xbc310868,
} as const;
export type MagicValue = (typeof Magic)[keyof typeof Magic];

export function magicName(magic: number): string {
  for (const [k, v] of Object.entries(Magic)) if (v === magic) return k.toLowerCase();
  return `0x${magic.toString(16)}`;
}

// ---------------------------------------------------------------------------------------
// Little-endian u64 helpers for numbers that must stay exact (< 2^53).

const TWO32 = 0x1_0000_0000;

export function writeU64(buf: Buffer, off: number, n: number): void {
  writeU53(buf, off, n);
}

/** Reads a u64 that must fit in 53 bits; larger on-disk values are corruption (EIO). */
export function readU64(buf: Buffer, off: number): number {
  return readU53(buf, off, () => corrupt(`u64 at ${off} exceeds 2^53`));
}

export function corrupt(what: string): FsError {
  return new FsError("EIO", `corrupt metadata: ${what}`);
}

// ---------------------------------------------------------------------------------------
// Block header: every metadata block (and the 4 KiB super and quorum blocks) starts with it.

export const BLOCK_HEADER_SIZE = 32;
const HDR_CRC = 0;
const HDR_MAGIC = 4;
const HDR_FSID = 8;
const HDR_SEQ = 16;
const HDR_BLKNO = 24;

export interface BlockHeader {
  crc: number;
  magic: number;
  fsid: bigint;
  seq: number;
  blkno: number;
}

export function writeBlockHeader(buf: Buffer, magic: number, fsid: bigint, seq: number,
  blkno: number): void {
  buf.writeUInt32LE(magic >>> 0, HDR_MAGIC);
  buf.writeBigUInt64LE(fsid, HDR_FSID);
  writeU64(buf, HDR_SEQ, seq);
  writeU64(buf, HDR_BLKNO, blkno);
}

export function readBlockHeader(buf: Buffer): BlockHeader {
  return {
    crc: buf.readUInt32LE(HDR_CRC),
    magic: buf.readUInt32LE(HDR_MAGIC),
    fsid: buf.readBigUInt64LE(HDR_FSID),
    seq: readU64(buf, HDR_SEQ),
    blkno: readU64(buf, HDR_BLKNO),
  };
}

export function headerMagic(buf: Buffer): number {
  return buf.readUInt32LE(HDR_MAGIC);
}

/** Header seq and blkno without the 2^53 check: used for cheap identity comparisons. */
export function headerSeqRaw(buf: Buffer): number {
  return buf.readUInt32LE(HDR_SEQ + 4) * TWO32 + buf.readUInt32LE(HDR_SEQ);
}
export function headerBlknoRaw(buf: Buffer): number {
  return buf.readUInt32LE(HDR_BLKNO + 4) * TWO32 + buf.readUInt32LE(HDR_BLKNO);
}
export function headerFsid(buf: Buffer): bigint {
  return buf.readBigUInt64LE(HDR_FSID);
}

/** The checksum covers everything after the crc field. */
export function computeBlockCrc(buf: Buffer): number {
  return crc32c(buf.subarray(4));
}

export function sealBlock(buf: Buffer): void {
  buf.writeUInt32LE(computeBlockCrc(buf), HDR_CRC);
}

export function blockCrcValid(buf: Buffer): boolean {
  return buf.readUInt32LE(HDR_CRC) === computeBlockCrc(buf);
}

// ---------------------------------------------------------------------------------------
// Block refs and roots.

export const BLOCK_REF_SIZE = 16;
export interface BlockRef {
  blkno: number;
  seq: number;
}
export const NULL_REF: Readonly<BlockRef> = Object.freeze({ blkno: 0, seq: 0 });

export function writeBlockRef(buf: Buffer, off: number, ref: BlockRef): void {
  writeU64(buf, off, ref.blkno);
  writeU64(buf, off + 8, ref.seq);
}

export function readBlockRef(buf: Buffer, off: number): BlockRef {
  return { blkno: readU64(buf, off), seq: readU64(buf, off + 8) };
}

export const BTREE_ROOT_SIZE = 24;
export const BTREE_MAX_HEIGHT = 20;
export interface BtreeRoot {
  ref: BlockRef;
  /** 0 for an empty tree (ref is NULL_REF), else the number of levels. */
  height: number;
}

export function emptyRoot(): BtreeRoot {
  return { ref: { blkno: 0, seq: 0 }, height: 0 };
}

export function writeBtreeRoot(buf: Buffer, off: number, root: BtreeRoot): void {
  writeBlockRef(buf, off, root.ref);
  buf.writeUInt8(root.height, off + 16);
}

export function readBtreeRoot(buf: Buffer, off: number): BtreeRoot {
  const ref = readBlockRef(buf, off);
  const height = buf.readUInt8(off + 16);
  if (height > BTREE_MAX_HEIGHT) throw corrupt(`btree root height ${height}`);
  if ((height === 0) !== (ref.blkno === 0)) throw corrupt("btree root height/ref mismatch");
  if (!buf.subarray(off + 17, off + BTREE_ROOT_SIZE).every((b) => b === 0)) {
    throw corrupt("btree root padding");
  }
  return { ref, height };
}

/** Extent allocator root: free extents in a btree, plus their total length. */
export const ALLOC_ROOT_SIZE = 40;
export const ALLOC_FLAG_LOW = 1;
export interface AllocRoot {
  totalLen: number;
  flags: number;
  root: BtreeRoot;
}

export function emptyAllocRoot(): AllocRoot {
  return { totalLen: 0, flags: 0, root: emptyRoot() };
}

export function writeAllocRoot(buf: Buffer, off: number, a: AllocRoot): void {
  writeU64(buf, off, a.totalLen);
  writeU64(buf, off + 8, a.flags);
  writeBtreeRoot(buf, off + 16, a.root);
}

export function readAllocRoot(buf: Buffer, off: number): AllocRoot {
  const flags = readU64(buf, off + 8);
  if ((flags & ~ALLOC_FLAG_LOW) !== 0) throw corrupt(`alloc root flags ${flags}`);
  return { totalLen: readU64(buf, off), flags, root: readBtreeRoot(buf, off + 16) };
}

/** Head of a chain of alloc-list blocks (metadata blknos for transactions). */
export const ALLOC_LIST_HEAD_SIZE = 32;
export interface AllocListHead {
  ref: BlockRef;
  /** blknos held in all the chain's blocks. */
  totalNr: number;
  /** blknos held in the first block. */
  firstNr: number;
  flags: number;
}

export function emptyListHead(): AllocListHead {
  return { ref: { blkno: 0, seq: 0 }, totalNr: 0, firstNr: 0, flags: 0 };
}

export function writeListHead(buf: Buffer, off: number, h: AllocListHead): void {
  writeBlockRef(buf, off, h.ref);
  writeU64(buf, off + 16, h.totalNr);
  buf.writeUInt32LE(h.firstNr, off + 24);
  buf.writeUInt32LE(h.flags, off + 28);
}

export function readListHead(buf: Buffer, off: number): AllocListHead {
  const h = {
    ref: readBlockRef(buf, off),
    totalNr: readU64(buf, off + 16),
    firstNr: buf.readUInt32LE(off + 24),
    flags: buf.readUInt32LE(off + 28),
  };
  if (h.firstNr > ALLOC_LIST_MAX_BLKNOS || h.firstNr > h.totalNr) {
    throw corrupt("alloc list head counts");
  }
  if (h.ref.blkno === 0 && h.totalNr !== 0) throw corrupt("alloc list head without block");
  return h;
}

/** Alloc-list block: header, next ref, start, nr, then up to 8185 blknos. */
export const ALLOC_LIST_NEXT_OFF = BLOCK_HEADER_SIZE;
export const ALLOC_LIST_START_OFF = ALLOC_LIST_NEXT_OFF + BLOCK_REF_SIZE;
export const ALLOC_LIST_NR_OFF = ALLOC_LIST_START_OFF + 4;
export const ALLOC_LIST_BLKNOS_OFF = ALLOC_LIST_NR_OFF + 4;
export const ALLOC_LIST_MAX_BLKNOS = Math.floor((META_BLOCK_SIZE - ALLOC_LIST_BLKNOS_OFF) / 8);

// ---------------------------------------------------------------------------------------
// Quorum configuration and the super block.

export interface QuorumSlot {
  /** IPv4 address as dotted quad, port 1..65535. */
  addr: string;
  port: number;
}
export interface QuorumConfig {
  version: number;
  /** Index = slot number; null = unused slot. */
  slots: (QuorumSlot | null)[];
}
const QCONF_SIZE = 8 + QUORUM_MAX_SLOTS * 8;
const SLOT_FAMILY_IPV4 = 1;

export function ipv4ToU32(addr: string): number {
  const parts = addr.split(".");
  assert(parts.length === 4, `ipv4 address ${addr}`);
  let v = 0;
  for (const p of parts) {
    const n = Number(p);
    assert(/^\d{1,3}$/.test(p) && n <= 255, `ipv4 address ${addr}`);
    v = v * 256 + n;
  }
  return v;
}

export function u32ToIpv4(v: number): string {
  return [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join(".");
}

function writeQconf(buf: Buffer, off: number, q: QuorumConfig): void {
  writeU64(buf, off, q.version);
  for (let i = 0; i < QUORUM_MAX_SLOTS; i++) {
    const s = q.slots[i];
    const so = off + 8 + i * 8;
    if (!s) continue;
    buf.writeUInt32BE(ipv4ToU32(s.addr), so);
    buf.writeUInt16LE(s.port, so + 4);
    buf.writeUInt8(SLOT_FAMILY_IPV4, so + 6);
  }
}

function readQconf(buf: Buffer, off: number): QuorumConfig {
  const slots: (QuorumSlot | null)[] = [];
  for (let i = 0; i < QUORUM_MAX_SLOTS; i++) {
    const so = off + 8 + i * 8;
    const family = buf.readUInt8(so + 6);
    if (family === 0) {
      if (!buf.subarray(so, so + 8).every((b) => b === 0)) throw corrupt(`quorum slot ${i}`);
      slots.push(null);
    } else if (family === SLOT_FAMILY_IPV4) {
      const port = buf.readUInt16LE(so + 4);
      if (port === 0) throw corrupt(`quorum slot ${i} port 0`);
      slots.push({ addr: u32ToIpv4(buf.readUInt32BE(so)), port });
    } else {
      throw corrupt(`quorum slot ${i} family ${family}`);
    }
  }
  return { version: readU64(buf, off), slots };
}

/** Volume options: set_bits says which are set. */
export const VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT = 1n;
export interface VolumeOptions {
  dataAllocZoneBlocks: number | null;
}
const VOLOPT_SIZE = 8 * 65;

export interface SuperBlock {
  hdr: { fsid: bigint; seq: number };
  fmtVers: number;
  flags: bigint;
  uuid: Buffer;
  /** The server's persistent global sequence number. */
  seq: number;
  nextIno: bigint;
  inodeCount: bigint;
  totalMetaBlocks: number;
  totalDataBlocks: number;
  qconf: QuorumConfig;
  metaAlloc: [AllocRoot, AllocRoot];
  dataAlloc: AllocRoot;
  serverMetaAvail: [AllocListHead, AllocListHead];
  serverMetaFreed: [AllocListHead, AllocListHead];
  fsRoot: BtreeRoot;
  logsRoot: BtreeRoot;
  logMerge: BtreeRoot;
  mountedClients: BtreeRoot;
  srchRoot: BtreeRoot;
  volopt: VolumeOptions;
}

const SB = {
  id: 32, fmtVers: 40, flags: 48, uuid: 56, seq: 72, nextIno: 80, inodeCount: 88,
  totalMeta: 96, totalData: 104, qconf: 112,
  metaAlloc: 112 + QCONF_SIZE,
  dataAlloc: 112 + QCONF_SIZE + 2 * ALLOC_ROOT_SIZE,
  avail: 112 + QCONF_SIZE + 3 * ALLOC_ROOT_SIZE,
  freed: 112 + QCONF_SIZE + 3 * ALLOC_ROOT_SIZE + 2 * ALLOC_LIST_HEAD_SIZE,
  roots: 112 + QCONF_SIZE + 3 * ALLOC_ROOT_SIZE + 4 * ALLOC_LIST_HEAD_SIZE,
} as const;
const SB_VOLOPT = SB.roots + 5 * BTREE_ROOT_SIZE;
/** Bytes of the super that carry fields; the rest of the 4 KiB block must be zero. */
export const SUPER_STRUCT_SIZE = SB_VOLOPT + VOLOPT_SIZE;

export function encodeSuper(sb: SuperBlock, isMeta: boolean): Buffer {
  const buf = Buffer.alloc(SUPER_SIZE);
  writeBlockHeader(buf, Magic.SUPER, sb.hdr.fsid, sb.hdr.seq, SUPER_BLKNO);
  buf.writeBigUInt64LE(SUPER_ID, SB.id);
  writeU64(buf, SB.fmtVers, sb.fmtVers);
  const flags = isMeta ? sb.flags | SUPER_FLAG_IS_META_BDEV : sb.flags & ~SUPER_FLAG_IS_META_BDEV;
  buf.writeBigUInt64LE(flags, SB.flags);
  assert(sb.uuid.length === 16, "uuid is 16 bytes");
  sb.uuid.copy(buf, SB.uuid);
  writeU64(buf, SB.seq, sb.seq);
  buf.writeBigUInt64LE(sb.nextIno, SB.nextIno);
  buf.writeBigUInt64LE(sb.inodeCount, SB.inodeCount);
  writeU64(buf, SB.totalMeta, sb.totalMetaBlocks);
  writeU64(buf, SB.totalData, sb.totalDataBlocks);
  writeQconf(buf, SB.qconf, sb.qconf);
  sb.metaAlloc.forEach((a, i) => writeAllocRoot(buf, SB.metaAlloc + i * ALLOC_ROOT_SIZE, a));
  writeAllocRoot(buf, SB.dataAlloc, sb.dataAlloc);
  sb.serverMetaAvail.forEach((h, i) => writeListHead(buf, SB.avail + i * ALLOC_LIST_HEAD_SIZE, h));
  sb.serverMetaFreed.forEach((h, i) => writeListHead(buf, SB.freed + i * ALLOC_LIST_HEAD_SIZE, h));
  [sb.fsRoot, sb.logsRoot, sb.logMerge, sb.mountedClients, sb.srchRoot].forEach((r, i) =>
    writeBtreeRoot(buf, SB.roots + i * BTREE_ROOT_SIZE, r));
  if (sb.volopt.dataAllocZoneBlocks !== null) {
    buf.writeBigUInt64LE(VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT, SB_VOLOPT);
    writeU64(buf, SB_VOLOPT + 8, sb.volopt.dataAllocZoneBlocks);
  }
  sealBlock(buf);
  return buf;
}

/** True if buf (the 4 KiB at SUPER_OFFSET) carries a scoutfs super of ours, valid or not. */
export function isScoutfsSuper(buf: Buffer): boolean {
  return buf.length >= SB.id + 8 && headerMagic(buf) === Magic.SUPER &&
    buf.readBigUInt64LE(SB.id) === SUPER_ID;
}

/** True if a (valid) super block carries the META flag: it came from a metadata device. */
export function superIsMeta(buf: Buffer): boolean {
  return (buf.readBigUInt64LE(SB.flags) & SUPER_FLAG_IS_META_BDEV) !== 0n;
}

/**
 * Decodes and validates a super block. `expectMeta` checks the META flag (set only on the
 * metadata device's copy). Throws EIO FsErrors that say precisely what is wrong.
 */
export function decodeSuper(buf: Buffer, expectMeta?: boolean): SuperBlock {
  if (buf.length !== SUPER_SIZE) throw corrupt(`super size ${buf.length}`);
  if (!isScoutfsSuper(buf)) throw corrupt("no scoutfs super block magic");
  if (!blockCrcValid(buf)) throw corrupt("super block checksum mismatch");
  const hdr = readBlockHeader(buf);
  if (hdr.blkno !== SUPER_BLKNO) throw corrupt(`super blkno ${hdr.blkno}`);
  const fmtVers = readU64(buf, SB.fmtVers);
  if (fmtVers < FORMAT_VERSION_MIN || fmtVers > FORMAT_VERSION_MAX) {
    throw corrupt(`super format version ${fmtVers} outside ${FORMAT_VERSION_MIN}-${FORMAT_VERSION_MAX}`);
  }
  const flags = buf.readBigUInt64LE(SB.flags);
  if ((flags & ~SUPER_FLAG_IS_META_BDEV) !== 0n) throw corrupt(`super flags ${flags}`);
  const isMeta = (flags & SUPER_FLAG_IS_META_BDEV) !== 0n;
  if (expectMeta !== undefined && isMeta !== expectMeta) {
    throw new FsError("EINVAL", expectMeta ? "meta_super META flag not set"
      : "data_super META flag set");
  }
  if (!buf.subarray(SUPER_STRUCT_SIZE).every((b) => b === 0)) throw corrupt("super tail");
  const sb: SuperBlock = {
    hdr: { fsid: hdr.fsid, seq: hdr.seq },
    fmtVers,
    flags: flags & ~SUPER_FLAG_IS_META_BDEV,
    uuid: Buffer.from(buf.subarray(SB.uuid, SB.uuid + 16)),
    seq: readU64(buf, SB.seq),
    nextIno: buf.readBigUInt64LE(SB.nextIno),
    inodeCount: buf.readBigUInt64LE(SB.inodeCount),
    totalMetaBlocks: readU64(buf, SB.totalMeta),
    totalDataBlocks: readU64(buf, SB.totalData),
    qconf: readQconf(buf, SB.qconf),
    metaAlloc: [readAllocRoot(buf, SB.metaAlloc), readAllocRoot(buf, SB.metaAlloc + ALLOC_ROOT_SIZE)],
    dataAlloc: readAllocRoot(buf, SB.dataAlloc),
    serverMetaAvail: [readListHead(buf, SB.avail), readListHead(buf, SB.avail + ALLOC_LIST_HEAD_SIZE)],
    serverMetaFreed: [readListHead(buf, SB.freed), readListHead(buf, SB.freed + ALLOC_LIST_HEAD_SIZE)],
    fsRoot: readBtreeRoot(buf, SB.roots),
    logsRoot: readBtreeRoot(buf, SB.roots + BTREE_ROOT_SIZE),
    logMerge: readBtreeRoot(buf, SB.roots + 2 * BTREE_ROOT_SIZE),
    mountedClients: readBtreeRoot(buf, SB.roots + 3 * BTREE_ROOT_SIZE),
    srchRoot: readBtreeRoot(buf, SB.roots + 4 * BTREE_ROOT_SIZE),
    volopt: decodeVolopt(buf),
  };
  if (sb.totalMetaBlocks <= META_DEV_START_BLKNO || sb.totalDataBlocks <= DATA_DEV_START_BLKNO) {
    throw corrupt("super device totals");
  }
  if (sb.seq < 1) throw corrupt("super seq 0");
  return sb;
}

function decodeVolopt(buf: Buffer): VolumeOptions {
  const bits = buf.readBigUInt64LE(SB_VOLOPT);
  if ((bits & ~VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT) !== 0n) throw corrupt(`volopt bits ${bits}`);
  const zone = readU64(buf, SB_VOLOPT + 8);
  if (!(bits & VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT) && zone !== 0) throw corrupt("volopt unset value");
  return { dataAllocZoneBlocks: bits & VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT ? zone : null };
}

// ---------------------------------------------------------------------------------------
// Quorum blocks: one 4 KiB block per slot, written only by the mount using that slot.

export const QuorumEvent = { BEGIN: 0, TERM: 1, ELECT: 2, FENCE: 3, STOP: 4, END: 5 } as const;
export const QUORUM_EVENT_NR = 6;
export interface QuorumEventRecord {
  writeNr: number;
  rid: bigint;
  term: number;
  sec: bigint;
  nsec: number;
}
export interface QuorumBlock {
  fsid: bigint;
  slot: number;
  writeNr: number;
  events: QuorumEventRecord[];
}
const QB_WRITE_NR = BLOCK_HEADER_SIZE;
const QB_EVENTS = QB_WRITE_NR + 8;
const QB_EVENT_SIZE = 40;
export const QUORUM_STRUCT_SIZE = QB_EVENTS + QUORUM_EVENT_NR * QB_EVENT_SIZE;

export function quorumBlkno(slot: number): number {
  assert(slot >= 0 && slot < QUORUM_MAX_SLOTS, `quorum slot ${slot}`);
  return QUORUM_BLKNO + slot;
}

export function emptyQuorumBlock(fsid: bigint, slot: number): QuorumBlock {
  const ev = (): QuorumEventRecord => ({ writeNr: 0, rid: 0n, term: 0, sec: 0n, nsec: 0 });
  return { fsid, slot, writeNr: 0, events: Array.from({ length: QUORUM_EVENT_NR }, ev) };
}

export function encodeQuorumBlock(q: QuorumBlock): Buffer {
  const buf = Buffer.alloc(QUORUM_BLOCK_SIZE);
  writeBlockHeader(buf, Magic.QUORUM, q.fsid, q.writeNr, quorumBlkno(q.slot));
  writeU64(buf, QB_WRITE_NR, q.writeNr);
  assert(q.events.length === QUORUM_EVENT_NR, "quorum events");
  q.events.forEach((e, i) => {
    const o = QB_EVENTS + i * QB_EVENT_SIZE;
    writeU64(buf, o, e.writeNr);
    buf.writeBigUInt64LE(e.rid, o + 8);
    writeU64(buf, o + 16, e.term);
    buf.writeBigInt64LE(e.sec, o + 24);
    buf.writeUInt32LE(e.nsec, o + 32);
  });
  sealBlock(buf);
  return buf;
}

export function decodeQuorumBlock(buf: Buffer, fsid: bigint, slot: number): QuorumBlock {
  if (buf.length !== QUORUM_BLOCK_SIZE) throw corrupt("quorum block size");
  const hdr = readBlockHeader(buf);
  if (hdr.magic !== Magic.QUORUM) throw corrupt(`quorum block ${slot} magic`);
  if (!blockCrcValid(buf)) throw corrupt(`quorum block ${slot} checksum`);
  if (hdr.fsid !== fsid) throw corrupt(`quorum block ${slot} fsid`);
  if (hdr.blkno !== quorumBlkno(slot)) throw corrupt(`quorum block ${slot} blkno`);
  const events: QuorumEventRecord[] = [];
  for (let i = 0; i < QUORUM_EVENT_NR; i++) {
    const o = QB_EVENTS + i * QB_EVENT_SIZE;
    const nsec = buf.readUInt32LE(o + 32);
    if (nsec >= 1e9) throw corrupt(`quorum block ${slot} event nsec`);
    events.push({ writeNr: readU64(buf, o), rid: buf.readBigUInt64LE(o + 8),
      term: readU64(buf, o + 16), sec: buf.readBigInt64LE(o + 24), nsec });
  }
  if (!buf.subarray(QUORUM_STRUCT_SIZE).every((b) => b === 0)) throw corrupt("quorum tail");
  return { fsid, slot, writeNr: readU64(buf, QB_WRITE_NR), events };
}

// ---------------------------------------------------------------------------------------
// The inode item value (scoutfs_inode). Format 2 adds the trailing project id.

export interface Timespec {
  sec: bigint;
  nsec: number;
}
export interface InodeValue {
  size: bigint;
  metaSeq: bigint;
  dataSeq: bigint;
  dataVersion: bigint;
  onlineBlocks: bigint;
  offlineBlocks: bigint;
  nextReaddirPos: bigint;
  nextXattrId: bigint;
  version: bigint;
  nlink: number;
  uid: number;
  gid: number;
  mode: number;
  rdev: number;
  flags: number;
  atime: Timespec;
  ctime: Timespec;
  mtime: Timespec;
  crtime: Timespec;
  proj: bigint;
}
export const INODE_FLAG_TRUNCATE = 1;
export const INODE_FLAG_RETENTION = 2;
const INODE_U64S = 9;
const INODE_TIMES = INODE_U64S * 8 + 6 * 4;
export const INODE_V1_SIZE = INODE_TIMES + 4 * 16;
export const INODE_V2_SIZE = INODE_V1_SIZE + 8;

export function inodeSize(fmtVers: number): number {
  return fmtVers >= 2 ? INODE_V2_SIZE : INODE_V1_SIZE;
}

const inodeU64Fields = ["size", "metaSeq", "dataSeq", "dataVersion", "onlineBlocks",
  "offlineBlocks", "nextReaddirPos", "nextXattrId", "version"] as const;
const inodeU32Fields = ["nlink", "uid", "gid", "mode", "rdev", "flags"] as const;
const inodeTimeFields = ["atime", "ctime", "mtime", "crtime"] as const;

export function encodeInode(ino: InodeValue, fmtVers: number): Buffer {
  const buf = Buffer.alloc(inodeSize(fmtVers));
  inodeU64Fields.forEach((f, i) => buf.writeBigUInt64LE(ino[f], i * 8));
  inodeU32Fields.forEach((f, i) => buf.writeUInt32LE(ino[f] >>> 0, INODE_U64S * 8 + i * 4));
  inodeTimeFields.forEach((f, i) => {
    const t = ino[f];
    assert(t.nsec >= 0 && t.nsec < 1e9, "timespec nsec");
    buf.writeBigInt64LE(t.sec, INODE_TIMES + i * 16);
    buf.writeUInt32LE(t.nsec, INODE_TIMES + i * 16 + 8);
  });
  if (fmtVers >= 2) buf.writeBigUInt64LE(ino.proj, INODE_V1_SIZE);
  else assert(ino.proj === 0n, "project id needs format version 2");
  return buf;
}

export function decodeInode(buf: Buffer, fmtVers: number): InodeValue {
  if (buf.length !== inodeSize(fmtVers)) throw corrupt(`inode item size ${buf.length}`);
  // one object literal in field order (encodeInode's): a fixed shape that later copies and
  // reads of every operation stay fast on (a record filled key by key is a dictionary)
  const u32 = (i: number): number => buf.readUInt32LE(INODE_U64S * 8 + i * 4);
  const out: InodeValue = {
    size: buf.readBigUInt64LE(0), metaSeq: buf.readBigUInt64LE(8),
    dataSeq: buf.readBigUInt64LE(16), dataVersion: buf.readBigUInt64LE(24),
    onlineBlocks: buf.readBigUInt64LE(32), offlineBlocks: buf.readBigUInt64LE(40),
    nextReaddirPos: buf.readBigUInt64LE(48), nextXattrId: buf.readBigUInt64LE(56),
    version: buf.readBigUInt64LE(64),
    nlink: u32(0), uid: u32(1), gid: u32(2), mode: u32(3), rdev: u32(4), flags: u32(5),
    atime: decodeInodeTime(buf, 0), ctime: decodeInodeTime(buf, 1),
    mtime: decodeInodeTime(buf, 2), crtime: decodeInodeTime(buf, 3),
    proj: fmtVers >= 2 ? buf.readBigUInt64LE(INODE_V1_SIZE) : 0n,
  };
  if ((out.flags & ~(INODE_FLAG_TRUNCATE | INODE_FLAG_RETENTION)) !== 0) {
    throw corrupt(`inode flags ${String(out.flags)}`);
  }
  return out;
}

function decodeInodeTime(buf: Buffer, i: number): Timespec {
  const nsec = buf.readUInt32LE(INODE_TIMES + i * 16 + 8);
  if (nsec >= 1e9) throw corrupt(`inode ${inodeTimeFields[i]!} nsec ${nsec}`);
  if (buf.readUInt32LE(INODE_TIMES + i * 16 + 12) !== 0) {
    throw corrupt(`inode ${inodeTimeFields[i]!} pad`);
  }
  return { sec: buf.readBigInt64LE(INODE_TIMES + i * 16), nsec };
}

// ---------------------------------------------------------------------------------------
// File data extent item value: {blkno u64 (0 when offline), flags u8, pad}.

export const DATA_EXTENT_VAL_SIZE = 16;
export const EXTENT_FLAG_OFFLINE = 1;
export const EXTENT_FLAG_UNWRITTEN = 2;
export interface DataExtentValue {
  blkno: number;
  flags: number;
}

export function encodeDataExtent(v: DataExtentValue): Buffer {
  const b = Buffer.alloc(DATA_EXTENT_VAL_SIZE);
  writeU64(b, 0, v.blkno);
  b[8] = v.flags;
  return b;
}

export function decodeDataExtent(b: Buffer): DataExtentValue {
  if (b.length !== DATA_EXTENT_VAL_SIZE) throw corrupt(`data extent value size ${b.length}`);
  const flags = b[8]!;
  if ((flags & ~(EXTENT_FLAG_OFFLINE | EXTENT_FLAG_UNWRITTEN)) !== 0) {
    throw corrupt(`data extent flags ${flags}`);
  }
  if (!b.subarray(9).every((x) => x === 0)) throw corrupt("data extent pad");
  const blkno = readU64(b, 0);
  if (((flags & EXTENT_FLAG_OFFLINE) !== 0) !== (blkno === 0)) {
    throw corrupt("data extent offline flag and blkno disagree");
  }
  return { blkno, flags };
}
