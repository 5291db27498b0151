/*
 * Goal: the control socket's wire format (src/cli/control_wire.ts) encodes every operation's
 * request and reply to fixed bytes, decodes them back to the same values, and refuses
 * anything its encoder could not have produced with EBADMSG (never another exception):
 * wrong magic, version, kind or op, nonzero pad, errno in a request, out-of-range counts and
 * booleans, truncation, trailing bytes, oversized frames.
 *
 * Method: one sample per operation, round-tripped and compared with golden fixtures in
 * test/fixtures/control/; targeted corruptions; every single-byte change of every sample
 * frame either decodes to a frame that re-encodes to exactly those bytes or is EBADMSG; the
 * FrameReader fed byte by byte.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  type ControlReply, type ControlRequest, CONTROL_MAX_REPLY_BYTES, CONTROL_MAX_REQUEST_BYTES,
  decodeReply, decodeRequest, encodeReply, encodeRequest, FRAME_LEN_SIZE, FrameReader,
} from "../../src/cli/control_wire.js";
import { isFsError } from "../../src/util/errno.js";
import { goldenIn } from "../helpers/golden.js";

const golden = goldenIn("control");
const FSID = 0x0123_4567_89ab_cdefn;
const B = (s: string): Buffer => Buffer.from(s);

const REQUESTS: ControlRequest[] = [
  { id: 1, op: "hello", fsid: 0n, args: {} },
  { id: 2, op: "walkInodes", fsid: FSID, args: { index: 1, first: { major: 5n, minor: 7, ino: 9n },
    last: { major: 0xffff_ffff_ffff_ffffn, minor: 0xffff_ffff, ino: 0xffff_ffff_ffff_ffffn },
    max: 128 } },
  { id: 3, op: "inoPath", fsid: FSID, args: { ino: 1025n, dirIno: 1n, dirPos: 3n } },
  { id: 4, op: "getReferringEntries", fsid: FSID,
    args: { ino: 1025n, dirIno: 0n, dirPos: 0n, max: 1024 } },
  { id: 5, op: "listxattrHidden", fsid: FSID, args: { ino: 1025n, hashPos: 0xdeadn, idPos: 2n } },
  { id: 6, op: "statMore", fsid: FSID, args: { ino: 1025n } },
  { id: 7, op: "statfsMore", fsid: FSID, args: {} },
  { id: 8, op: "allocDetail", fsid: FSID, args: {} },
  { id: 9, op: "getAllocatedInos", fsid: FSID, args: { startIno: 1024n, max: 1 } },
  { id: 10, op: "fiemap", fsid: FSID, args: { ino: 1025n, start: 4096n, max: 292 } },
];

const REPLIES: ControlReply[] = [
  { id: 1, op: "hello", fsid: FSID, errno: 0, result: { fsid: FSID, rid: 0xa0n } },
  { id: 2, op: "walkInodes", fsid: FSID, errno: 0, result: [{ major: 5n, minor: 0, ino: 1025n },
    { major: 6n, minor: 0, ino: 1n }] },
  { id: 3, op: "inoPath", fsid: FSID, errno: 0,
    result: { dirIno: 1026n, dirPos: 2n, path: B("a/b/file") } },
  { id: 4, op: "getReferringEntries", fsid: FSID, errno: 0, result: [
    { dirIno: 1n, dirPos: 2n, ino: 1025n, type: 8, last: false, name: B("top") },
    { dirIno: 1026n, dirPos: 3n, ino: 1025n, type: 8, last: true,
      name: Buffer.from([0xff, 0x41]) }] },
  { id: 5, op: "listxattrHidden", fsid: FSID, errno: 0, result: { hashPos: 0xdeadn, idPos: 3n,
    done: true, names: [B("scoutfs.hide.a"), B("scoutfs.hide.srch.b")] } },
  { id: 6, op: "statMore", fsid: FSID, errno: 0, result: { metaSeq: 12n, dataSeq: 11n,
    dataVersion: 3n, onlineBlocks: 4n, offlineBlocks: 5n, crtimeSec: 1_700_000_000n,
    crtimeNsec: 123 } },
  { id: 7, op: "statfsMore", fsid: FSID, errno: 0, result: { fsid: FSID, rid: 0xa0n,
    committedSeq: 42n, totalMetaBlocks: 1_048_576n, totalDataBlocks: 16_777_152n,
    reservedMetaBlocks: 0n } },
  { id: 8, op: "allocDetail", fsid: FSID, errno: 0, result: [
    { id: 0n, blocks: 1000n, type: 1, meta: true, avail: true },
    { id: 0xa0n, blocks: 7n, type: 2, meta: false, avail: false }] },
  { id: 9, op: "getAllocatedInos", fsid: FSID, errno: 0, result: [1025n, 1027n] },
  { id: 10, op: "fiemap", fsid: FSID, errno: 0, result: [{ logical: 0n, physical: 40960n,
    length: 8192n, flags: 0x801 }] },
  { id: 11, op: "inoPath", fsid: FSID, errno: 2 },
];

const body = (frame: Buffer): Buffer => frame.subarray(FRAME_LEN_SIZE);

function ebadmsg(fn: () => unknown, what: string): void {
  assert.throws(fn, (e: unknown) => isFsError(e, "EBADMSG"), what);
}

test("every request and reply round-trips and matches its golden bytes", () => {
  for (const q of REQUESTS) {
    const f = encodeRequest(q);
    assert.equal(f.readUInt32LE(0), f.length - FRAME_LEN_SIZE, "length prefix");
    assert.deepEqual(decodeRequest(body(f)), q);
    golden(`request_${q.op}`, f);
  }
  for (const p of REPLIES) {
    const f = encodeReply(p);
    assert.deepEqual(decodeReply(body(f)), p);
    golden(`reply_${p.op}${p.errno ? "_errno" : ""}`, f);
  }
});

test("header violations are EBADMSG", () => {
  const good = body(encodeRequest(REQUESTS[2]!));
  const mutate = (off: number, v: number): Buffer => {
    const b = Buffer.from(good);
    b[off] = v;
    return b;
  };
  ebadmsg(() => decodeRequest(mutate(0, 0)), "magic");
  ebadmsg(() => decodeRequest(mutate(4, 2)), "version");
  ebadmsg(() => decodeRequest(mutate(5, 2)), "a reply where a request belongs");
  ebadmsg(() => decodeRequest(mutate(6, 99)), "unknown op");
  ebadmsg(() => decodeRequest(mutate(7, 1)), "pad");
  ebadmsg(() => decodeRequest(mutate(12, 5)), "errno in a request");
  ebadmsg(() => decodeReply(good), "a request where a reply belongs");
  const r = Buffer.from(body(encodeReply(REPLIES[10]!)));
  r.writeUInt32LE(4096, 12);
  ebadmsg(() => decodeReply(r), "errno beyond MAX_ERRNO");
  ebadmsg(() => decodeReply(Buffer.concat([body(encodeReply(REPLIES[10]!)), Buffer.alloc(1)])),
    "payload after an errno");
});

test("payload violations are EBADMSG", () => {
  const walk = Buffer.from(body(encodeRequest(REQUESTS[1]!)));
  walk[24] = 2; // index
  ebadmsg(() => decodeRequest(walk), "walk index");
  const max0 = Buffer.from(body(encodeRequest(REQUESTS[1]!)));
  max0.writeUInt32LE(0, max0.length - 4);
  ebadmsg(() => decodeRequest(max0), "walk max 0");
  max0.writeUInt32LE(1025, max0.length - 4);
  ebadmsg(() => decodeRequest(max0), "walk max beyond the bound");
  const ents = Buffer.from(body(encodeReply(REPLIES[3]!)));
  ents[24 + 4 + 24 + 1] = 2; // first entry's `last`
  ebadmsg(() => decodeReply(ents), "boolean 2");
  const count = Buffer.from(body(encodeReply(REPLIES[8]!)));
  count.writeUInt32LE(1025, 24);
  ebadmsg(() => decodeReply(count), "count beyond the bound");
  const path = Buffer.from(body(encodeReply(REPLIES[2]!)));
  path[path.length - 1] = 0;
  ebadmsg(() => decodeReply(path), "NUL in a path");
  const stat = Buffer.from(body(encodeReply(REPLIES[5]!)));
  stat.writeUInt32LE(1_000_000_000, stat.length - 4);
  ebadmsg(() => decodeReply(stat), "nsec out of range");
  for (const q of REQUESTS) {
    const b = body(encodeRequest(q));
    ebadmsg(() => decodeRequest(Buffer.concat([b, Buffer.alloc(1)])), `${q.op} trailing byte`);
    if (b.length > 24) ebadmsg(() => decodeRequest(b.subarray(0, b.length - 1)), `${q.op} cut`);
  }
  ebadmsg(() => decodeRequest(Buffer.alloc(CONTROL_MAX_REQUEST_BYTES + 1)), "oversized request");
  ebadmsg(() => decodeReply(Buffer.alloc(CONTROL_MAX_REPLY_BYTES + 1)), "oversized reply");
});

test("every single-byte change decodes to itself or is EBADMSG", () => {
  const frames: [Buffer, (b: Buffer) => Buffer][] = [
    ...REQUESTS.map((q): [Buffer, (b: Buffer) => Buffer] =>
      [body(encodeRequest(q)), (b) => body(encodeRequest(decodeRequest(b)))]),
    ...REPLIES.map((p): [Buffer, (b: Buffer) => Buffer] =>
      [body(encodeReply(p)), (b) => body(encodeReply(decodeReply(b)))]),
  ];
  let refused = 0;
  for (const [frame, roundTrip] of frames) {
    for (let i = 0; i < frame.length; i++) {
      for (const x of [0x01, 0x80, 0xff]) {
        const b = Buffer.from(frame);
        b[i] = b[i]! ^ x;
        try {
          assert.deepEqual(roundTrip(b), b, `byte ${i} ^ ${x}`);
        } catch (e) {
          if (!isFsError(e, "EBADMSG")) throw e;
          refused++;
        }
      }
    }
  }
  assert.ok(refused > 100, "corruptions were refused");
});

test("FrameReader: frames split anywhere, bounded bodies, poisoned after a bad length", () => {
  const stream = Buffer.concat(REQUESTS.map(encodeRequest));
  const r = new FrameReader(CONTROL_MAX_REQUEST_BYTES);
  const got: ControlRequest[] = [];
  for (let i = 0; i < stream.length; i++) {
    for (const b of r.push(stream.subarray(i, i + 1))) got.push(decodeRequest(b));
  }
  assert.deepEqual(got, REQUESTS);
  assert.equal(r.pending, 0);
  const big = Buffer.alloc(4);
  big.writeUInt32LE(CONTROL_MAX_REQUEST_BYTES + 1, 0);
  const p = new FrameReader(CONTROL_MAX_REQUEST_BYTES);
  ebadmsg(() => p.push(big), "oversized frame");
  ebadmsg(() => p.push(encodeRequest(REQUESTS[0]!)), "poisoned");
  const tiny = Buffer.alloc(4);
  tiny.writeUInt32LE(3, 0);
  ebadmsg(() => new FrameReader(CONTROL_MAX_REQUEST_BYTES).push(tiny), "body below a header");
});
