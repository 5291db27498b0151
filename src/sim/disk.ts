/*
 * Simulated block devices with crash semantics, for the simulator and crash-state tests.
 *
 * A SimDisk is a pure in-memory BlockDevice (no node:fs) that models what a real disk with a
 * volatile write cache promises, and no more: a write that has resolved is visible to reads
 * at once, but it is durable only after a later flush() resolves. Until then it may be lost,
 * reordered against other unflushed writes, or torn (persisted as a subset of its sectors).
 * That is exactly the device fault model of RELIABILITY.md, and crash() produces the images a
 * power cut could leave behind:
 *
 *   lose-all       the durable image only: every unflushed write is lost
 *   keep-all       every unflushed write persisted, in issue order
 *   random-subset  each unflushed write kept with probability p (default 1/2), the kept
 *                  ones applied in a random order (reordering: an older write may land
 *                  after a newer one to the same sectors)
 *   torn           each unflushed write split into its sectors (sectorBytes, 4 KiB by
 *                  default), each sector kept with probability p, in issue order
 *
 * crash() returns a NEW SimDisk whose durable and visible contents are that image and which
 * has no unflushed writes; the crashed disk itself is unchanged, so one state can be crashed
 * many ways. crashApplying() builds an image from an explicit list of unflushed writes, for
 * exhaustive enumeration of small subsets.
 *
 * Storage is sparse: a Map from sector index to that sector's bytes, absent meaning zeros, so
 * a 64 GiB simulated device costs only what has been written. Sector buffers are immutable
 * once stored (every change stores a fresh copy), which lets the durable map, the visible map,
 * snapshots and crash images share them safely.
 *
 * RecordingDisk wraps a SimDisk and logs every successful write (with a copy of its data) and
 * flush, in order. Replaying the log onto a snapshot of the starting image gives the device
 * state after any prefix of operations (CrashMonkey-style enumeration):
 *
 *   const rec = new RecordingDisk(new SimDisk("meta", 64 * MiB));
 *   ... run a workload on rec ...
 *   for (const { afterOp, disk } of rec.states()) {     // afterOp = ops issued before the crash
 *     for (const mode of CRASH_MODES) check(disk.crash(rng, mode));
 *   }
 *
 * Each state's durable image holds the writes before the last flush in its prefix; the writes
 * after it are its unflushed writes, which crash() loses, keeps, reorders or tears.
 *
 * Faults beyond crashes: failReads()/failWrites() make chosen I/O fail with EIO (a failed write
 * changes nothing), flipBit() flips a stored bit (media corruption). Offsets past the end fail
 * as on a real device (read: EIO short read; write: ENOSPC). With `alignment` > 1 the disk
 * also checks offset and length alignment, as O_DIRECT would (buffer addresses cannot be
 * checked in JavaScript).
 */

import type { BlockDevice } from "../env/env.js";
import { assert, assertSafeU, unreachable } from "../util/assert.js";
import { FsError } from "../util/errno.js";
import type { SimRandom } from "./random.js";

export type CrashMode = "lose-all" | "keep-all" | "random-subset" | "torn";
export const CRASH_MODES: readonly CrashMode[] = ["lose-all", "keep-all", "random-subset", "torn"];

export interface SimDiskOptions {
  /** Atomic unit of persistence, the granularity of torn writes. Default 4096. */
  sectorBytes?: number;
  /** Required alignment of offsets and lengths (1 = buffered). Default 1. */
  alignment?: number;
}

export interface CrashOptions {
  /** Probability that each write (random-subset) or sector (torn) persists. Default 0.5. */
  keepProbability?: number;
}

/** Decides whether an I/O at [offset, offset + length) fails. */
export type IoPredicate = (offset: number, length: number) => boolean;

export interface SimDiskCounters {
  reads: number;
  writes: number;
  flushes: number;
  bytesRead: number;
  bytesWritten: number;
  failedReads: number;
  failedWrites: number;
}

/** An unflushed write as seen by tests: where and how long. */
export interface WriteExtent {
  readonly offset: number;
  readonly length: number;
}

/** A write kept until flush: its data is a private immutable copy. */
interface PendingWrite {
  readonly offset: number;
  readonly data: Buffer;
}

/** Bound on unflushed writes: a workload that never flushes is a test bug, not a sim load. */
export const SIM_DISK_MAX_UNFLUSHED_WRITES = 1 << 20;
const DEFAULT_SECTOR_BYTES = 4096;
const DEFAULT_KEEP_PROBABILITY = 0.5;

type SectorMap = Map<number, Buffer>;

export class SimDisk implements BlockDevice {
  readonly name: string;
  readonly sizeBytes: number;
  readonly alignment: number;
  readonly sectorBytes: number;
  readonly counters: SimDiskCounters = {
    reads: 0, writes: 0, flushes: 0, bytesRead: 0, bytesWritten: 0,
    failedReads: 0, failedWrites: 0,
  };
  /** What survives a power cut with every unflushed write lost. */
  private durable: SectorMap = new Map();
  /** What reads return: durable plus the unflushed writes in issue order. */
  private visible: SectorMap = new Map();
  private pending: PendingWrite[] = [];
  private observer: ((op: DiskOp) => void) | null = null;
  private readFault: IoPredicate | null = null;
  private writeFault: IoPredicate | null = null;
  private closed = false;

  constructor(name: string, sizeBytes: number, opts: SimDiskOptions = {}) {
    const sectorBytes = opts.sectorBytes ?? DEFAULT_SECTOR_BYTES;
    const alignment = opts.alignment ?? 1;
    assertSafeU(sizeBytes, "sizeBytes");
    assert(isPowerOfTwo(sectorBytes), `sectorBytes ${sectorBytes} must be a power of two`);
    assert(isPowerOfTwo(alignment), `alignment ${alignment} must be a power of two`);
    this.name = name;
    this.sizeBytes = sizeBytes;
    this.sectorBytes = sectorBytes;
    this.alignment = alignment;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    this.checkIo("read", buf.length, offset);
    if (offset + buf.length > this.sizeBytes) {
      throw new FsError("EIO", `short read: ${buf.length} bytes at offset ${offset} run past ` +
        `the end of the device (${this.sizeBytes} bytes)`, "read", this.name);
    }
    if (this.readFault?.(offset, buf.length)) {
      this.counters.failedReads++;
      throw new FsError("EIO", `simulated read error at offset ${offset} length ${buf.length}`,
        "read", this.name);
    }
    readRange(this.visible, this.sectorBytes, offset, buf);
    this.counters.reads++;
    this.counters.bytesRead += buf.length;
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    this.checkIo("write", buf.length, offset);
    if (offset + buf.length > this.sizeBytes) {
      throw new FsError("ENOSPC", `write of ${buf.length} bytes at offset ${offset} runs past ` +
        `the end of the device (${this.sizeBytes} bytes)`, "write", this.name);
    }
    if (this.writeFault?.(offset, buf.length)) {
      this.counters.failedWrites++;
      throw new FsError("EIO", `simulated write error at offset ${offset} length ${buf.length}`,
        "write", this.name);
    }
    const data = this.applyWrite(buf, offset);
    this.counters.writes++;
    this.counters.bytesWritten += buf.length;
    this.observer?.({ kind: "write", offset, data });
  }

  async flush(): Promise<void> {
    this.checkOpen("flush");
    this.applyFlush();
    this.counters.flushes++;
    this.observer?.({ kind: "flush" });
  }

  allocBuffer(bytes: number): Buffer {
    assertSafeU(bytes, "allocBuffer bytes");
    return Buffer.alloc(bytes);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /**
   * Applies a write at once, bypassing fault knobs, counters and the closed check: for
   * replaying a recorded log and for building test images synchronously. It is unflushed,
   * like any write, until applyFlush() or flush(). Returns the stored copy (do not modify).
   */
  applyWrite(buf: Buffer, offset: number): Buffer {
    assert(offset + buf.length <= this.sizeBytes, "applyWrite past the end of the device");
    assert(this.pending.length < SIM_DISK_MAX_UNFLUSHED_WRITES,
      `more than ${SIM_DISK_MAX_UNFLUSHED_WRITES} unflushed writes on ${this.name}`);
    const data = Buffer.from(buf); // private copy: the caller may reuse buf at once
    writeRange(this.visible, this.sectorBytes, offset, data);
    this.pending.push({ offset, data });
    return data;
  }

  /** Makes every applied write durable, bypassing counters and the closed check. */
  applyFlush(): void {
    for (const w of this.pending) {
      const [first, last] = sectorSpan(this.sectorBytes, w.offset, w.data.length);
      for (let idx = first; idx <= last; idx++) {
        const sector = this.visible.get(idx);
        assert(sector !== undefined, "a written sector must be visible");
        this.durable.set(idx, sector);
      }
    }
    this.pending = [];
  }

  /** How many writes have resolved since the last flush. */
  unflushedWrites(): number {
    return this.pending.length;
  }

  /** Offsets and lengths of the unflushed writes, in issue order. */
  unflushedWriteExtents(): WriteExtent[] {
    return this.pending.map((w) => ({ offset: w.offset, length: w.data.length }));
  }

  /** A power cut: a new disk holding the durable image plus what `mode` lets persist. */
  crash(rng: SimRandom, mode: CrashMode, opts: CrashOptions = {}): SimDisk {
    const p = opts.keepProbability ?? DEFAULT_KEEP_PROBABILITY;
    const image = new Map(this.durable);
    switch (mode) {
      case "lose-all":
        break;
      case "keep-all":
        for (const w of this.pending) writeRange(image, this.sectorBytes, w.offset, w.data);
        break;
      case "random-subset": {
        const kept = this.pending.filter(() => rng.chance(p));
        for (const w of rng.shuffle(kept)) writeRange(image, this.sectorBytes, w.offset, w.data);
        break;
      }
      case "torn":
        for (const w of this.pending) this.applyTorn(image, w, () => rng.chance(p));
        break;
      default:
        unreachable(mode);
    }
    return this.derive(image);
  }

  /**
   * A power cut that persisted exactly the unflushed writes with the given indices (into
   * unflushedWriteExtents()), applied in the given order; for exhaustive enumeration.
   */
  crashApplying(writeIndexes: readonly number[]): SimDisk {
    const image = new Map(this.durable);
    for (const i of writeIndexes) {
      const w = this.pending[i];
      assert(w !== undefined, `no unflushed write #${i} (have ${this.pending.length})`);
      writeRange(image, this.sectorBytes, w.offset, w.data);
    }
    return this.derive(image);
  }

  /**
   * A power cut that tore unflushed writes: keep(writeIndex, sectorIndexInWrite) says which
   * sector-sized pieces persisted; writes are applied in issue order.
   */
  crashTorn(keep: (writeIndex: number, sectorInWrite: number) => boolean): SimDisk {
    const image = new Map(this.durable);
    this.pending.forEach((w, i) => this.applyTorn(image, w, (s) => keep(i, s)));
    return this.derive(image);
  }

  /** An independent copy of the whole state, unflushed writes included (no faults armed). */
  snapshot(): SimDisk {
    const copy = this.derive(new Map(this.durable));
    copy.visible = new Map(this.visible);
    copy.pending = this.pending.slice();
    return copy;
  }

  /**
   * Calls fn synchronously after each successful write() and flush() (not applyWrite/
   * applyFlush), in the order they took effect; RecordingDisk uses it. null removes it.
   */
  setObserver(fn: ((op: DiskOp) => void) | null): void {
    assert(fn === null || this.observer === null, `${this.name} already has an observer`);
    this.observer = fn;
  }

  /** Makes matching reads fail with EIO until cleared with null. */
  failReads(predicate: IoPredicate | null): void {
    this.readFault = predicate;
  }

  /** Makes matching writes fail with EIO (changing nothing) until cleared with null. */
  failWrites(predicate: IoPredicate | null): void {
    this.writeFault = predicate;
  }

  /**
   * Flips one stored bit of the durable image (media corruption). Reads see it too, unless an
   * unflushed write has replaced that sector, which then hides it until it is flushed over it.
   */
  flipBit(byteOffset: number, bit: number): void {
    assert(Number.isSafeInteger(byteOffset) && byteOffset >= 0 && byteOffset < this.sizeBytes,
      `flipBit offset ${byteOffset} outside the device`);
    assert(Number.isInteger(bit) && bit >= 0 && bit < 8, `flipBit bit ${bit} not in 0..7`);
    const idx = Math.floor(byteOffset / this.sectorBytes);
    const old = this.durable.get(idx);
    const flipped = old ? Buffer.from(old) : Buffer.alloc(this.sectorBytes);
    const at = byteOffset - idx * this.sectorBytes;
    flipped[at] = flipped[at]! ^ (1 << bit);
    this.durable.set(idx, flipped);
    // Sectors are shared, never mutated: identity tells whether the visible one is durable's.
    if (this.visible.get(idx) === old) this.visible.set(idx, flipped);
  }

  /** The durable bytes at [offset, offset + length): what a power cut losing all would keep. */
  readDurable(offset: number, length: number): Buffer {
    assert(offset + length <= this.sizeBytes, "readDurable past the end of the device");
    const buf = Buffer.alloc(length);
    readRange(this.durable, this.sectorBytes, offset, buf);
    return buf;
  }

  /** Sectors materialized in memory (visible view): the cost of the sparse image. */
  storedSectors(): number {
    return this.visible.size;
  }

  private applyTorn(image: SectorMap, w: PendingWrite, keep: (sector: number) => boolean): void {
    const [first, last] = sectorSpan(this.sectorBytes, w.offset, w.data.length);
    for (let idx = first; idx <= last; idx++) {
      if (!keep(idx - first)) continue;
      const from = Math.max(w.offset, idx * this.sectorBytes);
      const to = Math.min(w.offset + w.data.length, (idx + 1) * this.sectorBytes);
      writeRange(image, this.sectorBytes, from, w.data.subarray(from - w.offset, to - w.offset));
    }
  }

  /** A fresh disk like this one whose durable and visible contents are `image`. */
  private derive(image: SectorMap): SimDisk {
    const disk = new SimDisk(this.name, this.sizeBytes, {
      sectorBytes: this.sectorBytes, alignment: this.alignment,
    });
    disk.durable = image;
    disk.visible = new Map(image);
    return disk;
  }

  private checkOpen(syscall: string): void {
    if (this.closed) throw new FsError("EBADF", "device is closed", syscall, this.name);
  }

  private checkIo(syscall: string, length: number, offset: number): void {
    this.checkOpen(syscall);
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new FsError("EINVAL", `bad offset ${offset}`, syscall, this.name);
    }
    if (offset % this.alignment !== 0 || length % this.alignment !== 0) {
      throw new FsError("EINVAL", `offset ${offset} or length ${length} not aligned to ` +
        `${this.alignment} bytes`, syscall, this.name);
    }
  }
}

/** One operation of a recorded log; data is a private copy of what was written. */
export type DiskOp =
  | { readonly kind: "write"; readonly offset: number; readonly data: Buffer }
  | { readonly kind: "flush" };

/** A device state that a crash after `afterOp` logged operations would start from. */
export interface RecordedState {
  /** Number of logged operations issued before the crash (0 = the starting image). */
  readonly afterOp: number;
  /** Durable = writes up to the last flush in the prefix; unflushed = the writes after it. */
  readonly disk: SimDisk;
}

/** Bound on a recording: crash-state workloads are small by design (ACE: 1-3 operations). */
export const RECORDING_MAX_OPS = 1 << 20;

/**
 * A SimDisk wrapper that records every successful write and flush, in the order they took
 * effect on the inner disk (through its observer, so direct I/O on the inner disk is recorded
 * too). The starting image is a snapshot taken at construction, so later states are rebuilt
 * independently of whatever happens to the inner disk afterwards. stop() detaches it.
 */
export class RecordingDisk implements BlockDevice {
  readonly inner: SimDisk;
  private readonly base: SimDisk;
  private readonly ops: DiskOp[] = [];

  constructor(inner: SimDisk) {
    this.inner = inner;
    this.base = inner.snapshot();
    inner.setObserver((op) => this.record(op));
  }

  get name(): string { return this.inner.name; }
  get sizeBytes(): number { return this.inner.sizeBytes; }
  get alignment(): number { return this.inner.alignment; }

  read(buf: Buffer, offset: number): Promise<void> {
    return this.inner.read(buf, offset);
  }

  write(buf: Buffer, offset: number): Promise<void> {
    return this.inner.write(buf, offset);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  allocBuffer(bytes: number): Buffer {
    return this.inner.allocBuffer(bytes);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /** Stops recording (the log is kept); the inner disk can then be recorded afresh. */
  stop(): void {
    this.inner.setObserver(null);
  }

  /** The recorded operations, in issue order. */
  log(): readonly DiskOp[] {
    return this.ops;
  }

  /** Index of each flush in log() (a crash just after one has no unflushed writes). */
  flushIndexes(): number[] {
    const out: number[] = [];
    this.ops.forEach((op, i) => { if (op.kind === "flush") out.push(i); });
    return out;
  }

  /** The state after the first `afterOp` logged operations, rebuilt from the start image. */
  stateAfter(afterOp: number): SimDisk {
    assert(Number.isInteger(afterOp) && afterOp >= 0 && afterOp <= this.ops.length,
      `afterOp ${afterOp} outside 0..${this.ops.length}`);
    const disk = this.base.snapshot();
    for (let i = 0; i < afterOp; i++) replayOp(disk, this.ops[i]!);
    return disk;
  }

  /**
   * Every state from afterOp 0 to log().length, each an independent SimDisk (built
   * incrementally, so enumerating n states costs n snapshots, not n replays). With
   * flushBoundariesOnly, only the start, the end and the states just after each flush.
   */
  *states(opts: { flushBoundariesOnly?: boolean } = {}): Iterable<RecordedState> {
    const disk = this.base.snapshot();
    const ops = this.ops.slice(); // states stay consistent if recording continues meanwhile
    yield { afterOp: 0, disk: disk.snapshot() };
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!;
      replayOp(disk, op);
      const last = i === ops.length - 1;
      if (!opts.flushBoundariesOnly || op.kind === "flush" || last) {
        yield { afterOp: i + 1, disk: disk.snapshot() };
      }
    }
  }

  private record(op: DiskOp): void {
    assert(this.ops.length < RECORDING_MAX_OPS, `recording of ${this.name} over its bound`);
    // Own copy: the log is handed to tests, and the inner disk's copy must stay untouched.
    this.ops.push(op.kind === "write" ? { ...op, data: Buffer.from(op.data) } : op);
  }
}

function replayOp(disk: SimDisk, op: DiskOp): void {
  if (op.kind === "write") disk.applyWrite(op.data, op.offset);
  else disk.applyFlush();
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** First and last sector index touched by [offset, offset + length); length 0 touches none. */
function sectorSpan(sectorBytes: number, offset: number, length: number): [number, number] {
  if (length === 0) return [0, -1];
  return [Math.floor(offset / sectorBytes), Math.floor((offset + length - 1) / sectorBytes)];
}

/** Copies [offset, offset + buf.length) of the image into buf; absent sectors read as zeros. */
function readRange(map: SectorMap, sectorBytes: number, offset: number, buf: Buffer): void {
  const [first, last] = sectorSpan(sectorBytes, offset, buf.length);
  for (let idx = first; idx <= last; idx++) {
    const sectorStart = idx * sectorBytes;
    const from = Math.max(offset, sectorStart);
    const to = Math.min(offset + buf.length, sectorStart + sectorBytes);
    const sector = map.get(idx);
    if (sector) sector.copy(buf, from - offset, from - sectorStart, to - sectorStart);
    else buf.fill(0, from - offset, to - offset);
  }
}

/**
 * Stores data (a private copy, never modified) at offset: each touched sector is replaced, by a
 * view of data when data covers it whole, else by a fresh copy merged with the old bytes.
 */
function writeRange(map: SectorMap, sectorBytes: number, offset: number, data: Buffer): void {
  const [first, last] = sectorSpan(sectorBytes, offset, data.length);
  for (let idx = first; idx <= last; idx++) {
    const sectorStart = idx * sectorBytes;
    const from = Math.max(offset, sectorStart);
    const to = Math.min(offset + data.length, sectorStart + sectorBytes);
    const whole = from === sectorStart && to === sectorStart + sectorBytes;
    if (whole) {
      // data is a private copy nobody modifies: whole sectors can be views of it
      map.set(idx, data.subarray(from - offset, to - offset));
      continue;
    }
    // Partly covered sectors keep their old bytes; new sectors start zero-filled.
    const old = map.get(idx);
    const sector = old ? Buffer.from(old) : Buffer.alloc(sectorBytes);
    data.copy(sector, from - sectorStart, from - offset, to - offset);
    map.set(idx, sector);
  }
}
