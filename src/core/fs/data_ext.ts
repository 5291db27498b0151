/*
 * File extents in memory (upstream ext.c over data.c's extent items): a window of one
 * inode's data extent items, edited with upstream's exact split and merge rules, then turned
 * back into the item deletions and insertions that take the old window to the new one.
 *
 * An extent maps logical blocks [start, start + len) to data device blocks [map, map + len)
 * with flags (UNWRITTEN: allocated, reads as zeros; OFFLINE: no blocks, map 0). Its item is
 * keyed (ino, last logical block, len) with value {blkno, flags} (format.ts DataExtentValue).
 *
 * Why a window: an operation reads the extents of the region it changes, plus what the split
 * and merge rules look at (the neighbour on each side), edits them here and records only the
 * difference: a streaming append that extends the last extent costs one deletion and one
 * insertion whatever its length, never per-block item churn.
 *
 * Window contract (what load() in data.ts guarantees): every extent that ends at or after
 * `lo` and starts at or before `hi` is present, and so is the first extent starting after
 * `hi` when one exists. next(x) is therefore exact for lo <= x <= hi + 1, and set() may
 * change blocks in [lo + 1, hi] (it looks one block to each side for merging).
 *
 * online/offline deltas follow upstream's add_onoff: blocks of mapped extents that are not
 * UNWRITTEN are online, OFFLINE ones are offline, counted as extents are removed and inserted.
 */
import { assert } from "../../util/assert.js";
import { corrupt, EXTENT_FLAG_OFFLINE, EXTENT_FLAG_UNWRITTEN } from "../format.js";

export interface FileExtent {
  /** First logical block. */
  start: number;
  /** Blocks (>= 1). */
  len: number;
  /** First data device block, 0 when unmapped (OFFLINE). */
  map: number;
  flags: number;
}

export const extEnd = (e: FileExtent): number => e.start + e.len - 1;

/**
 * Upstream scoutfs_ext_can_merge: logically and physically contiguous, same flags; except
 * that an unmapped extent never merges with a mapped one. Upstream compares
 * `left.map + left.len == right.map` even when left is the unmapped range being removed
 * (ext_set with map 0, flags 0), so removing [s, s + n) "merges" with a written right
 * neighbour that happens to sit at blkno n: the neighbour's item is deleted and its blocks
 * are neither freed nor mapped (found by this project's data accounting check).
 */
export function canMerge(l: FileExtent, r: FileExtent): boolean {
  const maps = l.map === 0 || r.map === 0 ? l.map === 0 && r.map === 0 : l.map + l.len === r.map;
  return l.start + l.len === r.start && maps && l.flags === r.flags;
}

const mapAdd = (map: number, diff: number): number => (map === 0 ? 0 : map + diff);

/** Checks an extent read from an item: sane numbers and map/flag agreement. */
export function checkFileExtent(e: FileExtent): void {
  if (!Number.isSafeInteger(e.start) || e.start < 0 || !Number.isSafeInteger(e.len) ||
    e.len < 1 || !Number.isSafeInteger(e.start + e.len)) {
    throw corrupt(`data extent ${e.start}+${e.len}`);
  }
  if ((e.flags & ~(EXTENT_FLAG_OFFLINE | EXTENT_FLAG_UNWRITTEN)) !== 0) {
    throw corrupt(`data extent flags ${e.flags}`);
  }
  if (e.map === 0 && e.flags === 0) throw corrupt("data extent without blocks or flags");
}

export class ExtentMap {
  /** Sorted by start, disjoint. */
  private exts: FileExtent[];
  private readonly orig: Map<string, FileExtent>;
  onlineDelta = 0;
  offlineDelta = 0;

  constructor(exts: readonly FileExtent[], readonly lo: number, readonly hi: number) {
    assert(lo >= 0 && hi >= lo, `extent window [${lo}, ${hi}]`);
    this.exts = exts.map((e) => ({ ...e }));
    for (let i = 1; i < this.exts.length; i++) {
      if (this.exts[i - 1]!.start + this.exts[i - 1]!.len > this.exts[i]!.start) {
        throw corrupt(`data extents at ${this.exts[i - 1]!.start} and ${this.exts[i]!.start} ` +
          "overlap");
      }
    }
    this.orig = new Map(this.exts.map((e) => [keyOf(e), { ...e }]));
  }

  /** Every extent of the window, in order (copies). */
  all(): FileExtent[] {
    return this.exts.map((e) => ({ ...e }));
  }

  /** Index of the first extent ending at or after iblock (exts.length if none). */
  private firstEnding(iblock: number): number {
    let lo = 0;
    let hi = this.exts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (extEnd(this.exts[mid]!) < iblock) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The first extent ending at or after iblock (upstream ext_next(iblock, 1)). */
  next(iblock: number): FileExtent | null {
    assert(iblock >= this.lo && iblock <= this.hi + 1,
      `extent lookup ${iblock} outside the window`);
    const e = this.exts[this.firstEnding(iblock)];
    return e ? { ...e } : null;
  }

  /** The extent containing iblock, if any. */
  find(iblock: number): FileExtent | null {
    const e = this.next(iblock);
    return e && e.start <= iblock ? e : null;
  }

  private remove(e: FileExtent): void {
    const i = this.firstEnding(e.start);
    const x = this.exts[i];
    assert(x !== undefined && x.start === e.start && x.len === e.len, "removing a missing extent");
    this.exts.splice(i, 1);
    this.account(e, -1);
  }

  private insert(e: FileExtent): void {
    assert(e.len >= 1, "inserting an empty extent");
    const i = this.firstEnding(e.start);
    const x = this.exts[i];
    assert(x === undefined || x.start > extEnd(e), "inserting an overlapping extent");
    this.exts.splice(i, 0, { ...e });
    this.account(e, 1);
  }

  private account(e: FileExtent, sign: number): void {
    if (e.map !== 0 && (e.flags & EXTENT_FLAG_UNWRITTEN) === 0) this.onlineDelta += sign * e.len;
    else if ((e.flags & EXTENT_FLAG_OFFLINE) !== 0) this.offlineDelta += sign * e.len;
  }

  /**
   * Upstream scoutfs_ext_set: [start, start + len) gets map and flags (map 0 and flags 0
   * remove it). A change inside an existing extent splits it, and the split edges do not
   * merge; an edge that reaches the end of what it replaced merges with a compatible
   * neighbour. Returns the extents the change removed (their blocks may need freeing).
   */
  set(start: number, len: number, map: number, flags: number): FileExtent[] {
    assert(len >= 1 && start > this.lo - (this.lo === 0 ? 1 : 0) && start + len - 1 <= this.hi,
      `extent change ${start}+${len} outside the window [${this.lo}, ${this.hi}]`);
    const set: FileExtent = { start, len, map, flags };
    const removed: FileExtent[] = [];
    const found = this.next(start);
    let left: FileExtent | null = null;
    let right: FileExtent | null = null;
    if (found && found.start <= extEnd(set)) {
      assert(found.start <= start && extEnd(found) >= extEnd(set),
        `extent change ${start}+${len} not inside ${found.start}+${found.len}`);
      this.remove(found);
      removed.push({ start, len, map: mapAdd(found.map, start - found.start), flags: found.flags });
      if (found.start < start) left = { ...found, len: start - found.start };
      if (extEnd(found) > extEnd(set)) {
        const rs = extEnd(set) + 1;
        right = { start: rs, len: extEnd(found) - extEnd(set),
          map: mapAdd(found.map, rs - found.start), flags: found.flags };
      }
    }
    if (left) this.insert(left);
    else if (start > 0) this.mergeLeft(set);
    if (right) this.insert(right);
    else this.mergeRight(set);
    if (set.map !== 0 || set.flags !== 0) this.insert(set);
    return removed;
  }

  private mergeLeft(set: FileExtent): void {
    const l = this.next(set.start - 1);
    if (l && canMerge(l, set)) {
      this.remove(l);
      set.start = l.start;
      set.map = l.map;
      set.len += l.len;
    }
  }

  private mergeRight(set: FileExtent): void {
    const r = this.next(set.start + set.len);
    if (r && canMerge(set, r)) {
      this.remove(r);
      set.len += r.len;
    }
  }

  /** The item changes from the loaded window to now: extents to delete and to write. */
  changes(): { deletes: FileExtent[]; puts: FileExtent[] } {
    const now = new Map(this.exts.map((e) => [keyOf(e), e]));
    const deletes = [...this.orig].filter(([k]) => !now.has(k)).map(([, e]) => ({ ...e }));
    const puts = this.exts.filter((e) => {
      const o = this.orig.get(keyOf(e));
      return o === undefined || o.map !== e.map || o.flags !== e.flags;
    }).map((e) => ({ ...e }));
    return { deletes, puts };
  }
}

/** Items are keyed by (last block, len): the same key is the same item. */
function keyOf(e: FileExtent): string {
  return `${extEnd(e)}:${e.len}`;
}
