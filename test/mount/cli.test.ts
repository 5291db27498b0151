/*
 * Goal: the scoutfs CLI works against a real mount through its control socket, and the status
 * directory shows the mount (issue 4 points 5-7): upstream's quick-start walk-through of the
 * meta_seq index, stat, statfs, df, ino-path, get-referring-entries, list-hidden-xattrs with
 * the .hide. tag, get-fiemap, get-allocated-inos, counters; the mount chosen by -p,
 * SCOUTFS_MOUNT_PATH or the current directory; a path elsewhere gives ENOTTY; the status
 * directory's fsid/rid match statfs, quorum/is_leader is 1, a bad mount option write is EINVAL
 * and changes nothing.
 *
 * Method: one volume mounted through bin/scoutfs; commands run as separate processes with
 * exact expected output where upstream's format fixes it. Unmounted in every path.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fsp from "node:fs/promises";
import path from "node:path";
import { makeVolume, Mount, mountSkipReason, removeVolume, scoutfs } from "./harness.js";

const skip = mountSkipReason();

function sh(cmd: string): string {
  const r = spawnSync("bash", ["-c", cmd], { encoding: "utf8" });
  assert.equal(r.status, 0, `${cmd}: ${r.stderr}`);
  return r.stdout;
}

/** walk-inodes rows as [major, ino] pairs. */
function walkRows(out: string): [number, number][] {
  return out.split("\n").filter((l) => /^\d/.test(l)).map((l) => {
    const f = l.trim().split(/\s+/).map(Number);
    return [f[1]!, f[3]!];
  });
}

test("the CLI over a mount and the status directory", { skip, timeout: 180_000 }, async () => {
  const vol = await makeVolume();
  try {
    const m = await Mount.mount(vol);
    try {
      const mp = m.mp;
      const walk = async (): Promise<[number, number][]> => {
        const r = await scoutfs(["walk-inodes", "-p", mp, "--", "meta_seq", "0", "-1"]);
        assert.equal(r.code, 0, r.stderr);
        if (r.stdout !== "") assert.match(r.stdout, /^#\s+major\s+minor\s+ino\s*\n/);
        return walkRows(r.stdout);
      };
      const before = await walk();
      sh(`touch ${mp}/one && sync ${mp}/one`);
      const one = Number(sh(`stat -c %i ${mp}/one`));
      const after1 = await walk();
      const seqOf = (rows: [number, number][], ino: number): number | undefined =>
        rows.find((r) => r[1] === ino)?.[0];
      assert.ok(seqOf(after1, one) !== undefined, "the new file is in the meta_seq index");
      assert.equal(seqOf(before, one), undefined);
      sh(`touch ${mp}/two && sync ${mp}/two`);
      sh(`touch ${mp}/one && sync ${mp}/one`);
      const after3 = await walk();
      assert.ok(seqOf(after3, one)! > seqOf(after1, one)!, "touch moves it to a later seq");
      // rows are sorted by (major, ino)
      const sorted = [...after3].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      assert.deepEqual(after3, sorted);

      // stat / statfs and the path rules
      sh(`mkdir ${mp}/d && head -c 10000 /dev/urandom > ${mp}/d/f && ln ${mp}/d/f ${mp}/g && ` +
        `sync ${mp}/d/f`);
      const st = await scoutfs(["stat", `${mp}/d/f`]);
      assert.equal(st.code, 0, st.stderr);
      assert.match(st.stdout, /^meta_seq {10}\d+\ndata_seq {10}\d+\ndata_version {6}\d+\n/);
      assert.match(st.stdout, /online_blocks {5}3\noffline_blocks {4}0\ncrtime {12}\d+\.\d{9}\n$/);
      const fsid = (await scoutfs(["statfs", "-p", mp, "-s", "fsid"])).stdout.trim();
      const viaEnv = await scoutfs(["statfs", "-s", "fsid"], { ...process.env,
        SCOUTFS_MOUNT_PATH: mp });
      assert.equal(viaEnv.stdout.trim(), fsid);
      const viaCwd = await scoutfs(["statfs", "-s", "fsid"], process.env, path.join(mp, "d"));
      assert.equal(viaCwd.stdout.trim(), fsid);
      const off = await scoutfs(["get-allocated-inos", "-i", "1", "-p", vol.dir]);
      assert.notEqual(off.code, 0);
      assert.match(off.stderr, /Inappropriate ioctl for device \(25\)/);

      // df's table
      const df = await scoutfs(["df", "-p", mp]);
      assert.equal(df.code, 0, df.stderr);
      assert.match(df.stdout, /^ +Type +Size +Total +Used +Free +Use%  \nMetaData +64KB +\d+ +\d+ +\d+ +\d+  \n +Data +4KB /);

      // backrefs
      const ino = sh(`stat -c %i ${mp}/g`).trim();
      const paths = await scoutfs(["ino-path", ino, "-p", mp]);
      assert.deepEqual(paths.stdout.split("\n").filter(Boolean).sort(), ["d/f", "g"]);
      const refs = await scoutfs(["get-referring-entries", ino, "-p", mp]);
      assert.equal(refs.stdout.split("\n").filter(Boolean).length, 2, refs.stdout + refs.stderr);
      assert.match(refs.stdout, /^dir \d+ pos \d+ type 8 name f$/m);

      // .hide. xattrs are hidden from listxattr and listed by list-hidden-xattrs
      sh(`python3 -c "import os; os.setxattr('${mp}/g', 'user.visible', b'1'); ` +
        `os.setxattr('${mp}/g', 'scoutfs.hide.secret', b'2')"`);
      assert.equal(sh(`python3 -c "import os; print(os.listxattr('${mp}/g'))"`).trim(),
        "['user.visible']");
      const hid = await scoutfs(["list-hidden-xattrs", `${mp}/g`]);
      assert.equal(hid.stdout, "scoutfs.hide.secret\n", hid.stderr);

      // fiemap and allocated inodes
      const fm = await scoutfs(["get-fiemap", "-L", `${mp}/d/f`]);
      assert.equal(fm.code, 0, fm.stderr);
      assert.match(fm.stdout, /^0: offset: 0 length: 3 flags: \.\.[.L]\n/);
      const inos = await scoutfs(["get-allocated-inos", "-i", ino, "-p", mp]);
      assert.ok(inos.stdout.split("\n").includes(ino), inos.stdout + inos.stderr);

      // the status directory
      const sd = (await fsp.readdir("/run/scoutfs")).filter((n) => n.startsWith("f."))
        .map((n) => path.join("/run/scoutfs", n));
      const mine: string[] = [];
      for (const d of sd) {
        // other mounts' dirs, or empty ones left by a killed daemon, are not ours
        const f = await fsp.readFile(path.join(d, "fsid"), "utf8").catch(() => "");
        if (f.trim() === fsid) mine.push(d);
      }
      assert.equal(mine.length, 1, `status dirs ${sd.join(" ")}`);
      const status = mine[0]!;
      assert.equal(await fsp.readFile(path.join(status, "quorum/is_leader"), "utf8"), "1");
      const rid = (await scoutfs(["statfs", "-p", mp, "-s", "rid"])).stdout.trim();
      assert.equal((await fsp.readFile(path.join(status, "rid"), "utf8")).trim(), rid);
      const opt = path.join(status, "mount_options/orphan_scan_delay_ms");
      const was = await fsp.readFile(opt, "utf8");
      await assert.rejects(fsp.writeFile(opt, "5"), { code: "EINVAL" });
      assert.equal(await fsp.readFile(opt, "utf8"), was);
      await fsp.writeFile(opt, "20000");
      assert.equal((await fsp.readFile(opt, "utf8")).trim(), "20000");
      const ctr = await scoutfs(["counters", status]);
      assert.equal(ctr.code, 0, ctr.stderr);
      assert.match(ctr.stdout, /^net_requests_sent +\d+$/m);
      await m.umount();
      await assert.rejects(fsp.stat(status), { code: "ENOENT" });
    } finally {
      await m.cleanup();
    }
  } finally {
    await removeVolume(vol);
  }
});
