/*
 * Entry of the mount daemon process:
 *   node daemon_main.js --scoutfs-daemon DATA-DEV DIR OPTIONS [REPORT-FD]
 *
 * Started detached by the mount helper (mount_helper.ts), which passes a pipe as REPORT-FD
 * and waits for one line on it: "ok" once the filesystem is mounted, or "error: <text>" if
 * start-up failed (then the daemon exits 32, mount's "mount failure"). Progress lines
 * ("progress: <text>") may come first. Without REPORT-FD (foreground use) the outcome goes to
 * stderr. The process exits when the filesystem is unmounted.
 */

import fs from "node:fs";
import { isFsError } from "../util/errno.js";
import { MountOptionError, parseMountOptions } from "../core/options.js";
import { MountDaemon } from "./daemon.js";
import { DAEMON_MARK } from "./fence_local.js";

/** mount(8)'s exit status for "mount failure". */
export const MOUNT_FAILURE = 32;

/** The reason a mount failed as the user should read it: upstream's message, no errno code. */
function failureText(e: unknown): string {
  if (e instanceof MountOptionError) return e.detail;
  if (isFsError(e)) return e.message.startsWith(`${e.code}: `) ?
    e.message.slice(e.code.length + 2) : e.message;
  return String(e);
}

async function main(argv: string[]): Promise<number> {
  const [mark, dataPath, mountpoint, optionsText, reportFd] = argv;
  if (mark !== `--${DAEMON_MARK}` || dataPath === undefined || mountpoint === undefined ||
    optionsText === undefined) {
    process.stderr.write("usage: daemon_main.js --scoutfs-daemon DATA-DEV DIR OPTIONS [FD]\n");
    return 64;
  }
  const fd = reportFd === undefined ? null : Number(reportFd);
  const report = (line: string): void => {
    if (fd === null) process.stderr.write(`${line}\n`);
    else {
      try {
        fs.writeSync(fd, `${line}\n`);
      } catch {
        // the helper went away; the log still has everything
      }
    }
  };
  let daemon: MountDaemon;
  try {
    const opts = parseMountOptions(optionsText);
    daemon = await MountDaemon.start({ dataPath, mountpoint, optionsText, opts,
      progress: (t) => report(`progress: ${t}`) });
  } catch (e) {
    report(`error: ${failureText(e)}`);
    if (!isFsError(e)) process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    if (fd !== null) fs.closeSync(fd);
    return MOUNT_FAILURE;
  }
  report("ok");
  if (fd !== null) fs.closeSync(fd);
  const stop = (): void => { void daemon.requestUnmount(); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.on("SIGHUP", () => undefined);
  return daemon.run();
}

main(process.argv.slice(2)).then((rc) => {
  process.exitCode = rc;
  // timers of the core are cleared by the daemon; anything left must not keep us alive
  setTimeout(() => process.exit(rc), 2000).unref();
}, (e: unknown) => {
  process.stderr.write(`scoutfs daemon: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
