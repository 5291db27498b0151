/*
 * Runs one registered scenario from one seed: the replay command of the simulator.
 *
 *   bin/sim-replay --scenario echo --seed 42 [--duration-ms 20000] [--trace 40] [--verbose]
 *   bin/sim-replay --list
 *
 * runScenario() is the library form, used by tests and by seed-sweeping harnesses; main() is
 * the command. A run is fully determined by (scenario, seed, duration): a failure prints the
 * exact command that reproduces it, and the digest printed with every run lets two runs be
 * compared without diffing traces.
 *
 * The simulator itself never reads a wall clock (lint forbids it in src/sim). To report its
 * speed, the host process hands in `wallMs` (bin/sim-replay passes performance.now): the
 * value is only read before and after the run and never reaches the simulated world.
 */

import { SimWorld, TraceRing, type TraceEntry } from "./env.js";
import { findScenario, listScenarios } from "./scenarios.js";
import "./cluster.js"; // registers the "cluster" and "cluster-soak" scenarios

/** Trace lines printed after a failure unless --trace says otherwise. */
export const DEFAULT_FAILURE_TRACE_LINES = 40;
/** Bound on --trace. */
export const MAX_PRINTED_TRACE_LINES = 100_000;

export interface RunScenarioOptions {
  durationMs?: number;
  /** Live trace output (every entry as it is recorded). */
  echo?: (line: string) => void;
  /** Trace ring size (default: the world's default). */
  traceEntries?: number;
  /** A wall clock for the speed report; without it wall figures are null. */
  wallMs?: () => number;
}

export interface ScenarioReport {
  readonly scenario: string;
  readonly seed: bigint;
  readonly durationMs: number;
  readonly ok: boolean;
  /** The violation or bug that failed the run. */
  readonly error: Error | null;
  readonly virtualMs: number;
  readonly events: number;
  readonly digest: string;
  /** The trace ring's entries at the end (oldest first). */
  readonly trace: readonly TraceEntry[];
  readonly wallMs: number | null;
}

/** Runs a scenario by name; never throws for a failing run (see report.ok / error). */
export async function runScenario(name: string, seed: number | bigint,
  opts: RunScenarioOptions = {}): Promise<ScenarioReport> {
  const scenario = findScenario(name);
  if (scenario === undefined) throw new Error(`unknown scenario ${JSON.stringify(name)}`);
  const durationMs = opts.durationMs ?? scenario.defaultDurationMs;
  const world = new SimWorld({
    seed, faults: scenario.faults, echo: opts.echo, traceEntries: opts.traceEntries,
  });
  const started = opts.wallMs?.() ?? null;
  let error: Error | null = null;
  try {
    await scenario.run({ world, durationMs });
  } catch (e) {
    error = e instanceof Error ? e : new Error(String(e));
    world.log(`FAILED: ${error.message}`, "error");
  }
  const ended = opts.wallMs?.() ?? null;
  return {
    scenario: name, seed: world.seed, durationMs, ok: error === null, error,
    virtualMs: world.nowMs(), events: world.scheduler.counters.executed,
    digest: world.digest(), trace: world.trace.entries(),
    wallMs: started === null || ended === null ? null : ended - started,
  };
}

/** What the command needs from the process running it. */
export interface ReplayHost {
  print(line: string): void;
  wallMs(): number;
}

interface ReplayArgs {
  scenario: string;
  seed: bigint;
  durationMs: number | undefined;
  traceLines: number | undefined;
  verbose: boolean;
  list: boolean;
  help: boolean;
}

const USAGE = [
  "usage: sim-replay --scenario NAME --seed N [--duration-ms MS] [--trace LINES] [--verbose]",
  "       sim-replay --list",
  "Runs one simulated scenario from its seed; the same arguments replay the same run.",
];

/** The command; returns the exit status (0 pass, 1 violation found, 2 usage error). */
export async function main(argv: readonly string[], host: ReplayHost): Promise<number> {
  let args: ReplayArgs;
  try {
    args = parseArgs(argv);
  } catch (e) {
    host.print(`sim-replay: ${e instanceof Error ? e.message : String(e)}`);
    for (const line of USAGE) host.print(line);
    return 2;
  }
  if (args.help) {
    for (const line of USAGE) host.print(line);
    return 0;
  }
  if (args.list) {
    for (const s of listScenarios()) host.print(`${s.name}\t${s.description}`);
    return 0;
  }
  if (findScenario(args.scenario) === undefined) {
    host.print(`sim-replay: unknown scenario ${JSON.stringify(args.scenario)} ` +
      `(--list shows them)`);
    return 2;
  }
  const report = await runScenario(args.scenario, args.seed, {
    durationMs: args.durationMs, wallMs: () => host.wallMs(),
    echo: args.verbose ? (line) => host.print(line) : undefined,
  });
  printReport(report, args, host);
  return report.ok ? 0 : 1;
}

function printReport(r: ScenarioReport, args: ReplayArgs, host: ReplayHost): void {
  host.print(`scenario ${r.scenario} seed ${r.seed} duration ${r.durationMs} ms`);
  host.print(`${r.ok ? "PASS" : "FAIL"}: virtual time ${r.virtualMs.toFixed(3)} ms, ` +
    `${r.events} events, digest ${r.digest}`);
  if (r.wallMs !== null) {
    const wallSec = Math.max(r.wallMs, 1e-3) / 1000;
    host.print(`wall ${r.wallMs.toFixed(0)} ms: ${(r.virtualMs / 1000 / wallSec).toFixed(2)} ` +
      `simulated s per wall s, ${Math.round(r.events / wallSec)} events/s`);
  }
  const lines = args.traceLines ?? (r.ok ? 0 : DEFAULT_FAILURE_TRACE_LINES);
  if (lines > 0) {
    host.print(`last ${Math.min(lines, r.trace.length)} trace entries:`);
    for (const e of r.trace.slice(-lines)) host.print(TraceRing.format(e));
  }
  if (!r.ok) {
    host.print(`error: ${r.error?.stack ?? String(r.error)}`);
    host.print(`replay: bin/sim-replay --scenario ${r.scenario} --seed ${r.seed} ` +
      `--duration-ms ${r.durationMs}`);
  }
}

function parseArgs(argv: readonly string[]): ReplayArgs {
  const args: ReplayArgs = {
    scenario: "echo", seed: 1n, durationMs: undefined, traceLines: undefined,
    verbose: false, list: false, help: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    switch (arg) {
      case "--scenario": args.scenario = value(); break;
      case "--seed": args.seed = parseSeed(value()); break;
      case "--duration-ms": args.durationMs = parseCount(arg, value(), 1, 1e12); break;
      case "--trace": args.traceLines = parseCount(arg, value(), 0, MAX_PRINTED_TRACE_LINES);
        break;
      case "--verbose": args.verbose = true; break;
      case "--list": args.list = true; break;
      case "-h": case "--help": args.help = true; break;
      default: throw new Error(`unknown argument ${JSON.stringify(arg)}`);
    }
  }
  return args;
}

/** A seed: decimal or 0x-hex, reduced to 64 bits by SimRandom. */
function parseSeed(s: string): bigint {
  if (!/^(0x[0-9a-fA-F]+|-?[0-9]+)$/.test(s)) throw new Error(`bad seed ${JSON.stringify(s)}`);
  return BigInt.asUintN(64, BigInt(s));
}

function parseCount(name: string, s: string, min: number, max: number): number {
  const n = Number(s);
  if (!/^[0-9]+$/.test(s) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new Error(`${name}: ${JSON.stringify(s)} is not an integer in [${min}, ${max}]`);
  }
  return n;
}
