/*
 * Golden-bytes fixtures: a struct's encoding is compared with the hex file committed in
 * test/fixtures/<dir>/<name>.hex, so a format change fails until the fixture is regenerated on
 * purpose (UPDATE_FIXTURES=1). A missing fixture is written on a developer's machine and is a
 * failure in CI (CI=true), so a fixture can never be silently created there.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export function goldenIn(dir: string): (name: string, buf: Buffer) => void {
  const fixtures = fileURLToPath(new URL(`../../../test/fixtures/${dir}/`, import.meta.url));
  return (name, buf) => {
    const path = `${fixtures}${name}.hex`;
    const hex = buf.toString("hex").replace(/(.{64})/g, "$1\n").trimEnd() + "\n";
    if (process.env.UPDATE_FIXTURES === "1" || !existsSync(path)) {
      if (process.env.CI === "true" && !existsSync(path)) assert.fail(`missing fixture ${path}`);
      mkdirSync(fixtures, { recursive: true });
      writeFileSync(path, hex);
    }
    assert.equal(hex, readFileSync(path, "utf8"), `${name} bytes differ from the golden fixture`);
  };
}
