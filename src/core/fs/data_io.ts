/*
 * File data on the data device: reading a run of mapped blocks into a caller's buffer and
 * writing a run of blocks, one device I/O each (upstream leaves this to the page cache and
 * mpage/bio; here the operations in data.ts call it directly).
 *
 * Data blocks are DATA_BLOCK_SIZE (4 KiB) at byte offset blkno * DATA_BLOCK_SIZE. Writes are
 * always whole blocks (data.ts composes partial blocks first), which also meets O_DIRECT's
 * alignment. Reads on a buffered device (alignment 1) go straight into the caller's buffer
 * at the exact byte offsets; an aligned device reads the covering blocks into an aligned
 * buffer and copies out.
 *
 * Who calls it: data.ts, inside operations that hold the transaction (writes) or a read hold
 * (reads), so no block it touches can be freed and reused meanwhile.
 */
import type { BlockDevice } from "../../env/env.js";
import { assert } from "../../util/assert.js";
import type { Counters } from "../../util/counters.js";
import { FsError } from "../../util/errno.js";
import { DATA_BLOCK_SIZE, DATA_DEV_START_BLKNO } from "../format.js";

/** Largest single device I/O (bounds the buffers composed for one write run). */
export const DATA_IO_MAX_BYTES = 64 * 1024 * 1024;

export class DataDevice {
  constructor(readonly dev: BlockDevice, private readonly counters: Counters,
    private readonly totalBlocks: number) {}

  private checkBlocks(map: number, blocks: number): void {
    if (!Number.isSafeInteger(map) || map < DATA_DEV_START_BLKNO ||
      map + blocks > this.totalBlocks) {
      throw new FsError("EIO", `data blocks ${map}+${blocks} outside the data device`);
    }
  }

  /** Reads `len` bytes from byte `inRun` of the blocks at `map` into out[outOff..]. */
  async read(out: Buffer, outOff: number, len: number, map: number, inRun: number):
    Promise<void> {
    assert(len > 0 && len <= DATA_IO_MAX_BYTES && inRun >= 0, "data read length");
    const first = Math.floor(inRun / DATA_BLOCK_SIZE);
    const blocks = Math.ceil((inRun + len) / DATA_BLOCK_SIZE) - first;
    this.checkBlocks(map + first, blocks);
    this.counters.inc("data_read_ios");
    this.counters.inc("data_read_bytes", len);
    const at = map * DATA_BLOCK_SIZE + inRun;
    if (this.dev.alignment === 1 || (at % this.dev.alignment === 0 &&
      len % this.dev.alignment === 0)) {
      // buffered, or an aligned region on an O_DIRECT device (which bounces an unaligned
      // buffer through its own pool): no block buffer of our own to fill and copy out of
      await this.dev.read(out.subarray(outOff, outOff + len), at);
      return;
    }
    const tmp = this.dev.allocBuffer(blocks * DATA_BLOCK_SIZE);
    await this.dev.read(tmp, (map + first) * DATA_BLOCK_SIZE);
    const skip = inRun - first * DATA_BLOCK_SIZE;
    tmp.copy(out, outOff, skip, skip + len);
  }

  /** The current contents of one block. */
  async readBlock(map: number): Promise<Buffer> {
    this.checkBlocks(map, 1);
    const b = this.dev.allocBuffer(DATA_BLOCK_SIZE);
    this.counters.inc("data_read_ios");
    await this.dev.read(b, map * DATA_BLOCK_SIZE);
    return b;
  }

  /** Writes whole blocks at `map`. */
  async write(buf: Buffer, map: number): Promise<void> {
    assert(buf.length > 0 && buf.length % DATA_BLOCK_SIZE === 0 && buf.length <= DATA_IO_MAX_BYTES,
      `data write of ${buf.length} bytes`);
    this.checkBlocks(map, buf.length / DATA_BLOCK_SIZE);
    this.counters.inc("data_write_ios");
    this.counters.inc("data_write_bytes", buf.length);
    await this.dev.write(buf, map * DATA_BLOCK_SIZE);
  }
}
