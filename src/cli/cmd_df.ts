/*
 * `scoutfs df [-p PATH] [-h]`: metadata and data block usage (upstream df.c: STATFS_MORE for
 * the totals and the reserve, ALLOC_DETAIL for the free blocks of every allocator).
 *
 * Free blocks are the sum of every allocator's blocks, metadata and data apart (avail and
 * freed alike, as upstream counts them); the reserved metadata blocks are subtracted from
 * the metadata free count (down to 0). The table is three rows of six cells; every cell is
 * right-aligned to its column's widest cell and followed by two spaces, so each line ends in
 * two spaces, exactly as upstream's printf("%*s  "). Cells are snprintf'd into 20-byte
 * buffers upstream, so a cell keeps at most 19 characters. With -h the Total, Used and Free
 * cells are byte sizes ("%.2f%s", base 1024); Use% is always the integer percentage.
 *
 * Failures as upstream: "statfs_more returned -1: error <strerror> (<errno>)" or
 * "alloc_detail returned -1: ..." on stderr, then the command fails with EIO. Positional
 * arguments are accepted and ignored.
 */
import { Errno, type FsError, strerror } from "../util/errno.js";
import { DATA_BLOCK_SIZE, META_BLOCK_SIZE } from "../core/format.js";
import type { AllocDetailEntry, StatfsMore } from "../core/fs/ioctl.js";
import type { ArgpSpec } from "./argp.js";
import { argpCommand, request, withTarget } from "./cmd_common.js";
import type { CliCommand, CliIo } from "./command.js";
import {
  type ControlDeps, type ControlTarget, openMountPath, PATH_OPTION, realControlDeps,
} from "./control.js";
import { formatBaseSize } from "./parse.js";

interface DfArgs {
  path: string | null;
  humanReadable: boolean;
}

export const DF_ARGP: ArgpSpec<DfArgs, "p" | "h"> = {
  options: [
    PATH_OPTION,
    { key: "h", short: "h", long: "human-readable",
      doc: "Print sizes in human readable format (e.g., 1KB 234MB 2GB)" },
  ],
  argsDoc: "",
  doc: "Show metadata and data block usage",
  init: () => ({ path: null, humanReadable: false }),
  onOption: (key, arg, st) => {
    if (key === "p") st.input.path = arg;
    else st.input.humanReadable = true;
    return 0;
  },
  onArg: () => 0,
};

/** snprintf(cell, CHARS = 20, ...) keeps 19 characters. */
const CELL_CHARS = 19;
const u64 = (n: bigint): bigint => BigInt.asUintN(64, n);

/** One device row: type, block size label, and the counts in blocks. */
function row(type: string, size: string, blockBytes: number, total: bigint, free: bigint,
  human: boolean): string[] {
  const used = u64(total - free);
  const cells = human
    ? [total, used, free].map((n) => formatBaseSize(u64(n * BigInt(blockBytes))))
    : [total, used, free].map((n) => `${n}`);
  // (total - free) * 100 / total in u64 arithmetic, as upstream's %llu
  const pct = total === 0n ? 0n : u64(used * 100n) / total;
  return [type, size, ...cells, `${pct}`];
}

/** The table for these totals and allocators (upstream's do_df after its two ioctls). */
export function formatDf(sfm: StatfsMore, allocs: readonly AllocDetailEntry[], human: boolean):
  string {
  let metaFree = 0n;
  let dataFree = 0n;
  for (const a of allocs) {
    if (a.meta) metaFree = u64(metaFree + a.blocks);
    else dataFree = u64(dataFree + a.blocks);
  }
  metaFree = metaFree >= sfm.reservedMetaBlocks ? metaFree - sfm.reservedMetaBlocks : 0n;
  const rows = [
    ["Type", "Size", "Total", "Used", "Free", "Use%"],
    row("MetaData", "64KB", META_BLOCK_SIZE, sfm.totalMetaBlocks, metaFree, human),
    row("Data", "4KB", DATA_BLOCK_SIZE, sfm.totalDataBlocks, dataFree, human),
  ].map((r) => r.map((c) => c.slice(0, CELL_CHARS)));
  const wid = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => `${cell.padStart(wid[c]!)}  `).join("") + "\n")
    .join("");
}

/** Upstream's line for a failed ioctl of df: "<name> returned -1: error <strerror> (<errno>)". */
const dfFailed = (name: string) => (e: FsError): string =>
  `${name} returned -1: error ${strerror(e.errno)} (${e.errno})\n`;

/** Both ioctls, then the table; either failing fails the command with EIO, as upstream. */
async function df(t: ControlTarget, human: boolean, io: CliIo): Promise<number> {
  const sfm = await request(t, "statfsMore", {}, io, dfFailed("statfs_more"));
  if (typeof sfm === "number") return -Errno.EIO;
  const allocs = await request(t, "allocDetail", {}, io, dfFailed("alloc_detail"));
  if (typeof allocs === "number") return -Errno.EIO;
  io.out(formatDf(sfm, allocs, human));
  return 0;
}

export function makeDfCommand(deps: ControlDeps): CliCommand {
  return argpCommand({ name: "df", group: "core" }, DF_ARGP, (a, io) =>
    withTarget(openMountPath(deps, a.path, io), (t) => df(t, a.humanReadable, io)));
}

export const dfCommand: CliCommand = makeDfCommand(realControlDeps());
