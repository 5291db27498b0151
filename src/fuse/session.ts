/*
 * One FUSE session: a mounted filesystem served from this process over /dev/fuse.
 *
 * The mount daemon (and the FUSE tests) call FuseSession.mount(ops, options): it mounts
 * (mount.ts), starts the request reader (reader.ts), negotiates INIT and then serves every
 * request by calling the FuseOps method the dispatch table (dispatch.ts) names, replying with
 * its encoded result or its errno. The vfs layer calls notify*() to drop kernel caches when a
 * cluster lock is revoked. unmount() ends it; so does the kernel (DESTROY or ENODEV).
 *
 * Invariants and choices (reference/fuse.md):
 *  - Never touch the mount point from this process after mounting: the serving thread would
 *    wait on itself. (The path is canonicalised before mounting; the device number comes from
 *    /proc/self/mountinfo.) A filesystem served from a process must be exercised from another
 *    process, or with async fs calls only.
 *  - Every request gets exactly one reply (FORGET, BATCH_FORGET and INTERRUPT get none):
 *    handlers are wrapped so that a throw or rejection becomes an errno reply (FsError's
 *    errno; anything else EIO plus a logged warning with its stack). Nothing a handler does
 *    can end the session, which would leave a dead ENOTCONN mount behind.
 *  - Replies are written synchronously (writev); ENOENT from that write means the kernel gave
 *    up on the request (interrupted): ignored, and the lookups an entry reply carried are
 *    forgotten again so the filesystem's counts stay exact.
 *  - At most maxInflight requests are being served and at most maxRetainedBytes of read
 *    buffers are held by WRITE handlers; beyond either, reading pauses (the kernel queues).
 *  - Notifications go through NotifyQueue (threadpool writes, bounded), never synchronously.
 *  - The session ends once: ops.destroy() is called exactly once and `ended` resolves.
 */

import fs from "node:fs";
import type { Logger } from "../env/env.js";
import { Errno, FsError, isFsError } from "../util/errno.js";
import { EMPTY, HANDLERS, type OpFn, type Payload, type Runner } from "./dispatch.js";
import {
  checkOptionText, fuseMountInfo, openAndMount, setReadaheadKb, startUnmountWatchdog,
  unmount as runUnmount, type Watchdog,
} from "./mount.js";
import { NotifyQueue, type NotifyCounters, type NotifyWrite } from "./notify.js";
import type { FuseOps, InitInfo, RequestContext } from "./ops.js";
import {
  decodeBatchForget, decodeForget, decodeInHeader, decodeInit, decodeInterrupt,
  encodeInitOut, encodeNotifyDelete, encodeNotifyInvalEntry, encodeNotifyInvalInode,
  encodeOutHeader, FUSE_BUFFER_HEADER_BYTES, FUSE_INT_REQ_BIT, FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION, FUSE_MIN_KERNEL_MINOR, IN_HEADER_SIZE, type InHeader, InitFlag, InitFlag2,
  type InitIn, OUT_HEADER_SIZE, Opcode, opcodeName, payloadEnd,
} from "./proto.js";
import { createReader, ReadBuffers, type ReaderKind, type RequestReader } from "./reader.js";

export const DEFAULT_MAX_WRITE_BYTES = 1 << 20;
export const DEFAULT_MAX_INFLIGHT = 256;
export const DEFAULT_MAX_RETAINED_BYTES = 64 << 20;
/** Listeners one request may register with onInterrupt. */
export const MAX_INTERRUPT_LISTENERS = 16;
/** Read buffers kept for reuse after WRITE handlers release them. */
const READ_BUFFERS_MAX_FREE = 8;
const PAGE_BYTES = 4096;
const INIT_TIMEOUT_MS = 10_000;
/** Most buffers one writev takes (Linux UIO_MAXIOV). */
const IOV_MAX = 1024;
const END_TIMEOUT_MS = 10_000;

export interface FuseSessionOptions {
  /** An existing directory; canonicalised (realpath) before mounting. */
  mountpoint: string;
  /** The source column of /proc/mounts. */
  fsname: string;
  /** The filesystem type is fuse.<subtype>. */
  subtype: string;
  logger: Logger;
  /** Let other users than the mounting one in (allow_other). Default false. */
  allowOther?: boolean;
  /** Let the kernel check permissions from the modes (default_permissions). Default true. */
  defaultPermissions?: boolean;
  /** Owner recorded for the mount (user_id/group_id); default this process's ids. */
  userId?: number;
  groupId?: number;
  /** Root mode before the first GETATTR (rootmode, octal in the option). Default 0o40000. */
  rootMode?: number;
  /** Largest WRITE/READ (max_write, max_read; with max_pages). Default and maximum 1 MiB. */
  maxWriteBytes?: number;
  /** Readahead offered in INIT (it can only lower the kernel's). Default 1 MiB. */
  maxReadaheadBytes?: number;
  /** Written to /sys/class/bdi/<dev>/read_ahead_kb after INIT; null leaves it. Default 1024. */
  readaheadKb?: number | null;
  maxInflight?: number;
  maxRetainedBytes?: number;
  /** INIT's max_background / congestion_threshold. Defaults 64 / 48. */
  maxBackground?: number;
  congestionThreshold?: number;
  /** FUSE_WRITEBACK_CACHE: the kernel caches writes and sends them in pages. Default false. */
  writebackCache?: boolean;
  /** READDIRPLUS when ops.readdirplus exists: "auto" (kernel decides), "always", "off". */
  readdirplus?: "auto" | "always" | "off";
  /** FUSE_CACHE_SYMLINKS (readlink results cached until NOTIFY_INVAL_INODE). Default false. */
  cacheSymlinks?: boolean;
  /** FUSE_EXPLICIT_INVAL_DATA: pages are dropped only on notification. Default false. */
  explicitInvalData?: boolean;
  /** FUSE_HANDLE_KILLPRIV_V2: the filesystem clears suid/sgid itself. Default true. */
  killPrivV2?: boolean;
  /**
   * FUSE_POSIX_ACL: the kernel enforces POSIX ACLs from the system.posix_acl_* xattrs it
   * caches (implies default_permissions). DONT_MASK comes with it: the kernel would apply
   * the umask even over a default ACL, so the ops get the unmasked mode plus the umask and
   * apply it themselves only where no default ACL is inherited. Default false.
   */
  posixAcl?: boolean;
  /** FUSE_FLOCK_LOCKS (needs ops.setlk). Default false. */
  flockLocks?: boolean;
  /** FUSE_ASYNC_DIO. Default false. */
  asyncDio?: boolean;
  /** Request reader (reader.ts). Default "auto". */
  reader?: ReaderKind | "auto";
  /** Watchdog that lazily unmounts if this process dies. Default true. */
  autoUnmount?: boolean;
  /** Further mount options, passed as they are (no commas or spaces). */
  extraOptions?: readonly string[];
}

/**
 * Where requests come from and replies go: /dev/fuse in production (fdTransport), an
 * in-memory double in unit tests of the dispatch path.
 */
export interface FuseTransport {
  readonly reader: RequestReader;
  /** Writes one reply synchronously; throws a node system error ({code}) on failure. */
  writeReply(parts: readonly Buffer[]): void;
  /** Writes one notification off the serving thread (see notify.ts). */
  writeNotify: NotifyWrite;
  /** Releases the device once the reader has stopped. */
  close(): void;
}

/** The transport over a mounted /dev/fuse fd. */
export function fdTransport(fd: number, kind: ReaderKind | "auto"): FuseTransport {
  const reader = createReader(fd, kind);
  return {
    reader,
    writeReply(parts: readonly Buffer[]): void {
      if (parts.length === 1) fs.writeSync(fd, parts[0]!);
      else if (parts.length <= IOV_MAX) fs.writevSync(fd, parts as Buffer[]);
      else fs.writeSync(fd, Buffer.concat(parts)); // one reply must be one write
    },
    writeNotify(msg, done): void {
      fs.write(fd, msg, 0, msg.length, null, (err) => done(err));
    },
    close(): void {
      // The pipe reader's handle closes the fd itself when destroyed.
      if (!reader.ownsFd) fs.close(fd, () => undefined);
    },
  };
}

export interface SessionCounters {
  requests: number;
  replies: number;
  errors: number;
  enosys: number;
  bugs: number;
  malformed: number;
  interrupts: number;
  interruptsUnmatched: number;
  /** Replies the kernel refused with ENOENT (request interrupted meanwhile). */
  repliesDropped: number;
  forgets: number;
  pauses: number;
}

/** The context of one request being served. */
class Ctx implements RequestContext {
  readonly unique: bigint;
  readonly opcode: number;
  readonly nodeid: number;
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  interrupted = false;
  /** Read buffer held for this request (WRITE data), released when it settles. */
  buf: Buffer | null = null;
  private listeners: (() => void)[] | null = null;

  constructor(h: InHeader) {
    this.unique = h.unique;
    this.opcode = h.opcode;
    this.nodeid = h.nodeid;
    this.uid = h.uid;
    this.gid = h.gid;
    this.pid = h.pid;
  }

  onInterrupt(fn: () => void): void {
    if (this.interrupted) {
      fn();
      return;
    }
    this.listeners ??= [];
    if (this.listeners.length >= MAX_INTERRUPT_LISTENERS) {
      throw new FsError("ENOBUFS", "too many interrupt listeners on one request");
    }
    this.listeners.push(fn);
  }

  interrupt(logger: Logger): void {
    if (this.interrupted) return;
    this.interrupted = true;
    for (const fn of this.listeners?.splice(0) ?? []) {
      try {
        fn();
      } catch (e) {
        logger.log("warn", `fuse: interrupt listener threw: ${describe(e)}`);
      }
    }
  }
}

export class FuseSession implements Runner {
  readonly ops: FuseOps;
  readonly mountpoint: string;
  readonly counters: SessionCounters = {
    requests: 0, replies: 0, errors: 0, enosys: 0, bugs: 0, malformed: 0, interrupts: 0,
    interruptsUnmatched: 0, repliesDropped: 0, forgets: 0, pauses: 0,
  };
  /** Resolves when serving stopped (unmount, DESTROY, close() or a read error). */
  readonly ended: Promise<void>;
  private readonly opts: FuseSessionOptions;
  private readonly logger: Logger;
  private readonly transport: FuseTransport;
  private readonly reader: RequestReader;
  private readonly buffers: ReadBuffers;
  private readonly notifier: NotifyQueue;
  private readonly inflight = new Map<bigint, Ctx>();
  private readonly replyHead = Buffer.alloc(OUT_HEADER_SIZE);
  private readonly maxInflight: number;
  private readonly maxRetainedBytes: number;
  private watchdog: Watchdog | null = null;
  private retainedBytes = 0;
  private paused = false;
  private state: "init" | "initializing" | "serving" | "ended" = "init";
  private info: InitInfo | null = null;
  private endResolve: () => void = () => undefined;
  private initWaiter: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private endReason: FsError | null = null;

  private constructor(ops: FuseOps, opts: FuseSessionOptions, mountpoint: string,
    transport: FuseTransport) {
    this.ops = ops;
    this.opts = opts;
    this.logger = opts.logger;
    this.mountpoint = mountpoint;
    this.transport = transport;
    this.maxInflight = opts.maxInflight ?? DEFAULT_MAX_INFLIGHT;
    this.maxRetainedBytes = opts.maxRetainedBytes ?? DEFAULT_MAX_RETAINED_BYTES;
    const maxWrite = maxWriteOf(opts);
    this.buffers = new ReadBuffers(maxWrite + FUSE_BUFFER_HEADER_BYTES, READ_BUFFERS_MAX_FREE);
    this.reader = transport.reader;
    this.notifier = new NotifyQueue((msg, done) => transport.writeNotify(msg, done));
    this.ended = new Promise<void>((resolve) => { this.endResolve = resolve; });
  }

  /**
   * Mounts and serves ops on opts.mountpoint; resolves once INIT is answered (the mount is
   * usable). Rejects, with nothing left mounted, if mount(8) or INIT fails.
   */
  static async mount(ops: FuseOps, opts: FuseSessionOptions): Promise<FuseSession> {
    validateOptions(opts);
    const mountpoint = fs.realpathSync(opts.mountpoint);
    const fd = await openAndMount({ mountpoint, source: opts.fsname, subtype: opts.subtype,
      options: mountOptions(opts) });
    let s: FuseSession;
    try {
      s = new FuseSession(ops, opts, mountpoint, fdTransport(fd, opts.reader ?? "auto"));
    } catch (e) {
      fs.closeSync(fd); // no reader owns it yet
      await runUnmount(mountpoint, true).catch(() => undefined);
      throw e;
    }
    if (opts.autoUnmount ?? true) s.watchdog = startUnmountWatchdog(mountpoint);
    try {
      await s.start();
    } catch (e) {
      await s.close().catch(() => undefined);
      await runUnmount(mountpoint, true).catch(() => undefined);
      throw e;
    }
    return s;
  }

  /**
   * Serves ops over an existing transport, without mounting (unit tests of the dispatch path,
   * benchmarks). Resolves once INIT was answered; mountpoint is only a label here.
   */
  static async serve(ops: FuseOps, opts: FuseSessionOptions, transport: FuseTransport):
    Promise<FuseSession> {
    validateOptions(opts);
    const s = new FuseSession(ops, { ...opts, readaheadKb: null, autoUnmount: false },
      opts.mountpoint, transport);
    try {
      await s.start();
    } catch (e) {
      await s.close().catch(() => undefined);
      throw e;
    }
    return s;
  }

  /** Which request reader serves this session. */
  get readerKind(): ReaderKind {
    return this.reader.kind;
  }

  /** What INIT negotiated (null before INIT). */
  get negotiated(): InitInfo | null {
    return this.info;
  }

  get notifyCounters(): NotifyCounters {
    return this.notifier.counters;
  }

  /** Requests being served right now. */
  get inflightCount(): number {
    return this.inflight.size;
  }

  /** Drops the kernel's cached attributes of nodeid and its pages in [offset, +length). */
  notifyInvalInode(nodeid: number, offset = 0, length = 0): Promise<void> {
    return this.notify(() => encodeNotifyInvalInode(nodeid, offset, length));
  }

  /**
   * Drops the kernel's dentry for name in parent; expireOnly marks it stale instead (kernels
   * offering FUSE_HAS_EXPIRE_ONLY, 6.2+; EOPNOTSUPP elsewhere).
   */
  notifyInvalEntry(parent: number, name: Buffer, expireOnly = false): Promise<void> {
    const kernelFlags2 = this.info?.kernel.flags2 ?? 0;
    if (expireOnly && (kernelFlags2 & InitFlag2.HAS_EXPIRE_ONLY) === 0) {
      return Promise.reject(new FsError("EOPNOTSUPP", "kernel lacks FUSE_HAS_EXPIRE_ONLY"));
    }
    return this.notify(() => encodeNotifyInvalEntry(parent, name, expireOnly));
  }

  /** Tells the kernel that name in parent (node child) was deleted by someone else. */
  notifyDelete(parent: number, child: number, name: Buffer): Promise<void> {
    return this.notify(() => encodeNotifyDelete(parent, child, name));
  }

  /**
   * Unmounts (umount(8), or umount -l when lazy) and waits for the session to end. A busy
   * mount rejects with EBUSY and keeps serving; a lazy unmount returns without waiting for
   * the last user to leave.
   */
  async unmount(lazy = false): Promise<void> {
    if (this.state === "ended") return;
    await runUnmount(this.mountpoint, lazy);
    this.watchdog?.stop();
    if (lazy) return;
    if (!(await withTimeout(this.ended, END_TIMEOUT_MS))) {
      this.logger.log("warn", `fuse: ${this.mountpoint} unmounted but the session did not ` +
        `end within ${END_TIMEOUT_MS} ms; closing it`);
      await this.close();
    }
  }

  /**
   * Stops serving without unmounting: the kernel aborts the connection and the mount answers
   * ENOTCONN until it is lazily unmounted (mount.ts lazyUnmount). Used on fatal errors.
   */
  async close(): Promise<void> {
    if (this.state !== "ended") this.reader.close();
    // The threadpool reader does not end by itself when its fd must stay open for a
    // blocked read; end() is idempotent.
    this.end(null);
    await this.ended;
  }

  // --- Runner ------------------------------------------------------------------------------

  run<Req, Res>(h: InHeader, req: Req, fn: OpFn<Req, Res> | undefined,
    encode: (res: Res, req: Req) => Payload,
    lookups?: (res: Res, req: Req) => readonly number[], buf?: Buffer,
    replied?: (res: Res) => void): void {
    if (fn === undefined) {
      this.counters.enosys++;
      this.replyError(h.unique, Errno.ENOSYS);
      return;
    }
    const ctx = new Ctx(h);
    this.track(ctx, buf);
    let r: Res | Promise<Res>;
    try {
      r = fn.call(this.ops, ctx, req);
    } catch (e) {
      this.finishError(ctx, e);
      return;
    }
    if (r instanceof Promise) {
      r.then((v: Res) => this.finishOk(ctx, v, req, encode, lookups, replied),
        (e: unknown) => this.finishError(ctx, e));
    } else {
      this.finishOk(ctx, r, req, encode, lookups, replied);
    }
  }

  // --- Starting and ending ---------------------------------------------------------------

  private start(): Promise<void> {
    const initDone = new Promise<void>((resolve, reject) => {
      this.initWaiter = { resolve, reject };
    });
    this.reader.start({
      nextBuffer: () => this.buffers.next(),
      onRequest: (buf, n) => this.onRequest(buf, n),
      onEnd: (err) => this.end(err),
    });
    return withTimeout(initDone, INIT_TIMEOUT_MS).then((ok) => {
      if (!ok) throw new FsError("ETIMEDOUT", "no FUSE INIT from the kernel", "mount");
    });
  }

  private end(err: FsError | null): void {
    if (this.state === "ended") return;
    const wasServing = this.state === "serving";
    this.state = "ended";
    this.endReason = err;
    if (err !== null && err.code !== "ENODEV") {
      this.logger.log(wasServing ? "warn" : "info", `fuse: ${this.mountpoint}: ${err.message}`);
    }
    this.watchdog?.stop();
    this.initWaiter?.reject(err ?? new FsError("ENOTCONN", "FUSE session closed"));
    for (const ctx of this.inflight.values()) ctx.interrupt(this.logger);
    void this.finishEnd();
  }

  private async finishEnd(): Promise<void> {
    await this.notifier.close();
    this.reader.close();
    this.transport.close();
    try {
      await this.ops.destroy?.();
    } catch (e) {
      this.logger.log("warn", `fuse: destroy failed: ${describe(e)}`);
    }
    this.endResolve();
  }

  // --- Requests ----------------------------------------------------------------------------

  private onRequest(buf: Buffer, n: number): void {
    this.counters.requests++;
    let h: InHeader;
    try {
      h = decodeInHeader(buf, n);
    } catch (e) {
      this.malformed(buf, n, e);
      return;
    }
    const payload = buf.subarray(IN_HEADER_SIZE, payloadEnd(h));
    try {
      this.dispatch(h, payload, buf);
    } catch (e) {
      // Decoding failed (EINVAL, EOVERFLOW, ...) before any handler ran.
      if (!isFsError(e)) this.reportBug(h, e);
      if (h.opcode !== Opcode.FORGET && h.opcode !== Opcode.BATCH_FORGET &&
        h.opcode !== Opcode.INTERRUPT) {
        this.replyError(h.unique, isFsError(e) ? e.errno : Errno.EIO);
      }
    }
  }

  private dispatch(h: InHeader, payload: Buffer, buf: Buffer): void {
    if (this.state !== "serving") {
      this.dispatchBeforeInit(h, payload);
      return;
    }
    switch (h.opcode) {
      case Opcode.FORGET: {
        const f = decodeForget(h, payload);
        return this.forget(f.nodeid, f.nlookup);
      }
      case Opcode.BATCH_FORGET: return this.batchForget(h, payload);
      case Opcode.INTERRUPT: return this.interrupt(decodeInterrupt(h, payload));
      case Opcode.INIT: return this.replyError(h.unique, Errno.EIO);
      case Opcode.DESTROY: return this.destroy(h);
    }
    const handler = HANDLERS.get(h.opcode);
    if (handler === undefined) {
      this.counters.enosys++;
      this.replyError(h.unique, Errno.ENOSYS);
      return;
    }
    handler(this, h, payload, buf);
  }

  private dispatchBeforeInit(h: InHeader, payload: Buffer): void {
    if (h.opcode === Opcode.INIT && this.state === "init") {
      this.init(h, decodeInit(h, payload));
      return;
    }
    if (h.opcode === Opcode.FORGET || h.opcode === Opcode.BATCH_FORGET ||
      h.opcode === Opcode.INTERRUPT) return;
    this.replyError(h.unique, Errno.EIO);
  }

  private malformed(buf: Buffer, n: number, e: unknown): void {
    this.counters.malformed++;
    this.logger.log("warn", `fuse: malformed request of ${n} bytes: ${describe(e)}`);
    // With the unique readable the kernel's waiter can at least be answered.
    if (n >= 16) this.replyError(buf.readBigUInt64LE(8), Errno.EIO);
  }

  private interrupt(unique: bigint): void {
    const ctx = this.inflight.get(unique & ~FUSE_INT_REQ_BIT);
    if (ctx === undefined) {
      // Already answered: the kernel drops the interrupt when the reply arrives.
      this.counters.interruptsUnmatched++;
      return;
    }
    this.counters.interrupts++;
    ctx.interrupt(this.logger);
  }

  private forget(nodeid: number, nlookup: number): void {
    this.counters.forgets++;
    const fn = this.ops.forget;
    if (fn === undefined) return;
    this.guardNoReply("forget", () => fn.call(this.ops, { nodeid, nlookup }));
  }

  private batchForget(h: InHeader, payload: Buffer): void {
    const req = decodeBatchForget(h, payload);
    const batch = this.ops.batchForget;
    if (batch !== undefined) {
      this.counters.forgets += req.items.length;
      this.guardNoReply("batch_forget", () => batch.call(this.ops, req));
      return;
    }
    for (const it of req.items) this.forget(it.nodeid, it.nlookup);
  }

  /** Runs a method that has no reply; failures are only logged. */
  private guardNoReply(what: string, fn: () => unknown): void {
    try {
      const r = fn();
      if (r instanceof Promise) {
        r.catch((e: unknown) => this.logger.log("warn", `fuse: ${what} failed: ${describe(e)}`));
      }
    } catch (e) {
      this.logger.log("warn", `fuse: ${what} failed: ${describe(e)}`);
    }
  }

  private destroy(h: InHeader): void {
    this.reply(h.unique, 0, EMPTY);
    this.end(null);
  }

  // --- INIT --------------------------------------------------------------------------------

  private init(h: InHeader, k: InitIn): void {
    if (k.major !== FUSE_KERNEL_VERSION || k.minor < FUSE_MIN_KERNEL_MINOR) {
      this.replyError(h.unique, Errno.EPROTO);
      this.end(new FsError("EPROTO", `kernel FUSE ${k.major}.${k.minor} unsupported ` +
        `(need ${FUSE_KERNEL_VERSION}.${FUSE_MIN_KERNEL_MINOR}+)`));
      return;
    }
    this.state = "initializing";
    const info = this.negotiate(k);
    const initFn = this.ops.init;
    Promise.resolve()
      .then(() => initFn?.call(this.ops, info))
      .then(() => this.initReply(h, info), (e: unknown) => this.initFailed(h, e));
  }

  private negotiate(k: InitIn): InitInfo {
    const maxWrite = maxWriteOf(this.opts);
    let flags = this.wantedFlags() & k.flags;
    // flags2 is read by the kernel only when we echo INIT_EXT; we want none of its bits yet.
    if ((k.flags & InitFlag.INIT_EXT) !== 0) flags |= InitFlag.INIT_EXT;
    return {
      kernel: k, minor: Math.min(k.minor, FUSE_KERNEL_MINOR_VERSION), flags: flags >>> 0,
      flags2: 0, maxWriteBytes: maxWrite,
      maxReadaheadBytes: Math.min(k.maxReadahead, this.opts.maxReadaheadBytes ?? maxWrite),
    };
  }

  private wantedFlags(): number {
    const o = this.opts;
    const ops = this.ops;
    let f = InitFlag.ASYNC_READ | InitFlag.ATOMIC_O_TRUNC | InitFlag.BIG_WRITES |
      InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES;
    if (ops.ioctl !== undefined) f |= InitFlag.HAS_IOCTL_DIR;
    if (o.killPrivV2 ?? true) f |= InitFlag.HANDLE_KILLPRIV_V2;
    const rdp = o.readdirplus ?? "auto";
    if (ops.readdirplus !== undefined && rdp !== "off") {
      f |= InitFlag.DO_READDIRPLUS | (rdp === "auto" ? InitFlag.READDIRPLUS_AUTO : 0);
    }
    if (o.writebackCache ?? false) f |= InitFlag.WRITEBACK_CACHE;
    if (ops.getlk !== undefined && ops.setlk !== undefined) f |= InitFlag.POSIX_LOCKS;
    if ((o.flockLocks ?? false) && ops.setlk !== undefined) f |= InitFlag.FLOCK_LOCKS;
    if (o.cacheSymlinks ?? false) f |= InitFlag.CACHE_SYMLINKS;
    if (o.explicitInvalData ?? false) f |= InitFlag.EXPLICIT_INVAL_DATA;
    if (o.asyncDio ?? false) f |= InitFlag.ASYNC_DIO;
    if (o.posixAcl ?? false) f |= InitFlag.POSIX_ACL | InitFlag.DONT_MASK;
    return f;
  }

  private initReply(h: InHeader, info: InitInfo): void {
    if (this.state !== "initializing") return;
    const maxPages = Math.ceil(info.maxWriteBytes / PAGE_BYTES);
    const out = encodeInitOut({
      major: FUSE_KERNEL_VERSION, minor: info.minor, maxReadahead: info.maxReadaheadBytes,
      flags: info.flags, maxBackground: this.opts.maxBackground ?? 64,
      congestionThreshold: this.opts.congestionThreshold ?? 48,
      maxWrite: info.maxWriteBytes, timeGran: 1, maxPages, mapAlignment: 0,
      flags2: info.flags2, maxStackDepth: 0, requestTimeout: 0,
    });
    this.info = info;
    this.state = "serving";
    if (!this.reply(h.unique, 0, out)) {
      this.end(new FsError("EIO", "the kernel refused the INIT reply"));
      return;
    }
    this.logger.log("debug", `fuse: ${this.mountpoint}: INIT ${FUSE_KERNEL_VERSION}.` +
      `${info.minor} flags 0x${info.flags.toString(16)} reader ${this.reader.kind}`);
    this.initWaiter?.resolve();
    this.initWaiter = null;
    void this.raiseReadahead();
  }

  private initFailed(h: InHeader, e: unknown): void {
    const err = isFsError(e) ? e : new FsError("EIO", `init failed: ${describe(e)}`);
    if (!isFsError(e)) this.logger.log("warn", `fuse: ops.init threw: ${describe(e)}`);
    this.replyError(h.unique, err.errno);
    this.end(err);
  }

  /** After INIT, off the request path: the bdi readahead knob (reference/fuse.md). */
  private async raiseReadahead(): Promise<void> {
    const kb = this.opts.readaheadKb === undefined ? 1024 : this.opts.readaheadKb;
    if (kb === null) return;
    try {
      const mi = await fuseMountInfo(this.mountpoint);
      if (mi !== null) await setReadaheadKb(mi.devnum, kb);
    } catch (e) {
      this.logger.log("debug", `fuse: could not set read_ahead_kb: ${describe(e)}`);
    }
  }

  // --- Replies -----------------------------------------------------------------------------

  private track(ctx: Ctx, buf: Buffer | undefined): void {
    this.inflight.set(ctx.unique, ctx);
    if (buf !== undefined) {
      this.buffers.retain(buf);
      ctx.buf = buf;
      this.retainedBytes += buf.length;
    }
    if (!this.paused && (this.inflight.size >= this.maxInflight ||
      this.retainedBytes >= this.maxRetainedBytes)) {
      this.paused = true;
      this.counters.pauses++;
      this.reader.pause();
    }
  }

  private untrack(ctx: Ctx): void {
    this.inflight.delete(ctx.unique);
    if (ctx.buf !== null) {
      this.retainedBytes -= ctx.buf.length;
      this.buffers.release(ctx.buf);
      ctx.buf = null;
    }
    if (this.paused && this.inflight.size <= (this.maxInflight * 3) >> 2 &&
      this.retainedBytes <= this.maxRetainedBytes >> 1 && this.state !== "ended") {
      this.paused = false;
      this.reader.resume();
    }
  }

  private finishOk<Req, Res>(ctx: Ctx, res: Res, req: Req,
    encode: (res: Res, req: Req) => Payload,
    lookups: ((res: Res, req: Req) => readonly number[]) | undefined,
    replied?: (res: Res) => void): void {
    let ids: readonly number[] = [];
    try {
      ids = lookups?.(res, req) ?? [];
      const payload = encode(res, req);
      if (!this.reply(ctx.unique, 0, payload)) this.forgetUndelivered(ids);
    } catch (e) {
      // The filesystem answered with something unencodable: it still counted the lookups.
      this.forgetUndelivered(ids);
      this.replyFailure(ctx, e);
    }
    if (replied !== undefined) {
      try {
        replied(res); // the reply is written (synchronously): the result's buffers are free
      } catch (e) {
        this.logger.log("warn", `fuse: reply hook failed: ${describe(e)}`);
      }
    }
    this.untrack(ctx);
  }

  private finishError(ctx: Ctx, e: unknown): void {
    this.replyFailure(ctx, e);
    this.untrack(ctx);
  }

  private replyFailure(ctx: Ctx, e: unknown): void {
    this.counters.errors++;
    if (isFsError(e)) {
      this.replyError(ctx.unique, e.errno);
      return;
    }
    this.reportBug(ctx, e);
    this.replyError(ctx.unique, Errno.EIO);
  }

  private reportBug(h: { opcode: number; nodeid: number }, e: unknown): void {
    this.counters.bugs++;
    this.logger.log("warn", `fuse: ${opcodeName(h.opcode)} on node ${h.nodeid} failed with a ` +
      `non-FsError (answered EIO): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  }

  /** The kernel never took the references an undelivered entry reply carried. */
  private forgetUndelivered(ids: readonly number[]): void {
    for (const nodeid of ids) this.forget(nodeid, 1);
  }

  private replyError(unique: bigint, errno: number): void {
    this.reply(unique, errno, EMPTY);
  }

  /** Writes one reply; false when it was not delivered (interrupted, or session over). */
  private reply(unique: bigint, errno: number, payload: Payload): boolean {
    if (this.state === "ended") return false;
    const parts: readonly Buffer[] = Buffer.isBuffer(payload) ? [payload] : payload;
    let len = OUT_HEADER_SIZE;
    for (const p of parts) len += p.length;
    const head = encodeOutHeader(this.replyHead, len, errno === 0 ? 0 : -errno, unique);
    try {
      this.transport.writeReply(parts.length === 0 ? [head] : [head, ...parts]);
      this.counters.replies++;
      return true;
    } catch (e) {
      return this.replyWriteFailed(unique, e);
    }
  }

  private replyWriteFailed(unique: bigint, e: unknown): boolean {
    const code = (e as { code?: unknown } | null)?.code;
    if (code === "ENOENT") {
      this.counters.repliesDropped++;
    } else if (code === "ENODEV" || code === "EBADF") {
      this.end(new FsError("ENODEV", "FUSE connection gone while replying"));
    } else {
      this.counters.bugs++;
      this.logger.log("error", `fuse: reply to ${unique} refused: ${describe(e)}`);
    }
    return false;
  }

  private notify(build: () => Buffer): Promise<void> {
    if (this.state !== "serving") {
      return Promise.reject(new FsError("ENOTCONN", "FUSE session not serving"));
    }
    let msg: Buffer;
    try {
      msg = build();
    } catch (e) {
      return Promise.reject(isFsError(e) ? e : new FsError("EINVAL", describe(e)));
    }
    return this.notifier.send(msg);
  }

  /** Why the session ended (null: orderly, or still serving). */
  get endError(): FsError | null {
    return this.endReason;
  }
}

/** Mounts and serves ops (see FuseSession.mount). */
export function mountFuse(ops: FuseOps, opts: FuseSessionOptions): Promise<FuseSession> {
  return FuseSession.mount(ops, opts);
}

function maxWriteOf(opts: FuseSessionOptions): number {
  return opts.maxWriteBytes ?? DEFAULT_MAX_WRITE_BYTES;
}

function validateOptions(o: FuseSessionOptions): void {
  const mw = maxWriteOf(o);
  if (!Number.isSafeInteger(mw) || mw < PAGE_BYTES || mw > (1 << 20) || mw % PAGE_BYTES !== 0) {
    throw new FsError("EINVAL", `maxWriteBytes ${mw}: a multiple of 4096 up to 1 MiB`);
  }
  const mi = o.maxInflight ?? DEFAULT_MAX_INFLIGHT;
  if (!Number.isSafeInteger(mi) || mi < 1 || mi > 65536) {
    throw new FsError("EINVAL", `maxInflight ${mi}`);
  }
  checkOptionText("fsname", o.fsname);
  checkOptionText("subtype", o.subtype);
}

/** The option list after fd=3, as fuse.md prescribes. */
function mountOptions(o: FuseSessionOptions): string[] {
  const uid = o.userId ?? process.getuid?.() ?? 0;
  const gid = o.groupId ?? process.getgid?.() ?? 0;
  const out = [`rootmode=${(o.rootMode ?? 0o40000).toString(8)}`, `user_id=${uid}`,
    `group_id=${gid}`, `max_read=${maxWriteOf(o)}`];
  if (o.defaultPermissions ?? true) out.push("default_permissions");
  if (o.allowOther ?? false) out.push("allow_other");
  out.push(...(o.extraOptions ?? []));
  return out;
}

/** Resolves true when p settles in time, false on timeout (p's rejection propagates). */
async function withTimeout(p: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
