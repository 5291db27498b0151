/*
 * Goal: two mounts of one volume (two daemons on this host: the quorum member running the
 * server and a plain client) see each other's changes at once through the kernel's caches
 * (issue 4 point 3): a revoked cluster lock invalidates the kernel's attributes, pages and
 * dentries it covered, so no stale size, content, name or mode is ever served.
 *
 * Method: write on one mount, read on the other, in both directions, for file contents and
 * sizes (appends), renames and unlinks (dentries), mkdir and chmod (directory attributes).
 * Each step reads through paths the other kernel has just cached, so a missing invalidation
 * shows as a stale answer. Both daemons are unmounted in every path.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fsp from "node:fs/promises";
import path from "node:path";
import { makeVolume, Mount, mountSkipReason, removeVolume, scoutfs } from "./harness.js";

const skip = mountSkipReason();

test("two mounts on one host stay coherent through the kernel caches",
  { skip, timeout: 180_000 }, async () => {
    const vol = await makeVolume();
    let a: Mount | null = null;
    let b: Mount | null = null;
    try {
      a = await Mount.mount(vol);
      b = new Mount(vol, path.join(vol.dir, "mnt2"));
      await fsp.mkdir(b.mp);
      const r = await scoutfs(["mount", "-o", `metadev_path=${vol.meta}`, vol.data, b.mp]);
      assert.equal(r.code, 0, r.stderr);
      const A = (p: string): string => path.join(a!.mp, p);
      const B = (p: string): string => path.join(b!.mp, p);

      await fsp.writeFile(A("x"), "one\n");
      assert.equal(await fsp.readFile(B("x"), "utf8"), "one\n");
      await fsp.writeFile(A("x"), "two\n");
      assert.equal(await fsp.readFile(B("x"), "utf8"), "two\n");
      await fsp.appendFile(B("x"), "three\n");
      assert.equal(await fsp.readFile(A("x"), "utf8"), "two\nthree\n");
      assert.equal((await fsp.stat(A("x"))).size, 10);

      await fsp.rename(A("x"), A("y"));
      await assert.rejects(fsp.stat(B("x")), { code: "ENOENT" });
      assert.equal(await fsp.readFile(B("y"), "utf8"), "two\nthree\n");
      await fsp.unlink(B("y"));
      await assert.rejects(fsp.stat(A("y")), { code: "ENOENT" });

      await fsp.mkdir(B("d"));
      assert.ok((await fsp.stat(A("d"))).isDirectory());
      await fsp.chmod(B("d"), 0o700);
      assert.equal((await fsp.stat(A("d"))).mode & 0o777, 0o700);
      await fsp.writeFile(A("d/f"), Buffer.alloc(1 << 20, 7));
      const big = await fsp.readFile(B("d/f"));
      assert.equal(big.length, 1 << 20);
      assert.ok(big.every((v) => v === 7));
      assert.deepEqual((await fsp.readdir(B("d"))).sort(), ["f"]);

      const ls = spawnSync("ls", [a.mp, b.mp], { encoding: "utf8" });
      assert.equal(ls.status, 0, ls.stderr);
      await b.umount();
      await a.umount();
      const f = await scoutfs(["fsck", vol.meta, vol.data]);
      assert.equal(f.code, 0, f.stdout + f.stderr);
    } finally {
      await b?.cleanup();
      await a?.cleanup();
      await removeVolume(vol);
    }
  });
