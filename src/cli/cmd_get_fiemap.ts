/*
 * `scoutfs get-fiemap FILE [-P] [-L] [-b]`: a file's extent map (upstream fiemap.c, modeled
 * on e2fsprogs' filefrag). FUSE has no FIEMAP, so the request goes over the control socket
 * (op fiemap), paged like FS_IOC_FIEMAP with upstream's buffer of 292 extents.
 *
 * Output as upstream: "<n>: offset: <logical> <physical> length: <len> flags: <O|.><U|.><L|.>"
 * per extent, with -L only the logical offset, with -P only the physical one; values in
 * st_blksize units unless -b (bytes); O = FIEMAP_EXTENT_UNKNOWN (offline), U = UNWRITTEN,
 * L = LAST. Then "extents: <n>". Paging continues from the end of the last extent until an
 * extent carries LAST or a page comes back empty.
 *
 * Argument quirks kept: -P clears "logical" and -L clears "physical" (the flags name what is
 * *not* wanted), so both together are "can't pass both -P and -L options".
 */
import {
  FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_UNKNOWN, FIEMAP_EXTENT_UNWRITTEN, type FiemapExtent,
} from "../core/fs/ioctl.js";
import type { ArgpSpec } from "./argp.js";
import { argpCommand, request, withTarget } from "./cmd_common.js";
import type { CliCommand, CliIo } from "./command.js";
import { type ControlDeps, type ControlTarget, openFile, realControlDeps } from "./control.js";

interface FiemapArgs {
  filename: string | null;
  phys: boolean;
  logical: boolean;
  byte: boolean;
}

export const GET_FIEMAP_ARGP: ArgpSpec<FiemapArgs, "P" | "L" | "b"> = {
  options: [
    { key: "P", short: "P", long: "physical", doc: "Output physical offsets only" },
    { key: "L", short: "L", long: "logical", doc: "Output logical offsets only" },
    { key: "b", short: "b", long: "byte", doc: "Output byte values instead of blocks" },
  ],
  argsDoc: "FILE",
  doc: "Print fiemap extent mapping",
  init: () => ({ filename: null, phys: true, logical: true, byte: false }),
  onOption: (key, _arg, st) => {
    if (key === "P") st.input.logical = false;
    else if (key === "L") st.input.phys = false;
    else st.input.byte = true;
    return 0;
  },
  onArg: (arg, st) => {
    if (st.input.filename !== null) st.error("more than one argument given");
    st.input.filename = arg;
    return 0;
  },
  onFini: (st) => {
    if (!st.input.logical && !st.input.phys) st.error("can't pass both -P and -L options");
    if (st.input.filename === null) st.error("no filename given");
  },
};

/** Extents per request: (sizeof(__u64[2048]) - sizeof(struct fiemap)) / sizeof(extent). */
export const FIEMAP_BATCH = Math.floor((2048 * 8 - 32) / 56);

const flag = (e: FiemapExtent, bit: number, c: string): string => ((e.flags & bit) !== 0 ? c : ".");

/** One extent's line, numbered n. */
export function formatExtent(a: FiemapArgs, e: FiemapExtent, n: bigint, blksize: number): string {
  const unit = a.byte ? 1n : BigInt(blksize);
  const offL = e.logical / unit;
  const offP = e.physical / unit;
  const off = !a.phys ? `${offL} ` : !a.logical ? `${offP} ` : `${offL} ${offP} `;
  return `${n}: offset: ${off}length: ${e.length / unit} flags: ` +
    `${flag(e, FIEMAP_EXTENT_UNKNOWN, "O")}${flag(e, FIEMAP_EXTENT_UNWRITTEN, "U")}` +
    `${flag(e, FIEMAP_EXTENT_LAST, "L")}\n`;
}

async function fiemap(t: ControlTarget, a: FiemapArgs, io: CliIo): Promise<number> {
  let nr = 0n;
  let start = 0n;
  for (;;) {
    const ents = await request(t, "fiemap", { ino: t.ino, start, max: FIEMAP_BATCH }, io,
      "get_fiemap ioctl failed");
    if (typeof ents === "number") return ents;
    if (ents.length === 0) break;
    io.out(ents.map((e) => formatExtent(a, e, nr++, t.blksize)).join(""));
    const last = ents[ents.length - 1]!;
    if (ents.some((e) => (e.flags & FIEMAP_EXTENT_LAST) !== 0)) break;
    start = last.logical + last.length;
  }
  io.out(`extents: ${nr}\n`);
  return 0;
}

export function makeGetFiemapCommand(deps: ControlDeps): CliCommand {
  return argpCommand({ name: "get-fiemap", group: "debug" }, GET_FIEMAP_ARGP, (a, io) =>
    withTarget(openFile(deps, a.filename!, io), (t) => fiemap(t, a, io)));
}

export const getFiemapCommand: CliCommand = makeGetFiemapCommand(realControlDeps());
