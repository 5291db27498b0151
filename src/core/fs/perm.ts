/*
 * Permission checks as the calling user (upstream relies on the kernel's generic_permission,
 * may_delete, inode_owner_or_capable and setattr_prepare; in userspace we do them ourselves).
 *
 * The caller is a Cred: fsuid, fsgid and supplementary groups. uid 0 has the capabilities
 * Linux gives root: it passes read/write checks always and execute checks when any execute
 * bit is set (or the inode is a directory), may chown, and passes sticky-directory checks.
 * An inode's access ACL, when the caller passes it, decides for non-owners (acl.ts).
 */
import { FsError } from "../../util/errno.js";
import type { InodeValue } from "../format.js";
import { aclPermits, type PosixAcl } from "./acl.js";
import { isDir, S_ISVTX } from "./format.js";

export interface Cred {
  uid: number;
  gid: number;
  /** Supplementary groups. */
  groups: readonly number[];
}

export const ROOT_CRED: Cred = { uid: 0, gid: 0, groups: [] };

export const MAY_EXEC = 1;
export const MAY_WRITE = 2;
export const MAY_READ = 4;

export function inGroup(cred: Cred, gid: number): boolean {
  return cred.gid === gid || cred.groups.includes(gid);
}

/** The rwx bits that apply to cred: owner's, else group's, else others' (as Linux). */
function classBits(cred: Cred, ino: InodeValue): number {
  if (cred.uid === ino.uid) return (ino.mode >>> 6) & 7;
  if (inGroup(cred, ino.gid)) return (ino.mode >>> 3) & 7;
  return ino.mode & 7;
}

/**
 * EACCES unless cred may access ino for every bit of mask (MAY_*). acl is ino's access ACL
 * (OpCtx.accessAcl loads it only when aclCanMatter): as Linux's acl_permission_check, it
 * decides for everyone but the owner while the group bits (the ACL's mask) are not all 0.
 */
export function checkAccess(cred: Cred, ino: InodeValue, mask: number,
  acl: PosixAcl | null = null): void {
  if (cred.uid === 0) {
    // root: everything except executing a file nobody may execute
    if ((mask & MAY_EXEC) === 0 || isDir(ino.mode) || (ino.mode & 0o111) !== 0) return;
    throw new FsError("EACCES");
  }
  if (acl !== null && aclCanMatter(cred, ino)) {
    if (!aclPermits(acl, cred, ino, mask)) throw new FsError("EACCES");
    return;
  }
  if ((classBits(cred, ino) & mask) !== mask) throw new FsError("EACCES");
}

/** True when an access ACL could change cred's permission check on ino (else mode bits). */
export function aclCanMatter(cred: Cred, ino: InodeValue): boolean {
  return cred.uid !== 0 && cred.uid !== ino.uid && (ino.mode & 0o070) !== 0;
}

/** True if cred owns ino or is root (inode_owner_or_capable). */
export function ownerOrRoot(cred: Cred, ino: InodeValue): boolean {
  return cred.uid === 0 || cred.uid === ino.uid;
}

/**
 * May cred remove or rename away `victim` from `dir`: write and search permission on the
 * directory, and in a sticky directory ownership of the entry or the directory (EPERM).
 */
export function checkDelete(cred: Cred, dir: InodeValue, victim: InodeValue,
  dirAcl: PosixAcl | null = null): void {
  checkAccess(cred, dir, MAY_WRITE | MAY_EXEC, dirAcl);
  if ((dir.mode & S_ISVTX) !== 0 && cred.uid !== 0 && cred.uid !== victim.uid &&
    cred.uid !== dir.uid) {
    throw new FsError("EPERM", "sticky directory");
  }
}
