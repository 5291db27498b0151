/*
 * Test helper: scratch filesystems for the POSIX conformance tier, made and removed by the
 * test itself: an ext4 image on a loop device (the reference), and a tmpfs.
 *
 * Method: a private temp dir (mode 0755 so that the other users of the permission cases can
 * reach the mount) holds a sparse image file; `losetup --find --show` attaches it (so we know
 * exactly which loop device is ours), `mkfs.ext4 -q -b 4096 -O ea_inode` formats it (4 KiB
 * blocks for 4095-byte symlinks, ea_inode for 64 KiB xattr values) and `mount -o
 * acl,user_xattr` mounts it. The callback runs in try/finally: whatever happens, the mount we
 * made is unmounted (lazily if busy), the loop device we attached is detached and the temp
 * dir removed; if the process exits or is signalled first, exit/SIGINT/SIGTERM handlers do the
 * same synchronously. Nothing here touches any other mount or loop device.
 */
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

/** Run a command; throw with its stderr when it fails. Returns stdout. */
export function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 60_000 });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(" ")}: status ${r.status} ${r.stderr || String(r.error)}`);
  }
  return r.stdout;
}

function have(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;
}

/** Why scratch mounts cannot be made here, or null when they can (root, tools present). */
export function mountUnsupported(kind: "ext4" | "tmpfs"): string | null {
  if (process.getuid?.() !== 0) return "needs root to mount";
  const tools = kind === "ext4" ? ["mkfs.ext4", "losetup", "mount", "umount"] : ["mount", "umount"];
  const missing = tools.filter((t) => !have(t));
  return missing.length === 0 ? null : `missing tools: ${missing.join(", ")} (apt-get install e2fsprogs mount)`;
}

function makeTempDir(tag: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `posix-${tag}-`));
  fs.chmodSync(dir, 0o755);
  return dir;
}

/**
 * Cleanups of the mounts and loop devices this process made and has not yet removed. If the
 * process exits or is signalled before a finally block runs (a test timeout, Ctrl-C), they
 * still run, synchronously, so no scratch mount outlives the test.
 */
const pending = new Map<string, () => void>();

function cleanupAll(): void {
  for (const [key, fn] of [...pending].reverse()) {
    pending.delete(key);
    fn();
  }
}

function onSignal(sig: NodeJS.Signals): void {
  cleanupAll();
  process.removeListener("SIGINT", onSignal);
  process.removeListener("SIGTERM", onSignal);
  process.kill(process.pid, sig);
}

function track(key: string, fn: () => void): void {
  if (pending.size === 0) {
    process.on("exit", cleanupAll);
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  }
  pending.set(key, fn);
}

function untrack(key: string): void {
  pending.delete(key);
  if (pending.size > 0) return;
  process.removeListener("exit", cleanupAll);
  process.removeListener("SIGINT", onSignal);
  process.removeListener("SIGTERM", onSignal);
}

/** Unmount a mount point we made; lazy unmount when it is busy. */
export function unmountOurs(mnt: string): void {
  const r = spawnSync("umount", [mnt], { encoding: "utf8" });
  if (r.status !== 0) spawnSync("umount", ["-l", mnt]);
}

/** An attached loop device holding a fresh ext4, and where it is mounted. */
export interface Ext4Mount {
  mnt: string;
  dev: string;
  image: string;
  remount(): void;
}

function mountExt4(dev: string, mnt: string): void {
  sh("mount", ["-o", "acl,user_xattr", dev, mnt]);
}

/** Make, mount, hand over and always remove an ext4 of `sizeMiB` on a loop device. */
export async function withExt4<T>(sizeMiB: number, fn: (m: Ext4Mount) => Promise<T>): Promise<T> {
  const dir = makeTempDir("ext4");
  const image = path.join(dir, "ext4.img");
  const mnt = path.join(dir, "mnt");
  let dev: string | null = null;
  let mounted = false;
  const cleanup = (): void => {
    if (mounted) unmountOurs(mnt);
    mounted = false;
    if (dev !== null) spawnSync("losetup", ["-d", dev]);
    dev = null;
    fs.rmSync(dir, { recursive: true, force: true });
  };
  track(dir, cleanup);
  try {
    fs.mkdirSync(mnt, { mode: 0o755 });
    fs.writeFileSync(image, "");
    fs.truncateSync(image, sizeMiB * 1024 * 1024);
    sh("mkfs.ext4", ["-q", "-b", "4096", "-O", "ea_inode", "-E", "nodiscard", image]);
    dev = sh("losetup", ["--find", "--show", image]).trim();
    mountExt4(dev, mnt);
    mounted = true;
    const d = dev;
    const remount = (): void => {
      unmountOurs(mnt);
      mounted = false;
      mountExt4(d, mnt);
      mounted = true;
    };
    return await fn({ mnt, dev, image, remount });
  } finally {
    untrack(dir);
    cleanup();
  }
}

/** Make, mount, hand over and always remove a tmpfs of `sizeMiB`. */
export async function withTmpfs<T>(sizeMiB: number, fn: (mnt: string) => Promise<T>): Promise<T> {
  const dir = makeTempDir("tmpfs");
  const mnt = path.join(dir, "mnt");
  let mounted = false;
  const cleanup = (): void => {
    if (mounted) unmountOurs(mnt);
    mounted = false;
    fs.rmSync(dir, { recursive: true, force: true });
  };
  track(dir, cleanup);
  try {
    fs.mkdirSync(mnt, { mode: 0o755 });
    sh("mount", ["-t", "tmpfs", "-o", `size=${sizeMiB}m,mode=0755`, "posix-tmpfs", mnt]);
    mounted = true;
    return await fn(mnt);
  } finally {
    untrack(dir);
    cleanup();
  }
}
