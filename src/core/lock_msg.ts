/*
 * Lock protocol payloads: what travels in NetCmd.LOCK and NetCmd.LOCK_RECOVER messages
 * (upstream struct scoutfs_net_lock and scoutfs_net_lock_recover).
 *
 * Who calls it: the lock client (src/core/lock.ts) and the lock server
 * (src/core/lock_server.ts); nothing else looks inside these payloads.
 *
 * The messages, all little-endian, keys as their 27 big-endian bytes (src/core/key.ts):
 *
 *  client -> server LOCK request, answered by a grant once the server grants it:
 *    LockRequest  (LOCK_REQUEST_SIZE 56)  start[27] end[27] old_mode u8 new_mode u8
 *    LockGrant    (LOCK_GRANT_SIZE 16)    mode u8 pad[7] write_seq u64
 *  server -> client LOCK request (an invalidation), answered once the client complied:
 *    LockInvalidate (LOCK_INVALIDATE_SIZE 64)
 *                 start[27] end[27] old_mode u8 new_mode u8 grants_sent u64
 *    LockInvalidateReply (LOCK_INVALIDATE_REPLY_SIZE 8)  mode u8 pad[7]
 *  server -> client LOCK_RECOVER request, answered with one batch of held locks:
 *    LockRecoverRequest (LOCK_RECOVER_REQUEST_SIZE 32)  cursor[27] pad[5]
 *    LockRecoverReply  header (8): nr u16 more u8 pad[5], then nr entries of 64:
 *                 start[27] end[27] mode u8 pad[1] write_seq u64
 *
 * Field meanings. old_mode of a request is the mode the client held when it asked (for
 * traces; the server trusts its own record). old_mode of an invalidation is the mode the
 * server records for the client, new_mode the mode to drop to (READ or NULL). grants_sent is
 * the number of LOCK grants the server had sent this client (in this server term) when it
 * sent the invalidation: handlers run concurrently and a grant's response and a later
 * invalidation can be processed out of order, so the client first waits until it has
 * processed that many grants (see lock.ts). write_seq is nonzero exactly in WRITE and
 * WRITE_ONLY grants. A recover reply lists the client's non-NULL locks whose start is >= the
 * cursor, in key order; more says further locks follow (the server asks again from past the
 * last entry's end).
 *
 * Invariants: encoders zero-fill and assert their input; decoders accept exactly what an
 * encoder could produce (sizes, modes, zero pads, start <= end within one zone, u64 fields
 * below 2^53, sorted disjoint recover entries) and throw FsError EBADMSG otherwise.
 */
import { assert } from "../util/assert.js";
import { FsError } from "../util/errno.js";
import { compareKeys, KEY_SIZE } from "./key.js";
import { type LockRange, rangeProblem } from "./lock_names.js";
import { MSG_MAX_DATA_LEN } from "./msg.js";
import { readU53 as readU53Or, writeU53 } from "../util/u53.js";

/** Lock modes, upstream's wire values (SCOUTFS_LOCK_NULL..WRITE_ONLY). */
export const LockMode = { NULL: 0, READ: 1, WRITE: 2, WRITE_ONLY: 3 } as const;
export type LockMode = (typeof LockMode)[keyof typeof LockMode];
/** Number of modes; every wire mode is below it (upstream's INVALID is 4). */
export const LOCK_MODE_NR = 4;

const MODE_NAMES = ["null", "read", "write", "write_only"] as const;

export function isLockMode(n: number): n is LockMode {
  return Number.isInteger(n) && n >= 0 && n < LOCK_MODE_NR;
}

export function lockModeName(m: LockMode): string {
  return MODE_NAMES[m];
}

/** Modes that carry a write_seq: the holder writes items. */
export function isWriteMode(m: LockMode): boolean {
  return m === LockMode.WRITE || m === LockMode.WRITE_ONLY;
}

export const LOCK_REQUEST_SIZE = 56;
export const LOCK_GRANT_SIZE = 16;
export const LOCK_INVALIDATE_SIZE = 64;
export const LOCK_INVALIDATE_REPLY_SIZE = 8;
export const LOCK_RECOVER_REQUEST_SIZE = 32;
export const LOCK_RECOVER_HEADER_SIZE = 8;
export const LOCK_RECOVER_ENTRY_SIZE = 64;
/** Entries per recover reply: as many as fit one message payload. */
export const LOCK_RECOVER_MAX_ENTRIES =
  Math.floor((MSG_MAX_DATA_LEN - LOCK_RECOVER_HEADER_SIZE) / LOCK_RECOVER_ENTRY_SIZE);

const OFF_START = 0;
const OFF_END = KEY_SIZE;
const OFF_OLD = 2 * KEY_SIZE;
const OFF_NEW = OFF_OLD + 1;
const OFF_INV_GRANTS = 56;
const OFF_ENTRY_MODE = 2 * KEY_SIZE;
const OFF_ENTRY_SEQ = 56;

assert(OFF_NEW + 1 === LOCK_REQUEST_SIZE, "request layout");
assert(OFF_INV_GRANTS + 8 === LOCK_INVALIDATE_SIZE, "invalidate layout");
assert(OFF_ENTRY_SEQ + 8 === LOCK_RECOVER_ENTRY_SIZE && OFF_ENTRY_MODE + 2 <= OFF_ENTRY_SEQ,
  "recover entry layout");
assert(LOCK_RECOVER_MAX_ENTRIES >= 1 && LOCK_RECOVER_MAX_ENTRIES <= 0xffff, "recover batch");
assert(LOCK_RECOVER_HEADER_SIZE + LOCK_RECOVER_MAX_ENTRIES * LOCK_RECOVER_ENTRY_SIZE <=
  MSG_MAX_DATA_LEN, "a recover batch fits one message");

export interface LockRequest {
  range: LockRange;
  oldMode: LockMode;
  newMode: LockMode;
}

export interface LockGrant {
  mode: LockMode;
  /** Fresh server seq for WRITE and WRITE_ONLY grants, 0 otherwise. */
  writeSeq: number;
}

export interface LockInvalidate {
  range: LockRange;
  /** The mode the server records for the client. */
  oldMode: LockMode;
  /** READ or NULL. */
  newMode: LockMode;
  /** Grants sent to this client by this server before this invalidation. */
  grantsSent: number;
}

export interface LockRecoverEntry {
  range: LockRange;
  mode: LockMode;
  writeSeq: number;
}

export interface LockRecoverReply {
  entries: LockRecoverEntry[];
  more: boolean;
}

function malformed(what: string): FsError {
  return new FsError("EBADMSG", `malformed lock message: ${what}`);
}

function readU53(buf: Buffer, off: number, what: string): number {
  return readU53Or(buf, off, () => malformed(`${what} exceeds 2^53`));
}

function checkSize(buf: Buffer, size: number, what: string): void {
  if (buf.length !== size) throw malformed(`${what} of ${buf.length} bytes, not ${size}`);
}

function checkZero(buf: Buffer, from: number, to: number, what: string): void {
  if (!buf.subarray(from, to).every((b) => b === 0)) throw malformed(`${what} pad`);
}

function readMode(buf: Buffer, off: number, what: string): LockMode {
  const m = buf.readUInt8(off);
  if (!isLockMode(m)) throw malformed(`${what} ${m}`);
  return m;
}

function writeRange(buf: Buffer, off: number, r: LockRange): void {
  assert(rangeProblem(r) === undefined, `lock range: ${rangeProblem(r) ?? ""}`);
  r.start.copy(buf, off + OFF_START);
  r.end.copy(buf, off + OFF_END);
}

function readRange(buf: Buffer, off: number): LockRange {
  const r = {
    start: Buffer.from(buf.subarray(off + OFF_START, off + OFF_START + KEY_SIZE)),
    end: Buffer.from(buf.subarray(off + OFF_END, off + OFF_END + KEY_SIZE)),
  };
  const bad = rangeProblem(r);
  if (bad !== undefined) throw malformed(`range: ${bad}`);
  return r;
}

// ---------------------------------------------------------------------------------------
// LOCK request (client -> server) and its grant.

export function encodeLockRequest(req: LockRequest): Buffer {
  assert(isLockMode(req.oldMode) && isLockMode(req.newMode), "request modes");
  assert(req.oldMode !== req.newMode, "a request changes the mode");
  const buf = Buffer.alloc(LOCK_REQUEST_SIZE);
  writeRange(buf, 0, req.range);
  buf.writeUInt8(req.oldMode, OFF_OLD);
  buf.writeUInt8(req.newMode, OFF_NEW);
  return buf;
}

export function decodeLockRequest(buf: Buffer): LockRequest {
  checkSize(buf, LOCK_REQUEST_SIZE, "lock request");
  const range = readRange(buf, 0);
  const oldMode = readMode(buf, OFF_OLD, "request old mode");
  const newMode = readMode(buf, OFF_NEW, "request new mode");
  if (oldMode === newMode) throw malformed("request keeps the mode");
  return { range, oldMode, newMode };
}

function grantProblem(g: LockGrant): string | undefined {
  if (!isLockMode(g.mode)) return `grant mode ${g.mode}`;
  if (isWriteMode(g.mode) !== (g.writeSeq > 0)) return `write_seq ${g.writeSeq} in a ` +
    `${lockModeName(g.mode)} grant`;
  return undefined;
}

export function encodeLockGrant(g: LockGrant): Buffer {
  assert(grantProblem(g) === undefined, grantProblem(g));
  const buf = Buffer.alloc(LOCK_GRANT_SIZE);
  buf.writeUInt8(g.mode, 0);
  writeU53(buf, 8, g.writeSeq, "write_seq");
  return buf;
}

export function decodeLockGrant(buf: Buffer): LockGrant {
  checkSize(buf, LOCK_GRANT_SIZE, "lock grant");
  checkZero(buf, 1, 8, "grant");
  const g = { mode: readMode(buf, 0, "grant mode"), writeSeq: readU53(buf, 8, "write_seq") };
  const bad = grantProblem(g);
  if (bad !== undefined) throw malformed(bad);
  return g;
}

// ---------------------------------------------------------------------------------------
// LOCK invalidation (server -> client) and its reply.

function invalidateProblem(inv: LockInvalidate): string | undefined {
  if (!isLockMode(inv.oldMode) || inv.oldMode === LockMode.NULL) {
    return `invalidate old mode ${inv.oldMode}`;
  }
  if (inv.newMode !== LockMode.NULL && inv.newMode !== LockMode.READ) {
    return `invalidate new mode ${inv.newMode}`;
  }
  // Only a WRITE holder is ever asked to keep READ (its cache stays valid once written).
  if (inv.newMode === LockMode.READ && inv.oldMode !== LockMode.WRITE) {
    return `invalidate ${lockModeName(inv.oldMode)} to read`;
  }
  return undefined;
}

export function encodeLockInvalidate(inv: LockInvalidate): Buffer {
  assert(invalidateProblem(inv) === undefined, invalidateProblem(inv));
  const buf = Buffer.alloc(LOCK_INVALIDATE_SIZE);
  writeRange(buf, 0, inv.range);
  buf.writeUInt8(inv.oldMode, OFF_OLD);
  buf.writeUInt8(inv.newMode, OFF_NEW);
  writeU53(buf, OFF_INV_GRANTS, inv.grantsSent, "grants_sent");
  return buf;
}

export function decodeLockInvalidate(buf: Buffer): LockInvalidate {
  checkSize(buf, LOCK_INVALIDATE_SIZE, "lock invalidate");
  const inv: LockInvalidate = {
    range: readRange(buf, 0),
    oldMode: readMode(buf, OFF_OLD, "invalidate old mode"),
    newMode: readMode(buf, OFF_NEW, "invalidate new mode"),
    grantsSent: readU53(buf, OFF_INV_GRANTS, "grants_sent"),
  };
  const bad = invalidateProblem(inv);
  if (bad !== undefined) throw malformed(bad);
  return inv;
}

export function encodeLockInvalidateReply(mode: LockMode): Buffer {
  assert(isLockMode(mode), "reply mode");
  const buf = Buffer.alloc(LOCK_INVALIDATE_REPLY_SIZE);
  buf.writeUInt8(mode, 0);
  return buf;
}

/** The mode the client holds after complying. */
export function decodeLockInvalidateReply(buf: Buffer): LockMode {
  checkSize(buf, LOCK_INVALIDATE_REPLY_SIZE, "invalidate reply");
  checkZero(buf, 1, LOCK_INVALIDATE_REPLY_SIZE, "invalidate reply");
  return readMode(buf, 0, "invalidate reply mode");
}

// ---------------------------------------------------------------------------------------
// LOCK_RECOVER (server -> client) and its batches.

export function encodeLockRecoverRequest(cursor: Buffer): Buffer {
  assert(cursor.length === KEY_SIZE, "recover cursor is a key");
  const buf = Buffer.alloc(LOCK_RECOVER_REQUEST_SIZE);
  cursor.copy(buf, 0);
  return buf;
}

/** The cursor: the client reports its locks whose start is >= it. */
export function decodeLockRecoverRequest(buf: Buffer): Buffer {
  checkSize(buf, LOCK_RECOVER_REQUEST_SIZE, "recover request");
  checkZero(buf, KEY_SIZE, LOCK_RECOVER_REQUEST_SIZE, "recover request");
  return Buffer.from(buf.subarray(0, KEY_SIZE));
}

function entryProblem(e: LockRecoverEntry, prev: LockRecoverEntry | undefined):
  string | undefined {
  if (!isLockMode(e.mode) || e.mode === LockMode.NULL) return `recover mode ${e.mode}`;
  if (!Number.isSafeInteger(e.writeSeq) || e.writeSeq < 0) return `write_seq ${e.writeSeq}`;
  if (prev !== undefined && compareKeys(prev.range.end, e.range.start) >= 0) {
    return "recover entries not sorted and disjoint";
  }
  return undefined;
}

export function encodeLockRecoverReply(r: LockRecoverReply): Buffer {
  const n = r.entries.length;
  assert(n <= LOCK_RECOVER_MAX_ENTRIES, `${n} recover entries`);
  assert(!r.more || n > 0, "more without entries would never end");
  const buf = Buffer.alloc(LOCK_RECOVER_HEADER_SIZE + n * LOCK_RECOVER_ENTRY_SIZE);
  buf.writeUInt16LE(n, 0);
  buf.writeUInt8(r.more ? 1 : 0, 2);
  r.entries.forEach((e, i) => {
    assert(entryProblem(e, r.entries[i - 1]) === undefined, entryProblem(e, r.entries[i - 1]));
    const off = LOCK_RECOVER_HEADER_SIZE + i * LOCK_RECOVER_ENTRY_SIZE;
    writeRange(buf, off, e.range);
    buf.writeUInt8(e.mode, off + OFF_ENTRY_MODE);
    writeU53(buf, off + OFF_ENTRY_SEQ, e.writeSeq, "recover write_seq");
  });
  return buf;
}

export function decodeLockRecoverReply(buf: Buffer): LockRecoverReply {
  if (buf.length < LOCK_RECOVER_HEADER_SIZE) throw malformed(`recover reply ${buf.length}`);
  const n = buf.readUInt16LE(0);
  if (n > LOCK_RECOVER_MAX_ENTRIES) throw malformed(`${n} recover entries`);
  checkSize(buf, LOCK_RECOVER_HEADER_SIZE + n * LOCK_RECOVER_ENTRY_SIZE, "recover reply");
  const moreByte = buf.readUInt8(2);
  if (moreByte > 1 || (moreByte === 1 && n === 0)) throw malformed(`recover more ${moreByte}`);
  checkZero(buf, 3, LOCK_RECOVER_HEADER_SIZE, "recover header");
  const entries: LockRecoverEntry[] = [];
  for (let i = 0; i < n; i++) {
    const off = LOCK_RECOVER_HEADER_SIZE + i * LOCK_RECOVER_ENTRY_SIZE;
    checkZero(buf, off + OFF_ENTRY_MODE + 1, off + OFF_ENTRY_SEQ, "recover entry");
    const e: LockRecoverEntry = {
      range: readRange(buf, off),
      mode: readMode(buf, off + OFF_ENTRY_MODE, "recover mode"),
      writeSeq: readU53(buf, off + OFF_ENTRY_SEQ, "recover write_seq"),
    };
    const bad = entryProblem(e, entries[i - 1]);
    if (bad !== undefined) throw malformed(bad);
    entries.push(e);
  }
  return { entries, more: moreByte === 1 };
}
