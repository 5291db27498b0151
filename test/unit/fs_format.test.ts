/*
 * Goal: every item value of the POSIX namespace (src/core/fs/format.ts) round-trips through
 * its encoder and validating decoder, keeps its bytes (golden fixtures in test/fixtures/fs/),
 * and its decoder refuses nonsense with EIO; the name hashes are stable.
 *
 * Method: fixed samples encoded and compared with hex fixtures (UPDATE_FIXTURES=1 regenerates
 * them on purpose), decoded back, then damaged field by field.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  decodeDirent, decodeStatfsReply, decodeSymlinkParts, decodeXattrHeader, decodeXattrParts,
  direntNameHash, type DirentValue, encodeDirent, encodeSymlinkParts, encodeXattrParts, fnv1a32,
  STATFS_REPLY_SIZE, SYMLINK_PART_MAX, XATTR_MAX_PARTS, XATTR_PART_MAX, xattrNameHash,
} from "../../src/core/fs/format.js";
import { encodeInode, decodeInode, type InodeValue } from "../../src/core/format.js";
import { isFsError } from "../../src/util/errno.js";
import { goldenIn } from "../helpers/golden.js";

const golden = goldenIn("fs");

function expectEio(fn: () => unknown, what: string): void {
  assert.throws(fn, (e: unknown) => isFsError(e, "EIO"), what);
}

const sampleDirent = (): DirentValue => {
  const name = Buffer.from("hello.txt");
  return { ino: 0x1234_5678n, hash: direntNameHash(name), pos: 7n, type: 8, name };
};

test("name hashes are stable", () => {
  // FNV-1a 32 published vectors
  assert.equal(fnv1a32(Buffer.alloc(0)), 0x811c9dc5);
  assert.equal(fnv1a32(Buffer.from("a")), 0xe40c292c);
  assert.equal(fnv1a32(Buffer.from("foobar")), 0xbf9cf968);
  assert.equal(direntNameHash(Buffer.from("abcd")) >> 32n, 0x61626364n, "prefix fingerprint");
  assert.equal(direntNameHash(Buffer.from("a")) >> 32n, 0x61000000n);
  assert.ok(direntNameHash(Buffer.from("aa")) < direntNameHash(Buffer.from("b")), "prefix order");
  assert.equal(xattrNameHash(Buffer.from("user.x")), xattrNameHash(Buffer.from("user.x")));
});

test("dirent value: golden bytes, round trip, validation", () => {
  const d = sampleDirent();
  const b = encodeDirent(d);
  golden("dirent", b);
  assert.deepEqual(decodeDirent(b), d);
  const bad = (f: (x: Buffer) => void, what: string): void => {
    const x = Buffer.from(b);
    f(x);
    expectEio(() => decodeDirent(x), what);
  };
  bad((x) => { x[24] = 3; }, "type");
  bad((x) => { x[30] = 1; }, "pad");
  bad((x) => { x[32] = x[32]! ^ 1; }, "hash of another name");
  bad((x) => { x.writeBigUInt64LE(1n, 16); }, "pos below 2");
  bad((x) => { x.writeBigUInt64LE(0n, 0); }, "ino 0");
  expectEio(() => decodeDirent(b.subarray(0, 32)), "no name");
  expectEio(() => decodeDirent(Buffer.alloc(32 + 256)), "name too long");
});

test("xattr parts: golden bytes, round trip across parts, validation", () => {
  const small = encodeXattrParts({ name: Buffer.from("user.k"), value: Buffer.from("value") });
  assert.equal(small.length, 1);
  golden("xattr-small", small[0]!);
  assert.deepEqual(decodeXattrParts(small), { name: Buffer.from("user.k"), value: Buffer.from("value") });
  const value = Buffer.alloc(2000);
  for (let i = 0; i < value.length; i++) value[i] = i & 0xff;
  const parts = encodeXattrParts({ name: Buffer.from("user.big"), value });
  assert.equal(parts.length, 3);
  golden("xattr-multi", Buffer.concat(parts));
  assert.equal(parts[0]!.length, XATTR_PART_MAX);
  assert.deepEqual(decodeXattrParts(parts).value, value);
  assert.equal(decodeXattrHeader(parts[0]!).parts, 3);
  const max = encodeXattrParts({ name: Buffer.alloc(255, 0x61), value: Buffer.alloc(65535, 1) });
  assert.equal(max.length, XATTR_MAX_PARTS);
  assert.equal(decodeXattrParts(max).value.length, 65535);
  expectEio(() => decodeXattrParts(parts.slice(0, 2)), "missing part");
  expectEio(() => decodeXattrParts([parts[0]!, parts[1]!, parts[2]!.subarray(1)]), "short tail");
  const noName = Buffer.from(small[0]!);
  noName[2] = 0;
  expectEio(() => decodeXattrHeader(noName), "empty name");
  const longer = Buffer.from(small[0]!);
  longer.writeUInt16LE(6, 0);
  expectEio(() => decodeXattrHeader(longer), "value length disagrees with size");
  expectEio(() => decodeXattrParts([]), "no parts");
});

test("symlink parts: golden bytes, round trip, validation", () => {
  const t = Buffer.from("../some/target");
  const p = encodeSymlinkParts(t);
  golden("symlink", Buffer.concat(p));
  assert.deepEqual(decodeSymlinkParts(p, BigInt(t.length)), t);
  const long = Buffer.alloc(4095, 0x78);
  const lp = encodeSymlinkParts(long);
  assert.equal(lp.length, Math.ceil(4096 / SYMLINK_PART_MAX));
  assert.deepEqual(decodeSymlinkParts(lp, 4095n), long);
  expectEio(() => decodeSymlinkParts(p, BigInt(t.length + 1)), "size disagrees");
  expectEio(() => decodeSymlinkParts(lp.slice(1), 4095n), "missing part");
  const noNul = [Buffer.from(p[0]!)];
  noNul[0]![t.length] = 0x41;
  expectEio(() => decodeSymlinkParts(noNul, BigInt(t.length)), "no NUL");
  expectEio(() => decodeSymlinkParts(p, 4096n), "too long");
});

test("statfs reply: golden bytes and validation", () => {
  const b = Buffer.alloc(STATFS_REPLY_SIZE);
  b.writeBigUInt64LE(4096n, 0);
  b.writeBigUInt64LE(4000n, 8);
  b.writeBigUInt64LE(1n << 20n, 16);
  b.writeBigUInt64LE(1000n, 24);
  b.writeBigUInt64LE(5n, 32);
  Buffer.from("00112233445566778899aabbccddeeff", "hex").copy(b, 40);
  golden("statfs-reply", b);
  const r = decodeStatfsReply(b);
  assert.equal(r.freeMetaBlocks, 4000n);
  assert.equal(r.inodeCount, 5n);
  const bad = Buffer.from(b);
  bad.writeBigUInt64LE(5000n, 8);
  expectEio(() => decodeStatfsReply(bad), "free > total");
  expectEio(() => decodeStatfsReply(b.subarray(1)), "size");
});

test("inode item as the namespace writes it: times past 2^32 s, negative, nanoseconds", () => {
  const v: InodeValue = {
    size: 3n, metaSeq: 9n, dataSeq: 8n, dataVersion: 2n, onlineBlocks: 0n, offlineBlocks: 0n,
    nextReaddirPos: 5n, nextXattrId: 3n, version: 4n, nlink: 2, uid: 1000, gid: 100,
    mode: 0o42775, rdev: 0, flags: 0, atime: { sec: -1n, nsec: 999_999_999 },
    ctime: { sec: 0x1_0000_0001n, nsec: 1 }, mtime: { sec: 1_700_000_000n, nsec: 5 },
    crtime: { sec: 0n, nsec: 0 }, proj: 7n,
  };
  const b = encodeInode(v, 2);
  golden("inode-dir-v2", b);
  assert.deepEqual(decodeInode(b, 2), v);
});
