/*
 * `scoutfs print`: a dump of every metadata structure of a volume, read straight from the
 * metadata device (a fresh cache: what is on disk, not what some mount has cached).
 *
 * The layout follows upstream's print.c: the super block, the quorum blocks, then each btree
 * printed breadth first (parents before leaves) with each block's header and each item as its
 * key (zone.first.type.second.third.fourth) followed by a decoded line for the item types we
 * know, then the alloc-list chains. --skip-likely-huge leaves out the items of the allocator
 * trees, whose size grows with the device rather than with the namespace.
 *
 * A block that cannot be read or verified is reported on its line and printing goes on; the
 * caller gets the first error so the command can exit non-zero.
 */
import type { BlockDevice } from "../env/env.js";
import { Counters } from "../util/counters.js";
import { isFsError } from "../util/errno.js";
import { listEntries, listNext, listNr } from "./alloc.js";
import { BlockCache } from "./block.js";
import { type Item } from "./btree.js";
import { blockLevel, flagsAt, itemAt, nrItems, refAt, seqAt, usedBytes } from "./btree_block.js";
import {
  type AllocListHead, type AllocRoot, type BlockRef, type BtreeRoot, decodeDataExtent,
  decodeInode, decodeQuorumBlock, Magic, QUORUM_BLKNO, QUORUM_BLOCK_SIZE, QUORUM_MAX_SLOTS,
  readBlockHeader, SUPER_BLKNO, type SuperBlock, type Timespec,
} from "./format.js";
import { formatKey, FsType, keyFirst, keySecond, keyThird, keyType, keyZone, U64_MAX, Zone } from "./key.js";
import { readSuperFrom } from "./volume.js";

export interface PrintOptions {
  skipLikelyHuge: boolean;
}

type Out = (line: string) => void;

const hex16 = (n: bigint): string => n.toString(16).padStart(16, "0");
const ts = (t: Timespec): string => `${t.sec}.${String(t.nsec).padStart(9, "0")}`;

function uuidString(u: Buffer): string {
  const h = u.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const rootStr = (r: BtreeRoot): string => `blkno ${r.ref.blkno} seq ${r.ref.seq} height ${r.height}`;
const allocStr = (a: AllocRoot): string => `${rootStr(a.root)} total_len ${a.totalLen} flags 0x${a.flags.toString(16)}`;
const headStr = (h: AllocListHead): string =>
  `blkno ${h.ref.blkno} seq ${h.ref.seq} total_nr ${h.totalNr} first_nr ${h.firstNr}`;

function headerLine(buf: Buffer): string {
  const h = readBlockHeader(buf);
  return `  hdr: crc ${h.crc.toString(16).padStart(8, "0")} magic ${h.magic.toString(16).padStart(8, "0")} ` +
    `fsid ${h.fsid.toString(16)} blkno ${h.blkno} seq ${h.seq}`;
}

function printSuper(out: Out, sb: SuperBlock, raw: Buffer): void {
  out(`super blkno ${SUPER_BLKNO}`);
  out(headerLine(raw));
  out(`  fmt_vers ${sb.fmtVers} uuid ${uuidString(sb.uuid)}`);
  out(`  flags: 0x${(sb.flags | 1n).toString(16).padStart(16, "0")}`);
  out(`  next_ino ${sb.nextIno} inode_count ${sb.inodeCount} seq ${sb.seq}`);
  out(`  total_meta_blocks ${sb.totalMetaBlocks} total_data_blocks ${sb.totalDataBlocks}`);
  sb.metaAlloc.forEach((a, i) => out(`  meta_alloc[${i}]: ${allocStr(a)}`));
  out(`  data_alloc: ${allocStr(sb.dataAlloc)}`);
  sb.serverMetaAvail.forEach((h, i) => out(`  server_meta_avail[${i}]: ${headStr(h)}`));
  sb.serverMetaFreed.forEach((h, i) => out(`  server_meta_freed[${i}]: ${headStr(h)}`));
  out(`  fs_root: ${rootStr(sb.fsRoot)}`);
  out(`  logs_root: ${rootStr(sb.logsRoot)}`);
  out(`  log_merge: ${rootStr(sb.logMerge)}`);
  out(`  mounted_clients: ${rootStr(sb.mountedClients)}`);
  out(`  srch_root: ${rootStr(sb.srchRoot)}`);
  out("  volume options:");
  out(`    set_bits: ${hex16(sb.volopt.dataAllocZoneBlocks === null ? 0n : 1n)}`);
  if (sb.volopt.dataAllocZoneBlocks !== null) {
    out(`    data_alloc_zone_blocks: ${sb.volopt.dataAllocZoneBlocks}`);
  }
  out(`  quorum config version ${sb.qconf.version}`);
  sb.qconf.slots.forEach((s, i) => {
    if (s) out(`    quorum slot ${String(i).padStart(2)}: ${s.addr}:${s.port}`);
  });
}

const EVENT_NAMES = ["begin", "term", "elect", "fence", "stop", "end"];

async function printQuorum(out: Out, meta: BlockDevice, sb: SuperBlock): Promise<void> {
  for (let slot = 0; slot < QUORUM_MAX_SLOTS; slot++) {
    const blkno = QUORUM_BLKNO + slot;
    const buf = meta.allocBuffer(QUORUM_BLOCK_SIZE);
    await meta.read(buf, blkno * QUORUM_BLOCK_SIZE);
    out(`quorum blkno ${blkno} (slot ${slot})`);
    out(headerLine(buf));
    const q = decodeQuorumBlock(Buffer.from(buf), sb.hdr.fsid, slot);
    q.events.forEach((e, i) => {
      out(`  ${EVENT_NAMES[i]!.padStart(12)}: rid ${hex16(e.rid)} term ${e.term} ts ${ts(e)}`);
    });
  }
}

function describeFsItem(it: Item, fmtVers: number): string[] {
  const k = it.key;
  if (keyZone(k) === Zone.INODE_INDEX) return [`      index: major ${keySecond(k)} ino ${keyThird(k)}`];
  if (keyZone(k) === Zone.ORPHAN) return [`    orphan: ino ${keySecond(k)}`];
  if (keyZone(k) !== Zone.FS) return [];
  if (keyType(k) === FsType.INODE) {
    const n = decodeInode(it.val, fmtVers);
    return [`    inode: ino ${keyFirst(k)} size ${n.size} nlink ${n.nlink}`,
      `      uid ${n.uid} gid ${n.gid} mode 0${n.mode.toString(8)} rdev 0x${n.rdev.toString(16)} flags 0x${n.flags.toString(16)}`,
      `      next_readdir_pos ${n.nextReaddirPos} meta_seq ${n.metaSeq} data_seq ${n.dataSeq} data_version ${n.dataVersion}`,
      `      atime ${ts(n.atime)} ctime ${ts(n.ctime)}`,
      `      mtime ${ts(n.mtime)} crtime ${ts(n.crtime)} proj ${n.proj}`];
  }
  if (keyType(k) === FsType.DATA_EXTENT) {
    const v = decodeDataExtent(it.val);
    const len = keyThird(k);
    return [`    extent: ino ${keyFirst(k)} iblock ${keySecond(k) - len + 1n} len ${len} blkno ${v.blkno} flags ${v.flags.toString(16)}`];
  }
  return [`      (${it.val.length} byte value)`];
}

function describeAllocItem(it: Item): string[] {
  const k = it.key;
  if (keyZone(k) === Zone.FREE_EXTENT_BLKNO) {
    const last = keyFirst(k);
    const len = keySecond(k);
    return [`    free extent: blkno ${last - len + 1n} len ${len} end ${last}`];
  }
  const len = keyThird(k);
  return [`    free extent: blkno ${keySecond(k) - len + 1n} len ${len} order ${U64_MAX - keyFirst(k)}`];
}

type Describe = (it: Item) => string[];

class Printer {
  firstError: unknown = null;
  constructor(readonly out: Out, readonly cache: BlockCache, readonly opts: PrintOptions) {}

  async guard(what: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      if (!isFsError(e)) throw e;
      this.out(`  ${what}: error: ${e.message}`);
      this.firstError ??= e;
    }
  }

  /** Breadth first: every level from the root down, so parents precede their children. */
  async btree(name: string, root: BtreeRoot, describe: Describe, skipItems = false): Promise<void> {
    let level: BlockRef[] = root.height > 0 ? [root.ref] : [];
    for (let l = root.height - 1; l >= 0; l--) {
      const next: BlockRef[] = [];
      for (const ref of level) {
        await this.guard(`${name} btree blkno ${ref.blkno}`, async () => {
          const b = await this.cache.read(ref, Magic.BTREE);
          this.block(name, ref, b, describe, skipItems);
          if (l > 0) for (let i = 0; i < nrItems(b); i++) next.push(refAt(b, i));
        });
      }
      level = next;
    }
  }

  private block(name: string, ref: BlockRef, b: Buffer, describe: Describe, skip: boolean): void {
    this.out(`${name} btree blkno ${ref.blkno}`);
    this.out(headerLine(b));
    this.out(`  level ${blockLevel(b)} nr_items ${nrItems(b)} used_bytes ${usedBytes(b)}`);
    if (skip && blockLevel(b) === 0) return;
    for (let i = 0; i < nrItems(b); i++) {
      const it = itemAt(b, i);
      this.out(`    ${formatKey(it.key)}` + (blockLevel(b) > 0 ? "" :
        ` seq ${seqAt(b, i)} flags 0x${flagsAt(b, i).toString(16)}`));
      if (blockLevel(b) > 0) {
        const r = refAt(b, i);
        this.out(`    ref blkno ${r.blkno} seq ${r.seq}`);
      } else {
        for (const line of describe(it)) this.out(line);
      }
    }
  }

  async list(name: string, h: AllocListHead): Promise<void> {
    let ref = h.ref;
    for (let n = 0; ref.blkno !== 0 && n < 1_000_000; n++) {
      let next: BlockRef = { blkno: 0, seq: 0 };
      await this.guard(`${name} alloc_list_block blkno ${ref.blkno}`, async () => {
        const b = await this.cache.read(ref, Magic.ALLOC_LIST);
        this.out(`${name} alloc_list_block blkno ${ref.blkno}`);
        this.out(headerLine(b));
        next = listNext(b);
        this.out(`  next blkno ${next.blkno} seq ${next.seq} start 0 nr ${listNr(b)}`);
        if (listNr(b) > 0) this.out(`  exts: ${runs(listEntries(b))}`);
      });
      ref = next;
    }
  }
}

function runs(blknos: number[]): string {
  const parts: string[] = [];
  let start = 0;
  let len = 0;
  blknos.forEach((b, i) => {
    if (len === 0) start = b;
    len++;
    if (i === blknos.length - 1 || start + len !== blknos[i + 1]) {
      parts.push(`${start},${len}`);
      len = 0;
    }
  });
  return parts.join(" ");
}

/** Prints the volume on meta; resolves with the first error met (null when none). */
export async function printVolume(meta: BlockDevice, out: Out, opts: PrintOptions):
  Promise<unknown> {
  const sb = await readSuperFrom(meta, true);
  const raw = meta.allocBuffer(4096);
  await meta.read(raw, SUPER_BLKNO * 4096);
  printSuper(out, sb, raw);
  const cache = new BlockCache(meta, sb.hdr.fsid, new Counters(), 64 * 1024 * 1024, sb.totalMetaBlocks);
  const p = new Printer(out, cache, opts);
  await p.guard("quorum blocks", () => printQuorum(out, meta, sb));
  const none: Describe = (it) => [`      (${it.val.length} byte value)`];
  await p.btree("mounted_clients", sb.mountedClients, none);
  await p.btree("log_merge", sb.logMerge, none);
  for (const [i, h] of sb.serverMetaAvail.entries()) await p.list(`server_meta_avail[${i}]`, h);
  for (const [i, h] of sb.serverMetaFreed.entries()) await p.list(`server_meta_freed[${i}]`, h);
  for (const [i, a] of sb.metaAlloc.entries()) {
    await p.btree(`meta_alloc[${i}]`, a.root, describeAllocItem, opts.skipLikelyHuge);
  }
  await p.btree("data_alloc", sb.dataAlloc.root, describeAllocItem, opts.skipLikelyHuge);
  await p.btree("srch_root", sb.srchRoot, none, opts.skipLikelyHuge);
  await p.btree("logs_root", sb.logsRoot, none);
  await p.btree("fs_root", sb.fsRoot, (it) => describeFsItem(it, sb.fmtVers));
  return p.firstError;
}
