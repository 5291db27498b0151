/*
 * Goal: SimDisk models a disk with a volatile write cache exactly as RELIABILITY.md's device
 * fault model says (flushed writes persist; unflushed ones may be lost, reordered or torn at
 * sector granularity), stays sparse, injects the faults it promises, and RecordingDisk
 * rebuilds the device state after every prefix of a recorded workload.
 *
 * Method: small workloads with recognisable fill bytes (each write fills its range with one
 * byte value, so every 4 KiB sector of a crash image can be classified as old or new);
 * crash images are inspected through readDurable() and through a fresh disk's read(); seeds
 * are fixed, and properties that need randomness to show (a mix of sectors, both orders)
 * are checked as "some seed among the first N shows it", which is deterministic.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { RecordingDisk, SimDisk, CRASH_MODES } from "../../src/sim/disk.js";
import { SimRandom } from "../../src/sim/random.js";
import { isFsError } from "../../src/util/errno.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

function filled(bytes: number, value: number): Buffer {
  return Buffer.alloc(bytes, value);
}

/** The fill value of each sector of [offset, offset + length) in the durable image. */
function sectorValues(disk: SimDisk, offset: number, length: number): number[] {
  const buf = disk.readDurable(offset, length);
  const out: number[] = [];
  for (let at = 0; at < length; at += disk.sectorBytes) {
    const sector = buf.subarray(at, at + disk.sectorBytes);
    assert.ok(sector.every((b) => b === sector[0]), "a sector must never be mixed");
    out.push(sector[0]!);
  }
  return out;
}

async function readBack(disk: SimDisk, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await disk.read(buf, offset);
  return buf;
}

test("round trip, zeros where never written, partial sectors keep their neighbours", async () => {
  const disk = new SimDisk("d", 1 * MiB);
  assert.deepEqual(await readBack(disk, 0, 8 * KiB), Buffer.alloc(8 * KiB));
  await disk.write(filled(64 * KiB, 0xaa), 64 * KiB);
  await disk.write(filled(100, 0xbb), 64 * KiB + 4000); // straddles a sector boundary
  const got = await readBack(disk, 64 * KiB, 64 * KiB);
  assert.equal(got[3999], 0xaa);
  assert.equal(got[4000], 0xbb);
  assert.equal(got[4099], 0xbb);
  assert.equal(got[4100], 0xaa);
  const caller = filled(4 * KiB, 1);
  await disk.write(caller, 0);
  caller.fill(2); // the disk keeps its own copy
  assert.equal((await readBack(disk, 0, 1))[0], 1);
  assert.deepEqual(disk.counters, {
    reads: 3, writes: 3, flushes: 0, bytesRead: 8 * KiB + 64 * KiB + 1,
    bytesWritten: 64 * KiB + 100 + 4 * KiB, failedReads: 0, failedWrites: 0,
  });
});

test("a 64 GiB disk is sparse", async () => {
  const disk = new SimDisk("big", 64 * GiB);
  await disk.write(filled(64 * KiB, 7), 64 * GiB - 64 * KiB);
  await disk.flush();
  assert.equal(disk.storedSectors(), 16);
  assert.deepEqual(await readBack(disk, 64 * GiB - 64 * KiB, 64 * KiB), filled(64 * KiB, 7));
  assert.deepEqual(await readBack(disk, 32 * GiB, 4 * KiB), Buffer.alloc(4 * KiB));
});

test("reads see unflushed writes; the durable image only after flush", async () => {
  const disk = new SimDisk("d", 1 * MiB);
  await disk.write(filled(4 * KiB, 5), 0);
  assert.equal(disk.unflushedWrites(), 1);
  assert.equal((await readBack(disk, 0, 1))[0], 5);
  assert.equal(disk.readDurable(0, 1)[0], 0);
  await disk.flush();
  assert.equal(disk.unflushedWrites(), 0);
  assert.equal(disk.readDurable(0, 1)[0], 5);
});

test("lose-all keeps only flushed data, keep-all keeps everything", async () => {
  const disk = new SimDisk("d", 1 * MiB);
  await disk.write(filled(8 * KiB, 1), 0);
  await disk.flush();
  await disk.write(filled(4 * KiB, 2), 4 * KiB);
  await disk.write(filled(4 * KiB, 3), 16 * KiB);
  const rng = new SimRandom(1);
  const lost = disk.crash(rng, "lose-all");
  assert.deepEqual(sectorValues(lost, 0, 20 * KiB), [1, 1, 0, 0, 0]);
  const kept = disk.crash(rng, "keep-all");
  assert.deepEqual(sectorValues(kept, 0, 20 * KiB), [1, 2, 0, 0, 3]);
  // A crash image is a fresh device: nothing unflushed, reads agree with the durable image.
  assert.equal(kept.unflushedWrites(), 0);
  assert.deepEqual(await readBack(kept, 0, 20 * KiB), kept.readDurable(0, 20 * KiB));
  // The crashed disk itself is untouched and can be crashed again.
  assert.equal(disk.unflushedWrites(), 2);
  assert.deepEqual(sectorValues(disk, 0, 20 * KiB), [1, 1, 0, 0, 0]);
});

test("random-subset keeps whole writes, drops some and reorders overlapping ones", async () => {
  const disk = new SimDisk("d", 1 * MiB);
  await disk.write(filled(4 * KiB, 1), 0);
  await disk.write(filled(4 * KiB, 2), 0); // same sector: order decides what survives
  await disk.write(filled(8 * KiB, 3), 8 * KiB);
  const outcomes = new Set<string>();
  for (let seed = 0; seed < 64; seed++) {
    const img = disk.crash(new SimRandom(seed), "random-subset");
    const [first, , w3a, w3b] = sectorValues(img, 0, 16 * KiB);
    assert.equal(w3a, w3b, "a write is never torn in random-subset");
    outcomes.add(`${first}/${w3a}`);
  }
  // 0 = both same-sector writes lost, 1 = older won (reordered or newer lost), 2 = newer won.
  for (const want of ["0/0", "0/3", "1/3", "2/3", "1/0", "2/0"]) assert.ok(outcomes.has(want),
    `outcome ${want} never seen in ${[...outcomes].join(" ")}`);
});

test("torn writes mix old and new 4 KiB sectors within one 64 KiB write", async () => {
  const disk = new SimDisk("d", 1 * MiB);
  await disk.write(filled(64 * KiB, 0x0d), 128 * KiB);
  await disk.flush();
  await disk.write(filled(64 * KiB, 0x0e), 128 * KiB);
  let mixed = 0;
  for (let seed = 0; seed < 16; seed++) {
    const values = sectorValues(disk.crash(new SimRandom(seed), "torn"), 128 * KiB, 64 * KiB);
    assert.ok(values.every((v) => v === 0x0d || v === 0x0e));
    if (values.includes(0x0d) && values.includes(0x0e)) mixed++;
  }
  assert.ok(mixed >= 12, `only ${mixed} of 16 torn images were mixed`);
  // keepProbability 0 and 1 are lose-all and keep-all.
  const none = disk.crash(new SimRandom(0), "torn", { keepProbability: 0 });
  assert.ok(sectorValues(none, 128 * KiB, 64 * KiB).every((v) => v === 0x0d));
  const all = disk.crash(new SimRandom(0), "torn", { keepProbability: 1 });
  assert.ok(sectorValues(all, 128 * KiB, 64 * KiB).every((v) => v === 0x0e));
});

test("torn pieces of a sub-sector write merge into the old sector", async () => {
  const disk = new SimDisk("d", 64 * KiB);
  await disk.write(filled(4 * KiB, 1), 0);
  await disk.flush();
  await disk.write(filled(512, 2), 1024);
  const img = disk.crashTorn(() => true);
  const got = img.readDurable(0, 4 * KiB);
  assert.equal(got[1023], 1);
  assert.equal(got[1024], 2);
  assert.equal(got[1535], 2);
  assert.equal(got[1536], 1);
});

test("a given seed reproduces the same crash image in every mode", async () => {
  const disk = new SimDisk("d", 4 * MiB);
  const rng = new SimRandom(77);
  for (let i = 0; i < 40; i++) {
    const buf = Buffer.alloc(rng.pick([4 * KiB, 64 * KiB]));
    rng.fill(buf);
    await disk.write(buf, rng.int(4 * MiB / (64 * KiB)) * 64 * KiB);
    if (rng.chance(0.2)) await disk.flush();
  }
  for (const mode of CRASH_MODES) {
    const a = disk.crash(new SimRandom(5), mode).readDurable(0, 4 * MiB);
    const b = disk.crash(new SimRandom(5), mode).readDurable(0, 4 * MiB);
    assert.ok(a.equals(b), `mode ${mode} not reproducible`);
  }
  const x = disk.crash(new SimRandom(5), "torn").readDurable(0, 4 * MiB);
  const y = disk.crash(new SimRandom(6), "torn").readDurable(0, 4 * MiB);
  assert.ok(!x.equals(y), "different seeds should tear differently");
});

test("crashApplying persists exactly the chosen writes in the chosen order", async () => {
  const disk = new SimDisk("d", 64 * KiB);
  await disk.write(filled(4 * KiB, 1), 0);
  await disk.write(filled(4 * KiB, 2), 0);
  await disk.write(filled(4 * KiB, 3), 4 * KiB);
  assert.deepEqual(disk.unflushedWriteExtents(), [
    { offset: 0, length: 4 * KiB }, { offset: 0, length: 4 * KiB },
    { offset: 4 * KiB, length: 4 * KiB }]);
  assert.deepEqual(sectorValues(disk.crashApplying([]), 0, 8 * KiB), [0, 0]);
  assert.deepEqual(sectorValues(disk.crashApplying([1, 0]), 0, 8 * KiB), [1, 0]);
  assert.deepEqual(sectorValues(disk.crashApplying([2]), 0, 8 * KiB), [0, 3]);
  assert.throws(() => disk.crashApplying([3]));
});

test("failReads and failWrites fail chosen I/O with EIO; a failed write changes nothing",
  async () => {
    const disk = new SimDisk("d", 1 * MiB);
    await disk.write(filled(4 * KiB, 9), 0);
    disk.failReads((offset) => offset === 0);
    disk.failWrites((offset, length) => offset < 8 * KiB && offset + length > 4 * KiB);
    await assert.rejects(readBack(disk, 0, 4 * KiB), (e) => isFsError(e, "EIO"));
    assert.equal((await readBack(disk, 4 * KiB, 1))[0], 0);
    await assert.rejects(disk.write(filled(4 * KiB, 1), 4 * KiB), (e) => isFsError(e, "EIO"));
    assert.equal((await readBack(disk, 4 * KiB, 1))[0], 0);
    assert.equal(disk.unflushedWrites(), 1);
    await disk.write(filled(4 * KiB, 1), 8 * KiB);
    assert.equal(disk.counters.failedReads, 1);
    assert.equal(disk.counters.failedWrites, 1);
    disk.failReads(null);
    disk.failWrites(null);
    assert.equal((await readBack(disk, 0, 1))[0], 9);
    await disk.write(filled(4 * KiB, 1), 4 * KiB);
  });

test("flipBit corrupts the durable image and what reads return", async () => {
  const disk = new SimDisk("d", 64 * KiB);
  await disk.write(filled(4 * KiB, 0x10), 0);
  await disk.flush();
  const snap = disk.snapshot();
  disk.flipBit(5, 0);
  disk.flipBit(8 * KiB, 7); // a never-written sector
  assert.equal(disk.readDurable(5, 1)[0], 0x11);
  assert.equal((await readBack(disk, 5, 1))[0], 0x11);
  assert.equal((await readBack(disk, 8 * KiB, 1))[0], 0x80);
  assert.equal(snap.readDurable(5, 1)[0], 0x10, "snapshots share no mutable state");
  // An unflushed write over the sector hides the flip until it is flushed over it.
  await disk.write(filled(4 * KiB, 0x20), 0);
  disk.flipBit(6, 1);
  assert.equal((await readBack(disk, 6, 1))[0], 0x20);
  assert.equal(disk.readDurable(6, 1)[0], 0x12);
  await disk.flush();
  assert.equal(disk.readDurable(6, 1)[0], 0x20);
  assert.throws(() => disk.flipBit(64 * KiB, 0));
  assert.throws(() => disk.flipBit(0, 8));
});

test("bounds, alignment and close are enforced like a real device", async () => {
  const disk = new SimDisk("d", 64 * KiB, { alignment: 4096 });
  await assert.rejects(readBack(disk, 60 * KiB, 8 * KiB), (e) => isFsError(e, "EIO"));
  await assert.rejects(disk.write(Buffer.alloc(8 * KiB), 60 * KiB),
    (e) => isFsError(e, "ENOSPC"));
  await assert.rejects(disk.write(Buffer.alloc(512), 0), (e) => isFsError(e, "EINVAL"));
  await assert.rejects(readBack(disk, 512, 4096), (e) => isFsError(e, "EINVAL"));
  await assert.rejects(readBack(disk, -4096, 4096), (e) => isFsError(e, "EINVAL"));
  await disk.close();
  await assert.rejects(readBack(disk, 0, 4096), (e) => isFsError(e, "EBADF"));
  await assert.rejects(disk.flush(), (e) => isFsError(e, "EBADF"));
  assert.equal(disk.crash(new SimRandom(1), "keep-all").sizeBytes, 64 * KiB);
  assert.throws(() => new SimDisk("bad", 4096, { sectorBytes: 3000 }));
});

test("snapshot copies unflushed writes too, independently", async () => {
  const disk = new SimDisk("d", 64 * KiB);
  await disk.write(filled(4 * KiB, 1), 0);
  const snap = disk.snapshot();
  await disk.write(filled(4 * KiB, 2), 0);
  assert.equal(snap.unflushedWrites(), 1);
  assert.equal((await readBack(snap, 0, 1))[0], 1);
  assert.deepEqual(sectorValues(snap.crash(new SimRandom(0), "keep-all"), 0, 4 * KiB), [1]);
  assert.deepEqual(sectorValues(disk.crash(new SimRandom(0), "keep-all"), 0, 4 * KiB), [2]);
});

test("RecordingDisk rebuilds the state after every prefix of the workload", async () => {
  const inner = new SimDisk("meta", 1 * MiB);
  await inner.write(filled(4 * KiB, 0x50), 0); // before recording: part of the start image
  await inner.flush();
  const rec = new RecordingDisk(inner);
  await rec.write(filled(4 * KiB, 1), 4 * KiB);   // op 0
  await rec.write(filled(4 * KiB, 2), 8 * KiB);   // op 1
  await rec.flush();                              // op 2
  await inner.write(filled(4 * KiB, 3), 12 * KiB); // op 3: direct I/O on inner is seen too
  inner.failWrites(() => true);
  await assert.rejects(rec.write(filled(4 * KiB, 9), 0)); // failed: not recorded
  inner.failWrites(null);

  assert.deepEqual(rec.log().map((op) => op.kind), ["write", "write", "flush", "write"]);
  assert.deepEqual(rec.flushIndexes(), [2]);
  const states = [...rec.states()];
  assert.deepEqual(states.map((s) => s.afterOp), [0, 1, 2, 3, 4]);
  assert.deepEqual(states.map((s) => s.disk.unflushedWrites()), [0, 1, 2, 0, 1]);
  const durable = states.map((s) => sectorValues(s.disk, 0, 16 * KiB));
  assert.deepEqual(durable, [
    [0x50, 0, 0, 0], [0x50, 0, 0, 0], [0x50, 0, 0, 0], [0x50, 1, 2, 0], [0x50, 1, 2, 0]]);
  const rng = new SimRandom(3);
  assert.deepEqual(sectorValues(states[2]!.disk.crash(rng, "keep-all"), 0, 16 * KiB),
    [0x50, 1, 2, 0]);
  assert.deepEqual(sectorValues(states[4]!.disk.crash(rng, "keep-all"), 0, 16 * KiB),
    [0x50, 1, 2, 3]);
  // stateAfter agrees with states(), and states are independent devices.
  for (const s of states) {
    assert.ok(rec.stateAfter(s.afterOp).readDurable(0, 16 * KiB).equals(
      s.disk.readDurable(0, 16 * KiB)));
  }
  await states[0]!.disk.write(filled(4 * KiB, 0x77), 0);
  assert.equal(rec.stateAfter(0).readDurable(0, 1)[0], 0x50);

  const boundaries = [...rec.states({ flushBoundariesOnly: true })].map((s) => s.afterOp);
  assert.deepEqual(boundaries, [0, 3, 4]);

  rec.stop();
  await inner.write(filled(4 * KiB, 4), 16 * KiB);
  assert.equal(rec.log().length, 4);
  const again = new RecordingDisk(inner); // stop() freed the observer slot
  again.stop();
});

test("recorded data is a private copy", async () => {
  const rec = new RecordingDisk(new SimDisk("d", 64 * KiB));
  const buf = filled(4 * KiB, 1);
  await rec.write(buf, 0);
  buf.fill(2);
  const op = rec.log()[0]!;
  assert.ok(op.kind === "write" && op.data[0] === 1);
  assert.equal(rec.stateAfter(1).crash(new SimRandom(0), "keep-all").readDurable(0, 1)[0], 1);
});
