/*
 * Crash-test workload: the child process the crash harness (crash_harness.ts) starts and
 * later kills. It is a program, not a test: `node crash_workload.js --crash-workload JSON`.
 *
 * Goal: leave behind a log, outside the filesystem under test, that lists only what the
 * filesystem acknowledged as durable, so that after a crash and remount the harness can
 * demand every logged file back intact.
 *
 * Method: in DIR it creates files one after another and appends 1..maxChunks seeded chunks of
 * data to each; after each chunk it calls fsync or fdatasync on the file (and, for a new
 * file, fsync on the directory), and only when that returned does it append a line
 * {t:"sync", id, file, length, sha256 of the first length bytes} to the log (the log is on
 * another filesystem, written with one write() per line). Some finished files are then
 * renamed: a {t:"rename", id, from, to} intent is logged first, then rename + fsync(dir), then a
 * new "sync" line under the new name; so after a crash either name may hold the file. Any
 * error (the daemon died: ENOTCONN, EIO) ends the process with status 1.
 */
import { createHash, type Hash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { Rng } from "../helpers/posix_rng.js";
import { isCliMain } from "./target.js";

export interface WorkloadConfig {
  /** Directory on the filesystem under test (created if missing). */
  dir: string;
  /** Log file outside that filesystem. */
  log: string;
  /** Prefix of file paths in the log (relative to the harness's directory). */
  prefix: string;
  seed: number;
  files: number;
  maxChunks: number;
  maxChunk: number;
}

export type LogLine =
  | { t: "sync"; id: number; file: string; length: number; sha256: string }
  | { t: "rename"; id: number; from: string; to: string };

function syncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function chunk(rng: Rng, maxChunk: number): Buffer {
  const len = rng.range(1, maxChunk);
  const b = Buffer.alloc(len + 3);
  for (let i = 0; i < len; i += 4) b.writeUInt32LE(rng.u32(), i);
  return b.subarray(0, len);
}

class Workload {
  private readonly rng: Rng;
  private readonly logFd: number;

  constructor(private readonly c: WorkloadConfig) {
    this.rng = new Rng(c.seed);
    this.logFd = fs.openSync(c.log, "a");
  }

  private log(line: LogLine): void {
    fs.writeSync(this.logFd, `${JSON.stringify(line)}\n`);
  }

  run(): void {
    fs.mkdirSync(this.c.dir, { recursive: true });
    syncDir(path.dirname(this.c.dir));
    syncDir(this.c.dir);
    for (let id = 0; id < this.c.files; id++) this.file(id);
  }

  private file(id: number): void {
    const name = `f${id}`;
    const fd = fs.openSync(path.join(this.c.dir, name), "wx");
    const hash = createHash("sha256");
    let length = 0;
    try {
      for (let k = this.rng.range(1, this.c.maxChunks); k > 0; k--) {
        const first = length === 0;
        length = this.append(fd, hash, length);
        if (first) syncDir(this.c.dir);
        this.log({ t: "sync", id, file: `${this.c.prefix}/${name}`, length, sha256: hash.copy().digest("hex") });
      }
    } finally {
      fs.closeSync(fd);
    }
    if (this.rng.chance(0.25)) this.rename(id, name, length, hash);
  }

  /** Write one chunk at `length`, fsync or fdatasync it; returns the new length. */
  private append(fd: number, hash: Hash, length: number): number {
    const data = chunk(this.rng, this.c.maxChunk);
    for (let done = 0; done < data.length;) done += fs.writeSync(fd, data, done, data.length - done, length + done);
    hash.update(data);
    if (this.rng.chance(0.5)) fs.fsyncSync(fd);
    else fs.fdatasyncSync(fd);
    return length + data.length;
  }

  private rename(id: number, name: string, length: number, hash: Hash): void {
    const from = `${this.c.prefix}/${name}`, to = `${this.c.prefix}/${name}.renamed`;
    this.log({ t: "rename", id, from, to });
    fs.renameSync(path.join(this.c.dir, name), path.join(this.c.dir, `${name}.renamed`));
    syncDir(this.c.dir);
    this.log({ t: "sync", id, file: to, length, sha256: hash.copy().digest("hex") });
  }
}

function main(args: string[]): number {
  const i = args.indexOf("--crash-workload");
  const json = i >= 0 ? args[i + 1] : undefined;
  if (json === undefined) {
    console.error("usage: node crash_workload.js --crash-workload JSON (started by crash_harness.js)");
    return 2;
  }
  try {
    new Workload(JSON.parse(json) as WorkloadConfig).run();
    return 0;
  } catch (e) {
    console.error(`crash workload stopped: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}

if (isCliMain(import.meta.url)) process.exitCode = main(process.argv.slice(2));
