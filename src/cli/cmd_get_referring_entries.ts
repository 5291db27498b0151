/*
 * `scoutfs get-referring-entries [-p PATH] INODE-NUM`: the directory entries naming an inode
 * (upstream get_referring_entries.c, GET_REFERRING_ENTRIES over the control socket).
 *
 * Output as upstream: "dir <dir_ino> pos <dir_pos> type <d_type> name <name>" per entry.
 * Iteration: from cursor (0, 0); stop at an entry flagged LAST or when a request returns
 * nothing; otherwise continue one past the last entry (dir_pos + 1, carrying into dir_ino).
 * A failure prints "ioctl failed: <strerror> (<errno>)" and the command fails with it.
 * Arguments as ino-path (cmd_ino_path.ts).
 */
import { REFERRING_ENTRIES_MAX, type ReferringEntry } from "../core/fs/ioctl.js";
import { argpCommand, request, withTarget } from "./cmd_common.js";
import type { CliCommand, CliIo } from "./command.js";
import { inoArgp, nextCursor } from "./cmd_ino_path.js";
import {
  type ControlDeps, type ControlTarget, openMountPath, outBytes, realControlDeps,
} from "./control.js";

export const GET_REFERRING_ENTRIES_ARGP =
  inoArgp("Print directory entries that refer to inode number");

/** One entry's line (the name's bytes as they are). */
export function formatEntry(e: ReferringEntry): Buffer {
  return Buffer.concat([Buffer.from(`dir ${e.dirIno} pos ${e.dirPos} type ${e.type} name `),
    e.name, Buffer.from("\n")]);
}

async function entries(t: ControlTarget, ino: bigint, io: CliIo): Promise<number> {
  let cur: { dirIno: bigint; dirPos: bigint } | null = { dirIno: 0n, dirPos: 0n };
  while (cur !== null) {
    const ents = await request(t, "getReferringEntries",
      { ino, ...cur, max: REFERRING_ENTRIES_MAX }, io, "ioctl failed");
    if (typeof ents === "number") return ents;
    if (ents.length === 0) return 0;
    outBytes(io, Buffer.concat(ents.map(formatEntry)));
    const last = ents[ents.length - 1]!;
    if (last.last) return 0;
    cur = nextCursor(last.dirIno, last.dirPos);
  }
  return 0;
}

export function makeGetReferringEntriesCommand(deps: ControlDeps): CliCommand {
  return argpCommand({ name: "get-referring-entries", group: "search" },
    GET_REFERRING_ENTRIES_ARGP, (a, io) =>
      withTarget(openMountPath(deps, a.path, io), (t) => entries(t, a.ino, io)));
}

export const getReferringEntriesCommand: CliCommand =
  makeGetReferringEntriesCommand(realControlDeps());
