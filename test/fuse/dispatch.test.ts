/*
 * Goal: the session's request loop (src/fuse/session.ts with dispatch.ts) answers every
 * request exactly once with the right errno, whatever the filesystem or the bytes do:
 * INIT negotiation, requests before INIT, malformed headers and payloads, unknown opcodes,
 * handlers that throw, reject or are absent from the ops (ENOSYS), xattr size probes and ERANGE,
 * FORGET without reply, INTERRUPT, replies the kernel refuses (lookups forgotten again),
 * the in-flight bound pausing the reader, DESTROY ending the session once.
 *
 * Method: FuseSession.serve over an in-memory transport: a fake reader into which the test
 * pushes requests built with proto.ts as the kernel builds them, and a reply writer that
 * records (or refuses, like the kernel) each reply. No kernel, no mount, runs anywhere.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Logger, LogLevel } from "../../src/env/env.js";
import type { FuseOps, RequestContext } from "../../src/fuse/ops.js";
import * as P from "../../src/fuse/proto.js";
import type { RequestReader, RequestSink } from "../../src/fuse/reader.js";
import { FuseSession, type FuseTransport } from "../../src/fuse/session.js";
import { Errno, FsError } from "../../src/util/errno.js";

class FakeReader implements RequestReader {
  readonly kind = "pipe";
  readonly ownsFd = true;
  paused = false;
  pauses = 0;
  private sink: RequestSink | null = null;

  start(sink: RequestSink): void {
    this.sink = sink;
  }

  pause(): void {
    this.paused = true;
    this.pauses++;
  }

  resume(): void {
    this.paused = false;
  }

  close(): void {
    this.sink?.onEnd(null);
  }

  push(req: Buffer): void {
    const buf = this.sink!.nextBuffer();
    req.copy(buf);
    this.sink!.onRequest(buf, req.length);
  }
}

interface Reply { unique: bigint; error: number; body: Buffer }

class FakeTransport implements FuseTransport {
  readonly reader = new FakeReader();
  readonly replies: Reply[] = [];
  readonly notes: Buffer[] = [];
  /** Errors to throw from the next reply writes (like the kernel's ENOENT). */
  failNext: string[] = [];

  writeReply(parts: readonly Buffer[]): void {
    const code = this.failNext.shift();
    if (code !== undefined) throw Object.assign(new Error(code), { code });
    const b = Buffer.concat(parts);
    assert.equal(b.readUInt32LE(0), b.length, "reply header length");
    this.replies.push({ unique: b.readBigUInt64LE(8), error: b.readInt32LE(4),
      body: b.subarray(16) });
  }

  writeNotify(msg: Buffer, done: (err: NodeJS.ErrnoException | null) => void): void {
    this.notes.push(msg);
    setImmediate(() => done(null));
  }

  close(): void {
    // Nothing to release.
  }

  take(): Reply {
    const r = this.replies.shift();
    assert.ok(r !== undefined, "expected a reply");
    return r;
  }
}

function logger(lines: string[]): Logger {
  return { log: (level: LogLevel, msg: string) => { lines.push(`${level} ${msg}`); } };
}

let nextUnique = 2n;

function request(opcode: number, parts: Buffer[], nodeid = 1): [bigint, Buffer] {
  const unique = nextUnique;
  nextUnique += 2n;
  return [unique, P.encodeRequest({ opcode, unique, nodeid, uid: 0, gid: 0, pid: 1 }, parts)];
}

function initRequest(minor = 45): Buffer {
  return request(P.Opcode.INIT, [P.InitInStruct.encode({ major: 7, minor,
    maxReadahead: 128 << 10, flags: 0x7fff_ffff, flags2: 0 })], 0)[1];
}

interface Harness { s: FuseSession; t: FakeTransport; logs: string[] }

async function serve(ops: FuseOps, extra: { maxInflight?: number } = {}): Promise<Harness> {
  const t = new FakeTransport();
  const logs: string[] = [];
  const p = FuseSession.serve(ops, { mountpoint: "/fake", fsname: "fake", subtype: "fake",
    logger: logger(logs), ...extra }, t);
  t.reader.push(initRequest());
  const s = await p;
  const init = P.InitOutStruct.decode(t.take().body);
  assert.equal(init.major, 7);
  return { s, t, logs };
}

function send(h: Harness, opcode: number, parts: Buffer[], nodeid = 1): bigint {
  const [unique, buf] = request(opcode, parts, nodeid);
  h.t.reader.push(buf);
  return unique;
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

function attr(ino: number): P.Attr {
  return { ...P.zeroAttr(), ino, mode: 0o100644, nlink: 1 };
}

function entry(ino: number): P.EntryOut {
  return { nodeid: ino, generation: 1, entryValidMs: 1000, attrValidMs: 1000, attr: attr(ino) };
}

test("INIT negotiates version, sizes and only flags both sides have", async () => {
  const t = new FakeTransport();
  const p = FuseSession.serve({ readdirplus: () => undefined }, { mountpoint: "/f",
    fsname: "f", subtype: "f", logger: logger([]), writebackCache: true }, t);
  const k = P.InitFlag.ASYNC_READ | P.InitFlag.WRITEBACK_CACHE | P.InitFlag.DO_READDIRPLUS |
    P.InitFlag.INIT_EXT | P.InitFlag.POSIX_LOCKS;
  t.reader.push(request(P.Opcode.INIT, [P.InitInStruct.encode({ major: 7, minor: 40,
    maxReadahead: 131072, flags: k, flags2: 0 })], 0)[1]);
  const s = await p;
  const out = P.InitOutStruct.decode(t.take().body);
  assert.deepEqual([out.minor, out.maxWrite, out.maxPages, out.timeGran, out.maxReadahead],
    [40, 1 << 20, 256, 1, 131072]);
  assert.equal(out.flags, P.InitFlag.ASYNC_READ | P.InitFlag.WRITEBACK_CACHE |
    P.InitFlag.DO_READDIRPLUS | P.InitFlag.INIT_EXT, "no POSIX_LOCKS without getlk/setlk");
  assert.equal(s.negotiated?.minor, 40);
  await s.close();
});

test("a kernel older than 7.31 is refused with EPROTO", async () => {
  const t = new FakeTransport();
  const p = FuseSession.serve({}, { mountpoint: "/f", fsname: "f", subtype: "f",
    logger: logger([]) }, t);
  t.reader.push(initRequest(30));
  await assert.rejects(p, (e: FsError) => e.code === "EPROTO");
  assert.equal(t.take().error, -Errno.EPROTO);
});

test("malformed requests get EIO or EINVAL replies and the session keeps serving", async () => {
  const h = await serve({ getattr: (_c, r) => ({ attrValidMs: 0, attr: attr(r.nodeid) }) });
  const [u1, bad] = request(P.Opcode.GETATTR, [Buffer.alloc(16)]);
  bad.writeUInt32LE(bad.length + 8, 0); // header claims more than was read
  h.t.reader.push(bad);
  assert.deepEqual([h.t.take().unique, h.s.counters.malformed], [u1, 1]);
  const u2 = send(h, P.Opcode.LOOKUP, [Buffer.from("no-nul")]);
  assert.deepEqual([h.t.take().unique, h.t.replies.length], [u2, 0]);
  assert.equal(h.s.counters.malformed, 1, "payload errors are not header errors");
  const u3 = send(h, P.Opcode.SETATTR, [Buffer.alloc(10)]);
  const r3 = h.t.take();
  assert.deepEqual([r3.unique, r3.error], [u3, -Errno.EINVAL]);
  send(h, 999, []);
  assert.equal(h.t.take().error, -Errno.ENOSYS);
  send(h, P.Opcode.STATX, [Buffer.alloc(24)]);
  assert.equal(h.t.take().error, -Errno.ENOSYS, "STATX falls back to GETATTR");
  send(h, P.Opcode.INIT, [P.InitInStruct.encode({ major: 7, minor: 45, maxReadahead: 0,
    flags: 0, flags2: 0 })]);
  assert.equal(h.t.take().error, -Errno.EIO, "second INIT");
  send(h, P.Opcode.GETATTR, [Buffer.alloc(16)], 7);
  assert.equal(P.decodeAttrOut(h.t.take().body).attr.ino, 7, "still serving");
  await h.s.close();
});

test("handler failures: FsError errno, rejection, bug as EIO with a warning, ENOSYS", async () => {
  const ops: FuseOps = {
    lookup(_c: RequestContext, r: P.NameReq): P.EntryOut {
      const n = r.name.toString();
      if (n === "sync") throw new FsError("EACCES");
      if (n === "bug") throw new TypeError("oops");
      return entry(9);
    },
    getattr: () => Promise.reject(new FsError("ESTALE")),
    readlink: () => Promise.reject(new RangeError("async bug")),
  };
  const h = await serve(ops);
  send(h, P.Opcode.LOOKUP, [P.cstr("sync")]);
  assert.equal(h.t.take().error, -Errno.EACCES);
  send(h, P.Opcode.LOOKUP, [P.cstr("bug")]);
  assert.equal(h.t.take().error, -Errno.EIO);
  send(h, P.Opcode.GETATTR, [Buffer.alloc(16)]);
  send(h, P.Opcode.READLINK, []);
  await tick();
  assert.deepEqual([h.t.take().error, h.t.take().error], [-Errno.ESTALE, -Errno.EIO]);
  send(h, P.Opcode.MKDIR, [Buffer.alloc(8), P.cstr("d")]);
  assert.equal(h.t.take().error, -Errno.ENOSYS);
  assert.equal(h.s.counters.bugs, 2);
  assert.equal(h.logs.filter((l) => l.startsWith("warn") && l.includes("non-FsError")).length,
    2);
  send(h, P.Opcode.OPEN, [Buffer.alloc(8)]);
  assert.deepEqual(P.OpenOutStruct.decode(h.t.take().body).fh, 0, "default open");
  send(h, P.Opcode.RELEASE, [Buffer.alloc(24)]);
  assert.equal(h.t.take().error, 0, "default release");
  await h.s.close();
});

test("xattr size probe, ERANGE, listxattr packing; oversize replies are bugs", async () => {
  const h = await serve({
    getxattr: () => Buffer.from("0123456789"),
    listxattr: () => [Buffer.from("user.a"), Buffer.from("user.bb")],
    read: () => Buffer.alloc(10),
  });
  send(h, P.Opcode.GETXATTR, [P.GetxattrInStruct.encode({ size: 0 }), P.cstr("user.a")]);
  assert.equal(P.GetxattrOutStruct.decode(h.t.take().body).size, 10);
  send(h, P.Opcode.GETXATTR, [P.GetxattrInStruct.encode({ size: 4 }), P.cstr("user.a")]);
  assert.equal(h.t.take().error, -Errno.ERANGE);
  send(h, P.Opcode.GETXATTR, [P.GetxattrInStruct.encode({ size: 64 }), P.cstr("user.a")]);
  assert.equal(h.t.take().body.toString(), "0123456789");
  send(h, P.Opcode.LISTXATTR, [P.GetxattrInStruct.encode({ size: 100 })]);
  assert.equal(h.t.take().body.toString(), "user.a\0user.bb\0");
  send(h, P.Opcode.READ, [P.ReadInStruct.encode({ fh: 0, offset: 0, size: 4, readFlags: 0,
    lockOwner: 0n, flags: 0 })]);
  assert.equal(h.t.take().error, -Errno.EIO, "10 bytes for a 4-byte read");
  await h.s.close();
});

test("FORGET and BATCH_FORGET reach ops without replies", async () => {
  const forgot: [number, number][] = [];
  const h = await serve({ forget: (r) => { forgot.push([r.nodeid, r.nlookup]); } });
  send(h, P.Opcode.FORGET, [P.ForgetInStruct.encode({ nlookup: 3 })], 8);
  send(h, P.Opcode.BATCH_FORGET, [P.BatchForgetInStruct.encode({ count: 2 }),
    P.ForgetOneStruct.encode({ nodeid: 4, nlookup: 1 }),
    P.ForgetOneStruct.encode({ nodeid: 5, nlookup: 2 })], 0);
  send(h, P.Opcode.FORGET, [Buffer.alloc(3)], 8); // malformed: still no reply
  assert.deepEqual(forgot, [[8, 3], [4, 1], [5, 2]]);
  assert.equal(h.t.replies.length, 0);
  await h.s.close();
});

test("INTERRUPT reaches the handler, which answers EINTR", async () => {
  let seen: RequestContext | null = null;
  const h = await serve({
    lookup: (ctx) => new Promise<P.EntryOut>((_res, rej) => {
      seen = ctx;
      ctx.onInterrupt(() => rej(new FsError("EINTR")));
    }),
  });
  const u = send(h, P.Opcode.LOOKUP, [P.cstr("slow")]);
  assert.equal(h.s.inflightCount, 1);
  send(h, P.Opcode.INTERRUPT, [P.InterruptInStruct.encode({ unique: u })], 0);
  send(h, P.Opcode.INTERRUPT, [P.InterruptInStruct.encode({ unique: 12345678n })], 0);
  await tick();
  const r = h.t.take();
  assert.deepEqual([r.unique, r.error], [u, -Errno.EINTR]);
  assert.equal((seen as RequestContext | null)?.interrupted, true);
  assert.deepEqual([h.s.counters.interrupts, h.s.counters.interruptsUnmatched], [1, 1]);
  assert.equal(h.t.replies.length, 0, "INTERRUPT itself gets no reply");
  await h.s.close();
});

test("an entry reply the kernel refuses gives its lookup back", async () => {
  const forgot: number[] = [];
  const h = await serve({
    lookup: () => entry(33),
    forget: (r) => { forgot.push(r.nodeid); },
    readdirplus: (_c, r) => {
      r.out.addEntry(Buffer.from("."), 1, entry(1));
      r.out.addEntry(Buffer.from("x"), 2, entry(34));
      r.out.addEntry(Buffer.from("y"), 3, entry(35));
    },
  });
  h.t.failNext.push("ENOENT");
  send(h, P.Opcode.LOOKUP, [P.cstr("x")]);
  h.t.failNext.push("ENOENT");
  send(h, P.Opcode.READDIRPLUS, [P.ReadInStruct.encode({ fh: 0, offset: 0, size: 4096,
    readFlags: 0, lockOwner: 0n, flags: 0 })]);
  assert.deepEqual(forgot, [33, 34, 35]);
  assert.equal(h.s.counters.repliesDropped, 2);
  await h.s.close();
});

test("the in-flight bound pauses reading until handlers settle", async () => {
  const pending: (() => void)[] = [];
  const h = await serve({
    getattr: (_c, r) => new Promise<P.AttrOut>((res) => {
      pending.push(() => res({ attrValidMs: 0, attr: attr(r.nodeid) }));
    }),
  }, { maxInflight: 4 });
  for (let i = 0; i < 4; i++) send(h, P.Opcode.GETATTR, [Buffer.alloc(16)], 10 + i);
  assert.equal(h.t.reader.paused, true);
  pending.shift()!();
  await tick();
  assert.equal(h.t.reader.paused, false, "resumed at 3/4 of the bound");
  for (const p of pending.splice(0)) p();
  await tick();
  assert.equal(h.t.replies.length, 4);
  await h.s.close();
});

test("WRITE data stays valid while an async handler runs", async () => {
  const seen: string[] = [];
  const h = await serve({
    write: async (_c, r) => {
      await tick();
      seen.push(r.data.toString());
      return r.data.length;
    },
  });
  const w = (s: string): Buffer[] => [P.WriteInStruct.encode({ fh: 0, offset: 0,
    size: s.length, writeFlags: 0, lockOwner: 0n, flags: 0 }), Buffer.from(s)];
  send(h, P.Opcode.WRITE, w("first"));
  send(h, P.Opcode.WRITE, w("second"));
  send(h, P.Opcode.GETATTR, [Buffer.alloc(16)]); // reuses a read buffer meanwhile
  await tick();
  await tick();
  assert.deepEqual(seen, ["first", "second"]);
  await h.s.close();
});

test("DESTROY replies, ends the session and calls destroy once", async () => {
  let destroyed = 0;
  const h = await serve({ destroy: () => { destroyed++; } });
  const u = send(h, P.Opcode.DESTROY, [], 0);
  assert.deepEqual([h.t.take().unique], [u]);
  await h.s.ended;
  await h.s.close();
  assert.equal(destroyed, 1);
  await assert.rejects(h.s.notifyInvalInode(1), (e: FsError) => e.code === "ENOTCONN");
});

test("notifications are queued to the transport's async writer", async () => {
  const h = await serve({});
  await h.s.notifyInvalEntry(1, Buffer.from("n"));
  await h.s.notifyInvalInode(5, 0, -1);
  await h.s.notifyDelete(1, 5, Buffer.from("n"));
  assert.deepEqual(h.t.notes.map((m) => m.readInt32LE(4)), [P.NotifyCode.INVAL_ENTRY,
    P.NotifyCode.INVAL_INODE, P.NotifyCode.DELETE]);
  await assert.rejects(h.s.notifyInvalEntry(1, Buffer.from("a/b")),
    (e: FsError) => e.code === "EINVAL");
  await h.s.close();
});
