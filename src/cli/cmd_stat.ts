/*
 * `scoutfs stat FILE [-s FIELD]`: the inode fields stat(2) does not show (upstream stat.c,
 * STAT_MORE over the control socket).
 *
 * Output as upstream: one "%-17s value" line per field (meta_seq, data_seq, data_version,
 * online_blocks, offline_blocks, crtime as SECS.NSECS with the nanoseconds zero-padded to
 * 9 digits), or with -s the bare value of that field. An unknown -s name prints
 * "unknown field: '<name>'" and fails with EINVAL before the file is opened.
 *
 * Upstream quirk kept: when the ioctl fails the command prints "ioctl failed: <strerror>
 * (<errno>)" and still exits 0 with no value.
 */
import type { StatMore } from "../core/fs/ioctl.js";
import type { ArgpSpec } from "./argp.js";
import {
  argpCommand, type FieldsQuery, type FieldTable, printFields, SINGLE_FIELD_OPTION,
} from "./cmd_common.js";
import type { CliCommand } from "./command.js";
import { type ControlDeps, openMountPath, realControlDeps } from "./control.js";

interface StatArgs {
  path: string | null;
  singleField: string | null;
}

export const STAT_ARGP: ArgpSpec<StatArgs, "s"> = {
  options: [SINGLE_FIELD_OPTION],
  argsDoc: "FILE",
  doc: "Show ScoutFS extra inode information",
  init: () => ({ path: null, singleField: null }),
  onOption: (_key, arg, st) => {
    st.input.singleField = arg;
    return 0;
  },
  onArg: (arg, st) => {
    if (st.input.path !== null) st.error("more than one argument");
    st.input.path = arg;
    return 0;
  },
  onFini: (st) => {
    if (st.input.path === null) st.error("missing operand");
  },
};

/** inode_fields[] in upstream's order, each with how it prints. */
export const STAT_FIELDS: FieldTable<StatMore> = [
  ["meta_seq", (s) => `${s.metaSeq}`],
  ["data_seq", (s) => `${s.dataSeq}`],
  ["data_version", (s) => `${s.dataVersion}`],
  ["online_blocks", (s) => `${s.onlineBlocks}`],
  ["offline_blocks", (s) => `${s.offlineBlocks}`],
  ["crtime", (s) => `${s.crtimeSec}.${String(s.crtimeNsec).padStart(9, "0")}`],
];

const STAT_QUERY: FieldsQuery<"statMore"> = {
  op: "statMore", args: (t) => ({ ino: t.ino }), fields: STAT_FIELDS,
};

export function makeStatCommand(deps: ControlDeps): CliCommand {
  return argpCommand({ name: "stat", group: "info" }, STAT_ARGP, (a, io) =>
    printFields(STAT_QUERY, a.singleField, () => openMountPath(deps, a.path, io), io));
}

export const statCommand: CliCommand = makeStatCommand(realControlDeps());
