/*
 * Goal: named triggers (src/util/triggers.ts) behave as upstream's debugfs atomics: armed by
 * name, fire exactly once, show "%lld\n", take integer writes (kstrtoll, 32-bit), refuse
 * unknown names (ENOENT for users, an assertion for code) and stay bounded.
 *
 * Method: direct calls on a registry.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { AssertionError } from "../../src/util/assert.js";
import { isFsError } from "../../src/util/errno.js";
import { Triggers, TRIGGERS_MAX, UPSTREAM_TRIGGER_NAMES } from "../../src/util/triggers.js";

test("upstream's names by default; arm fires once", () => {
  const t = new Triggers();
  assert.deepEqual(t.names(), [...UPSTREAM_TRIGGER_NAMES]);
  assert.equal(t.fire("srch_force_log_rotate"), false);
  t.arm("srch_force_log_rotate");
  assert.equal(t.show("srch_force_log_rotate"), "1\n");
  assert.equal(t.fire("srch_force_log_rotate"), true);
  assert.equal(t.fire("srch_force_log_rotate"), false);
  assert.equal(t.show("srch_force_log_rotate"), "0\n");
  assert.equal(t.firedCount("srch_force_log_rotate"), 1);
  assert.equal(t.firedCount("block_remove_stale"), 0);
});

test("writes: integers as debugfs takes them; junk is EINVAL", () => {
  const t = new Triggers(["x"]);
  t.store("x", "1\n");
  assert.equal(t.get("x"), 1);
  t.store("x", "0\n");
  assert.equal(t.fire("x"), false);
  t.store("x", "-3");
  assert.equal(t.show("x"), "-3\n");
  assert.equal(t.fire("x"), true, "any nonzero value fires");
  t.store("x", "0x100000001");
  assert.equal(t.get("x"), 1, "truncated to 32 bits like atomic_set");
  for (const bad of ["", "yes", "1 ", "1\n\n"]) {
    assert.throws(() => t.store("x", bad), (e: unknown) => isFsError(e, "EINVAL"), bad);
  }
});

test("unknown names: ENOENT for users, an assertion for code", () => {
  const t = new Triggers(["x"]);
  assert.throws(() => t.arm("y"), (e: unknown) => isFsError(e, "ENOENT"));
  assert.throws(() => t.show("y"), (e: unknown) => isFsError(e, "ENOENT"));
  assert.throws(() => t.fire("y"), AssertionError);
  assert.equal(t.has("y"), false);
  t.register("y");
  t.register("y");
  assert.deepEqual(t.names(), ["x", "y"]);
  assert.throws(() => t.register("a/b"), AssertionError);
  assert.throws(() => t.register(""), AssertionError);
});

test("bounded", () => {
  const t = new Triggers([]);
  for (let i = 0; i < TRIGGERS_MAX; i++) t.register(`t${i}`);
  assert.throws(() => t.register("one_more"), AssertionError);
});
