/*
 * Goal: mount options (src/core/options.ts) parse, default, refuse and render as upstream's
 * options.c does: every option at its defaults and at both edges of its range (and one past
 * each), every error text, kernel number syntax (hex, octal, '+', trailing newline), the
 * generic mount(8) flags, the /proc/mounts text, the mount_options/ files (which are
 * read-only, what they show, what a write accepts) and volume option writes. kstrto.ts is
 * tested here too, as the number rules behind all of it.
 *
 * Method: table-driven calls of the pure functions; errors are checked by class, errno code
 * and the exact `detail` text.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  DATA_PREALLOC_BLOCKS_MAX, defaultMountOptions, MountOptionError, type MountOptions,
  parseMountOptions, parseVolumeOptionWrite, renderMountOptions, renderProcMountsOptions,
  showVolumeOption, storeSysfsMountOption, SYSFS_MOUNT_OPTIONS, sysfsMountOption,
} from "../../src/core/options.js";
import { kstrtoint, kstrtoll, kstrtoull, U64_MAX } from "../../src/util/kstrto.js";

const META = "metadev_path=/dev/meta";

function parse(extra: string): MountOptions {
  return parseMountOptions(extra === "" ? META : `${META},${extra}`);
}

function refused(fn: () => unknown, code: string, detail: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof MountOptionError, `not a MountOptionError: ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.detail, detail);
    return true;
  });
}

test("kstrto: kernel number syntax", () => {
  const ok = (r: ReturnType<typeof kstrtoull>): bigint => {
    assert.ok(r.ok, JSON.stringify(r, (_k, v: unknown) => (typeof v === "bigint" ? `${v}` : v)));
    return r.value;
  };
  assert.equal(ok(kstrtoull("123")), 123n);
  assert.equal(ok(kstrtoull("+123\n")), 123n);
  assert.equal(ok(kstrtoull("0x1F")), 31n);
  assert.equal(ok(kstrtoull("0X1f")), 31n);
  assert.equal(ok(kstrtoull("017")), 15n);
  assert.equal(ok(kstrtoull("0")), 0n);
  assert.equal(ok(kstrtoull("18446744073709551615")), U64_MAX);
  assert.equal(ok(kstrtoll("-5")), -5n);
  assert.equal(ok(kstrtoll("-9223372036854775808")), -(1n << 63n));
  for (const bad of ["", "\n", "x", "08", "0x", "1 ", " 1", "1\n\n", "-", "--1", "1a", "-+1"]) {
    const r = bad.startsWith("-") ? kstrtoll(bad) : kstrtoull(bad);
    assert.deepEqual(r, { ok: false, errno: "EINVAL" }, `'${JSON.stringify(bad)}'`);
  }
  assert.deepEqual(kstrtoull("-1"), { ok: false, errno: "EINVAL" });
  assert.deepEqual(kstrtoull("18446744073709551616"), { ok: false, errno: "ERANGE" });
  assert.deepEqual(kstrtoll("9223372036854775808"), { ok: false, errno: "ERANGE" });
  assert.deepEqual(kstrtoll("-9223372036854775809"), { ok: false, errno: "ERANGE" });
  assert.deepEqual(kstrtoint("2147483648"), { ok: false, errno: "ERANGE" });
  assert.equal(ok(kstrtoint("-2147483648")), -(1n << 31n));
});

test("defaults: metadev_path alone", () => {
  const o = parseMountOptions(META);
  assert.deepEqual(o, { ...defaultMountOptions("/dev/meta") });
  assert.equal(o.metadevPath, "/dev/meta");
  assert.equal(o.quorumSlotNr, null);
  assert.equal(o.acl, true);
  assert.equal(o.dataPreallocBlocks, 2048);
  assert.equal(o.dataPreallocContigOnly, true);
  assert.equal(o.inoAllocPerLock, 1024);
  assert.equal(o.lockIdleCount, 10_000);
  assert.equal(o.logMergeWaitTimeoutMs, 500);
  assert.equal(o.orphanScanDelayMs, 10_000);
  assert.equal(o.quorumHeartbeatTimeoutMs, 10_000);
  assert.equal(o.tcpKeepaliveTimeoutMs, 24_000);
  assert.deepEqual(o.vfs, { readOnly: false, fuseFlags: [], ignored: [] });
});

test("metadev_path: required, nonempty, last one wins, value may hold '='", () => {
  refused(() => parseMountOptions(""), "EINVAL",
    'Required mount option "metadev_path" not found');
  refused(() => parseMountOptions("quorum_slot_nr=0,acl"), "EINVAL",
    'Required mount option "metadev_path" not found');
  refused(() => parseMountOptions("metadev_path="), "EINVAL",
    'Unknown or malformed option, "metadev_path="');
  refused(() => parseMountOptions("metadev_path"), "EINVAL",
    'Unknown or malformed option, "metadev_path"');
  assert.equal(parseMountOptions("metadev_path=/a,metadev_path=/b").metadevPath, "/b");
  assert.equal(parseMountOptions("metadev_path=/a=b").metadevPath, "/a=b");
  assert.equal(parseMountOptions(",,metadev_path=/m,,").metadevPath, "/m");
  refused(() => parseMountOptions(`metadev_path=/${"x".repeat(4095)}`), "EINVAL",
    "mount options are longer than 4095 bytes");
});

test("unknown and malformed options, checked before the missing metadev_path", () => {
  for (const bad of ["_bad", "acl=1", "noacl=0", "quorum_slot_nr=", "ACL", "lock_idle_count",
    "remount", "context=foo"]) {
    refused(() => parse(bad), "EINVAL", `Unknown or malformed option, "${bad}"`);
  }
  refused(() => parseMountOptions("_bad,metadev_path=/m,quorum_slot_nr=0"), "EINVAL",
    'Unknown or malformed option, "_bad"');
  refused(() => parseMountOptions("_bad"), "EINVAL", 'Unknown or malformed option, "_bad"');
});

test("acl / noacl: the last one wins", () => {
  assert.equal(parse("noacl").acl, false);
  assert.equal(parse("noacl,acl").acl, true);
  assert.equal(parse("acl,noacl").acl, false);
});

test("quorum_slot_nr: 0..14, once", () => {
  assert.equal(parse("quorum_slot_nr=0").quorumSlotNr, 0);
  assert.equal(parse("quorum_slot_nr=14").quorumSlotNr, 14);
  assert.equal(parse("quorum_slot_nr=0xe").quorumSlotNr, 14);
  const msg = "invalid quorum_slot_nr option, must be between 0 and 14";
  refused(() => parse("quorum_slot_nr=15"), "EINVAL", msg);
  refused(() => parse("quorum_slot_nr=-1"), "EINVAL", msg);
  refused(() => parse("quorum_slot_nr=one"), "EINVAL", msg);
  refused(() => parse("quorum_slot_nr=1x"), "EINVAL", msg);
  refused(() => parse("quorum_slot_nr=4294967296"), "ERANGE", msg);
  refused(() => parse("quorum_slot_nr=1,quorum_slot_nr=1"), "EINVAL",
    "multiple quorum_slot_nr options provided, only provide one.");
});

test("orphan_scan_delay_ms: 100..60000, upstream's texts at mount and in sysfs", () => {
  assert.equal(parse("orphan_scan_delay_ms=100").orphanScanDelayMs, 100);
  assert.equal(parse("orphan_scan_delay_ms=60000").orphanScanDelayMs, 60_000);
  const msg = "invalid orphan_scan_delay_ms option, must be between 100 and 60000";
  refused(() => parse("orphan_scan_delay_ms=99"), "EINVAL", msg);
  refused(() => parse("orphan_scan_delay_ms=60001"), "EINVAL", msg);
  refused(() => parse("orphan_scan_delay_ms=soon"), "EINVAL", msg);
  const o = parse("");
  assert.equal(storeSysfsMountOption(o, "orphan_scan_delay_ms", "250\n").orphanScanDelayMs, 250);
  refused(() => storeSysfsMountOption(o, "orphan_scan_delay_ms", "99\n"), "EINVAL",
    "invalid orphan_scan_delay_ms value written to options sysfs file, must be between 100 " +
    "and 60000");
});

/** The options upstream's later verify_*() functions check, with their ranges. */
const VERIFIED: [name: string, key: keyof MountOptions, min: number, max: number][] = [
  ["data_prealloc_blocks", "dataPreallocBlocks", 1, DATA_PREALLOC_BLOCKS_MAX],
  ["ino_alloc_per_lock", "inoAllocPerLock", 1, 1024],
  ["lock_idle_count", "lockIdleCount", 32, 100_000],
  ["log_merge_wait_timeout_ms", "logMergeWaitTimeoutMs", 100, 60_000],
  ["quorum_heartbeat_timeout_ms", "quorumHeartbeatTimeoutMs", 2000, 60_000],
];

test("range-checked options: both edges, one past each, junk", () => {
  assert.equal(DATA_PREALLOC_BLOCKS_MAX, 2 ** 52 - 1, "SCOUTFS_BLOCK_SM_MAX");
  for (const [name, key, min, max] of VERIFIED) {
    assert.equal(parse(`${name}=${min}`)[key], min, name);
    assert.equal(parse(`${name}=${max}`)[key], max, name);
    const range = `must be between ${min} and ${max}`;
    refused(() => parse(`${name}=${min - 1}`), "EINVAL",
      `invalid ${name} value ${min - 1}, ${range}`);
    refused(() => parse(`${name}=${max + 1}`), "EINVAL",
      `invalid ${name} value ${max + 1}, ${range}`);
    refused(() => parse(`${name}=lots`), "EINVAL", `failed to parse ${name} value`);
    refused(() => parse(`${name}=12abc`), "EINVAL", `failed to parse ${name} value`);
  }
  // u64 options refuse negatives as unparsable; int options print them
  refused(() => parse("data_prealloc_blocks=-1"), "EINVAL",
    "failed to parse data_prealloc_blocks value");
  refused(() => parse("lock_idle_count=-1"), "EINVAL",
    "invalid lock_idle_count value -1, must be between 32 and 100000");
  refused(() => parse("lock_idle_count=2147483648"), "EINVAL",
    "failed to parse lock_idle_count value");
  assert.equal(parse("data_prealloc_blocks=0x800").dataPreallocBlocks, 2048);
  assert.equal(parse("lock_idle_count=0100").lockIdleCount, 64);
  assert.equal(parse("lock_idle_count=+64").lockIdleCount, 64);
  assert.equal(parse("lock_idle_count=64,lock_idle_count=65").lockIdleCount, 65);
});

test("data_prealloc_contig_only: 0 or 1", () => {
  assert.equal(parse("data_prealloc_contig_only=0").dataPreallocContigOnly, false);
  assert.equal(parse("data_prealloc_contig_only=1").dataPreallocContigOnly, true);
  refused(() => parse("data_prealloc_contig_only=2"), "EINVAL",
    "invalid data_prealloc_contig_only value 2, must be 0 or 1");
  refused(() => parse("data_prealloc_contig_only=-1"), "EINVAL",
    "invalid data_prealloc_contig_only value -1, must be 0 or 1");
  refused(() => parse("data_prealloc_contig_only=yes"), "EINVAL",
    "failed to parse data_prealloc_contig_only value");
});

test("tcp_keepalive_timeout_ms: larger than 3000", () => {
  assert.equal(parse("tcp_keepalive_timeout_ms=3001").tcpKeepaliveTimeoutMs, 3001);
  assert.equal(parse("tcp_keepalive_timeout_ms=2147483647").tcpKeepaliveTimeoutMs, 2 ** 31 - 1);
  refused(() => parse("tcp_keepalive_timeout_ms=3000"), "EINVAL",
    "invalid tcp_keepalive_timeout_ms value 3000, must be larger than 3000");
  refused(() => parse("tcp_keepalive_timeout_ms=2147483648"), "EINVAL",
    "failed to parse tcp_keepalive_timeout_ms value");
  refused(() => parse("tcp_keepalive_timeout_ms=x"), "EINVAL",
    "failed to parse tcp_keepalive_timeout_ms value");
});

test("generic mount(8) options: flags resolved for the FUSE mount, userspace ones ignored", () => {
  const o = parse("rw,nosuid,nodev,noexec,noatime,_netdev,defaults,nofail,x-systemd.auto," +
    "comment=hi,mand,sync,async,dirsync,nodiratime,lazytime,nosymfollow");
  assert.deepEqual(o.vfs, { readOnly: false,
    fuseFlags: ["nosuid", "nodev", "noexec", "dirsync", "noatime", "nodiratime", "lazytime",
      "nosymfollow"],
    ignored: ["_netdev", "defaults", "nofail", "x-systemd.auto", "comment=hi", "mand"] });
  assert.deepEqual(parse("ro").vfs.fuseFlags, ["ro"]);
  assert.equal(parse("ro").vfs.readOnly, true);
  assert.equal(parse("ro,rw").vfs.readOnly, false);
  assert.deepEqual(parse("nosuid,suid,exec,noexec,dev").vfs.fuseFlags, ["noexec"]);
  assert.deepEqual(parse("noatime,atime").vfs.fuseFlags, []);
  assert.deepEqual(parse("strictatime").vfs.fuseFlags, ["strictatime"]);
  assert.deepEqual(parse("strictatime,nostrictatime").vfs.fuseFlags, []);
  assert.deepEqual(parse("noatime,relatime").vfs.fuseFlags, []);
  assert.deepEqual(parse("norelatime").vfs.fuseFlags, []);
});

test("rendering: show_options order and the /proc/mounts options field", () => {
  assert.equal(renderMountOptions(parse("quorum_slot_nr=3")),
    "acl,data_prealloc_blocks=2048,data_prealloc_contig_only=1,ino_alloc_per_lock=1024," +
    "lock_idle_count=10000,log_merge_wait_timeout_ms=500,metadev_path=/dev/meta," +
    "orphan_scan_delay_ms=10000,quorum_heartbeat_timeout_ms=10000,quorum_slot_nr=3," +
    "tcp_keepalive_timeout_ms=24000");
  const o = parseMountOptions("metadev_path=/dev/my meta,noacl,data_prealloc_contig_only=0," +
    "ro,nosuid,noatime");
  assert.equal(renderProcMountsOptions(o),
    "ro,nosuid,noatime,data_prealloc_blocks=2048,data_prealloc_contig_only=0," +
    "ino_alloc_per_lock=1024,lock_idle_count=10000,log_merge_wait_timeout_ms=500," +
    "metadev_path=/dev/my\\040meta,noacl,orphan_scan_delay_ms=10000," +
    "quorum_heartbeat_timeout_ms=10000,tcp_keepalive_timeout_ms=24000");
  assert.ok(renderProcMountsOptions(parse("")).startsWith("rw,relatime,acl,"));
  // what is rendered parses back to the same options (paths without special characters)
  const back = parseMountOptions(renderMountOptions(parse("noacl,lock_idle_count=99")));
  assert.deepEqual(back, parse("noacl,lock_idle_count=99"));
});

test("mount_options/ files: names, access, content", () => {
  assert.deepEqual(SYSFS_MOUNT_OPTIONS.map((s) => `${s.name}:${s.access}`), [
    "data_prealloc_blocks:rw", "data_prealloc_contig_only:rw", "ino_alloc_per_lock:rw",
    "lock_idle_count:rw", "log_merge_wait_timeout_ms:rw", "metadev_path:ro",
    "orphan_scan_delay_ms:rw", "quorum_heartbeat_timeout_ms:rw", "quorum_slot_nr:ro"]);
  const o = parse("quorum_slot_nr=2");
  const shown = Object.fromEntries(SYSFS_MOUNT_OPTIONS.map((s) => [s.name, s.show(o)]));
  assert.deepEqual(shown, {
    data_prealloc_blocks: "2048", data_prealloc_contig_only: "1", ino_alloc_per_lock: "1024",
    lock_idle_count: "10000", log_merge_wait_timeout_ms: "500", metadev_path: "/dev/meta",
    orphan_scan_delay_ms: "10000", quorum_heartbeat_timeout_ms: "10000",
    quorum_slot_nr: "2\n" });
  assert.equal(sysfsMountOption("quorum_slot_nr")!.show(parse("")), "-1\n");
  assert.equal(sysfsMountOption("tcp_keepalive_timeout_ms"), undefined);
  assert.equal(sysfsMountOption("metadev_path")!.store, undefined);
});

test("mount_options/ writes: kstrtol/kstrtoull rules, ranges, read-only files", () => {
  const o = parse("");
  const st = (name: Parameters<typeof storeSysfsMountOption>[1], text: string): MountOptions =>
    storeSysfsMountOption(o, name, text);
  assert.equal(st("data_prealloc_blocks", "32\n").dataPreallocBlocks, 32);
  assert.equal(st("data_prealloc_contig_only", "0").dataPreallocContigOnly, false);
  assert.equal(st("ino_alloc_per_lock", "0x10\n").inoAllocPerLock, 16);
  assert.equal(st("lock_idle_count", "32").lockIdleCount, 32);
  assert.equal(st("log_merge_wait_timeout_ms", "60000\n").logMergeWaitTimeoutMs, 60_000);
  assert.equal(st("quorum_heartbeat_timeout_ms", "2000\n").quorumHeartbeatTimeoutMs, 2000);
  assert.equal(o.lockIdleCount, 10_000, "the old options are unchanged");
  refused(() => st("quorum_heartbeat_timeout_ms", "1999\n"), "EINVAL",
    "invalid quorum_heartbeat_timeout_ms value 1999, must be between 2000 and 60000");
  refused(() => st("quorum_heartbeat_timeout_ms", "-2000\n"), "EINVAL",
    "failed to parse quorum_heartbeat_timeout_ms value");
  refused(() => st("lock_idle_count", "5 \n"), "EINVAL", "failed to parse lock_idle_count value");
  refused(() => st("lock_idle_count", ""), "EINVAL", "failed to parse lock_idle_count value");
  refused(() => st("lock_idle_count", "-40"), "EINVAL",
    "invalid lock_idle_count value -40, must be between 32 and 100000");
  refused(() => st("data_prealloc_contig_only", "2\n"), "EINVAL",
    "invalid data_prealloc_contig_only value 2, must be 0 or 1");
  // only the first 19 characters are looked at, as upstream's nullterm[20]
  assert.equal(st("lock_idle_count", `${"0".repeat(15)}1000junk`).lockIdleCount, 0o1000);
  refused(() => st("metadev_path", "/dev/other\n"), "EACCES",
    "mount option metadev_path cannot be changed");
  refused(() => st("quorum_slot_nr", "1\n"), "EACCES",
    "mount option quorum_slot_nr cannot be changed");
});

test("volume option writes: empty, clear, set, errors; shown without a newline", () => {
  const w = (t: string): ReturnType<typeof parseVolumeOptionWrite> =>
    parseVolumeOptionWrite("data_alloc_zone_blocks", t);
  assert.deepEqual(w(""), { kind: "none" });
  assert.deepEqual(w("\n"), { kind: "clear" });
  assert.deepEqual(w("\r\n"), { kind: "clear" });
  assert.deepEqual(w("1048576\n"), { kind: "set", value: 1_048_576 });
  assert.deepEqual(w("0x100000"), { kind: "set", value: 1_048_576 });
  refused(() => w("many\n"), "EINVAL", "invalid value written to data_alloc_zone_blocks");
  refused(() => w("99999999999999999999\n"), "ERANGE",
    "invalid value written to data_alloc_zone_blocks");
  refused(() => w("1".repeat(32)), "ERANGE",
    "write to data_alloc_zone_blocks longer than 31 characters");
  refused(() => w("9007199254740992"), "EINVAL",
    "data_alloc_zone_blocks value 9007199254740992 is too large");
  assert.equal(showVolumeOption(null), "");
  assert.equal(showVolumeOption(1_048_576), "1048576");
});
