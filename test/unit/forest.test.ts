/*
 * Goal: the bloom hash is exactly FNV-1a 64 (the bloom blocks on disk depend on it) and its
 * three bit positions are the 19-bit slices of it; lock range starts group FS keys by 1024
 * inodes. Method: compare the 32-bit-halves implementation with a BigInt reference on fixed
 * vectors and many random keys.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { BLOOM_NBITS, bloomBits, fnv1a64, lockStartFor } from "../../src/core/forest.js";
import { formatKey, KEY_SIZE, makeKey, Zone } from "../../src/core/key.js";
import { SimRandom } from "../../src/sim/random.js";

function reference(buf: Buffer): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of buf) h = ((h ^ BigInt(b)) * 0x100000001b3n) & ((1n << 64n) - 1n);
  return h;
}

test("fnv1a64 matches the reference and the published vectors", () => {
  assert.equal(fnv1a64(Buffer.alloc(0)), 0xcbf29ce484222325n);
  assert.equal(fnv1a64(Buffer.from("a")), 0xaf63dc4c8601ec8cn);
  assert.equal(fnv1a64(Buffer.from("foobar")), 0x85944171f73967e8n);
  const r = new SimRandom(5);
  for (let i = 0; i < 2000; i++) {
    const b = Buffer.alloc(r.int(64));
    r.fill(b);
    const h = reference(b);
    assert.equal(fnv1a64(b), h);
    assert.deepEqual(bloomBits(b), [0n, 19n, 38n].map((s) => Number((h >> s) & 0x7ffffn) % BLOOM_NBITS));
  }
});

test("lock range starts: inode groups of 1024 in the FS zone, whole zones elsewhere", () => {
  assert.equal(formatKey(lockStartFor(makeKey(Zone.FS, 2047n, 12, 5n))), "16.1024.0.0.0.0");
  assert.equal(formatKey(lockStartFor(makeKey(Zone.ORPHAN, 0n, 4, 99n))), "8.0.0.0.0.0");
  assert.equal(lockStartFor(makeKey(Zone.FS, 1n, 4)).length, KEY_SIZE);
});
