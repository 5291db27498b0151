/*
 * Number, size, time and address parsing for the scoutfs command line, reproducing upstream's
 * utils/src/parse.c (parse_u64, parse_s64, parse_u32, parse_human, parse_timespec,
 * parse_quorum_slot) and utils/src/dev.c / dev.h (size_flt, size_str, SIZE_FMT, BASE_SIZE_FMT)
 * byte for byte, including the C library behaviour they inherit (glibc strtoull, sscanf,
 * inet_aton, float arithmetic and printf rounding).
 *
 * Every CLI subcommand calls these. Parsers never print: a failure carries the exact line
 * upstream prints and the stream it prints it on (parse_quorum_slot uses printf, i.e. stdout),
 * and the caller writes it. u64 values are bigints so no precision is lost above 2^53.
 *
 * Upstream quirks kept on purpose (a golden test against upstream would see them):
 *  - parse_u64/parse_human test overflow with `ull == LLONG_MIN || ull == LLONG_MAX` after
 *    strtoull, which returns ULLONG_MAX on overflow, so overflow is never reported: the value
 *    silently saturates to 2^64-1. strtoll (parse_s64) does report it.
 *  - strtoull accepts a leading '-' and negates modulo 2^64 ("-1" is 18446744073709551615).
 *  - parse_human only looks at the first character after the number: "10GB" is 10 GiB.
 *  - parse_timespec accepts nsec == 1000000000 (the check is `> 1000000000`).
 */

export const ERANGE = 34;
export const EINVAL = 22;
export const U64_MAX = (1n << 64n) - 1n;
const S64_MAX = (1n << 63n) - 1n;
const S64_MIN = -(1n << 63n);
const U32_MAX = 0xffffffffn;
/** SCOUTFS_QUORUM_MAX_SLOTS (format.h) */
export const QUORUM_MAX_SLOTS = 15;
const USHRT_MAX = 65535;

/** Where upstream prints a parse failure: fprintf(stderr) or printf (stdout). */
export type OutStream = "stdout" | "stderr";

/** A parse result: the value, or the errno and the exact text upstream prints (with "\n"). */
export type Parsed<T> =
  | { ok: true; value: T }
  | { ok: false; errno: number; stream: OutStream; text: string };

function fail<T>(errno: number, text: string, stream: OutStream = "stderr"): Parsed<T> {
  return { ok: false, errno, stream, text };
}

// ---------------------------------------------------------------------------------------------
// glibc strtoull/strtoll

/** C isspace() in the C locale. */
function isCSpace(c: string | undefined): boolean {
  return c === " " || c === "\t" || c === "\n" || c === "\v" || c === "\f" || c === "\r";
}

function digitValue(c: string | undefined): number {
  if (c === undefined) return 99;
  const code = c.charCodeAt(0);
  if (code >= 48 && code <= 57) return code - 48;
  if (code >= 97 && code <= 122) return code - 97 + 10;
  if (code >= 65 && code <= 90) return code - 65 + 10;
  return 99;
}

export interface StrtoResult {
  /** Magnitude as parsed, before the sign is applied (unbounded). */
  magnitude: bigint;
  negative: boolean;
  /** Index just past the parsed number; 0 when nothing was converted (endptr == nptr). */
  end: number;
}

/** The scanning half of glibc strtoul/strtoull/strtoll: whitespace, sign, base prefix, digits. */
export function strtoScan(str: string, base: 0 | 8 | 10 | 16 = 0): StrtoResult {
  let i = 0;
  while (isCSpace(str[i])) i++;
  let negative = false;
  if (str[i] === "-" || str[i] === "+") negative = str[i++] === "-";
  let b: number = base;
  if (str[i] === "0" && (b === 0 || b === 16) && (str[i + 1] === "x" || str[i + 1] === "X") &&
    digitValue(str[i + 2]) < 16) {
    i += 2; // "0x" only counts as a prefix when a hex digit follows (glibc then ends at 'x')
    b = 16;
  } else if (b === 0) {
    b = str[i] === "0" ? 8 : 10;
  }
  const start = i;
  let magnitude = 0n;
  while (digitValue(str[i]) < b) magnitude = magnitude * BigInt(b) + BigInt(digitValue(str[i++]));
  if (i === start) return { magnitude: 0n, negative: false, end: 0 };
  return { magnitude, negative, end: i };
}

/** glibc strtoull(str, &end, base): saturates to ULLONG_MAX on overflow (errno ERANGE). */
export function strtoull(str: string, base: 0 | 8 | 10 | 16 = 0):
  { value: bigint; end: number; overflow: boolean } {
  const s = strtoScan(str, base);
  if (s.magnitude > U64_MAX) return { value: U64_MAX, end: s.end, overflow: true };
  const value = s.negative ? (-s.magnitude) & U64_MAX : s.magnitude;
  return { value, end: s.end, overflow: false };
}

/** glibc strtoll(str, &end, base): clamps to LLONG_MIN/LLONG_MAX on overflow (errno ERANGE). */
export function strtoll(str: string, base: 0 | 8 | 10 | 16 = 0):
  { value: bigint; end: number; overflow: boolean } {
  const s = strtoScan(str, base);
  const v = s.negative ? -s.magnitude : s.magnitude;
  if (v > S64_MAX) return { value: S64_MAX, end: s.end, overflow: true };
  if (v < S64_MIN) return { value: S64_MIN, end: s.end, overflow: true };
  return { value: v, end: s.end, overflow: false };
}

// ---------------------------------------------------------------------------------------------
// parse.c

/** parse_u64(): strtoull base 0, the whole string must be the number. */
export function parseU64(str: string): Parsed<bigint> {
  const r = strtoull(str, 0);
  // upstream's overflow test can never fire (see the header); only trailing text is an error
  if (r.end !== str.length) return fail(EINVAL, `invalid 64bit value: '${str}'\n`);
  return { ok: true, value: r.value };
}

/** parse_s64(): strtoll base 0; here the LLONG_MIN/LLONG_MAX overflow test does work. */
export function parseS64(str: string): Parsed<bigint> {
  const r = strtoll(str, 0);
  if (r.end !== str.length || r.overflow) return fail(EINVAL, `invalid 64bit value: '${str}'\n`);
  return { ok: true, value: r.value };
}

/** parse_u32(): parse_u64, then values above UINT_MAX fail with EINVAL and no message. */
export function parseU32(str: string): Parsed<number> {
  const r = parseU64(str);
  if (!r.ok) return r;
  if (r.value > U32_MAX) return { ok: false, errno: EINVAL, stream: "stderr", text: "" };
  return { ok: true, value: Number(r.value) };
}

const HUMAN_SHIFTS: Readonly<Record<string, bigint>> = {
  K: 10n, M: 20n, G: 30n, T: 40n, P: 50n, "": 0n,
};

/**
 * parse_human(): a number with an optional K/M/G/T/P suffix (powers of 1024). Only the
 * character right after the digits is examined; an unknown one is ERANGE ("unknown suffix").
 */
export function parseHuman(str: string): Parsed<bigint> {
  const r = strtoull(str, 0);
  const suffix = str.slice(r.end);
  const sh = HUMAN_SHIFTS[suffix.slice(0, 1)];
  if (sh === undefined) return fail(ERANGE, `unknown suffix: '${suffix}'\n`);
  if (r.value > (U64_MAX >> sh)) return fail(ERANGE, `size too big: '${str}'\n`);
  return { ok: true, value: r.value << sh };
}

export interface Timespec {
  sec: bigint;
  nsec: number;
}

/**
 * parse_timespec(): sscanf(str, "%llu.%u"). Text after the nanoseconds is ignored, as sscanf
 * does; %u stores strtoul's result truncated to 32 bits.
 */
export function parseTimespec(str: string): Parsed<Timespec> {
  const sec = scanUnsigned(str, 0);
  const dot = sec.kind === "ok" && str[sec.next] === ".";
  const nsec = dot && sec.kind === "ok" ? scanUnsigned(str, sec.next + 1) : null;
  if (sec.kind !== "ok" || nsec === null || nsec.kind !== "ok") {
    return fail(EINVAL, `invalid timespec string: '${str}'\n`);
  }
  const nsecU32 = Number(nsec.value & U32_MAX);
  if (nsecU32 > 1000000000) return fail(EINVAL, `invalid timespec nsec value: '${str}'\n`);
  return { ok: true, value: { sec: sec.value, nsec: nsecU32 } };
}

// ---------------------------------------------------------------------------------------------
// sscanf pieces used by parse_timespec and parse_quorum_slot

type Scan =
  | { kind: "ok"; value: bigint; next: number }
  | { kind: "input" } // input failure: end of string before anything matched
  | { kind: "match" }; // matching failure

/** A scanf "%u"/"%llu" conversion at index i: whitespace, sign, decimal digits (strtoull). */
function scanUnsigned(str: string, i: number): Scan {
  while (isCSpace(str[i])) i++;
  if (i >= str.length) return { kind: "input" };
  const start = i;
  if (str[i] === "-" || str[i] === "+") i++;
  const digitsStart = i;
  while (digitValue(str[i]) < 10) i++;
  if (i === digitsStart) return { kind: "match" };
  return { kind: "ok", value: strtoull(str.slice(start, i), 10).value, next: i };
}

/** A scanf "%45[^,]" conversion at index i (no whitespace skipping). */
function scanNotComma(str: string, i: number, width: number):
  { text: string; next: number } | Scan {
  if (i >= str.length) return { kind: "input" };
  let j = i;
  while (j < str.length && j - i < width && str[j] !== ",") j++;
  if (j === i) return { kind: "match" };
  return { text: str.slice(i, j), next: j };
}

interface SlotScan {
  /** sscanf's return value: conversions assigned, or -1 (EOF) on an input failure first. */
  ret: number;
  nr: number;
  addr: string;
  port: number;
  /** %n: characters consumed, or null when sscanf stopped before reaching it. */
  parsed: number | null;
}

/** sscanf(arg, "%u,%45[^,],%u%n", &nr, addr, &port, &parsed) with nr and port as C ints. */
function scanQuorumSlot(arg: string): SlotScan {
  const res: SlotScan = { ret: 0, nr: 0, addr: "", port: 0, parsed: null };
  const nr = scanUnsigned(arg, 0);
  if (nr.kind !== "ok") return { ...res, ret: nr.kind === "input" ? -1 : 0 };
  res.nr = Number(BigInt.asIntN(32, nr.value)); // stored through an int pointer
  res.ret = 1;
  if (arg[nr.next] !== ",") return res;
  const addr = scanNotComma(arg, nr.next + 1, 45);
  if (!("text" in addr)) return res;
  res.addr = addr.text;
  res.ret = 2;
  if (arg[addr.next] !== ",") return res;
  const port = scanUnsigned(arg, addr.next + 1);
  if (port.kind !== "ok") return res;
  res.port = Number(BigInt.asIntN(32, port.value));
  res.ret = 3;
  res.parsed = port.next;
  return res;
}

// ---------------------------------------------------------------------------------------------
// IPv4 addresses (glibc inet_aton / inet_ntoa)

/**
 * glibc inet_aton(): "a.b.c.d", "a.b.c" (c is 16 bits), "a.b" (b is 24 bits) or "a", each part
 * C-style (0x hex, leading 0 octal). Parsing stops at the end or at whitespace. Returns the
 * address in host order, or null when inet_aton would return 0.
 */
export function inetAton(s: string): number | null {
  const max = [0xffffffffn, 0xffffffn, 0xffffn, 0xffn];
  const parts: bigint[] = [];
  let i = 0;
  let val: bigint;
  for (;;) {
    if (digitValue(s[i]) >= 10) return null;
    const r = strtoull(s.slice(i), 0);
    if (r.overflow || r.value > 0xffffffffn) return null;
    val = r.value;
    i += r.end;
    if (s[i] !== ".") break;
    if (parts.length > 2 || val > 0xffn) return null;
    parts.push(val);
    i++;
  }
  if (i < s.length && !isCSpace(s[i])) return null;
  if (val > max[parts.length]!) return null;
  let word = 0n;
  parts.forEach((p, k) => { word |= p << BigInt(24 - 8 * k); });
  return Number(word | val);
}

/** inet_ntoa() of a host-order IPv4 address. */
export function inetNtoa(addr: number): string {
  return [24, 16, 8, 0].map((sh) => (addr >>> sh) & 0xff).join(".");
}

export interface QuorumSlotArg {
  nr: number;
  /** Dotted quad as inet_ntoa prints it. */
  addr: string;
  /** Host-order IPv4 address. */
  addrU32: number;
  port: number;
}

/**
 * parse_quorum_slot(): "NR,ADDR,PORT". Upstream prints these failures with printf, so they
 * go to stdout. When sscanf matches fewer than three fields it never stores %n, and upstream
 * compares that uninitialized int with strlen(arg): in practice the comparison fails and the
 * "extra unparsed trailing characters" line is what real upstream prints, so we print it too
 * (the following "failed to parse all three" branch is unreachable in practice).
 */
export function parseQuorumSlot(arg: string): Parsed<QuorumSlotArg> {
  const s = scanQuorumSlot(arg);
  if (s.ret === -1) {
    // sscanf leaves errno alone on an input failure; upstream prints whatever it held (0 here)
    return fail(EINVAL, `error parsing quorum slot '${arg}': Success\n`, "stdout");
  }
  if (s.parsed !== arg.length) {
    return fail(EINVAL, `extra unparsed trailing characters in quorum slot '${arg}'\n`, "stdout");
  }
  if (s.nr < 0 || s.nr >= QUORUM_MAX_SLOTS) {
    return fail(EINVAL, `invalid nr '${s.nr}' in quorum slot '${arg}', must be between 0 and ` +
      `${QUORUM_MAX_SLOTS - 1}\n`, "stdout");
  }
  if (s.port <= 0 || s.port > USHRT_MAX) {
    return fail(EINVAL, `invalid ipv4 port '${s.port >>> 0}' in quorum slot '${arg}', must be ` +
      `between 1 and ${USHRT_MAX}\n`, "stdout");
  }
  const a = inetAton(s.addr);
  if (a === null || a === 0 || a === 0xffffffff) {
    return fail(EINVAL, `invalid ipv4 address '${s.addr}' in quorum slot '${arg}'\n`, "stdout");
  }
  return { ok: true, value: { nr: s.nr, addr: inetNtoa(a), addrU32: a, port: s.port } };
}

// ---------------------------------------------------------------------------------------------
// Size formatting: dev.c size_flt()/size_str() compute in C float (binary32).

/** (float)n for a u64, rounded to nearest-even exactly as the C conversion does. */
export function u64ToFloat32(n: bigint): number {
  if (n < (1n << 53n)) return Math.fround(Number(n));
  const bits = n.toString(2).length;
  const drop = BigInt(bits - 24);
  let kept = n >> drop;
  const rest = n & ((1n << drop) - 1n);
  const half = 1n << (drop - 1n);
  if (rest > half || (rest === half && (kept & 1n) === 1n)) kept++;
  return Number(kept) * 2 ** Number(drop);
}

const SIZE_SUFFIXES = ["B", "KB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];

/** size_flt() and size_str(): nr*size scaled down by 1024 until below 1024, in float. */
export function sizeFltStr(nr: bigint, size: number): { value: number; unit: string } {
  let x = Math.fround(u64ToFloat32(nr) * Math.fround(size));
  let i = 0;
  while (x >= 1024) {
    x = Math.fround(x / 1024);
    i++;
  }
  return { value: x, unit: SIZE_SUFFIXES[i]! };
}

/**
 * printf("%.<digits>f") of a finite non-negative double: the exact binary value rounded to
 * nearest with ties to even, as glibc does (Number.prototype.toFixed rounds ties up).
 */
export function formatFixed(x: number, digits: number): string {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const hi = view.getUint32(0);
  const expField = (hi >>> 20) & 0x7ff;
  const frac = (BigInt(hi & 0xfffff) << 32n) | BigInt(view.getUint32(4));
  const mant = expField === 0 ? frac : frac | (1n << 52n);
  const exp = expField === 0 ? -1074 : expField - 1075;
  const scaled = mant * 10n ** BigInt(digits);
  let q: bigint;
  if (exp >= 0) {
    q = scaled << BigInt(exp);
  } else {
    const sh = BigInt(-exp);
    q = scaled >> sh;
    const r = scaled & ((1n << sh) - 1n);
    const half = 1n << (sh - 1n);
    if (r > half || (r === half && (q & 1n) === 1n)) q++;
  }
  const s = q.toString().padStart(digits + 1, "0");
  return digits === 0 ? s : `${s.slice(0, -digits)}.${s.slice(-digits)}`;
}

/** SIZE_FMT / SIZE_ARGS(nr, size): "%llu (%.2f %s)", e.g. "1048576 (64.00 GB)". */
export function formatSize(nr: bigint, size: number): string {
  const f = sizeFltStr(nr, size);
  return `${nr} (${formatFixed(f.value, 2)} ${f.unit})`;
}

/** BASE_SIZE_FMT / BASE_SIZE_ARGS(bytes): "%.2f%s", e.g. "64.00GB". */
export function formatBaseSize(bytes: bigint): string {
  const f = sizeFltStr(bytes, 1);
  return `${formatFixed(f.value, 2)}${f.unit}`;
}
