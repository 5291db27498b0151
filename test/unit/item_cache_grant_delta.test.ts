/*
 * Goal: two item cache rules that the cluster simulation only exercises by chance hold
 * exactly. (1) Grants: ItemCache.grantProblem reports any dirty item in a lock's range and
 * any cached range unless both modes read, the lock client asks it at every grant with the
 * right `cachedAllowed` (NULL->READ, READ->WRITE, NULL->WRITE_ONLY, shed to NULL), and
 * assertGrantConsistent turns a problem into an assertion. (2) Deltas: dirty deltas add up
 * per key; one added while its entry is in the commit in flight is kept apart, so the commit
 * carries only what it took and the rest stays dirty for the next (also after a failed
 * commit); committed deltas leave the cache; a read under a lock never serves a dirty delta;
 * addDirtyDelta adds a mount's dirty part to the forest's value.
 *
 * Method: ItemCache driven directly; a LockClient with a scripted transport (answers every
 * request with its grant at once) in a SimWorld, its grantProblem hook recording calls.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type Item, ITEM_DELTA } from "../../src/core/btree.js";
import { decodeDelta, encodeDelta } from "../../src/core/btree_merge.js";
import { addDirtyDelta, ItemCache } from "../../src/core/item_cache.js";
import { makeKey, Zone } from "../../src/core/key.js";
import { assertGrantConsistent, LockClient } from "../../src/core/lock.js";
import {
  decodeLockRequest, encodeLockGrant, LockMode,
} from "../../src/core/lock_msg.js";
import { inodeGroupRange, type LockRange, totlZoneRange } from "../../src/core/lock_names.js";
import { SimWorld } from "../../src/sim/env.js";
import { Counters } from "../../src/util/counters.js";

const { NULL, READ, WRITE, WRITE_ONLY } = LockMode;
const G = inodeGroupRange(1024n);
const fsKey = (n: number): Buffer => makeKey(Zone.FS, 1024n, 8, BigInt(n));
const totl = (n: number): Buffer => makeKey(Zone.XATTR_TOTL, 1n, 0, 2n, BigInt(n));
const delta = (n: number, total: number, count: number, seq = 5): Item =>
  ({ key: totl(n), val: encodeDelta(BigInt(total), BigInt(count)), seq, flags: ITEM_DELTA });
const show = (v: Buffer | undefined | null): string => {
  if (v === undefined || v === null) return "none";
  const d = decodeDelta(v);
  return `${d.total}/${d.count}`;
};

test("grantProblem: dirty items never, cached ranges only when both modes read", () => {
  const c = new ItemCache(new Counters());
  assert.equal(c.grantProblem(G.start, G.end, false), null);
  assert.ok(c.fill(G.start, fsKey(5), [{ key: fsKey(3), val: Buffer.from("x"), seq: 1, flags: 0 }], c.gen));
  assert.match(c.grantProblem(G.start, G.end, false) ?? "", /cached range/);
  assert.equal(c.grantProblem(G.start, G.end, true), null, "READ -> WRITE keeps its cache");
  c.put({ key: fsKey(9), val: Buffer.from("d"), seq: 2, flags: 0 });
  assert.match(c.grantProblem(G.start, G.end, true) ?? "", /dirty item/);
  c.beginCommit();
  assert.match(c.grantProblem(G.start, G.end, true) ?? "", /dirty item/, "in flight is dirty");
  c.endCommit(true);
  c.invalidate(G.start, G.end, false);
  assert.equal(c.grantProblem(G.start, G.end, false), null);
  // outside the range: none of its business
  const other = inodeGroupRange(4096n);
  c.put({ key: makeKey(Zone.FS, 4096n, 8, 1n), val: Buffer.from("o"), seq: 3, flags: 0 });
  assert.equal(c.grantProblem(G.start, G.end, false), null);
  assert.ok(c.grantProblem(other.start, other.end, false) !== null);
  c.checkInvariants();
});

test("assertGrantConsistent asserts a reported problem", () => {
  assert.doesNotThrow(() => { assertGrantConsistent(() => null, G, NULL, READ); });
  assert.doesNotThrow(() => { assertGrantConsistent(undefined, G, NULL, READ); });
  assert.throws(() => { assertGrantConsistent(() => "cached range", G, NULL, READ); },
    /over an inconsistent item cache: cached range/);
});

test("the lock client asks at every grant whether cached items may stay", async () => {
  const world = new SimWorld({ seed: 5 });
  const node = world.addNode("mount");
  const calls: { range: LockRange; cachedAllowed: boolean }[] = [];
  const lc = new LockClient({ env: node.env, counters: new Counters(),
    transport: {
      request: (p) => {
        const r = decodeLockRequest(p);
        const write = r.newMode === WRITE || r.newMode === WRITE_ONLY;
        return Promise.resolve(encodeLockGrant({ mode: r.newMode, writeSeq: write ? 9 : 0 }));
      },
      serverTerm: () => 1,
    },
    onInvalidate: () => Promise.resolve(),
    grantProblem: (range, cachedAllowed) => {
      calls.push({ range, cachedAllowed });
      return null;
    } });
  lc.serverChanged(1);
  const run = async <T>(p: Promise<T>): Promise<T> => world.settle(p);
  lc.unlock(await run(lc.lock([G], READ)));
  lc.unlock(await run(lc.lock([G], WRITE)));
  lc.unlock(await run(lc.lock([totlZoneRange()], WRITE_ONLY)));
  lc.purgeIdle(); // sheds both: grants to NULL
  await world.runFor(10);
  assert.deepEqual(calls.map((c) => [c.range.start.equals(G.start) ? "G" : "totl", c.cachedAllowed]),
    [["G", false], ["G", true], ["totl", false], ["G", false], ["totl", false]]);
  lc.shutdown();
});

test("dirty deltas add up; one added during the commit in flight stays for the next", () => {
  const c = new ItemCache(new Counters());
  c.put(delta(1, 5, 1));
  c.put(delta(1, 7, 1, 6));
  assert.equal(show(c.getDirty(totl(1))?.val), "12/2");
  const taken = c.beginCommit();
  assert.deepEqual(taken.map((it) => show(it.val)), ["12/2"]);
  c.put(delta(1, -3, -1, 7)); // in flight: kept apart
  assert.equal(show(c.getDirty(totl(1))?.val), "9/1", "a reader sees both parts");
  assert.equal(c.pendingDirtyCount, 1);
  c.checkInvariants();
  c.endCommit(true);
  assert.equal(show(c.getDirty(totl(1))?.val), "-3/-1", "the committed part is gone");
  c.checkInvariants();
  const next = c.beginCommit();
  assert.deepEqual(next.map((it) => show(it.val)), ["-3/-1"]);
  c.put(delta(1, 4, 1, 8));
  c.endCommit(false); // failed: both parts stay dirty, together
  assert.equal(show(c.getDirty(totl(1))?.val), "1/0");
  c.checkInvariants();
  assert.deepEqual(c.beginCommit().map((it) => show(it.val)), ["1/0"]);
  c.endCommit(true);
  assert.equal(c.getDirty(totl(1)), undefined, "a committed delta leaves the cache");
  assert.equal(c.entryCount, 0);
  c.checkInvariants();
});

test("a locked read never serves a dirty delta; a delta never lands on a plain version", () => {
  const c = new ItemCache(new Counters());
  const z = totlZoneRange();
  c.put(delta(2, 5, 1));
  assert.ok(c.fill(z.start, z.end, [], c.gen));
  assert.throws(() => c.get(totl(2)), /dirty delta/);
  assert.throws(() => c.next(z.start, z.end), /dirty delta/);
  const d = new ItemCache(new Counters());
  d.put({ key: totl(3), val: Buffer.from("plain"), seq: 1, flags: 0 });
  assert.throws(() => { d.put(delta(3, 1, 1)); }, /delta over a dirty non-delta/);
});

test("addDirtyDelta: the forest's value plus this mount's dirty part", () => {
  const d = delta(4, 5, 1, 20);
  assert.equal(show(addDirtyDelta(null, d)?.val), "5/1");
  assert.equal(show(addDirtyDelta(delta(4, 10, 2, 10), d)?.val), "15/3");
  assert.equal(addDirtyDelta(delta(4, -5, -1, 10), d), null, "sums to zero: absent");
  const plain: Item = { key: totl(4), val: Buffer.from("p"), seq: 10, flags: 0 };
  assert.equal(show(addDirtyDelta(plain, d)?.val), "5/1", "newer than a plain version");
});
