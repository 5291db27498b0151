/*
 * The network message format: what goes over the TCP connection between a mount's client and
 * the server (upstream format.h scoutfs_net_header, scoutfs_net_greeting; net.c's framing).
 *
 * Who calls it: src/core/net.ts encodes every frame it sends with encodeMsg() and feeds every
 * received chunk to a FrameReader; client.ts and server.ts encode and decode the greeting
 * payload through this file and their own request payloads elsewhere.
 *
 * A frame is a fixed 48-byte little-endian header followed by data_len payload bytes:
 *
 *     0  crc       u32  crc32c of bytes 4..end of frame (header rest + payload)
 *     4  data_len  u16  payload bytes, <= MSG_MAX_DATA_LEN
 *     6  cmd       u8   NetCmd, upstream's enum order
 *     7  flags     u8   MsgFlag bits: RESPONSE, ACK
 *     8  error     u8   WireErr (0 ok), only on responses
 *     9  pad       7 bytes, zero
 *    16  seq       u64  per-connection send sequence (0: not sequenced: greeting, ack)
 *    24  recv_seq  u64  greatest seq received from the peer (cumulative ack)
 *    32  id        u64  request id; the response echoes it
 *    40  fsid      u64  the volume's fsid, so a frame for another volume is caught on arrival
 *
 * Differences from upstream, and why: upstream's header is 32 bytes without a checksum or
 * fsid, trusting TCP and checking the fsid once in the greeting. We carry the fsid on every
 * frame (RELIABILITY.md 6-7: messages for another volume are refused, a mis-wired peer is
 * caught at its first frame, not after a greeting round trip) and a crc32c so that a bug that
 * desynchronises the framing is detected instead of being parsed as garbage. The payload
 * limit is 4096 bytes instead of 1100: our log_trees struct (roots, alloc list heads, bloom
 * ref, several btree roots) and batched lock-recover replies are larger than upstream's, and
 * a page-sized bound still keeps the reassembly buffer and the resend queues small
 * (MSG_MAX_FRAME_SIZE per frame). data_len stays a u16 as upstream.
 *
 * Invariants: every encoded frame is zero-filled before fields are written; the decoder
 * accepts only frames the encoder could have produced (known cmd, known flags, error only on
 * responses, zero pad, u64 fields below 2^53, data_len <= max, valid crc) and throws an
 * FsError EBADMSG otherwise. A FrameReader holds at most one partial frame
 * (MSG_MAX_FRAME_SIZE bytes) and, once it has seen a malformed frame, refuses everything:
 * the byte stream can no longer be trusted, the connection must be closed.
 */
import { assert } from "../util/assert.js";
import { crc32c } from "../util/crc32c.js";
import { type ErrnoCode, FsError } from "../util/errno.js";
import { readU53 as readU53Or, writeU53 } from "../util/u53.js";

export const MSG_HEADER_SIZE = 48;
/** Largest payload of one frame (see the header comment for why 4096). */
export const MSG_MAX_DATA_LEN = 4096;
export const MSG_MAX_FRAME_SIZE = MSG_HEADER_SIZE + MSG_MAX_DATA_LEN;

const OFF_CRC = 0;
const OFF_DATA_LEN = 4;
const OFF_CMD = 6;
const OFF_FLAGS = 7;
const OFF_ERROR = 8;
const OFF_PAD = 9;
const OFF_SEQ = 16;
const OFF_RECV_SEQ = 24;
const OFF_ID = 32;
const OFF_FSID = 40;

assert(MSG_MAX_DATA_LEN <= 0xffff, "data_len is a u16");
assert(OFF_FSID + 8 === MSG_HEADER_SIZE, "header layout");

/** Request commands, in upstream's enum scoutfs_net_cmd order (the wire values). */
export const NetCmd = {
  GREETING: 0,
  ALLOC_INODES: 1,
  GET_LOG_TREES: 2,
  COMMIT_LOG_TREES: 3,
  SYNC_LOG_TREES: 4,
  GET_ROOTS: 5,
  GET_LAST_SEQ: 6,
  LOCK: 7,
  LOCK_RECOVER: 8,
  SRCH_GET_COMPACT: 9,
  SRCH_COMMIT_COMPACT: 10,
  GET_LOG_MERGE: 11,
  COMMIT_LOG_MERGE: 12,
  OPEN_INO_MAP: 13,
  GET_VOLOPT: 14,
  SET_VOLOPT: 15,
  CLEAR_VOLOPT: 16,
  RESIZE_DEVICES: 17,
  STATFS: 18,
  FAREWELL: 19,
} as const;
export type NetCmd = (typeof NetCmd)[keyof typeof NetCmd];
/** Number of commands; every wire cmd is below it. */
export const NET_CMD_NR = 20;

const cmdNames = new Map<number, string>(Object.entries(NetCmd).map(([k, v]) => [v, k]));
assert(cmdNames.size === NET_CMD_NR, "NetCmd values are 0..NET_CMD_NR-1");

export function isNetCmd(n: number): n is NetCmd {
  return Number.isInteger(n) && n >= 0 && n < NET_CMD_NR;
}

export function cmdName(cmd: number): string {
  return cmdNames.get(cmd) ?? `CMD_${cmd}`;
}

/** Header flag bits. */
export const MsgFlag = {
  /** The frame answers the request with the same id (and cmd). */
  RESPONSE: 1,
  /**
   * A bare acknowledgement: not sequenced (seq 0), no payload, id 0, cmd 0; only its recv_seq
   * matters. Sent when a peer has received frames but has nothing to piggyback the ack on.
   */
  ACK: 2,
} as const;
const MSG_FLAGS_KNOWN = MsgFlag.RESPONSE | MsgFlag.ACK;

/*
 * Wire errnos: a small enum independent of any host's errno numbering. Upstream carries
 * ENOENT, ENOMEM, EIO, ENOSPC, EINVAL, ENOLINK (values 1..6, kept here in that order); we add
 * the few more that our server's handlers return. Anything else travels as EIO.
 */
const WIRE_ERRNOS: readonly ErrnoCode[] = [
  "ENOENT", "ENOMEM", "EIO", "ENOSPC", "EINVAL", "ENOLINK",
  "EEXIST", "ESTALE", "EPERM", "ENODATA", "EOPNOTSUPP", "EDQUOT", "EAGAIN", "EOVERFLOW",
  "ECANCELED", "ENOTCONN",
];
/** Wire error value 0: success. */
export const WIRE_OK = 0;
export const WIRE_ERR_NR = WIRE_ERRNOS.length + 1;

/** The wire value carrying an error code (EIO's for codes not in the wire enum). */
export function wireErrorOf(code: ErrnoCode): number {
  const i = WIRE_ERRNOS.indexOf(code);
  return i >= 0 ? i + 1 : WIRE_ERRNOS.indexOf("EIO") + 1;
}

/** The FsError a nonzero wire error value stands for. */
export function fsErrorFromWire(wire: number, what?: string): FsError {
  const code = WIRE_ERRNOS[wire - 1];
  assert(wire > 0 && code !== undefined, `wire error ${wire}`);
  return new FsError(code, what);
}

export interface Msg {
  /** Send sequence, 1.. for requests and responses; 0 for greetings and acks. */
  seq: number;
  /** Greatest seq the sender has received from its peer (cumulative ack). */
  recvSeq: number;
  id: number;
  fsid: bigint;
  cmd: NetCmd;
  /** MsgFlag bits. */
  flags: number;
  /** WireErr value, 0 unless a failed response. */
  error: number;
  data: Buffer;
}

function malformed(what: string): FsError {
  return new FsError("EBADMSG", `malformed network message: ${what}`);
}

function readU53(buf: Buffer, off: number, what: string): number {
  return readU53Or(buf, off, () => malformed(`${what} exceeds 2^53`));
}

/** Checks the relations between fields that every valid frame satisfies. */
function checkFields(m: Msg): string | undefined {
  if (m.data.length > MSG_MAX_DATA_LEN) return `data_len ${m.data.length}`;
  if (!isNetCmd(m.cmd)) return `cmd ${m.cmd}`;
  if (!Number.isInteger(m.flags) || m.flags < 0 || m.flags > 0xff ||
    (m.flags & ~MSG_FLAGS_KNOWN) !== 0) {
    return `flags 0x${m.flags.toString(16)}`;
  }
  if (!Number.isInteger(m.error) || m.error < 0 || m.error >= WIRE_ERR_NR) {
    return `error ${m.error}`;
  }
  if (m.error !== WIRE_OK && (m.flags & MsgFlag.RESPONSE) === 0) return "error on a request";
  if ((m.flags & MsgFlag.ACK) !== 0 &&
    (m.flags !== MsgFlag.ACK || m.seq !== 0 || m.id !== 0 || m.cmd !== 0 || m.data.length !== 0)) {
    return "ack frame with more than recv_seq";
  }
  return undefined;
}

/** Encodes a frame into a new zero-filled buffer of MSG_HEADER_SIZE + data bytes. */
export function encodeMsg(m: Msg): Buffer {
  const bad = checkFields(m);
  assert(bad === undefined, `encodeMsg: ${bad ?? ""}`);
  const buf = Buffer.alloc(MSG_HEADER_SIZE + m.data.length);
  buf.writeUInt16LE(m.data.length, OFF_DATA_LEN);
  buf.writeUInt8(m.cmd, OFF_CMD);
  buf.writeUInt8(m.flags, OFF_FLAGS);
  buf.writeUInt8(m.error, OFF_ERROR);
  writeU53(buf, OFF_SEQ, m.seq, "seq");
  writeU53(buf, OFF_RECV_SEQ, m.recvSeq, "recv_seq");
  writeU53(buf, OFF_ID, m.id, "id");
  buf.writeBigUInt64LE(m.fsid, OFF_FSID);
  m.data.copy(buf, MSG_HEADER_SIZE);
  buf.writeUInt32LE(crc32c(buf.subarray(OFF_CRC + 4)), OFF_CRC);
  return buf;
}

/**
 * The payload length announced by a header (first MSG_HEADER_SIZE bytes of a frame); EBADMSG
 * when it exceeds the limit, so an oversize frame is refused before its bytes are buffered.
 */
export function frameDataLen(header: Buffer): number {
  assert(header.length >= MSG_HEADER_SIZE, "frameDataLen needs a whole header");
  const len = header.readUInt16LE(OFF_DATA_LEN);
  if (len > MSG_MAX_DATA_LEN) throw malformed(`data_len ${len} > ${MSG_MAX_DATA_LEN}`);
  return len;
}

/** Decodes and validates one whole frame; the payload is copied out of `frame`. */
export function decodeMsg(frame: Buffer): Msg {
  if (frame.length < MSG_HEADER_SIZE) throw malformed(`short frame ${frame.length}`);
  const len = frameDataLen(frame);
  if (frame.length !== MSG_HEADER_SIZE + len) throw malformed(`frame length ${frame.length}`);
  if (frame.readUInt32LE(OFF_CRC) !== crc32c(frame.subarray(OFF_CRC + 4))) {
    throw malformed("checksum");
  }
  if (!frame.subarray(OFF_PAD, OFF_SEQ).every((b) => b === 0)) throw malformed("pad");
  const cmd = frame.readUInt8(OFF_CMD);
  if (!isNetCmd(cmd)) throw malformed(`cmd ${cmd}`);
  const m: Msg = {
    seq: readU53(frame, OFF_SEQ, "seq"),
    recvSeq: readU53(frame, OFF_RECV_SEQ, "recv_seq"),
    id: readU53(frame, OFF_ID, "id"),
    fsid: frame.readBigUInt64LE(OFF_FSID),
    cmd,
    flags: frame.readUInt8(OFF_FLAGS),
    error: frame.readUInt8(OFF_ERROR),
    data: Buffer.from(frame.subarray(MSG_HEADER_SIZE)),
  };
  const bad = checkFields(m);
  if (bad !== undefined) throw malformed(bad);
  return m;
}

/** One line describing a frame, for logs. */
export function describeMsg(m: Msg): string {
  const kind = (m.flags & MsgFlag.ACK) !== 0 ? "ack"
    : (m.flags & MsgFlag.RESPONSE) !== 0 ? "response" : "request";
  return `${kind} ${cmdName(m.cmd)} seq ${m.seq} recv_seq ${m.recvSeq} id ${m.id}` +
    ` error ${m.error} data_len ${m.data.length}`;
}

/**
 * Reassembles frames from a byte stream that arrives in arbitrary chunks. Memory is bounded
 * by one frame: bytes are copied into a fixed MSG_MAX_FRAME_SIZE buffer until the frame it
 * holds is complete, then decoded and delivered.
 */
export class FrameReader {
  private readonly buf = Buffer.alloc(MSG_MAX_FRAME_SIZE);
  private have = 0;
  /** Bytes of the frame being assembled: the header until it is known, then the whole frame. */
  private need = MSG_HEADER_SIZE;
  private poisoned: FsError | undefined;

  /** Bytes of a partial frame currently held (0 at a frame boundary). */
  get buffered(): number {
    return this.have;
  }

  /**
   * Consumes a chunk, calling deliver for each complete frame in order. Throws EBADMSG at the
   * first malformed frame (after delivering the frames before it) and on every later call.
   * deliver returns false to stop consuming: the caller is closing the connection and the
   * rest of the chunk is discarded.
   */
  push(chunk: Buffer, deliver: (m: Msg) => boolean): void {
    if (this.poisoned) throw this.poisoned;
    let off = 0;
    while (off < chunk.length) {
      const n = Math.min(this.need - this.have, chunk.length - off);
      chunk.copy(this.buf, this.have, off, off + n);
      this.have += n;
      off += n;
      if (this.have < this.need) break;
      const m = this.advance();
      if (m !== undefined && deliver(m) === false) return;
    }
  }

  /** Called when `need` bytes are held: learns the frame size or decodes the frame. */
  private advance(): Msg | undefined {
    try {
      if (this.need === MSG_HEADER_SIZE) {
        const len = frameDataLen(this.buf);
        if (len > 0) {
          this.need = MSG_HEADER_SIZE + len;
          return undefined;
        }
      }
      const m = decodeMsg(this.buf.subarray(0, this.need));
      this.have = 0;
      this.need = MSG_HEADER_SIZE;
      return m;
    } catch (e) {
      this.poisoned = e instanceof FsError ? e : malformed(String(e));
      throw this.poisoned;
    }
  }
}

// ---------------------------------------------------------------------------------------
// The greeting (upstream struct scoutfs_net_greeting): the first request on every connection.

export const GREETING_SIZE = 40;
export const GreetingFlag = {
  /** The client has begun its farewell (it reconnects only to finish departing). */
  FAREWELL: 1,
  /** The client owns a quorum slot. */
  QUORUM: 2,
} as const;
const GREETING_FLAGS_KNOWN = GreetingFlag.FAREWELL | GreetingFlag.QUORUM;

export interface Greeting {
  fsid: bigint;
  fmtVers: number;
  /** The term of the server the client last greeted successfully, 0 if none. */
  serverTerm: number;
  rid: bigint;
  /** GreetingFlag bits. */
  flags: number;
}

/** Bit tests are 32-bit in JavaScript, so bound the value before testing its bits. */
function greetingFlagsKnown(flags: number): boolean {
  return Number.isInteger(flags) && flags >= 0 && flags <= 0xff &&
    (flags & ~GREETING_FLAGS_KNOWN) === 0;
}

export function encodeGreeting(g: Greeting): Buffer {
  assert(greetingFlagsKnown(g.flags), `greeting flags ${g.flags}`);
  const buf = Buffer.alloc(GREETING_SIZE);
  buf.writeBigUInt64LE(g.fsid, 0);
  writeU53(buf, 8, g.fmtVers, "fmt_vers");
  writeU53(buf, 16, g.serverTerm, "server_term");
  buf.writeBigUInt64LE(g.rid, 24);
  writeU53(buf, 32, g.flags, "greeting flags");
  return buf;
}

export function decodeGreeting(buf: Buffer): Greeting {
  if (buf.length !== GREETING_SIZE) throw malformed(`greeting size ${buf.length}`);
  const flags = readU53(buf, 32, "greeting flags");
  if (!greetingFlagsKnown(flags)) throw malformed(`greeting flags ${flags}`);
  return {
    fsid: buf.readBigUInt64LE(0),
    fmtVers: readU53(buf, 8, "fmt_vers"),
    serverTerm: readU53(buf, 16, "server_term"),
    rid: buf.readBigUInt64LE(24),
    flags,
  };
}
