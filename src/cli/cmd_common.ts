/*
 * What the CLI commands that ask a mount over the control socket share (stat, statfs, df,
 * walk-inodes, ino-path, get-referring-entries, get-allocated-inos, get-fiemap,
 * list-hidden-xattrs; counters uses argpCommand too), so that each command file holds only
 * its own texts and formatting.
 *
 *  - argpCommand: the CliCommand around an argp spec (parse; help and usage errors end the
 *    command with argp's status, a parser errno fails it; else run the parsed input).
 *  - withTarget: a path or file opened (control.ts's openMountPath/openFile), used, and
 *    closed whatever happens; an open that failed has printed upstream's message already.
 *  - request: one control request that fails as upstream's ioctl callers do: a line on
 *    stderr and -errno. No control op's result is a number, so callers tell a result from
 *    a failure with typeof, as with the opens.
 *  - printFields and SINGLE_FIELD_OPTION: stat.c's two commands, stat and statfs, which
 *    differ only in the request and the field table.
 *
 * The failure lines are the callers' (what request() is given), except stat.c's, which
 * printFields holds because both of its commands print the same ones.
 */
import { Errno, type FsError, isFsError } from "../util/errno.js";
import { argpParse, type ArgpSpec } from "./argp.js";
import type { CliCommand, CliIo, CommandGroup } from "./command.js";
import { type ControlTarget, errLine } from "./control.js";
import type { ArgsOf, ControlOpName, ResultOf } from "./control_wire.js";

/** A command's name, group and, when it is not the spec's doc, its usage summary. */
export interface CommandName {
  name: string;
  group: CommandGroup;
  summary?: string;
}

/** The command that parses argv with spec and then runs `run` on the parsed input. */
export function argpCommand<S, K extends string>(c: CommandName, spec: ArgpSpec<S, K>,
  run: (input: S, io: CliIo) => Promise<number>): CliCommand {
  return {
    name: c.name,
    group: c.group,
    argsDoc: spec.argsDoc,
    summary: c.summary ?? spec.doc ?? "",
    async run(argv: readonly string[], io: CliIo): Promise<number> {
      const r = argpParse(spec, argv, io);
      if (r.kind === "exit") return r.code;
      if (r.kind === "error") return -r.errno;
      return run(r.input, io);
    },
  };
}

/** fn on the opened target, closed afterwards; a failed open's -errno is returned as is. */
export async function withTarget(opened: Promise<ControlTarget | number>,
  fn: (t: ControlTarget) => Promise<number>): Promise<number> {
  const t = await opened;
  if (typeof t === "number") return t;
  try {
    return await fn(t);
  } finally {
    t.close();
  }
}

/**
 * One request; when the mount answers with an errno, prints the failure line (errLine(what),
 * or what(e) for commands whose line has another shape) and returns -errno.
 */
export async function request<N extends ControlOpName>(t: ControlTarget, op: N, args: ArgsOf<N>,
  io: CliIo, what: string | ((e: FsError) => string)): Promise<ResultOf<N> | number> {
  try {
    return await t.call(op, args);
  } catch (e) {
    if (!isFsError(e)) throw e;
    io.err(typeof what === "string" ? errLine(what, e) : what(e));
    return -e.errno;
  }
}

/** stat.c's { "single-field", 's', "FIELD-NAME", 0, "Specify single field to print" }. */
export const SINGLE_FIELD_OPTION = {
  key: "s", short: "s", long: "single-field", arg: "FIELD-NAME",
  doc: "Specify single field to print",
} as const;

/** Upstream's field table: each field's name and how its value prints. */
export type FieldTable<T> = readonly [string, (s: T) => string][];

/** The whole report ("%-17s value" lines), or the single field's bare value. */
export function formatFields<T>(fields: FieldTable<T>, s: T, single: string | null): string {
  if (single !== null) {
    const f = fields.find(([name]) => name === single)!;
    return `${f[1](s)}\n`;
  }
  return fields.map(([name, pr]) => `${name.padEnd(17)} ${pr(s)}\n`).join("");
}

/** What a field-printing command asks for and how it prints the answer. */
export interface FieldsQuery<N extends ControlOpName> {
  op: N;
  args: (t: ControlTarget) => ArgsOf<N>;
  fields: FieldTable<ResultOf<N>>;
}

/**
 * stat.c's flow: an unknown -s name is "unknown field: '<name>'" and EINVAL before anything
 * is opened; then open, request, print. A failed request prints "ioctl failed: ..." and
 * still exits 0, as upstream does.
 */
export async function printFields<N extends ControlOpName>(q: FieldsQuery<N>,
  single: string | null, open: () => Promise<ControlTarget | number>, io: CliIo):
  Promise<number> {
  if (single !== null && !q.fields.some(([name]) => name === single)) {
    io.err(`unknown field: '${single}'\n`);
    return -Errno.EINVAL;
  }
  return withTarget(open(), async (t) => {
    const s = await request(t, q.op, q.args(t), io, "ioctl failed");
    if (typeof s !== "number") io.out(formatFields(q.fields, s, single));
    return 0;
  });
}
