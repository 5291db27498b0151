/*
 * Goal: a simulated run is fully determined by its seed, and the replay command is real:
 * the same (scenario, seed) gives an identical trace and digest, a different seed a
 * different one; the "echo" scenario passes its own checkers; a failing scenario is
 * reported with the command that replays it; bin/sim-replay works end to end.
 *
 * Method: run the registered "echo" scenario in-process through runScenario() (shortened
 * durations keep the file fast), compare reports, register a deliberately failing scenario,
 * and spawn bin/sim-replay as a child process (with a bounded timeout) for the CLI checks.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { main, runScenario } from "../../src/sim/replay.js";
import { registerScenario } from "../../src/sim/scenarios.js";

const DURATION_MS = 12_000;
const BIN = fileURLToPath(new URL("../../../bin/sim-replay", import.meta.url));

test("same seed, identical trace and digest; different seed, different", async () => {
  const a = await runScenario("echo", 5, { durationMs: DURATION_MS });
  const b = await runScenario("echo", 5, { durationMs: DURATION_MS });
  const c = await runScenario("echo", 6, { durationMs: DURATION_MS });
  for (const r of [a, b, c]) assert.equal(r.ok, true, r.error?.stack);
  assert.ok(a.events > 10_000, `only ${a.events} events`);
  assert.equal(a.digest, b.digest);
  assert.deepEqual(a.trace, b.trace);
  assert.equal(a.events, b.events);
  assert.equal(a.virtualMs, b.virtualMs);
  assert.notEqual(a.digest, c.digest);
  assert.notDeepEqual(a.trace, c.trace);
});

test("the echo scenario exercises faults and its checkers pass on several seeds", async () => {
  for (const seed of [1n, 2n, 0xdeadbeefn]) {
    const r = await runScenario("echo", seed, { durationMs: DURATION_MS });
    assert.equal(r.ok, true, `seed ${seed}: ${r.error?.stack}`);
    const summary = r.trace.find((e) => e.msg.startsWith("echo: "));
    assert.ok(summary, "summary line");
    const stats = JSON.parse(summary.msg.slice("echo: ".length)) as Record<string, number>;
    assert.ok(stats.framesEchoed! > 1000 && stats.pongs! > 1000, summary.msg);
    assert.ok(stats.dgDuplicates! > 0, "duplicates happened");
    assert.ok(r.trace.some((e) => e.msg.startsWith("liveness ok")));
  }
});

test("a failing scenario is reported with its replay command", async () => {
  registerScenario({
    name: "test-fails", description: "fails at 1.5 s", defaultDurationMs: 5000,
    run: async ({ world }) => {
      const n = world.addNode("x");
      n.spawn("main", async () => {
        await new Promise<void>((r) => { n.env.timers.after(1500, r); });
        throw new Error("checker says no");
      });
      await world.run();
    },
  });
  const r = await runScenario("test-fails", 3);
  assert.equal(r.ok, false);
  assert.match(r.error!.message, /task x\/main failed: Error: checker says no/);
  assert.equal(r.virtualMs, 1500);
  const out: string[] = [];
  const code = await main(["--scenario", "test-fails", "--seed", "3"],
    { print: (l) => out.push(l), wallMs: () => 0 });
  assert.equal(code, 1);
  const text = out.join("\n");
  assert.match(text, /^FAIL: virtual time 1500\.000 ms/m);
  assert.match(text, /replay: bin\/sim-replay --scenario test-fails --seed 3 --duration-ms 5000/);
});

test("usage errors exit 2", async () => {
  const out: string[] = [];
  const host = { print: (l: string) => out.push(l), wallMs: () => 0 };
  assert.equal(await main(["--seed", "x1"], host), 2);
  assert.equal(await main(["--scenario", "nope"], host), 2);
  assert.equal(await main(["--bogus"], host), 2);
  assert.equal(await main(["--list"], host), 0);
  assert.ok(out.some((l) => l.startsWith("echo\t")));
});

function runBin(args: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 20_000 }, (err, stdout) => {
      if (err && typeof err.code !== "number") { reject(err); return; }
      resolve({ code: typeof err?.code === "number" ? err.code : 0, stdout });
    });
  });
}

test("bin/sim-replay replays a seed and reports speed", async () => {
  const { code, stdout } = await runBin(["--scenario", "echo", "--seed", "42",
    "--duration-ms", "8000", "--trace", "3"]);
  assert.equal(code, 0, stdout);
  assert.match(stdout, /^scenario echo seed 42 duration 8000 ms$/m);
  assert.match(stdout, /^PASS: virtual time \d+\.\d{3} ms, \d+ events, digest [0-9a-f]{32}$/m);
  assert.match(stdout, /simulated s per wall s, \d+ events\/s$/m);
  assert.match(stdout, /^last 3 trace entries:$/m);
  const again = await runBin(["--scenario", "echo", "--seed", "42", "--duration-ms", "8000"]);
  const digest = (s: string): string | undefined => /digest ([0-9a-f]+)/.exec(s)?.[1];
  assert.equal(digest(again.stdout), digest(stdout));
});
