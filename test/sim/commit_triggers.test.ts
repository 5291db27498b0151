/*
 * Goal: a mount commits its dirty items without being asked: within the commit timer
 * (TRANS_SYNC_DELAY_MS) of the first dirty item, and early when its metadata avail list could
 * not hold the blocks its dirty items need (allocator pressure) — so big transactions never
 * fail for lack of blocks the server would have handed out.
 *
 * Method: one mount with a quorum of one (ScoutMount: it elects itself and runs the server)
 * in SimWorld; items are recorded without any commit call; the counters say which trigger
 * committed, and a second, client-only mount reads the items from the forest (unlocked reads
 * see only committed items of other mounts).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { makeKey, Zone } from "../../src/core/key.js";
import { makeVolume } from "../../src/core/mkfs.js";
import { ScoutMount } from "../../src/core/mount.js";
import { TRANS_SYNC_DELAY_MS } from "../../src/core/client.js";
import { SimDisk } from "../../src/sim/disk.js";
import { SimWorld } from "../../src/sim/env.js";
import { mkfsParams } from "../helpers/volume.js";

const MiB = 1024 * 1024;
const key = (n: number): Buffer => makeKey(Zone.FS, 5000n, 100, BigInt(n));

async function cluster(seed: number, metaTarget: number) {
  const world = new SimWorld({ seed });
  const meta = new SimDisk("meta", 256 * MiB);
  const data = new SimDisk("data", 256 * MiB);
  await makeVolume(mkfsParams(meta, data, { slots: [{ nr: 0, addr: "10.0.0.1", port: 7400 }] }));
  const mount = (name: string, slot: number | null, rid: bigint): Promise<ScoutMount> => {
    const node = world.addNode(name);
    return world.settle(ScoutMount.mount(node.env, node.device(meta), {
      rid, quorumSlot: slot, heartbeatTimeoutMs: 2000,
      fenceLeader: async () => undefined, fenceClient: async () => undefined,
      server: { clientMetaAvailTarget: metaTarget, clientDataAvailTarget: 1024 },
    }));
  };
  const a = await mount("a", 0, 0xaan);
  const b = await mount("b", null, 0xbbn);
  return { world, a, b };
}

test("the commit timer commits dirty items within TRANS_SYNC_DELAY_MS", async () => {
  const { world, a, b } = await cluster(1, 2048);
  a.client.put(key(1), Buffer.from("timer"));
  await world.runFor(TRANS_SYNC_DELAY_MS / 2);
  assert.equal(await world.settle(b.client.lookup(key(1))), null, "not committed yet");
  await world.runFor(TRANS_SYNC_DELAY_MS / 2 + 500);
  assert.equal(a.counters.get("trans_commit_timer"), 1);
  assert.equal((await world.settle(b.client.lookup(key(1))))?.toString(), "timer");
  await world.runFor(3 * TRANS_SYNC_DELAY_MS);
  assert.equal(a.counters.get("trans_commit_timer"), 1, "no timer without dirty items");
  await world.settle(b.unmount());
  await world.settle(a.unmount());
});

test("allocator pressure commits early; every item lands", async () => {
  const { world, a, b } = await cluster(2, 64);
  const n = 3000;
  for (let i = 0; i < n; i++) {
    a.client.put(key(i), Buffer.alloc(200, i & 0xff));
    if (i % 100 === 99) await world.runFor(1); // let the triggered commits run
  }
  await world.settle(a.client.commit());
  assert.ok(a.counters.get("trans_commit_alloc_low") > 0, "pressure triggered commits");
  assert.equal(a.counters.get("trans_commit_failed"), 0);
  for (const i of [0, 1, 777, n - 1]) {
    const v = await world.settle(b.client.lookup(key(i)));
    assert.ok(v?.equals(Buffer.alloc(200, i & 0xff)), `item ${i}`);
  }
  await world.settle(b.unmount());
  await world.settle(a.unmount());
});
