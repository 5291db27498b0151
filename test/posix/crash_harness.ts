/*
 * Crash-test harness (RELIABILITY.md promise 1, tier 3; issue 4 point 8): kill -9 the mount
 * daemon at random points of a workload, remount, and find every fsynced file intact.
 *
 * Goal: generic plumbing the scoutfs daemon tests plug into. The caller supplies how to start
 * the mount (resolving with the daemon pid), how to bring it back after the kill (unmount the
 * dead mount, run fsck, mount again: whatever the target needs, resolving with the new pid),
 * optionally how to kill, and how to stop. Nothing here knows about scoutfs.
 *
 * Method, per round: start crash_workload.js in a child process writing files into
 * DIR/round-N and logging each acknowledged fsync (path, length, sha256 of that prefix) to
 * LOGDIR/round-N.log, which must be outside the mount. After a seeded random delay the daemon
 * gets SIGKILL (the default kill waits until the pid is gone), then the workload child is
 * killed by its pid and reaped. After remount, the logs of this and all earlier rounds are
 * checked: for each logged file id, its last "sync" line must be found, under its name or a
 * name it was being renamed to, with at least that many bytes whose prefix has that sha256.
 * Missing, short or different files are reported as problems; rounds report how many
 * entries were logged and verified and whether the workload finished before the kill. The
 * target's stop() always runs (finally), and only processes started here are killed.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Rng } from "../helpers/posix_rng.js";
import type { LogLine, WorkloadConfig } from "./crash_workload.js";

export interface CrashTarget {
  /** Directory on the mount the workload writes under (created at the first round). */
  dir: string;
  /** Mount; resolve with the pid that kill -9 should hit (the daemon). */
  start(): Promise<number>;
  /** After the kill: make the mount usable again (unmount, fsck, mount); resolve with the new pid. */
  remount(): Promise<number>;
  /** Kill the daemon (default: SIGKILL, then wait until the pid is gone). */
  kill?(pid: number): Promise<void>;
  /** Tear down; always called once at the end. */
  stop(): Promise<void>;
}

export interface CrashOptions {
  rounds: number;
  seed: number;
  /** Where the fsync logs go: must not be inside target.dir's filesystem. */
  logDir: string;
  /** Kill after a random delay in [min, max] ms from the workload's start (default [100, 600]). */
  killAfterMs?: [number, number];
  /** Files per round (default 100000: the kill comes first). */
  files?: number;
  maxChunks?: number;
  maxChunk?: number;
}

export interface RoundReport {
  round: number;
  pid: number;
  killAfterMs: number;
  /** "sync" lines in this round's log. */
  logged: number;
  /** Files whose last logged state was checked after this round's remount (all rounds so far). */
  verified: number;
  workloadFinished: boolean;
  problems: string[];
}

export interface CrashReport {
  seed: number;
  rounds: RoundReport[];
  problems: string[];
  lines: string[];
}

const WORKLOAD = path.join(path.dirname(fileURLToPath(import.meta.url)), "crash_workload.js");

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGKILL a pid and wait (up to 10 s) until it is gone. */
export async function killAndWait(pid: number): Promise<void> {
  if (alive(pid)) process.kill(pid, "SIGKILL");
  for (let i = 0; i < 1000 && alive(pid); i++) await sleep(10);
  if (alive(pid)) throw new Error(`pid ${pid} still alive 10 s after SIGKILL`);
}

function startWorkload(cfg: WorkloadConfig): { child: ChildProcess; exited: Promise<number | null>; stderr: () => string } {
  const env = { ...process.env };
  delete env["NODE_TEST_CONTEXT"];
  const child = spawn(process.execPath, [WORKLOAD, "--crash-workload", JSON.stringify(cfg)],
    { env, stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr?.on("data", (d: Buffer) => { err = (err + d.toString()).slice(-2000); });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, exited, stderr: () => err };
}

/** Read a log; a torn last line (the writer was killed mid-write) is ignored. */
export function readLog(file: string): LogLine[] {
  if (!fs.existsSync(file)) return [];
  const out: LogLine[] = [];
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    if (line === "") continue;
    try {
      out.push(JSON.parse(line) as LogLine);
    } catch {
      /* torn tail */
    }
  }
  return out;
}

/** The first problem with one candidate path holding `length` bytes of `sha256`, or null. */
function checkFile(file: string, length: number, sha256: string): string | null {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch (e) {
    return `${path.basename(file)}: ${e instanceof Error && "code" in e ? String(e.code) : String(e)}`;
  }
  if (data.length < length) return `${path.basename(file)}: ${data.length} bytes, fsynced ${length}`;
  const got = createHash("sha256").update(data.subarray(0, length)).digest("hex");
  return got === sha256 ? null : `${path.basename(file)}: first ${length} bytes differ from the fsynced data`;
}

/** Check every file id of one log under `root`; returns [verified count, problems]. */
export function verifyLog(root: string, lines: LogLine[]): [number, string[]] {
  const last = new Map<number, { sync: Extract<LogLine, { t: "sync" }>; renames: string[] }>();
  for (const l of lines) {
    if (l.t === "sync") last.set(l.id, { sync: l, renames: [] });
    else last.get(l.id)?.renames.push(l.to);
  }
  const problems: string[] = [];
  for (const { sync, renames } of last.values()) {
    const tried = [sync.file, ...renames].map((f) => checkFile(path.join(root, f), sync.length, sync.sha256));
    if (tried.every((p) => p !== null)) problems.push(`lost fsynced ${sync.file} (${sync.length} bytes): ${tried.join("; ")}`);
  }
  return [last.size, problems];
}

async function runRound(target: CrashTarget, o: CrashOptions, rng: Rng, round: number, pid: number):
  Promise<[RoundReport, number]> {
  const prefix = `round-${round}`;
  const cfg: WorkloadConfig = {
    dir: path.join(target.dir, prefix), log: path.join(o.logDir, `${prefix}.log`), prefix, seed: o.seed * 1000 + round,
    files: o.files ?? 100_000, maxChunks: o.maxChunks ?? 4, maxChunk: o.maxChunk ?? 64 * 1024,
  };
  const [lo, hi] = o.killAfterMs ?? [100, 600];
  const delay = rng.range(lo, hi);
  const w = startWorkload(cfg);
  let finished = false;
  try {
    finished = await Promise.race([w.exited.then(() => true), sleep(delay).then(() => false)]);
    await (target.kill ?? killAndWait)(pid);
  } finally {
    if (w.child.pid !== undefined && w.child.exitCode === null && w.child.signalCode === null) {
      process.kill(w.child.pid, "SIGKILL");
    }
  }
  const code = await w.exited;
  const problems = finished && code !== 0 ? [`workload failed before the kill (status ${code}): ${w.stderr()}`] : [];
  const newPid = await target.remount();
  const logged = readLog(cfg.log).filter((l) => l.t === "sync").length;
  return [{ round, pid, killAfterMs: delay, logged, verified: 0, workloadFinished: finished, problems }, newPid];
}

/** After each remount: every round's log so far. */
function verifyAll(target: CrashTarget, o: CrashOptions, upTo: number, report: RoundReport): void {
  for (let r = 0; r <= upTo; r++) {
    const [n, problems] = verifyLog(target.dir, readLog(path.join(o.logDir, `round-${r}.log`)));
    report.verified += n;
    report.problems.push(...problems.map((p) => `after round ${upTo}: ${p}`));
  }
}

function assertLogOutside(target: CrashTarget, o: CrashOptions): void {
  fs.mkdirSync(o.logDir, { recursive: true });
  fs.mkdirSync(target.dir, { recursive: true });
  if (fs.statSync(o.logDir).dev === fs.statSync(target.dir).dev) {
    throw new Error(`crash log dir ${o.logDir} is on the filesystem under test (${target.dir})`);
  }
}

function reportLines(rep: CrashReport): string[] {
  return [
    `crash harness seed ${rep.seed}: ${rep.rounds.length} rounds, ${rep.problems.length} problems`,
    ...rep.rounds.map((r) => `  round ${r.round}: kill -9 of pid ${r.pid} after ${r.killAfterMs} ms` +
      `${r.workloadFinished ? " (workload had finished)" : ""}, ${r.logged} fsyncs logged, ` +
      `${r.verified} files verified`),
    ...rep.problems.map((p) => `  PROBLEM ${p}`),
  ];
}

/** Run the rounds; the target is started first and always stopped at the end. */
export async function runCrashHarness(target: CrashTarget, o: CrashOptions): Promise<CrashReport> {
  const rng = new Rng(o.seed);
  const rounds: RoundReport[] = [];
  let pid = await target.start();
  try {
    assertLogOutside(target, o);
    for (let r = 0; r < o.rounds; r++) {
      const [report, next] = await runRound(target, o, rng, r, pid);
      pid = next;
      verifyAll(target, o, r, report);
      rounds.push(report);
    }
  } finally {
    await target.stop();
  }
  const rep: CrashReport = { seed: o.seed, rounds, problems: rounds.flatMap((r) => r.problems), lines: [] };
  rep.lines = reportLines(rep);
  return rep;
}
