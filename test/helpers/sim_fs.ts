/*
 * Test helper: a simulated cluster with a ScoutFs per mount and the control handler the
 * daemon would serve for it (one server node, mount nodes on shared simulated disks).
 * settle() drives the simulation until a promise resolves; settledHandler() wraps a handler
 * so that code outside the simulation (a real socket server) can call it.
 */
import { MountClient } from "../../src/core/client.js";
import { type ControlHandler, controlHandlerFor } from "../../src/core/fs/ioctl.js";
import { ScoutFs } from "../../src/core/fs/fs.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { Server } from "../../src/core/server.js";
import { Volume } from "../../src/core/volume.js";
import { SimDisk } from "../../src/sim/disk.js";
import { SimWorld } from "../../src/sim/env.js";
import { Counters } from "../../src/util/counters.js";
import { MiB, mkfsParams } from "./volume.js";

export const SIM_FSID = 0x1234_5678_9abc_def0n;

export interface FsRig {
  world: SimWorld;
  clients: MountClient[];
  fss: ScoutFs[];
  hs: ControlHandler[];
  s: <T>(p: Promise<T>) => Promise<T>;
}

export async function newFsRig(seed: number, mounts = 1): Promise<FsRig> {
  const world = new SimWorld({ seed, faults: { delayMinMs: 0.05, delayMaxMs: 0.5 } });
  const meta = new SimDisk("meta", 128 * MiB);
  const data = new SimDisk("data", 256 * MiB);
  await makeVolume(mkfsParams(meta, data, { fsid: SIM_FSID }));
  const sn = world.addNode("server");
  const addr = await world.settle((async () => {
    const vol = await Volume.open(sn.device(meta));
    const server = new Server(sn.env, vol, new Counters(), { fsid: SIM_FSID, fmtVers: 2, term: 1,
      clientMetaAvailTarget: 256, clientDataAvailTarget: 4096 });
    return server.start({ addr: sn.addr, port: 7000 });
  })());
  const clients: MountClient[] = [];
  for (let i = 0; i < mounts; i++) {
    const node = world.addNode(`m${i}`);
    clients.push(new MountClient(node.env, node.device(meta), new Counters(), {
      fsid: SIM_FSID, fmtVers: 2, rid: BigInt(0xa0 + i), quorum: false, totalMetaBlocks: 2048,
      getServerAddr: () => Promise.resolve(addr), data: node.device(data),
    }));
  }
  await world.settle(Promise.all(clients.map((c) => c.mount())));
  const fss = clients.map((c) => new ScoutFs(c));
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
