/*
 * `scoutfs mount [-o OPTIONS] [-f] [-v] DATA-DEV DIR`: mounts without mount(8), the same way
 * the /sbin/mount.scoutfs helper does (mount_helper.ts), and `scoutfs install-mount-helper`,
 * which installs /sbin/mount.scoutfs running this build's helper so `mount -t scoutfs` works.
 * Neither exists upstream (the kernel module needs no helper); they are listed after the
 * upstream commands.
 */

import fs from "node:fs";
import { fileURLToPath } from "node:url";
import { argpParse, type ArgpSpec } from "./argp.js";
import type { CliCommand } from "./command.js";
import { startMount } from "./mount_helper.js";

interface MountArgs {
  options: string[];
  foreground: boolean;
  verbose: boolean;
  pos: string[];
}
type MountKey = "o" | "f" | "v";

const MOUNT_ARGP: ArgpSpec<MountArgs, MountKey> = {
  options: [
    { key: "o", short: "o", long: "options", arg: "OPTIONS",
      doc: "Mount options: metadev_path=META-DEV[,quorum_slot_nr=N][,...] (see scoutfs(5))" },
    { key: "f", short: "f", long: "foreground",
      doc: "Run the mount daemon in the foreground, logging to stderr" },
    { key: "v", short: "v", long: "verbose", doc: "Print start-up progress" },
  ],
  argsDoc: "DATA-DEV DIR",
  doc: "Mount a scoutfs filesystem (as mount -t scoutfs does)",
  init: () => ({ options: [], foreground: false, verbose: false, pos: [] }),
  onOption(key, arg, st) {
    if (key === "o") st.input.options.push(arg ?? "");
    else if (key === "f") st.input.foreground = true;
    else st.input.verbose = true;
    return 0;
  },
  onArg(arg, st) {
    if (st.input.pos.length >= 2) st.error("too many arguments");
    st.input.pos.push(arg);
    return 0;
  },
  onEnd(st) {
    if (st.input.pos.length < 2) st.error("must specify the data device and the mount point");
    return 0;
  },
};

export const mountCommand: CliCommand = {
  name: "mount", group: "core", argsDoc: "DATA-DEV DIR",
  summary: "Mount a scoutfs filesystem with the mount daemon",
  async run(argv, io) {
    const r = argpParse(MOUNT_ARGP, argv, io);
    if (r.kind === "exit") return r.code;
    if (r.kind === "error") return -r.errno;
    const a = r.input;
    return startMount({ dataPath: a.pos[0]!, mountpoint: a.pos[1]!,
      options: a.options.join(","), foreground: a.foreground, verbose: a.verbose },
    (s) => io.err(s), "mount");
  },
};

export const HELPER_PATH = "/sbin/mount.scoutfs";

const INSTALL_ARGP: ArgpSpec<object, never> = {
  options: [], argsDoc: null,
  doc: `Install ${HELPER_PATH}, running this build's mount helper, so mount -t scoutfs works`,
  init: () => ({}),
};

export const installHelperCommand: CliCommand = {
  name: "install-mount-helper", group: "core", argsDoc: null,
  summary: `Install ${HELPER_PATH} for mount -t scoutfs`,
  run(argv, io) {
    const r = argpParse(INSTALL_ARGP, argv, io);
    if (r.kind === "exit") return Promise.resolve(r.code);
    if (r.kind === "error") return Promise.resolve(-r.errno);
    const entry = fileURLToPath(new URL("./mount_helper_main.js", import.meta.url));
    // absolute paths: mount(8) may run helpers with a minimal PATH
    const script = `#!/bin/sh\n# installed by scoutfs install-mount-helper\n` +
      `exec '${process.execPath}' '${entry}' "$@"\n`;
    const tmp = `${HELPER_PATH}.tmp.${process.pid}`;
    fs.writeFileSync(tmp, script, { mode: 0o755 });
    fs.renameSync(tmp, HELPER_PATH);
    io.out(`installed ${HELPER_PATH} (runs ${entry})\n`);
    return Promise.resolve(0);
  },
};
