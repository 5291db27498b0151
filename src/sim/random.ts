/*
 * Seeded deterministic pseudo-random numbers for the simulator.
 *
 * Everything random in a simulated run (fault choices, crash subsets, scheduling jitter, the
 * Env.random handed to core code) must come from a SimRandom so that one seed replays the
 * whole run bit for bit. The generator is xoshiro128** (Blackman and Vigna): 128 bits of
 * state, 32-bit outputs, fast with plain JavaScript integer arithmetic, good statistical
 * quality. It is not cryptographic and must never reach the real Env.
 *
 * Seeding: any number or bigint seed is reduced to 64 bits and expanded with splitmix64 into
 * the four 32-bit state words, so neighbouring seeds (1, 2, 3...) give unrelated streams and
 * the all-zero state (a fixed point of xoshiro) cannot occur.
 *
 * fork() derives an independent child stream, so a component can own its stream and adding
 * draws in one component does not shift every other component's choices.
 *
 * Invariants: the state is four u32 words, never all zero; every helper draws only through
 * u32(), so the sequence of u32() calls fully defines a run.
 */

import type { Random } from "../env/env.js";
import { assert } from "../util/assert.js";

const U64_MASK = (1n << 64n) - 1n;
const TWO_POW_32 = 0x1_0000_0000;
const TWO_POW_53 = 2 ** 53;

/** splitmix64 step: returns [next state, output]. Used only for seeding. */
function splitmix64(state: bigint): [bigint, bigint] {
  const next = (state + 0x9e3779b97f4a7c15n) & U64_MASK;
  let z = next;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & U64_MASK;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & U64_MASK;
  return [next, z ^ (z >> 31n)];
}

function rotl32(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Reduces a seed to 64 bits; negative numbers and bigints wrap (two's complement). */
function seedToU64(seed: number | bigint): bigint {
  if (typeof seed === "number") {
    assert(Number.isSafeInteger(seed), `seed ${seed} must be a safe integer`);
    return BigInt.asUintN(64, BigInt(seed));
  }
  return BigInt.asUintN(64, seed);
}

export class SimRandom implements Random {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;
  /** The seed this stream was created from (for logging a replayable failure). */
  readonly seed: bigint;

  constructor(seed: number | bigint) {
    this.seed = seedToU64(seed);
    const [st, a] = splitmix64(this.seed);
    const [, b] = splitmix64(st);
    this.s0 = Number(a & 0xffffffffn);
    this.s1 = Number(a >> 32n);
    this.s2 = Number(b & 0xffffffffn);
    this.s3 = Number(b >> 32n);
    // splitmix64 is a bijection, so two zero outputs in a row are impossible; keep the proof.
    assert((this.s0 | this.s1 | this.s2 | this.s3) !== 0, "xoshiro state must not be zero");
  }

  /** A generator at an explicit state (for reference test vectors and replay tooling). */
  static fromState(words: readonly [number, number, number, number]): SimRandom {
    const r = new SimRandom(0);
    [r.s0, r.s1, r.s2, r.s3] = words.map((w) => w >>> 0) as [number, number, number, number];
    assert((r.s0 | r.s1 | r.s2 | r.s3) !== 0, "xoshiro state must not be zero");
    return r;
  }

  /** A uniformly random unsigned 32-bit integer (xoshiro128**). */
  u32(): number {
    const result = Math.imul(rotl32(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl32(this.s3, 11);
    return result;
  }

  /** Fills buf with random bytes, four per u32() draw. */
  fill(buf: Buffer): void {
    let i = 0;
    for (; i + 4 <= buf.length; i += 4) buf.writeUInt32LE(this.u32(), i);
    if (i < buf.length) {
      let word = this.u32();
      for (; i < buf.length; i++) {
        buf[i] = word & 0xff;
        word >>>= 8;
      }
    }
  }

  /** A uniform integer in [0, n), 1 <= n <= 2^53, unbiased (rejection sampling). */
  int(n: number): number {
    assert(Number.isSafeInteger(n) || n === TWO_POW_53, `int(n): n=${n} not an integer`);
    assert(n >= 1, `int(n): n=${n} must be >= 1`);
    if (n <= TWO_POW_32) {
      // Reject the top partial bucket so every residue is equally likely.
      const limit = TWO_POW_32 - (TWO_POW_32 % n);
      for (;;) {
        const x = this.u32();
        if (x < limit) return x % n;
      }
    }
    const limit = TWO_POW_53 - (TWO_POW_53 % n);
    for (;;) {
      const x = this.u53();
      if (x < limit) return x % n;
    }
  }

  /** A uniform integer in [lo, hi] inclusive. */
  range(lo: number, hi: number): number {
    assert(hi >= lo, `range(${lo}, ${hi}): empty`);
    return lo + this.int(hi - lo + 1);
  }

  /** A uniform float in [0, 1) with 53 random bits. */
  float(): number {
    return this.u53() / TWO_POW_53;
  }

  /** True with probability p (p <= 0 never draws true, p >= 1 always does). */
  chance(p: number): boolean {
    if (p <= 0) return false;
    if (p >= 1) return true;
    return this.float() < p;
  }

  /** A uniformly chosen element of a non-empty array. */
  pick<T>(items: readonly T[]): T {
    assert(items.length > 0, "pick() from an empty array");
    return items[this.int(items.length)]!;
  }

  /** Shuffles items in place (Fisher-Yates) and returns the same array. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = items[i]!;
      items[i] = items[j]!;
      items[j] = tmp;
    }
    return items;
  }

  /** An independent child stream, seeded from two draws of this one. */
  fork(): SimRandom {
    const hi = BigInt(this.u32());
    const lo = BigInt(this.u32());
    return new SimRandom((hi << 32n) | lo);
  }

  /** A copy at the same position: both produce the same sequence from here on. */
  clone(): SimRandom {
    const copy = new SimRandom(this.seed);
    copy.s0 = this.s0;
    copy.s1 = this.s1;
    copy.s2 = this.s2;
    copy.s3 = this.s3;
    return copy;
  }

  /** 53 uniform bits as a safe integer. */
  private u53(): number {
    const hi = this.u32() >>> 11; // 21 bits
    const lo = this.u32();
    return hi * TWO_POW_32 + lo;
  }
}
