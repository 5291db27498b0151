/*
 * Test helper: a small seeded random generator (mulberry32) for the fsx checker and the crash
 * harness, so that a seed printed by a failure replays the same operations exactly.
 */
export class Rng {
  private s: number;

  constructor(seed: number) {
    this.s = (seed >>> 0) ^ 0x6d2b79f5;
  }

  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** An integer in [0, n). */
  below(n: number): number {
    return n <= 1 ? 0 : Math.floor((this.u32() / 0x100000000) * n);
  }

  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.below(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }

  /** Pick one item by weight. */
  weighted<T>(items: readonly { weight: number; value: T }[]): T {
    const total = items.reduce((s, x) => s + x.weight, 0);
    let r = this.below(total);
    for (const x of items) {
      if (r < x.weight) return x.value;
      r -= x.weight;
    }
    throw new Error("weighted(): no items");
  }
}
