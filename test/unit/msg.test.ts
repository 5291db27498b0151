/*
 * Goal: the network frame and greeting codecs round-trip, their bytes never change by
 * accident (golden fixtures), the decoder refuses every malformed frame with EBADMSG, and the
 * FrameReader reassembles frames from any chunking of the byte stream with bounded memory.
 *
 * Method: encode fixed samples and compare with hex fixtures in test/fixtures/msg/
 * (regenerate deliberately with UPDATE_FIXTURES=1 when the wire format changes); round-trip
 * frames with random fields from a fixed seed; flip every byte of a frame and patch chosen
 * fields (recomputing the crc so the field check itself is exercised); feed a stream of
 * random frames through FrameReaders in random chunk sizes, one byte at a time and whole,
 * and check frames, order and the partial-frame bound; check a bad frame poisons the reader
 * only after the good frames before it were delivered.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  cmdName, decodeGreeting, decodeMsg, encodeGreeting, encodeMsg, FrameReader, frameDataLen,
  fsErrorFromWire, type Greeting, GREETING_SIZE, GreetingFlag, type Msg, MSG_HEADER_SIZE,
  MSG_MAX_DATA_LEN, MSG_MAX_FRAME_SIZE, MsgFlag, NET_CMD_NR, NetCmd, WIRE_ERR_NR, WIRE_OK,
  wireErrorOf,
} from "../../src/core/msg.js";
import { crc32c } from "../../src/util/crc32c.js";
import { isFsError } from "../../src/util/errno.js";
import { SimRandom } from "../../src/sim/random.js";
import { goldenIn } from "../helpers/golden.js";

const golden = goldenIn("msg");

function expectBadMsg(fn: () => unknown, what: string): void {
  assert.throws(fn, (e: unknown) => isFsError(e, "EBADMSG"), what);
}

const fsid = 0x0123_4567_89ab_cdefn;

function sampleRequest(): Msg {
  return { seq: 7, recvSeq: 5, id: 42, fsid, cmd: NetCmd.GET_LOG_TREES, flags: 0,
    error: WIRE_OK, data: Buffer.from("log trees please") };
}

function sampleGreeting(): Greeting {
  return { fsid, fmtVers: 2, serverTerm: 9, rid: 0xfedc_ba98_7654_3210n,
    flags: GreetingFlag.QUORUM };
}

/** Re-seals a frame after a test patched its header. */
function reseal(frame: Buffer): Buffer {
  frame.writeUInt32LE(crc32c(frame.subarray(4)), 0);
  return frame;
}

function randomMsg(r: SimRandom): Msg {
  if (r.chance(0.1)) {
    return { seq: 0, recvSeq: r.int(1_000_000), id: 0, fsid, cmd: NetCmd.GREETING,
      flags: MsgFlag.ACK, error: WIRE_OK, data: Buffer.alloc(0) };
  }
  const response = r.chance(0.5);
  const data = Buffer.alloc(r.chance(0.2) ? 0 : r.int(MSG_MAX_DATA_LEN + 1));
  r.fill(data);
  return {
    seq: r.int(2 ** 53), recvSeq: r.int(2 ** 40), id: r.int(2 ** 32), fsid,
    cmd: r.int(NET_CMD_NR) as NetCmd, flags: response ? MsgFlag.RESPONSE : 0,
    error: response && r.chance(0.3) ? 1 + r.int(WIRE_ERR_NR - 1) : WIRE_OK, data,
  };
}

test("command and wire errno values are upstream's", () => {
  assert.equal(NetCmd.GREETING, 0);
  assert.equal(NetCmd.LOCK, 7);
  assert.equal(NetCmd.STATFS, 18);
  assert.equal(NetCmd.FAREWELL, 19);
  assert.equal(NET_CMD_NR, 20);
  assert.equal(cmdName(NetCmd.COMMIT_LOG_MERGE), "COMMIT_LOG_MERGE");
  assert.equal(cmdName(77), "CMD_77");
  const upstream = ["ENOENT", "ENOMEM", "EIO", "ENOSPC", "EINVAL", "ENOLINK"] as const;
  upstream.forEach((code, i) => assert.equal(wireErrorOf(code), i + 1, code));
  for (let w = 1; w < WIRE_ERR_NR; w++) {
    const e = fsErrorFromWire(w);
    assert.equal(wireErrorOf(e.code), w, `wire ${w} round trip`);
  }
  assert.equal(wireErrorOf("EXDEV"), wireErrorOf("EIO"), "unknown codes travel as EIO");
  assert.equal(fsErrorFromWire(wireErrorOf("ENOSPC")).code, "ENOSPC");
});

test("frames: golden bytes and round trip", () => {
  const req = sampleRequest();
  const reqFrame = encodeMsg(req);
  assert.equal(reqFrame.length, MSG_HEADER_SIZE + req.data.length);
  golden("request", reqFrame);
  assert.deepEqual(decodeMsg(reqFrame), req);

  const resp: Msg = { ...req, seq: 8, recvSeq: 7, cmd: NetCmd.LOCK, flags: MsgFlag.RESPONSE,
    error: wireErrorOf("ENOSPC"), data: Buffer.alloc(0) };
  golden("response-error", encodeMsg(resp));
  assert.deepEqual(decodeMsg(encodeMsg(resp)), resp);

  const ack: Msg = { seq: 0, recvSeq: 123_456, id: 0, fsid, cmd: NetCmd.GREETING,
    flags: MsgFlag.ACK, error: WIRE_OK, data: Buffer.alloc(0) };
  golden("ack", encodeMsg(ack));
  assert.deepEqual(decodeMsg(encodeMsg(ack)), ack);

  const r = new SimRandom(0x5eed_0001);
  for (let i = 0; i < 300; i++) {
    const m = randomMsg(r);
    assert.deepEqual(decodeMsg(encodeMsg(m)), m, `random frame ${i}`);
  }
});

test("greeting: golden bytes, round trip, validation", () => {
  const g = sampleGreeting();
  const buf = encodeGreeting(g);
  assert.equal(buf.length, GREETING_SIZE);
  golden("greeting", buf);
  assert.deepEqual(decodeGreeting(buf), g);
  const frame = encodeMsg({ seq: 0, recvSeq: 0, id: 0, fsid, cmd: NetCmd.GREETING, flags: 0,
    error: WIRE_OK, data: buf });
  golden("greeting-frame", frame);
  assert.deepEqual(decodeGreeting(decodeMsg(frame).data), g);

  const both = { ...g, flags: GreetingFlag.FAREWELL | GreetingFlag.QUORUM, serverTerm: 0 };
  assert.deepEqual(decodeGreeting(encodeGreeting(both)), both);
  expectBadMsg(() => decodeGreeting(buf.subarray(0, GREETING_SIZE - 1)), "short greeting");
  expectBadMsg(() => decodeGreeting(Buffer.concat([buf, Buffer.alloc(1)])), "long greeting");
  const badFlags = Buffer.from(buf);
  badFlags.writeUInt32LE(4, 32);
  expectBadMsg(() => decodeGreeting(badFlags), "unknown greeting flag");
  const hugeFlags = Buffer.from(buf);
  hugeFlags.writeUInt32LE(1, 36);
  expectBadMsg(() => decodeGreeting(hugeFlags), "greeting flags above 32 bits");
  const hugeTerm = Buffer.from(buf);
  hugeTerm.writeUInt32LE(0xffffffff, 20);
  expectBadMsg(() => decodeGreeting(hugeTerm), "server_term beyond 2^53");
  assert.throws(() => encodeGreeting({ ...g, flags: 8 }), /greeting flags/);
});

test("decoder: every single-byte corruption is refused", () => {
  const frame = encodeMsg(sampleRequest());
  for (let i = 0; i < frame.length; i++) {
    for (const flip of [0x01, 0x80, 0xff]) {
      const bad = Buffer.from(frame);
      bad[i] = bad[i]! ^ flip;
      expectBadMsg(() => decodeMsg(bad), `byte ${i} ^ ${flip}`);
    }
  }
  expectBadMsg(() => decodeMsg(frame.subarray(0, MSG_HEADER_SIZE - 1)), "short header");
  expectBadMsg(() => decodeMsg(frame.subarray(0, frame.length - 1)), "short payload");
  expectBadMsg(() => decodeMsg(Buffer.concat([frame, Buffer.alloc(1)])), "trailing byte");
});

test("decoder: well-sealed frames with invalid fields are refused", () => {
  const patch = (what: string, fn: (b: Buffer) => void, base: Msg = sampleRequest()): void => {
    const b = encodeMsg(base);
    fn(b);
    expectBadMsg(() => decodeMsg(reseal(b)), what);
  };
  patch("unknown cmd", (b) => b.writeUInt8(NET_CMD_NR, 6));
  patch("unknown flag", (b) => b.writeUInt8(4, 7));
  patch("error on a request", (b) => b.writeUInt8(1, 8));
  patch("error beyond the enum", (b) => b.writeUInt8(WIRE_ERR_NR, 8),
    { ...sampleRequest(), flags: MsgFlag.RESPONSE });
  for (let off = 9; off < 16; off++) patch(`pad byte ${off}`, (b) => b.writeUInt8(1, off));
  patch("seq beyond 2^53", (b) => b.writeUInt32LE(0x200000, 20));
  patch("recv_seq beyond 2^53", (b) => b.writeUInt32LE(0xffffffff, 28));
  patch("id beyond 2^53", (b) => b.writeUInt32LE(0x200000, 36));
  patch("ack with a seq", (b) => b.writeUInt8(MsgFlag.ACK, 7));
  patch("ack and response", (b) => b.writeUInt8(MsgFlag.ACK | MsgFlag.RESPONSE, 7),
    { ...sampleRequest(), seq: 0, id: 0, cmd: NetCmd.GREETING, data: Buffer.alloc(0) });
  const big = Buffer.alloc(MSG_HEADER_SIZE);
  big.writeUInt16LE(MSG_MAX_DATA_LEN + 1, 4);
  expectBadMsg(() => frameDataLen(big), "oversize data_len");
  // A foreign fsid is a valid frame: the net layer compares it with its own and closes.
  assert.equal(decodeMsg(encodeMsg({ ...sampleRequest(), fsid: 77n })).fsid, 77n);
});

test("encoder: asserts on what it must never send", () => {
  const m = sampleRequest();
  assert.throws(() => encodeMsg({ ...m, data: Buffer.alloc(MSG_MAX_DATA_LEN + 1) }));
  assert.throws(() => encodeMsg({ ...m, error: 1 }), /error on a request/);
  assert.throws(() => encodeMsg({ ...m, flags: 0x100 }));
  assert.throws(() => encodeMsg({ ...m, seq: 2 ** 53 }));
  assert.throws(() => encodeMsg({ ...m, cmd: 20 as NetCmd }));
  // The maximum payload is accepted.
  const max = { ...m, data: Buffer.alloc(MSG_MAX_DATA_LEN, 0x5a) };
  assert.equal(encodeMsg(max).length, MSG_MAX_FRAME_SIZE);
});

/** Pushes stream through a reader in chunks chosen by sizeOf; returns the frames delivered. */
function reassemble(stream: Buffer, sizeOf: () => number): Msg[] {
  const reader = new FrameReader();
  const out: Msg[] = [];
  for (let off = 0; off < stream.length;) {
    const n = Math.min(sizeOf(), stream.length - off);
    reader.push(stream.subarray(off, off + n), (m) => {
      out.push(m);
      return true;
    });
    assert.ok(reader.buffered < MSG_MAX_FRAME_SIZE, "at most one partial frame held");
    off += n;
  }
  assert.equal(reader.buffered, 0, "stream ends at a frame boundary");
  return out;
}

test("FrameReader: any chunking of the stream yields the same frames", () => {
  const r = new SimRandom(0x5eed_0002);
  const msgs = Array.from({ length: 200 }, () => randomMsg(r));
  const stream = Buffer.concat(msgs.map(encodeMsg));
  assert.deepEqual(reassemble(stream, () => stream.length), msgs, "one chunk");
  const few = msgs.slice(0, 30);
  assert.deepEqual(reassemble(Buffer.concat(few.map(encodeMsg)), () => 1), few, "byte by byte");
  for (let round = 0; round < 20; round++) {
    const maxChunk = 1 + r.int(3 * MSG_MAX_FRAME_SIZE);
    assert.deepEqual(reassemble(stream, () => 1 + r.int(maxChunk)), msgs, `round ${round}`);
  }
});

test("FrameReader: a bad frame is refused after the good ones and poisons the reader", () => {
  const good = [sampleRequest(), { ...sampleRequest(), seq: 8, id: 43 }];
  const bad = encodeMsg({ ...sampleRequest(), seq: 9 });
  bad[bad.length - 1] = bad[bad.length - 1]! ^ 1;
  const stream = Buffer.concat([...good.map(encodeMsg), bad, encodeMsg(sampleRequest())]);
  const reader = new FrameReader();
  const out: Msg[] = [];
  expectBadMsg(() => reader.push(stream, (m) => {
    out.push(m);
    return true;
  }), "corrupt third frame");
  assert.deepEqual(out, good);
  expectBadMsg(() => reader.push(encodeMsg(sampleRequest()), () => true), "poisoned");

  // An oversize length is refused as soon as the header is in, without buffering the rest.
  const huge = encodeMsg(sampleRequest()).subarray(0, MSG_HEADER_SIZE);
  huge.writeUInt16LE(0xffff, 4);
  const r2 = new FrameReader();
  expectBadMsg(() => r2.push(huge, () => true), "oversize frame");

  // deliver returning false stops consumption at once.
  const r3 = new FrameReader();
  let seen = 0;
  r3.push(Buffer.concat(good.map(encodeMsg)), () => {
    seen++;
    return false;
  });
  assert.equal(seen, 1);
});

test("FrameReader: garbage streams never crash, always EBADMSG or waiting", () => {
  const r = new SimRandom(0x5eed_0003);
  for (let i = 0; i < 500; i++) {
    const junk = Buffer.alloc(1 + r.int(2 * MSG_MAX_FRAME_SIZE));
    r.fill(junk);
    const reader = new FrameReader();
    try {
      reader.push(junk, () => true);
      assert.ok(reader.buffered < MSG_MAX_FRAME_SIZE);
    } catch (e) {
      assert.ok(isFsError(e, "EBADMSG"), String(e));
    }
  }
});
