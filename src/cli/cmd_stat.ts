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
import { Errno, isFsError } from "../util/errno.js";
import type { StatMore } from "../core/fs/ioctl.js";
import { argpParse, type ArgpSpec } from "./argp.js";
import type { CliCommand, CliIo } from "./command.js";
import {
  type ControlDeps, errLine, openMountPath, realControlDeps,
} from "./control.js";

interface StatArgs {
  path: string | null;
  singleField: string | null;
}

export const STAT_ARGP: ArgpSpec<StatArgs, "s"> = {
  options: [
    { key: "s", short: "s", long: "single-field", arg: "FIELD-NAME",
      doc: "Specify single field to print" },
  ],
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
export const STAT_FIELDS: readonly [string, (s: StatMore) => string][] = [
  ["meta_seq", (s) => `${s.metaSeq}`],
  ["data_seq", (s) => `${s.dataSeq}`],
  ["data_version", (s) => `${s.dataVersion}`],
  ["online_blocks", (s) => `${s.onlineBlocks}`],
  ["offline_blocks", (s) => `${s.offlineBlocks}`],
  ["crtime", (s) => `${s.crtimeSec}.${String(s.crtimeNsec).padStart(9, "0")}`],
];

/** The whole report, or the single field's bare value. */
export function formatStatFields<T>(fields: readonly [string, (s: T) => string][], s: T,
  single: string | null): string {
  if (single !== null) {
    const f = fields.find(([name]) => name === single)!;
    return `${f[1](s)}\n`;
  }
  return fields.map(([name, pr]) => `${name.padEnd(17)} ${pr(s)}\n`).join("");
}

async function doStat(a: StatArgs, deps: ControlDeps, io: CliIo): Promise<number> {
  if (a.singleField !== null && !STAT_FIELDS.some(([n]) => n === a.singleField)) {
    io.err(`unknown field: '${a.singleField}'\n`);
    return -Errno.EINVAL;
  }
  const t = await openMountPath(deps, a.path, io);
  if (typeof t === "number") return t;
  try {
    const s = await t.call("statMore", { ino: t.ino });
    io.out(formatStatFields(STAT_FIELDS, s, a.singleField));
  } catch (e) {
    if (!isFsError(e)) throw e;
    io.err(errLine("ioctl failed", e));
  } finally {
    t.close();
  }
  return 0;
}

export function makeStatCommand(deps: ControlDeps): CliCommand {
  return {
    name: "stat",
    group: "info",
    argsDoc: STAT_ARGP.argsDoc,
    summary: STAT_ARGP.doc ?? "",
    async run(argv: readonly string[], io: CliIo): Promise<number> {
      const r = argpParse(STAT_ARGP, argv, io);
      if (r.kind === "exit") return r.code;
      if (r.kind === "error") return -r.errno;
      return doStat(r.input, deps, io);
    },
  };
}

export const statCommand: CliCommand = makeStatCommand(realControlDeps());
