/*
 * `scoutfs get-allocated-inos -i INO [-s] [-p PATH]`: the inode numbers from INO to the end
 * of its 1024-inode group whose items still exist (upstream get_allocated_inos.c,
 * GET_ALLOCATED_INOS over the control socket). Tests use it to see that a deleted inode's
 * items are gone.
 *
 * Output as upstream: one number per line; with -s only INO itself, if it is allocated (the
 * request asks for a single number and prints it only when it is INO). Failures print
 * "get_allocated_inos ioctl failed: <strerror> (<errno>)".
 *
 * Argument quirks kept: upstream's -i case falls through into -p, so the inode argument also
 * becomes the path unless a -p comes after it ("-i 1025 -p /mnt" works, "-p /mnt -i 1025"
 * opens "1025"); a bad number prints parse_u64's line and stops parsing, after which the
 * final check still reports "must provide --ino starting inode number option" (exit 64).
 * Positional arguments are accepted and ignored.
 */
import { ALLOCATED_INOS_MAX } from "../core/fs/ioctl.js";
import type { ArgpSpec } from "./argp.js";
import { argpCommand, request, withTarget } from "./cmd_common.js";
import type { CliCommand, CliIo } from "./command.js";
import {
  type ControlDeps, type ControlTarget, openMountPath, PATH_OPTION, realControlDeps,
} from "./control.js";
import { parseU64 } from "./parse.js";

interface AllocatedArgs {
  path: string | null;
  ino: bigint;
  haveIno: boolean;
  single: boolean;
}

export const GET_ALLOCATED_INOS_ARGP: ArgpSpec<AllocatedArgs, "i" | "p" | "s"> = {
  options: [
    { key: "i", short: "i", long: "ino", arg: "NUMBER",
      doc: "Start from 64bit inode number (required)" },
    PATH_OPTION,
    { key: "s", short: "s", long: "single",
      doc: "Only print single specific inode number argument" },
  ],
  argsDoc: null,
  doc: "Print allocated inode numbers from starting inode number",
  init: () => ({ path: null, ino: 0n, haveIno: false, single: false }),
  onOption: (key, arg, st) => {
    if (key === "s") {
      st.input.single = true;
      return 0;
    }
    if (key === "i") {
      const r = parseU64(arg!);
      if (!r.ok) {
        st.io.err(r.text);
        return -r.errno;
      }
      st.input.ino = r.value;
      st.input.haveIno = true;
    }
    st.input.path = arg; // -i falls through to -p upstream
    return 0;
  },
  onArg: () => 0,
  onFini: (st) => {
    if (!st.input.haveIno) st.error("must provide --ino starting inode number option");
  },
};

async function allocated(t: ControlTarget, a: AllocatedArgs, io: CliIo): Promise<number> {
  let inos = await request(t, "getAllocatedInos",
    { startIno: a.ino, max: a.single ? 1 : ALLOCATED_INOS_MAX }, io,
    "get_allocated_inos ioctl failed");
  if (typeof inos === "number") return inos;
  if (a.single && inos.length > 0 && inos[0] !== a.ino) inos = [];
  io.out(inos.map((n) => `${n}\n`).join(""));
  return 0;
}

export function makeGetAllocatedInosCommand(deps: ControlDeps): CliCommand {
  return argpCommand({ name: "get-allocated-inos", group: "debug" }, GET_ALLOCATED_INOS_ARGP,
    (a, io) => withTarget(openMountPath(deps, a.path, io), (t) => allocated(t, a, io)));
}

export const getAllocatedInosCommand: CliCommand =
  makeGetAllocatedInosCommand(realControlDeps());
