/*
 * K-way merge of read-only btrees into a writable one (upstream scoutfs_btree_merge).
 *
 * Log merging (issue: cluster engine) has clients merge the items of finalized log trees into
 * subtrees of fs_root. For each key in [start, end] present in any input, the version with the
 * greatest seq wins; a winning tombstone deletes the key from the destination (or is kept as a
 * tombstone when the destination is itself a log tree); DELTA items (.totl. totals) are not
 * "newest wins" but summed, with the destination's current value, and dropped when they sum to
 * zero. A destination item with a greater seq than every input version is left alone, so
 * merging the same input twice changes nothing for ordinary items.
 *
 * The work is bounded: a call stops after `maxItems` keys or once the transaction holds
 * `maxDirtyBlocks` dirty blocks, and returns the key to resume from; the caller commits the
 * destination and that resume key together, which is what makes a resumed merge exact (deltas
 * included: each input key is applied exactly once).
 */
import { assert } from "../util/assert.js";
import type { BlockCache, MetaTxn } from "./block.js";
import { btreeDelete, btreeFindLeaf, btreeForce, btreeLookup } from "./btree.js";
import { cmpKeyAt, type Item, ITEM_DELETION, ITEM_DELTA, itemAt, lowerBound, nrItems } from "./btree_block.js";
import type { BtreeRoot } from "./format.js";
import { keyInc, MAX_KEY } from "./key.js";

export interface MergeOptions {
  /** Apply winning tombstones as deletions (merging into fs_root) instead of keeping them. */
  dropTombstones: boolean;
  /** Keys to process before returning (bounds the work of one call). */
  maxItems: number;
  /** Stop once the transaction has this many dirty blocks. */
  maxDirtyBlocks?: number;
  /**
   * Asked before each key is applied; false stops the merge with that key as the resume key
   * (a mount merging into an fs_root subtree stops before the subtree's root could split or
   * collapse, or before its allocator runs low).
   */
  canApply?: (key: Buffer) => boolean | Promise<boolean>;
}

export interface MergeResult {
  /** The key to resume from, or null when [start, end] is fully merged. */
  next: Buffer | null;
  /** Keys whose merged version was applied. */
  keys: number;
}

/** Reads one input tree in key order a leaf at a time. */
class Cursor {
  private items: Item[] = [];
  private idx = 0;
  private leafEnd: Buffer = MAX_KEY;
  done = false;

  constructor(private readonly cache: BlockCache, private readonly root: BtreeRoot,
    private readonly end: Buffer) {}

  async seek(key: Buffer): Promise<void> {
    for (let k = key; ;) {
      const leaf = await btreeFindLeaf(this.cache, this.root, k);
      if (!leaf) {
        this.done = true;
        return;
      }
      const nr = nrItems(leaf.buf);
      this.items = [];
      for (let i = lowerBound(leaf.buf, k); i < nr && cmpKeyAt(leaf.buf, i, this.end) <= 0; i++) {
        this.items.push(itemAt(leaf.buf, i));
      }
      this.idx = 0;
      this.leafEnd = leaf.end;
      if (this.items.length > 0) return;
      if (leaf.end.equals(MAX_KEY) || Buffer.compare(leaf.end, this.end) >= 0) {
        this.done = true;
        return;
      }
      k = keyInc(leaf.end);
    }
  }

  head(): Item | null {
    return this.done ? null : this.items[this.idx] ?? null;
  }

  async advance(): Promise<void> {
    this.idx++;
    if (this.idx < this.items.length) return;
    if (this.leafEnd.equals(MAX_KEY) || Buffer.compare(this.leafEnd, this.end) >= 0) {
      this.done = true;
      return;
    }
    await this.seek(keyInc(this.leafEnd));
  }
}

const DELTA_LEN = 16;

/** A delta value is {total s64, count s64}. */
export function encodeDelta(total: bigint, count: bigint): Buffer {
  const b = Buffer.alloc(DELTA_LEN);
  b.writeBigInt64LE(total, 0);
  b.writeBigInt64LE(count, 8);
  return b;
}

export function decodeDelta(v: Buffer): { total: bigint; count: bigint } {
  assert(v.length === DELTA_LEN, "delta item value size");
  return { total: v.readBigInt64LE(0), count: v.readBigInt64LE(8) };
}

/** The sum of delta values (the merge's and the forest reads' one combination rule). */
export function sumDeltas(vals: Buffer[]): Buffer {
  let total = 0n;
  let count = 0n;
  for (const v of vals) {
    const d = decodeDelta(v);
    total += d.total;
    count += d.count;
  }
  return encodeDelta(BigInt.asIntN(64, total), BigInt.asIntN(64, count));
}

export function isZeroDelta(v: Buffer): boolean {
  const d = decodeDelta(v);
  return d.total === 0n && d.count === 0n;
}

async function applyKey(w: MetaTxn, dest: BtreeRoot, versions: Item[], opts: MergeOptions):
  Promise<void> {
  const key = versions[0]!.key;
  const existing = await btreeLookup(w.cache, dest, key);
  if (versions.every((v) => (v.flags & ITEM_DELTA) !== 0)) {
    const vals = versions.map((v) => v.val);
    if (existing && (existing.flags & ITEM_DELTA) !== 0) vals.push(existing.val);
    const sum = sumDeltas(vals);
    const seq = Math.max(...versions.map((v) => v.seq), existing?.seq ?? 0);
    if (isZeroDelta(sum)) {
      if (existing) await btreeDelete(w, dest, key);
    } else {
      await btreeForce(w, dest, key, sum, { seq, flags: ITEM_DELTA });
    }
    return;
  }
  let win = versions[0]!;
  for (const v of versions) if (v.seq > win.seq) win = v;
  if (existing && existing.seq > win.seq) return;
  if ((win.flags & ITEM_DELETION) !== 0 && opts.dropTombstones) {
    if (existing) await btreeDelete(w, dest, key);
    return;
  }
  await btreeForce(w, dest, key, win.val, { seq: win.seq, flags: win.flags });
}

/** Merges inputs' items in [start, end] into dest; see the file header. */
export async function btreeMerge(w: MetaTxn, dest: BtreeRoot, inputs: BtreeRoot[],
  start: Buffer, end: Buffer, opts: MergeOptions): Promise<MergeResult> {
  assert(opts.maxItems >= 1, "merge needs a positive item bound");
  const cursors = inputs.map((r) => new Cursor(w.cache, r, end));
  for (const c of cursors) await c.seek(start);
  let keys = 0;
  for (;;) {
    let min: Buffer | null = null;
    for (const c of cursors) {
      const h = c.head();
      if (h && (min === null || Buffer.compare(h.key, min) < 0)) min = h.key;
    }
    if (min === null) return { next: null, keys };
    if (keys >= opts.maxItems ||
      (opts.maxDirtyBlocks !== undefined && w.dirtyCount >= opts.maxDirtyBlocks)) {
      return { next: min, keys };
    }
    if (opts.canApply && !(await opts.canApply(min))) return { next: min, keys };
    const versions: Item[] = [];
    for (const c of cursors) {
      const h = c.head();
      if (h && h.key.equals(min)) {
        versions.push(h);
        await c.advance();
      }
    }
    await applyKey(w, dest, versions, opts);
    keys++;
  }
}
