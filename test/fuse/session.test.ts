/*
 * Goal: the FUSE session (src/fuse) serves a real mount correctly: entries, data (1 MiB
 * writes), readdir of 1,000 entries, rename, hard and symbolic links, xattrs, ioctl, statfs,
 * truncate, errors thrown by handlers reaching the caller as errno, interrupts, reverse
 * notifications, lookup counts that return to zero, and a clean umount.
 *
 * Method: a child process (memfs_server.ts) mounts test/fuse/memfs.ts on a temporary
 * directory through FuseSession; this process drives it with real system calls (async node
 * fs, so a hung server cannot block the timers that clean up) and with the usual tools (ls,
 * ln, dd, df, truncate, stat; python3 for xattrs and ioctl when installed). The child reports
 * its counters over IPC. Every path, failures included, kills the child by pid and lazily
 * unmounts whatever is left (finally blocks, a budget timer and a process exit hook).
 * Skipped, with the reason, without /dev/fuse or root.
 */

import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFile, fork, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { FAULT_NAMES, MEMFS_IOC_GET_INO, MEMFS_MAX_BYTES } from "./memfs.js";
import { SERVER_ENV, type ServerReply } from "./memfs_server.js";

const execFileP = promisify(execFile);
const SERVER = new URL("./memfs_server.js", import.meta.url);
/** Whole-test budget: past it the mount is torn down so every pending call fails fast. */
const BUDGET_MS = 40_000;
const STDERR_MAX = 16_384;

function skipReason(): string | false {
  if (!existsSync("/dev/fuse")) return "no /dev/fuse on this machine";
  if (process.getuid?.() !== 0) return "mounting FUSE here needs root";
  return false;
}

async function isMounted(mp: string): Promise<boolean> {
  const text = await fsp.readFile("/proc/mounts", "utf8");
  return text.split("\n").some((l) => l.split(" ")[1] === mp);
}

interface Stats {
  memfs: { lookupsHeld: number; badForgets: number; interrupted: number; freed: number };
  session: { bugs: number; interrupts: number; requests: number; malformed: number };
  notify: { sent: number; absent: number; failed: number };
  reader: string;
  flags: number;
}

/** The child server and everything needed to get rid of it. */
class Harness {
  stderr = "";
  private readonly waiters = new Map<number, (r: ServerReply) => void>();
  private nextId = 1;
  private endedMsg: unknown = null;
  private readonly exitHook = (): void => this.syncCleanup();

  private constructor(readonly dir: string, readonly mp: string, readonly child: ChildProcess) {
    process.on("exit", this.exitHook);
    child.stderr?.on("data", (d: Buffer) => {
      if (this.stderr.length < STDERR_MAX) this.stderr += d.toString();
    });
    child.on("message", (m: ServerReply & { type?: string }) => {
      if (m.type === "ended") this.endedMsg = m;
      this.waiters.get(m.id)?.(m);
      this.waiters.delete(m.id);
    });
  }

  static async start(env: Record<string, string> = {}): Promise<Harness> {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "fuse-session-"));
    const mp = path.join(dir, "mnt");
    await fsp.mkdir(mp);
    const child = fork(SERVER, [], { env: { ...process.env, ...env, [SERVER_ENV]: mp },
      stdio: ["ignore", "inherit", "pipe", "ipc"] });
    const h = new Harness(dir, mp, child);
    await h.waitReady();
    return h;
  }

  private waitReady(): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server not ready: ${this.stderr}`)),
        10_000);
      this.child.on("message", (m: { type?: string }) => {
        if (m.type !== "ready") return;
        clearTimeout(timer);
        resolve();
      });
      this.child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`server exited (${code}) before ready: ${this.stderr}`));
      });
    });
  }

  request(msg: Record<string, unknown>): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply to ${String(msg.type)}`)), 5000);
      this.waiters.set(id, (r) => {
        clearTimeout(timer);
        if (r.ok) resolve(r.result);
        else reject(new Error(`server: ${r.error ?? "?"}`));
      });
      this.child.send({ ...msg, id });
    });
  }

  stats(): Promise<Stats> {
    return this.request({ type: "stats" }) as Promise<Stats>;
  }

  p(...parts: string[]): string {
    return path.join(this.mp, ...parts);
  }

  /** Resolves with the child's exit code once it exits (or null after timeoutMs). */
  waitExit(timeoutMs: number): Promise<number | null> {
    if (this.child.exitCode !== null) return Promise.resolve(this.child.exitCode);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), timeoutMs);
      this.child.once("exit", (code) => {
        clearTimeout(timer);
        resolve(code);
      });
    });
  }

  get ended(): unknown {
    return this.endedMsg;
  }

  /** Kills the child by pid and lazily unmounts: makes every pending call on the mount fail. */
  async cleanup(): Promise<void> {
    this.killChild();
    await this.waitExit(3000);
    if (await isMounted(this.mp)) {
      await execFileP("umount", ["-l", this.mp], { timeout: 10_000 }).catch(() => undefined);
    }
    await fsp.rm(this.dir, { recursive: true, force: true }).catch(() => undefined);
    process.off("exit", this.exitHook);
  }

  private killChild(): void {
    const pid = this.child.pid;
    if (pid === undefined || this.child.exitCode !== null || this.child.signalCode !== null) {
      return;
    }
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }

  /** Last resort when the test process exits with the server still around. */
  private syncCleanup(): void {
    this.killChild();
    spawnSync("umount", ["-l", this.mp], { timeout: 5000, stdio: "ignore" });
  }
}

async function expectCode(p: Promise<unknown>, code: string, what: string): Promise<void> {
  await assert.rejects(p, (e: NodeJS.ErrnoException) => {
    assert.equal(e.code, code, `${what}: ${e.message}`);
    return true;
  });
}

async function hasPython(): Promise<boolean> {
  try {
    await execFileP("python3", ["-c", "import os, fcntl"], { timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

function mbps(bytes: number, ns: bigint): number {
  return Math.round((bytes / (1 << 20)) / (Number(ns) / 1e9));
}

async function runWithBudget(h: Harness, fn: () => Promise<void>): Promise<void> {
  const budget = setTimeout(() => {
    process.stderr.write(`fuse session test over budget; tearing down ${h.mp}\n`);
    void h.cleanup();
  }, BUDGET_MS);
  try {
    await fn();
  } finally {
    clearTimeout(budget);
    await h.cleanup();
    assert.equal(await isMounted(h.mp), false, "mount left behind");
  }
}

async function entryTests(t: TestContext, h: Harness): Promise<void> {
  await t.test("mkdir, stat, rmdir of a non-empty dir", async () => {
    await fsp.mkdir(h.p("a", "b"), { recursive: true });
    const st = await fsp.stat(h.p("a", "b"));
    assert.ok(st.isDirectory());
    assert.equal((await fsp.stat(h.p("a"))).nlink, 3);
    await expectCode(fsp.rmdir(h.p("a")), "ENOTEMPTY", "rmdir non-empty");
    await expectCode(fsp.mkdir(h.p("a")), "EEXIST", "mkdir existing");
    await expectCode(fsp.stat(h.p("missing")), "ENOENT", "stat missing");
  });

  await t.test("rename: file, over an existing file, directory, into a non-empty dir", async () => {
    await fsp.writeFile(h.p("r1"), "one");
    await fsp.writeFile(h.p("r2"), "two");
    await fsp.rename(h.p("r1"), h.p("r3"));
    await expectCode(fsp.stat(h.p("r1")), "ENOENT", "old name");
    await fsp.rename(h.p("r2"), h.p("r3"));
    assert.equal(await fsp.readFile(h.p("r3"), "utf8"), "two");
    await fsp.mkdir(h.p("rd"));
    await fsp.writeFile(h.p("rd", "f"), "in dir");
    await fsp.rename(h.p("rd"), h.p("a", "rd2"));
    assert.equal(await fsp.readFile(h.p("a", "rd2", "f"), "utf8"), "in dir");
    await fsp.mkdir(h.p("empty"));
    await expectCode(fsp.rename(h.p("empty"), h.p("a")), "ENOTEMPTY", "rename over non-empty");
    await fsp.rmdir(h.p("empty"));
  });

  await t.test("hard links, symlinks, readlink (node fs and ln/readlink)", async () => {
    await fsp.writeFile(h.p("lk"), "linked");
    await fsp.link(h.p("lk"), h.p("lk2"));
    await execFileP("ln", [h.p("lk"), h.p("lk3")]);
    const [s1, s2, s3] = await Promise.all(["lk", "lk2", "lk3"].map((n) => fsp.stat(h.p(n))));
    assert.equal(s1!.ino, s2!.ino);
    assert.equal(s1!.ino, s3!.ino);
    assert.equal(s3!.nlink, 3);
    await fsp.unlink(h.p("lk"));
    assert.equal((await fsp.stat(h.p("lk2"))).nlink, 2);
    await fsp.symlink("lk2", h.p("sl"));
    await execFileP("ln", ["-s", "/some/where/else", h.p("sl2")]);
    assert.equal(await fsp.readlink(h.p("sl")), "lk2");
    assert.equal((await execFileP("readlink", [h.p("sl2")])).stdout.trim(), "/some/where/else");
    assert.equal(await fsp.readFile(h.p("sl"), "utf8"), "linked");
    assert.ok((await fsp.lstat(h.p("sl"))).isSymbolicLink());
  });

  await t.test("unlink, and errno of directory operations on files", async () => {
    await fsp.writeFile(h.p("u"), "x");
    await fsp.unlink(h.p("u"));
    await expectCode(fsp.stat(h.p("u")), "ENOENT", "unlinked");
    await expectCode(fsp.unlink(h.p("a")), "EISDIR", "unlink dir");
    await expectCode(fsp.rmdir(h.p("lk2")), "ENOTDIR", "rmdir file");
  });
}

async function dataTests(t: TestContext, h: Harness): Promise<void> {
  await t.test("1 MiB writes and reads through a file handle", async () => {
    const mib = Buffer.alloc(1 << 20);
    for (let i = 0; i < mib.length; i += 4) mib.writeUInt32LE(i * 2654435761 >>> 0, i);
    const fh = await fsp.open(h.p("big1"), "w+");
    try {
      for (let i = 0; i < 4; i++) {
        const { bytesWritten } = await fh.write(mib, 0, mib.length, i * mib.length);
        assert.equal(bytesWritten, mib.length);
      }
      const back = Buffer.alloc(mib.length);
      const { bytesRead } = await fh.read(back, 0, back.length, 2 * mib.length);
      assert.equal(bytesRead, mib.length);
      assert.ok(back.equals(mib), "1 MiB read back differs");
    } finally {
      await fh.close();
    }
    assert.equal((await fsp.stat(h.p("big1"))).size, 4 << 20);
  });

  await t.test("dd throughput (64 MiB, bs=1M)", async (tt) => {
    const bytes = 64 << 20;
    let t0 = process.hrtime.bigint();
    await execFileP("dd", ["if=/dev/zero", `of=${h.p("dd")}`, "bs=1M", "count=64"],
      { timeout: 20_000 });
    const writeNs = process.hrtime.bigint() - t0;
    t0 = process.hrtime.bigint();
    await execFileP("dd", [`if=${h.p("dd")}`, "of=/dev/null", "bs=1M"], { timeout: 20_000 });
    const readNs = process.hrtime.bigint() - t0;
    assert.equal((await fsp.stat(h.p("dd"))).size, bytes);
    tt.diagnostic(`dd write ${mbps(bytes, writeNs)} MB/s, read ${mbps(bytes, readNs)} MB/s ` +
      `(including process start)`);
    await fsp.unlink(h.p("dd"));
  });

}

async function attrTests(t: TestContext, h: Harness): Promise<void> {
  await t.test("truncate: shrink, extend with zeros, truncate(1)", async () => {
    await fsp.writeFile(h.p("tr"), "0123456789");
    await fsp.truncate(h.p("tr"), 4);
    assert.equal(await fsp.readFile(h.p("tr"), "utf8"), "0123");
    await fsp.truncate(h.p("tr"), 8);
    assert.deepEqual(await fsp.readFile(h.p("tr")), Buffer.from("0123\0\0\0\0"));
    await execFileP("truncate", ["-s", "100", h.p("tr")]);
    assert.equal((await fsp.stat(h.p("tr"))).size, 100);
    const fh = await fsp.open(h.p("tr"), "w"); // O_TRUNC through ATOMIC_O_TRUNC
    await fh.close();
    assert.equal((await fsp.stat(h.p("tr"))).size, 0);
  });

  await t.test("stat fields and utimes", async () => {
    await fsp.writeFile(h.p("st"), "12345");
    await fsp.chmod(h.p("st"), 0o640);
    await fsp.utimes(h.p("st"), 1_000_000_000, 1_500_000_000.25);
    const st = await fsp.stat(h.p("st"), { bigint: true });
    assert.equal(st.size, 5n);
    assert.equal(st.mode & 0o7777n, 0o640n);
    assert.equal(st.mtimeNs, 1_500_000_000_250_000_000n);
    assert.equal(st.atimeMs, 1_000_000_000_000n);
    assert.equal(st.uid, 0n);
    const out = (await execFileP("stat", ["-c", "%s %a %h", h.p("st")])).stdout.trim();
    assert.equal(out, "5 640 1");
  });

  await t.test("statfs and df", async () => {
    const sf = await fsp.statfs(h.mp);
    assert.equal(sf.bsize, 4096);
    assert.equal(sf.blocks, MEMFS_MAX_BYTES / 4096);
    const df = (await execFileP("df", ["-k", h.mp])).stdout;
    assert.match(df, /memfs/);
  });
}

async function dirTests(t: TestContext, h: Harness): Promise<void> {
  await t.test("readdir and ls -la of 1,000 entries", async () => {
    await fsp.mkdir(h.p("many"));
    const names = Array.from({ length: 1000 }, (_, i) => `file-${String(i).padStart(4, "0")}`);
    for (let i = 0; i < names.length; i += 50) {
      await Promise.all(names.slice(i, i + 50).map((n) => fsp.writeFile(h.p("many", n), n)));
    }
    const listed = await fsp.readdir(h.p("many"));
    assert.deepEqual([...listed].sort(), names);
    const ls = (await execFileP("ls", ["-la", h.p("many")], { maxBuffer: 8 << 20 })).stdout;
    const lines = ls.trim().split("\n");
    assert.equal(lines.length, 1000 + 3, "total, '.', '..' and 1,000 entries");
    assert.ok(lines.some((l) => l.endsWith(" file-0999") && l.startsWith("-rw")));
    const withTypes = await fsp.readdir(h.p("many"), { withFileTypes: true });
    assert.ok(withTypes.every((d) => d.isFile()));
  });
}

/** Operations node's fs cannot reach, through python3 and libc (ctypes). */
const MISC_SCRIPT = `
import os, sys, json, errno, ctypes
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400
def path(n):
    return os.path.join(d, n)
def renameat2(a, b, flags):
    rc = libc.renameat2(AT_FDCWD, path(a).encode(), AT_FDCWD, path(b).encode(), flags)
    return "ok" if rc == 0 else errno.errorcode[ctypes.get_errno()]
r = {}
fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(fd, b"tmp data")
proc = f"/proc/self/fd/{fd}".encode()
assert libc.linkat(AT_FDCWD, proc, AT_FDCWD, path("tmp").encode(), AT_SYMLINK_FOLLOW) == 0
os.close(fd)
r["tmpfile"] = open(path("tmp"), "rb").read().decode()
open(path("xa"), "w").write("A")
open(path("xb"), "w").write("B")
r["exchange"] = renameat2("xa", "xb", 2)
r["after"] = open(path("xa")).read() + open(path("xb")).read()
r["noreplace"] = renameat2("xa", "xb", 1)
src = os.open(path("tmp"), os.O_RDONLY)
dst = os.open(path("copy"), os.O_CREAT | os.O_WRONLY, 0o644)
r["copied"] = os.copy_file_range(src, dst, 8)
os.close(src)
os.close(dst)
r["copy"] = open(path("copy")).read()
fd = os.open(path("copy"), os.O_RDWR)
r["data"] = os.lseek(fd, 2, os.SEEK_DATA)
r["hole"] = os.lseek(fd, 2, os.SEEK_HOLE)
os.posix_fallocate(fd, 0, 4096)
r["falloc_size"] = os.fstat(fd).st_size
os.close(fd)
os.mkfifo(path("fifo"))
r["fifo"] = oct(os.stat(path("fifo")).st_mode)
print(json.dumps(r))
`;

async function xattrAndIoctlTests(t: TestContext, h: Harness): Promise<void> {
  const py = await hasPython();
  const skip = py ? false : "python3 not installed (no other xattr tool here)";
  await t.test("xattrs: set, get (with ERANGE retry), list, create/replace, remove", { skip },
    async () => {
      await fsp.writeFile(h.p("xa"), "x");
      const script = `
import os, sys, json, errno
p = sys.argv[1]
def code(f):
    try:
        f()
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"
os.setxattr(p, "user.small", b"v1")
os.setxattr(p, "user.big", b"z" * 3000)  # more than python's first 128-byte try: ERANGE
r = {"small": os.getxattr(p, "user.small").decode()}
r["big"] = len(os.getxattr(p, "user.big"))
r["list"] = sorted(os.listxattr(p))
r["create"] = code(lambda: os.setxattr(p, "user.small", b"n", os.XATTR_CREATE))
r["replace"] = code(lambda: os.setxattr(p, "user.none", b"n", os.XATTR_REPLACE))
os.removexattr(p, "user.small")
r["removed"] = code(lambda: os.getxattr(p, "user.small"))
print(json.dumps(r))
`;
      const out = JSON.parse((await execFileP("python3", ["-c", script, h.p("xa")])).stdout);
      assert.deepEqual(out, { small: "v1", big: 3000, list: ["user.big", "user.small"],
        create: "EEXIST", replace: "ENODATA", removed: "ENODATA" });
    });

  await t.test("O_TMPFILE, renameat2 flags, copy_file_range, SEEK_DATA/HOLE, fallocate, mkfifo",
    { skip }, async () => {
      await fsp.mkdir(h.p("misc"));
      const out = JSON.parse((await execFileP("python3", ["-c", MISC_SCRIPT, h.p("misc")]))
        .stdout);
      assert.deepEqual(out, { tmpfile: "tmp data", exchange: "ok", after: "BA",
        noreplace: "EEXIST", copied: 8, copy: "tmp data", data: 2, hole: 8,
        falloc_size: 4096, fifo: "0o10644" });
    });

  await t.test("ioctl (restricted mode, fixed-size output)", { skip }, async () => {
    await fsp.writeFile(h.p("io"), "x");
    const ino = (await fsp.stat(h.p("io"))).ino;
    const script = "import fcntl, struct, sys\nfd = open(sys.argv[1], 'rb')\n" +
      `print(struct.unpack('<Q', fcntl.ioctl(fd, ${MEMFS_IOC_GET_INO}, bytes(8)))[0])`;
    const out = (await execFileP("python3", ["-c", script, h.p("io")])).stdout.trim();
    assert.equal(Number(out), ino);
  });
}

async function faultTests(t: TestContext, h: Harness): Promise<void> {
  await t.test("handler errors reach the caller as errno; a bug becomes EIO", async () => {
    const before = await h.stats();
    await expectCode(fsp.stat(h.p(FAULT_NAMES.eacces)), "EACCES", "sync FsError");
    await expectCode(fsp.stat(h.p(FAULT_NAMES.reject)), "EXDEV", "rejected promise");
    await expectCode(fsp.stat(h.p(FAULT_NAMES.bug)), "EIO", "non-FsError");
    const after = await h.stats();
    assert.equal(after.session.bugs, before.session.bugs + 1);
    assert.equal((await fsp.stat(h.p("a"))).isDirectory(), true, "still serving");
  });

  await t.test("a signal interrupts a hanging request (INTERRUPT)", async () => {
    const child = spawn("stat", [h.p(FAULT_NAMES.hang)], { stdio: "ignore" });
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(child.exitCode, null, "stat should be blocked in the hanging lookup");
    process.kill(child.pid!, "SIGTERM");
    const t0 = Date.now();
    await exited;
    assert.ok(Date.now() - t0 < 3000, "interrupted request was answered promptly");
    const s = await h.stats();
    assert.ok(s.session.interrupts >= 1 && s.memfs.interrupted >= 1, JSON.stringify(s));
  });
}

async function notifyTests(t: TestContext, h: Harness): Promise<void> {
  await t.test("NOTIFY_INVAL_INODE and NOTIFY_DELETE after changes behind the kernel", async () => {
    await fsp.mkdir(h.p("nt"));
    await fsp.writeFile(h.p("nt", "f"), "hello");
    assert.equal((await fsp.stat(h.p("nt", "f"))).size, 5); // cached for 60 s
    await h.request({ type: "write-behind", path: "nt/f",
      data: Buffer.from("changed behind").toString("base64") });
    assert.equal((await fsp.stat(h.p("nt", "f"))).size, 14);
    assert.equal(await fsp.readFile(h.p("nt", "f"), "utf8"), "changed behind");
    await fsp.writeFile(h.p("nt", "g"), "doomed");
    await fsp.stat(h.p("nt", "g"));
    await h.request({ type: "unlink-behind", dir: "nt", name: "g" });
    await expectCode(fsp.stat(h.p("nt", "g")), "ENOENT", "deleted behind");
    const s = await h.stats();
    assert.equal(s.notify.failed, 0);
    assert.ok(s.notify.sent >= 2);
  });

  await t.test("lookup counts return to zero when the kernel drops its caches", async () => {
    await fsp.writeFile("/proc/sys/vm/drop_caches", "2");
    let s = await h.stats();
    for (let i = 0; i < 40 && s.memfs.lookupsHeld !== 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      s = await h.stats();
    }
    assert.equal(s.memfs.badForgets, 0, "forget of more lookups than counted");
    assert.equal(s.memfs.lookupsHeld, 0, "lookups still held after drop_caches");
    assert.equal(s.session.malformed, 0);
  });
}

test("FUSE session serves memfs to real system calls", { skip: skipReason(), timeout: 60_000 },
  async (t) => {
    const h = await Harness.start();
    await runWithBudget(h, async () => {
      const s = await h.stats();
      t.diagnostic(`reader ${s.reader}, INIT flags 0x${s.flags.toString(16)}`);
      await entryTests(t, h);
      await dataTests(t, h);
      await attrTests(t, h);
      await dirTests(t, h);
      await xattrAndIoctlTests(t, h);
      await faultTests(t, h);
      await notifyTests(t, h);
      await t.test("umount ends the session and the server exits", async () => {
        await execFileP("umount", [h.mp], { timeout: 10_000 });
        assert.equal(await h.waitExit(5000), 0, `server exit; stderr: ${h.stderr}`);
        assert.notEqual(h.ended, null, "server reported the end of its session");
        assert.equal(await isMounted(h.mp), false);
      });
    });
  });

test("FUSE session with the threadpool reader fallback", { skip: skipReason(), timeout: 30_000 },
  async () => {
    const h = await Harness.start({ MEMFS_READER: "threadpool" });
    await runWithBudget(h, async () => {
      assert.equal((await h.stats()).reader, "threadpool");
      const data = Buffer.alloc(1 << 20, 7);
      await fsp.writeFile(h.p("f"), data);
      assert.ok((await fsp.readFile(h.p("f"))).equals(data));
      await fsp.mkdir(h.p("d"));
      assert.deepEqual((await fsp.readdir(h.mp)).sort(), ["d", "f"]);
      await execFileP("umount", [h.mp], { timeout: 10_000 });
      assert.equal(await h.waitExit(5000), 0, `server exit; stderr: ${h.stderr}`);
    });
  });
