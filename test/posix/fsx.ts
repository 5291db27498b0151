/*
 * fsx-style random I/O checker (DESIGN.md section 6, tier 4; issue 4 point 8), runnable
 * against ANY directory: `node dist/test/posix/fsx.js DIR --ops N --seed S [--max-size B]
 * [--no-mmap] [--no-fallocate] [--keep]`, or runFsx(options) from a test.
 *
 * Goal: find data corruption that only shows after particular sequences of reads, writes,
 * truncates, fallocates (mode 0, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE), mmap reads and writes,
 * fsyncs and close/reopen on one file: stale bytes past a truncate, lost writes, holes that do
 * not read as zeros, a wrong size, page cache and mmap disagreeing with read().
 *
 * Method: a seeded generator picks each operation; the same change is applied to a shadow
 * Buffer that always holds what the file must contain (bytes past EOF kept zero). Every read
 * is compared with the shadow, and the whole file (size and contents) every `verifyEvery`
 * operations and at the end. Reads, writes, truncates and fsync use Node's fs on one fd;
 * fallocate and mmap (Node has neither) go to one long-lived python3 child. A fallocate mode
 * the target refuses with EOPNOTSUPP is reported as unsupported and not chosen again (upstream
 * scoutfs supports mode 0 only); without python3, fallocate and mmap are skipped with a report
 * line. Written bytes encode the writing operation's number, and a per-byte origin map names
 * the op that last set a mismatching byte. A mismatch throws FsxMismatch naming the seed, the
 * op, the first bad offset and the tail of the op log, so the run replays exactly.
 */
import fs from "node:fs";
import path from "node:path";
import { PyServer, type PyResult } from "../helpers/posix_py.js";
import { Rng } from "../helpers/posix_rng.js";
import { isCliMain } from "./target.js";

export type FsxOp = "read" | "write" | "truncate" | "falloc" | "falloc_keep" | "punch_hole" |
  "zero_range" | "mmap_read" | "mmap_write" | "fsync" | "reopen";

const WEIGHTS: Record<FsxOp, number> = {
  read: 20, write: 24, truncate: 8, falloc: 4, falloc_keep: 3, punch_hole: 3, zero_range: 2,
  mmap_read: 6, mmap_write: 6, fsync: 2, reopen: 3,
};
const FALLOC_MODE: Partial<Record<FsxOp, number>> = { falloc: 0, falloc_keep: 1, punch_hole: 3, zero_range: 0x10 };
const PY_OPS: readonly FsxOp[] = ["falloc", "falloc_keep", "punch_hole", "zero_range", "mmap_read", "mmap_write"];

export interface FsxOptions {
  dir: string;
  ops: number;
  seed: number;
  /** Largest file size (default 256 KiB). */
  maxSize?: number;
  /** Largest single read/write (default 64 KiB). */
  maxOpLen?: number;
  /** Verify the whole file every this many ops (default 100). */
  verifyEvery?: number;
  mmap?: boolean;
  fallocate?: boolean;
  /** Lines of op log shown on a mismatch (default 30). */
  logTail?: number;
  /** Keep the file after a successful run. */
  keep?: boolean;
  /** Called after each op (tests use it to corrupt the file and prove the checker notices). */
  afterOp?: (opIndex: number, file: string) => void;
}

export interface FsxReport {
  seed: number;
  file: string;
  ops: number;
  counts: Record<FsxOp, number>;
  unsupported: Partial<Record<FsxOp, string>>;
  skipped: string[];
  verifications: number;
  finalSize: number;
  lines: string[];
}

export class FsxMismatch extends Error {
  constructor(message: string, readonly seed: number, readonly opIndex: number, readonly tail: string[]) {
    super(message);
    this.name = "FsxMismatch";
  }
}

const zeroCounts = (): Record<FsxOp, number> =>
  Object.fromEntries(Object.keys(WEIGHTS).map((k) => [k, 0])) as Record<FsxOp, number>;

/** Byte written at file offset x by op i: never zero, differs between ops. */
const patternByte = (i: number, x: number): number => ((i * 7 + x + (x >> 8)) % 251) + 1;

class Fsx {
  private readonly rng: Rng;
  private readonly maxSize: number;
  private readonly maxOpLen: number;
  private readonly shadow: Buffer;
  /** Per byte: op that last wrote it (> 0), zeroed it (< 0), or 0 for never. */
  private readonly origin: Int32Array;
  private size = 0;
  private fd: number;
  private readonly log: string[] = [];
  readonly counts = zeroCounts();
  readonly unsupported: Partial<Record<FsxOp, string>> = {};
  readonly skipped: string[] = [];
  verifications = 0;
  private op = 0;

  constructor(private readonly o: FsxOptions, readonly file: string, private readonly py: PyServer | null) {
    this.rng = new Rng(o.seed);
    this.maxSize = o.maxSize ?? 256 * 1024;
    this.maxOpLen = Math.min(o.maxOpLen ?? 64 * 1024, this.maxSize);
    this.shadow = Buffer.alloc(this.maxSize);
    this.origin = new Int32Array(this.maxSize);
    this.fd = fs.openSync(file, "w+");
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  private enabled(): { weight: number; value: FsxOp }[] {
    return (Object.keys(WEIGHTS) as FsxOp[])
      .filter((k) => this.unsupported[k] === undefined)
      .filter((k) => !PY_OPS.includes(k) || this.py !== null)
      .filter((k) => (k !== "mmap_read" && k !== "mmap_write") || this.o.mmap !== false)
      .filter((k) => FALLOC_MODE[k] === undefined || this.o.fallocate !== false)
      .map((k) => ({ weight: WEIGHTS[k], value: k }));
  }

  async run(): Promise<void> {
    const every = this.o.verifyEvery ?? 100;
    for (this.op = 1; this.op <= this.o.ops; this.op++) {
      await this.step(this.rng.weighted(this.enabled()));
      this.o.afterOp?.(this.op, this.file);
      if (this.op % every === 0) this.verifyAll();
    }
    this.op = this.o.ops;
    this.verifyAll();
  }

  private async step(kind: FsxOp): Promise<void> {
    if (kind === "read") this.read();
    else if (kind === "write") this.write();
    else if (kind === "truncate") this.truncate();
    else if (kind === "fsync") this.fsync();
    else if (kind === "reopen") this.reopen();
    else if (kind === "mmap_read") await this.mmapRead();
    else if (kind === "mmap_write") await this.mmapWrite();
    else await this.fallocate(kind);
  }

  private note(kind: FsxOp, text: string): void {
    this.counts[kind]++;
    this.log.push(`#${this.op} ${kind} ${text}`);
    if (this.log.length > (this.o.logTail ?? 30)) this.log.shift();
  }

  /** A range [off, off+len) inside maxSize, or inside the file when `inFile`. */
  private range(inFile: boolean, maxLen = this.maxOpLen): [number, number] {
    const limit = inFile ? this.size : this.maxSize;
    const off = this.rng.below(limit);
    const len = this.rng.range(1, Math.max(1, Math.min(maxLen, limit - off)));
    return [off, len];
  }

  private read(): void {
    const beyond = this.size === 0 || this.rng.chance(0.05);
    const [off, len] = beyond ? [this.size + this.rng.below(4096), this.rng.range(1, 4096)] : this.range(true);
    this.note("read", `off=${off} len=${len} size=${this.size}`);
    const buf = Buffer.alloc(len);
    const n = fs.readSync(this.fd, buf, 0, len, off);
    const want = Math.max(0, Math.min(len, this.size - off));
    if (n !== want) this.fail(`read returned ${n} bytes, expected ${want}`);
    this.compare(buf.subarray(0, n), off, "read");
  }

  private fill(off: number, len: number): Buffer {
    const b = Buffer.alloc(len);
    for (let k = 0; k < len; k++) b[k] = patternByte(this.op, off + k);
    return b;
  }

  private applyWrite(off: number, data: Buffer): void {
    data.copy(this.shadow, off);
    this.origin.fill(this.op, off, off + data.length);
    this.size = Math.max(this.size, off + data.length);
  }

  private zero(from: number, to: number): void {
    if (to <= from) return;
    this.shadow.fill(0, from, to);
    this.origin.fill(-this.op, from, to);
  }

  private write(): void {
    const [off, len] = this.range(false);
    this.note("write", `off=${off} len=${len} size=${this.size}`);
    const data = this.fill(off, len);
    for (let done = 0; done < len;) done += fs.writeSync(this.fd, data, done, len - done, off + done);
    this.applyWrite(off, data);
  }

  private truncate(): void {
    const n = this.rng.chance(0.3) ? this.rng.below(this.size + 1) : this.rng.below(this.maxSize + 1);
    this.note("truncate", `${this.size} -> ${n}`);
    fs.ftruncateSync(this.fd, n);
    this.zero(n, this.size);
    this.size = n;
  }

  private fsync(): void {
    this.note("fsync", `size=${this.size}`);
    fs.fsyncSync(this.fd);
  }

  private reopen(): void {
    this.note("reopen", `size=${this.size}`);
    fs.closeSync(this.fd);
    this.fd = fs.openSync(this.file, "r+");
    const size = fs.fstatSync(this.fd).size;
    if (size !== this.size) this.fail(`size after reopen ${size}, expected ${this.size}`);
  }

  private async pyCall(kind: FsxOp, op: Record<string, string | number>): Promise<PyResult | null> {
    const r = await this.py!.call({ op: String(op["op"]), ...op, path: this.file });
    if (r.ok) return r;
    if (r.err === "EOPNOTSUPP" && FALLOC_MODE[kind] !== undefined) {
      this.unsupported[kind] = r.err;
      this.log.push(`#${this.op} ${kind} refused: EOPNOTSUPP (not chosen again)`);
      return null;
    }
    return this.fail(`${kind} failed: ${r.err ?? "?"} ${r.msg ?? ""}`);
  }

  private async fallocate(kind: FsxOp): Promise<void> {
    const mode = FALLOC_MODE[kind]!;
    const [off, len] = this.range(false, this.maxOpLen * 2);
    const r = await this.pyCall(kind, { op: "fallocate", mode, off, len });
    if (r === null) return;
    this.note(kind, `mode=0x${mode.toString(16)} off=${off} len=${len} size=${this.size}`);
    const end = off + len;
    if (kind === "punch_hole") this.zero(off, Math.min(end, this.size));
    if (kind === "zero_range") this.zero(off, end);
    if (kind === "falloc" || kind === "zero_range") this.size = Math.max(this.size, end);
  }

  private async mmapRead(): Promise<void> {
    if (this.size === 0) return this.read();
    const [off, len] = this.range(true);
    this.note("mmap_read", `off=${off} len=${len} size=${this.size}`);
    const r = await this.pyCall("mmap_read", { op: "mmap_read", off, len });
    this.compare(Buffer.from(String(r?.v), "base64"), off, "mmap_read");
  }

  private async mmapWrite(): Promise<void> {
    if (this.size === 0) return this.write();
    const [off, len] = this.range(true);
    this.note("mmap_write", `off=${off} len=${len} size=${this.size}`);
    const data = this.fill(off, len);
    await this.pyCall("mmap_write", { op: "mmap_write", off, data: data.toString("base64") });
    this.applyWrite(off, data);
  }

  /** Whole-file check: size and every byte. */
  verifyAll(): void {
    this.verifications++;
    const size = fs.fstatSync(this.fd).size;
    if (size !== this.size) this.fail(`file size ${size}, expected ${this.size}`);
    const buf = Buffer.alloc(this.size);
    let n = 0;
    while (n < this.size) {
      const got = fs.readSync(this.fd, buf, n, this.size - n, n);
      if (got === 0) break;
      n += got;
    }
    if (n !== this.size) this.fail(`whole-file read got ${n} of ${this.size} bytes`);
    this.compare(buf, 0, "verify");
  }

  private compare(got: Buffer, off: number, what: string): void {
    const want = this.shadow.subarray(off, off + got.length);
    if (want.equals(got)) return;
    let k = 0;
    while (got[k] === want[k]) k++;
    const at = off + k;
    const o = this.origin[at] ?? 0;
    const who = o > 0 ? `written by op #${o}` : o < 0 ? `zeroed by op #${-o}` : "never written (zero)";
    const hex = (b: Buffer): string => b.subarray(k, k + 16).toString("hex");
    this.fail(`${what}: first bad byte at offset ${at} (${who}): expected ${hex(want)}..., got ${hex(got)}...`);
  }

  fail(msg: string): never {
    const tail = [...this.log];
    const replay = `node dist/test/posix/fsx.js ${path.dirname(this.file)} --ops ${this.o.ops} ` +
      `--seed ${this.o.seed}${this.o.maxSize ? ` --max-size ${this.o.maxSize}` : ""}`;
    throw new FsxMismatch(`fsx seed ${this.o.seed}, op #${this.op}: ${msg}\nreplay: ${replay}\n` +
      `last ops:\n  ${tail.join("\n  ")}`, this.o.seed, this.op, tail);
  }
}

function reportLines(f: Fsx, o: FsxOptions, size: number): string[] {
  const counts = (Object.keys(f.counts) as FsxOp[]).map((k) =>
    `${k} ${f.counts[k]}${f.unsupported[k] ? ` (unsupported: ${f.unsupported[k]})` : ""}`);
  return [
    `fsx seed ${o.seed}: ${o.ops} ops on ${f.file}, ${f.verifications} whole-file verifications, final size ${size}`,
    `  ${counts.join(", ")}`,
    ...f.skipped.map((s) => `  skipped: ${s}`),
  ];
}

/** Run the checker; resolves with the report, rejects with FsxMismatch on a difference. */
export async function runFsx(o: FsxOptions): Promise<FsxReport> {
  const file = path.join(o.dir, `fsx.${o.seed}`);
  const py = o.mmap === false && o.fallocate === false ? null : PyServer.start();
  const f = new Fsx(o, file, py);
  if (py === null && (o.mmap !== false || o.fallocate !== false)) {
    f.skipped.push("fallocate and mmap: no python3 (set POSIX_PYTHON)");
  }
  if (o.mmap === false) f.skipped.push("mmap: disabled by option");
  if (o.fallocate === false) f.skipped.push("fallocate: disabled by option");
  try {
    await f.run();
  } finally {
    f.close();
    await py?.close();
  }
  const finalSize = fs.statSync(file).size;
  if (o.keep !== true) fs.rmSync(file);
  return {
    seed: o.seed, file, ops: o.ops, counts: f.counts, unsupported: f.unsupported, skipped: f.skipped,
    verifications: f.verifications, finalSize, lines: reportLines(f, o, finalSize),
  };
}

function parseCli(args: string[]): FsxOptions | null {
  const dir = args[0];
  const num = (flag: string, dflt: number): number => {
    const i = args.indexOf(flag);
    return i >= 0 ? Number(args[i + 1]) : dflt;
  };
  const o: FsxOptions = {
    dir: dir ?? "", ops: num("--ops", 10_000), seed: num("--seed", Date.now() % 1_000_000),
    maxSize: num("--max-size", 256 * 1024), mmap: !args.includes("--no-mmap"),
    fallocate: !args.includes("--no-fallocate"), keep: args.includes("--keep"),
  };
  const bad = dir === undefined || dir.startsWith("--") || ![o.ops, o.seed, o.maxSize].every(Number.isInteger);
  return bad ? null : o;
}

async function cli(args: string[]): Promise<number> {
  const o = parseCli(args);
  if (o === null) {
    console.error("usage: node fsx.js DIR [--ops N] [--seed S] [--max-size BYTES] [--no-mmap] [--no-fallocate] [--keep]");
    return 2;
  }
  try {
    for (const line of (await runFsx(o)).lines) console.log(line);
    return 0;
  } catch (e) {
    console.error(e instanceof Error ? e.message : String(e));
    return 1;
  }
}

if (isCliMain(import.meta.url)) process.exitCode = await cli(process.argv.slice(2));
