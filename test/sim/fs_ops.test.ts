/*
 * Goal: the POSIX namespace operations of src/core/fs behave as Linux and upstream scoutfs
 * do, over items, under cluster locks, inside transactions: entries, readdir positions and
 * d_off, directory sizes, link counts, rename (replace, NOREPLACE, EXCHANGE, ancestry),
 * xattr parts and flags, permissions of another user, symlink and name limits, orphans and
 * deletion after the last reference, meta_seq/data_seq index items, statfs; a random model
 * test; and two mounts seeing each other's changes once the locks move.
 *
 * Method: a SimWorld with one server node and one or two mount nodes (MountClient + ScoutFs)
 * on simulated disks, everything driven with world.settle(); the model test runs random
 * operation sequences (fast-check) against ScoutFs and an in-memory tree and compares the
 * errno of every step and the whole tree at the end.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import type { MountClient } from "../../src/core/client.js";
import {
  FsType, InodeIndexType, keyFields, makeKey, orphanKey, U64_MAX, Zone,
} from "../../src/core/key.js";
import { type Cred, type InodeAttr, ScoutFs } from "../../src/core/fs/fs.js";
import { RENAME_EXCHANGE, RENAME_NOREPLACE } from "../../src/core/fs/rename.js";
import { XATTR_CREATE, XATTR_REPLACE } from "../../src/core/fs/xattr.js";
import { ROOT_CRED } from "../../src/core/fs/perm.js";
import { S_IFCHR, S_IFMT, S_ISGID, S_ISVTX } from "../../src/core/fs/format.js";
import type { SimWorld } from "../../src/sim/env.js";
import { isFsError } from "../../src/util/errno.js";
import { makeAssertProperty } from "../helpers/property.js";
import { fails, SIM_LIGHT_DELAYS, simMountClient, startSimCluster } from "../helpers/sim_fs.js";

const ROOT = 1n;
const root = ROOT_CRED;
const alice: Cred = { uid: 1000, gid: 1000, groups: [] };
const bob: Cred = { uid: 1001, gid: 1001, groups: [1000] };
const B = (s: string): Buffer => Buffer.from(s);

interface Rig {
  world: SimWorld;
  clients: MountClient[];
  fss: ScoutFs[];
}

async function newRig(seed: number, mounts = 1, linkMax = 64, faulty = false): Promise<Rig> {
  const c = await startSimCluster(seed, { faults: faulty
    ? { delayMinMs: 0.1, delayMaxMs: 2, streamSplitProbability: 0.3, streamCutProbability: 0.002 }
    : SIM_LIGHT_DELAYS });
  const clients = Array.from({ length: mounts },
    (_, i) => simMountClient(c, c.world.addNode(`m${i}`), { rid: BigInt(0xa0 + i) }));
  await c.world.settle(Promise.all(clients.map((m) => m.mount())));
  return { world: c.world, clients, fss: clients.map((m) => new ScoutFs(m, { linkMax })) };
}

type Entry = [string, bigint, bigint]; // name, ino, d_off
async function listDir(r: Rig, fs: ScoutFs, ino: bigint, cred: Cred = root): Promise<Entry[]> {
  const out: Entry[] = [];
  await r.world.settle(fs.readdir(ino, 0n, (name, off, i) => {
    out.push([name.toString(), i, off]);
    return true;
  }, cred));
  return out;
}

test("create, lookup, readdir positions and d_off, dir sizes, link counts", async () => {
  const r = await newRig(1);
  const fs = r.fss[0]!;
  const s = <T>(p: Promise<T>): Promise<T> => r.world.settle(p);
  const d = await s(fs.mkdir(ROOT, B("dir"), 0o755, root));
  assert.equal(d.nlink, 2);
  assert.equal((await s(fs.getattr(ROOT))).nlink, 3);
  const a = await s(fs.create(d.ino, B("a"), 0o644, root));
  const bb = await s(fs.create(d.ino, B("bb"), 0o644, root));
  assert.notEqual(a.ino, bb.ino);
  assert.equal((await s(fs.lookup(d.ino, B("a"), root))).ino, a.ino);
  assert.equal((await s(fs.lookup(d.ino, B("."), root))).ino, d.ino);
  assert.equal((await s(fs.lookup(d.ino, B(".."), root))).ino, ROOT);
  await fails(r, fs.lookup(d.ino, B("nope"), root), "ENOENT", "missing name");
  await fails(r, fs.create(d.ino, B("a"), 0o644, root), "EEXIST", "existing name");
  await fails(r, fs.lookup(a.ino, B("x"), root), "ENOTDIR", "lookup in a file");
  // d_off as upstream: "." -> 1, ".." -> 2, first entry (pos 2) -> 3
  assert.deepEqual(await listDir(r, fs, d.ino), [[".", d.ino, 1n], ["..", ROOT, 2n],
    ["a", a.ino, 3n], ["bb", bb.ino, 4n]]);
  assert.equal((await s(fs.getattr(d.ino))).size, 3n, "dir size = sum of name lengths");
  // positions are never reused: a new entry after an unlink gets the next one
  await s(fs.unlink(d.ino, B("a"), root));
  const c = await s(fs.create(d.ino, B("c"), 0o644, root));
  assert.deepEqual((await listDir(r, fs, d.ino)).slice(2), [["bb", bb.ino, 4n], ["c", c.ino, 5n]]);
  // resuming readdir from an offset
  const rest: string[] = [];
  await s(fs.readdir(d.ino, 4n, (n) => { rest.push(n.toString()); return true; }, root));
  assert.deepEqual(rest, ["c"]);
  assert.equal((await s(fs.getattr(d.ino))).size, 3n);
  // subdirectory link counting and rmdir
  const sub = await s(fs.mkdir(d.ino, B("sub"), 0o700, root));
  assert.equal((await s(fs.getattr(d.ino))).nlink, 3);
  await s(fs.create(sub.ino, B("f"), 0o644, root));
  await fails(r, fs.rmdir(d.ino, B("sub"), root), "ENOTEMPTY", "rmdir non-empty");
  await fails(r, fs.unlink(d.ino, B("sub"), root), "EISDIR", "unlink a dir");
  await fails(r, fs.rmdir(d.ino, B("c"), root), "ENOTDIR", "rmdir a file");
  await s(fs.unlink(sub.ino, B("f"), root));
  await s(fs.rmdir(d.ino, B("sub"), root));
  assert.equal((await s(fs.getattr(d.ino))).nlink, 2);
  // hard links
  const l = await s(fs.link(c.ino, ROOT, B("c-link"), root));
  assert.equal(l.nlink, 2);
  await fails(r, fs.link(d.ino, ROOT, B("dlink"), root), "EPERM", "link a dir");
  assert.deepEqual(await backrefNames(r, r.clients[0]!, c.ino), [`${ROOT}/c-link`, `${d.ino}/c`]);
  await s(fs.unlink(d.ino, B("c"), root));
  assert.equal((await s(fs.getattr(c.ino))).nlink, 1);
  assert.deepEqual(await backrefNames(r, r.clients[0]!, c.ino), [`${ROOT}/c-link`]);
  // mknod, times and nanoseconds, times beyond 2^32 s
  const n = await s(fs.mknod(ROOT, B("chr"), S_IFCHR | 0o600, 0x0501, root));
  assert.equal(n.rdev, 0x0501);
  const far = { sec: 0x1_2345_6789n, nsec: 999_999_999 };
  const t = await s(fs.setattr(n.ino, { mtime: far, atime: { sec: -5n, nsec: 1 } }, root));
  assert.deepEqual(t.mtime, far);
  assert.deepEqual((await s(fs.getattr(n.ino))).atime, { sec: -5n, nsec: 1 });
  // truncate: size, data_version and data_seq move
  const f = await s(fs.create(ROOT, B("sized"), 0o644, root));
  const g = await s(fs.setattr(f.ino, { size: 12345n }, root));
  assert.equal(g.size, 12345n);
  assert.equal(g.dataVersion, f.dataVersion + 1n);
  await fails(r, fs.setattr(d.ino, { size: 1n }, root), "EISDIR", "truncate a dir");
  const st = await s(fs.statfs());
  assert.equal(st.namelen, 255);
  assert.ok(st.blocks > st.bfree && st.files > st.ffree);
});

test("rename: move, replace, NOREPLACE, EXCHANGE, ancestry, type rules", async () => {
  const r = await newRig(2);
  const fs = r.fss[0]!;
  const s = <T>(p: Promise<T>): Promise<T> => r.world.settle(p);
  const a = await s(fs.mkdir(ROOT, B("a"), 0o755, root));
  const b = await s(fs.mkdir(ROOT, B("b"), 0o755, root));
  const ab = await s(fs.mkdir(a.ino, B("ab"), 0o755, root));
  const f1 = await s(fs.create(a.ino, B("f1"), 0o644, root));
  const f2 = await s(fs.create(b.ino, B("f2"), 0o644, root));
  // same directory rename: new position, same size
  await s(fs.rename(a.ino, B("f1"), a.ino, B("g1"), 0, root));
  assert.deepEqual((await listDir(r, fs, a.ino)).slice(2).map((e) => e[0]), ["ab", "g1"]);
  await fails(r, fs.lookup(a.ino, B("f1"), root), "ENOENT", "old name gone");
  // file over file across directories: the replaced one is deleted (no references)
  await s(fs.forget(f2.ino, 1));
  await s(fs.rename(a.ino, B("g1"), b.ino, B("f2"), 0, root));
  assert.equal((await s(fs.lookup(b.ino, B("f2"), root))).ino, f1.ino);
  await fails(r, fs.getattr(f2.ino), "ENOENT", "replaced file deleted");
  assert.equal((await s(fs.getattr(a.ino))).size, 2n);
  assert.equal((await s(fs.getattr(b.ino))).size, 2n);
  // directory moves update both parents' nlink
  await s(fs.rename(a.ino, B("ab"), b.ino, B("ab2"), 0, root));
  assert.equal((await s(fs.getattr(a.ino))).nlink, 2);
  assert.equal((await s(fs.getattr(b.ino))).nlink, 3);
  assert.equal((await s(fs.lookup(ab.ino, B(".."), root))).ino, b.ino);
  // ancestry: b under its own child
  await fails(r, fs.rename(ROOT, B("b"), ab.ino, B("loop"), 0, root), "EINVAL", "dir under itself");
  await fails(r, fs.rename(ROOT, B("b"), b.ino, B("self"), 0, root), "EINVAL", "dir into itself");
  // type rules of replacing
  const e = await s(fs.mkdir(ROOT, B("empty"), 0o755, root));
  await fails(r, fs.rename(b.ino, B("f2"), ROOT, B("empty"), 0, root), "EISDIR", "file over dir");
  await fails(r, fs.rename(ROOT, B("empty"), b.ino, B("f2"), 0, root), "ENOTDIR", "dir over file");
  await fails(r, fs.rename(ROOT, B("empty"), ROOT, B("b"), 0, root), "ENOTEMPTY", "over non-empty");
  await fails(r, fs.rename(ROOT, B("empty"), ROOT, B("a"), RENAME_NOREPLACE, root), "EEXIST",
    "NOREPLACE");
  await fails(r, fs.rename(ROOT, B("nope"), ROOT, B("x"), 0, root), "ENOENT", "missing source");
  await fails(r, fs.rename(ROOT, B("a"), ROOT, B("x"), RENAME_EXCHANGE, root), "ENOENT",
    "exchange without target");
  await fails(r, fs.rename(ROOT, B("a"), ROOT, B("x"), 3, root), "EINVAL", "both flags");
  // empty dir over empty dir: the target goes, root loses its link
  const rootLinks = (await s(fs.getattr(ROOT))).nlink;
  await s(fs.forget(e.ino, 1));
  await s(fs.rename(ROOT, B("a"), ROOT, B("empty"), 0, root));
  assert.equal((await s(fs.getattr(ROOT))).nlink, rootLinks - 1);
  await fails(r, fs.getattr(e.ino), "ENOENT", "replaced dir deleted");
  // exchange a file and a directory across directories
  await s(fs.rename(ROOT, B("empty"), b.ino, B("f2"), RENAME_EXCHANGE, root));
  assert.equal((await s(fs.lookup(b.ino, B("f2"), root))).ino, a.ino);
  assert.equal((await s(fs.lookup(ROOT, B("empty"), root))).ino, f1.ino);
  assert.equal((await s(fs.lookup(a.ino, B(".."), root))).ino, b.ino);
  assert.equal((await s(fs.getattr(b.ino))).nlink, 4);
  // hard links to one inode: rename is a no-op
  await s(fs.link(f1.ino, ROOT, B("same"), root));
  await s(fs.rename(ROOT, B("empty"), ROOT, B("same"), 0, root));
  assert.equal((await s(fs.getattr(f1.ino))).nlink, 2);
});

test("xattrs: parts, flags, ENODATA, list, namespaces", async () => {
  const r = await newRig(3);
  const fs = r.fss[0]!;
  const s = <T>(p: Promise<T>): Promise<T> => r.world.settle(p);
  const f = await s(fs.create(ROOT, B("x"), 0o644, root));
  const big = Buffer.alloc(65535, 7);
  big.write("start");
  await s(fs.setxattr(f.ino, B("user.big"), big, 0, root));
  assert.ok((await s(fs.getxattr(f.ino, B("user.big"), root))).equals(big));
  await s(fs.setxattr(f.ino, B("user.small"), B("v"), XATTR_CREATE, root));
  await s(fs.setxattr(f.ino, B("user.empty"), Buffer.alloc(0), 0, root));
  assert.equal((await s(fs.getxattr(f.ino, B("user.empty"), root))).length, 0);
  await fails(r, fs.setxattr(f.ino, B("user.small"), B("w"), XATTR_CREATE, root), "EEXIST",
    "CREATE existing");
  await fails(r, fs.setxattr(f.ino, B("user.none"), B("w"), XATTR_REPLACE, root), "ENODATA",
    "REPLACE missing");
  await s(fs.setxattr(f.ino, B("user.small"), B("replaced"), XATTR_REPLACE, root));
  assert.equal((await s(fs.getxattr(f.ino, B("user.small"), root))).toString(), "replaced");
  await fails(r, fs.getxattr(f.ino, B("user.none"), root), "ENODATA", "get missing");
  await fails(r, fs.setxattr(f.ino, B("user.x"), Buffer.alloc(65536), 0, root), "E2BIG", "value");
  await fails(r, fs.setxattr(f.ino, B(`user.${"n".repeat(251)}`), B("v"), 0, root), "ERANGE",
    "name > 255");
  await s(fs.setxattr(f.ino, B(`user.${"n".repeat(250)}`), B("v"), 0, root));
  await fails(r, fs.setxattr(f.ino, B("bogus.x"), B("v"), 0, root), "EOPNOTSUPP", "namespace");
  await fails(r, fs.setxattr(f.ino, B("scoutfs.nope"), B("v"), 0, root), "EINVAL", "bad tag");
  await s(fs.setxattr(f.ino, B("scoutfs.hide.secret"), B("v"), 0, root));
  await s(fs.setxattr(f.ino, B("trusted.t"), B("v"), 0, root));
  const names = (await s(fs.listxattr(f.ino, root))).map((n) => n.toString()).sort();
  assert.deepEqual(names, ["trusted.t", "user.big", "user.empty",
    `user.${"n".repeat(250)}`, "user.small"]);
  const asAlice = (await s(fs.listxattr(f.ino, alice))).map((n) => n.toString());
  assert.ok(!asAlice.includes("trusted.t"), "trusted hidden from users");
  await fails(r, fs.setxattr(f.ino, B("user.a"), B("v"), 0, alice), "EACCES", "no write perm");
  await fails(r, fs.getxattr(f.ino, B("trusted.t"), alice), "EPERM", "trusted for root only");
  await s(fs.removexattr(f.ino, B("user.big"), root));
  await fails(r, fs.removexattr(f.ino, B("user.big"), root), "ENODATA", "remove twice");
  await fails(r, fs.getxattr(f.ino, B("user.big"), root), "ENODATA", "removed");
});

test("permissions of another user, sticky dirs, setgid dirs, chown/chmod rules", async () => {
  const r = await newRig(4);
  const fs = r.fss[0]!;
  const s = <T>(p: Promise<T>): Promise<T> => r.world.settle(p);
  const home = await s(fs.mkdir(ROOT, B("home"), 0o755, root));
  await s(fs.setattr(home.ino, { uid: alice.uid, gid: alice.gid }, root));
  await fails(r, fs.create(home.ino, B("x"), 0o644, bob), "EACCES", "bob writes alice's dir");
  const af = await s(fs.create(home.ino, B("af"), 0o640, alice));
  assert.equal(af.uid, alice.uid);
  await fails(r, fs.unlink(home.ino, B("af"), bob), "EACCES", "bob unlinks in alice's dir");
  await s(fs.setattr(home.ino, { mode: 0o700 }, alice));
  await fails(r, fs.lookup(home.ino, B("af"), bob), "EACCES", "no search permission");
  await fails(r, fs.setattr(home.ino, { mode: 0o777 }, bob), "EPERM", "chmod not owner");
  await fails(r, fs.setattr(af.ino, { uid: bob.uid }, alice), "EPERM", "chown by non-root");
  await fails(r, fs.setattr(af.ino, { size: 0n }, bob), "EACCES", "truncate without write");
  // group read: bob is in alice's group
  await s(fs.setattr(home.ino, { mode: 0o750 }, alice));
  await s(fs.access(af.ino, 4, bob));
  await fails(r, fs.access(af.ino, 2, bob), "EACCES", "group has no write");
  // root bypasses, except executing a file nobody may execute
  await s(fs.create(home.ino, B("byroot"), 0o600, root));
  await fails(r, fs.access(af.ino, 1, root), "EACCES", "root exec without x bits");
  // sticky directory: only owners delete
  const tmp = await s(fs.mkdir(ROOT, B("tmp"), 0o777 | S_ISVTX, root));
  await s(fs.create(tmp.ino, B("mine"), 0o644, alice));
  await fails(r, fs.unlink(tmp.ino, B("mine"), bob), "EPERM", "sticky");
  await fails(r, fs.rename(tmp.ino, B("mine"), tmp.ino, B("b"), 0, bob), "EPERM", "sticky rename");
  await s(fs.unlink(tmp.ino, B("mine"), alice));
  // setgid directory: group and bit inherited
  const sg = await s(fs.mkdir(ROOT, B("sg"), 0o777 | S_ISGID, root));
  await s(fs.setattr(sg.ino, { gid: 4242 }, root));
  const sub = await s(fs.mkdir(sg.ino, B("sub"), 0o755, alice));
  assert.equal(sub.gid, 4242);
  assert.ok((sub.mode & S_ISGID) !== 0);
  const file = await s(fs.create(sg.ino, B("f"), 0o755 | S_ISGID, alice));
  assert.equal(file.gid, 4242);
  assert.equal(file.mode & S_ISGID, 0, "non-member loses setgid on create");
  assert.equal(file.mode & S_IFMT, 0o100000);
});

test("symlink limits, 255-byte names, orphans deleted after the last reference", async () => {
  const r = await newRig(5);
  const fs = r.fss[0]!;
  const c = r.clients[0]!;
  const s = <T>(p: Promise<T>): Promise<T> => r.world.settle(p);
  const long = Buffer.alloc(4095, 0x61);
  const l = await s(fs.symlink(ROOT, B("l"), long, root));
  assert.equal(l.size, 4095n);
  assert.ok((await s(fs.readlink(l.ino))).equals(long));
  await fails(r, fs.symlink(ROOT, B("l2"), Buffer.alloc(4096, 0x61), root), "ENAMETOOLONG",
    "symlink 4096");
  await fails(r, fs.readlink(ROOT), "EINVAL", "readlink a dir");
  const n255 = Buffer.alloc(255, 0x62);
  await s(fs.create(ROOT, n255, 0o644, root));
  assert.equal((await s(fs.lookup(ROOT, n255, root))).size, 0n);
  await fails(r, fs.create(ROOT, Buffer.alloc(256, 0x62), 0o644, root), "ENAMETOOLONG", "256");
  await fails(r, fs.lookup(ROOT, Buffer.alloc(256, 0x62), root), "ENAMETOOLONG", "256 lookup");
  // an open, unlinked file keeps its items until release
  const f = await s(fs.create(ROOT, B("held"), 0o644, root));
  await s(fs.setxattr(f.ino, B("user.x"), Buffer.alloc(2000, 1), 0, root));
  fs.open(f.ino);
  await s(fs.forget(f.ino, 1));
  await s(fs.unlink(ROOT, B("held"), root));
  assert.equal((await s(fs.getattr(f.ino))).nlink, 0);
  assert.notEqual(await s(c.lookup(orphanKey(f.ino))), null, "orphan item while open");
  await s(fs.release(f.ino));
  await fails(r, fs.getattr(f.ino), "ENOENT", "deleted after release");
  assert.equal(await s(c.lookup(orphanKey(f.ino))), null, "orphan item gone");
  const left = await s(c.next(makeKey(Zone.FS, f.ino, 0), makeKey(Zone.FS, f.ino, 255, U64_MAX,
    U64_MAX, 255)));
  assert.equal(left, null, "no item of the deleted inode remains");
  // and after a commit the deletion is durable: the index items went too
  await s(c.commit());
  const idx = await s(c.next(makeKey(Zone.INODE_INDEX, 0n, 0), makeKey(Zone.INODE_INDEX, U64_MAX,
    255, U64_MAX, U64_MAX, 255)));
  assert.ok(idx !== null);
  // the symlink's link-limit: EMLINK past linkMax
  const r2 = await newRig(6, 1, 3);
  const fs2 = r2.fss[0]!;
  const g = await r2.world.settle(fs2.create(ROOT, B("g"), 0o644, root));
  await r2.world.settle(fs2.link(g.ino, ROOT, B("g2"), root));
  await r2.world.settle(fs2.link(g.ino, ROOT, B("g3"), root));
  await fails(r2, fs2.link(g.ino, ROOT, B("g4"), root), "EMLINK", "link limit");
});

test("concurrent operations of one mount serialize; orphans left by a lost mount are scanned",
  async () => {
    const r = await newRig(9);
    const fs = r.fss[0]!;
    const s = <T>(p: Promise<T>): Promise<T> => r.world.settle(p);
    const d = await s(fs.mkdir(ROOT, B("busy"), 0o755, root));
    // racing creates of distinct and of identical names in one directory
    const results = await s(Promise.allSettled([...Array(24).keys()].map((i) =>
      fs.create(d.ino, B(`n${i % 12}`), 0o644, root))));
    assert.equal(results.filter((x) => x.status === "fulfilled").length, 12);
    assert.ok(results.every((x) => x.status === "fulfilled" || isFsError(x.reason, "EEXIST")));
    const ents = (await listDir(r, fs, d.ino)).slice(2);
    assert.equal(ents.length, 12);
    assert.equal(new Set(ents.map((e) => e[2])).size, 12, "distinct positions");
    // racing renames and unlinks: every entry ends up in exactly one place
    await s(Promise.allSettled([...Array(12).keys()].map((i) => i % 3 === 0
      ? fs.unlink(d.ino, B(`n${i}`), root)
      : fs.rename(d.ino, B(`n${i}`), ROOT, B(`m${i}`), 0, root))));
    assert.equal((await listDir(r, fs, d.ino)).length, 2);
    assert.equal((await s(fs.getattr(d.ino))).size, 0n);
    // an unlinked file still referenced when its mount's references are lost (a crash):
    // the orphan scan of a fresh ScoutFs deletes it
    const f = await s(fs.create(ROOT, B("lost"), 0o644, root));
    fs.open(f.ino);
    await s(fs.unlink(ROOT, B("lost"), root));
    const again = new ScoutFs(r.clients[0]!);
    // 5: "lost" and the four unlinked n* files, whose create lookups were never forgotten
    assert.equal(await s(again.refs.scanOrphans()), 5);
    await fails(r, fs.getattr(f.ino), "ENOENT", "scanned orphan deleted");
    assert.equal(await s(again.refs.scanOrphans()), 0);
  });

/** Every INODE_INDEX item of a type as (seq, ino), read after a commit. */
async function indexItems(r: Rig, c: MountClient, type: number): Promise<[bigint, bigint][]> {
  const out: [bigint, bigint][] = [];
  let k = makeKey(Zone.INODE_INDEX, 0n, type);
  const end = makeKey(Zone.INODE_INDEX, 0n, type, U64_MAX, U64_MAX, 255);
  for (let i = 0; i < 10_000; i++) {
    const it = await r.world.settle(c.next(k, end));
    if (it === null) break;
    const f = keyFields(it.key);
    out.push([f.second, f.third]);
    k = makeKey(Zone.INODE_INDEX, 0n, type, f.second, f.third + 1n);
  }
  return out;
}

test("meta_seq and data_seq index items follow every dirtied inode", async () => {
  const r = await newRig(7);
  const fs = r.fss[0]!;
  const c = r.clients[0]!;
  const s = <T>(p: Promise<T>): Promise<T> => r.world.settle(p);
  const f = await s(fs.create(ROOT, B("f"), 0o644, root));
  const seq1 = BigInt(c.transSeq);
  await s(c.commit());
  let meta = await indexItems(r, c, InodeIndexType.META_SEQ);
  assert.ok(meta.some(([sq, i]) => i === f.ino && sq === seq1), "new file indexed at its seq");
  assert.ok(meta.some(([sq, i]) => i === ROOT && sq === seq1), "dirtied root moved");
  assert.equal(meta.filter(([, i]) => i === ROOT).length, 1, "one meta_seq item per inode");
  let data = await indexItems(r, c, InodeIndexType.DATA_SEQ);
  assert.deepEqual(data.filter(([, i]) => i === f.ino), [[seq1, f.ino]]);
  // an attribute change moves meta_seq only; a truncate moves data_seq too
  await s(fs.setattr(f.ino, { mode: 0o600 }, root));
  const seq2 = BigInt(c.transSeq);
  await s(c.commit());
  meta = await indexItems(r, c, InodeIndexType.META_SEQ);
  assert.deepEqual(meta.filter(([, i]) => i === f.ino), [[seq2, f.ino]]);
  data = await indexItems(r, c, InodeIndexType.DATA_SEQ);
  assert.deepEqual(data.filter(([, i]) => i === f.ino), [[seq1, f.ino]]);
  await s(fs.setattr(f.ino, { size: 10n }, root));
  const seq3 = BigInt(c.transSeq);
  await s(c.commit());
  data = await indexItems(r, c, InodeIndexType.DATA_SEQ);
  assert.deepEqual(data.filter(([, i]) => i === f.ino), [[seq3, f.ino]]);
  const a = await s(fs.getattr(f.ino));
  assert.equal(a.metaSeq, seq3);
  assert.equal(a.dataSeq, seq3);
  // every dirent item kind present for an entry
  const kinds = new Set<number>();
  for (const first of [ROOT, f.ino]) {
    let k = makeKey(Zone.FS, first, 0);
    for (let i = 0; i < 100; i++) {
      const it = await s(c.next(k, makeKey(Zone.FS, first, 255, U64_MAX, U64_MAX, 255)));
      if (it === null) break;
      kinds.add(keyFields(it.key).type);
      k = makeKey(Zone.FS, first, keyFields(it.key).type + 1);
    }
  }
  for (const t of [FsType.INODE, FsType.DIRENT, FsType.READDIR, FsType.LINK_BACKREF]) {
    assert.ok(kinds.has(t), `item type ${t} present`);
  }
});

for (const seed of [8, 18, 28]) {
  test(`two mounts: changes in one directory are visible from the other after the lock moves (seed ${seed}, network faults)`,
  async () => {
    const r = await newRig(seed, 2, 64, true);
    const [fa, fb] = r.fss as [ScoutFs, ScoutFs];
    const s = <T>(p: Promise<T>): Promise<T> => r.world.settle(p);
    const d = await s(fa.mkdir(ROOT, B("shared"), 0o777, root));
    const x = await s(fa.create(d.ino, B("from-a"), 0o644, root));
    assert.equal((await s(fb.lookup(d.ino, B("from-a"), root))).ino, x.ino);
    const y = await s(fb.create(d.ino, B("from-b"), 0o644, alice));
    assert.deepEqual((await listDir(r, fa, d.ino)).slice(2).map((e) => e[0]), ["from-a", "from-b"]);
    await s(fa.setxattr(y.ino, B("user.k"), B("v1"), 0, root));
    assert.equal((await s(fb.getxattr(y.ino, B("user.k"), root))).toString(), "v1");
    await s(fb.rename(d.ino, B("from-a"), ROOT, B("moved"), 0, root));
    await fails(r, fa.lookup(d.ino, B("from-a"), root), "ENOENT", "renamed away elsewhere");
    assert.equal((await s(fa.lookup(ROOT, B("moved"), root))).ino, x.ino);
    // concurrent creates from both mounts in one directory
    await s(Promise.all([0, 1].map(async (m) => {
      for (let i = 0; i < 10; i++) await r.fss[m]!.create(d.ino, B(`c${m}-${i}`), 0o644, root);
    })));
    const names = (await listDir(r, fb, d.ino)).slice(2).map((e) => e[0]);
    assert.equal(names.length, 21);
    assert.equal((await s(fa.getattr(d.ino))).size,
      BigInt(names.reduce((n, e) => n + e.length, 0)));
    // crossing directory renames from both mounts: the rename lock lets exactly one win,
    // the other sees the new ancestry and refuses to make a loop
    const x1 = await s(fa.mkdir(ROOT, B("x1"), 0o755, root));
    const y1 = await s(fb.mkdir(ROOT, B("y1"), 0o755, root));
    const res = await s(Promise.allSettled([fa.rename(ROOT, B("x1"), y1.ino, B("x1"), 0, root),
      fb.rename(ROOT, B("y1"), x1.ino, B("y1"), 0, root)]));
    assert.equal(res.filter((x) => x.status === "fulfilled").length, 1);
    assert.ok(res.some((x) => x.status === "rejected" && isFsError(x.reason, "EINVAL")));
    const top = (await listDir(r, fb, ROOT)).map((e) => e[0]);
    assert.equal(top.filter((n) => n === "x1" || n === "y1").length, 1, "one stays at the top");
  });
}

// ---------------------------------------------------------------------------------------
// Model test: random operation sequences against an in-memory tree.

interface MNode {
  dir: boolean;
  kids: Map<string, number>; // name -> model node id
  nlink: number;
  id: number;
}

type Op =
  | { k: "create" | "mkdir" | "unlink" | "rmdir"; d: number; n: string }
  | { k: "link"; src: number; d: number; n: string }
  | { k: "rename"; d1: number; n1: string; d2: number; n2: string; flags: number };

const NAMES = ["a", "b", "c", "dd"];
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ k: fc.constantFrom("create", "mkdir", "unlink", "rmdir") as fc.Arbitrary<
    "create" | "mkdir" | "unlink" | "rmdir">, d: fc.nat(5), n: fc.constantFrom(...NAMES) }),
  fc.record({ k: fc.constant("link" as const), src: fc.nat(8), d: fc.nat(5),
    n: fc.constantFrom(...NAMES) }),
  fc.record({ k: fc.constant("rename" as const), d1: fc.nat(5), n1: fc.constantFrom(...NAMES),
    d2: fc.nat(5), n2: fc.constantFrom(...NAMES), flags: fc.constantFrom(0, 0, 1, 2) }),
);

class Model {
  nodes = new Map<number, MNode>([[0, { dir: true, kids: new Map(), nlink: 2, id: 0 }]]);
  next = 1;
  parent = new Map<number, number>([[0, 0]]);

  dirs(): number[] {
    return [...this.nodes.values()].filter((n) => n.dir).map((n) => n.id).sort((a, b) => a - b);
  }

  files(): number[] {
    return [...this.nodes.values()].filter((n) => !n.dir).map((n) => n.id).sort((a, b) => a - b);
  }

  isAnc(a: number, d: number): boolean {
    for (let x = d, i = 0; i < 100; i++) {
      if (x === a) return true;
      if (x === 0) return false;
      x = this.parent.get(x)!;
    }
    return false;
  }

  drop(id: number): void {
    const n = this.nodes.get(id)!;
    n.nlink = n.dir ? 0 : n.nlink - 1;
    if (n.nlink === 0) this.nodes.delete(id);
  }

  /** Applies op; returns the errno code or "ok". */
  apply(op: Op): string {
    if (op.k === "create" || op.k === "mkdir") {
      const d = this.nodes.get(this.dirs()[op.d % this.dirs().length]!)!;
      if (d.kids.has(op.n)) return "EEXIST";
      const id = this.next++;
      this.nodes.set(id, { dir: op.k === "mkdir", kids: new Map(), nlink: op.k === "mkdir" ? 2 : 1,
        id });
      d.kids.set(op.n, id);
      if (op.k === "mkdir") {
        d.nlink++;
        this.parent.set(id, d.id);
      }
      return "ok";
    }
    if (op.k === "unlink" || op.k === "rmdir") {
      const d = this.nodes.get(this.dirs()[op.d % this.dirs().length]!)!;
      const id = d.kids.get(op.n);
      if (id === undefined) return "ENOENT";
      const v = this.nodes.get(id)!;
      if (op.k === "unlink" && v.dir) return "EISDIR";
      if (op.k === "rmdir" && !v.dir) return "ENOTDIR";
      if (v.dir && v.kids.size > 0) return "ENOTEMPTY";
      d.kids.delete(op.n);
      if (v.dir) d.nlink--;
      this.drop(id);
      return "ok";
    }
    if (op.k === "link") {
      const files = this.files();
      if (files.length === 0) return "skip";
      const src = this.nodes.get(files[op.src % files.length]!)!;
      const d = this.nodes.get(this.dirs()[op.d % this.dirs().length]!)!;
      if (d.kids.has(op.n)) return "EEXIST";
      d.kids.set(op.n, src.id);
      src.nlink++;
      return "ok";
    }
    return op.k === "rename" ? this.rename(op) : "skip";
  }

  rename(op: Extract<Op, { k: "rename" }>): string {
    const d1 = this.nodes.get(this.dirs()[op.d1 % this.dirs().length]!)!;
    const d2 = this.nodes.get(this.dirs()[op.d2 % this.dirs().length]!)!;
    const s = d1.kids.get(op.n1);
    if (s === undefined) return "ENOENT";
    const t = d2.kids.get(op.n2);
    const sv = this.nodes.get(s)!;
    if (op.flags === 2) {
      if (t === undefined) return "ENOENT";
      if (t === s) return "ok";
      const tv = this.nodes.get(t)!;
      if (d1 !== d2 && ((sv.dir && this.isAnc(s, d2.id)) || (tv.dir && this.isAnc(t, d1.id)))) {
        return "EINVAL";
      }
      d1.kids.set(op.n1, t);
      d2.kids.set(op.n2, s);
      if (d1 !== d2) {
        const moved = (sv.dir ? 1 : 0) - (tv.dir ? 1 : 0);
        d1.nlink -= moved;
        d2.nlink += moved;
        if (sv.dir) this.parent.set(s, d2.id);
        if (tv.dir) this.parent.set(t, d1.id);
      }
      return "ok";
    }
    if (t !== undefined && op.flags === 1) return "EEXIST";
    if (t === s) return "ok";
    const tv = t === undefined ? undefined : this.nodes.get(t)!;
    if (tv !== undefined) {
      if (sv.dir && !tv.dir) return "ENOTDIR";
      if (!sv.dir && tv.dir) return "EISDIR";
      if (tv.dir && tv.kids.size > 0) return "ENOTEMPTY";
    }
    if (d1 !== d2 && sv.dir && this.isAnc(s, d2.id)) return "EINVAL";
    if (tv !== undefined) {
      if (tv.dir) d2.nlink--;
      this.drop(t!);
    }
    d1.kids.delete(op.n1);
    d2.kids.set(op.n2, s);
    if (sv.dir && d1 !== d2) {
      d1.nlink--;
      d2.nlink++;
      this.parent.set(s, d2.id);
    }
    return "ok";
  }
}

async function runModel(ops: Op[], seed: number): Promise<void> {
  const r = await newRig(1000 + seed);
  const fs = r.fss[0]!;
  const m = new Model();
  const inoOf = new Map<number, bigint>([[0, ROOT]]);
  const ino = (id: number): bigint => inoOf.get(id)!;
  for (const op of ops) {
    const dirs = m.dirs();
    const files = m.files();
    let p: Promise<unknown>;
    if (op.k === "create" || op.k === "mkdir") {
      const d = ino(dirs[op.d % dirs.length]!);
      p = op.k === "create" ? fs.create(d, B(op.n), 0o644, root) : fs.mkdir(d, B(op.n), 0o755, root);
    } else if (op.k === "unlink" || op.k === "rmdir") {
      const d = ino(dirs[op.d % dirs.length]!);
      p = op.k === "unlink" ? fs.unlink(d, B(op.n), root) : fs.rmdir(d, B(op.n), root);
    } else if (op.k === "link") {
      if (files.length === 0) continue;
      p = fs.link(ino(files[op.src % files.length]!), ino(dirs[op.d % dirs.length]!), B(op.n), root);
    } else if (op.k === "rename") {
      p = fs.rename(ino(dirs[op.d1 % dirs.length]!), B(op.n1), ino(dirs[op.d2 % dirs.length]!),
        B(op.n2), op.flags, root);
    } else {
      continue;
    }
    const next = m.next;
    const want = m.apply(op);
    let got = "ok";
    let val: unknown;
    try {
      val = await r.world.settle(p);
    } catch (e) {
      if (!isFsError(e)) throw e;
      got = e.code;
    }
    assert.equal(got, want, `op ${JSON.stringify(op)}`);
    modelOps++;
    if (m.next !== next) inoOf.set(next, (val as InodeAttr).ino);
  }
  await checkTree(r, fs, m, inoOf);
}

/** The (dir, name) entries naming ino, from its LINK_BACKREF items (read without a lock). */
async function backrefNames(r: Rig, c: MountClient, ino: bigint): Promise<string[]> {
  const out: string[] = [];
  let k = makeKey(Zone.FS, ino, FsType.LINK_BACKREF);
  const end = makeKey(Zone.FS, ino, FsType.LINK_BACKREF, U64_MAX, U64_MAX, 255);
  for (let i = 0; i < 1000; i++) {
    const it = await r.world.settle(c.next(k, end));
    if (it === null) break;
    const f = keyFields(it.key);
    out.push(`${f.second}/${it.val.subarray(32).toString()}`);
    k = makeKey(Zone.FS, ino, FsType.LINK_BACKREF, f.second, f.third + 1n);
  }
  return out.sort();
}

let modelOps = 0;

async function checkTree(r: Rig, fs: ScoutFs, m: Model, inoOf: Map<number, bigint>):
  Promise<void> {
  const named = new Map<number, string[]>();
  for (const n of m.nodes.values()) {
    for (const [k, v] of n.kids) named.set(v, [...(named.get(v) ?? []), `${inoOf.get(n.id)!}/${k}`]);
  }
  for (const n of m.nodes.values()) {
    const a = await r.world.settle(fs.getattr(inoOf.get(n.id)!));
    assert.equal(a.nlink, n.nlink, `nlink of model node ${n.id}`);
    assert.deepEqual(await backrefNames(r, fs.client, a.ino), (named.get(n.id) ?? []).sort(),
      `backrefs of model node ${n.id}`);
    if (!n.dir) continue;
    const ents = (await listDir(r, fs, a.ino)).slice(2);
    const want = [...n.kids].map(([k, v]) => `${k}=${inoOf.get(v)!}`).sort();
    assert.deepEqual(ents.map(([k, i]) => `${k}=${i}`).sort(), want, `entries of ${n.id}`);
    assert.equal(a.size, BigInt([...n.kids.keys()].reduce((s, k) => s + k.length, 0)));
  }
}

test("model: random namespace operation sequences match an in-memory tree", async () => {
  const baseSeed = Number(process.env.FC_SEED ?? 4242);
  const check = makeAssertProperty(baseSeed);
  let run = 0;
  await check("namespace model", baseSeed, fc.array(opArb, { minLength: 5, maxLength: 60 }),
    (ops) => runModel(ops, run++), { numRuns: 100, endOnFailure: true });
  assert.ok(modelOps > 600, `model ran ${modelOps} operations`);
});
