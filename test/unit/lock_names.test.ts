/*
 * Goal: lock names cover exactly what the reference says (inode groups of 1024 inodes with
 * every FS item type, one rename key, index groups of 1024 seqs per type, whole zones for
 * orphan/totl/indx/quota), distinct names never overlap, and the RangeTable keeps disjoint
 * ranges sorted and finds them.
 *
 * Method: check group boundaries and the items each name must (and must not) contain with the
 * per-item key constructors of key.ts; a fast-check model test of RangeTable against a
 * sorted array (insert disjoint ranges, delete, find by key, overlap, iterate from a cursor);
 * overlapping inserts assert.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  compareKeys, dataExtentKey, dataSeqKey, direntKey, indxKey, inodeKey, InodeIndexType,
  linkBackrefKey, makeKey, metaSeqKey, orphanKey, QuotaType, renameLockKey, symlinkKey,
  totlKey, U64_MAX, xattrKey, Zone,
} from "../../src/core/key.js";
import {
  compareRanges, formatRange, indxZoneRange, inodeGroupFirst, inodeGroupRange,
  inodeIndexRange, LOCK_INODE_GROUP_NR, LOCK_SEQ_GROUP_NR, type LockRange, orphanZoneRange,
  quotaZoneRange, RangeTable, rangeContainsKey, rangeId, rangeProblem, rangesEqual,
  rangesOverlap, renameRange, totlZoneRange, zoneRange,
} from "../../src/core/lock_names.js";
import { makeAssertProperty } from "../helpers/property.js";

const assertProperty = makeAssertProperty(Number(process.env.FC_SEED ?? 4242));

test("inode groups: 1024 inodes, every FS item type of them, nothing else", () => {
  assert.equal(LOCK_INODE_GROUP_NR, 1024n);
  const g = inodeGroupRange(5000n);
  assert.equal(inodeGroupFirst(5000n), 4096n);
  assert.ok(rangesEqual(g, inodeGroupRange(4096n)) && rangesEqual(g, inodeGroupRange(5119n)));
  assert.equal(formatRange(g),
    "start 16.4096.0.0.0.0 end 16.5119.255.18446744073709551615.18446744073709551615.255");
  for (const k of [inodeKey(4096n), inodeKey(5119n), xattrKey(5000n, U64_MAX, 3n, 255),
    direntKey(5119n, U64_MAX, U64_MAX), linkBackrefKey(4096n, 1n, 2n), symlinkKey(5000n, 0n),
    dataExtentKey(5119n, U64_MAX, U64_MAX)]) {
    assert.ok(rangeContainsKey(g, k));
  }
  for (const k of [inodeKey(4095n), inodeKey(5120n), metaSeqKey(4096n, 4096n),
    orphanKey(4096n)]) {
    assert.ok(!rangeContainsKey(g, k));
  }
  assert.ok(!rangesOverlap(g, inodeGroupRange(5120n)));
  assert.ok(!rangesOverlap(g, inodeGroupRange(4095n)));
  const last = inodeGroupRange(U64_MAX);
  assert.ok(rangeContainsKey(last, inodeKey(U64_MAX)));
  assert.equal(inodeGroupFirst(0n), 0n);
});

test("the rename lock is one key in the LOCK zone", () => {
  const r = renameRange();
  assert.ok(r.start.equals(renameLockKey()) && r.end.equals(renameLockKey()));
  assert.equal(rangeProblem(r), undefined);
  assert.ok(!rangesOverlap(r, inodeGroupRange(U64_MAX)));
});

test("inode index groups: 1024 seqs per index type, all inodes", () => {
  assert.equal(LOCK_SEQ_GROUP_NR, 1024n);
  const m = inodeIndexRange(InodeIndexType.META_SEQ, 2047n);
  assert.ok(rangeContainsKey(m, metaSeqKey(1024n, 0n)));
  assert.ok(rangeContainsKey(m, metaSeqKey(2047n, U64_MAX)));
  assert.ok(!rangeContainsKey(m, metaSeqKey(2048n, 0n)));
  assert.ok(!rangeContainsKey(m, metaSeqKey(1023n, U64_MAX)));
  assert.ok(!rangeContainsKey(m, dataSeqKey(1024n, 0n)));
  const d = inodeIndexRange(InodeIndexType.DATA_SEQ, 1024n);
  assert.ok(rangeContainsKey(d, dataSeqKey(1500n, 7n)) && !rangesOverlap(m, d));
  assert.throws(() => inodeIndexRange(5, 0n), /index type/);
});

test("zone locks cover their whole zone and only it", () => {
  const cases: [LockRange, Buffer[], number][] = [
    [orphanZoneRange(), [orphanKey(0n), orphanKey(U64_MAX)], Zone.ORPHAN],
    [totlZoneRange(), [totlKey(0n, 0n, 0n), totlKey(U64_MAX, U64_MAX, U64_MAX)],
      Zone.XATTR_TOTL],
    [indxZoneRange(), [indxKey(0, 0n, 0n, 0n), indxKey(255, U64_MAX, U64_MAX, U64_MAX)],
      Zone.XATTR_INDX],
    [quotaZoneRange(), [makeKey(Zone.QUOTA, 0n, QuotaType.RULE, 5n, 1n)], Zone.QUOTA],
  ];
  const all = cases.map((c) => c[0]).concat([inodeGroupRange(0n), renameRange(),
    inodeIndexRange(InodeIndexType.DATA_SEQ, U64_MAX)]);
  for (const [r, keys, zone] of cases) {
    assert.ok(rangesEqual(r, zoneRange(zone)));
    for (const k of keys) assert.ok(rangeContainsKey(r, k));
    for (const other of all) assert.ok(other === r || !rangesOverlap(r, other));
  }
});

test("range validity and ordering helpers", () => {
  const g = inodeGroupRange(0n);
  assert.equal(rangeProblem({ start: g.end, end: g.start }), "start after end");
  assert.equal(rangeProblem({ start: g.start, end: renameLockKey() }), "range spans zones");
  assert.equal(rangeProblem({ start: g.start.subarray(1), end: g.end }), "key size");
  const sorted = [renameRange(), inodeGroupRange(2048n), totlZoneRange(), inodeGroupRange(0n)]
    .sort(compareRanges).map(formatRange);
  assert.deepEqual(sorted, [totlZoneRange(), inodeGroupRange(0n), inodeGroupRange(2048n),
    renameRange()].map(formatRange));
  assert.equal(rangeId(g), g.start.toString("hex"));
});

test("RangeTable refuses overlapping inserts", () => {
  const t = new RangeTable<number>();
  t.insert(inodeGroupRange(1024n), 1);
  assert.throws(() => t.insert(inodeGroupRange(1024n), 2), /overlaps/);
  const partial = { start: inodeKey(2000n), end: inodeKey(3000n) };
  assert.throws(() => t.insert(partial, 3), /overlaps/);
  assert.ok(t.overlap(partial) !== undefined);
  assert.equal(t.get(partial), undefined);
  assert.equal(t.size, 1);
});

/** A model: ranges of 64 slots each made of [lo, hi] small integers mapped to keys. */
function slotRange(lo: number, hi: number): LockRange {
  return { start: makeKey(Zone.FS, BigInt(lo), 0), end: makeKey(Zone.FS, BigInt(hi), 0) };
}

test("RangeTable matches a sorted-array model", async () => {
  type Op = { kind: "insert" | "delete"; lo: number; len: number } | { kind: "find"; at: number };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ kind: fc.constantFrom("insert" as const, "delete" as const),
      lo: fc.nat(200), len: fc.nat(6) }),
    fc.record({ kind: fc.constant("find" as const), at: fc.nat(210) }));
  await assertProperty("range table", 11, fc.array(op, { maxLength: 200 }), (ops) => {
    const t = new RangeTable<number>();
    let model: { lo: number; hi: number }[] = [];
    for (const o of ops) {
      if (o.kind === "find") {
        const hit = model.find((m) => m.lo <= o.at && o.at <= m.hi);
        const got = t.find(makeKey(Zone.FS, BigInt(o.at), 0));
        assert.equal(got?.value, hit?.lo);
        continue;
      }
      const r = slotRange(o.lo, o.lo + o.len);
      const clash = model.some((m) => m.lo <= o.lo + o.len && o.lo <= m.hi);
      assert.equal(t.overlap(r) !== undefined, clash);
      if (o.kind === "insert" && !clash) {
        t.insert(r, o.lo);
        model.push({ lo: o.lo, hi: o.lo + o.len });
      } else if (o.kind === "delete") {
        const exact = model.some((m) => m.lo === o.lo && m.hi === o.lo + o.len);
        assert.equal(t.delete(r), exact);
        model = model.filter((m) => !(m.lo === o.lo && m.hi === o.lo + o.len));
      }
    }
    model.sort((a, b) => a.lo - b.lo);
    assert.deepEqual([...t.values()], model.map((m) => m.lo));
    const cursor = 100;
    assert.deepEqual([...t.values(makeKey(Zone.FS, BigInt(cursor), 0))],
      model.filter((m) => m.lo >= cursor).map((m) => m.lo));
    for (const m of model) assert.equal(t.get(slotRange(m.lo, m.hi)), m.lo);
    assert.ok([...t.values()].every((v, i, a) => i === 0 || a[i - 1]! < v));
    assert.equal(compareKeys(slotRange(1, 1).start, slotRange(2, 2).start), -1);
    return Promise.resolve();
  }, { numRuns: 300 });
});
