/*
 * `scoutfs list-hidden-xattrs FILE`: the names of the file's xattrs with the .hide. tag,
 * which listxattr(2) never shows (upstream listxattr_hidden.c, LISTXATTR_HIDDEN over the
 * control socket).
 *
 * Output as upstream: one name per line, every byte that is not printable in the C locale
 * (outside 0x20..0x7e) shown as '?'. Iteration continues from the (hash, id) cursor each
 * reply returns until the mount says every xattr was examined. Failures print
 * "listxattr_hidden ioctl failed: <strerror> (<errno>)" and fail with that errno.
 */
import { FsError } from "../util/errno.js";
import type { ArgpSpec } from "./argp.js";
import { argpCommand, request, withTarget } from "./cmd_common.js";
import type { CliCommand, CliIo } from "./command.js";
import { type ControlDeps, type ControlTarget, openFile, realControlDeps } from "./control.js";

interface HiddenArgs {
  filename: string | null;
}

export const LIST_HIDDEN_XATTRS_ARGP: ArgpSpec<HiddenArgs, never> = {
  options: [],
  argsDoc: "FILE",
  doc: "Print the names of hidden xattrs on a file",
  init: () => ({ filename: null }),
  onArg: (arg, st) => {
    if (st.input.filename !== null) st.error("more than one filename argument given");
    st.input.filename = arg;
    return 0;
  },
  onFini: (st) => {
    if (st.input.filename === null) st.error("must specify filename");
  },
};

/** The name as upstream prints it: isprint() in the C locale, else '?'. */
export function printableName(name: Buffer): string {
  let s = "";
  for (const b of name) s += b >= 0x20 && b <= 0x7e ? String.fromCharCode(b) : "?";
  return s;
}

async function list(t: ControlTarget, io: CliIo): Promise<number> {
  let hashPos = 0n;
  let idPos = 0n;
  for (;;) {
    const r = await request(t, "listxattrHidden", { ino: t.ino, hashPos, idPos }, io,
      "listxattr_hidden ioctl failed");
    if (typeof r === "number") return r;
    if (r.names.length > 0) io.out(r.names.map((n) => `${printableName(n)}\n`).join(""));
    if (r.done) return 0;
    // a cursor that does not move would loop forever: the reply is nonsense
    if (r.hashPos === hashPos && r.idPos === idPos) throw new FsError("EBADMSG", "stuck cursor");
    ({ hashPos, idPos } = r);
  }
}

export function makeListHiddenXattrsCommand(deps: ControlDeps): CliCommand {
  return argpCommand({ name: "list-hidden-xattrs", group: "info" }, LIST_HIDDEN_XATTRS_ARGP,
    (a, io) => withTarget(openFile(deps, a.filename!, io), (t) => list(t, io)));
}

export const listHiddenXattrsCommand: CliCommand = makeListHiddenXattrsCommand(realControlDeps());
