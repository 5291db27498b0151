/*
 * Test helper: the system calls Node does not offer (setxattr with XATTR_CREATE/REPLACE,
 * renameat2 flags, O_TMPFILE + linkat, utimensat with nanoseconds, SEEK_DATA/SEEK_HOLE,
 * fallocate modes, mmap) made through a small python3 program, and ordinary file operations
 * made as another user (setpriv --reuid/--regid) so that the kernel's permission checks, not
 * root's capabilities, decide.
 *
 * Method: one python3 script (below) takes operations as JSON objects and answers each with
 * {ok, v} or {err: "ERRNO_NAME"}. pyBatch() runs a list of operations in one short-lived
 * child (optionally as another user, via setpriv, which drops root's capabilities on the uid
 * change); PyServer keeps one child alive and exchanges one JSON line per operation, for the
 * fsx checker's fallocate and mmap calls. Binary data crosses as base64.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import fs from "node:fs";
import readline from "node:readline";

const PY_SCRIPT = String.raw`
import os, sys, json, base64, errno, ctypes, mmap, platform
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
def b64(b): return base64.b64encode(b).decode()
def unb64(s): return base64.b64decode(s)
def renameat2(a):
    flags = a["flags"]
    if hasattr(libc, "renameat2"):
        f = libc.renameat2
        f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        r = f(AT_FDCWD, a["old"].encode(), AT_FDCWD, a["new"].encode(), flags)
    else:
        nr = {"x86_64": 316, "aarch64": 276}[platform.machine()]
        r = libc.syscall(nr, AT_FDCWD, a["old"].encode(), AT_FDCWD, a["new"].encode(), flags)
    if r != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
def fallocate(a):
    fd = os.open(a["path"], os.O_RDWR)
    try:
        f = libc.fallocate
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        if f(fd, a["mode"], a["off"], a["len"]) != 0:
            e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)
def tmpfile(a):
    flags = os.O_TMPFILE | os.O_RDWR | (os.O_EXCL if a.get("excl") else 0)
    fd = os.open(a["dir"], flags, a.get("mode", 0o600))
    try:
        os.write(fd, unb64(a["data"]))
        st = os.fstat(fd)
        res = {"nlink": st.st_nlink, "names": sorted(os.listdir(a["dir"]))}
        if a.get("link"):
            d = os.open(os.path.dirname(a["link"]), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link("/proc/self/fd/%d" % fd, os.path.basename(a["link"]), dst_dir_fd=d)
            finally:
                os.close(d)
            res["nlinkAfter"] = os.fstat(fd).st_nlink
        return res
    finally:
        os.close(fd)
def mmap_io(a, write):
    fd = os.open(a["path"], os.O_RDWR if write else os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        m = mmap.mmap(fd, size, prot=(mmap.PROT_READ | mmap.PROT_WRITE) if write else mmap.PROT_READ)
        try:
            off = a["off"]
            if write:
                d = unb64(a["data"]); m[off:off + len(d)] = d; m.flush(); return None
            return b64(m[off:off + a["len"]])
        finally:
            m.close()
    finally:
        os.close(fd)
def read_file(a):
    with open(a["path"], "rb") as f:
        return b64(f.read())
def write_file(a):
    fd = os.open(a["path"], os.O_WRONLY)
    try:
        os.pwrite(fd, unb64(a["data"]), a.get("off", 0))
    finally:
        os.close(fd)
def create(a):
    os.close(os.open(a["path"], os.O_CREAT | os.O_EXCL | os.O_WRONLY, a.get("mode", 0o644)))
def seek(a):
    fd = os.open(a["path"], os.O_RDONLY)
    try:
        return os.lseek(fd, a["off"], {"data": os.SEEK_DATA, "hole": os.SEEK_HOLE}[a["whence"]])
    finally:
        os.close(fd)
def stat(a):
    s = os.stat(a["path"], follow_symlinks=not a.get("nofollow"))
    return {"mode": s.st_mode, "uid": s.st_uid, "gid": s.st_gid, "nlink": s.st_nlink, "size": s.st_size, "ino": s.st_ino}
def truncate(a):
    os.truncate(a["path"], a["len"])
NOFOLLOW = lambda a: not a.get("nofollow")
OPS = {
    "read": read_file, "write": write_file, "create": create, "stat": stat, "seek": seek,
    "unlink": lambda a: os.unlink(a["path"]), "mkdir": lambda a: os.mkdir(a["path"], a.get("mode", 0o755)),
    "rmdir": lambda a: os.rmdir(a["path"]), "rename": lambda a: os.rename(a["old"], a["new"]),
    "listdir": lambda a: sorted(os.listdir(a["path"])), "chmod": lambda a: os.chmod(a["path"], a["mode"]),
    "chown": lambda a: os.chown(a["path"], a["uid"], a["gid"]), "truncate": truncate,
    "utime": lambda a: os.utime(a["path"], ns=(int(a["atime"]), int(a["mtime"])), follow_symlinks=NOFOLLOW(a)),
    "setxattr": lambda a: os.setxattr(a["path"], a["name"], unb64(a["value"]), a.get("flags", 0), follow_symlinks=NOFOLLOW(a)),
    "getxattr": lambda a: b64(os.getxattr(a["path"], a["name"], follow_symlinks=NOFOLLOW(a))),
    "listxattr": lambda a: sorted(os.listxattr(a["path"], follow_symlinks=NOFOLLOW(a))),
    "removexattr": lambda a: os.removexattr(a["path"], a["name"], follow_symlinks=NOFOLLOW(a)),
    "renameat2": renameat2, "fallocate": fallocate, "tmpfile": tmpfile,
    "mmap_read": lambda a: mmap_io(a, False), "mmap_write": lambda a: mmap_io(a, True),
}
def run(a):
    try:
        return {"ok": True, "v": OPS[a["op"]](a)}
    except OSError as e:
        name = "EOPNOTSUPP" if e.errno == errno.EOPNOTSUPP else errno.errorcode.get(e.errno, str(e.errno))
        return {"ok": False, "err": name}
    except Exception as e:
        return {"ok": False, "err": "PYERR", "msg": repr(e)}
if sys.argv[1] == "batch":
    print(json.dumps([run(a) for a in json.loads(sys.stdin.read())]))
else:
    for line in sys.stdin:
        sys.stdout.write(json.dumps(run(json.loads(line))) + "\n"); sys.stdout.flush()
`;

/** One operation for the python helper; fields depend on op (see PY_SCRIPT's OPS). */
export interface PyOp {
  op: string;
  [field: string]: string | number | boolean | undefined;
}

/** Result of one operation: ok with an optional value, or the errno name. */
export interface PyResult {
  ok: boolean;
  v?: unknown;
  err?: string;
  msg?: string;
}

/** Who runs a batch: uid, gid and supplementary groups (empty = cleared). */
export interface PyUser {
  uid: number;
  gid: number;
  groups?: number[];
}

let cachedPython: string | null | undefined;

/** The python3 to run, readable by other users too (pyenv shims under /root are not). */
export function pythonPath(): string | null {
  if (cachedPython !== undefined) return cachedPython;
  const env = process.env["POSIX_PYTHON"];
  const candidates = [env, "/usr/bin/python3", "/usr/local/bin/python3"];
  cachedPython = candidates.find((p) => p !== undefined && p !== "" && isExecutable(p)) ??
    (spawnSync("python3", ["-c", "0"]).status === 0 ? "python3" : null);
  return cachedPython;
}

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** True when setpriv exists (needed to act as another user). */
export function haveSetpriv(): boolean {
  return spawnSync("setpriv", ["--version"]).status === 0;
}

function userArgs(user: PyUser): string[] {
  const groups = user.groups ?? [];
  const g = groups.length === 0 ? "--clear-groups" : `--groups=${groups.join(",")}`;
  return [`--reuid=${user.uid}`, `--regid=${user.gid}`, g];
}

/** Run ops in one python child (as `user` when given); one result per op, in order. */
export function pyBatch(ops: PyOp[], user?: PyUser): PyResult[] {
  const py = pythonPath();
  if (py === null) throw new Error("python3 is required for this case (set POSIX_PYTHON)");
  const pyArgs = ["-c", PY_SCRIPT, "batch"];
  const [cmd, args] = user === undefined ? [py, pyArgs] : ["setpriv", [...userArgs(user), py, ...pyArgs]];
  const r = spawnSync(cmd, args, {
    encoding: "utf8", maxBuffer: 64 << 20, timeout: 60_000, input: JSON.stringify(ops),
  });
  if (r.status !== 0) {
    throw new Error(`python helper failed (${cmd} status ${r.status}): ${r.stderr || String(r.error)}`);
  }
  return JSON.parse(r.stdout) as PyResult[];
}

/** One op; the errno name on failure or "ok". */
export function pyErr(op: PyOp, user?: PyUser): string {
  const [r] = pyBatch([op], user);
  return r === undefined ? "NORESULT" : (r.ok ? "ok" : `${r.err ?? "?"}${r.msg ? `: ${r.msg}` : ""}`);
}

/** One op that must succeed; returns its value. */
export function pyOk(op: PyOp, user?: PyUser): unknown {
  const [r] = pyBatch([op], user);
  if (r === undefined || !r.ok) {
    throw new Error(`${op.op} ${JSON.stringify(op).slice(0, 200)} failed: ${r?.err ?? "?"} ${r?.msg ?? ""}`);
  }
  return r.v;
}

export const b64 = (b: Buffer): string => b.toString("base64");

/** A long-lived python child answering one JSON line per op (for many small calls). */
export class PyServer {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly waiting: ((r: PyResult) => void)[] = [];
  private stderr = "";

  private constructor(py: string) {
    this.child = spawn(py, ["-u", "-c", PY_SCRIPT, "serve"], { stdio: ["pipe", "pipe", "pipe"] });
    this.child.stderr.on("data", (d: Buffer) => { this.stderr += d.toString(); });
    readline.createInterface({ input: this.child.stdout }).on("line", (line) => {
      this.waiting.shift()?.(JSON.parse(line) as PyResult);
    });
    this.child.on("exit", () => {
      for (const w of this.waiting.splice(0)) w({ ok: false, err: "PYEXIT", msg: this.stderr });
    });
  }

  /** A server, or null when no python3 exists. */
  static start(): PyServer | null {
    const py = pythonPath();
    return py === null ? null : new PyServer(py);
  }

  call(op: PyOp): Promise<PyResult> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.child.stdin.write(`${JSON.stringify(op)}\n`);
    });
  }

  /** End the child we started: close its stdin, then SIGKILL it by pid if it lingers. */
  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.stdin.end();
    const timer = setTimeout(() => {
      if (this.child.pid !== undefined) process.kill(this.child.pid, "SIGKILL");
    }, 2000);
    await exited;
    clearTimeout(timer);
  }
}
