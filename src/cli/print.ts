/*
 * `scoutfs print META-DEVICE [-S]`: dump every metadata structure (upstream utils/src/print.c;
 * the dump itself is src/core/print.ts). It opens the device read-only and buffered, and
 * refuses a data device: upstream warns when the super lacks the META flag, we fail with
 * EINVAL because nothing on a data device is metadata.
 */
import { printVolume } from "../core/print.js";
import { openRealBlockDevice } from "../env/real/blockdev.js";
import { isFsError, strerror } from "../util/errno.js";
import { argpParse, type ArgpSpec } from "./argp.js";
import type { CliCommand, CliIo } from "./command.js";

interface PrintArgs {
  metaDevice: string | null;
  skipLikelyHuge: boolean;
}

export const PRINT_ARGP: ArgpSpec<PrintArgs, "S"> = {
  options: [
    { key: "S", short: "S", long: "skip-likely-huge",
      doc: "Skip large structures to minimize output size" },
  ],
  argsDoc: "META-DEV",
  doc: "Print metadata structures",
  init: () => ({ metaDevice: null, skipLikelyHuge: false }),
  onOption: (key, _arg, st) => {
    if (key === "S") st.input.skipLikelyHuge = true;
    return 0;
  },
  onArg: (arg, st) => {
    if (st.input.metaDevice !== null) st.error("more than one argument given");
    st.input.metaDevice = arg;
    return 0;
  },
  onEnd: (st) => {
    if (st.input.metaDevice === null) st.error("no metadata device argument given");
    return 0;
  },
};

async function doPrint(path: string, skipLikelyHuge: boolean, io: CliIo): Promise<number> {
  let dev;
  try {
    dev = await openRealBlockDevice(path, { readOnly: true });
  } catch (e) {
    if (!isFsError(e)) throw e;
    io.err(`failed to open '${path}': ${strerror(e.errno)} (${e.errno})\n`);
    return -e.errno;
  }
  try {
    const lines: string[] = [];
    const flush = (): void => {
      if (lines.length) io.out(lines.join("\n") + "\n");
      lines.length = 0;
    };
    let err: unknown;
    try {
      err = await printVolume(dev, (l) => {
        lines.push(l);
        if (lines.length >= 4096) flush();
      }, { skipLikelyHuge });
    } catch (e) {
      if (!isFsError(e)) throw e;
      flush();
      io.err(`'${path}' is not a readable scoutfs metadata device: ${e.message}\n`);
      return -e.errno;
    }
    flush();
    if (isFsError(err)) {
      io.err(`print found unreadable metadata: ${err.message}\n`);
      return -err.errno;
    }
    return 0;
  } finally {
    await dev.close();
  }
}

export const printCommand: CliCommand = {
  name: "print",
  group: "debug",
  argsDoc: PRINT_ARGP.argsDoc,
  summary: PRINT_ARGP.doc ?? "",
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const r = argpParse(PRINT_ARGP, argv, io);
    if (r.kind === "exit") return r.code;
    if (r.kind === "error") return -r.errno;
    return doPrint(r.input.metaDevice!, r.input.skipLikelyHuge, io);
  },
};
