/*
 * POSIX conformance suite (DESIGN.md section 6, tier 4; issue 4 point 8), runnable against
 * ANY directory: the ext4 reference, a tmpfs, or the scoutfs FUSE mount.
 *
 * Goal: one list of cases (permissions as other users, link counts, rename and renameat2,
 * long names and paths, nanosecond and far-future timestamps, xattrs, ACLs, truncate, sparse
 * files, O_TMPFILE, symlinks, readdir, unlink of an open file) whose expectations all hold on
 * ext4; a target that differs where it legitimately may declares it in its TargetProfile and
 * the case checks the declared rule and reports a note instead of skipping.
 *
 * Method: every case runs in a fresh directory ROOT/<case> (mode 0755, owned by the caller),
 * removed again when the case passes and kept for inspection when it fails. The suite needs
 * root (to chown and to become other users through setpriv), python3 and setpriv. Use it as
 *   - runPosixSuite(root, profile) -> outcomes, or posixSubtests(t, root, profile) in node:test;
 *   - `node dist/test/posix/suite.js DIR [--profile ext4|tmpfs|scoutfs] [--only a,b]`.
 */
import fs from "node:fs";
import path from "node:path";
import type { TestContext } from "node:test";
import * as data from "./cases_data.js";
import * as names from "./cases_names.js";
import * as perm from "./cases_perm.js";
import * as xattr from "./cases_xattr.js";
import { type CaseCtx, isCliMain, makeCtx, profiles, type TargetProfile } from "./target.js";

export { profiles, type TargetProfile } from "./target.js";

export interface PosixCase {
  name: string;
  run(ctx: CaseCtx): Promise<void>;
}

/** Every case, in the order they run. */
export const posixCases: readonly PosixCase[] = [
  { name: "permission-classes", run: perm.permissionClasses },
  { name: "sticky-directory", run: perm.stickyDirectory },
  { name: "suid-sgid", run: perm.suidSgid },
  { name: "acl-access", run: perm.aclAccess },
  { name: "acl-default", run: perm.aclDefault },
  { name: "link-counts", run: names.linkCounts },
  { name: "rename-over", run: names.renameOver },
  { name: "renameat2-flags", run: names.renameat2Flags },
  { name: "name-lengths", run: names.nameLengths },
  { name: "path-max", run: names.pathMax },
  { name: "symlinks", run: names.symlinks },
  { name: "readdir-many", run: names.readdirMany },
  { name: "timestamps-exact", run: data.timestampsExact },
  { name: "timestamps-updated", run: data.timestampsUpdated },
  { name: "truncate", run: data.truncateGrowShrink },
  { name: "sparse-files", run: data.sparseFiles },
  { name: "o-tmpfile", run: data.tmpfile },
  { name: "unlink-while-open", run: data.unlinkWhileOpen },
  { name: "xattr-basics", run: xattr.xattrBasics },
  { name: "xattr-limits", run: xattr.xattrLimits },
  { name: "xattr-permissions", run: xattr.xattrPermissions },
];

export interface CaseOutcome {
  name: string;
  ok: boolean;
  ms: number;
  notes: string[];
  error?: string;
  /** Where a failed case's files were kept. */
  dir: string;
}

function findCase(name: string): PosixCase {
  const c = posixCases.find((x) => x.name === name);
  if (c === undefined) throw new Error(`no POSIX case ${name}; cases: ${posixCases.map((x) => x.name).join(", ")}`);
  return c;
}

/** Run one case (by name or value) in ROOT/<name>; never throws, reports instead. */
export async function runPosixCase(c: PosixCase | string, root: string, profile: TargetProfile):
  Promise<CaseOutcome> {
  const kase = typeof c === "string" ? findCase(c) : c;
  const dir = path.join(root, kase.name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { mode: 0o755 });
  fs.chmodSync(dir, 0o755);
  const ctx = makeCtx(dir, profile);
  const start = Date.now();
  try {
    await kase.run(ctx);
    fs.rmSync(dir, { recursive: true, force: true });
    return { name: kase.name, ok: true, ms: Date.now() - start, notes: ctx.notes, dir };
  } catch (e) {
    const error = e instanceof Error ? (e.stack ?? e.message) : String(e);
    return { name: kase.name, ok: false, ms: Date.now() - start, notes: ctx.notes, error, dir };
  }
}

/** Run the cases (all, or those named in `only`) one after another. */
export async function runPosixSuite(root: string, profile: TargetProfile, only?: string[]):
  Promise<CaseOutcome[]> {
  const cases = only === undefined ? posixCases : only.map(findCase);
  const out: CaseOutcome[] = [];
  for (const c of cases) out.push(await runPosixCase(c, root, profile));
  return out;
}

/** node:test: one subtest per case; notes become diagnostics, failures keep their files. */
export async function posixSubtests(t: TestContext, root: string, profile: TargetProfile): Promise<void> {
  for (const c of posixCases) {
    await t.test(c.name, async (st) => {
      const r = await runPosixCase(c, root, profile);
      for (const n of r.notes) st.diagnostic(`note: ${n}`);
      if (!r.ok) throw new Error(`${c.name} on ${profile.name} (files kept in ${r.dir}):\n${r.error ?? ""}`);
    });
  }
}

/** One line per case, for people and CI logs. */
export function formatOutcomes(outcomes: CaseOutcome[]): string[] {
  return outcomes.flatMap((o) => [
    `${o.ok ? "PASS" : "FAIL"} ${o.name} (${o.ms} ms)`,
    ...o.notes.map((n) => `     note: ${n}`),
    ...(o.ok ? [] : [`     kept: ${o.dir}`, ...(o.error ?? "").split("\n").map((l) => `     ${l}`)]),
  ]);
}

function cliArg(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

async function cli(args: string[]): Promise<number> {
  const root = args[0];
  const profileName = cliArg(args, "--profile") ?? "ext4";
  const profile = (profiles as Record<string, TargetProfile>)[profileName];
  if (root === undefined || root.startsWith("--") || profile === undefined) {
    console.error("usage: node suite.js DIR [--profile ext4|tmpfs|scoutfs] [--only case1,case2]");
    return 2;
  }
  const outcomes = await runPosixSuite(root, profile, cliArg(args, "--only")?.split(","));
  for (const line of formatOutcomes(outcomes)) console.log(line);
  const failed = outcomes.filter((o) => !o.ok).length;
  console.log(`${outcomes.length - failed}/${outcomes.length} cases passed on ${profile.name} at ${root}`);
  return failed === 0 ? 0 : 1;
}

if (isCliMain(import.meta.url)) process.exitCode = await cli(process.argv.slice(2));
