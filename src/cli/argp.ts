/*
 * A GNU argp work-alike for the scoutfs subcommands.
 *
 * Upstream's utility parses each subcommand with glibc's argp_parse(3), so its option syntax,
 * error messages, exit status and --help/--usage layout are glibc's. Every subcommand here
 * declares an ArgpSpec (its options, positional-argument doc, one-line doc and parser
 * callbacks mirroring upstream's parse_opt) and calls argpParse(), which reproduces:
 *
 *  - getopt_long syntax: -f, bundled -fA, -Qvalue / -Q value, --long=value / --long value,
 *    unambiguous long-option prefixes, "--" ending options, and GNU argument permutation
 *    (every option is handled before any positional argument, in command-line order);
 *  - getopt's messages: "<cmd>: unrecognized option '--x'", "<cmd>: invalid option -- 'x'",
 *    "<cmd>: option requires an argument -- 'x'", "<cmd>: option '--x' requires an argument",
 *    "<cmd>: option '--x' doesn't allow an argument", "... is ambiguous; possibilities: ...";
 *  - argp_error(): "<cmd>: <message>" then "Try `<cmd> --help' or `<cmd> --usage' for more
 *    information." and exit status 64 (EX_USAGE); "<cmd>: Too many arguments" when no parser
 *    takes a positional argument; argp_failure();
 *  - argp's parser protocol: a parser callback returning an errno stops parsing, then the
 *    ERROR and FINI callbacks still run (upstream's FINI checks often argp_error() then) and
 *    the errno is handed back to the command, which fails with it;
 *  - --help (-?) and --usage output formatted like glibc's argp-help.c, including its word
 *    wrapping at column 79 (an emulation of argp-fmtstream.c, buffer included), its option
 *    sorting, and the "Mandatory or optional arguments..." note.
 *
 * The program name in every message is argv[0], which the dispatcher sets to the subcommand
 * name exactly as upstream's cmd_execute() does, so help reads "Usage: mkfs [OPTION...] ..."
 * and not "scoutfs mkfs". Parsing is synchronous; nothing here calls process.exit: the result
 * says whether the command should exit (and with which status) or fail with an errno.
 */

import { strerror } from "../util/errno.js";
import type { CliIo } from "./command.js";

/** glibc's ARGP_ERR_UNKNOWN (E2BIG): "this parser does not handle that key". */
export const ARGP_ERR_UNKNOWN = 7;
/** argp_err_exit_status: EX_USAGE from <sysexits.h>. */
export const EX_USAGE = 64;

/** One option, like a struct argp_option entry. */
export interface ArgpOption<K extends string> {
  /** What the parser callback receives for this option. */
  key: K;
  /** Short option character, if any. */
  short?: string;
  /** Long option name without the leading dashes, if any. */
  long?: string;
  /** Name of the option's value in help ("SIZE"); absent for options taking no value. */
  arg?: string;
  /** OPTION_ARG_OPTIONAL: the value may be omitted (only "--x=v" or "-xv" give one). */
  argOptional?: boolean;
  /** OPTION_HIDDEN: accepted but not shown by --help/--usage. */
  hidden?: boolean;
  doc?: string;
  /** argp option group: 0 inherits the previous option's group; sorts help output. */
  group?: number;
}

/** What parser callbacks may look at and do (struct argp_state plus argp_error/failure). */
export interface ArgpState<S> {
  readonly input: S;
  /** Program name used in messages (argv[0], or --program-name). */
  readonly name: string;
  /** Positional arguments accepted so far. */
  readonly argNum: number;
  readonly io: CliIo;
  /** argp_error(): prints "<name>: <message>" and the Try line, then exits 64. */
  error(message: string): never;
  /** argp_failure(): prints "<name>: <message>[: <strerror>]"; exits with status if nonzero. */
  failure(status: number, errnum: number, message: string | null): void;
}

/** Callbacks return 0, a (negative) errno to stop parsing, or ARGP_ERR_UNKNOWN. */
export type ArgpReturn = number;

export interface ArgpSpec<S, K extends string> {
  options: readonly ArgpOption<K>[];
  /** struct argp args_doc ("META-DEVICE DATA-DEVICE"); null is a NULL args_doc. */
  argsDoc: string | null;
  /** struct argp doc; text after a '\v' is printed after the option table. */
  doc: string | null;
  /** Builds the parser's input (what upstream's command zero-initializes). */
  init(): S;
  onOption?(key: K, arg: string | null, st: ArgpState<S>): ArgpReturn;
  /** ARGP_KEY_ARG; returning ARGP_ERR_UNKNOWN makes argp say "Too many arguments". */
  onArg?(arg: string, st: ArgpState<S>): ArgpReturn;
  onNoArgs?(st: ArgpState<S>): ArgpReturn;
  onEnd?(st: ArgpState<S>): ArgpReturn;
  onError?(st: ArgpState<S>): void;
  /** ARGP_KEY_FINI: runs after success and after a callback error alike. */
  onFini?(st: ArgpState<S>): void;
}

export type ArgpResult<S> =
  /** Parsed; run the command with `input`. */
  | { kind: "ok"; input: S }
  /** argp finished the command itself (help: 0, usage errors: 64). */
  | { kind: "exit"; code: number }
  /** A parser callback failed with this (positive) errno; the command fails with it. */
  | { kind: "error"; errno: number };

// ---------------------------------------------------------------------------------------------
// Option table: the command's options followed by argp's default group.

type DefaultKey = "help" | "usage" | "program-name" | "HANG";

interface TableOption {
  opt: ArgpOption<string>;
  /** 0: the command's options; 1: argp's default options. */
  owner: 0 | 1;
}

const DEFAULT_OPTIONS: readonly ArgpOption<DefaultKey>[] = [
  { key: "help", short: "?", long: "help", doc: "Give this help list", group: -1 },
  { key: "usage", long: "usage", doc: "Give a short usage message" },
  { key: "program-name", long: "program-name", arg: "NAME", hidden: true,
    doc: "Set the program name" },
  { key: "HANG", long: "HANG", arg: "SECS", argOptional: true, hidden: true,
    doc: "Hang for SECS seconds (default 3600)" },
];

function buildTable(spec: ArgpSpec<unknown, string>): TableOption[] {
  return [
    ...spec.options.map((opt) => ({ opt, owner: 0 as const })),
    ...DEFAULT_OPTIONS.map((opt) => ({ opt, owner: 1 as const })),
  ];
}

/** __option_is_short(): a printable single-byte key. */
function isShort(o: ArgpOption<string>): boolean {
  if (o.short === undefined || o.short.length !== 1) return false;
  const c = o.short.charCodeAt(0);
  return c > 32 && c < 127;
}

/** Internal unwinding for argp_error()/argp_failure()/help: the status to exit with. */
class ArgpExit {
  constructor(readonly code: number) {}
}

// ---------------------------------------------------------------------------------------------
// Parsing

/** Parser state; callbacks see it through the ArgpState interface. */
class Parser<S, K extends string> implements ArgpState<S> {
  readonly table: TableOption[];
  name: string;
  argNum = 0;
  readonly input: S;
  readonly st: ArgpState<S> = this;

  constructor(readonly spec: ArgpSpec<S, K>, readonly argv: readonly string[],
    readonly io: CliIo) {
    this.table = buildTable(spec as ArgpSpec<unknown, string>);
    this.name = argv[0] ?? "scoutfs";
    this.input = spec.init();
  }

  error(message: string): never {
    this.io.err(`${this.name}: ${message}\n`);
    this.io.err(argpHelpText(this.spec, this.name, "see"));
    throw new ArgpExit(EX_USAGE);
  }

  failure(status: number, errnum: number, message: string | null): void {
    let line = this.name;
    if (message !== null) line += `: ${message}`;
    if (errnum) line += `: ${strerror(errnum)}`; // glibc: "Unknown error -2" for negatives
    this.io.err(`${line}\n`);
    if (status) throw new ArgpExit(status);
  }

  /** Prints getopt's complaint and argp's Try line; getopt errors always exit 64. */
  badKey(message: string): never {
    this.io.err(`${this.argv[0] ?? this.name}: ${message}\n`);
    this.io.err(argpHelpText(this.spec, this.name, "see"));
    throw new ArgpExit(EX_USAGE);
  }

  /** Handles one recognized option; returns the callback's status. */
  dispatch(t: TableOption, arg: string | null): number {
    if (t.owner === 1) return this.defaultOption(t.opt.key as DefaultKey, arg);
    const r = this.spec.onOption?.(t.opt.key as K, arg, this.st) ?? ARGP_ERR_UNKNOWN;
    if (r === ARGP_ERR_UNKNOWN) {
      const what = isShort(t.opt) ? `-${t.opt.short}` : `--${t.opt.long ?? "???"}`;
      this.error(`${what}: (PROGRAM ERROR) Option should have been recognized!?`);
    }
    return r;
  }

  private defaultOption(key: DefaultKey, arg: string | null): number {
    switch (key) {
      case "help":
        this.io.out(argpHelpText(this.spec, this.name, "help"));
        throw new ArgpExit(0);
      case "usage":
        this.io.out(argpHelpText(this.spec, this.name, "usage"));
        throw new ArgpExit(0);
      case "program-name":
        this.name = arg ?? this.name;
        return 0;
      case "HANG":
        return 0; // glibc sleeps here for a debugger to attach; pointless in this port
    }
  }
}

/** Scans argv like getopt_long in permute mode; returns the positional arguments. */
function scanOptions<S, K extends string>(p: Parser<S, K>): { args: string[]; err: number } {
  const argv = p.argv;
  const args: string[] = [];
  let i = 1;
  while (i < argv.length) {
    const a = argv[i]!;
    if (a === "--") {
      args.push(...argv.slice(i + 1));
      break;
    }
    let step: { next: number; err: number };
    if (a.startsWith("--")) step = longOption(p, i);
    else if (a.startsWith("-") && a.length > 1) step = shortOptions(p, i);
    else {
      args.push(a);
      step = { next: i + 1, err: 0 };
    }
    if (step.err) return { args, err: step.err };
    i = step.next;
  }
  return { args, err: 0 };
}

function takesArg(o: ArgpOption<string>): "none" | "required" | "optional" {
  if (o.arg === undefined) return "none";
  return o.argOptional ? "optional" : "required";
}

function findLong<S, K extends string>(p: Parser<S, K>, name: string): TableOption[] {
  const exact = p.table.find((t) => t.opt.long === name);
  if (exact) return [exact];
  return p.table.filter((t) => t.opt.long !== undefined && t.opt.long.startsWith(name));
}

function longOption<S, K extends string>(p: Parser<S, K>, i: number):
  { next: number; err: number } {
  const text = p.argv[i]!.slice(2);
  const eq = text.indexOf("=");
  const name = eq < 0 ? text : text.slice(0, eq);
  const found = findLong(p, name);
  if (found.length === 0) p.badKey(`unrecognized option '--${text}'`);
  if (found.length > 1) {
    const list = found.map((t) => ` '--${t.opt.long!}'`).join("");
    p.badKey(`option '--${text}' is ambiguous; possibilities:${list}`);
  }
  const t = found[0]!;
  const long = t.opt.long!;
  const kind = takesArg(t.opt);
  if (eq >= 0) {
    if (kind === "none") p.badKey(`option '--${long}' doesn't allow an argument`);
    return { next: i + 1, err: p.dispatch(t, text.slice(eq + 1)) };
  }
  if (kind === "required") {
    if (i + 1 >= p.argv.length) p.badKey(`option '--${long}' requires an argument`);
    return { next: i + 2, err: p.dispatch(t, p.argv[i + 1]!) };
  }
  return { next: i + 1, err: p.dispatch(t, null) };
}

function shortOptions<S, K extends string>(p: Parser<S, K>, i: number):
  { next: number; err: number } {
  const a = p.argv[i]!;
  for (let j = 1; j < a.length; j++) {
    const c = a[j]!;
    const t = p.table.find((x) => isShort(x.opt) && x.opt.short === c);
    if (!t) p.badKey(`invalid option -- '${c}'`);
    const kind = takesArg(t.opt);
    const rest = a.slice(j + 1);
    if (kind === "none") {
      const err = p.dispatch(t, null);
      if (err) return { next: i + 1, err };
      continue;
    }
    if (rest !== "" || kind === "optional") {
      return { next: i + 1, err: p.dispatch(t, rest === "" ? null : rest) };
    }
    if (i + 1 >= p.argv.length) p.badKey(`option requires an argument -- '${c}'`);
    return { next: i + 2, err: p.dispatch(t, p.argv[i + 1]!) };
  }
  return { next: i + 1, err: 0 };
}

/** Positional arguments, then NO_ARGS/END, as argp's parser_finalize() does. */
function parseArgs<S, K extends string>(p: Parser<S, K>, args: readonly string[]): number {
  for (const arg of args) {
    const r = p.spec.onArg?.(arg, p.st) ?? ARGP_ERR_UNKNOWN;
    if (r === ARGP_ERR_UNKNOWN) {
      p.io.err(`${p.name}: Too many arguments\n`);
      p.io.err(argpHelpText(p.spec, p.name, "see"));
      throw new ArgpExit(EX_USAGE);
    }
    if (r) return r;
    p.argNum++;
  }
  let err = 0;
  if (p.argNum === 0) err = p.spec.onNoArgs?.(p.st) ?? 0;
  if (!err || err === ARGP_ERR_UNKNOWN) err = p.spec.onEnd?.(p.st) ?? 0;
  return err === ARGP_ERR_UNKNOWN ? 0 : err;
}

/**
 * argp_parse(): parses argv (argv[0] is the subcommand name) against spec. Output goes to io;
 * see ArgpResult for what the caller does next.
 */
export function argpParse<S, K extends string>(spec: ArgpSpec<S, K>, argv: readonly string[],
  io: CliIo): ArgpResult<S> {
  const p = new Parser(spec, argv, io);
  try {
    const scan = scanOptions(p);
    let err = scan.err;
    if (!err) err = parseArgs(p, scan.args);
    if (err) p.spec.onError?.(p.st);
    p.spec.onFini?.(p.st);
    if (err) return { kind: "error", errno: Math.abs(err) };
    return { kind: "ok", input: p.input };
  } catch (e) {
    if (e instanceof ArgpExit) return { kind: "exit", code: e.code };
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Help output: an emulation of glibc argp-help.c on top of argp-fmtstream.c.

/** argp-help.c uparams defaults (ARGP_HELP_FMT unset). */
const UP = {
  shortOptCol: 2, longOptCol: 6, optDocCol: 29, usageIndent: 12, rmargin: 79,
} as const;
const FMT_INIT_BUF = 200; // argp-fmtstream.c INIT_BUF_SIZE
const PRINTF_SIZE_GUESS = 150;

function isBlank(c: string | undefined): boolean {
  return c === " " || c === "\t";
}

/**
 * argp-fmtstream.c: text is buffered and word-wrapped lazily, when the buffer fills or
 * margins change or the column is asked for. Wrapping only considers blanks in text not yet
 * scanned, so when scans happen changes the output in corner cases; this follows glibc's
 * buffer (200 bytes, printf reserving 150) to scan at the same moments.
 */
class FmtStream {
  private out = "";
  private buf = "";
  private pointOffs = 0;
  private pointCol = 0;
  private lmargin = 0;
  private wmargin = 0;
  private cap = FMT_INIT_BUF;

  setLmargin(n: number): number {
    if (this.buf.length > this.pointOffs) this.update();
    const old = this.lmargin;
    this.lmargin = n;
    return old;
  }

  setWmargin(n: number): number {
    if (this.buf.length > this.pointOffs) this.update();
    const old = this.wmargin;
    this.wmargin = n;
    return old;
  }

  point(): number {
    if (this.pointOffs < this.buf.length) this.update();
    return this.pointCol >= 0 ? this.pointCol : 0;
  }

  putc(ch: string): void {
    if (this.buf.length >= this.cap) this.ensure(1);
    this.buf += ch;
  }

  puts(s: string): void {
    if (s.length === 0) return;
    if (this.buf.length + s.length > this.cap) this.ensure(s.length);
    this.buf += s;
  }

  printf(s: string): void {
    this.ensure(PRINTF_SIZE_GUESS);
    if (s.length >= this.cap - this.buf.length) this.ensure(s.length + 1);
    this.buf += s;
  }

  finish(): string {
    this.update();
    this.out += this.buf;
    this.buf = "";
    return this.out;
  }

  private ensure(amount: number): void {
    if (this.cap - this.buf.length >= amount) return;
    this.update();
    this.out += this.buf;
    this.buf = "";
    this.pointOffs = 0;
    if (this.cap < amount) this.cap += amount;
  }

  /** __argp_fmtstream_update(): left margins and word wrap for the unscanned text. */
  private update(): void {
    let b = this.pointOffs;
    while (b < this.buf.length) {
      if (this.pointCol === 0 && this.lmargin !== 0) {
        this.buf = this.buf.slice(0, b) + " ".repeat(this.lmargin) + this.buf.slice(b);
        b += this.lmargin;
        this.pointCol = this.lmargin;
      }
      const end = this.buf.length;
      let nl = this.buf.indexOf("\n", b);
      if (this.pointCol < 0) this.pointCol = 0;
      if (nl < 0) {
        if (this.pointCol + (end - b) < UP.rmargin) {
          this.pointCol += end - b;
          break;
        }
        nl = end;
      } else if (this.pointCol + (nl - b) < UP.rmargin) {
        this.pointCol = 0;
        b = nl + 1;
        continue;
      }
      const wrap = this.wrapPoint(b, nl);
      if (wrap === null) {
        this.pointCol = 0; // glibc: an overlong word that already ends the line
        b = nl + 1;
        continue;
      }
      const margin = "\n" + " ".repeat(this.wmargin);
      this.buf = this.buf.slice(0, wrap.nl) + margin + this.buf.slice(Math.min(wrap.next, end));
      b = wrap.nl + margin.length;
      this.pointCol = this.wmargin ? this.wmargin : -1;
    }
    this.pointOffs = this.buf.length;
  }

  /** Where a too-long line breaks: [nl, next) is replaced by the newline and margin. */
  private wrapPoint(b: number, lineEnd: number): { nl: number; next: number } | null {
    const at = (i: number): string | undefined => (i >= 0 ? this.buf[i] : undefined);
    let p = b + (UP.rmargin - this.pointCol);
    while (p >= b && !isBlank(at(p))) p--;
    if (p + 1 > b) {
      const next = p + 1;
      do p--; while (p >= b && isBlank(at(p)));
      return { nl: p + 1, next };
    }
    // a single word longer than the line: break after it instead
    p = b + (UP.rmargin - this.pointCol);
    if (p < lineEnd) {
      do p++; while (p < lineEnd && !isBlank(at(p)));
    }
    if (p === lineEnd) return null;
    const nl = p;
    do p++; while (isBlank(at(p)));
    return { nl, next: p };
  }
}

interface HolEntry {
  opt: ArgpOption<string>;
  group: number;
}

/** make_hol(): entries with their groups (0 inherits the previous entry's group). */
function holEntries(spec: ArgpSpec<unknown, string>): HolEntry[] {
  const entries: HolEntry[] = [];
  for (const list of [spec.options, DEFAULT_OPTIONS]) {
    let cur = 0;
    for (const opt of list) {
      cur = opt.group ? opt.group : cur;
      entries.push({ opt, group: cur });
    }
  }
  // _help(): hol_set_group(hol, "help", -1) and (hol, "version", -1): any option with one of
  // these long names is listed last, whichever command declares it (data-wait-err --version)
  for (const e of entries) {
    if (e.opt.long === "help" || e.opt.long === "version") e.group = -1;
  }
  return entries.sort(holEntryCmp); // Array.prototype.sort is stable
}

function firstShort(e: HolEntry): string | null {
  return !e.opt.hidden && isShort(e.opt) ? e.opt.short! : null;
}

function firstLong(e: HolEntry): string | null {
  return !e.opt.hidden && e.opt.long !== undefined ? e.opt.long : null;
}

/** group_cmp(): non-negative groups ascending, then negative groups ascending. */
function groupCmp(g1: number, g2: number): number {
  if (g1 === g2) return 0;
  if ((g1 < 0 && g2 < 0) || (g1 >= 0 && g2 >= 0)) return g1 - g2;
  return g2 - g1;
}

function tolower(c: number): number {
  return c >= 65 && c <= 90 ? c + 32 : c;
}

/** hol_entry_cmp(): by group, then by first option letter ignoring case, lower case first. */
function holEntryCmp(e1: HolEntry, e2: HolEntry): number {
  if (e1.group !== e2.group) return groupCmp(e1.group, e2.group);
  const s1 = firstShort(e1);
  const s2 = firstShort(e2);
  const l1 = firstLong(e1);
  const l2 = firstLong(e2);
  if (s1 === null && s2 === null && l1 !== null && l2 !== null) {
    const a = l1.toLowerCase();
    const b = l2.toLowerCase();
    return a < b ? -1 : a > b ? 1 : 0;
  }
  const f1 = (s1 ?? l1 ?? "\0").charCodeAt(0);
  const f2 = (s2 ?? l2 ?? "\0").charCodeAt(0);
  const lower = tolower(f1) - tolower(f2);
  return lower !== 0 ? lower : f2 - f1;
}

/** space(): a blank, or a newline when `ensure` more columns would reach the right margin. */
function space(fs: FmtStream, ensure: number): void {
  fs.putc(fs.point() + ensure >= UP.rmargin ? "\n" : " ");
}

/** hol_usage(): [-shortflags] [-x ARG]... [--long[=ARG]]... */
function holUsage(entries: readonly HolEntry[], fs: FmtStream): void {
  const argless = entries.filter((e) => firstShort(e) !== null && e.opt.arg === undefined)
    .map((e) => e.opt.short!).join("");
  if (argless) fs.printf(` [-${argless}]`);
  for (const e of entries) {
    if (firstShort(e) === null || e.opt.arg === undefined) continue;
    if (e.opt.argOptional) {
      fs.printf(` [-${e.opt.short!}[${e.opt.arg}]]`);
    } else {
      space(fs, 6 + e.opt.arg.length);
      fs.printf(`[-${e.opt.short!} ${e.opt.arg}]`);
    }
  }
  for (const e of entries) {
    const long = firstLong(e);
    if (long === null) continue;
    if (e.opt.arg === undefined) fs.printf(` [--${long}]`);
    else if (e.opt.argOptional) fs.printf(` [--${long}[=${e.opt.arg}]]`);
    else fs.printf(` [--${long}=${e.opt.arg}]`);
  }
}

/** The "Usage:" line(s): one per '\n'-separated args_doc pattern, like argp_args_usage(). */
function usageLines(spec: ArgpSpec<unknown, string>, name: string, entries: readonly HolEntry[],
  full: boolean, fs: FmtStream): void {
  const patterns = spec.argsDoc === null ? [null] : spec.argsDoc.split("\n");
  patterns.forEach((pattern, i) => {
    const oldWm = fs.setWmargin(UP.usageIndent);
    fs.printf(`${i === 0 ? "Usage:" : "  or: "} ${name}`);
    const oldLm = fs.setLmargin(UP.usageIndent);
    if (full && i === 0) holUsage(entries, fs);
    else if (entries.length > 0) fs.puts(" [OPTION...]");
    if (pattern !== null) {
      space(fs, 1 + pattern.length);
      fs.puts(pattern);
    }
    fs.setWmargin(oldWm);
    fs.setLmargin(oldLm);
    fs.putc("\n");
  });
}

interface HelpState {
  suppressedDupArg: boolean;
}

function indentTo(fs: FmtStream, col: number): void {
  for (let n = col - fs.point(); n > 0; n--) fs.putc(" ");
}

/** hol_entry_help(): "  -x, --long=ARG" then the doc from column 29, wrapped. */
function holEntryHelp(e: HolEntry, fs: FmtStream, hh: HelpState): void {
  const o = e.opt;
  if (o.hidden) return;
  const oldLm = fs.setLmargin(0);
  const oldWm = fs.setWmargin(UP.shortOptCol);
  let first = true;
  const comma = (col: number): void => {
    if (!first) fs.puts(", ");
    first = false;
    indentTo(fs, col);
  };
  if (isShort(o)) {
    comma(UP.shortOptCol);
    fs.putc("-");
    fs.putc(o.short!);
    if (o.long === undefined && o.arg !== undefined) {
      fs.printf(o.argOptional ? `[${o.arg}]` : ` ${o.arg}`);
    } else if (o.arg !== undefined) {
      hh.suppressedDupArg = true;
    }
  }
  fs.setWmargin(UP.longOptCol);
  if (o.long !== undefined) {
    comma(UP.longOptCol);
    fs.printf(`--${o.long}`);
    if (o.arg !== undefined) fs.printf(o.argOptional ? `[=${o.arg}]` : `=${o.arg}`);
  }
  fs.setLmargin(0);
  if (!first) {
    entryDoc(o.doc ?? "", fs);
    fs.setLmargin(0);
    fs.putc("\n");
  }
  fs.setLmargin(oldLm);
  fs.setWmargin(oldWm);
}

function entryDoc(doc: string, fs: FmtStream): void {
  if (doc === "") return;
  const col = fs.point();
  fs.setLmargin(UP.optDocCol);
  fs.setWmargin(UP.optDocCol);
  if (col > UP.optDocCol + 3) fs.putc("\n");
  else if (col >= UP.optDocCol) fs.puts("   ");
  else indentTo(fs, UP.optDocCol);
  fs.puts(doc);
}

const DUP_ARGS_NOTE = "Mandatory or optional arguments to long options are also mandatory or " +
  "optional for any corresponding short options.";

/** argp_doc(): the part of doc before '\v' (pre) or after it (post). */
function argpDoc(spec: ArgpSpec<unknown, string>, post: boolean, preBlank: boolean,
  fs: FmtStream): boolean {
  if (spec.doc === null) return false;
  const vt = spec.doc.indexOf("\v");
  const text = vt < 0 ? (post ? null : spec.doc)
    : post ? spec.doc.slice(vt + 1) : spec.doc.slice(0, vt);
  if (text === null) return false;
  if (preBlank) fs.putc("\n");
  fs.puts(text);
  if (fs.point() > 0) fs.putc("\n");
  return true;
}

/**
 * The text argp prints for --help ("help"), --usage ("usage") or after an error ("see": the
 * "Try `<name> --help' or `<name> --usage' for more information." line).
 */
export function argpHelpText<S, K extends string>(specIn: ArgpSpec<S, K>, name: string,
  what: "help" | "usage" | "see"): string {
  const spec = specIn as ArgpSpec<unknown, string>;
  const fs = new FmtStream();
  if (what === "see") {
    fs.printf(`Try \`${name} --help' or \`${name} --usage' for more information.\n`);
    return fs.finish();
  }
  const entries = holEntries(spec);
  usageLines(spec, name, entries, what === "usage", fs);
  if (what === "usage") return fs.finish();
  argpDoc(spec, false, false, fs);
  let anything = true; // the usage line was printed
  const hh: HelpState = { suppressedDupArg: false };
  if (entries.length > 0) {
    if (anything) fs.putc("\n");
    for (const e of entries) holEntryHelp(e, fs, hh);
    if (hh.suppressedDupArg) {
      fs.putc("\n");
      fs.puts(DUP_ARGS_NOTE);
      fs.putc("\n");
    }
    anything = true;
  }
  argpDoc(spec, true, anything, fs);
  return fs.finish();
}
