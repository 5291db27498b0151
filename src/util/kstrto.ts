/*
 * The Linux kernel's kstrtoull()/kstrtoll() (lib/kstrtox.c), for text that upstream scoutfs
 * parses inside the kernel: mount option values (match_int/match_u64 in lib/parser.c) and
 * values written to sysfs and debugfs files. Reproducing the kernel's rules keeps what a
 * script may write identical to upstream:
 *
 *  - base 0 picks the radix from the prefix: "0x"/"0X" followed by a hex digit is hex, any
 *    other leading "0" is octal (so "08" is invalid), anything else decimal;
 *  - kstrtoull skips one leading '+'; kstrtoll takes one leading '-' (but then no '+');
 *  - at least one digit; no spaces; one trailing newline is allowed ("echo 5 > file");
 *  - a value beyond the type's range is ERANGE, anything else malformed is EINVAL.
 *
 * Values are bigints: u64 and s64 ranges do not fit a JavaScript number. Callers check their
 * own ranges and convert. Nothing here touches the OS.
 */

export const U64_MAX = (1n << 64n) - 1n;
export const S64_MAX = (1n << 63n) - 1n;
export const S64_MIN = -(1n << 63n);
export const S32_MAX = (1n << 31n) - 1n;
export const S32_MIN = -(1n << 31n);

export type KstrtoResult =
  | { readonly ok: true; readonly value: bigint }
  | { readonly ok: false; readonly errno: "EINVAL" | "ERANGE" };

const EINVAL: KstrtoResult = { ok: false, errno: "EINVAL" };
const ERANGE: KstrtoResult = { ok: false, errno: "ERANGE" };

function digitValue(c: string): number {
  const code = c.toLowerCase().charCodeAt(0);
  if (code >= 48 && code <= 57) return code - 48;
  if (code >= 97 && code <= 102) return code - 87;
  return 99;
}

/** _parse_integer_fixup_radix(): the radix and where the digits start. */
function fixupRadix(s: string, base: number): { base: number; start: number } {
  const hexPrefix = s[0] === "0" && s[1]?.toLowerCase() === "x";
  if (base === 0) {
    if (s[0] !== "0") return { base: 10, start: 0 };
    base = hexPrefix && digitValue(s[2] ?? "") < 16 ? 16 : 8;
  }
  return { base, start: base === 16 && hexPrefix ? 2 : 0 };
}

/** _kstrtoull(): digits, then at most one newline, then the end of the text. */
function parseUnsigned(s: string, baseIn: number): KstrtoResult {
  const { base, start } = fixupRadix(s, baseIn);
  let value = 0n;
  let overflow = false;
  let i = start;
  for (; i < s.length; i++) {
    const d = digitValue(s[i]!);
    if (d >= base) break;
    value = value * BigInt(base) + BigInt(d);
    if (value > U64_MAX) overflow = true;
  }
  if (i === start) return EINVAL;
  if (overflow) return ERANGE;
  if (s[i] === "\n") i++;
  return i === s.length ? { ok: true, value } : EINVAL;
}

function checkBase(base: number): void {
  if (base !== 0 && base !== 8 && base !== 10 && base !== 16) {
    throw new RangeError(`kstrto base ${base}`);
  }
}

/** kstrtoull(s, base): an unsigned 64-bit value. */
export function kstrtoull(s: string, base = 0): KstrtoResult {
  checkBase(base);
  return parseUnsigned(s.startsWith("+") ? s.slice(1) : s, base);
}

/** kstrtoll(s, base) (and kstrtol on 64-bit): a signed 64-bit value. */
export function kstrtoll(s: string, base = 0): KstrtoResult {
  checkBase(base);
  if (s.startsWith("-")) {
    const r = parseUnsigned(s.slice(1), base);
    if (!r.ok) return r;
    return -r.value < S64_MIN ? ERANGE : { ok: true, value: -r.value };
  }
  const r = kstrtoull(s, base);
  if (!r.ok) return r;
  return r.value > S64_MAX ? ERANGE : r;
}

/** kstrtoint(s, base): a signed 32-bit value. */
export function kstrtoint(s: string, base = 0): KstrtoResult {
  const r = kstrtoll(s, base);
  if (!r.ok) return r;
  return r.value < S32_MIN || r.value > S32_MAX ? ERANGE : r;
}
