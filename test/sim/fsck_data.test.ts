/*
 * Goal: fsck's data check (src/core/fsck.ts with fsck_data.ts) accounts for every data block
 * exactly on a volume whose log trees are not merged: extents only in log trees count,
 * extents deleted or truncated in log trees no longer do (even though fs_root still maps
 * them), and a leaked block or a block both free and mapped is reported.
 *
 * Method: one mount on simulated disks writes files, has them merged into fs_root, then
 * truncates, unlinks and writes more without merging, and unmounts: the volume holds
 * fs_root extents hidden by log tree tombstones, whose blocks are free in allocators, and
 * extents only in log trees. fsck and the exact accounting must be clean, while an
 * fs_root-only count (the old check) sees "free and used" blocks and misses the new
 * extents. Then a leak (an extent taken from data_alloc and dropped) and a double use (an
 * extent mapped only by a log tree freed into data_alloc) are injected on copies of the
 * disks through a server transaction, and fsck must name each.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { allocExtent, freeExtent } from "../../src/core/alloc.js";
import { btreeCollect, ITEM_DELETION } from "../../src/core/btree.js";
import { MountClient } from "../../src/core/client.js";
import { ScoutFs } from "../../src/core/fs/fs.js";
import { ROOT_CRED } from "../../src/core/fs/perm.js";
import { listLogTrees } from "../../src/core/forest.js";
import { DATA_DEV_START_BLKNO, decodeDataExtent } from "../../src/core/format.js";
import { fsckVolume } from "../../src/core/fsck.js";
import {
  dataAccounting, dataFreeExtents, type DataOwner, forestDataExtents, walkOwners,
} from "../../src/core/fsck_data.js";
import { FsType, keyThird, keyType, makeKey, U64_MAX, Zone } from "../../src/core/key.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { Server } from "../../src/core/server.js";
import { Volume } from "../../src/core/volume.js";
import { SimDisk } from "../../src/sim/disk.js";
import { SimWorld } from "../../src/sim/env.js";
import { Counters } from "../../src/util/counters.js";
import { MiB, mkfsParams } from "../helpers/volume.js";

const FSID = 0x1234_5678_9abc_def0n;
const ROOT = 1n;
const BS = 4096;
const root = ROOT_CRED;
const B = (s: string): Buffer => Buffer.from(s);
const FS_END = makeKey(Zone.FS, U64_MAX, 255, U64_MAX, U64_MAX, 255);

/** Builds the volume described in the header; returns its disks. */
async function unmergedVolume(seed: number): Promise<{ meta: SimDisk; data: SimDisk }> {
  const world = new SimWorld({ seed, faults: { delayMinMs: 0.05, delayMaxMs: 0.5 } });
  const meta = new SimDisk("meta", 512 * MiB);
  const data = new SimDisk("data", 64 * MiB);
  await makeVolume(mkfsParams(meta, data, { fsid: FSID }));
  const s = <T>(p: Promise<T>): Promise<T> => world.settle(p);
  const sn = world.addNode("server");
  const { server, addr } = await s((async () => {
    const vol = await Volume.open(sn.device(meta));
    const srv = new Server(sn.env, vol, new Counters(), { fsid: FSID, fmtVers: 2, term: 1,
      clientMetaAvailTarget: 256, clientDataAvailTarget: 4096 });
    return { server: srv, addr: await srv.start({ addr: sn.addr, port: 7000 }) };
  })());
  const node = world.addNode("m0");
  const client = new MountClient(node.env, node.device(meta), new Counters(), {
    fsid: FSID, fmtVers: 2, rid: 0xa0n, quorum: false, totalMetaBlocks: meta.sizeBytes / 65536,
    getServerAddr: () => Promise.resolve(addr), data: node.device(data),
  });
  await s(client.mount());
  // no preallocation: the blocks in use are exactly the ones written
  const fs = new ScoutFs(client, { orphanScanDelayMs: 60_000, dataPreallocBlocks: 1 });
  const inos: bigint[] = [];
  for (let i = 0; i < 4; i++) {
    const f = await s(fs.create(ROOT, B(`f${i}`), 0o644, root));
    // sparse writes: several extents per file
    for (let b = 0; b < 6; b++) await s(fs.write(f.ino, BigInt(b * 3 * BS), Buffer.alloc(BS, i), root));
    inos.push(f.ino);
  }
  // merged into fs_root
  const merges = server.counters.get("log_merge_complete");
  for (let i = 0; i < 200 && server.counters.get("log_merge_complete") === merges; i++) {
    await s(client.commit());
    server.requestMerge();
    await world.runFor(250);
  }
  assert.ok(server.counters.get("log_merge_complete") > merges, "merged");
  // then, unmerged: truncates, an unlink, new data
  await s(fs.setattr(inos[0]!, { size: 0n }, root));
  await s(fs.setattr(inos[1]!, { size: BigInt(4 * BS) }, root));
  await s(fs.unlink(ROOT, B("f2"), root));
  await s(fs.forget(inos[2]!, 1));
  const g = await s(fs.create(ROOT, B("g"), 0o644, root));
  await s(fs.write(g.ino, 0n, Buffer.alloc(5 * BS, 7), root));
  await s(fs.write(inos[3]!, BigInt(40 * BS), Buffer.alloc(BS, 9), root));
  await s(fs.shutdown());
  await s(client.unmount());
  await s(server.stop());
  return { meta, data };
}

/** Data extent items (live, deleted) in the volume's log trees. */
async function logTreeExtents(meta: SimDisk): Promise<{ live: number; deleted: number }> {
  const vol = await Volume.open(meta);
  let live = 0;
  let deleted = 0;
  for (const lt of await listLogTrees(vol.cache, vol.sb.logsRoot)) {
    for (const it of await btreeCollect(vol.cache, lt.itemRoot, makeKey(Zone.FS, 0n, 0), FS_END)) {
      if (keyType(it.key) !== FsType.DATA_EXTENT) continue;
      if ((it.flags & ITEM_DELETION) !== 0) deleted++;
      else live++;
    }
  }
  return { live, deleted };
}

/** What counting fs_root's extents only (the old check) finds: double use and gaps. */
async function fsRootOnly(meta: SimDisk): Promise<{ doubles: number; gaps: number }> {
  const vol = await Volume.open(meta);
  const owners: DataOwner[] = await dataFreeExtents(vol.cache, vol.sb);
  for (const it of await btreeCollect(vol.cache, vol.sb.fsRoot, makeKey(Zone.FS, 0n, 0), FS_END)) {
    if (keyType(it.key) !== FsType.DATA_EXTENT) continue;
    owners.push({ start: decodeDataExtent(it.val).blkno, len: Number(keyThird(it.key)),
      owner: "fs_root extent" });
  }
  let doubles = 0;
  let gaps = 0;
  walkOwners(owners, DATA_DEV_START_BLKNO, vol.sb.totalDataBlocks, {
    double: () => { doubles++; }, gap: () => { gaps++; }, outside: () => { doubles++; },
  });
  return { doubles, gaps };
}

/** Runs fn in a server transaction on the disks (as a buggy server would). */
async function inject(meta: SimDisk, fn: (t: ReturnType<Volume["begin"]>, vol: Volume) =>
  Promise<void>): Promise<void> {
  const vol = await Volume.open(meta);
  const t = vol.begin(vol.sb.seq + 1);
  await fn(t, vol);
  await t.commit();
}

test("fsck counts extents through the forest: unmerged data and truncates are exact",
  async () => {
    const { meta, data } = await unmergedVolume(5);
    const lt = await logTreeExtents(meta);
    assert.ok(lt.live > 0, "extents only in log trees");
    assert.ok(lt.deleted > 0, "fs_root extents deleted in log trees");
    const old = await fsRootOnly(meta);
    assert.ok(old.doubles > 0, "fs_root alone sees truncated blocks as free and used");
    assert.ok(old.gaps > 0, "fs_root alone misses the log trees' extents");
    const f = await fsckVolume(meta, data);
    assert.deepEqual(f.problems, []);
    const acc = await dataAccounting(meta);
    assert.deepEqual(acc.problems, []);
    // f0 truncated to 0 and f2 deleted keep nothing; f1 cut to 4 blocks keeps its blocks 0
    // and 3; f3 has its six and one more; g five
    assert.equal(acc.used, 2 + 7 + 5);
  });

test("fsck reports a leaked data extent and one both free and mapped", async () => {
  const { meta, data } = await unmergedVolume(6);
  const leaky = meta.snapshot();
  let leaked = { start: 0, len: 0 };
  await inject(leaky, async (t) => {
    const e = await allocExtent(t.w, t.sb.dataAlloc, 3);
    assert.ok(e !== null);
    leaked = e; // taken from the allocator, owned by nobody
  });
  const f1 = await fsckVolume(leaky, data);
  assert.deepEqual(f1.problems, [`data blocks ${leaked.start}..${leaked.start + 2} are ` +
    "neither referenced nor free (leaked)"]);
  // an extent mapped only by a log tree, freed again: both free and used
  const twice = meta.snapshot();
  let victim: DataOwner | undefined;
  await inject(twice, async (t, vol) => {
    const fsRootOwned = new Set<number>();
    for (const it of await btreeCollect(vol.cache, vol.sb.fsRoot, makeKey(Zone.FS, 0n, 0),
      FS_END)) {
      if (keyType(it.key) === FsType.DATA_EXTENT) fsRootOwned.add(decodeDataExtent(it.val).blkno);
    }
    const current = await forestDataExtents(vol.cache, vol.sb, (m) => assert.fail(m));
    victim = current.find((o) => !fsRootOwned.has(o.start));
    assert.ok(victim !== undefined, "an extent only in a log tree");
    await freeExtent(t.w, t.sb.dataAlloc, { start: victim.start, len: victim.len });
  });
  const f2 = await fsckVolume(twice, data);
  assert.equal(f2.problems.length, 1, f2.problems.join("; "));
  const p = f2.problems[0]!;
  assert.ok(p.startsWith("data block ") && p.includes(" is both "), p);
  assert.ok(p.includes(`${victim!.start}`) && /inode \d+ extent/.test(p) &&
    p.includes("data_alloc free extent"), p);
});
