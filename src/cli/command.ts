/*
 * The scoutfs command table and dispatcher (upstream utils/src/cmd.c and cmd.h).
 *
 * `scoutfs <command> [args]` finds the command by name and runs it with argv starting at the
 * command name (argv[0] = "mkfs"), as upstream's cmd_execute() does, so argp messages read
 * "mkfs: ...". src/cli/main.ts holds the runnable commands (CliCommand objects exported by
 * the per-command files) and calls runCli(); tests call runCli() with their own tables.
 *
 * Behaviour reproduced from cmd.c:
 *  - no command, or an unknown one (including "--help"): usage() on stderr, exit 1; an
 *    unknown name is first reported as "scoutfs: unrecognized command: '<name>'";
 *  - a command failing with an errno prints "scoutfs: <cmd> failed: <strerror> (<errno>)" on
 *    stderr and exits 1.
 *
 * Our conventions for CliCommand.run(): it resolves to an exit status (0, 64 for argp usage
 * errors, 1...) or to a negative errno, which is reported like upstream's negative return.
 * Throwing an FsError is the same as returning -errno. Any other exception is a bug: its
 * stack goes to stderr and the exit status is 1.
 *
 * The usage listing names every upstream command with upstream's args_doc and doc strings,
 * in upstream's registration order. Commands not implemented in this port yet are listed but
 * not runnable: running one prints "<cmd>: not implemented in this version of scoutfs" and
 * then the usual "scoutfs: <cmd> failed: Function not implemented (38)", exit 1, so scripts
 * see a normal command failure and people see why.
 */

import { Errno, FsError, strerror } from "../util/errno.js";
import { FORMAT_VERSION_MAX, FORMAT_VERSION_MIN } from "../core/format.js";

/** Where a command writes; tests capture it, the real CLI writes to process.stdout/stderr. */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  /** Raw bytes to stdout (file names and paths need not be UTF-8); default: out(utf8). */
  outBytes?(bytes: Buffer): void;
}

/** cmd.h GROUP_CORE, GROUP_INFO, GROUP_SEARCH, GROUP_AGENT, GROUP_DEBUG. */
export type CommandGroup = "core" | "info" | "search" | "agent" | "debug";

/** What the usage listing shows for a command: its argp args_doc and doc. */
export interface CommandInfo {
  readonly name: string;
  readonly group: CommandGroup;
  /** argp args_doc; null prints "(null)" as glibc's printf does for upstream's NULL. */
  readonly argsDoc: string | null;
  /** argp doc: the one-line summary. */
  readonly summary: string;
}

export interface CliCommand extends CommandInfo {
  /** argv[0] is the command name. Resolves to an exit status, or to -errno on failure. */
  run(argv: readonly string[], io: CliIo): Promise<number>;
}

const GROUP_TITLES: readonly [CommandGroup, string][] = [
  ["core", "Core admin"],
  ["info", "Additional Information"],
  ["search", "Search Acceleration"],
  ["agent", "Archival Agent Support"],
  ["debug", "Debugging commands"],
];

/**
 * Upstream's commands in registration order: constructors run in link order, i.e. the
 * sorted utils/src/*.c file order, and in definition order within a file. Texts are the
 * args_doc and doc of each file's struct argp. Entries marked "reconstructed" were not
 * found in their final argp form; they use the last upstream text found (see the notes).
 */
export const UPSTREAM_COMMANDS: readonly CommandInfo[] = [
  // attr_x.c (doc of get-attr-x really is lower case upstream)
  { name: "get-attr-x", group: "agent", argsDoc: "FILE",
    summary: "get extensible file attributes" },
  { name: "set-attr-x", group: "agent", argsDoc: "FILE",
    summary: "Set extensible file attributes" },
  // change_format_version.c, change_quorum_config.c (args_doc "" upstream)
  { name: "change-format-version", group: "core", argsDoc: "",
    summary: "Change format version of an existing ScoutFS filesystem" },
  { name: "change-quorum-config", group: "core", argsDoc: "",
    summary: "Change quorum slots and addresses of an existing ScoutFS filesystem" },
  // counters.c: reconstructed (only the pre-argp cmd_register() text was found; group guessed)
  { name: "counters", group: "debug", argsDoc: "SYSFS-DIR",
    summary: "Show counters for a mounted volume" },
  // df.c
  { name: "df", group: "core", argsDoc: "", summary: "Show metadata and data block usage" },
  // fiemap.c, get_allocated_inos.c (NULL args_doc), get_referring_entries.c, ino_path.c
  { name: "get-fiemap", group: "debug", argsDoc: "FILE", summary: "Print fiemap extent mapping" },
  { name: "get-allocated-inos", group: "debug", argsDoc: null,
    summary: "Print allocated inode numbers from starting inode number" },
  { name: "get-referring-entries", group: "search", argsDoc: "INODE-NUM",
    summary: "Print directory entries that refer to inode number" },
  { name: "ino-path", group: "search", argsDoc: "INODE-NUM",
    summary: "Print paths that refer to inode number" },
  // listxattr_hidden.c: texts from the argp version, group reconstructed
  { name: "list-hidden-xattrs", group: "info", argsDoc: "FILE",
    summary: "Print the names of hidden xattrs on a file" },
  // mkfs.c, move_blocks.c, prepare_empty_data_device.c, print.c, punch_offline.c
  { name: "mkfs", group: "core", argsDoc: "META-DEVICE DATA-DEVICE",
    summary: "Initialize a new ScoutFS filesystem" },
  { name: "move-blocks", group: "agent",
    argsDoc: "FROM_FILE --from-offset OFFSET --length LENGTH TO_FILE --to-offset OFFSET",
    summary: "Move a fixed-size region of extents from one regular file to another" },
  { name: "prepare-empty-data-device", group: "core", argsDoc: "META-DEVICE DATA-DEVICE",
    summary: "Prepare empty data device for use with an existing ScoutFS filesystem" },
  { name: "print", group: "debug", argsDoc: "META-DEV", summary: "Print metadata structures" },
  { name: "punch-offline", group: "agent", argsDoc: "PATH",
    summary: "Make a (sparse) hole in the file at offset and with length" },
  // quota.c
  { name: "quota-add", group: "core", argsDoc: "", summary: "Add quota rule" },
  { name: "quota-del", group: "core", argsDoc: "", summary: "Delete quota rule" },
  { name: "quota-list", group: "core", argsDoc: "", summary: "List quota rules" },
  { name: "quota-wipe", group: "core", argsDoc: "", summary: "Delete all quota rules" },
  { name: "quota-restore", group: "core", argsDoc: "",
    summary: "Restore quota rules from list output on stdin" },
  // read_xattr_index.c, read_xattr_totals.c, resize_devices.c, search_xattrs.c, setattr.c
  { name: "read-xattr-index", group: "info", argsDoc: "FIRST-ENTRY LAST-ENTRY",
    summary: "Search and print inode numbers indexed by their .indx. xattrs" },
  { name: "read-xattr-totals", group: "info", argsDoc: "",
    summary: "Print global value totals of .totl. xattrs" },
  { name: "resize-devices", group: "core", argsDoc: "",
    summary: "Online resize of metadata and/or data devices" },
  { name: "search-xattrs", group: "info", argsDoc: "XATTR-NAME",
    summary: "Print inode numbers of inodes which may have given xattr" },
  { name: "setattr", group: "agent", argsDoc: "FILE",
    summary: "Set attributes on newly-created zero-length file" },
  // stage_release.c: texts from the argp version, group reconstructed
  { name: "stage", group: "agent", argsDoc: "ARCHIVE-FILE STAGE-FILE --data-version VERSION",
    summary: "Write archive file contents to an offline file" },
  { name: "release", group: "agent", argsDoc: "FILE --data-version VERSION",
    summary: "Mark file region offline and free extents" },
  // stat.c
  { name: "stat", group: "info", argsDoc: "FILE", summary: "Show ScoutFS extra inode information" },
  { name: "statfs", group: "info", argsDoc: "", summary: "Show ScoutFS file system information" },
  // waiting.c
  { name: "data-waiting", group: "agent", argsDoc: "--inode INODE-NUM --block BLOCK-NUM",
    summary: "Print operations waiting for data blocks" },
  { name: "data-wait-err", group: "agent",
    argsDoc: "--inode INODE-NUM --version VER-NUM --offset OFF-NUM --count COUNT --op OP --err ERR",
    summary: "Return error from matching waiters" },
  // walk_inodes.c: args_doc from the argp version, doc and group reconstructed
  { name: "walk-inodes", group: "search", argsDoc: "<meta_seq|data_seq> FIRST-ENTRY LAST-ENTRY",
    summary: "Print range of indexed inodes" },
];

/** The listing: upstream's commands, then runnable commands upstream does not have (fsck). */
export function listedCommands(runnable: readonly CommandInfo[]): CommandInfo[] {
  const upstream = new Set(UPSTREAM_COMMANDS.map((c) => c.name));
  return [...UPSTREAM_COMMANDS, ...runnable.filter((c) => !upstream.has(c.name))];
}

/**
 * cmd.c usage(). The "Supported format version" line is printed by newer upstream cmd.c;
 * its text is from the reference, its position (after the --help hint) is our best reading.
 */
export function usageText(listed: readonly CommandInfo[]): string {
  const width = Math.max(...listed.map((c) => c.name.length));
  let s = "usage: scoutfs <command> [<args>]\n\n";
  s += "Selected fs defaults to current working directory.\n";
  s += "See <command> --help for more details.\n";
  s += `Supported format version: ${FORMAT_VERSION_MIN}-${FORMAT_VERSION_MAX}\n`;
  for (const [group, title] of GROUP_TITLES) {
    s += `\n${title}:\n`;
    for (const c of listed.filter((x) => x.group === group)) {
      // "  %*s %s\n  %*s %s\n": the name right-aligned to the longest name of all groups
      s += `  ${c.name.padStart(width)} ${c.argsDoc ?? "(null)"}\n`;
      s += `  ${"".padStart(width)} ${c.summary}\n`;
    }
  }
  return s;
}

function failedLine(name: string, errno: number): string {
  return `scoutfs: ${name} failed: ${strerror(errno)} (${errno})\n`;
}

async function runCommand(cmd: CliCommand, argv: readonly string[], io: CliIo): Promise<number> {
  try {
    const ret = await cmd.run(argv, io);
    if (ret >= 0) return ret;
    io.err(failedLine(cmd.name, -ret));
    return 1;
  } catch (e) {
    if (e instanceof FsError) {
      io.err(failedLine(cmd.name, e.errno));
      return 1;
    }
    io.err(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 1;
  }
}

/**
 * cmd_execute(): runs `scoutfs <argv...>` (argv without the program name) against the
 * runnable commands and returns the process exit status.
 */
export async function runCli(argv: readonly string[], io: CliIo,
  runnable: readonly CliCommand[]): Promise<number> {
  const listed = listedCommands(runnable);
  const name = argv[0];
  const cmd = runnable.find((c) => c.name === name);
  if (cmd) return runCommand(cmd, argv, io);
  if (name !== undefined && listed.some((c) => c.name === name)) {
    io.err(`${name}: not implemented in this version of scoutfs\n`);
    io.err(failedLine(name, Errno.ENOSYS));
    return 1;
  }
  if (name !== undefined) io.err(`scoutfs: unrecognized command: '${name}'\n`);
  io.err(usageText(listed));
  return 1;
}

/** The real terminal: process.stdout and process.stderr. */
export const processIo: CliIo = {
  out: (text) => { process.stdout.write(text); },
  err: (text) => { process.stderr.write(text); },
  outBytes: (bytes) => { process.stdout.write(bytes); },
};
