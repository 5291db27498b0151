/*
 * The orphan scanner (upstream inode.c inode_orphan_scan_worker): every mount, every
 * orphan_scan_delay_ms (±ORPHAN_SCAN_JITTER_PCT, from the Env's random source, so mounts do
 * not all work on the same inodes at once), looks for unlinked inodes whose only remaining
 * reference is their orphan item, and deletes them.
 *
 * Why it exists: deletion is normally tried when the last reference goes (orphan.ts), but
 * that attempt gives up when another mount still holds the inode (its own last release then
 * tries, but may fail too, e.g. when the server cannot gather the open maps), and a mount
 * that crashes takes its references with it: after it is fenced and reclaimed nobody would
 * ever try again.
 *
 * How: orphan items are read from the committed, merged fs_root only (GET_ROOTS), never from
 * log trees. An inode unlinked or created as a tmpfile recently, and so probably still in
 * use by its creator, has its orphan item only in a log tree and is skipped naturally; the
 * read takes no lock and contends with nobody. For each orphan: skipped if this mount holds
 * the inode (its own release deletes it), or if the open map of its group from the server
 * (OPEN_INO_MAP, one request per group per pass) shows another mount holding it; otherwise
 * InodeRefs.tryDelete() takes the group's WRITE lock, re-reads nlink and asks for the open
 * map again under that lock before deleting anything.
 *
 * Bounded and resumable: a pass looks at ORPHAN_SCAN_ITEMS_PER_PASS orphans from a cursor;
 * the next pass continues after the last one; a pass that reaches the end of the orphan
 * zone ends a sweep and the cursor returns to the start. Deletions themselves are resumable
 * (orphan.ts). Counters (upstream's names): orphan_scan per pass, orphan_scan_item per orphan
 * looked at, orphan_scan_cached / orphan_scan_omap_set for inodes held here / elsewhere,
 * orphan_scan_attempts per deletion tried, orphan_scan_error per failed pass, and
 * orphan_scan_empty when a sweep ends having found nothing left to do (tests wait on it).
 */
import type { TimerHandle } from "../../env/env.js";
import { assert } from "../../util/assert.js";
import { withStaleRetry } from "../block.js";
import { btreeIterate } from "../btree.js";
import type { MountClient } from "../client.js";
import type { ForestRoots } from "../forest.js";
import { keyFields, makeKey, orphanKey, OrphanType, U64_MAX, Zone } from "../key.js";
import { ROOT_INO } from "../mkfs.js";
import { omapBitSet, omapGroupOf, requestOpenInoMap } from "../omap.js";
import {
  ORPHAN_SCAN_DELAY_DEFAULT_MS, ORPHAN_SCAN_DELAY_MAX_MS, ORPHAN_SCAN_DELAY_MIN_MS,
} from "../options.js";
import type { InodeRefs } from "./orphan.js";

/** Orphans one pass looks at, at most. */
export const ORPHAN_SCAN_ITEMS_PER_PASS = 256;
/** The delay between passes varies by this many percent either way. */
export const ORPHAN_SCAN_JITTER_PCT = 20;

/** What one pass did. */
export interface OrphanScanPass {
  /** Orphan items looked at. */
  items: number;
  /** Deletions tried. */
  attempts: number;
  /** Inodes deleted. */
  deleted: number;
  /** This pass reached the end of the orphan zone (the next starts over). */
  sweepEnded: boolean;
}

function checkDelayMs(ms: number): void {
  assert(Number.isSafeInteger(ms) && ms >= ORPHAN_SCAN_DELAY_MIN_MS &&
    ms <= ORPHAN_SCAN_DELAY_MAX_MS, `orphan_scan_delay_ms ${ms}`);
}

const sameRoots = (a: ForestRoots, b: ForestRoots): boolean =>
  a.fsRoot.ref.blkno === b.fsRoot.ref.blkno && a.fsRoot.ref.seq === b.fsRoot.ref.seq;

export class OrphanScanner {
  private timer: TimerHandle | null = null;
  private running: Promise<OrphanScanPass> | null = null;
  private stopped = false;
  private started = false;
  /** The first inode number the next pass looks at. */
  private cursor = ROOT_INO + 1n;
  /** Something was left to do in the current sweep. */
  private sweepTodo = false;

  constructor(private readonly client: MountClient, private readonly refs: InodeRefs,
    private delayMs = ORPHAN_SCAN_DELAY_DEFAULT_MS) {
    checkDelayMs(delayMs);
  }

  get scanDelayMs(): number {
    return this.delayMs;
  }

  /** Arms the timer (the mount is up). */
  start(): void {
    if (this.stopped || this.started) return;
    this.started = true;
    this.schedule();
  }

  /** A new orphan_scan_delay_ms: the pending pass is rescheduled with it (as upstream). */
  setDelayMs(ms: number): void {
    checkDelayMs(ms);
    this.delayMs = ms;
    if (this.timer !== null) {
      this.client.env.timers.clear(this.timer);
      this.timer = null;
      this.schedule();
    }
  }

  /** Stops the timer and waits for a pass in progress (before unmounting). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) this.client.env.timers.clear(this.timer);
    this.timer = null;
    await this.running?.catch(() => undefined);
  }

  /** Runs one pass now (after the one in progress, if any). */
  async pass(): Promise<OrphanScanPass> {
    while (this.running !== null) await this.running.catch(() => undefined);
    const p = this.passOnce();
    this.running = p;
    try {
      return await p;
    } finally {
      this.running = null;
    }
  }

  private schedule(): void {
    if (this.stopped || this.timer !== null) return;
    const low = Math.floor(this.delayMs * (100 - ORPHAN_SCAN_JITTER_PCT) / 100);
    const high = Math.floor(this.delayMs * (100 + ORPHAN_SCAN_JITTER_PCT) / 100);
    const delay = Math.max(1, low + (this.client.env.random.u32() % (high - low + 1)));
    this.timer = this.client.env.timers.after(delay, () => {
      this.timer = null;
      void this.pass().catch(() => undefined).finally(() => { this.schedule(); });
    });
  }

  private async passOnce(): Promise<OrphanScanPass> {
    const c = this.client.counters;
    c.inc("orphan_scan");
    const res: OrphanScanPass = { items: 0, attempts: 0, deleted: 0, sweepEnded: false };
    try {
      const inos = await this.nextOrphans();
      const maps = new Map<bigint, Buffer | null>();
      for (const ino of inos) {
        if (this.stopped) return res;
        res.items++;
        c.inc("orphan_scan_item");
        this.cursor = ino === U64_MAX ? ino : ino + 1n;
        await this.tryOrphan(ino, maps, res);
      }
      if (inos.length < ORPHAN_SCAN_ITEMS_PER_PASS) this.endSweep(res);
    } catch (e) {
      c.inc("orphan_scan_error");
      this.sweepTodo = true;
      this.client.env.logger.log("warn", `orphan scan: ${String(e)}`);
    }
    return res;
  }

  /** One orphan: skipped while held anywhere, else a deletion attempt under the lock. */
  private async tryOrphan(ino: bigint, maps: Map<bigint, Buffer | null>, res: OrphanScanPass):
    Promise<void> {
    const c = this.client.counters;
    if (this.refs.held(ino)) {
      c.inc("orphan_scan_cached"); // our own last release tries the deletion
      this.sweepTodo = true;
      return;
    }
    const { groupNr, bit } = omapGroupOf(ino);
    if (!maps.has(groupNr)) maps.set(groupNr, await requestOpenInoMap(this.client, groupNr));
    const bits = maps.get(groupNr) ?? null;
    if (bits === null || omapBitSet(bits, bit)) {
      if (bits !== null) c.inc("orphan_scan_omap_set");
      this.sweepTodo = true;
      return;
    }
    c.inc("orphan_scan_attempts");
    res.attempts++;
    const r = await this.refs.tryDelete(ino);
    if (r === "deleted") res.deleted++;
    // a deleted inode's orphan item stays in fs_root until merged: the sweep that no longer
    // finds it (or finds it absent) is the one that ends empty, as upstream's
    if (r !== "absent") this.sweepTodo = true;
  }

  private endSweep(res: OrphanScanPass): void {
    if (!this.sweepTodo) this.client.counters.inc("orphan_scan_empty");
    res.sweepEnded = true;
    this.sweepTodo = false;
    this.cursor = ROOT_INO + 1n;
  }

  /** Up to ORPHAN_SCAN_ITEMS_PER_PASS orphan inos from the cursor, in committed fs_root. */
  private nextOrphans(): Promise<bigint[]> {
    const end = makeKey(Zone.ORPHAN, 0n, OrphanType.ORPHAN, U64_MAX, U64_MAX, 255);
    const from = orphanKey(this.cursor);
    return withStaleRetry(this.client.counters, () => this.client.getRoots(), sameRoots,
      async (roots) => {
        const out: bigint[] = [];
        await btreeIterate(this.client.cache, roots.fsRoot, from, end, (it) => {
          out.push(keyFields(it.key).second);
          return out.length < ORPHAN_SCAN_ITEMS_PER_PASS;
        });
        return out;
      });
  }
}
