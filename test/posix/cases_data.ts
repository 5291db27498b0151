/*
 * POSIX conformance cases: file data and inode times. Nanosecond timestamps (also before 1970
 * and beyond 2^32 seconds), which operations update mtime/ctime, truncate down and up (the
 * cut-off bytes never come back), sparse files and fallocate mode 0 (holes read as zeros,
 * SEEK_DATA/SEEK_HOLE), O_TMPFILE with linkat, and an unlinked file or directory that is still
 * open.
 *
 * Method: Node's fs writes and reads; utimensat with nanoseconds, O_TMPFILE, lseek
 * SEEK_DATA/SEEK_HOLE and fallocate go through the python helper. Times are read back with
 * bigint stat so nanoseconds are compared exactly; "updated" times are compared with the
 * wall clock after first setting them far in the past.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import { b64, pyErr, pyOk } from "../helpers/posix_py.js";
import { type CaseCtx, errnoOf, expectErrno } from "./target.js";

const NS = 1_000_000_000n;
const OLD = 1_000n * NS;

function setTimes(path: string, atime: bigint, mtime: bigint, nofollow = false): void {
  pyOk({ op: "utime", path, atime: atime.toString(), mtime: mtime.toString(), nofollow });
}

const bstat = (p: string): fs.BigIntStats => fs.lstatSync(p, { bigint: true });

/** A time is "now": within 10 s of the wall clock (the target's clock is this host's). */
function assertRecent(t: bigint, what: string): void {
  const now = BigInt(Date.now()) * 1_000_000n;
  assert.ok(t > now - 10n * NS && t < now + 10n * NS, `${what}: ${t} is not near now ${now}`);
}

/** Nanosecond atime/mtime round trips, negative times and times beyond 2^32 s. */
export async function timestampsExact(ctx: CaseCtx): Promise<void> {
  const f = ctx.p("f");
  fs.writeFileSync(f, "x");
  const cases: [bigint, bigint][] = [
    [1_700_000_000n * NS + 123_456_789n, 1_700_000_001n * NS + 987_654_321n],
    [(1n << 32n) * NS + 1n, (1n << 33n) * NS + 999_999_999n],
    [-1_000_000_000n * NS + 500_000_000n, -1n * NS + 1n],
    [0n, 1n],
  ];
  for (const [a, m] of cases) {
    setTimes(f, a, m);
    const st = bstat(f);
    assert.equal(st.atimeNs, a, `atime ${a}`);
    assert.equal(st.mtimeNs, m, `mtime ${m}`);
  }
  fs.symlinkSync("f", ctx.p("l"));
  setTimes(ctx.p("l"), 5n * NS + 5n, 6n * NS + 6n, true);
  assert.equal(bstat(ctx.p("l")).mtimeNs, 6n * NS + 6n, "lutimes sets the symlink's own time");
  assert.equal(bstat(f).mtimeNs, 1n, "and leaves its target alone");
}

/** Which operations move mtime and ctime of a file and of its directory. */
export async function timestampsUpdated(ctx: CaseCtx): Promise<void> {
  const { p } = ctx;
  const f = p("f");
  fs.writeFileSync(f, "x");
  const stepsOnFile: [string, () => void][] = [
    ["write", () => fs.appendFileSync(f, "y")],
    ["truncate", () => fs.truncateSync(f, 1)],
  ];
  for (const [what, step] of stepsOnFile) {
    setTimes(f, OLD, OLD);
    step();
    assertRecent(bstat(f).mtimeNs, `mtime after ${what}`);
    assertRecent(bstat(f).ctimeNs, `ctime after ${what}`);
  }
  setTimes(f, OLD, OLD);
  assertRecent(bstat(f).ctimeNs, "utimes itself sets ctime");
  fs.chmodSync(f, 0o600);
  assert.equal(bstat(f).mtimeNs, OLD, "chmod leaves mtime");
  dirTimes(ctx);
}

function dirTimes(ctx: CaseCtx): void {
  const { p } = ctx;
  const steps: [string, () => void][] = [
    ["create", () => fs.writeFileSync(p("g"), "")],
    ["rename", () => fs.renameSync(p("g"), p("h"))],
    ["link", () => fs.linkSync(p("h"), p("i"))],
    ["unlink", () => fs.unlinkSync(p("i"))],
    ["mkdir", () => fs.mkdirSync(p("d"))],
    ["rmdir", () => fs.rmdirSync(p("d"))],
  ];
  for (const [what, step] of steps) {
    setTimes(ctx.dir, OLD, OLD);
    step();
    assertRecent(bstat(ctx.dir).mtimeNs, `dir mtime after ${what}`);
    assertRecent(bstat(ctx.dir).ctimeNs, `dir ctime after ${what}`);
  }
  setTimes(p("h"), OLD, OLD);
  fs.linkSync(p("h"), p("h2"));
  assertRecent(bstat(p("h")).ctimeNs, "link sets the target's ctime");
  assert.equal(bstat(p("h")).mtimeNs, OLD, "link leaves the target's mtime");
}

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed) & 0xff || 1;
  return b;
}

const isZero = (b: Buffer): boolean => b.every((x) => x === 0);

/** Truncate shrink and grow: sizes, contents, and bytes past the cut never reappear. */
export async function truncateGrowShrink(ctx: CaseCtx): Promise<void> {
  const f = ctx.p("f");
  const data = pattern(10_000, 7);
  fs.writeFileSync(f, data);
  fs.truncateSync(f, 5000);
  assert.deepEqual(fs.readFileSync(f), data.subarray(0, 5000));
  fs.truncateSync(f, 20_000);
  const grown = fs.readFileSync(f);
  assert.equal(grown.length, 20_000);
  assert.deepEqual(grown.subarray(0, 5000), data.subarray(0, 5000));
  assert.ok(isZero(grown.subarray(5000)), "grown region reads as zeros, not old data");
  fs.writeFileSync(f, Buffer.alloc(8192, 0xff));
  fs.truncateSync(f, 100);
  fs.truncateSync(f, 8192);
  assert.ok(isZero(fs.readFileSync(f).subarray(100)), "the tail of a partial block is zeroed");
  fs.truncateSync(f, 1 << 30);
  assert.equal(fs.statSync(f).size, 1 << 30);
  const fd = fs.openSync(f, "r");
  try {
    const tail = Buffer.alloc(100, 1);
    assert.equal(fs.readSync(fd, tail, 0, 100, (1 << 30) - 100), 100);
    assert.ok(isZero(tail), "a 1 GiB truncate reads zeros at its end");
    expectErrno(() => fs.ftruncateSync(fd, 0), "EINVAL", "ftruncate of a read-only fd");
  } finally {
    fs.closeSync(fd);
  }
  assert.ok(fs.statSync(f).blocks * 512 < 1 << 20, "truncate up allocates nothing");
  fs.truncateSync(f, 0);
  assert.equal(fs.statSync(f).size, 0);
  assert.equal(pyErr({ op: "truncate", path: f, len: -1 }), "EINVAL", "negative length");
  assert.equal(pyErr({ op: "truncate", path: ctx.dir, len: 0 }), "EISDIR", "truncate of a dir");
}

const MiB = 1 << 20;

/** Sparse files: holes read as zeros, use no blocks; SEEK_DATA/SEEK_HOLE; fallocate mode 0. */
export async function sparseFiles(ctx: CaseCtx): Promise<void> {
  const f = ctx.p("sparse");
  const fd = fs.openSync(f, "w+");
  try {
    fs.writeSync(fd, pattern(4096, 3), 0, 4096, MiB);
    fs.fsyncSync(fd);
    const st = fs.fstatSync(fd);
    assert.equal(st.size, MiB + 4096);
    assert.ok(st.blocks * 512 < MiB, `a hole uses no blocks (st_blocks ${st.blocks})`);
    assert.equal(st.blksize, ctx.rule("blksize"), "st_blksize");
    const hole = Buffer.alloc(MiB, 1);
    assert.equal(fs.readSync(fd, hole, 0, MiB, 0), MiB);
    assert.ok(isZero(hole), "the hole reads as zeros");
  } finally {
    fs.closeSync(fd);
  }
  checkSeek(ctx, f);
  pyOk({ op: "fallocate", path: f, mode: 0, off: 64 * 1024, len: 64 * 1024 });
  assert.equal(fs.statSync(f).size, MiB + 4096, "fallocate inside the file keeps its size");
  assert.ok(isZero(fs.readFileSync(f).subarray(0, MiB)), "fallocated blocks read as zeros");
  pyOk({ op: "fallocate", path: f, mode: 0, off: 2 * MiB, len: 4096 });
  assert.equal(fs.statSync(f).size, 2 * MiB + 4096, "fallocate past EOF extends the size");
  assert.ok(isZero(fs.readFileSync(f).subarray(MiB + 4096)), "and the new range reads as zeros");
}

function checkSeek(ctx: CaseCtx, f: string): void {
  const seek = (whence: string, off: number): unknown => {
    const e = pyErr({ op: "seek", path: f, whence, off });
    return e === "ok" ? pyOk({ op: "seek", path: f, whence, off }) : e;
  };
  const end = MiB + 4096;
  if (ctx.rule("seekHole") === "exact") {
    assert.equal(seek("data", 0), MiB, "SEEK_DATA skips the hole");
    assert.equal(seek("hole", 0), 0, "SEEK_HOLE at a hole");
    assert.equal(seek("hole", MiB), end, "the implicit hole at EOF");
  } else {
    assert.equal(seek("data", 0), 0, "generic SEEK_DATA: the whole file is data");
    assert.equal(seek("hole", 0), end, "generic SEEK_HOLE: only EOF");
  }
  assert.equal(seek("data", end), "ENXIO", "SEEK_DATA at EOF");
}

/** O_TMPFILE: an unnamed inode, nlink 0, invisible until linkat; O_EXCL forbids the link. */
export async function tmpfile(ctx: CaseCtx): Promise<void> {
  const { p } = ctx;
  fs.writeFileSync(p("existing"), "");
  const r = pyOk({ op: "tmpfile", dir: ctx.dir, data: b64(Buffer.from("tmpdata")), link: p("linked") }) as
    { nlink: number; names: string[]; nlinkAfter: number };
  assert.equal(r.nlink, 0, "an O_TMPFILE inode has no links");
  assert.deepEqual(r.names, ["existing"], "and no name");
  assert.equal(r.nlinkAfter, 1, "linkat gives it one");
  assert.equal(fs.readFileSync(p("linked"), "utf8"), "tmpdata");
  assert.equal(fs.statSync(p("linked")).mode & 0o177, 0, "created with mode 0600 (minus umask)");
  const excl = pyErr({ op: "tmpfile", dir: ctx.dir, data: "", link: p("excl"), excl: true });
  assert.equal(excl, "ENOENT", "O_EXCL tmpfiles cannot be linked");
  assert.equal(pyErr({ op: "tmpfile", dir: p("existing"), data: "" }), "ENOTDIR");
  pyOk({ op: "tmpfile", dir: ctx.dir, data: b64(Buffer.alloc(100_000, 9)) });
  assert.deepEqual(fs.readdirSync(ctx.dir).sort(), ["existing", "linked"], "unlinked tmpfiles vanish");
}

/** An unlinked file stays readable and writable through an open fd; an rmdir'ed dir is empty. */
export async function unlinkWhileOpen(ctx: CaseCtx): Promise<void> {
  const { p } = ctx;
  const data = pattern(MiB, 11);
  fs.writeFileSync(p("f"), data);
  const fd = fs.openSync(p("f"), "r+");
  try {
    const oldIno = fs.fstatSync(fd).ino;
    fs.unlinkSync(p("f"));
    assert.equal(errnoOf(() => fs.statSync(p("f"))), "ENOENT");
    assert.equal(fs.fstatSync(fd).nlink, 0);
    assert.deepEqual(fs.readFileSync(fd), data, "contents survive the unlink");
    fs.writeSync(fd, Buffer.from("more"), 0, 4, MiB);
    const tail = Buffer.alloc(4);
    fs.readSync(fd, tail, 0, 4, MiB);
    assert.equal(tail.toString(), "more");
    fs.writeFileSync(p("f"), "new");
    assert.notEqual(fs.statSync(p("f")).ino, oldIno, "a new file of the same name is a new inode");
  } finally {
    fs.closeSync(fd);
  }
  fs.mkdirSync(p("d"));
  const dfd = fs.openSync(p("d"), "r");
  try {
    fs.rmdirSync(p("d"));
    assert.equal(fs.fstatSync(dfd).nlink, 0, "a removed directory has no links");
  } finally {
    fs.closeSync(dfd);
  }
  assert.deepEqual(fs.readdirSync(ctx.dir), ["f"]);
}
