/*
 * Inode number allocation (upstream inode.c alloc_ino + the server's ALLOC_INODES).
 *
 * The server hands out runs of never-reused numbers; the mount keeps two allocators, one for
 * directories and one for everything else, each drawing whole 1024-inode lock groups from the
 * runs, so that the files created in a directory land in a different inode group lock than
 * the directory itself (reference 1.22). Numbers are never returned: a failed create simply
 * leaves a gap, as upstream.
 */
import { assert } from "../../util/assert.js";
import { FsError } from "../../util/errno.js";
import type { MountClient } from "../client.js";
import { LOCK_INODE_GROUP_NR } from "../lock_names.js";

/** Inodes asked of the server per ALLOC_INODES (upstream's batch). */
export const INO_ALLOC_BATCH = 10_240;

interface Run {
  next: bigint;
  end: bigint;
}

export class InoAllocator {
  private readonly runs: Run[] = [];
  private readonly cur = { dir: { next: 0n, end: 0n }, file: { next: 0n, end: 0n } };
  private refilling: Promise<void> | null = null;

  constructor(private readonly client: MountClient) {}

  /** A fresh inode number for a directory (dir) or another file. */
  async alloc(dir: boolean): Promise<bigint> {
    const r = dir ? this.cur.dir : this.cur.file;
    for (let tries = 0; tries < 8; tries++) {
      if (r.next < r.end) return r.next++;
      const g = await this.takeGroup();
      // another caller may have refilled r meanwhile: keep what it took, use it first
      if (r.next >= r.end) {
        r.next = g.next;
        r.end = g.end;
      }
    }
    throw new Error("inode allocation did not progress");
  }

  /** The rest of the current lock group of the first run (a whole group when aligned). */
  private async takeGroup(): Promise<Run> {
    while (this.runs.length === 0) {
      this.refilling ??= this.refill().finally(() => { this.refilling = null; });
      await this.refilling;
    }
    const run = this.runs[0]!;
    const groupEnd = (run.next / LOCK_INODE_GROUP_NR + 1n) * LOCK_INODE_GROUP_NR;
    const end = groupEnd < run.end ? groupEnd : run.end;
    const g = { next: run.next, end };
    run.next = end;
    if (run.next >= run.end) this.runs.shift();
    return g;
  }

  private async refill(): Promise<void> {
    const got = await this.client.allocInodes(INO_ALLOC_BATCH);
    if (got.nr === 0n) throw new FsError("ENOSPC", "no inode numbers left");
    assert(got.ino > 0n, "server allocated inode numbers");
    this.runs.push({ next: got.ino, end: got.ino + got.nr });
  }
}
