/*
 * crc32c over whole blocks is on the hot path of every block read and write, so it uses the
 * native SIMD implementation from @node-rs/crc32 (see docs/architecture.md for the
 * dependency's justification) rather than a JavaScript table loop.
 */
import { crc32c as nativeCrc32c } from "@node-rs/crc32";

/** Standard crc32c (Castagnoli, initial ~0, final xor): "123456789" -> 0xe3069283. */
export function crc32c(buf: Buffer, initial = 0): number {
  return nativeCrc32c(buf, initial) >>> 0;
}
