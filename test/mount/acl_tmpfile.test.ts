/*
 * Goal: POSIX ACLs and O_TMPFILE work through a real mount (issue 4 point 1): with the acl
 * option (the default) a named-user ACL entry lets another user in and the mask limits it,
 * chmod moves the mask, a directory's default ACL is inherited by new files and directories
 * with the umask ignored; with noacl the ACL xattrs are EOPNOTSUPP, stored ACLs no longer
 * grant anything and the umask applies; an O_TMPFILE file has no link until linkat through
 * /proc/self/fd names it, O_EXCL forbids that, and an unlinked one's items are deleted once
 * it is closed.
 *
 * Method: a fresh volume mounted through bin/scoutfs twice (acl, then noacl). ACLs are the
 * raw system.posix_acl_* values setfacl writes, set and read by python3 os.setxattr; other
 * users act through setpriv (uid 1000/1001/1002, capabilities dropped), so both the kernel's
 * checks from its cached ACLs and the daemon's own checks must agree to let them in. The
 * umask is set on this process for the python children it spawns. get-allocated-inos shows
 * whether a closed tmpfile's inode still has items. Every path unmounts (Mount.cleanup) and
 * ends only the daemons this test started.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {
  b64, haveSetpriv, pyBatch, pyErr, pyOk, type PyOp, type PyUser, pythonPath,
} from "../helpers/posix_py.js";
import { decodeAcl, encodeAcl } from "../posix/cases_perm.js";
import { makeVolume, Mount, mountSkipReason, removeVolume, scoutfs } from "./harness.js";

const skip = mountSkipReason() ||
  (pythonPath() === null ? "needs python3" : haveSetpriv() ? false : "needs setpriv");

const ALICE: PyUser = { uid: 1000, gid: 1000 };
const BOB: PyUser = { uid: 1001, gid: 1001 };
const CAROL: PyUser = { uid: 1002, gid: 1002 };
const USER_OBJ = 1, USER = 2, GROUP_OBJ = 4, GROUP = 8, MASK = 0x10, OTHER = 0x20;
const NO_ID = 0xffffffff;
const ACCESS = "system.posix_acl_access";
const DEFAULT = "system.posix_acl_default";
/** How long an unlinked tmpfile may take to be deleted after close (FORGET is async). */
const TMPFILE_DELETE_WAIT_MS = 10_000;

const mode = (p: string): number => fs.statSync(p).mode & 0o7777;

/** Each op as `user`, compared with the expected errno name or "ok". */
function expectAs(user: PyUser, checks: [PyOp, string][]): void {
  const got = pyBatch(checks.map(([op]) => op), user).map((r) => (r.ok ? "ok" : r.err ?? "?"));
  const label = (op: PyOp): string => `${op.op} ${String(op["path"] ?? op["dir"] ?? "")}`;
  assert.deepEqual(got.map((g, i) => `${label(checks[i]![0])}: ${g}`),
    checks.map(([op, want]) => `${label(op)}: ${want}`), `as uid ${user.uid}`);
}

function getAcl(p: string, name: string): number[][] {
  return decodeAcl(Buffer.from(pyOk({ op: "getxattr", path: p, name }) as string, "base64"));
}

/** Runs fn with this process's umask (inherited by the python children) set to mask. */
function withUmask<T>(mask: number, fn: () => T): T {
  const old = process.umask(mask);
  try {
    return fn();
  } finally {
    process.umask(old);
  }
}

const W = b64(Buffer.from("w"));

/** A named user in, the mask limiting it, chmod moving the mask, removal closing it. */
function accessAcl(mp: string): void {
  const f = path.join(mp, "f");
  fs.writeFileSync(f, "secret");
  fs.chmodSync(f, 0o600);
  expectAs(ALICE, [[{ op: "read", path: f }, "EACCES"]]);
  pyOk({ op: "setxattr", path: f, name: ACCESS, value: b64(encodeAcl([[USER_OBJ, 6, NO_ID],
    [USER, 6, 1000], [GROUP_OBJ, 0, NO_ID], [GROUP, 4, 1001], [MASK, 4, NO_ID],
    [OTHER, 0, NO_ID]])) });
  assert.equal(mode(f), 0o640, "the mask shows as the group bits");
  expectAs(ALICE, [[{ op: "read", path: f }, "ok"], [{ op: "write", path: f, data: W }, "EACCES"]]);
  expectAs(BOB, [[{ op: "read", path: f }, "ok"], [{ op: "write", path: f, data: W }, "EACCES"]]);
  expectAs(CAROL, [[{ op: "read", path: f }, "EACCES"]]);
  fs.chmodSync(f, 0o660);
  assert.deepEqual(getAcl(f, ACCESS).find((e) => e[0] === MASK), [MASK, 6, NO_ID]);
  expectAs(ALICE, [[{ op: "write", path: f, data: W }, "ok"]]);
  // an ACL the mode can say is stored as the mode only
  const g = path.join(mp, "g");
  fs.writeFileSync(g, "");
  pyOk({ op: "setxattr", path: g, name: ACCESS, value: b64(encodeAcl([[USER_OBJ, 7, NO_ID],
    [GROUP_OBJ, 5, NO_ID], [OTHER, 1, NO_ID]])) });
  assert.equal(mode(g), 0o751);
  assert.equal(pyErr({ op: "getxattr", path: g, name: ACCESS }), "ENODATA");
  assert.equal(pyErr({ op: "setxattr", path: g, name: ACCESS, value: b64(encodeAcl([
    [USER_OBJ, 7, NO_ID], [GROUP_OBJ, 0, NO_ID], [OTHER, 0, NO_ID]])) }, ALICE), "EPERM",
  "only the owner sets an ACL");
}

/** Default ACLs inherited with the create mode; the umask only where there is none. */
function defaultAcl(mp: string): void {
  const d = path.join(mp, "d");
  fs.mkdirSync(d, { mode: 0o755 });
  const def = [[USER_OBJ, 7, NO_ID], [USER, 7, 1000], [GROUP_OBJ, 5, NO_ID], [MASK, 7, NO_ID],
    [OTHER, 5, NO_ID]] as [number, number, number][];
  pyOk({ op: "setxattr", path: d, name: DEFAULT, value: b64(encodeAcl(def)) });
  withUmask(0o077, () => {
    pyOk({ op: "create", path: path.join(d, "f"), mode: 0o666 });
    pyOk({ op: "mkdir", path: path.join(d, "sub"), mode: 0o777 });
    pyOk({ op: "create", path: path.join(mp, "plain"), mode: 0o666 });
  });
  assert.equal(mode(path.join(d, "f")), 0o664, "create mode against the default ACL, no umask");
  assert.deepEqual(getAcl(path.join(d, "f"), ACCESS), [[USER_OBJ, 6, NO_ID], [USER, 7, 1000],
    [GROUP_OBJ, 5, NO_ID], [MASK, 6, NO_ID], [OTHER, 4, NO_ID]]);
  assert.equal(mode(path.join(d, "sub")), 0o775);
  assert.deepEqual(getAcl(path.join(d, "sub"), DEFAULT), def, "subdirectories keep the default");
  assert.equal(mode(path.join(mp, "plain")), 0o600, "no default ACL: the umask applies");
  expectAs(ALICE, [[{ op: "write", path: path.join(d, "f"), data: W }, "ok"],
    [{ op: "create", path: path.join(d, "sub", "alice") }, "ok"],
    [{ op: "create", path: path.join(d, "alice") }, "EACCES"]]);
  expectAs(CAROL, [[{ op: "create", path: path.join(d, "sub", "carol") }, "EACCES"]]);
}

/** The inode number of a fresh unlinked O_TMPFILE file in dir, closed again. */
function tmpfileIno(dir: string): number {
  const py = pythonPath()!;
  const r = spawnSync(py, ["-c", "import os,sys\nfd = os.open(sys.argv[1], os.O_TMPFILE | " +
    "os.O_RDWR, 0o600)\nos.write(fd, b'x' * 100000)\nprint(os.fstat(fd).st_ino)\nos.close(fd)",
  dir], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return Number(r.stdout.trim());
}

async function allocated(mp: string, ino: number): Promise<boolean> {
  const r = await scoutfs(["get-allocated-inos", "-s", "-i", String(ino), "-p", mp]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.split("\n").includes(String(ino));
}

/** O_TMPFILE: nlink 0 and no name, linkat names it, O_EXCL forbids that, closing deletes. */
async function tmpfile(mp: string): Promise<void> {
  const t = path.join(mp, "t");
  fs.mkdirSync(t);
  fs.chmodSync(t, 0o777);
  const r = pyOk({ op: "tmpfile", dir: t, data: b64(Buffer.from("tmpdata")),
    link: path.join(t, "linked") }, ALICE) as { nlink: number; names: string[]; nlinkAfter: number };
  assert.deepEqual(r, { nlink: 0, names: [], nlinkAfter: 1 });
  assert.equal(fs.readFileSync(path.join(t, "linked"), "utf8"), "tmpdata");
  assert.equal(fs.statSync(path.join(t, "linked")).uid, 1000);
  assert.equal(pyErr({ op: "tmpfile", dir: t, data: "", link: path.join(t, "excl"), excl: true }),
    "ENOENT", "an O_EXCL tmpfile cannot be linked");
  assert.equal(pyErr({ op: "tmpfile", dir: mp, data: "" }, CAROL), "EACCES",
    "no write permission on the directory");
  const ino = tmpfileIno(t);
  const end = Date.now() + TMPFILE_DELETE_WAIT_MS;
  while (await allocated(mp, ino) && Date.now() < end) await new Promise((s) => setTimeout(s, 100));
  assert.ok(!(await allocated(mp, ino)), `closed tmpfile ${ino} still has items`);
  assert.deepEqual(fs.readdirSync(t), ["linked"]);
}

/** noacl: the names refused, stored ACLs ignored, the umask applied under a default ACL. */
function noacl(mp: string): void {
  const f = path.join(mp, "f");
  assert.equal(pyErr({ op: "setxattr", path: f, name: ACCESS, value: b64(encodeAcl([
    [USER_OBJ, 7, NO_ID], [GROUP_OBJ, 0, NO_ID], [OTHER, 0, NO_ID]])) }), "EOPNOTSUPP");
  assert.equal(pyErr({ op: "getxattr", path: f, name: ACCESS }), "EOPNOTSUPP");
  expectAs(ALICE, [[{ op: "read", path: f }, "EACCES"]]);
  withUmask(0o077, () => pyOk({ op: "create", path: path.join(mp, "d", "g"), mode: 0o666 }));
  assert.equal(mode(path.join(mp, "d", "g")), 0o600, "the umask despite the default ACL");
}

test("POSIX ACLs and O_TMPFILE through a mount; noacl", { skip, timeout: 300_000 }, async (t) => {
  const vol = await makeVolume();
  try {
    const m = await Mount.mount(vol);
    try {
      fs.chmodSync(m.mp, 0o755);
      await t.test("access ACLs", () => accessAcl(m.mp));
      await t.test("default ACLs", () => defaultAcl(m.mp));
      await t.test("O_TMPFILE", () => tmpfile(m.mp));
    } finally {
      await m.cleanup();
    }
    const n = await Mount.mount(vol, ",noacl");
    try {
      await t.test("noacl", () => noacl(n.mp));
    } finally {
      await n.cleanup();
    }
    const f = await scoutfs(["fsck", vol.meta, vol.data]);
    assert.equal(f.code, 0, f.stdout + f.stderr);
  } finally {
    await removeVolume(vol);
  }
});
