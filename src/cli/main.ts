/*
 * Entry point of the `scoutfs` command line (bin/scoutfs calls main()).
 *
 * This file only assembles the table of runnable commands; the dispatcher, the usage text
 * and the CliCommand type live in src/cli/command.ts (upstream cmd.c), each command in its
 * own file. To make a command runnable, export a CliCommand from its file and add it to
 * RUNNABLE below; commands upstream has but this port does not implement yet are listed in
 * the usage text (command.ts UPSTREAM_COMMANDS) and fail with ENOSYS when run.
 */

import { type CliCommand, type CliIo, processIo, runCli } from "./command.js";
import { countersCommand } from "./cmd_counters.js";
import { installHelperCommand, mountCommand } from "./cmd_mount.js";
import { dfCommand } from "./cmd_df.js";
import { getAllocatedInosCommand } from "./cmd_get_allocated_inos.js";
import { getFiemapCommand } from "./cmd_get_fiemap.js";
import { getReferringEntriesCommand } from "./cmd_get_referring_entries.js";
import { inoPathCommand } from "./cmd_ino_path.js";
import { listHiddenXattrsCommand } from "./cmd_list_hidden_xattrs.js";
import { statCommand } from "./cmd_stat.js";
import { statfsCommand } from "./cmd_statfs.js";
import { walkInodesCommand } from "./cmd_walk_inodes.js";
import { fsckCommand } from "./fsck.js";
import { mkfsCommand } from "./mkfs.js";
import { printCommand } from "./print.js";

export type { CliCommand, CliIo } from "./command.js";

/** Every command this build can run. */
export const RUNNABLE: readonly CliCommand[] = [mkfsCommand, printCommand, fsckCommand,
  mountCommand, installHelperCommand, countersCommand,
  // the ioctl twins, over the mount's control socket
  statCommand, statfsCommand, dfCommand, walkInodesCommand, inoPathCommand,
  getReferringEntriesCommand, listHiddenXattrsCommand, getFiemapCommand,
  getAllocatedInosCommand];

/** Runs `scoutfs <argv...>` (argv without the program name); resolves to the exit status. */
export function main(argv: readonly string[], io: CliIo = processIo): Promise<number> {
  return runCli(argv, io, RUNNABLE);
}
