/*
 * Fencing of mounts on this host (the daemon's answer to the core's fence callbacks).
 *
 * Upstream fences through scoutfs-fenced and a site script (reference §1.16, §2.7): a mount
 * that stopped answering is cut off from the devices (power, SAN zoning) before its locks
 * and log trees are reclaimed. The daemon here knows the mounts of this host: each one
 * records its rid and pid in /run/scoutfs/rids/<rid 16 hex> while it runs. Fencing a rid
 * found there kills that process (SIGKILL, then waits for it to be gone); a rid with no live
 * process here belonged to a daemon that is already dead (or to another host, which the
 * multi-host step will hand to a fence agent), so there is nothing left to stop. The
 * registration of a dead daemon stays (a few bytes in /run, gone at reboot) so that a new
 * server can tell at once that the rid will never reconnect (ridKnownDeadLocally).
 */

import { readFile, rm, writeFile, mkdir } from "node:fs/promises";
import type { Logger } from "../env/env.js";

export const RID_DIR = "/run/scoutfs/rids";
/** How long a fenced process may take to die after SIGKILL. */
const FENCE_WAIT_MS = 10_000;
const FENCE_POLL_MS = 50;

export function ridHex(rid: bigint): string {
  return rid.toString(16).padStart(16, "0");
}

/** Records this process as the holder of rid (removed by unregisterRid). */
export async function registerRid(rid: bigint): Promise<void> {
  await mkdir(RID_DIR, { recursive: true, mode: 0o700 });
  await writeFile(`${RID_DIR}/${ridHex(rid)}`, `${process.pid}\n`, { mode: 0o600 });
}

export async function unregisterRid(rid: bigint): Promise<void> {
  await rm(`${RID_DIR}/${ridHex(rid)}`, { force: true });
}

/**
 * True if rid was a mount of this host whose daemon is gone (its registration outlived it:
 * kill -9). Rids registered nowhere here may live on another host: not known dead.
 */
export async function ridKnownDeadLocally(rid: bigint): Promise<boolean> {
  let pid: number;
  try {
    pid = Number((await readFile(`${RID_DIR}/${ridHex(rid)}`, "utf8")).trim());
  } catch {
    return false;
  }
  return !Number.isSafeInteger(pid) || pid <= 1 || !alive(pid) || !(await isDaemon(pid));
}

/** Stops the local process holding rid, if any; resolves once it is gone. */
export async function fenceLocalRid(rid: bigint, why: string, logger: Logger): Promise<void> {
  const path = `${RID_DIR}/${ridHex(rid)}`;
  let pid: number;
  try {
    pid = Number((await readFile(path, "utf8")).trim());
  } catch {
    logger.log("info", `fencing rid ${ridHex(rid)} (${why}): no local process, nothing to stop`);
    return;
  }
  if (!Number.isSafeInteger(pid) || pid <= 1 || pid === process.pid || !alive(pid) ||
    !(await isDaemon(pid))) {
    logger.log("info", `fencing rid ${ridHex(rid)} (${why}): its process is gone`);
    return;
  }
  logger.log("warn", `fencing rid ${ridHex(rid)} (${why}): killing pid ${pid}`);
  process.kill(pid, "SIGKILL");
  const deadline = Date.now() + FENCE_WAIT_MS;
  while (alive(pid)) {
    if (Date.now() > deadline) throw new Error(`pid ${pid} of rid ${ridHex(rid)} did not die`);
    await new Promise((r) => setTimeout(r, FENCE_POLL_MS));
  }
}

/** Guards against pid reuse: the process must be a scoutfs mount daemon. */
async function isDaemon(pid: number): Promise<boolean> {
  try {
    const cmd = await readFile(`/proc/${pid}/cmdline`, "latin1");
    return cmd.includes(DAEMON_MARK);
  } catch {
    return false;
  }
}

/** Part of every daemon's command line (its entry file). */
export const DAEMON_MARK = "scoutfs-daemon";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
