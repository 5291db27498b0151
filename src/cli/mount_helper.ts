/*
 * Starting a mount: `mount -t scoutfs -o metadev_path=META[,...] DATA DIR` runs
 * /sbin/mount.scoutfs (bin/mount.scoutfs -> helperMain), and `scoutfs mount` does the same.
 *
 * mount(8) calls a helper as `mount.scoutfs DATA DIR [-sfnv] [-o OPTIONS] [-t TYPE]`. We
 * start the daemon (daemon_main.ts) as a detached process with its output appended to the
 * log file, and wait on a pipe for its one-line outcome: success exits 0 with the daemon
 * serving, failure prints the daemon's reason (upstream's kernel message text) and exits 32
 * like mount(8) for a mount failure. While the daemon waits for a quorum leader the helper
 * prints its progress lines on stderr every PROGRESS_EVERY_MS, so a mount that cannot reach
 * quorum says why instead of hanging silently. `scoutfs mount -f` runs the daemon in the
 * foreground, logging to stderr; mount(8)'s own -f ("fake") only checks the options.
 */

import { spawn } from "node:child_process";
import fs from "node:fs";
import { fileURLToPath } from "node:url";
import { DAEMON_MARK } from "./fence_local.js";
import { MountOptionError, parseMountOptions } from "../core/options.js";

export const LOG_DIR = "/var/log/scoutfs";
export const LOG_FILE = `${LOG_DIR}/scoutfs.log`;
/** How often a still-starting mount reports its last progress line. */
const PROGRESS_EVERY_MS = 10_000;
const MOUNT_FAILURE = 32;
const USAGE_ERROR = 1;
/** Longest outcome line read from the daemon. */
const REPORT_MAX_BYTES = 64 * 1024;

export interface MountRequest {
  dataPath: string;
  mountpoint: string;
  options: string;
  foreground: boolean;
  verbose: boolean;
  /** mount -f: do everything but the mount itself (only the options are checked). */
  fake?: boolean;
}

const daemonMain = fileURLToPath(new URL("./daemon_main.js", import.meta.url));

/** Runs the daemon and resolves to the exit status mount(8) expects. */
export async function startMount(req: MountRequest, err: (s: string) => void,
  prog: string): Promise<number> {
  if (!fs.existsSync(req.mountpoint)) {
    err(`${prog}: mount point ${req.mountpoint} does not exist\n`);
    return MOUNT_FAILURE;
  }
  const args = [daemonMain, `--${DAEMON_MARK}`, req.dataPath, req.mountpoint, req.options];
  if (req.foreground) {
    const child = spawn(process.execPath, args, { stdio: "inherit" });
    return new Promise((resolve) => {
      child.on("close", (code) => resolve(code ?? 1));
    });
  }
  fs.mkdirSync(LOG_DIR, { recursive: true, mode: 0o755 });
  const log = fs.openSync(LOG_FILE, "a", 0o640);
  const child = spawn(process.execPath, [...args, "3"], {
    detached: true, stdio: ["ignore", log, log, "pipe"],
  });
  fs.closeSync(log);
  const pipe = child.stdio[3];
  if (pipe === null || pipe === undefined || !("on" in pipe)) {
    err(`${prog}: could not start the mount daemon\n`);
    return MOUNT_FAILURE;
  }
  return new Promise((resolve) => {
    let text = "";
    let last = "starting";
    let done = false;
    const timer = setInterval(() => err(`${prog}: still mounting: ${last}\n`), PROGRESS_EVERY_MS);
    const finish = (rc: number): void => {
      if (done) return;
      done = true;
      clearInterval(timer);
      pipe.removeAllListeners();
      pipe.destroy();
      child.removeAllListeners();
      child.unref();
      resolve(rc);
    };
    pipe.on("data", (d: Buffer) => {
      if (text.length < REPORT_MAX_BYTES) text += d.toString("utf8");
      let nl: number;
      while ((nl = text.indexOf("\n")) >= 0) {
        const line = text.slice(0, nl);
        text = text.slice(nl + 1);
        if (line === "ok") return finish(0);
        if (line.startsWith("error: ")) {
          err(`${prog}: ${line.slice(7)}\n`);
          return finish(MOUNT_FAILURE);
        }
        if (line.startsWith("progress: ")) {
          last = line.slice(10);
          if (req.verbose) err(`${prog}: ${last}\n`);
        }
      }
    });
    child.on("exit", (code, signal) => {
      err(`${prog}: the mount daemon exited (${signal ?? `status ${code}`}) before mounting; ` +
        `see ${LOG_FILE}\n`);
      finish(MOUNT_FAILURE);
    });
  });
}

/** Parses mount(8)'s helper arguments: DATA DIR [-sfnv] [-o OPTIONS] [-t TYPE]. */
export function parseHelperArgs(argv: readonly string[]): MountRequest | string {
  const pos: string[] = [];
  const opts: string[] = [];
  let verbose = false;
  let fake = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "-o" || a === "-t") {
      const v = argv[++i];
      if (v === undefined) return `option ${a} needs a value`;
      if (a === "-o") opts.push(v);
    } else if (a.startsWith("-o") && a.length > 2) opts.push(a.slice(2));
    else if (/^-[sfnv]+$/.test(a)) {
      // mount(8): -s sloppy, -n no mtab (both without meaning here), -v verbose, -f fake
      if (a.includes("v")) verbose = true;
      if (a.includes("f")) fake = true;
    } else if (a.startsWith("-")) return `unknown option ${a}`;
    else pos.push(a);
  }
  if (pos.length !== 2) return "usage: mount.scoutfs DATA-DEV DIR [-o OPTIONS]";
  return { dataPath: pos[0]!, mountpoint: pos[1]!, options: opts.join(","), foreground: false,
    verbose, fake };
}

/** /sbin/mount.scoutfs. */
export async function helperMain(argv: readonly string[]): Promise<number> {
  const prog = "mount.scoutfs";
  const req = parseHelperArgs(argv);
  const err = (s: string): void => { process.stderr.write(s); };
  if (typeof req === "string") {
    err(`${prog}: ${req}\n`);
    return USAGE_ERROR;
  }
  if (req.fake) {
    try {
      parseMountOptions(req.options);
    } catch (e) {
      err(`${prog}: ${e instanceof MountOptionError ? e.detail : String(e)}\n`);
      return MOUNT_FAILURE;
    }
    return 0;
  }
  return startMount(req, err, prog);
}
