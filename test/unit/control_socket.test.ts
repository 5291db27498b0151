/*
 * Goal: the control socket works end to end over a real unix socket: the server answers
 * with a handler backed by a simulated mount (the same controlHandlerFor the daemon uses),
 * the CLI commands find it through a file's st_dev and print upstream's output; the socket
 * and its directory are private (0600, 0700); a stale socket is replaced; requests for
 * another volume are refused (EXDEV); a malformed frame or a flood closes only that
 * connection; a handler's bug is an EIO reply and a logged report; no socket is ENOTTY.
 *
 * Method: a temp directory holds a file and the socket directory; the server listens at
 * controlSocketPath(major, minor) of the file's device, so realControlDeps(socketDir) finds
 * it exactly as the CLI finds a mount's. Raw sockets send hand-made frames.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  ControlClient, controlSocketPath, type ControlHandler, devMajorMinor, realControlDeps,
  startControlServer,
} from "../../src/cli/control.js";
import { decodeReply, encodeRequest, FRAME_LEN_SIZE } from "../../src/cli/control_wire.js";
import { makeStatfsCommand } from "../../src/cli/cmd_statfs.js";
import { makeWalkInodesCommand } from "../../src/cli/cmd_walk_inodes.js";
import { makeInoPathCommand } from "../../src/cli/cmd_ino_path.js";
import { makeGetReferringEntriesCommand } from "../../src/cli/cmd_get_referring_entries.js";
import { makeGetAllocatedInosCommand } from "../../src/cli/cmd_get_allocated_inos.js";
import { makeDfCommand } from "../../src/cli/cmd_df.js";
import { runCli, type CliCommand, type CliIo } from "../../src/cli/command.js";
import { ROOT_CRED } from "../../src/core/fs/perm.js";
import { FsError, isFsError } from "../../src/util/errno.js";
import { type FsRig, newFsRig, settledHandler, SIM_FSID } from "../helpers/sim_fs.js";

interface Captured extends CliIo {
  stdout: string;
  stderr: string;
}

function capture(): Captured {
  const c: Captured = { stdout: "", stderr: "",
    out: (t) => { c.stdout += t; }, err: (t) => { c.stderr += t; },
    outBytes: (b) => { c.stdout += b.toString("latin1"); } };
  return c;
}

let dir = "";
let file = "";
let sockDir = "";
let sockPath = "";
let rig: FsRig;
let handler: ControlHandler;
let server: { close(): Promise<void> };
const logged: string[] = [];

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "scoutfs-ctl-"));
  file = path.join(dir, "file");
  await writeFile(file, "x");
  sockDir = path.join(dir, "dev");
  const st = await stat(file, { bigint: true });
  const { major, minor } = devMajorMinor(st.dev);
  sockPath = controlSocketPath(major, minor, sockDir);
  rig = await newFsRig(11);
  handler = settledHandler(rig, rig.hs[0]!);
  // a stale socket left by a dead daemon (a process that exits without closing it)
  await mkdir(sockDir, { mode: 0o755 });
  execFileSync(process.execPath, ["-e",
    `require("net").createServer().listen(${JSON.stringify(sockPath)}, () => process.exit(0))`]);
  assert.ok((await stat(sockPath)).isSocket(), "stale socket in place");
  server = await startControlServer(sockPath, handler, { log: (m) => logged.push(m) });
});

after(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

async function run(cmd: CliCommand, argv: string[]): Promise<{ code: number; out: string;
  err: string }> {
  const io = capture();
  const code = await runCli(argv, io, [cmd]);
  return { code, out: io.stdout, err: io.stderr };
}

const deps = (): ReturnType<typeof realControlDeps> => realControlDeps(sockDir);

test("socket and directory modes; devMajorMinor as glibc", async () => {
  assert.equal((await stat(sockPath)).mode & 0o777, 0o600);
  assert.equal((await stat(sockDir)).mode & 0o777, 0o700);
  assert.deepEqual(devMajorMinor(0x0803n), { major: 8, minor: 3 });
  // glibc's makedev(0x123abc, 0x45678)
  const dev = ((0x123abcn & 0xfffff000n) << 32n) | ((0x123abcn & 0xfffn) << 8n) |
    ((0x45678n & 0xffffff00n) << 12n) | (0x45678n & 0xffn);
  assert.deepEqual(devMajorMinor(dev), { major: 0x123abc, minor: 0x45678 });
});

test("CLI over the socket: statfs, walk-inodes, ino-path, referring entries, allocated inos",
  async () => {
    const fs = rig.fss[0]!;
    const d = await rig.s(fs.mkdir(1n, Buffer.from("d"), 0o755, ROOT_CRED));
    const f = await rig.s(fs.create(d.ino, Buffer.from("f"), 0o644, ROOT_CRED));
    await rig.s(fs.sync());
    let r = await run(makeStatfsCommand(deps()), ["statfs", "-p", file]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out,
      /^fsid {14}123456789abcdef0\nrid {15}00000000000000a0\ncommitted_seq {5}\d+\n/);
    r = await run(makeStatfsCommand(deps()), ["statfs", "-p", file, "-s", "total_meta_blocks"]);
    assert.equal(r.out, "2048\n");
    r = await run(makeWalkInodesCommand(deps()), ["walk-inodes", "-p", file, "--", "meta_seq",
      "0", "-1"]);
    assert.equal(r.code, 0, r.err);
    const lines = r.out.split("\n");
    assert.equal(lines[0], `${"#".padEnd(20)} ${"major".padEnd(20)} ${"minor".padEnd(10)} ` +
      `${"ino".padEnd(20)}`);
    assert.ok(lines.some((l) => l.trim().split(/ +/)[3] === `${f.ino}`), "f in the walk");
    r = await run(makeInoPathCommand(deps()), ["ino-path", "-p", file, `${f.ino}`]);
    assert.deepEqual([r.code, r.out, r.err], [0, "d/f\n", ""]);
    r = await run(makeGetReferringEntriesCommand(deps()), ["get-referring-entries", "-p", file,
      `${f.ino}`]);
    assert.equal(r.out, `dir ${d.ino} pos 2 type 8 name f\n`);
    r = await run(makeGetAllocatedInosCommand(deps()), ["get-allocated-inos", "-i", `${f.ino}`,
      "-s", "-p", file]);
    assert.equal(r.out, `${f.ino}\n`);
    r = await run(makeDfCommand(deps()), ["df", "-p", file]);
    assert.equal(r.code, 0, r.err);
    // cells right-aligned to their column ("Total" is wider than 2048), two spaces after each
    assert.match(r.out,
      /^ {4}Type {2}Size {2}Total {2} *Used {2} *Free {2}Use% {2}\nMetaData {2}64KB {3}2048 {2}/);
  });

test("a path on another filesystem: ENOTTY as an ioctl there; a missing path: open fails",
  async () => {
    const other = realControlDeps(path.join(dir, "nowhere"));
    let r = await run(makeStatfsCommand(other), ["statfs", "-p", file]);
    assert.deepEqual([r.code, r.out, r.err],
      [0, "", "ioctl failed: Inappropriate ioctl for device (25)\n"]);
    r = await run(makeDfCommand(other), ["df", "-p", file]);
    assert.equal(r.code, 1);
    assert.equal(r.err, "statfs_more returned -1: error Inappropriate ioctl for device (25)\n" +
      "scoutfs: df failed: Input/output error (5)\n");
    r = await run(makeStatfsCommand(deps()), ["statfs", "-p", path.join(dir, "missing")]);
    assert.equal(r.code, 1);
    assert.equal(r.err, `failed to open '${path.join(dir, "missing")}': No such file or ` +
      "directory (2)\nscoutfs: statfs failed: No such file or directory (2)\n");
  });

function rawConnect(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection(sockPath, () => resolve(s));
    s.once("error", reject);
  });
}

/** Sends bytes and collects what comes back until the server closes or a reply is whole. */
function exchange(s: Socket, bytes: Buffer): Promise<{ data: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    let data = Buffer.alloc(0);
    const done = (closed: boolean): void => resolve({ data, closed });
    s.on("data", (c: Buffer) => {
      data = Buffer.concat([data, c]);
      if (data.length >= FRAME_LEN_SIZE && data.length >= FRAME_LEN_SIZE + data.readUInt32LE(0)) {
        done(false);
      }
    });
    s.on("close", () => done(true));
    s.write(bytes);
  });
}

/** Sends bytes; true once the server closes the connection, false after 2 s without. */
function closedAfter(s: Socket, bytes: Buffer): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), 2000);
    s.on("data", () => undefined);
    s.on("close", () => {
      clearTimeout(t);
      resolve(true);
    });
    s.write(bytes);
  });
}

test("another volume's fsid is EXDEV; hello answers any", async () => {
  const s = await rawConnect();
  const r = await exchange(s, encodeRequest({ id: 7, op: "statfsMore", fsid: 99n, args: {} }));
  const reply = decodeReply(r.data.subarray(FRAME_LEN_SIZE));
  assert.deepEqual([reply.id, reply.errno, reply.fsid], [7, 18, SIM_FSID]);
  s.destroy();
  const c = await ControlClient.connect(sockPath);
  assert.equal(c.mountFsid, SIM_FSID);
  assert.equal((await c.call("statMore", { ino: 1n })).onlineBlocks, 0n);
  await assert.rejects(c.call("statMore", { ino: 999_999n }),
    (e: unknown) => isFsError(e, "ENOENT"));
  c.close();
});

test("a malformed frame closes only its connection", async () => {
  const good = await ControlClient.connect(sockPath);
  const bad = await rawConnect();
  const junk = Buffer.alloc(40, 0xab);
  junk.writeUInt32LE(36, 0);
  const r = await exchange(bad, junk);
  assert.ok(r.closed && r.data.length === 0, "bad connection cut without a reply");
  const huge = await rawConnect();
  const len = Buffer.alloc(4);
  len.writeUInt32LE(1 << 30, 0);
  assert.ok((await exchange(huge, len)).closed, "an oversized length is cut at once");
  const flood = await rawConnect();
  const many = Buffer.concat(Array.from({ length: 40 }, (_, i) =>
    encodeRequest({ id: i + 1, op: "hello", fsid: 0n, args: {} })));
  assert.ok(await closedAfter(flood, many), "more queued requests than the bound");
  assert.equal((await good.call("statfsMore", {})).fsid, SIM_FSID, "others unaffected");
  good.close();
  assert.ok(logged.some((m) => m.includes("control connection closed")));
});

test("a handler bug is an EIO reply and a log line; the server carries on", async () => {
  const p = path.join(dir, "dev", "bug.sock");
  const buggy: ControlHandler = { ...handler,
    statfsMore: () => Promise.reject(new TypeError("boom")),
    allocDetail: () => Promise.reject(new FsError("EOVERFLOW")) };
  const log: string[] = [];
  const srv = await startControlServer(p, buggy, { log: (m) => log.push(m) });
  try {
    const c = await ControlClient.connect(p);
    await assert.rejects(c.call("statfsMore", {}), (e: unknown) => isFsError(e, "EIO"));
    await assert.rejects(c.call("allocDetail", {}), (e: unknown) => isFsError(e, "EOVERFLOW"));
    assert.equal((await c.call("statMore", { ino: 1n })).offlineBlocks, 0n);
    c.close();
    assert.ok(log.some((m) => m.includes("boom")));
  } finally {
    await srv.close();
  }
  await assert.rejects(stat(p), "close() removed the socket");
  // connecting where no daemon listens reads as "not scoutfs"
  await assert.rejects(ControlClient.connect(p), (e: unknown) => isFsError(e, "ENOTTY"));
});

test("a file where the socket should be is not removed", async () => {
  const p = path.join(dir, "dev", "file.sock");
  await writeFile(p, "keep");
  await assert.rejects(startControlServer(p, handler), (e: unknown) => isFsError(e, "EEXIST"));
  assert.equal((await stat(p)).size, 4);
});
