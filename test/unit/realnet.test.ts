/*
 * Goal: the real Env (src/env/real) is complete and its timers and network keep the
 * contract of src/env/env.ts that the simulator also keeps: ephemeral ports reported in
 * `local`, datagrams and streams delivered, close reported once to both sides (never
 * synchronously), errors as FsErrors, buffers copied, and exceptions thrown by handlers
 * contained (logged, connection closed) instead of crashing the process.
 *
 * Method: real UDP and TCP sockets on 127.0.0.1 with ephemeral ports only (bind port 0, read
 * the real port back). Every socket is closed in a finally block and every wait is bounded
 * by a deadline, so a broken implementation fails fast instead of hanging.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import type {
  DatagramSocket, LogLevel, StreamConnection, StreamListener,
} from "../../src/env/env.js";
import { realEnv } from "../../src/env/real/env.js";
import * as realNet from "../../src/env/real/net.js";
import { RealTimers } from "../../src/env/real/timers.js";
import * as simNet from "../../src/sim/net.js";
import { isFsError } from "../../src/util/errno.js";

const LOOPBACK = "127.0.0.1";
const WAIT_MS = 5000;

function quietEnv(): { env: ReturnType<typeof realEnv>; lines: string[] } {
  const lines: string[] = [];
  return { env: realEnv({ logLevel: "debug", logSink: (l) => lines.push(l) }), lines };
}

/** Resolves when cond() holds, polling; rejects after WAIT_MS. */
async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

test("realEnv provides every part of the Env", () => {
  const { env } = quietEnv();
  assert.equal(typeof env.clock.monotonicMs(), "number");
  assert.equal(typeof env.random.u32(), "number");
  assert.equal(typeof env.timers.after, "function");
  assert.equal(typeof env.net.connect, "function");
});

test("real and simulated networks share their limits", () => {
  assert.equal(realNet.DATAGRAM_MAX_BYTES, simNet.DATAGRAM_MAX_BYTES);
  assert.equal(realNet.STREAM_MAX_QUEUED_BYTES, simNet.STREAM_MAX_QUEUED_BYTES);
});

test("timers fire in order, never synchronously, and clear works", async () => {
  const lines: string[] = [];
  const timers = new RealTimers({ log: (_l: LogLevel, m: string) => lines.push(m) });
  const fired: string[] = [];
  timers.after(20, () => fired.push("b"));
  timers.after(0, () => fired.push("a"));
  const h = timers.after(10, () => fired.push("cleared"));
  timers.after(5, () => { throw new Error("timer bug"); });
  timers.clear(h);
  timers.clear(h); // twice is harmless
  assert.equal(fired.length, 0);
  await until(() => fired.length === 2, "timers");
  assert.deepEqual(fired, ["a", "b"]);
  assert.equal(timers.pendingCount, 0);
  assert.match(lines.join("\n"), /timer callback threw \(a bug\): Error: timer bug/);
  timers.after(60_000, () => fired.push("never"));
  timers.clearAll();
  assert.equal(timers.pendingCount, 0);
});

test("udp: ephemeral ports, delivery with source, errors as FsErrors", async () => {
  const { env } = quietEnv();
  const socks: DatagramSocket[] = [];
  try {
    const a = await env.net.bindDatagram({ addr: LOOPBACK, port: 0 });
    socks.push(a);
    const b = await env.net.bindDatagram({ addr: LOOPBACK, port: 0 });
    socks.push(b);
    assert.ok(a.local.port > 0 && b.local.port > 0 && a.local.port !== b.local.port);
    assert.equal(a.local.addr, LOOPBACK);
    const got: [string, number][] = [];
    b.onMessage((buf, from) => got.push([buf.toString(), from.port]));
    const buf = Buffer.from("ping");
    a.send(buf, b.local);
    buf.fill(0); // send copied it
    await until(() => got.length === 1, "datagram");
    assert.deepEqual(got, [["ping", a.local.port]]);
    await assert.rejects(env.net.bindDatagram({ addr: LOOPBACK, port: b.local.port }),
      (e: unknown) => isFsError(e) && /EADDRINUSE/.test(e.message));
    await assert.rejects(env.net.bindDatagram({ addr: "not-an-ip", port: 0 }),
      (e: unknown) => isFsError(e, "EINVAL"));
    a.send(Buffer.alloc(realNet.DATAGRAM_MAX_BYTES + 1), b.local); // dropped, never throws
    a.close();
    a.close();
    a.send(Buffer.from("after close"), b.local); // dropped, never throws
    assert.equal(env.net.counters.datagramsDropped, 2);
  } finally {
    for (const s of socks) s.close();
  }
});

test("tcp: connect, exchange both ways, graceful close seen by both", async () => {
  const { env } = quietEnv();
  let listener: StreamListener | null = null;
  const conns: StreamConnection[] = [];
  try {
    listener = await env.net.listen({ addr: LOOPBACK, port: 0 });
    assert.ok(listener.local.port > 0);
    const serverGot: Buffer[] = [];
    let serverClose: string | null = null;
    listener.onConnection((c) => {
      conns.push(c);
      c.onData((chunk) => { serverGot.push(chunk); c.write(chunk); }); // echo
      c.onClose((r) => { serverClose = r; });
    });
    const c = await env.net.connect(listener.local, WAIT_MS);
    conns.push(c);
    assert.equal(c.remote.port, listener.local.port);
    const clientGot: Buffer[] = [];
    const clientClose: string[] = [];
    c.onData((chunk) => clientGot.push(chunk));
    c.onClose((r) => clientClose.push(r));
    const payload = Buffer.alloc(200_000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
    assert.equal(c.write(payload), true);
    await until(() => Buffer.concat(clientGot).length === payload.length, "echo");
    assert.ok(Buffer.concat(clientGot).equals(payload));
    c.close();
    assert.equal(c.closed, true);
    assert.equal(c.write(Buffer.from("x")), false);
    assert.equal(clientClose.length, 0, "onClose never runs inside close()");
    await until(() => clientClose.length === 1 && serverClose !== null, "close");
    assert.deepEqual(clientClose, ["closed locally"]);
    assert.equal(serverClose, "closed by peer");
    assert.equal(Buffer.concat(serverGot).length, payload.length);
  } finally {
    for (const c of conns) c.close();
    listener?.close();
  }
});

test("tcp: refused connections, bad arguments and port conflicts", async () => {
  const { env } = quietEnv();
  const listener = await env.net.listen({ addr: LOOPBACK, port: 0 });
  const port = listener.local.port;
  try {
    await assert.rejects(env.net.listen({ addr: LOOPBACK, port }),
      (e: unknown) => isFsError(e) && /EADDRINUSE/.test(e.message));
  } finally {
    listener.close();
  }
  await assert.rejects(env.net.connect({ addr: LOOPBACK, port }, WAIT_MS),
    (e: unknown) => isFsError(e, "ECONNREFUSED"));
  await assert.rejects(env.net.connect({ addr: LOOPBACK, port: 0 }, WAIT_MS),
    (e: unknown) => isFsError(e, "EINVAL"));
  await assert.rejects(env.net.connect({ addr: LOOPBACK, port }, 0),
    (e: unknown) => isFsError(e, "EINVAL"));
  assert.equal(env.net.counters.connectsFailed, 1);
});

test("tcp: a throwing handler is logged and its connection closed; no crash", async () => {
  const { env, lines } = quietEnv();
  const listener = await env.net.listen({ addr: LOOPBACK, port: 0 });
  const conns: StreamConnection[] = [];
  try {
    listener.onConnection((c) => {
      conns.push(c);
      c.onData(() => { throw new Error("handler bug"); });
    });
    const c = await env.net.connect(listener.local, WAIT_MS);
    conns.push(c);
    const closes: string[] = [];
    c.onClose((r) => closes.push(r));
    c.write(Buffer.from("trigger"));
    await until(() => closes.length === 1, "the server to drop the connection");
    assert.equal(conns[0]!.closed, true);
    assert.match(lines.join(""), /data callback threw \(a bug\): Error: handler bug/);
    assert.equal(env.net.counters.handlerErrors, 1);
  } finally {
    for (const c of conns) c.close();
    listener.close();
  }
});

test("tcp: a connection accepted with no handler is closed, listener close stops accepts",
  async () => {
    const { env } = quietEnv();
    const listener = await env.net.listen({ addr: LOOPBACK, port: 0 });
    const conns: StreamConnection[] = [];
    try {
      const c = await env.net.connect(listener.local, WAIT_MS);
      conns.push(c);
      const closes: string[] = [];
      c.onClose((r) => closes.push(r));
      await until(() => closes.length === 1, "rejection");
      assert.equal(env.net.counters.connectionsRejected, 1);
    } finally {
      for (const c of conns) c.close();
      listener.close();
    }
    await assert.rejects(env.net.connect(listener.local, WAIT_MS),
      (e: unknown) => isFsError(e, "ECONNREFUSED"));
  });
