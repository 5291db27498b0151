/*
 * The POSIX ACLs of inodes (upstream acl.c): system.posix_acl_access and
 * system.posix_acl_default are stored as ordinary xattr items (xattr.ts) holding the
 * canonical encoding (acl.ts). This file keeps them and the mode in step, as Linux does:
 *  - setting an access ACL sets the mode's permission bits from it (the mask shows as the
 *    group bits) and stores nothing when the ACL says no more than the mode
 *    (posix_acl_update_mode); a caller outside the owning group who is not root loses
 *    S_ISGID on the way;
 *  - chmod rewrites the access ACL's owner, mask (or owning group) and other entries;
 *  - a new inode in a directory with a default ACL gets access = default masked by the
 *    create mode, a new directory also gets the default ACL, and the umask applies only
 *    when the directory has no default ACL (posix_acl_create);
 *  - permission checks read the access ACL through OpCtx.accessAcl (AclHooks.access).
 * Only the owner or root may set or remove an ACL (EPERM); a default ACL is for directories
 * only (EACCES, as ext4 and xfs answer). With the noacl mount option the two names are
 * EOPNOTSUPP, new inodes always get the umask, and stored ACLs are ignored (upstream's
 * !IS_POSIXACL).
 *
 * Who calls it: ScoutFs routes the two xattr names here, installs an AclOps as its runner's
 * AclHooks when ACLs are on, and calls inherit() inside its create operations.
 */
import { FsError, isFsError } from "../../util/errno.js";
import type { InodeValue, Timespec } from "../format.js";
import { LockMode } from "../lock_msg.js";
import { aclChmod, aclCreateMasq, aclEquivMode, decodeAcl, encodeAcl, type PosixAcl } from "./acl.js";
import { isDir, isLnk, S_ISGID, XATTR_VALUE_MAX } from "./format.js";
import { checkNotRetained } from "./inode.js";
import { type AclHooks, inos, type OpCtx, type OpRunner } from "./op.js";
import { type Cred, inGroup, ownerOrRoot } from "./perm.js";
import { XATTR_CREATE, XATTR_REPLACE, xattrGetLocked, xattrSetLocked } from "./xattr.js";

export const ACL_ACCESS_XATTR = Buffer.from("system.posix_acl_access");
export const ACL_DEFAULT_XATTR = Buffer.from("system.posix_acl_default");
/** The permission bits a umask can clear (current_umask() is within S_IRWXUGO). */
const UMASK_BITS = 0o777;

export type AclType = "access" | "default";

/** Which ACL an xattr name is, or null for every other name. */
export function aclTypeOf(name: Buffer): AclType | null {
  if (name.equals(ACL_ACCESS_XATTR)) return "access";
  if (name.equals(ACL_DEFAULT_XATTR)) return "default";
  return null;
}

function xattrName(type: AclType): Buffer {
  return type === "access" ? ACL_ACCESS_XATTR : ACL_DEFAULT_XATTR;
}

/** ino's stored ACL of that type, or null; a stored value that does not decode is EIO. */
export async function loadAcl(ctx: OpCtx, ino: bigint, type: AclType): Promise<PosixAcl | null> {
  const raw = await xattrGetLocked(ctx, ino, xattrName(type));
  if (raw === null) return null;
  try {
    return decodeAcl(raw);
  } catch (e) {
    if (!isFsError(e)) throw e;
    throw new FsError("EIO", `stored ${type} ACL of inode ${ino}: ${e.message}`);
  }
}

export class AclOps implements AclHooks {
  constructor(private readonly runner: OpRunner, private readonly now: () => Timespec,
    readonly enabled: boolean) {}

  access(ctx: OpCtx, ino: bigint): Promise<PosixAcl | null> {
    return loadAcl(ctx, ino, "access");
  }

  async chmod(ctx: OpCtx, ino: bigint, v: InodeValue): Promise<void> {
    if (isLnk(v.mode)) return;
    const acl = await loadAcl(ctx, ino, "access");
    if (acl !== null) await xattrSetLocked(ctx, ino, v, ACL_ACCESS_XATTR, encodeAcl(aclChmod(acl, v.mode)));
  }

  /** getxattr of an ACL name: the canonical encoding, ENODATA when there is none. */
  async get(ino: bigint, type: AclType): Promise<Buffer> {
    this.checkEnabled();
    return this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      await ctx.mustInode(ino);
      const acl = await loadAcl(ctx, ino, type);
      if (acl === null) throw new FsError("ENODATA");
      return encodeAcl(acl);
    });
  }

  /**
   * setxattr of an ACL name. The xattr flags are checked but, as for Linux's ACL handlers,
   * not applied; a value without entries removes the ACL.
   */
  async set(ino: bigint, type: AclType, value: Buffer, flags: number, cred: Cred): Promise<void> {
    this.checkEnabled();
    if ((flags & ~(XATTR_CREATE | XATTR_REPLACE)) !== 0) throw new FsError("EINVAL");
    if (value.length > XATTR_VALUE_MAX) throw new FsError("E2BIG");
    const acl = decodeAcl(value);
    await this.change(ino, cred, (ctx, v) => this.store(ctx, ino, v, type, acl, cred));
  }

  /** removexattr of an ACL name: succeeds when there was none (Linux's set_acl(NULL)). */
  async remove(ino: bigint, type: AclType, cred: Cred): Promise<void> {
    this.checkEnabled();
    await this.change(ino, cred, (ctx, v) => this.store(ctx, ino, v, type, null, cred));
  }

  /**
   * posix_acl_create for the new inode ino (v, already given to ctx.newInode) made in dirIno:
   * the umask without a default ACL, else the inherited ACLs and the masked mode.
   */
  async inherit(ctx: OpCtx, dirIno: bigint, ino: bigint, v: InodeValue, umask: number):
    Promise<void> {
    if (isLnk(v.mode)) return;
    const def = this.enabled ? await loadAcl(ctx, dirIno, "default") : null;
    if (def === null) {
      v.mode &= ~(umask & UMASK_BITS);
      return;
    }
    if (isDir(v.mode)) await xattrSetLocked(ctx, ino, v, ACL_DEFAULT_XATTR, encodeAcl(def));
    const r = aclCreateMasq(def, v.mode);
    v.mode = r.mode;
    if (!r.equiv) await xattrSetLocked(ctx, ino, v, ACL_ACCESS_XATTR, encodeAcl(r.acl));
  }

  private checkEnabled(): void {
    if (!this.enabled) throw new FsError("EOPNOTSUPP", "mounted with noacl");
  }

  /** One ACL change of ino by its owner (or root); ctime moves when anything changed. */
  private async change(ino: bigint, cred: Cred,
    fn: (ctx: OpCtx, v: InodeValue) => Promise<boolean>): Promise<void> {
    const now = this.now();
    await this.runner.run({ inos: inos([ino, LockMode.WRITE]) }, async (ctx) => {
      const v = await ctx.mustInode(ino, LockMode.WRITE);
      if (!ownerOrRoot(cred, v)) throw new FsError("EPERM", "only the owner sets ACLs");
      if (isLnk(v.mode)) throw new FsError("EOPNOTSUPP", "ACL on a symlink");
      checkNotRetained(v);
      if (await fn(ctx, v)) {
        ctx.dirty(ino);
        v.ctime = { ...now };
      }
    });
  }

  /**
   * Stores (or with null removes) an ACL of v; true if the inode changed: any set does (the
   * mode is rewritten even when nothing is stored), a removal only of an existing ACL.
   */
  private async store(ctx: OpCtx, ino: bigint, v: InodeValue, type: AclType,
    acl: PosixAcl | null, cred: Cred): Promise<boolean> {
    let stored = acl;
    if (type === "default" && !isDir(v.mode)) {
      if (acl !== null) throw new FsError("EACCES", "default ACL on a non-directory");
      return false;
    }
    if (type === "access" && acl !== null) {
      const eq = aclEquivMode(acl, v.mode);
      if (eq.equiv) stored = null;
      v.mode = eq.mode;
      if (cred.uid !== 0 && !inGroup(cred, v.gid)) v.mode &= ~S_ISGID;
    }
    const existed = await xattrSetLocked(ctx, ino, v, xattrName(type),
      stored === null ? null : encodeAcl(stored));
    return existed || acl !== null;
  }
}
