/*
 * Freeing a read-only btree a bounded number of blocks at a time (upstream
 * scoutfs_btree_free_blocks), for the server's freeing of merged log trees
 * (server_merge.ts).
 *
 * A tree whose blocks are being freed is never modified: progress is one key, `next`,
 * committed with the blocks each step freed. A block's range ends at the key of its parent's
 * item for it (MAX_KEY for the root). The invariant between steps: exactly the blocks whose
 * range ends before `next` are freed. A step walks from the root to the first block that
 * has no child left (a leaf, or a parent whose children all end before `next`), frees it
 * together with its ancestors whose ranges end at the same key (none of their children is
 * left either) and moves `next` past that key; once a freed block's range ends at MAX_KEY,
 * the root went with it and the tree is gone (next null). Blocks freed in one step are never
 * read again: the walk only enters children whose ranges end at `next` or later, which is
 * also what btreeFreeingBlocks enumerates for fsck. A resumed step (after a crash or a
 * failover, with the last committed `next`) therefore frees each block exactly once.
 *
 * Bound: a step frees at most `maxBlocks` blocks, and at least one victim chain (at most the
 * tree's height in blocks), so maxBlocks must be at least BTREE_FREE_MIN_BLOCKS.
 */
import { assert } from "../util/assert.js";
import type { BlockCache, MetaTxn } from "./block.js";
import {
  blockLevel, keyAt, lowerBound, nrItems, refAt,
} from "./btree_block.js";
import { type BlockRef, type BtreeRoot, corrupt, Magic } from "./format.js";
import { keyInc, MAX_KEY } from "./key.js";

/** Tallest tree a step can free (a victim chain is at most this many blocks). */
export const BTREE_FREE_MAX_HEIGHT = 8;
/** The smallest step bound: one whole victim chain of the tallest tree. */
export const BTREE_FREE_MIN_BLOCKS = BTREE_FREE_MAX_HEIGHT;

/** A block of the path to the next victim and the last key of its range. */
interface PathBlock {
  ref: BlockRef;
  hi: Buffer;
}

async function readLevel(cache: BlockCache, ref: BlockRef, level: number): Promise<Buffer> {
  const b = cache.getCached(ref, Magic.BTREE) ?? await cache.read(ref, Magic.BTREE);
  if (blockLevel(b) !== level) throw corrupt(`freeing btree block level ${blockLevel(b)} != ${level}`);
  return b;
}

/** The path from the root to the first block with no child left from `next` on. */
async function victimPath(cache: BlockCache, root: BtreeRoot, next: Buffer): Promise<PathBlock[]> {
  const path: PathBlock[] = [{ ref: root.ref, hi: MAX_KEY }];
  for (let level = root.height - 1; level > 0; level--) {
    const b = await readLevel(cache, path[path.length - 1]!.ref, level);
    const i = lowerBound(b, next);
    if (i >= nrItems(b)) break;
    path.push({ ref: refAt(b, i), hi: keyAt(b, i) });
  }
  return path;
}

/** The victim (last of the path) and its ancestors whose ranges end where it ends. */
function victimChain(path: PathBlock[]): PathBlock[] {
  const hi = path[path.length - 1]!.hi;
  let first = path.length - 1;
  while (first > 0 && path[first - 1]!.hi.equals(hi)) first--;
  return path.slice(first);
}

/**
 * Frees up to maxBlocks blocks of a tree from `next` on (MIN_KEY to start); returns the
 * progress to commit with them (null: every block is freed) and how many were freed.
 */
export async function btreeFreeStep(w: MetaTxn, root: BtreeRoot, next: Buffer,
  maxBlocks: number): Promise<{ next: Buffer | null; freed: number }> {
  assert(maxBlocks >= BTREE_FREE_MIN_BLOCKS, `btree free step of ${maxBlocks} blocks`);
  assert(root.height > 0, "freeing an empty btree");
  if (root.height > BTREE_FREE_MAX_HEIGHT) throw corrupt(`freeing a btree ${root.height} high`);
  let k = next;
  let freed = 0;
  for (;;) {
    const chain = victimChain(await victimPath(w.cache, root, k));
    if (freed + chain.length > maxBlocks) return { next: k, freed };
    for (const b of chain.reverse()) await w.freeRef(b.ref);
    freed += chain.length;
    const hi = chain[0]!.hi;
    if (hi.equals(MAX_KEY)) return { next: null, freed };
    k = keyInc(hi);
  }
}

/**
 * Calls visit for every block of a tree that a freeing at `next` has not freed yet, parents
 * before children (fsck counts them as referenced).
 */
export async function btreeFreeingBlocks(cache: BlockCache, root: BtreeRoot, next: Buffer,
  visit: (ref: BlockRef, level: number) => void): Promise<void> {
  if (root.height > BTREE_FREE_MAX_HEIGHT) throw corrupt(`freeing a btree ${root.height} high`);
  const walk = async (ref: BlockRef, level: number): Promise<void> => {
    visit(ref, level);
    if (level === 0) return;
    const b = await readLevel(cache, ref, level);
    for (let i = lowerBound(b, next); i < nrItems(b); i++) await walk(refAt(b, i), level - 1);
  };
  if (root.height > 0) await walk(root.ref, root.height - 1);
}
