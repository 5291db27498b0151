/*
 * Goal: the discrete-event scheduler runs events in (time, insertion) order, cancels exactly,
 * keeps its bounds, drains every microtask an event causes before taking the next event
 * (from any calling context), reports failures of callbacks and tasks, and makes runs of
 * async code reproducible: same seed, same trace and digest; different seed, different.
 *
 * Method: small hand-built schedules with known answers; a randomized model check of the
 * heap against a sorted list under interleaved inserts, cancels and pops; deep promise
 * chains started inside events; and a seeded async workload (tasks that sleep, "do I/O"
 * through resolved promises and log) run twice per seed with its traces compared.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Scheduler, drainMicrotasks, msToUs, type EventHandle,
} from "../../src/sim/scheduler.js";
import { SimRandom } from "../../src/sim/random.js";
import { AssertionError } from "../../src/util/assert.js";

test("events run in time order, ties in insertion order", async () => {
  const s = new Scheduler();
  const order: string[] = [];
  s.after(5, () => order.push("c5"));
  s.after(1, () => order.push("a1"));
  s.after(5, () => order.push("d5"));
  s.after(0, () => order.push("z0"));
  s.at(1, () => order.push("b1"));
  const r = await s.run();
  assert.deepEqual(order, ["z0", "a1", "b1", "c5", "d5"]);
  assert.equal(r.stop, "idle");
  assert.equal(r.events, 5);
  assert.equal(s.nowMs(), 5);
});

test("time has microsecond resolution and never goes back", async () => {
  const s = new Scheduler();
  const seen: number[] = [];
  s.after(0.0004, () => seen.push(s.nowUs)); // rounds to 0 us
  s.after(0.0015, () => seen.push(s.nowUs)); // rounds to 2 us
  s.after(1.25, () => {
    seen.push(s.nowUs);
    assert.throws(() => s.atUs(s.nowUs - 1, () => undefined), AssertionError);
  });
  await s.run();
  assert.deepEqual(seen, [0, 2, 1250]);
  assert.equal(msToUs(0.3), 300);
  assert.throws(() => msToUs(-1), AssertionError);
  assert.throws(() => msToUs(Number.NaN), AssertionError);
});

test("heap order matches a sorted model under random insert, cancel and pop", async () => {
  const rng = new SimRandom(99);
  const s = new Scheduler();
  const model: { timeUs: number; id: number }[] = [];
  const handles: EventHandle[] = [];
  const ran: number[] = [];
  for (let round = 0; round < 3000; round++) {
    const op = rng.int(10);
    if (op < 6) {
      const h = s.atUs(s.nowUs + rng.int(50), () => ran.push(h.id));
      handles.push(h);
      model.push({ timeUs: h.timeUs, id: h.id });
    } else if (op < 8 && handles.length > 0) {
      const h = handles.splice(rng.int(handles.length), 1)[0]!;
      const wasPending = s.isPending(h);
      assert.equal(s.cancel(h), wasPending);
      assert.equal(s.cancel(h), false, "second cancel does nothing");
      const i = model.findIndex((m) => m.id === h.id);
      if (wasPending) model.splice(i, 1);
    } else if (model.length > 0) {
      model.sort((a, b) => a.timeUs - b.timeUs || a.id - b.id);
      const expected = model.shift()!;
      assert.equal(await s.step(), true);
      assert.equal(ran.at(-1), expected.id);
    }
    assert.equal(s.pending, model.length);
  }
});

test("the pending-event bound is asserted", () => {
  const s = new Scheduler({ maxPendingEvents: 3 });
  for (let i = 0; i < 3; i++) s.after(i, () => undefined);
  assert.throws(() => s.after(1, () => undefined), /more than 3 pending events/);
});

test("every microtask an event causes drains before the next event", async () => {
  const s = new Scheduler();
  let depth = 0;
  const chain = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      await null;
      depth++;
      if (i === n / 2) void (async () => { await Promise.resolve(); depth += 1000; })();
    }
  };
  const observed: number[] = [];
  s.after(1, () => { void chain(5000); });
  s.after(1, () => observed.push(depth)); // same instant, later in order
  s.after(2, () => observed.push(depth));
  await s.run();
  assert.deepEqual(observed, [6000, 6000]);
});

test("the drain holds when the run starts from timer, I/O-like and tick contexts", async () => {
  const contexts: [string, (fn: () => void) => void][] = [
    ["setImmediate", (fn) => setImmediate(fn)],
    ["setTimeout", (fn) => setTimeout(fn, 1)],
    ["nextTick", (fn) => process.nextTick(fn)],
  ];
  for (const [name, schedule] of contexts) {
    const seen = await new Promise<number>((resolve, reject) => {
      schedule(() => {
        const s = new Scheduler();
        let depth = 0;
        const chain = async (): Promise<void> => {
          for (let i = 0; i < 300; i++) { await null; depth++; }
        };
        s.after(0, () => { void chain(); });
        s.after(0, () => resolve(depth));
        s.run().catch(reject);
      });
    });
    assert.equal(seen, 300, name);
  }
  // The helper itself, called from synchronous code with a chain already queued.
  let n = 0;
  void (async () => { for (let i = 0; i < 1000; i++) { await null; n++; } })();
  await drainMicrotasks();
  assert.equal(n, 1000);
});

test("runUntil stops at a time, at a predicate, or at maxEvents", async () => {
  const s = new Scheduler();
  let count = 0;
  const tick = (): void => { count++; s.after(10, tick); };
  s.after(0, tick);
  let r = await s.runUntil(95);
  assert.equal(r.stop, "time");
  assert.equal(count, 10); // t = 0, 10, ..., 90
  assert.equal(s.nowMs(), 95);
  r = await s.runUntil(() => count >= 15);
  assert.equal(r.stop, "predicate");
  assert.equal(count, 15);
  r = await s.run({ maxEvents: 7 });
  assert.equal(r.stop, "max-events");
  assert.equal(r.events, 7);
  r = await s.runFor(100);
  assert.equal(r.stop, "time");
  assert.equal(s.nowMs(), 310); // 15 ticks by t=140, 7 more by t=210, then 100 ms
});

test("settle returns a promise's value, or reports a deadlock", async () => {
  const s = new Scheduler();
  const v = await s.settle(new Promise<number>((resolve) => s.after(30, () => resolve(7))));
  assert.equal(v, 7);
  assert.equal(s.nowMs(), 30);
  await assert.rejects(s.settle(new Promise<number>((_, reject) => s.after(1, () =>
    reject(new Error("boom"))))), /boom/);
  await assert.rejects(s.settle(new Promise<void>(() => undefined)), /still pending/);
});

test("a throwing callback or a rejected task fails the run", async () => {
  const s = new Scheduler();
  s.after(1, () => { throw new Error("callback bug"); });
  s.after(2, () => assert.fail("must not run after the failure"));
  await assert.rejects(s.run(), /callback bug/);
  assert.equal(s.nowMs(), 1);

  const t = new Scheduler();
  t.spawn("worker", async () => {
    await new Promise<void>((resolve) => t.after(5, resolve));
    throw new Error("task bug");
  });
  await assert.rejects(t.run(), /task worker failed: Error: task bug/);

  const u = new Scheduler();
  let absorbed = 0;
  u.spawn("tolerated", () => Promise.reject(new Error("x")), () => { absorbed++; return true; });
  assert.equal((await u.run()).stop, "idle");
  assert.equal(absorbed, 1);
});

test("run calls do not nest", async () => {
  const s = new Scheduler();
  let inner: Promise<unknown> | null = null;
  s.after(1, () => { inner = s.run(); });
  await s.run();
  await assert.rejects(inner!, /already running/);
});

/** A seeded async workload: tasks sleep random times, await "I/O", log what they see. */
async function workload(seed: number): Promise<{ trace: string[]; digest: string }> {
  const s = new Scheduler();
  const rng = new SimRandom(seed);
  const trace: string[] = [];
  const sleep = (ms: number): Promise<void> => new Promise((r) => s.after(ms, r));
  const io = async (v: number): Promise<number> => { await null; await null; return v * 2; };
  let shared = 0;
  for (let t = 0; t < 8; t++) {
    const r = rng.fork();
    s.spawn(`t${t}`, async () => {
      for (let i = 0; i < 50; i++) {
        await sleep(r.int(20));
        const before = shared;
        shared = await io(shared + r.int(3)) % 1000003;
        trace.push(`${s.nowUs} t${t} ${before}->${shared}`);
      }
    });
  }
  await s.run();
  return { trace, digest: s.digest() };
}

test("same seed, same trace and digest; different seed, different", async () => {
  const a = await workload(1);
  const b = await workload(1);
  const c = await workload(2);
  assert.equal(a.trace.length, 400);
  assert.deepEqual(a.trace, b.trace);
  assert.equal(a.digest, b.digest);
  assert.notDeepEqual(a.trace, c.trace);
  assert.notEqual(a.digest, c.digest);
});

test("counters count", async () => {
  const s = new Scheduler();
  const h = s.after(1, () => undefined);
  s.after(2, () => undefined);
  s.cancel(h);
  await s.run();
  assert.deepEqual(s.counters, { scheduled: 2, executed: 1, cancelled: 1, maxPending: 2,
    spawned: 0 });
});
