/*
 * Test helpers: make a small volume on simulated disks and reopen it, so tests of the storage
 * engine start from exactly what mkfs writes.
 */
import { makeVolume, type MkfsParams } from "../../src/core/mkfs.js";
import { Volume } from "../../src/core/volume.js";
import { SimDisk } from "../../src/sim/disk.js";

export const MiB = 1024 * 1024;

export interface TestDisks {
  meta: SimDisk;
  data: SimDisk;
}

export function mkfsParams(meta: SimDisk, data: SimDisk, over: Partial<MkfsParams> = {}):
  MkfsParams {
  return {
    meta, data,
    totalMetaBlocks: Math.floor(meta.sizeBytes / 65536),
    totalDataBlocks: Math.floor(data.sizeBytes / 4096),
    slots: [{ nr: 0, addr: "127.0.0.1", port: 19700 }],
    dataAllocZoneBlocks: null,
    formatVersion: 2,
    fsid: 0x1234_5678_9abc_def0n,
    uuid: Buffer.from("00112233445566778899aabbccddeeff", "hex"),
    nowSec: 1_700_000_000n,
    nowNsec: 123_456_789,
    ...over,
  };
}

export async function makeTestVolume(metaBytes = 256 * MiB, dataBytes = 1024 * MiB):
  Promise<TestDisks> {
  const meta = new SimDisk("meta", metaBytes);
  const data = new SimDisk("data", dataBytes);
  await makeVolume(mkfsParams(meta, data));
  return { meta, data };
}

export async function openTestVolume(d: TestDisks, cacheBytes?: number): Promise<Volume> {
  return Volume.open(d.meta, cacheBytes === undefined ? {} : { cacheBytes });
}
