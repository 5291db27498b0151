/*
 * Goal: the mount daemon behaves as a mounted filesystem must (issue 4 point 4): `mount -t
 * scoutfs` through the installed /sbin/mount.scoutfs helper mounts, ordinary tools work,
 * `umount` commits and the daemon exits 0, the next mount sees everything; bad options and
 * wrong devices (swapped, two metadata, two data, foreign, another volume's) fail with
 * upstream's message and change nothing; after kill -9 the watchdog unmounts and the next
 * mount recovers at once (the dead rid is fenced and reclaimed without waiting for it) with
 * every fsynced file intact.
 *
 * Method: volumes on sparse files in a temp dir, real mounts through bin/scoutfs and
 * mount(8); the harness (harness.ts) unmounts and kills only its own daemons in every path.
 * Skipped without /dev/fuse or root.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fsp from "node:fs/promises";
import { createHash } from "node:crypto";
import path from "node:path";
import { makeVolume, Mount, mountSkipReason, removeVolume, scoutfs, type Volume } from "./harness.js";

const skip = mountSkipReason();

async function withVolume(fn: (vol: Volume) => Promise<void>): Promise<void> {
  const vol = await makeVolume();
  try {
    await fn(vol);
  } finally {
    await removeVolume(vol);
  }
}

function sh(cmd: string): { status: number; out: string; err: string } {
  const r = spawnSync("bash", ["-c", cmd], { encoding: "utf8", timeout: 60_000 });
  return { status: r.status ?? 1, out: r.stdout, err: r.stderr };
}

test("mount -t scoutfs, ordinary tools, umount, remount keeps everything", { skip }, async () => {
  await withVolume(async (vol) => {
    const inst = await scoutfs(["install-mount-helper"]);
    assert.equal(inst.code, 0, inst.stderr);
    const mp = path.join(vol.dir, "mnt");
    await fsp.mkdir(mp);
    const m = new Mount(vol, mp);
    try {
      const r = sh(`mount -t scoutfs -o metadev_path=${vol.meta},quorum_slot_nr=0 ` +
        `${vol.data} ${mp}`);
      assert.equal(r.status, 0, r.err);
      const line = (await fsp.readFile("/proc/mounts", "utf8")).split("\n")
        .find((l) => l.split(" ")[1] === mp);
      assert.ok(line?.includes("fuse.scoutfs"), line);
      const w = sh(`set -e; cd ${mp}; mkdir -p d/e; echo hello > d/e/f; ln d/e/f d/g; ` +
        `ln -s e/f d/s; mv d/g d/h; cat d/s; stat -c '%h %s' d/h; ls d | tr '\\n' ' '`);
      assert.equal(w.status, 0, w.err);
      assert.equal(w.out, "hello\n2 6\ne h s ");
      const pid = m.daemonPid();
      assert.ok(pid !== null);
      await m.umount();
      assert.ok(!m.mounted());
      const m2 = await Mount.mount(vol);
      try {
        const r2 = sh(`cat ${mp}/d/e/f ${mp}/d/h; readlink ${mp}/d/s`);
        assert.equal(r2.out, "hello\nhello\ne/f\n");
      } finally {
        await m2.cleanup();
      }
      const f = await scoutfs(["fsck", vol.meta, vol.data]);
      assert.equal(f.code, 0, f.stdout + f.stderr);
    } finally {
      await m.cleanup();
    }
  });
});

test("bad options and wrong devices fail with upstream's messages, nothing changed",
  { skip }, async () => {
    await withVolume(async (vol) => {
      const other = await makeVolume("2G", "2G");
      try {
        const mp = path.join(vol.dir, "mnt");
        await fsp.mkdir(mp);
        const foreign = path.join(vol.dir, "foreign.img");
        spawnSync("truncate", ["-s", "1G", foreign]);
        const before = await digest(vol.meta);
        const cases: [string, string, RegExp][] = [
          [`quorum_slot_nr=0`, vol.data, /Required mount option "metadev_path" not found/],
          [`metadev_path=${vol.meta},bogus`, vol.data, /Unknown or malformed option/],
          [`metadev_path=${vol.meta},quorum_heartbeat_timeout_ms=5`, vol.data,
            /invalid quorum_heartbeat_timeout_ms value/],
          [`metadev_path=${vol.data}`, vol.meta, /meta_super META flag not set/],
          [`metadev_path=${vol.data}`, vol.data, /meta_super META flag not set/],
          [`metadev_path=${vol.meta}`, vol.meta, /data_super META flag set/],
          [`metadev_path=${vol.meta}`, other.data, /superblock UUID mismatch/],
          [`metadev_path=${foreign}`, vol.data, /could not get meta_super/],
          [`metadev_path=${vol.dir}/missing`, vol.data, /could not open metadev/],
          [`metadev_path=${vol.meta},quorum_slot_nr=7`, vol.data, /quorum/],
        ];
        for (const [opts, data, re] of cases) {
          const r = await scoutfs(["mount", "-o", opts, data, mp]);
          assert.equal(r.code, 32, `${opts}: ${r.stderr}`);
          assert.match(r.stderr, re, opts);
          assert.ok(!(await isMounted(mp)), opts);
        }
        assert.equal(await digest(vol.meta), before, "a refused mount wrote the device");
      } finally {
        await removeVolume(other);
      }
    });
  });

test("kill -9: the watchdog unmounts, the next mount recovers at once, fsynced files intact",
  { skip }, async () => {
    await withVolume(async (vol) => {
      const m = await Mount.mount(vol);
      try {
        const r = sh(`set -e; cd ${m.mp}; for i in 1 2 3; do echo data$i > f$i; done; ` +
          `python3 -c "import os; [os.fsync(os.open(f, os.O_RDONLY)) for f in ['f1','f2','f3']]";` +
          ` echo late > notsynced`);
        assert.equal(r.status, 0, r.err);
        await m.crash();
        assert.ok(!m.mounted(), "the watchdog should have unmounted");
        const t0 = Date.now();
        const m2 = await Mount.mount(vol);
        try {
          const ls = sh(`cat ${m2.mp}/f1 ${m2.mp}/f2 ${m2.mp}/f3`);
          assert.equal(ls.out, "data1\ndata2\ndata3\n");
          // recovery must not wait out the 30 s reconnect timeout for a dead local rid
          assert.ok(Date.now() - t0 < 25_000, `usable after ${Date.now() - t0} ms`);
        } finally {
          await m2.cleanup();
        }
        const f = await scoutfs(["fsck", vol.meta, vol.data]);
        assert.equal(f.code, 0, f.stdout + f.stderr);
      } finally {
        await m.cleanup();
      }
    });
  });

async function isMounted(mp: string): Promise<boolean> {
  const t = await fsp.readFile("/proc/mounts", "utf8");
  return t.split("\n").some((l) => l.split(" ")[1] === mp);
}

async function digest(p: string): Promise<string> {
  // the first 64 MiB hold the supers, quorum blocks and the first metadata blocks
  const fh = await fsp.open(p, "r");
  try {
    const b = Buffer.alloc(64 << 20);
    await fh.read(b, 0, b.length, 0);
    return createHash("sha256").update(b).digest("hex");
  } finally {
    await fh.close();
  }
}
