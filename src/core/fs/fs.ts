/*
 * The POSIX namespace of one mount over its MountClient (upstream inode.c, dir.c, namei.c
 * pieces): the operations the FUSE layer maps requests to, one method each.
 *
 * Every operation runs through the OpRunner (op.ts): inode-group locks of every inode it
 * touches in one sorted lockEach (READ for lookups, getattr and readdir; WRITE for changes),
 * reads through the item cache, then one synchronous write phase. Errors are FsErrors with
 * Linux's errnos. Names and symlink targets are bytes.
 *
 * Lookup counting (the kernel's references) and opens are counted here per inode: an inode
 * whose nlink reached 0 keeps its items (and its orphan item) while either count is nonzero,
 * and is deleted when the last reference goes (orphan.ts). Entry-returning operations
 * (lookup, mknod, mkdir, create, symlink, link) add one lookup reference, as a FUSE reply
 * does; forget() drops them.
 */
import { assert } from "../../util/assert.js";
import { FsError } from "../../util/errno.js";
import type { MountClient } from "../client.js";
import { INODE_FLAG_TRUNCATE, type InodeValue, type Timespec } from "../format.js";
import { readdirKey, symlinkKey } from "../key.js";
import { LockMode } from "../lock_msg.js";
import { inodeGroupFirst } from "../lock_names.js";
import { NetCmd } from "../msg.js";
import { ROOT_INO } from "../mkfs.js";
import {
  addEntry, checkName, dirEmpty, findEntry, isDot, isDotDot, parentOf,
  removeEntry,
} from "./dirent.js";
import {
  decodeDirentView, decodeStatfsReply, decodeSymlinkParts, direntType, encodeSymlinkParts,
  direntNumbers, type DirentNumbersFn, isDir, isLnk, READDIR_POS_END, READDIR_POS_FIRST,
  LINK_MAX, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, SCOUTFS_SUPER_MAGIC, SYMLINK_MAX_SIZE, SYMLINK_PART_MAX,
  validFileType, NAME_LEN_MAX,
} from "./format.js";
import {
  DataOps, DEFAULT_PREALLOC_BLOCKS, DEFAULT_PREALLOC_CONTIG_ONLY, type FiemapExtent,
} from "./data.js";
import { InoAllocator } from "./ino_alloc.js";
import {
  attrOf, checkNotRetained, dropLink, type InodeAttr, newInodeValue, setattr, type SetattrIn,
  type TruncateHook,
} from "./inode.js";
import { inos, type OpCtx, OpRunner } from "./op.js";
import { InodeRefs } from "./orphan.js";
import { OrphanScanner } from "./orphan_scan.js";
import { AclOps, aclTypeOf } from "./acl_xattr.js";
import { checkAccess, checkDelete, type Cred, MAY_EXEC, MAY_READ, MAY_WRITE } from "./perm.js";
import { rename, type RenameArgs } from "./rename.js";
import { XattrOps, type XattrSetFlags } from "./xattr.js";

export type { Cred } from "./perm.js";
export type { InodeAttr, SetattrIn } from "./inode.js";

/** Entries one readdir call hands out at most (the caller continues from where it stopped). */
export const READDIR_MAX_ENTRIES = 4096;
/** Inode groups one getattrMany() may lock (the lock client's per-call bound, less room). */
export const GETATTR_MANY_GROUPS = 32;
/** Directories whose last child's inode group is remembered (withChildHint). */
const CHILD_HINTS_MAX = 4096;

/**
 * readdir's callback: false when the caller's buffer is full (the entry is not consumed).
 * name may be a view of cached item memory: valid during the call only (copy to keep it).
 */
export type ReaddirCb = (name: Buffer, nextPos: bigint, ino: bigint, type: number) => boolean;

export interface ScoutFsOptions {
  /** Link limit (default LINK_MAX; tests lower it to reach EMLINK). */
  linkMax?: number;
  /** Replaces the data path's truncate hook (tests of the namespace alone). */
  truncate?: TruncateHook;
  /** Mount option data_prealloc_blocks (default 2048). */
  dataPreallocBlocks?: number;
  /** Mount option data_prealloc_contig_only (default true). */
  dataPreallocContigOnly?: boolean;
  /** Mount option acl / noacl (default acl): POSIX ACLs honoured and settable. */
  acl?: boolean;
  /** Mount option orphan_scan_delay_ms (default 10000; setOrphanScanDelayMs changes it). */
  orphanScanDelayMs?: number;
}

export interface Statfs {
  bsize: number;
  frsize: number;
  blocks: bigint;
  bfree: bigint;
  bavail: bigint;
  files: bigint;
  ffree: bigint;
  namelen: number;
  type: number;
  fsid: bigint;
}

export class ScoutFs {
  readonly runner: OpRunner;
  readonly refs: InodeRefs;
  /** Deletes orphans no mount holds any more, on a timer (orphan_scan.ts). */
  readonly orphanScan: OrphanScanner;
  readonly xattrs: XattrOps;
  readonly linkMax: number;
  /** File data (data.ts); its opts are the data mount options, changeable at run time. */
  readonly data: DataOps;
  private readonly inoAlloc: InoAllocator;
  private readonly truncateHook: TruncateHook;
  /** The system.posix_acl_* xattrs and their effects (acl_xattr.ts). */
  readonly acls: AclOps;
  /**
   * O_TMPFILE inodes made without O_EXCL and not linked yet: the VFS's I_LINKABLE. Entries
   * go when linked or when this mount stops holding the inode, so opens bound the set.
   */
  private readonly linkable = new Set<bigint>();
  /** Per directory, the inode group of the child last found in it (withChildHint). */
  private readonly childGroupHint = new Map<bigint, bigint>();

  constructor(readonly client: MountClient, opts: ScoutFsOptions = {}) {
    this.runner = new OpRunner(client, client.opts.fmtVers);
    this.inoAlloc = new InoAllocator(client);
    this.linkMax = opts.linkMax ?? LINK_MAX;
    assert(this.linkMax >= 2 && this.linkMax <= LINK_MAX, "link limit");
    this.data = new DataOps(this.runner, client, {
      preallocBlocks: opts.dataPreallocBlocks ?? DEFAULT_PREALLOC_BLOCKS,
      preallocContigOnly: opts.dataPreallocContigOnly ?? DEFAULT_PREALLOC_CONTIG_ONLY,
    }, () => this.now());
    this.truncateHook = opts.truncate ??
      ((ctx, ino, oldSize, newSize) => this.data.truncate(ctx, ino, oldSize, newSize));
    this.refs = new InodeRefs(this.runner, this.truncateHook);
    this.orphanScan = new OrphanScanner(client, this.refs, opts.orphanScanDelayMs);
    this.orphanScan.start();
    this.xattrs = new XattrOps(this.runner, () => this.now());
    this.acls = new AclOps(this.runner, () => this.now(), opts.acl ?? true);
    if (this.acls.enabled) this.runner.acl = this.acls;
  }

  get rootIno(): bigint {
    return ROOT_INO;
  }

  now(): Timespec {
    const t = this.client.env.clock.wallTime();
    return { sec: t.sec, nsec: t.nsec };
  }

  // -------------------------------------------------------------------------------------
  // Reads.

  async lookup(parent: bigint, name: Buffer, cred: Cred): Promise<InodeAttr> {
    const a = await this.lookupOrNull(parent, name, cred);
    if (a === null) throw new FsError("ENOENT");
    return a;
  }

  /**
   * lookup() with a missing name answered null instead of ENOENT: the LOOKUP before every
   * create misses, and building an Error (its stack) was a tenth of a negative lookup.
   */
  async lookupOrNull(parent: bigint, name: Buffer, cred: Cred): Promise<InodeAttr | null> {
    if (name.length > NAME_LEN_MAX) throw new FsError("ENAMETOOLONG");
    const a = await this.runner.run({ inos: this.withChildHint(parent, LockMode.READ) },
      async (ctx) => {
      const dir = await this.dirInode(ctx, parent, LockMode.READ);
      checkAccess(cred, dir, MAY_EXEC, await ctx.accessAcl(parent, dir, cred));
      let ino: bigint;
      if (isDot(name)) ino = parent;
      else if (isDotDot(name)) ino = await parentOf(ctx, parent);
      else {
        checkName(name);
        const d = await findEntry(ctx, parent, name);
        if (d === null) return null;
        ino = d.ino;
      }
      return attrOf(ino, await ctx.mustInode(ino));
    });
    if (a === null) return null;
    this.noteChild(parent, a.ino);
    this.refs.lookup(a.ino, 1);
    return a;
  }

  /**
   * The locks of an operation on parent that will also read a child it finds by name: the
   * parent's group and, as a guess, the group of the child found there last (inode numbers
   * are handed out in runs, so a directory's children mostly share a few groups). A wrong
   * guess costs one needless group lock; a missing one costs re-running the body.
   */
  private withChildHint(parent: bigint, mode: LockMode): Map<bigint, LockMode> {
    const g = this.childGroupHint.get(parent);
    return g === undefined || g === inodeGroupFirst(parent) ? inos([parent, mode]) :
      inos([parent, mode], [g, mode]);
  }

  private noteChild(parent: bigint, child: bigint): void {
    const g = inodeGroupFirst(child);
    if (this.childGroupHint.get(parent) === g) return;
    if (this.childGroupHint.size >= CHILD_HINTS_MAX) this.childGroupHint.clear();
    this.childGroupHint.set(parent, g);
  }

  async getattr(ino: bigint): Promise<InodeAttr> {
    return this.runner.run({ inos: inos([ino, LockMode.READ]) },
      async (ctx) => attrOf(ino, await ctx.mustInode(ino)));
  }

  /** ACCESS / opendir checks: EACCES unless cred may access ino for mask (MAY_*). */
  async access(ino: bigint, mask: number, cred: Cred): Promise<void> {
    await this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      const v = await ctx.mustInode(ino);
      checkAccess(cred, v, mask, await ctx.accessAcl(ino, v, cred));
    });
  }

  async readlink(ino: bigint): Promise<Buffer> {
    return this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      const v = await ctx.mustInode(ino);
      if (!isLnk(v.mode)) throw new FsError("EINVAL", "not a symlink");
      const parts: Buffer[] = [];
      const nparts = Math.ceil((Number(v.size) + 1) / SYMLINK_PART_MAX);
      for (let p = 0; p < nparts && p < SYMLINK_MAX_SIZE; p++) {
        const part = await ctx.lookup(symlinkKey(ino, BigInt(p)), ino);
        if (part === null) break;
        parts.push(part);
      }
      return decodeSymlinkParts(parts, v.size);
    });
  }

  /**
   * Directory entries from position `pos` (0 = ".", 1 = "..", entries from 2) while cb
   * accepts them; each entry's next position is its d_off (pos + 1). Returns the position to
   * continue from (READDIR_POS_END-style: greater than every entry when done).
   */
  async readdir(ino: bigint, pos: bigint, cb: ReaddirCb, cred: Cred): Promise<bigint> {
    return (await this.readdirVersioned(ino, pos, cb, cred, READDIR_MAX_ENTRIES)).next;
  }

  /**
   * readdir() of at most `max` entries that also returns the directory inode's version as
   * read under the same lock: it changes whenever an entry is added or removed (the inode is
   * rewritten), here or, after our lock was revoked, by another mount. Listing caches key on
   * it. The entries come from one walk of the cached READDIR items (ctx.scan).
   */
  async readdirVersioned(ino: bigint, pos: bigint, cb: ReaddirCb, cred: Cred, max: number):
    Promise<{ next: bigint; version: bigint }> {
    return this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      const dir = await this.dirInode(ctx, ino, LockMode.READ);
      checkAccess(cred, dir, MAY_READ, await ctx.accessAcl(ino, dir, cred));
      const version = dir.version;
      let p = pos;
      if (p === 0n) {
        if (!cb(Buffer.from("."), 1n, ino, direntType(S_IFDIR))) return { next: p, version };
        p = 1n;
      }
      if (p === 1n) {
        if (!cb(Buffer.from(".."), 2n, await parentOf(ctx, ino), direntType(S_IFDIR))) {
          return { next: p, version };
        }
        p = 2n;
      }
      let n = 0;
      let stopped = false;
      await ctx.scan(readdirKey(ino, p), readdirKey(ino, READDIR_POS_END), ino, (v) => {
        if (n >= max) return false;
        const d = decodeDirentView(v);
        if (!cb(d.name, d.pos + 1n, d.ino, d.type)) {
          p = d.pos;
          stopped = true;
          return false;
        }
        p = d.pos + 1n;
        n++;
        return true;
      });
      if (stopped || n >= max) return { next: p, version };
      return { next: dir.nextReaddirPos > p ? dir.nextReaddirPos : p, version };
    });
  }

  /**
   * A directory's listing for caches: fn gets each entry in position order (direntNumbers:
   * the name in place in a value valid during the call) until it returns false.
   * Returns the directory's version and parent read under the same lock, and whether the
   * walk reached the end.
   */
  async listDir(ino: bigint, cred: Cred, fn: DirentNumbersFn):
    Promise<{ version: bigint; parent: bigint; complete: boolean }> {
    return this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      const dir = await this.dirInode(ctx, ino, LockMode.READ);
      checkAccess(cred, dir, MAY_READ, await ctx.accessAcl(ino, dir, cred));
      const parent = await parentOf(ctx, ino);
      let complete = true;
      await ctx.scan(readdirKey(ino, READDIR_POS_FIRST), readdirKey(ino, READDIR_POS_END), ino,
        (v) => {
          if (direntNumbers(v, fn)) return true;
          complete = false;
          return false;
        });
      return { version: dir.version, parent, complete };
    });
  }

  /** A directory's version (readdirVersioned), after readdir's permission check. */
  async dirVersion(ino: bigint, cred: Cred): Promise<bigint> {
    return this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      const dir = await this.dirInode(ctx, ino, LockMode.READ);
      checkAccess(cred, dir, MAY_READ, await ctx.accessAcl(ino, dir, cred));
      return dir.version;
    });
  }

  /**
   * The attributes of several inodes read in one operation (READDIRPLUS), null for those
   * that no longer exist. At most GETATTR_MANY_GROUPS inode groups (callers split).
   */
  async getattrMany(list: readonly bigint[]): Promise<(InodeAttr | null)[]> {
    const want = inos(...list.map((i): [bigint, LockMode] => [i, LockMode.READ]));
    return this.runner.run({ inos: want }, async (ctx) => {
      const out: (InodeAttr | null)[] = [];
      for (const i of list) {
        const v = await ctx.inode(i);
        out.push(v === null ? null : attrOf(i, v));
      }
      return out;
    });
  }

  /** statfs(2) from the server's STATFS (the last stable super), as upstream reports it. */
  async statfs(): Promise<Statfs> {
    const r = decodeStatfsReply(await this.client.net.request(NetCmd.STATFS, Buffer.alloc(0)));
    const free = r.freeMetaBlocks * 16n + r.freeDataBlocks;
    const files = r.totalMetaBlocks * 65536n / 2048n;
    return {
      bsize: 4096, frsize: 4096, blocks: r.totalMetaBlocks * 16n + r.totalDataBlocks,
      bfree: free, bavail: free, files, ffree: files > r.inodeCount ? files - r.inodeCount : 0n,
      namelen: NAME_LEN_MAX, type: SCOUTFS_SUPER_MAGIC,
      fsid: r.uuid.readBigUInt64LE(0) ^ r.uuid.readBigUInt64LE(8),
    };
  }

  // -------------------------------------------------------------------------------------
  // Creating entries.

  /*
   * umask: the caller's, applied here only when the directory has no default ACL (the
   * kernel leaves it to us with POSIX ACLs on; a mode it already masked is masked again
   * harmlessly). Callers that pass a final mode leave it 0.
   */

  async mknod(parent: bigint, name: Buffer, mode: number, rdev: number, cred: Cred, umask = 0):
    Promise<InodeAttr> {
    if (!validFileType(mode) || isDir(mode) || isLnk(mode)) {
      throw new FsError("EINVAL", "mknod file type");
    }
    return this.createNode(parent, name, mode, rdev, cred, null, umask);
  }

  async create(parent: bigint, name: Buffer, mode: number, cred: Cred, umask = 0):
    Promise<InodeAttr> {
    return this.createNode(parent, name, S_IFREG | (mode & ~S_IFMT), 0, cred, null, umask);
  }

  async mkdir(parent: bigint, name: Buffer, mode: number, cred: Cred, umask = 0):
    Promise<InodeAttr> {
    return this.createNode(parent, name, S_IFDIR | (mode & ~S_IFMT), 0, cred, null, umask);
  }

  async symlink(parent: bigint, name: Buffer, target: Buffer, cred: Cred): Promise<InodeAttr> {
    if (target.length === 0) throw new FsError("ENOENT", "empty symlink target");
    if (target.length + 1 > SYMLINK_MAX_SIZE) throw new FsError("ENAMETOOLONG");
    if (target.includes(0)) throw new FsError("EINVAL", "NUL in symlink target");
    return this.createNode(parent, name, S_IFLNK | 0o777, 0, cred, target);
  }

  private async createNode(parent: bigint, name: Buffer, mode: number, rdev: number, cred: Cred,
    target: Buffer | null, umask = 0): Promise<InodeAttr> {
    if (isDot(name) || isDotDot(name)) throw new FsError("EEXIST");
    checkName(name);
    const ino = await this.inoAlloc.alloc(isDir(mode));
    const now = this.now();
    const a = await this.runner.run({ inos: inos([parent, LockMode.WRITE], [ino, LockMode.WRITE]) },
      async (ctx) => {
        const dir = await this.dirInode(ctx, parent, LockMode.WRITE);
        await this.checkCreate(ctx, parent, dir, name, cred);
        if (isDir(mode) && dir.nlink >= this.linkMax) throw new FsError("EMLINK");
        const v = newInodeValue(cred, dir, mode, rdev, now, this.runner.fmtVers);
        if (target !== null) {
          v.size = BigInt(target.length);
          encodeSymlinkParts(target).forEach((p, i) => ctx.put(symlinkKey(ino, BigInt(i)), p, ino));
        }
        await ctx.checkNew(ino);
        ctx.newInode(ino, v);
        await this.acls.inherit(ctx, parent, ino, v, umask);
        ctx.dirty(parent);
        addEntry(ctx, parent, dir, name, ino, direntType(mode));
        if (isDir(mode)) dir.nlink++;
        dir.mtime = { ...now };
        dir.ctime = { ...now };
        return attrOf(ino, v);
      });
    this.refs.lookup(ino, 1);
    return a;
  }

  /** Search and write permission in dir, and no entry of that name yet. */
  private async checkCreate(ctx: OpCtx, parent: bigint, dir: InodeValue, name: Buffer,
    cred: Cred): Promise<void> {
    const acl = await ctx.accessAcl(parent, dir, cred);
    checkAccess(cred, dir, MAY_EXEC, acl);
    if (await findEntry(ctx, parent, name) !== null) throw new FsError("EEXIST");
    checkAccess(cred, dir, MAY_WRITE, acl);
    if (dir.nlink === 0) throw new FsError("ENOENT", "directory was removed");
  }

  /** A new hard link to ino in newParent. */
  async link(ino: bigint, newParent: bigint, newName: Buffer, cred: Cred): Promise<InodeAttr> {
    if (isDot(newName) || isDotDot(newName)) throw new FsError("EEXIST");
    checkName(newName);
    const now = this.now();
    const a = await this.runner.run(
      { inos: inos([ino, LockMode.WRITE], [newParent, LockMode.WRITE]) }, async (ctx) => {
        const v = await ctx.mustInode(ino, LockMode.WRITE);
        const dir = await this.dirInode(ctx, newParent, LockMode.WRITE);
        await this.checkCreate(ctx, newParent, dir, newName, cred);
        if (isDir(v.mode)) throw new FsError("EPERM", "hard link to a directory");
        if (v.nlink === 0 && !this.linkable.has(ino)) {
          throw new FsError("ENOENT", "linking an unlinked inode");
        }
        if (v.nlink >= this.linkMax) throw new FsError("EMLINK");
        checkNotRetained(v);
        ctx.dirty(ino);
        ctx.dirty(newParent);
        addEntry(ctx, newParent, dir, newName, ino, direntType(v.mode));
        // an O_TMPFILE inode getting its first name stops being an orphan (upstream link)
        if (v.nlink === 0) ctx.orphan(ino, false);
        v.nlink++;
        v.ctime = { ...now };
        dir.mtime = { ...now };
        dir.ctime = { ...now };
        return attrOf(ino, v);
      });
    this.linkable.delete(ino);
    this.refs.lookup(ino, 1);
    return a;
  }

  /**
   * O_TMPFILE: a regular file in no directory, nlink 0 with its orphan item from the start
   * (as upstream), living while this mount holds it. link() may name it later unless it was
   * made with O_EXCL (linkable false). Adds one lookup reference, as create does; the
   * reference is taken in the operation's write step so no orphan scan sees it unheld.
   */
  async tmpfile(parent: bigint, mode: number, cred: Cred, umask = 0, linkable = true):
    Promise<InodeAttr> {
    const ino = await this.inoAlloc.alloc(false);
    const now = this.now();
    return this.runner.run({ inos: inos([parent, LockMode.READ], [ino, LockMode.WRITE]) },
      async (ctx) => {
        const dir = await this.dirInode(ctx, parent, LockMode.READ);
        checkAccess(cred, dir, MAY_WRITE | MAY_EXEC, await ctx.accessAcl(parent, dir, cred));
        if (dir.nlink === 0) throw new FsError("ENOENT", "directory was removed");
        const v = newInodeValue(cred, dir, S_IFREG | (mode & ~S_IFMT), 0, now,
          this.runner.fmtVers);
        v.nlink = 0;
        ctx.newInode(ino, v);
        await this.acls.inherit(ctx, parent, ino, v, umask);
        ctx.orphan(ino, true);
        ctx.onEnd((applied) => {
          if (!applied) return;
          this.refs.lookup(ino, 1);
          if (linkable) this.linkable.add(ino);
        });
        return attrOf(ino, v);
      });
  }

  // -------------------------------------------------------------------------------------
  // Removing entries.

  async unlink(parent: bigint, name: Buffer, cred: Cred): Promise<void> {
    if (isDot(name) || isDotDot(name)) throw new FsError("EISDIR");
    await this.removeNode(parent, name, cred, false);
  }

  async rmdir(parent: bigint, name: Buffer, cred: Cred): Promise<void> {
    if (isDot(name)) throw new FsError("EINVAL");
    if (isDotDot(name)) throw new FsError("ENOTEMPTY");
    await this.removeNode(parent, name, cred, true);
  }

  private async removeNode(parent: bigint, name: Buffer, cred: Cred, dirWanted: boolean):
    Promise<void> {
    checkName(name);
    const now = this.now();
    const gone = await this.runner.run({ inos: this.withChildHint(parent, LockMode.WRITE) },
      async (ctx) => {
      const dir = await this.dirInode(ctx, parent, LockMode.WRITE);
      const dirAcl = await ctx.accessAcl(parent, dir, cred);
      checkAccess(cred, dir, MAY_EXEC, dirAcl);
      const d = await findEntry(ctx, parent, name);
      if (d === null) throw new FsError("ENOENT");
      this.noteChild(parent, d.ino);
      const v = await ctx.mustInode(d.ino, LockMode.WRITE);
      if (dirWanted && !isDir(v.mode)) throw new FsError("ENOTDIR");
      if (!dirWanted && isDir(v.mode)) throw new FsError("EISDIR");
      checkDelete(cred, dir, v, dirAcl);
      checkNotRetained(v);
      if (dirWanted && !(await dirEmpty(ctx, d.ino))) throw new FsError("ENOTEMPTY");
      ctx.dirty(parent);
      ctx.dirty(d.ino);
      removeEntry(ctx, parent, dir, d);
      dropLink(ctx, d.ino, v, now);
      if (dirWanted) dir.nlink--;
      dir.mtime = { ...now };
      dir.ctime = { ...now };
      return v.nlink === 0 ? d.ino : null;
    });
    if (gone !== null) await this.refs.maybeDelete(gone);
  }

  // -------------------------------------------------------------------------------------
  // Attributes, rename, xattrs, references.

  async setattr(ino: bigint, inp: SetattrIn, cred: Cred): Promise<InodeAttr> {
    const a = await this.data.withTruncate(ino,
      () => setattr(this.runner, ino, inp, cred, this.now(), this.truncateHook));
    if ((a.flags & INODE_FLAG_TRUNCATE) === 0) return a;
    // more extents than one operation frees: the rest in further operations
    await this.data.finishTruncate(ino);
    return this.getattr(ino);
  }

  /** rename / renameat2 (flags RENAME_NOREPLACE 1, RENAME_EXCHANGE 2). */
  async rename(oldParent: bigint, oldName: Buffer, newParent: bigint, newName: Buffer,
    flags: number, cred: Cred): Promise<void> {
    const args: RenameArgs = { oldParent, oldName, newParent, newName, flags, cred,
      now: this.now(), linkMax: this.linkMax };
    const gone = await rename(this.runner, args);
    if (gone !== null) await this.refs.maybeDelete(gone);
  }

  /* The system.posix_acl_* names are ACLs (acl_xattr.ts); every other name an xattr. */

  getxattr(ino: bigint, name: Buffer, cred: Cred): Promise<Buffer> {
    const acl = aclTypeOf(name);
    if (acl !== null) return this.acls.get(ino, acl);
    return this.xattrs.get(ino, name, cred);
  }

  setxattr(ino: bigint, name: Buffer, value: Buffer, flags: XattrSetFlags, cred: Cred):
    Promise<void> {
    const acl = aclTypeOf(name);
    if (acl !== null) return this.acls.set(ino, acl, value, flags, cred);
    return this.xattrs.set(ino, name, value, flags, cred);
  }

  listxattr(ino: bigint, cred: Cred): Promise<Buffer[]> {
    return this.xattrs.list(ino, cred);
  }

  removexattr(ino: bigint, name: Buffer, cred: Cred): Promise<void> {
    const acl = aclTypeOf(name);
    if (acl !== null) return this.acls.remove(ino, acl, cred);
    return this.xattrs.remove(ino, name, cred);
  }

  /** The kernel dropped n lookup references (FORGET). */
  async forget(ino: bigint, n: number): Promise<void> {
    try {
      await this.refs.forget(ino, n);
    } finally {
      if (!this.refs.held(ino)) this.linkable.delete(ino);
    }
  }

  /** A file handle opened (OPEN/OPENDIR/CREATE's handle). */
  open(ino: bigint): void {
    this.refs.open(ino);
  }

  /** A file handle closed (RELEASE/RELEASEDIR). */
  async release(ino: bigint): Promise<void> {
    try {
      await this.refs.release(ino);
    } finally {
      if (!this.refs.held(ino)) this.linkable.delete(ino);
    }
  }

  /** A new orphan_scan_delay_ms (the sysfs option): the next scan is rescheduled with it. */
  setOrphanScanDelayMs(ms: number): void {
    this.orphanScan.setDelayMs(ms);
  }

  /** Stops background work (the orphan scanner) before the mount unmounts. */
  shutdown(): Promise<void> {
    return this.orphanScan.stop();
  }

  /** Commits the open transaction (fsync, syncfs). */
  sync(): Promise<void> {
    return this.client.commit();
  }

  // -------------------------------------------------------------------------------------
  // File data (data.ts).

  /** Up to size bytes at offset: short at EOF, zeros in holes and unwritten extents. */
  read(ino: bigint, offset: bigint, size: number): Promise<Buffer> {
    return this.data.read(ino, offset, size);
  }

  /** Writes data at offset; the bytes written (short only when the volume filled up). */
  write(ino: bigint, offset: bigint, data: Buffer, cred: Cred): Promise<number> {
    return this.data.write(ino, offset, data, cred);
  }

  /** fallocate(2): mode 0 or FALLOC_FL_KEEP_SIZE (others EOPNOTSUPP). */
  fallocate(ino: bigint, mode: number, offset: bigint, length: bigint, cred: Cred):
    Promise<void> {
    return this.data.fallocate(ino, mode, offset, length, cred);
  }

  /** The file's extents in bytes (FIEMAP flags: LAST, UNKNOWN for offline, UNWRITTEN). */
  fiemap(ino: bigint): Promise<FiemapExtent[]> {
    return this.data.fiemap(ino);
  }

  /** fsync/fdatasync: commits the mount's transaction (nothing to do when it is clean). */
  fsync(ino: bigint, datasync: boolean): Promise<void> {
    return this.data.fsync(ino, datasync);
  }

  private async dirInode(ctx: OpCtx, ino: bigint, mode: LockMode): Promise<InodeValue> {
    const v = await ctx.mustInode(ino, mode);
    if (!isDir(v.mode)) throw new FsError("ENOTDIR");
    return v;
  }
}
