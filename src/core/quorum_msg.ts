/*
 * The quorum datagram: what quorum members send each other over UDP to elect a leader
 * (upstream format.h struct scoutfs_quorum_message).
 *
 * Who calls it: src/core/quorum.ts encodes every datagram it sends with encodeQuorumMsg() and
 * passes every datagram it receives through decodeQuorumMsg(); nothing else speaks it.
 *
 * The message is a fixed 32 bytes, little-endian, upstream's layout:
 *
 *     0  fsid     u64  the volume: a datagram for another volume is dropped
 *     8  version  u64  QUORUM_MSG_VERSION, the message format version
 *    16  term     u64  the sender's raft term (>= 1, below 2^53 like every term we keep)
 *    24  type     u8   QuorumMsgType: REQUEST_VOTE, VOTE, HEARTBEAT, RESIGNATION
 *    25  from     u8   the sender's quorum slot
 *    26  pad      2 bytes, zero
 *    28  crc      u32  crc32c of bytes 0..27
 *
 * Differences from upstream, and why: upstream always sends version 0 (reserved for quorum
 * configuration changes) and seeds its crc with the kernel's raw crc32c(~0); we send a
 * nonzero format version so that a datagram from a daemon speaking another message format
 * is recognised and counted instead of parsed, and use the standard crc32c of
 * src/util/crc32c.ts like every other checksum of this project.
 *
 * Invariants: the encoder zero-fills the buffer and asserts every field is in range; the
 * decoder never throws on network input: it returns either a message the encoder could have
 * produced from a configured slot, or the reason it was refused, which the receiver counts
 * (quorum_recv_invalid_<reason>) before dropping the datagram.
 */
import { assert, assertSafeU } from "../util/assert.js";
import { crc32c } from "../util/crc32c.js";
import { QUORUM_MAX_SLOTS } from "./format.js";

export const QUORUM_MSG_SIZE = 32;
/** The message format version carried in every datagram. */
export const QUORUM_MSG_VERSION = 1;

const OFF_FSID = 0;
const OFF_VERSION = 8;
const OFF_TERM = 16;
const OFF_TYPE = 24;
const OFF_FROM = 25;
const OFF_PAD = 26;
const OFF_CRC = 28;
const TWO32 = 0x1_0000_0000;

assert(OFF_CRC + 4 === QUORUM_MSG_SIZE, "quorum message layout");
assert(QUORUM_MAX_SLOTS <= 31, "slot masks are 32-bit integers");

/** Message types, upstream's values (SCOUTFS_QUORUM_MSG_*). */
export const QuorumMsgType = {
  /** A candidate asks for votes in its term. */
  REQUEST_VOTE: 0,
  /** A follower's vote for the candidate it is sent to. */
  VOTE: 1,
  /** The leader's periodic "still here", delaying elections. */
  HEARTBEAT: 2,
  /** A leader whose server stopped: elect now instead of waiting for the timeout. */
  RESIGNATION: 3,
} as const;
export type QuorumMsgType = (typeof QuorumMsgType)[keyof typeof QuorumMsgType];
/** Number of types; every valid type is below it (upstream's MSG_INVALID). */
export const QUORUM_MSG_TYPE_NR = 4;

export function isQuorumMsgType(n: number): n is QuorumMsgType {
  return Number.isInteger(n) && n >= 0 && n < QUORUM_MSG_TYPE_NR;
}

export interface QuorumMsg {
  fsid: bigint;
  term: number;
  type: QuorumMsgType;
  from: number;
}

/** Why a datagram was refused: each is counted as quorum_recv_invalid_<reason>. */
export type QuorumMsgReject =
  "size" | "crc" | "fsid" | "version" | "type" | "pad" | "slot" | "term";
export const QUORUM_MSG_REJECTS: readonly QuorumMsgReject[] =
  ["size", "crc", "fsid", "version", "type", "pad", "slot", "term"];

export type QuorumMsgDecoded =
  | { readonly ok: true; readonly msg: QuorumMsg }
  | { readonly ok: false; readonly reason: QuorumMsgReject };

/** A bit per configured slot of a quorum config's slot list. */
export function slotMaskOf(slots: readonly unknown[]): number {
  let mask = 0;
  slots.forEach((s, i) => {
    if (s !== null && s !== undefined && i < QUORUM_MAX_SLOTS) mask |= 1 << i;
  });
  return mask;
}

export function encodeQuorumMsg(m: QuorumMsg): Buffer {
  assert(m.term >= 1, `quorum message term ${m.term}`);
  assertSafeU(m.term, "quorum message term");
  assert(isQuorumMsgType(m.type), `quorum message type ${m.type}`);
  assert(Number.isInteger(m.from) && m.from >= 0 && m.from < QUORUM_MAX_SLOTS,
    `quorum message slot ${m.from}`);
  const buf = Buffer.alloc(QUORUM_MSG_SIZE);
  buf.writeBigUInt64LE(BigInt.asUintN(64, m.fsid), OFF_FSID);
  buf.writeBigUInt64LE(BigInt(QUORUM_MSG_VERSION), OFF_VERSION);
  buf.writeUInt32LE(m.term % TWO32, OFF_TERM);
  buf.writeUInt32LE(Math.floor(m.term / TWO32), OFF_TERM + 4);
  buf.writeUInt8(m.type, OFF_TYPE);
  buf.writeUInt8(m.from, OFF_FROM);
  buf.writeUInt32LE(crc32c(buf.subarray(0, OFF_CRC)), OFF_CRC);
  return buf;
}

/**
 * Validates a received datagram. `fsid` is our volume's; `slotMask` has a bit per configured
 * slot (slotMaskOf(qconf.slots)): a message claiming an unconfigured slot is refused.
 */
export function decodeQuorumMsg(buf: Buffer, fsid: bigint, slotMask: number):
  QuorumMsgDecoded {
  const no = (reason: QuorumMsgReject): QuorumMsgDecoded => ({ ok: false, reason });
  if (buf.length !== QUORUM_MSG_SIZE) return no("size");
  if (buf.readUInt32LE(OFF_CRC) !== crc32c(buf.subarray(0, OFF_CRC))) return no("crc");
  if (buf.readBigUInt64LE(OFF_FSID) !== BigInt.asUintN(64, fsid)) return no("fsid");
  if (buf.readBigUInt64LE(OFF_VERSION) !== BigInt(QUORUM_MSG_VERSION)) return no("version");
  const type = buf.readUInt8(OFF_TYPE);
  if (!isQuorumMsgType(type)) return no("type");
  if (buf.readUInt16LE(OFF_PAD) !== 0) return no("pad");
  const from = buf.readUInt8(OFF_FROM);
  if (from >= QUORUM_MAX_SLOTS || (slotMask & (1 << from)) === 0) return no("slot");
  const term = buf.readUInt32LE(OFF_TERM + 4) * TWO32 + buf.readUInt32LE(OFF_TERM);
  if (term < 1 || !Number.isSafeInteger(term)) return no("term");
  return { ok: true, msg: { fsid, term, type, from } };
}

export function quorumMsgTypeName(type: number): string {
  switch (type) {
    case QuorumMsgType.REQUEST_VOTE: return "REQUEST_VOTE";
    case QuorumMsgType.VOTE: return "VOTE";
    case QuorumMsgType.HEARTBEAT: return "HEARTBEAT";
    case QuorumMsgType.RESIGNATION: return "RESIGNATION";
    default: return `TYPE_${type}`;
  }
}
