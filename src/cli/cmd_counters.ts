/*
 * `scoutfs counters SYSFS-DIR [-t|--table]` (upstream utils/src/counters.c): prints every file
 * of SYSFS-DIR/counters/ (a mount's status directory, /run/scoutfs/f.X.r.Y here) as
 * `name value`, sorted by name (bytewise, as strcmp), names left-aligned to the widest name
 * and values right-aligned to the widest value. With -t the counters are packed into as
 * few rows as fit the terminal width, filled column by column, columns two spaces apart.
 *
 * Reproduced from upstream, byte for byte: the file reading rules (each counter file is read
 * with one 25-byte pread and must hold 2..24 bytes ending in a newline, else "counter file
 * <dir>/<name> read returned <n>" and EIO), the error lines, the width search (a binary
 * search for the smallest row count whose columns fit) and the printf layout.
 *
 * Where we differ, and why:
 *  - the width: upstream asks TIOCGWINSZ of stdout, then stdin, and silently prints one
 *    column when neither is a terminal. Node only knows the width of a terminal stdout, so
 *    stdin is not asked; when stdout is not a terminal a positive COLUMNS in the environment
 *    is used (scripts and tests), and without either -t prints one column, as upstream.
 *  - upstream starts its search at nr/cols rows, a guess that can be too small (then the
 *    table is wider than the terminal or, past the last column that fits, drops counters)
 *    and is 0 for fewer counters than columns (then it prints nothing); we search up to nr
 *    rows, which gives upstream's table whenever upstream's guess was right. A terminal too
 *    narrow for one column (upstream divides by zero) prints one column.
 *  - the argp texts ("Output in table format", "no sysfs path argument given") are a
 *    reconstruction: only the pre-argp version of counters.c was found.
 */

import fsp from "node:fs/promises";
import { Errno, fromNodeError, strerror } from "../util/errno.js";
import type { ArgpSpec } from "./argp.js";
import { argpCommand } from "./cmd_common.js";
import type { CliCommand, CliIo } from "./command.js";

/** counters.c: char buf[25] read with one pread. */
export const COUNTER_READ_BYTES = 25;
/** counters.c: char path[PATH_MAX + 1] filled by snprintf(path, PATH_MAX, ...). */
const PATH_MAX = 4096;
/** Counter files read at most (a bound on what a directory can make us hold). */
export const COUNTERS_MAX = 1 << 16;

interface CountersArgs {
  sysfsPath: string | null;
  table: boolean;
}

export const COUNTERS_ARGP: ArgpSpec<CountersArgs, "t"> = {
  options: [{ key: "t", short: "t", long: "table", doc: "Output in table format" }],
  argsDoc: "SYSFS-DIR",
  doc: "Show counters for a mounted volume",
  init: () => ({ sysfsPath: null, table: false }),
  onOption: (key, _arg, st) => {
    if (key === "t") st.input.table = true;
    return 0;
  },
  onArg: (arg, st) => {
    if (st.input.sysfsPath !== null) st.error("more than one argument given");
    st.input.sysfsPath = arg;
    return 0;
  },
  onEnd: (st) => {
    if (st.input.sysfsPath === null) st.error("no sysfs path argument given");
    return 0;
  },
};

export interface Counter {
  readonly name: string;
  readonly value: string;
}

/** Byte order of the names, as strcmp(). */
function compareNames(a: Counter, b: Counter): number {
  return Buffer.compare(Buffer.from(a.name), Buffer.from(b.name));
}

interface Layout {
  rows: number;
  cols: number;
  nameWid: number[];
  valWid: number[];
}

/**
 * Fills columns of `rows` counters while room is left (upstream's inner loop); the widths
 * and column count it leaves are what gets printed if this row count is the last tried.
 */
function tryRows(ctrs: readonly Counter[], rows: number, width: number): Layout & { room: number } {
  const nameWid: number[] = [];
  const valWid: number[] = [];
  let room = width;
  let cols = 0;
  let i = 0;
  for (let c = 0; i < ctrs.length && room >= 0; c++) {
    nameWid[c] = 0;
    valWid[c] = 0;
    for (let r = 0; r < rows && i < ctrs.length; r++, i++) {
      nameWid[c] = Math.max(nameWid[c]!, ctrs[i]!.name.length);
      valWid[c] = Math.max(valWid[c]!, ctrs[i]!.value.length);
    }
    cols = c + 1;
    if (c > 0) room -= 2;
    room -= nameWid[c]! + 1 + valWid[c]!;
  }
  return { rows, cols, nameWid, valWid, room };
}

/** The smallest row count whose columns fit `width` (upstream's binary search). */
function tableLayout(ctrs: readonly Counter[], width: number): Layout {
  let minRows = 1;
  let maxRows = ctrs.length;
  let last: Layout | null = null;
  while (minRows <= maxRows) {
    const rows = minRows + Math.floor((maxRows - minRows) / 2);
    const t = tryRows(ctrs, rows, width);
    last = t;
    if (t.room < 0) {
      minRows = rows + 1;
    } else {
      if (maxRows === rows) break;
      maxRows = rows;
    }
  }
  return last ?? singleColumn(ctrs);
}

function singleColumn(ctrs: readonly Counter[]): Layout {
  return { rows: ctrs.length, cols: 1,
    nameWid: [Math.max(0, ...ctrs.map((c) => c.name.length))],
    valWid: [Math.max(0, ...ctrs.map((c) => c.value.length))] };
}

/**
 * The command's output for these counters (any order): one column, or with `tableWidth`
 * the packed table. Empty for no counters.
 */
export function formatCounters(counters: readonly Counter[], tableWidth: number | null): string {
  if (counters.length === 0) return "";
  const ctrs = [...counters].sort(compareNames);
  const l = tableWidth === null ? singleColumn(ctrs) : tableLayout(ctrs, tableWidth);
  let out = "";
  for (let r = 0; r < l.rows; r++) {
    for (let c = 0; c < l.cols; c++) {
      const i = c * l.rows + r;
      if (i >= ctrs.length) break;
      const ctr = ctrs[i]!;
      out += `${c > 0 ? "  " : ""}${ctr.name.padEnd(l.nameWid[c]!)} ` +
        ctr.value.padStart(l.valWid[c]!);
    }
    out += "\n";
  }
  return out;
}

/** The terminal width -t packs to, or null for one column (see the file comment). */
export function tableColumns(): number | null {
  if (process.stdout.isTTY && process.stdout.columns > 0) return process.stdout.columns;
  const env = process.env.COLUMNS;
  if (env !== undefined && /^[0-9]+$/.test(env) && Number(env) > 0) return Number(env);
  return null;
}

function errnoOf(e: unknown): number {
  return fromNodeError(e).errno;
}

/** One counter file: a single pread of 25 bytes that must end in a newline. */
async function readCounter(dir: string, name: string, io: CliIo): Promise<string | number> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(`${dir}/${name}`, "r");
  } catch (e) {
    const errno = errnoOf(e);
    io.err(`failed to open counter file '${dir}/${name}': ${strerror(errno)} (${errno})\n`);
    return -errno;
  }
  const buf = Buffer.alloc(COUNTER_READ_BYTES);
  let n: number;
  try {
    n = (await fh.read(buf, 0, COUNTER_READ_BYTES, 0)).bytesRead;
  } catch {
    n = -1; // pread's return value on failure, which upstream prints
  } finally {
    await fh.close();
  }
  if (n <= 1 || n >= COUNTER_READ_BYTES || buf[n - 1] !== 0x0a) {
    io.err(`counter file ${dir}/${name} read returned ${n}\n`);
    return -Errno.EIO;
  }
  return buf.subarray(0, n - 1).toString("latin1");
}

/** Reads SYSFS-DIR/counters/*; resolves to the counters or to -errno after a message. */
export async function readCounters(sysfsDir: string, io: CliIo): Promise<Counter[] | number> {
  const dir = `${sysfsDir}/counters`;
  if (Buffer.byteLength(dir) >= PATH_MAX) {
    io.err(`invalid counter dir path '${sysfsDir}'\n`);
    return -Errno.EINVAL;
  }
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (e) {
    const errno = errnoOf(e);
    io.err(`failed to open sysfs counter dir '${dir}': ${strerror(errno)} (${errno})\n`);
    return -errno;
  }
  if (names.length > COUNTERS_MAX) {
    io.err(`more than ${COUNTERS_MAX} counters in '${dir}'\n`);
    return -Errno.E2BIG;
  }
  const out: Counter[] = [];
  for (const name of names) {
    const value = await readCounter(dir, name, io);
    if (typeof value === "number") return value;
    out.push({ name, value });
  }
  return out;
}

export const countersCommand: CliCommand =
  argpCommand({ name: "counters", group: "debug" }, COUNTERS_ARGP, async (a, io) => {
    const ctrs = await readCounters(a.sysfsPath!, io);
    if (typeof ctrs === "number") return ctrs;
    io.out(formatCounters(ctrs, a.table ? tableColumns() : null));
    return 0;
  });
