/*
 * Goal: ItemCache.scan (one walk of the cached entries, used by directory listings) hands out
 * exactly the values a next()-by-next() walk finds, in key order, skipping tombstones, stops
 * when its callback says so, and reports the first unknown key where a complete range ends;
 * and entries keep no key Buffer of their own (keys are rebuilt from their sort strings).
 *
 * Method: random complete ranges, clean items inside them, dirty puts and deletions anywhere;
 * every scan compared with the equivalent next() walk.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ITEM_DELETION } from "../../src/core/btree.js";
import { ItemCache } from "../../src/core/item_cache.js";
import { keyInc, makeKey, Zone } from "../../src/core/key.js";
import { SimRandom } from "../../src/sim/random.js";
import { Counters } from "../../src/util/counters.js";

const key = (n: number): Buffer => makeKey(Zone.FS, 1000n, 16, BigInt(n));
const val = (n: number, v: number): Buffer => Buffer.from(`${n}:${v}`);

test("scan equals a next() walk, stops on request, reports misses", () => {
  const rng = new SimRandom(3);
  for (let round = 0; round < 50; round++) {
    const c = new ItemCache(new Counters());
    // complete ranges [a, b] with some clean items
    for (let r = 0; r < 4; r++) {
      const a = rng.int(200);
      const b = a + rng.int(60);
      const items = [];
      for (let n = a; n <= b; n++) {
        if (rng.int(3) === 0) items.push({ key: key(n), val: val(n, 0), seq: 1, flags: 0 });
      }
      c.fill(key(a), key(b), items, c.gen);
    }
    for (let i = 0; i < 40; i++) {
      const n = rng.int(260);
      const del = rng.int(4) === 0;
      c.put({ key: key(n), val: del ? Buffer.alloc(0) : val(n, i + 1), seq: 2,
        flags: del ? ITEM_DELETION : 0 });
    }
    c.checkInvariants();
    const from = rng.int(200);
    const to = from + rng.int(100);
    // the reference: next() until none or a miss
    const want: string[] = [];
    let wantMiss: string | null = null;
    for (let p = key(from); ;) {
      const s = c.next(p, key(to));
      if (s.kind === "none") break;
      if (s.kind === "miss") {
        wantMiss = s.at.toString("hex");
        break;
      }
      want.push(s.item.val.toString());
      p = keyInc(s.item.key);
    }
    const got: string[] = [];
    const r = c.scan(key(from), key(to), (v) => {
      got.push(v.toString());
      return true;
    });
    assert.deepEqual(got, want, `round ${round}`);
    assert.equal(r.kind === "miss" ? r.at.toString("hex") : null, wantMiss, `round ${round}`);
    if (want.length > 1) {
      const some: string[] = [];
      const r2 = c.scan(key(from), key(to), (v) => {
        some.push(v.toString());
        return some.length < 2;
      });
      assert.equal(r2.kind, "done");
      assert.deepEqual(some, want.slice(0, 2));
    }
  }
});

test("beginCommit hands out the entries' keys and values as they are", () => {
  const c = new ItemCache(new Counters());
  const v = Buffer.from("value");
  c.put({ key: key(5), val: v, seq: 3, flags: 0 });
  const [it] = c.beginCommit();
  assert.ok(it !== undefined);
  assert.deepEqual(it.key, key(5));
  assert.equal(it.val, v, "the value buffer itself: nothing changes it in place");
  c.endCommit(true);
  c.checkInvariants();
});
