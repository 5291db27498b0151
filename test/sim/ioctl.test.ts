/*
 * Goal: the ioctl twins of src/core/fs/ioctl.ts answer as upstream's ioctls do: walkInodes
 * bounded by the last stable seq (nothing of an open transaction, everything once committed,
 * an inode moving to its new seq), inoPath through link backrefs with cursors and ENOENT at
 * the end (hard links, renames, unlinked files, ENAMETOOLONG past PATH_MAX), referring
 * entries with the LAST flag and paging, hidden xattrs only, statMore fields, statfsMore,
 * allocDetail's allocators in upstream's order, getAllocatedInos before and after a
 * deletion, fiemap pages of written and fallocated extents, and a second mount seeing the
 * first one's committed changes.
 *
 * Method: a SimWorld with a server node and mount nodes (MountClient + ScoutFs) on simulated
 * disks, as test/sim/fs_ops.test.ts; queries go through controlHandlerFor(), the object the
 * daemon serves.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Cred } from "../../src/core/fs/fs.js";
import {
  AllocOwner, type ControlHandler, controlHandlerFor, FIEMAP_EXTENT_LAST,
  FIEMAP_EXTENT_UNWRITTEN, fiemapPage, INO_PATH_MAX, WalkIndex, type WalkPos,
} from "../../src/core/fs/ioctl.js";
import { ROOT_CRED } from "../../src/core/fs/perm.js";
import { type ErrnoCode, isFsError } from "../../src/util/errno.js";
import { type FsRig, newFsRig, SIM_FSID } from "../helpers/sim_fs.js";

const ROOT = 1n;
const root: Cred = ROOT_CRED;
const B = (s: string): Buffer => Buffer.from(s);
const U64_MAX = 0xffff_ffff_ffff_ffffn;
const ALL: WalkPos = { major: U64_MAX, minor: 0xffff_ffff, ino: U64_MAX };
const ZERO: WalkPos = { major: 0n, minor: 0, ino: 0n };

type Rig = FsRig;
const newRig = newFsRig;
const FSID = SIM_FSID;
const MiB = 1024 * 1024;

async function fails(r: Rig, p: Promise<unknown>, code: ErrnoCode, what: string): Promise<void> {
  try {
    await r.s(p);
  } catch (e) {
    if (isFsError(e, code)) return;
    throw e;
  }
  assert.fail(`${what}: expected ${code}`);
}

/** Every entry of an index walk, paging like the CLI (max per call). */
async function walkAll(r: Rig, h: ControlHandler, index: WalkIndex, max = 128): Promise<WalkPos[]> {
  const out: WalkPos[] = [];
  let first = ZERO;
  for (let i = 0; i < 1000; i++) {
    const got = await r.s(h.walkInodes({ index, first, last: ALL, max }));
    if (got.length === 0) return out;
    assert.ok(got.length <= max);
    out.push(...got);
    const e = got[got.length - 1]!;
    first = { major: e.major, minor: 0, ino: e.ino + 1n };
  }
  assert.fail("walk did not end");
}

test("walkInodes: only committed entries up to the last stable seq, moving with each change",
  async () => {
    const r = await newRig(1);
    const fs = r.fss[0]!;
    const c = r.clients[0]!;
    const h = r.hs[0]!;
    const before = await walkAll(r, h, WalkIndex.META_SEQ);
    const f = await r.s(fs.create(ROOT, B("f"), 0o644, root));
    const d = await r.s(fs.mkdir(ROOT, B("d"), 0o755, root));
    const seq1 = BigInt(c.transSeq);
    // still in the open transaction: invisible
    assert.deepEqual(await walkAll(r, h, WalkIndex.META_SEQ), before);
    await r.s(fs.sync());
    const meta = await walkAll(r, h, WalkIndex.META_SEQ);
    for (const ino of [f.ino, d.ino, ROOT]) {
      assert.deepEqual(meta.filter((e) => e.ino === ino), [{ major: seq1, minor: 0, ino }]);
    }
    // sorted by (major, ino), minor always 0
    for (let i = 1; i < meta.length; i++) {
      const a = meta[i - 1]!;
      const b = meta[i]!;
      assert.ok(a.major < b.major || (a.major === b.major && a.ino < b.ino), "index order");
    }
    // data_seq: regular files only
    const data = await walkAll(r, h, WalkIndex.DATA_SEQ);
    assert.deepEqual(data.filter((e) => e.ino === f.ino), [{ major: seq1, minor: 0, ino: f.ino }]);
    assert.equal(data.filter((e) => e.ino === d.ino).length, 0);
    // a change moves the inode, once committed
    await r.s(fs.setattr(f.ino, { mode: 0o600 }, root));
    const seq2 = BigInt(c.transSeq);
    assert.deepEqual((await walkAll(r, h, WalkIndex.META_SEQ)).filter((e) => e.ino === f.ino),
      [{ major: seq1, minor: 0, ino: f.ino }], "old position until committed");
    await r.s(fs.sync());
    const after = await walkAll(r, h, WalkIndex.META_SEQ, 1);
    assert.deepEqual(after.filter((e) => e.ino === f.ino), [{ major: seq2, minor: 0, ino: f.ino }]);
    // ranges: from seq2 on only f's group of changes; first after last gives nothing
    const from2 = await r.s(h.walkInodes({ index: WalkIndex.META_SEQ,
      first: { major: seq2, minor: 0, ino: 0n }, last: ALL, max: 100 }));
    assert.ok(from2.every((e) => e.major >= seq2) && from2.some((e) => e.ino === f.ino));
    assert.deepEqual(await r.s(h.walkInodes({ index: WalkIndex.META_SEQ, first: ALL,
      last: ZERO, max: 10 })), []);
    await fails(r, h.walkInodes({ index: WalkIndex.META_SEQ, first: ZERO, last: ALL, max: 0 }),
      "EINVAL", "max 0");
    await fails(r, h.walkInodes({ index: 7 as WalkIndex, first: ZERO, last: ALL, max: 1 }),
      "EINVAL", "unknown index");
  });

test("walkInodes: the stable seq waits for every mount's open transaction", async () => {
  const r = await newRig(2, 2);
  const f = await r.s(r.fss[0]!.create(ROOT, B("x"), 0o644, root));
  const seen = async (m: number): Promise<boolean> =>
    (await walkAll(r, r.hs[m]!, WalkIndex.META_SEQ)).some((e) => e.ino === f.ino);
  assert.ok(!(await seen(1)));
  await r.s(r.fss[0]!.sync());
  // mount 1's transaction opened before that commit and could still commit below its seq
  // (upstream's get_stable_trans_seq): invisible on both mounts until mount 1 commits too
  assert.ok(!(await seen(0)) && !(await seen(1)));
  await r.s(r.fss[1]!.sync());
  assert.ok(await seen(0) && await seen(1));
});

/** Every path ino-path prints, iterating the cursor as the CLI does. */
async function allPaths(r: Rig, h: ControlHandler, ino: bigint): Promise<string[]> {
  const out: string[] = [];
  let cur = { dirIno: 0n, dirPos: 0n };
  for (let i = 0; i < 100; i++) {
    try {
      const p = await r.s(h.inoPath({ ino, ...cur }));
      out.push(p.path.toString());
      cur = { dirIno: p.dirIno, dirPos: p.dirPos + 1n };
    } catch (e) {
      if (isFsError(e, "ENOENT")) return out;
      throw e;
    }
  }
  assert.fail("too many paths");
}

test("inoPath and getReferringEntries: hard links, renames, unlinks, cursors, LAST",
  async () => {
    const r = await newRig(3);
    const fs = r.fss[0]!;
    const h = r.hs[0]!;
    const a = await r.s(fs.mkdir(ROOT, B("a"), 0o755, root));
    const b = await r.s(fs.mkdir(a.ino, B("b"), 0o755, root));
    const f = await r.s(fs.create(b.ino, B("file"), 0o644, root));
    await r.s(fs.link(f.ino, ROOT, B("top"), root));
    await r.s(fs.link(f.ino, b.ino, B("again"), root));
    // in backref order: (dir ino, position)
    assert.deepEqual(await allPaths(r, h, f.ino), ["top", "a/b/file", "a/b/again"]);
    assert.deepEqual(await allPaths(r, h, b.ino), ["a/b"]);
    assert.deepEqual(await allPaths(r, h, ROOT), [], "the root has no path");
    // renames show at once (the query reads under the inode locks)
    await r.s(fs.rename(ROOT, B("a"), ROOT, B("z"), 0, root));
    assert.deepEqual([...await allPaths(r, h, f.ino)].sort(), ["top", "z/b/again", "z/b/file"]);
    // referring entries: all three, in backref order, the final one LAST
    const ents = await r.s(h.getReferringEntries({ ino: f.ino, dirIno: 0n, dirPos: 0n,
      max: 1024 }));
    assert.equal(ents.length, 3);
    assert.deepEqual(ents.map((e) => e.last), [false, false, true]);
    assert.deepEqual(ents.map((e) => e.name.toString()).sort(), ["again", "file", "top"]);
    assert.ok(ents.every((e) => e.ino === f.ino && e.type === 8));
    const top = ents.find((e) => e.name.toString() === "top")!;
    assert.equal(top.dirIno, ROOT);
    // paging: max 2 leaves the LAST flag off; continuing past the second finds the third
    const page = await r.s(h.getReferringEntries({ ino: f.ino, dirIno: 0n, dirPos: 0n, max: 2 }));
    assert.deepEqual(page.map((e) => e.last), [false, false]);
    const rest = await r.s(h.getReferringEntries({ ino: f.ino, dirIno: page[1]!.dirIno,
      dirPos: page[1]!.dirPos + 1n, max: 2 }));
    assert.deepEqual(rest.map((e) => [e.name.toString(), e.last]),
      [[ents[2]!.name.toString(), true]]);
    // unlinked: no entries, no path
    for (const [dir, n] of [[ROOT, "top"], [b.ino, "file"], [b.ino, "again"]] as const) {
      await r.s(fs.unlink(dir, B(n), root));
    }
    assert.deepEqual(await r.s(h.getReferringEntries({ ino: f.ino, dirIno: 0n, dirPos: 0n,
      max: 10 })), []);
    await fails(r, h.inoPath({ ino: f.ino, dirIno: 0n, dirPos: 0n }), "ENOENT", "unlinked");
    await fails(r, h.getReferringEntries({ ino: f.ino, dirIno: 0n, dirPos: 0n, max: 0 }),
      "EINVAL", "max 0");
  });

test("inoPath: ENAMETOOLONG once the path and its NUL pass PATH_MAX", async () => {
  const r = await newRig(4);
  const fs = r.fss[0]!;
  const h = r.hs[0]!;
  // 15 components of 255 bytes + 15 separators/NUL = 3840 bytes: fits; 16 do not
  let dir = ROOT;
  const name = Buffer.alloc(255, 0x61);
  for (let i = 0; i < 16; i++) dir = (await r.s(fs.mkdir(dir, name, 0o755, root))).ino;
  const deep = await r.s(fs.create(dir, B("f"), 0o644, root));
  await fails(r, h.inoPath({ ino: deep.ino, dirIno: 0n, dirPos: 0n }), "ENAMETOOLONG", "deep");
  let ok = ROOT;
  for (let i = 0; i < 15; i++) ok = (await r.s(fs.lookup(ok, name, root))).ino;
  const p = await r.s(h.inoPath({ ino: ok, dirIno: 0n, dirPos: 0n }));
  assert.equal(p.path.length, 15 * 256 - 1);
  assert.ok(p.path.length + 1 <= INO_PATH_MAX);
});

test("listxattrHidden, statMore, getAllocatedInos", async () => {
  const r = await newRig(5);
  const fs = r.fss[0]!;
  const h = r.hs[0]!;
  const f = await r.s(fs.create(ROOT, B("f"), 0o644, root));
  for (const n of ["user.visible", "scoutfs.hide.one", "scoutfs.hide.srch.two", "scoutfs.srch.x",
    "trusted.t"]) {
    await r.s(fs.setxattr(f.ino, B(n), B("v"), 0, root));
  }
  const hid = await r.s(h.listxattrHidden({ ino: f.ino, hashPos: 0n, idPos: 0n }));
  assert.ok(hid.done);
  assert.deepEqual(hid.names.map((n) => n.toString()).sort(),
    ["scoutfs.hide.one", "scoutfs.hide.srch.two"]);
  const again = await r.s(h.listxattrHidden({ ino: f.ino, hashPos: hid.hashPos,
    idPos: hid.idPos }));
  assert.deepEqual(again.names, [], "nothing after the end cursor");
  await fails(r, h.listxattrHidden({ ino: 999_999n, hashPos: 0n, idPos: 0n }), "ENOENT",
    "no such inode");
  // statMore mirrors the inode
  await r.s(fs.setattr(f.ino, { size: 5n }, root));
  const a = await r.s(fs.getattr(f.ino));
  const sm = await r.s(h.statMore({ ino: f.ino }));
  assert.deepEqual(sm, { metaSeq: a.metaSeq, dataSeq: a.dataSeq, dataVersion: a.dataVersion,
    onlineBlocks: a.onlineBlocks, offlineBlocks: a.offlineBlocks, crtimeSec: a.crtime.sec,
    crtimeNsec: a.crtime.nsec });
  assert.equal(sm.dataVersion, 1n);
  await fails(r, h.statMore({ ino: 999_999n }), "ENOENT", "statMore of nothing");
  // allocated inodes: f and a second file, from f's number on; single = max 1
  const g = await r.s(fs.create(ROOT, B("g"), 0o644, root));
  const got = await r.s(h.getAllocatedInos({ startIno: f.ino, max: 1024 }));
  assert.ok(got.includes(f.ino) && got.includes(g.ino) && !got.includes(ROOT));
  assert.deepEqual(await r.s(h.getAllocatedInos({ startIno: f.ino, max: 1 })), [f.ino]);
  // after deletion (unlink + the kernel's forget) f's items are gone
  await r.s(fs.unlink(ROOT, B("f"), root));
  await r.s(fs.forget(f.ino, 1));
  const now = await r.s(h.getAllocatedInos({ startIno: f.ino, max: 1024 }));
  assert.ok(!now.includes(f.ino) && now.includes(g.ino));
  assert.ok((await r.s(h.getAllocatedInos({ startIno: 0n, max: 1024 }))).includes(ROOT));
  await fails(r, h.getAllocatedInos({ startIno: 0n, max: 1025 }), "EINVAL", "max");
});

test("statfsMore and allocDetail", async () => {
  const r = await newRig(6, 2);
  const h = r.hs[0]!;
  const sf = await r.s(h.statfsMore());
  assert.equal(sf.fsid, FSID);
  assert.equal(sf.rid, 0xa0n);
  assert.equal(sf.totalMetaBlocks, BigInt(128 * MiB / 65536));
  assert.equal(sf.totalDataBlocks, BigInt(256 * MiB / 4096));
  assert.equal(sf.reservedMetaBlocks, 0n);
  await r.s(r.fss[0]!.create(ROOT, B("f"), 0o644, root));
  await r.s(r.fss[0]!.sync());
  const sf2 = await r.s(h.statfsMore());
  assert.ok(sf2.committedSeq > sf.committedSeq, "committed_seq advances with commits");
  const ad = await r.s(h.allocDetail());
  // the server's seven, then four per log_trees item (one per mount here)
  assert.deepEqual(ad.slice(0, 7).map((e) => [e.type, e.id, e.meta, e.avail]), [
    [AllocOwner.SERVER, 0n, true, true], [AllocOwner.SERVER, 0n, true, true],
    [AllocOwner.SERVER, 0n, false, true], [AllocOwner.SERVER, 1n, true, true],
    [AllocOwner.SERVER, 1n, true, true], [AllocOwner.SERVER, 1n, true, false],
    [AllocOwner.SERVER, 1n, true, false]]);
  const mounts = ad.slice(7).filter((e) => e.type === AllocOwner.MOUNT);
  assert.deepEqual([...new Set(mounts.map((e) => e.id))].sort(), [0xa0n, 0xa1n]);
  assert.ok(mounts.some((e) => !e.meta && e.avail && e.blocks > 0n), "mounts hold data blocks");
  // free data across all allocators never exceeds the device
  const dataFree = ad.filter((e) => !e.meta).reduce((n, e) => n + e.blocks, 0n);
  assert.ok(dataFree > 0n && dataFree <= sf.totalDataBlocks);
  // the other mount reads the same
  const ad1 = await r.s(r.hs[1]!.allocDetail());
  assert.equal(ad1.length, ad.length);
});

test("fiemap: pages of the data layer's extent map, LAST on the final extent", async () => {
  const r = await newRig(7);
  const fs = r.fss[0]!;
  const h = r.hs[0]!;
  const f = await r.s(fs.create(ROOT, B("f"), 0o644, root));
  assert.deepEqual(await r.s(h.fiemap({ ino: f.ino, start: 0n, max: 10 })), [], "empty file");
  await r.s(fs.write(f.ino, 0n, Buffer.alloc(8192, 1), root));
  await r.s(fs.fallocate(f.ino, 0, 1n << 20n, 4096n, root));
  const all = await r.s(h.fiemap({ ino: f.ino, start: 0n, max: 10 }));
  assert.deepEqual(all, await r.s(fs.fiemap(f.ino)), "the data layer's map, unchanged");
  assert.ok(all.length >= 2);
  assert.equal(all[0]!.logical, 0n);
  const last = all[all.length - 1]!;
  assert.deepEqual([last.logical, last.length, last.flags],
    [1n << 20n, 4096n, FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST]);
  assert.ok(all.slice(0, -1).every((e) => (e.flags & FIEMAP_EXTENT_LAST) === 0));
  // paging: max 1 from 0, then from the end of the first extent
  const p1 = await r.s(h.fiemap({ ino: f.ino, start: 0n, max: 1 }));
  assert.deepEqual(p1, [all[0]]);
  const p2 = await r.s(h.fiemap({ ino: f.ino, start: all[0]!.logical + all[0]!.length, max: 5 }));
  assert.deepEqual(p2, all.slice(1));
  assert.deepEqual(await fiemapPage(() => Promise.resolve(all), { ino: f.ino, start: 1n << 40n,
    max: 5 }), []);
  await fails(r, h.fiemap({ ino: f.ino, start: 0n, max: 0 }), "EINVAL", "max 0");
  // a mapping given by the daemon replaces the ScoutFs's own
  const fixed = controlHandlerFor(fs, { fiemap: () => Promise.resolve([]) });
  assert.deepEqual(await r.s(fixed.fiemap({ ino: f.ino, start: 0n, max: 5 })), []);
});
