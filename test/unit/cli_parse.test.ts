/*
 * Goal: src/cli/parse.ts reproduces upstream utils/src/parse.c and dev.c exactly, including
 * what they inherit from glibc: strtoull/strtoll base 0 (hex, octal, signs, overflow),
 * parse_human's suffixes and its checks, sscanf-based parse_timespec and parse_quorum_slot,
 * inet_aton's address forms, and SIZE_FMT's float arithmetic and %.2f rounding.
 *
 * Method: the table at the end was produced by compiling upstream's parse.c functions and
 * size_flt()/size_str() (copied, printing with a stream tag instead of to stderr/stdout)
 * against glibc 2.36 and feeding them each input; `parsed` in parse_quorum_slot was
 * initialized to a value that never equals strlen(), which is what upstream's uninitialized
 * %n target amounts to in practice. Each row is replayed through parse.ts and rendered the
 * same way ("E"/"O" for a message on stderr/stdout, then the return and value).
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  formatBaseSize, formatFixed, formatSize, inetAton, parseHuman, parseQuorumSlot, parseS64,
  parseTimespec, parseU32, parseU64, type Parsed, u64ToFloat32,
} from "../../src/cli/parse.js";

/** Like the C harness: "E <message>" when one is printed, then "r=<ret> <value or 0>". */
function render<T>(r: Parsed<T>, value: (v: T | null) => string): string[] {
  const lines: string[] = [];
  if (!r.ok && r.text) lines.push(`E ${r.text.replace(/\n$/, "")}`);
  lines.push(`r=${r.ok ? 0 : -r.errno} ${value(r.ok ? r.value : null)}`);
  return lines;
}

function replay(kind: string, arg: string): string[] {
  switch (kind) {
    case "u64": return render(parseU64(arg), (v) => `v=${v ?? 0}`);
    case "s64": return render(parseS64(arg), (v) => `v=${v ?? 0}`);
    case "human": return render(parseHuman(arg), (v) => `v=${v ?? 0}`);
    case "ts": return render(parseTimespec(arg), (v) =>
      v ? `${BigInt.asIntN(64, v.sec)}.${v.nsec}` : "0.0");
    case "slot": {
      const r = parseQuorumSlot(arg);
      const lines: string[] = [];
      if (!r.ok) lines.push(`O ${r.text.replace(/\n$/, "")}`);
      else lines.push(`slot ${r.value.nr} ${r.value.addr} ${r.value.port}`);
      lines.push(`r=${r.ok ? 0 : -r.errno}`);
      return lines;
    }
    case "size": {
      const [nr, size] = arg.split(" ");
      return [formatSize(BigInt(nr!), Number(size))];
    }
    default: throw new Error(`unknown kind ${kind}`);
  }
}

test("parse.c and dev.c behaviour matches upstream compiled against glibc", () => {
  for (const [kind, arg, expected] of GOLDEN) {
    assert.deepEqual(replay(kind, arg), expected, `${kind} '${arg}'`);
  }
});

test("parse results carry the stream upstream prints on", () => {
  const slot = parseQuorumSlot("15,1.2.3.4,5");
  assert.ok(!slot.ok && slot.stream === "stdout", "parse_quorum_slot uses printf");
  const u = parseU64("x");
  assert.ok(!u.ok && u.stream === "stderr");
  const ok = parseQuorumSlot("2,0x7f.1,19700");
  assert.deepEqual(ok, { ok: true, value: { nr: 2, addr: "127.0.0.1", addrU32: 0x7f000001,
    port: 19700 } });
});

test("parse_u32 refuses values above UINT_MAX without a message", () => {
  assert.deepEqual(parseU32("4294967295"), { ok: true, value: 4294967295 });
  assert.deepEqual(parseU32("4294967296"), { ok: false, errno: 22, stream: "stderr", text: "" });
});

test("inet_aton forms and limits", () => {
  assert.equal(inetAton("1.2.3.4"), 0x01020304);
  assert.equal(inetAton("1.2.772"), 0x01020304);
  assert.equal(inetAton("1.131844"), 0x01020304);
  assert.equal(inetAton("16909060"), 0x01020304);
  assert.equal(inetAton("1.2.3.256"), null);
  assert.equal(inetAton("1.2.3.4\tjunk"), 0x01020304);
  assert.equal(inetAton(""), null);
});

test("printf %.2f rounds exact ties to even and float conversion rounds to nearest", () => {
  assert.equal(formatFixed(1.125, 2), "1.12");
  assert.equal(formatFixed(1.375, 2), "1.38");
  assert.equal(formatFixed(0.005, 2), "0.01"); // 0.005 is slightly above the tie in binary
  assert.equal(formatFixed(1023.999, 2), "1024.00");
  assert.equal(u64ToFloat32(16777217n), 16777216);
  assert.equal(u64ToFloat32((1n << 64n) - 1n), 2 ** 64);
  assert.equal(formatBaseSize(64n << 30n), "64.00GB");
  assert.equal(formatBaseSize(0n), "0.00B");
});

/** [kind, input, lines printed by the C harness] */
const GOLDEN: [string, string, string[]][] = [
  ["u64", "0", ["r=0 v=0"]],
  ["u64", "123", ["r=0 v=123"]],
  ["u64", "0x10", ["r=0 v=16"]],
  ["u64", "0X1f", ["r=0 v=31"]],
  ["u64", "010", ["r=0 v=8"]],
  ["u64", "08", ["E invalid 64bit value: '08'", "r=-22 v=0"]],
  ["u64", "0x", ["E invalid 64bit value: '0x'", "r=-22 v=0"]],
  ["u64", "0xg", ["E invalid 64bit value: '0xg'", "r=-22 v=0"]],
  ["u64", " 42", ["r=0 v=42"]],
  ["u64", "+7", ["r=0 v=7"]],
  ["u64", "-1", ["r=0 v=18446744073709551615"]],
  ["u64", "-0x10", ["r=0 v=18446744073709551600"]],
  ["u64", "18446744073709551615", ["r=0 v=18446744073709551615"]],
  ["u64", "18446744073709551616", ["r=0 v=18446744073709551615"]],
  ["u64", "99999999999999999999999", ["r=0 v=18446744073709551615"]],
  ["u64", "9223372036854775807", ["r=0 v=9223372036854775807"]],
  ["u64", "abc", ["E invalid 64bit value: 'abc'", "r=-22 v=0"]],
  ["u64", "12abc", ["E invalid 64bit value: '12abc'", "r=-22 v=0"]],
  ["u64", "1 ", ["E invalid 64bit value: '1 '", "r=-22 v=0"]],
  ["u64", "\t5", ["r=0 v=5"]],
  ["s64", "-5", ["r=0 v=-5"]],
  ["s64", "9223372036854775807", ["r=0 v=9223372036854775807"]],
  ["s64", "9223372036854775808", ["E invalid 64bit value: '9223372036854775808'", "r=-22 v=0"]],
  ["s64", "-9223372036854775808", ["r=0 v=-9223372036854775808"]],
  ["s64", "-9223372036854775809", ["E invalid 64bit value: '-9223372036854775809'", "r=-22 v=0"]],
  ["s64", "0x7fffffffffffffff", ["r=0 v=9223372036854775807"]],
  ["s64", "x", ["E invalid 64bit value: 'x'", "r=-22 v=0"]],
  ["human", "0", ["r=0 v=0"]],
  ["human", "10", ["r=0 v=10"]],
  ["human", "10K", ["r=0 v=10240"]],
  ["human", "10M", ["r=0 v=10485760"]],
  ["human", "64G", ["r=0 v=68719476736"]],
  ["human", "1T", ["r=0 v=1099511627776"]],
  ["human", "2P", ["r=0 v=2251799813685248"]],
  ["human", "10GB", ["r=0 v=10737418240"]],
  ["human", "10X", ["E unknown suffix: 'X'", "r=-34 v=0"]],
  ["human", "abc", ["E unknown suffix: 'abc'", "r=-34 v=0"]],
  ["human", "0x10M", ["r=0 v=16777216"]],
  ["human", "020K", ["r=0 v=16384"]],
  ["human", "16384P", ["E size too big: '16384P'", "r=-34 v=0"]],
  ["human", "16383P", ["r=0 v=18445618173802708992"]],
  ["human", "18446744073709551615", ["r=0 v=18446744073709551615"]],
  ["human", "99999999999999999999999", ["r=0 v=18446744073709551615"]],
  ["human", "-1", ["r=0 v=18446744073709551615"]],
  ["human", "-1K", ["E size too big: '-1K'", "r=-34 v=0"]],
  ["human", "1.5G", ["E unknown suffix: '.5G'", "r=-34 v=0"]],
  ["ts", "1700000000.000000123", ["r=0 1700000000.123"]],
  ["ts", "1.5", ["r=0 1.5"]],
  ["ts", "1.", ["E invalid timespec string: '1.'", "r=-22 0.0"]],
  ["ts", "1", ["E invalid timespec string: '1'", "r=-22 0.0"]],
  ["ts", ".5", ["E invalid timespec string: '.5'", "r=-22 0.0"]],
  ["ts", "1.1000000000", ["r=0 1.1000000000"]],
  ["ts", "1.1000000001", ["E invalid timespec nsec value: '1.1000000001'", "r=-22 0.0"]],
  ["ts", "1.4294967296", ["r=0 1.0"]],
  ["ts", "1.-1", ["E invalid timespec nsec value: '1.-1'", "r=-22 0.0"]],
  ["ts", "-1.5", ["r=0 -1.5"]],
  ["ts", " 1. 5", ["r=0 1.5"]],
  ["ts", "1.5xyz", ["r=0 1.5"]],
  ["ts", "0x10.5", ["E invalid timespec string: '0x10.5'", "r=-22 0.0"]],
  ["ts", "18446744073709551616.1", ["r=0 -1.1"]],
  ["slot", "0,127.0.0.1,19700", ["slot 0 127.0.0.1 19700", "r=0"]],
  ["slot", "14,10.0.0.1,1", ["slot 14 10.0.0.1 1", "r=0"]],
  ["slot", "15,10.0.0.1,1", ["O invalid nr '15' in quorum slot '15,10.0.0.1,1', must be between 0 and 14", "r=-22"]],
  ["slot", "-1,10.0.0.1,1", ["O invalid nr '-1' in quorum slot '-1,10.0.0.1,1', must be between 0 and 14", "r=-22"]],
  ["slot", "0,10.0.0.1,0", ["O invalid ipv4 port '0' in quorum slot '0,10.0.0.1,0', must be between 1 and 65535", "r=-22"]],
  ["slot", "0,10.0.0.1,65535", ["slot 0 10.0.0.1 65535", "r=0"]],
  ["slot", "0,10.0.0.1,65536", ["O invalid ipv4 port '65536' in quorum slot '0,10.0.0.1,65536', must be between 1 and 65535", "r=-22"]],
  ["slot", "0,10.0.0.1,-1", ["O invalid ipv4 port '4294967295' in quorum slot '0,10.0.0.1,-1', must be between 1 and 65535", "r=-22"]],
  ["slot", "0,10.0.0.1,4294967296", ["O invalid ipv4 port '0' in quorum slot '0,10.0.0.1,4294967296', must be between 1 and 65535", "r=-22"]],
  ["slot", "0,10.0.0.1,4294967297", ["slot 0 10.0.0.1 1", "r=0"]],
  ["slot", "0,0.0.0.0,5", ["O invalid ipv4 address '0.0.0.0' in quorum slot '0,0.0.0.0,5'", "r=-22"]],
  ["slot", "0,255.255.255.255,5", ["O invalid ipv4 address '255.255.255.255' in quorum slot '0,255.255.255.255,5'", "r=-22"]],
  ["slot", "0,256.0.0.1,5", ["O invalid ipv4 address '256.0.0.1' in quorum slot '0,256.0.0.1,5'", "r=-22"]],
  ["slot", "0,1.2.3,5", ["slot 0 1.2.0.3 5", "r=0"]],
  ["slot", "0,1.2,5", ["slot 0 1.0.0.2 5", "r=0"]],
  ["slot", "0,16909060,5", ["slot 0 1.2.3.4 5", "r=0"]],
  ["slot", "0,0x7f.1,5", ["slot 0 127.0.0.1 5", "r=0"]],
  ["slot", "0,0177.0.0.1,5", ["slot 0 127.0.0.1 5", "r=0"]],
  ["slot", "0,1.2.3.4.5,5", ["O invalid ipv4 address '1.2.3.4.5' in quorum slot '0,1.2.3.4.5,5'", "r=-22"]],
  ["slot", "0,1.2.3.4 x,5", ["slot 0 1.2.3.4 5", "r=0"]],
  ["slot", "0,1.2.3.4x,5", ["O invalid ipv4 address '1.2.3.4x' in quorum slot '0,1.2.3.4x,5'", "r=-22"]],
  ["slot", "0, 1.2.3.4,5", ["O invalid ipv4 address ' 1.2.3.4' in quorum slot '0, 1.2.3.4,5'", "r=-22"]],
  ["slot", "0,1.2.3.4,5x", ["O extra unparsed trailing characters in quorum slot '0,1.2.3.4,5x'", "r=-22"]],
  ["slot", "0,1.2.3.4,5,", ["O extra unparsed trailing characters in quorum slot '0,1.2.3.4,5,'", "r=-22"]],
  ["slot", "0,1.2.3.4", ["O extra unparsed trailing characters in quorum slot '0,1.2.3.4'", "r=-22"]],
  ["slot", "0,1.2.3.4,", ["O extra unparsed trailing characters in quorum slot '0,1.2.3.4,'", "r=-22"]],
  ["slot", "0", ["O extra unparsed trailing characters in quorum slot '0'", "r=-22"]],
  ["slot", "0,", ["O extra unparsed trailing characters in quorum slot '0,'", "r=-22"]],
  ["slot", ",1.2.3.4,5", ["O extra unparsed trailing characters in quorum slot ',1.2.3.4,5'", "r=-22"]],
  ["slot", "x", ["O extra unparsed trailing characters in quorum slot 'x'", "r=-22"]],
  ["slot", " ", ["O error parsing quorum slot ' ': Success", "r=-22"]],
  ["slot", " 0,1.2.3.4, 5", ["slot 0 1.2.3.4 5", "r=0"]],
  ["slot", "+3,1.2.3.4,+5", ["slot 3 1.2.3.4 5", "r=0"]],
  ["slot", "0,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,5", ["O extra unparsed trailing characters in quorum slot '0,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,5'", "r=-22"]],
  ["slot", "0,1.2.3.4,19700 ", ["O extra unparsed trailing characters in quorum slot '0,1.2.3.4,19700 '", "r=-22"]],
  ["size", "1048576 65536", ["1048576 (64.00 GB)"]],
  ["size", "16777216 4096", ["16777216 (64.00 GB)"]],
  ["size", "1 4096", ["1 (4.00 KB)"]],
  ["size", "0 4096", ["0 (0.00 B)"]],
  ["size", "2048 65536", ["2048 (128.00 MB)"]],
  ["size", "4096 4096", ["4096 (16.00 MB)"]],
  ["size", "288 4096", ["288 (1.12 MB)"]],
  ["size", "294912 4096", ["294912 (1.12 GB)"]],
  ["size", "1234567 4096", ["1234567 (4.71 GB)"]],
  ["size", "9999999 65536", ["9999999 (610.35 GB)"]],
  ["size", "18446744073709551615 1", ["18446744073709551615 (16.00 EB)"]],
  ["size", "18014398509481985 1", ["18014398509481985 (16.00 PB)"]],
  ["size", "16777217 1", ["16777217 (16.00 MB)"]],
  ["size", "1152 1048576", ["1152 (1.12 GB)"]],
  ["size", "1000 1", ["1000 (1000.00 B)"]],
  ["size", "1023 1", ["1023 (1023.00 B)"]],
  ["size", "1024 1", ["1024 (1.00 KB)"]],
  ["size", "1048575 1", ["1048575 (1024.00 KB)"]],
  ["size", "1099511627776 1", ["1099511627776 (1.00 TB)"]],
  ["slot", "", ["O error parsing quorum slot '': Success", "r=-22"]]
];
