/*
 * Goal: the simulated network and the per-node Env behave as documented in src/sim/net.ts and
 * src/sim/env.ts: datagram loss, duplication, reordering and partitions (symmetric and
 * asymmetric); stream connect errors with the right codes at the right virtual times;
 * ordered, intact delivery through random splitting and merging; cuts that lose exactly the
 * undelivered suffix; partitions that stall streams and break them after the detection
 * delay; graceful close; node crashes and restarts; bounded trace; counters.
 *
 * Method: small worlds of two or three nodes driven by the scheduler. Every check is made
 * in virtual time, so the expected instants are exact; probabilistic behaviour is checked
 * with fixed seeds and generous statistical bounds.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import type { NetAddr, StreamConnection } from "../../src/env/env.js";
import { SimWorld, TraceRing, type SimNode } from "../../src/sim/env.js";
import { DATAGRAM_MAX_BYTES, type NetFaults } from "../../src/sim/net.js";
import { SimDisk } from "../../src/sim/disk.js";
import { isFsError } from "../../src/util/errno.js";

const FIXED_1MS: Partial<NetFaults> = { delayMinMs: 1, delayMaxMs: 1, resetNoticeMaxMs: 0 };

function world2(faults: Partial<NetFaults> = FIXED_1MS, seed = 1):
  { w: SimWorld; a: SimNode; b: SimNode } {
  const w = new SimWorld({ seed, faults });
  return { w, a: w.addNode("a"), b: w.addNode("b") };
}

/** A listener on b:port recording every accepted connection's bytes and close reason. */
async function server(w: SimWorld, b: SimNode, port = 9000): Promise<{
  conns: StreamConnection[]; data: Buffer[][]; closes: (string | null)[];
}> {
  const l = await w.settle(b.env.net.listen({ addr: "0.0.0.0", port }));
  const out = { conns: [] as StreamConnection[], data: [] as Buffer[][],
    closes: [] as (string | null)[] };
  l.onConnection((c) => {
    const i = out.conns.length;
    out.conns.push(c);
    out.data.push([]);
    out.closes.push(null);
    c.onData((chunk) => out.data[i]!.push(chunk));
    c.onClose((reason) => { out.closes[i] = reason; });
  });
  return out;
}

test("datagrams: delivered with their source, after the delay", async () => {
  const { w, a, b } = world2();
  const sa = await w.settle(a.env.net.bindDatagram({ addr: "0.0.0.0", port: 0 }));
  const sb = await w.settle(b.env.net.bindDatagram({ addr: b.addr, port: 5000 }));
  assert.equal(sa.local.addr, "10.0.0.1");
  assert.ok(sa.local.port >= 32768, "port 0 binds an ephemeral port");
  const got: [string, NetAddr, number][] = [];
  sb.onMessage((buf, from) => got.push([buf.toString(), from, w.nowMs()]));
  sa.send(Buffer.from("hi"), sb.local);
  await w.run();
  assert.deepEqual(got, [["hi", sa.local, 1]]);
  sa.send(Buffer.alloc(DATAGRAM_MAX_BYTES + 1), sb.local); // oversize: dropped
  sa.send(Buffer.from("x"), { addr: b.addr, port: 5001 }); // nobody bound there
  await w.run();
  assert.equal(got.length, 1);
  assert.equal(w.net.counters.datagramsOverflow, 1);
  assert.equal(w.net.counters.datagramsUnreachable, 1);
});

test("datagrams: loss, duplication and reordering at about the configured rates", async () => {
  const { w, a, b } = world2({ delayMinMs: 1, delayMaxMs: 20, datagramLossProbability: 0.2,
    datagramDuplicateProbability: 0.1 }, 7);
  const sa = await w.settle(a.env.net.bindDatagram({ addr: "0.0.0.0", port: 0 }));
  const sb = await w.settle(b.env.net.bindDatagram({ addr: "0.0.0.0", port: 5000 }));
  const got: number[] = [];
  sb.onMessage((buf) => got.push(buf.readUInt32BE(0)));
  const n = 5000;
  for (let i = 0; i < n; i++) {
    const buf = Buffer.alloc(4);
    buf.writeUInt32BE(i);
    sa.send(buf, sb.local);
    await w.runFor(0.5);
  }
  await w.run();
  const c = w.net.counters;
  assert.equal(c.datagramsSent, n);
  assert.ok(c.datagramsLost > n * 0.17 && c.datagramsLost < n * 0.23, `lost ${c.datagramsLost}`);
  const dups = got.length - new Set(got).size;
  assert.equal(dups, c.datagramsDuplicated);
  assert.ok(dups > n * 0.8 * 0.07 && dups < n * 0.8 * 0.13, `duplicated ${dups}`);
  assert.equal(got.length, n - c.datagramsLost + dups);
  let inversions = 0;
  for (let i = 1; i < got.length; i++) if (got[i]! < got[i - 1]!) inversions++;
  assert.ok(inversions > 100, `reordered ${inversions}`);
});

test("datagrams: symmetric and asymmetric partitions, then heal", async () => {
  const { w, a, b } = world2();
  const sa = await w.settle(a.env.net.bindDatagram({ addr: "0.0.0.0", port: 5000 }));
  const sb = await w.settle(b.env.net.bindDatagram({ addr: "0.0.0.0", port: 5000 }));
  const got: string[] = [];
  sa.onMessage((buf) => got.push(`a<${buf.toString()}`));
  sb.onMessage((buf) => got.push(`b<${buf.toString()}`));
  const exchange = async (tag: string): Promise<void> => {
    sa.send(Buffer.from(tag), sb.local);
    sb.send(Buffer.from(tag), sa.local);
    await w.run();
  };
  w.partition("a", "b");
  await exchange("1");
  w.heal();
  w.block("a", "b");
  await exchange("2");
  w.unblock("a", "b");
  w.block("b", "a");
  await exchange("3");
  w.heal();
  await exchange("4");
  assert.deepEqual(got, ["a<2", "b<3", "b<4", "a<4"]);
  assert.equal(w.net.counters.datagramsBlocked, 4);
});

test("bind: conflicts, foreign addresses and bad ports are rejected", async () => {
  const { w, a } = world2();
  await w.settle(a.env.net.bindDatagram({ addr: "0.0.0.0", port: 5000 }));
  await assert.rejects(w.settle(a.env.net.bindDatagram({ addr: "0.0.0.0", port: 5000 })),
    (e: unknown) => isFsError(e) && /EADDRINUSE/.test(e.message));
  await assert.rejects(w.settle(a.env.net.listen({ addr: "10.0.0.2", port: 1 })),
    (e: unknown) => isFsError(e) && /EADDRNOTAVAIL/.test(e.message));
  await assert.rejects(w.settle(a.env.net.listen({ addr: "0.0.0.0", port: 70000 })),
    (e: unknown) => isFsError(e, "EINVAL"));
  const l = await w.settle(a.env.net.listen({ addr: "0.0.0.0", port: 9000 }));
  await assert.rejects(w.settle(a.env.net.listen({ addr: "0.0.0.0", port: 9000 })),
    (e: unknown) => isFsError(e) && /EADDRINUSE/.test(e.message));
  l.close();
  await w.settle(a.env.net.listen({ addr: "0.0.0.0", port: 9000 })); // free again
});

test("connect: refused after a round trip, timed out when blocked or unknown", async () => {
  const { w, a, b } = world2();
  let t0 = w.nowMs();
  await assert.rejects(w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 500)),
    (e: unknown) => isFsError(e, "ECONNREFUSED"));
  assert.equal(w.nowMs() - t0, 2);
  await server(w, b);
  w.block("b", "a"); // SYN-ACKs lost
  t0 = w.nowMs();
  await assert.rejects(w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 500)),
    (e: unknown) => isFsError(e, "ETIMEDOUT"));
  assert.equal(w.nowMs() - t0, 500);
  w.heal();
  t0 = w.nowMs();
  await assert.rejects(w.settle(a.env.net.connect({ addr: "10.9.9.9", port: 1 }, 250)),
    (e: unknown) => isFsError(e, "ETIMEDOUT"));
  assert.equal(w.nowMs() - t0, 250);
  const c = await w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 500));
  assert.equal(c.remote.port, 9000);
  assert.equal(c.local.addr, a.addr);
  assert.deepEqual(
    [w.net.counters.connectsRefused, w.net.counters.connectsTimedOut], [1, 2]);
});

test("streams: in order and intact through random splits and merges", async () => {
  const { w, a, b } = world2({ delayMinMs: 0.1, delayMaxMs: 30, streamSplitProbability: 0.7,
    streamCoalesceProbability: 0.5 }, 4);
  const srv = await server(w, b);
  const c = await w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 1000));
  const sent: Buffer[] = [];
  for (let i = 0; i < 300; i++) {
    const buf = Buffer.alloc(1 + a.random.int(3000));
    a.random.fill(buf);
    sent.push(Buffer.from(buf));
    c.write(buf);
    buf.fill(0xee); // the caller may reuse its buffer at once
    await w.runFor(a.random.int(3));
  }
  await w.run();
  assert.ok(Buffer.concat(srv.data[0]!).equals(Buffer.concat(sent)));
  const cnt = w.net.counters;
  assert.ok(cnt.streamSplits > 200, `splits ${cnt.streamSplits}`);
  assert.ok(cnt.streamCoalesced > 20, `merges ${cnt.streamCoalesced}`);
  assert.notEqual(srv.data[0]!.length, 300, "chunk boundaries differ from write boundaries");
});

test("streams: data before onData is buffered; graceful close delivers everything", async () => {
  const { w, a, b } = world2();
  const l = await w.settle(b.env.net.listen({ addr: "0.0.0.0", port: 9000 }));
  let accepted: StreamConnection | null = null;
  l.onConnection((conn) => { accepted = conn; });
  const c = await w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 100));
  const events: string[] = [];
  c.onClose((r) => events.push(`client close: ${r} at ${w.nowMs()}`));
  c.write(Buffer.from("one "));
  c.write(Buffer.from("two"));
  c.close();
  assert.equal(c.closed, true);
  assert.equal(c.write(Buffer.from("late")), false);
  assert.equal(events.length, 0, "onClose never runs inside close()");
  await w.runFor(10);
  const s = accepted! as StreamConnection;
  s.onData((chunk) => events.push(`data ${chunk.toString()}`));
  s.onClose((r) => events.push(`server close: ${r}`));
  await w.run();
  assert.deepEqual(events, ["client close: closed locally at 2", "data one ", "data two",
    "server close: closed by peer"]);
  assert.equal(s.closed, true);
  assert.equal(w.net.connections().length, 0);
});

test("streams: a cut loses exactly the undelivered suffix and both sides hear of it",
  async () => {
    const { w, a, b } = world2({ delayMinMs: 1, delayMaxMs: 1, streamSplitProbability: 0.5,
      resetNoticeMaxMs: 5 }, 5);
    const srv = await server(w, b);
    const c = await w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 100));
    let clientClose: string | null = null;
    c.onClose((r) => { clientClose = r; });
    const all = Buffer.alloc(20_000);
    a.random.fill(all);
    for (let off = 0; off < all.length; off += 1000) {
      c.write(all.subarray(off, off + 1000));
      await w.runFor(0.4);
    }
    w.net.cut(w.net.connections()[0]!);
    const atCut = Buffer.concat(srv.data[0]!).length;
    assert.ok(c.write(Buffer.from("lost")), "the cut is not noticed yet");
    await w.run();
    const got = Buffer.concat(srv.data[0]!);
    assert.equal(got.length, atCut, "nothing delivered after the cut");
    assert.ok(got.length > 0 && got.length < all.length);
    assert.ok(got.equals(all.subarray(0, got.length)), "a prefix of what was sent");
    assert.equal(clientClose, "connection reset (simulated cut)");
    assert.equal(srv.closes[0], "connection reset (simulated cut)");
    assert.equal(c.closed, true);
    assert.ok(w.net.counters.streamBytesLost > 0);
  });

test("streams: a short partition stalls them, a long one breaks them", async () => {
  const { w, a, b } = world2({ ...FIXED_1MS, streamBreakAfterMs: 1000 });
  const srv = await server(w, b);
  const c = await w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 100));
  let clientClose: [string, number] | null = null;
  c.onClose((r) => { clientClose = [r, w.nowMs()]; });
  w.partition("a", "b");
  c.write(Buffer.from("during "));
  await w.runFor(900);
  assert.equal(srv.data[0]!.length, 0, "stalled");
  w.heal();
  c.write(Buffer.from("after"));
  await w.runFor(50);
  assert.equal(Buffer.concat(srv.data[0]!).toString(), "during after");
  assert.equal(clientClose, null);
  const blockedAt = w.nowMs();
  w.block("b", "a"); // one direction is enough to break TCP eventually
  await w.run();
  assert.deepEqual(clientClose, ["connection timed out (partition)", blockedAt + 1000]);
  assert.equal(srv.closes[0], "connection timed out (partition)");
  assert.equal(w.net.counters.streamPartitionBreaks, 1);
});

test("crash: timers stop, sockets vanish, peers see resets, pending calls never settle",
  async () => {
    const { w, a, b } = world2();
    const srv = await server(w, b);
    const c = await w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 100));
    await w.settle(b.env.net.bindDatagram({ addr: "0.0.0.0", port: 5000 }));
    const disk = new SimDisk("meta", 1 << 20);
    const dev = b.device(disk);
    let fired = 0;
    b.env.timers.after(10, () => fired++);
    let ioDone = false;
    let clientClose: string | null = null;
    c.onClose((r) => { clientClose = r; });
    b.spawn("writer", async () => {
      await new Promise<void>((r) => { b.env.timers.after(5, r); });
      await dev.write(Buffer.alloc(4096, 1), 0);
      ioDone = true;
    });
    w.crash("b");
    assert.equal(b.alive, false);
    await w.run();
    assert.equal(fired, 0);
    assert.equal(ioDone, false);
    assert.equal(disk.counters.writes, 0);
    assert.equal(clientClose, "connection reset by peer");
    assert.equal(srv.closes[0], null, "a dead process hears nothing");
    // The host's ports are free for the next incarnation; connecting now is refused.
    await assert.rejects(w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 100)),
      (e: unknown) => isFsError(e, "ECONNREFUSED"));
    const b2 = w.restart("b");
    assert.equal(b2.incarnation, 2);
    assert.equal(b2.addr, b.addr);
    await w.settle(b2.env.net.bindDatagram({ addr: "0.0.0.0", port: 5000 }));
    await server(w, b2);
    await w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 100));
    let stale = false;
    void b.env.net.listen({ addr: "0.0.0.0", port: 1 }).then(() => { stale = true; });
    await w.run();
    assert.equal(stale, false, "calls of the dead incarnation never settle");
  });

test("env: clock skew, logger trace and its bound", async () => {
  const w = new SimWorld({ seed: 9, traceEntries: 5 });
  const a = w.addNode("a", { clockSkewMs: 1500.25 });
  const b = w.addNode("b");
  await w.runFor(2000.5);
  assert.equal(a.env.clock.monotonicMs(), 2000.5);
  assert.deepEqual(b.env.clock.wallTime(), { sec: 1_700_000_002n, nsec: 500_000 });
  assert.deepEqual(a.env.clock.wallTime(), { sec: 1_700_000_003n, nsec: 500_750_000 });
  a.clockSkewMs = -3000; // a clock step backwards
  assert.equal(a.env.clock.wallTime().sec, 1_699_999_999n);
  for (let i = 0; i < 10; i++) a.env.logger.log("info", `m${i}`);
  const entries = w.trace.entries();
  assert.equal(entries.length, 5);
  assert.equal(w.trace.total, 12); // two "add node" lines, ten messages
  assert.equal(TraceRing.format(entries[4]!), "     2.000500s a info m9");
});

test("the same seed replays the same network run; another seed does not", async () => {
  const run = async (seed: number): Promise<string> => {
    const w = new SimWorld({ seed, faults: { delayMinMs: 0.1, delayMaxMs: 10,
      datagramLossProbability: 0.1, datagramDuplicateProbability: 0.1,
      streamSplitProbability: 0.5 } });
    const nodes = [w.addNode("a"), w.addNode("b"), w.addNode("c")];
    for (const n of nodes) {
      n.spawn("main", async () => {
        const s = await n.env.net.bindDatagram({ addr: "0.0.0.0", port: 5000 });
        s.onMessage((buf, from) =>
          n.env.logger.log("debug", `${buf.toString()} from ${from.addr}`));
        for (let i = 0; i < 50; i++) {
          const peer = nodes[n.random.int(3)]!;
          s.send(Buffer.from(`${n.name}${i}`), { addr: peer.addr, port: 5000 });
          await new Promise<void>((r) => { n.env.timers.after(n.random.int(5), r); });
        }
      });
    }
    await w.run();
    return w.digest();
  };
  assert.equal(await run(11), await run(11));
  assert.notEqual(await run(11), await run(12));
});

test("streams: onClose waits for unread bytes; local close drops them", async () => {
  const { w, a, b } = world2();
  const l = await w.settle(b.env.net.listen({ addr: "0.0.0.0", port: 9000 }));
  const events: string[] = [];
  let accepted: StreamConnection | null = null;
  l.onConnection((conn) => {
    accepted = conn;
    conn.onClose((r) => events.push(`close: ${r}`)); // registered before any onData
  });
  const c = await w.settle(a.env.net.connect({ addr: b.addr, port: 9000 }, 100));
  c.write(Buffer.from("payload"));
  c.close();
  await w.runFor(20);
  assert.equal(events.length, 0, "close is held back while bytes are unread");
  (accepted! as StreamConnection).onData((d) => events.push(`data ${d.toString()}`));
  await w.run();
  assert.deepEqual(events, ["data payload", "close: closed by peer"]);
});

test("per-link faults and isolation apply to their paths only", async () => {
  const w = new SimWorld({ seed: 2, faults: FIXED_1MS });
  const [a, b, c] = [w.addNode("a"), w.addNode("b"), w.addNode("c")];
  const socks = await w.settle(Promise.all([a, b, c].map((n) =>
    n.env.net.bindDatagram({ addr: "0.0.0.0", port: 5000 }))));
  const got: string[] = [];
  socks.forEach((s, i) => s.onMessage((buf) => got.push(`${"abc"[i]}<${buf.toString()}`)));
  w.net.setLinkFaults(a.addr, b.addr, { datagramLossProbability: 1 });
  w.net.setLinkFaults(a.addr, c.addr, { delayMinMs: 50, delayMaxMs: 50 });
  socks[0]!.send(Buffer.from("1"), socks[1]!.local);
  socks[0]!.send(Buffer.from("2"), socks[2]!.local);
  socks[1]!.send(Buffer.from("3"), socks[0]!.local);
  await w.runFor(10);
  assert.deepEqual(got, ["a<3"]);
  await w.run();
  assert.deepEqual(got, ["a<3", "c<2"]);
  assert.equal(w.nowMs(), 50);
  w.isolate("c");
  socks[2]!.send(Buffer.from("4"), socks[0]!.local);
  socks[1]!.send(Buffer.from("5"), socks[2]!.local);
  socks[1]!.send(Buffer.from("6"), socks[0]!.local);
  await w.run();
  assert.deepEqual(got.slice(2), ["a<6"]);
});
