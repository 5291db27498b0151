/*
 * Test helper: run a fast-check property with a fixed seed, and on failure throw an error that
 * names the seed, the replay path and the shrunk counterexample (truncated), so a CI failure
 * can be replayed exactly (FC_SEED=<base seed> reruns a file's properties).
 */
import fc from "fast-check";

export type AssertProperty = <T>(name: string, seed: number, arb: fc.Arbitrary<T>,
  pred: (v: T) => Promise<void>, params: Omit<fc.Parameters<[T]>, "seed">) => Promise<void>;

export function makeAssertProperty(baseSeed: number): AssertProperty {
  return async (name, seed, arb, pred, params) => {
    const r = await fc.check(fc.asyncProperty(arb, pred), { ...params, seed });
    if (!r.failed) return;
    const err = r.errorInstance;
    const msg = err instanceof Error ? err.message : String(err);
    const ce = fc.stringify(r.counterexample);
    const text = `${name} failed: seed ${r.seed} path "${r.counterexamplePath ?? ""}" after ` +
      `${r.numRuns} runs, shrunk ${r.numShrinks} times (replay: FC_SEED=${baseSeed})\n${msg}\n` +
      `counterexample (${ce.length} chars): ${ce.length > 4000 ? `${ce.slice(0, 4000)}...` : ce}`;
    console.error(text);
    throw new Error(text, { cause: err });
  };
}
