/*
 * Goal: POSIX ACLs and O_TMPFILE in the core (src/core/fs/acl_xattr.ts, fs.ts) behave as
 * Linux and upstream scoutfs: an access ACL sets the mode and is stored only when it says
 * more than the mode; the core's permission checks (lookup, create, unlink, access, truncate,
 * user. xattrs) honour named users and groups under the mask; chmod rewrites the ACL; a
 * directory's default ACL is inherited with the create mode and without the umask; only the
 * owner sets ACLs; a noacl mount refuses the names and ignores stored ACLs; and an O_TMPFILE
 * inode is an orphan with nlink 0 until linked, and is deleted when its last reference goes.
 *
 * Method: a SimWorld with one server and two mounts (helpers/sim_fs.ts), the second mount
 * built with acl off; ACLs are set as the raw xattr values setfacl writes; each check is a
 * core call as another user (alice 1000, bob 1001 in group 1000, carol 1002) whose errno is
 * compared with what ext4 returns for the same setup.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_USER, ACL_USER_OBJ, encodeAcl,
  type PosixAcl, decodeAcl,
} from "../../src/core/fs/acl.js";
import { type Cred, type InodeAttr, ScoutFs } from "../../src/core/fs/fs.js";
import { MAY_EXEC, MAY_READ, MAY_WRITE, ROOT_CRED } from "../../src/core/fs/perm.js";
import { S_IFMT, S_ISGID } from "../../src/core/fs/format.js";
import { orphanKey } from "../../src/core/key.js";
import { type ErrnoCode, isFsError } from "../../src/util/errno.js";
import { type FsRig, newFsRig } from "../helpers/sim_fs.js";

const ROOT = 1n;
const root = ROOT_CRED;
const alice: Cred = { uid: 1000, gid: 1000, groups: [] };
const bob: Cred = { uid: 1001, gid: 1001, groups: [1000] };
const carol: Cred = { uid: 1002, gid: 1002, groups: [] };
const B = (s: string): Buffer => Buffer.from(s);
const ACCESS = B("system.posix_acl_access");
const DEFAULT = B("system.posix_acl_default");
const NO = 0xffff_ffff;

function acl(...es: [tag: number, perm: number, id?: number][]): PosixAcl {
  return es.map(([tag, perm, id]) => ({ tag, perm, id: id ?? NO }));
}

const perms = (a: InodeAttr): number => a.mode & ~S_IFMT;

async function errno(rig: FsRig, p: Promise<unknown>): Promise<string> {
  try {
    await rig.s(p);
    return "ok";
  } catch (e) {
    if (isFsError(e)) return e.code;
    throw e;
  }
}

async function expectErr(rig: FsRig, p: Promise<unknown>, code: ErrnoCode | "ok", what: string):
  Promise<void> {
  assert.equal(await errno(rig, p), code, what);
}

async function getAcl(rig: FsRig, fs: ScoutFs, ino: bigint, name: Buffer): Promise<PosixAcl | null> {
  const r = await errno(rig, fs.getxattr(ino, name, root));
  if (r === "ENODATA") return null;
  return decodeAcl(await rig.s(fs.getxattr(ino, name, root)));
}

test("an access ACL sets the mode; one the mode can say is stored as the mode only", async () => {
  const rig = await newFsRig(11);
  const fs = rig.fss[0]!;
  const f = await rig.s(fs.create(ROOT, B("f"), 0o600, root));
  const named = acl([ACL_USER_OBJ, 6], [ACL_USER, 6, 1000], [ACL_GROUP_OBJ, 0],
    [ACL_GROUP, 4, 1001], [ACL_MASK, 4], [ACL_OTHER, 0]);
  await rig.s(fs.setxattr(f.ino, ACCESS, encodeAcl(named), 0, root));
  assert.equal(perms(await rig.s(fs.getattr(f.ino))), 0o640, "the mask shows as group bits");
  assert.deepEqual(await getAcl(rig, fs, f.ino, ACCESS), named);
  // an ACL of owner/group/other only: the mode changes, nothing is stored
  await rig.s(fs.setxattr(f.ino, ACCESS, encodeAcl(acl([ACL_USER_OBJ, 7], [ACL_GROUP_OBJ, 5],
    [ACL_OTHER, 1])), 0, root));
  assert.equal(perms(await rig.s(fs.getattr(f.ino))), 0o751);
  assert.equal(await getAcl(rig, fs, f.ino, ACCESS), null, "equivalent ACL not stored");
  assert.deepEqual((await rig.s(fs.listxattr(f.ino, root))).map(String), []);
  // removing an ACL that is not there succeeds, as Linux's set_acl(NULL)
  await expectErr(rig, fs.removexattr(f.ino, ACCESS, root), "ok", "remove of no ACL");
  // errors: format, owner only, default ACL on a file, sgid of a non-member
  await expectErr(rig, fs.setxattr(f.ino, ACCESS, Buffer.from([1, 0, 0, 0]), 0, root),
    "EOPNOTSUPP", "version 1");
  await expectErr(rig, fs.setxattr(f.ino, ACCESS, Buffer.from([2, 0, 0, 0, 1]), 0, root),
    "EINVAL", "partial entry");
  await expectErr(rig, fs.setxattr(f.ino, ACCESS, encodeAcl(named), 0, alice), "EPERM",
    "only the owner sets ACLs");
  await expectErr(rig, fs.removexattr(f.ino, ACCESS, alice), "EPERM", "or removes them");
  await expectErr(rig, fs.setxattr(f.ino, DEFAULT, encodeAcl(named), 0, root), "EACCES",
    "default ACL on a file");
  await rig.s(fs.setattr(f.ino, { uid: 1000, gid: 50 }, root));
  await rig.s(fs.setattr(f.ino, { mode: 0o2770 }, root));
  assert.equal((await rig.s(fs.getattr(f.ino))).mode & S_ISGID, S_ISGID);
  await rig.s(fs.setxattr(f.ino, ACCESS, encodeAcl(named), 0, alice));
  assert.equal((await rig.s(fs.getattr(f.ino))).mode & S_ISGID, 0,
    "an owner outside the owning group loses S_ISGID");
});

test("permission checks honour named users and groups under the mask", async () => {
  const rig = await newFsRig(12);
  const fs = rig.fss[0]!;
  const d = await rig.s(fs.mkdir(ROOT, B("d"), 0o700, root));
  const f = await rig.s(fs.create(d.ino, B("f"), 0o600, root));
  await expectErr(rig, fs.lookup(d.ino, B("f"), alice), "EACCES", "0700 dir without ACL");
  // alice: rwx on the dir, bob (group 1000): r-x; file: alice rw, group 1000 r, mask rw
  await rig.s(fs.setxattr(d.ino, ACCESS, encodeAcl(acl([ACL_USER_OBJ, 7], [ACL_USER, 7, 1000],
    [ACL_GROUP_OBJ, 0], [ACL_GROUP, 5, 1000], [ACL_MASK, 7], [ACL_OTHER, 0])), 0, root));
  await rig.s(fs.setxattr(f.ino, ACCESS, encodeAcl(acl([ACL_USER_OBJ, 6], [ACL_USER, 6, 1000],
    [ACL_GROUP_OBJ, 0], [ACL_GROUP, 4, 1000], [ACL_MASK, 6], [ACL_OTHER, 0])), 0, root));
  const checks: [string, () => Promise<unknown>, ErrnoCode | "ok"][] = [
    ["alice looks up", () => fs.lookup(d.ino, B("f"), alice), "ok"],
    ["alice reads and writes", () => fs.access(f.ino, MAY_READ | MAY_WRITE, alice), "ok"],
    ["alice truncates", () => fs.setattr(f.ino, { size: 1n }, alice), "ok"],
    ["alice sets a user. xattr", () => fs.setxattr(f.ino, B("user.x"), B("1"), 0, alice), "ok"],
    ["alice creates", () => fs.create(d.ino, B("a"), 0o644, alice), "ok"],
    ["bob looks up", () => fs.lookup(d.ino, B("f"), bob), "ok"],
    ["bob reads", () => fs.access(f.ino, MAY_READ, bob), "ok"],
    ["bob may not write", () => fs.access(f.ino, MAY_WRITE, bob), "EACCES"],
    ["bob may not create", () => fs.create(d.ino, B("b"), 0o644, bob), "EACCES"],
    ["bob may not unlink", () => fs.unlink(d.ino, B("a"), bob), "EACCES"],
    ["bob may not rename", () => fs.rename(d.ino, B("a"), d.ino, B("b"), 0, bob), "EACCES"],
    ["carol may not look up", () => fs.lookup(d.ino, B("f"), carol), "EACCES"],
    ["alice renames", () => fs.rename(d.ino, B("a"), d.ino, B("a2"), 0, alice), "ok"],
  ];
  for (const [what, p, want] of checks) await expectErr(rig, p(), want, what);
  // chmod g-w of the dir lowers the mask: alice keeps search but loses create
  await rig.s(fs.setattr(d.ino, { mode: 0o750 }, root));
  const dAcl = await getAcl(rig, fs, d.ino, ACCESS);
  assert.deepEqual(dAcl?.find((e) => e.tag === ACL_MASK)?.perm, 5, "chmod sets the mask");
  assert.deepEqual(dAcl?.find((e) => e.tag === ACL_USER)?.perm, 7, "named entries stay");
  await expectErr(rig, fs.create(d.ino, B("c"), 0o644, alice), "EACCES", "masked create");
  await expectErr(rig, fs.lookup(d.ino, B("f"), alice), "ok", "masked search still ok");
  // chmod of the file: owner and other follow, the mask too
  await rig.s(fs.setattr(f.ino, { mode: 0o604 }, root));
  assert.deepEqual(await getAcl(rig, fs, f.ino, ACCESS), acl([ACL_USER_OBJ, 6],
    [ACL_USER, 6, 1000], [ACL_GROUP_OBJ, 0], [ACL_GROUP, 4, 1000], [ACL_MASK, 0], [ACL_OTHER, 4]));
  // the group bits are now 0: Linux falls back to the mode bits (other r) for everyone
  await expectErr(rig, fs.access(f.ino, MAY_READ, carol), "ok", "mask 0: other bits");
  await expectErr(rig, fs.access(f.ino, MAY_WRITE, alice), "EACCES", "mask 0: alice is other");
  // removing the ACL leaves plain mode bits
  await rig.s(fs.removexattr(d.ino, ACCESS, root));
  await expectErr(rig, fs.access(d.ino, MAY_EXEC, alice), "EACCES", "ACL gone");
});

test("default ACLs: inherited with the create mode, umask ignored, subdirs keep them",
  async () => {
    const rig = await newFsRig(13);
    const fs = rig.fss[0]!;
    const d = await rig.s(fs.mkdir(ROOT, B("d"), 0o755, root));
    const def = acl([ACL_USER_OBJ, 7], [ACL_USER, 7, 1000], [ACL_GROUP_OBJ, 5], [ACL_MASK, 7],
      [ACL_OTHER, 5]);
    await rig.s(fs.setxattr(d.ino, DEFAULT, encodeAcl(def), 0, root));
    assert.equal(perms(await rig.s(fs.getattr(d.ino))), 0o755, "a default ACL leaves the mode");
    const f = await rig.s(fs.create(d.ino, B("f"), 0o666, root, 0o077));
    assert.equal(perms(f), 0o664, "create mode against the default ACL, umask ignored");
    assert.deepEqual(await getAcl(rig, fs, f.ino, ACCESS), acl([ACL_USER_OBJ, 6],
      [ACL_USER, 7, 1000], [ACL_GROUP_OBJ, 5], [ACL_MASK, 6], [ACL_OTHER, 4]));
    assert.equal(await getAcl(rig, fs, f.ino, DEFAULT), null, "files get no default ACL");
    const sub = await rig.s(fs.mkdir(d.ino, B("sub"), 0o777, root, 0o077));
    assert.equal(perms(sub), 0o775);
    assert.deepEqual(await getAcl(rig, fs, sub.ino, DEFAULT), def, "subdir inherits the default");
    const n = await rig.s(fs.mknod(d.ino, B("fifo"), 0o010640, 0, root, 0o077));
    assert.equal(perms(n), 0o640);
    // the inherited ACL works: alice may write and create below
    await expectErr(rig, fs.access(f.ino, MAY_WRITE, alice), "ok", "alice writes f");
    await expectErr(rig, fs.create(sub.ino, B("alice"), 0o600, alice), "ok", "alice creates");
    await expectErr(rig, fs.create(d.ino, B("carol"), 0o600, carol), "EACCES", "carol may not");
    // a symlink gets neither ACLs nor the umask
    const l = await rig.s(fs.symlink(d.ino, B("l"), B("f"), root));
    assert.equal(perms(l), 0o777);
    // without a default ACL the umask applies; an equivalent default stores no access ACL
    const g = await rig.s(fs.create(ROOT, B("g"), 0o666, root, 0o022));
    assert.equal(perms(g), 0o644);
    const e = await rig.s(fs.mkdir(ROOT, B("e"), 0o755, root));
    await rig.s(fs.setxattr(e.ino, DEFAULT, encodeAcl(acl([ACL_USER_OBJ, 7], [ACL_GROUP_OBJ, 7],
      [ACL_OTHER, 7])), 0, root));
    const h = await rig.s(fs.create(e.ino, B("h"), 0o666, root, 0o022));
    assert.equal(perms(h), 0o666, "umask ignored under any default ACL");
    assert.equal(await getAcl(rig, fs, h.ino, ACCESS), null);
    await rig.s(fs.removexattr(e.ino, DEFAULT, root));
    assert.equal(perms(await rig.s(fs.create(e.ino, B("i"), 0o666, root, 0o022))), 0o644);
  });

test("noacl: the names are EOPNOTSUPP, stored ACLs are ignored, the umask always applies",
  async () => {
    const rig = await newFsRig(14, 2);
    const on = rig.fss[0]!;
    const off = new ScoutFs(rig.clients[1]!, { acl: false });
    const d = await rig.s(on.mkdir(ROOT, B("d"), 0o700, root));
    await rig.s(on.setxattr(d.ino, ACCESS, encodeAcl(acl([ACL_USER_OBJ, 7], [ACL_USER, 7, 1000],
      [ACL_GROUP_OBJ, 0], [ACL_MASK, 7], [ACL_OTHER, 0])), 0, root));
    await rig.s(on.setxattr(d.ino, DEFAULT, encodeAcl(acl([ACL_USER_OBJ, 7], [ACL_GROUP_OBJ, 7],
      [ACL_OTHER, 7])), 0, root));
    await expectErr(rig, on.access(d.ino, MAY_EXEC | MAY_WRITE, alice), "ok", "acl mount");
    await expectErr(rig, off.access(d.ino, MAY_EXEC, alice), "EACCES", "noacl ignores it");
    await expectErr(rig, off.getxattr(d.ino, ACCESS, root), "EOPNOTSUPP", "get");
    await expectErr(rig, off.setxattr(d.ino, ACCESS, encodeAcl(acl([ACL_USER_OBJ, 7],
      [ACL_GROUP_OBJ, 0], [ACL_OTHER, 0])), 0, root), "EOPNOTSUPP", "set");
    await expectErr(rig, off.removexattr(d.ino, DEFAULT, root), "EOPNOTSUPP", "remove");
    const f = await rig.s(off.create(d.ino, B("f"), 0o666, root, 0o022));
    assert.equal(perms(f), 0o644, "noacl: umask despite the default ACL");
    assert.equal(await getAcl(rig, on, f.ino, ACCESS), null, "and nothing inherited");
  });

test("O_TMPFILE: an orphan with nlink 0 until linked, deleted when the last reference goes",
  async () => {
    const rig = await newFsRig(15);
    const fs = rig.fss[0]!;
    const c = rig.clients[0]!;
    const d = await rig.s(fs.mkdir(ROOT, B("d"), 0o777, root));
    const t = await rig.s(fs.tmpfile(d.ino, 0o666, alice, 0o022));
    fs.open(t.ino);
    assert.equal(t.nlink, 0);
    assert.equal(perms(t), 0o644);
    assert.equal(t.uid, 1000);
    assert.notEqual(await rig.s(c.lookup(orphanKey(t.ino))), null, "orphan item from the start");
    assert.equal(await rig.s(fs.write(t.ino, 0n, B("tmpdata"), alice)), 7);
    const names: string[] = [];
    await rig.s(fs.readdir(d.ino, 2n, (n) => names.push(n.toString()) > 0, root));
    assert.deepEqual(names, [], "no name");
    const l = await rig.s(fs.link(t.ino, d.ino, B("linked"), alice));
    assert.equal(l.nlink, 1);
    assert.equal(await rig.s(c.lookup(orphanKey(t.ino))), null, "linking removes the orphan");
    await rig.s(fs.release(t.ino));
    await rig.s(fs.forget(t.ino, 2));
    const got = await rig.s(fs.lookup(d.ino, B("linked"), root));
    assert.equal(got.ino, t.ino);
    assert.equal((await rig.s(fs.read(t.ino, 0n, 100))).toString(), "tmpdata");
    await rig.s(fs.forget(t.ino, 1));

    // never linked: the last reference deletes it
    const u = await rig.s(fs.tmpfile(d.ino, 0o600, root));
    fs.open(u.ino);
    await rig.s(fs.write(u.ino, 0n, Buffer.alloc(100_000, 9), root));
    await rig.s(fs.release(u.ino));
    assert.notEqual(await rig.s(c.lookup(orphanKey(u.ino))), null, "still held by a lookup");
    await rig.s(fs.forget(u.ino, 1));
    await expectErr(rig, fs.getattr(u.ino), "ENOENT", "deleted after the last reference");
    assert.equal(await rig.s(c.lookup(orphanKey(u.ino))), null, "orphan item gone");
    // once closed it cannot be linked, nor can an O_EXCL one ever
    await expectErr(rig, fs.link(u.ino, d.ino, B("late"), root), "ENOENT", "gone");
    const x = await rig.s(fs.tmpfile(d.ino, 0o600, root, 0, false));
    fs.open(x.ino);
    await expectErr(rig, fs.link(x.ino, d.ino, B("excl"), root), "ENOENT", "O_EXCL tmpfile");
    await rig.s(fs.release(x.ino));
    await rig.s(fs.forget(x.ino, 1));
    await expectErr(rig, fs.getattr(x.ino), "ENOENT", "O_EXCL tmpfile deleted");

    // permission, type and default ACL of the directory apply
    const ro = await rig.s(fs.mkdir(ROOT, B("ro"), 0o755, root));
    await expectErr(rig, fs.tmpfile(ro.ino, 0o600, alice), "EACCES", "no write permission");
    const file = await rig.s(fs.create(ROOT, B("file"), 0o644, root));
    await expectErr(rig, fs.tmpfile(file.ino, 0o600, root), "ENOTDIR", "not a directory");
    await rig.s(fs.setxattr(ro.ino, DEFAULT, encodeAcl(acl([ACL_USER_OBJ, 7],
      [ACL_USER, 7, 1000], [ACL_GROUP_OBJ, 5], [ACL_MASK, 7], [ACL_OTHER, 0])), 0, root));
    const y = await rig.s(fs.tmpfile(ro.ino, 0o640, root, 0o077));
    assert.equal(perms(y), 0o640, "default ACL masked by the mode, no umask");
    assert.deepEqual((await getAcl(rig, fs, y.ino, ACCESS))?.find((e) => e.tag === ACL_USER),
      { tag: ACL_USER, perm: 7, id: 1000 });
    await rig.s(fs.forget(y.ino, 1));
  });

test("an ACL set on one mount is enforced by the other once the locks move", async () => {
  const rig = await newFsRig(16, 2);
  const [a, b] = [rig.fss[0]!, rig.fss[1]!];
  const f = await rig.s(a.create(ROOT, B("f"), 0o600, root));
  await expectErr(rig, b.access(f.ino, MAY_READ, alice), "EACCES", "before");
  await rig.s(a.setxattr(f.ino, ACCESS, encodeAcl(acl([ACL_USER_OBJ, 6], [ACL_USER, 4, 1000],
    [ACL_GROUP_OBJ, 0], [ACL_MASK, 4], [ACL_OTHER, 0])), 0, root));
  await expectErr(rig, b.access(f.ino, MAY_READ, alice), "ok", "after, on the other mount");
  await rig.s(b.setattr(f.ino, { mode: 0o600 }, root));
  await expectErr(rig, a.access(f.ino, MAY_READ, alice), "EACCES", "mask cleared by chmod there");
});
