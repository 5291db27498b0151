/*
 * The open inode map, a mount's half (upstream omap.c): which inodes of a 1024-inode group
 * this mount holds, and asking the server whether any other mount holds one.
 *
 * Why: an unlinked inode's items may be deleted only when no mount still uses it (a kernel
 * lookup reference or an open file). Per-inode open locks would cost a round trip per open;
 * instead every mount keeps, per inode group, a bitmap of the inodes it holds (OpenInoMaps,
 * fed by the namespace layer's reference counting, fs/orphan.ts). A deleter that holds the
 * group's WRITE lock and read nlink 0 asks the server (OPEN_INO_MAP with the group); the
 * server asks every other mounted client for its bitmap of that group (the same cmd,
 * server -> client; omap_server.ts), ORs the answers and replies. A clear bit means no other
 * mount holds the inode. The deleter checks its own references locally.
 *
 * Why the answer stays true while the WRITE lock is held: a mount gains a reference only by
 * reading the inode under at least a READ lock of its group, which conflicts with the
 * deleter's WRITE lock; and nlink 0 means no entry leads to the inode any more. So during
 * one WRITE grant bits of nlink-0 inodes can only clear, and a map fetched under the grant
 * (same write_seq) may be reused by later deletions under it (upstream caches it in the lock).
 *
 * Wire structs (little-endian, upstream struct scoutfs_open_ino_map_args / _map):
 *    OpenInoMapArgs (OPEN_INO_MAP_ARGS_SIZE 16)  group_nr u64  req_id u64
 *    OpenInoMap     (OPEN_INO_MAP_SIZE 144)      args[16]  bits[128] (bit i: ino group*1024+i,
 *                                                 little-endian bit order within each byte)
 * client -> server request: args (req_id 0), answered with the OR'd map (args echoed);
 * server -> client request: args (req_id the server's gather id), answered with the
 * client's map (args echoed). group_nr is ino >> 10, so at most U64_MAX >> 10; req_id is a
 * counter below 2^53.
 *
 * Failure is never "free": an error or a timeout (OMAP_REQUEST_TIMEOUT_MS) makes
 * requestOpenInoMap() return null and the deleter leaves the inode for a later attempt.
 */
import type { Env } from "../env/env.js";
import { assert } from "../util/assert.js";
import type { Counters } from "../util/counters.js";
import { FsError } from "../util/errno.js";
import { readU53 as readU53Or, writeU53 } from "../util/u53.js";
import { U64_MAX } from "./key.js";
import { LOCK_INODE_GROUP_NR } from "./lock_names.js";
import { MSG_MAX_DATA_LEN, NetCmd } from "./msg.js";

/** Inodes per open map group: exactly an inode group lock's. */
export const OPEN_INO_MAP_BITS = 1024;
export const OPEN_INO_MAP_BYTES = OPEN_INO_MAP_BITS / 8;
export const OPEN_INO_MAP_ARGS_SIZE = 16;
export const OPEN_INO_MAP_SIZE = OPEN_INO_MAP_ARGS_SIZE + OPEN_INO_MAP_BYTES;
/** The greatest group_nr: that of ino U64_MAX. */
export const OPEN_INO_MAP_GROUP_MAX = U64_MAX >> 10n;
/** How long the server waits for every client's map before failing the gather. */
export const OMAP_GATHER_TIMEOUT_MS = 5_000;
/** How long a deleter waits for the server's answer (beyond the server's own gather bound). */
export const OMAP_REQUEST_TIMEOUT_MS = 2 * OMAP_GATHER_TIMEOUT_MS;

assert(BigInt(OPEN_INO_MAP_BITS) === LOCK_INODE_GROUP_NR, "open map groups are lock groups");
assert(1n << 10n === LOCK_INODE_GROUP_NR, "group_nr is ino >> 10");
assert(OPEN_INO_MAP_SIZE <= MSG_MAX_DATA_LEN, "an open map fits one message");

export interface OpenInoMapArgs {
  groupNr: bigint;
  /** The server's gather id in server -> client requests; 0 from a client. */
  reqId: number;
}

export interface OpenInoMap {
  args: OpenInoMapArgs;
  /** OPEN_INO_MAP_BYTES bytes. */
  bits: Buffer;
}

function malformed(what: string): FsError {
  return new FsError("EBADMSG", `malformed open ino map: ${what}`);
}

function writeArgs(buf: Buffer, a: OpenInoMapArgs): void {
  assert(a.groupNr >= 0n && a.groupNr <= OPEN_INO_MAP_GROUP_MAX, `group_nr ${a.groupNr}`);
  buf.writeBigUInt64LE(a.groupNr, 0);
  writeU53(buf, 8, a.reqId, "req_id");
}

function readArgs(buf: Buffer): OpenInoMapArgs {
  const groupNr = buf.readBigUInt64LE(0);
  if (groupNr > OPEN_INO_MAP_GROUP_MAX) throw malformed(`group_nr ${groupNr}`);
  return { groupNr, reqId: readU53Or(buf, 8, () => malformed("req_id exceeds 2^53")) };
}

export function encodeOpenInoMapArgs(a: OpenInoMapArgs): Buffer {
  const buf = Buffer.alloc(OPEN_INO_MAP_ARGS_SIZE);
  writeArgs(buf, a);
  return buf;
}

export function decodeOpenInoMapArgs(buf: Buffer): OpenInoMapArgs {
  if (buf.length !== OPEN_INO_MAP_ARGS_SIZE) throw malformed(`args size ${buf.length}`);
  return readArgs(buf);
}

export function encodeOpenInoMap(m: OpenInoMap): Buffer {
  assert(m.bits.length === OPEN_INO_MAP_BYTES, `open map bits ${m.bits.length}`);
  const buf = Buffer.alloc(OPEN_INO_MAP_SIZE);
  writeArgs(buf, m.args);
  m.bits.copy(buf, OPEN_INO_MAP_ARGS_SIZE);
  return buf;
}

export function decodeOpenInoMap(buf: Buffer): OpenInoMap {
  if (buf.length !== OPEN_INO_MAP_SIZE) throw malformed(`map size ${buf.length}`);
  return { args: readArgs(buf), bits: Buffer.from(buf.subarray(OPEN_INO_MAP_ARGS_SIZE)) };
}

/** The group of an inode number and its bit in that group's map. */
export function omapGroupOf(ino: bigint): { groupNr: bigint; bit: number } {
  return { groupNr: ino >> 10n, bit: Number(ino & BigInt(OPEN_INO_MAP_BITS - 1)) };
}

export function omapBitSet(bits: Buffer, bit: number): boolean {
  assert(bit >= 0 && bit < OPEN_INO_MAP_BITS, `open map bit ${bit}`);
  return ((bits[bit >> 3]! >> (bit & 7)) & 1) === 1;
}

/** ORs `from` into `into` (both OPEN_INO_MAP_BYTES). */
export function omapOr(into: Buffer, from: Buffer): void {
  assert(into.length === OPEN_INO_MAP_BYTES && from.length === OPEN_INO_MAP_BYTES, "map size");
  for (let i = 0; i < OPEN_INO_MAP_BYTES; i++) into[i] = into[i]! | from[i]!;
}

interface Group {
  /** Holds per bit (several users of one mount may hold an inode). */
  counts: Uint32Array;
  bits: Buffer;
  total: number;
}

/**
 * This mount's held inodes, per group. Bounded by the holders: a group exists only while
 * one of its inodes is held (inc without its dec), so there are never more groups than
 * held inodes.
 */
export class OpenInoMaps {
  private readonly groups = new Map<bigint, Group>();

  inc(ino: bigint): void {
    const { groupNr, bit } = omapGroupOf(ino);
    let g = this.groups.get(groupNr);
    if (g === undefined) {
      g = { counts: new Uint32Array(OPEN_INO_MAP_BITS), bits: Buffer.alloc(OPEN_INO_MAP_BYTES),
        total: 0 };
      this.groups.set(groupNr, g);
    }
    if (g.counts[bit]!++ === 0) {
      g.bits[bit >> 3] = g.bits[bit >> 3]! | (1 << (bit & 7));
      g.total++;
    }
  }

  dec(ino: bigint): void {
    const { groupNr, bit } = omapGroupOf(ino);
    const g = this.groups.get(groupNr);
    assert(g !== undefined && g.counts[bit]! > 0, `open map dec of unheld ino ${ino}`);
    if (--g.counts[bit]! > 0) return;
    g.bits[bit >> 3] = g.bits[bit >> 3]! & ~(1 << (bit & 7));
    if (--g.total === 0) this.groups.delete(groupNr);
  }

  test(ino: bigint): boolean {
    const { groupNr, bit } = omapGroupOf(ino);
    return (this.groups.get(groupNr)?.counts[bit] ?? 0) > 0;
  }

  /** A copy of the group's bitmap (all clear when nothing of it is held). */
  bits(groupNr: bigint): Buffer {
    const g = this.groups.get(groupNr);
    return g === undefined ? Buffer.alloc(OPEN_INO_MAP_BYTES) : Buffer.from(g.bits);
  }

  /** Groups with a held inode (tests, debugging). */
  get groupCount(): number {
    return this.groups.size;
  }
}

/**
 * Answers the server's OPEN_INO_MAP request with this mount's bitmap of the group. Sampling
 * races with references coming and going are fine: the deleter holds the group's WRITE lock,
 * so no reference to an nlink-0 inode can appear, and one that goes is about to try the
 * deletion itself.
 */
export function serveOpenInoMap(maps: OpenInoMaps, payload: Buffer): Buffer {
  const args = decodeOpenInoMapArgs(payload);
  return encodeOpenInoMap({ args, bits: maps.bits(args.groupNr) });
}

/** What requestOpenInoMap needs of a mount. */
export interface OmapRequester {
  readonly env: Env;
  readonly counters: Counters;
  readonly net: { request(cmd: NetCmd, payload: Buffer): Promise<Buffer> };
}

/** Resolves like p, or rejects with EAGAIN after timeoutMs (p's later outcome is ignored). */
export function withTimeout<T>(env: Env, p: Promise<T>, timeoutMs: number, what: string):
  Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = env.timers.after(timeoutMs, () => {
      reject(new FsError("EAGAIN", `${what}: no answer within ${timeoutMs} ms`));
    });
    p.then((v) => {
      env.timers.clear(t);
      resolve(v);
    }, (e: unknown) => {
      env.timers.clear(t);
      reject(e);
    });
  });
}

/**
 * The OR of every other mounted client's bitmap of the group, from the server; null when it
 * could not be had (a client not connected or not answering, the server changing): the
 * caller must then not delete.
 */
export async function requestOpenInoMap(m: OmapRequester, groupNr: bigint,
  timeoutMs = OMAP_REQUEST_TIMEOUT_MS): Promise<Buffer | null> {
  m.counters.inc("omap_requests");
  try {
    const reply = await withTimeout(m.env,
      m.net.request(NetCmd.OPEN_INO_MAP, encodeOpenInoMapArgs({ groupNr, reqId: 0 })),
      timeoutMs, "open ino map");
    const map = decodeOpenInoMap(reply);
    if (map.args.groupNr !== groupNr) throw malformed(`reply for group ${map.args.groupNr}`);
    return map.bits;
  } catch (e) {
    m.counters.inc("omap_request_failed");
    m.env.logger.log("debug", `open ino map of group ${groupNr}: ${String(e)}`);
    return null;
  }
}
