/*
 * A fault-injecting BlockDevice wrapper, for tests of how the core survives device faults.
 *
 * FaultDevice wraps any BlockDevice (a real one from src/env/real or a SimDisk) and injects
 * the device faults of RELIABILITY.md on the I/O that passes through it:
 *
 *   failReads      the read fails with EIO and fills nothing
 *   failWrites     the write fails with EIO and writes nothing
 *   failFlushes    the flush fails with EIO and flushes nothing
 *   corruptReads   the read succeeds but one returned byte in the chosen range is altered
 *                  (the stored data is intact: a transient bus or cache corruption, so a
 *                  re-read can succeed; use SimDisk.flipBit for lasting media corruption)
 *   dropWrites     the write "succeeds" but never reaches the device (a lost write)
 *   misdirectWrites the write "succeeds" but lands deltaBytes away (a misdirected write)
 *
 * Each call arms a rule and returns a handle (hit count, disarm()). A rule matches an I/O
 * overlapping its byte range [from, to) (default: the whole device); it can skip the first
 * `skip` matching I/Os, fire at most `times` times, and fire with `probability` (which needs
 * the Random handed to the constructor, so simulated runs stay replayable). When several
 * rules apply, the order is: fail, then drop, then misdirect for writes; fail, then corrupt
 * for reads. Counters record both the I/O seen and the faults injected.
 *
 * Pure code (no node imports), so the same wrapper serves the simulator and real devices.
 */

import type { BlockDevice, Random } from "../env.js";
import { assert } from "../../util/assert.js";
import { FsError } from "../../util/errno.js";

export interface FaultSpec {
  /** First byte offset of the range the rule applies to (default 0). */
  from?: number;
  /** End (exclusive) of the range (default: no end). */
  to?: number;
  /** Matching I/Os to let through before the rule starts firing (default 0). */
  skip?: number;
  /** Maximum number of injections, after which the rule disarms (default: unlimited). */
  times?: number;
  /** Chance of firing on each matching I/O (default 1); needs the constructor's Random. */
  probability?: number;
}

export interface CorruptSpec extends FaultSpec {
  /** Value XORed into the altered byte; non-zero (default 0xff). */
  xor?: number;
  /** Which byte of the overlap is altered: the first (default) or a random one. */
  pick?: "first" | "random";
}

export interface MisdirectSpec extends FaultSpec {
  /** Distance (bytes, may be negative) between the intended and the actual offset. */
  deltaBytes: number;
}

export interface FaultHandle {
  /** How many times the rule fired. */
  readonly hits: number;
  readonly armed: boolean;
  disarm(): void;
}

export interface FaultCounters {
  reads: number;
  writes: number;
  flushes: number;
  readErrors: number;
  writeErrors: number;
  flushErrors: number;
  corruptedReads: number;
  droppedWrites: number;
  misdirectedWrites: number;
}

const TWO_POW_32 = 0x1_0000_0000;

class FaultRule implements FaultHandle {
  hits = 0;
  armed = true;
  private seen = 0;
  private readonly from: number;
  private readonly to: number;

  constructor(private readonly spec: FaultSpec, private readonly random: Random | undefined) {
    this.from = spec.from ?? 0;
    this.to = spec.to ?? Number.POSITIVE_INFINITY;
    assert(this.from >= 0 && this.to > this.from, `bad fault range [${this.from}, ${this.to})`);
    assert(spec.probability === undefined || random !== undefined,
      "a fault probability needs the Random passed to FaultDevice");
  }

  disarm(): void {
    this.armed = false;
  }

  /** Decides whether the rule fires for I/O at [offset, offset + length); counts it if so. */
  fires(offset: number, length: number): boolean {
    if (!this.armed || !this.overlaps(offset, length)) return false;
    this.seen++;
    if (this.seen <= (this.spec.skip ?? 0)) return false;
    const p = this.spec.probability;
    if (p !== undefined && this.random!.u32() / TWO_POW_32 >= p) return false;
    this.hits++;
    if (this.spec.times !== undefined && this.hits >= this.spec.times) this.armed = false;
    return true;
  }

  /** The part of [offset, offset + length) inside the rule's range, as [start, end). */
  overlap(offset: number, length: number): [number, number] {
    return [Math.max(offset, this.from), Math.min(offset + length, this.to)];
  }

  private overlaps(offset: number, length: number): boolean {
    // A zero-length I/O (a flush, say) matches a rule whose range contains its offset.
    const end = Math.max(offset + length, offset + 1);
    return offset < this.to && end > this.from;
  }
}

class CorruptRule extends FaultRule {
  constructor(readonly corrupt: CorruptSpec, random: Random | undefined) {
    super(corrupt, random);
    assert((corrupt.xor ?? 0xff) !== 0 && ((corrupt.xor ?? 0xff) & ~0xff) === 0,
      `corrupt xor ${corrupt.xor} must be a non-zero byte`);
    assert(corrupt.pick !== "random" || random !== undefined,
      "pick: 'random' needs the Random passed to FaultDevice");
  }
}

class MisdirectRule extends FaultRule {
  constructor(readonly deltaBytes: number, spec: FaultSpec, random: Random | undefined) {
    super(spec, random);
    assert(Number.isSafeInteger(deltaBytes) && deltaBytes !== 0, "misdirect delta must be != 0");
  }
}

export class FaultDevice implements BlockDevice {
  readonly counters: FaultCounters = {
    reads: 0, writes: 0, flushes: 0, readErrors: 0, writeErrors: 0, flushErrors: 0,
    corruptedReads: 0, droppedWrites: 0, misdirectedWrites: 0,
  };
  private readonly readFails: FaultRule[] = [];
  private readonly writeFails: FaultRule[] = [];
  private readonly flushFails: FaultRule[] = [];
  private readonly corruptions: CorruptRule[] = [];
  private readonly drops: FaultRule[] = [];
  private readonly misdirects: MisdirectRule[] = [];

  constructor(readonly inner: BlockDevice, private readonly random?: Random) {}

  get name(): string { return this.inner.name; }
  get sizeBytes(): number { return this.inner.sizeBytes; }
  get alignment(): number { return this.inner.alignment; }

  failReads(spec: FaultSpec = {}): FaultHandle {
    return arm(this.readFails, new FaultRule(spec, this.random));
  }

  failWrites(spec: FaultSpec = {}): FaultHandle {
    return arm(this.writeFails, new FaultRule(spec, this.random));
  }

  /** Flushes have no range: from/to are ignored, skip/times/probability apply. */
  failFlushes(spec: FaultSpec = {}): FaultHandle {
    return arm(this.flushFails, new FaultRule({ ...spec, from: 0, to: undefined }, this.random));
  }

  corruptReads(spec: CorruptSpec = {}): FaultHandle {
    return arm(this.corruptions, new CorruptRule(spec, this.random));
  }

  dropWrites(spec: FaultSpec = {}): FaultHandle {
    return arm(this.drops, new FaultRule(spec, this.random));
  }

  misdirectWrites(spec: MisdirectSpec): FaultHandle {
    return arm(this.misdirects, new MisdirectRule(spec.deltaBytes, spec, this.random));
  }

  /** Disarms every rule. */
  clear(): void {
    for (const list of [this.readFails, this.writeFails, this.flushFails, this.corruptions,
      this.drops, this.misdirects]) {
      for (const rule of list) rule.disarm();
      list.length = 0;
    }
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    this.counters.reads++;
    if (firing(this.readFails, offset, buf.length)) {
      this.counters.readErrors++;
      throw injected("read", offset, buf.length, this.name);
    }
    await this.inner.read(buf, offset);
    for (const rule of this.corruptions) {
      if (rule.fires(offset, buf.length)) this.corrupt(rule, buf, offset);
    }
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    this.counters.writes++;
    if (firing(this.writeFails, offset, buf.length)) {
      this.counters.writeErrors++;
      throw injected("write", offset, buf.length, this.name);
    }
    if (firing(this.drops, offset, buf.length)) {
      this.counters.droppedWrites++;
      return;
    }
    let misdirect: MisdirectRule | undefined;
    for (const r of this.misdirects) if (r.fires(offset, buf.length)) misdirect ??= r;
    if (misdirect) {
      this.counters.misdirectedWrites++;
      const target = offset + misdirect.deltaBytes;
      // A write misdirected off the device is simply lost, as its intended target is.
      if (target >= 0 && target + buf.length <= this.sizeBytes) {
        await this.inner.write(buf, target);
      }
      return;
    }
    await this.inner.write(buf, offset);
  }

  async flush(): Promise<void> {
    this.counters.flushes++;
    if (firing(this.flushFails, 0, 0)) {
      this.counters.flushErrors++;
      throw new FsError("EIO", "injected flush error", "fdatasync", this.name);
    }
    await this.inner.flush();
  }

  allocBuffer(bytes: number): Buffer {
    return this.inner.allocBuffer(bytes);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private corrupt(rule: CorruptRule, buf: Buffer, offset: number): void {
    const [start, end] = rule.overlap(offset, buf.length);
    if (end <= start) return;
    const at = rule.corrupt.pick === "random"
      ? start + Math.floor((this.random!.u32() / TWO_POW_32) * (end - start))
      : start;
    const i = at - offset;
    buf[i] = buf[i]! ^ (rule.corrupt.xor ?? 0xff);
    this.counters.corruptedReads++;
  }
}

function arm<R extends FaultRule>(list: R[], rule: R): FaultHandle {
  list.push(rule);
  return rule;
}

/** True if any rule in the list fires; evaluates every rule so skip counts stay exact. */
function firing(rules: readonly FaultRule[], offset: number, length: number): boolean {
  let fired = false;
  for (const rule of rules) if (rule.fires(offset, length)) fired = true;
  return fired;
}

function injected(syscall: string, offset: number, length: number, name: string): FsError {
  return new FsError("EIO", `injected ${syscall} error at offset ${offset} length ${length}`,
    syscall, name);
}
