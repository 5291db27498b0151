/*
 * Test helper: simulated clusters for the tests of the filesystem and its clients. One
 * server node starts a Server on a simulated volume (startSimCluster); mount nodes get
 * MountClients with the options every sim test shares (simMountClient); newFsRig adds a
 * ScoutFs per mount and the control handler the daemon would serve for it. settle() drives
 * the simulation until a promise resolves; settledHandler() wraps a handler so that code
 * outside the simulation (a real socket server) can call it; fails() expects an errno.
 *
 * The shared defaults are small on purpose (a 128 MiB metadata and a 256 MiB data disk,
 * refill targets of 256 metadata and 4096 data blocks, light network delays): every test
 * states what it needs beyond them.
 */
import assert from "node:assert/strict";
import type { NetAddr } from "../../src/env/env.js";
import { MountClient, type MountClientOptions } from "../../src/core/client.js";
import { META_BLOCK_SIZE } from "../../src/core/format.js";
import { type ControlHandler, controlHandlerFor } from "../../src/core/fs/ioctl.js";
import { ScoutFs } from "../../src/core/fs/fs.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { Server, type ServerOptions } from "../../src/core/server.js";
import { Volume } from "../../src/core/volume.js";
import { SimDisk } from "../../src/sim/disk.js";
import { SimWorld, type SimNode } from "../../src/sim/env.js";
import type { NetFaults } from "../../src/sim/net.js";
import { Counters } from "../../src/util/counters.js";
import { type ErrnoCode, isFsError } from "../../src/util/errno.js";
import { MiB, mkfsParams } from "./volume.js";

export const SIM_FSID = 0x1234_5678_9abc_def0n;
export const SIM_SERVER_PORT = 7000;
/** Every message late by 0.05 to 0.5 ms and nothing lost: the network of most sim tests. */
export const SIM_LIGHT_DELAYS: Partial<NetFaults> = { delayMinMs: 0.05, delayMaxMs: 0.5 };

/** A started server on a simulated volume: what every rig adds its mounts to. */
export interface SimCluster {
  world: SimWorld;
  meta: SimDisk;
  data: SimDisk;
  serverNode: SimNode;
  server: Server;
  addr: NetAddr;
}

export interface SimClusterOptions {
  /** The network's faults (default SIM_LIGHT_DELAYS). */
  faults?: Partial<NetFaults>;
  metaBytes?: number;
  dataBytes?: number;
  /** Start on these disks (a remount or a crash image) instead of a fresh volume. */
  disks?: { meta: SimDisk; data: SimDisk };
  /** Server options beyond (or instead of) the shared ones. */
  server?: Partial<ServerOptions>;
  /** Retunes the server before it serves anyone. */
  beforeStart?: (server: Server) => void;
}

/** A world with a server node ("server") serving a fresh volume or the given disks. */
export async function startSimCluster(seed: number, o: SimClusterOptions = {}):
  Promise<SimCluster> {
  const world = new SimWorld({ seed, faults: o.faults ?? SIM_LIGHT_DELAYS });
  const meta = o.disks?.meta ?? new SimDisk("meta", o.metaBytes ?? 128 * MiB);
  const data = o.disks?.data ?? new SimDisk("data", o.dataBytes ?? 256 * MiB);
  if (!o.disks) await makeVolume(mkfsParams(meta, data, { fsid: SIM_FSID }));
  const serverNode = world.addNode("server");
  const started = await world.settle((async () => {
    const vol = await Volume.open(serverNode.device(meta));
    const server = new Server(serverNode.env, vol, new Counters(), { fsid: SIM_FSID,
      fmtVers: 2, term: 1, clientMetaAvailTarget: 256, clientDataAvailTarget: 4096,
      ...o.server });
    o.beforeStart?.(server);
    return { server, addr: await server.start({ addr: serverNode.addr, port: SIM_SERVER_PORT }) };
  })());
  return { world, meta, data, serverNode, ...started };
}

/**
 * A MountClient on `node` for the cluster's volume, not mounted yet: the options every sim
 * mount shares, then `o` (a mount whose files hold data passes `data`).
 */
export function simMountClient(c: SimCluster, node: SimNode,
  o: Pick<MountClientOptions, "rid"> & Partial<MountClientOptions>): MountClient {
  return new MountClient(node.env, node.device(c.meta), new Counters(), {
    fsid: SIM_FSID, fmtVers: 2, quorum: false, totalMetaBlocks: c.meta.sizeBytes / META_BLOCK_SIZE,
    getServerAddr: () => Promise.resolve(c.addr), ...o,
  });
}

/** Settles p and expects it to fail with code (`what` names the step in the failure). */
export async function fails(r: { world: SimWorld }, p: Promise<unknown>, code: ErrnoCode,
  what: string): Promise<void> {
  try {
    await r.world.settle(p);
  } catch (e) {
    if (isFsError(e, code)) return;
    throw e;
  }
  assert.fail(`${what}: expected ${code}`);
}

export interface FsRig {
  world: SimWorld;
  clients: MountClient[];
  fss: ScoutFs[];
  hs: ControlHandler[];
  s: <T>(p: Promise<T>) => Promise<T>;
}

/** A cluster with `mounts` mounted ScoutFs (rids 0xa0...), each with its control handler. */
export async function newFsRig(seed: number, mounts = 1): Promise<FsRig> {
  const c = await startSimCluster(seed);
  const clients = Array.from({ length: mounts }, (_, i) => {
    const node = c.world.addNode(`m${i}`);
    return simMountClient(c, node, { rid: BigInt(0xa0 + i), data: node.device(c.data) });
  });
  const world = c.world;
  await world.settle(Promise.all(clients.map((m) => m.mount())));
  const fss = clients.map((m) => new ScoutFs(m));
  return { world, clients, fss, hs: fss.map((f) => controlHandlerFor(f)),
    s: (p) => world.settle(p) };
}

/** The handler with every call driven to completion by the simulation (one at a time). */
export function settledHandler(rig: FsRig, h: ControlHandler): ControlHandler {
  const s = rig.s;
  return {
    fsid: h.fsid,
    rid: h.rid,
    walkInodes: (a) => s(h.walkInodes(a)),
    inoPath: (a) => s(h.inoPath(a)),
    getReferringEntries: (a) => s(h.getReferringEntries(a)),
    listxattrHidden: (a) => s(h.listxattrHidden(a)),
    statMore: (a) => s(h.statMore(a)),
    statfsMore: () => s(h.statfsMore()),
    allocDetail: () => s(h.allocDetail()),
    getAllocatedInos: (a) => s(h.getAllocatedInos(a)),
    fiemap: (a) => s(h.fiemap(a)),
  };
}
