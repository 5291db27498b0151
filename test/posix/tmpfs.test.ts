/*
 * Goal: show the POSIX conformance suite runs against a second, unrelated directory type, a
 * tmpfs, whose one legitimate difference from ext4 (directory st_size counts 20 bytes per
 * entry) is declared in its profile and reported as a note rather than skipped.
 *
 * Method: mount a 256 MiB tmpfs in a private temp dir, run one subtest per case, unmount in
 * finally. Needs root, python3 and setpriv; skips with the reason when they are missing.
 */
import { test } from "node:test";
import { haveSetpriv, pythonPath } from "../helpers/posix_py.js";
import { mountUnsupported, withTmpfs } from "../helpers/posix_mounts.js";
import { posixSubtests, profiles } from "./suite.js";

const why = mountUnsupported("tmpfs") ??
  (pythonPath() === null ? "needs python3" : haveSetpriv() ? null : "needs setpriv (util-linux)");

test("POSIX suite on tmpfs", { skip: why ?? false, timeout: 120_000 }, async (t) => {
  await withTmpfs(256, (mnt) => posixSubtests(t, mnt, profiles.tmpfs));
});
