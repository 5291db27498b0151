/*
 * Goal: the lock client caches grants and serves local users by the mode rules, asks the
 * server only for what it lacks, lowers locks exactly as the protocol says (grant counting,
 * new mode first, users drained, hook, answer), tolerates stale and duplicate invalidations,
 * reports its locks for recovery conservatively, sheds idle locks past lock_idle_count and
 * exposes write_seq, refresh_gen and the dirtied marker.
 *
 * Method: a LockClient whose transport is scripted by the test: LOCK requests are captured
 * and answered with chosen grants; invalidations and recover requests are fed to its
 * handlers directly, in the orders that matter (an invalidation before the grant it refers
 * to, an older term's invalidation, a grant arriving while an invalidation writes out). The
 * invalidate hook records its calls and can be held open. A SimWorld provides the Env.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { MIN_KEY } from "../../src/core/key.js";
import {
  invalidatedMode, LOCK_IDLE_COUNT_DEFAULT, LockClient, lockIdleCountProblem, lockItemSeq,
  type LockHandle, type LockModeChange, modeSatisfies,
} from "../../src/core/lock.js";
import {
  decodeLockInvalidateReply, decodeLockRecoverReply, decodeLockRequest, encodeLockGrant,
  encodeLockInvalidate, encodeLockRecoverRequest, type LockGrant, LockMode, type LockRequest,
  LOCK_RECOVER_MAX_ENTRIES,
} from "../../src/core/lock_msg.js";
import {
  inodeGroupRange, type LockRange, rangesEqual, renameRange,
} from "../../src/core/lock_names.js";
import { SimWorld } from "../../src/sim/env.js";
import { Counters } from "../../src/util/counters.js";
import { FsError, isFsError } from "../../src/util/errno.js";

const { NULL, READ, WRITE, WRITE_ONLY } = LockMode;
const G = inodeGroupRange(1024n);
const H = inodeGroupRange(8192n);

interface Captured {
  req: LockRequest;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

interface HookCall {
  range: LockRange;
  mode: LockMode;
  dirtied: boolean;
}

function harness(opts: { idle?: number } = {}) {
  const world = new SimWorld({ seed: 3 });
  const node = world.addNode("mount");
  const requests: Captured[] = [];
  const hooks: HookCall[] = [];
  const changes: LockModeChange[] = [];
  const term = { now: 1 };
  let gate: Promise<void> | undefined;
  let hookError: Error | undefined;
  const counters = new Counters();
  const lc = new LockClient({ env: node.env, counters, lockIdleCount: opts.idle,
    transport: {
      request: (p) => new Promise((resolve, reject) => {
        requests.push({ req: decodeLockRequest(p), resolve, reject });
      }),
      serverTerm: () => term.now,
    },
    onInvalidate: async (range, mode, dirtied) => {
      hooks.push({ range, mode, dirtied });
      if (hookError !== undefined) {
        const e = hookError;
        hookError = undefined;
        throw e;
      }
      if (gate !== undefined) await gate;
    },
    onModeChange: (c) => changes.push(c) });
  lc.serverChanged(1);
  const settle = async (): Promise<void> => { await world.runFor(1); };
  /** Answers the oldest captured request with its grant. */
  const grant = (writeSeq = 0, g?: LockGrant): LockRequest => {
    const c = requests.shift();
    assert.ok(c !== undefined, "a request was sent");
    const mode = g?.mode ?? c.req.newMode;
    c.resolve(encodeLockGrant(g ?? { mode, writeSeq: mode === WRITE || mode === WRITE_ONLY
      ? writeSeq || 1 : 0 }));
    return c.req;
  };
  const invalidate = (range: LockRange, oldMode: LockMode, newMode: LockMode,
    grantsSent: number): { reply?: LockMode; error?: unknown } => {
    const out: { reply?: LockMode; error?: unknown } = {};
    lc.handleInvalidate(encodeLockInvalidate({ range, oldMode, newMode, grantsSent }))
      .then((b) => { out.reply = decodeLockInvalidateReply(b); },
        (e: unknown) => { out.error = e; });
    return out;
  };
  const holdHook = (): () => void => {
    let open!: () => void;
    gate = new Promise((resolve) => { open = resolve; });
    return () => { gate = undefined; open(); };
  };
  const failHook = (e: Error): void => { hookError = e; };
  return { world, lc, requests, hooks, changes, counters, term, settle, grant, invalidate,
    holdHook, failHook };
}

/** Starts a lock call; the returned box fills when it resolves or fails. */
function start(lc: LockClient, ranges: LockRange[], mode: LockMode):
  { handle?: LockHandle; error?: unknown } {
  const box: { handle?: LockHandle; error?: unknown } = {};
  lc.lock(ranges, mode).then((h) => { box.handle = h; }, (e: unknown) => { box.error = e; });
  return box;
}

function waiting(box: { handle?: LockHandle; error?: unknown }): boolean {
  return box.handle === undefined && box.error === undefined;
}

test("mode helpers and the lock_idle_count bounds", () => {
  assert.ok(modeSatisfies(WRITE, READ) && modeSatisfies(READ, READ));
  assert.ok(!modeSatisfies(WRITE, WRITE_ONLY) && !modeSatisfies(WRITE_ONLY, READ));
  assert.ok(!modeSatisfies(READ, WRITE) && !modeSatisfies(NULL, READ));
  assert.equal(invalidatedMode(WRITE, READ), READ);
  assert.equal(invalidatedMode(WRITE_ONLY, READ), NULL);
  assert.equal(invalidatedMode(READ, READ), READ);
  assert.equal(invalidatedMode(WRITE, NULL), NULL);
  assert.equal(LOCK_IDLE_COUNT_DEFAULT, 10_000);
  assert.equal(lockIdleCountProblem(32), undefined);
  assert.equal(lockIdleCountProblem(100_000), undefined);
  assert.match(lockIdleCountProblem(31)!, /invalid lock_idle_count value 31/);
  assert.ok(lockIdleCountProblem(100_001) !== undefined);
  assert.ok(lockIdleCountProblem(1.5) !== undefined);
});

test("grants are cached; local users share by mode; only missing modes are requested", async () => {
  const h = harness();
  const w = start(h.lc, [G], WRITE);
  await h.settle();
  assert.deepEqual(h.grant(7), { range: G, oldMode: NULL, newMode: WRITE });
  await h.settle();
  assert.ok(w.handle !== undefined);
  assert.equal(w.handle.held[0]!.writeSeq, 7);
  assert.equal(lockItemSeq(w.handle.held[0]!, 3), 7);
  assert.equal(lockItemSeq(w.handle.held[0]!, 9), 9);
  const r = start(h.lc, [G], READ); // WRITE serves a READ user
  await h.settle();
  assert.ok(r.handle !== undefined && h.requests.length === 0);
  const wo = start(h.lc, [G], WRITE_ONLY); // but not a WRITE_ONLY one
  await h.settle();
  assert.ok(waiting(wo));
  assert.deepEqual(h.requests[0]!.req, { range: G, oldMode: WRITE, newMode: WRITE_ONLY });
  h.lc.unlock(w.handle);
  h.lc.unlock(r.handle);
  assert.throws(() => h.lc.unlock(r.handle!), /released/);
  assert.equal(h.lc.grantedModeAt(G.start), WRITE);
  assert.equal(h.lc.grantedModeAt(H.start), NULL);
});

test("an upgrade request keeps the lock's READ users; WRITE waiters are served after", async () => {
  const h = harness();
  const r = start(h.lc, [G], READ);
  await h.settle();
  h.grant();
  await h.settle();
  const w = start(h.lc, [G], WRITE);
  const r2 = start(h.lc, [G], READ);
  await h.settle();
  assert.ok(r2.handle !== undefined, "READ users keep coming while the upgrade is asked");
  assert.deepEqual(h.grant(5), { range: G, oldMode: READ, newMode: WRITE });
  await h.settle();
  assert.ok(w.handle !== undefined);
  assert.ok(r.handle !== undefined);
  assert.equal(h.counters.get("lock_refresh"), 1, "refresh_gen moves only out of NULL");
});

test("invalidation: new mode first, users drained, hook with dirtied, then the answer",
  async () => {
    const h = harness();
    const w = start(h.lc, [G], WRITE);
    await h.settle();
    h.grant(11);
    await h.settle();
    h.lc.markDirtied(w.handle!.held[0]!, 4);
    const inv = h.invalidate(G, WRITE, READ, 1);
    await h.settle();
    assert.equal(h.hooks.length, 0, "waits for the WRITE user");
    const w2 = start(h.lc, [G], WRITE);
    const r = start(h.lc, [G], READ);
    await h.settle();
    assert.ok(waiting(w2), "a new WRITE user is blocked");
    assert.ok(r.handle !== undefined, "a READ user is not: the lock stays READ");
    h.lc.unlock(w.handle!);
    await h.settle();
    assert.deepEqual(h.hooks, [{ range: G, mode: READ, dirtied: true }]);
    assert.equal(inv.reply, READ);
    assert.equal(h.counters.get("lock_invalidate_sync"), 1);
    assert.deepEqual(h.requests[0]!.req.newMode, WRITE, "the blocked writer asks again");
    assert.deepEqual(h.changes.map((c) => [c.from, c.to, c.why]),
      [[NULL, WRITE, "grant"], [WRITE, READ, "invalidate"]]);
  });

test("the dirtied marker clears when the transaction commits", async () => {
  const h = harness();
  const w = start(h.lc, [G], WRITE);
  await h.settle();
  h.grant(2);
  await h.settle();
  h.lc.markDirtied(w.handle!.held[0]!, 4);
  h.lc.unlock(w.handle!);
  h.lc.transCommitted(4);
  const inv = h.invalidate(G, WRITE, NULL, 1);
  await h.settle();
  assert.deepEqual(h.hooks, [{ range: G, mode: NULL, dirtied: false }]);
  assert.equal(inv.reply, NULL);
  assert.equal(h.lc.lockCount, 0, "an unused NULL lock is freed");
  assert.equal(h.counters.get("lock_invalidate_sync"), 0);
});

test("an invalidation waits for the grants the server sent before it", async () => {
  const h = harness();
  const w = start(h.lc, [G], WRITE);
  await h.settle();
  // The server granted (grant 1) then invalidated; the invalidation is processed first.
  const inv = h.invalidate(G, WRITE, NULL, 1);
  await h.settle();
  assert.equal(inv.reply, undefined, "waits for grant 1");
  assert.equal(h.counters.get("lock_invalidate_wait_grant"), 1);
  h.grant(3);
  await h.settle();
  assert.ok(w.handle !== undefined, "the grant serves its waiter first");
  h.lc.unlock(w.handle);
  await h.settle();
  assert.equal(inv.reply, NULL);
  assert.deepEqual(h.hooks.map((c) => c.mode), [NULL]);
});

test("stale, duplicate and unknown invalidations are answered without effect", async () => {
  const h = harness();
  const r = start(h.lc, [G], READ);
  await h.settle();
  h.grant();
  await h.settle();
  h.lc.unlock(r.handle!);
  const dup = h.invalidate(G, WRITE, READ, 1); // already READ
  const absent = h.invalidate(H, READ, NULL, 1);
  const old = h.invalidate(G, READ, NULL, 5); // waits for grants that never come...
  await h.settle();
  assert.equal(dup.reply, READ);
  assert.equal(absent.reply, NULL);
  assert.ok(old.reply === undefined);
  h.term.now = 2;
  h.lc.serverChanged(2); // ... because its server is gone
  await h.settle();
  assert.equal(old.reply, READ, "answered (the answer is dropped) without invalidating");
  assert.equal(h.hooks.length, 0);
  assert.equal(h.counters.get("lock_invalidate_absent"), 1);
  assert.equal(h.counters.get("lock_invalidate_stale"), 2);
  const partial = h.invalidate({ start: G.start, end: H.end }, READ, NULL, 0);
  await h.settle();
  assert.ok(isFsError(partial.error, "EINVAL"), "a range overlapping ours is a protocol error");
});

test("recovery reports non-NULL locks in key-ordered batches, conservatively", async () => {
  const h = harness({ idle: 100 });
  const n = LOCK_RECOVER_MAX_ENTRIES + 10;
  const ranges = Array.from({ length: n }, (_, i) => inodeGroupRange(BigInt(i) * 1024n));
  const boxes = ranges.map((r, i) => start(h.lc, [r], i % 2 ? READ : WRITE));
  await h.settle();
  while (h.requests.length > 0) h.grant(h.requests.length + 100);
  await h.settle();
  for (const b of boxes) h.lc.unlock(b.handle!);
  // One lock is being lowered to NULL when the new server asks: it is reported as held.
  const release = h.holdHook();
  h.invalidate(ranges[0]!, WRITE, NULL, n);
  await h.settle();
  h.term.now = 2;
  const first = decodeLockRecoverReply(h.lc.handleRecover(encodeLockRecoverRequest(MIN_KEY)));
  assert.equal(first.entries.length, LOCK_RECOVER_MAX_ENTRIES);
  assert.ok(first.more);
  assert.deepEqual([first.entries[0]!.mode, first.entries[1]!.mode], [WRITE, READ]);
  assert.ok(rangesEqual(first.entries[0]!.range, ranges[0]!));
  const cursor = ranges[LOCK_RECOVER_MAX_ENTRIES]!.start;
  const second = decodeLockRecoverReply(h.lc.handleRecover(encodeLockRecoverRequest(cursor)));
  assert.equal(second.entries.length, 10);
  assert.ok(!second.more);
  release();
  await h.settle();
  const after = decodeLockRecoverReply(h.lc.handleRecover(encodeLockRecoverRequest(MIN_KEY)));
  assert.ok(!rangesEqual(after.entries[0]!.range, ranges[0]!), "NULL locks are not reported");
  assert.equal(h.counters.get("lock_recover_request"), 3);
});

test("a waiter during an invalidation asks once it is done", async () => {
  const h = harness();
  const r = start(h.lc, [G], READ);
  await h.settle();
  h.grant();
  await h.settle();
  h.lc.unlock(r.handle!);
  const release = h.holdHook();
  const inv = h.invalidate(G, READ, NULL, 1);
  await h.settle();
  const w = start(h.lc, [G], READ);
  await h.settle();
  assert.ok(waiting(w), "READ is being taken away: blocked");
  assert.equal(h.requests.length, 0, "decided once the invalidation is done");
  release();
  await h.settle();
  assert.equal(inv.reply, NULL);
  assert.deepEqual(h.requests[0]!.req, { range: G, oldMode: NULL, newMode: READ });
});

test("a new server's grant arriving while an old invalidation writes out waits for it",
  async () => {
    const h = harness();
    const r = start(h.lc, [G], READ);
    await h.settle();
    h.grant();
    await h.settle();
    const gen1 = r.handle!.held[0]!.refreshGen;
    h.lc.unlock(r.handle!);
    const w = start(h.lc, [G], WRITE);
    await h.settle();
    assert.deepEqual(h.requests[0]!.req, { range: G, oldMode: READ, newMode: WRITE });
    // The old server (term 1) invalidates; the write-out is slow; a new server takes over,
    // gets the resent request and grants it while the old invalidation is still running.
    const release = h.holdHook();
    h.invalidate(G, READ, NULL, 1);
    await h.settle();
    h.term.now = 2;
    h.lc.serverChanged(2);
    h.grant(20);
    await h.settle();
    assert.ok(waiting(w), "the grant is held back");
    assert.equal(h.lc.grantedModeAt(G.start), READ);
    release();
    await h.settle();
    assert.ok(w.handle !== undefined);
    assert.equal(h.lc.grantedModeAt(G.start), WRITE);
    assert.equal(w.handle.held[0]!.writeSeq, 20);
    assert.ok(w.handle.held[0]!.refreshGen > gen1, "granted out of NULL: refresh");
    assert.deepEqual(h.changes.map((c) => [c.from, c.to]),
      [[NULL, READ], [READ, NULL], [NULL, WRITE]]);
  });

test("idle locks past lock_idle_count are written out, dropped and released", async () => {
  const h = harness({ idle: 32 });
  const ranges = Array.from({ length: 40 }, (_, i) => inodeGroupRange(BigInt(i) * 1024n));
  const boxes = ranges.map((r) => start(h.lc, [r], WRITE));
  await h.settle();
  while (h.requests.length > 0) h.grant(1);
  await h.settle();
  for (const b of boxes) {
    h.lc.markDirtied(b.handle!.held[0]!, 9);
    h.lc.unlock(b.handle!); // least recently used first
  }
  await h.settle();
  assert.equal(h.hooks.length, 8, "the 8 least recently used");
  assert.ok(h.hooks.every((c) => c.mode === NULL && c.dirtied));
  assert.ok(rangesEqual(h.hooks[0]!.range, ranges[0]!));
  assert.equal(h.requests.length, 8);
  assert.ok(h.requests.every((c) => c.req.newMode === NULL));
  // A user of a lock being shed waits for the release, then asks again.
  const again = start(h.lc, [ranges[0]!], READ);
  await h.settle();
  assert.ok(waiting(again));
  while (h.requests.length > 0) h.grant();
  await h.settle();
  assert.deepEqual(h.requests[0]!.req, { range: ranges[0]!, oldMode: NULL, newMode: READ });
  h.grant();
  await h.settle();
  h.lc.unlock(again.handle!);
  await h.settle();
  assert.equal(h.lc.idleLocks, 32);
  h.lc.purgeIdle();
  await h.settle();
  while (h.requests.length > 0) {
    h.grant();
    await h.settle();
  }
  assert.equal(h.lc.lockCount, 0);
  assert.equal(h.counters.get("lock_shrink_attempted"), 9 + 32);
});

test("multi-range locks are taken in key order; failures release what was taken", async () => {
  const h = harness();
  const both = start(h.lc, [H, renameRange(), G], WRITE);
  await h.settle();
  assert.equal(h.requests.length, 1);
  assert.ok(rangesEqual(h.grant(1).range, G));
  await h.settle();
  assert.ok(rangesEqual(h.grant(2).range, H));
  await h.settle();
  assert.ok(rangesEqual(h.grant(3).range, renameRange()));
  await h.settle();
  assert.deepEqual(both.handle!.held.map((x) => x.writeSeq), [1, 2, 3]);
  assert.equal(both.handle!.covering(H.end)?.writeSeq, 2);
  h.lc.unlock(both.handle!);
  assert.throws(() => h.lc.tryLock([G, { start: G.start, end: G.end }], READ), /overlap/);
  const t = h.lc.tryLock([G, H], READ);
  assert.equal(t.held.length, 2);
  assert.throws(() => h.lc.tryLock([inodeGroupRange(99_999n)], READ),
    (e: unknown) => isFsError(e, "EAGAIN"));
  // A failing request (e.g. the session was lost) fails the waiters and releases the rest.
  const fail = start(h.lc, [inodeGroupRange(50_000n), inodeGroupRange(60_000n)], READ);
  await h.settle();
  h.grant();
  await h.settle();
  h.requests.shift()!.reject(new FsError("ENOLINK", "session lost"));
  await h.settle();
  assert.ok(isFsError(fail.error, "ENOLINK"));
  assert.equal(h.lc.grantedModeAt(inodeGroupRange(50_000n).start), READ, "still cached");
});

test("a failing hook answers with its error and keeps the lock; the retry succeeds",
  async () => {
    const h = harness();
    const w = start(h.lc, [G], WRITE);
    await h.settle();
    h.grant(1);
    await h.settle();
    h.lc.unlock(w.handle!);
    h.failHook(new FsError("EIO", "commit failed"));
    const first = h.invalidate(G, WRITE, NULL, 1);
    await h.settle();
    assert.ok(isFsError(first.error, "EIO"));
    assert.equal(h.lc.grantedModeAt(G.start), WRITE);
    const second = h.invalidate(G, WRITE, NULL, 1);
    await h.settle();
    assert.equal(second.reply, NULL);
    assert.equal(h.counters.get("lock_invalidate_error"), 1);
  });

test("client_locks dump and shutdown", async () => {
  const h = harness();
  const w = start(h.lc, [G], WRITE);
  await h.settle();
  h.grant(1);
  await h.settle();
  const r = start(h.lc, [G], WRITE_ONLY);
  await h.settle();
  assert.deepEqual(h.lc.dumpLocks(), ["start 16.1024.0.0.0.0 end " +
    "16.2047.255.18446744073709551615.18446744073709551615.255 refresh_gen 1 mode write " +
    "waiters: rd 0 wr 0 wo 1 users: rd 0 wr 1 wo 0"]);
  h.lc.shutdown();
  await h.settle();
  assert.ok(isFsError(r.error, "ECANCELED"));
  await assert.rejects(h.lc.lock([H], READ), (e: unknown) => isFsError(e, "ECANCELED"));
  h.lc.unlock(w.handle!);
});
