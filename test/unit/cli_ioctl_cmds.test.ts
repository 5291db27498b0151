/*
 * Goal: the CLI commands over a mount (stat, statfs, df, walk-inodes, ino-path,
 * get-referring-entries, list-hidden-xattrs, get-fiemap, get-allocated-inos) print exactly
 * what upstream's utilities print, byte for byte: column layouts, padding, paging loops,
 * error lines and exit statuses, argument errors (exit 64) and upstream's quirks.
 *
 * Method: each command runs with ControlDeps whose targets answer through the real wire
 * codec and serveRequest() (encode, decode, serve, encode, decode) from a scripted handler,
 * or from a simulated mount's handler for the per-file commands; expected texts are written
 * out literally from upstream's printf formats and the reference's examples.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { makeDfCommand } from "../../src/cli/cmd_df.js";
import { makeGetAllocatedInosCommand } from "../../src/cli/cmd_get_allocated_inos.js";
import { makeGetFiemapCommand } from "../../src/cli/cmd_get_fiemap.js";
import { makeGetReferringEntriesCommand } from "../../src/cli/cmd_get_referring_entries.js";
import { makeInoPathCommand } from "../../src/cli/cmd_ino_path.js";
import { makeListHiddenXattrsCommand } from "../../src/cli/cmd_list_hidden_xattrs.js";
import { makeStatCommand } from "../../src/cli/cmd_stat.js";
import { makeStatfsCommand } from "../../src/cli/cmd_statfs.js";
import { makeWalkInodesCommand, parseWalkEntry } from "../../src/cli/cmd_walk_inodes.js";
import { type CliCommand, type CliIo, runCli } from "../../src/cli/command.js";
import {
  type ControlDeps, type ControlHandler, type ControlTarget, serveRequest,
} from "../../src/cli/control.js";
import {
  type ArgsOf, type ControlOpName, type ControlRequest, decodeReply, decodeRequest,
  encodeRequest, FRAME_LEN_SIZE, type ResultOf,
} from "../../src/cli/control_wire.js";
import type { FiemapExtent, StatfsMore, WalkPos } from "../../src/core/fs/ioctl.js";
import { ROOT_CRED } from "../../src/core/fs/perm.js";
import { errnoCode, FsError } from "../../src/util/errno.js";
import { newFsRig, settledHandler } from "../helpers/sim_fs.js";

const FSID = 0x0123_4567_89ab_cdefn;
const B = (s: string): Buffer => Buffer.from(s);
/** An op the test does not give an answer for: the mount reports an I/O error. */
const failing = (): Promise<never> => Promise.reject(new FsError("EIO"));

function handler(over: Partial<ControlHandler>): ControlHandler {
  return { fsid: FSID, rid: 0xa0n, walkInodes: failing, inoPath: failing,
    getReferringEntries: failing, listxattrHidden: failing, statMore: failing, statfsMore: failing,
    allocDetail: failing, getAllocatedInos: failing, fiemap: failing, ...over };
}

/** A target answering through the codec and serveRequest, recording each request. */
function loopTarget(h: ControlHandler, ino: bigint, calls: ControlRequest[]): ControlTarget {
  return {
    ino, blksize: 4096,
    async call<N extends ControlOpName>(op: N, args: ArgsOf<N>): Promise<ResultOf<N>> {
      const q0 = { id: calls.length + 1, op, fsid: h.fsid, args } as ControlRequest;
      const frame = encodeRequest(q0);
      const q = decodeRequest(frame.subarray(FRAME_LEN_SIZE));
      calls.push(q);
      const reply = decodeReply((await serveRequest(h, q, () => undefined))
        .subarray(FRAME_LEN_SIZE));
      if (reply.errno !== 0 || !("result" in reply)) {
        throw new FsError(errnoCode(reply.errno) ?? "EIO");
      }
      return reply.result as ResultOf<N>;
    },
    close: () => undefined,
  };
}

interface Rig {
  deps: ControlDeps;
  calls: ControlRequest[];
  opened: string[];
}

/** Files that exist (path -> ino); every other path fails to open with ENOENT. */
function rig(h: ControlHandler, files: Record<string, bigint> = { "/mnt": 1n },
  env: Record<string, string> = {}): Rig {
  const r: Rig = { calls: [], opened: [], deps: {
    openTarget: (p) => {
      r.opened.push(p);
      const ino = files[p];
      if (ino === undefined) return Promise.reject(new FsError("ENOENT", undefined, "open", p));
      return Promise.resolve(loopTarget(h, ino, r.calls));
    },
    cwd: () => "/mnt",
    env: (n) => env[n],
  } };
  return r;
}

async function run(cmd: CliCommand, argv: string[]): Promise<{ code: number; out: string;
  err: string }> {
  let out = "";
  let err = "";
  const io: CliIo = { out: (t) => { out += t; }, err: (t) => { err += t; },
    outBytes: (b) => { out += b.toString("latin1"); } };
  const code = await runCli(argv, io, [cmd]);
  return { code, out, err };
}

/** argp's hint; glibc wraps it at column 79 (before "information." for long names). */
function tryLine(c: string): string {
  const line = `Try \`${c} --help' or \`${c} --usage' for more information.`;
  return `${line.length > 79 ? line.replace(" information.", "\ninformation.") : line}\n`;
}

// -------------------------------------------------------------------------------------------

const STAT = { metaSeq: 12n, dataSeq: 11n, dataVersion: 3n, onlineBlocks: 4n, offlineBlocks: 0n,
  crtimeSec: 1_700_000_000n, crtimeNsec: 123 };

test("stat: %-17s fields, crtime nsec padded to 9, -s, unknown field, ioctl failure exits 0",
  async () => {
    const r = rig(handler({ statMore: (a) => {
      assert.equal(a.ino, 77n);
      return Promise.resolve(STAT);
    } }), { f: 77n });
    const cmd = makeStatCommand(r.deps);
    assert.deepEqual(await run(cmd, ["stat", "f"]), { code: 0, err: "", out:
      "meta_seq          12\n" +
      "data_seq          11\n" +
      "data_version      3\n" +
      "online_blocks     4\n" +
      "offline_blocks    0\n" +
      "crtime            1700000000.000000123\n" });
    assert.deepEqual(await run(cmd, ["stat", "-s", "crtime", "f"]),
      { code: 0, err: "", out: "1700000000.000000123\n" });
    assert.deepEqual(await run(cmd, ["stat", "--single-field=data_seq", "f"]),
      { code: 0, err: "", out: "11\n" });
    assert.deepEqual(await run(cmd, ["stat", "-s", "bogus", "f"]), { code: 1, out: "",
      err: "unknown field: 'bogus'\nscoutfs: stat failed: Invalid argument (22)\n" });
    assert.deepEqual(await run(cmd, ["stat", "nope"]), { code: 1, out: "",
      err: "failed to open 'nope': No such file or directory (2)\n" +
        "scoutfs: stat failed: No such file or directory (2)\n" });
    const bad = makeStatCommand(rig(handler({}), { f: 1n }).deps);
    assert.deepEqual(await run(bad, ["stat", "f"]), { code: 0, out: "",
      err: "ioctl failed: Input/output error (5)\n" });
    assert.deepEqual(await run(cmd, ["stat"]), { code: 64, out: "",
      err: `stat: missing operand\n${tryLine("stat")}` });
    assert.deepEqual(await run(cmd, ["stat", "a", "b"]), { code: 64, out: "",
      err: `stat: more than one argument\n${tryLine("stat")}` });
  });

const SFM: StatfsMore = { fsid: FSID, rid: 0xa0n, committedSeq: 42n,
  totalMetaBlocks: 1_048_576n, totalDataBlocks: 16_777_152n, reservedMetaBlocks: 0n };

test("statfs: fields, hex ids, -s, path from -p, SCOUTFS_MOUNT_PATH or the cwd", async () => {
  const h = handler({ statfsMore: () => Promise.resolve(SFM) });
  let r = rig(h);
  const out = "fsid              0123456789abcdef\n" +
    "rid               00000000000000a0\n" +
    "committed_seq     42\n" +
    "total_meta_blocks 1048576\n" +
    "total_data_blocks 16777152\n";
  assert.deepEqual(await run(makeStatfsCommand(r.deps), ["statfs"]), { code: 0, err: "", out });
  assert.deepEqual(r.opened, ["/mnt"], "the cwd by default");
  assert.deepEqual(await run(makeStatfsCommand(r.deps), ["statfs", "-s", "rid", "ignored"]),
    { code: 0, err: "", out: "00000000000000a0\n" });
  r = rig(h, { "/env": 1n, "/p": 1n }, { SCOUTFS_MOUNT_PATH: "/env" });
  await run(makeStatfsCommand(r.deps), ["statfs"]);
  await run(makeStatfsCommand(r.deps), ["statfs", "-p", "/p"]);
  assert.deepEqual(r.opened, ["/env", "/p"]);
});

const ALLOCS = (metaFree: bigint, dataFree: bigint): { id: bigint; blocks: bigint; type: number;
  meta: boolean; avail: boolean }[] => [
  { id: 0n, blocks: metaFree - 10n, type: 1, meta: true, avail: true },
  { id: 1n, blocks: 10n, type: 1, meta: true, avail: false },
  { id: 0n, blocks: dataFree, type: 1, meta: false, avail: true },
];

test("df: the reference's table, -h sizes, reserve, 19-character cells, failures", async () => {
  const h = handler({ statfsMore: () => Promise.resolve(SFM),
    allocDetail: () => Promise.resolve(ALLOCS(1_015_794n, 16_777_152n)) });
  const cmd = makeDfCommand(rig(h).deps);
  assert.deepEqual(await run(cmd, ["df"]), { code: 0, err: "", out:
    "    Type  Size     Total   Used      Free  Use%  \n" +
    "MetaData  64KB   1048576  32782   1015794     3  \n" +
    "    Data   4KB  16777152      0  16777152     0  \n" });
  assert.deepEqual(await run(cmd, ["df", "-h"]), { code: 0, err: "", out:
    "    Type  Size    Total    Used     Free  Use%  \n" +
    "MetaData  64KB  64.00GB  2.00GB  62.00GB     3  \n" +
    "    Data   4KB  64.00GB   0.00B  64.00GB     0  \n" });
  // the reserve comes off the metadata free count, never below 0
  const reserved = handler({ statfsMore: () => Promise.resolve({ ...SFM,
    reservedMetaBlocks: 2_000_000n }), allocDetail: () => Promise.resolve(ALLOCS(100n, 0n)) });
  assert.deepEqual((await run(makeDfCommand(rig(reserved).deps), ["df"])).out,
    "    Type  Size     Total      Used  Free  Use%  \n" +
    "MetaData  64KB   1048576   1048576     0   100  \n" +
    "    Data   4KB  16777152  16777152     0   100  \n");
  // snprintf into 20 bytes keeps 19 characters of a 20-digit number
  const huge = handler({ statfsMore: () => Promise.resolve({ ...SFM,
    totalDataBlocks: 0xffff_ffff_ffff_ffffn }), allocDetail: () => Promise.resolve([]) });
  const hugeOut = (await run(makeDfCommand(rig(huge).deps), ["df"])).out.split("\n");
  // and Use% is computed in u64: (2^64 - 1) * 100 wraps, so upstream prints 0
  assert.equal(hugeOut[2],
    "    Data   4KB  1844674407370955161  1844674407370955161     0     0  ");
  const noAlloc = handler({ statfsMore: () => Promise.resolve(SFM),
    allocDetail: () => Promise.reject(new FsError("EOVERFLOW")) });
  assert.deepEqual(await run(makeDfCommand(rig(noAlloc).deps), ["df"]), { code: 1, out: "",
    err: "alloc_detail returned -1: error Value too large for defined data type (75)\n" +
      "scoutfs: df failed: Input/output error (5)\n" });
  assert.deepEqual(await run(cmd, ["df", "--help"]), { code: 0, err: "", out:
    "Usage: df [OPTION...] \nShow metadata and data block usage\n\n  -h, --human-readable       " +
    "Print sizes in human readable format (e.g., 1KB\n                             234MB 2GB)\n" +
    "  -p, --path=PATH            Path to ScoutFS filesystem\n  -?, --help                 " +
    "Give this help list\n      --usage                Give a short usage message\n\n" +
    "Mandatory or optional arguments to long options are also mandatory or optional\nfor any " +
    "corresponding short options.\n" });
});

/** A walk handler over a sorted list of entries (what the index holds). */
function walkHandler(all: WalkPos[]): ControlHandler {
  const key = (p: WalkPos): bigint => (p.major << 64n) | p.ino;
  return handler({ walkInodes: (a) => Promise.resolve(all.filter((e) =>
    key(e) >= key(a.first) && key(e) <= key(a.last)).slice(0, a.max)) });
}

test("walk-inodes: header every 25 rows, padded columns, batches of 128, continuation",
  async () => {
    const all = Array.from({ length: 300 }, (_, i) => ({ major: BigInt(5 + Math.floor(i / 100)),
      minor: 0, ino: BigInt(1025 + i) }));
    const r = rig(walkHandler(all));
    const res = await run(makeWalkInodesCommand(r.deps),
      ["walk-inodes", "--", "meta_seq", "0", "-1"]);
    assert.equal(res.code, 0);
    const lines = res.out.split("\n");
    const header = "#                    major                minor      ino                 ";
    assert.equal(lines[0], header);
    assert.equal(lines[1],
      "0                    5                    0          1025                ");
    assert.equal(lines[26], header, "a header before row 25");
    assert.equal(lines[27],
      "25                   5                    0          1050                ");
    assert.equal(lines.filter((l) => l === header).length, 12);
    assert.equal(lines.length, 300 + 12 + 1);
    // three pages of 128, the last short, then an empty one ends the walk
    assert.deepEqual(r.calls.map((q) => q.op === "walkInodes" ? [q.args.first.major,
      q.args.first.ino, q.args.max] : null), [[0n, 0n, 128], [6n, 1025n + 128n, 128],
      [7n, 1025n + 256n, 128], [7n, 1025n + 300n, 128]]);
    assert.equal(r.calls[0]!.op === "walkInodes" && r.calls[0]!.args.last.major,
      0xffff_ffff_ffff_ffffn, "-1 is U64_MAX");
  });

test("walk-inodes: index and position errors as upstream, dotted positions included",
  async () => {
    const cmd = makeWalkInodesCommand(rig(walkHandler([])).deps);
    assert.deepEqual(await run(cmd, ["walk-inodes", "--", "DATA_SEQ", "0", "-1"]),
      { code: 0, out: "", err: "" }, "index names compare without case");
    // without "--" getopt takes -1 for an option, as upstream's (its tests pass "--")
    assert.deepEqual(await run(cmd, ["walk-inodes", "meta_seq", "0", "-1"]), { code: 64, out: "",
      err: `walk-inodes: invalid option -- '1'\n${tryLine("walk-inodes")}` });
    assert.deepEqual(await run(cmd, ["walk-inodes", "--", "size", "0", "-1"]), { code: 1, out: "",
      err: "unknown index 'size', try 'meta_seq' or 'data_seq'\n" +
        "scoutfs: walk-inodes failed: Invalid argument (22)\n" });
    assert.deepEqual(await run(cmd, ["walk-inodes", "--", "meta_seq", "1.2.3", "-1"]), { code: 1,
      out: "", err: "bad index pos at '2'\ninvalid first position '1', try '1.2.3' or '-1'\n" +
        "scoutfs: walk-inodes failed: Invalid argument (22)\n" });
    assert.deepEqual(await run(cmd, ["walk-inodes", "meta_seq", "0", "x7"]), { code: 1,
      out: "", err: "bad index pos at 'x7'\ninvalid last position 'x7', try '1.2.3' or '-1'\n" +
        "scoutfs: walk-inodes failed: Invalid argument (22)\n" });
    assert.deepEqual(await run(cmd, ["walk-inodes", "meta_seq", "0"]), { code: 64, out: "",
      err: `walk-inodes: no last entry given\n${tryLine("walk-inodes")}` });
    assert.deepEqual(await run(cmd, ["walk-inodes", "a", "b", "c", "d"]), { code: 64, out: "",
      err: `walk-inodes: more than three arguments given\n${tryLine("walk-inodes")}` });
    assert.deepEqual(parseWalkEntry("0x10"), { ok: true, pos: { major: 16n, minor: 0, ino: 0n } });
    const fails = makeWalkInodesCommand(rig(handler({})).deps);
    assert.deepEqual(await run(fails, ["walk-inodes", "--", "meta_seq", "0", "-1"]), { code: 1,
      out: "",
      err: "walk_inodes ioctl failed: Input/output error (5)\n" +
        "scoutfs: walk-inodes failed: Input/output error (5)\n" });
  });

test("ino-path: paths per line, cursor iteration, ENOENT ends, other errors, arguments",
  async () => {
    const paths = [{ dirIno: 1n, dirPos: 5n, path: B("top") },
      { dirIno: 1030n, dirPos: 0xffff_ffff_ffff_ffffn,
        path: Buffer.from([0x61, 0xe9, 0x2f, 0x62]) }];
    const r = rig(handler({ inoPath: (a) => {
      const p = paths.find((x) => x.dirIno > a.dirIno || (x.dirIno === a.dirIno &&
        x.dirPos >= a.dirPos));
      return p === undefined ? Promise.reject(new FsError("ENOENT")) : Promise.resolve(p);
    } }));
    const cmd = makeInoPathCommand(r.deps);
    assert.deepEqual(await run(cmd, ["ino-path", "0x401"]), { code: 0, err: "",
      out: "top\na\u00e9/b\n" });
    assert.deepEqual(r.calls.map((q) => q.op === "inoPath" ? [q.args.ino, q.args.dirIno,
      q.args.dirPos] : null), [[1025n, 0n, 0n], [1025n, 1n, 6n], [1025n, 1031n, 0n]],
    "dir_pos + 1, wrapping into dir_ino");
    const eio = makeInoPathCommand(rig(handler({ inoPath: () =>
      Promise.reject(new FsError("ENAMETOOLONG")) })).deps);
    assert.deepEqual(await run(eio, ["ino-path", "5"]), { code: 1, out: "",
      err: "inodes_since ioctl failed: File name too long (36)\n" +
        "scoutfs: ino-path failed: File name too long (36)\n" });
    assert.deepEqual(await run(cmd, ["ino-path", "x"]), { code: 64, out: "",
      err: `invalid 64bit value: 'x'\nino-path: inode parse error\n${tryLine("ino-path")}` });
    assert.deepEqual(await run(cmd, ["ino-path", "0"]), { code: 64, out: "",
      err: `ino-path: must provide inode number\n${tryLine("ino-path")}` });
    assert.deepEqual(await run(cmd, ["ino-path", "5", "6"]), { code: 64, out: "",
      err: `ino-path: more than one argument given\n${tryLine("ino-path")}` });
  });

test("get-referring-entries: lines, paging until LAST, failures", async () => {
  const ent = (dirIno: bigint, dirPos: bigint, name: string, last = false): {
    dirIno: bigint; dirPos: bigint; ino: bigint; type: number; last: boolean; name: Buffer } =>
    ({ dirIno, dirPos, ino: 1025n, type: 8, last, name: B(name) });
  const pages = [[ent(1n, 2n, "a"), ent(1n, 7n, "b")], [ent(1026n, 3n, "c", true)]];
  const r = rig(handler({ getReferringEntries: () => Promise.resolve(pages.shift() ?? []) }));
  const res = await run(makeGetReferringEntriesCommand(r.deps),
    ["get-referring-entries", "1025"]);
  assert.deepEqual(res, { code: 0, err: "", out: "dir 1 pos 2 type 8 name a\n" +
    "dir 1 pos 7 type 8 name b\ndir 1026 pos 3 type 8 name c\n" });
  assert.deepEqual(r.calls.map((q) => q.op === "getReferringEntries" ? [q.args.dirIno,
    q.args.dirPos] : null), [[0n, 0n], [1n, 8n]]);
  const none = makeGetReferringEntriesCommand(rig(handler({ getReferringEntries: () =>
    Promise.resolve([]) })).deps);
  assert.deepEqual(await run(none, ["get-referring-entries", "7"]), { code: 0, out: "", err: "" });
  const fail = makeGetReferringEntriesCommand(rig(handler({})).deps);
  assert.deepEqual(await run(fail, ["get-referring-entries", "7"]), { code: 1, out: "",
    err: "ioctl failed: Input/output error (5)\n" +
      "scoutfs: get-referring-entries failed: Input/output error (5)\n" });
});

test("list-hidden-xattrs: names with non-printables as '?', cursor paging, errors", async () => {
  const replies = [
    { names: [B("scoutfs.hide.a"), Buffer.from("scoutfs.hide.\x01\x7f\xff", "latin1")],
      hashPos: 7n, idPos: 3n, done: false },
    { names: [B("scoutfs.hide.srch.z")], hashPos: 9n, idPos: 1n, done: true },
  ];
  const r = rig(handler({ listxattrHidden: (a) => {
    assert.equal(a.ino, 55n);
    return Promise.resolve(replies.shift()!);
  } }), { file: 55n });
  assert.deepEqual(await run(makeListHiddenXattrsCommand(r.deps), ["list-hidden-xattrs", "file"]),
    { code: 0, err: "", out: "scoutfs.hide.a\nscoutfs.hide.???\nscoutfs.hide.srch.z\n" });
  assert.deepEqual(r.calls.map((q) => q.op === "listxattrHidden" ? [q.args.hashPos,
    q.args.idPos] : null), [[0n, 0n], [7n, 3n]]);
  const cmd = makeListHiddenXattrsCommand(rig(handler({}), { file: 1n }).deps);
  assert.deepEqual(await run(cmd, ["list-hidden-xattrs", "file"]), { code: 1, out: "",
    err: "listxattr_hidden ioctl failed: Input/output error (5)\n" +
      "scoutfs: list-hidden-xattrs failed: Input/output error (5)\n" });
  assert.deepEqual(await run(cmd, ["list-hidden-xattrs"]), { code: 64, out: "",
    err: `list-hidden-xattrs: must specify filename\n${tryLine("list-hidden-xattrs")}` });
  assert.deepEqual(await run(cmd, ["list-hidden-xattrs", "a", "b"]), { code: 64, out: "",
    err: "list-hidden-xattrs: more than one filename argument given\n" +
      tryLine("list-hidden-xattrs") });
});

test("get-fiemap: both offsets, -L, -P, -b, flags, paging, extents count", async () => {
  const ext = (logical: bigint, physical: bigint, length: bigint, flags: number): FiemapExtent =>
    ({ logical, physical, length, flags });
  const all = [ext(0n, 0n, 40_988_672n, 0x2), ext(40_988_672n, 8192n, 8192n, 0x800),
    ext(40_996_864n, 16384n, 4096n, 0x1)];
  const h = handler({ fiemap: (a) => Promise.resolve(all.filter((e) =>
    e.logical + e.length > a.start).slice(0, 2)) });
  const r = rig(h, { f: 9n });
  assert.deepEqual(await run(makeGetFiemapCommand(r.deps), ["get-fiemap", "f"]), { code: 0,
    err: "", out: "0: offset: 0 0 length: 10007 flags: O..\n" +
      "1: offset: 10007 2 length: 2 flags: .U.\n2: offset: 10009 4 length: 1 flags: ..L\n" +
      "extents: 3\n" });
  assert.deepEqual(r.calls.map((q) => q.op === "fiemap" ? [q.args.ino, q.args.start,
    q.args.max] : null), [[9n, 0n, 292], [9n, 40_996_864n, 292]]);
  const cmd = makeGetFiemapCommand(rig(h, { f: 9n }).deps);
  assert.equal((await run(cmd, ["get-fiemap", "-L", "f"])).out.split("\n")[0],
    "0: offset: 0 length: 10007 flags: O..");
  assert.equal((await run(cmd, ["get-fiemap", "-P", "-b", "f"])).out.split("\n")[1],
    "1: offset: 8192 length: 8192 flags: .U.");
  const empty = makeGetFiemapCommand(rig(handler({ fiemap: () => Promise.resolve([]) }),
    { f: 9n }).deps);
  assert.deepEqual(await run(empty, ["get-fiemap", "f"]),
    { code: 0, err: "", out: "extents: 0\n" });
  assert.deepEqual(await run(cmd, ["get-fiemap", "-P", "-L", "f"]), { code: 64, out: "",
    err: `get-fiemap: can't pass both -P and -L options\n${tryLine("get-fiemap")}` });
  const nosup = makeGetFiemapCommand(rig(handler({ fiemap: () =>
    Promise.reject(new FsError("EOPNOTSUPP")) }), { f: 9n }).deps);
  assert.deepEqual(await run(nosup, ["get-fiemap", "f"]), { code: 1, out: "",
    err: "get_fiemap ioctl failed: Operation not supported (95)\n" +
      "scoutfs: get-fiemap failed: Operation not supported (95)\n" });
});

test("get-allocated-inos: numbers, -s, the -i fall-through into the path, argument errors",
  async () => {
    const h = handler({ getAllocatedInos: (a) => Promise.resolve(
      [1025n, 1027n, 1030n].filter((n) => n >= a.startIno).slice(0, a.max)) });
    let r = rig(h);
    const cmd = (): CliCommand => makeGetAllocatedInosCommand(r.deps);
    assert.deepEqual(await run(cmd(), ["get-allocated-inos", "-i", "1025", "-p", "/mnt"]),
      { code: 0, err: "", out: "1025\n1027\n1030\n" });
    assert.deepEqual(await run(cmd(), ["get-allocated-inos", "-i", "1026", "-s", "-p", "/mnt"]),
      { code: 0, err: "", out: "" }, "-s prints only the asked number");
    assert.deepEqual(await run(cmd(), ["get-allocated-inos", "-s", "-i", "1027", "-p", "/mnt"]),
      { code: 0, err: "", out: "1027\n" });
    assert.deepEqual(r.calls.map((q) => q.op === "getAllocatedInos" ? q.args.max : null),
      [1024, 1, 1]);
    // upstream's -i falls through to -p: the number becomes the path unless -p follows
    r = rig(h);
    assert.deepEqual(await run(cmd(), ["get-allocated-inos", "-p", "/mnt", "-i", "1025"]), {
      code: 1, out: "", err: "failed to open '1025': No such file or directory (2)\n" +
        "scoutfs: get-allocated-inos failed: No such file or directory (2)\n" });
    assert.deepEqual(await run(cmd(), ["get-allocated-inos", "extra", "-p", "/mnt"]), {
      code: 64, out: "", err: "get-allocated-inos: must provide --ino starting inode number " +
        `option\n${tryLine("get-allocated-inos")}` });
    assert.deepEqual(await run(cmd(), ["get-allocated-inos", "-i", "z"]), { code: 64, out: "",
      err: "invalid 64bit value: 'z'\nget-allocated-inos: must provide --ino starting inode " +
        `number option\n${tryLine("get-allocated-inos")}` });
  });

test("per-file commands over a simulated mount: stat, list-hidden-xattrs, get-fiemap",
  async () => {
    const sim = await newFsRig(21);
    const fs = sim.fss[0]!;
    const f = await sim.s(fs.create(1n, B("f"), 0o644, ROOT_CRED));
    await sim.s(fs.write(f.ino, 0n, Buffer.alloc(3 * 4096, 7), ROOT_CRED));
    await sim.s(fs.setxattr(f.ino, B("scoutfs.hide.x"), B(""), 0, ROOT_CRED));
    await sim.s(fs.setxattr(f.ino, B("user.y"), B("1"), 0, ROOT_CRED));
    const a = await sim.s(fs.getattr(f.ino));
    const r = rig(settledHandler(sim, sim.hs[0]!), { "/mnt/f": f.ino });
    const nsec = String(a.crtime.nsec).padStart(9, "0");
    assert.deepEqual(await run(makeStatCommand(r.deps), ["stat", "/mnt/f"]), { code: 0, err: "",
      out: `meta_seq          ${a.metaSeq}\ndata_seq          ${a.dataSeq}\n` +
        `data_version      ${a.dataVersion}\nonline_blocks     ${a.onlineBlocks}\n` +
        `offline_blocks    0\ncrtime            ${a.crtime.sec}.${nsec}\n` });
    assert.deepEqual(await run(makeListHiddenXattrsCommand(r.deps),
      ["list-hidden-xattrs", "/mnt/f"]), { code: 0, err: "", out: "scoutfs.hide.x\n" });
    const map = await sim.s(fs.fiemap(f.ino));
    const res = await run(makeGetFiemapCommand(r.deps), ["get-fiemap", "-b", "/mnt/f"]);
    assert.equal(res.code, 0, res.err);
    // written blocks, then the preallocation's unwritten tail, which ends the map
    const f3 = (e: FiemapExtent): string => `${e.flags & 2 ? "O" : "."}` +
      `${e.flags & 0x800 ? "U" : "."}${e.flags & 1 ? "L" : "."}`;
    assert.equal(res.out, map.map((e, i) => `${i}: offset: ${e.logical} ${e.physical} length: ` +
      `${e.length} flags: ${f3(e)}\n`).join("") + `extents: ${map.length}\n`);
    assert.equal(f3(map[map.length - 1]!).at(-1), "L");
    assert.ok(res.out.startsWith("0: offset: 0 "), res.out);
  });
