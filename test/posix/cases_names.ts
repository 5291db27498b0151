/*
 * POSIX conformance cases: the namespace. Link counts of files and directories, rename over
 * existing files, directories and links, renameat2 NOREPLACE and EXCHANGE, names of 255 bytes
 * and paths near PATH_MAX, symlinks up to 4095 bytes, readdir of many entries while the
 * directory changes, and directory st_size.
 *
 * Method: each case builds a small tree in its own directory with Node's fs (renameat2
 * through the python helper), then compares link counts, inode numbers, errno codes and
 * directory listings with what ext4 gives. Directory st_size is checked under the target's
 * dirSize rule (ext4 blocks, tmpfs 20 bytes per entry, scoutfs the sum of name lengths).
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { pyErr } from "../helpers/posix_py.js";
import { type CaseCtx, errnoOf, expectErrno } from "./target.js";

const nlink = (p: string): number => fs.lstatSync(p).nlink;
const ino = (p: string): number => fs.lstatSync(p).ino;

/** st_size of a directory holding `names` under the target's rule. */
function checkDirSize(ctx: CaseCtx, dir: string, names: string[]): void {
  const st = fs.statSync(dir);
  const rule = ctx.rule("dirSize");
  if (rule === "blocks") {
    assert.ok(st.size > 0 && st.size % st.blksize === 0, `dir size ${st.size} is a multiple of ${st.blksize}`);
  } else if (rule === "bogo20") {
    assert.equal(st.size, 40 + 20 * names.length, "tmpfs dir size");
  } else {
    assert.equal(st.size, names.reduce((s, n) => s + Buffer.byteLength(n), 0), "dir size = sum of names");
  }
}

/** Link counts: hard links, unlink, subdirectories, rename across parents. */
export async function linkCounts(ctx: CaseCtx): Promise<void> {
  const { p } = ctx;
  fs.writeFileSync(p("f"), "data");
  assert.equal(nlink(p("f")), 1);
  fs.linkSync(p("f"), p("g"));
  assert.equal(nlink(p("f")), 2);
  assert.equal(ino(p("f")), ino(p("g")), "a hard link is the same inode");
  fs.unlinkSync(p("f"));
  assert.equal(nlink(p("g")), 1);
  assert.equal(fs.readFileSync(p("g"), "utf8"), "data");
  fs.mkdirSync(p("a"));
  fs.mkdirSync(p("b"));
  assert.equal(nlink(p("a")), 2, "empty dir: . and its entry");
  fs.mkdirSync(p("a", "s1"));
  fs.mkdirSync(p("a", "s2"));
  fs.writeFileSync(p("a", "file"), "");
  assert.equal(nlink(p("a")), 4, "each subdir's .. links the parent; files do not");
  fs.renameSync(p("a", "s1"), p("b", "s1"));
  assert.equal(nlink(p("a")), 3);
  assert.equal(nlink(p("b")), 3);
  assert.equal(ino(p("b", "s1", "..")), ino(p("b")), ".. follows a moved directory");
  fs.rmdirSync(p("a", "s2"));
  assert.equal(nlink(p("a")), 2);
  expectErrno(() => fs.linkSync(p("a"), p("alink")), "EPERM", "hard link to a directory");
  expectErrno(() => fs.linkSync(p("missing"), p("x")), "ENOENT", "link of a missing file");
  expectErrno(() => fs.linkSync(p("g"), p("b")), "EEXIST", "link over an existing name");
  fs.symlinkSync("g", p("sl"));
  assert.equal(nlink(p("sl")), 1);
  checkDirSize(ctx, p("a"), ["file"]);
  checkDirSize(ctx, p("b"), ["s1"]);
  fs.mkdirSync(p("empty"));
  checkDirSize(ctx, p("empty"), []);
}

/** rename over files, directories, hard links of the same inode, and symlinks. */
export async function renameOver(ctx: CaseCtx): Promise<void> {
  const { p } = ctx;
  fs.writeFileSync(p("a"), "A");
  fs.writeFileSync(p("b"), "B");
  const fd = fs.openSync(p("b"), "r");
  fs.renameSync(p("a"), p("b"));
  assert.equal(fs.readFileSync(p("b"), "utf8"), "A");
  assert.equal(fs.readFileSync(fd, "utf8"), "B", "the replaced inode stays readable while open");
  assert.equal(fs.fstatSync(fd).nlink, 0, "the replaced inode has no links left");
  fs.closeSync(fd);
  assert.equal(errnoOf(() => fs.statSync(p("a"))), "ENOENT");
  fs.linkSync(p("b"), p("b2"));
  fs.renameSync(p("b"), p("b2"));
  assert.ok(fs.existsSync(p("b")) && fs.existsSync(p("b2")), "rename between links of one inode does nothing");
  assert.equal(nlink(p("b")), 2);
  fs.symlinkSync("b", p("s"));
  fs.writeFileSync(p("t"), "T");
  fs.renameSync(p("s"), p("t"));
  assert.equal(fs.readlinkSync(p("t")), "b", "a symlink replaces a file");
  renameDirs(ctx);
}

function renameDirs(ctx: CaseCtx): void {
  const { p } = ctx;
  fs.mkdirSync(p("d1"));
  fs.mkdirSync(p("d2"));
  fs.mkdirSync(p("full"));
  fs.writeFileSync(p("full", "x"), "");
  fs.writeFileSync(p("file"), "");
  fs.writeFileSync(p("d1", "inside"), "");
  const d1 = ino(p("d1"));
  fs.renameSync(p("d1"), p("d2"));
  assert.equal(ino(p("d2")), d1, "dir over an empty dir");
  assert.equal(nlink(ctx.dir), 2 + 2, "parent lost one subdir (d2, full left)");
  expectErrno(() => fs.renameSync(p("d2"), p("full")), "ENOTEMPTY", "dir over a non-empty dir");
  expectErrno(() => fs.renameSync(p("file"), p("d2")), "EISDIR", "file over a dir");
  expectErrno(() => fs.renameSync(p("d2"), p("file")), "ENOTDIR", "dir over a file");
  fs.mkdirSync(p("d2", "sub"));
  expectErrno(() => fs.renameSync(p("d2"), p("d2", "sub", "loop")), "EINVAL", "dir into its own subtree");
  expectErrno(() => fs.renameSync(p("nothing"), p("x")), "ENOENT", "missing source");
  fs.renameSync(p("d2", "inside"), p("full", "moved"));
  assert.deepEqual(fs.readdirSync(p("full")).sort(), ["moved", "x"]);
}

const NOREPLACE = 1, EXCHANGE = 2;

/** renameat2: NOREPLACE refuses an existing target; EXCHANGE swaps two names atomically. */
export async function renameat2Flags(ctx: CaseCtx): Promise<void> {
  const { p } = ctx;
  fs.writeFileSync(p("a"), "A");
  fs.writeFileSync(p("b"), "B");
  fs.mkdirSync(p("d"));
  fs.mkdirSync(p("d", "sub"));
  fs.mkdirSync(p("e"));
  const r2 = (o: string, n: string, flags: number): string => pyErr({ op: "renameat2", old: o, new: n, flags });
  assert.equal(r2(p("a"), p("b"), NOREPLACE), "EEXIST");
  assert.equal(r2(p("a"), p("c"), NOREPLACE), "ok");
  assert.equal(fs.readFileSync(p("c"), "utf8"), "A");
  assert.equal(r2(p("c"), p("b"), EXCHANGE), "ok");
  assert.equal(fs.readFileSync(p("c"), "utf8"), "B");
  assert.equal(fs.readFileSync(p("b"), "utf8"), "A");
  assert.equal(r2(p("c"), p("nope"), EXCHANGE), "ENOENT", "exchange needs both names");
  assert.equal(r2(p("c"), p("x"), EXCHANGE | NOREPLACE), "EINVAL", "flags are exclusive");
  const dIno = ino(p("d")), bIno = ino(p("b"));
  assert.equal(r2(p("b"), p("d"), EXCHANGE), "ok", "file and dir swap");
  assert.equal(ino(p("b")), dIno);
  assert.equal(ino(p("d")), bIno);
  assert.equal(r2(p("b"), p("e", "b"), 0), "ok");
  assert.equal(r2(p("e", "b"), p("a"), EXCHANGE), "ENOENT", "a was renamed away");
  fs.writeFileSync(p("a"), "");
  assert.equal(r2(p("e", "b"), p("a"), EXCHANGE), "ok", "dir and file swap across parents");
  assert.equal(nlink(p("e")), 2, "e lost its subdir");
  assert.equal(nlink(ctx.dir), 2 + 2, "root holds a (now the dir) and e");
  assert.equal(ino(p("a", "..")), ino(ctx.dir), ".. follows the exchange");
}

/** Names of 255 bytes (ASCII and multi-byte UTF-8) work; 256 gives ENAMETOOLONG. */
export async function nameLengths(ctx: CaseCtx): Promise<void> {
  const { p } = ctx;
  const ascii = "n".repeat(255);
  const utf8 = "€".repeat(85);
  assert.equal(Buffer.byteLength(utf8), 255);
  for (const n of [ascii, utf8]) {
    fs.writeFileSync(p(n), n);
    assert.equal(fs.readFileSync(p(n), "utf8"), n);
  }
  for (const n of ["d".repeat(255), `${"é".repeat(127)}d`]) {
    assert.equal(Buffer.byteLength(n), 255);
    fs.mkdirSync(p(n));
    fs.writeFileSync(p(n, "inside"), "");
  }
  const names = fs.readdirSync(ctx.dir);
  assert.ok(names.includes(ascii) && names.includes(utf8), "readdir returns the long names");
  for (const bad of ["n".repeat(256), `${utf8}x`]) {
    expectErrno(() => fs.writeFileSync(p(bad), ""), "ENAMETOOLONG", "256-byte name");
    expectErrno(() => fs.mkdirSync(p(bad)), "ENAMETOOLONG", "256-byte dir name");
    expectErrno(() => fs.statSync(p(bad)), "ENAMETOOLONG", "lookup of a 256-byte name");
    expectErrno(() => fs.renameSync(p(ascii), p(bad)), "ENAMETOOLONG", "rename to a 256-byte name");
  }
  fs.renameSync(p(ascii), p(`${"r".repeat(254)}`));
  expectErrno(() => fs.symlinkSync("t", p("n".repeat(256))), "ENAMETOOLONG", "symlink name");
}

/** Absolute paths of exactly 4095 bytes resolve; 4096 bytes give ENAMETOOLONG. */
export async function pathMax(ctx: CaseCtx): Promise<void> {
  let dir = ctx.dir;
  const want = 4095;
  const left = (): number => want - Buffer.byteLength(dir) - 1;
  while (left() > 255) {
    dir = path.join(dir, "d".repeat(Math.min(200, left() - 2)));
    fs.mkdirSync(dir);
  }
  const leaf = path.join(dir, "f".repeat(left()));
  assert.equal(Buffer.byteLength(leaf), 4095);
  fs.writeFileSync(leaf, "deep");
  assert.equal(fs.readFileSync(leaf, "utf8"), "deep");
  assert.equal(fs.statSync(leaf).size, 4);
  expectErrno(() => fs.statSync(`${leaf}g`), "ENAMETOOLONG", "4096-byte path");
  expectErrno(() => fs.statSync(`${dir}/../${path.basename(dir)}/${path.basename(leaf)}`),
    "ENAMETOOLONG", "the same file by a longer path");
  fs.unlinkSync(leaf);
}

/** Symlinks: targets up to 4095 bytes, st_size = target length, loops, dangling links. */
export async function symlinks(ctx: CaseCtx): Promise<void> {
  const { p } = ctx;
  for (const len of [1, 59, 60, 61, 255, 256, 4000, 4095]) {
    const target = "t".repeat(len);
    fs.symlinkSync(target, p(`l${len}`));
    assert.equal(fs.readlinkSync(p(`l${len}`)), target, `readlink of a ${len}-byte target`);
    assert.equal(fs.lstatSync(p(`l${len}`)).size, len, "symlink st_size is the target length");
  }
  expectErrno(() => fs.symlinkSync("t".repeat(4096), p("l4096")), "ENAMETOOLONG", "4096-byte target");
  fs.writeFileSync(p("real"), "R");
  fs.symlinkSync("real", p("rel"));
  fs.symlinkSync(p("real"), p("abs"));
  assert.equal(fs.readFileSync(p("rel"), "utf8"), "R");
  assert.equal(fs.readFileSync(p("abs"), "utf8"), "R");
  assert.ok(fs.lstatSync(p("rel")).isSymbolicLink());
  fs.symlinkSync("loop2", p("loop1"));
  fs.symlinkSync("loop1", p("loop2"));
  expectErrno(() => fs.statSync(p("loop1")), "ELOOP", "symlink loop");
  fs.symlinkSync("missing", p("dangling"));
  expectErrno(() => fs.statSync(p("dangling")), "ENOENT", "dangling symlink");
  expectErrno(() => fs.readlinkSync(p("real")), "EINVAL", "readlink of a regular file");
  expectErrno(() => fs.symlinkSync("x", p("real")), "EEXIST", "symlink over a file");
}

/** Readdir of 2,000 entries: each exactly once, also while the directory changes. */
export async function readdirMany(ctx: CaseCtx): Promise<void> {
  const dir = ctx.p("many");
  fs.mkdirSync(dir);
  const names = Array.from({ length: 2000 }, (_, i) => `entry-${i}-${"x".repeat(i % 40)}`);
  for (const n of names) fs.writeFileSync(path.join(dir, n), "");
  assert.deepEqual(fs.readdirSync(dir).sort(), [...names].sort(), "readdir lists every entry");
  checkDirSize(ctx, dir, names);
  const touched = new Set<string>();
  const seen = new Map<string, number>();
  const d = fs.opendirSync(dir, { bufferSize: 32 });
  try {
    for (let e = d.readSync(), i = 0; e !== null; e = d.readSync(), i++) {
      seen.set(e.name, (seen.get(e.name) ?? 0) + 1);
      if (i % 50 === 0) churn(dir, names, i, touched);
    }
  } finally {
    d.closeSync();
  }
  const dups = [...seen].filter(([, c]) => c > 1).map(([n]) => n);
  assert.deepEqual(dups, [], "no entry is returned twice");
  const missed = names.filter((n) => !touched.has(n) && !seen.has(n));
  assert.deepEqual(missed, [], "every entry that stayed untouched is returned");
}

/** Unlink two existing entries and create two new ones, remembering what changed. */
function churn(dir: string, names: string[], i: number, touched: Set<string>): void {
  for (const victim of [names[(i * 7 + 3) % names.length]!, names[(i * 13 + 1000) % names.length]!]) {
    if (touched.has(victim)) continue;
    touched.add(victim);
    fs.unlinkSync(path.join(dir, victim));
  }
  for (const k of [0, 1]) fs.writeFileSync(path.join(dir, `new-${i}-${k}`), "");
}
