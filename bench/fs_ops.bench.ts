/*
 * The POSIX operations of one mount without FUSE: what the daemon's core costs per request.
 *
 * Makes a volume on sparse files (META and DATA, created if missing), mounts it in this
 * process exactly as the daemon does (quorum of one, the server in the same process, real
 * block devices and loopback TCP) and times ScoutFs calls in one directory, wall clock, one
 * thread:
 *   create (what a FUSE CREATE runs), lookup of existing names (a cold stat's LOOKUP: the
 *   kernel has nothing cached), getattr, negative lookup (the LOOKUP before each create),
 *   readdir of every entry, write+read of 4 KiB per file, fsync after a 4 KiB append, unlink.
 * Usage: node dist/bench/fs_ops.bench.js [--n N] [--dir /var/tmp/x] [--port P]
 * Prints one `FS_OPS metric=... value=... unit=...` line per figure (ops/s and µs/op).
 */
import fs from "node:fs";
import { performance } from "node:perf_hooks";
import { main as cli } from "../src/cli/main.js";
import { ScoutFs } from "../src/core/fs/fs.js";
import { ScoutMount } from "../src/core/mount.js";
import { DirListingBuilder, LISTING_MAX_BYTES } from "../src/fuse/vfs_dircache.js";
import { openRealBlockDevice } from "../src/env/real/blockdev.js";
import { realEnv } from "../src/env/real/env.js";

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1]! : def;
}

/** cpu: this process's CPU time over the phase (µs); steadier than wall time on a busy host. */
function report(metric: string, n: number, ms: number, cpuUs: number): void {
  console.log(`FS_OPS metric=${metric} value=${Math.round(n / (ms / 1000))} unit=ops/s ` +
    `us_per_op=${((ms * 1000) / n).toFixed(1)} cpu_us_per_op=${(cpuUs / n).toFixed(1)} n=${n}`);
}

function cpuNow(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/** With --phases, each phase's monotonic span in µs (to cut a --cpu-prof profile by phase). */
const phases = process.argv.includes("--phases");
const nowUs = (): bigint => process.hrtime.bigint() / 1000n;

async function timed(metric: string, n: number, fn: (i: number) => Promise<unknown>):
  Promise<void> {
  const h0 = nowUs();
  const c0 = cpuNow();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await fn(i);
  report(metric, n, performance.now() - t0, cpuNow() - c0);
  if (phases) console.log(`FS_OPS_PHASE ${metric} ${h0} ${nowUs()}`);
}

async function main(): Promise<void> {
  const n = Number(arg("--n", "20000"));
  const dir = arg("--dir", "/var/tmp/fs-ops-bench");
  const port = arg("--port", "31999");
  fs.mkdirSync(dir, { recursive: true });
  const metaPath = `${dir}/meta`;
  const dataPath = `${dir}/data`;
  for (const [p, size] of [[metaPath, 4], [dataPath, 16]] as const) {
    fs.rmSync(p, { force: true });
    fs.writeFileSync(p, "");
    fs.truncateSync(p, size * 1024 ** 3);
  }
  let errText = "";
  const rc = await cli(["mkfs", "-A", "-f", "-Q", `0,127.0.0.1,${port}`, metaPath, dataPath],
    { out: () => undefined, err: (t) => { errText += t; } });
  if (rc !== 0) throw new Error(`mkfs failed: ${errText}`);
  const env = realEnv();
  const meta = await openRealBlockDevice(metaPath);
  const data = await openRealBlockDevice(dataPath);
  const mount = await ScoutMount.mount(env, meta, {
    rid: 0x5eed_0001n, quorumSlot: 0, data,
    fenceLeader: () => Promise.resolve(), fenceClient: () => Promise.resolve(),
  });
  const sfs = new ScoutFs(mount.client);
  const root = { uid: 0, gid: 0, groups: [] };
  const d = await sfs.mkdir(sfs.rootIno, Buffer.from("d"), 0o755, root);
  const names = Array.from({ length: n }, (_, i) => Buffer.from(`f${String(i).padStart(8, "0")}`));
  const inos: bigint[] = [];
  const absent = names.map((b) => Buffer.from(`x${b.toString()}`));
  await timed("lookup_negative", n, async (i) => {
    await sfs.lookupOrNull(d.ino, absent[i]!, root);
  });
  await timed("create", n, async (i) => {
    const a = await sfs.create(d.ino, names[i]!, 0o644, root);
    sfs.open(a.ino);
    inos.push(a.ino);
    await sfs.release(a.ino);
  });
  await timed("lookup", n, (i) => sfs.lookup(d.ino, names[i]!, root));
  await timed("getattr", n, (i) => sfs.getattr(inos[i]!));
  let entries = 0;
  const c0 = cpuNow();
  const t0 = performance.now();
  for (let pos = 0n; ;) {
    let got = 0;
    pos = await sfs.readdir(d.ino, pos, () => { got++; entries++; return true; }, root);
    if (got === 0) break;
  }
  report("readdir_entries", entries, performance.now() - t0, cpuNow() - c0);
  // what a FUSE READDIR of an uncached directory costs first: the encoded listing
  const c1 = cpuNow();
  const h1 = nowUs();
  const t1 = performance.now();
  const b = new DirListingBuilder(LISTING_MAX_BYTES, Number(d.ino));
  const r = await sfs.listDir(d.ino, root, (v, at, len, pos, i, type) =>
    b.add(v, at, len, pos, i, type));
  const listing = b.finish(r.version, Number(r.parent));
  report("listing_entries", listing.count, performance.now() - t1, cpuNow() - c1);
  if (phases) console.log(`FS_OPS_PHASE listing ${h1} ${nowUs()}`);
  await sfs.sync();
  const page = Buffer.alloc(4096, 7);
  const nw = Math.min(n, 5000);
  await timed("write4k", nw, (i) => sfs.write(inos[i]!, 0n, page, root));
  await timed("read4k", nw, (i) => sfs.read(inos[i]!, 0n, 4096));
  const big = Buffer.alloc(1 << 20, 9);
  const seqMiB = Number(arg("--seq-mib", "256"));
  const seqIno = inos[1]!;
  await timed("seqwrite_1m", seqMiB, (i) => sfs.write(seqIno, BigInt(i) << 20n, big, root));
  await sfs.sync();
  await timed("seqread_1m", seqMiB, (i) => sfs.read(seqIno, BigInt(i) << 20n, 1 << 20));
  const nf = Math.min(n, Number(arg("--fsyncs", "2000")));
  await timed("append4k_fsync", nf, async (i) => {
    await sfs.write(inos[0]!, BigInt(4096 * (i + 1)), page, root);
    await sfs.fsync(inos[0]!, true);
  });
  await timed("unlink", n, async (i) => {
    await sfs.unlink(d.ino, names[i]!, root);
    await sfs.forget(inos[i]!, 1);
  });
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
