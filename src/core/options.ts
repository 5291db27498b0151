/*
 * Mount options (upstream options.c, scoutfs(5)): the `-o` text of
 * `mount -t scoutfs -o metadev_path=META[,quorum_slot_nr=N][,...] DATA DIR`, its defaults and
 * ranges, its /proc/mounts rendering, and the mount_options/ files of the status directory
 * (which options are shown, which may be written, and what a write is checked against).
 *
 * Who calls it: the mount helper and daemon parse the text once (parseMountOptions) and keep
 * the resulting immutable MountOptions; the status directory (src/fuse/statusfs.ts) reads
 * options through SYSFS_MOUNT_OPTIONS[i].show() and turns a write into a new MountOptions with
 * .store(), which the daemon then applies to the running subsystems. Nothing here touches the
 * OS: metadev_path is only text here; the daemon opens and checks the device.
 *
 * Upstream's rules reproduced:
 *  - options are separated by commas, empty items are skipped, parsing stops at the first
 *    bad item; names match exactly and "name=%s" needs a nonempty value (so "acl=1" and
 *    "quorum_slot_nr=" are `Unknown or malformed option, "<item>"`);
 *  - numbers are kernel numbers (src/util/kstrto.ts: base 0, "0x" hex, leading-0 octal);
 *    int options have the int range (match_int), u64 options the u64 range (match_u64);
 *  - a missing metadev_path is `Required mount option "metadev_path" not found`, checked after
 *    every item parsed; a second quorum_slot_nr is refused; other repeats: the last one wins;
 *  - sysfs writes are parsed by kstrtol/kstrtoull after keeping the first 19 characters (the
 *    store's nullterm[20] buffer); a value out of range is EINVAL and changes nothing.
 *
 * Error texts: verbatim from upstream for metadev_path, unknown options, quorum_slot_nr and
 * orphan_scan_delay_ms (mount and sysfs). The texts of the options added later follow
 * upstream's later verify_*() pattern, "failed to parse <name> value" and "invalid <name>
 * value <v>, must be between <min> and <max>" (the quorum_heartbeat_timeout_ms one is what
 * upstream's test filter expects); their exact wording is a reconstruction. Where upstream's
 * match_int would accept trailing junk on old kernels ("quorum_slot_nr=1x"), we refuse it.
 *
 * Generic mount(8) options: mount(8) turns the VFS flags (ro, nosuid, noatime, ...) into
 * mount(2) flags and upstream never sees them; here the helper hands us the whole text, so
 * they are accepted, resolved (the last of a pair wins) and returned in `vfs.fuseFlags` for
 * the daemon to pass to its FUSE mount, which then enforces them exactly as the kernel does
 * for any filesystem. mount(8)'s userspace options (defaults, _netdev, nofail, noauto, user,
 * comment=, x-*, ...) and kernel flags without meaning here (mand, silent, iversion) are
 * accepted and ignored (listed in `vfs.ignored`). Anything else is an unknown option.
 */

import { FsError } from "../util/errno.js";
import { kstrtoint, kstrtoll, kstrtoull, type KstrtoResult } from "../util/kstrto.js";
import { DATA_BLOCK_SHIFT, QUORUM_MAX_SLOTS } from "./format.js";
import { LOCK_IDLE_COUNT_DEFAULT, LOCK_IDLE_COUNT_MAX, LOCK_IDLE_COUNT_MIN } from "./lock.js";
import { LOCK_INODE_GROUP_NR } from "./lock_names.js";
import { DEFAULT_NET_TUNING } from "./net.js";
import {
  QUORUM_HEARTBEAT_TIMEOUT_DEFAULT_MS, QUORUM_HEARTBEAT_TIMEOUT_MAX_MS,
  QUORUM_HEARTBEAT_TIMEOUT_MIN_MS,
} from "./quorum.js";
import { LOG_MERGE_WAIT_TIMEOUT_MS } from "./server_merge.js";

/** The kernel copies at most a page of mount options; we refuse more instead of truncating. */
export const MOUNT_OPTIONS_MAX_BYTES = 4095;
/** A sysfs option store keeps this many characters of a write (upstream nullterm[20]). */
export const SYSFS_OPTION_WRITE_MAX_CHARS = 19;
/** A volume option store refuses writes longer than this with ERANGE (upstream chars[32]). */
export const VOLUME_OPTION_WRITE_MAX_CHARS = 31;

export const DATA_PREALLOC_BLOCKS_DEFAULT = 2048;
export const DATA_PREALLOC_BLOCKS_MIN = 1;
/** SCOUTFS_BLOCK_SM_MAX: the most 4 KiB blocks a u64 byte offset can address. */
export const DATA_PREALLOC_BLOCKS_MAX = 2 ** (64 - DATA_BLOCK_SHIFT) - 1;
export const INO_ALLOC_PER_LOCK_DEFAULT = Number(LOCK_INODE_GROUP_NR);
export const INO_ALLOC_PER_LOCK_MIN = 1;
export const INO_ALLOC_PER_LOCK_MAX = Number(LOCK_INODE_GROUP_NR);
export const LOG_MERGE_WAIT_TIMEOUT_MIN_MS = 100;
export const LOG_MERGE_WAIT_TIMEOUT_MAX_MS = 60_000;
export const ORPHAN_SCAN_DELAY_DEFAULT_MS = 10_000;
export const ORPHAN_SCAN_DELAY_MIN_MS = 100;
export const ORPHAN_SCAN_DELAY_MAX_MS = 60_000;
/** The keepalive timeout must exceed UNRESPONSIVE_PROBES (3) seconds. */
export const TCP_KEEPALIVE_TIMEOUT_ABOVE_MS = 3_000;
export const TCP_KEEPALIVE_TIMEOUT_MAX_MS = 2 ** 31 - 1;
export const TCP_KEEPALIVE_TIMEOUT_DEFAULT_MS = DEFAULT_NET_TUNING.keepaliveTimeoutMs;

/** Generic mount flags, resolved; see the file comment. */
export interface VfsOptions {
  /** ro (the last of ro/rw wins). */
  readonly readOnly: boolean;
  /** Flags to give the FUSE mount's -o, canonical order, defaults left out ("rw", relatime). */
  readonly fuseFlags: readonly string[];
  /** Accepted options without effect here (userspace-only and meaningless kernel flags). */
  readonly ignored: readonly string[];
}

/** Every upstream mount option, parsed. Immutable: a change makes a new object. */
export interface MountOptions {
  readonly metadevPath: string;
  /** quorum_slot_nr, or null for a mount that is not a quorum member. */
  readonly quorumSlotNr: number | null;
  /** acl / noacl (default acl). */
  readonly acl: boolean;
  readonly dataPreallocBlocks: number;
  readonly dataPreallocContigOnly: boolean;
  readonly inoAllocPerLock: number;
  readonly lockIdleCount: number;
  readonly logMergeWaitTimeoutMs: number;
  readonly orphanScanDelayMs: number;
  readonly quorumHeartbeatTimeoutMs: number;
  readonly tcpKeepaliveTimeoutMs: number;
  readonly vfs: VfsOptions;
}

/** A refused option; `detail` is upstream's kernel message (what the mount failure shows). */
export class MountOptionError extends FsError {
  readonly detail: string;

  constructor(code: "EINVAL" | "ERANGE" | "EACCES", detail: string) {
    super(code, detail);
    this.detail = detail;
  }
}

// ---------------------------------------------------------------------------------------------
// Valued options

type NumericKey = "dataPreallocBlocks" | "inoAllocPerLock" | "lockIdleCount" |
  "logMergeWaitTimeoutMs" | "orphanScanDelayMs" | "quorumHeartbeatTimeoutMs" |
  "tcpKeepaliveTimeoutMs";

/** How a refusal reads: see the file comment. */
type MessageStyle = "legacy" | "verify" | "bool" | "larger";

interface ValueSpec {
  readonly name: string;
  /** match_int + kstrtol ("int"), or match_u64 + kstrtoull ("u64"). */
  readonly type: "int" | "u64";
  readonly min: bigint;
  readonly max: bigint;
  readonly style: MessageStyle;
  readonly sysfs: boolean;
  get(o: MountOptions): number;
  with(o: MountOptions, v: number): MountOptions;
}

function numeric(name: string, key: NumericKey, type: "int" | "u64", min: number, max: number,
  style: MessageStyle, sysfs = true): ValueSpec {
  return { name, type, min: BigInt(min), max: BigInt(max), style, sysfs,
    get: (o) => o[key], with: (o, v) => ({ ...o, [key]: v }) };
}

/** The valued options but metadev_path and quorum_slot_nr, by upstream name. */
const VALUE_SPECS: ReadonlyMap<string, ValueSpec> = new Map([
  numeric("data_prealloc_blocks", "dataPreallocBlocks", "u64", DATA_PREALLOC_BLOCKS_MIN,
    DATA_PREALLOC_BLOCKS_MAX, "verify"),
  { name: "data_prealloc_contig_only", type: "int", min: 0n, max: 1n, style: "bool",
    sysfs: true, get: (o) => (o.dataPreallocContigOnly ? 1 : 0),
    with: (o, v) => ({ ...o, dataPreallocContigOnly: v !== 0 }) } satisfies ValueSpec,
  numeric("ino_alloc_per_lock", "inoAllocPerLock", "int", INO_ALLOC_PER_LOCK_MIN,
    INO_ALLOC_PER_LOCK_MAX, "verify"),
  numeric("lock_idle_count", "lockIdleCount", "int", LOCK_IDLE_COUNT_MIN, LOCK_IDLE_COUNT_MAX,
    "verify"),
  numeric("log_merge_wait_timeout_ms", "logMergeWaitTimeoutMs", "int",
    LOG_MERGE_WAIT_TIMEOUT_MIN_MS, LOG_MERGE_WAIT_TIMEOUT_MAX_MS, "verify"),
  numeric("orphan_scan_delay_ms", "orphanScanDelayMs", "int", ORPHAN_SCAN_DELAY_MIN_MS,
    ORPHAN_SCAN_DELAY_MAX_MS, "legacy"),
  numeric("quorum_heartbeat_timeout_ms", "quorumHeartbeatTimeoutMs", "u64",
    QUORUM_HEARTBEAT_TIMEOUT_MIN_MS, QUORUM_HEARTBEAT_TIMEOUT_MAX_MS, "verify"),
  numeric("tcp_keepalive_timeout_ms", "tcpKeepaliveTimeoutMs", "int",
    TCP_KEEPALIVE_TIMEOUT_ABOVE_MS + 1, TCP_KEEPALIVE_TIMEOUT_MAX_MS, "larger", false),
].map((s) => [s.name, s]));

/** Upstream's message for a value that failed to parse or is out of range. */
function refusal(spec: ValueSpec, r: KstrtoResult, where: "mount" | "sysfs"): string {
  const { name, min, max } = spec;
  switch (spec.style) {
    case "legacy":
      return where === "mount" ? `invalid ${name} option, must be between ${min} and ${max}` :
        `invalid ${name} value written to options sysfs file, must be between ${min} and ${max}`;
    case "verify":
      return r.ok ? `invalid ${name} value ${r.value}, must be between ${min} and ${max}` :
        `failed to parse ${name} value`;
    case "bool":
      return r.ok ? `invalid ${name} value ${r.value}, must be 0 or 1` :
        `failed to parse ${name} value`;
    case "larger":
      return r.ok ? `invalid ${name} value ${r.value}, must be larger than ${min - 1n}` :
        `failed to parse ${name} value`;
  }
}

/** Parses and range-checks one value; throws MountOptionError with upstream's text. */
function checkValue(spec: ValueSpec, text: string, where: "mount" | "sysfs"): number {
  const r = spec.type === "u64" ? kstrtoull(text) :
    where === "mount" ? kstrtoint(text) : kstrtoll(text);
  if (r.ok && r.value >= spec.min && r.value <= spec.max) return Number(r.value);
  // upstream's legacy mount parsing hands back match_int's own error (ERANGE past an int)
  const code = spec.style === "legacy" && where === "mount" && !r.ok ? r.errno : "EINVAL";
  throw new MountOptionError(code, refusal(spec, r, where));
}

// ---------------------------------------------------------------------------------------------
// Generic mount(8) options

type VfsFlag = "ro" | "nosuid" | "nodev" | "noexec" | "sync" | "dirsync" | "nodiratime" |
  "lazytime" | "nosymfollow";
type AtimeMode = "relatime" | "noatime" | "strictatime";

/** Each flag option: which flag it sets (true) or clears (false). */
const VFS_FLAG_OPTIONS: ReadonlyMap<string, readonly [VfsFlag, boolean]> = new Map([
  ["ro", ["ro", true]], ["rw", ["ro", false]], ["nosuid", ["nosuid", true]],
  ["suid", ["nosuid", false]], ["nodev", ["nodev", true]], ["dev", ["nodev", false]],
  ["noexec", ["noexec", true]], ["exec", ["noexec", false]], ["sync", ["sync", true]],
  ["async", ["sync", false]], ["dirsync", ["dirsync", true]],
  ["nodiratime", ["nodiratime", true]], ["diratime", ["nodiratime", false]],
  ["lazytime", ["lazytime", true]], ["nolazytime", ["lazytime", false]],
  ["nosymfollow", ["nosymfollow", true]], ["symfollow", ["nosymfollow", false]],
]);
/** The order flags go to the FUSE mount (the atime mode goes after dirsync). */
const VFS_FLAG_ORDER: readonly VfsFlag[] = ["ro", "nosuid", "nodev", "noexec", "sync",
  "dirsync", "nodiratime", "lazytime", "nosymfollow"];
const ATIME_OPTIONS = new Set(["noatime", "atime", "relatime", "norelatime", "strictatime",
  "nostrictatime"]);
const IGNORED_OPTIONS = new Set(["defaults", "auto", "noauto", "user", "nouser", "users",
  "owner", "noowner", "group", "nogroup", "_netdev", "nofail", "mand", "nomand", "silent",
  "loud", "iversion", "noiversion"]);
const IGNORED_PREFIXES = ["comment=", "x-", "X-", "user="];

interface VfsState {
  flags: Set<VfsFlag>;
  atime: AtimeMode;
  ignored: string[];
}

/** kernel do_mount(): relatime unless noatime; strictatime clears both. */
function applyAtime(st: VfsState, item: string): void {
  if (item === "noatime") st.atime = "noatime";
  else if (item === "relatime") st.atime = "relatime";
  else if (item === "strictatime") st.atime = "strictatime";
  else if (item === "atime" && st.atime === "noatime") st.atime = "relatime";
  else if (item === "nostrictatime" && st.atime === "strictatime") st.atime = "relatime";
}

/** Takes a generic mount option; false if item is not one. */
function takeVfsOption(st: VfsState, item: string): boolean {
  const flag = VFS_FLAG_OPTIONS.get(item);
  if (flag !== undefined) {
    if (flag[1]) st.flags.add(flag[0]);
    else st.flags.delete(flag[0]);
    return true;
  }
  if (ATIME_OPTIONS.has(item)) {
    applyAtime(st, item);
    return true;
  }
  if (IGNORED_OPTIONS.has(item) || IGNORED_PREFIXES.some((p) => item.startsWith(p))) {
    st.ignored.push(item);
    return true;
  }
  return false;
}

function vfsOptionsOf(st: VfsState): VfsOptions {
  const fuseFlags: string[] = [];
  for (const f of VFS_FLAG_ORDER) {
    if (st.flags.has(f)) fuseFlags.push(f);
    if (f === "dirsync" && st.atime !== "relatime") fuseFlags.push(st.atime);
  }
  return { readOnly: st.flags.has("ro"), fuseFlags, ignored: [...st.ignored] };
}

// ---------------------------------------------------------------------------------------------
// Parsing

const DEFAULT_VFS: VfsOptions = { readOnly: false, fuseFlags: [], ignored: [] };

/** Every option at its default; metadevPath is what the caller gives. */
export function defaultMountOptions(metadevPath: string): MountOptions {
  return {
    metadevPath, quorumSlotNr: null, acl: true,
    dataPreallocBlocks: DATA_PREALLOC_BLOCKS_DEFAULT, dataPreallocContigOnly: true,
    inoAllocPerLock: INO_ALLOC_PER_LOCK_DEFAULT, lockIdleCount: LOCK_IDLE_COUNT_DEFAULT,
    logMergeWaitTimeoutMs: LOG_MERGE_WAIT_TIMEOUT_MS,
    orphanScanDelayMs: ORPHAN_SCAN_DELAY_DEFAULT_MS,
    quorumHeartbeatTimeoutMs: QUORUM_HEARTBEAT_TIMEOUT_DEFAULT_MS,
    tcpKeepaliveTimeoutMs: TCP_KEEPALIVE_TIMEOUT_DEFAULT_MS, vfs: DEFAULT_VFS,
  };
}

interface ParseState {
  opts: MountOptions;
  metadevSeen: boolean;
  slotSeen: boolean;
  vfs: VfsState;
}

const QUORUM_SLOT_SPEC: ValueSpec = {
  name: "quorum_slot_nr", type: "int", min: 0n, max: BigInt(QUORUM_MAX_SLOTS - 1),
  style: "legacy", sysfs: false, get: (o) => o.quorumSlotNr ?? -1,
  with: (o, v) => ({ ...o, quorumSlotNr: v }),
};

/** One nonempty item of the option text. */
function parseItem(st: ParseState, item: string): void {
  const eq = item.indexOf("=");
  const name = eq < 0 ? item : item.slice(0, eq);
  const value = eq < 0 ? "" : item.slice(eq + 1);
  if (eq < 0 && (name === "acl" || name === "noacl")) {
    st.opts = { ...st.opts, acl: name === "acl" };
    return;
  }
  if (eq >= 0 && value !== "") {
    if (name === "metadev_path") {
      st.opts = { ...st.opts, metadevPath: value };
      st.metadevSeen = true;
      return;
    }
    if (name === "quorum_slot_nr") {
      if (st.slotSeen) {
        throw new MountOptionError("EINVAL",
          "multiple quorum_slot_nr options provided, only provide one.");
      }
      st.opts = QUORUM_SLOT_SPEC.with(st.opts, checkValue(QUORUM_SLOT_SPEC, value, "mount"));
      st.slotSeen = true;
      return;
    }
    const spec = VALUE_SPECS.get(name);
    if (spec !== undefined) {
      st.opts = spec.with(st.opts, checkValue(spec, value, "mount"));
      return;
    }
  }
  if (takeVfsOption(st.vfs, item)) return;
  throw new MountOptionError("EINVAL", `Unknown or malformed option, "${item}"`);
}

/**
 * Parses the `-o` text of a scoutfs mount. Throws MountOptionError (EINVAL, or ERANGE for an
 * int past its range in the legacy options) whose `detail` is upstream's kernel message.
 */
export function parseMountOptions(text: string): MountOptions {
  if (Buffer.byteLength(text) > MOUNT_OPTIONS_MAX_BYTES) {
    throw new MountOptionError("EINVAL",
      `mount options are longer than ${MOUNT_OPTIONS_MAX_BYTES} bytes`);
  }
  const st: ParseState = { opts: defaultMountOptions(""), metadevSeen: false, slotSeen: false,
    vfs: { flags: new Set(), atime: "relatime", ignored: [] } };
  for (const item of text.split(",")) {
    if (item !== "") parseItem(st, item);
  }
  if (!st.metadevSeen) {
    throw new MountOptionError("EINVAL", 'Required mount option "metadev_path" not found');
  }
  return { ...st.opts, vfs: vfsOptionsOf(st.vfs) };
}

// ---------------------------------------------------------------------------------------------
// Rendering

/** /proc/mounts escapes these in its fields (the kernel's mangle()). */
function mangle(s: string): string {
  return s.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, "0")}`);
}

/**
 * The options as upstream's show_options prints them, without the leading comma: every
 * option, in upstream's (alphabetical) order, quorum_slot_nr only for members.
 */
export function renderMountOptions(o: MountOptions): string {
  const parts: string[] = [];
  if (o.acl) parts.push("acl");
  parts.push(`data_prealloc_blocks=${o.dataPreallocBlocks}`,
    `data_prealloc_contig_only=${o.dataPreallocContigOnly ? 1 : 0}`,
    `ino_alloc_per_lock=${o.inoAllocPerLock}`, `lock_idle_count=${o.lockIdleCount}`,
    `log_merge_wait_timeout_ms=${o.logMergeWaitTimeoutMs}`,
    `metadev_path=${mangle(o.metadevPath)}`);
  if (!o.acl) parts.push("noacl");
  parts.push(`orphan_scan_delay_ms=${o.orphanScanDelayMs}`,
    `quorum_heartbeat_timeout_ms=${o.quorumHeartbeatTimeoutMs}`);
  if (o.quorumSlotNr !== null) parts.push(`quorum_slot_nr=${o.quorumSlotNr}`);
  parts.push(`tcp_keepalive_timeout_ms=${o.tcpKeepaliveTimeoutMs}`);
  return parts.join(",");
}

/**
 * The whole options field of a /proc/mounts line for this mount as the kernel would write it:
 * rw/ro, then the superblock flags (sync, dirsync, lazytime), then the mount flags (nosuid,
 * nodev, noexec, noatime, nodiratime, relatime, nosymfollow), then renderMountOptions().
 */
export function renderProcMountsOptions(o: MountOptions): string {
  const f = new Set(o.vfs.fuseFlags);
  const parts = [o.vfs.readOnly ? "ro" : "rw"];
  for (const x of ["sync", "dirsync", "lazytime", "nosuid", "nodev", "noexec", "noatime",
    "nodiratime"]) {
    if (f.has(x)) parts.push(x);
  }
  if (!f.has("noatime") && !f.has("strictatime")) parts.push("relatime");
  if (f.has("nosymfollow")) parts.push("nosymfollow");
  parts.push(renderMountOptions(o));
  return parts.join(",");
}

// ---------------------------------------------------------------------------------------------
// mount_options/ in the status directory

export type SysfsMountOptionName = "data_prealloc_blocks" | "data_prealloc_contig_only" |
  "ino_alloc_per_lock" | "lock_idle_count" | "log_merge_wait_timeout_ms" | "metadev_path" |
  "orphan_scan_delay_ms" | "quorum_heartbeat_timeout_ms" | "quorum_slot_nr";

/** One mount_options/<name> file. */
export interface SysfsMountOption {
  readonly name: SysfsMountOptionName;
  /** "ro": mode 0444, writes refused (EACCES); "rw": mode 0644, writes go through store(). */
  readonly access: "ro" | "rw";
  /** The file's content: metadev_path and the rw values without a newline, as upstream. */
  show(o: MountOptions): string;
  /**
   * A write of `text` (the whole write, newline included): the options with the new value,
   * or MountOptionError EINVAL with upstream's message. Absent for "ro" files.
   */
  store?(o: MountOptions, text: string): MountOptions;
}

function rwOption(spec: ValueSpec): SysfsMountOption {
  return {
    name: spec.name as SysfsMountOptionName, access: "rw",
    show: (o) => `${spec.get(o)}`,
    store: (o, text) =>
      spec.with(o, checkValue(spec, text.slice(0, SYSFS_OPTION_WRITE_MAX_CHARS), "sysfs")),
  };
}

const RO_OPTIONS: readonly SysfsMountOption[] = [
  { name: "metadev_path", access: "ro", show: (o) => o.metadevPath },
  { name: "quorum_slot_nr", access: "ro", show: (o) => `${o.quorumSlotNr ?? -1}\n` },
];

/** The mount_options/ directory, alphabetical (upstream's attribute order). */
export const SYSFS_MOUNT_OPTIONS: readonly SysfsMountOption[] = [
  ...[...VALUE_SPECS.values()].filter((s) => s.sysfs).map(rwOption), ...RO_OPTIONS,
].sort((a, b) => (a.name < b.name ? -1 : 1));

export function sysfsMountOption(name: string): SysfsMountOption | undefined {
  return SYSFS_MOUNT_OPTIONS.find((s) => s.name === name);
}

/** A write to mount_options/<name>: the new options, or EINVAL / EACCES (read-only file). */
export function storeSysfsMountOption(o: MountOptions, name: SysfsMountOptionName,
  text: string): MountOptions {
  const opt = sysfsMountOption(name);
  if (opt?.store === undefined) {
    throw new MountOptionError("EACCES", `mount option ${name} cannot be changed`);
  }
  return opt.store(o, text);
}

// ---------------------------------------------------------------------------------------------
// volume_options/ in the status directory (upstream volopt.c)

export const VOLUME_OPTION_NAMES = ["data_alloc_zone_blocks"] as const;
export type VolumeOptionName = (typeof VOLUME_OPTION_NAMES)[number];

/** What a write to volume_options/<name> asks for. */
export type VolumeOptionWrite =
  /** An empty write: nothing to do. */
  | { readonly kind: "none" }
  /** A write starting with a newline: clear the option. */
  | { readonly kind: "clear" }
  | { readonly kind: "set"; readonly value: number };

/**
 * Parses a write to volume_options/<name> as upstream's store: more than 31 characters is
 * ERANGE, a leading "\n" or "\r" clears, anything else is kstrtoull's (EINVAL/ERANGE). The
 * server then validates the value (and answers EINVAL when it refuses it); values beyond
 * 2^53 are refused here with EINVAL, as no volume has that many blocks.
 */
export function parseVolumeOptionWrite(name: VolumeOptionName, text: string): VolumeOptionWrite {
  if (text.length === 0) return { kind: "none" };
  if (text.length > VOLUME_OPTION_WRITE_MAX_CHARS) {
    throw new MountOptionError("ERANGE", `write to ${name} longer than ` +
      `${VOLUME_OPTION_WRITE_MAX_CHARS} characters`);
  }
  if (text[0] === "\n" || text[0] === "\r") return { kind: "clear" };
  const r = kstrtoull(text);
  if (!r.ok) throw new MountOptionError(r.errno, `invalid value written to ${name}`);
  if (r.value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new MountOptionError("EINVAL", `${name} value ${r.value} is too large`);
  }
  return { kind: "set", value: Number(r.value) };
}

/** The content of volume_options/<name>: the value without a newline, empty when unset. */
export function showVolumeOption(value: number | null): string {
  return value === null ? "" : `${value}`;
}
