/*
 * Goal: prove the POSIX conformance suite against its reference, ext4 (DESIGN.md section 6,
 * tier 4): every case must pass there with no notes, so that a failure on the scoutfs mount
 * means scoutfs differs from ext4, not that the suite is wrong.
 *
 * Method: a 128 MiB sparse image on a loop device this test attaches, formatted with 4 KiB
 * blocks and ea_inode (64 KiB xattr values), mounted with acl,user_xattr; the suite runs one
 * subtest per case in it; the mount is unmounted and the loop device detached in finally.
 * Needs root, e2fsprogs, util-linux (losetup, setpriv) and python3; skips with the reason
 * when they are missing.
 */
import { test } from "node:test";
import { haveSetpriv, pythonPath } from "../helpers/posix_py.js";
import { mountUnsupported, withExt4 } from "../helpers/posix_mounts.js";
import { posixSubtests, profiles } from "./suite.js";

const why = mountUnsupported("ext4") ??
  (pythonPath() === null ? "needs python3" : haveSetpriv() ? null : "needs setpriv (util-linux)");

test("POSIX suite on ext4 (the reference)", { skip: why ?? false, timeout: 120_000 }, async (t) => {
  await withExt4(128, (m) => posixSubtests(t, m.mnt, profiles.ext4));
});
