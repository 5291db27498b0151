/*
 * `scoutfs ino-path [-p PATH] INODE-NUM`: every path from the mount's root to an inode, one
 * per line, relative to the root (upstream ino_path.c, INO_PATH over the control socket).
 *
 * Iteration as upstream: start at cursor (0, 0); after each path continue one past the
 * returned (dir_ino, dir_pos), dir_pos first and dir_ino on wrap; ENOENT ends the list.
 * Any other failure prints "inodes_since ioctl failed: <strerror> (<errno>)" (upstream's
 * message, left from an older ioctl's name) and the command fails with that errno.
 *
 * Argument quirks kept: the inode number parses with parse_u64 (base 0); 0 counts as "no
 * inode given", so "0 5" is accepted as 5 and "0" alone is "must provide inode number".
 */
import { isFsError } from "../util/errno.js";
import type { InoPathResult } from "../core/fs/ioctl.js";
import type { ArgpSpec, ArgpState } from "./argp.js";
import { argpCommand, withTarget } from "./cmd_common.js";
import type { CliCommand, CliIo } from "./command.js";
import {
  type ControlDeps, type ControlTarget, errLine, openMountPath, outBytes, PATH_OPTION,
  realControlDeps,
} from "./control.js";
import { parseU64 } from "./parse.js";

export interface InoArgs {
  path: string | null;
  ino: bigint;
}

/** ARGP_KEY_ARG of ino_path.c and get_referring_entries.c: the inode number. */
export function inoArg(arg: string, st: ArgpState<InoArgs>): number {
  if (st.input.ino !== 0n) st.error("more than one argument given");
  const r = parseU64(arg);
  if (!r.ok) {
    st.io.err(r.text);
    st.error("inode parse error");
  }
  st.input.ino = r.value;
  return 0;
}

/** The argp spec shared by ino-path and get-referring-entries (only the doc differs). */
export function inoArgp(doc: string): ArgpSpec<InoArgs, "p"> {
  return {
    options: [PATH_OPTION],
    argsDoc: "INODE-NUM",
    doc,
    init: () => ({ path: null, ino: 0n }),
    onOption: (_key, arg, st) => {
      st.input.path = arg;
      return 0;
    },
    onArg: inoArg,
    onFini: (st) => {
      if (st.input.ino === 0n) st.error("must provide inode number");
    },
  };
}

export const INO_PATH_ARGP = inoArgp("Print paths that refer to inode number");
const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** (dir_ino, dir_pos) one past an entry: pos + 1, carrying into dir_ino; null at the end. */
export function nextCursor(dirIno: bigint, dirPos: bigint): { dirIno: bigint; dirPos: bigint }
  | null {
  if (dirPos !== U64_MAX) return { dirIno, dirPos: dirPos + 1n };
  if (dirIno !== U64_MAX) return { dirIno: dirIno + 1n, dirPos: 0n };
  return null;
}

async function paths(t: ControlTarget, ino: bigint, io: CliIo): Promise<number> {
  let cur: { dirIno: bigint; dirPos: bigint } | null = { dirIno: 0n, dirPos: 0n };
  while (cur !== null) {
    let r: InoPathResult;
    try {
      r = await t.call("inoPath", { ino, ...cur });
    } catch (e) {
      if (!isFsError(e)) throw e;
      if (e.code === "ENOENT") return 0;
      io.err(errLine("inodes_since ioctl failed", e));
      return -e.errno;
    }
    outBytes(io, Buffer.concat([r.path, Buffer.from("\n")]));
    cur = nextCursor(r.dirIno, r.dirPos);
  }
  return 0;
}

export function makeInoPathCommand(deps: ControlDeps): CliCommand {
  return argpCommand({ name: "ino-path", group: "search" }, INO_PATH_ARGP, (a, io) =>
    withTarget(openMountPath(deps, a.path, io), (t) => paths(t, a.ino, io)));
}

export const inoPathCommand: CliCommand = makeInoPathCommand(realControlDeps());
