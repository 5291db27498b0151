/*
 * The open inode map, the server's half (upstream omap.c server side): answers a deleter's
 * OPEN_INO_MAP request with the OR of every other mounted client's bitmap of the group.
 *
 * Who calls it: server.ts registers handle() for client -> server OPEN_INO_MAP requests. It
 * sends server -> client OPEN_INO_MAP requests through the NetServer, which each mount's
 * MountClient answers from its OpenInoMaps (omap.ts).
 *
 * Which clients: every rid in the committed mounted_clients btree except the requester
 * (which checks its own references locally). That list is exactly the mounts that may hold
 * inodes: a client is admitted only after its greeting committed its item, and the item
 * goes only at farewell or once the mount was fenced and reclaimed. A listed client that is
 * not connected (a server still recovering its mounts after a failover, a mount that
 * vanished and is not fenced yet) cannot answer, and neither can one that does not answer
 * within OMAP_GATHER_TIMEOUT_MS: the gather then fails with EAGAIN and the deleter keeps
 * the inode for a later attempt (upstream waits instead; a bounded failure keeps the
 * deleter's lock hold bounded). Never is a missing answer taken as "not held".
 *
 * Bounds: at most OMAP_MAX_GATHERS gathers run at once (more fail with EAGAIN: deleters
 * retry from the orphan scan), each with one request per mounted client (MAX_SERVER_CLIENTS).
 */
import type { Env } from "../env/env.js";
import type { Counters } from "../util/counters.js";
import { FsError, isFsError } from "../util/errno.js";
import {
  decodeOpenInoMap, decodeOpenInoMapArgs, encodeOpenInoMap, encodeOpenInoMapArgs,
  OMAP_GATHER_TIMEOUT_MS, omapOr, OPEN_INO_MAP_BYTES, type OpenInoMapArgs, withTimeout,
} from "./omap.js";

/** Gathers in flight at once; beyond, requests fail with EAGAIN. */
export const OMAP_MAX_GATHERS = 256;

export interface OmapServerHost {
  env: Env;
  counters: Counters;
  /** The rids of the committed mounted_clients items. */
  mountedRids(): Promise<bigint[]>;
  /** The server has a live connection to the rid. */
  connected(rid: bigint): boolean;
  /** A server -> client OPEN_INO_MAP request. */
  request(rid: bigint, payload: Buffer): Promise<Buffer>;
  /** Gather bound (tests shorten it). */
  gatherTimeoutMs?: number;
}

export class OmapServer {
  private inFlight = 0;
  private nextReqId = 0;

  constructor(private readonly host: OmapServerHost) {}

  /** A client's OPEN_INO_MAP request: the OR of the other mounted clients' maps. */
  async handle(payload: Buffer, fromRid: bigint): Promise<Buffer> {
    let args: OpenInoMapArgs;
    try {
      args = decodeOpenInoMapArgs(payload);
    } catch (e) {
      if (isFsError(e)) throw new FsError("EINVAL", e.message);
      throw e;
    }
    if (this.inFlight >= OMAP_MAX_GATHERS) {
      this.host.counters.inc("omap_gather_busy");
      throw new FsError("EAGAIN", `${OMAP_MAX_GATHERS} open map gathers in flight`);
    }
    this.inFlight++;
    try {
      const bits = await this.gather(args.groupNr, fromRid);
      this.host.counters.inc("omap_gathers");
      return encodeOpenInoMap({ args, bits });
    } catch (e) {
      this.host.counters.inc("omap_gather_failed");
      if (isFsError(e, "EAGAIN")) throw e;
      throw new FsError("EAGAIN", `open map of group ${args.groupNr}: ${String(e)}`);
    } finally {
      this.inFlight--;
    }
  }

  private async gather(groupNr: bigint, fromRid: bigint): Promise<Buffer> {
    const rids = (await this.host.mountedRids()).filter((r) => r !== fromRid);
    const missing = rids.find((r) => !this.host.connected(r));
    if (missing !== undefined) {
      throw new FsError("EAGAIN", `mounted client ${missing.toString(16)} is not connected`);
    }
    const reqId = ++this.nextReqId;
    const req = encodeOpenInoMapArgs({ groupNr, reqId });
    const bits = Buffer.alloc(OPEN_INO_MAP_BYTES);
    const ask = async (rid: bigint): Promise<void> => {
      const m = decodeOpenInoMap(await this.host.request(rid, req));
      if (m.args.groupNr !== groupNr || m.args.reqId !== reqId) {
        throw new FsError("EAGAIN", `client ${rid.toString(16)} answered another request`);
      }
      omapOr(bits, m.bits);
    };
    await withTimeout(this.host.env, Promise.all(rids.map(ask)),
      this.host.gatherTimeoutMs ?? OMAP_GATHER_TIMEOUT_MS, `open map of group ${groupNr}`);
    return bits;
  }
}
