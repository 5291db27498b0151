/*
 * Goal: the real BlockDevice reads and writes exactly what it is given on regular files,
 * loop devices and block devices, in buffered and O_DIRECT modes, and reports every misuse
 * and device problem as a clear FsError.
 *
 * Method: sparse temp files in the project's ./tmp directory (on the disk filesystem: tmpfs
 * refuses O_DIRECT), recognisable data written at assorted offsets and read back both through
 * the device and through plain node:fs; O_DIRECT tests skip only if the filesystem refuses
 * O_DIRECT; the loop-device test runs only as root with a working losetup. Every test
 * removes its temp directory and detaches its loop device in finally blocks.
 */

import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { mkdtemp, open, rm, truncate } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import {
  AlignedBufferPool, BOUNCE_MAX_BYTES, openRealBlockDevice, probeSize,
} from "../../src/env/real/blockdev.js";
import type { RealBlockDevice } from "../../src/env/real/blockdev.js";
import { isFsError } from "../../src/util/errno.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** ./tmp of the project (dist/test/unit/ -> project root), else /var/tmp: both on disk. */
function tmpBase(): string {
  const root = fileURLToPath(new URL("../../../", import.meta.url));
  if (fs.existsSync(path.join(root, "package.json"))) {
    const dir = path.join(root, "tmp");
    fs.mkdirSync(dir, { recursive: true });
    return dir;
  }
  return "/var/tmp";
}

/** Runs fn with a sparse file of sizeBytes in a fresh temp dir, removed afterwards. */
async function withFile(sizeBytes: number, fn: (file: string, dir: string) => Promise<void>):
  Promise<void> {
  const dir = await mkdtemp(path.join(tmpBase(), "blockdev-"));
  try {
    const file = path.join(dir, "dev.img");
    await (await open(file, "w")).close();
    await truncate(file, sizeBytes);
    await fn(file, dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function withDevice(file: string, opts: { direct?: boolean; readOnly?: boolean },
  fn: (dev: RealBlockDevice) => Promise<void>): Promise<void> {
  const dev = await openRealBlockDevice(file, opts);
  try {
    await fn(dev);
  } finally {
    await dev.close();
  }
}

/** Opens with O_DIRECT, or skips the test if this filesystem refuses O_DIRECT. */
async function directOrSkip(t: TestContext, file: string): Promise<RealBlockDevice | null> {
  try {
    return await openRealBlockDevice(file, { direct: true });
  } catch (e) {
    if (isFsError(e, "EINVAL")) {
      t.skip(`O_DIRECT refused here: ${(e as Error).message}`);
      return null;
    }
    throw e;
  }
}

/** A recognisable pattern: byte i of block `tag` is (tag * 31 + i) & 0xff. */
function pattern(buf: Buffer, tag: number): Buffer {
  for (let i = 0; i < buf.length; i++) buf[i] = (tag * 31 + i) & 0xff;
  return buf;
}

function fileBytes(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.alloc(length);
    assert.equal(fs.readSync(fd, buf, 0, length, offset), length);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

const offsets = [0, 4 * KiB, 60 * KiB, 64 * KiB, 1 * MiB + 4 * KiB, 63 * MiB];

async function roundTrips(dev: RealBlockDevice, file: string): Promise<void> {
  let tag = 1;
  for (const size of [4 * KiB, 64 * KiB]) {
    for (const offset of offsets) {
      const out = pattern(dev.allocBuffer(size), tag++);
      await dev.write(out, offset);
      const back = dev.allocBuffer(size);
      await dev.read(back, offset);
      assert.ok(back.equals(out), `round trip of ${size} at ${offset}`);
      assert.ok(fileBytes(file, offset, size).equals(out), `file content at ${offset}`);
    }
  }
}

test("buffered: size, alignment and 4/64 KiB round trips at assorted offsets", async () => {
  await withFile(64 * MiB, async (file) => {
    await withDevice(file, {}, async (dev) => {
      assert.equal(dev.sizeBytes, 64 * MiB);
      assert.equal(dev.alignment, 1);
      assert.equal(dev.kind, "file");
      assert.equal(dev.name, file);
      await roundTrips(dev, file);
      const odd = pattern(Buffer.alloc(1000), 9);
      await dev.write(odd, 12345); // buffered I/O takes any offset and length
      const back = Buffer.alloc(1000);
      await dev.read(back, 12345);
      assert.ok(back.equals(odd));
      await dev.flush();
      assert.equal(dev.counters.flushes, 1);
      assert.equal(dev.counters.writes, 13);
      assert.equal(dev.counters.bounced, 0);
      assert.deepEqual(dev.allocBuffer(100), Buffer.alloc(100));
    });
  });
});

test("reading past the end is an EIO short read; writing past it is ENOSPC", async () => {
  await withFile(1 * MiB, async (file) => {
    await withDevice(file, {}, async (dev) => {
      await assert.rejects(dev.read(Buffer.alloc(8 * KiB), 1 * MiB - 4 * KiB),
        (e) => isFsError(e, "EIO") && /short read/.test((e as Error).message));
      await assert.rejects(dev.write(Buffer.alloc(8 * KiB), 1 * MiB - 4 * KiB),
        (e) => isFsError(e, "ENOSPC"));
      // The file shrinks under us: the kernel's short read must surface as EIO too.
      await truncate(file, 512 * KiB);
      await assert.rejects(dev.read(Buffer.alloc(64 * KiB), 500 * KiB),
        (e) => isFsError(e, "EIO") && /got 12288 of 65536/.test((e as Error).message));
      await assert.rejects(dev.read(Buffer.alloc(1), -1), (e) => isFsError(e, "EINVAL"));
    });
  });
});

test("read-only devices refuse writes; closed devices refuse everything", async () => {
  await withFile(1 * MiB, async (file) => {
    await withDevice(file, { readOnly: true }, async (dev) => {
      await assert.rejects(dev.write(Buffer.alloc(4 * KiB), 0), (e) => isFsError(e, "EROFS"));
      await dev.read(Buffer.alloc(4 * KiB), 0);
    });
    const dev = await openRealBlockDevice(file);
    try {
      const pending = dev.write(Buffer.alloc(4 * KiB, 1), 0);
      await dev.close(); // waits for the in-flight write
      await pending;
      await dev.close();
      await assert.rejects(dev.read(Buffer.alloc(1), 0), (e) => isFsError(e, "EBADF"));
      await assert.rejects(dev.flush(), (e) => isFsError(e, "EBADF"));
      assert.equal(fileBytes(file, 0, 1)[0], 1);
    } finally {
      await dev.close(); // idempotent
    }
  });
});

test("opening a directory, a character device or a missing path fails clearly", async () => {
  await withFile(4 * KiB, async (_file, dir) => {
    for (const readOnly of [false, true]) {
      await assert.rejects(openRealBlockDevice(dir, { readOnly }),
        (e) => isFsError(e, "EISDIR") && /is a directory/.test((e as Error).message));
    }
    await assert.rejects(openRealBlockDevice("/dev/null"),
      (e) => isFsError(e, "EINVAL") && /character device/.test((e as Error).message));
    await assert.rejects(openRealBlockDevice(path.join(dir, "missing")),
      (e) => isFsError(e, "ENOENT"));
    const fifo = path.join(dir, "fifo");
    try {
      execFileSync("mkfifo", [fifo]);
    } catch {
      return; // no mkfifo: nothing more to check
    }
    await assert.rejects(openRealBlockDevice(fifo, { readOnly: true }),
      (e) => isFsError(e, "EINVAL") && /FIFO/.test((e as Error).message));
  });
});

test("O_DIRECT: aligned buffers, round trips, coherence with the file", async (t) => {
  await withFile(64 * MiB, async (file) => {
    const dev = await directOrSkip(t, file);
    if (!dev) return;
    try {
      assert.equal(dev.direct, true);
      assert.equal(dev.alignment, 4096);
      await roundTrips(dev, file);
      assert.equal(dev.counters.bounced, 0, "allocBuffer buffers go straight to the kernel");
      await dev.flush();
      await assert.rejects(dev.read(dev.allocBuffer(4 * KiB), 512),
        (e) => isFsError(e, "EINVAL") && /aligned to 4096/.test((e as Error).message));
      await assert.rejects(dev.write(dev.allocBuffer(1000), 0), (e) => isFsError(e, "EINVAL"));
    } finally {
      await dev.close();
    }
  });
});

test("O_DIRECT: unaligned caller buffers go through a bounce buffer", async (t) => {
  await withFile(64 * MiB, async (file) => {
    const dev = await directOrSkip(t, file);
    if (!dev) return;
    try {
      // A plain Buffer, a pooled buffer viewed at a 16-byte offset, and one bigger than the
      // bounce buffer (done in pieces).
      const carrier = dev.allocBuffer(68 * KiB);
      const shifted = carrier.subarray(16, 16 + 64 * KiB);
      const cases: [Buffer, number][] = [
        [Buffer.alloc(4 * KiB), 8 * KiB], [shifted, 128 * KiB],
        [Buffer.alloc(BOUNCE_MAX_BYTES * 2 + 64 * KiB), 4 * MiB],
      ];
      let tag = 40;
      for (const [buf, offset] of cases) {
        pattern(buf, tag++);
        await dev.write(buf, offset);
        const back = Buffer.alloc(buf.length);
        await dev.read(back, offset);
        assert.ok(back.equals(buf), `bounced round trip at ${offset}`);
        assert.ok(fileBytes(file, offset, buf.length).equals(buf));
      }
      assert.equal(dev.counters.bounced, 6);
    } finally {
      await dev.close();
    }
  });
});

test("O_DIRECT: short reads are EIO", async (t) => {
  await withFile(1 * MiB, async (file) => {
    const dev = await directOrSkip(t, file);
    if (!dev) return;
    try {
      await truncate(file, 512 * KiB);
      await assert.rejects(dev.read(dev.allocBuffer(64 * KiB), 480 * KiB),
        (e) => isFsError(e, "EIO") && /short read/.test((e as Error).message));
      await assert.rejects(dev.read(dev.allocBuffer(4 * KiB), 1 * MiB),
        (e) => isFsError(e, "EIO"));
    } finally {
      await dev.close();
    }
  });
});

test("aligned pool: alignment, zeroing, reuse, bounds and double release", () => {
  const pool = new AlignedBufferPool(4096, { chunkBytes: 1 * MiB, maxPooledBytes: 64 * KiB });
  const a = pool.alloc(64 * KiB);
  const b = pool.alloc(100);
  assert.equal(b.length, 100);
  assert.ok(pool.isAligned(a) && pool.isAligned(b));
  assert.equal(b.byteOffset % 4096, 0);
  assert.ok(!pool.isAligned(a.subarray(16)));
  assert.ok(!pool.isAligned(Buffer.alloc(4096)));
  a.fill(0xff);
  pool.release(a);
  const c = pool.alloc(64 * KiB);
  assert.equal(c.byteOffset, a.byteOffset, "a released buffer is reused");
  assert.ok(c.every((x) => x === 0), "reused buffers are zeroed");
  assert.throws(() => pool.release(a), /released twice/);
  pool.release(Buffer.alloc(10)); // foreign: ignored
  pool.release(c);
  pool.release(b); // over maxPooledBytes: dropped, left to the GC
  assert.equal(pool.stats.dropped, 1);
  const big = pool.alloc(2 * MiB); // bigger than a chunk share: its own chunk
  assert.equal(big.byteOffset, 0);
  assert.equal(pool.stats.reuses, 1);
});

test("probeSize finds the size by reading (the no-sysfs fallback)", async () => {
  await withFile(1 * MiB + 512, async (file) => {
    const fh = await open(file, "r");
    try {
      assert.equal(await probeSize(fh.fd), 1 * MiB + 512);
    } finally {
      await fh.close();
    }
  });
});

function losetupAvailable(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync("losetup", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

test("loop device: block device size from sysfs, buffered and O_DIRECT I/O", async (t) => {
  if (!losetupAvailable()) {
    t.skip("needs root and losetup");
    return;
  }
  await withFile(32 * MiB, async (file) => {
    let loop: string;
    try {
      loop = execFileSync("losetup", ["--find", "--show", file], { encoding: "utf8" }).trim();
    } catch (e) {
      t.skip(`losetup could not attach: ${(e as Error).message}`);
      return;
    }
    try {
      await withDevice(loop, {}, async (dev) => {
        assert.equal(dev.kind, "block");
        assert.equal(dev.sizeBytes, 32 * MiB);
        const out = pattern(Buffer.alloc(64 * KiB), 7);
        await dev.write(out, 1 * MiB);
        await dev.flush();
        const fh = await open(loop, "r");
        try {
          assert.equal(await probeSize(fh.fd), 32 * MiB);
        } finally {
          await fh.close();
        }
      });
      await withDevice(loop, { direct: true }, async (dev) => {
        assert.ok(dev.alignment >= 512 && dev.alignment <= 4096);
        const back = dev.allocBuffer(64 * KiB);
        await dev.read(back, 1 * MiB);
        assert.ok(back.equals(pattern(Buffer.alloc(64 * KiB), 7)));
        const out = pattern(dev.allocBuffer(64 * KiB), 8);
        await dev.write(out, 31 * MiB);
        await dev.flush();
        await dev.read(back, 31 * MiB);
        assert.ok(back.equals(out));
        await assert.rejects(dev.read(dev.allocBuffer(64 * KiB), 32 * MiB - 4 * KiB),
          (e) => isFsError(e, "EIO"));
      });
    } finally {
      execFileSync("losetup", ["-d", loop]);
    }
  });
});
