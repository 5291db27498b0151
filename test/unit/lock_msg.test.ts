/*
 * Goal: the lock protocol payload codecs round-trip, their bytes never change by accident
 * (golden fixtures), and the decoders refuse everything an encoder could not have produced.
 *
 * Method: encode fixed samples and compare with hex fixtures in test/fixtures/lock/
 * (regenerate deliberately with UPDATE_FIXTURES=1 when the wire format changes); round-trip
 * random payloads from a fixed seed; flip every byte of every sample and check the decoder
 * either throws EBADMSG or returns a value that re-encodes to exactly the flipped bytes (so
 * no input is silently accepted in a form the encoder would not write); patch chosen fields
 * (pads, modes, range order, sizes, sort order of recover entries) and expect EBADMSG.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  decodeLockGrant, decodeLockInvalidate, decodeLockInvalidateReply, decodeLockRecoverReply,
  decodeLockRecoverRequest, decodeLockRequest, encodeLockGrant, encodeLockInvalidate,
  encodeLockInvalidateReply, encodeLockRecoverReply, encodeLockRecoverRequest,
  encodeLockRequest, isLockMode, LOCK_GRANT_SIZE, LOCK_INVALIDATE_REPLY_SIZE,
  LOCK_INVALIDATE_SIZE, LOCK_RECOVER_ENTRY_SIZE, LOCK_RECOVER_HEADER_SIZE,
  LOCK_RECOVER_MAX_ENTRIES, LOCK_RECOVER_REQUEST_SIZE, LOCK_REQUEST_SIZE, LockMode,
  lockModeName, type LockRecoverEntry,
} from "../../src/core/lock_msg.js";
import {
  inodeGroupRange, inodeIndexRange, type LockRange, renameRange, totlZoneRange,
} from "../../src/core/lock_names.js";
import { InodeIndexType, makeKey, MAX_KEY, MIN_KEY, Zone } from "../../src/core/key.js";
import { MSG_MAX_DATA_LEN } from "../../src/core/msg.js";
import { isFsError } from "../../src/util/errno.js";
import { SimRandom } from "../../src/sim/random.js";
import { goldenIn } from "../helpers/golden.js";

const golden = goldenIn("lock");

function expectBadMsg(fn: () => unknown, what: string): void {
  assert.throws(fn, (e: unknown) => isFsError(e, "EBADMSG"), what);
}

const group = inodeGroupRange(0x12345n);
const recoverSample = {
  entries: [
    { range: inodeIndexRange(InodeIndexType.META_SEQ, 5000n), mode: LockMode.WRITE_ONLY,
      writeSeq: 77 },
    { range: totlZoneRange(), mode: LockMode.READ, writeSeq: 0 },
    { range: group, mode: LockMode.WRITE, writeSeq: 0x1_0000_0001 },
    { range: renameRange(), mode: LockMode.WRITE, writeSeq: 9 },
  ],
  more: true,
};

test("sizes are what the layout comment says", () => {
  assert.equal(LOCK_REQUEST_SIZE, 56);
  assert.equal(LOCK_GRANT_SIZE, 16);
  assert.equal(LOCK_INVALIDATE_SIZE, 64);
  assert.equal(LOCK_INVALIDATE_REPLY_SIZE, 8);
  assert.equal(LOCK_RECOVER_REQUEST_SIZE, 32);
  assert.equal(LOCK_RECOVER_HEADER_SIZE + LOCK_RECOVER_MAX_ENTRIES * LOCK_RECOVER_ENTRY_SIZE,
    4040);
  assert.ok(LOCK_RECOVER_HEADER_SIZE + LOCK_RECOVER_MAX_ENTRIES * LOCK_RECOVER_ENTRY_SIZE <=
    MSG_MAX_DATA_LEN);
  assert.deepEqual([0, 1, 2, 3].map((m) => isLockMode(m)), [true, true, true, true]);
  assert.equal(isLockMode(4), false);
  assert.deepEqual([LockMode.NULL, LockMode.READ, LockMode.WRITE, LockMode.WRITE_ONLY]
    .map(lockModeName), ["null", "read", "write", "write_only"]);
});

test("golden bytes", () => {
  golden("request", encodeLockRequest({ range: group, oldMode: LockMode.READ,
    newMode: LockMode.WRITE }));
  golden("grant", encodeLockGrant({ mode: LockMode.WRITE, writeSeq: 0x0102_0304_0506 }));
  golden("invalidate", encodeLockInvalidate({ range: group, oldMode: LockMode.WRITE,
    newMode: LockMode.READ, grantsSent: 42 }));
  golden("invalidate-reply", encodeLockInvalidateReply(LockMode.READ));
  golden("recover-request", encodeLockRecoverRequest(group.end));
  golden("recover-reply", encodeLockRecoverReply(recoverSample));
});

test("samples round-trip", () => {
  const req = { range: group, oldMode: LockMode.NULL, newMode: LockMode.WRITE_ONLY };
  assert.deepEqual(decodeLockRequest(encodeLockRequest(req)), req);
  for (const g of [{ mode: LockMode.NULL, writeSeq: 0 }, { mode: LockMode.READ, writeSeq: 0 },
    { mode: LockMode.WRITE, writeSeq: 1 }, { mode: LockMode.WRITE_ONLY, writeSeq: 2 ** 53 - 1 }]) {
    assert.deepEqual(decodeLockGrant(encodeLockGrant(g)), g);
  }
  const inv = { range: renameRange(), oldMode: LockMode.WRITE_ONLY, newMode: LockMode.NULL,
    grantsSent: 0 };
  assert.deepEqual(decodeLockInvalidate(encodeLockInvalidate(inv)), inv);
  assert.equal(decodeLockInvalidateReply(encodeLockInvalidateReply(LockMode.NULL)),
    LockMode.NULL);
  assert.deepEqual(decodeLockRecoverRequest(encodeLockRecoverRequest(MIN_KEY)), MIN_KEY);
  assert.deepEqual(decodeLockRecoverReply(encodeLockRecoverReply(recoverSample)), recoverSample);
  const empty = { entries: [], more: false };
  assert.deepEqual(decodeLockRecoverReply(encodeLockRecoverReply(empty)), empty);
});

function randomRange(r: SimRandom): LockRange {
  return r.chance(0.3) ? renameRange() : inodeGroupRange(BigInt(r.int(2 ** 53)));
}

test("random payloads round-trip (seeded)", () => {
  const r = new SimRandom(7);
  for (let i = 0; i < 2000; i++) {
    const a = r.int(4) as LockMode;
    const b = ((a + 1 + r.int(3)) % 4) as LockMode;
    const req = { range: randomRange(r), oldMode: a, newMode: b };
    assert.deepEqual(decodeLockRequest(encodeLockRequest(req)), req);
    const n = r.int(LOCK_RECOVER_MAX_ENTRIES + 1);
    const starts = new Set<bigint>();
    while (starts.size < n) starts.add(BigInt(r.int(2 ** 40)) * 1024n);
    const entries: LockRecoverEntry[] = [...starts].sort((x, y) => (x < y ? -1 : 1)).map((s) =>
      ({ range: inodeGroupRange(s), mode: (1 + r.int(3)) as LockMode, writeSeq: r.int(2 ** 53) }));
    const rep = { entries, more: n > 0 && r.chance(0.5) };
    assert.deepEqual(decodeLockRecoverReply(encodeLockRecoverReply(rep)), rep);
  }
});

test("every single-byte change is refused or re-encodes to the same bytes", () => {
  const samples: [string, Buffer, (b: Buffer) => Buffer][] = [
    ["request", encodeLockRequest({ range: group, oldMode: LockMode.READ,
      newMode: LockMode.WRITE }), (b) => encodeLockRequest(decodeLockRequest(b))],
    ["grant", encodeLockGrant({ mode: LockMode.WRITE, writeSeq: 99 }),
      (b) => encodeLockGrant(decodeLockGrant(b))],
    ["invalidate", encodeLockInvalidate({ range: group, oldMode: LockMode.WRITE,
      newMode: LockMode.READ, grantsSent: 3 }),
    (b) => encodeLockInvalidate(decodeLockInvalidate(b))],
    ["reply", encodeLockInvalidateReply(LockMode.READ),
      (b) => encodeLockInvalidateReply(decodeLockInvalidateReply(b))],
    ["recover request", encodeLockRecoverRequest(group.start),
      (b) => encodeLockRecoverRequest(decodeLockRecoverRequest(b))],
    ["recover reply", encodeLockRecoverReply(recoverSample),
      (b) => encodeLockRecoverReply(decodeLockRecoverReply(b))],
  ];
  for (const [name, good, roundTrip] of samples) {
    for (let i = 0; i < good.length; i++) {
      for (const x of [0x01, 0x80, 0xff]) {
        const bad = Buffer.from(good);
        bad[i]! ^= x;
        let again: Buffer | undefined;
        try {
          again = roundTrip(bad);
        } catch (e) {
          assert.ok(isFsError(e, "EBADMSG"), `${name} byte ${i}: ${String(e)}`);
          continue;
        }
        assert.deepEqual(again, bad, `${name} byte ${i} ^ ${x} accepted in a foreign form`);
      }
    }
  }
});

test("decoders refuse malformed payloads", () => {
  const req = encodeLockRequest({ range: group, oldMode: LockMode.READ, newMode: LockMode.WRITE });
  expectBadMsg(() => decodeLockRequest(req.subarray(1)), "short request");
  expectBadMsg(() => decodeLockRequest(Buffer.concat([req, Buffer.alloc(1)])), "long request");
  const same = Buffer.from(req);
  same[55] = LockMode.READ;
  expectBadMsg(() => decodeLockRequest(same), "request keeps its mode");
  const mode4 = Buffer.from(req);
  mode4[55] = 4;
  expectBadMsg(() => decodeLockRequest(mode4), "mode 4");
  const swapped = Buffer.alloc(LOCK_REQUEST_SIZE);
  group.end.copy(swapped, 0);
  group.start.copy(swapped, 27);
  swapped[55] = 1;
  expectBadMsg(() => decodeLockRequest(swapped), "start after end");
  const zones = Buffer.from(req);
  makeKey(Zone.LOCK, 0n, 0).copy(zones, 27);
  expectBadMsg(() => decodeLockRequest(zones), "range across zones");

  const grant = encodeLockGrant({ mode: LockMode.READ, writeSeq: 0 });
  const seqInRead = Buffer.from(grant);
  seqInRead[8] = 1;
  expectBadMsg(() => decodeLockGrant(seqInRead), "write_seq in a READ grant");
  const noSeq = Buffer.from(grant);
  noSeq[0] = LockMode.WRITE;
  expectBadMsg(() => decodeLockGrant(noSeq), "WRITE grant without write_seq");
  const pad = Buffer.from(grant);
  pad[3] = 1;
  expectBadMsg(() => decodeLockGrant(pad), "grant pad");
  const big = encodeLockGrant({ mode: LockMode.WRITE, writeSeq: 1 });
  big.writeUInt32LE(0x200000, 12);
  expectBadMsg(() => decodeLockGrant(big), "write_seq beyond 2^53");

  const inv = encodeLockInvalidate({ range: group, oldMode: LockMode.WRITE,
    newMode: LockMode.NULL, grantsSent: 1 });
  const toWrite = Buffer.from(inv);
  toWrite[55] = LockMode.WRITE;
  expectBadMsg(() => decodeLockInvalidate(toWrite), "invalidate to WRITE");
  const fromNull = Buffer.from(inv);
  fromNull[54] = LockMode.NULL;
  expectBadMsg(() => decodeLockInvalidate(fromNull), "invalidate a NULL holder");
  const woToRead = Buffer.from(inv);
  woToRead[54] = LockMode.WRITE_ONLY;
  woToRead[55] = LockMode.READ;
  expectBadMsg(() => decodeLockInvalidate(woToRead), "WRITE_ONLY kept as READ");

  const reply = encodeLockInvalidateReply(LockMode.NULL);
  reply[7] = 1;
  expectBadMsg(() => decodeLockInvalidateReply(reply), "reply pad");
  const cursor = encodeLockRecoverRequest(MAX_KEY);
  cursor[31] = 1;
  expectBadMsg(() => decodeLockRecoverRequest(cursor), "recover request pad");
});

test("recover replies: counts, more flag and order are checked", () => {
  const good = encodeLockRecoverReply(recoverSample);
  expectBadMsg(() => decodeLockRecoverReply(good.subarray(0, 7)), "short header");
  expectBadMsg(() => decodeLockRecoverReply(good.subarray(0, good.length - 1)), "short entry");
  const count = Buffer.from(good);
  count.writeUInt16LE(LOCK_RECOVER_MAX_ENTRIES + 1, 0);
  expectBadMsg(() => decodeLockRecoverReply(count), "too many entries");
  const emptyMore = Buffer.alloc(LOCK_RECOVER_HEADER_SIZE);
  emptyMore[2] = 1;
  expectBadMsg(() => decodeLockRecoverReply(emptyMore), "more without entries");
  const more2 = Buffer.from(good);
  more2[2] = 2;
  expectBadMsg(() => decodeLockRecoverReply(more2), "more flag 2");
  const nullMode = Buffer.from(good);
  nullMode[LOCK_RECOVER_HEADER_SIZE + 54] = LockMode.NULL;
  expectBadMsg(() => decodeLockRecoverReply(nullMode), "NULL entry");
  // Swap the first two entries: no longer sorted.
  const e0 = good.subarray(8, 8 + 64);
  const e1 = good.subarray(8 + 64, 8 + 128);
  const unsorted = Buffer.concat([good.subarray(0, 8), e1, e0, good.subarray(8 + 128)]);
  expectBadMsg(() => decodeLockRecoverReply(unsorted), "unsorted entries");
  const dup = Buffer.concat([good.subarray(0, 8), e0, e0, good.subarray(8 + 128)]);
  expectBadMsg(() => decodeLockRecoverReply(dup), "duplicate entries");
  assert.throws(() => encodeLockRecoverReply({ entries: [], more: true }), /more without/);
});
