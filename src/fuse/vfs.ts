/*
 * The scoutfs mount as the kernel sees it: FuseOps over the core's ScoutFs (src/core/fs).
 *
 * One method per FUSE request, each a thin translation: node ids are scoutfs inode numbers
 * (the root is ino 1 = FUSE_ROOT_ID), names stay bytes, the caller's credentials come from
 * the request header plus its supplementary groups (/proc/<pid>/status, cached briefly), and
 * every failure is an FsError the session turns into an errno reply.
 *
 * Lookup counting: the core counts the kernel's references (ScoutFs.refs) for its orphan
 * rules; this layer adds the bookkeeping of what the kernel caches (vfs_kcache.ts) so that a
 * revoked cluster lock invalidates the kernel's attributes, pages and dentries it covered.
 * Because of that the validity times we reply with are long (ENTRY_VALID_MS).
 *
 * Permissions are checked twice on purpose: the kernel checks modes first
 * (default_permissions, cheap and cached), the core checks again as the caller, so a change
 * made by another mount is enforced even before the kernel's copy of the mode is refreshed.
 * With the acl option the session negotiates FUSE_POSIX_ACL, so the kernel also checks the
 * ACLs it caches from GETXATTR, and DONT_MASK: creates pass the caller's umask to the core,
 * which applies it only where no default ACL is inherited.
 */

import { readFile } from "node:fs/promises";
import { GETATTR_MANY_GROUPS, type InodeAttr, type ScoutFs } from "../core/fs/fs.js";
import type { Cred } from "../core/fs/perm.js";
import type { SetattrIn } from "../core/fs/inode.js";
import { LOCK_INODE_GROUP_NR } from "../core/lock_names.js";
import { FIEMAP_EXTENT_UNWRITTEN } from "../core/fs/data.js";
import { FsError } from "../util/errno.js";
import type { FuseOps, ReaddirArgs, RequestContext } from "./ops.js";
import {
  type AccessReq, type Attr, type AttrOut, type BatchForgetReq, type CreateOut, type CreateReq,
  type EntryOut, type FallocateReq, type ForgetReq, type FsyncReq, type GetattrReq,
  type GetxattrReq, type LinkReq, type ListxattrReq, type LseekReq, type MkdirReq, type MknodReq,
  type NameReq, type NodeReq, type OpenOut, type OpenReq, type ReadReq, type ReleaseReq,
  type RemovexattrReq, type RenameReq, type SetattrReq, type SetxattrReq, type Statfs,
  type SymlinkReq, type WriteReq, Fopen, negativeEntry,
} from "./proto.js";
import { KernelCacheTracker, type KernelNotifier } from "./vfs_kcache.js";
import { DirListing, DirListingBuilder, DirListingCache, LISTING_MAX_BYTES } from "./vfs_dircache.js";

/** Entry and attribute validity: long, because lock revocation invalidates explicitly. */
export const ENTRY_VALID_MS = 3_600_000;
export const ATTR_VALID_MS = 3_600_000;
/** How long a caller's supplementary groups are reused, and how many callers are cached. */
const GROUPS_CACHE_MS = 1000;
const GROUPS_CACHE_MAX = 4096;
/** st_blksize reported: the data block size. */
const BLKSIZE = 4096;
const O_ACCMODE = 3;
const RENAME_EXCHANGE = 2;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const O_TRUNC = 0o1000;
const O_EXCL = 0o200;

export interface VfsOptions {
  /** Monotonic milliseconds (the groups cache); the daemon passes its Env clock. */
  nowMs: () => number;
}

export class ScoutVfs implements FuseOps {
  readonly kcache: KernelCacheTracker;
  /** Encoded READDIR listings (vfs_dircache.ts). */
  readonly dirs = new DirListingCache();
  private readonly groupsCache = new Map<number, { at: number; groups: number[] }>();
  private nextFh = 1;

  constructor(readonly fs: ScoutFs, notifier: KernelNotifier, private readonly opts: VfsOptions) {
    this.kcache = new KernelCacheTracker(notifier);
  }

  /** A lock on [firstIno, lastIno] went away: drop what the kernel caches under it. */
  invalidateInodeRange(firstIno: bigint, lastIno: bigint): number {
    return this.kcache.invalidateGroups(firstIno / LOCK_INODE_GROUP_NR,
      lastIno / LOCK_INODE_GROUP_NR);
  }

  // ----------------------------------------------------------------------------------------
  // Names.

  async lookup(ctx: RequestContext, req: NameReq): Promise<EntryOut> {
    const a = await this.fs.lookupOrNull(ino(req.parent), req.name, await this.cred(ctx));
    // a negative entry valid for 0 ms is ENOENT without building and catching an error
    if (a === null) return NEGATIVE_ENTRY;
    return this.entry(a, req.parent, req.name);
  }

  async forget(req: ForgetReq): Promise<void> {
    await this.fs.forget(ino(req.nodeid), req.nlookup);
    if (!this.fs.refs.held(ino(req.nodeid))) this.kcache.nodeDropped(req.nodeid);
  }

  async batchForget(req: BatchForgetReq): Promise<void> {
    for (const f of req.items) await this.forget(f);
  }

  async mknod(ctx: RequestContext, req: MknodReq): Promise<EntryOut> {
    const a = await this.fs.mknod(ino(req.parent), req.name, req.mode, req.rdev,
      await this.cred(ctx), req.umask);
    return this.entry(a, req.parent, req.name);
  }

  async mkdir(ctx: RequestContext, req: MkdirReq): Promise<EntryOut> {
    const a = await this.fs.mkdir(ino(req.parent), req.name, req.mode, await this.cred(ctx),
      req.umask);
    return this.entry(a, req.parent, req.name);
  }

  async symlink(ctx: RequestContext, req: SymlinkReq): Promise<EntryOut> {
    const a = await this.fs.symlink(ino(req.parent), req.name, req.target, await this.cred(ctx));
    return this.entry(a, req.parent, req.name);
  }

  async link(ctx: RequestContext, req: LinkReq): Promise<EntryOut> {
    const a = await this.fs.link(ino(req.nodeid), ino(req.newParent), req.newName,
      await this.cred(ctx));
    return this.entry(a, req.newParent, req.newName);
  }

  async unlink(ctx: RequestContext, req: NameReq): Promise<void> {
    await this.fs.unlink(ino(req.parent), req.name, await this.cred(ctx));
    this.kcache.nameGone(req.parent, req.name);
  }

  async rmdir(ctx: RequestContext, req: NameReq): Promise<void> {
    await this.fs.rmdir(ino(req.parent), req.name, await this.cred(ctx));
    this.kcache.nameGone(req.parent, req.name);
  }

  async rename(ctx: RequestContext, req: RenameReq): Promise<void> {
    await this.fs.rename(ino(req.parent), req.name, ino(req.newParent), req.newName, req.flags,
      await this.cred(ctx));
    this.kcache.nameGone(req.parent, req.name);
    // the kernel moves its dentry to the new name (with EXCHANGE both names stay): it holds
    // them without a LOOKUP, so they must be tracked for invalidation like looked-up names
    this.kcache.nameHeld(req.newParent, req.newName);
    if ((req.flags & RENAME_EXCHANGE) !== 0) this.kcache.nameHeld(req.parent, req.name);
  }

  async readlink(_ctx: RequestContext, req: NodeReq): Promise<Buffer> {
    return this.fs.readlink(ino(req.nodeid));
  }

  // ----------------------------------------------------------------------------------------
  // Attributes.

  async getattr(_ctx: RequestContext, req: GetattrReq): Promise<AttrOut> {
    return { attrValidMs: ATTR_VALID_MS, attr: toAttr(await this.fs.getattr(ino(req.nodeid))) };
  }

  async setattr(ctx: RequestContext, req: SetattrReq): Promise<AttrOut> {
    const inp: SetattrIn = {};
    if (req.mode !== null) inp.mode = req.mode;
    if (req.uid !== null) inp.uid = req.uid;
    if (req.gid !== null) inp.gid = req.gid;
    if (req.size !== null) inp.size = BigInt(req.size);
    if (req.atime !== null) inp.atime = req.atime === "now" ? "now" : toTs(req.atime);
    if (req.mtime !== null) inp.mtime = req.mtime === "now" ? "now" : toTs(req.mtime);
    if (req.ctime !== null) inp.ctime = toTs(req.ctime);
    if (req.killSuidgid) inp.killSuidgid = true;
    if (req.fh !== null) inp.viaOpenFile = true;
    const a = await this.fs.setattr(ino(req.nodeid), inp, await this.cred(ctx));
    return { attrValidMs: ATTR_VALID_MS, attr: toAttr(a) };
  }

  async access(ctx: RequestContext, req: AccessReq): Promise<void> {
    await this.fs.access(ino(req.nodeid), req.mask, await this.cred(ctx));
  }

  async statfs(): Promise<Statfs> {
    const s = await this.fs.statfs();
    return { blocks: num(s.blocks), bfree: num(s.bfree), bavail: num(s.bavail),
      files: num(s.files), ffree: num(s.ffree), bsize: s.bsize, namelen: s.namelen,
      frsize: s.frsize };
  }

  // ----------------------------------------------------------------------------------------
  // Xattrs.

  async setxattr(ctx: RequestContext, req: SetxattrReq): Promise<void> {
    await this.fs.setxattr(ino(req.nodeid), req.name, req.value, req.flags, await this.cred(ctx));
  }

  async getxattr(ctx: RequestContext, req: GetxattrReq): Promise<Buffer> {
    return this.fs.getxattr(ino(req.nodeid), req.name, await this.cred(ctx));
  }

  async listxattr(ctx: RequestContext, req: ListxattrReq): Promise<Buffer[]> {
    return this.fs.listxattr(ino(req.nodeid), await this.cred(ctx));
  }

  async removexattr(ctx: RequestContext, req: RemovexattrReq): Promise<void> {
    await this.fs.removexattr(ino(req.nodeid), req.name, await this.cred(ctx));
  }

  // ----------------------------------------------------------------------------------------
  // Opens and data.

  async open(ctx: RequestContext, req: OpenReq): Promise<OpenOut> {
    const i = ino(req.nodeid);
    if ((req.flags & O_TRUNC) !== 0 && (req.flags & O_ACCMODE) !== 0) {
      await this.fs.setattr(i, { size: 0n, viaOpenFile: true }, await this.cred(ctx));
    }
    this.fs.open(i);
    return { fh: this.nextFh++, openFlags: Fopen.KEEP_CACHE };
  }

  async create(ctx: RequestContext, req: CreateReq): Promise<CreateOut> {
    const a = await this.fs.create(ino(req.parent), req.name, req.mode, await this.cred(ctx),
      req.umask);
    const entry = this.entry(a, req.parent, req.name);
    this.fs.open(a.ino);
    return { entry, open: { fh: this.nextFh++, openFlags: Fopen.KEEP_CACHE } };
  }

  /** O_TMPFILE: like create, but the inode has no name (and so no dentry to track). */
  async tmpfile(ctx: RequestContext, req: CreateReq): Promise<CreateOut> {
    const a = await this.fs.tmpfile(ino(req.parent), req.mode, await this.cred(ctx), req.umask,
      (req.flags & O_EXCL) === 0);
    this.kcache.nodeHeld(num(a.ino));
    this.fs.open(a.ino);
    const entry: EntryOut = { nodeid: num(a.ino), generation: 0, entryValidMs: ENTRY_VALID_MS,
      attrValidMs: ATTR_VALID_MS, attr: toAttr(a) };
    return { entry, open: { fh: this.nextFh++, openFlags: Fopen.KEEP_CACHE } };
  }

  async read(_ctx: RequestContext, req: ReadReq): Promise<Buffer> {
    return this.fs.read(ino(req.nodeid), BigInt(req.offset), req.size);
  }

  readReplied(data: Buffer | readonly Buffer[]): void {
    if (Buffer.isBuffer(data)) this.fs.data.releaseRead(data);
  }

  async write(ctx: RequestContext, req: WriteReq): Promise<number> {
    return this.fs.write(ino(req.nodeid), BigInt(req.offset), req.data, await this.cred(ctx));
  }

  async fallocate(ctx: RequestContext, req: FallocateReq): Promise<void> {
    await this.fs.fallocate(ino(req.nodeid), req.mode, BigInt(req.offset), BigInt(req.length),
      await this.cred(ctx));
  }

  /**
   * SEEK_DATA / SEEK_HOLE from the file's extents: online and offline extents are data,
   * holes and unwritten (preallocated) extents read as zeros and count as holes, as ext4
   * reports them. The kernel wrote back its dirty pages before asking.
   */
  async lseek(_ctx: RequestContext, req: LseekReq): Promise<number> {
    const i = ino(req.nodeid);
    const size = (await this.fs.getattr(i)).size;
    const off = BigInt(req.offset);
    if (req.whence !== SEEK_DATA && req.whence !== SEEK_HOLE) throw new FsError("EINVAL");
    if (off >= size) throw new FsError("ENXIO");
    const data = (await this.fs.fiemap(i))
      .filter((e) => (e.flags & FIEMAP_EXTENT_UNWRITTEN) === 0)
      .map((e) => ({ start: e.logical, end: e.logical + e.length }));
    if (req.whence === SEEK_DATA) {
      const e = data.find((x) => x.end > off);
      if (e === undefined) throw new FsError("ENXIO");
      const at = e.start > off ? e.start : off;
      if (at >= size) throw new FsError("ENXIO");
      return num(at);
    }
    let pos = off;
    for (const e of data) {
      if (e.end <= pos) continue;
      if (e.start > pos) break;
      pos = e.end;
    }
    return num(pos < size ? pos : size);
  }

  async release(_ctx: RequestContext, req: ReleaseReq): Promise<void> {
    await this.fs.release(ino(req.nodeid));
  }

  async fsync(_ctx: RequestContext, req: FsyncReq): Promise<void> {
    await this.fs.fsync(ino(req.nodeid), req.datasync);
  }

  async fsyncdir(_ctx: RequestContext, req: FsyncReq): Promise<void> {
    await this.fs.fsync(ino(req.nodeid), req.datasync);
  }

  async syncfs(): Promise<void> {
    await this.fs.sync();
  }

  // ----------------------------------------------------------------------------------------
  // Directories.

  async opendir(ctx: RequestContext, req: OpenReq): Promise<OpenOut> {
    const i = ino(req.nodeid);
    this.fs.open(i);
    return { fh: this.nextFh++, openFlags: Fopen.KEEP_CACHE | Fopen.CACHE_DIR };
  }

  async releasedir(_ctx: RequestContext, req: ReleaseReq): Promise<void> {
    await this.fs.release(ino(req.nodeid));
  }

  /**
   * READDIR: a view of the directory's cached encoded listing (vfs_dircache.ts), checked
   * against the directory's version under its lock; entry by entry for directories too
   * large to cache.
   */
  async readdir(ctx: RequestContext, req: ReaddirArgs): Promise<void> {
    const out = req.out;
    const cred = await this.cred(ctx);
    const l = await this.listing(req.nodeid, cred);
    if (l !== null) {
      const block = l.slice(req.offset, out.sizeBytes);
      if (block.length > 0) out.useEncoded(block);
      return;
    }
    await this.fs.readdir(ino(req.nodeid), BigInt(req.offset),
      (name, nextPos, i, type) => out.add(name, num(nextPos), num(i), type), cred);
  }

  /**
   * READDIRPLUS: entries with attributes, read in one operation per batch of inode groups.
   * Each packed entry (not . or ..) takes a kernel lookup reference, counted in the core
   * like a LOOKUP's. The kernel asks for it (readdirplus auto) on a directory's first read
   * and after lookups in it, so an `ls -l` gets attributes without a LOOKUP per entry.
   */
  async readdirplus(ctx: RequestContext, req: ReaddirArgs): Promise<void> {
    const out = req.out;
    const parent = req.nodeid;
    const cred = await this.cred(ctx);
    const l = await this.listing(parent, cred);
    let found: { name: Buffer; next: number; ino: number; type: number }[];
    if (l !== null) {
      found = l.entries(req.offset, Math.ceil(out.sizeBytes / DIRENTPLUS_MIN_BYTES));
    } else {
      found = [];
      await this.fs.readdir(ino(parent), BigInt(req.offset), (name, next, i, type) => {
        // an upper bound of what fits; attributes are read after the directory lock is dropped
        if (found.length >= out.sizeBytes / DIRENTPLUS_MIN_BYTES) return false;
        found.push({ name: Buffer.from(name), next: num(next), ino: num(i), type });
        return true;
      }, cred);
    }
    for (let at = 0; at < found.length;) {
      const batch = groupBatch(found, at);
      const attrs = await this.fs.getattrMany(batch.map((f) => BigInt(f.ino)));
      for (let k = 0; k < batch.length; k++) {
        const f = batch[k]!;
        const a = attrs[k];
        if (a === null || a === undefined) continue; // removed meanwhile
        const dot = f.name.length <= 2 && (f.name.equals(DOT) || f.name.equals(DOTDOT));
        const entry: EntryOut = { nodeid: dot ? 0 : f.ino, generation: 0,
          entryValidMs: ENTRY_VALID_MS, attrValidMs: ATTR_VALID_MS, attr: toAttr(a) };
        if (!out.addEntry(f.name, f.next, entry)) return;
        if (!dot) this.took(a.ino, parent, f.name);
      }
      at += batch.length;
    }
  }

  /**
   * The directory's encoded listing, current as of its version read now under its lock;
   * built (one walk of its entries) when missing or stale; null when too large to cache.
   */
  private async listing(nodeid: number, cred: Cred): Promise<DirListing | null> {
    const dir = ino(nodeid);
    const cached = this.dirs.get(nodeid);
    if (cached !== undefined) {
      if (await this.fs.dirVersion(dir, cred) === cached.version) return cached;
      this.dirs.drop(nodeid);
    }
    const b = new DirListingBuilder(LISTING_MAX_BYTES, nodeid);
    const r = await this.fs.listDir(dir, cred, (v, at, len, pos, i, type) =>
      b.add(v, at, len, pos, i, type));
    if (!r.complete) return null;
    const l = b.finish(r.version, num(r.parent));
    this.dirs.set(nodeid, l);
    return l;
  }

  // ----------------------------------------------------------------------------------------

  private entry(a: InodeAttr, parent: number, name: Buffer): EntryOut {
    // the core already counted the reference this reply gives the kernel
    this.kcache.nodeHeld(num(a.ino));
    this.kcache.nameHeld(parent, name);
    return { nodeid: num(a.ino), generation: 0, entryValidMs: ENTRY_VALID_MS,
      attrValidMs: ATTR_VALID_MS, attr: toAttr(a) };
  }

  /** A READDIRPLUS entry gave the kernel a reference: count it in the core too. */
  private took(i: bigint, parent: number, name: Buffer): void {
    this.fs.refs.lookup(i, 1);
    this.kcache.nodeHeld(num(i));
    this.kcache.nameHeld(parent, name);
  }

  /** The caller's credentials: fsuid/fsgid from the request, groups from /proc. */
  async cred(ctx: RequestContext): Promise<Cred> {
    return { uid: ctx.uid, gid: ctx.gid, groups: await this.groupsOf(ctx.pid, ctx.uid) };
  }

  private async groupsOf(pid: number, uid: number): Promise<number[]> {
    if (pid === 0 || uid === 0) return [];
    const now = this.opts.nowMs();
    const c = this.groupsCache.get(pid);
    if (c !== undefined && now - c.at < GROUPS_CACHE_MS) return c.groups;
    let groups: number[] = [];
    try {
      const status = await readFile(`/proc/${pid}/status`, "latin1");
      const line = /^Groups:\s*(.*)$/m.exec(status);
      if (line?.[1] !== undefined) {
        groups = line[1].trim().split(/\s+/).filter((s) => s !== "").map(Number);
      }
    } catch {
      // the caller exited (or a thread of it): no supplementary groups
    }
    if (this.groupsCache.size >= GROUPS_CACHE_MAX) this.groupsCache.clear();
    this.groupsCache.set(pid, { at: now, groups });
    return groups;
  }
}

/** A LOOKUP miss: nodeid 0, not cached (another mount may create the name at any time). */
const NEGATIVE_ENTRY: EntryOut = negativeEntry(0);

/** The smallest READDIRPLUS record (entry_out + dirent of a 1-byte name). */
const DIRENTPLUS_MIN_BYTES = 152;

/**
 * The entries of found from `at` whose inodes fall in at most GETATTR_MANY_GROUPS lock
 * groups (one getattrMany each).
 */
function groupBatch<T extends { ino: number }>(found: readonly T[], at: number): T[] {
  const groups = new Set<number>();
  const out: T[] = [];
  for (let i = at; i < found.length; i++) {
    const g = Math.floor(found[i]!.ino / Number(LOCK_INODE_GROUP_NR));
    if (!groups.has(g) && groups.size >= GETATTR_MANY_GROUPS) break;
    groups.add(g);
    out.push(found[i]!);
  }
  return out;
}

const DOT = Buffer.from(".");
const DOTDOT = Buffer.from("..");

function ino(nodeid: number): bigint {
  if (!Number.isSafeInteger(nodeid) || nodeid <= 0) throw new FsError("EINVAL", "node id");
  return BigInt(nodeid);
}

function num(v: bigint): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new FsError("EOVERFLOW", `value ${v} beyond 2^53`);
  return n;
}

function toTs(t: { sec: number; nsec: number }): { sec: bigint; nsec: number } {
  return { sec: BigInt(t.sec), nsec: t.nsec };
}

/** The kernel's view of an inode; st_blocks counts 512-byte units of online data blocks. */
export function toAttr(a: InodeAttr): Attr {
  return {
    ino: num(a.ino), size: num(a.size), blocks: num(a.onlineBlocks * 8n),
    atime: num(a.atime.sec), mtime: num(a.mtime.sec), ctime: num(a.ctime.sec),
    atimensec: a.atime.nsec, mtimensec: a.mtime.nsec, ctimensec: a.ctime.nsec,
    mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, rdev: a.rdev, blksize: BLKSIZE,
    flags: 0,
  };
}
