/*
 * Goal: prove the fsx-style checker (fsx.ts) runs cleanly on the reference filesystems, ext4
 * and tmpfs, exercising every operation kind, and that it really catches corruption, so that
 * pointing it at the scoutfs mount is meaningful.
 *
 * Method: a fixed-seed run of 3,000 ops (256 KiB max file size) on an ext4 loop mount and on
 * a tmpfs (both made here and always removed in finally); each run must report a non-zero
 * count for every operation the target supports and name the fallocate modes it refuses
 * (tmpfs has no ZERO_RANGE). Then a run on tmpfs whose afterOp hook flips one byte of the
 * file behind the checker's back (or grows it by one byte when empty) must fail with an
 * FsxMismatch that names the seed and the op, and carries the op log tail.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import { test } from "node:test";
import { pythonPath } from "../helpers/posix_py.js";
import { mountUnsupported, withExt4, withTmpfs } from "../helpers/posix_mounts.js";
import { FsxMismatch, type FsxOp, runFsx } from "./fsx.js";

const noPython = pythonPath() === null ? "needs python3 (fallocate and mmap)" : null;

function assertExercised(counts: Record<FsxOp, number>, unsupported: Partial<Record<FsxOp, string>>): void {
  for (const [op, n] of Object.entries(counts) as [FsxOp, number][]) {
    if (unsupported[op] === undefined) assert.ok(n > 0, `${op} was exercised`);
  }
}

test("fsx on ext4: every operation, no mismatch", { skip: mountUnsupported("ext4") ?? noPython ?? false },
  async (t) => {
    await withExt4(64, async (m) => {
      const r = await runFsx({ dir: m.mnt, ops: 3000, seed: 4242 });
      for (const l of r.lines) t.diagnostic(l);
      assert.deepEqual(r.unsupported, {}, "ext4 supports every fallocate mode");
      assertExercised(r.counts, r.unsupported);
    });
  });

test("fsx on tmpfs: every operation, ZERO_RANGE reported unsupported", {
  skip: mountUnsupported("tmpfs") ?? noPython ?? false,
}, async (t) => {
  await withTmpfs(64, async (mnt) => {
    const r = await runFsx({ dir: mnt, ops: 3000, seed: 777 });
    for (const l of r.lines) t.diagnostic(l);
    assert.deepEqual(r.unsupported, { zero_range: "EOPNOTSUPP" });
    assertExercised(r.counts, r.unsupported);
  });
});

/** Change one byte of the file (or append one) through a separate fd. */
function tamper(file: string): void {
  const fd = fs.openSync(file, "r+");
  try {
    const size = fs.fstatSync(fd).size;
    const b = Buffer.alloc(1);
    if (size > 0) fs.readSync(fd, b, 0, 1, size >> 1);
    b[0] = (b[0]! + 1) & 0xff;
    fs.writeSync(fd, b, 0, 1, size > 0 ? size >> 1 : 0);
  } finally {
    fs.closeSync(fd);
  }
}

test("fsx notices a byte changed behind its back", { skip: mountUnsupported("tmpfs") ?? noPython ?? false },
  async () => {
    await withTmpfs(64, async (mnt) => {
      const afterOp = (i: number, file: string): void => { if (i === 120) tamper(file); };
      await assert.rejects(runFsx({ dir: mnt, ops: 400, seed: 99, afterOp, verifyEvery: 50 }), (e: unknown) => {
        assert.ok(e instanceof FsxMismatch, String(e));
        assert.equal(e.seed, 99);
        assert.ok(e.opIndex >= 120 && e.opIndex <= 150, `caught at op ${e.opIndex}`);
        assert.match(e.message, /seed 99.*\n.*replay: node .*fsx\.js .* --seed 99/);
        assert.ok(e.tail.length > 0);
        return true;
      });
    });
  });
