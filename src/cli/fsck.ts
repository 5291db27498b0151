/*
 * `scoutfs fsck META-DEVICE DATA-DEVICE`: an offline consistency check (ours; upstream has
 * none). It opens both devices read-only, runs src/core/fsck.ts and prints one line per
 * finding, then a summary. Exit status 0 when clean, 1 when anything was found (after the
 * usual "scoutfs: fsck failed: Structure needs cleaning"-style line would be misleading, so
 * it prints its own summary instead); a device that cannot be read fails like any command.
 */
import { fsckVolume } from "../core/fsck.js";
import type { BlockDevice } from "../env/env.js";
import { openRealBlockDevice } from "../env/real/blockdev.js";
import { isFsError, strerror } from "../util/errno.js";
import { argpParse, type ArgpSpec } from "./argp.js";
import type { CliCommand, CliIo } from "./command.js";

interface FsckArgs {
  devices: string[];
}

export const FSCK_ARGP: ArgpSpec<FsckArgs, never> = {
  options: [],
  argsDoc: "META-DEVICE DATA-DEVICE",
  doc: "Check a filesystem's metadata for consistency (offline: nothing may have it mounted)",
  init: () => ({ devices: [] }),
  onArg: (arg, st) => {
    if (st.input.devices.length >= 2) st.error("more than two arguments given");
    st.input.devices.push(arg);
    return 0;
  },
  onEnd: (st) => {
    if (st.input.devices.length === 0) st.error("no metadata device argument given");
    if (st.input.devices.length === 1) st.error("no data device argument given");
    return 0;
  },
};

async function open(path: string, io: CliIo): Promise<BlockDevice | number> {
  try {
    return await openRealBlockDevice(path, { readOnly: true });
  } catch (e) {
    if (!isFsError(e)) throw e;
    io.err(`failed to open '${path}': ${strerror(e.errno)} (${e.errno})\n`);
    return -e.errno;
  }
}

async function doFsck(metaPath: string, dataPath: string, io: CliIo): Promise<number> {
  const meta = await open(metaPath, io);
  if (typeof meta === "number") return meta;
  const data = await open(dataPath, io);
  if (typeof data === "number") {
    await meta.close();
    return data;
  }
  try {
    const r = await fsckVolume(meta, data);
    for (const p of r.problems) io.out(`problem: ${p}\n`);
    io.out(`checked ${r.btreeBlocks} btree blocks, ${r.items} items; ` +
      `${r.metaBlocksReferenced} metadata blocks referenced, ${r.metaBlocksFree} free\n`);
    io.out(r.problems.length === 0 ? "no problems found\n"
      : `${r.problems.length} problem${r.problems.length === 1 ? "" : "s"} found\n`);
    return r.problems.length === 0 ? 0 : 1;
  } catch (e) {
    if (!isFsError(e)) throw e;
    io.err(`fsck could not read the volume: ${e.message}\n`);
    return -e.errno;
  } finally {
    await meta.close();
    await data.close();
  }
}

export const fsckCommand: CliCommand = {
  name: "fsck",
  group: "debug",
  argsDoc: FSCK_ARGP.argsDoc,
  summary: "Check a filesystem's metadata for consistency",
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const r = argpParse(FSCK_ARGP, argv, io);
    if (r.kind === "exit") return r.code;
    if (r.kind === "error") return -r.errno;
    return doFsck(r.input.devices[0]!, r.input.devices[1]!, io);
  },
};
