/*
 * `scoutfs statfs [-p PATH] [-s FIELD]`: the volume's identity and totals (upstream stat.c's
 * statfs command, STATFS_MORE over the control socket).
 *
 * Output as upstream: "%-17s value" lines for fsid and rid (%016llx), committed_seq,
 * total_meta_blocks and total_data_blocks, or with -s the bare value. Positional arguments
 * are accepted and ignored (upstream's parser returns 0 for them). Like stat, a failed ioctl
 * prints "ioctl failed: ..." and exits 0.
 */
import { Errno, isFsError } from "../util/errno.js";
import type { StatfsMore } from "../core/fs/ioctl.js";
import { argpParse, type ArgpSpec } from "./argp.js";
import type { CliCommand, CliIo } from "./command.js";
import { formatStatFields } from "./cmd_stat.js";
import {
  type ControlDeps, errLine, openMountPath, PATH_OPTION, realControlDeps,
} from "./control.js";

interface StatfsArgs {
  path: string | null;
  singleField: string | null;
}

export const STATFS_ARGP: ArgpSpec<StatfsArgs, "p" | "s"> = {
  options: [
    PATH_OPTION,
    { key: "s", short: "s", long: "single-field", arg: "FIELD-NAME",
      doc: "Specify single field to print" },
  ],
  argsDoc: "",
  doc: "Show ScoutFS file system information",
  init: () => ({ path: null, singleField: null }),
  onOption: (key, arg, st) => {
    if (key === "p") st.input.path = arg;
    else st.input.singleField = arg;
    return 0;
  },
  onArg: () => 0,
};

const hex16 = (n: bigint): string => n.toString(16).padStart(16, "0");

/** fs_fields[] in upstream's order. */
export const STATFS_FIELDS: readonly [string, (s: StatfsMore) => string][] = [
  ["fsid", (s) => hex16(s.fsid)],
  ["rid", (s) => hex16(s.rid)],
  ["committed_seq", (s) => `${s.committedSeq}`],
  ["total_meta_blocks", (s) => `${s.totalMetaBlocks}`],
  ["total_data_blocks", (s) => `${s.totalDataBlocks}`],
];

async function doStatfs(a: StatfsArgs, deps: ControlDeps, io: CliIo): Promise<number> {
  if (a.singleField !== null && !STATFS_FIELDS.some(([n]) => n === a.singleField)) {
    io.err(`unknown field: '${a.singleField}'\n`);
    return -Errno.EINVAL;
  }
  const t = await openMountPath(deps, a.path, io);
  if (typeof t === "number") return t;
  try {
    const s = await t.call("statfsMore", {});
    io.out(formatStatFields(STATFS_FIELDS, s, a.singleField));
  } catch (e) {
    if (!isFsError(e)) throw e;
    io.err(errLine("ioctl failed", e));
  } finally {
    t.close();
  }
  return 0;
}

export function makeStatfsCommand(deps: ControlDeps): CliCommand {
  return {
    name: "statfs",
    group: "info",
    argsDoc: STATFS_ARGP.argsDoc,
    summary: STATFS_ARGP.doc ?? "",
    async run(argv: readonly string[], io: CliIo): Promise<number> {
      const r = argpParse(STATFS_ARGP, argv, io);
      if (r.kind === "exit") return r.code;
      if (r.kind === "error") return -r.errno;
      return doStatfs(r.input, deps, io);
    },
  };
}

export const statfsCommand: CliCommand = makeStatfsCommand(realControlDeps());
