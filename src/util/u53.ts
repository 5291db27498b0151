/*
 * Little-endian u64 fields that this code keeps as JS numbers (block numbers, seqs, ids): exact
 * only below 2^53. Writers assert the value is a safe integer; readers refuse a larger stored
 * value through the caller's error (EIO for disk structures, EBADMSG for wire messages), so a
 * value is never silently rounded.
 */
import { assertSafeU } from "./assert.js";

const TWO32 = 0x1_0000_0000;
const HI_LIMIT = 0x200000; // 2^53 / 2^32

export function writeU53(buf: Buffer, off: number, n: number, what = "u64 field"): void {
  assertSafeU(n, what);
  buf.writeUInt32LE(n % TWO32, off);
  buf.writeUInt32LE(Math.floor(n / TWO32), off + 4);
}

export function readU53(buf: Buffer, off: number, tooBig: () => Error): number {
  const hi = buf.readUInt32LE(off + 4);
  if (hi >= HI_LIMIT) throw tooBig();
  return hi * TWO32 + buf.readUInt32LE(off);
}
