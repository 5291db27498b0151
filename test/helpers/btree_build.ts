/*
 * Test helper: builds a btree bottom-up with chosen fan-outs, so that tests get tall trees
 * (fs_root subtrees for log merging) from a few hundred items instead of the ~40 MB of items a
 * naturally grown height-3 tree needs. Blocks are as the btree code writes them (parent items
 * keyed by their child's greatest key, MAX_KEY on the right spine); they may be underfull,
 * which the btree code and fsck allow.
 */
import assert from "node:assert/strict";
import type { MetaTxn } from "../../src/core/block.js";
import type { Item } from "../../src/core/btree.js";
import { initBtreeBlock, insertAt, keyAt, nrItems, refBytes } from "../../src/core/btree_block.js";
import { type BlockRef, type BtreeRoot, emptyRoot, Magic } from "../../src/core/format.js";
import { MAX_KEY } from "../../src/core/key.js";

/** Sizes of consecutive groups: called with the level (0 = leaves) and the group's index. */
export type Fanout = (level: number, index: number) => number;

interface Built {
  ref: BlockRef;
  lastKey: Buffer;
}

async function buildLeaves(w: MetaTxn, items: Item[], fanout: Fanout): Promise<Built[]> {
  const out: Built[] = [];
  for (let i = 0, g = 0; i < items.length; g++) {
    const n = Math.max(1, fanout(0, g));
    const nb = await w.newBlock(Magic.BTREE);
    initBtreeBlock(nb.buf, 0);
    for (const it of items.slice(i, i + n)) {
      insertAt(nb.buf, nrItems(nb.buf), it.key, it.val, it.seq, it.flags);
    }
    out.push({ ref: nb.ref, lastKey: keyAt(nb.buf, nrItems(nb.buf) - 1) });
    i += n;
  }
  return out;
}

/** A tree holding `items` (sorted, unique keys), written as new dirty blocks of w. */
export async function buildTree(w: MetaTxn, items: Item[], fanout: Fanout): Promise<BtreeRoot> {
  if (items.length === 0) return emptyRoot();
  for (let i = 1; i < items.length; i++) assert.ok(Buffer.compare(items[i - 1]!.key, items[i]!.key) < 0);
  let level = 0;
  let blocks = await buildLeaves(w, items, fanout);
  while (blocks.length > 1) {
    level++;
    const parents: Built[] = [];
    for (let i = 0, g = 0; i < blocks.length; g++) {
      // odd groups take at least two children, so every level has fewer blocks than the last
      const n = blocks.length <= 2 ? 2 : Math.max(g % 2 === 1 ? 2 : 1, fanout(level, g));
      const group = blocks.slice(i, i + n);
      i += n;
      const nb = await w.newBlock(Magic.BTREE);
      initBtreeBlock(nb.buf, level);
      for (const [j, c] of group.entries()) {
        const rightSpine = i >= blocks.length && j === group.length - 1;
        insertAt(nb.buf, j, rightSpine ? MAX_KEY : c.lastKey, refBytes(c.ref), 0, 0);
      }
      parents.push({ ref: nb.ref, lastKey: keyAt(nb.buf, nrItems(nb.buf) - 1) });
    }
    blocks = parents;
  }
  return { ref: blocks[0]!.ref, height: level + 1 };
}
