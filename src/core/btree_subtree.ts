/*
 * fs_root subtrees: the unit of distributed log merge work (upstream btree.c
 * scoutfs_btree_get_parent / set_parent and the BTW_SUBTREE walk flag).
 *
 * The server hands each mount one "last parent" of fs_root: a level-1 block and the leaves
 * below it, described as a btree root of height 2, with the key range (start, end] its parent
 * item gives it. Subtrees of different level-1 blocks are disjoint, so several mounts can merge
 * into fs_root at once, each COWing only its own subtree with blocks the server gave it. The
 * server then splices each new subtree root in place of the old one (setParent), COWing only
 * the path above it; the other subtrees' refs are untouched by a splice. A tree of height 2 or
 * less is one subtree covering the whole key space ("whole"): the splice replaces the root.
 *
 * What keeps a splice valid: the new subtree root must stand where the old one stood, so it
 * must keep height 2, hold at least one item, and keep its greatest key equal to the parent
 * item's key (a parent block's last key is always its parent item's key, which lookups rely
 * on). Merging inside the subtree only changes leaves and level-1 items before the last one:
 * a leaf split inserts an item keyed by the left half's last key, a join deletes the left
 * sibling's item, a balance re-keys the left sibling. What could break it is the subtree root
 * itself splitting (a root without room for one more parent item grows the tree) or
 * collapsing (a root down to one item loses a level on the delete path). subtreeMerge()
 * therefore checks before every key that the root has at least two items and room for one
 * more, which is all one key's change can consume; when it does not, it stops and returns the
 * key to resume from. The server splices what was done and rebalances the path
 * (btreeRebalance splits a full level-1 block, joins an underfull one) before handing out the
 * rest, so every request makes progress.
 *
 * setParent checks, before dirtying anything, that the old subtree root is still the ref at
 * its place in fs_root (a completion for a subtree that changed is stale) and that the new
 * root is a valid level-1 block for that place; then it COWs the path and stores the ref.
 */
import { assert } from "../util/assert.js";
import type { BlockCache, MetaTxn } from "./block.js";
import { btreeMerge, type MergeResult } from "./btree_merge.js";
import {
  blockLevel, BTREE_LOW_WATER, cmpKeyAt, freeBytes, keyAt, lowerBound, nrItems,
  PARENT_ITEM_SIZE, refAt, setRefAt, usedBytes,
} from "./btree_block.js";
import { type BlockRef, type BtreeRoot, corrupt, Magic } from "./format.js";
import { keyInc, MAX_KEY, MIN_KEY } from "./key.js";

/** Height of every subtree handed out when fs_root is taller than that. */
export const SUBTREE_HEIGHT = 2;

export interface Subtree {
  root: BtreeRoot;
  /** Every key the subtree may hold is in [start, end]. */
  start: Buffer;
  end: Buffer;
  /** The subtree is fs_root itself: it may change height, the splice replaces the root. */
  whole: boolean;
}

export function sameRef(a: BlockRef, b: BlockRef): boolean {
  return a.blkno === b.blkno && a.seq === b.seq;
}

export function sameRoot(a: BtreeRoot, b: BtreeRoot): boolean {
  return a.height === b.height && sameRef(a.ref, b.ref);
}

async function readAt(cache: BlockCache, ref: BlockRef, level: number): Promise<Buffer> {
  const b = cache.getCached(ref, Magic.BTREE) ?? await cache.read(ref, Magic.BTREE);
  if (blockLevel(b) !== level) throw corrupt(`btree block level ${blockLevel(b)} != ${level}`);
  return b;
}

interface ParentSlot {
  /** The level-2 block holding the subtree's ref, and the ref's index in it. */
  buf: Buffer;
  index: number;
  start: Buffer;
  end: Buffer;
}

/** Descends (read only) to the level-2 block whose item leads to key's level-1 block. */
async function findSlot(cache: BlockCache, root: BtreeRoot, key: Buffer): Promise<ParentSlot> {
  assert(root.height > SUBTREE_HEIGHT, "subtree slot of a tree without parents above level 1");
  let ref = root.ref;
  let start: Buffer | null = null;
  for (let level = root.height - 1; ; level--) {
    const b = await readAt(cache, ref, level);
    const i = lowerBound(b, key);
    if (i >= nrItems(b)) throw corrupt("btree parent without a child for key");
    if (i > 0) start = keyAt(b, i - 1);
    if (level === SUBTREE_HEIGHT) {
      return { buf: b, index: i, start: start ? keyInc(start) : MIN_KEY, end: keyAt(b, i) };
    }
    ref = refAt(b, i);
  }
}

/** The subtree of root that holds key (upstream get_parent + parent_range). */
export async function btreeGetParent(cache: BlockCache, root: BtreeRoot, key: Buffer):
  Promise<Subtree> {
  if (root.height <= SUBTREE_HEIGHT) {
    return { root: { ref: { ...root.ref }, height: root.height }, start: MIN_KEY, end: MAX_KEY,
      whole: true };
  }
  const slot = await findSlot(cache, root, key);
  return { root: { ref: refAt(slot.buf, slot.index), height: SUBTREE_HEIGHT }, start: slot.start,
    end: slot.end, whole: false };
}

/** A subtree root can take one more key's change without splitting or collapsing. */
export function subtreeRootFits(b: Buffer): boolean {
  return nrItems(b) >= 2 && freeBytes(b) >= PARENT_ITEM_SIZE;
}

/** ... and is not underfull either: nothing for the server to rebalance after a splice. */
export function subtreeRootBalanced(b: Buffer): boolean {
  return subtreeRootFits(b) && usedBytes(b) >= BTREE_LOW_WATER;
}

/** The root block of a height-2 subtree (dirty in w or committed). */
export function readSubtreeRoot(cache: BlockCache, root: BtreeRoot): Promise<Buffer> {
  assert(root.height === SUBTREE_HEIGHT, `subtree height ${root.height}`);
  return readAt(cache, root.ref, SUBTREE_HEIGHT - 1);
}

/** A new subtree root must be a valid level-1 block for the slot [start, end]. */
async function checkNewRoot(cache: BlockCache, sub: BtreeRoot, slot: ParentSlot): Promise<void> {
  if (sub.height !== SUBTREE_HEIGHT) throw corrupt(`spliced subtree height ${sub.height}`);
  const b = await readSubtreeRoot(cache, sub);
  const nr = nrItems(b);
  if (nr === 0) throw corrupt("spliced subtree root is empty");
  if (cmpKeyAt(b, nr - 1, slot.end) !== 0) throw corrupt("spliced subtree's last key moved");
  if (cmpKeyAt(b, 0, slot.start) < 0) throw corrupt("spliced subtree below its range");
}

/**
 * Replaces oldSub, the subtree of root holding key, with newSub (upstream set_parent). Returns
 * false, changing nothing, when oldSub is no longer there (the completion is stale). The caller
 * accounts for the blocks: newSub's were allocated, oldSub's replaced ones freed, elsewhere.
 */
export async function btreeSetParent(w: MetaTxn, root: BtreeRoot, key: Buffer,
  oldSub: BtreeRoot, newSub: BtreeRoot, whole: boolean): Promise<boolean> {
  if (whole) {
    if (!sameRoot(root, oldSub) || root.height > SUBTREE_HEIGHT) return false;
    root.ref = { ...newSub.ref };
    root.height = newSub.height;
    return true;
  }
  if (root.height <= SUBTREE_HEIGHT || oldSub.height !== SUBTREE_HEIGHT) return false;
  const slot = await findSlot(w.cache, root, key);
  if (!sameRef(refAt(slot.buf, slot.index), oldSub.ref)) return false;
  await checkNewRoot(w.cache, newSub, slot);
  const d = await w.dirtyRef(root.ref, Magic.BTREE);
  root.ref = d.ref;
  let b = d.buf;
  for (let level = root.height - 1; level > SUBTREE_HEIGHT; level--) {
    const i = lowerBound(b, key);
    const ref = refAt(b, i);
    const c = await w.dirtyRef(ref, Magic.BTREE);
    if (!sameRef(c.ref, ref)) setRefAt(b, i, c.ref);
    b = c.buf;
  }
  const i = lowerBound(b, key);
  assert(i === slot.index && sameRef(refAt(b, i), oldSub.ref), "splice path moved while dirtying");
  setRefAt(b, i, newSub.ref);
  return true;
}

export interface SubtreeMergeOptions {
  whole: boolean;
  maxItems: number;
  maxDirtyBlocks: number;
  /** True when the allocator is too low to apply another key. */
  allocLow: () => boolean;
}

/**
 * Merges the inputs' items in [start, end] into a subtree (in place, COW through w). Stops
 * before any key whose change could make a non-whole subtree's root split or collapse; see
 * the file header. The subtree keeps its height.
 */
export async function subtreeMerge(w: MetaTxn, root: BtreeRoot, inputs: BtreeRoot[],
  start: Buffer, end: Buffer, opts: SubtreeMergeOptions): Promise<MergeResult> {
  const height = root.height;
  assert(opts.whole || height === SUBTREE_HEIGHT, `subtree merge into height ${height}`);
  const canApply = async (): Promise<boolean> => {
    if (opts.allocLow()) return false;
    return opts.whole || subtreeRootFits(await readSubtreeRoot(w.cache, root));
  };
  const r = await btreeMerge(w, root, inputs, start, end, { dropTombstones: true,
    maxItems: opts.maxItems, maxDirtyBlocks: opts.maxDirtyBlocks, canApply });
  assert(opts.whole || root.height === height, "subtree changed height while merging");
  return r;
}
