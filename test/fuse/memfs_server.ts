/*
 * The FUSE server half of test/fuse/session.test.ts, run as a child process.
 *
 * A FUSE server must not share its event loop with code making blocking calls into its own
 * mount (reference/fuse.md), so the test forks this file: it mounts a MemFs through
 * FuseSession on the directory named by MEMFS_SERVER_MOUNTPOINT, reports "ready" over the
 * IPC channel and then answers the test's requests (statistics, changes made behind the
 * kernel's back followed by notifications). It exits once the session ends (the test
 * unmounts), or lazily unmounts and exits if the test goes away.
 *
 * Run without that variable (as `node --test dist/test/` does with every file under test/),
 * it does nothing.
 */

import { realLogger } from "../../src/env/real/env.js";
import type { LogLevel } from "../../src/env/env.js";
import { FuseSession } from "../../src/fuse/session.js";
import { isFsError } from "../../src/util/errno.js";
import { MemFs } from "./memfs.js";

export const SERVER_ENV = "MEMFS_SERVER_MOUNTPOINT";

export type ServerRequest =
  | { id: number; type: "stats" }
  | { id: number; type: "write-behind"; path: string; data: string }
  | { id: number; type: "unlink-behind"; dir: string; name: string };

export interface ServerReply { id: number; ok: boolean; result?: unknown; error?: string }

function send(msg: object, then?: () => void): void {
  if (process.send === undefined) return;
  process.send(msg, undefined, {}, () => then?.());
}

async function handle(fs: MemFs, s: FuseSession, m: ServerRequest): Promise<unknown> {
  switch (m.type) {
    case "stats":
      return { memfs: { ...fs.stats(), init: null }, session: s.counters,
        notify: s.notifyCounters, reader: s.readerKind, flags: s.negotiated?.flags ?? 0 };
    case "write-behind": {
      const ino = fs.writeBehind(m.path, Buffer.from(m.data, "base64"));
      await s.notifyInvalInode(ino, 0, 0);
      return ino;
    }
    case "unlink-behind": {
      const [parent, child] = fs.unlinkBehind(m.dir, m.name);
      await s.notifyDelete(parent, child, Buffer.from(m.name));
      return child;
    }
  }
}

async function main(mountpoint: string): Promise<void> {
  const level = (process.env.MEMFS_LOG ?? "info") as LogLevel;
  const logger = realLogger({ logLevel: level });
  const fs = new MemFs();
  const reader = process.env.MEMFS_READER === "threadpool" ? "threadpool" : "auto";
  const session = await FuseSession.mount(fs, { mountpoint, fsname: "memfs",
    subtype: "memfs_test", logger, reader, writebackCache: process.env.MEMFS_WB === "1" });
  process.on("message", (m: ServerRequest) => {
    handle(fs, session, m).then(
      (result) => send({ id: m.id, ok: true, result }),
      (e: unknown) => send({ id: m.id, ok: false,
        error: isFsError(e) ? e.code : String(e) }));
  });
  process.on("disconnect", () => {
    session.unmount(true).catch(() => undefined).finally(() => process.exit(0));
  });
  send({ type: "ready", reader: session.readerKind });
  await session.ended;
  send({ type: "ended", counters: session.counters, memfs: { ...fs.stats(), init: null } },
    () => process.exit(0));
}

const mp = process.env[SERVER_ENV];
if (mp !== undefined && process.send !== undefined) {
  main(mp).catch((e: unknown) => {
    process.stderr.write(`memfs server failed: ${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  });
}
