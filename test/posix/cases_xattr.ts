/*
 * POSIX conformance case: extended attributes. user.* set/get/list/remove on files and
 * directories, binary values, name length 255 (256 gives ERANGE), values up to the target's
 * limit (one more byte gives E2BIG; sizes around scoutfs's 896-byte parts too), XATTR_CREATE
 * and XATTR_REPLACE, missing names (ENODATA), unknown namespaces (EOPNOTSUPP), user.* on
 * symlinks (EPERM), trusted.* hidden from other users, and permission checks as another user.
 *
 * Method: all xattr calls go through the python helper (os.setxattr and friends, with their
 * flags), root's in batches, another user's through setpriv; each errno and each value read
 * back is compared with what ext4 gives. The largest value size comes from the target's
 * xattrValueMax rule.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import { b64, pyBatch, pyErr, pyOk, type PyOp } from "../helpers/posix_py.js";
import { assertReachable } from "./cases_perm.js";
import { ALICE, type CaseCtx } from "./target.js";

const CREATE = 1, REPLACE = 2;

const set = (path: string, name: string, value: Buffer, flags = 0): PyOp =>
  ({ op: "setxattr", path, name, value: b64(value), flags });

function get(path: string, name: string): Buffer {
  return Buffer.from(pyOk({ op: "getxattr", path, name }) as string, "base64");
}

function binary(len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 7 + (i >> 8)) & 0xff;
  return b;
}

/** Basic set/get/list/remove, flags and missing names. */
export async function xattrBasics(ctx: CaseCtx): Promise<void> {
  const f = ctx.p("f");
  fs.writeFileSync(f, "");
  fs.mkdirSync(ctx.p("d"));
  const r = pyBatch([set(f, "user.a", Buffer.from("1")), set(f, "user.empty", Buffer.alloc(0)),
    set(ctx.p("d"), "user.dir", Buffer.from("D"))]);
  assert.ok(r.every((x) => x.ok), JSON.stringify(r));
  assert.deepEqual(get(f, "user.empty"), Buffer.alloc(0), "an empty value");
  assert.deepEqual(get(ctx.p("d"), "user.dir"), Buffer.from("D"), "xattr on a directory");
  assert.deepEqual(pyOk({ op: "listxattr", path: f }), ["user.a", "user.empty"]);
  assert.equal(pyErr(set(f, "user.a", Buffer.from("2"), CREATE)), "EEXIST", "XATTR_CREATE on an existing name");
  assert.equal(pyErr(set(f, "user.b", Buffer.from("2"), REPLACE)), "ENODATA", "XATTR_REPLACE on a missing name");
  assert.equal(pyErr(set(f, "user.b", Buffer.from("b"), CREATE)), "ok");
  assert.equal(pyErr(set(f, "user.a", Buffer.from("22"), REPLACE)), "ok");
  assert.deepEqual(get(f, "user.a"), Buffer.from("22"));
  assert.equal(pyErr({ op: "getxattr", path: f, name: "user.none" }), "ENODATA");
  assert.equal(pyErr({ op: "removexattr", path: f, name: "user.none" }), "ENODATA");
  assert.equal(pyErr({ op: "removexattr", path: f, name: "user.b" }), "ok");
  assert.deepEqual(pyOk({ op: "listxattr", path: f }), ["user.a", "user.empty"]);
  assert.equal(pyErr(set(f, "foo.bar", Buffer.from("x"))), "EOPNOTSUPP", "unknown namespace");
  fs.symlinkSync("f", ctx.p("l"));
  assert.equal(pyErr({ ...set(ctx.p("l"), "user.s", Buffer.from("x")), nofollow: true }), "EPERM",
    "user.* on a symlink itself");
  fs.linkSync(f, ctx.p("g"));
  fs.renameSync(f, ctx.p("h"));
  assert.deepEqual(get(ctx.p("g"), "user.a"), Buffer.from("22"), "xattrs belong to the inode");
}

/** Name and value size limits, binary values, many names on one inode. */
export async function xattrLimits(ctx: CaseCtx): Promise<void> {
  const f = ctx.p("f");
  fs.writeFileSync(f, "");
  const name255 = `user.${"n".repeat(250)}`;
  assert.equal(pyErr(set(f, name255, Buffer.from("v"))), "ok", "255-byte name");
  assert.deepEqual(get(f, name255), Buffer.from("v"));
  assert.equal(pyErr(set(f, `${name255}x`, Buffer.from("v"))), "ERANGE", "256-byte name");
  const max = ctx.rule("xattrValueMax");
  for (const len of [1, 895, 896, 897, 1792, 4096, 65535, max]) {
    const v = binary(len);
    assert.equal(pyErr(set(f, "user.big", v)), "ok", `value of ${len} bytes`);
    assert.deepEqual(get(f, "user.big"), v, `value of ${len} bytes reads back`);
  }
  assert.equal(pyErr(set(f, "user.big", binary(max + 1))), "E2BIG", `value of ${max + 1} bytes`);
  assert.equal(get(f, "user.big").length, max, "a refused set changes nothing");
  pyOk({ op: "removexattr", path: f, name: "user.big" });
  pyOk({ op: "removexattr", path: f, name: name255 });
  const names = Array.from({ length: 40 }, (_, i) => `user.k${i}`);
  const r = pyBatch(names.map((n) => set(f, n, Buffer.from(n))));
  assert.ok(r.every((x) => x.ok), JSON.stringify(r.find((x) => !x.ok)));
  assert.deepEqual(pyOk({ op: "listxattr", path: f }), [...names].sort());
  assert.deepEqual(get(f, "user.k17"), Buffer.from("user.k17"));
}

/** Another user: user.* follows file permissions, trusted.* is invisible and refused. */
export async function xattrPermissions(ctx: CaseCtx): Promise<void> {
  assertReachable(ctx);
  const f = ctx.p("f");
  fs.writeFileSync(f, "");
  fs.chmodSync(f, 0o644);
  pyOk(set(f, "user.u", Buffer.from("u")));
  pyOk(set(f, "trusted.t", Buffer.from("t")));
  const res = pyBatch([
    { op: "getxattr", path: f, name: "user.u" },
    set(f, "user.v", Buffer.from("v")),
    { op: "getxattr", path: f, name: "trusted.t" },
    set(f, "trusted.x", Buffer.from("x")),
    { op: "listxattr", path: f },
  ], ALICE);
  assert.deepEqual(res.map((x) => (x.ok ? "ok" : x.err)), ["ok", "EACCES", "ENODATA", "EPERM", "ok"]);
  assert.deepEqual(res[4]?.v, ["user.u"], "trusted.* is not listed for other users");
  assert.deepEqual((pyOk({ op: "listxattr", path: f }) as string[]).sort(), ["trusted.t", "user.u"]);
}
