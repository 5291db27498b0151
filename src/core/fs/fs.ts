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
import { symlinkKey } from "../key.js";
import { LockMode } from "../lock_msg.js";
import { NetCmd } from "../msg.js";
import { ROOT_INO } from "../mkfs.js";
import {
  addEntry, checkName, dirEmpty, entriesFrom, findEntry, isDot, isDotDot, parentOf,
  removeEntry,
} from "./dirent.js";
import {
  decodeStatfsReply, decodeSymlinkParts, direntType, encodeSymlinkParts, isDir, isLnk,
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
import { checkAccess, checkDelete, type Cred, MAY_EXEC, MAY_READ, MAY_WRITE } from "./perm.js";
import { rename, type RenameArgs } from "./rename.js";
import { XattrOps, type XattrSetFlags } from "./xattr.js";

export type { Cred } from "./perm.js";
export type { InodeAttr, SetattrIn } from "./inode.js";

/** Entries one readdir call hands out at most (the caller continues from where it stopped). */
export const READDIR_MAX_ENTRIES = 4096;
const READDIR_BATCH = 64;

/** readdir's callback: false when the caller's buffer is full (the entry is not consumed). */
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
  readonly xattrs: XattrOps;
  readonly linkMax: number;
  /** File data (data.ts); its opts are the data mount options, changeable at run time. */
  readonly data: DataOps;
  private readonly inoAlloc: InoAllocator;
  private readonly truncateHook: TruncateHook;

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
    this.xattrs = new XattrOps(this.runner, () => this.now());
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
    if (name.length > NAME_LEN_MAX) throw new FsError("ENAMETOOLONG");
    const a = await this.runner.run({ inos: inos([parent, LockMode.READ]) }, async (ctx) => {
      const dir = await this.dirInode(ctx, parent, LockMode.READ);
      checkAccess(cred, dir, MAY_EXEC);
      let ino: bigint;
      if (isDot(name)) ino = parent;
      else if (isDotDot(name)) ino = await parentOf(ctx, parent);
      else {
        checkName(name);
        const d = await findEntry(ctx, parent, name);
        if (d === null) throw new FsError("ENOENT");
        ino = d.ino;
      }
      return attrOf(ino, await ctx.mustInode(ino));
    });
    this.refs.lookup(a.ino, 1);
    return a;
  }

  async getattr(ino: bigint): Promise<InodeAttr> {
    return this.runner.run({ inos: inos([ino, LockMode.READ]) },
      async (ctx) => attrOf(ino, await ctx.mustInode(ino)));
  }

  /** ACCESS / opendir checks: EACCES unless cred may access ino for mask (MAY_*). */
  async access(ino: bigint, mask: number, cred: Cred): Promise<void> {
    await this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      checkAccess(cred, await ctx.mustInode(ino), mask);
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
    return this.runner.run({ inos: inos([ino, LockMode.READ]) }, async (ctx) => {
      const dir = await this.dirInode(ctx, ino, LockMode.READ);
      checkAccess(cred, dir, MAY_READ);
      let p = pos;
      if (p === 0n) {
        if (!cb(Buffer.from("."), 1n, ino, direntType(S_IFDIR))) return p;
        p = 1n;
      }
      if (p === 1n) {
        if (!cb(Buffer.from(".."), 2n, await parentOf(ctx, ino), direntType(S_IFDIR))) return p;
        p = 2n;
      }
      for (let n = 0; n < READDIR_MAX_ENTRIES;) {
        const batch = await entriesFrom(ctx, ino, p, READDIR_BATCH);
        for (const d of batch) {
          if (!cb(d.name, d.pos + 1n, d.ino, d.type)) return d.pos;
          p = d.pos + 1n;
          n++;
        }
        if (batch.length < READDIR_BATCH) return dir.nextReaddirPos > p ? dir.nextReaddirPos : p;
      }
      return p;
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

  async mknod(parent: bigint, name: Buffer, mode: number, rdev: number, cred: Cred):
    Promise<InodeAttr> {
    if (!validFileType(mode) || isDir(mode) || isLnk(mode)) {
      throw new FsError("EINVAL", "mknod file type");
    }
    return this.createNode(parent, name, mode, rdev, cred, null);
  }

  async create(parent: bigint, name: Buffer, mode: number, cred: Cred): Promise<InodeAttr> {
    return this.createNode(parent, name, S_IFREG | (mode & ~S_IFMT), 0, cred, null);
  }

  async mkdir(parent: bigint, name: Buffer, mode: number, cred: Cred): Promise<InodeAttr> {
    return this.createNode(parent, name, S_IFDIR | (mode & ~S_IFMT), 0, cred, null);
  }

  async symlink(parent: bigint, name: Buffer, target: Buffer, cred: Cred): Promise<InodeAttr> {
    if (target.length === 0) throw new FsError("ENOENT", "empty symlink target");
    if (target.length + 1 > SYMLINK_MAX_SIZE) throw new FsError("ENAMETOOLONG");
    if (target.includes(0)) throw new FsError("EINVAL", "NUL in symlink target");
    return this.createNode(parent, name, S_IFLNK | 0o777, 0, cred, target);
  }

  private async createNode(parent: bigint, name: Buffer, mode: number, rdev: number, cred: Cred,
    target: Buffer | null): Promise<InodeAttr> {
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
        ctx.newInode(ino, v);
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
    checkAccess(cred, dir, MAY_EXEC);
    if (await findEntry(ctx, parent, name) !== null) throw new FsError("EEXIST");
    checkAccess(cred, dir, MAY_WRITE);
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
        if (v.nlink === 0) throw new FsError("ENOENT", "linking an unlinked inode");
        if (v.nlink >= this.linkMax) throw new FsError("EMLINK");
        checkNotRetained(v);
        ctx.dirty(ino);
        ctx.dirty(newParent);
        addEntry(ctx, newParent, dir, newName, ino, direntType(v.mode));
        v.nlink++;
        v.ctime = { ...now };
        dir.mtime = { ...now };
        dir.ctime = { ...now };
        return attrOf(ino, v);
      });
    this.refs.lookup(ino, 1);
    return a;
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
    const gone = await this.runner.run({ inos: inos([parent, LockMode.WRITE]) }, async (ctx) => {
      const dir = await this.dirInode(ctx, parent, LockMode.WRITE);
      checkAccess(cred, dir, MAY_EXEC);
      const d = await findEntry(ctx, parent, name);
      if (d === null) throw new FsError("ENOENT");
      const v = await ctx.mustInode(d.ino, LockMode.WRITE);
      if (dirWanted && !isDir(v.mode)) throw new FsError("ENOTDIR");
      if (!dirWanted && isDir(v.mode)) throw new FsError("EISDIR");
      checkDelete(cred, dir, v);
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

  getxattr(ino: bigint, name: Buffer, cred: Cred): Promise<Buffer> {
    return this.xattrs.get(ino, name, cred);
  }

  setxattr(ino: bigint, name: Buffer, value: Buffer, flags: XattrSetFlags, cred: Cred):
    Promise<void> {
    return this.xattrs.set(ino, name, value, flags, cred);
  }

  listxattr(ino: bigint, cred: Cred): Promise<Buffer[]> {
    return this.xattrs.list(ino, cred);
  }

  removexattr(ino: bigint, name: Buffer, cred: Cred): Promise<void> {
    return this.xattrs.remove(ino, name, cred);
  }

  /** The kernel dropped n lookup references (FORGET). */
  forget(ino: bigint, n: number): Promise<void> {
    return this.refs.forget(ino, n);
  }

  /** A file handle opened (OPEN/OPENDIR/CREATE's handle). */
  open(ino: bigint): void {
    this.refs.open(ino);
  }

  /** A file handle closed (RELEASE/RELEASEDIR). */
  release(ino: bigint): Promise<void> {
    return this.refs.release(ino);
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
