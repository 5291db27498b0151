/*
 * Goal: the lock server grants exactly what upstream's rules allow, in arrival order per
 * lock, only after every conflicting holder answered its invalidation; write grants carry
 * fresh increasing write_seqs; departures and recovery behave as specified.
 *
 * Method: a LockServer whose sendToClient is a fake (requests are captured and answered by
 * the test), driven in a SimWorld for timers. The compatibility table is checked against an
 * exhaustive matrix; scenarios cover conflicts and targets, own upgrades and conversions,
 * FIFO order, grantsSent, bad requests, invalidation errors and retries, client removal,
 * recovery in batches with held requests, the recovery write_seq bound, dumps and shutdown.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { keyInc, MIN_KEY } from "../../src/core/key.js";
import {
  decodeLockGrant, decodeLockInvalidate, decodeLockRecoverRequest, encodeLockInvalidateReply,
  encodeLockRecoverReply, encodeLockRequest, type LockGrant, type LockInvalidate, LockMode,
  LOCK_RECOVER_MAX_ENTRIES,
} from "../../src/core/lock_msg.js";
import {
  inodeGroupRange, type LockRange, rangesEqual, renameRange,
} from "../../src/core/lock_names.js";
import {
  invalidationTarget, lockModesCompatible, LockServer, type LockServerEvent,
} from "../../src/core/lock_server.js";
import { NetCmd } from "../../src/core/msg.js";
import { SimWorld } from "../../src/sim/env.js";
import { Counters } from "../../src/util/counters.js";
import { FsError, isFsError } from "../../src/util/errno.js";

const { NULL, READ, WRITE, WRITE_ONLY } = LockMode;
const A = 0xa1n;
const B = 0xb2n;
const C = 0xc3n;
const G = inodeGroupRange(1024n);

interface Sent {
  rid: bigint;
  cmd: NetCmd;
  payload: Buffer;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

interface Req {
  grant?: LockGrant;
  error?: Error;
}

/** Neither granted nor refused yet (a function, so TypeScript does not narrow the Req). */
function isPending(r: Req): boolean {
  return r.grant === undefined && r.error === undefined;
}

function harness(recoverRids: bigint[] = []) {
  const world = new SimWorld({ seed: 1 });
  const node = world.addNode("server");
  const sent: Sent[] = [];
  const events: LockServerEvent[] = [];
  const counters = new Counters();
  const seq = { next: 0, recovered: -1 };
  const ls = new LockServer({ env: node.env, counters, retryMs: 10, recoverRids,
    sendToClient: (rid, cmd, payload) => new Promise((resolve, reject) => {
      sent.push({ rid, cmd, payload, resolve, reject });
    }),
    nextSeq: () => ++seq.next,
    onRecovered: (max) => { seq.recovered = max; seq.next = Math.max(seq.next, max); },
    onEvent: (e) => events.push(e) });
  const settle = async (ms = 1): Promise<void> => { await world.runFor(ms); };
  const request = (rid: bigint, mode: LockMode, range: LockRange = G, old: LockMode = NULL):
    Req => {
    const r: Req = {};
    const oldMode = old !== mode ? old : mode === NULL ? READ : NULL;
    ls.handleRequest(rid, encodeLockRequest({ range, oldMode, newMode: mode })).then(
      (b) => { r.grant = decodeLockGrant(b); },
      (e: unknown) => { r.error = e as Error; });
    return r;
  };
  /** Takes the captured invalidations (in send order). */
  const invalidations = (): (Sent & { inv: LockInvalidate })[] => {
    const out = sent.filter((s) => s.cmd === NetCmd.LOCK)
      .map((s) => ({ ...s, inv: decodeLockInvalidate(s.payload) }));
    for (const s of out) sent.splice(sent.findIndex((x) => x.payload === s.payload), 1);
    return out;
  };
  return { world, ls, sent, events, counters, seq, settle, request, invalidations };
}

test("compatibility: upstream's rules plus re-requests of a held mode", () => {
  const modes = [NULL, READ, WRITE, WRITE_ONLY];
  const shareAcross = new Set(["0,0", "0,1", "0,2", "0,3", "1,0", "2,0", "3,0", "1,1", "3,3"]);
  for (const h of modes) {
    for (const w of modes) {
      assert.equal(lockModesCompatible(h, A, w, B), shareAcross.has(`${h},${w}`), `${h} vs ${w}`);
      const own = shareAcross.has(`${h},${w}`) || h === w || (h === READ && w === WRITE);
      assert.equal(lockModesCompatible(h, A, w, A), own, `own ${h} vs ${w}`);
    }
  }
  assert.equal(invalidationTarget(WRITE, READ), READ);
  for (const [h, w] of [[WRITE, WRITE], [WRITE, WRITE_ONLY], [READ, WRITE], [READ, WRITE_ONLY],
    [WRITE_ONLY, READ], [WRITE_ONLY, WRITE]] as const) {
    assert.equal(invalidationTarget(h, w), NULL);
  }
});

test("shared modes are granted at once; write grants carry increasing write_seqs", async () => {
  const h = harness();
  const r1 = h.request(A, READ);
  const r2 = h.request(B, READ);
  const w1 = h.request(A, WRITE_ONLY, renameRange());
  const w2 = h.request(B, WRITE_ONLY, renameRange());
  await h.settle();
  assert.deepEqual([r1.grant, r2.grant],
    [{ mode: READ, writeSeq: 0 }, { mode: READ, writeSeq: 0 }]);
  assert.deepEqual([w1.grant, w2.grant], [{ mode: WRITE_ONLY, writeSeq: 1 },
    { mode: WRITE_ONLY, writeSeq: 2 }]);
  assert.equal(h.sent.length, 0);
  assert.deepEqual(h.ls.granted(G), new Map([[A, READ], [B, READ]]));
});

test("a conflict is granted only after the holder answered; WRITE holders keep READ", async () => {
  const h = harness();
  const a = h.request(A, WRITE);
  await h.settle();
  assert.equal(a.grant?.writeSeq, 1);
  const b = h.request(B, READ);
  await h.settle();
  const [inv] = h.invalidations();
  assert.ok(inv !== undefined && inv.rid === A);
  assert.equal(inv.inv.oldMode, WRITE);
  assert.equal(inv.inv.newMode, READ);
  assert.equal(inv.inv.grantsSent, 1, "one grant was sent to A before");
  assert.ok(rangesEqual(inv.inv.range, G));
  assert.ok(isPending(b), "not granted before the answer");
  inv.resolve(encodeLockInvalidateReply(READ));
  await h.settle();
  assert.deepEqual(b.grant, { mode: READ, writeSeq: 0 });
  assert.deepEqual(h.ls.granted(G), new Map([[A, READ], [B, READ]]));
});

test("own READ upgrades to WRITE without self-invalidation; WRITE to WRITE_ONLY does", async () => {
  const h = harness();
  h.request(A, READ);
  h.request(B, READ);
  await h.settle();
  const up = h.request(A, WRITE, G, READ);
  await h.settle();
  const invs = h.invalidations();
  assert.deepEqual(invs.map((i) => [i.rid, i.inv.newMode]), [[B, NULL]]);
  invs[0]!.resolve(encodeLockInvalidateReply(NULL));
  await h.settle();
  assert.deepEqual(up.grant, { mode: WRITE, writeSeq: 1 });
  const conv = h.request(A, WRITE_ONLY, G, WRITE);
  await h.settle();
  const self = h.invalidations();
  assert.deepEqual(self.map((i) => [i.rid, i.inv.oldMode, i.inv.newMode]), [[A, WRITE, NULL]]);
  self[0]!.resolve(encodeLockInvalidateReply(NULL));
  await h.settle();
  assert.deepEqual(conv.grant, { mode: WRITE_ONLY, writeSeq: 2 });
  // A request for the mode already held (resent to a new server) is simply granted again.
  const again = h.request(A, WRITE_ONLY, G, NULL);
  await h.settle();
  assert.deepEqual(again.grant, { mode: WRITE_ONLY, writeSeq: 3 });
  assert.equal(h.invalidations().length, 0);
});

test("requests of one lock are granted strictly in arrival order", async () => {
  const h = harness();
  h.request(A, WRITE);
  await h.settle();
  const b = h.request(B, WRITE);
  const c = h.request(C, READ);
  const a2 = h.request(A, NULL, renameRange()); // another lock is not held up
  await h.settle();
  assert.deepEqual(a2.grant, { mode: NULL, writeSeq: 0 });
  const [toA] = h.invalidations();
  assert.equal(toA!.inv.newMode, NULL);
  toA!.resolve(encodeLockInvalidateReply(NULL));
  await h.settle();
  assert.equal(b.grant?.mode, WRITE);
  assert.ok(isPending(c));
  const [toB] = h.invalidations();
  assert.deepEqual([toB!.rid, toB!.inv.newMode], [B, READ]);
  toB!.resolve(encodeLockInvalidateReply(READ));
  await h.settle();
  assert.equal(c.grant?.mode, READ);
  assert.deepEqual(h.events.filter((e) => e.kind === "grant").map((e) =>
    e.kind === "grant" ? `${e.rid.toString(16)}:${e.mode}` : ""), ["a1:2", "a1:0", "b2:2", "c3:1"]);
});

test("bad requests are refused without changing state", async () => {
  const h = harness();
  h.request(A, WRITE);
  await h.settle();
  h.request(B, WRITE);
  const dup = h.request(B, READ);
  const overlap = h.request(C, READ, { start: G.start, end: inodeGroupRange(5000n).end });
  const ls = h.ls;
  let malformed: unknown;
  await ls.handleRequest(C, Buffer.alloc(3)).catch((e: unknown) => { malformed = e; });
  await h.settle();
  assert.ok(isFsError(dup.error, "EINVAL"), String(dup.error));
  assert.ok(isFsError(overlap.error, "EINVAL"), String(overlap.error));
  assert.ok(isFsError(malformed, "EBADMSG"));
  assert.equal(h.counters.get("lock_server_bad_requests"), 3);
  assert.equal(ls.lockCount, 1);
});

test("a failed invalidation is sent again after the retry delay", async () => {
  const h = harness();
  h.request(A, WRITE);
  await h.settle();
  const b = h.request(B, WRITE);
  await h.settle();
  h.invalidations()[0]!.reject(new FsError("EIO", "client hook failed"));
  await h.settle(5);
  assert.equal(h.invalidations().length, 0, "not before the delay");
  await h.settle(20);
  const again = h.invalidations();
  assert.equal(again.length, 1);
  again[0]!.resolve(encodeLockInvalidateReply(NULL));
  await h.settle();
  assert.equal(b.grant?.mode, WRITE);
  assert.equal(h.counters.get("lock_server_invalidate_errors"), 1);
});

test("a departing client's locks and requests go; work waiting on it proceeds", async () => {
  const h = harness();
  h.request(A, WRITE);
  const a2 = h.request(A, READ, renameRange());
  await h.settle();
  const b = h.request(B, WRITE);
  const c = h.request(C, WRITE, renameRange());
  await h.settle();
  const invs = h.invalidations();
  assert.deepEqual(invs.map((i) => i.rid), [A, A], "A is asked to drop both locks");
  // A's request in progress (at its queue head) and one queued behind B's.
  const a3 = h.request(A, WRITE, inodeGroupRange(9000n));
  const b3 = h.request(B, WRITE, inodeGroupRange(9000n));
  const a4 = h.request(A, READ, G);
  h.ls.removeClient(A);
  await h.settle();
  assert.equal(a2.grant?.mode, READ, "granted before A left");
  assert.equal(b.grant?.mode, WRITE, "granted without A's answer");
  assert.equal(c.grant?.mode, WRITE);
  assert.ok(isFsError(a3.error, "ENOTCONN"), String(a3.error));
  assert.ok(isFsError(a4.error, "ENOTCONN"), String(a4.error));
  assert.equal(b3.grant?.mode, WRITE);
  assert.deepEqual(h.ls.granted(G), new Map([[B, WRITE]]));
  assert.equal(h.ls.dumpLocks().some((l) => l.includes("rid 00000000000000a1")), false);
  // Answers arriving from the departed client change nothing.
  for (const i of invs) i.resolve(encodeLockInvalidateReply(NULL));
  await h.settle();
  assert.deepEqual(h.ls.granted(renameRange()), new Map([[C, WRITE]]));
});

test("recovery: batches rebuild the state; nothing is granted before all recovered", async () => {
  const h = harness([A, B]);
  assert.ok(h.ls.recovering);
  const c = h.request(C, WRITE);
  const many = Array.from({ length: LOCK_RECOVER_MAX_ENTRIES + 5 }, (_, i) => ({
    range: inodeGroupRange(BigInt(i + 10) * 1024n), mode: WRITE_ONLY, writeSeq: 100 + i }));
  h.ls.clientGreeted(A);
  h.ls.clientGreeted(A); // a reconnect during recovery does not start a second recovery
  await h.settle();
  const r1 = h.sent.splice(0);
  assert.equal(r1.length, 1);
  assert.equal(r1[0]!.cmd, NetCmd.LOCK_RECOVER);
  assert.ok(decodeLockRecoverRequest(r1[0]!.payload).equals(MIN_KEY));
  r1[0]!.reject(new FsError("ENOTCONN", "not admitted yet"));
  await h.settle(20);
  const retry = h.sent.splice(0);
  retry[0]!.resolve(encodeLockRecoverReply({ entries: [{ range: G, mode: WRITE, writeSeq: 50 },
    ...many.slice(0, LOCK_RECOVER_MAX_ENTRIES - 1)], more: true }));
  await h.settle();
  const r2 = h.sent.splice(0);
  const cursor = decodeLockRecoverRequest(r2[0]!.payload);
  assert.ok(cursor.equals(keyInc(many[LOCK_RECOVER_MAX_ENTRIES - 2]!.range.end)));
  r2[0]!.resolve(encodeLockRecoverReply({ entries: many.slice(LOCK_RECOVER_MAX_ENTRIES - 1),
    more: false }));
  await h.settle();
  assert.ok(h.ls.recovering, "B has not recovered");
  assert.ok(isPending(c));
  assert.deepEqual(h.ls.pendingRecovery(), [B]);
  h.ls.removeClient(B); // e.g. fenced at the recovery timeout
  await h.settle();
  assert.ok(!h.ls.recovering);
  assert.equal(h.seq.recovered, 100 + many.length - 1);
  const [inv] = h.invalidations();
  assert.deepEqual([inv!.rid, inv!.inv.oldMode, inv!.inv.grantsSent], [A, WRITE, 0]);
  inv!.resolve(encodeLockInvalidateReply(NULL));
  await h.settle();
  assert.ok(c.grant!.writeSeq > 100 + many.length - 1, "write_seq above every recovered one");
  const kinds = h.events.map((e) => e.kind);
  assert.ok(kinds.indexOf("recovery_done") < kinds.indexOf("grant"));
  assert.equal(h.counters.get("lock_server_recovered_locks"), many.length + 1);
});

test("recovered conflicts are counted and reported", async () => {
  const h = harness([A, B]);
  h.ls.clientGreeted(A);
  h.ls.clientGreeted(B);
  await h.settle();
  for (const s of h.sent.splice(0)) {
    s.resolve(encodeLockRecoverReply({ entries: [{ range: G, mode: WRITE, writeSeq: 1 }],
      more: false }));
  }
  await h.settle();
  assert.equal(h.counters.get("lock_server_recover_conflicts"), 1);
  assert.ok(!h.ls.recovering);
});

test("debug dump and shutdown", async () => {
  const h = harness();
  h.request(A, WRITE);
  await h.settle();
  const b = h.request(B, READ);
  await h.settle();
  assert.deepEqual(h.ls.dumpLocks(), [
    "16.1024.0.0.0.0 write granted rid 00000000000000a1 net_id 0",
    "16.1024.0.0.0.0 read requested rid 00000000000000b2 net_id 2",
    "16.1024.0.0.0.0 read invalidated rid 00000000000000a1 net_id 3",
  ]);
  h.ls.shutdown();
  await h.settle();
  assert.ok(isFsError(b.error, "ECANCELED"));
  let after: unknown;
  await h.ls.handleRequest(C, encodeLockRequest({ range: G, oldMode: NULL, newMode: READ }))
    .catch((e: unknown) => { after = e; });
  assert.ok(isFsError(after, "ECANCELED"));
});
