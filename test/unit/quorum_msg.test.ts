/*
 * Goal: the quorum datagram codec round-trips, its bytes never change by accident (golden
 * fixtures), and the decoder refuses every malformed or foreign datagram with the right
 * reason and never throws, whatever the bytes.
 *
 * Method: encode fixed samples of each type and compare with hex fixtures in
 * test/fixtures/quorum/ (regenerate deliberately with UPDATE_FIXTURES=1 when the wire format
 * changes); round-trip random messages from a fixed seed; patch chosen fields (recomputing
 * the crc so the field check itself is exercised); flip every bit of a message; decode
 * random garbage of random lengths.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  decodeQuorumMsg, encodeQuorumMsg, type QuorumMsg, QUORUM_MSG_REJECTS, QUORUM_MSG_SIZE,
  QUORUM_MSG_TYPE_NR, QUORUM_MSG_VERSION, QuorumMsgType, quorumMsgTypeName, slotMaskOf,
} from "../../src/core/quorum_msg.js";
import { crc32c } from "../../src/util/crc32c.js";
import { SimRandom } from "../../src/sim/random.js";
import { goldenIn } from "../helpers/golden.js";

const golden = goldenIn("quorum");

const fsid = 0x0123_4567_89ab_cdefn;
/** Slots 0, 1, 2 and 14 configured. */
const mask = slotMaskOf([{}, {}, {}, null, null, null, null, null, null, null, null, null,
  null, null, {}]);

function reseal(buf: Buffer): Buffer {
  buf.writeUInt32LE(crc32c(buf.subarray(0, 28)), 28);
  return buf;
}

function reason(buf: Buffer): string {
  const d = decodeQuorumMsg(buf, fsid, mask);
  return d.ok ? "ok" : d.reason;
}

test("golden bytes of each message type", () => {
  assert.equal(QUORUM_MSG_SIZE, 32);
  assert.equal(mask, 0b100_0000_0000_0111);
  const samples: [string, QuorumMsg][] = [
    ["request-vote", { fsid, term: 7, type: QuorumMsgType.REQUEST_VOTE, from: 2 }],
    ["vote", { fsid, term: 7, type: QuorumMsgType.VOTE, from: 0 }],
    ["heartbeat", { fsid, term: 0x1_0000_0002, type: QuorumMsgType.HEARTBEAT, from: 14 }],
    ["resignation", { fsid, term: 9, type: QuorumMsgType.RESIGNATION, from: 1 }],
  ];
  for (const [name, m] of samples) {
    const buf = encodeQuorumMsg(m);
    golden(name, buf);
    assert.equal(buf.readBigUInt64LE(0), fsid);
    assert.equal(buf.readBigUInt64LE(8), BigInt(QUORUM_MSG_VERSION));
    assert.deepEqual(decodeQuorumMsg(buf, fsid, mask), { ok: true, msg: m });
  }
  assert.equal(quorumMsgTypeName(QuorumMsgType.RESIGNATION), "RESIGNATION");
  assert.equal(quorumMsgTypeName(9), "TYPE_9");
});

test("random messages round-trip", () => {
  const rng = new SimRandom(11);
  const slots = [0, 1, 2, 14];
  for (let i = 0; i < 2000; i++) {
    const m: QuorumMsg = {
      fsid,
      term: 1 + rng.int(2 ** 53 - 1),
      type: rng.int(QUORUM_MSG_TYPE_NR) as QuorumMsgType,
      from: rng.pick(slots),
    };
    assert.deepEqual(decodeQuorumMsg(encodeQuorumMsg(m), fsid, mask), { ok: true, msg: m });
  }
});

test("each malformed field is refused with its reason", () => {
  const good = (): Buffer => encodeQuorumMsg({ fsid, term: 5, type: QuorumMsgType.VOTE,
    from: 1 });
  assert.equal(reason(good()), "ok");
  assert.equal(reason(good().subarray(0, 31)), "size");
  assert.equal(reason(Buffer.concat([good(), Buffer.alloc(1)])), "size");
  assert.equal(reason(Buffer.alloc(0)), "size");
  const crc = good();
  crc[28] = crc[28]! ^ 1;
  assert.equal(reason(crc), "crc");
  assert.equal(decodeQuorumMsg(good(), fsid + 1n, mask).ok, false);
  assert.deepEqual(decodeQuorumMsg(good(), fsid + 1n, mask), { ok: false, reason: "fsid" });
  const patch = (fn: (b: Buffer) => void): string => {
    const b = good();
    fn(b);
    return reason(reseal(b));
  };
  assert.equal(patch((b) => b.writeBigUInt64LE(0n, 8)), "version");
  assert.equal(patch((b) => b.writeBigUInt64LE(2n, 8)), "version");
  assert.equal(patch((b) => b.writeUInt8(QUORUM_MSG_TYPE_NR, 24)), "type");
  assert.equal(patch((b) => b.writeUInt8(255, 24)), "type");
  assert.equal(patch((b) => b.writeUInt8(1, 27)), "pad");
  assert.equal(patch((b) => b.writeUInt8(3, 25)), "slot"); // unconfigured
  assert.equal(patch((b) => b.writeUInt8(15, 25)), "slot"); // past the last slot
  assert.equal(patch((b) => b.writeUInt8(200, 25)), "slot");
  assert.equal(patch((b) => b.writeUInt8(14, 25)), "ok");
  assert.equal(patch((b) => b.writeBigUInt64LE(0n, 16)), "term");
  assert.equal(patch((b) => b.writeBigUInt64LE(2n ** 53n, 16)), "term");
  assert.equal(patch((b) => b.writeBigUInt64LE(2n ** 64n - 1n, 16)), "term");
  assert.equal(patch((b) => b.writeBigUInt64LE(2n ** 53n - 1n, 16)), "ok");
});

test("every single-bit flip is refused; garbage never throws", () => {
  const buf = encodeQuorumMsg({ fsid, term: 1234, type: QuorumMsgType.HEARTBEAT, from: 2 });
  for (let bit = 0; bit < buf.length * 8; bit++) {
    const b = Buffer.from(buf);
    b[bit >> 3] = b[bit >> 3]! ^ (1 << (bit & 7));
    assert.notEqual(reason(b), "ok", `bit ${bit}`);
  }
  const rng = new SimRandom(12);
  const seen = new Set<string>();
  for (let i = 0; i < 5000; i++) {
    const b = Buffer.alloc(rng.chance(0.8) ? QUORUM_MSG_SIZE : rng.int(80));
    rng.fill(b);
    if (rng.chance(0.5) && b.length === QUORUM_MSG_SIZE) reseal(b); // reach deeper checks
    const r = reason(b);
    assert.ok(r === "ok" || (QUORUM_MSG_REJECTS as readonly string[]).includes(r), r);
    seen.add(r);
  }
  for (const r of ["size", "crc", "fsid"]) assert.ok(seen.has(r), `garbage reached ${r}`);
});

test("the encoder refuses what the decoder would", () => {
  const base: QuorumMsg = { fsid, term: 1, type: QuorumMsgType.VOTE, from: 0 };
  assert.throws(() => encodeQuorumMsg({ ...base, term: 0 }));
  assert.throws(() => encodeQuorumMsg({ ...base, term: 2 ** 53 }));
  assert.throws(() => encodeQuorumMsg({ ...base, type: 4 as QuorumMsgType }));
  assert.throws(() => encodeQuorumMsg({ ...base, from: 15 }));
  assert.throws(() => encodeQuorumMsg({ ...base, from: -1 }));
});
