/*
 * `scoutfs statfs [-p PATH] [-s FIELD]`: the volume's identity and totals (upstream stat.c's
 * statfs command, STATFS_MORE over the control socket).
 *
 * Output as upstream: "%-17s value" lines for fsid and rid (%016llx), committed_seq,
 * total_meta_blocks and total_data_blocks, or with -s the bare value. Positional arguments
 * are accepted and ignored (upstream's parser returns 0 for them). Like stat, a failed ioctl
 * prints "ioctl failed: ..." and exits 0.
 */
import type { StatfsMore } from "../core/fs/ioctl.js";
import type { ArgpSpec } from "./argp.js";
import {
  argpCommand, type FieldsQuery, type FieldTable, printFields, SINGLE_FIELD_OPTION,
} from "./cmd_common.js";
import type { CliCommand } from "./command.js";
import { type ControlDeps, openMountPath, PATH_OPTION, realControlDeps } from "./control.js";

interface StatfsArgs {
  path: string | null;
  singleField: string | null;
}

export const STATFS_ARGP: ArgpSpec<StatfsArgs, "p" | "s"> = {
  options: [
    PATH_OPTION,
    SINGLE_FIELD_OPTION,
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
export const STATFS_FIELDS: FieldTable<StatfsMore> = [
  ["fsid", (s) => hex16(s.fsid)],
  ["rid", (s) => hex16(s.rid)],
  ["committed_seq", (s) => `${s.committedSeq}`],
  ["total_meta_blocks", (s) => `${s.totalMetaBlocks}`],
  ["total_data_blocks", (s) => `${s.totalDataBlocks}`],
];

const STATFS_QUERY: FieldsQuery<"statfsMore"> = {
  op: "statfsMore", args: () => ({}), fields: STATFS_FIELDS,
};

export function makeStatfsCommand(deps: ControlDeps): CliCommand {
  return argpCommand({ name: "statfs", group: "info" }, STATFS_ARGP, (a, io) =>
    printFields(STATFS_QUERY, a.singleField, () => openMountPath(deps, a.path, io), io));
}

export const statfsCommand: CliCommand = makeStatfsCommand(realControlDeps());
