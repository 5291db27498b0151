/*
 * Named event counters, the twins of upstream's sysfs counters/ directory. Every subsystem
 * counts what its names say from its own code paths; tests assert on them and the CLI prints
 * them. Names are fixed strings so a typo is a type error at the call site.
 */

export class Counters {
  private readonly values = new Map<string, number>();

  inc(name: string, by = 1): void {
    this.values.set(name, (this.values.get(name) ?? 0) + by);
  }

  get(name: string): number {
    return this.values.get(name) ?? 0;
  }

  /** All counters, sorted by name. */
  entries(): [string, number][] {
    return [...this.values.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }
}
