/*
 * Goal: prove the crash harness's plumbing (crash_harness.ts) before the scoutfs daemon
 * exists: the workload child logs acknowledged fsyncs outside the mount, the "daemon" pid is
 * really killed at a random point, the workload is stopped, the remount hook runs, and every
 * logged file of every round so far is checked, and a lost fsynced write is reported.
 *
 * Method: a kernel filesystem cannot be killed, so a stand-in process (`sleep`, started here)
 * plays the daemon and gets the SIGKILL; on ext4 the remount hook really unmounts and mounts
 * the loop device again (3 rounds, nothing may be lost). On tmpfs the remount hook damages
 * the last logged file of the round (cuts its last byte), and the harness must report that
 * file as lost. Mounts are made and removed by the test (finally), the stand-ins are killed
 * by pid, logs live in a temp dir on another filesystem.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { mountUnsupported, withExt4, withTmpfs } from "../helpers/posix_mounts.js";
import { type CrashTarget, killAndWait, readLog, runCrashHarness } from "./crash_harness.js";

/** A stand-in "daemon": a sleep we start, so there is a real pid to kill -9. */
class StandIn {
  pids: number[] = [];

  start(): number {
    const c = spawn("sleep", ["3600"], { stdio: "ignore" });
    if (c.pid === undefined) throw new Error("could not start the stand-in daemon");
    this.pids.push(c.pid);
    return c.pid;
  }

  async stopAll(): Promise<void> {
    for (const pid of this.pids) await killAndWait(pid);
  }
}

async function withLogDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "crash-logs-"));
  try {
    return await fn(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test("crash harness on ext4: kill, remount, every fsynced file intact", {
  skip: mountUnsupported("ext4") ?? false, timeout: 60_000,
}, async (t) => {
  await withExt4(256, (m) => withLogDir(async (logDir) => {
    const daemon = new StandIn();
    const target: CrashTarget = {
      dir: path.join(m.mnt, "crash"),
      start: async () => daemon.start(),
      remount: async () => { m.remount(); return daemon.start(); },
      stop: () => daemon.stopAll(),
    };
    const rep = await runCrashHarness(target, { rounds: 3, seed: 11, logDir, killAfterMs: [800, 1500],
      maxChunk: 16384 });
    for (const l of rep.lines) t.diagnostic(l);
    assert.deepEqual(rep.problems, []);
    assert.equal(rep.rounds.length, 3);
    for (const r of rep.rounds) assert.ok(r.logged > 0 && !r.workloadFinished, `round ${r.round} was cut short`);
    assert.ok(rep.rounds[2]!.verified > rep.rounds[0]!.verified, "later rounds re-check earlier rounds' files");
    assert.ok(daemon.pids.length === 4, "start + one restart per round");
  }));
});

/** Cut the last byte of the last file logged in `log` (under either of its names). */
function damageLastLogged(root: string, log: string): void {
  const syncs = readLog(log).filter((l) => l.t === "sync");
  const last = syncs[syncs.length - 1];
  if (last === undefined || last.t !== "sync") throw new Error("nothing was logged");
  const file = [last.file, `${last.file}.renamed`].map((f) => path.join(root, f)).find((f) => fs.existsSync(f));
  if (file === undefined) throw new Error(`${last.file} is already gone`);
  fs.truncateSync(file, last.length - 1);
}

test("crash harness reports a lost fsynced write", { skip: mountUnsupported("tmpfs") ?? false, timeout: 30_000 },
  async () => {
    await withTmpfs(128, (mnt) => withLogDir(async (logDir) => {
      const daemon = new StandIn();
      const dir = path.join(mnt, "crash");
      const target: CrashTarget = {
        dir,
        start: async () => daemon.start(),
        remount: async () => { damageLastLogged(dir, path.join(logDir, "round-0.log")); return daemon.start(); },
        stop: () => daemon.stopAll(),
      };
      // the kill must come after the first fsync even when a loaded machine starts node slowly
      const rep = await runCrashHarness(target, { rounds: 1, seed: 5, logDir, killAfterMs: [1000, 1500],
        maxChunk: 8192 });
      assert.equal(rep.problems.length, 1, rep.lines.join("\n"));
      assert.match(rep.problems[0]!, /lost fsynced round-0\/f\d+(\.renamed)? \(\d+ bytes\)/);
    }));
  });
