/*
 * POSIX conformance cases: permissions as other users, and POSIX ACLs.
 *
 * Goal: the target decides access the way the kernel does on ext4: owner, group (primary and
 * supplementary) and other classes in that order, directory search and write permission,
 * the sticky bit, chmod/chown by non-owners, suid/sgid cleared by writes and chown, setgid
 * directories, and POSIX ACLs (named users and groups limited by the mask, chmod rewriting
 * the mask, default ACLs inherited by new files and directories).
 *
 * Method: root builds the files with exact modes and owners; then operations are run as
 * other users through setpriv (uid 1000/1001/1002, capabilities dropped) in one python child
 * per user, and every result (an errno name or ok) is compared with what ext4 returns. ACLs
 * are written as raw system.posix_acl_* xattrs (the format setfacl writes), so no acl tools
 * are needed.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import { b64, pyBatch, pyOk, type PyOp, type PyUser } from "../helpers/posix_py.js";
import { ALICE, BOB, type CaseCtx, who } from "./target.js";

const CAROL: PyUser = { uid: 1002, gid: 1002 };

/** Run ops as `user` and compare each result with the expected errno name ("ok"). */
function expectAs(user: PyUser, checks: [PyOp, string][]): void {
  const results = pyBatch(checks.map(([op]) => op), user);
  const got = results.map((r) => (r.ok ? "ok" : `${r.err ?? "?"}${r.msg ? ` ${r.msg}` : ""}`));
  const want = checks.map(([, code]) => code);
  const label = checks.map(([op]) => `${op.op} ${String(op["path"] ?? op["old"] ?? "")}`);
  assert.deepEqual(got.map((g, i) => `${label[i]}: ${g}`), want.map((w, i) => `${label[i]}: ${w}`),
    `as ${who(user)}`);
}

function mkfile(p: string, mode: number, uid: number, gid: number, data = "x"): void {
  fs.writeFileSync(p, data);
  fs.chownSync(p, uid, gid);
  fs.chmodSync(p, mode);
}

function mkdir(p: string, mode: number, uid = 0, gid = 0): void {
  fs.mkdirSync(p);
  fs.chownSync(p, uid, gid);
  fs.chmodSync(p, mode);
}

const mode = (p: string): number => fs.lstatSync(p).mode & 0o7777;

/** The other users can reach the case directory at all (FUSE needs allow_other). */
export function assertReachable(ctx: CaseCtx): void {
  const [r] = pyBatch([{ op: "stat", path: ctx.dir }], ALICE);
  assert.ok(r?.ok, `uid 1000 cannot stat ${ctx.dir} (${r?.err ?? "?"}): every parent directory ` +
    "must be searchable by others, and a FUSE mount needs allow_other");
}

/** Owner/group/other classes, supplementary groups, directory x/r/w, chmod/chown by others. */
export async function permissionClasses(ctx: CaseCtx): Promise<void> {
  assertReachable(ctx);
  const { p } = ctx;
  mkfile(p("grp"), 0o640, 0, 1000);
  mkfile(p("own"), 0o600, 0, 0);
  mkfile(p("oth"), 0o604, 0, 0);
  mkfile(p("alice"), 0o600, 1000, 1000);
  mkfile(p("alice600"), 0o600, 1000, 1000);
  mkfile(p("inverse"), 0o007, 1000, 1000);
  mkdir(p("nox"), 0o750);
  fs.writeFileSync(p("nox", "f"), "x");
  mkdir(p("nor"), 0o711);
  fs.writeFileSync(p("nor", "known"), "k");
  expectAs(ALICE, [
    [{ op: "read", path: p("grp") }, "ok"],
    [{ op: "write", path: p("grp"), data: b64(Buffer.from("y")) }, "EACCES"],
    [{ op: "read", path: p("own") }, "EACCES"],
    [{ op: "read", path: p("oth") }, "ok"],
    [{ op: "write", path: p("oth"), data: b64(Buffer.from("y")) }, "EACCES"],
    [{ op: "write", path: p("alice"), data: b64(Buffer.from("y")) }, "ok"],
    [{ op: "read", path: p("inverse") }, "EACCES"],
    [{ op: "chmod", path: p("alice"), mode: 0o644 }, "ok"],
    [{ op: "chmod", path: p("own"), mode: 0o644 }, "EPERM"],
    [{ op: "chown", path: p("alice"), uid: 1001, gid: 1001 }, "EPERM"],
    [{ op: "stat", path: p("nox", "f") }, "EACCES"],
    [{ op: "listdir", path: p("nor") }, "EACCES"],
    [{ op: "read", path: p("nor", "known") }, "ok"],
    [{ op: "create", path: p("new") }, "EACCES"],
    [{ op: "unlink", path: p("oth") }, "EACCES"],
    [{ op: "mkdir", path: p("newdir") }, "EACCES"],
  ]);
  expectAs(BOB, [
    [{ op: "read", path: p("grp") }, "EACCES"],
    [{ op: "read", path: p("alice600") }, "EACCES"],
    [{ op: "read", path: p("inverse") }, "ok"],
  ]);
  expectAs({ ...BOB, groups: [1000] }, [[{ op: "read", path: p("grp") }, "ok"]]);
  assert.equal(mode(p("alice")), 0o644, "alice's chmod took effect");
  assert.equal(fs.readFileSync(p("alice"), "utf8"), "y", "alice's write took effect");
}

/** Sticky directories: only the owner (or root) removes or renames an entry. */
export async function stickyDirectory(ctx: CaseCtx): Promise<void> {
  assertReachable(ctx);
  const { p } = ctx;
  mkdir(p("tmp"), 0o1777);
  expectAs(ALICE, [[{ op: "create", path: p("tmp", "a") }, "ok"]]);
  expectAs(BOB, [
    [{ op: "unlink", path: p("tmp", "a") }, "EPERM"],
    [{ op: "rename", old: p("tmp", "a"), new: p("tmp", "b") }, "EPERM"],
    [{ op: "create", path: p("tmp", "b") }, "ok"],
  ]);
  expectAs(ALICE, [[{ op: "unlink", path: p("tmp", "a") }, "ok"]]);
  assert.deepEqual(fs.readdirSync(p("tmp")), ["b"]);
  assert.equal(fs.statSync(p("tmp", "b")).uid, 1001, "created as bob");
}

/** suid/sgid cleared by an unprivileged write or truncate and by chown; setgid directories. */
export async function suidSgid(ctx: CaseCtx): Promise<void> {
  assertReachable(ctx);
  const { p } = ctx;
  mkfile(p("s"), 0o6777, 1000, 1000);
  expectAs(ALICE, [[{ op: "write", path: p("s"), data: b64(Buffer.from("w")) }, "ok"]]);
  assert.equal(mode(p("s")), 0o777, "write by the owner (no CAP_FSETID) clears suid and sgid");
  fs.chmodSync(p("s"), 0o6777);
  expectAs(ALICE, [[{ op: "truncate", path: p("s"), len: 0 }, "ok"]]);
  assert.equal(mode(p("s")), 0o777, "truncate clears suid and sgid");
  fs.chmodSync(p("s"), 0o4755);
  fs.chownSync(p("s"), 1001, 1001);
  assert.equal(mode(p("s")), 0o755, "chown clears suid, even by root");
  mkdir(p("sg"), 0o2777, 0, 1000);
  fs.writeFileSync(p("sg", "f"), "");
  fs.mkdirSync(p("sg", "d"));
  assert.equal(fs.statSync(p("sg", "f")).gid, 1000, "file in setgid dir takes the dir's group");
  assert.equal(fs.statSync(p("sg", "d")).gid, 1000, "subdir takes the dir's group");
  assert.equal(mode(p("sg", "d")) & 0o2000, 0o2000, "subdir inherits S_ISGID");
}

// POSIX ACL xattr format (linux/posix_acl_xattr.h): u32 version 2, then {u16 tag, u16 perm, u32 id}
const USER_OBJ = 1, USER = 2, GROUP_OBJ = 4, GROUP = 8, MASK = 0x10, OTHER = 0x20;
const NO_ID = 0xffffffff;
type AclEntry = [tag: number, perm: number, id: number];

export function encodeAcl(entries: AclEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => a[0] - b[0] || a[2] - b[2]);
  const buf = Buffer.alloc(4 + 8 * sorted.length);
  buf.writeUInt32LE(2, 0);
  sorted.forEach(([tag, perm, id], i) => {
    buf.writeUInt16LE(tag, 4 + 8 * i);
    buf.writeUInt16LE(perm, 6 + 8 * i);
    buf.writeUInt32LE(id, 8 + 8 * i);
  });
  return buf;
}

export function decodeAcl(buf: Buffer): AclEntry[] {
  const out: AclEntry[] = [];
  for (let o = 4; o + 8 <= buf.length; o += 8) {
    out.push([buf.readUInt16LE(o), buf.readUInt16LE(o + 2), buf.readUInt32LE(o + 4)]);
  }
  return out;
}

const ACCESS = "system.posix_acl_access";
const DEFAULT = "system.posix_acl_default";

function getAcl(path: string, name: string): AclEntry[] {
  return decodeAcl(Buffer.from(pyOk({ op: "getxattr", path, name }) as string, "base64"));
}

/** Access ACLs: named user/group entries limited by the mask; chmod rewrites the mask. */
export async function aclAccess(ctx: CaseCtx): Promise<void> {
  assertReachable(ctx);
  const f = ctx.p("f");
  mkfile(f, 0o600, 0, 0);
  const acl = encodeAcl([[USER_OBJ, 6, NO_ID], [USER, 6, 1000], [GROUP_OBJ, 0, NO_ID],
    [GROUP, 4, 1001], [MASK, 4, NO_ID], [OTHER, 0, NO_ID]]);
  pyOk({ op: "setxattr", path: f, name: ACCESS, value: b64(acl) });
  assert.equal(mode(f), 0o640, "group bits of the mode show the mask");
  assert.deepEqual(Buffer.from(pyOk({ op: "getxattr", path: f, name: ACCESS }) as string, "base64"), acl,
    "the ACL reads back byte for byte");
  const w = b64(Buffer.from("w"));
  expectAs(ALICE, [[{ op: "read", path: f }, "ok"], [{ op: "write", path: f, data: w }, "EACCES"]]);
  expectAs(BOB, [[{ op: "read", path: f }, "ok"], [{ op: "write", path: f, data: w }, "EACCES"]]);
  expectAs(CAROL, [[{ op: "read", path: f }, "EACCES"]]);
  fs.chmodSync(f, 0o660);
  assert.deepEqual(getAcl(f, ACCESS).find((e) => e[0] === MASK), [MASK, 6, NO_ID], "chmod sets the mask");
  expectAs(ALICE, [[{ op: "write", path: f, data: w }, "ok"]]);
  pyOk({ op: "removexattr", path: f, name: ACCESS });
  expectAs(ALICE, [[{ op: "read", path: f }, "EACCES"]]);
}

/** Default ACLs: inherited by new files (masked by the create mode) and directories. */
export async function aclDefault(ctx: CaseCtx): Promise<void> {
  assertReachable(ctx);
  const { p } = ctx;
  mkdir(p("d"), 0o755);
  const def = encodeAcl([[USER_OBJ, 7, NO_ID], [USER, 7, 1000], [GROUP_OBJ, 5, NO_ID],
    [MASK, 7, NO_ID], [OTHER, 5, NO_ID]]);
  pyOk({ op: "setxattr", path: p("d"), name: DEFAULT, value: b64(def) });
  pyOk({ op: "create", path: p("d", "f"), mode: 0o666 });
  pyOk({ op: "mkdir", path: p("d", "sub"), mode: 0o777 });
  assert.equal(mode(p("d", "f")), 0o664, "create mode 0666 against the default ACL, umask ignored");
  assert.deepEqual(getAcl(p("d", "f"), ACCESS), [[USER_OBJ, 6, NO_ID], [USER, 7, 1000],
    [GROUP_OBJ, 5, NO_ID], [MASK, 6, NO_ID], [OTHER, 4, NO_ID]], "inherited access ACL");
  assert.deepEqual(getAcl(p("d", "sub"), DEFAULT), decodeAcl(def), "subdir inherits the default ACL");
  assert.equal(mode(p("d", "sub")), 0o775);
  expectAs(ALICE, [[{ op: "write", path: p("d", "f"), data: b64(Buffer.from("a")) }, "ok"],
    [{ op: "create", path: p("d", "sub", "alice") }, "ok"], [{ op: "create", path: p("d", "no") }, "EACCES"]]);
  expectAs(BOB, [[{ op: "write", path: p("d", "f"), data: b64(Buffer.from("b")) }, "EACCES"],
    [{ op: "create", path: p("d", "sub", "bob") }, "EACCES"]]);
}
