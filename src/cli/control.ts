/*
 * The control socket: the twin of upstream's scoutfs ioctls between the CLI and a mount
 * daemon (wire format in control_wire.ts, the answers in src/core/fs/ioctl.ts).
 *
 * Where: a mount daemon, once its FUSE mount exists, learns the mount's st_dev and serves
 * /run/scoutfs/dev/<major>:<minor>.sock (controlSocketPath). The directory is mode 0700 and
 * the socket 0600, both root's: only root can connect, which stands in for the capability
 * checks of the ioctls (Node cannot read SO_PEERCRED, so the file modes are the guard).
 * The CLI picks the mount as upstream does (-p PATH, else SCOUTFS_MOUNT_PATH, else the
 * current directory; per-file commands use the FILE), opens and fstat()s that path and
 * connects to the socket of its st_dev. No socket there means the path is not on scoutfs:
 * the request fails like the ioctl would on another filesystem, with ENOTTY. Per-file
 * requests carry the file's st_ino, which is the scoutfs inode number (the FUSE layer uses
 * scoutfs inode numbers as node ids).
 *
 * Each connection first says hello (the reply names the mount's fsid and rid); every later
 * request carries that fsid and the server refuses requests for another volume (EXDEV).
 *
 * Server bounds: CONTROL_MAX_CONNECTIONS connections (more are closed at once), one request
 * in service per connection with at most CONTROL_MAX_QUEUED decoded behind it, idle
 * connections closed after CONTROL_IDLE_TIMEOUT_MS. A malformed frame closes that connection
 * only. A handler's FsError becomes the reply's errno; anything else is a bug, logged and
 * answered with EIO, and the daemon carries on.
 */
import { chmod, lstat, mkdir, open, unlink } from "node:fs/promises";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import path from "node:path";
import { type ControlHandler } from "../core/fs/ioctl.js";
import { Errno, errnoCode, fromNodeError, FsError, isFsError, strerror } from "../util/errno.js";
import type { CliIo } from "./command.js";
import {
  type ArgsOf, CONTROL_MAX_REPLY_BYTES, CONTROL_MAX_REQUEST_BYTES, type ControlOpName,
  type ControlReply, type ControlRequest, decodeReply, decodeRequest, encodeReply,
  encodeRequest, FrameReader, type ResultOf,
} from "./control_wire.js";

export type { ControlHandler } from "../core/fs/ioctl.js";
export { controlHandlerFor } from "../core/fs/ioctl.js";

/** Where mount daemons put their sockets. */
export const CONTROL_SOCKET_DIR = "/run/scoutfs/dev";
export const CONTROL_MAX_CONNECTIONS = 64;
export const CONTROL_MAX_QUEUED = 16;
export const CONTROL_IDLE_TIMEOUT_MS = 60_000;
/** The environment variable upstream's get_path() consults after -p. */
export const MOUNT_PATH_ENV = "SCOUTFS_MOUNT_PATH";

/** The socket of the mount whose st_dev is major:minor. */
export function controlSocketPath(major: number, minor: number, dir = CONTROL_SOCKET_DIR):
  string {
  return path.join(dir, `${major}:${minor}.sock`);
}

/** glibc's gnu_dev_major/gnu_dev_minor of a dev_t. */
export function devMajorMinor(dev: bigint): { major: number; minor: number } {
  const major = ((dev >> 32n) & 0xffff_f000n) | ((dev >> 8n) & 0xfffn);
  const minor = ((dev >> 12n) & 0xffff_ff00n) | (dev & 0xffn);
  return { major: Number(major), minor: Number(minor) };
}

// ---------------------------------------------------------------------------------------
// Serving requests.

type Log = (msg: string) => void;

function call(h: ControlHandler, q: ControlRequest): Promise<unknown> {
  switch (q.op) {
    case "hello": return Promise.resolve({ fsid: h.fsid, rid: h.rid });
    case "walkInodes": return h.walkInodes(q.args);
    case "inoPath": return h.inoPath(q.args);
    case "getReferringEntries": return h.getReferringEntries(q.args);
    case "listxattrHidden": return h.listxattrHidden(q.args);
    case "statMore": return h.statMore(q.args);
    case "statfsMore": return h.statfsMore();
    case "allocDetail": return h.allocDetail();
    case "getAllocatedInos": return h.getAllocatedInos(q.args);
    case "fiemap": return h.fiemap(q.args);
  }
}

function errorReply(q: ControlRequest, fsid: bigint, errno: number): Buffer {
  return encodeReply({ id: q.id, op: q.op, fsid, errno });
}

/**
 * Answers one decoded request: the encoded reply frame. Never throws: handler failures and
 * results that cannot be encoded become errno replies.
 */
export async function serveRequest(h: ControlHandler, q: ControlRequest, log: Log):
  Promise<Buffer> {
  if (q.op !== "hello" && q.fsid !== h.fsid) return errorReply(q, h.fsid, Errno.EXDEV);
  try {
    const result = await call(h, q);
    return encodeReply({ id: q.id, op: q.op, fsid: h.fsid, errno: 0, result } as ControlReply);
  } catch (e) {
    if (isFsError(e)) return errorReply(q, h.fsid, e.errno);
    log(`control ${q.op} failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    return errorReply(q, h.fsid, Errno.EIO);
  }
}

/** One connection: frames in, one request served at a time, replies out in order. */
function serveConnection(sock: Socket, h: ControlHandler, log: Log): void {
  const reader = new FrameReader(CONTROL_MAX_REQUEST_BYTES);
  const queue: ControlRequest[] = [];
  let busy = false;
  const pump = async (): Promise<void> => {
    if (busy) return;
    busy = true;
    for (let q = queue.shift(); q !== undefined && !sock.destroyed; q = queue.shift()) {
      const reply = await serveRequest(h, q, log);
      if (!sock.destroyed) sock.write(reply);
    }
    busy = false;
  };
  // idle means no request in service either: a slow answer (a big walk) is not idleness,
  // and writing the reply re-arms the timer
  sock.setTimeout(CONTROL_IDLE_TIMEOUT_MS, () => {
    if (!busy && queue.length === 0) sock.destroy();
  });
  sock.on("error", () => sock.destroy());
  sock.on("data", (chunk: Buffer) => {
    try {
      for (const body of reader.push(chunk)) queue.push(decodeRequest(body));
      if (queue.length > CONTROL_MAX_QUEUED) throw new FsError("ENOBUFS", "too many requests");
    } catch (e) {
      log(`control connection closed: ${e instanceof Error ? e.message : String(e)}`);
      sock.destroy();
      return;
    }
    pump().catch((e: unknown) => {
      log(`control connection failed: ${e instanceof Error ? e.message : String(e)}`);
      sock.destroy();
    });
  });
}

/** Removes a stale socket at p (a leftover of a dead daemon); refuses to remove anything else. */
async function removeStaleSocket(p: string): Promise<void> {
  const st = await lstat(p).catch((e: unknown) => {
    if (isFsError(fromNodeError(e), "ENOENT")) return null;
    throw fromNodeError(e, "lstat", p);
  });
  if (st === null) return;
  if (!st.isSocket()) throw new FsError("EEXIST", "not a socket", "bind", p);
  await unlink(p);
}

export interface ControlServerOptions {
  /** Where failures of handlers and connections are reported (default: nowhere). */
  log?: Log;
}

/**
 * Serves handler on a unix socket at socketPath (its directory is created mode 0700, the
 * socket is made 0600). close() stops accepting, cuts every connection and removes the socket.
 */
export async function startControlServer(socketPath: string, handler: ControlHandler,
  opts: ControlServerOptions = {}): Promise<{ close(): Promise<void> }> {
  const log = opts.log ?? ((): void => undefined);
  const dir = path.dirname(socketPath);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  await removeStaleSocket(socketPath);
  const conns = new Set<Socket>();
  const server: Server = createServer((sock) => {
    if (conns.size >= CONTROL_MAX_CONNECTIONS) {
      sock.destroy();
      return;
    }
    conns.add(sock);
    sock.on("close", () => conns.delete(sock));
    serveConnection(sock, handler, log);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", (e) => log(`control socket: ${e.message}`));
  await chmod(socketPath, 0o600);
  return {
    async close(): Promise<void> {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of conns) s.destroy();
      await closed;
      await unlink(socketPath).catch(() => undefined);
    },
  };
}

// ---------------------------------------------------------------------------------------
// The client.

/** How a failed connect reads to the CLI: the errno its ioctl would have failed with. */
function connectErrno(e: unknown): FsError {
  const code = fromNodeError(e).code;
  if (code === "ENOENT" || code === "ENOTDIR") return new FsError("ENOTTY", "not a scoutfs mount");
  if (code === "EACCES" || code === "EPERM") {
    return new FsError("EPERM", "the control socket is root's");
  }
  if (code === "ECONNREFUSED") return new FsError("ENOTCONN", "the mount daemon is gone");
  return fromNodeError(e, "connect");
}

/** A connection to one mount daemon: sequential requests, replies matched by id. */
export class ControlClient {
  private readonly reader = new FrameReader(CONTROL_MAX_REPLY_BYTES);
  private nextId = 1;
  private waiting: { id: number; resolve: (r: ControlReply) => void;
    reject: (e: FsError) => void } | null = null;
  private failed: FsError | null = null;
  private fsid = 0n;

  private constructor(private readonly sock: Socket) {
    sock.on("data", (chunk: Buffer) => this.onData(chunk));
    sock.on("error", (e) => this.fail(fromNodeError(e, "control socket")));
    sock.on("close", () => {
      this.fail(new FsError("ENOTCONN", "the mount daemon closed the socket"));
    });
  }

  /** Connects and says hello; fails with the errno the CLI should report (see connectErrno). */
  static async connect(socketPath: string): Promise<ControlClient> {
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(socketPath);
      s.once("connect", () => {
        s.off("error", reject);
        resolve(s);
      });
      s.once("error", reject);
    }).catch((e: unknown) => { throw connectErrno(e); });
    const c = new ControlClient(sock);
    c.fsid = (await c.call("hello", {})).fsid;
    return c;
  }

  get mountFsid(): bigint {
    return this.fsid;
  }

  /** One request; an errno reply is thrown as that FsError. */
  async call<N extends ControlOpName>(op: N, args: ArgsOf<N>): Promise<ResultOf<N>> {
    if (this.failed) throw this.failed;
    if (this.waiting) throw new FsError("EBUSY", "one control request at a time");
    const id = this.nextId++;
    const reply = await new Promise<ControlReply>((resolve, reject) => {
      this.waiting = { id, resolve, reject };
      this.sock.write(encodeRequest({ id, op, fsid: this.fsid, args } as ControlRequest));
    });
    if (reply.op !== op) throw new FsError("EBADMSG", `reply to ${op} answers ${reply.op}`);
    if (reply.errno !== 0 || !("result" in reply)) {
      throw new FsError(errnoCode(reply.errno) ?? "EIO", `control ${op}: ${strerror(reply.errno)}`);
    }
    return reply.result as ResultOf<N>;
  }

  close(): void {
    this.sock.destroy();
  }

  private onData(chunk: Buffer): void {
    try {
      for (const body of this.reader.push(chunk)) {
        const r = decodeReply(body);
        const w = this.waiting;
        if (w === null || w.id !== r.id) throw new FsError("EBADMSG", `unexpected reply ${r.id}`);
        this.waiting = null;
        w.resolve(r);
      }
    } catch (e) {
      this.fail(isFsError(e) ? e : new FsError("EBADMSG", String(e)));
      this.sock.destroy();
    }
  }

  private fail(e: FsError): void {
    this.failed ??= e;
    const w = this.waiting;
    this.waiting = null;
    w?.reject(this.failed);
  }
}

// ---------------------------------------------------------------------------------------
// What the commands use: an opened path and the mount behind it.

/** An opened path: its inode and block size, and requests to the mount it is on. */
export interface ControlTarget {
  readonly ino: bigint;
  readonly blksize: number;
  /** The ioctl twin; FsError with the errno upstream's ioctl would fail with. */
  call<N extends ControlOpName>(op: N, args: ArgsOf<N>): Promise<ResultOf<N>>;
  close(): void;
}

/** How commands reach files and mounts (tests substitute their own). */
export interface ControlDeps {
  /** open(path, O_RDONLY) + fstat: throws the FsError open(2) fails with. */
  openTarget(path: string): Promise<ControlTarget>;
  cwd(): string;
  env(name: string): string | undefined;
}

/** A target whose socket is connected on the first request. */
class SocketTarget implements ControlTarget {
  private client: ControlClient | null = null;

  constructor(readonly ino: bigint, readonly blksize: number, private readonly sockPath: string) {}

  async call<N extends ControlOpName>(op: N, args: ArgsOf<N>): Promise<ResultOf<N>> {
    this.client ??= await ControlClient.connect(this.sockPath);
    return this.client.call(op, args);
  }

  close(): void {
    this.client?.close();
    this.client = null;
  }
}

/** The real filesystem and sockets; socketDir is CONTROL_SOCKET_DIR outside tests. */
export function realControlDeps(socketDir = CONTROL_SOCKET_DIR): ControlDeps {
  return {
    async openTarget(p: string): Promise<ControlTarget> {
      const fh = await open(p, "r").catch((e: unknown) => { throw fromNodeError(e, "open", p); });
      try {
        const st = await fh.stat({ bigint: true });
        const { major, minor } = devMajorMinor(st.dev);
        const sock = controlSocketPath(major, minor, socketDir);
        return new SocketTarget(st.ino, Number(st.blksize), sock);
      } finally {
        await fh.close();
      }
    },
    cwd: () => process.cwd(),
    env: (name) => process.env[name],
  };
}

function openFailed(io: CliIo, p: string, e: FsError): number {
  io.err(`failed to open '${p}': ${strerror(e.errno)} (${e.errno})\n`);
  return -e.errno;
}

/** open(2) of a FILE argument: the target, or -errno after upstream's message. */
export async function openFile(deps: ControlDeps, p: string, io: CliIo):
  Promise<ControlTarget | number> {
  try {
    return await deps.openTarget(p);
  } catch (e) {
    if (!isFsError(e)) throw e;
    return openFailed(io, p, e);
  }
}

/**
 * get_path(): -p PATH, else $SCOUTFS_MOUNT_PATH, else the current directory (upstream's env
 * branch opens a NULL path; we open the variable's value). Upstream also wordexp()s the
 * path; here the shell has already expanded it.
 */
export async function openMountPath(deps: ControlDeps, p: string | null, io: CliIo):
  Promise<ControlTarget | number> {
  if (p !== null) return openFile(deps, p, io);
  const env = deps.env(MOUNT_PATH_ENV);
  if (env !== undefined) return openFile(deps, env, io);
  let cwd: string;
  try {
    cwd = deps.cwd();
  } catch (e) {
    return -fromNodeError(e).errno; // get_current_dir_name() failed: no message upstream
  }
  return openFile(deps, cwd, io);
}

/** upstream's { "path", 'p', "PATH", 0, "Path to ScoutFS filesystem" } option. */
export const PATH_OPTION = {
  key: "p", short: "p", long: "path", arg: "PATH", doc: "Path to ScoutFS filesystem",
} as const;

/** Writes bytes as they are (names and paths need not be UTF-8). */
export function outBytes(io: CliIo, b: Buffer): void {
  if (io.outBytes) io.outBytes(b);
  else io.out(b.toString("utf8"));
}

/** "<what>: <strerror> (<errno>)\n", the shape of upstream's ioctl failure lines. */
export function errLine(what: string, e: FsError): string {
  return `${what}: ${strerror(e.errno)} (${e.errno})\n`;
}
