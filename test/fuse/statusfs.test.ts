/*
 * Goal: the status directory (src/fuse/statusfs.ts) served through the kernel looks and
 * behaves like upstream's sysfs directory: the layout, exact file contents (fsid/rid as
 * %016llx, is_leader without a newline, counters as "value\n"), live values on every read,
 * counters that appear later, modes and sizes, writes to mount_options/ validated (EINVAL
 * leaves the value alone, read-only files refuse to open for writing with EACCES), volume
 * options, triggers and extra entries written through their callbacks, multi-chunk readdir,
 * and `scoutfs counters` reading it.
 *
 * Method: this process mounts a status tree built over fake sources on a temporary
 * directory and drives it only with asynchronous calls: node's fs promises and child
 * processes (cat, ls, sh). Every path unmounts in a finally block; a budget timer and an
 * exit hook lazily unmount if something hangs. Skipped without /dev/fuse or root.
 */

import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { test, type TestContext } from "node:test";
import { promisify } from "node:util";
import { countersCommand } from "../../src/cli/cmd_counters.js";
import { type CliIo, runCli } from "../../src/cli/command.js";
import { type MountOptions, parseMountOptions } from "../../src/core/options.js";
import { realLogger } from "../../src/env/real/env.js";
import {
  buildStatusTree, mountStatusFs, type StatusMount, type StatusSource, statusDirName,
} from "../../src/fuse/statusfs.js";
import { Counters } from "../../src/util/counters.js";
import { FsError } from "../../src/util/errno.js";
import { Triggers } from "../../src/util/triggers.js";

const execFileP = promisify(execFile);
const BUDGET_MS = 30_000;
const FSID = 0x7a8659aabbccdd01n;
const RID = 0xb1166d0000000002n;
const ZONE_MIN = 1_048_576;

function skipReason(): string | false {
  if (!existsSync("/dev/fuse")) return "no /dev/fuse on this machine";
  if (process.getuid?.() !== 0) return "mounting FUSE here needs root";
  return false;
}

/** The fake mount whose state the directory shows. */
class Fake {
  readonly counters = new Counters();
  readonly triggers = new Triggers();
  opts: MountOptions = parseMountOptions("metadev_path=/dev/fake-meta,quorum_slot_nr=1");
  readonly applied: string[] = [];
  zone: number | null = null;
  leader = false;
  compactDelayMs = 10;

  source(): StatusSource {
    return {
      fsid: FSID, rid: RID, formatVersion: 2, dataDeviceMajMin: () => "7:3",
      counters: this.counters, triggers: this.triggers,
      mountOptions: {
        get: () => this.opts,
        set: (next, name) => {
          this.opts = next;
          this.applied.push(name);
        },
      },
      volumeOptions: {
        get: () => this.zone,
        set: async (_name, v) => {
          await new Promise((r) => setTimeout(r, 1)); // as an rpc would
          if (v !== null && v < ZONE_MIN) throw new FsError("EINVAL", "zone too small");
          this.zone = v;
        },
      },
      quorum: {
        statusText: () => `quorum_slot_nr 1\nterm 5\nrole ${this.leader ? 2 : 0}\n`,
        isLeaderText: () => (this.leader ? "1" : "0"),
      },
      extra: () => new Map([["srch", { kind: "dir", children: new Map([["compact_delay_ms", {
        kind: "file", mode: 0o644, read: () => `${this.compactDelayMs}`,
        write: (text: string) => { this.compactDelayMs = Number(text); } }]]) }]]),
    };
  }
}

async function cat(p: string): Promise<string> {
  return (await execFileP("cat", [p], { timeout: 10_000 })).stdout;
}

/** `echo VALUE > FILE` through the shell: a single write of "VALUE\n". */
async function echoTo(p: string, value: string): Promise<void> {
  await execFileP("sh", ["-c", 'echo "$1" > "$2"', "sh", value, p], { timeout: 10_000 });
}

async function expectCode(p: Promise<unknown>, code: string, what: string): Promise<void> {
  await assert.rejects(p, (e: NodeJS.ErrnoException) => {
    assert.equal(e.code, code, `${what}: ${e.message}`);
    return true;
  }, what);
}

async function isMounted(mp: string): Promise<boolean> {
  const text = await fsp.readFile("/proc/mounts", "utf8");
  return text.split("\n").some((l) => l.split(" ")[1] === mp);
}

async function layoutTests(t: TestContext, mp: string, fake: Fake): Promise<void> {
  await t.test("layout and fixed files", async () => {
    const ls = (await execFileP("ls", [mp])).stdout.split("\n").filter((l) => l !== "");
    assert.deepEqual(ls, ["counters", "data_device_maj_min", "format_version", "fsid",
      "mount_options", "quorum", "rid", "srch", "trigger", "volume_options"]);
    assert.equal(await cat(`${mp}/srch/compact_delay_ms`), "10");
    await echoTo(`${mp}/srch/compact_delay_ms`, "20");
    assert.equal(fake.compactDelayMs, 20);
    assert.equal(await cat(`${mp}/fsid`), "7a8659aabbccdd01\n");
    assert.equal(await cat(`${mp}/rid`), "b1166d0000000002\n");
    assert.equal(await cat(`${mp}/format_version`), "2\n");
    assert.equal(await cat(`${mp}/data_device_maj_min`), "7:3\n");
    assert.equal(statusDirName(FSID, RID), "f.7a8659.r.b1166d");
    const st = await fsp.stat(`${mp}/fsid`);
    assert.equal(st.mode, 0o100444);
    assert.equal(st.size, 17);
    assert.equal((await fsp.stat(`${mp}/mount_options/lock_idle_count`)).mode, 0o100644);
    assert.equal((await fsp.stat(`${mp}/counters`)).mode, 0o040755);
    await expectCode(fsp.stat(`${mp}/nope`), "ENOENT", "missing name");
    await expectCode(fsp.readFile(`${mp}/counters`), "EISDIR", "read a directory");
  });

  await t.test("quorum files are live; is_leader has no newline", async () => {
    assert.equal(await cat(`${mp}/quorum/is_leader`), "0");
    assert.equal(await cat(`${mp}/quorum/status`), "quorum_slot_nr 1\nterm 5\nrole 0\n");
    fake.leader = true;
    assert.equal(await cat(`${mp}/quorum/is_leader`), "1");
    assert.equal((await fsp.stat(`${mp}/quorum/is_leader`)).size, 1);
  });
}

async function counterTests(t: TestContext, mp: string, fake: Fake): Promise<void> {
  await t.test("counters: values live, new counters appear, many list in chunks", async () => {
    fake.counters.inc("lock_alloc", 3);
    fake.counters.inc("btree_read_error", 0);
    assert.equal(await cat(`${mp}/counters/lock_alloc`), "3\n");
    fake.counters.inc("lock_alloc");
    assert.equal(await cat(`${mp}/counters/lock_alloc`), "4\n");
    await expectCode(fsp.stat(`${mp}/counters/later`), "ENOENT", "not yet counted");
    fake.counters.inc("later", 7);
    assert.equal(await cat(`${mp}/counters/later`), "7\n");
    for (let i = 0; i < 300; i++) fake.counters.inc(`bulk_counter_number_${i}`, i);
    const names = await fsp.readdir(`${mp}/counters`);
    assert.equal(names.length, 303);
    assert.equal(new Set(names).size, 303, "no entry listed twice");
    assert.deepEqual(names.slice().sort(), fake.counters.entries().map(([n]) => n).sort());
  });

  await t.test("scoutfs counters reads the mounted directory", async () => {
    const io = { stdout: "", stderr: "",
      out(s: string): void { io.stdout += s; }, err(s: string): void { io.stderr += s; } };
    const code = await runCli(["counters", mp], io as CliIo, [countersCommand]);
    assert.equal(io.stderr, "");
    assert.equal(code, 0);
    const lines = io.stdout.split("\n");
    assert.equal(lines.length, 304);
    // names pad to bulk_counter_number_299 (23), values to 299 (3)
    assert.equal(lines[0], "btree_read_error          0");
    assert.ok(lines.includes("lock_alloc                4"), io.stdout.slice(0, 400));
  });
}

async function optionTests(t: TestContext, mp: string, fake: Fake,
  refusals: string[]): Promise<void> {
  const mo = `${mp}/mount_options`;
  await t.test("mount_options: upstream contents", async () => {
    assert.equal(await cat(`${mo}/metadev_path`), "/dev/fake-meta");
    assert.equal(await cat(`${mo}/quorum_slot_nr`), "1\n");
    assert.equal(await cat(`${mo}/orphan_scan_delay_ms`), "10000");
    const ls = (await fsp.readdir(mo)).sort();
    assert.deepEqual(ls, ["data_prealloc_blocks", "data_prealloc_contig_only",
      "ino_alloc_per_lock", "lock_idle_count", "log_merge_wait_timeout_ms", "metadev_path",
      "orphan_scan_delay_ms", "quorum_heartbeat_timeout_ms", "quorum_slot_nr"]);
  });

  await t.test("mount_options: good writes apply, bad ones are EINVAL and change nothing",
    async () => {
      await echoTo(`${mo}/orphan_scan_delay_ms`, "250");
      assert.equal(fake.opts.orphanScanDelayMs, 250);
      assert.equal(await cat(`${mo}/orphan_scan_delay_ms`), "250");
      await fsp.writeFile(`${mo}/quorum_heartbeat_timeout_ms`, "0x7d0");
      assert.equal(fake.opts.quorumHeartbeatTimeoutMs, 2000);
      assert.deepEqual(fake.applied, ["orphan_scan_delay_ms", "quorum_heartbeat_timeout_ms"]);
      await expectCode(fsp.writeFile(`${mo}/quorum_heartbeat_timeout_ms`, "1999\n"), "EINVAL",
        "below range");
      await expectCode(fsp.writeFile(`${mo}/lock_idle_count`, "many\n"), "EINVAL", "junk");
      await assert.rejects(echoTo(`${mo}/data_prealloc_contig_only`, "2"), "shell write");
      assert.equal(await cat(`${mo}/quorum_heartbeat_timeout_ms`), "2000");
      assert.equal(fake.applied.length, 2);
      assert.deepEqual(refusals, [
        "mount_options/quorum_heartbeat_timeout_ms: invalid quorum_heartbeat_timeout_ms " +
        "value 1999, must be between 2000 and 60000",
        "mount_options/lock_idle_count: failed to parse lock_idle_count value",
        "mount_options/data_prealloc_contig_only: invalid data_prealloc_contig_only value 2, " +
        "must be 0 or 1"]);
    });

  await t.test("read-only files refuse to open for writing, even for root", async () => {
    await expectCode(fsp.writeFile(`${mo}/metadev_path`, "/dev/x"), "EACCES", "ro option");
    await expectCode(fsp.writeFile(`${mp}/fsid`, "1"), "EACCES", "fsid");
    await expectCode(fsp.open(`${mp}/counters/lock_alloc`, "r+"), "EACCES", "counter");
    await expectCode(fsp.chmod(`${mp}/fsid`, 0o666), "EPERM", "chmod");
    await expectCode(fsp.writeFile(`${mp}/new_file`, "x"), "EACCES", "create");
    await expectCode(fsp.mkdir(`${mp}/new_dir`), "EPERM", "mkdir");
    await expectCode(fsp.unlink(`${mp}/fsid`), "EPERM", "unlink");
    await expectCode(fsp.rename(`${mp}/fsid`, `${mp}/fsid2`), "EPERM", "rename");
  });
}

async function writableTests(t: TestContext, mp: string, fake: Fake): Promise<void> {
  await t.test("volume_options: empty when unset, set, refused by the server, cleared",
    async () => {
      const f = `${mp}/volume_options/data_alloc_zone_blocks`;
      assert.equal(await cat(f), "");
      await echoTo(f, String(ZONE_MIN));
      assert.equal(fake.zone, ZONE_MIN);
      assert.equal(await cat(f), String(ZONE_MIN));
      await expectCode(fsp.writeFile(f, "5\n"), "EINVAL", "server refuses");
      await expectCode(fsp.writeFile(f, "x\n"), "EINVAL", "junk");
      assert.equal(fake.zone, ZONE_MIN);
      await echoTo(f, "");
      assert.equal(fake.zone, null);
      assert.equal(await cat(f), "");
    });

  await t.test("trigger: arm by writing 1, read 0/1, fires once", async () => {
    const f = `${mp}/trigger/srch_force_log_rotate`;
    assert.equal(await cat(f), "0\n");
    await echoTo(f, "1");
    assert.equal(await cat(f), "1\n");
    assert.equal(fake.triggers.fire("srch_force_log_rotate"), true);
    assert.equal(await cat(f), "0\n");
    assert.equal(fake.triggers.fire("srch_force_log_rotate"), false);
    await expectCode(fsp.writeFile(f, "on\n"), "EINVAL", "junk");
    assert.deepEqual((await fsp.readdir(`${mp}/trigger`)).sort(),
      fake.triggers.names().sort());
  });
}

test("status directory through the kernel", { skip: skipReason() }, async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "statusfs-"));
  const mp = path.join(dir, "f.7a8659.r.b1166d");
  const exitHook = (): void => {
    spawnSync("umount", ["-l", mp], { timeout: 5000, stdio: "ignore" });
  };
  process.on("exit", exitHook);
  const fake = new Fake();
  const refusals: string[] = [];
  let m: StatusMount | null = null;
  const budget = setTimeout(() => {
    process.stderr.write(`statusfs test over budget; unmounting ${mp}\n`);
    void execFileP("umount", ["-l", mp]).catch(() => undefined);
  }, BUDGET_MS);
  try {
    m = await mountStatusFs(buildStatusTree(fake.source()), { mountpoint: mp,
      logger: realLogger({ logLevel: "warn" }),
      onRefusedWrite: (p, e) => refusals.push(`${p}: ${e.message.replace(/^EINVAL: /, "")}`) });
    await layoutTests(t, mp, fake);
    await counterTests(t, mp, fake);
    await optionTests(t, mp, fake, refusals);
    await writableTests(t, mp, fake);
  } finally {
    clearTimeout(budget);
    if (m !== null) await m.unmount().catch(() => undefined);
    if (await isMounted(mp)) await execFileP("umount", ["-l", mp]).catch(() => undefined);
    process.off("exit", exitHook);
    assert.equal(await isMounted(mp), false, "mount left behind");
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
