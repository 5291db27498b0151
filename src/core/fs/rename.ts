/*
 * rename and renameat2 (upstream dir.c scoutfs_rename2): moving an entry, replacing an
 * existing target (RENAME_NOREPLACE refuses), or swapping two entries (RENAME_EXCHANGE).
 *
 * Locks: WRITE on the groups of both directories and both inodes; a rename between two
 * directories also takes the global rename lock (WRITE), which serializes every topology
 * change of the cluster so that the ancestry check (a directory may not move under itself)
 * reads a tree nobody else is reshaping. The check walks parent backrefs from the new
 * directory to the root under READ locks of the ancestors' groups; the runner retries the
 * operation with those locks when it meets an unlocked group.
 *
 * Entries get new readdir positions in their new directory (positions are never reused);
 * directory sizes follow name lengths; nlinks follow POSIX directory counting.
 */
import { FsError } from "../../util/errno.js";
import type { InodeValue, Timespec } from "../format.js";
import { LockMode } from "../lock_msg.js";
import { ROOT_INO } from "../mkfs.js";
import {
  addEntry, checkName, dirEmpty, findEntry, isDot, isDotDot, parentOf, removeEntry,
} from "./dirent.js";
import { isDir, type DirentValue } from "./format.js";
import { checkNotRetained, dropLink } from "./inode.js";
import { inos, type OpCtx, type OpRunner } from "./op.js";
import type { PosixAcl } from "./acl.js";
import { checkAccess, checkDelete, type Cred, MAY_WRITE } from "./perm.js";

export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
export const RENAME_WHITEOUT = 4;
/** Directory levels the ancestry walk climbs at most (a deeper tree is corrupt: ELOOP). */
export const RENAME_ANCESTRY_MAX_DEPTH = 65_536;

export interface RenameArgs {
  oldParent: bigint;
  oldName: Buffer;
  newParent: bigint;
  newName: Buffer;
  flags: number;
  cred: Cred;
  now: Timespec;
  linkMax: number;
}

interface Side {
  dirIno: bigint;
  dir: InodeValue;
  d: DirentValue;
  v: InodeValue;
}

/** Renames; returns an inode whose last link went (the replaced target) for deletion. */
export async function rename(runner: OpRunner, a: RenameArgs): Promise<bigint | null> {
  checkArgs(a);
  const cross = a.oldParent !== a.newParent;
  const spec = inos([a.oldParent, LockMode.WRITE], [a.newParent, LockMode.WRITE]);
  return runner.run({ inos: spec, rename: cross }, async (ctx) => {
    const oldDir = await dirInode(ctx, a.oldParent);
    const newDir = a.newParent === a.oldParent ? oldDir : await dirInode(ctx, a.newParent);
    const od = await findEntry(ctx, a.oldParent, a.oldName);
    if (od === null) throw new FsError("ENOENT");
    const nd = await findEntry(ctx, a.newParent, a.newName);
    const src: Side = { dirIno: a.oldParent, dir: oldDir, d: od,
      v: await ctx.mustInode(od.ino, LockMode.WRITE) };
    const tgt: Side | null = nd === null ? null : { dirIno: a.newParent, dir: newDir, d: nd,
      v: await ctx.mustInode(nd.ino, LockMode.WRITE) };
    await checkPerms(ctx, a, src, tgt, newDir);
    if ((a.flags & RENAME_EXCHANGE) !== 0) {
      if (tgt === null) throw new FsError("ENOENT");
      if (tgt.d.ino === src.d.ino) return null;
      await checkAncestry(ctx, a, src, tgt);
      exchange(ctx, a, src, tgt);
      return null;
    }
    if (tgt !== null && (a.flags & RENAME_NOREPLACE) !== 0) throw new FsError("EEXIST");
    // both names are links to one inode: POSIX says do nothing
    if (tgt !== null && tgt.d.ino === src.d.ino) return null;
    await checkReplace(ctx, a, src, tgt, newDir);
    return move(ctx, a, src, tgt, newDir);
  });
}

function checkArgs(a: RenameArgs): void {
  if ((a.flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) !== 0 ||
    (a.flags & RENAME_WHITEOUT) !== 0 ||
    (a.flags & (RENAME_NOREPLACE | RENAME_EXCHANGE)) === (RENAME_NOREPLACE | RENAME_EXCHANGE)) {
    throw new FsError("EINVAL", "rename flags");
  }
  for (const n of [a.oldName, a.newName]) {
    if (isDot(n) || isDotDot(n)) throw new FsError(n === a.oldName ? "EBUSY" : "EINVAL");
    checkName(n);
  }
}

async function dirInode(ctx: OpCtx, ino: bigint): Promise<InodeValue> {
  const v = await ctx.mustInode(ino, LockMode.WRITE);
  if (!isDir(v.mode)) throw new FsError("ENOTDIR");
  return v;
}

/** Deleting from the old directory, creating in the new, and moving directories' "..". */
async function checkPerms(ctx: OpCtx, a: RenameArgs, src: Side, tgt: Side | null,
  newDir: InodeValue): Promise<void> {
  const acl = (ino: bigint, v: InodeValue): Promise<PosixAcl | null> =>
    ctx.accessAcl(ino, v, a.cred);
  checkDelete(a.cred, src.dir, src.v, await acl(a.oldParent, src.dir));
  const newDirAcl = await acl(a.newParent, newDir);
  if (tgt !== null) checkDelete(a.cred, newDir, tgt.v, newDirAcl);
  else checkAccess(a.cred, newDir, MAY_WRITE, newDirAcl);
  // a directory changing parents rewrites its "..": needs write permission on it
  if (a.oldParent !== a.newParent) {
    if (isDir(src.v.mode)) checkAccess(a.cred, src.v, MAY_WRITE, await acl(src.d.ino, src.v));
    if (tgt !== null && (a.flags & RENAME_EXCHANGE) !== 0 && isDir(tgt.v.mode)) {
      checkAccess(a.cred, tgt.v, MAY_WRITE, await acl(tgt.d.ino, tgt.v));
    }
  }
  checkNotRetained(src.v);
  if (tgt !== null) checkNotRetained(tgt.v);
}

/** Type and emptiness rules of replacing a target, and the ancestry and link limits. */
async function checkReplace(ctx: OpCtx, a: RenameArgs, src: Side, tgt: Side | null,
  newDir: InodeValue): Promise<void> {
  const srcDir = isDir(src.v.mode);
  if (tgt !== null) {
    if (srcDir && !isDir(tgt.v.mode)) throw new FsError("ENOTDIR");
    if (!srcDir && isDir(tgt.v.mode)) throw new FsError("EISDIR");
    if (isDir(tgt.v.mode) && !(await dirEmpty(ctx, tgt.d.ino))) throw new FsError("ENOTEMPTY");
  }
  await checkAncestry(ctx, a, src, tgt);
  if (srcDir && a.oldParent !== a.newParent && tgt === null && newDir.nlink >= a.linkMax) {
    throw new FsError("EMLINK");
  }
}

/**
 * EINVAL if a directory would move under itself: the new parent (for an exchange, also the
 * old parent, which receives the target) must not have the moved directory as an ancestor.
 */
async function checkAncestry(ctx: OpCtx, a: RenameArgs, src: Side, tgt: Side | null):
  Promise<void> {
  if (a.oldParent === a.newParent) return;
  if (isDir(src.v.mode) && await isAncestor(ctx, src.d.ino, a.newParent)) {
    throw new FsError("EINVAL", "moving a directory under itself");
  }
  if (tgt !== null && (a.flags & RENAME_EXCHANGE) !== 0 && isDir(tgt.v.mode) &&
    await isAncestor(ctx, tgt.d.ino, a.oldParent)) {
    throw new FsError("EINVAL", "moving a directory under itself");
  }
  // replacing an ancestor of the source: it cannot be empty, POSIX's answer is ENOTEMPTY
  if (tgt !== null && isDir(tgt.v.mode) && await isAncestor(ctx, tgt.d.ino, a.oldParent)) {
    throw new FsError("ENOTEMPTY");
  }
}

/** True if `anc` is `dir` or one of its ancestors (walking parent backrefs). */
async function isAncestor(ctx: OpCtx, anc: bigint, dir: bigint): Promise<boolean> {
  let d = dir;
  for (let depth = 0; depth < RENAME_ANCESTRY_MAX_DEPTH; depth++) {
    if (d === anc) return true;
    if (d === ROOT_INO) return false;
    ctx.need(d, LockMode.READ);
    const p = await parentOf(ctx, d);
    if (p === d) return false;
    d = p;
  }
  throw new FsError("ELOOP", "directory ancestry too deep");
}

/** Moves src to the new name, replacing tgt if present; returns tgt if its last link went. */
function move(ctx: OpCtx, a: RenameArgs, src: Side, tgt: Side | null, newDir: InodeValue):
  bigint | null {
  const now = a.now;
  const srcDir = isDir(src.v.mode);
  ctx.dirty(a.oldParent);
  ctx.dirty(a.newParent);
  ctx.dirty(src.d.ino);
  let gone: bigint | null = null;
  if (tgt !== null) {
    ctx.dirty(tgt.d.ino);
    removeEntry(ctx, a.newParent, newDir, tgt.d);
    dropLink(ctx, tgt.d.ino, tgt.v, now);
    if (isDir(tgt.v.mode)) newDir.nlink--;
    if (tgt.v.nlink === 0) gone = tgt.d.ino;
  }
  removeEntry(ctx, a.oldParent, src.dir, src.d);
  addEntry(ctx, a.newParent, newDir, a.newName, src.d.ino, src.d.type);
  if (srcDir && a.oldParent !== a.newParent) {
    src.dir.nlink--;
    newDir.nlink++;
  }
  src.v.ctime = { ...now };
  for (const d of [src.dir, newDir]) {
    d.mtime = { ...now };
    d.ctime = { ...now };
  }
  return gone;
}

/** Swaps the inodes two names refer to; directories moving between parents move nlinks. */
function exchange(ctx: OpCtx, a: RenameArgs, src: Side, tgt: Side): void {
  const now = a.now;
  for (const ino of [a.oldParent, a.newParent, src.d.ino, tgt.d.ino]) ctx.dirty(ino);
  removeEntry(ctx, a.oldParent, src.dir, src.d);
  removeEntry(ctx, a.newParent, tgt.dir, tgt.d);
  addEntry(ctx, a.newParent, tgt.dir, a.newName, src.d.ino, src.d.type);
  addEntry(ctx, a.oldParent, src.dir, a.oldName, tgt.d.ino, tgt.d.type);
  if (a.oldParent !== a.newParent) {
    const moved = (isDir(src.v.mode) ? 1 : 0) - (isDir(tgt.v.mode) ? 1 : 0);
    src.dir.nlink -= moved;
    tgt.dir.nlink += moved;
  }
  for (const v of [src.v, tgt.v]) v.ctime = { ...now };
  for (const d of [src.dir, tgt.dir]) {
    d.mtime = { ...now };
    d.ctime = { ...now };
  }
}
