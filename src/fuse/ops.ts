/*
 * The filesystem as the FUSE session sees it: one method per kernel operation.
 *
 * session.ts decodes each request (proto.ts), calls the matching FuseOps method with a
 * RequestContext and the decoded request, and encodes what the method returns as the reply.
 * The vfs layer (and the test-only memfs) implements this interface; it never sees bytes of
 * the protocol and never writes to /dev/fuse.
 *
 * Contract for implementations:
 *  - Every method is optional. A missing method answers ENOSYS (the kernel then stops sending
 *    most of those requests), except OPEN/OPENDIR (answered with fh 0), RELEASE/RELEASEDIR
 *    and FLUSH (answered with success), FORGET (ignored) and INIT/DESTROY (session-only).
 *  - A method may return its result directly or as a promise. Failing is throwing (or
 *    rejecting with) an FsError from src/util/errno.ts: its errno is what the caller's system
 *    call returns. Anything else thrown is a bug: the caller gets EIO and the session logs a
 *    warning with the stack. Nothing a method throws can take the session down.
 *  - Results are encoded by the session after the method settles; a method must not keep
 *    references into request buffers past that point: WriteReq.data is a view of the read
 *    buffer that is reused once the handler settles (copy what you keep). Buffers a method
 *    returns (READ data, xattr values) are written out before any other request is served
 *    only if the method settled synchronously; otherwise return data you will not mutate.
 *  - Lookup counting (the kernel's references to node ids) is the implementation's job, as
 *    in libfuse's low-level API: each successful reply that carries an entry (LOOKUP with a
 *    nonzero nodeid, MKNOD, MKDIR, SYMLINK, LINK, CREATE, TMPFILE, and each READDIRPLUS entry
 *    in DirentPacker.lookups) adds one; FORGET/BATCH_FORGET subtract nlookup. A node may be
 *    dropped only when its lookup count is 0, it has no open handles and nlink is 0 (scoutfs
 *    adds its orphan rules on top). If an entry reply cannot be delivered because the
 *    request was interrupted, the session itself calls forget(nodeid, 1) for it, so counts
 *    stay exact. The root (FUSE_ROOT_ID = 1) is never looked up and never forgotten.
 *  - Handlers run concurrently (up to the session's in-flight bound): after every await,
 *    re-check state. A handler must never wait for the kernel to send another request (for
 *    example by awaiting a notification that triggers writeback): reading stops while the
 *    in-flight bound is reached, so such a wait can deadlock.
 *  - Permission checks: with the default_permissions mount option the kernel checks modes
 *    before calling (ACCESS is then rarely sent); without it the filesystem must check.
 */

import type {
  AccessReq, AttrOut, BatchForgetReq, CopyFileRangeReq, CreateOut, CreateReq, DirentPacker,
  EntryOut, FallocateReq, FlushReq, ForgetReq, FsyncReq, GetattrReq, GetxattrReq, InitIn,
  IoctlOut, IoctlReq, LinkReq, ListxattrReq, LkReq, LockOut, LseekReq, MkdirReq, MknodReq,
  NameReq, NodeReq, OpenOut, OpenReq, ReadReq, ReaddirReq, ReleaseReq, RemovexattrReq,
  RenameReq, SetattrReq, SetxattrReq, Statfs, SymlinkReq, WriteReq,
} from "./proto.js";

export type MaybePromise<T> = T | Promise<T>;

/** Who asked and for what: the fuse_in_header of the request, plus interrupt state. */
export interface RequestContext {
  /** The kernel's id of this request (replies and INTERRUPT refer to it). */
  readonly unique: bigint;
  readonly opcode: number;
  /** The node the request is about (the parent directory for name operations). */
  readonly nodeid: number;
  /** Caller's fsuid, fsgid and thread group id (pid 0 for kernel-internal requests). */
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  /** True once the kernel sent INTERRUPT for this request (the caller got a signal). */
  readonly interrupted: boolean;
  /**
   * Calls fn once when the request is interrupted (at once if it already was). An
   * interruptible handler then gives up and throws FsError("EINTR"); finishing normally is
   * also correct. At most MAX_INTERRUPT_LISTENERS listeners per request.
   */
  onInterrupt(fn: () => void): void;
}

/** What INIT negotiated, passed to FuseOps.init before the INIT reply is sent. */
export interface InitInfo {
  /** The kernel's INIT request. */
  readonly kernel: InitIn;
  /** Negotiated protocol minor version. */
  readonly minor: number;
  /** Negotiated InitFlag bits (low word) and InitFlag2 bits (flags2). */
  readonly flags: number;
  readonly flags2: number;
  readonly maxWriteBytes: number;
  readonly maxReadaheadBytes: number;
}

/**
 * READDIR/READDIRPLUS: fill `out` (see DirentPacker for lookup counting), or for plain READDIR
 * hand it a prebuilt block with out.useEncoded() (e.g. a cached encoded block).
 */
export interface ReaddirArgs extends ReaddirReq { out: DirentPacker }

export interface FuseOps {
  /** Called once with the negotiated parameters before the INIT reply is sent. */
  init?(info: InitInfo): MaybePromise<void>;
  /** Called once when the session ends (DESTROY, unmount, or the connection breaking). */
  destroy?(): MaybePromise<void>;

  lookup?(ctx: RequestContext, req: NameReq): MaybePromise<EntryOut>;
  /** FORGET and each item of BATCH_FORGET. No reply exists: errors are only logged. */
  forget?(req: ForgetReq): MaybePromise<void>;
  /** BATCH_FORGET as a whole; when absent, forget() is called per item. */
  batchForget?(req: BatchForgetReq): MaybePromise<void>;
  getattr?(ctx: RequestContext, req: GetattrReq): MaybePromise<AttrOut>;
  setattr?(ctx: RequestContext, req: SetattrReq): MaybePromise<AttrOut>;
  readlink?(ctx: RequestContext, req: NodeReq): MaybePromise<Buffer>;
  symlink?(ctx: RequestContext, req: SymlinkReq): MaybePromise<EntryOut>;
  mknod?(ctx: RequestContext, req: MknodReq): MaybePromise<EntryOut>;
  mkdir?(ctx: RequestContext, req: MkdirReq): MaybePromise<EntryOut>;
  unlink?(ctx: RequestContext, req: NameReq): MaybePromise<void>;
  rmdir?(ctx: RequestContext, req: NameReq): MaybePromise<void>;
  /** RENAME (flags 0) and RENAME2 (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT). */
  rename?(ctx: RequestContext, req: RenameReq): MaybePromise<void>;
  link?(ctx: RequestContext, req: LinkReq): MaybePromise<EntryOut>;
  /** With ATOMIC_O_TRUNC negotiated, O_TRUNC in req.flags must truncate here. */
  open?(ctx: RequestContext, req: OpenReq): MaybePromise<OpenOut>;
  /** Returns at most req.size bytes; fewer means end of file (unless direct_io). */
  read?(ctx: RequestContext, req: ReadReq): MaybePromise<Buffer | readonly Buffer[]>;
  /**
   * The reply carrying what read() returned was written (or could not be): its buffers are
   * the filesystem's again (pooled I/O buffers). Called once per successful read().
   */
  readReplied?(data: Buffer | readonly Buffer[]): void;
  /** Returns the number of bytes written (all of req.data unless an error stops it). */
  write?(ctx: RequestContext, req: WriteReq): MaybePromise<number>;
  statfs?(ctx: RequestContext, req: NodeReq): MaybePromise<Statfs>;
  release?(ctx: RequestContext, req: ReleaseReq): MaybePromise<void>;
  fsync?(ctx: RequestContext, req: FsyncReq): MaybePromise<void>;
  setxattr?(ctx: RequestContext, req: SetxattrReq): MaybePromise<void>;
  /**
   * Returns the whole value; the session answers the size probe (size 0) and ERANGE when
   * the caller's buffer is too small. Missing attribute: FsError("ENODATA").
   */
  getxattr?(ctx: RequestContext, req: GetxattrReq): MaybePromise<Buffer>;
  /** Returns the names; the session packs them and handles the size probe and ERANGE. */
  listxattr?(ctx: RequestContext, req: ListxattrReq): MaybePromise<readonly Buffer[]>;
  removexattr?(ctx: RequestContext, req: RemovexattrReq): MaybePromise<void>;
  flush?(ctx: RequestContext, req: FlushReq): MaybePromise<void>;
  opendir?(ctx: RequestContext, req: OpenReq): MaybePromise<OpenOut>;
  readdir?(ctx: RequestContext, req: ReaddirArgs): MaybePromise<void>;
  /** Only used when READDIRPLUS is negotiated (the session offers it when this exists). */
  readdirplus?(ctx: RequestContext, req: ReaddirArgs): MaybePromise<void>;
  releasedir?(ctx: RequestContext, req: ReleaseReq): MaybePromise<void>;
  fsyncdir?(ctx: RequestContext, req: FsyncReq): MaybePromise<void>;
  getlk?(ctx: RequestContext, req: LkReq): MaybePromise<LockOut>;
  /** SETLK (sleep false) and SETLKW (sleep true: may wait; honour interrupts). */
  setlk?(ctx: RequestContext, req: LkReq, sleep: boolean): MaybePromise<void>;
  access?(ctx: RequestContext, req: AccessReq): MaybePromise<void>;
  create?(ctx: RequestContext, req: CreateReq): MaybePromise<CreateOut>;
  /** O_TMPFILE: like create without a name (req.name is empty). */
  tmpfile?(ctx: RequestContext, req: CreateReq): MaybePromise<CreateOut>;
  /** Restricted ioctls only: fixed-size input (req.input) and output (<= req.outSize). */
  ioctl?(ctx: RequestContext, req: IoctlReq): MaybePromise<IoctlOut>;
  fallocate?(ctx: RequestContext, req: FallocateReq): MaybePromise<void>;
  /** SEEK_DATA / SEEK_HOLE (the kernel handles the other whences itself). */
  lseek?(ctx: RequestContext, req: LseekReq): MaybePromise<number>;
  /** Returns the number of bytes copied (the kernel caps len below 4 GiB). */
  copyFileRange?(ctx: RequestContext, req: CopyFileRangeReq): MaybePromise<number>;
  syncfs?(ctx: RequestContext, req: NodeReq): MaybePromise<void>;
}
