/*
 * Goal: the log merge structs (format_log.ts: the log_merge btree's status, range, request and
 * splice items, and the GET_LOG_MERGE / COMMIT_LOG_MERGE payloads) round-trip through their
 * encoders and validating decoders, their bytes never change by accident, and their decoders
 * refuse what no encoder writes.
 *
 * Method: encode a fixed sample of each, compare with the hex fixture in test/fixtures/merge/
 * (regenerate deliberately with UPDATE_FIXTURES=1), decode and compare fields; then damage one
 * field at a time (size, flags, identities, key order, padding, flag/field consistency) and
 * expect FsError EIO.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  decodeLogMergeCompletion, decodeLogMergeRange, decodeLogMergeRequest, decodeLogMergeSplice,
  decodeLogMergeStatus, encodeLogMergeCompletion, encodeLogMergeRange, encodeLogMergeRequest,
  encodeLogMergeSplice, encodeLogMergeStatus, LOG_MERGE_COMP_ERROR, LOG_MERGE_COMP_REMAIN,
  LOG_MERGE_COMPLETION_SIZE, LOG_MERGE_RANGE_SIZE, LOG_MERGE_REQUEST_SIZE,
  LOG_MERGE_REQUEST_WHOLE, LOG_MERGE_SPLICE_REMAIN, LOG_MERGE_SPLICE_SIZE, LOG_MERGE_STATUS_SIZE,
  type LogMergeCompletion, type LogMergeRequest, type LogMergeSplice,
} from "../../src/core/format_log.js";
import { makeKey, MAX_KEY, MIN_KEY, Zone } from "../../src/core/key.js";
import { isFsError } from "../../src/util/errno.js";
import { goldenIn } from "../helpers/golden.js";

const golden = goldenIn("merge");
const k1 = makeKey(Zone.FS, 0x1234n, 8, 0x55n, 7n, 3);
const k2 = makeKey(Zone.FS, 0x9999n, 12, 1n, 2n, 0);

function expectEio(fn: () => unknown, what: string): void {
  assert.throws(fn, (e: unknown) => isFsError(e, "EIO"), what);
}

function damaged(b: Buffer, off: number, value: number): Buffer {
  const d = Buffer.from(b);
  d[off] = value;
  return d;
}

const sampleRequest = (): LogMergeRequest => ({
  rid: 0xfeed_0000_0000_00a1n, seq: 123_456, roundSeq: 120_000, flags: 0,
  metaAvail: { ref: { blkno: 700, seq: 123_456 }, totalNr: 191, firstNr: 191, flags: 0 },
  root: { ref: { blkno: 88, seq: 119_000 }, height: 2 },
  logsRoot: { ref: { blkno: 90, seq: 121_000 }, height: 1 },
  start: k1, end: k2, nrInputs: 3,
});

const sampleCompletion = (): LogMergeCompletion => ({
  rid: 0xfeed_0000_0000_00a1n, seq: 123_456, flags: LOG_MERGE_COMP_REMAIN, keys: 4_000,
  root: { ref: { blkno: 710, seq: 123_456 }, height: 2 },
  metaAvail: { ref: { blkno: 701, seq: 123_456 }, totalNr: 150, firstNr: 150, flags: 0 },
  metaFreed: { ref: { blkno: 702, seq: 123_456 }, totalNr: 40, firstNr: 40, flags: 0 },
  remain: k2,
});

test("log merge status and range: golden bytes, round trip, validation", () => {
  const st = encodeLogMergeStatus({ roundSeq: 0x1_0000_0001 });
  assert.equal(st.length, LOG_MERGE_STATUS_SIZE);
  golden("status", st);
  assert.deepEqual(decodeLogMergeStatus(st), { roundSeq: 0x1_0000_0001 });
  expectEio(() => decodeLogMergeStatus(st.subarray(1)), "short status");
  expectEio(() => decodeLogMergeStatus(Buffer.alloc(LOG_MERGE_STATUS_SIZE)), "round seq 0");
  expectEio(() => decodeLogMergeStatus(damaged(st, 12, 1)), "status padding");
  expectEio(() => decodeLogMergeStatus(damaged(st, 6, 0x20)), "round seq beyond 2^53");

  const rg = encodeLogMergeRange({ start: k1, end: k2 });
  assert.equal(rg.length, LOG_MERGE_RANGE_SIZE);
  golden("range", rg);
  assert.deepEqual(decodeLogMergeRange(rg), { start: k1, end: k2 });
  assert.deepEqual(decodeLogMergeRange(encodeLogMergeRange({ start: MIN_KEY, end: MAX_KEY })),
    { start: MIN_KEY, end: MAX_KEY });
  expectEio(() => decodeLogMergeRange(encodeLogMergeRange({ start: k2, end: k1 })), "start after end");
  expectEio(() => decodeLogMergeRange(damaged(rg, 55, 1)), "range padding");
  expectEio(() => decodeLogMergeRange(Buffer.concat([rg, Buffer.alloc(1)])), "long range");
});

test("log merge request (item and GET_LOG_MERGE payload): golden bytes, round trip, validation", () => {
  const r = sampleRequest();
  const b = encodeLogMergeRequest(r);
  assert.equal(b.length, LOG_MERGE_REQUEST_SIZE);
  golden("request", b);
  assert.deepEqual(decodeLogMergeRequest(b), r);
  const whole = { ...r, flags: LOG_MERGE_REQUEST_WHOLE, root: { ref: { blkno: 0, seq: 0 }, height: 0 } };
  assert.deepEqual(decodeLogMergeRequest(encodeLogMergeRequest(whole)), whole);
  expectEio(() => decodeLogMergeRequest(b.subarray(0, LOG_MERGE_REQUEST_SIZE - 1)), "short");
  expectEio(() => decodeLogMergeRequest(encodeLogMergeRequest({ ...r, flags: 2 })), "unknown flag");
  expectEio(() => decodeLogMergeRequest(encodeLogMergeRequest({ ...r, rid: 0n })), "rid 0");
  expectEio(() => decodeLogMergeRequest(encodeLogMergeRequest({ ...r, seq: 0 })), "seq 0");
  expectEio(() => decodeLogMergeRequest(encodeLogMergeRequest({ ...r, roundSeq: 0 })), "round 0");
  expectEio(() => decodeLogMergeRequest(encodeLogMergeRequest({ ...r, start: k2, end: k1 })), "range order");
  expectEio(() => decodeLogMergeRequest(encodeLogMergeRequest(
    { ...r, root: { ref: { blkno: 88, seq: 1 }, height: 3 } })), "subtree of height 3");
  expectEio(() => decodeLogMergeRequest(damaged(b, 88 + 16, 0)), "logs_root height/ref mismatch");
  expectEio(() => decodeLogMergeRequest(damaged(b, 167, 1)), "padding");
  expectEio(() => decodeLogMergeRequest(damaged(b, 32 + 24, 0xff)), "avail first_nr > total_nr");
});

test("log merge completion (COMMIT_LOG_MERGE payload): golden bytes, round trip, validation", () => {
  const c = sampleCompletion();
  const b = encodeLogMergeCompletion(c);
  assert.equal(b.length, LOG_MERGE_COMPLETION_SIZE);
  golden("completion", b);
  assert.deepEqual(decodeLogMergeCompletion(b), c);
  const done = { ...c, flags: 0, remain: MIN_KEY };
  assert.deepEqual(decodeLogMergeCompletion(encodeLogMergeCompletion(done)), done);
  const err: LogMergeCompletion = { rid: c.rid, seq: c.seq, flags: LOG_MERGE_COMP_ERROR, keys: 0,
    root: { ref: { blkno: 0, seq: 0 }, height: 0 },
    metaAvail: { ref: { blkno: 0, seq: 0 }, totalNr: 0, firstNr: 0, flags: 0 },
    metaFreed: { ref: { blkno: 0, seq: 0 }, totalNr: 0, firstNr: 0, flags: 0 }, remain: MIN_KEY };
  golden("completion-error", encodeLogMergeCompletion(err));
  assert.deepEqual(decodeLogMergeCompletion(encodeLogMergeCompletion(err)), err);
  expectEio(() => decodeLogMergeCompletion(encodeLogMergeCompletion({ ...err, keys: 1 })), "error with work");
  expectEio(() => decodeLogMergeCompletion(encodeLogMergeCompletion({ ...c, flags: 3 })), "error and remain");
  expectEio(() => decodeLogMergeCompletion(encodeLogMergeCompletion({ ...c, flags: 4 })), "unknown flag");
  expectEio(() => decodeLogMergeCompletion(encodeLogMergeCompletion({ ...c, flags: 0 })), "remain key without REMAIN");
  expectEio(() => decodeLogMergeCompletion(encodeLogMergeCompletion({ ...c, seq: 0 })), "seq 0");
  expectEio(() => decodeLogMergeCompletion(damaged(b, 150, 1)), "padding");
  expectEio(() => decodeLogMergeCompletion(b.subarray(1)), "short");
});

test("log merge splice item: golden bytes, round trip, validation", () => {
  const s: LogMergeSplice = { at: k1, flags: LOG_MERGE_SPLICE_REMAIN, start: k1, end: k2 };
  const b = encodeLogMergeSplice(s);
  assert.equal(b.length, LOG_MERGE_SPLICE_SIZE);
  golden("splice", b);
  assert.deepEqual(decodeLogMergeSplice(b), s);
  const bare = { at: k2, flags: 0, start: MIN_KEY, end: MIN_KEY };
  assert.deepEqual(decodeLogMergeSplice(encodeLogMergeSplice(bare)), bare);
  expectEio(() => decodeLogMergeSplice(encodeLogMergeSplice({ ...bare, end: k1 })), "range without REMAIN");
  expectEio(() => decodeLogMergeSplice(encodeLogMergeSplice({ ...s, start: k2, end: k1 })), "range order");
  expectEio(() => decodeLogMergeSplice(damaged(b, 81, 2)), "unknown flag");
  expectEio(() => decodeLogMergeSplice(damaged(b, 87, 1)), "padding");
});
