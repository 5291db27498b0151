/*
 * The mount's item cache (upstream item.c): the in-memory, lock-coherent view of items.
 *
 * What it holds:
 *  - complete ranges: sorted, disjoint, never adjacent key ranges (adjacent ones merge) in
 *    which every current item is cached, so a key of a complete range without an entry is a
 *    known absence (a negative hit). They are filled from the forest (fill) by a reader that
 *    holds a cluster lock covering them.
 *  - entries: clean items (current committed versions, only inside complete ranges) and the
 *    dirty items of the open transaction (anywhere: a dirty item is this mount's newest
 *    version of its key, written under a lock it still holds). A dirty deletion is a
 *    tombstone entry; it is written to the log tree at commit and hides older versions.
 *
 * Who calls it: src/core/client.ts. Reads under a held READ/WRITE lock use get/next/prev
 * and fill on a miss; put() records dirty items; a commit takes the dirty items with
 * beginCommit() and settles them with endCommit(ok); the lock invalidation hook calls
 * invalidate() once the transaction is committed (dropping clean items, keeping them when
 * the lock is only downgraded to READ).
 *
 * Delta items (ITEM_DELTA, .totl. contributions) are dirty only: put() adds a new delta to
 * the key's dirty one (sumDeltas, the merge's rule), a committed delta leaves the cache (its
 * value is this mount's contribution, not the key's value; readers combine the trees'), and
 * a delta added while its entry is in the commit in flight is kept apart (`later`) until that
 * commit settles, so that it is neither lost nor committed twice. Deltas are written under
 * WRITE_ONLY locks, which no reader holds, so a read under a lock never meets a dirty delta
 * (asserted); the clean value of a delta key is the combined one a fill read.
 *
 * Grants (grantProblem, asserted by the lock client as each grant is applied, upstream's
 * bug_on_inconsistent_grant_cache): a lock being granted covers no dirty item, and no cached
 * range unless both its old and new modes may read.
 *
 * Races: a fill carries items read from roots fetched before it started; if meanwhile an
 * entry left the cache (its committed version dropped, an invalidation, an eviction) the
 * fill could put back an older version. Every removal bumps `gen`, and a fill whose reader
 * saw an older gen is refused (upstream's read barrier); the reader retries.
 *
 * Bounds: `maxBytes` over entries and ranges, enforced by evicting clean items of the least
 * recently used complete range (in batches, trimming the range from its start); dirty items
 * are never evicted (the transaction bounds them) and the range a fill just made is spared
 * so the filling reader can use it. At most ITEM_CACHE_MAX_RANGES ranges.
 *
 * Speed: keys are compared as latin1 strings (one char per byte, so string order is key
 * order) converted once per call: Buffer.compare crosses into native code and costs ~10x.
 *
 * Invariants (checkInvariants, asserted in tests): ranges sorted, disjoint, non-adjacent;
 * every clean entry lies in a complete range and is not a tombstone; the dirty index holds
 * exactly the dirty entries; counts and bytes match the contents.
 */
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { type Item, ITEM_DELETION, ITEM_DELTA } from "./btree.js";
import { isZeroDelta, sumDeltas } from "./btree_merge.js";
import { compareKeys, formatKey, KEY_SIZE, keyDec, keyInc, MAX_KEY } from "./key.js";

/** Default byte bound of one mount's item cache. */
export const ITEM_CACHE_DEFAULT_BYTES = 64 * 1024 * 1024;
/** Complete ranges kept at once; beyond it the least recently used ranges are evicted. */
export const ITEM_CACHE_MAX_RANGES = 16_384;
/** Clean items one eviction step drops (trimming the victim range from its start). */
export const ITEM_CACHE_EVICT_BATCH = 256;
/** Items a reader asks the forest for per fill (upstream reads about one leaf). */
export const ITEM_CACHE_FILL_ITEMS = 256;
/** Fills a reader retries after races before it reads without caching. */
export const ITEM_CACHE_FILL_RETRIES = 4;
/** Accounting cost of an entry beyond its key and value (object, array slot). */
const ENTRY_OVERHEAD_BYTES = 96;
const RANGE_BYTES = 2 * KEY_SIZE + 64;
/** Entries per chunk of the sorted map. */
const CHUNK_MAX = 256;
assert(ITEM_CACHE_EVICT_BATCH > 0 && ITEM_CACHE_FILL_ITEMS > 0, "item cache batches");

export type ItemCacheCounter =
  | "item_cache_hit" | "item_cache_miss" | "item_cache_fill" | "item_cache_fill_raced"
  | "item_cache_evict" | "item_cache_evict_items" | "item_cache_invalidate";

/** A key and its current value (what reads return). */
export interface KeyVal {
  key: Buffer;
  val: Buffer;
}

/** get(): a cached value, a known absence, or unknown. */
export type CacheGet = { kind: "hit"; val: Buffer } | { kind: "negative" } | { kind: "miss" };
/**
 * next()/prev(): the item found (its key a new Buffer, its val the cache's own), none in the
 * asked range, or unknown from `at` on.
 */
export type CacheStep = { kind: "hit"; item: KeyVal } | { kind: "none" } |
  { kind: "miss"; at: Buffer };

/**
 * A cached item. The key is kept only as its latin1 string (what the sorted map compares):
 * a small Buffer is a slice of Node's 8 KiB allocation pool, and keys kept for a long time
 * pinned whole pool slabs (measured: 80 MB of slabs behind 64 MB of accounted cache).
 */
class Entry {
  later: Buffer | null = null;
  inFlight = false;

  constructor(
    /** key as a latin1 string: what the sorted map compares. */
    readonly sk: string,
    public val: Buffer,
    public seq: number,
    public flags: number,
    public dirty: boolean,
  ) {}

  /** The key as a Buffer (a new one each time). */
  get key(): Buffer {
    return Buffer.from(this.sk, "latin1");
  }
}

interface Range {
  start: Buffer;
  end: Buffer;
  /** start and end as latin1 strings. */
  s: string;
  e: string;
  /** Last use, from a counter: the smallest is evicted first. */
  tick: number;
}

const isTombstone = (e: { flags: number }): boolean => (e.flags & ITEM_DELETION) !== 0;
const isDelta = (e: { flags: number }): boolean => (e.flags & ITEM_DELTA) !== 0;
const entryBytes = (e: Entry): number =>
  2 * KEY_SIZE + e.val.length + (e.later?.length ?? 0) + ENTRY_OVERHEAD_BYTES;
/** The sort form of a key: latin1 maps each byte to one UTF-16 unit, keeping byte order. */
const sk = (k: Buffer): string => k.toString("latin1");
const minKey = (a: Buffer, b: Buffer): Buffer => (compareKeys(a, b) <= 0 ? a : b);
const maxKey = (a: Buffer, b: Buffer): Buffer => (compareKeys(a, b) >= 0 ? a : b);

/** True if b is the key right after a. */
function adjacent(a: Buffer, b: Buffer): boolean {
  return compareKeys(a, b) < 0 && !a.equals(MAX_KEY) && keyInc(a).equals(b);
}

// ---------------------------------------------------------------------------------------
// A sorted map of entries: chunks of at most CHUNK_MAX entries, each sorted, in key order.
// Lookups binary-search the chunks then the chunk; inserts move at most one chunk's slots.

class SortedEntries {
  private readonly chunks: Entry[][] = [];
  size = 0;

  /** Index of the first chunk whose last key is >= key (chunks.length if none). */
  private chunkFor(key: string): number {
    let lo = 0;
    let hi = this.chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = this.chunks[mid]!;
      if (c[c.length - 1]!.sk < key) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private static lower(c: Entry[], key: string): number {
    let lo = 0;
    let hi = c.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (c[mid]!.sk < key) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  get(key: string): Entry | undefined {
    const c = this.chunks[this.chunkFor(key)];
    if (c === undefined) return undefined;
    const e = c[SortedEntries.lower(c, key)];
    return e !== undefined && e.sk === key ? e : undefined;
  }

  insert(e: Entry): void {
    if (this.chunks.length === 0) {
      this.chunks.push([e]);
      this.size++;
      return;
    }
    const ci = Math.min(this.chunkFor(e.sk), this.chunks.length - 1);
    const c = this.chunks[ci]!;
    const i = SortedEntries.lower(c, e.sk);
    assert(c[i] === undefined || c[i].sk !== e.sk, "sorted map insert of a present key");
    c.splice(i, 0, e);
    this.size++;
    if (c.length > CHUNK_MAX) this.chunks.splice(ci + 1, 0, c.splice(c.length >>> 1));
  }

  remove(key: string): Entry | undefined {
    const ci = this.chunkFor(key);
    const c = this.chunks[ci];
    if (c === undefined) return undefined;
    const i = SortedEntries.lower(c, key);
    const e = c[i];
    if (e === undefined || e.sk !== key) return undefined;
    c.splice(i, 1);
    if (c.length === 0) this.chunks.splice(ci, 1);
    this.size--;
    return e;
  }

  /** The first entry with a key >= key. */
  ceil(key: string): Entry | undefined {
    const c = this.chunks[this.chunkFor(key)];
    return c === undefined ? undefined : c[SortedEntries.lower(c, key)];
  }

  /** The last entry with a key <= key. */
  floor(key: string): Entry | undefined {
    const ci = this.chunkFor(key);
    const c = this.chunks[ci];
    if (c !== undefined) {
      const i = SortedEntries.lower(c, key);
      if (c[i] !== undefined && c[i].sk === key) return c[i];
      if (i > 0) return c[i - 1];
    }
    const before = this.chunks[ci - 1];
    return before === undefined ? undefined : before[before.length - 1];
  }

  /** The entry after e (which is in the map), in key order. */
  after(e: Entry): Entry | undefined {
    const ci = this.chunkFor(e.sk);
    const c = this.chunks[ci]!;
    const i = SortedEntries.lower(c, e.sk) + 1;
    return i < c.length ? c[i] : this.chunks[ci + 1]?.[0];
  }

  /** The entry before e (which is in the map), in key order. */
  before(e: Entry): Entry | undefined {
    const ci = this.chunkFor(e.sk);
    const c = this.chunks[ci]!;
    const i = SortedEntries.lower(c, e.sk) - 1;
    if (i >= 0) return c[i];
    const prev = this.chunks[ci - 1];
    return prev === undefined ? undefined : prev[prev.length - 1];
  }

  /** Calls fn for entries from the first key >= start on, in order, until it returns false. */
  forEachFrom(start: string, fn: (e: Entry) => boolean): void {
    const first = this.chunkFor(start);
    for (let ci = first; ci < this.chunks.length; ci++) {
      const c = this.chunks[ci]!;
      for (let i = ci === first ? SortedEntries.lower(c, start) : 0; i < c.length; i++) {
        if (!fn(c[i]!)) return;
      }
    }
  }

  /** Removes the entries of [start, end] that `pred` selects; returns them. */
  removeWhere(start: string, end: string, pred: (e: Entry) => boolean): Entry[] {
    const gone: Entry[] = [];
    this.forEachFrom(start, (e) => {
      if (e.sk > end) return false;
      if (pred(e)) gone.push(e);
      return true;
    });
    for (const e of gone) this.remove(e.sk);
    return gone;
  }

  *all(): IterableIterator<Entry> {
    for (const c of this.chunks) yield* c;
  }
}

// ---------------------------------------------------------------------------------------

export interface ItemCacheOptions {
  /** Byte bound (default ITEM_CACHE_DEFAULT_BYTES). */
  maxBytes?: number;
  /** Complete ranges bound (default ITEM_CACHE_MAX_RANGES). */
  maxRanges?: number;
}

export class ItemCache {
  private readonly entries = new SortedEntries();
  /** The dirty entries, in key order (commits write them sorted). */
  private readonly dirtyIndex = new SortedEntries();
  private readonly ranges: Range[] = [];
  private readonly maxBytes: number;
  private readonly maxRanges: number;
  private bytesUsed = 0;
  private pending = 0;
  private tick = 0;
  private generation = 0;
  /** The entries of the commit in flight (null when none). */
  private inFlight: Entry[] | null = null;
  private commitsDone = 0;
  private commitsBegun = 0;

  constructor(private readonly counters: Counters, opts: ItemCacheOptions = {}) {
    this.maxBytes = opts.maxBytes ?? ITEM_CACHE_DEFAULT_BYTES;
    this.maxRanges = opts.maxRanges ?? ITEM_CACHE_MAX_RANGES;
    assert(Number.isSafeInteger(this.maxBytes) && this.maxBytes > 0, "item cache bytes");
    assert(Number.isSafeInteger(this.maxRanges) && this.maxRanges > 0, "item cache ranges");
  }

  /** Changes whenever an entry or range leaves the cache (see fill). */
  get gen(): number {
    return this.generation;
  }

  /**
   * Commits settled as committed: their items left the dirty index, so a lock-less reader
   * whose forest roots predate one must read again (it cannot see them in either place).
   */
  get commits(): number {
    return this.commitsDone;
  }

  /**
   * Changes whenever a commit takes the dirty items or settles: a lock-less reader adding
   * its dirty deltas to the forest's value needs none of either during its read.
   */
  get commitEpoch(): number {
    return this.commitsBegun + this.commitsDone;
  }

  /** A commit took the dirty items and has not settled: they may or may not be committed. */
  get commitInFlight(): boolean {
    return this.inFlight !== null;
  }

  get bytes(): number {
    return this.bytesUsed;
  }

  get entryCount(): number {
    return this.entries.size;
  }

  get rangeCount(): number {
    return this.ranges.length;
  }

  /** Dirty entries, those of the commit in flight included. */
  get dirtyCount(): number {
    return this.dirtyIndex.size;
  }

  /** Dirty entries the commit in flight does not carry (the next transaction's). */
  get pendingDirtyCount(): number {
    return this.pending;
  }

  /** True if key has a dirty version the commit in flight does not carry. */
  isPendingDirty(key: Buffer): boolean {
    const e = this.dirtyIndex.get(sk(key));
    return e !== undefined && !e.inFlight;
  }

  /** The complete ranges, in key order (tests, debugging). */
  completeRanges(): { start: Buffer; end: Buffer }[] {
    return this.ranges.map((r) => ({ start: r.start, end: r.end }));
  }

  // -------------------------------------------------------------------------------------
  // Reads.

  /** key's cached value, a known absence, or a miss. Dirty entries answer anywhere. */
  get(key: Buffer): CacheGet {
    const k = sk(key);
    const r = this.touch(k);
    const e = this.entries.get(k);
    if (e !== undefined) {
      assertNotDirtyDelta(e);
      this.count("item_cache_hit");
      return isTombstone(e) ? { kind: "negative" } : { kind: "hit", val: e.val };
    }
    if (r !== undefined) {
      this.count("item_cache_hit");
      return { kind: "negative" };
    }
    this.count("item_cache_miss");
    return { kind: "miss" };
  }

  /**
   * The dirty version of key (tombstones included; a delta: this mount's whole uncommitted
   * contribution, in flight or not), without a lock: no clean entries.
   */
  getDirty(key: Buffer): Item | undefined {
    return dirtyItem(this.dirtyIndex.get(sk(key)));
  }

  /** The first dirty entry (tombstones included) with key <= its key <= end. */
  nextDirty(key: Buffer, end: Buffer): Item | undefined {
    const e = this.dirtyIndex.ceil(sk(key));
    return e === undefined || e.sk > sk(end) ? undefined : dirtyItem(e);
  }

  /** The last dirty entry (tombstones included) with start <= its key <= key. */
  prevDirty(key: Buffer, start: Buffer): Item | undefined {
    const e = this.dirtyIndex.floor(sk(key));
    return e === undefined || e.sk < sk(start) ? undefined : dirtyItem(e);
  }

  /** The first current item in [key, end] as far as complete ranges tell. */
  next(key: Buffer, end: Buffer): CacheStep {
    const last = sk(end);
    let p = sk(key);
    for (;;) {
      if (p > last) return { kind: "none" };
      const r = this.touch(p);
      if (r === undefined) {
        this.count("item_cache_miss");
        return { kind: "miss", at: Buffer.from(p, "latin1") };
      }
      const bound = r.e < last ? r.e : last;
      let e = this.entries.ceil(p);
      while (e !== undefined && e.sk <= bound && isTombstone(e)) e = this.entries.after(e);
      if (e !== undefined && e.sk <= bound) {
        assertNotDirtyDelta(e);
        this.count("item_cache_hit");
        return { kind: "hit", item: { key: e.key, val: e.val } };
      }
      if (bound >= last) {
        this.count("item_cache_hit");
        return { kind: "none" };
      }
      // the range ends before `end` (and so before MAX_KEY): the next key is a miss
      p = sk(keyInc(r.end));
    }
  }

  /**
   * Calls fn with the value of each current item of [start, end] in key order, while fn
   * returns true, as far as complete ranges tell: "done" when fn stopped or end was reached,
   * else the first key not known ("miss"; the caller fills from there and scans on). fn gets
   * the cache's own buffer: it must not keep or change it, nor call into the cache. One walk
   * of the sorted entries instead of a next() per item (directory listings, whose values
   * carry everything: no key is built).
   */
  scan(start: Buffer, end: Buffer, fn: (val: Buffer) => boolean):
    { kind: "done" } | { kind: "miss"; at: Buffer } {
    const last = sk(end);
    let p = sk(start);
    let n = 0;
    for (;;) {
      if (p > last) break;
      const r = this.touch(p);
      if (r === undefined) {
        this.count("item_cache_miss");
        return { kind: "miss", at: Buffer.from(p, "latin1") };
      }
      const bound = r.e < last ? r.e : last;
      let stopped = false;
      this.entries.forEachFrom(p, (e) => {
        if (e.sk > bound) return false;
        if (isTombstone(e)) return true;
        assertNotDirtyDelta(e);
        n++;
        if (fn(e.val)) return true;
        stopped = true;
        return false;
      });
      if (stopped || bound >= last) break;
      p = sk(keyInc(r.end));
    }
    if (n > 0) this.counters.inc("item_cache_hit", n);
    return { kind: "done" };
  }

  /** The last current item in [start, key] as far as complete ranges tell. */
  prev(key: Buffer, start: Buffer): CacheStep {
    const first = sk(start);
    let p = sk(key);
    for (;;) {
      if (p < first) return { kind: "none" };
      const r = this.touch(p);
      if (r === undefined) {
        this.count("item_cache_miss");
        return { kind: "miss", at: Buffer.from(p, "latin1") };
      }
      const bound = r.s > first ? r.s : first;
      let e = this.entries.floor(p);
      while (e !== undefined && e.sk >= bound && isTombstone(e)) e = this.entries.before(e);
      if (e !== undefined && e.sk >= bound) {
        assertNotDirtyDelta(e);
        this.count("item_cache_hit");
        return { kind: "hit", item: { key: e.key, val: e.val } };
      }
      if (bound <= first) {
        this.count("item_cache_hit");
        return { kind: "none" };
      }
      p = sk(keyDec(r.start));
    }
  }

  /** Where a forward fill from key should stop: before the next complete range, by end. */
  fillEnd(key: Buffer, end: Buffer): Buffer {
    const r = this.ranges[this.firstEndingAtOrAfter(sk(key))];
    if (r === undefined || r.s <= sk(key)) return end;
    return minKey(end, keyDec(r.start));
  }

  /** Where a backward fill ending at key should start: after the previous range, by start. */
  fillStart(key: Buffer, start: Buffer): Buffer {
    const r = this.ranges[this.lastStartingAtOrBefore(sk(key))];
    if (r === undefined || r.e >= sk(key)) return start;
    return maxKey(start, keyInc(r.end));
  }

  /**
   * Records [start, end] as complete with the current items read for it (sorted, inside
   * the range; tombstones are skipped: absence is what a complete range says). Entries
   * already cached win: they are dirty (newer) or as new. Refused (false) when `gen` is not
   * the current one: something left the cache since the reader started.
   */
  fill(start: Buffer, end: Buffer, items: readonly Item[], gen: number): boolean {
    assert(compareKeys(start, end) <= 0, "fill range start after end");
    if (gen !== this.generation) {
      this.count("item_cache_fill_raced");
      return false;
    }
    const s = sk(start);
    const last = sk(end);
    let prev = "";
    for (const it of items) {
      const k = sk(it.key);
      if (k < s || k > last) assert(false, `fill item ${formatKey(it.key)} outside the range`);
      assert(prev === "" || prev < k, "fill items sorted");
      prev = k;
      if (isTombstone(it) || this.entries.get(k) !== undefined) continue;
      const e = new Entry(k, Buffer.from(it.val), it.seq, it.flags, false);
      this.entries.insert(e);
      this.bytesUsed += entryBytes(e);
    }
    this.addRange(start, end);
    this.count("item_cache_fill");
    this.evict(s, last);
    return true;
  }

  // -------------------------------------------------------------------------------------
  // Dirty items and commits.

  /**
   * Records a new dirty version, or adds a delta to the key's dirty one; the cache owns the
   * item's buffers from now on. The caller bounds the dirty count.
   */
  put(it: Item): void {
    assert(it.key.length === KEY_SIZE, "item key size");
    const k = sk(it.key);
    const e = this.entries.get(k);
    if (e === undefined) {
      const n = new Entry(k, it.val, it.seq, it.flags, true);
      this.entries.insert(n);
      this.dirtyIndex.insert(n);
      this.bytesUsed += entryBytes(n);
      this.pending++;
      return;
    }
    if (isDelta(it)) {
      this.addDelta(e, it);
      return;
    }
    this.bytesUsed -= entryBytes(e);
    e.val = it.val;
    e.seq = it.seq;
    e.flags = it.flags;
    e.later = null; // a newest-wins version replaces every delta before it
    this.bytesUsed += entryBytes(e);
    if (!e.dirty) {
      e.dirty = true;
      this.dirtyIndex.insert(e);
      this.pending++;
    } else if (e.inFlight) {
      // the commit carries the older version; this one belongs to the next transaction
      e.inFlight = false;
      this.pending++;
    }
  }

  /**
   * Adds a delta to the key's dirty delta (a dirty delta only: a clean entry is a read value
   * that no WRITE_ONLY holder can have, and a dirty newest-wins version cannot take a delta).
   */
  private addDelta(e: Entry, it: Item): void {
    assert(e.dirty && isDelta(e), `delta over a ${e.dirty ? "dirty" : "clean"} ` +
      `non-delta version of ${formatKey(it.key)}`);
    this.bytesUsed -= entryBytes(e);
    e.seq = Math.max(e.seq, it.seq);
    if (e.inFlight) {
      // the commit carries val; this part belongs to the next transaction
      e.inFlight = false;
      e.later = it.val;
      this.pending++;
    } else if (e.later !== null) {
      e.later = sumDeltas([e.later, it.val]);
    } else {
      e.val = sumDeltas([e.val, it.val]);
    }
    this.bytesUsed += entryBytes(e);
  }

  /** Takes the dirty items for a commit, in key order (fresh Items, shared buffers). */
  beginCommit(): Item[] {
    assert(this.inFlight === null, "a commit is already in flight");
    const taken: Entry[] = [...this.dirtyIndex.all()];
    const items: Item[] = [];
    this.commitsBegun++;
    for (const e of taken) {
      assert(e.dirty, "dirty index holds a clean entry");
      assert(e.later === null, "a delta kept apart with no commit in flight");
      e.inFlight = true;
      // the entry's own buffers: nothing changes an item's buffers in place (a new version
      // replaces them), and copying every dirty item showed in profiles of commits
      items.push({ key: e.key, val: e.val, seq: e.seq, flags: e.flags });
    }
    this.inFlight = taken;
    this.pending = 0;
    return items;
  }

  /**
   * Settles the commit in flight. Committed: entries it carried (and that did not change
   * since) are clean; those outside complete ranges, and committed tombstones, leave the
   * cache (a complete range already says the key is absent). Failed: they stay dirty for
   * the next commit.
   */
  endCommit(committed: boolean): void {
    const taken = this.inFlight;
    assert(taken !== null, "no commit in flight");
    this.inFlight = null;
    if (committed) this.commitsDone++;
    let removed = false;
    for (const e of taken) {
      if (e.later !== null) {
        this.settleLater(e, committed);
        continue;
      }
      if (!e.inFlight) continue;
      e.inFlight = false;
      if (!committed) {
        this.pending++;
        continue;
      }
      e.dirty = false;
      assert(this.dirtyIndex.remove(e.sk) === e, "committed entry in the dirty index");
      if (isTombstone(e) || isDelta(e) || this.rangeAt(e.sk) === undefined) {
        assert(this.entries.remove(e.sk) === e, "committed entry cached");
        this.bytesUsed -= entryBytes(e);
        removed = true;
      }
    }
    if (removed) this.generation++;
  }

  /** A delta updated during the commit: what is left of it once the commit settled. */
  private settleLater(e: Entry, committed: boolean): void {
    const later = e.later;
    assert(later !== null && e.dirty && !e.inFlight && isDelta(e), "delta kept apart");
    this.bytesUsed -= entryBytes(e);
    e.val = committed ? later : sumDeltas([e.val, later]);
    e.later = null;
    this.bytesUsed += entryBytes(e);
  }

  // -------------------------------------------------------------------------------------
  // Invalidation and eviction.

  /**
   * A lock covering [start, end] is lowered: with keepClean (downgrade to READ) the cache
   * stays valid; otherwise complete ranges and clean entries of [start, end] are dropped.
   * Dirty entries are never dropped: the caller committed what the lock dirtied first, and
   * any left belong to writes that were not made under this lock.
   */
  invalidate(start: Buffer, end: Buffer, keepClean: boolean): void {
    assert(compareKeys(start, end) <= 0, "invalidate range start after end");
    this.count("item_cache_invalidate");
    if (keepClean) return;
    this.subtractRange(start, end);
    for (const e of this.entries.removeWhere(sk(start), sk(end), (x) => !x.dirty)) {
      this.bytesUsed -= entryBytes(e);
    }
    this.generation++;
  }

  /**
   * Why a lock covering [start, end] may not be granted now, or null (upstream's
   * bug_on_inconsistent_grant_cache). No dirty item may lie in it: only WRITE and WRITE_ONLY
   * dirty items and a grant never comes from either (WRITE_ONLY reaches WRITE through NULL,
   * whose invalidation committed them). Nothing may be cached in it unless both the old and
   * the new mode may read (cachedAllowed: READ upgraded to WRITE keeps its cache): cached
   * items from before a NULL would be stale. Clean entries lie in complete ranges, so
   * looking at the ranges is enough.
   */
  grantProblem(start: Buffer, end: Buffer, cachedAllowed: boolean): string | null {
    const s = sk(start);
    const last = sk(end);
    const d = this.dirtyIndex.ceil(s);
    if (d !== undefined && d.sk <= last) return `dirty item ${formatKey(d.key)}`;
    if (cachedAllowed) return null;
    const r = this.ranges[this.firstEndingAtOrAfter(s)];
    if (r !== undefined && r.s <= last) {
      return `cached range ${formatKey(r.start)}..${formatKey(r.end)}`;
    }
    return null;
  }

  /** Clean entries and complete ranges overlapping [start, end] (grant-time checks). */
  cleanIn(start: Buffer, end: Buffer): { entries: number; ranges: number } {
    const s = sk(start);
    const last = sk(end);
    let entries = 0;
    this.entries.forEachFrom(s, (e) => {
      if (e.sk > last) return false;
      if (!e.dirty) entries++;
      return true;
    });
    const ranges = this.ranges.filter((r) => r.s <= last && s <= r.e).length;
    return { entries, ranges };
  }

  /**
   * Evicts clean items of least recently used ranges down to the bounds, sparing
   * [spareStart, spareEnd] (what a fill just made: its reader is about to use it). Ranges
   * merge, so a victim may contain the spared part; only what lies outside it is evicted.
   */
  private evict(spareStart: string, spareEnd: string): void {
    let evicted = false;
    while (this.bytesUsed > this.maxBytes || this.ranges.length > this.maxRanges) {
      const victim = this.lruRange(spareStart, spareEnd);
      if (victim === undefined) break;
      let lo = victim.start;
      let hi = victim.end;
      if (victim.s <= spareEnd && spareStart <= victim.e) {
        // overlaps the spared part: its front if it has one, else its back
        if (victim.s < spareStart) hi = keyDec(Buffer.from(spareStart, "latin1"));
        else lo = keyInc(Buffer.from(spareEnd, "latin1"));
      }
      this.evictSegment(lo, hi, this.ranges.length > this.maxRanges);
      evicted = true;
    }
    if (evicted) this.generation++;
  }

  /** The least recently used range with a part outside [spareStart, spareEnd]. */
  private lruRange(spareStart: string, spareEnd: string): Range | undefined {
    let best: Range | undefined;
    for (const r of this.ranges) {
      if (spareStart <= r.s && r.e <= spareEnd) continue;
      if (best === undefined || r.tick < best.tick) best = r;
    }
    return best;
  }

  /**
   * Drops up to a batch of clean entries of [lo, hi] (a part of one range) from lo on, all
   * of them if `whole`, and forgets that what was dropped is known: [lo, last dropped], or
   * the whole part when it has no more clean entries.
   */
  private evictSegment(lo: Buffer, hi: Buffer, whole: boolean): void {
    const last = sk(hi);
    const victims: Entry[] = [];
    let cut: Buffer = hi;
    this.entries.forEachFrom(sk(lo), (e) => {
      if (e.sk > last) return false;
      if (e.dirty) return true;
      victims.push(e);
      if (!whole && victims.length >= ITEM_CACHE_EVICT_BATCH) {
        cut = e.key;
        return false;
      }
      return true;
    });
    for (const e of victims) {
      assert(this.entries.remove(e.sk) === e, "evicted entry cached");
      this.bytesUsed -= entryBytes(e);
    }
    this.count("item_cache_evict");
    this.counters.inc("item_cache_evict_items", victims.length);
    this.subtractRange(lo, cut);
  }

  // -------------------------------------------------------------------------------------
  // Complete ranges.

  /** Index of the first range whose end is >= key. */
  private firstEndingAtOrAfter(key: string): number {
    let lo = 0;
    let hi = this.ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ranges[mid]!.e < key) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Index of the last range whose start is <= key (-1 if none). */
  private lastStartingAtOrBefore(key: string): number {
    let lo = 0;
    let hi = this.ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ranges[mid]!.s <= key) lo = mid + 1;
      else hi = mid;
    }
    return lo - 1;
  }

  private rangeAt(key: string): Range | undefined {
    const r = this.ranges[this.firstEndingAtOrAfter(key)];
    return r !== undefined && r.s <= key ? r : undefined;
  }

  /** The range containing key, marked used. */
  private touch(key: string): Range | undefined {
    const r = this.rangeAt(key);
    if (r !== undefined) r.tick = ++this.tick;
    return r;
  }

  private newRange(start: Buffer, end: Buffer, tick: number): Range {
    return { start, end, s: sk(start), e: sk(end), tick };
  }

  /** Adds [start, end], merging every range it overlaps or touches. */
  private addRange(start: Buffer, end: Buffer): void {
    let i = this.firstEndingAtOrAfter(sk(start));
    const before = this.ranges[i - 1];
    if (before !== undefined && adjacent(before.end, start)) i--;
    let j = i;
    let s = start;
    let e = end;
    for (; j < this.ranges.length; j++) {
      const r = this.ranges[j]!;
      if (compareKeys(r.start, e) > 0 && !adjacent(e, r.start)) break;
      s = minKey(s, r.start);
      e = maxKey(e, r.end);
    }
    this.ranges.splice(i, j - i, this.newRange(s, e, ++this.tick));
    this.bytesUsed += RANGE_BYTES * (1 - (j - i));
  }

  /** Removes [start, end] from the complete ranges, keeping what lies outside it. */
  private subtractRange(start: Buffer, end: Buffer): void {
    const i = this.firstEndingAtOrAfter(sk(start));
    const keep: Range[] = [];
    let j = i;
    for (; j < this.ranges.length; j++) {
      const r = this.ranges[j]!;
      if (compareKeys(r.start, end) > 0) break;
      if (compareKeys(r.start, start) < 0) keep.push(this.newRange(r.start, keyDec(start), r.tick));
      if (compareKeys(r.end, end) > 0) keep.push(this.newRange(keyInc(end), r.end, r.tick));
    }
    this.ranges.splice(i, j - i, ...keep);
    this.bytesUsed += RANGE_BYTES * (keep.length - (j - i));
  }

  // -------------------------------------------------------------------------------------

  /** Asserts every invariant of the header (tests; O(n)). */
  checkInvariants(): void {
    let bytes = this.ranges.length * RANGE_BYTES;
    this.ranges.forEach((r, i) => {
      assert(compareKeys(r.start, r.end) <= 0, "range start after end");
      assert(r.s === sk(r.start) && r.e === sk(r.end), "range sort keys");
      const prev = this.ranges[i - 1];
      assert(prev === undefined || (compareKeys(prev.end, r.start) < 0 &&
        !adjacent(prev.end, r.start)), "ranges sorted, disjoint and merged");
    });
    let dirty = 0;
    let pending = 0;
    let prevKey = "";
    for (const e of this.entries.all()) {
      assert(e.sk === sk(e.key), "entry sort key");
      assert(prevKey === "" || prevKey < e.sk, "entries sorted");
      prevKey = e.sk;
      bytes += entryBytes(e);
      assert(e.later === null || (e.dirty && isDelta(e) && !e.inFlight &&
        this.inFlight?.includes(e) === true), "delta kept apart outside a commit");
      if (e.dirty) {
        dirty++;
        if (!e.inFlight) pending++;
        assert(this.dirtyIndex.get(e.sk) === e, "dirty entry indexed");
      } else {
        assert(!e.inFlight, "clean entry in flight");
        assert(!isTombstone(e), "clean tombstone cached");
        assert(this.rangeAt(e.sk) !== undefined, `clean ${formatKey(e.key)} outside ranges`);
      }
    }
    assert(dirty === this.dirtyIndex.size, "dirty index size");
    assert(pending === this.pending, "pending dirty count");
    assert(bytes === this.bytesUsed, `cache bytes ${this.bytesUsed} != ${bytes}`);
  }

  private count(c: ItemCacheCounter): void {
    this.counters.inc(c);
  }
}

/**
 * What a lock-less reader sees of a key this mount holds the dirty delta `d` of: the
 * forest's current version `f` (combined over the trees, or null) plus d, as an open log
 * tree's delta always adds (forest.ts); over a newest-wins version, d is newer and stands
 * alone (btree_merge.ts's rule for mixed versions). Null when it sums to zero: absent.
 */
export function addDirtyDelta(f: Item | null, d: Item): Item | null {
  assert(isDelta(d), "addDirtyDelta of a non-delta");
  const val = f !== null && isDelta(f) ? sumDeltas([f.val, d.val]) : d.val;
  if (isZeroDelta(val)) return null;
  return { key: d.key, val, seq: Math.max(d.seq, f?.seq ?? 0), flags: ITEM_DELTA };
}

/** A dirty entry as an item: a delta with both its parts. */
function dirtyItem(e: Entry | undefined): Item | undefined {
  if (e === undefined) return undefined;
  const val = e.later === null ? e.val : sumDeltas([e.val, e.later]);
  return { key: e.key, val, seq: e.seq, flags: e.flags };
}

/** A read under a lock (READ or WRITE) never meets a dirty delta (see the header). */
function assertNotDirtyDelta(e: Entry): void {
  if (e.dirty && isDelta(e)) assert(false, `a locked read met the dirty delta ${formatKey(e.key)}`);
}
