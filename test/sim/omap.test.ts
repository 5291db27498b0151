/*
 * Goal: an unlinked inode is deleted only when no mount holds it (the open map, omap.ts and
 * omap_server.ts), and the orphan scanner (orphan_scan.ts) deletes the ones left behind:
 *  - mount A holds a file open, mount B unlinks it: its items and data stay, A keeps reading
 *    it, B's scanner leaves it; A's last release deletes it; everything is freed (fsck);
 *  - a mount that does not answer the server's map request (paused) makes every deletion
 *    attempt fail safe (the inode stays); once it answers again the scanners' timers delete
 *    it; orphan_scan_delay_ms changes at run time;
 *  - a mount crashes holding an unlinked file open: nobody deletes it before the server has
 *    fenced and reclaimed that mount; then the scanner does, and fsck is clean.
 * Each scenario fails when the open map is not consulted (checked by hand by making
 * InodeRefs.heldElsewhere answer "free": the first deletes at unlink, the second at A's
 * release with C paused, the third before the reclaim).
 *
 * Method: a SimWorld with a server node and 2-3 mount nodes (MountClient + ScoutFs) on
 * simulated disks with a data device. Orphan items reach the committed fs_root through log
 * merges the test asks the server for; inode items are read lock-less through the forest;
 * at the end the mounts unmount and fsck plus the exact data accounting check the volume.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { btreeLookup, ITEM_DELETION } from "../../src/core/btree.js";
import { MountClient } from "../../src/core/client.js";
import { type Cred, ScoutFs } from "../../src/core/fs/fs.js";
import { ROOT_CRED } from "../../src/core/fs/perm.js";
import { fsckVolume } from "../../src/core/fsck.js";
import { keyInc, makeKey, orphanKey, U64_MAX, Zone } from "../../src/core/key.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { Server } from "../../src/core/server.js";
import { mountedRids } from "../../src/core/server_recovery.js";
import { Volume } from "../../src/core/volume.js";
import type { NetAddr } from "../../src/env/env.js";
import { SimDisk } from "../../src/sim/disk.js";
import { SimWorld, type SimNode } from "../../src/sim/env.js";
import { Counters } from "../../src/util/counters.js";
import { dataAccounting } from "../helpers/data_accounting.js";
import { MiB, mkfsParams } from "../helpers/volume.js";

const FSID = 0x1234_5678_9abc_def0n;
const ROOT = 1n;
const BS = 4096;
const root: Cred = ROOT_CRED;
const B = (s: string): Buffer => Buffer.from(s);
/** Polls of a waiting loop, each after MERGE_POLL_MS of virtual time. */
const MAX_POLLS = 300;
const MERGE_POLL_MS = 250;

interface Mount {
  node: SimNode;
  client: MountClient;
  fs: ScoutFs;
}

interface Rig {
  world: SimWorld;
  meta: SimDisk;
  data: SimDisk;
  server: Server;
  mounts: Mount[];
  s: <T>(p: Promise<T>) => Promise<T>;
}

async function newRig(seed: number, nMounts: number, scanDelayMs: number): Promise<Rig> {
  const world = new SimWorld({ seed, faults: { delayMinMs: 0.05, delayMaxMs: 0.5 } });
  // room for merge requests' allocators next to every mount's (see server_merge.ts)
  const meta = new SimDisk("meta", 512 * MiB);
  const data = new SimDisk("data", 64 * MiB);
  await makeVolume(mkfsParams(meta, data, { fsid: FSID }));
  const sn = world.addNode("server");
  const nodes = new Map<bigint, SimNode>();
  const { server, addr } = await world.settle((async () => {
    const vol = await Volume.open(sn.device(meta));
    const srv = new Server(sn.env, vol, new Counters(), { fsid: FSID, fmtVers: 2, term: 1,
      clientMetaAvailTarget: 256, clientDataAvailTarget: 4096,
      // fencing kills the mount's node, as the sim cluster's fence agent does
      fenceClient: (rid) => {
        const n = nodes.get(rid);
        if (n?.alive === true) world.crash(n.name);
        return Promise.resolve();
      },
      recoveryTimeoutMs: 2000, netTuning: { clientReconnectTimeoutMs: 3000 } });
    return { server: srv, addr: await srv.start({ addr: sn.addr, port: 7000 }) };
  })());
  const mounts: Mount[] = [];
  for (let i = 0; i < nMounts; i++) {
    const m = await mountOn(world, meta, data, addr, i, nodes);
    mounts.push({ ...m, fs: new ScoutFs(m.client, { orphanScanDelayMs: scanDelayMs }) });
  }
  return { world, meta, data, server, mounts, s: (p) => world.settle(p) };
}

async function mountOn(world: SimWorld, meta: SimDisk, data: SimDisk, addr: NetAddr, i: number,
  nodes: Map<bigint, SimNode>): Promise<Omit<Mount, "fs">> {
  const rid = BigInt(0xa0 + i);
  const node = world.addNode(`m${i}`);
  nodes.set(rid, node);
  const client = new MountClient(node.env, node.device(meta), new Counters(), {
    fsid: FSID, fmtVers: 2, rid, quorum: false, totalMetaBlocks: meta.sizeBytes / 65536,
    getServerAddr: () => Promise.resolve(addr), data: node.device(data),
  });
  await world.settle(client.mount());
  return { node, client };
}

function pattern(len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 7 + (i >>> 12)) & 0xff;
  return b;
}

/** The inode's FS-zone items as mount m sees them without a lock (forest + its dirty items). */
async function itemCount(r: Rig, m: Mount, ino: bigint): Promise<number> {
  let n = 0;
  let k = makeKey(Zone.FS, ino, 0);
  const end = makeKey(Zone.FS, ino, 255, U64_MAX, U64_MAX, 255);
  for (;;) {
    const it = await r.s(m.client.next(k, end));
    if (it === null) return n;
    n++;
    k = keyInc(it.key);
  }
}

async function orphanInFsRoot(r: Rig, ino: bigint): Promise<boolean> {
  const vol = r.server.vol;
  const it = await r.s(btreeLookup(vol.cache, vol.sb.fsRoot, orphanKey(ino)));
  return it !== null && (it.flags & ITEM_DELETION) === 0;
}

/** Commits the live mounts and merges until the orphan item is (or is no longer) in fs_root. */
async function untilOrphan(r: Rig, ino: bigint, present: boolean, live: Mount[]): Promise<void> {
  for (let i = 0; i < MAX_POLLS; i++) {
    if (await orphanInFsRoot(r, ino) === present) return;
    await r.s(Promise.all(live.map((m) => m.client.commit())));
    r.server.requestMerge();
    await r.world.runFor(MERGE_POLL_MS);
  }
  const merges = r.server.counters.entries().filter(([k]) => k.startsWith("log_merge"));
  assert.fail(`orphan of ${ino} never ${present ? "reached" : "left"} fs_root: ` +
    JSON.stringify(merges));
}

/** Unmounts the live mounts, stops the server; fsck and the data accounting are clean. */
async function checkClean(r: Rig, live: Mount[], what: string): Promise<void> {
  await r.s(Promise.all(live.map(async (m) => {
    await m.fs.shutdown();
    await m.client.unmount();
  })));
  await r.s(r.server.stop());
  const f = await fsckVolume(r.meta, r.data);
  assert.deepEqual(f.problems, [], `${what}: fsck`);
  const acc = await dataAccounting(r.meta);
  assert.deepEqual(acc.problems, [], `${what}: data accounting`);
  assert.equal(acc.used, 0, `${what}: every data block is free again`);
}

/** A file with `blocks` data blocks made by m, open there (plus its create lookup). */
async function openFile(r: Rig, m: Mount, name: string, blocks: number):
  Promise<{ ino: bigint; data: Buffer }> {
  const f = await r.s(m.fs.create(ROOT, B(name), 0o644, root));
  const data = pattern(blocks * BS);
  assert.equal(await r.s(m.fs.write(f.ino, 0n, data, root)), data.length);
  m.fs.open(f.ino);
  await r.s(m.client.commit());
  return { ino: f.ino, data };
}

async function dropRefs(r: Rig, m: Mount, ino: bigint): Promise<void> {
  await r.s(m.fs.forget(ino, 1));
  await r.s(m.fs.release(ino));
}

test("open on one mount, unlinked on another: kept until released, then deleted", async () => {
  const r = await newRig(1, 2, 60_000);
  const [a, b] = r.mounts as [Mount, Mount];
  const f = await openFile(r, a, "f", 3);
  await r.s(b.fs.unlink(ROOT, B("f"), root));
  assert.equal(b.fs.refs.deleted, 0, "B did not delete what A holds");
  assert.equal(b.client.counters.get("omap_inode_held"), 1);
  assert.ok(await itemCount(r, b, f.ino) > 1, "inode and extent items still there");
  assert.deepEqual(await r.s(a.fs.read(f.ino, 0n, f.data.length)), f.data);
  // once merged, B's scanner finds the orphan, sees A's bit and leaves it
  await untilOrphan(r, f.ino, true, [a, b]);
  const pass = await r.s(b.fs.orphanScan.pass());
  assert.deepEqual([pass.items, pass.attempts, pass.deleted], [1, 0, 0]);
  assert.equal(b.client.counters.get("orphan_scan_omap_set"), 1);
  assert.deepEqual(await r.s(a.fs.read(f.ino, 0n, BS)), f.data.subarray(0, BS));
  // A's last reference goes: A deletes it
  await r.s(a.fs.forget(f.ino, 1));
  assert.ok(await itemCount(r, b, f.ino) > 1, "still open: kept");
  await r.s(a.fs.release(f.ino));
  assert.equal(a.fs.refs.deleted, 1);
  assert.equal(a.client.counters.get("inode_deleted"), 1);
  await r.s(a.client.commit()); // B reads without a lock: A's deletion must be committed
  assert.equal(await itemCount(r, b, f.ino), 0, "every item of the inode is gone");
  // the deletion is merged; the next sweep finds nothing to do
  await untilOrphan(r, f.ino, false, [a, b]);
  const empty = b.client.counters.get("orphan_scan_empty");
  assert.equal((await r.s(b.fs.orphanScan.pass())).sweepEnded, true);
  assert.equal(b.client.counters.get("orphan_scan_empty"), empty + 1);
  await checkClean(r, [a, b], "after A's release");
});

test("a mount that does not answer keeps the inode; the scanner deletes it later", async () => {
  const r = await newRig(2, 3, 200);
  const [a, b, c] = r.mounts as [Mount, Mount, Mount];
  const f = await openFile(r, a, "f", 2);
  await r.s(b.fs.unlink(ROOT, B("f"), root));
  assert.equal(b.client.counters.get("omap_inode_held"), 1);
  // C stops answering: A's release cannot learn whether C holds the inode, so it keeps it
  c.node.pause(8000);
  await dropRefs(r, a, f.ino);
  assert.equal(a.fs.refs.deleted, 0, "no deletion without every mount's answer");
  assert.ok(a.client.counters.get("omap_request_failed") >= 1);
  assert.ok(r.server.counters.get("omap_gather_failed") >= 1);
  assert.ok(await itemCount(r, b, f.ino) > 1, "items kept");
  // C is back: some mount's scanner timer finds the merged orphan and deletes it
  const deleted = (): number => r.mounts.reduce((n, m) => n + m.client.counters.get("inode_deleted"), 0);
  for (let i = 0; i < MAX_POLLS && deleted() === 0; i++) {
    await r.s(Promise.all(r.mounts.map((m) => m.client.commit())));
    r.server.requestMerge();
    await r.world.runFor(MERGE_POLL_MS);
  }
  assert.equal(deleted(), 1, "deleted once, by a scanner");
  assert.ok(r.mounts.some((m) => m.client.counters.get("orphan_scan_attempts") > 0));
  assert.equal(await itemCount(r, b, f.ino), 0);
  // orphan_scan_delay_ms changes at run time: a long delay stops the passes for a while
  for (const m of r.mounts) m.fs.setOrphanScanDelayMs(60_000);
  const passes = b.client.counters.get("orphan_scan");
  await r.world.runFor(20_000);
  assert.equal(b.client.counters.get("orphan_scan"), passes, "rescheduled 48 s or more away");
  for (const m of r.mounts) m.fs.setOrphanScanDelayMs(100);
  await r.world.runFor(2_000);
  assert.ok(b.client.counters.get("orphan_scan") >= passes + 10, "every 80-120 ms again");
  await checkClean(r, r.mounts, "after the scanner's deletion");
});

test("a mount crashes with an unlinked file open: deleted by the scanner after reclaim",
  async () => {
    const r = await newRig(3, 2, 60_000);
    const [a, b] = r.mounts as [Mount, Mount];
    const f = await openFile(r, a, "f", 4);
    // B's unlink takes the group's lock from A (a lock A held would stall B until A is
    // fenced: this is about the open map alone)
    await r.s(b.fs.unlink(ROOT, B("f"), root));
    assert.equal(b.fs.refs.deleted, 0, "A holds it: kept");
    r.world.crash(a.node.name);
    // a new WRITE grant (B sheds its locks first): the open map gathered under B's unlink
    // grant may not be reused, the server must ask A, which is still mounted and cannot
    // answer: B must not delete
    b.client.locks.purgeIdle();
    await r.world.runFor(100);
    assert.equal(await r.s(b.fs.refs.tryDelete(f.ino)), "unknown");
    assert.ok(r.server.counters.get("omap_gather_failed") >= 1);
    assert.ok(await itemCount(r, b, f.ino) > 1);
    // the server fences and reclaims A (its mounted_clients item goes)
    const rids = (): Promise<bigint[]> => mountedRids(r.server.vol.cache,
      r.server.vol.sb.mountedClients);
    for (let i = 0; i < MAX_POLLS && (await r.s(rids())).includes(a.client.opts.rid); i++) {
      await r.world.runFor(MERGE_POLL_MS);
    }
    assert.deepEqual(await r.s(rids()), [b.client.opts.rid], "A was reclaimed");
    assert.ok(await itemCount(r, b, f.ino) > 1, "nothing deleted before the scan");
    await untilOrphan(r, f.ino, true, [b]);
    const pass = await r.s(b.fs.orphanScan.pass());
    assert.deepEqual([pass.items, pass.attempts, pass.deleted], [1, 1, 1]);
    assert.equal(b.client.counters.get("inode_deleted"), 1);
    assert.equal(await itemCount(r, b, f.ino), 0);
    await checkClean(r, [b], "after the crashed mount's orphan was deleted");
  });
