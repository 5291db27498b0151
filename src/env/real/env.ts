/*
 * The real Env: the operating system's clocks, the kernel's random source and stderr.
 *
 * The mount daemon, mkfs and the CLI call realEnv() once at start-up and hand the result to
 * the core; tests of the core use the simulated Env instead (src/sim). Nothing here is
 * deterministic, which is the point: everything nondeterministic enters the core through
 * this one object.
 *
 * Clock: monotonicMs() counts from process.hrtime.bigint() (fractional milliseconds, never
 * goes back). wallTime() has nanosecond resolution for inode timestamps: it extrapolates
 * Date.now() with the monotonic clock and re-anchors whenever the two drift apart by a
 * millisecond or more, so it follows clock steps (NTP, settimeofday) like CLOCK_REALTIME.
 * Random: crypto.randomFillSync, drawn 4 KiB at a time so u32() does not cost a syscall.
 * Logger: one line per message on stderr, "<ISO time> <level> <msg>", dropping messages
 * below the configured level.
 * Timers: node's setTimeout, guarded and kept referenced (./timers.ts).
 * Net: UDP over node:dgram, TCP over node:net (./net.ts).
 */

import { randomFillSync } from "node:crypto";
import type { Clock, Env, LogLevel, Logger, Random } from "../env.js";
import { RealNetwork } from "./net.js";
import { RealTimers } from "./timers.js";

export interface RealEnvOptions {
  /** Least severe level written (default "info"). */
  logLevel?: LogLevel;
  /** Where log lines go (default process.stderr). */
  logSink?: (line: string) => void;
}

const LEVEL_RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
const NS_PER_MS = 1_000_000n;
const NS_PER_SEC = 1_000_000_000n;
const RANDOM_POOL_BYTES = 4096;

/** The real Env with its concrete parts, so the daemon can reach counters and clearAll(). */
export interface RealEnv extends Env {
  readonly timers: RealTimers;
  readonly net: RealNetwork;
}

export function realEnv(opts: RealEnvOptions = {}): RealEnv {
  const logger = realLogger(opts);
  return {
    clock: new RealClock(), random: new RealRandom(), logger,
    timers: new RealTimers(logger), net: new RealNetwork(logger),
  };
}

export class RealClock implements Clock {
  private readonly originNs = process.hrtime.bigint();
  private anchorWallNs = 0n;
  private anchorMonoNs = 0n;

  monotonicMs(): number {
    return Number(process.hrtime.bigint() - this.originNs) / 1e6;
  }

  wallTime(): { sec: bigint; nsec: number } {
    const mono = process.hrtime.bigint();
    const coarse = BigInt(Date.now()) * NS_PER_MS;
    let ns = this.anchorWallNs + (mono - this.anchorMonoNs);
    // Re-anchor when the extrapolation leaves Date.now()'s millisecond: clock step or drift.
    if (ns < coarse || ns >= coarse + NS_PER_MS) {
      this.anchorWallNs = coarse;
      this.anchorMonoNs = mono;
      ns = coarse;
    }
    return { sec: ns / NS_PER_SEC, nsec: Number(ns % NS_PER_SEC) };
  }
}

export class RealRandom implements Random {
  private readonly pool = Buffer.alloc(RANDOM_POOL_BYTES);
  private used = RANDOM_POOL_BYTES; // empty: filled on first use

  u32(): number {
    if (this.used + 4 > RANDOM_POOL_BYTES) {
      randomFillSync(this.pool);
      this.used = 0;
    }
    const v = this.pool.readUInt32LE(this.used);
    this.used += 4;
    return v;
  }

  fill(buf: Buffer): void {
    randomFillSync(buf);
  }
}

export function realLogger(opts: RealEnvOptions = {}): Logger {
  const min = LEVEL_RANK[opts.logLevel ?? "info"];
  const sink = opts.logSink ?? ((line: string) => { process.stderr.write(line); });
  return {
    log(level: LogLevel, msg: string): void {
      if (LEVEL_RANK[level] < min) return;
      sink(`${new Date().toISOString()} ${level} ${msg}\n`);
    },
  };
}
