/*
 * `scoutfs walk-inodes [-p PATH] <meta_seq|data_seq> FIRST-ENTRY LAST-ENTRY`: the inodes of
 * a seq index between two positions, up to the last stable seq (upstream walk_inodes.c,
 * WALK_INODES over the control socket, 128 entries per request).
 *
 * Output as upstream: a header "%-20s %-20s %-10s %-20s" of "#", "major", "minor", "ino"
 * before every 25th row (rows 0, 25, 50, ...), and rows "%-20llu %-20llu %-10u %-20llu" of
 * the running count, major, minor and ino (every field padded, so lines end in spaces).
 * After each batch the walk continues one past the last entry (ino, then minor, then major
 * carried on wrap) until a request returns nothing.
 *
 * Positions are parsed as upstream's parse_walk_entry(), quirks included: "-1" is the
 * largest u64 (strtoull negates modulo 2^64); a dotted "major.minor.ino" always fails at its
 * minor part, because upstream range-checks the minor's previous value (0) against INT_MIN
 * converted to unsigned, which is always true: "bad index pos at '<minor>'" then
 * "invalid first position '<major>', try '1.2.3' or '-1'" (the argument was cut at its first
 * '.' by the parse), EINVAL. The index name is compared without case.
 */
import { Errno } from "../util/errno.js";
import { WalkIndex, type WalkPos } from "../core/fs/ioctl.js";
import type { ArgpSpec } from "./argp.js";
import { argpCommand, request, withTarget } from "./cmd_common.js";
import type { CliCommand, CliIo } from "./command.js";
import {
  type ControlDeps, type ControlTarget, openMountPath, PATH_OPTION, realControlDeps,
} from "./control.js";
import { strtoull } from "./parse.js";

interface WalkArgs {
  path: string | null;
  index: string | null;
  first: string | null;
  last: string | null;
}

export const WALK_INODES_ARGP: ArgpSpec<WalkArgs, "p"> = {
  options: [PATH_OPTION],
  argsDoc: "<meta_seq|data_seq> FIRST-ENTRY LAST-ENTRY",
  doc: null,
  init: () => ({ path: null, index: null, first: null, last: null }),
  onOption: (_key, arg, st) => {
    st.input.path = arg;
    return 0;
  },
  onArg: (arg, st) => {
    const a = st.input;
    if (a.index === null) a.index = arg;
    else if (a.first === null) a.first = arg;
    else if (a.last === null) a.last = arg;
    else st.error("more than three arguments given");
    return 0;
  },
  onFini: (st) => {
    if (st.input.index === null) st.error("no index given");
    if (st.input.first === null) st.error("no first entry given");
    if (st.input.last === null) st.error("no last entry given");
  },
};

/** Entries asked for per request (upstream's ents[128]). */
export const WALK_BATCH = 128;
/** A header line precedes every this many rows. */
const HEADER_EVERY = 25n;
const U32_MAX = 0xffff_ffff;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

/**
 * parse_walk_entry(): the position, or the failure lines upstream prints. `printed` is what
 * upstream's later message shows of the argument: its text up to the first '.' the parse
 * replaced with a NUL.
 */
export function parseWalkEntry(str: string): { ok: true; pos: WalkPos } |
  { ok: false; text: string; printed: string } {
  const pos: WalkPos = { major: 0n, minor: 0, ino: 0n };
  const dot = str.indexOf(".");
  const printed = dot < 0 ? str : str.slice(0, dot);
  const parts = str.split(".");
  for (let i = 0; i < parts.length && i < 3; i++) {
    const part = parts[i]!;
    const r = strtoull(part, 0);
    // the minor's check compares its old value (0) with (u64)INT_MIN: always true
    if (r.end !== part.length || i === 1) {
      return { ok: false, text: `bad index pos at '${part}'\n`, printed };
    }
    if (i === 0) pos.major = r.value;
    else pos.ino = r.value;
  }
  return { ok: true, pos };
}

/** The header and rows of one batch of entries, numbered from `total`. */
export function formatWalkRows(entries: readonly WalkPos[], total: bigint): string {
  let s = "";
  entries.forEach((e, i) => {
    const n = total + BigInt(i);
    if (n % HEADER_EVERY === 0n) {
      s += `${"#".padEnd(20)} ${"major".padEnd(20)} ${"minor".padEnd(10)} ${"ino".padEnd(20)}\n`;
    }
    s += `${`${n}`.padEnd(20)} ${`${e.major}`.padEnd(20)} ${`${e.minor}`.padEnd(10)} ` +
      `${`${e.ino}`.padEnd(20)}\n`;
  });
  return s;
}

/** The position after e: ino, carrying into minor (u32) and then major on wrap. */
export function nextPos(e: WalkPos): WalkPos {
  const ino = (e.ino + 1n) & U64_MAX;
  if (ino !== 0n) return { ...e, ino };
  const minor = (e.minor + 1) % (U32_MAX + 1);
  if (minor !== 0) return { ...e, ino, minor };
  return { major: (e.major + 1n) & U64_MAX, minor, ino };
}

async function walk(t: ControlTarget, index: WalkIndex, first: WalkPos, last: WalkPos,
  io: CliIo): Promise<number> {
  let total = 0n;
  let from = first;
  for (;;) {
    const ents = await request(t, "walkInodes", { index, first: from, last, max: WALK_BATCH },
      io, "walk_inodes ioctl failed");
    if (typeof ents === "number") return ents;
    if (ents.length === 0) return 0;
    io.out(formatWalkRows(ents, total));
    total += BigInt(ents.length);
    from = nextPos(ents[ents.length - 1]!);
  }
}

function parsePositions(a: WalkArgs, io: CliIo): { first: WalkPos; last: WalkPos } | null {
  const out: WalkPos[] = [];
  for (const [which, s] of [["first", a.first!], ["last", a.last!]] as const) {
    const r = parseWalkEntry(s);
    if (!r.ok) {
      io.err(r.text);
      io.err(`invalid ${which} position '${r.printed}', try '1.2.3' or '-1'\n`);
      return null;
    }
    out.push(r.pos);
  }
  return { first: out[0]!, last: out[1]! };
}

async function doWalk(a: WalkArgs, deps: ControlDeps, io: CliIo): Promise<number> {
  const name = a.index!.toLowerCase();
  const index = name === "meta_seq" ? WalkIndex.META_SEQ
    : name === "data_seq" ? WalkIndex.DATA_SEQ : null;
  if (index === null) {
    io.err(`unknown index '${a.index!}', try 'meta_seq' or 'data_seq'\n`);
    return -Errno.EINVAL;
  }
  const pos = parsePositions(a, io);
  if (pos === null) return -Errno.EINVAL;
  return withTarget(openMountPath(deps, a.path, io),
    (t) => walk(t, index, pos.first, pos.last, io));
}

export function makeWalkInodesCommand(deps: ControlDeps): CliCommand {
  return argpCommand(
    { name: "walk-inodes", group: "search", summary: "Print range of indexed inodes" },
    WALK_INODES_ARGP, (a, io) => doWalk(a, deps, io));
}

export const walkInodesCommand: CliCommand = makeWalkInodesCommand(realControlDeps());
