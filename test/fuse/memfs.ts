/*
 * A small in-memory filesystem implementing FuseOps, for the FUSE session tests only.
 *
 * Goal: exercise every path of src/fuse (entries, data, xattrs, rename, links, readdir and
 * readdirplus with lookup counting, ioctl, errors) with real system calls, and expose its
 * bookkeeping (lookup counts, frees) so a test can check that the kernel and the filesystem
 * agree on node references. It is deliberately simple: no permission checks (the mount uses
 * default_permissions), one flat Map of nodes, data in growable Buffers, a memory bound.
 *
 * Fault hooks: looking up a name in FAULT_NAMES makes the handler fail in a chosen way (an
 * FsError thrown synchronously, a rejected promise, a non-FsError bug, a hang until the
 * kernel interrupts the request) so the tests can see the errno reach the caller.
 * "Behind" methods change the tree without the kernel knowing, as another cluster node
 * would; the test then sends notifications so the kernel's caches follow.
 */

import type { FuseOps, InitInfo, ReaddirArgs, RequestContext } from "../../src/fuse/ops.js";
import {
  type AccessReq, type Attr, type AttrOut, type CopyFileRangeReq, type CreateOut,
  type CreateReq, type EntryOut, type FallocateReq, type ForgetReq, type GetattrReq,
  type GetxattrReq, type IoctlOut, type IoctlReq, type LinkReq, type LseekReq, type MkdirReq,
  type MknodReq, type NameReq, type NodeReq, type OpenOut, type OpenReq, type ReadReq,
  type ReleaseReq, type RemovexattrReq, type RenameReq, RENAME_EXCHANGE, RENAME_NOREPLACE,
  type SetattrReq, type SetxattrReq, type Statfs, type SymlinkReq, type Timespec,
  type WriteReq, XATTR_CREATE, XATTR_REPLACE, FUSE_ROOT_ID,
} from "../../src/fuse/proto.js";
import { FsError } from "../../src/util/errno.js";

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_ISUID = 0o4000;
const S_ISGID = 0o2000;
const O_TRUNC = 0o1000;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const NAME_MAX = 255;
/** Bound on file data held by one memfs. */
export const MEMFS_MAX_BYTES = 768 << 20;
/** A test ioctl: _IOR('s', 1, u64) returns the inode number. */
export const MEMFS_IOC_GET_INO = ((2 << 30) | (8 << 16) | (0x73 << 8) | 1) >>> 0;
/** Validity the kernel may cache names and attributes: long, so notifications matter. */
export const MEMFS_VALID_MS = 60_000;
/** How long a hanging handler waits for INTERRUPT before giving up with EIO. */
const HANG_LIMIT_MS = 5000;

export const FAULT_NAMES = {
  eacces: "fault-eacces", reject: "fault-reject", bug: "fault-bug", hang: "fault-hang",
} as const;

interface DirEntry { name: Buffer; ino: number; cookie: number }

interface Node {
  ino: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  atime: Timespec;
  mtime: Timespec;
  ctime: Timespec;
  size: number;
  data: Buffer;
  target: Buffer | null;
  entries: Map<string, DirEntry> | null;
  nextCookie: number;
  parent: number;
  xattrs: Map<string, Buffer>;
  lookups: number;
  opens: number;
}

export interface MemfsStats {
  nodes: number;
  lookupsHeld: number;
  forgets: number;
  freed: number;
  interrupted: number;
  badForgets: number;
  bytes: number;
  init: InitInfo | null;
}

function now(): Timespec {
  const ms = Date.now();
  return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1e6 };
}

function key(name: Buffer): string {
  return name.toString("latin1");
}

export class MemFs implements FuseOps {
  private readonly nodes = new Map<number, Node>();
  private nextIno = FUSE_ROOT_ID + 1;
  private nextFh = 1;
  private bytes = 0;
  private forgets = 0;
  private freed = 0;
  private interrupted = 0;
  private badForgets = 0;
  private initInfo: InitInfo | null = null;

  constructor() {
    const root = this.newNode(S_IFDIR | 0o755, 0, 0);
    root.nlink = 2;
    root.parent = FUSE_ROOT_ID;
  }

  stats(): MemfsStats {
    let lookupsHeld = 0;
    for (const n of this.nodes.values()) if (n.ino !== FUSE_ROOT_ID) lookupsHeld += n.lookups;
    return { nodes: this.nodes.size, lookupsHeld, forgets: this.forgets, freed: this.freed,
      interrupted: this.interrupted, badForgets: this.badForgets, bytes: this.bytes,
      init: this.initInfo };
  }

  init(info: InitInfo): void {
    this.initInfo = info;
  }

  // --- entries -----------------------------------------------------------------------------

  lookup(ctx: RequestContext, req: NameReq): EntryOut | Promise<EntryOut> {
    const fault = this.fault(ctx, req.name);
    if (fault !== null) return fault;
    const dir = this.dir(req.parent);
    const e = dir.entries!.get(key(req.name));
    if (e === undefined) throw new FsError("ENOENT");
    return this.entry(this.node(e.ino));
  }

  forget(req: ForgetReq): void {
    this.forgets++;
    const n = this.nodes.get(req.nodeid);
    if (n === undefined || n.lookups < req.nlookup) {
      this.badForgets++;
      return;
    }
    n.lookups -= req.nlookup;
    this.maybeFree(n);
  }

  getattr(_ctx: RequestContext, req: GetattrReq): AttrOut {
    return { attrValidMs: MEMFS_VALID_MS, attr: this.attr(this.node(req.nodeid)) };
  }

  setattr(_ctx: RequestContext, req: SetattrReq): AttrOut {
    const n = this.node(req.nodeid);
    if (req.mode !== null) n.mode = (n.mode & S_IFMT) | (req.mode & 0o7777);
    if (req.uid !== null) n.uid = req.uid;
    if (req.gid !== null) n.gid = req.gid;
    if (req.size !== null) this.truncate(n, req.size);
    if (req.atime !== null) n.atime = req.atime === "now" ? now() : req.atime;
    if (req.mtime !== null) n.mtime = req.mtime === "now" ? now() : req.mtime;
    if (req.killSuidgid) killSuidgid(n);
    n.ctime = req.ctime ?? now();
    return { attrValidMs: MEMFS_VALID_MS, attr: this.attr(n) };
  }

  readlink(_ctx: RequestContext, req: NodeReq): Buffer {
    const n = this.node(req.nodeid);
    if (n.target === null) throw new FsError("EINVAL");
    return n.target;
  }

  symlink(ctx: RequestContext, req: SymlinkReq): EntryOut {
    this.checkFree(this.dir(req.parent), req.name);
    const n = this.newNode(S_IFLNK | 0o777, ctx.uid, ctx.gid);
    n.target = Buffer.from(req.target);
    n.size = req.target.length;
    return this.link1(req.parent, req.name, n);
  }

  mknod(ctx: RequestContext, req: MknodReq): EntryOut {
    this.checkFree(this.dir(req.parent), req.name);
    const n = this.newNode(req.mode, ctx.uid, ctx.gid);
    n.rdev = req.rdev;
    return this.link1(req.parent, req.name, n);
  }

  mkdir(ctx: RequestContext, req: MkdirReq): EntryOut {
    const parent = this.dir(req.parent);
    this.checkFree(parent, req.name);
    const n = this.newNode(S_IFDIR | (req.mode & 0o7777), ctx.uid, ctx.gid);
    n.nlink = 2;
    n.parent = parent.ino;
    parent.nlink++;
    return this.link1(req.parent, req.name, n);
  }

  unlink(_ctx: RequestContext, req: NameReq): void {
    const dir = this.dir(req.parent);
    const n = this.child(dir, req.name);
    if (n.entries !== null) throw new FsError("EISDIR");
    this.removeEntry(dir, req.name);
    n.nlink--;
    n.ctime = now();
    this.maybeFree(n);
  }

  rmdir(_ctx: RequestContext, req: NameReq): void {
    const dir = this.dir(req.parent);
    const n = this.child(dir, req.name);
    if (n.entries === null) throw new FsError("ENOTDIR");
    if (n.entries.size > 0) throw new FsError("ENOTEMPTY");
    this.removeEntry(dir, req.name);
    n.nlink = 0;
    dir.nlink--;
    this.maybeFree(n);
  }

  rename(_ctx: RequestContext, req: RenameReq): void {
    const src = this.dir(req.parent);
    const dst = this.dir(req.newParent);
    const moving = this.child(src, req.name);
    const existing = dst.entries!.get(key(req.newName));
    if ((req.flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) !== 0) throw new FsError("EINVAL");
    if ((req.flags & RENAME_EXCHANGE) !== 0) {
      if (existing === undefined) throw new FsError("ENOENT");
      this.exchange(src, req.name, dst, req.newName);
      return;
    }
    if (existing !== undefined) {
      if ((req.flags & RENAME_NOREPLACE) !== 0) throw new FsError("EEXIST");
      if (existing.ino === moving.ino) return;
      this.replaceTarget(dst, req.newName, moving, this.node(existing.ino));
    }
    this.removeEntry(src, req.name);
    this.addEntry(dst, req.newName, moving.ino);
    if (moving.entries !== null && src !== dst) {
      src.nlink--;
      dst.nlink++;
      moving.parent = dst.ino;
    }
    moving.ctime = now();
  }

  link(_ctx: RequestContext, req: LinkReq): EntryOut {
    const n = this.node(req.nodeid);
    if (n.entries !== null) throw new FsError("EPERM");
    this.checkFree(this.dir(req.newParent), req.newName);
    n.nlink++;
    n.ctime = now();
    return this.link1(req.newParent, req.newName, n);
  }

  create(ctx: RequestContext, req: CreateReq): CreateOut {
    this.checkFree(this.dir(req.parent), req.name);
    const n = this.newNode(S_IFREG | (req.mode & 0o7777), ctx.uid, ctx.gid);
    const entry = this.link1(req.parent, req.name, n);
    n.opens++;
    return { entry, open: { fh: this.nextFh++, openFlags: 0 } };
  }

  tmpfile(ctx: RequestContext, req: CreateReq): CreateOut {
    this.dir(req.parent);
    const n = this.newNode(S_IFREG | (req.mode & 0o7777), ctx.uid, ctx.gid);
    n.nlink = 0;
    n.lookups++;
    n.opens++;
    return { entry: this.entryOf(n), open: { fh: this.nextFh++, openFlags: 0 } };
  }

  // --- data --------------------------------------------------------------------------------

  open(_ctx: RequestContext, req: OpenReq): OpenOut {
    const n = this.node(req.nodeid);
    if ((req.flags & O_TRUNC) !== 0 && n.entries === null) {
      this.truncate(n, 0);
      if (req.killSuidgid) killSuidgid(n);
      n.mtime = n.ctime = now();
    }
    n.opens++;
    return { fh: this.nextFh++, openFlags: 0 };
  }

  opendir(ctx: RequestContext, req: OpenReq): OpenOut {
    this.dir(req.nodeid);
    return this.open(ctx, req);
  }

  read(_ctx: RequestContext, req: ReadReq): Buffer {
    const n = this.node(req.nodeid);
    if (n.entries !== null) throw new FsError("EISDIR");
    const end = Math.min(n.size, req.offset + req.size);
    // A view is safe: this handler settles synchronously, so the session writes the reply
    // before any other request can change the data.
    return req.offset >= end ? Buffer.alloc(0) : n.data.subarray(req.offset, end);
  }

  write(_ctx: RequestContext, req: WriteReq): number {
    const n = this.node(req.nodeid);
    const end = req.offset + req.data.length;
    this.reserve(n, end);
    req.data.copy(n.data, req.offset);
    if (end > n.size) n.size = end;
    if (req.killSuidgid) killSuidgid(n);
    n.mtime = n.ctime = now();
    return req.data.length;
  }

  release(_ctx: RequestContext, req: ReleaseReq): void {
    const n = this.node(req.nodeid);
    n.opens--;
    this.maybeFree(n);
  }

  releasedir(ctx: RequestContext, req: ReleaseReq): void {
    this.release(ctx, req);
  }

  fsync(): void {
    // Nothing is volatile in memory.
  }

  flush(): void {
    // Nothing to write back.
  }

  fallocate(_ctx: RequestContext, req: FallocateReq): void {
    if (req.mode !== 0) throw new FsError("EOPNOTSUPP");
    const n = this.node(req.nodeid);
    const end = req.offset + req.length;
    if (end > n.size) this.truncate(n, end);
  }

  lseek(_ctx: RequestContext, req: LseekReq): number {
    const n = this.node(req.nodeid);
    if (req.offset >= n.size) throw new FsError("ENXIO");
    if (req.whence === SEEK_DATA) return req.offset;
    if (req.whence === SEEK_HOLE) return n.size;
    throw new FsError("EINVAL");
  }

  copyFileRange(_ctx: RequestContext, req: CopyFileRangeReq): number {
    const src = this.node(req.nodeid);
    const dst = this.node(req.nodeidOut);
    const len = Math.max(0, Math.min(req.len, src.size - req.offIn));
    const bytes = Buffer.from(src.data.subarray(req.offIn, req.offIn + len));
    this.reserve(dst, req.offOut + len);
    bytes.copy(dst.data, req.offOut);
    dst.size = Math.max(dst.size, req.offOut + len);
    dst.mtime = dst.ctime = now();
    return len;
  }

  ioctl(_ctx: RequestContext, req: IoctlReq): IoctlOut {
    if (req.cmd !== MEMFS_IOC_GET_INO) throw new FsError("ENOTTY");
    const out = Buffer.alloc(8);
    out.writeBigUInt64LE(BigInt(req.nodeid));
    return { result: 0, data: out.subarray(0, Math.min(8, req.outSize)) };
  }

  statfs(): Statfs {
    const total = MEMFS_MAX_BYTES / 4096;
    const used = Math.ceil(this.bytes / 4096);
    return { blocks: total, bfree: total - used, bavail: total - used, files: 1 << 20,
      ffree: (1 << 20) - this.nodes.size, bsize: 4096, namelen: NAME_MAX, frsize: 4096 };
  }

  access(_ctx: RequestContext, req: AccessReq): void {
    this.node(req.nodeid);
  }

  // --- xattrs ------------------------------------------------------------------------------

  setxattr(_ctx: RequestContext, req: SetxattrReq): void {
    const n = this.node(req.nodeid);
    const k = key(req.name);
    const has = n.xattrs.has(k);
    if ((req.flags & XATTR_CREATE) !== 0 && has) throw new FsError("EEXIST");
    if ((req.flags & XATTR_REPLACE) !== 0 && !has) throw new FsError("ENODATA");
    n.xattrs.set(k, Buffer.from(req.value));
    n.ctime = now();
  }

  getxattr(_ctx: RequestContext, req: GetxattrReq): Buffer {
    const v = this.node(req.nodeid).xattrs.get(key(req.name));
    if (v === undefined) throw new FsError("ENODATA");
    return v;
  }

  listxattr(_ctx: RequestContext, req: NodeReq): Buffer[] {
    return [...this.node(req.nodeid).xattrs.keys()].map((k) => Buffer.from(k, "latin1"));
  }

  removexattr(_ctx: RequestContext, req: RemovexattrReq): void {
    const n = this.node(req.nodeid);
    if (!n.xattrs.delete(key(req.name))) throw new FsError("ENODATA");
    n.ctime = now();
  }

  // --- directories -------------------------------------------------------------------------

  readdir(_ctx: RequestContext, req: ReaddirArgs): void {
    this.fillDir(req);
  }

  readdirplus(_ctx: RequestContext, req: ReaddirArgs): void {
    this.fillDir(req);
    // Count the references the kernel takes when this reply is delivered (see ops.ts).
    for (const ino of req.out.lookups) this.node(ino).lookups++;
  }

  /** Offsets: "." is 1, ".." is 2, children carry increasing cookies from 3. */
  private fillDir(req: ReaddirArgs): void {
    const dir = this.dir(req.nodeid);
    const out = req.out;
    if (req.offset < 1 && !out.add(Buffer.from("."), 1, dir.ino, 4)) return;
    if (req.offset < 2 && !out.add(Buffer.from(".."), 2, dir.parent, 4)) return;
    for (const e of dir.entries!.values()) {
      if (e.cookie <= req.offset) continue;
      const n = this.node(e.ino);
      if (!out.addEntry(e.name, e.cookie, this.entryOf(n))) return;
    }
  }

  // --- behind the kernel's back (another node of a cluster) -------------------------------

  /** Resolves a path relative to the root, e.g. "d/f". */
  resolve(path: string): Node {
    let n = this.node(FUSE_ROOT_ID);
    for (const part of path.split("/").filter((p) => p.length > 0)) {
      n = this.child(this.dirNode(n), Buffer.from(part));
    }
    return n;
  }

  /** Replaces a file's contents; returns its inode number. */
  writeBehind(path: string, data: Buffer): number {
    const n = this.resolve(path);
    this.truncate(n, 0);
    this.reserve(n, data.length);
    data.copy(n.data, 0);
    n.size = data.length;
    n.mtime = n.ctime = now();
    return n.ino;
  }

  /** Removes a file's name; returns [parent ino, child ino]. */
  unlinkBehind(dirPath: string, name: string): [number, number] {
    const dir = this.dirNode(this.resolve(dirPath));
    const n = this.child(dir, Buffer.from(name));
    this.removeEntry(dir, Buffer.from(name));
    n.nlink--;
    this.maybeFree(n);
    return [dir.ino, n.ino];
  }

  // --- helpers -----------------------------------------------------------------------------

  private fault(ctx: RequestContext, name: Buffer): Promise<EntryOut> | null {
    const s = name.toString();
    if (s === FAULT_NAMES.eacces) throw new FsError("EACCES", "deliberate");
    if (s === FAULT_NAMES.reject) return Promise.reject(new FsError("EXDEV", "deliberate"));
    if (s === FAULT_NAMES.bug) throw new TypeError("deliberate bug in a handler");
    if (s !== FAULT_NAMES.hang) return null;
    return new Promise<EntryOut>((_resolve, reject) => {
      const timer = setTimeout(() => reject(new FsError("EIO", "never interrupted")),
        HANG_LIMIT_MS);
      ctx.onInterrupt(() => {
        clearTimeout(timer);
        this.interrupted++;
        reject(new FsError("EINTR"));
      });
    });
  }

  private newNode(mode: number, uid: number, gid: number): Node {
    const t = now();
    const n: Node = { ino: this.nextIno++, mode, nlink: 1, uid, gid, rdev: 0, atime: t,
      mtime: t, ctime: t, size: 0, data: Buffer.alloc(0), target: null,
      entries: (mode & S_IFMT) === S_IFDIR ? new Map() : null, nextCookie: 3,
      parent: 0, xattrs: new Map(), lookups: 0, opens: 0 };
    if (this.nodes.size === 0) n.ino = FUSE_ROOT_ID;
    this.nodes.set(n.ino, n);
    return n;
  }

  private node(ino: number): Node {
    const n = this.nodes.get(ino);
    if (n === undefined) throw new FsError("ESTALE", `no node ${ino}`);
    return n;
  }

  private dir(ino: number): Node {
    return this.dirNode(this.node(ino));
  }

  private dirNode(n: Node): Node {
    if (n.entries === null) throw new FsError("ENOTDIR");
    return n;
  }

  private child(dir: Node, name: Buffer): Node {
    const e = dir.entries!.get(key(name));
    if (e === undefined) throw new FsError("ENOENT");
    return this.node(e.ino);
  }

  private checkFree(dir: Node, name: Buffer): void {
    if (name.length > NAME_MAX) throw new FsError("ENAMETOOLONG");
    if (dir.entries!.has(key(name))) throw new FsError("EEXIST");
  }

  /** Enters n under name (checked free by the caller) and returns its entry, counted. */
  private link1(parentIno: number, name: Buffer, n: Node): EntryOut {
    this.addEntry(this.dir(parentIno), name, n.ino);
    return this.entry(n);
  }

  private addEntry(dir: Node, name: Buffer, ino: number): void {
    dir.entries!.set(key(name), { name: Buffer.from(name), ino, cookie: dir.nextCookie++ });
    dir.mtime = dir.ctime = now();
  }

  private removeEntry(dir: Node, name: Buffer): void {
    dir.entries!.delete(key(name));
    dir.mtime = dir.ctime = now();
  }

  private exchange(src: Node, a: Buffer, dst: Node, b: Buffer): void {
    const ea = src.entries!.get(key(a))!;
    const eb = dst.entries!.get(key(b))!;
    [ea.ino, eb.ino] = [eb.ino, ea.ino];
    for (const [e, d, other] of [[ea, src, dst], [eb, dst, src]] as const) {
      const n = this.node(e.ino);
      if (n.entries !== null && src !== dst) {
        n.parent = d.ino;
        d.nlink++;
        other.nlink--;
      }
    }
  }

  /** rename over an existing target: the POSIX type rules, then the target loses a link. */
  private replaceTarget(dst: Node, name: Buffer, moving: Node, target: Node): void {
    if (moving.entries !== null) {
      if (target.entries === null) throw new FsError("ENOTDIR");
      if (target.entries.size > 0) throw new FsError("ENOTEMPTY");
      target.nlink = 0;
      dst.nlink--;
    } else {
      if (target.entries !== null) throw new FsError("EISDIR");
      target.nlink--;
    }
    this.removeEntry(dst, name);
    this.maybeFree(target);
  }

  private entry(n: Node): EntryOut {
    n.lookups++;
    return this.entryOf(n);
  }

  private entryOf(n: Node): EntryOut {
    return { nodeid: n.ino, generation: 1, entryValidMs: MEMFS_VALID_MS,
      attrValidMs: MEMFS_VALID_MS, attr: this.attr(n) };
  }

  private attr(n: Node): Attr {
    return { ino: n.ino, size: n.size, blocks: Math.ceil(n.size / 512), atime: n.atime.sec,
      mtime: n.mtime.sec, ctime: n.ctime.sec, atimensec: n.atime.nsec,
      mtimensec: n.mtime.nsec, ctimensec: n.ctime.nsec, mode: n.mode, nlink: n.nlink,
      uid: n.uid, gid: n.gid, rdev: n.rdev, blksize: 4096, flags: 0 };
  }

  /** Makes room for `end` bytes of data (capacity doubles), within MEMFS_MAX_BYTES. */
  private reserve(n: Node, end: number): void {
    if (n.entries !== null) throw new FsError("EISDIR");
    if (end <= n.data.length) return;
    const cap = Math.max(end, Math.min(n.data.length * 2, end + (64 << 20)));
    if (this.bytes - n.data.length + cap > MEMFS_MAX_BYTES) throw new FsError("ENOSPC");
    const data = Buffer.alloc(cap);
    n.data.copy(data, 0, 0, n.size);
    this.bytes += cap - n.data.length;
    n.data = data;
  }

  private truncate(n: Node, size: number): void {
    if (n.entries !== null) throw new FsError("EISDIR");
    if (size > n.size) this.reserve(n, size);
    else n.data.fill(0, size, n.size); // bytes past a later extension must read as zero
    n.size = size;
    n.mtime = n.ctime = now();
  }

  private maybeFree(n: Node): void {
    if (n.nlink > 0 || n.lookups > 0 || n.opens > 0 || n.ino === FUSE_ROOT_ID) return;
    this.bytes -= n.data.length;
    this.nodes.delete(n.ino);
    this.freed++;
  }
}

function killSuidgid(n: Node): void {
  n.mode &= ~S_ISUID;
  if ((n.mode & 0o010) !== 0) n.mode &= ~S_ISGID;
}
