/*
 * Goal: every on-disk struct round-trips through its encoder and validating decoder, its bytes
 * never change by accident (golden fixtures), and its decoder refuses nonsense with EIO.
 *
 * Method: encode a fixed sample of each struct, compare with the hex fixture in
 * test/fixtures/format/ (regenerate deliberately with UPDATE_FIXTURES=1 when the format
 * version changes), decode it back and compare fields; then damage chosen fields and expect
 * FsError EIO (or EINVAL for the META-flag check).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ALLOC_LIST_HEAD_SIZE, ALLOC_LIST_MAX_BLKNOS, ALLOC_ROOT_SIZE, BTREE_ROOT_SIZE, decodeDataExtent, decodeInode,
  decodeQuorumBlock, decodeSuper, emptyQuorumBlock, encodeDataExtent, encodeInode,
  encodeQuorumBlock, encodeSuper, EXTENT_FLAG_OFFLINE, EXTENT_FLAG_UNWRITTEN, INODE_V1_SIZE,
  INODE_V2_SIZE, type InodeValue, isScoutfsSuper, Magic, META_BLOCK_SIZE, readAllocRoot,
  readBlockHeader, readBtreeRoot, readListHead, sealBlock, SUPER_SIZE, type SuperBlock,
  writeAllocRoot, writeBlockHeader, writeBtreeRoot, writeListHead, blockCrcValid,
} from "../../src/core/format.js";
import {
  compareKeys, formatKey, indxFields, indxKey, inodeKey, KEY_SIZE, keyDec, keyFields, keyInc,
  makeKey, MAX_KEY, metaSeqKey, MIN_KEY, U64_MAX, extentOrder, freeExtentOrderKey,
} from "../../src/core/key.js";
import { initBtreeBlock, insertAt, validateBtreeBlock } from "../../src/core/btree_block.js";
import { encodeDelta, decodeDelta } from "../../src/core/btree_merge.js";
import { decodeListBlock, encodeListBlock } from "../../src/core/alloc.js";
import { isFsError } from "../../src/util/errno.js";
import { goldenIn } from "../helpers/golden.js";

const golden = goldenIn("format");

function expectEio(fn: () => unknown, what: string): void {
  assert.throws(fn, (e: unknown) => isFsError(e, "EIO"), what);
}

const fsid = 0x0123_4567_89ab_cdefn;

function sampleSuper(): SuperBlock {
  const slots: SuperBlock["qconf"]["slots"] = Array.from({ length: 15 }, () => null);
  slots[0] = { addr: "127.0.0.1", port: 19700 };
  slots[4] = { addr: "10.1.2.3", port: 65535 };
  return {
    hdr: { fsid, seq: 77 }, fmtVers: 2, flags: 0n, uuid: Buffer.alloc(16, 0xab), seq: 77,
    nextIno: 5120n, inodeCount: 42n, totalMetaBlocks: 1_048_576, totalDataBlocks: 16_777_216,
    qconf: { version: 3, slots },
    metaAlloc: [{ totalLen: 1000, flags: 0, root: { ref: { blkno: 9, seq: 70 }, height: 1 } },
      { totalLen: 2000, flags: 1, root: { ref: { blkno: 10, seq: 71 }, height: 2 } }],
    dataAlloc: { totalLen: 123456, flags: 0, root: { ref: { blkno: 11, seq: 72 }, height: 1 } },
    serverMetaAvail: [{ ref: { blkno: 12, seq: 77 }, totalNr: 1024, firstNr: 1024, flags: 0 },
      { ref: { blkno: 0, seq: 0 }, totalNr: 0, firstNr: 0, flags: 0 }],
    serverMetaFreed: [{ ref: { blkno: 0, seq: 0 }, totalNr: 0, firstNr: 0, flags: 0 },
      { ref: { blkno: 13, seq: 76 }, totalNr: 9000, firstNr: 815, flags: 0 }],
    fsRoot: { ref: { blkno: 14, seq: 77 }, height: 3 }, logsRoot: { ref: { blkno: 0, seq: 0 }, height: 0 },
    logMerge: { ref: { blkno: 0, seq: 0 }, height: 0 },
    mountedClients: { ref: { blkno: 15, seq: 60 }, height: 1 },
    srchRoot: { ref: { blkno: 0, seq: 0 }, height: 0 },
    volopt: { dataAllocZoneBlocks: 1 << 20 },
  };
}

test("super block: golden bytes, round trip, META flag, validation", () => {
  const sb = sampleSuper();
  const meta = encodeSuper(sb, true);
  assert.equal(meta.length, SUPER_SIZE);
  golden("super-meta", meta);
  assert.ok(isScoutfsSuper(meta));
  const back = decodeSuper(meta, true);
  assert.deepEqual({ ...back, uuid: [...back.uuid] }, { ...sb, uuid: [...sb.uuid] });
  const data = encodeSuper(sb, false);
  decodeSuper(data, false);
  assert.throws(() => decodeSuper(data, true), (e: unknown) => isFsError(e, "EINVAL"));
  assert.throws(() => decodeSuper(meta, false), (e: unknown) => isFsError(e, "EINVAL"));
  for (const off of [0, 4, 8, 16, 24, 32, 40, 48, 100, 200, 1000, 4095]) {
    const bad = Buffer.from(meta);
    bad[off]! ^= 0x40;
    expectEio(() => decodeSuper(bad), `flip at ${off}`);
  }
  // a valid checksum over invalid fields is still refused
  const v = Buffer.from(meta);
  v.writeUInt32LE(9, 40);
  sealBlock(v);
  expectEio(() => decodeSuper(v), "format version 9");
  assert.ok(!isScoutfsSuper(Buffer.alloc(SUPER_SIZE)));
});

test("roots, alloc roots and list heads: golden bytes and validation", () => {
  const buf = Buffer.alloc(BTREE_ROOT_SIZE + ALLOC_ROOT_SIZE + ALLOC_LIST_HEAD_SIZE);
  const root = { ref: { blkno: 2 ** 40 + 3, seq: 99 }, height: 4 };
  const aroot = { totalLen: 2 ** 33, flags: 1, root: { ref: { blkno: 5, seq: 6 }, height: 1 } };
  const head = { ref: { blkno: 7, seq: 8 }, totalNr: 10000, firstNr: 1815, flags: 0 };
  writeBtreeRoot(buf, 0, root);
  writeAllocRoot(buf, BTREE_ROOT_SIZE, aroot);
  writeListHead(buf, BTREE_ROOT_SIZE + ALLOC_ROOT_SIZE, head);
  golden("roots", buf);
  assert.deepEqual(readBtreeRoot(buf, 0), root);
  assert.deepEqual(readAllocRoot(buf, BTREE_ROOT_SIZE), aroot);
  assert.deepEqual(readListHead(buf, BTREE_ROOT_SIZE + ALLOC_ROOT_SIZE), head);
  const bad = Buffer.from(buf);
  bad[16] = 0;
  expectEio(() => readBtreeRoot(bad, 0), "height 0 with a ref");
  bad[16] = 21;
  expectEio(() => readBtreeRoot(bad, 0), "height 21");
  const big = Buffer.from(buf);
  big.writeUInt32LE(0x00200000, 4);
  expectEio(() => readBtreeRoot(big, 0), "blkno over 2^53");
});

test("quorum block: golden bytes, round trip, identity checks", () => {
  const q = emptyQuorumBlock(fsid, 3);
  q.writeNr = 5;
  q.events[2] = { writeNr: 5, rid: 0xfeedn, term: 12, sec: 1_700_000_000n, nsec: 5 };
  const enc = encodeQuorumBlock(q);
  golden("quorum", enc);
  assert.deepEqual(decodeQuorumBlock(enc, fsid, 3), q);
  expectEio(() => decodeQuorumBlock(enc, fsid, 4), "wrong slot");
  expectEio(() => decodeQuorumBlock(enc, fsid + 1n, 3), "wrong fsid");
  const bad = Buffer.from(enc);
  bad[200]! ^= 1;
  expectEio(() => decodeQuorumBlock(bad, fsid, 3), "flipped");
});

function sampleInode(proj: bigint): InodeValue {
  return {
    size: 2n ** 40n, metaSeq: 7n, dataSeq: 8n, dataVersion: 9n, onlineBlocks: 10n,
    offlineBlocks: 11n, nextReaddirPos: 12n, nextXattrId: 13n, version: 14n, nlink: 2, uid: 1000,
    gid: 100, mode: 0o100644, rdev: 0, flags: 2,
    atime: { sec: 2n ** 33n, nsec: 999_999_999 }, ctime: { sec: -5n, nsec: 1 },
    mtime: { sec: 0n, nsec: 0 }, crtime: { sec: 1_700_000_000n, nsec: 123 }, proj,
  };
}

test("inode item v1 and v2: golden bytes, round trip, validation", () => {
  const v2 = encodeInode(sampleInode(77n), 2);
  const v1 = encodeInode(sampleInode(0n), 1);
  assert.equal(v2.length, INODE_V2_SIZE);
  assert.equal(v1.length, INODE_V1_SIZE);
  golden("inode-v2", v2);
  golden("inode-v1", v1);
  assert.deepEqual(decodeInode(v2, 2), sampleInode(77n));
  assert.deepEqual(decodeInode(v1, 1), sampleInode(0n));
  expectEio(() => decodeInode(v1, 2), "v1 size read as v2");
  const bad = Buffer.from(v2);
  bad.writeUInt32LE(1_000_000_000, 96 + 8);
  expectEio(() => decodeInode(bad, 2), "nsec out of range");
});

test("data extent values: golden bytes and validation", () => {
  const on = encodeDataExtent({ blkno: 12345, flags: EXTENT_FLAG_UNWRITTEN });
  const off = encodeDataExtent({ blkno: 0, flags: EXTENT_FLAG_OFFLINE });
  golden("data-extent", Buffer.concat([on, off]));
  assert.deepEqual(decodeDataExtent(on), { blkno: 12345, flags: EXTENT_FLAG_UNWRITTEN });
  assert.deepEqual(decodeDataExtent(off), { blkno: 0, flags: EXTENT_FLAG_OFFLINE });
  expectEio(() => decodeDataExtent(encodeDataExtent({ blkno: 5, flags: EXTENT_FLAG_OFFLINE })),
    "offline with a blkno");
  expectEio(() => decodeDataExtent(Buffer.alloc(15)), "short");
});

test("keys: layout, order, inc/dec, printing, indx packing, extent orders", () => {
  const k = makeKey(16, 0x0102030405060708n, 4, U64_MAX, 3n, 9);
  assert.equal(k.length, KEY_SIZE);
  golden("key", k);
  assert.deepEqual(keyFields(k), { zone: 16, first: 0x0102030405060708n, type: 4, second: U64_MAX,
    third: 3n, fourth: 9 });
  assert.equal(formatKey(inodeKey(1n)), "16.1.4.0.0.0");
  assert.equal(formatKey(metaSeqKey(5n, 1025n)), "4.0.4.5.1025.0");
  // sort order is zone, first, type, second, third, fourth
  const order = [makeKey(4, 9n, 9, 9n, 9n, 9), makeKey(16, 1n, 4, 0n, 0n, 0), makeKey(16, 1n, 4, 0n, 0n, 1),
    makeKey(16, 1n, 4, 0n, 1n, 0), makeKey(16, 1n, 4, 1n, 0n, 0), makeKey(16, 1n, 8, 0n, 0n, 0),
    makeKey(16, 2n, 0, 0n, 0n, 0), makeKey(20, 0n, 0, 0n, 0n, 0)];
  for (let i = 1; i < order.length; i++) assert.ok(compareKeys(order[i - 1]!, order[i]!) < 0);
  assert.deepEqual(keyFields(keyInc(makeKey(16, 1n, 4, U64_MAX, U64_MAX, 255))),
    { zone: 16, first: 1n, type: 5, second: 0n, third: 0n, fourth: 0 });
  assert.ok(keyDec(keyInc(k)).equals(k));
  assert.throws(() => keyInc(MAX_KEY));
  assert.throws(() => keyDec(MIN_KEY));
  const ix = indxKey(200, 5n, 1025n, 3n);
  assert.deepEqual(indxFields(ix), { major: 200, minor: 5n, ino: 1025n, id: 3n });
  assert.ok(compareKeys(indxKey(1, 9n, 9n, 9n), indxKey(2, 0n, 0n, 0n)) < 0);
  assert.deepEqual([1, 7, 8, 63, 64, 511, 512].map(extentOrder), [0, 0, 1, 1, 2, 2, 3]);
  assert.throws(() => extentOrder(0));
  // larger orders sort first
  assert.ok(compareKeys(freeExtentOrderKey(3, 100, 600), freeExtentOrderKey(1, 5, 8)) < 0);
});

test("btree block: golden bytes, validation of every structural field", () => {
  const b = Buffer.alloc(META_BLOCK_SIZE);
  writeBlockHeader(b, Magic.BTREE, fsid, 3, 100);
  initBtreeBlock(b, 0);
  insertAt(b, 0, makeKey(16, 1n, 4), Buffer.from("one"), 3, 0);
  insertAt(b, 1, makeKey(16, 2n, 4), Buffer.alloc(0), 3, 1);
  insertAt(b, 1, makeKey(16, 1n, 8), encodeDelta(-5n, 1n), 2, 2);
  sealBlock(b);
  validateBtreeBlock(b);
  golden("btree-leaf", b.subarray(0, 48 + 3 * 40));
  golden("btree-leaf-values", b.subarray(META_BLOCK_SIZE - 19));
  assert.ok(blockCrcValid(b));
  assert.deepEqual(readBlockHeader(b).blkno, 100);
  assert.deepEqual(decodeDelta(encodeDelta(-5n, 1n)), { total: -5n, count: 1n });
  const unsorted = Buffer.from(b);
  makeKey(16, 3n, 4).copy(unsorted, 48);
  expectEio(() => validateBtreeBlock(unsorted), "unsorted keys");
  const overlap = Buffer.from(b);
  overlap.writeUInt16LE(200, 32);
  expectEio(() => validateBtreeBlock(overlap), "too many items");
  const badLen = Buffer.from(b);
  badLen.writeUInt16LE(900, 48 + 38);
  expectEio(() => validateBtreeBlock(badLen), "value length");
  const badFlags = Buffer.from(b);
  badFlags[48 + 27] = 0x80;
  expectEio(() => validateBtreeBlock(badFlags), "flags");
  const badLevel = Buffer.from(b);
  badLevel[34] = 1;
  expectEio(() => validateBtreeBlock(badLevel), "parent with non-ref values");
});

test("alloc list block: golden bytes, round trip, validation", () => {
  const lb = { next: { blkno: 77, seq: 3 }, blknos: [10, 11, 12, 2 ** 40] };
  const b = encodeListBlock(fsid, 4, 9, lb);
  golden("alloc-list", b.subarray(0, 96));
  assert.ok(b.subarray(96).every((x) => x === 0));
  assert.ok(blockCrcValid(b));
  assert.deepEqual(decodeListBlock(b), lb);
  const full = encodeListBlock(fsid, 4, 9, { next: { blkno: 0, seq: 0 },
    blknos: Array.from({ length: ALLOC_LIST_MAX_BLKNOS }, (_, i) => i + 100) });
  assert.equal(decodeListBlock(full).blknos.length, ALLOC_LIST_MAX_BLKNOS);
  assert.throws(() => encodeListBlock(fsid, 4, 9, { next: { blkno: 0, seq: 0 },
    blknos: Array.from({ length: ALLOC_LIST_MAX_BLKNOS + 1 }, (_, i) => i) }));
  const tooMany = Buffer.from(b);
  tooMany.writeUInt32LE(ALLOC_LIST_MAX_BLKNOS + 1, 52);
  expectEio(() => decodeListBlock(tooMany), "nr beyond capacity");
  const junk = Buffer.from(b);
  junk[1000] = 1;
  expectEio(() => decodeListBlock(junk), "bytes after the entries");
  const start = Buffer.from(b);
  start[48] = 1;
  expectEio(() => decodeListBlock(start), "non-zero start");
});

test("errors are typed", () => {
  try {
    decodeSuper(Buffer.alloc(SUPER_SIZE));
    assert.fail("decoded zeros");
  } catch (e) {
    assert.ok(isFsError(e, "EIO"));
    assert.match((e as Error).message, /no scoutfs super block/);
  }
});
