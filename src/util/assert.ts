/*
 * Invariant assertions. They stay on in production: a violated invariant means the code is
 * wrong or memory is corrupt, and continuing could write damage to disk. An assertion failure
 * is an AssertionError (a bug), never an FsError (an operating error).
 */

export class AssertionError extends Error {
  constructor(message: string) {
    super(`assertion failed: ${message}`);
    this.name = "AssertionError";
  }
}

export function assert(cond: unknown, message = "invariant"): asserts cond {
  if (!cond) throw new AssertionError(message);
}

/** Exhaustiveness check for switch statements over unions. */
export function unreachable(x: never): never {
  throw new AssertionError(`unreachable: ${String(x)}`);
}

/** Asserts that n is a non-negative integer exactly representable as a JS number. */
export function assertSafeU(n: number, what = "value"): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new AssertionError(`${what} ${n} not a safe u53`);
}
