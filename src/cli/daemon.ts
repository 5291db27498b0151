/*
 * The mount daemon: one process per mount (DESIGN.md §2), started by mount.scoutfs or
 * `scoutfs mount`, serving the kernel through FUSE until the filesystem is unmounted.
 *
 * Start-up, each step failing with upstream's message and nothing changed on the devices:
 * parse the options, open the metadata and data devices, check their supers belong together
 * (META flag on the metadata device only, same uuid and format version), join the cluster
 * (the quorum agent elects; the leader runs the server in this process), open the first
 * transaction, mount /dev/fuse on the directory, then serve the control socket and the
 * status directory. The parent (mount helper) learns the outcome through a pipe: "ok" or
 * the error text, so `mount` fails with a clear message and never leaves a half mount.
 *
 * Shutdown: when the kernel ends the session (umount, or SIGTERM/SIGINT making us unmount),
 * the daemon commits its transaction, says farewell to the server, stops its quorum agent
 * (and the server it ran), removes its sockets and exits 0. After kill -9 the FUSE watchdog
 * lazily unmounts the directory and the next mount recovers through the server's fencing and
 * reclaim of this rid.
 */

import { randomBytes } from "node:crypto";
import { statSync } from "node:fs";
import { readdir, realpath, rmdir } from "node:fs/promises";
import { ScoutFs } from "../core/fs/fs.js";
import { ScoutMount } from "../core/mount.js";
import { decodeSuper, SUPER_OFFSET, SUPER_SIZE, superIsMeta } from "../core/format.js";
import type { SuperBlock } from "../core/format.js";
import { realEnv, type RealEnv } from "../env/real/env.js";
import { openRealBlockDevice, type RealBlockDevice } from "../env/real/blockdev.js";
import { mountFuse, type FuseSession } from "../fuse/session.js";
import { ScoutVfs } from "../fuse/vfs.js";
import { fuseMountInfo } from "../fuse/mount.js";
import { controlHandlerFor, controlSocketPath, startControlServer } from "./control.js";
import { LockMode } from "../core/lock_msg.js";
import { keyFields, Zone } from "../core/key.js";
import type { LockRange } from "../core/lock_names.js";
import { FsError, isFsError } from "../util/errno.js";
import type { MountOptions, SysfsMountOptionName } from "../core/options.js";
import {
  buildStatusTree, mountStatusFs, statusDirPath, type StatusMount, type StatusSource,
} from "../fuse/statusfs.js";
import { Triggers } from "../util/triggers.js";
import {
  DAEMON_MARK, fenceLocalRid, registerRid, ridHex, ridKnownDeadLocally, unregisterRid,
} from "./fence_local.js";

/** Longest wait for the kernel to take a lock invalidation's notifications. */
const NOTIFY_WAIT_MS = 2000;

/** The FUSE mount's readahead (bdi read_ahead_kb), set after INIT. */
export const READAHEAD_KB = 8192;

export interface DaemonArgs {
  dataPath: string;
  mountpoint: string;
  optionsText: string;
  opts: MountOptions;
  /** Start-up progress for the waiting mount helper. */
  progress: (text: string) => void;
}

export class MountDaemon {
  private session: FuseSession | null = null;
  private status: StatusMount | null = null;
  private control: { close(): Promise<void> } | null = null;
  private stopping = false;
  /** The options in force (mount_options/ writes replace them). */
  opts: MountOptions;
  readonly triggers = new Triggers();

  private constructor(readonly env: RealEnv, readonly args: DaemonArgs,
    readonly meta: RealBlockDevice, readonly data: RealBlockDevice, readonly sb: SuperBlock,
    readonly mount: ScoutMount, readonly fs: ScoutFs, readonly rid: bigint) {
    this.opts = args.opts;
  }

  /** Brings the mount up; throws FsErrors carrying upstream's messages. */
  static async start(args: DaemonArgs): Promise<MountDaemon> {
    const env = realEnv();
    const opts = args.opts;
    const mountpoint = await realpath(args.mountpoint).catch((e: unknown) => {
      throw new FsError("ENOENT", `mount point ${args.mountpoint} does not exist: ${String(e)}`);
    });
    const meta = await openDevice(opts.metadevPath, "metadev");
    const data = await openDevice(args.dataPath, "data device", true).catch(async (e: unknown) => {
      await meta.close();
      throw e;
    });
    try {
      const sb = await checkDevices(meta, data);
      const rid = randomRid();
      await registerRid(rid);
      const mount = await ScoutMount.mount(env, meta, {
        rid, quorumSlot: opts.quorumSlotNr, heartbeatTimeoutMs: opts.quorumHeartbeatTimeoutMs,
        data,
        fenceLeader: (prev) => fenceLocalRid(prev.rid, `previous leader of term ${prev.term}`,
          env.logger),
        fenceClient: (r, reason) => fenceLocalRid(r, reason, env.logger),
        ridKnownDead: (r) => ridKnownDeadLocally(r),
        onInvalidateRange: (range, to) => daemon?.kernelInvalidate(range, to) ?? Promise.resolve(),
      });
      const fs = new ScoutFs(mount.client, { dataPreallocBlocks: opts.dataPreallocBlocks,
        dataPreallocContigOnly: opts.dataPreallocContigOnly, acl: opts.acl,
        orphanScanDelayMs: opts.orphanScanDelayMs });
      const daemon: MountDaemon = new MountDaemon(env, { ...args, mountpoint }, meta, data, sb,
        mount, fs, rid);
      await daemon.serve();
      return daemon;
    } catch (e) {
      await meta.close().catch(() => undefined);
      await data.close().catch(() => undefined);
      throw e;
    }
  }

  get prefix(): string {
    return `scoutfs f.${ridHex(this.sb.hdr.fsid).slice(0, 6)}.r.${ridHex(this.rid).slice(0, 6)}`;
  }

  private vfs: ScoutVfs | null = null;
  /** Where notifications sent during kernelInvalidate() are collected to be waited for. */
  private notifySink: Promise<void>[] | null = null;

  private async serve(): Promise<void> {
    const env = this.env;
    let session: FuseSession | null = null;
    const track = (p: Promise<void> | undefined): void => {
      const q = (p ?? Promise.resolve()).catch(() => undefined);
      this.notifySink?.push(q);
    };
    const vfs = new ScoutVfs(this.fs, {
      invalInode: (ino) => { track(session?.notifyInvalInode(ino)); },
      invalEntry: (p, n) => { track(session?.notifyInvalEntry(p, n)); },
    }, { nowMs: () => env.clock.monotonicMs() });
    this.vfs = vfs;
    session = await mountFuse(vfs, {
      mountpoint: this.args.mountpoint, fsname: this.args.dataPath, subtype: "scoutfs",
      // No writeback cache: with it the kernel trusts its own i_size and mtime of regular
      // files over the attributes we send, even after NOTIFY_INVAL_INODE, so a change made
      // by another mount would stay invisible here (cluster coherence comes first).
      logger: env.logger, allowOther: true, defaultPermissions: true, writebackCache: false,
      readdirplus: "auto", extraOptions: this.args.opts.vfs.fuseFlags,
      // 8 MiB: the kernel keeps several 1 MiB READs in flight for a sequential reader
      // (cold 1 GiB dd: about 200 MB/s at 1 MiB, 320-370 MB/s at 8-16 MiB, buffered device)
      readaheadKb: READAHEAD_KB,
      posixAcl: this.args.opts.acl,
    });
    this.session = session;
    try {
      this.status = await this.mountStatus();
      this.control = await this.startControl();
    } catch (e) {
      await this.status?.unmount().catch(() => undefined);
      await session.unmount().catch(() => undefined);
      throw e;
    }
    env.logger.log("info", `${this.prefix} mounted ${this.args.dataPath} on ` +
      `${this.args.mountpoint}, status in ${this.status.mountpoint}`);
  }

  /**
   * The control socket (the twin of upstream's ioctls), named after the FUSE mount's device
   * number so the CLI finds it from any path's st_dev. The number comes from mountinfo:
   * stat()ing our own mount point from this process would wait on ourselves.
   */
  private async startControl(): Promise<{ close(): Promise<void> }> {
    const info = await fuseMountInfo(this.args.mountpoint);
    if (info === null) throw new FsError("EIO", "the FUSE mount is not in mountinfo");
    const [major, minor] = info.devnum.split(":").map(Number);
    if (major === undefined || minor === undefined) throw new FsError("EIO", info.devnum);
    const log = this.env.logger;
    return startControlServer(controlSocketPath(major, minor), controlHandlerFor(this.fs),
      { log: (m) => log.log("warn", `${this.prefix} control: ${m}`) });
  }

  /** The status directory (the twin of /sys/fs/scoutfs/f.FSID.r.RID/). */
  private async mountStatus(): Promise<StatusMount> {
    const src: StatusSource = {
      fsid: this.sb.hdr.fsid, rid: this.rid, formatVersion: this.sb.fmtVers,
      dataDeviceMajMin: () => this.dataMajMin,
      counters: this.mount.counters,
      mountOptions: {
        get: () => this.opts,
        set: (next, changed) => { this.applyOption(next, changed); },
      },
      volumeOptions: {
        get: () => this.sb.volopt.dataAllocZoneBlocks,
        set: () => {
          throw new FsError("EOPNOTSUPP", "changing volume options online is not built yet");
        },
      },
      quorum: this.mount.quorum,
      triggers: this.triggers,
    };
    await removeStaleStatusDirs();
    return mountStatusFs(buildStatusTree(src), {
      mountpoint: statusDirPath(this.sb.hdr.fsid, this.rid), logger: this.env.logger,
    });
  }

  /** A validated write to mount_options/<changed>: takes effect where it applies. */
  private applyOption(next: MountOptions, changed: SysfsMountOptionName): void {
    this.opts = next;
    if (changed === "quorum_heartbeat_timeout_ms") {
      this.mount.quorum?.setHeartbeatTimeoutMs(next.quorumHeartbeatTimeoutMs);
    }
    if (changed === "orphan_scan_delay_ms") this.fs.setOrphanScanDelayMs(next.orphanScanDelayMs);
    this.env.logger.log("info", `${this.prefix} mount option ${changed} changed`);
  }

  private get dataMajMin(): string {
    const st = statSync(this.args.dataPath);
    const dev = st.isBlockDevice() ? st.rdev : st.dev;
    return `${Math.floor(dev / 256) & 0xfff}:${(dev & 0xff) | ((dev >> 12) & 0xfff00)}`;
  }

  /** A cluster lock changed mode: the kernel must drop what the lost coverage protected. */
  /**
   * Runs before the server hears that we gave the lock up: the kernel's notifications for
   * everything it caches under the range are written (a READ downgrade keeps them: nobody
   * may write meanwhile). Waiting is bounded by NOTIFY_WAIT_MS: an INVAL_INODE of a page
   * the kernel must write back first needs a WRITE request that may wait on this very lock.
   */
  async kernelInvalidate(range: LockRange, to: LockMode): Promise<void> {
    if (to === LockMode.WRITE || to === LockMode.READ || this.vfs === null) return;
    const s = keyFields(range.start);
    const e = keyFields(range.end);
    if (s.zone !== Zone.FS || e.zone !== Zone.FS) return;
    const sent: Promise<void>[] = [];
    this.notifySink = sent;
    let n: number;
    try {
      n = this.vfs.invalidateInodeRange(s.first, e.first);
    } finally {
      this.notifySink = null;
    }
    if (n === 0) return;
    this.mount.counters.inc("fuse_lock_invalidations", n);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((r) => { timer = setTimeout(r, NOTIFY_WAIT_MS); });
    await Promise.race([Promise.allSettled(sent), late]);
    clearTimeout(timer);
  }

  /** Resolves when the kernel ended the session; then shuts the mount down. */
  async run(): Promise<number> {
    const s = this.session;
    if (s === null) return 1;
    await s.ended;
    return this.shutdown();
  }

  /** Asks the kernel to unmount (SIGTERM/SIGINT); run() finishes the shutdown. */
  async requestUnmount(): Promise<void> {
    if (this.stopping) return;
    await this.session?.unmount().catch((e: unknown) => {
      this.env.logger.log("warn", `${this.prefix} unmount: ${String(e)}`);
    });
  }

  private async shutdown(): Promise<number> {
    if (this.stopping) return 0;
    this.stopping = true;
    const log = this.env.logger;
    let rc = 0;
    await this.control?.close().catch(() => undefined);
    await this.status?.unmount().catch((e: unknown) => {
      log.log("warn", `${this.prefix} status directory unmount: ${String(e)}`);
    });
    // the orphan scanner takes locks and talks to the server: stopped before the farewell
    await this.fs.shutdown().catch(() => undefined);
    try {
      await this.mount.unmount();
    } catch (e) {
      log.log("error", `${this.prefix} unmount of the cluster mount failed: ${String(e)}`);
      rc = 1;
    }
    await unregisterRid(this.rid).catch(() => undefined);
    await this.meta.close().catch(() => undefined);
    await this.data.close().catch(() => undefined);
    this.env.timers.clearAll?.();
    log.log("info", `${this.prefix} unmounted`);
    return rc;
  }
}

/**
 * Status directories of daemons killed with -9 stay behind as empty directories once their
 * watchdog unmounted them; rmdir removes exactly those (a live one is a mount point: EBUSY).
 */
async function removeStaleStatusDirs(): Promise<void> {
  const root = "/run/scoutfs";
  const names = await readdir(root).catch(() => [] as string[]);
  for (const n of names) {
    if (/^f\.[0-9a-f]{6}\.r\.[0-9a-f]{6}$/.test(n)) await rmdir(`${root}/${n}`).catch(() => undefined);
  }
}

function randomRid(): bigint {
  for (;;) {
    const r = randomBytes(8).readBigUInt64LE(0);
    if (r !== 0n) return r;
  }
}

/**
 * Opens a device; with `direct`, O_DIRECT when the file's filesystem allows it (tmpfs does
 * not: buffered then). File data goes to the data device with O_DIRECT: measured on sparse
 * files here, first writes through the page cache ran at about 185 MB/s against 1.1 GB/s
 * direct, and a device shared between hosts needs it anyway. Metadata stays buffered
 * (every commit flushes it; its blocks are cached in the daemon as well).
 */
async function openDevice(path: string, what: string, direct = false):
  Promise<RealBlockDevice> {
  try {
    if (direct) {
      try {
        return await openRealBlockDevice(path, { direct: true });
      } catch (e) {
        if (!isFsError(e, "EINVAL")) throw e;
      }
    }
    return await openRealBlockDevice(path);
  } catch (e) {
    const msg = isFsError(e) ? e.message : String(e);
    throw new FsError(isFsError(e) ? e.code : "EIO",
      what === "metadev" ? `could not open metadev: ${msg}` : `could not open ${what}: ${msg}`);
  }
}

/** The supers must belong together: upstream's checks and messages (super.c). */
export async function checkDevices(meta: RealBlockDevice, data: RealBlockDevice):
  Promise<SuperBlock> {
  const msb = await readSuper(meta, "meta_super");
  const dsb = await readSuper(data, "data_super");
  if (!msb.isMeta) throw new FsError("EINVAL", "meta_super META flag not set");
  if (dsb.isMeta) throw new FsError("EINVAL", "data_super META flag set");
  if (!msb.sb.uuid.equals(dsb.sb.uuid)) throw new FsError("EINVAL", "superblock UUID mismatch");
  if (msb.sb.fmtVers !== dsb.sb.fmtVers) {
    throw new FsError("EINVAL", `meta device format version ${msb.sb.fmtVers} != data device ` +
      `format version ${dsb.sb.fmtVers}`);
  }
  return msb.sb;
}

async function readSuper(dev: RealBlockDevice, what: string):
  Promise<{ sb: SuperBlock; isMeta: boolean }> {
  if (dev.sizeBytes < SUPER_OFFSET + SUPER_SIZE) {
    throw new FsError("EINVAL", `could not get ${what}: error -22 (device too small)`);
  }
  const buf = dev.allocBuffer(SUPER_SIZE);
  await dev.read(buf, SUPER_OFFSET);
  const copy = Buffer.from(buf);
  try {
    const sb = decodeSuper(copy);
    return { sb, isMeta: superIsMeta(copy) };
  } catch (e) {
    const why = isFsError(e) ? e.message : String(e);
    throw new FsError("EINVAL", `could not get ${what}: error -22 (${why})`);
  }
}

export { DAEMON_MARK };
