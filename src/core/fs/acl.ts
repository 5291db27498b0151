/*
 * POSIX ACLs as values (upstream acl.c over the kernel's posix_acl.c): the xattr encoding,
 * its validation, and the algorithms Linux applies to ACLs. Nothing here reads or writes
 * items; acl_xattr.ts stores ACLs as the system.posix_acl_access / _default xattrs of an
 * inode and calls these; perm.ts asks aclPermits() during permission checks.
 *
 * Encoding (linux/posix_acl_xattr.h, what setfacl writes and getfacl reads): a u32 version
 * (2), then one 8-byte entry per ACL entry, {u16 tag, u16 perm, u32 id}, all little endian.
 * An ACL is valid as posix_acl_valid() decides: USER_OBJ, then USER entries, GROUP_OBJ,
 * GROUP entries, MASK (required when there are named entries), OTHER; perms rwx only.
 * Decoding then encoding gives the kernel's canonical form: the id of the unnamed entries is
 * ACL_UNDEFINED_ID whatever the caller wrote, so what is stored reads back as the kernel
 * would return it.
 *
 * The algorithms (permission walk, equivalence with a mode, chmod, inheritance at create)
 * follow posix_acl_permission, posix_acl_equiv_mode, posix_acl_chmod_masq and
 * posix_acl_create_masq entry for entry; the ACL_OTHER/mask bit arithmetic is theirs.
 */
import { FsError } from "../../util/errno.js";
import type { InodeValue } from "../format.js";
import { XATTR_VALUE_MAX } from "./format.js";
import type { Cred } from "./perm.js";

export const ACL_USER_OBJ = 0x01;
export const ACL_USER = 0x02;
export const ACL_GROUP_OBJ = 0x04;
export const ACL_GROUP = 0x08;
export const ACL_MASK = 0x10;
export const ACL_OTHER = 0x20;

export const ACL_READ = 4;
export const ACL_WRITE = 2;
export const ACL_EXECUTE = 1;
const ACL_PERM_BITS = ACL_READ | ACL_WRITE | ACL_EXECUTE;

/** posix_acl_xattr_header.a_version. */
export const ACL_XATTR_VERSION = 2;
/** The id stored for entries that name nobody (and an invalid uid/gid for named ones). */
export const ACL_UNDEFINED_ID = 0xffff_ffff;
const ACL_HEADER_BYTES = 4;
const ACL_ENTRY_BYTES = 8;
/** Entries one ACL holds at most: what the largest xattr value fits. */
export const ACL_MAX_ENTRIES = Math.floor((XATTR_VALUE_MAX - ACL_HEADER_BYTES) / ACL_ENTRY_BYTES);

const S_IRWXU = 0o700;
const S_IRWXG = 0o070;
const S_IRWXO = 0o007;
const S_IRWXUGO = 0o777;

export interface AclEntry {
  tag: number;
  perm: number;
  /** uid for ACL_USER, gid for ACL_GROUP, ACL_UNDEFINED_ID otherwise. */
  id: number;
}

/** A valid ACL, entries in the canonical order; never empty (no ACL is null). */
export type PosixAcl = readonly AclEntry[];

/**
 * The ACL an xattr value holds: null for a header without entries (setting it removes the
 * ACL). EOPNOTSUPP for another version, EINVAL for anything malformed or invalid.
 */
export function decodeAcl(value: Buffer): PosixAcl | null {
  if (value.length < ACL_HEADER_BYTES) throw new FsError("EINVAL", "ACL shorter than its header");
  if (value.readUInt32LE(0) !== ACL_XATTR_VERSION) {
    throw new FsError("EOPNOTSUPP", "ACL xattr version");
  }
  const bytes = value.length - ACL_HEADER_BYTES;
  if (bytes % ACL_ENTRY_BYTES !== 0) throw new FsError("EINVAL", "partial ACL entry");
  const count = bytes / ACL_ENTRY_BYTES;
  if (count === 0) return null;
  if (count > ACL_MAX_ENTRIES) throw new FsError("EINVAL", "too many ACL entries");
  const acl: AclEntry[] = [];
  for (let i = 0; i < count; i++) {
    const off = ACL_HEADER_BYTES + i * ACL_ENTRY_BYTES;
    const tag = value.readUInt16LE(off);
    const perm = value.readUInt16LE(off + 2);
    const named = tag === ACL_USER || tag === ACL_GROUP;
    const id = named ? value.readUInt32LE(off + 4) : ACL_UNDEFINED_ID;
    if (named && id === ACL_UNDEFINED_ID) throw new FsError("EINVAL", "ACL names an invalid id");
    acl.push({ tag, perm, id });
  }
  checkAclValid(acl);
  return acl;
}

/** The canonical xattr value of an ACL (what decodeAcl accepts and getxattr returns). */
export function encodeAcl(acl: PosixAcl): Buffer {
  const buf = Buffer.alloc(ACL_HEADER_BYTES + acl.length * ACL_ENTRY_BYTES);
  buf.writeUInt32LE(ACL_XATTR_VERSION, 0);
  acl.forEach((e, i) => {
    const off = ACL_HEADER_BYTES + i * ACL_ENTRY_BYTES;
    buf.writeUInt16LE(e.tag, off);
    buf.writeUInt16LE(e.perm, off + 2);
    buf.writeUInt32LE(e.tag === ACL_USER || e.tag === ACL_GROUP ? e.id : ACL_UNDEFINED_ID, off + 4);
  });
  return buf;
}

/** posix_acl_valid: the entry order and the required entries, as a little state machine. */
function checkAclValid(acl: PosixAcl): void {
  let state = ACL_USER_OBJ;
  let needsMask = false;
  const bad = (why: string): FsError => new FsError("EINVAL", `invalid ACL: ${why}`);
  for (const e of acl) {
    if ((e.perm & ~ACL_PERM_BITS) !== 0) throw bad("perm bits");
    switch (e.tag) {
      case ACL_USER_OBJ:
        if (state !== ACL_USER_OBJ) throw bad("USER_OBJ out of place");
        state = ACL_USER;
        break;
      case ACL_USER:
      case ACL_GROUP:
        if (state !== (e.tag === ACL_USER ? ACL_USER : ACL_GROUP)) throw bad("named entry out of place");
        needsMask = true;
        break;
      case ACL_GROUP_OBJ:
        if (state !== ACL_USER) throw bad("GROUP_OBJ out of place");
        state = ACL_GROUP;
        break;
      case ACL_MASK:
        if (state !== ACL_GROUP) throw bad("MASK out of place");
        state = ACL_OTHER;
        break;
      case ACL_OTHER:
        if (state !== ACL_OTHER && !(state === ACL_GROUP && !needsMask)) throw bad("OTHER");
        state = 0;
        break;
      default:
        throw bad(`tag 0x${e.tag.toString(16)}`);
    }
  }
  if (state !== 0) throw bad("missing entries");
}

/**
 * posix_acl_equiv_mode: the permission bits the ACL implies (the mask shows as the group
 * bits) and whether the ACL says no more than those bits (then it is stored as mode only).
 */
export function aclEquivMode(acl: PosixAcl, mode: number): { mode: number; equiv: boolean } {
  let bits = 0;
  let equiv = true;
  for (const e of acl) {
    const p = e.perm & S_IRWXO;
    if (e.tag === ACL_USER_OBJ) bits |= p << 6;
    else if (e.tag === ACL_GROUP_OBJ) bits |= p << 3;
    else if (e.tag === ACL_OTHER) bits |= p;
    else if (e.tag === ACL_MASK) {
      bits = (bits & ~S_IRWXG) | (p << 3);
      equiv = false;
    } else equiv = false;
  }
  return { mode: (mode & ~S_IRWXUGO) | bits, equiv };
}

/** posix_acl_chmod_masq: the owner, mask (or owning group) and other entries follow mode. */
export function aclChmod(acl: PosixAcl, mode: number): PosixAcl {
  const out = acl.map((e) => ({ ...e }));
  const mask = out.find((e) => e.tag === ACL_MASK) ?? out.find((e) => e.tag === ACL_GROUP_OBJ);
  if (mask === undefined) throw new FsError("EIO", "ACL without GROUP_OBJ");
  for (const e of out) {
    if (e.tag === ACL_USER_OBJ) e.perm = (mode & S_IRWXU) >> 6;
    else if (e.tag === ACL_OTHER) e.perm = mode & S_IRWXO;
  }
  mask.perm = (mode & S_IRWXG) >> 3;
  return out;
}

/**
 * posix_acl_create_masq: a new inode's access ACL from its directory's default ACL and the
 * create mode (each class limited by the mode, the mode limited by the ACL); equiv when the
 * result is plain mode bits and no access ACL needs storing.
 */
export function aclCreateMasq(def: PosixAcl, mode: number):
  { acl: PosixAcl; mode: number; equiv: boolean } {
  const acl = def.map((e) => ({ ...e }));
  let m = mode;
  let equiv = true;
  for (const e of acl) {
    if (e.tag === ACL_USER_OBJ) {
      e.perm &= (m >> 6) & S_IRWXO;
      m &= (e.perm << 6) | ~S_IRWXU;
    } else if (e.tag === ACL_OTHER) {
      e.perm &= m & S_IRWXO;
      m &= e.perm | ~S_IRWXO;
    } else if (e.tag !== ACL_GROUP_OBJ) {
      equiv = false; // named entries and the mask
    }
  }
  const mask = acl.find((e) => e.tag === ACL_MASK) ?? acl.find((e) => e.tag === ACL_GROUP_OBJ);
  if (mask === undefined) throw new FsError("EIO", "default ACL without GROUP_OBJ");
  mask.perm &= (m >> 3) & S_IRWXO;
  m &= (mask.perm << 3) | ~S_IRWXG;
  return { acl, mode: (mode & ~S_IRWXUGO) | (m & S_IRWXUGO), equiv };
}

/**
 * posix_acl_permission: may cred have every bit of want (MAY_READ/WRITE/EXEC, the same
 * values as the ACL perms) on inode v with access ACL acl. The owner entry applies to the
 * owner; a named user's entry, and any matching group entry, are limited by the mask; a
 * caller in some matching group that grants too little is refused without looking at other.
 */
export function aclPermits(acl: PosixAcl, cred: Cred, v: InodeValue, want: number): boolean {
  const w = want & ACL_PERM_BITS;
  const member = (gid: number): boolean => cred.gid === gid || cred.groups.includes(gid);
  const mask = acl.find((e) => e.tag === ACL_MASK)?.perm ?? ACL_PERM_BITS;
  let groupFound = false;
  for (const e of acl) {
    switch (e.tag) {
      case ACL_USER_OBJ:
        if (cred.uid === v.uid) return (e.perm & w) === w;
        break;
      case ACL_USER:
        if (cred.uid === e.id) return (e.perm & mask & w) === w;
        break;
      case ACL_GROUP_OBJ:
      case ACL_GROUP:
        if (member(e.tag === ACL_GROUP ? e.id : v.gid)) {
          groupFound = true;
          if ((e.perm & w) === w) return (e.perm & mask & w) === w;
        }
        break;
      case ACL_OTHER:
        return !groupFound && (e.perm & w) === w;
      default:
        break;
    }
  }
  return false;
}
