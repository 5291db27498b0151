/*
 * The simulator's soak command: many seeds of a scenario, one after another, with the total
 * simulated time and the simulator's speed.
 *
 *   bin/sim-soak [--scenario cluster-soak] [--seeds 100] [--first 1] [--duration-ms MS]
 *
 * Each run is runScenario() (src/sim/replay.ts), so a failing seed replays exactly with the
 * printed bin/sim-replay command. "Simulated cluster-hours" is the sum of the runs' virtual
 * time (each run is one cluster); the speed is simulated seconds per wall second over the
 * whole soak. To use several cores run several soaks with disjoint --first/--seeds ranges.
 * The wall clock enters through the host (bin/sim-soak), as for sim-replay.
 */
import { runScenario, type ScenarioReport } from "./replay.js";
import { findScenario } from "./scenarios.js";

export interface SoakHost {
  print(line: string): void;
  wallMs(): number;
}

export interface SoakSummary {
  runs: number;
  failures: number;
  virtualMs: number;
  wallMs: number;
}

const USAGE = [
  "usage: sim-soak [--scenario NAME] [--seeds N] [--first SEED] [--duration-ms MS]",
  "Runs N consecutive seeds of a scenario (default cluster-soak, seeds 1..100) and reports",
  "the simulated cluster-hours, the simulator's speed and every failing seed.",
];

interface SoakArgs {
  scenario: string;
  seeds: number;
  first: number;
  durationMs: number | undefined;
}

function parseArgs(argv: readonly string[]): SoakArgs | "help" {
  const a: SoakArgs = { scenario: "cluster-soak", seeds: 100, first: 1, durationMs: undefined };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const num = (min: number): number => {
      const v = argv[++i];
      if (v === undefined || !/^[0-9]+$/.test(v) || Number(v) < min || !Number.isSafeInteger(Number(v))) {
        throw new Error(`${arg} needs an integer >= ${min}`);
      }
      return Number(v);
    };
    switch (arg) {
      case "--scenario": {
        const v = argv[++i];
        if (v === undefined) throw new Error("--scenario needs a name");
        a.scenario = v;
        break;
      }
      case "--seeds": a.seeds = num(1); break;
      case "--first": a.first = num(0); break;
      case "--duration-ms": a.durationMs = num(1000); break;
      case "-h": case "--help": return "help";
      default: throw new Error(`unknown argument ${JSON.stringify(arg)}`);
    }
  }
  if (!findScenario(a.scenario)) throw new Error(`unknown scenario ${JSON.stringify(a.scenario)}`);
  return a;
}

function line(r: ScenarioReport, wallMs: number): string {
  return `seed ${r.seed} ${r.ok ? "PASS" : "FAIL"} virtual ${(r.virtualMs / 1000).toFixed(1)} s ` +
    `wall ${(wallMs / 1000).toFixed(1)} s events ${r.events} digest ${r.digest}`;
}

/** The command; exit status 0 when every run passed, 1 on a failure, 2 on a usage error. */
export async function main(argv: readonly string[], host: SoakHost): Promise<number> {
  let a: SoakArgs | "help";
  try {
    a = parseArgs(argv);
  } catch (e) {
    host.print(`sim-soak: ${e instanceof Error ? e.message : String(e)}`);
    for (const l of USAGE) host.print(l);
    return 2;
  }
  if (a === "help") {
    for (const l of USAGE) host.print(l);
    return 0;
  }
  const sum: SoakSummary = { runs: 0, failures: 0, virtualMs: 0, wallMs: 0 };
  const failed: string[] = [];
  for (let seed = a.first; seed < a.first + a.seeds; seed++) {
    const t0 = host.wallMs();
    const r = await runScenario(a.scenario, seed, { durationMs: a.durationMs });
    const wall = host.wallMs() - t0;
    sum.runs++;
    sum.virtualMs += r.virtualMs;
    sum.wallMs += wall;
    host.print(line(r, wall));
    if (!r.ok) {
      sum.failures++;
      host.print(`  error: ${r.error?.message ?? "?"}`);
      failed.push(`bin/sim-replay --scenario ${a.scenario} --seed ${seed} --duration-ms ${r.durationMs}`);
    }
    host.print(`  total: ${sum.runs} runs, ${(sum.virtualMs / 3_600_000).toFixed(2)} simulated ` +
      `cluster-hours, ${(sum.virtualMs / Math.max(sum.wallMs, 1)).toFixed(1)} simulated s per wall s, ` +
      `${sum.failures} failures`);
  }
  for (const f of failed) host.print(`replay: ${f}`);
  return sum.failures === 0 ? 0 : 1;
}
