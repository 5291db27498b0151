/*
 * Extended attributes (upstream xattr.c): each xattr is a run of XATTR items keyed
 * (ino, crc32c(name), xattr id, part nr); part 0 starts with {val_len, name_len} and the
 * name, the value continues across parts of at most BTREE_MAX_VAL_LEN bytes. Names hashing
 * alike are told apart by comparing part 0's name; the id (from the inode's next_xattr_id)
 * keeps colliding names' items apart.
 *
 * Namespaces as Linux: user. (regular files and directories, checked against the mode
 * bits), trusted. (root only), security., system., and scoutfs. (tags, root only to set;
 * the .hide. tag hides a name from listxattr). Tag side effects (.srch., .totl., .indx.)
 * are later work; the names are validated now so that no unparseable tag is ever stored.
 */
import { FsError } from "../../util/errno.js";
import type { InodeValue, Timespec } from "../format.js";
import { keyFields, U64_MAX, xattrKey } from "../key.js";
import { LockMode } from "../lock_msg.js";
import {
  decodeXattrHeader, decodeXattrParts, encodeXattrParts, isDir, isReg, XATTR_NAME_MAX,
  XATTR_VALUE_MAX, xattrNameHash, S_ISVTX,
} from "./format.js";
import type { PosixAcl } from "./acl.js";
import { checkNotRetained } from "./inode.js";
import { inos, type OpCtx, type OpRunner } from "./op.js";
import { checkAccess, type Cred, MAY_READ, MAY_WRITE } from "./perm.js";

export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;
export type XattrSetFlags = number;
/** Bytes of names listxattr returns at most (Linux XATTR_LIST_MAX). */
export const XATTR_LIST_MAX = 65536;
/** Xattrs sharing one name hash walked at most. */
const XATTR_HASH_COLLISIONS_MAX = 1024;

type Namespace = "user" | "trusted" | "security" | "system" | "scoutfs";
const NAMESPACES: Namespace[] = ["user", "trusted", "security", "system", "scoutfs"];
const SCOUTFS_TAGS = ["hide.", "indx.", "srch.", "totl."];

/** The name's namespace, or EOPNOTSUPP; ERANGE for empty or over-long names (Linux). */
export function xattrNamespace(name: Buffer): Namespace {
  if (name.length === 0 || name.length > XATTR_NAME_MAX) throw new FsError("ERANGE");
  if (name.includes(0)) throw new FsError("EINVAL", "NUL in xattr name");
  const s = name.toString("latin1");
  const ns = NAMESPACES.find((n) => s.startsWith(`${n}.`) && s.length > n.length + 1);
  if (ns === undefined) throw new FsError("EOPNOTSUPP", "xattr namespace");
  return ns;
}

/** The scoutfs. tags of a name: consecutive known 5-byte tags, each at most once. */
export function scoutfsTags(name: Buffer): Set<string> {
  let s = name.toString("latin1").slice("scoutfs.".length);
  const tags = new Set<string>();
  for (let i = 0; i < SCOUTFS_TAGS.length; i++) {
    const t = SCOUTFS_TAGS.find((x) => s.startsWith(x));
    if (t === undefined || tags.has(t)) break;
    tags.add(t);
    s = s.slice(t.length);
  }
  if (tags.size === 0) throw new FsError("EINVAL", "scoutfs. xattr without a known tag");
  return tags;
}

interface Found {
  id: bigint;
  hash: bigint;
  parts: number;
}

export class XattrOps {
  constructor(private readonly runner: OpRunner, private readonly now: () => Timespec) {}

  async get(ino: bigint, name: Buffer, cred: Cred): Promise<Buffer> {
    const ns = xattrNamespace(name);
    return this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      const v = await ctx.mustInode(ino);
      checkPermission(ns, v, cred, MAY_READ, await ctx.accessAcl(ino, v, cred));
      const f = await find(ctx, ino, name);
      if (f === null) throw new FsError("ENODATA");
      return (await readParts(ctx, ino, f)).value;
    });
  }

  async set(ino: bigint, name: Buffer, value: Buffer, flags: XattrSetFlags, cred: Cred):
    Promise<void> {
    const ns = xattrNamespace(name);
    if (value.length > XATTR_VALUE_MAX) throw new FsError("E2BIG");
    if ((flags & ~(XATTR_CREATE | XATTR_REPLACE)) !== 0) throw new FsError("EINVAL");
    if (ns === "scoutfs") scoutfsTags(name);
    const now = this.now();
    await this.runner.run({ inos: inos([ino, LockMode.WRITE]) }, async (ctx) => {
      const v = await ctx.mustInode(ino, LockMode.WRITE);
      checkPermission(ns, v, cred, MAY_WRITE, await ctx.accessAcl(ino, v, cred));
      const f = await find(ctx, ino, name);
      if (f !== null && (flags & XATTR_CREATE) !== 0) throw new FsError("EEXIST");
      if (f === null && (flags & XATTR_REPLACE) !== 0) throw new FsError("ENODATA");
      ctx.dirty(ino);
      if (f !== null) deleteParts(ctx, ino, f);
      const id = v.nextXattrId++;
      const hash = xattrNameHash(name);
      encodeXattrParts({ name, value }).forEach((p, i) => ctx.put(xattrKey(ino, hash, id, i), p, ino));
      v.ctime = { ...now };
    });
  }

  async remove(ino: bigint, name: Buffer, cred: Cred): Promise<void> {
    const ns = xattrNamespace(name);
    const now = this.now();
    await this.runner.run({ inos: inos([ino, LockMode.WRITE]) }, async (ctx) => {
      const v = await ctx.mustInode(ino, LockMode.WRITE);
      checkPermission(ns, v, cred, MAY_WRITE, await ctx.accessAcl(ino, v, cred));
      const f = await find(ctx, ino, name);
      if (f === null) throw new FsError("ENODATA");
      ctx.dirty(ino);
      deleteParts(ctx, ino, f);
      v.ctime = { ...now };
    });
  }

  /** The names cred may see (trusted. for root only, never scoutfs. names with .hide.). */
  async list(ino: bigint, cred: Cred): Promise<Buffer[]> {
    return this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      await ctx.mustInode(ino);
      const names: Buffer[] = [];
      let bytes = 0;
      let key = xattrKey(ino, 0n, 0n, 0);
      const end = xattrKey(ino, U64_MAX, U64_MAX, 255);
      for (;;) {
        const it = await ctx.next(key, end, ino);
        if (it === null) return names;
        const k = keyFields(it.key);
        if (k.fourth === 0) {
          const name = decodeXattrHeader(it.val).name;
          if (visible(name, cred)) {
            bytes += name.length + 1;
            if (bytes > XATTR_LIST_MAX) throw new FsError("E2BIG");
            names.push(name);
          }
        }
        if (k.third === U64_MAX) return names;
        key = xattrKey(ino, k.second, k.third + 1n, 0);
      }
    });
  }
}

function visible(name: Buffer, cred: Cred): boolean {
  const s = name.toString("latin1");
  if (s.startsWith("trusted.") && cred.uid !== 0) return false;
  return !(s.startsWith("scoutfs.") && scoutfsTags(name).has("hide."));
}

/** xattr_permission: namespace rules, then the mode bits (and ACL) for user. and writes. */
function checkPermission(ns: Namespace, v: InodeValue, cred: Cred, mask: number,
  acl: PosixAcl | null): void {
  if (ns === "trusted" || (ns === "scoutfs" && mask === MAY_WRITE)) {
    if (cred.uid !== 0) throw new FsError("EPERM");
    return;
  }
  if (ns === "user") {
    if (!isReg(v.mode) && !isDir(v.mode)) throw new FsError(mask === MAY_WRITE ? "EPERM" : "ENODATA");
    if (isDir(v.mode) && (v.mode & S_ISVTX) !== 0 && mask === MAY_WRITE && cred.uid !== v.uid &&
      cred.uid !== 0) {
      throw new FsError("EPERM");
    }
    if (mask === MAY_WRITE) checkNotRetained(v);
  }
  if (ns === "user" || mask === MAY_WRITE) checkAccess(cred, v, mask, acl);
}

/** The xattr named `name` of ino: its id and part count, or null. */
async function find(ctx: OpCtx, ino: bigint, name: Buffer): Promise<Found | null> {
  const hash = xattrNameHash(name);
  const end = xattrKey(ino, hash, U64_MAX, 255);
  let key = xattrKey(ino, hash, 0n, 0);
  for (let i = 0; i < XATTR_HASH_COLLISIONS_MAX; i++) {
    const it = await ctx.next(key, end, ino);
    if (it === null) return null;
    const k = keyFields(it.key);
    if (k.fourth === 0) {
      const h = decodeXattrHeader(it.val);
      if (h.name.equals(name)) return { id: k.third, hash, parts: h.parts };
    }
    if (k.third === U64_MAX) return null;
    key = xattrKey(ino, hash, k.third + 1n, 0);
  }
  throw new FsError("EIO", "too many xattr hash collisions");
}

async function readParts(ctx: OpCtx, ino: bigint, f: Found): Promise<{ name: Buffer;
  value: Buffer }> {
  const parts: Buffer[] = [];
  for (let p = 0; p < f.parts; p++) {
    const part = await ctx.lookup(xattrKey(ino, f.hash, f.id, p), ino);
    if (part === null) throw new FsError("EIO", `xattr part ${p} missing`);
    parts.push(part);
  }
  return decodeXattrParts(parts);
}

function deleteParts(ctx: OpCtx, ino: bigint, f: Found): void {
  for (let p = 0; p < f.parts; p++) ctx.del(xattrKey(ino, f.hash, f.id, p), ino);
}

/** The value of ino's xattr `name`, or null, inside an operation (acl_xattr.ts). */
export async function xattrGetLocked(ctx: OpCtx, ino: bigint, name: Buffer):
  Promise<Buffer | null> {
  const f = await find(ctx, ino, name);
  return f === null ? null : (await readParts(ctx, ino, f)).value;
}

/**
 * Sets (value) or deletes (null) ino's xattr `name` inside an operation; v is ino's value
 * read in it. True if the xattr existed before. The caller moves ctime.
 */
export async function xattrSetLocked(ctx: OpCtx, ino: bigint, v: InodeValue, name: Buffer,
  value: Buffer | null): Promise<boolean> {
  const f = await find(ctx, ino, name);
  if (f === null && value === null) return false;
  ctx.dirty(ino);
  if (f !== null) deleteParts(ctx, ino, f);
  if (value !== null) {
    const id = v.nextXattrId++;
    const hash = xattrNameHash(name);
    encodeXattrParts({ name, value }).forEach((p, i) => ctx.put(xattrKey(ino, hash, id, i), p, ino));
  }
  return f !== null;
}
