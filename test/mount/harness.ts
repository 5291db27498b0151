/*
 * Test harness for real scoutfs mounts: a volume on sparse files in a temp dir, the mount
 * daemon started through `scoutfs mount` (the same code as /sbin/mount.scoutfs), and a
 * cleanup that always leaves nothing behind: umount, then SIGKILL of the daemon by its pid
 * and a lazy unmount if the orderly way failed. Only processes this harness started are
 * killed (found through their rid registration, whose command line names this mount point).
 */

import { execFile, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const execFileP = promisify(execFile);
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
export const SCOUTFS = path.join(REPO, "bin/scoutfs");
const RID_DIR = "/run/scoutfs/rids";

export function mountSkipReason(): string | false {
  if (!existsSync("/dev/fuse")) return "no /dev/fuse on this machine";
  if (process.getuid?.() !== 0) return "mounting needs root";
  return false;
}

export interface CmdResult { code: number; stdout: string; stderr: string }

/** Runs bin/scoutfs with args (never throws on a nonzero status). */
export async function scoutfs(args: readonly string[], env: NodeJS.ProcessEnv = process.env,
  cwd?: string): Promise<CmdResult> {
  try {
    const r = await execFileP(process.execPath, [SCOUTFS, ...args],
      { env, cwd, maxBuffer: 64 << 20, timeout: 120_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === "number" ? x.code : 1, stdout: x.stdout ?? "",
      stderr: x.stderr ?? "" };
  }
}

export interface Volume {
  dir: string;
  meta: string;
  data: string;
  port: number;
}

/** A fresh volume on sparse files (small: -A), with quorum slot 0 on a random port. */
export async function makeVolume(metaSize = "4G", dataSize = "16G"): Promise<Volume> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "scoutfs-mount-"));
  // other users (setpriv tests) must reach the mount point through it
  await fsp.chmod(dir, 0o755);
  const meta = path.join(dir, "meta.img");
  const data = path.join(dir, "data.img");
  spawnSync("truncate", ["-s", metaSize, meta]);
  spawnSync("truncate", ["-s", dataSize, data]);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const r = await scoutfs(["mkfs", "-A", "-f", "-Q", `0,127.0.0.1,${port}`, meta, data]);
  if (r.code !== 0) throw new Error(`mkfs failed: ${r.stderr}`);
  return { dir, meta, data, port };
}

export class Mount {
  constructor(readonly vol: Volume, readonly mp: string) {}

  static async mount(vol: Volume, extraOpts = "", name = "mnt"): Promise<Mount> {
    const mp = path.join(vol.dir, name);
    await fsp.mkdir(mp, { recursive: true });
    const m = new Mount(vol, mp);
    const r = await scoutfs(["mount", "-o",
      `metadev_path=${vol.meta},quorum_slot_nr=0${extraOpts}`, vol.data, mp]);
    if (r.code !== 0) {
      await m.cleanup();
      throw new Error(`mount failed (${r.code}): ${r.stderr}`);
    }
    return m;
  }

  /** The daemon serving this mount point (by its rid registration and command line). */
  daemonPid(): number | null {
    if (!existsSync(RID_DIR)) return null;
    for (const f of readdirSync(RID_DIR)) {
      const pid = Number(readFileSync(path.join(RID_DIR, f), "utf8").trim());
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, "latin1").split("\0");
        if (cmd.includes(this.mp)) return pid;
      } catch {
        // gone
      }
    }
    return null;
  }

  mounted(): boolean {
    const text = readFileSync("/proc/mounts", "utf8");
    return text.split("\n").some((l) => l.split(" ")[1] === this.mp);
  }

  /** Orderly unmount; resolves when the daemon has exited. */
  async umount(): Promise<void> {
    const pid = this.daemonPid();
    const r = spawnSync("umount", [this.mp], { encoding: "utf8", timeout: 60_000 });
    if (r.status !== 0) throw new Error(`umount ${this.mp}: ${r.stderr}`);
    if (pid !== null) await waitGone(pid, 60_000);
  }

  /** Always safe: whatever state we are in, leave no mount and no daemon of ours. */
  async cleanup(): Promise<void> {
    const pid = this.daemonPid();
    if (this.mounted()) spawnSync("umount", [this.mp], { timeout: 30_000 });
    if (pid !== null && !(await waitGone(pid, 10_000))) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
      await waitGone(pid, 10_000);
    }
    if (this.mounted()) spawnSync("umount", ["-l", this.mp], { timeout: 30_000 });
  }

  /** kill -9 of the daemon (crash tests; a no-op if it is already dead); then the watchdog
   * lazily unmounts (we do it ourselves if it has not within 10 s). */
  async crash(): Promise<void> {
    const pid = this.daemonPid();
    if (pid !== null) {
      process.kill(pid, "SIGKILL");
      await waitGone(pid, 10_000);
    }
    for (let i = 0; i < 100 && this.mounted(); i++) await sleep(100);
    if (this.mounted()) spawnSync("umount", ["-l", this.mp], { timeout: 30_000 });
  }
}

export async function removeVolume(vol: Volume): Promise<void> {
  await fsp.rm(vol.dir, { recursive: true, force: true });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    if (Date.now() > end) return false;
    await sleep(50);
  }
}
