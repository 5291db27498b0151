/*
 * Goal: `scoutfs mkfs` refuses everything upstream refuses, with upstream's messages and exit
 * statuses, and a refused mkfs changes nothing on either device; an accepted one writes a
 * volume and prints upstream's "Created scoutfs filesystem:" block exactly.
 *
 * Method: sparse files under os.tmpdir() stand in for the devices (a fresh directory per
 * test, removed in a finally). Before each refused run the files are filled with marker
 * bytes (and, where the test needs one, a foreign or scoutfs signature); their size and
 * sha256 must be the same afterwards. The command is built with makeMkfsCommand() and fixed
 * random bytes and clock so the output, fsid and uuid are known, and run through runCli()
 * so the dispatcher's "scoutfs: mkfs failed: ..." lines are part of what is compared.
 * Successful volumes are checked by decoding the super written to each device.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, open, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { runCli, type CliIo } from "../../src/cli/command.js";
import { makeMkfsCommand, type MkfsDeps } from "../../src/cli/mkfs.js";
import { decodeSuper, SUPER_OFFSET, SUPER_SIZE, type SuperBlock } from "../../src/core/format.js";

const MiB = 1024 * 1024;
const SLOT0 = "0,127.0.0.1,19700";
const TRY = "Try `mkfs --help' or `mkfs --usage' for more information.\n";

/** Deterministic identity: fsid bytes 01..08, uuid bytes 10..1f, time 1700000000.123456789. */
const fixedDeps: MkfsDeps = {
  randomBytes: (n) => Buffer.from(Array.from({ length: n }, (_, i) => (n === 8 ? 1 : 0x10) + i)),
  now: () => ({ sec: 1700000000n, nsec: 123456789 }),
};
const FSID_HEX = "807060504030201";
const UUID_STR = "10111213-1415-4617-9819-1a1b1c1d1e1f";

interface Devs {
  dir: string;
  meta: string;
  data: string;
}

/** Runs body with two sparse files (sizes in bytes); the directory is removed afterwards. */
async function withDevices(metaBytes: number, dataBytes: number,
  body: (d: Devs) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "scoutfs-cli-mkfs-"));
  try {
    const d = { dir, meta: join(dir, "meta"), data: join(dir, "data") };
    await writeFile(d.meta, "");
    await writeFile(d.data, "");
    await truncate(d.meta, metaBytes);
    await truncate(d.data, dataBytes);
    await body(d);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const io: CliIo = { out: (t) => { out += t; }, err: (t) => { err += t; } };
  const code = await runCli(argv, io, [makeMkfsCommand(fixedDeps)]);
  return { code, out, err };
}

async function writeAt(path: string, offset: number, bytes: Buffer): Promise<void> {
  const fh = await open(path, "r+");
  try {
    await fh.write(bytes, 0, bytes.length, offset);
  } finally {
    await fh.close();
  }
}

/** Marker bytes at the places mkfs would write (start, super, quorum blocks, metadata). */
async function scribble(path: string): Promise<void> {
  for (const off of [0, 4096, SUPER_OFFSET, SUPER_OFFSET + SUPER_SIZE, 2 * 65536, 3 * 65536]) {
    await writeAt(path, off + 7, Buffer.from(`marker@${off}`));
  }
}

async function readSuper(path: string, isMeta: boolean): Promise<SuperBlock> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.alloc(SUPER_SIZE);
    await fh.read(buf, 0, SUPER_SIZE, SUPER_OFFSET);
    return decodeSuper(buf, isMeta);
  } finally {
    await fh.close();
  }
}

async function fingerprint(path: string): Promise<string> {
  const size = (await stat(path)).size;
  return `${size}:${createHash("sha256").update(await readFile(path)).digest("hex")}`;
}

/** Runs a mkfs that must be refused and checks neither device changed. */
async function refused(d: Devs, argv: string[]): Promise<{ code: number; out: string;
  err: string }> {
  const before = [await fingerprint(d.meta), await fingerprint(d.data)];
  const r = await run(argv);
  assert.deepEqual([await fingerprint(d.meta), await fingerprint(d.data)], before,
    `devices changed by: ${argv.join(" ")}`);
  return r;
}

const SMALL_WARN = (meta: string, data: string): string =>
  `${meta} too small for min 64.00GB meta device, allowing with -A\n` +
  `${data} too small for min 64.00GB data device, allowing with -A\n`;

function createdBlock(d: Devs, metaBlocks: string, dataBlocks: string, vers = 2,
  slots = "0: 127.0.0.1:19700\n"): string {
  return "Created scoutfs filesystem:\n" +
    `  meta device path:       ${d.meta}\n` +
    `  data device path:       ${d.data}\n` +
    `  fsid:                   ${FSID_HEX}\n` +
    `  uuid:                   ${UUID_STR}\n` +
    `  format version:         ${vers}\n` +
    `  64KB metadata blocks:   ${metaBlocks}\n` +
    `  4KB data blocks:        ${dataBlocks}\n` +
    "  quorum config version:  1\n" +
    `  quorum slots:           ${slots}`;
}

test("refuses devices under 64 GiB without -A, and below core's minimum even with -A",
  async () => {
    await withDevices(100 * MiB, 20 * MiB, async (d) => {
      await scribble(d.meta);
      await scribble(d.data);
      assert.deepEqual(await refused(d, ["mkfs", "-f", "-Q", SLOT0, d.meta, d.data]), {
        code: 1, out: "",
        err: "100.00MB too small for min 64.00GB meta device\n" +
          "scoutfs: mkfs failed: Invalid argument (22)\n",
      });
      assert.deepEqual(await refused(d, ["mkfs", "-f", "-A", "-m", "64M", "-Q", SLOT0, d.meta,
        d.data]), {
        code: 1, out: "Limiting use of 100.00MB meta device to 64.00MB\n",
        err: SMALL_WARN("64.00MB", "20.00MB") +
          "64.00MB too small for min 128.00MB meta device, even with -A\n" +
          "scoutfs: mkfs failed: Invalid argument (22)\n",
      });
    });
  });

test("refuses bad and duplicate quorum slots with upstream's messages", async () => {
  await withDevices(MiB, MiB, async (d) => {
    await scribble(d.meta);
    const dev = [d.meta, d.data];
    assert.deepEqual(await refused(d, ["mkfs", "-A", "-Q", "15,127.0.0.1,19700", ...dev]), {
      code: 64,
      out: "invalid nr '15' in quorum slot '15,127.0.0.1,19700', must be between 0 and 14\n",
      err: "mkfs: must specify at least one quorum slot with --quorum-slot|-Q\n" + TRY,
    });
    assert.deepEqual(await refused(d, ["mkfs", "-Q", SLOT0, "-Q", "1,300.0.0.1,5", ...dev]), {
      code: 64, out: "invalid ipv4 address '300.0.0.1' in quorum slot '1,300.0.0.1,5'\n",
      err: "mkfs: no metadata device argument given\n" + TRY,
    });
    assert.deepEqual(await refused(d, ["mkfs", "-Q", SLOT0, "-Q", "0,127.0.0.2,1", ...dev]), {
      code: 64, out: "",
      err: "mkfs: Quorum slot 0 already specified before slot '0,127.0.0.2,1'\n\n" + TRY,
    });
    assert.deepEqual(await refused(d, ["mkfs", "-Q", SLOT0, "-Q", "4,127.0.0.1,19700",
      ...dev]), {
      code: 64, out: "",
      err: "quorum slot nr 0 and 4 have the same address 127.0.0.1:19700\n" +
        "mkfs: invalid quorum slot configuration\n" + TRY,
    });
    assert.deepEqual(await refused(d, ["mkfs", "-Q", "0,127.0.0.1", ...dev]), {
      code: 64, out: "extra unparsed trailing characters in quorum slot '0,127.0.0.1'\n",
      err: "mkfs: must specify at least one quorum slot with --quorum-slot|-Q\n" + TRY,
    });
  });
});

test("refuses bad -V, -z, -m and extra arguments before touching a device", async () => {
  await withDevices(MiB, MiB, async (d) => {
    const dev = [d.meta, d.data];
    assert.deepEqual(await refused(d, ["mkfs", "-V", "3", "-Q", SLOT0, ...dev]), {
      code: 64, out: "", err: "mkfs: format-version 3 is outside supported range of 1-2\n" + TRY,
    });
    assert.deepEqual(await refused(d, ["mkfs", "-Q", SLOT0, "--format-version=x", ...dev]), {
      code: 64, out: "",
      err: "invalid 64bit value: 'x'\nmkfs: no metadata device argument given\n" + TRY,
    });
    assert.deepEqual(await refused(d, ["mkfs", "-z", "0", "-Q", SLOT0, ...dev]), {
      code: 64, out: "", err: "mkfs: must provide non-zero data-alloc-zone-blocks\n" + TRY,
    });
    assert.deepEqual(await refused(d, ["mkfs", "-Q", SLOT0, "-m", "10X", ...dev]), {
      code: 64, out: "", err: "unknown suffix: 'X'\nmkfs: no metadata device argument given\n" + TRY,
    });
    assert.deepEqual(await refused(d, ["mkfs", "-Q", SLOT0, ...dev, "extra"]), {
      code: 64, out: "", err: "mkfs: more than two arguments given\n" + TRY,
    });
    assert.deepEqual(await refused(d, ["mkfs", "-Q", SLOT0, d.meta]), {
      code: 64, out: "", err: "mkfs: no data device argument given\n" + TRY,
    });
  });
});

test("refuses a data allocation zone size the data device cannot have", async () => {
  await withDevices(136 * MiB, 20 * MiB, async (d) => {
    // upstream prints these without a newline: the failed line follows on the same line
    assert.deepEqual(await refused(d, ["mkfs", "-A", "-f", "-z", "5", "-Q", SLOT0, d.meta,
      d.data]), {
      code: 1, out: "",
      err: SMALL_WARN("136.00MB", "20.00MB") + "setting data_alloc_zone_blocks to '5' failed, " +
        "must be at least 1048576 mount data allocation target blocks" +
        "scoutfs: mkfs failed: Invalid argument (22)\n",
    });
    assert.deepEqual(await refused(d, ["mkfs", "-A", "-f", "-z", "1048576", "-Q", SLOT0,
      d.meta, d.data]), {
      code: 1, out: "",
      err: SMALL_WARN("136.00MB", "20.00MB") + "setting data_alloc_zone_blocks to '1048576' " +
        "failed, must be at most 5120 total data device blocks" +
        "scoutfs: mkfs failed: Invalid argument (22)\n",
    });
  });
});

test("refuses existing ext4 and xfs signatures on either device, changing nothing", async () => {
  await withDevices(MiB, MiB, async (d) => {
    await scribble(d.meta);
    await scribble(d.data);
    const ext = Buffer.alloc(2);
    ext.writeUInt16LE(0xef53);
    await writeAt(d.meta, 1080, ext);
    await writeAt(d.meta, 1024 + 0x60, Buffer.from([0x40, 0, 0, 0])); // incompat: extents
    assert.deepEqual(await refused(d, ["mkfs", "-A", "-Q", SLOT0, d.meta, d.data]), {
      code: 1, out: "",
      err: `${d.meta}: appears to contain an existing ext4 superblock\n` +
        "scoutfs: mkfs failed: Operation not permitted (1)\n",
    });
    await writeAt(d.data, 0, Buffer.from("XFSB"));
    assert.deepEqual(await refused(d, ["mkfs", "-A", "-Q", SLOT0, d.data, d.meta]), {
      code: 1, out: "",
      err: `${d.data}: appears to contain an existing xfs superblock\n` +
        "scoutfs: mkfs failed: Operation not permitted (1)\n",
    });
  });
});

test("refuses an existing scoutfs volume without -f; -f overwrites it", async () => {
  await withDevices(136 * MiB, 20 * MiB, async (d) => {
    const args = ["-A", "-Q", SLOT0, d.meta, d.data];
    assert.equal((await run(["mkfs", "-f", ...args])).code, 0);
    assert.deepEqual(await refused(d, ["mkfs", ...args]), {
      code: 1, out: "",
      err: `${d.meta}: appears to contain an existing ScoutFS superblock\n` +
        "scoutfs: mkfs failed: Invalid argument (22)\n",
    });
    // the data device's super is found too when the metadata device is clean
    await truncate(d.meta, 0);
    await truncate(d.meta, 136 * MiB);
    assert.deepEqual(await refused(d, ["mkfs", ...args]), {
      code: 1, out: "",
      err: `${d.data}: appears to contain an existing ScoutFS superblock\n` +
        "scoutfs: mkfs failed: Invalid argument (22)\n",
    });
    assert.equal((await run(["mkfs", "-f", ...args])).code, 0);
  });
});

test("a missing device: upstream's open failure lines", async () => {
  await withDevices(136 * MiB, 20 * MiB, async (d) => {
    const missing = join(d.dir, "nope");
    assert.deepEqual(await run(["mkfs", "-A", "-Q", SLOT0, missing, d.data]), {
      code: 1, out: "",
      err: `failed to open '${missing}': No such file or directory (2)\n` +
        "scoutfs: mkfs failed: No such file or directory (2)\n",
    });
  });
});

test("-A -f makes a volume and prints the exact Created block", async () => {
  await withDevices(136 * MiB, 20 * MiB, async (d) => {
    await scribble(d.meta);
    await scribble(d.data);
    const r = await run(["mkfs", "-A", "-f", "-Q", "3,10.0.0.3,19703", "-Q", SLOT0,
      d.meta, d.data]);
    assert.deepEqual(r, {
      code: 0,
      out: createdBlock(d, "2176 (136.00 MB)", "5120 (20.00 MB)", 2,
        "0: 127.0.0.1:19700\n                          3: 10.0.0.3:19703\n"),
      err: SMALL_WARN("136.00MB", "20.00MB"),
    });
    for (const [path, isMeta] of [[d.meta, true], [d.data, false]] as const) {
      const sb = await readSuper(path, isMeta);
      assert.equal(sb.hdr.fsid, 0x0807060504030201n);
      assert.equal(sb.uuid.toString("hex"), UUID_STR.replaceAll("-", ""));
      assert.deepEqual([sb.fmtVers, sb.totalMetaBlocks, sb.totalDataBlocks], [2, 2176, 5120]);
      assert.deepEqual(sb.qconf.slots[3], { addr: "10.0.0.3", port: 19703 });
      assert.equal(sb.volopt.dataAllocZoneBlocks, null);
    }
  });
});

test("-m/-d limit and round the sizes, -V 1 and -z are written", async () => {
  await withDevices(200 * MiB, 8 * 1024 * MiB, async (d) => {
    const r = await run(["mkfs", "-A", "-f", "-m", "140M", "-d", "4294971393", "-V", "1",
      "-z", "1048576", "-Q", SLOT0, d.meta, d.data]);
    assert.deepEqual(r, {
      code: 0,
      out: "Limiting use of 200.00MB meta device to 140.00MB\n" +
        "Limiting use of 8.00GB data device to 4.00GB\n" +
        createdBlock(d, "2240 (140.00 MB)", "1048577 (4.00 GB)", 1),
      err: "Data dev size 4294971393 rounded down to 4294971392 bytes\n" +
        SMALL_WARN("140.00MB", "4.00GB"),
    });
    const sb = await readSuper(d.meta, true);
    assert.deepEqual([sb.fmtVers, sb.totalMetaBlocks, sb.totalDataBlocks,
      sb.volopt.dataAllocZoneBlocks], [1, 2240, 1048577, 1048576]);
  });
});
