/*
 * The ioctl twins: what upstream's ioctl.c answers, as core queries over a mount's ScoutFs,
 * and the ControlHandler the mount daemon serves on its control socket (src/cli/control.ts).
 *
 * Per-inode queries (this file) run through the OpRunner under a READ lock of the inode's
 * group, like the kernel's scoutfs_lock_ino, so they see every committed and local change:
 *  - inoPath: the next path from the root to an inode, walking LINK_BACKREF items up the
 *    parents (scoutfs_dir_get_backref_path), iterated with a (dir_ino, dir_pos) cursor; ENOENT
 *    when no entry at or after the cursor names the inode; restarted when a parent vanished
 *    mid-walk (a racing rename or unlink), ELOOP after INO_PATH_RETRIES;
 *  - getReferringEntries: the entries naming an inode from a cursor, the last one flagged;
 *  - listxattrHidden: names of .hide. xattrs from a (hash, id) cursor;
 *  - statMore: the inode fields stat(2) does not show;
 *  - getAllocatedInos: inode numbers with items from a start inode to the end of its group;
 *  - fiemap: pages of the data layer's extent map (FUSE has no FIEMAP of its own).
 * Volume-wide queries (walkInodes, statfsMore, allocDetail) are in ioctl_volume.ts.
 *
 * Differences from upstream: capability checks (CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN) and
 * listxattr_hidden's read permission check are the socket's business: only root can connect.
 * Results are bounded per call (the *_MAX constants) and the caller continues from a cursor,
 * as the upstream CLI does with its fixed buffers.
 */
import { FsError, isFsError } from "../../util/errno.js";
import {
  inodeKey, keyFields, keySecond, linkBackrefKey, U64_MAX, xattrKey,
} from "../key.js";
import { LockMode } from "../lock_msg.js";
import { LOCK_INODE_GROUP_NR } from "../lock_names.js";
import { ROOT_INO } from "../mkfs.js";
import type { FiemapExtent } from "./data.js";
import { decodeDirent, decodeXattrHeader } from "./format.js";
import type { ScoutFs } from "./fs.js";
import { inos, type OpCtx } from "./op.js";
import { scoutfsTags } from "./xattr.js";
import {
  allocDetail, type AllocDetailEntry, statfsMore, type StatfsMore, walkInodes,
  type WalkInodesArgs, type WalkPos,
} from "./ioctl_volume.js";

export {
  ALLOC_DETAIL_MAX, AllocOwner, type AllocDetailEntry, getLastSeq, type StatfsMore,
  WALK_INODES_MAX, WalkIndex, type WalkInodesArgs, type WalkPos,
} from "./ioctl_volume.js";

/** Bytes of a path including its NUL, at most (PATH_MAX: the upstream CLI's buffer). */
export const INO_PATH_MAX = 4096;
/** Times inoPath restarts after a parent vanished under it (upstream: 10, then ELOOP). */
export const INO_PATH_RETRIES = 10;
/** Entries one getReferringEntries call returns at most (upstream reads 1024 per lock). */
export const REFERRING_ENTRIES_MAX = 1024;
/** Bytes of names (each with its NUL) one listxattrHidden call returns at most. */
export const LISTXATTR_HIDDEN_MAX_BYTES = 65_536;
/** Xattrs one listxattrHidden call examines at most before returning its cursor. */
export const LISTXATTR_HIDDEN_SCAN_MAX = 16_384;
/** Inode numbers one getAllocatedInos call returns at most: one inode group. */
export const ALLOCATED_INOS_MAX = Number(LOCK_INODE_GROUP_NR);
/** Extents one fiemap call returns at most (the upstream CLI asks for 292). */
export const FIEMAP_EXTENTS_MAX = 1024;

export interface InoPathArgs {
  ino: bigint;
  dirIno: bigint;
  dirPos: bigint;
}

/** struct scoutfs_ioctl_ino_path_result: the entry's position and the path without NUL. */
export interface InoPathResult {
  dirIno: bigint;
  dirPos: bigint;
  path: Buffer;
}

export interface ReferringEntriesArgs extends InoPathArgs {
  /** Entries wanted, 1..REFERRING_ENTRIES_MAX. */
  max: number;
}

/** struct scoutfs_ioctl_dirent. */
export interface ReferringEntry {
  dirIno: bigint;
  dirPos: bigint;
  ino: bigint;
  /** DT_* type of the entry. */
  type: number;
  /** No entry after this one named the inode when it was read (DIRENT_FLAG_LAST). */
  last: boolean;
  name: Buffer;
}

export interface ListxattrHiddenArgs {
  ino: bigint;
  hashPos: bigint;
  idPos: bigint;
}

export interface ListxattrHiddenResult {
  names: Buffer[];
  /** Where the next call continues. */
  hashPos: bigint;
  idPos: bigint;
  /** Every xattr of the inode after the cursor was examined. */
  done: boolean;
}

/** struct scoutfs_ioctl_stat_more. */
export interface StatMore {
  metaSeq: bigint;
  dataSeq: bigint;
  dataVersion: bigint;
  onlineBlocks: bigint;
  offlineBlocks: bigint;
  /** u64 as upstream's ioctl: a time before 1970 is its two's complement. */
  crtimeSec: bigint;
  crtimeNsec: number;
}

export interface AllocatedInosArgs {
  startIno: bigint;
  /** Inode numbers wanted, 1..ALLOCATED_INOS_MAX. */
  max: number;
}

export interface FiemapArgs {
  ino: bigint;
  /** Logical byte offset: extents ending after it are returned. */
  start: bigint;
  /** Extents wanted, 1..FIEMAP_EXTENTS_MAX. */
  max: number;
}

export { FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_UNKNOWN, FIEMAP_EXTENT_UNWRITTEN } from "./data.js";
export type { FiemapExtent } from "./data.js";

/** Every extent of an inode in logical order, the last one LAST when the list is complete. */
export type FiemapFn = (ino: bigint) => Promise<readonly FiemapExtent[]>;

function checkCount(n: number, max: number, what: string): void {
  if (!Number.isInteger(n) || n < 1 || n > max) throw new FsError("EINVAL", `${what} ${n}`);
}

// ---------------------------------------------------------------------------------------
// Backrefs: ino-path and get-referring-entries.

interface Backref {
  dirIno: bigint;
  dirPos: bigint;
  type: number;
  name: Buffer;
}

function backrefOf(key: Buffer, val: Buffer): Backref {
  const d = decodeDirent(val);
  return { dirIno: keySecond(key), dirPos: d.pos, type: d.type, name: d.name };
}

/** Up to `max` backrefs of ino at or after (dirIno, dirPos), under ino's group READ lock. */
async function backrefsFrom(fs: ScoutFs, ino: bigint, dirIno: bigint, dirPos: bigint,
  max: number): Promise<Backref[]> {
  return fs.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx: OpCtx) => {
    const items = await ctx.range(linkBackrefKey(ino, dirIno, dirPos),
      linkBackrefKey(ino, U64_MAX, U64_MAX), ino, max);
    return items.map((it) => backrefOf(it.key, it.val));
  });
}

/** The next path to a.ino from the cursor (see the file comment). */
export async function inoPath(fs: ScoutFs, a: InoPathArgs): Promise<InoPathResult> {
  for (let retry = 0; retry < INO_PATH_RETRIES; retry++) {
    const first = (await backrefsFrom(fs, a.ino, a.dirIno, a.dirPos, 1))[0];
    if (first === undefined) throw new FsError("ENOENT", `no more paths to inode ${a.ino}`);
    const names = await parentNames(fs, first);
    if (names === null) {
      fs.client.counters.inc("dir_backref_retries");
      continue;
    }
    return { dirIno: first.dirIno, dirPos: first.dirPos, path: Buffer.concat(names) };
  }
  fs.client.counters.inc("dir_backref_excessive_retries");
  throw new FsError("ELOOP", `paths to inode ${a.ino} kept changing`);
}

/**
 * The path components from the root down to `entry`, joined with '/' separators; null when
 * a parent had no backref (it was unlinked or moved meanwhile: the caller restarts).
 * ENAMETOOLONG once the path with its NUL exceeds INO_PATH_MAX, which also bounds the walk.
 */
async function parentNames(fs: ScoutFs, entry: Backref): Promise<Buffer[] | null> {
  const parts: Buffer[] = [entry.name];
  let bytes = entry.name.length + 1;
  let dir = entry.dirIno;
  while (dir !== ROOT_INO) {
    const up = (await backrefsFrom(fs, dir, 0n, 0n, 1))[0];
    if (up === undefined) return null;
    bytes += up.name.length + 1;
    if (bytes > INO_PATH_MAX) throw new FsError("ENAMETOOLONG", `path to inode ${dir}`);
    parts.unshift(up.name, Buffer.from("/"));
    dir = up.dirIno;
  }
  return parts;
}

/** Entries naming a.ino at or after the cursor; the final one is `last` when none follow. */
export async function getReferringEntries(fs: ScoutFs, a: ReferringEntriesArgs):
  Promise<ReferringEntry[]> {
  checkCount(a.max, REFERRING_ENTRIES_MAX, "referring entries");
  const refs = await backrefsFrom(fs, a.ino, a.dirIno, a.dirPos, a.max);
  return refs.map((r, i) => ({ dirIno: r.dirIno, dirPos: r.dirPos, ino: a.ino, type: r.type,
    last: i === refs.length - 1 && refs.length < a.max, name: r.name }));
}

// ---------------------------------------------------------------------------------------
// Inode attributes, hidden xattrs, allocated inodes.

export async function statMore(fs: ScoutFs, ino: bigint): Promise<StatMore> {
  const v = await fs.runner.run({ inos: inos([ino, LockMode.READ]) },
    (ctx) => ctx.mustInode(ino));
  return { metaSeq: v.metaSeq, dataSeq: v.dataSeq, dataVersion: v.dataVersion,
    onlineBlocks: v.onlineBlocks, offlineBlocks: v.offlineBlocks,
    crtimeSec: BigInt.asUintN(64, v.crtime.sec), crtimeNsec: v.crtime.nsec };
}

function isHidden(name: Buffer): boolean {
  if (!name.toString("latin1").startsWith("scoutfs.")) return false;
  try {
    return scoutfsTags(name).has("hide.");
  } catch (e) {
    if (isFsError(e, "EINVAL")) return false; // not a tagged name: never hidden
    throw e;
  }
}

/** Names of the inode's .hide. xattrs from the cursor, up to LISTXATTR_HIDDEN_MAX_BYTES. */
export async function listxattrHidden(fs: ScoutFs, a: ListxattrHiddenArgs):
  Promise<ListxattrHiddenResult> {
  return fs.runner.run({ inos: inos([a.ino, LockMode.READ]) }, async (ctx) => {
    await ctx.mustInode(a.ino);
    const names: Buffer[] = [];
    let bytes = 0;
    let hashPos = a.hashPos;
    let idPos = a.idPos;
    const end = xattrKey(a.ino, U64_MAX, U64_MAX, 255);
    for (let scanned = 0; scanned < LISTXATTR_HIDDEN_SCAN_MAX; scanned++) {
      const it = await ctx.next(xattrKey(a.ino, hashPos, idPos, 0), end, a.ino);
      if (it === null) return { names, hashPos, idPos, done: true };
      const k = keyFields(it.key);
      // continuation parts of an xattr whose part 0 precedes the cursor: skip to the next id
      const name = k.fourth === 0 ? decodeXattrHeader(it.val).name : null;
      if (name !== null && isHidden(name)) {
        if (bytes + name.length + 1 > LISTXATTR_HIDDEN_MAX_BYTES) {
          return { names, hashPos: k.second, idPos: k.third, done: false };
        }
        bytes += name.length + 1;
        names.push(name);
      }
      if (k.third === U64_MAX) return { names, hashPos, idPos, done: true };
      hashPos = k.second;
      idPos = k.third + 1n;
    }
    return { names, hashPos, idPos, done: false };
  });
}

/**
 * Inode numbers from startIno to the end of its inode group whose items exist (upstream
 * walks FS items from the start inode's key to the group's last inode item).
 */
export async function getAllocatedInos(fs: ScoutFs, a: { startIno: bigint; max: number }):
  Promise<bigint[]> {
  checkCount(a.max, ALLOCATED_INOS_MAX, "allocated inodes");
  const groupLast = a.startIno | (LOCK_INODE_GROUP_NR - 1n);
  return fs.runner.run({ inos: inos([a.startIno, LockMode.READ]) }, async (ctx) => {
    const out: bigint[] = [];
    let ino = a.startIno;
    while (out.length < a.max) {
      const it = await ctx.next(inodeKey(ino), inodeKey(groupLast), a.startIno);
      if (it === null) break;
      const found = keyFields(it.key).first;
      out.push(found);
      if (found === groupLast) break;
      ino = found + 1n;
    }
    return out;
  });
}

// ---------------------------------------------------------------------------------------
// fiemap: the data layer's mapping, paged like FS_IOC_FIEMAP.

/**
 * Up to a.max extents ending after a.start, as FS_IOC_FIEMAP pages them. The data layer
 * maps the whole file each time (a debugging command: simplicity over speed).
 */
export async function fiemapPage(map: FiemapFn, a: FiemapArgs): Promise<FiemapExtent[]> {
  checkCount(a.max, FIEMAP_EXTENTS_MAX, "fiemap extents");
  const out: FiemapExtent[] = [];
  for (const e of await map(a.ino)) {
    if (out.length >= a.max) break;
    if (e.logical + e.length > a.start) out.push({ ...e });
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The control socket's handler.

/**
 * One method per control-socket operation: decoded arguments in, results out; an FsError
 * becomes the errno of the reply. fsid/rid identify the mount (the hello reply).
 */
export interface ControlHandler {
  readonly fsid: bigint;
  readonly rid: bigint;
  walkInodes(a: WalkInodesArgs): Promise<WalkPos[]>;
  inoPath(a: InoPathArgs): Promise<InoPathResult>;
  getReferringEntries(a: ReferringEntriesArgs): Promise<ReferringEntry[]>;
  listxattrHidden(a: ListxattrHiddenArgs): Promise<ListxattrHiddenResult>;
  statMore(a: { ino: bigint }): Promise<StatMore>;
  statfsMore(): Promise<StatfsMore>;
  allocDetail(): Promise<AllocDetailEntry[]>;
  getAllocatedInos(a: AllocatedInosArgs): Promise<bigint[]>;
  fiemap(a: FiemapArgs): Promise<FiemapExtent[]>;
}

export interface ControlHandlerOptions {
  /** The extent mapping fiemap pages through; default: the ScoutFs's own fiemap(ino). */
  fiemap?: FiemapFn;
}

/** The handler the mount daemon serves: every operation answered from this mount's fs. */
export function controlHandlerFor(fs: ScoutFs, opts: ControlHandlerOptions = {}): ControlHandler {
  const map: FiemapFn = opts.fiemap ?? ((ino) => fs.fiemap(ino));
  const c = fs.client;
  return {
    fsid: c.opts.fsid,
    rid: c.opts.rid,
    walkInodes: (a) => walkInodes(c, a),
    inoPath: (a) => inoPath(fs, a),
    getReferringEntries: (a) => getReferringEntries(fs, a),
    listxattrHidden: (a) => listxattrHidden(fs, a),
    statMore: (a) => statMore(fs, a.ino),
    statfsMore: () => statfsMore(c),
    allocDetail: () => allocDetail(c),
    getAllocatedInos: (a) => getAllocatedInos(fs, a),
    fiemap: (a) => fiemapPage(map, a),
  };
}
