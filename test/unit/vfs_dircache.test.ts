/*
 * Goal: the encoded READDIR listings (src/fuse/vfs_dircache.ts) answer every offset exactly
 * like entry-by-entry packing would: the same records, in order, none split, none past the
 * kernel's buffer; the byte bounds hold; and the numeric dirent decoder used to build them
 * (direntNumbers) agrees with decodeDirent and rejects what it rejects.
 *
 * Method: random directories (names of 1..255 bytes, increasing positions with gaps, inode
 * numbers up to 2^53) built into a listing and into plain DirentPacker replies; every offset
 * and several buffer sizes compared byte for byte.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  decodeDirent, direntNameHash, direntNumbers, encodeDirent, fnv1a32,
} from "../../src/core/fs/format.js";
import { decodeDirents, DirentPacker } from "../../src/fuse/proto.js";
import {
  DirListingBuilder, DirListingCache,
} from "../../src/fuse/vfs_dircache.js";
import { SimRandom } from "../../src/sim/random.js";

interface E { name: Buffer; pos: number; ino: number; type: number }

function randomDir(rng: SimRandom, n: number): E[] {
  const out: E[] = [];
  let pos = 2;
  for (let i = 0; i < n; i++) {
    pos += 1 + rng.int(3);
    const len = 1 + rng.int(i % 7 === 0 ? 255 : 20);
    const name = Buffer.alloc(len);
    for (let k = 0; k < len; k++) name[k] = 0x30 + rng.int(40); // no NUL, no '/'
    out.push({ name, pos, ino: 1 + rng.int(2 ** 30) * 2 ** 20 + rng.int(2 ** 20), type: 8 });
  }
  return out;
}

function packed(dirIno: number, parent: number, es: E[], off: number, size: number): Buffer {
  const p = new DirentPacker(size, false);
  const all = [{ name: Buffer.from("."), pos: 0, ino: dirIno, type: 4 },
    { name: Buffer.from(".."), pos: 1, ino: parent, type: 4 }, ...es];
  for (const e of all) {
    if (e.pos < off) continue;
    if (!p.add(e.name, e.pos + 1, e.ino, e.type)) break;
  }
  return Buffer.from(p.finish());
}

test("listing slices equal entry-by-entry packing at every offset", () => {
  const rng = new SimRandom(11);
  for (const n of [0, 1, 5, 300]) {
    const es = randomDir(rng, n);
    const b = new DirListingBuilder(1 << 24, 77);
    for (const e of es) {
      const v = encodeDirent({ ino: BigInt(e.ino), hash: direntNameHash(e.name), pos: BigInt(e.pos),
        type: e.type, name: e.name });
      assert.ok(direntNumbers(v, (val, at, len, pos, ino, type) =>
        b.add(val, at, len, pos, ino, type)));
    }
    const l = b.finish(5n, 33);
    assert.equal(l.count, n + 2);
    const offs = new Set([0, 1, 2, 3, ...es.map((e) => e.pos), ...es.map((e) => e.pos + 1), 1e9]);
    for (const size of [64, 300, 4096, 32768]) {
      for (const off of offs) {
        assert.deepEqual(l.slice(off, size), packed(77, 33, es, off, size), `off ${off} size ${size}`);
      }
    }
    // the READDIRPLUS view decodes to the same entries
    const ents = l.entries(0, 1 << 20);
    assert.deepEqual(ents.map((e) => [e.name.toString("latin1"), e.next, e.ino]),
      decodeDirents(l.slice(0, 1 << 24)).map((d) => [d.name.toString("latin1"), d.off, d.ino]));
  }
});

test("a listing stops at its byte bound; the cache keeps its total bound", () => {
  const b = new DirListingBuilder(200, 1);
  const name = Buffer.from("abcdefgh");
  let added = 0;
  while (b.add(name, 0, name.length, 2 + added, 5, 8)) added++;
  // "." and ".." take 32 bytes each, an entry of 8 bytes takes 32: (200 - 64) / 32
  assert.equal(added, 4);
  const c = new DirListingCache(1000);
  const l = b.finish(1n, 1);
  for (let i = 0; i < 10; i++) c.set(i, l);
  assert.ok(c.totalBytes <= 1000, `cache holds ${c.totalBytes} bytes`);
  assert.equal(c.get(9), l, "the most recent stays");
  assert.equal(c.get(0), undefined, "the oldest went first");
});

test("direntNumbers agrees with decodeDirent and refuses the same corruption", () => {
  const rng = new SimRandom(5);
  for (const e of randomDir(rng, 200)) {
    const v = encodeDirent({ ino: BigInt(e.ino), hash: direntNameHash(e.name), pos: BigInt(e.pos),
      type: e.type, name: e.name });
    const d = decodeDirent(v);
    direntNumbers(v, (val, at, len, pos, ino, type) => {
      assert.deepEqual([val.subarray(at, at + len), pos, ino, type],
        [d.name, Number(d.pos), Number(d.ino), d.type]);
      return true;
    });
    for (const bad of [24, 26, 8, 12, 32]) {
      const c = Buffer.from(v);
      c[bad] = (c[bad]! + 1) & 0xff;
      const a = (() => { try { decodeDirent(c); return "ok"; } catch (x) { return (x as Error).message; } })();
      const b = (() => {
        try { direntNumbers(c, () => true); return "ok"; } catch (x) { return (x as Error).message; }
      })();
      assert.equal(b, a, `byte ${bad}`);
    }
  }
});

test("fnv1a32 from an offset is the hash of the rest", () => {
  const b = Buffer.from("xxhello world");
  assert.equal(fnv1a32(b, 2), fnv1a32(Buffer.from("hello world")));
  assert.equal(fnv1a32(Buffer.alloc(0)), 0x811c9dc5);
});
