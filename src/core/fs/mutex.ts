/*
 * Local exclusion between operations of one mount (the role of the VFS's i_rwsem and
 * s_vfs_rename_mutex upstream). The cluster lock client lets every local user share a
 * granted lock, so two writers of this mount on one inode group would otherwise interleave
 * their read and write phases.
 *
 * Invariants: lockAll takes its keys in sorted order, so holders of several keys cannot
 * deadlock; a key's entry exists only while someone holds or waits for it (the map is bounded
 * by the operations in flight).
 */
import { assert } from "../../util/assert.js";

interface Entry {
  held: boolean;
  waiters: (() => void)[];
}

export class KeyedMutex {
  private readonly entries = new Map<string, Entry>();

  /** Keys currently held or waited for. */
  get size(): number {
    return this.entries.size;
  }

  /** Takes every key (sorted, deduplicated); returns an idempotent release of all. */
  async lockAll(keys: readonly string[]): Promise<() => void> {
    const sorted = [...new Set(keys)].sort();
    const taken: string[] = [];
    try {
      for (const k of sorted) {
        await this.lock(k);
        taken.push(k);
      }
    } catch (e) {
      for (const k of taken) this.unlock(k);
      throw e;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const k of taken) this.unlock(k);
    };
  }

  private lock(key: string): Promise<void> {
    const e = this.entries.get(key);
    if (e === undefined) {
      this.entries.set(key, { held: true, waiters: [] });
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => { e.waiters.push(resolve); });
  }

  private unlock(key: string): void {
    const e = this.entries.get(key);
    assert(e !== undefined && e.held, `unlock of a free mutex ${key}`);
    const next = e.waiters.shift();
    // ownership passes straight to the next waiter: nobody can slip in between
    if (next !== undefined) next();
    else this.entries.delete(key);
  }
}
