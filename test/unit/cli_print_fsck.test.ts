/*
 * Goal: `scoutfs print` and `scoutfs fsck` work on real device files and fail clearly: fsck
 * exits 0 on a fresh volume and 1 (with a precise line) after a metadata block is damaged;
 * print dumps every structure, refuses the data device and a missing file; argument errors
 * exit 64 with argp's message.
 *
 * Method: makeVolume() on sparse temp files (under /var/tmp, on disk), the commands run with
 * captured output, damage made by writing bytes into the file directly.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { mkdtemp, open, rm, truncate } from "node:fs/promises";
import path from "node:path";
import { fsckCommand } from "../../src/cli/fsck.js";
import { printCommand } from "../../src/cli/print.js";
import type { CliIo } from "../../src/cli/command.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { openRealBlockDevice } from "../../src/env/real/blockdev.js";
import { mkfsParams } from "../helpers/volume.js";
import { SimDisk } from "../../src/sim/disk.js";

interface Captured extends CliIo {
  stdout: string;
  stderr: string;
}

function capture(): Captured {
  const c: Captured = { stdout: "", stderr: "",
    out: (t) => { c.stdout += t; }, err: (t) => { c.stderr += t; } };
  return c;
}

async function withVolume(fn: (meta: string, data: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(path.join("/var/tmp", "scoutfs-cli-"));
  try {
    const meta = path.join(dir, "meta");
    const data = path.join(dir, "data");
    await (await open(meta, "w")).close();
    await truncate(meta, 256 * 1024 * 1024);
    await (await open(data, "w")).close();
    await truncate(data, 1024 * 1024 * 1024);
    const m = await openRealBlockDevice(meta);
    const d = await openRealBlockDevice(data);
    try {
      await makeVolume({ ...mkfsParams(new SimDisk("x", 1), new SimDisk("y", 1)), meta: m, data: d,
        totalMetaBlocks: 4096, totalDataBlocks: 262144 });
    } finally {
      await m.close();
      await d.close();
    }
    await fn(meta, data);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test("fsck: clean volume exits 0, damaged block exits 1 with a precise finding", async () => {
  await withVolume(async (meta, data) => {
    let io = capture();
    assert.equal(await fsckCommand.run(["fsck", meta, data], io), 0);
    assert.match(io.stdout, /no problems found/);
    // damage the fs_root leaf: 64 KiB block 3 (mkfs allocates it first after the list block)
    const fh = await open(meta, "r+");
    await fh.write(Buffer.from([0xde, 0xad]), 0, 2, 3 * 65536 + 1000);
    await fh.close();
    io = capture();
    assert.equal(await fsckCommand.run(["fsck", meta, data], io), 1);
    assert.match(io.stdout, /problem: fs_root btree: .*block 3/);
    assert.match(io.stdout, /problems? found/);
  });
});

test("print: dumps the super, quorum blocks and btrees; refuses the data device", async () => {
  await withVolume(async (meta, data) => {
    let io = capture();
    assert.equal(await printCommand.run(["print", meta], io), 0);
    assert.match(io.stdout, /^super blkno 16\n/);
    assert.match(io.stdout, /quorum blkno 31 \(slot 14\)/);
    assert.match(io.stdout, /fs_root btree blkno 3\n/);
    assert.match(io.stdout, /16\.1\.4\.0\.0\.0 seq 1/);
    assert.match(io.stdout, /mode 040755/);
    assert.match(io.stdout, /free extent: blkno 64 len/);
    const full = io.stdout.length;
    io = capture();
    assert.equal(await printCommand.run(["print", "-S", meta], io), 0);
    assert.ok(io.stdout.length < full, "-S skips the allocator items");
    io = capture();
    assert.ok(await printCommand.run(["print", data], io) < 0);
    io = capture();
    assert.ok(await printCommand.run(["print", `${meta}.missing`], io) < 0);
    assert.match(io.stderr, /failed to open '.*missing': No such file or directory \(2\)/);
  });
});

test("print and fsck argument errors exit 64 with argp's message", async () => {
  let io = capture();
  assert.equal(await printCommand.run(["print"], io), 64);
  assert.match(io.stderr, /^print: no metadata device argument given\nTry `print --help'/);
  io = capture();
  assert.equal(await fsckCommand.run(["fsck", "a"], io), 64);
  assert.match(io.stderr, /fsck: no data device argument given/);
  io = capture();
  assert.equal(await fsckCommand.run(["fsck", "a", "b", "c"], io), 64);
  io = capture();
  assert.equal(await printCommand.run(["print", "--help"], io), 0);
  assert.match(io.stdout, /skip-likely-huge/);
});
