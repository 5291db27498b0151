/* Test helper: await a promise that must reject with an FsError of one errno code. */
import assert from "node:assert/strict";
import { type ErrnoCode, isFsError } from "../../src/util/errno.js";

export async function expectFsError(p: Promise<unknown>, code: ErrnoCode, what: string):
  Promise<void> {
  try {
    await p;
  } catch (e) {
    if (isFsError(e, code)) return;
    throw e;
  }
  assert.fail(`${what}: expected ${code}`);
}
