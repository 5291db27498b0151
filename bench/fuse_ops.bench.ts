/*
 * The mount daemon's own cost per FUSE request sequence, without the kernel: the FUSE
 * session (src/fuse/session.ts) and ScoutVfs over a real ScoutFs mounted in this process
 * (as the daemon does: sparse files, quorum of one, loopback TCP), fed requests encoded as
 * the kernel sends them through an in-memory transport, one sequence at a time.
 *
 * Sequences (what the kernel sends for one fsbench operation with default_permissions):
 *   create    GETATTR dir, LOOKUP name (miss), CREATE, FLUSH, RELEASE
 *   stat_cold LOOKUP name (the dentry was dropped)
 *   readdir   OPENDIR, READDIRPLUS at 0, READDIR until empty (32 KiB buffers), RELEASEDIR
 *   unlink    LOOKUP name, UNLINK, FORGET
 * Prints `FUSE_OPS metric=... value=ops/s cpu_us_per_op=...` (process CPU: steadier than
 * wall time on a shared machine). Usage: node dist/bench/fuse_ops.bench.js [--n N]
 * [--dir D] [--port P] [--phases]
 */
import fs from "node:fs";
import { performance } from "node:perf_hooks";
import { main as cli } from "../src/cli/main.js";
import { ScoutFs } from "../src/core/fs/fs.js";
import { ScoutMount } from "../src/core/mount.js";
import { openRealBlockDevice } from "../src/env/real/blockdev.js";
import { realEnv, realLogger } from "../src/env/real/env.js";
import * as P from "../src/fuse/proto.js";
import type { RequestReader, RequestSink } from "../src/fuse/reader.js";
import { FuseSession, type FuseTransport } from "../src/fuse/session.js";
import { ScoutVfs } from "../src/fuse/vfs.js";

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1]! : def;
}

class Reader implements RequestReader {
  readonly kind = "pipe";
  readonly ownsFd = true;
  private sink: RequestSink | null = null;
  start(sink: RequestSink): void {
    this.sink = sink;
  }
  pause(): void {}
  resume(): void {}
  close(): void {
    this.sink?.onEnd(null);
  }
  push(req: Buffer): void {
    const buf = this.sink!.nextBuffer();
    req.copy(buf);
    this.sink!.onRequest(buf, req.length);
  }
}

/** Replies resolve the waiter of their unique. */
class Transport implements FuseTransport {
  readonly reader = new Reader();
  readonly waiting = new Map<bigint, (r: { error: number; body: Buffer }) => void>();
  writeReply(parts: readonly Buffer[]): void {
    const b = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    const unique = b.readBigUInt64LE(8);
    const w = this.waiting.get(unique);
    this.waiting.delete(unique);
    w?.({ error: b.readInt32LE(4), body: b.subarray(16) });
  }
  writeNotify(_msg: Buffer, done: (err: NodeJS.ErrnoException | null) => void): void {
    setImmediate(() => done(null));
  }
  close(): void {}
}

let nextUnique = 2n;

function call(t: Transport, opcode: number, nodeid: number, parts: Buffer[]):
  Promise<{ error: number; body: Buffer }> {
  const unique = nextUnique;
  nextUnique += 2n;
  const req = P.encodeRequest({ opcode, unique, nodeid, uid: 0, gid: 0, pid: 0 }, parts);
  return new Promise((resolve) => {
    t.waiting.set(unique, resolve);
    t.reader.push(req);
  });
}

/** No reply expected (FORGET). */
function post(t: Transport, opcode: number, nodeid: number, parts: Buffer[]): void {
  const unique = nextUnique;
  nextUnique += 2n;
  t.reader.push(P.encodeRequest({ opcode, unique, nodeid, uid: 0, gid: 0, pid: 0 }, parts));
}

function must(r: { error: number }, what: string): void {
  if (r.error !== 0) throw new Error(`${what}: error ${r.error}`);
}

const phases = process.argv.includes("--phases");
const cpuNow = (): number => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

async function timed(metric: string, n: number, fn: (i: number) => Promise<void>):
  Promise<void> {
  const h0 = process.hrtime.bigint() / 1000n;
  const c0 = cpuNow();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await fn(i);
  const ms = performance.now() - t0;
  console.log(`FUSE_OPS metric=${metric} value=${Math.round(n / (ms / 1000))} unit=ops/s ` +
    `cpu_us_per_op=${((cpuNow() - c0) / n).toFixed(1)} n=${n}`);
  if (phases) console.log(`FUSE_OPS_PHASE ${metric} ${h0} ${process.hrtime.bigint() / 1000n}`);
}

async function main(): Promise<void> {
  const n = Number(arg("--n", "20000"));
  const dir = arg("--dir", "/var/tmp/fuse-ops-bench");
  const port = arg("--port", "31998");
  fs.mkdirSync(dir, { recursive: true });
  for (const [p, size] of [["meta", 4], ["data", 16]] as const) {
    fs.rmSync(`${dir}/${p}`, { force: true });
    fs.writeFileSync(`${dir}/${p}`, "");
    fs.truncateSync(`${dir}/${p}`, size * 1024 ** 3);
  }
  let errText = "";
  const rc = await cli(["mkfs", "-A", "-f", "-Q", `0,127.0.0.1,${port}`, `${dir}/meta`,
    `${dir}/data`], { out: () => undefined, err: (t) => { errText += t; } });
  if (rc !== 0) throw new Error(`mkfs failed: ${errText}`);
  const env = realEnv();
  const meta = await openRealBlockDevice(`${dir}/meta`);
  const data = await openRealBlockDevice(`${dir}/data`);
  const mount = await ScoutMount.mount(env, meta, {
    rid: 0x5eed_0002n, quorumSlot: 0, data,
    fenceLeader: () => Promise.resolve(), fenceClient: () => Promise.resolve(),
  });
  const sfs = new ScoutFs(mount.client);
  const vfs = new ScoutVfs(sfs, { invalInode: () => undefined, invalEntry: () => undefined },
    { nowMs: () => env.clock.monotonicMs() });
  const t = new Transport();
  const serving = FuseSession.serve(vfs, { mountpoint: "/bench", fsname: "bench",
    subtype: "scoutfs", logger: realLogger({ logLevel: "warn" }), readdirplus: "auto" }, t);
  t.reader.push(P.encodeRequest({ opcode: P.Opcode.INIT, unique: 1n, nodeid: 0, uid: 0, gid: 0,
    pid: 0 }, [P.InitInStruct.encode({ major: 7, minor: 45, maxReadahead: 1 << 20,
    flags: 0x7fff_ffff, flags2: 0 })]));
  t.waiting.set(1n, () => undefined);
  const session = await serving;

  const mk = await call(t, P.Opcode.MKDIR, 1, [P.MkdirInStruct.encode({ mode: 0o755, umask: 0 }),
    P.cstr("d")]);
  must(mk, "mkdir");
  const d = P.decodeEntryOut(mk.body, 0).nodeid;
  const names = Array.from({ length: n }, (_, i) => P.cstr(`f${String(i).padStart(8, "0")}`));
  const inos: number[] = [];
  const getattrIn = P.GetattrInStruct.encode({ getattrFlags: 0, fh: 0 });
  await timed("create", n, async (i) => {
    must(await call(t, P.Opcode.GETATTR, d, [getattrIn]), "getattr");
    const l = await call(t, P.Opcode.LOOKUP, d, [names[i]!]);
    if (l.error !== 0 && l.error !== -2) must(l, "lookup");
    const c = await call(t, P.Opcode.CREATE, d, [P.CreateInStruct.encode({ flags: 0o101,
      mode: 0o100644, umask: 0, openFlags: 0 }), names[i]!]);
    must(c, "create");
    const ino = P.decodeEntryOut(c.body, 0).nodeid;
    inos.push(ino);
    must(await call(t, P.Opcode.FLUSH, ino, [P.FlushInStruct.encode({ fh: 0, lockOwner: 0n })]),
      "flush");
    must(await call(t, P.Opcode.RELEASE, ino, [P.ReleaseInStruct.encode({ fh: 0, flags: 0,
      releaseFlags: 0, lockOwner: 0n })]), "release");
  });
  // the kernel drops its dentries and inodes (drop_caches): one FORGET per inode
  for (const ino of inos) post(t, P.Opcode.FORGET, ino, [P.ForgetInStruct.encode({ nlookup: 1 })]);
  await new Promise((r) => setImmediate(r));
  await timed("stat_cold", n, async (i) => {
    must(await call(t, P.Opcode.LOOKUP, d, [names[i]!]), "lookup");
  });
  for (const ino of inos) post(t, P.Opcode.FORGET, ino, [P.ForgetInStruct.encode({ nlookup: 1 })]);
  await new Promise((r) => setImmediate(r));
  const size = 32 * 1024;
  let entries = 0;
  await timed("readdir_dirs", 1, async () => {
    must(await call(t, P.Opcode.OPENDIR, d, [P.OpenInStruct.encode({ flags: 0, openFlags: 0 })]),
      "opendir");
    let off = 0;
    for (let plus = true; ; plus = false) {
      const r = await call(t, plus ? P.Opcode.READDIRPLUS : P.Opcode.READDIR, d,
        [P.ReadInStruct.encode({ fh: 0, offset: off, size, readFlags: 0, lockOwner: 0n,
          flags: 0 })]);
      must(r, "readdir");
      if (r.body.length === 0) break;
      const es = plus ? P.decodeDirentplus(r.body).map((e) => ({ off: e.off, nodeid: e.entry.nodeid }))
        : P.decodeDirents(r.body).map((e) => ({ off: e.off, nodeid: 0 }));
      entries += es.length;
      off = es[es.length - 1]!.off;
      for (const e of es) {
        if (e.nodeid !== 0) post(t, P.Opcode.FORGET, e.nodeid, [P.ForgetInStruct.encode({ nlookup: 1 })]);
      }
    }
    must(await call(t, P.Opcode.RELEASEDIR, d, [P.ReleaseInStruct.encode({ fh: 0, flags: 0,
      releaseFlags: 0, lockOwner: 0n })]), "releasedir");
  });
  console.log(`FUSE_OPS metric=readdir_entries_listed value=${entries}`);
  await timed("unlink", n, async (i) => {
    const l = await call(t, P.Opcode.LOOKUP, d, [names[i]!]);
    must(l, "lookup");
    must(await call(t, P.Opcode.UNLINK, d, [names[i]!]), "unlink");
    post(t, P.Opcode.FORGET, P.decodeEntryOut(l.body, 0).nodeid,
      [P.ForgetInStruct.encode({ nlookup: 1 })]);
  });
  await session.close();
  await mount.unmount();
  await meta.close();
  await data.close();
  env.timers.clearAll?.();
  fs.rmSync(dir, { recursive: true, force: true });
}

main().then(() => process.exit(0), (e: unknown) => {
  console.error(e);
  process.exit(1);
});
