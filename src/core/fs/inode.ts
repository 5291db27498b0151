/*
 * Inode attributes (upstream inode.c): building a new inode's item, the attributes the VFS
 * sees, and setattr (chmod, chown, truncate, utimes) with Linux's permission rules.
 *
 * Times are the Env's wall clock (seconds as bigint, so times past 2^32 s and before 1970
 * survive), nanosecond precision, and every change of an inode sets its ctime.
 */
import { assert } from "../../util/assert.js";
import { FsError } from "../../util/errno.js";
import {
  INODE_FLAG_RETENTION, type InodeValue, type Timespec,
} from "../format.js";
import { LockMode } from "../lock_msg.js";
import type { PosixAcl } from "./acl.js";
import { isDir, isReg, S_IFMT, S_ISGID, S_ISUID } from "./format.js";
import { inos, type OpCtx, type OpRunner } from "./op.js";
import { checkAccess, type Cred, inGroup, MAY_WRITE, ownerOrRoot } from "./perm.js";

/** An inode's attributes as operations return them. */
export interface InodeAttr extends InodeValue {
  ino: bigint;
}

/** Largest file size (upstream's s_maxbytes, MAX_LFS_FILESIZE). */
export const FILE_SIZE_MAX = 0x7fff_ffff_ffff_ffffn;

export function attrOf(ino: bigint, v: InodeValue): InodeAttr {
  // spelled out (InodeValue's fields in order): object spread showed in profiles of lookups
  return {
    size: v.size, metaSeq: v.metaSeq, dataSeq: v.dataSeq, dataVersion: v.dataVersion,
    onlineBlocks: v.onlineBlocks, offlineBlocks: v.offlineBlocks,
    nextReaddirPos: v.nextReaddirPos, nextXattrId: v.nextXattrId, version: v.version,
    nlink: v.nlink, uid: v.uid, gid: v.gid, mode: v.mode, rdev: v.rdev, flags: v.flags,
    atime: { sec: v.atime.sec, nsec: v.atime.nsec }, ctime: { sec: v.ctime.sec, nsec: v.ctime.nsec },
    mtime: { sec: v.mtime.sec, nsec: v.mtime.nsec },
    crtime: { sec: v.crtime.sec, nsec: v.crtime.nsec }, proj: v.proj, ino,
  };
}

/**
 * A new inode's value created by `cred` in directory `parent` (inode_init_owner): the group
 * of a set-group-ID directory is inherited, as is its S_ISGID bit by subdirectories; a
 * non-member creating a group-executable set-group-ID file loses the bit.
 */
export function newInodeValue(cred: Cred, parent: InodeValue, mode: number, rdev: number,
  now: Timespec, fmtVers: number): InodeValue {
  let gid = cred.gid;
  let m = mode;
  if ((parent.mode & S_ISGID) !== 0) {
    gid = parent.gid;
    if (isDir(m)) m |= S_ISGID;
  }
  if (!isDir(m) && (m & S_ISGID) !== 0 && (m & 0o010) !== 0 && cred.uid !== 0 &&
    !inGroup(cred, gid)) {
    m &= ~S_ISGID;
  }
  return {
    size: 0n, metaSeq: 0n, dataSeq: 0n, dataVersion: 0n, onlineBlocks: 0n, offlineBlocks: 0n,
    nextReaddirPos: 2n, nextXattrId: 1n, version: 0n, nlink: isDir(m) ? 2 : 1, uid: cred.uid,
    gid, mode: m, rdev, flags: 0, atime: { ...now }, ctime: { ...now }, mtime: { ...now },
    crtime: { ...now }, proj: fmtVers >= 2 ? parent.proj : 0n,
  };
}

/** Retained files refuse every modification (reference 1.21). */
export function checkNotRetained(v: InodeValue): void {
  if ((v.flags & INODE_FLAG_RETENTION) !== 0) throw new FsError("EPERM", "retention is set");
}

/** What setattr changes: absent fields stay. "now" is the current time (UTIME_NOW). */
export interface SetattrIn {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: bigint;
  atime?: Timespec | "now";
  mtime?: Timespec | "now";
  ctime?: Timespec;
  /** Clear S_ISUID (and S_ISGID when group-executable), as a write by a non-owner does. */
  killSuidgid?: boolean;
  /** The change comes through an open file (ftruncate): no write permission check. */
  viaOpenFile?: boolean;
}

/**
 * Called when a regular file's size changes (and by inode deletion, with newSize 0): data
 * extents past the new size go (data.ts). True when extents remain for further operations.
 */
export type TruncateHook = (ctx: OpCtx, ino: bigint, oldSize: bigint, newSize: bigint) =>
  Promise<boolean>;

export async function setattr(runner: OpRunner, ino: bigint, inp: SetattrIn, cred: Cred,
  now: Timespec, truncate: TruncateHook): Promise<InodeAttr> {
  return runner.run({ inos: inos([ino, LockMode.WRITE]) }, async (ctx) => {
    const v = await ctx.mustInode(ino, LockMode.WRITE);
    checkNotRetained(v);
    checkSetattr(v, inp, cred, await ctx.accessAcl(ino, v, cred));
    if (inp.size !== undefined && inp.size !== v.size) await truncate(ctx, ino, v.size, inp.size);
    ctx.dirty(ino);
    applySetattr(ctx, ino, v, inp, cred, now);
    // the access ACL's owner, mask and other entries follow the new mode (posix_acl_chmod)
    if (inp.mode !== undefined && ctx.acl !== null) await ctx.acl.chmod(ctx, ino, v);
    return attrOf(ino, v);
  });
}

/** EPERM/EACCES/EISDIR/EINVAL/EFBIG as setattr_prepare and do_truncate decide. */
function checkSetattr(v: InodeValue, inp: SetattrIn, cred: Cred, acl: PosixAcl | null): void {
  const root = cred.uid === 0;
  if (inp.uid !== undefined && !root && inp.uid !== v.uid) throw new FsError("EPERM");
  if (inp.gid !== undefined && !root && inp.gid !== v.gid &&
    (cred.uid !== v.uid || !inGroup(cred, inp.gid))) {
    throw new FsError("EPERM");
  }
  if (inp.mode !== undefined && !ownerOrRoot(cred, v)) throw new FsError("EPERM");
  for (const t of [inp.atime, inp.mtime]) {
    if (t === undefined || ownerOrRoot(cred, v)) continue;
    if (t !== "now") throw new FsError("EPERM");
    checkAccess(cred, v, MAY_WRITE, acl);
  }
  if (inp.ctime !== undefined && !ownerOrRoot(cred, v)) throw new FsError("EPERM");
  if (inp.size !== undefined) {
    if (isDir(v.mode)) throw new FsError("EISDIR");
    if (!isReg(v.mode)) throw new FsError("EINVAL");
    if (inp.size < 0n || inp.size > FILE_SIZE_MAX) throw new FsError("EFBIG");
    if (inp.viaOpenFile !== true) checkAccess(cred, v, MAY_WRITE, acl);
  }
}

function applySetattr(ctx: OpCtx, ino: bigint, v: InodeValue, inp: SetattrIn, cred: Cred,
  now: Timespec): void {
  const chown = (inp.uid !== undefined && inp.uid !== v.uid) ||
    (inp.gid !== undefined && inp.gid !== v.gid);
  if (inp.uid !== undefined) v.uid = inp.uid;
  if (inp.gid !== undefined) v.gid = inp.gid;
  if (inp.mode !== undefined) {
    let m = (v.mode & S_IFMT) | (inp.mode & ~S_IFMT & 0o7777);
    // chmod g+s by a non-member who is not root drops the bit (setattr_prepare)
    if (cred.uid !== 0 && !inGroup(cred, v.gid)) m &= ~S_ISGID;
    v.mode = m;
  }
  // chown of a non-directory and a kill request drop set-id bits (should_remove_suid)
  if ((chown && !isDir(v.mode)) || inp.killSuidgid === true) {
    v.mode &= ~S_ISUID;
    if ((v.mode & 0o010) !== 0) v.mode &= ~S_ISGID;
  }
  if (inp.size !== undefined && inp.size !== v.size) {
    v.size = inp.size;
    v.dataVersion += 1n;
    ctx.dataChanged(ino);
    if (inp.mtime === undefined) v.mtime = { ...now };
  }
  if (inp.atime !== undefined) v.atime = inp.atime === "now" ? { ...now } : { ...inp.atime };
  if (inp.mtime !== undefined) v.mtime = inp.mtime === "now" ? { ...now } : { ...inp.mtime };
  v.ctime = inp.ctime !== undefined ? { ...inp.ctime } : { ...now };
}

/** One link less: a directory loses both of its own (its entry and "."); ctime moves. */
export function dropLink(ctx: OpCtx, ino: bigint, v: InodeValue, now: Timespec): void {
  assert(v.nlink > 0, "dropping a link of an unlinked inode");
  v.nlink = isDir(v.mode) ? 0 : v.nlink - 1;
  v.ctime = { ...now };
  if (v.nlink === 0) ctx.orphan(ino, true);
}
