/*
 * Goal: FaultDevice injects exactly the faults it is armed with (read, write and flush
 * errors, corrupt-on-read, lost and misdirected writes), only in the chosen byte range, with
 * skip/times/probability honoured, and counts what it saw and did.
 *
 * Method: wrap a SimDisk (pure, no files), arm one rule at a time, and check both what the
 * caller sees and what the underlying disk holds afterwards; probabilistic rules use a fixed
 * SimRandom so every run is identical.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { FaultDevice } from "../../src/env/fault/faultdev.js";
import { SimDisk } from "../../src/sim/disk.js";
import { SimRandom } from "../../src/sim/random.js";
import { isFsError } from "../../src/util/errno.js";

const KiB = 1024;

async function setup(random?: SimRandom): Promise<{ disk: SimDisk; dev: FaultDevice }> {
  const disk = new SimDisk("d", 256 * KiB);
  for (let i = 0; i < 64; i++) await disk.write(Buffer.alloc(4 * KiB, i), i * 4 * KiB);
  await disk.flush();
  return { disk, dev: new FaultDevice(disk, random) };
}

async function readAt(dev: FaultDevice, offset: number, length = 4 * KiB): Promise<Buffer> {
  const buf = dev.allocBuffer(length);
  await dev.read(buf, offset);
  return buf;
}

test("passes I/O through unchanged when nothing is armed", async () => {
  const { disk, dev } = await setup();
  assert.equal(dev.name, "d");
  assert.equal(dev.sizeBytes, 256 * KiB);
  assert.equal(dev.alignment, 1);
  await dev.write(Buffer.alloc(4 * KiB, 0xee), 0);
  await dev.flush();
  assert.equal((await readAt(dev, 0))[0], 0xee);
  assert.equal(disk.readDurable(0, 1)[0], 0xee);
  assert.deepEqual(dev.counters, { reads: 1, writes: 1, flushes: 1, readErrors: 0,
    writeErrors: 0, flushErrors: 0, corruptedReads: 0, droppedWrites: 0, misdirectedWrites: 0 });
});

test("failReads fails only reads overlapping the range, skip and times honoured", async () => {
  const { dev } = await setup();
  const h = dev.failReads({ from: 8 * KiB, to: 12 * KiB, skip: 1, times: 2 });
  assert.equal((await readAt(dev, 0))[0], 0); // outside the range
  assert.equal((await readAt(dev, 8 * KiB))[0], 2); // skipped
  await assert.rejects(readAt(dev, 4 * KiB, 8 * KiB), (e) => isFsError(e, "EIO"));
  await assert.rejects(readAt(dev, 8 * KiB), (e) => isFsError(e, "EIO"));
  assert.equal(h.hits, 2);
  assert.equal(h.armed, false);
  assert.equal((await readAt(dev, 8 * KiB))[0], 2);
  assert.equal(dev.counters.readErrors, 2);
  assert.equal(dev.counters.reads, 5);
});

test("failWrites fails the write and leaves the device unchanged; disarm stops it", async () => {
  const { disk, dev } = await setup();
  const h = dev.failWrites({ from: 0, to: 4 * KiB });
  await assert.rejects(dev.write(Buffer.alloc(4 * KiB, 0xff), 0), (e) => isFsError(e, "EIO"));
  assert.equal((await readAt(dev, 0))[0], 0);
  assert.equal(disk.unflushedWrites(), 0);
  await dev.write(Buffer.alloc(4 * KiB, 0xff), 4 * KiB);
  h.disarm();
  await dev.write(Buffer.alloc(4 * KiB, 0xff), 0);
  assert.equal((await readAt(dev, 0))[0], 0xff);
  assert.equal(dev.counters.writeErrors, 1);
});

test("failFlushes fails the flush and nothing becomes durable", async () => {
  const { disk, dev } = await setup();
  dev.failFlushes({ times: 1 });
  await dev.write(Buffer.alloc(4 * KiB, 0xaa), 0);
  await assert.rejects(dev.flush(), (e) => isFsError(e, "EIO"));
  assert.equal(disk.readDurable(0, 1)[0], 0);
  await dev.flush();
  assert.equal(disk.readDurable(0, 1)[0], 0xaa);
  assert.equal(dev.counters.flushErrors, 1);
});

test("corruptReads alters one returned byte in the range, never the stored data", async () => {
  const { disk, dev } = await setup();
  dev.corruptReads({ from: 4 * KiB + 10, to: 4 * KiB + 20, xor: 0x01, times: 1 });
  const buf = await readAt(dev, 0, 16 * KiB);
  const diffs = [...buf.keys()].filter((i) => buf[i] !== Math.floor(i / (4 * KiB)));
  assert.deepEqual(diffs, [4 * KiB + 10]);
  assert.equal(buf[4 * KiB + 10], 1 ^ 0x01);
  assert.equal(disk.readDurable(4 * KiB + 10, 1)[0], 1);
  assert.equal((await readAt(dev, 4 * KiB))[10], 1, "a re-read is clean (transient fault)");
  assert.equal(dev.counters.corruptedReads, 1);
});

test("corruptReads with pick random stays in the range and replays per seed", async () => {
  const positions = async (seed: number): Promise<number[]> => {
    const { dev } = await setup(new SimRandom(seed));
    dev.corruptReads({ from: 1000, to: 3000, pick: "random" });
    const out: number[] = [];
    for (let i = 0; i < 20; i++) {
      const buf = await readAt(dev, 0);
      const at = buf.findIndex((b) => b !== 0);
      assert.ok(at >= 1000 && at < 3000, `corrupted byte at ${at}`);
      out.push(at);
    }
    return out;
  };
  const a = await positions(1);
  assert.deepEqual(a, await positions(1));
  assert.ok(new Set(a).size > 1);
});

test("dropWrites acknowledges but loses the write", async () => {
  const { disk, dev } = await setup();
  dev.dropWrites({ times: 1 });
  await dev.write(Buffer.alloc(4 * KiB, 0xcc), 0);
  await dev.write(Buffer.alloc(4 * KiB, 0xdd), 4 * KiB);
  await dev.flush();
  assert.equal(disk.readDurable(0, 1)[0], 0);
  assert.equal(disk.readDurable(4 * KiB, 1)[0], 0xdd);
  assert.equal(dev.counters.droppedWrites, 1);
});

test("misdirectWrites lands the write deltaBytes away; off the device it is lost", async () => {
  const { disk, dev } = await setup();
  const h = dev.misdirectWrites({ from: 0, to: 8 * KiB, deltaBytes: 64 * KiB, times: 1 });
  await dev.write(Buffer.alloc(4 * KiB, 0x99), 4 * KiB);
  assert.equal(disk.readDurable(4 * KiB, 1)[0], 1);
  assert.equal((await readAt(dev, 68 * KiB))[0], 0x99);
  assert.equal(h.hits, 1);
  dev.misdirectWrites({ deltaBytes: -64 * KiB });
  await dev.write(Buffer.alloc(4 * KiB, 0x98), 8 * KiB); // target -56 KiB: off the device
  assert.equal((await readAt(dev, 8 * KiB))[0], 2);
  assert.equal(dev.counters.misdirectedWrites, 2);
  assert.throws(() => dev.misdirectWrites({ deltaBytes: 0 }));
});

test("probability needs a Random and then replays exactly per seed", async () => {
  const { dev } = await setup();
  assert.throws(() => dev.failReads({ probability: 0.5 }));
  const pattern = async (seed: number): Promise<boolean[]> => {
    const { dev: d } = await setup(new SimRandom(seed));
    d.failReads({ probability: 0.5 });
    const out: boolean[] = [];
    for (let i = 0; i < 40; i++) out.push(await readAt(d, 0).then(() => true, () => false));
    return out;
  };
  const p = await pattern(4);
  assert.deepEqual(p, await pattern(4));
  assert.ok(p.includes(true) && p.includes(false));
});

test("clear disarms every rule", async () => {
  const { dev } = await setup();
  const handles = [dev.failReads(), dev.failWrites(), dev.failFlushes(), dev.dropWrites()];
  dev.clear();
  assert.ok(handles.every((h) => !h.armed));
  await readAt(dev, 0);
  await dev.write(Buffer.alloc(4 * KiB, 1), 0);
  await dev.flush();
  assert.equal((await readAt(dev, 0))[0], 1);
});

test("wraps errors of the inner device unchanged", async () => {
  const { dev } = await setup();
  await assert.rejects(readAt(dev, 256 * KiB), (e) => isFsError(e, "EIO"));
  await dev.close();
  await assert.rejects(readAt(dev, 0), (e) => isFsError(e, "EBADF"));
});
