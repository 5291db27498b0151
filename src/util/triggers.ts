/*
 * Named triggers: one-shot fault points armed by name (upstream triggers.c, DESIGN.md 5.11).
 *
 * A subsystem asks `triggers.fire("srch_force_log_rotate")` at a point where a test may want
 * to force an unusual path; it returns true exactly once after someone armed that trigger,
 * and the trigger is then cleared again. Tests arm triggers directly; on a mounted volume
 * they are armed by writing 1 to trigger/<name> in the status directory (upstream's debugfs
 * trigger/ files), whose read shows the current value, "0\n" or "1\n".
 *
 * Each trigger holds an int like upstream's atomic_t: writing any integer stores it (as the
 * debugfs attribute does, truncated to 32 bits) and any nonzero value fires once. Names are
 * registered up front (upstream's fixed list by default); firing an unknown name is a bug
 * (a typo in the code), arming one is ENOENT (a typo by the user). The set is bounded by
 * TRIGGERS_MAX. Core-safe: no OS, no clock.
 */

import { assert } from "./assert.js";
import { FsError } from "./errno.js";
import { kstrtoll } from "./kstrto.js";

/** Upstream's triggers, in upstream's order (kmod/src/triggers.c names[]). */
export const UPSTREAM_TRIGGER_NAMES = [
  "block_remove_stale", "log_merge_force_finalize_ours", "srch_compact_logs_pad_safe",
  "srch_force_log_rotate", "srch_merge_stop_safe", "statfs_lock_purge", "reclaim_skip_finalize",
  "log_merge_force_partial", "alloc_fill_freed_list", "alloc_data_enobufs",
] as const;

/** Most triggers one registry holds. */
export const TRIGGERS_MAX = 256;
/** Longest trigger name (a file name in the status directory). */
export const TRIGGER_NAME_MAX_BYTES = 64;
/** debugfs simple_attr_write() keeps this many characters of a write (its set_buf - 1). */
export const TRIGGER_WRITE_MAX_CHARS = 23;

interface TriggerState {
  value: number;
  fired: number;
}

export class Triggers {
  private readonly byName = new Map<string, TriggerState>();

  constructor(names: readonly string[] = UPSTREAM_TRIGGER_NAMES) {
    for (const n of names) this.register(n);
  }

  /** Adds a trigger (idempotent). Names are file names: no '/', not empty, bounded. */
  register(name: string): void {
    if (this.byName.has(name)) return;
    assert(name.length > 0 && name.length <= TRIGGER_NAME_MAX_BYTES && !name.includes("/") &&
      name !== "." && name !== "..", `bad trigger name '${name}'`);
    assert(this.byName.size < TRIGGERS_MAX, `more than ${TRIGGERS_MAX} triggers`);
    this.byName.set(name, { value: 0, fired: 0 });
  }

  /** Registered names, in registration order. */
  names(): string[] {
    return [...this.byName.keys()];
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** Arms a trigger (value 1 unless told): the next fire() returns true. */
  arm(name: string, value = 1): void {
    const t = this.byName.get(name);
    if (t === undefined) throw new FsError("ENOENT", `no trigger named '${name}'`);
    t.value = toInt32(value);
  }

  /** The fault point: true once per arming (test and clear). */
  fire(name: string): boolean {
    const t = this.byName.get(name);
    assert(t !== undefined, `fire of unregistered trigger '${name}'`);
    if (t.value === 0) return false;
    t.value = 0;
    t.fired++;
    return true;
  }

  /** The armed value (0 when not armed). */
  get(name: string): number {
    return this.byName.get(name)?.value ?? 0;
  }

  /** How many times the trigger fired since it was registered (tests assert on it). */
  firedCount(name: string): number {
    return this.byName.get(name)?.fired ?? 0;
  }

  /** What reading trigger/<name> shows ("%lld\n" of the atomic). */
  show(name: string): string {
    if (!this.byName.has(name)) throw new FsError("ENOENT", `no trigger named '${name}'`);
    return `${this.get(name)}\n`;
  }

  /** A write to trigger/<name>: an integer (kstrtoll base 0, as debugfs), else EINVAL. */
  store(name: string, text: string): void {
    const r = kstrtoll(text.slice(0, TRIGGER_WRITE_MAX_CHARS));
    if (!r.ok) throw new FsError(r.errno, `invalid value written to trigger ${name}`);
    this.arm(name, Number(BigInt.asIntN(32, r.value)));
  }
}

function toInt32(v: number): number {
  assert(Number.isSafeInteger(v), `trigger value ${v}`);
  return Number(BigInt.asIntN(32, BigInt(v)));
}
