/*
 * `scoutfs mkfs META-DEVICE DATA-DEVICE -Q NR,ADDR,PORT ...`: create a new volume.
 *
 * A re-make of upstream utils/src/mkfs.c (argument parsing, device checks, output), with its
 * helpers from parse.c (parse_human, parse_u64, parse_quorum_slot), quorum.c
 * (valid_quorum_slots, print_quorum_slots), dev.c (device_size) and blkid.c (check_bdev).
 * The layout itself is written by makeVolume() in src/core/mkfs.ts; this file decides
 * whether to call it. Everything that can refuse — arguments, existing signatures, sizes,
 * the zone option — is checked before the first write, so a refused mkfs leaves both
 * devices byte for byte as they were.
 *
 * Order and messages follow upstream: argp checks (exit 64), then open and signature-check
 * the metadata device, then the data device (each refusal returns before the next device is
 * touched), then sizes (64 GiB minimum each unless -A, -m/-d limits, printed on stdout),
 * then -z against the data size, then the write and the "Created scoutfs filesystem:" block.
 *
 * Differences from upstream, deliberately:
 *  - existing signatures are found by reading the first 68 KiB ourselves instead of libblkid:
 *    the common filesystems, swap, LUKS, LVM and partition tables, reported with upstream's
 *    "<dev>: appears to contain an existing <type> superblock" / "... a partition table
 *    (<type>)" text, plus upstream's own check for a scoutfs super ("ScoutFS superblock");
 *  - upstream has no floor below which -A is refused (a tiny device underflows its layout
 *    arithmetic); we refuse sizes below core's MIN_META_BLOCKS/MIN_DATA_BLOCKS with an
 *    upstream-styled line ending ", even with -A" and EINVAL;
 *  - the root inode times have nanoseconds (upstream: microseconds from gettimeofday).
 *
 * Upstream quirks kept: a duplicate -Q slot's argp message carries an extra newline; -z
 * errors are printed without a newline, so "scoutfs: mkfs failed: ..." follows on the same
 * line; a blkid signature fails with -1, i.e. "Operation not permitted (1)".
 */

import { randomBytes } from "node:crypto";
import type { BlockDevice } from "../env/env.js";
import { openRealBlockDevice } from "../env/real/blockdev.js";
import { RealClock } from "../env/real/env.js";
import {
  DATA_BLOCK_SIZE, FORMAT_VERSION_MAX as FMT_MAX, FORMAT_VERSION_MIN as FMT_MIN, isScoutfsSuper,
  META_BLOCK_SIZE, SUPER_OFFSET, SUPER_SIZE,
} from "../core/format.js";
import { makeVolume, MIN_DATA_BLOCKS, MIN_META_BLOCKS, type MkfsParams } from "../core/mkfs.js";
import { Errno, isFsError, strerror } from "../util/errno.js";
import { argpParse, type ArgpSpec, type ArgpState } from "./argp.js";
import type { CliCommand, CliIo } from "./command.js";
import {
  formatBaseSize, formatSize, inetNtoa, parseHuman, parseQuorumSlot, parseU64, type Parsed,
  QUORUM_MAX_SLOTS, type QuorumSlotArg,
} from "./parse.js";

const FORMAT_VERSION_MIN = BigInt(FMT_MIN);
const FORMAT_VERSION_MAX = BigInt(FMT_MAX);
/** mkfs.c: "minimum meta device size to make reserved blocks reasonably large", data alike. */
const MIN_DEVICE_BYTES = 64n * 1024n * 1024n * 1024n;
/** SCOUTFS_SERVER_DATA_FILL_TARGET: 4 GiB of 4 KiB blocks. */
const DATA_FILL_TARGET = (4n * 1024n * 1024n * 1024n) >> 12n;
/** SCOUTFS_DATA_ALLOC_MAX_ZONES (format.h). */
const DATA_ALLOC_MAX_ZONES = 1024n;
/** print_quorum_slots() indent under "  quorum slots:           ". */
const SLOT_INDENT = " ".repeat(26);

type MkfsKey = "Q" | "f" | "A" | "m" | "d" | "z" | "V";

interface MkfsArgs {
  metaDevice: string | null;
  dataDevice: string | null;
  maxMetaSize: bigint;
  maxDataSize: bigint;
  dataAllocZoneBlocks: bigint;
  fmtVers: bigint;
  force: boolean;
  allowSmallSize: boolean;
  nrSlots: number;
  slots: (QuorumSlotArg | null)[];
}

// ---------------------------------------------------------------------------------------------
// Arguments (mkfs.c parse_opt and options[])

function writeParsed<T>(r: Parsed<T>, io: CliIo): void {
  if (r.ok || r.text === "") return;
  if (r.stream === "stdout") io.out(r.text);
  else io.err(r.text);
}

/** -m/-d: parse_human, then round down to whole blocks with upstream's note on stderr. */
function parseMaxSize(arg: string, blockSize: bigint, what: string, io: CliIo):
  bigint | number {
  const r = parseHuman(arg);
  writeParsed(r, io);
  if (!r.ok) return -r.errno;
  const rounded = r.value - (r.value % blockSize);
  if (rounded !== r.value) {
    io.err(`${what} dev size ${r.value} rounded down to ${rounded} bytes\n`);
  }
  return rounded;
}

function parseSlotOption(arg: string, st: ArgpState<MkfsArgs>): number {
  const r = parseQuorumSlot(arg);
  writeParsed(r, st.io);
  if (!r.ok) return -r.errno;
  const a = st.input;
  if (a.slots[r.value.nr]) {
    st.error(`Quorum slot ${r.value.nr} already specified before slot '${arg}'\n`);
  }
  a.slots[r.value.nr] = r.value;
  a.nrSlots++;
  return 0;
}

function parseU64Option(arg: string, io: CliIo): bigint | number {
  const r = parseU64(arg);
  writeParsed(r, io);
  return r.ok ? r.value : -r.errno;
}

function onOption(key: MkfsKey, arg: string | null, st: ArgpState<MkfsArgs>): number {
  const a = st.input;
  const value = arg ?? "";
  let v: bigint | number;
  switch (key) {
    case "Q":
      return parseSlotOption(value, st);
    case "f":
      a.force = true;
      return 0;
    case "A":
      a.allowSmallSize = true;
      return 0;
    case "m":
      v = parseMaxSize(value, BigInt(META_BLOCK_SIZE), "Meta", st.io);
      if (typeof v === "number") return v;
      a.maxMetaSize = v;
      return 0;
    case "d":
      v = parseMaxSize(value, BigInt(DATA_BLOCK_SIZE), "Data", st.io);
      if (typeof v === "number") return v;
      a.maxDataSize = v;
      return 0;
    case "z":
      v = parseU64Option(value, st.io);
      if (typeof v === "number") return v;
      a.dataAllocZoneBlocks = v;
      if (v === 0n) st.error("must provide non-zero data-alloc-zone-blocks");
      return 0;
    case "V":
      v = parseU64Option(value, st.io);
      if (typeof v === "number") return v;
      a.fmtVers = v;
      if (v < FORMAT_VERSION_MIN || v > FORMAT_VERSION_MAX) {
        st.error(`format-version ${v} is outside supported range of ` +
          `${FORMAT_VERSION_MIN}-${FORMAT_VERSION_MAX}`);
      }
      return 0;
  }
}

function onArg(arg: string, st: ArgpState<MkfsArgs>): number {
  const a = st.input;
  if (a.metaDevice === null) a.metaDevice = arg;
  else if (a.dataDevice === null) a.dataDevice = arg;
  else st.error("more than two arguments given");
  return 0;
}

/** quorum.c valid_quorum_slots(): two slots may not share an address and port. */
function validQuorumSlots(slots: readonly (QuorumSlotArg | null)[], io: CliIo): boolean {
  let valid = true;
  slots.forEach((si, i) => {
    if (!si) return;
    for (let j = i + 1; j < slots.length; j++) {
      const sj = slots[j];
      if (sj && sj.addrU32 === si.addrU32 && sj.port === si.port) {
        io.err(`quorum slot nr ${i} and ${j} have the same address ` +
          `${inetNtoa(si.addrU32)}:${si.port}\n`);
        valid = false;
      }
    }
  });
  return valid;
}

function onFini(st: ArgpState<MkfsArgs>): void {
  const a = st.input;
  if (!a.nrSlots) st.error("must specify at least one quorum slot with --quorum-slot|-Q");
  if (a.metaDevice === null) st.error("no metadata device argument given");
  if (a.dataDevice === null) st.error("no data device argument given");
  if (!validQuorumSlots(a.slots, st.io)) st.error("invalid quorum slot configuration");
}

export const MKFS_ARGP: ArgpSpec<MkfsArgs, MkfsKey> = {
  options: [
    { key: "Q", long: "quorum-slot", short: "Q", arg: "NR,ADDR,PORT",
      doc: "Specify quorum slot addresses [Required]" },
    { key: "f", long: "force", short: "f", doc: "Overwrite existing data on block devices" },
    { key: "A", long: "allow-small-size", short: "A",
      doc: "Allow specified meta/data devices less than minimum, still warns" },
    { key: "m", long: "max-meta-size", short: "m", arg: "SIZE",
      doc: "Use a size less than the base metadata device size (bytes or KMGTP units)" },
    { key: "d", long: "max-data-size", short: "d", arg: "SIZE",
      doc: "Use a size less than the base data device size (bytes or KMGTP units)" },
    { key: "z", long: "data-alloc-zone-blocks", short: "z", arg: "BLOCKS",
      doc: "Divide data device into block zones so each mounts writes to a zone (4KB blocks)" },
    { key: "V", long: "format-version", short: "V", arg: "version",
      doc: `Specify a format version within supported range, (${FORMAT_VERSION_MIN}-` +
        `${FORMAT_VERSION_MAX}, default ${FORMAT_VERSION_MAX})` },
  ],
  argsDoc: "META-DEVICE DATA-DEVICE",
  doc: "Initialize a new ScoutFS filesystem",
  init: () => ({
    metaDevice: null, dataDevice: null, maxMetaSize: 0n, maxDataSize: 0n,
    dataAllocZoneBlocks: 0n, fmtVers: FORMAT_VERSION_MAX, force: false, allowSmallSize: false,
    nrSlots: 0, slots: Array.from({ length: QUORUM_MAX_SLOTS }, () => null),
  }),
  onOption,
  onArg,
  onFini,
};

// ---------------------------------------------------------------------------------------------
// Existing signatures (blkid.c check_bdev)

/** Bytes read to look for signatures: everything up to and including the scoutfs super. */
const PROBE_BYTES = SUPER_OFFSET + SUPER_SIZE;

type Signature = { kind: "type" | "pttype"; name: string };

function hasAt(buf: Buffer, off: number, magic: string | Buffer): boolean {
  const m = typeof magic === "string" ? Buffer.from(magic, "latin1") : magic;
  return off + m.length <= buf.length && buf.subarray(off, off + m.length).equals(m);
}

/** ext2/3/4 and jbd, told apart from the feature flags the way libblkid does. */
function extType(buf: Buffer): string | null {
  const sb = 1024;
  if (sb + 0x68 > buf.length || buf.readUInt16LE(sb + 0x38) !== 0xef53) return null;
  const compat = buf.readUInt32LE(sb + 0x5c);
  const incompat = buf.readUInt32LE(sb + 0x60);
  const roCompat = buf.readUInt32LE(sb + 0x64);
  if (incompat & 0x8) return "jbd"; // a journal device
  if ((incompat & ~0x16) !== 0 || (roCompat & ~0x7) !== 0) return "ext4";
  return compat & 0x4 ? "ext3" : "ext2";
}

function swapType(buf: Buffer): string | null {
  for (const page of [4096, 8192, 16384, 32768, 65536]) {
    const off = page - 10;
    if (hasAt(buf, off, "SWAPSPACE2") || hasAt(buf, off, "SWAP-SPACE")) return "swap";
    if (hasAt(buf, off, "S1SUSPEND") || hasAt(buf, off, "S2SUSPEND") ||
      hasAt(buf, off, "ULSUSPEND") || hasAt(buf, off, "LINHIB0001")) return "swsuspend";
  }
  return null;
}

/** Filesystem and volume signatures (blkid's TYPE). */
function probeType(buf: Buffer): string | null {
  const luks = Buffer.from([0xba, 0xbe]);
  if (hasAt(buf, 0, Buffer.concat([Buffer.from("LUKS"), luks])) ||
    hasAt(buf, 0x4000, Buffer.concat([Buffer.from("SKUL"), luks]))) return "crypto_LUKS";
  for (const sector of [0, 512, 1024, 1536]) {
    if (hasAt(buf, sector, "LABELONE") && hasAt(buf, sector + 24, "LVM2 001")) {
      return "LVM2_member";
    }
  }
  if (hasAt(buf, 0, "XFSB")) return "xfs";
  const ext = extType(buf);
  if (ext) return ext;
  if (hasAt(buf, 0x10040, "_BHRfS_M")) return "btrfs";
  if (hasAt(buf, 0x36, "FAT12   ") || hasAt(buf, 0x36, "FAT16   ") ||
    hasAt(buf, 0x52, "FAT32   ")) return "vfat";
  if (hasAt(buf, 0x8001, "CD001")) return "iso9660";
  return swapType(buf);
}

/** Partition tables (blkid's PTTYPE): GPT, or an MBR with plausible entries. */
function probePtType(buf: Buffer): string | null {
  if (hasAt(buf, 512, "EFI PART")) return "gpt";
  if (buf.length < 512 || buf[510] !== 0x55 || buf[511] !== 0xaa) return null;
  let used = 0;
  for (let i = 0; i < 4; i++) {
    const e = 446 + i * 16;
    if (buf[e] !== 0 && buf[e] !== 0x80) return null;
    if (buf[e + 4] !== 0) used++;
  }
  return used > 0 ? "dos" : null;
}

function probeSignature(buf: Buffer): Signature | null {
  const type = probeType(buf);
  if (type) return { kind: "type", name: type };
  const pt = probePtType(buf);
  return pt ? { kind: "pttype", name: pt } : null;
}

async function readProbeBytes(dev: BlockDevice): Promise<Buffer> {
  const len = Math.min(dev.sizeBytes, PROBE_BYTES);
  const buf = dev.allocBuffer(len);
  if (len > 0) await dev.read(buf, 0);
  return buf;
}

/** check_bdev(): 0, or -1 (a blkid signature) or -EINVAL (a scoutfs super) after a message. */
async function checkBdev(dev: BlockDevice, path: string, io: CliIo): Promise<number> {
  const buf = await readProbeBytes(dev);
  const sig = probeSignature(buf);
  if (sig) {
    io.err(sig.kind === "type"
      ? `${path}: appears to contain an existing ${sig.name} superblock\n`
      : `${path}: appears to contain a partition table (${sig.name})\n`);
    return -1;
  }
  if (buf.length >= PROBE_BYTES && isScoutfsSuper(buf.subarray(SUPER_OFFSET, PROBE_BYTES))) {
    io.err(`${path}: appears to contain an existing ScoutFS superblock\n`);
    return -Errno.EINVAL;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Sizes (dev.c device_size / limit_device_size)

/** The bytes of the device mkfs uses, or -EINVAL after upstream's "too small" message. */
function limitDeviceSize(sizeBytes: number, minSize: bigint, maxSize: bigint,
  allowSmall: boolean, useType: string, io: CliIo): bigint | number {
  let size = BigInt(sizeBytes);
  if (maxSize) {
    if (size > maxSize) {
      io.out(`Limiting use of ${formatBaseSize(size)} ${useType} device to ` +
        `${formatBaseSize(maxSize)}\n`);
      size = maxSize;
    } else if (size < maxSize) {
      io.out(`Device size limit of ${formatBaseSize(maxSize)} for ${useType} device is ` +
        `greater than ${formatBaseSize(size)} available, ignored.\n`);
    }
  }
  if (size < minSize) {
    io.err(`${formatBaseSize(size)} too small for min ${formatBaseSize(minSize)} ${useType} ` +
      `device${allowSmall ? ", allowing with -A" : ""}\n`);
    if (!allowSmall) return -Errno.EINVAL;
  }
  return size;
}

/** Our floor under -A: the smallest volume core's makeVolume() lays out. */
function checkAbsoluteMin(size: bigint, minBytes: number, useType: string, io: CliIo): number {
  if (size >= BigInt(minBytes)) return 0;
  io.err(`${formatBaseSize(size)} too small for min ${formatBaseSize(BigInt(minBytes))} ` +
    `${useType} device, even with -A\n`);
  return -Errno.EINVAL;
}

/** mkfs.c invalid_data_alloc_zone_blocks(); its messages have no trailing newline. */
function invalidZoneBlocks(totalDataBlocks: bigint, zone: bigint, io: CliIo): boolean {
  if (zone === 0n) return false;
  const prefix = `setting data_alloc_zone_blocks to '${zone}' failed, must be`;
  if (zone < DATA_FILL_TARGET) {
    io.err(`${prefix} at least ${DATA_FILL_TARGET} mount data allocation target blocks`);
    return true;
  }
  const nr = totalDataBlocks / DATA_ALLOC_MAX_ZONES;
  if (zone < nr) {
    io.err(`${prefix} greater than ${nr} blocks which results in max ${DATA_ALLOC_MAX_ZONES} ` +
      "zones");
    return true;
  }
  if (zone > totalDataBlocks) {
    io.err(`${prefix} at most ${totalDataBlocks} total data device blocks`);
    return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Doing it (mkfs.c do_mkfs)

/** Identity and time of the new volume; replaceable so tests can expect exact output. */
export interface MkfsDeps {
  randomBytes(n: number): Buffer;
  now(): { sec: bigint; nsec: number };
}

const realDeps: MkfsDeps = {
  randomBytes: (n) => randomBytes(n),
  now: () => new RealClock().wallTime(),
};

interface Devices {
  meta: BlockDevice | null;
  data: BlockDevice | null;
}

/** open(O_RDWR) with upstream's "failed to open" line; -errno on failure. */
async function openDevice(path: string, io: CliIo): Promise<BlockDevice | number> {
  try {
    return await openRealBlockDevice(path, { direct: false });
  } catch (e) {
    if (!isFsError(e)) throw e;
    io.err(`failed to open '${path}': ${strerror(e.errno)} (${e.errno})\n`);
    return -e.errno;
  }
}

/** Opens and checks both devices in upstream's order: 0, or -errno (-1: a foreign signature). */
async function openAndCheck(a: MkfsInput, devs: Devices, io: CliIo): Promise<number> {
  const meta = await openDevice(a.metaDevice, io);
  if (typeof meta === "number") return meta;
  devs.meta = meta;
  if (!a.force) {
    const r = await checkBdev(meta, a.metaDevice, io);
    if (r) return r;
  }
  const data = await openDevice(a.dataDevice, io);
  if (typeof data === "number") return data;
  devs.data = data;
  if (!a.force) return checkBdev(data, a.dataDevice, io);
  return 0;
}

/** Sizes in bytes after -m/-d and the minimums, or -errno. */
function deviceSizes(a: MkfsInput, devs: { meta: BlockDevice; data: BlockDevice },
  io: CliIo): { meta: bigint; data: bigint } | number {
  const meta = limitDeviceSize(devs.meta.sizeBytes, MIN_DEVICE_BYTES, a.maxMetaSize,
    a.allowSmallSize, "meta", io);
  if (typeof meta === "number") return meta;
  const data = limitDeviceSize(devs.data.sizeBytes, MIN_DEVICE_BYTES, a.maxDataSize,
    a.allowSmallSize, "data", io);
  if (typeof data === "number") return data;
  const r = checkAbsoluteMin(meta, MIN_META_BLOCKS * META_BLOCK_SIZE, "meta", io) ||
    checkAbsoluteMin(data, MIN_DATA_BLOCKS * DATA_BLOCK_SIZE, "data", io);
  return r || { meta, data };
}

function newIdentity(deps: MkfsDeps): { fsid: bigint; uuid: Buffer } {
  let fsid = 0n;
  while (fsid === 0n) fsid = deps.randomBytes(8).readBigUInt64LE(0);
  const uuid = Buffer.from(deps.randomBytes(16));
  uuid[6] = (uuid[6]! & 0x0f) | 0x40; // uuid_generate(): a random (version 4) uuid
  uuid[8] = (uuid[8]! & 0x3f) | 0x80;
  return { fsid, uuid };
}

function uuidString(u: Buffer): string {
  const h = u.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The "Created scoutfs filesystem:" block (mkfs.c printf + quorum.c print_quorum_slots). */
export function createdText(a: { metaDevice: string; dataDevice: string }, p: MkfsParams): string {
  const slots = [...p.slots].sort((x, y) => x.nr - y.nr)
    .map((s, i) => `${i === 0 ? "" : SLOT_INDENT}${s.nr}: ${s.addr}:${s.port}\n`).join("");
  return "Created scoutfs filesystem:\n" +
    `  meta device path:       ${a.metaDevice}\n` +
    `  data device path:       ${a.dataDevice}\n` +
    `  fsid:                   ${p.fsid.toString(16)}\n` +
    `  uuid:                   ${uuidString(p.uuid)}\n` +
    `  format version:         ${p.formatVersion}\n` +
    `  64KB metadata blocks:   ${formatSize(BigInt(p.totalMetaBlocks), META_BLOCK_SIZE)}\n` +
    `  4KB data blocks:        ${formatSize(BigInt(p.totalDataBlocks), DATA_BLOCK_SIZE)}\n` +
    "  quorum config version:  1\n" +
    `  quorum slots:           ${slots}`;
}

interface MkfsInput extends Omit<MkfsArgs, "metaDevice" | "dataDevice"> {
  metaDevice: string;
  dataDevice: string;
}

async function doMkfs(a: MkfsInput, io: CliIo, deps: MkfsDeps): Promise<number> {
  const devs: Devices = { meta: null, data: null };
  try {
    const r = await openAndCheck(a, devs, io);
    if (r) return r;
    const both = { meta: devs.meta!, data: devs.data! };
    const sizes = deviceSizes(a, both, io);
    if (typeof sizes === "number") return sizes;
    const totalDataBlocks = sizes.data / BigInt(DATA_BLOCK_SIZE);
    if (invalidZoneBlocks(totalDataBlocks, a.dataAllocZoneBlocks, io)) return -Errno.EINVAL;
    const now = deps.now();
    const params: MkfsParams = {
      ...both, ...newIdentity(deps),
      totalMetaBlocks: Number(sizes.meta / BigInt(META_BLOCK_SIZE)),
      totalDataBlocks: Number(totalDataBlocks),
      slots: a.slots.flatMap((s) => (s ? [{ nr: s.nr, addr: s.addr, port: s.port }] : [])),
      dataAllocZoneBlocks: a.dataAllocZoneBlocks ? Number(a.dataAllocZoneBlocks) : null,
      formatVersion: a.fmtVers === 1n ? 1 : 2,
      nowSec: now.sec, nowNsec: now.nsec,
    };
    await makeVolume(params);
    io.out(createdText(a, params));
    return 0;
  } finally {
    await devs.data?.close().catch(() => undefined); // as upstream, close errors are ignored
    await devs.meta?.close().catch(() => undefined);
  }
}

/** The mkfs command; `deps` replaces the random source and clock (tests). */
export function makeMkfsCommand(deps: MkfsDeps = realDeps): CliCommand {
  return {
    name: "mkfs",
    group: "core",
    argsDoc: MKFS_ARGP.argsDoc,
    summary: MKFS_ARGP.doc ?? "",
    async run(argv: readonly string[], io: CliIo): Promise<number> {
      const r = argpParse(MKFS_ARGP, argv, io);
      if (r.kind === "exit") return r.code;
      if (r.kind === "error") return -r.errno;
      const a = r.input;
      // onFini guarantees both devices were given
      return doMkfs({ ...a, metaDevice: a.metaDevice!, dataDevice: a.dataDevice! }, io, deps);
    },
  };
}

export const mkfsCommand: CliCommand = makeMkfsCommand();
