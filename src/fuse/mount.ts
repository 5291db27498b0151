/*
 * Mounting and unmounting a FUSE filesystem without libfuse (reference/fuse.md, "Mounting").
 *
 * session.ts calls openAndMount() to get a connected /dev/fuse fd, and the helpers here to
 * unmount, to find the connection's device number (for the readahead knob in /sys/class/bdi)
 * and to run the crash watchdog. Tests and the CLI use lazyUnmount() to clean up a mount
 * whose daemon died.
 *
 * Rules this file keeps (each one a measured way to deadlock or lose the mount):
 *  - mount(8) runs as a child process, asynchronously, with `-i` so util-linux does not run
 *    mount.fuse (which would execute a program named after the subtype). The /dev/fuse fd
 *    is passed as the child's fd 3 and named in the options as fd=3.
 *  - Nothing here ever stats or opens the mount point after mounting: done from the serving
 *    process that would wait on itself. The device number comes from /proc/self/mountinfo.
 *  - Every child process has a timeout and is killed by its pid when it expires.
 */

import { spawn } from "node:child_process";
import fs from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { FsError, fromNodeError } from "../util/errno.js";

/** Timeout for mount(8) and umount(8) runs. */
export const MOUNT_COMMAND_TIMEOUT_MS = 10_000;
/** Bound on the stderr text kept from a command, for error messages. */
const COMMAND_STDERR_MAX_BYTES = 4096;

export interface MountSpec {
  /** Absolute, canonical path of an existing directory. */
  readonly mountpoint: string;
  /** The "device" column of /proc/mounts (fsname). */
  readonly source: string;
  /** Filesystem type is fuse.<subtype>. */
  readonly subtype: string;
  /** Mount options after fd=3 (rootmode, user_id, group_id, allow_other, ...). */
  readonly options: readonly string[];
}

export interface CommandResult { code: number | null; signal: string | null; stderr: string }

/** Runs a command (no shell) with a timeout; extra fds become the child's fds 3, 4, ... */
export function runCommand(file: string, args: readonly string[], extraFds: readonly number[] = [],
  timeoutMs = MOUNT_COMMAND_TIMEOUT_MS): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ["ignore", "ignore", "pipe", ...extraFds] });
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      if (stderr.length < COMMAND_STDERR_MAX_BYTES) stderr += d.toString("utf8");
    });
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, "SIGKILL");
    }, timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(fromNodeError(e, "spawn", file));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr: stderr.slice(0, COMMAND_STDERR_MAX_BYTES).trim() });
    });
  });
}

/** Mount options must not smuggle in other options (commas) or break argv parsing. */
export function checkOptionText(what: string, s: string): void {
  if (s.length === 0 || /[,\s"'\\]/.test(s) || s.includes("\0")) {
    throw new FsError("EINVAL", `${what} '${s}' is empty or contains ',', quotes or spaces`);
  }
}

/**
 * Opens /dev/fuse and mounts it on spec.mountpoint; returns the connected fd. Only after
 * this resolves may the fd be read (earlier reads fail with EPERM).
 */
export async function openAndMount(spec: MountSpec): Promise<number> {
  checkOptionText("subtype", spec.subtype);
  checkOptionText("fsname", spec.source);
  for (const o of spec.options) checkOptionText("mount option", o);
  let fd: number;
  try {
    fd = fs.openSync("/dev/fuse", "r+");
  } catch (e) {
    throw fromNodeError(e, "open", "/dev/fuse");
  }
  try {
    const opts = ["fd=3", ...spec.options].join(",");
    const r = await runCommand("mount", ["-i", "-t", `fuse.${spec.subtype}`, "-o", opts,
      spec.source, spec.mountpoint], [fd]);
    if (r.code !== 0) {
      throw new FsError(r.code === 1 ? "EPERM" : "EIO",
        `mount failed (${r.code ?? r.signal}): ${r.stderr}`, "mount", spec.mountpoint);
    }
    return fd;
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** umount(8); lazy detaches a busy or dead mount (umount -l). Rejects with the reason. */
export async function unmount(mountpoint: string, lazy = false): Promise<void> {
  const r = await runCommand("umount", lazy ? ["-l", mountpoint] : [mountpoint]);
  if (r.code !== 0) {
    const busy = /busy/i.test(r.stderr);
    throw new FsError(busy ? "EBUSY" : "EIO", `umount failed (${r.code ?? r.signal}): ` +
      r.stderr, "umount", mountpoint);
  }
}

/**
 * Cleans up the mount of a dead or hung daemon: a lazy unmount, which works even when every
 * access fails with ENOTCONN. Resolves false when nothing was mounted there.
 */
export async function lazyUnmount(mountpoint: string): Promise<boolean> {
  if ((await fuseMountInfo(mountpoint)) === null) return false;
  await unmount(mountpoint, true);
  return true;
}

export interface FuseMountInfo { devnum: string; fstype: string; source: string }

/** Undoes mountinfo's octal escapes (\040 for a space, ...). */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** The newest FUSE mount on mountpoint in /proc/self/mountinfo, or null. */
export async function fuseMountInfo(mountpoint: string): Promise<FuseMountInfo | null> {
  const text = await readFile("/proc/self/mountinfo", "utf8");
  let found: FuseMountInfo | null = null;
  for (const line of text.split("\n")) {
    const [pre, post] = line.split(" - ");
    if (pre === undefined || post === undefined) continue;
    const f = pre.split(" ");
    const [fstype, source] = post.split(" ");
    if (f[2] === undefined || f[4] === undefined || fstype === undefined) continue;
    if (unescapeMountinfo(f[4]) !== mountpoint) continue;
    if (fstype !== "fuse" && !fstype.startsWith("fuse.")) continue;
    found = { devnum: f[2], fstype, source: unescapeMountinfo(source ?? "") };
  }
  return found;
}

/**
 * Raises the kernel readahead of the mount's bdi: the INIT reply can only lower it, and 1 MiB
 * READs take buffered reads from 2.5 to 3.9 GB/s (reference/fuse.md).
 */
export async function setReadaheadKb(devnum: string, kb: number): Promise<void> {
  await writeFile(`/sys/class/bdi/${devnum}/read_ahead_kb`, `${kb}\n`);
}

export interface Watchdog { readonly pid: number; stop(): void }

/**
 * Crash auto-unmount without libfuse: a shell child blocks reading a pipe from this process;
 * when the daemon dies (even by SIGKILL) the pipe closes and the child lazily unmounts.
 * stop() kills it (by its pid) before an orderly unmount.
 */
export function startUnmountWatchdog(mountpoint: string): Watchdog {
  const child = spawn("sh", ["-c", 'cat >/dev/null; exec umount -l "$0" 2>/dev/null', mountpoint],
    { stdio: ["pipe", "ignore", "ignore"], detached: true });
  child.on("error", () => undefined); // no sh: no watchdog, nothing else to do
  child.unref();
  const stdin = child.stdin as (NodeJS.WritableStream & { unref?: () => void }) | null;
  stdin?.unref?.();
  const pid = child.pid ?? -1;
  return {
    pid,
    stop(): void {
      if (pid <= 0 || child.exitCode !== null || child.signalCode !== null) return;
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    },
  };
}
