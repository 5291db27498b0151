/*
 * POSIX conformance tier: what a target filesystem is, and the few places where a correct
 * filesystem may legitimately differ from ext4 (the reference). Shared by the cases, the
 * suite runner and the test files.
 *
 * Method: a TargetProfile names a rule for each known difference (directory st_size, largest
 * xattr value, SEEK_HOLE precision, st_blksize) plus the reason for it. A case never skips a
 * check on a difference: it asks ctx.rule(key) for the target's rule and checks that instead,
 * and when the rule differs from ext4's the case records a note ("scoutfs: dirSize = nameSum:
 * ...") that the runner prints, so every departure from the reference stays visible.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { pathToFileURL } from "node:url";
import type { PyUser } from "../helpers/posix_py.js";

/** How a directory's st_size follows from its entries. */
export type DirSizeRule =
  | "blocks"   // ext4: a positive multiple of st_blksize
  | "bogo20"   // tmpfs: 40 + 20 per entry
  | "nameSum"; // scoutfs: the sum of the entry name lengths in bytes (empty = 0)

export interface TargetRules {
  dirSize: DirSizeRule;
  /** Largest accepted xattr value; one more byte gives E2BIG. */
  xattrValueMax: number;
  /** "exact": SEEK_DATA/SEEK_HOLE find holes; "wholeFileData": the generic fallback. */
  seekHole: "exact" | "wholeFileData";
  /** Expected st_blksize of a regular file. */
  blksize: number;
}
export type RuleKey = keyof TargetRules;

export interface TargetProfile {
  name: string;
  rules: TargetRules;
  /** Why each rule that differs from ext4's does. */
  reasons: Partial<Record<RuleKey, string>>;
}

const ext4Rules: TargetRules = { dirSize: "blocks", xattrValueMax: 65536, seekHole: "exact", blksize: 4096 };

export const profiles = {
  ext4: { name: "ext4", rules: ext4Rules, reasons: {} },
  tmpfs: {
    name: "tmpfs",
    rules: { ...ext4Rules, dirSize: "bogo20" },
    reasons: { dirSize: "shmem counts BOGO_DIRENT_SIZE (20) per entry, 40 for . and .." },
  },
  scoutfs: {
    name: "scoutfs",
    rules: { ...ext4Rules, dirSize: "nameSum", xattrValueMax: 65535 },
    reasons: {
      dirSize: "upstream scoutfs: directory i_size is the sum of entry name lengths (reference/scoutfs.md 1.5)",
      xattrValueMax: "upstream scoutfs: SCOUTFS_XATTR_MAX_VAL_LEN = 65535 (reference/scoutfs.md 1.19)",
    },
  },
} satisfies Record<string, TargetProfile>;

/** Other users for permission checks (need not exist in /etc/passwd). */
export const ALICE: PyUser = { uid: 1000, gid: 1000 };
export const BOB: PyUser = { uid: 1001, gid: 1001 };

/** What a case gets: a fresh directory of its own and the target's rules. */
export interface CaseCtx {
  dir: string;
  profile: TargetProfile;
  notes: string[];
  /** The target's rule for `key`; records a note when it is not ext4's. */
  rule<K extends RuleKey>(key: K): TargetRules[K];
  /** A path inside the case directory. */
  p(...names: string[]): string;
}

export function makeCtx(dir: string, profile: TargetProfile): CaseCtx {
  const notes: string[] = [];
  const noted = new Set<RuleKey>();
  return {
    dir, profile, notes,
    rule<K extends RuleKey>(key: K): TargetRules[K] {
      const v = profile.rules[key];
      if (v !== ext4Rules[key] && !noted.has(key)) {
        noted.add(key);
        notes.push(`${profile.name}: ${key} = ${String(v)} (ext4: ${String(ext4Rules[key])}): ` +
          `${profile.reasons[key] ?? "no reason given"}`);
      }
      return v;
    },
    p: (...names) => path.join(dir, ...names),
  };
}

/** The errno code a synchronous call fails with, or "ok". */
export function errnoOf(fn: () => unknown): string {
  try {
    fn();
    return "ok";
  } catch (e) {
    if (e instanceof Error && "code" in e && typeof e.code === "string") return e.code;
    throw e;
  }
}

/** Assert that fn fails with `code` (or succeeds for "ok"). */
export function expectErrno(fn: () => unknown, code: string, what: string): void {
  assert.equal(errnoOf(fn), code, what);
}

/** A PyUser's name for messages. */
export function who(u: PyUser): string {
  return `uid ${u.uid} gid ${u.gid}${u.groups ? ` groups ${u.groups.join(",")}` : ""}`;
}

/**
 * True when the module at `metaUrl` was started as a program (`node file.js ...`), not
 * imported, and not run as a test file by `node --test dist/test/` (which would call it with
 * no arguments; NODE_TEST_CONTEXT is set there).
 */
export function isCliMain(metaUrl: string): boolean {
  const arg = process.argv[1];
  return arg !== undefined && process.env["NODE_TEST_CONTEXT"] === undefined &&
    metaUrl === pathToFileURL(path.resolve(arg)).href;
}
