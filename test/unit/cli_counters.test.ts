/*
 * Goal: `scoutfs counters` (src/cli/cmd_counters.ts) prints what upstream's counters.c
 * prints, byte for byte: one aligned column sorted by name, the -t table packed by
 * upstream's row search, its error lines for unreadable directories and counter files, and
 * argp's usage errors.
 *
 * Method: formatCounters() against goldens worked out by hand from counters.c's algorithm
 * (the table case is traced step by step in a comment); the whole command through runCli()
 * on a temporary directory of counter files shaped like sysfs ("value\n"), with COLUMNS set
 * for -t (test output is a pipe, not a terminal).
 */

import assert from "node:assert/strict";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { countersCommand, formatCounters } from "../../src/cli/cmd_counters.js";
import { type CliIo, runCli } from "../../src/cli/command.js";

const SEVEN = [
  { name: "g", value: "7" }, { name: "ccc", value: "333" }, { name: "a", value: "1" },
  { name: "e", value: "55555" }, { name: "bb", value: "22" }, { name: "ff", value: "6" },
  { name: "dddd", value: "4" },
];

test("one column: sorted, names padded to the longest, values right-aligned", () => {
  assert.equal(formatCounters(SEVEN, null), [
    "a        1", "bb      22", "ccc    333", "dddd     4", "e    55555", "ff       6",
    "g        7", ""].join("\n"));
  assert.equal(formatCounters([], null), "");
  assert.equal(formatCounters([], 80), "");
});

test("names sort bytewise (strcmp), not by locale", () => {
  const out = formatCounters([{ name: "b", value: "1" }, { name: "B", value: "2" },
    { name: "_a", value: "3" }, { name: "a", value: "4" }], null);
  assert.equal(out, "B  2\n_a 3\na  4\nb  1\n");
});

/*
 * Width 30, the seven counters above (name/value widths in parentheses):
 *   rows 4: [a bb ccc dddd](4/3) [e ff g](2/5): room 30-8-2-8 = 12, fits;
 *   rows 2: [a bb](2/2) [ccc dddd](4/3) [e ff](2/5) [g](1/1): 30-5-10-10-5 = 0, fits;
 *   rows 1: a, bb, ccc, dddd use 3+7+9+8 = 27 (with separators), e needs 9 more: too wide;
 *   so 2 rows of 4 columns, each row exactly 30 characters at most.
 */
test("-t: the fewest rows that fit the width, filled column by column", () => {
  assert.equal(formatCounters(SEVEN, 30),
    "a   1  ccc  333  e  55555  g 7\n" +
    "bb 22  dddd   4  ff     6\n");
  // wide enough for one row: every counter side by side
  assert.equal(formatCounters(SEVEN, 200),
    "a 1  bb 22  ccc 333  dddd 4  e 55555  ff 6  g 7\n");
  // narrower than a single column: one column, as without -t
  assert.equal(formatCounters(SEVEN, 5), formatCounters(SEVEN, null));
});

function capture(): CliIo & { stdout: string; stderr: string } {
  const io = {
    stdout: "", stderr: "",
    out(t: string): void { io.stdout += t; },
    err(t: string): void { io.stderr += t; },
  };
  return io;
}

async function counterDir(files: Record<string, string>): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "counters-"));
  await fsp.mkdir(path.join(dir, "counters"));
  for (const [name, content] of Object.entries(files)) {
    await fsp.writeFile(path.join(dir, "counters", name), content);
  }
  return dir;
}

async function run(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const io = capture();
  const code = await runCli(["counters", ...argv], io, [countersCommand]);
  return { code, stdout: io.stdout, stderr: io.stderr };
}

test("the command reads SYSFS-DIR/counters/* and prints them", async () => {
  const dir = await counterDir({ lock_alloc: "12\n", btree_read_error: "0\n",
    alloc_moved: "18446744073709551615\n" });
  const saved = process.env.COLUMNS;
  try {
    assert.deepEqual(await run([dir]), { code: 0, stderr: "", stdout:
      "alloc_moved      18446744073709551615\n" +
      "btree_read_error                    0\n" +
      "lock_alloc                         12\n" });
    delete process.env.COLUMNS;
    assert.equal((await run(["-t", dir])).stdout, (await run([dir])).stdout,
      "no terminal and no COLUMNS: one column, as upstream");
    process.env.COLUMNS = "120";
    assert.deepEqual(await run(["--table", dir]), { code: 0, stderr: "", stdout:
      "alloc_moved 18446744073709551615  btree_read_error 0  lock_alloc 12\n" });
  } finally {
    if (saved === undefined) delete process.env.COLUMNS;
    else process.env.COLUMNS = saved;
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("an empty counters directory prints nothing", async () => {
  const dir = await counterDir({});
  try {
    assert.deepEqual(await run([dir]), { code: 0, stdout: "", stderr: "" });
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("errors: missing directory, malformed counter files", async () => {
  const missing = path.join(os.tmpdir(), "no-such-scoutfs-dir");
  assert.deepEqual(await run([missing]), { code: 1, stdout: "", stderr:
    `failed to open sysfs counter dir '${missing}/counters': No such file or directory (2)\n` +
    "scoutfs: counters failed: No such file or directory (2)\n" });
  const cases: [string, string, number][] = [
    ["no newline", "5", 1], ["empty", "", 0], ["just a newline", "\n", 1],
    ["too long", `${"9".repeat(24)}\n`, 25],
  ];
  for (const [what, content, n] of cases) {
    const dir = await counterDir({ good: "1\n", bad: content });
    try {
      assert.deepEqual(await run([dir]), { code: 1, stdout: "", stderr:
        `counter file ${dir}/counters/bad read returned ${n}\n` +
        "scoutfs: counters failed: Input/output error (5)\n" }, what);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }
  const dir = await counterDir({});
  try {
    await fsp.mkdir(path.join(dir, "counters", "sub"));
    assert.equal((await run([dir])).stderr,
      `counter file ${dir}/counters/sub read returned -1\n` +
      "scoutfs: counters failed: Input/output error (5)\n");
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("argp: missing and extra arguments, unknown options", async () => {
  const tryLine = "Try `counters --help' or `counters --usage' for more information.\n";
  assert.deepEqual(await run([]), { code: 64, stdout: "",
    stderr: `counters: no sysfs path argument given\n${tryLine}` });
  assert.deepEqual(await run(["a", "b"]), { code: 64, stdout: "",
    stderr: `counters: more than one argument given\n${tryLine}` });
  assert.deepEqual(await run(["-x", "a"]), { code: 64, stdout: "",
    stderr: `counters: invalid option -- 'x'\n${tryLine}` });
  const help = await run(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: counters \[OPTION\.\.\.\] SYSFS-DIR\n/);
  assert.match(help.stdout, /-t, --table +Output in table format\n/);
});
