/*
 * Goal: the OPEN_INO_MAP payload codecs round-trip, their bytes never change by accident
 * (golden fixtures), the decoders refuse what an encoder could not have produced, and a
 * mount's per-group open maps (OpenInoMaps) hold exactly the inodes counted in them.
 *
 * Method: fixed samples against hex fixtures in test/fixtures/omap/ (UPDATE_FIXTURES=1 to
 * regenerate on purpose); random samples from a fixed seed round-trip; every single-byte
 * flip of a sample either throws EBADMSG or decodes to a value that re-encodes to exactly
 * the flipped bytes; chosen bad fields (sizes, group_nr past ino U64_MAX's, req_id >= 2^53)
 * throw EBADMSG; inc/dec sequences are compared with a model.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  decodeOpenInoMap, decodeOpenInoMapArgs, encodeOpenInoMap, encodeOpenInoMapArgs, omapBitSet,
  omapGroupOf, omapOr, OPEN_INO_MAP_ARGS_SIZE, OPEN_INO_MAP_BYTES, OPEN_INO_MAP_GROUP_MAX,
  OPEN_INO_MAP_SIZE, OpenInoMaps, serveOpenInoMap,
} from "../../src/core/omap.js";
import { U64_MAX } from "../../src/core/key.js";
import { isFsError } from "../../src/util/errno.js";
import { SimRandom } from "../../src/sim/random.js";
import { goldenIn } from "../helpers/golden.js";

const golden = goldenIn("omap");

function expectBadMsg(fn: () => unknown, what: string): void {
  assert.throws(fn, (e: unknown) => isFsError(e, "EBADMSG"), what);
}

function sampleBits(): Buffer {
  const bits = Buffer.alloc(OPEN_INO_MAP_BYTES);
  for (const bit of [0, 1, 9, 511, 1000, 1023]) bits[bit >> 3] = bits[bit >> 3]! | (1 << (bit & 7));
  return bits;
}

const sampleArgs = { groupNr: 0x1_2345_6789n, reqId: 0x0102_0304_0506 };

test("sizes are what the layout comment says", () => {
  assert.equal(OPEN_INO_MAP_ARGS_SIZE, 16);
  assert.equal(OPEN_INO_MAP_BYTES, 128);
  assert.equal(OPEN_INO_MAP_SIZE, 144);
  assert.equal(OPEN_INO_MAP_GROUP_MAX, omapGroupOf(U64_MAX).groupNr);
  assert.deepEqual(omapGroupOf(1024n * 7n + 5n), { groupNr: 7n, bit: 5 });
});

test("golden bytes", () => {
  golden("args", encodeOpenInoMapArgs(sampleArgs));
  golden("map", encodeOpenInoMap({ args: sampleArgs, bits: sampleBits() }));
});

test("samples and random values round-trip", () => {
  const rng = new SimRandom(7);
  for (let i = 0; i < 200; i++) {
    const groupNr = (BigInt(rng.u32()) << 22n | BigInt(rng.u32() & 0x3fffff)) %
      (OPEN_INO_MAP_GROUP_MAX + 1n);
    const args = { groupNr, reqId: rng.u32() * 1024 + (rng.u32() & 1023) };
    assert.deepEqual(decodeOpenInoMapArgs(encodeOpenInoMapArgs(args)), args);
    const bits = Buffer.alloc(OPEN_INO_MAP_BYTES);
    rng.fill(bits);
    assert.deepEqual(decodeOpenInoMap(encodeOpenInoMap({ args, bits })), { args, bits });
  }
  const top = { groupNr: OPEN_INO_MAP_GROUP_MAX, reqId: Number.MAX_SAFE_INTEGER };
  assert.deepEqual(decodeOpenInoMapArgs(encodeOpenInoMapArgs(top)), top);
});

test("every single-byte flip is refused or re-encodes to the flipped bytes", () => {
  const samples: [Buffer, (b: Buffer) => Buffer][] = [
    [encodeOpenInoMapArgs(sampleArgs), (b) => encodeOpenInoMapArgs(decodeOpenInoMapArgs(b))],
    [encodeOpenInoMap({ args: sampleArgs, bits: sampleBits() }),
      (b) => encodeOpenInoMap(decodeOpenInoMap(b))],
  ];
  for (const [enc, again] of samples) {
    for (let i = 0; i < enc.length; i++) {
      const b = Buffer.from(enc);
      b[i] = b[i]! ^ 0xff;
      try {
        assert.deepEqual(again(b), b, `byte ${i}`);
      } catch (e) {
        if (!isFsError(e, "EBADMSG")) throw e;
      }
    }
  }
});

test("malformed payloads: sizes, group_nr, req_id", () => {
  const args = encodeOpenInoMapArgs(sampleArgs);
  const map = encodeOpenInoMap({ args: sampleArgs, bits: sampleBits() });
  expectBadMsg(() => decodeOpenInoMapArgs(args.subarray(0, 15)), "short args");
  expectBadMsg(() => decodeOpenInoMapArgs(Buffer.concat([args, Buffer.alloc(1)])), "long args");
  expectBadMsg(() => decodeOpenInoMap(map.subarray(0, OPEN_INO_MAP_SIZE - 1)), "short map");
  expectBadMsg(() => decodeOpenInoMap(args), "args as a map");
  const bigGroup = Buffer.from(args);
  bigGroup.writeBigUInt64LE(OPEN_INO_MAP_GROUP_MAX + 1n, 0);
  expectBadMsg(() => decodeOpenInoMapArgs(bigGroup), "group_nr past the last group");
  const bigReq = Buffer.from(map);
  bigReq.writeBigUInt64LE(1n << 53n, 8);
  expectBadMsg(() => decodeOpenInoMap(bigReq), "req_id beyond 2^53");
});

test("OpenInoMaps: bits follow held counts; the served map is the group's", () => {
  const rng = new SimRandom(11);
  const maps = new OpenInoMaps();
  const model = new Map<bigint, number>();
  const inos = [...Array(40).keys()].map((i) => BigInt(i % 3) * 1024n + BigInt(i * 37 % 1024));
  for (let step = 0; step < 2000; step++) {
    const ino = inos[rng.u32() % inos.length]!;
    const n = model.get(ino) ?? 0;
    if (n > 0 && rng.u32() % 2 === 0) {
      maps.dec(ino);
      if (n === 1) model.delete(ino);
      else model.set(ino, n - 1);
    } else {
      maps.inc(ino);
      model.set(ino, n + 1);
    }
    assert.equal(maps.test(ino), model.has(ino));
  }
  for (const g of [0n, 1n, 2n, 3n]) {
    const served = decodeOpenInoMap(serveOpenInoMap(maps, encodeOpenInoMapArgs({ groupNr: g,
      reqId: 9 })));
    assert.deepEqual(served.args, { groupNr: g, reqId: 9 });
    for (let bit = 0; bit < 1024; bit++) {
      assert.equal(omapBitSet(served.bits, bit), model.has(g * 1024n + BigInt(bit)));
    }
  }
  for (const [ino, n] of model) for (let i = 0; i < n; i++) maps.dec(ino);
  assert.equal(maps.groupCount, 0, "groups go with their last held inode");
  assert.throws(() => maps.dec(5n), /unheld/);
  const a = sampleBits();
  const b = Buffer.alloc(OPEN_INO_MAP_BYTES);
  b[127] = 0x80;
  b[3] = 0x01;
  omapOr(b, a);
  assert.ok(omapBitSet(b, 1023) && omapBitSet(b, 24) && omapBitSet(b, 9) && !omapBitSet(b, 2));
});
