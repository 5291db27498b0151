/*
 * Goal: a node's view of a shared device (SimNode.device) stops having effects when the node
 * is killed: in particular a write the process asked for while it was paused (SIGSTOP holds
 * it before it is issued) never lands if the process is killed before it resumes. Such a
 * write would land after the node was fenced, over blocks a new server has reused (found by
 * the cluster soak, seed 52: an old server's btree block overwrote a new mount's alloc list).
 *
 * Method: one node, one SimDisk; write under pause, then either resume (the write lands and
 * completes) or crash during the pause (the write never lands, its promise never settles).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { SimDisk } from "../../src/sim/disk.js";
import { SimWorld } from "../../src/sim/env.js";

const BYTES = 4096;

async function writeWhilePaused(crash: boolean): Promise<{ landed: boolean; settled: boolean }> {
  const world = new SimWorld({ seed: 1 });
  const disk = new SimDisk("meta", 16 * BYTES);
  const node = world.addNode("a");
  const dev = node.device(disk);
  node.pause(1000);
  let settled = false;
  void dev.write(Buffer.alloc(BYTES, 0xab), 0).then(() => { settled = true; });
  await world.runFor(500);
  if (crash) world.crash("a");
  await world.runFor(2000);
  const back = Buffer.alloc(BYTES);
  await disk.read(back, 0);
  return { landed: back[0] === 0xab, settled };
}

test("a paused node's write lands when it resumes", async () => {
  assert.deepEqual(await writeWhilePaused(false), { landed: true, settled: true });
});

test("a paused node killed before it resumes never issues its write", async () => {
  assert.deepEqual(await writeWhilePaused(true), { landed: false, settled: false });
});
