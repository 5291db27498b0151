/*
 * The status directory: the twin of upstream's /sys/fs/scoutfs/f.<fsid>.r.<rid>/ (and of the
 * debugfs trigger/ files), served by the mount daemon as a small second FUSE mount at
 * /run/scoutfs/f.XXXXXX.r.YYYYYY (reference/scoutfs.md 2.6).
 *
 * Two parts:
 *  - StatusFs, a FuseOps over a declarative tree of StatusNodes: directories (static or
 *    computed at each lookup/readdir, so counters that appear later show up) and files whose
 *    content is produced by read() when a reader starts at offset 0 and whose writes go to
 *    write() whole, as sysfs hands a write to an attribute's store(). Files are opened with
 *    direct_io, so every read reaches us and shows live values; sizes are the current
 *    content's length (4096, as sysfs reports, when read() fails). A write refused by the
 *    file (FsError EINVAL for a bad value) fails the writer's write(2) with that errno; files
 *    without write() refuse to be opened for writing (EACCES, as sysfs does even for root).
 *    Truncation (O_TRUNC, ftruncate) is accepted and does nothing, so `echo 1 > f` works.
 *  - buildStatusTree(), the upstream layout over a StatusSource: fsid, rid, format_version,
 *    data_device_maj_min, counters/, mount_options/ (validated by src/core/options.ts and
 *    applied through a callback), volume_options/, quorum/ (members only) and trigger/.
 *
 * Node ids are assigned per path on first lookup and never reused or freed (the tree is small
 * and bounded by STATUSFS_MAX_NODES), so FORGET needs no bookkeeping; a path that no longer
 * resolves (a dynamic entry that went away) answers ENOENT. Never touch the mount point from
 * the serving process with synchronous calls (reference/fuse.md): the daemon serves it.
 */

import fsp from "node:fs/promises";
import type { Logger } from "../env/env.js";
import {
  type MountOptions, parseVolumeOptionWrite, showVolumeOption, SYSFS_MOUNT_OPTIONS,
  type SysfsMountOptionName, VOLUME_OPTION_NAMES, type VolumeOptionName,
} from "../core/options.js";
import type { Counters } from "../util/counters.js";
import { FsError, isFsError } from "../util/errno.js";
import type { Triggers } from "../util/triggers.js";
import type { FuseOps, ReaddirArgs, RequestContext } from "./ops.js";
import {
  type Attr, type AttrOut, type EntryOut, Fopen, FUSE_ROOT_ID, type GetattrReq, type NameReq,
  type NodeReq, type OpenOut, type OpenReq, type ReadReq, type ReleaseReq, type SetattrReq,
  type Statfs, type WriteReq,
} from "./proto.js";
import { FuseSession } from "./session.js";

export type StatusNode = StatusDir | StatusFile;

export interface StatusDir {
  readonly kind: "dir";
  /** The entries, or a function giving the current entries (called at each lookup/readdir). */
  readonly children: ReadonlyMap<string, StatusNode> | (() => ReadonlyMap<string, StatusNode>);
}

export interface StatusFile {
  readonly kind: "file";
  /** Permission bits: 0o444 for read-only files, 0o644 for writable ones. */
  readonly mode: number;
  /** The whole content, produced afresh for each reader. */
  read(): string | Promise<string>;
  /** A write's text (whole, newline included). Throw FsError to refuse (EINVAL: bad value). */
  write?(text: string): void | Promise<void>;
}

/** Distinct paths that get a node id (the tree is small; this only bounds dynamic growth). */
export const STATUSFS_MAX_NODES = 1 << 16;
/** Open file handles at once. */
export const STATUSFS_MAX_HANDLES = 4096;
/** sysfs hands a store at most a page; longer writes are cut there (and report that count). */
export const STATUSFS_WRITE_MAX_BYTES = 4096;
/** The size reported when producing a file's content fails (sysfs reports 4096 always). */
export const STATUSFS_FALLBACK_SIZE_BYTES = 4096;
/** How long the kernel may cache a name; attributes are never cached (sizes are live). */
export const STATUSFS_ENTRY_VALID_MS = 1000;
/** Largest content one file may produce (a bug guard: sysfs files are one page). */
export const STATUSFS_CONTENT_MAX_BYTES = 1 << 20;

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const O_ACCMODE = 3;
const DT_DIR = 4;
const DT_REG = 8;
/** readdir offsets: "." is 1, ".." is 2, a child is its node id + READDIR_ID_BASE. */
const READDIR_ID_BASE = 2;

export interface StatusFsOptions {
  /** Owner of every node; default 0 (root), as sysfs. */
  uid?: number;
  gid?: number;
  /** Time shown as atime/mtime/ctime of every node (ms since the epoch); default now. */
  timeMs?: number;
  /** Called when a file refused a write (the daemon logs upstream's message). */
  onRefusedWrite?(path: string, e: FsError): void;
}

interface Handle {
  nodeid: number;
  /** Content produced at the last read from offset 0. */
  content: Buffer | null;
}

function childrenOf(d: StatusDir): ReadonlyMap<string, StatusNode> {
  return typeof d.children === "function" ? d.children() : d.children;
}

export class StatusFs implements FuseOps {
  private readonly root: StatusDir;
  private readonly idByPath = new Map<string, number>([["", FUSE_ROOT_ID]]);
  private readonly pathById = new Map<number, string>([[FUSE_ROOT_ID, ""]]);
  private readonly handles = new Map<number, Handle>();
  private nextId = FUSE_ROOT_ID + 1;
  private nextFh = 1;
  private readonly uid: number;
  private readonly gid: number;
  private readonly timeSec: number;
  private readonly timeNsec: number;
  private readonly onRefusedWrite: ((path: string, e: FsError) => void) | undefined;

  constructor(root: StatusDir, opts: StatusFsOptions = {}) {
    this.root = root;
    this.uid = opts.uid ?? 0;
    this.gid = opts.gid ?? 0;
    const ms = opts.timeMs ?? Date.now();
    this.timeSec = Math.floor(ms / 1000);
    this.timeNsec = (ms % 1000) * 1e6;
    this.onRefusedWrite = opts.onRefusedWrite;
  }

  // --- nodes -------------------------------------------------------------------------------

  /** The node a node id names now (ENOENT if its path no longer resolves). */
  private resolve(nodeid: number): StatusNode {
    const path = this.pathById.get(nodeid);
    if (path === undefined) throw new FsError("ENOENT");
    let node: StatusNode = this.root;
    if (path === "") return node;
    for (const name of path.split("/")) {
      if (node.kind !== "dir") throw new FsError("ENOENT");
      const next = childrenOf(node).get(name);
      if (next === undefined) throw new FsError("ENOENT");
      node = next;
    }
    return node;
  }

  private dirOf(nodeid: number): StatusDir {
    const n = this.resolve(nodeid);
    if (n.kind !== "dir") throw new FsError("ENOTDIR");
    return n;
  }

  private fileOf(nodeid: number): StatusFile {
    const n = this.resolve(nodeid);
    if (n.kind !== "file") throw new FsError("EISDIR");
    return n;
  }

  private idOf(parent: number, name: string): number {
    const parentPath = this.pathById.get(parent);
    if (parentPath === undefined) throw new FsError("ENOENT");
    const path = parentPath === "" ? name : `${parentPath}/${name}`;
    const known = this.idByPath.get(path);
    if (known !== undefined) return known;
    if (this.idByPath.size >= STATUSFS_MAX_NODES) {
      throw new FsError("ENFILE", `status directory has more than ${STATUSFS_MAX_NODES} paths`);
    }
    const id = this.nextId++;
    this.idByPath.set(path, id);
    this.pathById.set(id, path);
    return id;
  }

  private async produce(f: StatusFile): Promise<Buffer> {
    const b = Buffer.from(await f.read(), "utf8");
    if (b.length > STATUSFS_CONTENT_MAX_BYTES) {
      throw new FsError("EFBIG", `status file content of ${b.length} bytes`);
    }
    return b;
  }

  private async sizeOf(f: StatusFile): Promise<number> {
    try {
      return (await this.produce(f)).length;
    } catch {
      return STATUSFS_FALLBACK_SIZE_BYTES;
    }
  }

  private async attr(nodeid: number, n: StatusNode): Promise<Attr> {
    const size = n.kind === "file" ? await this.sizeOf(n) : 0;
    const t = this.timeSec;
    const ns = this.timeNsec;
    return {
      ino: nodeid, size, blocks: Math.ceil(size / 512), atime: t, mtime: t, ctime: t,
      atimensec: ns, mtimensec: ns, ctimensec: ns,
      mode: n.kind === "dir" ? S_IFDIR | 0o755 : S_IFREG | (n.mode & 0o7777),
      nlink: n.kind === "dir" ? 2 : 1, uid: this.uid, gid: this.gid, rdev: 0, blksize: 4096,
      flags: 0,
    };
  }

  // --- entries -----------------------------------------------------------------------------

  async lookup(_ctx: RequestContext, req: NameReq): Promise<EntryOut> {
    const name = req.name.toString("utf8");
    const child = childrenOf(this.dirOf(req.parent)).get(name);
    if (child === undefined) throw new FsError("ENOENT");
    const nodeid = this.idOf(req.parent, name);
    return { nodeid, generation: 0, entryValidMs: STATUSFS_ENTRY_VALID_MS, attrValidMs: 0,
      attr: await this.attr(nodeid, child) };
  }

  forget(): void {
    // Node ids live as long as the mount (see the file comment).
  }

  // Names cannot be made or removed: the errnos the VFS gives for a filesystem without
  // the operation (vfs_create EACCES, vfs_mkdir/mknod/unlink/... EPERM), as on sysfs.
  create(): never {
    throw new FsError("EACCES");
  }

  mknod(): never {
    throw new FsError("EPERM");
  }

  mkdir(): never {
    throw new FsError("EPERM");
  }

  unlink(): never {
    throw new FsError("EPERM");
  }

  rmdir(): never {
    throw new FsError("EPERM");
  }

  rename(): never {
    throw new FsError("EPERM");
  }

  symlink(): never {
    throw new FsError("EPERM");
  }

  link(): never {
    throw new FsError("EPERM");
  }

  async getattr(_ctx: RequestContext, req: GetattrReq): Promise<AttrOut> {
    return { attrValidMs: 0, attr: await this.attr(req.nodeid, this.resolve(req.nodeid)) };
  }

  /** Truncation is accepted and ignored (sysfs); other attribute changes are refused. */
  async setattr(_ctx: RequestContext, req: SetattrReq): Promise<AttrOut> {
    const n = this.resolve(req.nodeid);
    const others = req.mode !== null || req.uid !== null || req.gid !== null ||
      req.atime !== null || req.mtime !== null;
    if (others) throw new FsError("EPERM");
    if (req.size !== null && (n.kind !== "file" || n.write === undefined)) {
      throw new FsError(n.kind === "file" ? "EACCES" : "EISDIR");
    }
    return { attrValidMs: 0, attr: await this.attr(req.nodeid, n) };
  }

  // --- files -------------------------------------------------------------------------------

  open(_ctx: RequestContext, req: OpenReq): OpenOut {
    const f = this.fileOf(req.nodeid);
    if ((req.flags & O_ACCMODE) !== 0 && f.write === undefined) throw new FsError("EACCES");
    if (this.handles.size >= STATUSFS_MAX_HANDLES) throw new FsError("ENFILE");
    const fh = this.nextFh++;
    this.handles.set(fh, { nodeid: req.nodeid, content: null });
    return { fh, openFlags: Fopen.DIRECT_IO };
  }

  /** A read from offset 0 produces the content afresh; later offsets continue that copy. */
  async read(_ctx: RequestContext, req: ReadReq): Promise<Buffer> {
    const f = this.fileOf(req.nodeid);
    const h = this.handles.get(req.fh);
    let content = req.offset === 0 ? null : (h?.content ?? null);
    if (content === null) {
      content = await this.produce(f);
      const now = this.handles.get(req.fh);
      if (now !== undefined) now.content = content;
    }
    if (req.offset >= content.length) return Buffer.alloc(0);
    return content.subarray(req.offset, Math.min(content.length, req.offset + req.size));
  }

  async write(_ctx: RequestContext, req: WriteReq): Promise<number> {
    const f = this.fileOf(req.nodeid);
    if (f.write === undefined) throw new FsError("EBADF");
    const count = Math.min(req.data.length, STATUSFS_WRITE_MAX_BYTES);
    if (count === 0) return 0;
    // toString copies: the request buffer is reused once this handler settles
    const text = req.data.subarray(0, count).toString("utf8");
    try {
      await f.write(text);
    } catch (e) {
      if (isFsError(e)) this.onRefusedWrite?.(this.pathById.get(req.nodeid) ?? "?", e);
      throw e;
    }
    const h = this.handles.get(req.fh);
    if (h !== undefined) h.content = null;
    return count;
  }

  release(_ctx: RequestContext, req: ReleaseReq): void {
    this.handles.delete(req.fh);
  }

  flush(): void {
    // Writes are applied as they arrive.
  }

  fsync(): void {
    // Nothing is buffered.
  }

  // --- directories -------------------------------------------------------------------------

  opendir(_ctx: RequestContext, req: OpenReq): OpenOut {
    this.dirOf(req.nodeid);
    return { fh: 0, openFlags: 0 };
  }

  /**
   * "." and ".." at offsets 1 and 2, then the children ordered by node id (every child gets
   * an id on the first call), so a listing resumed at any offset neither repeats nor skips
   * entries, and entries that appear meanwhile come last.
   */
  readdir(_ctx: RequestContext, req: ReaddirArgs): void {
    const dir = this.dirOf(req.nodeid);
    const out = req.out;
    if (req.offset < 1 && !out.add(Buffer.from("."), 1, req.nodeid, DT_DIR)) return;
    const parent = this.parentOf(req.nodeid);
    if (req.offset < 2 && !out.add(Buffer.from(".."), 2, parent, DT_DIR)) return;
    const entries = [...childrenOf(dir)].map(([name, node]) =>
      ({ name, node, id: this.idOf(req.nodeid, name) })).sort((a, b) => a.id - b.id);
    for (const e of entries) {
      const off = e.id + READDIR_ID_BASE;
      if (off <= req.offset) continue;
      const type = e.node.kind === "dir" ? DT_DIR : DT_REG;
      if (!out.add(Buffer.from(e.name), off, e.id, type)) return;
    }
  }

  releasedir(): void {
    // No per-open directory state.
  }

  private parentOf(nodeid: number): number {
    const path = this.pathById.get(nodeid) ?? "";
    const cut = path.lastIndexOf("/");
    if (path === "" || cut < 0) return FUSE_ROOT_ID;
    return this.idByPath.get(path.slice(0, cut)) ?? FUSE_ROOT_ID;
  }

  statfs(_ctx: RequestContext, _req: NodeReq): Statfs {
    return { blocks: 0, bfree: 0, bavail: 0, files: this.idByPath.size, ffree: 0, bsize: 4096,
      namelen: 255, frsize: 4096 };
  }
}

// ---------------------------------------------------------------------------------------------
// The upstream layout

/** Where upstream's per-mount sysfs directories live; ours are under STATUS_ROOT. */
export const STATUS_ROOT = "/run/scoutfs";

/** f.<top 24 bits of fsid>.r.<top 24 bits of rid>, six hex digits each (upstream SCSBF). */
export function statusDirName(fsid: bigint, rid: bigint): string {
  const top = (v: bigint): string => (BigInt.asUintN(64, v) >> 40n).toString(16).padStart(6, "0");
  return `f.${top(fsid)}.r.${top(rid)}`;
}

export function statusDirPath(fsid: bigint, rid: bigint): string {
  return `${STATUS_ROOT}/${statusDirName(fsid, rid)}`;
}

/** What the status directory shows, supplied by the mount daemon. */
export interface StatusSource {
  readonly fsid: bigint;
  readonly rid: bigint;
  readonly formatVersion: number;
  /** "MAJ:MIN" of the data device. */
  dataDeviceMajMin(): string;
  /** Every counter the mount has (Counters.entries()) appears under counters/. */
  readonly counters: Counters;
  readonly mountOptions: {
    /** The options in force. */
    get(): MountOptions;
    /**
     * Applies options changed by a write to mount_options/<changed> (already validated by
     * options.ts). Writes are serialized: the next one sees what this one set.
     */
    set(next: MountOptions, changed: SysfsMountOptionName): void | Promise<void>;
  };
  readonly volumeOptions: {
    /** The option's value, or null when it is not set. */
    get(name: VolumeOptionName): number | null | Promise<number | null>;
    /** Sets (or, with null, clears) the option through the server; rejects with its errno. */
    set(name: VolumeOptionName, value: number | null): void | Promise<void>;
  };
  /** The quorum agent of a member (QuorumAgent fits); null: no quorum/ directory. */
  readonly quorum: { statusText(): string; isLeaderText(): string } | null;
  readonly triggers: Triggers;
  /** Further top-level entries (srch/, fence/, ...), computed at each lookup and listing. */
  extra?(): ReadonlyMap<string, StatusNode>;
}

function roFile(read: () => string | Promise<string>): StatusFile {
  return { kind: "file", mode: 0o444, read };
}

function dir(entries: Iterable<[string, StatusNode]>): StatusDir {
  return { kind: "dir", children: new Map(entries) };
}

/** Runs writes one after another, so each sees the state the previous one left. */
function serializer(): <T>(fn: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const p = tail.then(fn);
    tail = p.catch(() => undefined);
    return p;
  };
}

function countersDir(counters: Counters): StatusDir {
  return { kind: "dir", children: () => new Map(counters.entries().map(([name]) =>
    [name, roFile(() => `${counters.get(name)}\n`)])) };
}

function mountOptionsDir(src: StatusSource, serial: ReturnType<typeof serializer>): StatusDir {
  return dir(SYSFS_MOUNT_OPTIONS.map((opt): [string, StatusNode] => {
    const store = opt.store;
    if (store === undefined) return [opt.name, roFile(() => opt.show(src.mountOptions.get()))];
    return [opt.name, { kind: "file", mode: 0o644, read: () => opt.show(src.mountOptions.get()),
      write: (text) => serial(async () => {
        await src.mountOptions.set(store(src.mountOptions.get(), text), opt.name);
      }) }];
  }));
}

function volumeOptionsDir(src: StatusSource, serial: ReturnType<typeof serializer>): StatusDir {
  return dir(VOLUME_OPTION_NAMES.map((name): [string, StatusNode] => [name, {
    kind: "file", mode: 0o644,
    read: async () => showVolumeOption(await src.volumeOptions.get(name)),
    write: (text) => serial(async () => {
      const w = parseVolumeOptionWrite(name, text);
      if (w.kind !== "none") await src.volumeOptions.set(name, w.kind === "set" ? w.value : null);
    }),
  }]));
}

function quorumDir(q: { statusText(): string; isLeaderText(): string }): StatusDir {
  return dir([["is_leader", roFile(() => q.isLeaderText())],
    ["status", roFile(() => q.statusText())]]);
}

function triggerDir(t: Triggers): StatusDir {
  const file = (name: string): StatusFile => ({ kind: "file", mode: 0o644,
    read: () => t.show(name), write: (text) => t.store(name, text) });
  return { kind: "dir", children: () => new Map(t.names().map((name) => [name, file(name)])) };
}

/** The upstream layout of /sys/fs/scoutfs/f.X.r.Y/ (plus debugfs trigger/) over src. */
export function buildStatusTree(src: StatusSource): StatusDir {
  const hex16 = (v: bigint): string => BigInt.asUintN(64, v).toString(16).padStart(16, "0");
  const serial = serializer();
  const fixed: [string, StatusNode][] = [
    ["counters", countersDir(src.counters)],
    ["data_device_maj_min", roFile(() => `${src.dataDeviceMajMin()}\n`)],
    ["format_version", roFile(() => `${src.formatVersion}\n`)],
    ["fsid", roFile(() => `${hex16(src.fsid)}\n`)],
    ["mount_options", mountOptionsDir(src, serial)],
    ...(src.quorum === null ? [] : [["quorum", quorumDir(src.quorum)] as [string, StatusNode]]),
    ["rid", roFile(() => `${hex16(src.rid)}\n`)],
    ["trigger", triggerDir(src.triggers)],
    ["volume_options", volumeOptionsDir(src, serial)],
  ];
  const extra = src.extra?.bind(src);
  if (extra === undefined) return dir(fixed);
  // the fixed entries win over extra ones of the same name
  return { kind: "dir", children: () => new Map([...extra(), ...fixed]) };
}

// ---------------------------------------------------------------------------------------------
// Mounting

export interface StatusMount {
  readonly session: FuseSession;
  readonly mountpoint: string;
  /** Unmounts (lazily if busy) and removes the mount point directory. */
  unmount(): Promise<void>;
}

export interface MountStatusFsOptions extends StatusFsOptions {
  /** Created (with parents) if missing; removed again by unmount(). */
  mountpoint: string;
  logger: Logger;
}

/**
 * Mounts a status tree: world-readable like sysfs (allow_other), permissions checked by the
 * kernel from the modes (default_permissions), one-page requests, a crash watchdog.
 */
export async function mountStatusFs(root: StatusDir, opts: MountStatusFsOptions):
  Promise<StatusMount> {
  await fsp.mkdir(opts.mountpoint, { recursive: true, mode: 0o755 });
  const fs = new StatusFs(root, opts);
  const session = await FuseSession.mount(fs, { mountpoint: opts.mountpoint,
    fsname: "scoutfs-status", subtype: "scoutfs_status", logger: opts.logger, allowOther: true,
    defaultPermissions: true, maxWriteBytes: STATUSFS_WRITE_MAX_BYTES, readaheadKb: null,
    readdirplus: "off", maxInflight: 64 });
  const mountpoint = session.mountpoint;
  return {
    session, mountpoint,
    async unmount(): Promise<void> {
      try {
        await session.unmount();
      } catch {
        await session.unmount(true);
      }
      await fsp.rmdir(mountpoint).catch(() => undefined);
    },
  };
}
