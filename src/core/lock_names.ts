/*
 * Lock names: the key ranges that cluster locks cover (upstream lock.c's scoutfs_lock_ino,
 * scoutfs_lock_rename, scoutfs_lock_inode_index, scoutfs_lock_orphan, ...).
 *
 * Every lock is an inclusive range [start, end] of the generic key space (src/core/key.ts).
 * A lock protects every item whose key falls in its range, so the names decide both what a
 * VFS operation must lock and how much unrelated work shares one lock:
 *
 *  - inode group: the FS-zone keys of 1024 consecutive inode numbers (ino & ~1023 ..
 *    ino | 1023, every item type): inode items, xattrs, extents, symlink parts, backrefs of
 *    those inodes and the directory entries stored under a directory inode of the group.
 *  - rename: one key in the LOCK zone, taken in WRITE by renames between directories.
 *  - inode index: per index type (META_SEQ, DATA_SEQ), groups of 1024 consecutive seqs.
 *  - orphan, totl, indx and quota: each its whole zone.
 *
 * Who calls it: the VFS operations (which range covers this key), the lock client
 * (src/core/lock.ts) and the lock server (src/core/lock_server.ts), which both keep their
 * locks in a RangeTable.
 *
 * Invariants: every name's start <= end and both keys lie in one zone; names of one kind
 * never overlap each other and names of different kinds live in different zones (or, for
 * inode index groups, different types), so two distinct names never overlap at all. The
 * RangeTable asserts this: a range either equals a stored one or is disjoint from all.
 */
import { assert } from "../util/assert.js";
import {
  compareKeys, formatKey, InodeIndexType, KEY_SIZE, keyZone, makeKey, renameLockKey, U64_MAX,
  Zone,
} from "./key.js";

/** An inclusive key range; the identity of a lock. */
export interface LockRange {
  readonly start: Buffer;
  readonly end: Buffer;
}

/** Inodes per inode group lock (upstream SCOUTFS_LOCK_INODE_GROUP_NR). */
export const LOCK_INODE_GROUP_NR = 1024n;
/** Seqs per inode index lock (upstream SCOUTFS_LOCK_SEQ_GROUP_NR). */
export const LOCK_SEQ_GROUP_NR = 1024n;
const INODE_GROUP_MASK = LOCK_INODE_GROUP_NR - 1n;
const SEQ_GROUP_MASK = LOCK_SEQ_GROUP_NR - 1n;
assert((LOCK_INODE_GROUP_NR & INODE_GROUP_MASK) === 0n, "inode group is a power of two");
assert((LOCK_SEQ_GROUP_NR & SEQ_GROUP_MASK) === 0n, "seq group is a power of two");

function checkU64(n: bigint, what: string): void {
  if (n < 0n || n > U64_MAX) assert(false, `${what} ${n} is not a u64`);
}

/** The group lock covering every FS-zone item of inode `ino`. */
export function inodeGroupRange(ino: bigint): LockRange {
  checkU64(ino, "ino");
  return {
    start: makeKey(Zone.FS, ino & ~INODE_GROUP_MASK, 0, 0n, 0n, 0),
    end: makeKey(Zone.FS, ino | INODE_GROUP_MASK, 255, U64_MAX, U64_MAX, 255),
  };
}

/** First inode number of the group holding `ino` (callers sort multi-inode locks by it). */
export function inodeGroupFirst(ino: bigint): bigint {
  checkU64(ino, "ino");
  return ino & ~INODE_GROUP_MASK;
}

/** The global rename lock: a single key. */
export function renameRange(): LockRange {
  const k = renameLockKey();
  return { start: k, end: k };
}

/**
 * The inode index lock covering `seq` in index `type` (META_SEQ or DATA_SEQ): all inodes
 * whose index entry has a seq in the same group of LOCK_SEQ_GROUP_NR.
 */
export function inodeIndexRange(type: number, seq: bigint): LockRange {
  assert(type === InodeIndexType.META_SEQ || type === InodeIndexType.DATA_SEQ,
    `inode index type ${type}`);
  checkU64(seq, "index seq");
  return {
    start: makeKey(Zone.INODE_INDEX, 0n, type, seq & ~SEQ_GROUP_MASK, 0n, 0),
    end: makeKey(Zone.INODE_INDEX, 0n, type, seq | SEQ_GROUP_MASK, U64_MAX, 255),
  };
}

/** Every key of one zone. */
export function zoneRange(zone: number): LockRange {
  return {
    start: makeKey(zone, 0n, 0, 0n, 0n, 0),
    end: makeKey(zone, U64_MAX, 255, U64_MAX, U64_MAX, 255),
  };
}

export const orphanZoneRange = (): LockRange => zoneRange(Zone.ORPHAN);
export const totlZoneRange = (): LockRange => zoneRange(Zone.XATTR_TOTL);
export const indxZoneRange = (): LockRange => zoneRange(Zone.XATTR_INDX);
export const quotaZoneRange = (): LockRange => zoneRange(Zone.QUOTA);

/** Why a range is not a valid lock name, or undefined if it is one. */
export function rangeProblem(r: LockRange): string | undefined {
  if (r.start.length !== KEY_SIZE || r.end.length !== KEY_SIZE) return "key size";
  if (compareKeys(r.start, r.end) > 0) return "start after end";
  if (keyZone(r.start) !== keyZone(r.end)) return "range spans zones";
  return undefined;
}

export function rangesEqual(a: LockRange, b: LockRange): boolean {
  return a.start.equals(b.start) && a.end.equals(b.end);
}

export function rangesOverlap(a: LockRange, b: LockRange): boolean {
  return compareKeys(a.start, b.end) <= 0 && compareKeys(b.start, a.end) <= 0;
}

export function rangeContainsKey(r: LockRange, key: Buffer): boolean {
  return compareKeys(r.start, key) <= 0 && compareKeys(key, r.end) <= 0;
}

/** Orders ranges by start key: the order in which multi-lock callers must acquire. */
export function compareRanges(a: LockRange, b: LockRange): number {
  return compareKeys(a.start, b.start) || compareKeys(a.end, b.end);
}

/** "start K end K" with keys printed the upstream way. */
export function formatRange(r: LockRange): string {
  return `start ${formatKey(r.start)} end ${formatKey(r.end)}`;
}

/** A compact string identity of a range (its start key: names never share a start). */
export function rangeId(r: LockRange): string {
  return r.start.toString("hex");
}

// ---------------------------------------------------------------------------------------
// RangeTable: locks sorted by start key, never overlapping.

interface Slot<T> {
  range: LockRange;
  value: T;
}

/**
 * A sorted table of disjoint ranges (a sorted array with binary search: lookups are
 * O(log n), inserts and deletes move at most n references, which is cheap at the bounds the
 * lock client and server keep). Callers check overlap() before insert() when the range comes
 * from the network; insert() asserts it.
 */
export class RangeTable<T> {
  private readonly slots: Slot<T>[] = [];

  get size(): number {
    return this.slots.length;
  }

  /** Index of the first slot whose start is >= key. */
  private lowerBound(key: Buffer): number {
    let lo = 0;
    let hi = this.slots.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareKeys(this.slots[mid]!.range.start, key) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The value stored under exactly this range. */
  get(r: LockRange): T | undefined {
    const s = this.slots[this.lowerBound(r.start)];
    return s !== undefined && rangesEqual(s.range, r) ? s.value : undefined;
  }

  /** A stored range overlapping r (the equal one if stored), or undefined. */
  overlap(r: LockRange): LockRange | undefined {
    const i = this.lowerBound(r.start);
    const at = this.slots[i];
    if (at !== undefined && rangesOverlap(at.range, r)) return at.range;
    const before = this.slots[i - 1];
    if (before !== undefined && rangesOverlap(before.range, r)) return before.range;
    return undefined;
  }

  /** The stored range containing key, with its value. */
  find(key: Buffer): { range: LockRange; value: T } | undefined {
    const i = this.lowerBound(key);
    const at = this.slots[i];
    if (at !== undefined && at.range.start.equals(key)) return at;
    const before = this.slots[i - 1];
    return before !== undefined && rangeContainsKey(before.range, key) ? before : undefined;
  }

  insert(r: LockRange, value: T): void {
    assert(rangeProblem(r) === undefined, `lock range: ${rangeProblem(r) ?? ""}`);
    const i = this.lowerBound(r.start);
    const at = this.slots[i];
    const before = this.slots[i - 1];
    assert((at === undefined || compareKeys(r.end, at.range.start) < 0) &&
      (before === undefined || compareKeys(before.range.end, r.start) < 0),
    `lock range ${formatRange(r)} overlaps a stored one`);
    this.slots.splice(i, 0, { range: r, value });
  }

  delete(r: LockRange): boolean {
    const i = this.lowerBound(r.start);
    const at = this.slots[i];
    if (at === undefined || !rangesEqual(at.range, r)) return false;
    this.slots.splice(i, 1);
    return true;
  }

  /** Values in key order, from the first range whose start is >= from (default: all). */
  *values(from?: Buffer): IterableIterator<T> {
    for (let i = from === undefined ? 0 : this.lowerBound(from); i < this.slots.length; i++) {
      yield this.slots[i]!.value;
    }
  }
}
