/*
 * Dispatch: for each opcode, how to decode the request, which FuseOps method serves it, what
 * it answers when the method is missing, and how the result becomes the reply payload.
 *
 * session.ts owns the request loop and implements Runner (tracking, interrupts, replies);
 * this table is the only place that knows which opcode maps to which method, so the session
 * itself stays independent of the list of operations. Opcodes without an entry (BMAP, POLL,
 * STATX, SETUPMAPPING, COPY_FILE_RANGE_64, ...) are answered ENOSYS by the session; the
 * kernel then falls back (STATX to GETATTR, COPY_FILE_RANGE_64 to COPY_FILE_RANGE).
 *
 * Reply rules kept here, because the kernel rejects a reply larger than it asked for (the
 * write to /dev/fuse fails with EINVAL and the caller sees EIO):
 *  - READ data, READDIR buffers and ioctl output never exceed the request's size;
 *  - GETXATTR/LISTXATTR with size 0 is a probe answered with the needed size, and a value
 *    larger than the caller's buffer is ERANGE;
 *  - READLINK targets are shorter than a page (the kernel's buffer).
 * A filesystem breaking one of them gets EIO and a logged report (an assertion), not a
 * protocol error.
 */

import { assert } from "../util/assert.js";
import { FsError } from "../util/errno.js";
import type { FuseOps, MaybePromise, ReaddirArgs, RequestContext } from "./ops.js";
import {
  type CreateOut, decodeAccess, decodeCopyFileRange, decodeCreate, decodeFallocate,
  decodeFlush, decodeFsync, decodeGetattr, decodeGetxattr, decodeIoctl, decodeLink,
  decodeListxattr, decodeLk, decodeLseek, decodeMkdir, decodeMknod, decodeNameReq,
  decodeNode, decodeOpen, decodeRead, decodeReaddir, decodeRelease, decodeRemovexattr,
  decodeRename, decodeRename2, decodeSetattr, decodeSetxattr, decodeSymlink, decodeTmpfile,
  decodeWrite, DirentPacker, encodeAttrOut, encodeCreateOut, encodeEntryOut, encodeIoctlOut,
  encodeLkOut, encodeLseekOut, encodeOpenOut, encodeStatfsOut, encodeWriteOut,
  encodeXattrSize, type EntryOut, type GetxattrReq, type InHeader, type IoctlOut,
  type IoctlReq, type ListxattrReq, Opcode, type OpenOut, packXattrNames, type ReadReq,
  type Statfs, XATTR_LIST_MAX, XATTR_SIZE_MAX,
} from "./proto.js";

/** A reply payload: one buffer or several written with one writev. */
export type Payload = Buffer | readonly Buffer[];
export const EMPTY: Payload = [];

export type OpFn<Req, Res> = (ctx: RequestContext, req: Req) => MaybePromise<Res>;

/** What the session provides to the table. */
export interface Runner {
  readonly ops: FuseOps;
  /**
   * Calls fn (missing: answers ENOSYS) with a tracked context, then replies with
   * encode(result) or with the errno of what it threw. lookups names the node ids whose
   * lookup count a delivered reply raises (forgotten again if delivery fails). buf is the
   * read buffer when req holds views into it (WRITE data): kept from reuse until settled.
   */
  run<Req, Res>(h: InHeader, req: Req, fn: OpFn<Req, Res> | undefined,
    encode: (res: Res, req: Req) => Payload,
    lookups?: (res: Res, req: Req) => readonly number[], buf?: Buffer,
    replied?: (res: Res) => void): void;
}

export type Handler = (r: Runner, h: InHeader, payload: Buffer, buf: Buffer) => void;

const PAGE_BYTES = 4096;

// Defaults for missing methods (what libfuse's low-level layer answers).
const openDefault: OpFn<unknown, OpenOut> = () => ({ fh: 0, openFlags: 0 });
const okDefault: OpFn<unknown, void> = () => undefined;
const statfsDefault: OpFn<unknown, Statfs> = () => ({ blocks: 0, bfree: 0, bavail: 0,
  files: 0, ffree: 0, bsize: 512, namelen: 255, frsize: 512 });

const none = (): Payload => EMPTY;

function entryPayload(e: EntryOut): Payload {
  assert(e.nodeid !== 0, "only LOOKUP may return a negative entry (nodeid 0)");
  return encodeEntryOut(e);
}

function lookupPayload(e: EntryOut): Payload {
  return encodeEntryOut(e);
}

function entryLookups(e: EntryOut): readonly number[] {
  return e.nodeid === 0 ? [] : [e.nodeid];
}

function createPayload(c: CreateOut): Payload {
  assert(c.entry.nodeid !== 0, "create returned nodeid 0");
  return encodeCreateOut(c);
}

function createLookups(c: CreateOut): readonly number[] {
  return [c.entry.nodeid];
}

function readPayload(data: Buffer | readonly Buffer[], req: ReadReq): Payload {
  const parts = Buffer.isBuffer(data) ? [data] : data;
  let n = 0;
  for (const p of parts) n += p.length;
  assert(n <= req.size, `read returned ${n} bytes for a read of ${req.size}`);
  return parts;
}

function readlinkPayload(target: Buffer): Payload {
  assert(target.length > 0 && target.length < PAGE_BYTES && !target.includes(0),
    `readlink target of ${target.length} bytes`);
  return target;
}

/** Answers the size probe, refuses a too small buffer with ERANGE, else sends the value. */
function sizedPayload(value: Buffer, size: number, max: number, what: string): Payload {
  if (value.length > max) throw new FsError("E2BIG", `${what} of ${value.length} bytes`);
  if (size === 0) return encodeXattrSize(value.length);
  if (value.length > size) throw new FsError("ERANGE", `${what} needs ${value.length} bytes`);
  return value;
}

function getxattrPayload(value: Buffer, req: GetxattrReq): Payload {
  return sizedPayload(value, req.size, XATTR_SIZE_MAX, "xattr value");
}

function listxattrPayload(names: readonly Buffer[], req: ListxattrReq): Payload {
  return sizedPayload(packXattrNames(names), req.size, XATTR_LIST_MAX, "xattr list");
}

function readdirPayload(_res: unknown, req: ReaddirArgs): Payload {
  return req.out.finish();
}

function ioctlPayload(out: IoctlOut, req: IoctlReq): Payload {
  assert(Number.isInteger(out.result) && out.result >= 0, `ioctl result ${out.result}`);
  const data = out.data ?? Buffer.alloc(0);
  assert(data.length <= req.outSize, `ioctl output of ${data.length} > ${req.outSize} bytes`);
  return data.length === 0 ? encodeIoctlOut(out.result) : [encodeIoctlOut(out.result), data];
}

function readdirArgs(h: InHeader, p: Buffer, plus: boolean): ReaddirArgs {
  const r = decodeReaddir(h, p);
  return { ...r, out: new DirentPacker(r.size, plus) };
}

/** The table. FORGET, BATCH_FORGET, INTERRUPT, INIT and DESTROY are the session's own. */
export const HANDLERS: ReadonlyMap<number, Handler> = new Map<number, Handler>([
  [Opcode.LOOKUP, (r, h, p) =>
    r.run(h, decodeNameReq(h, p), r.ops.lookup, lookupPayload, entryLookups)],
  [Opcode.GETATTR, (r, h, p) => r.run(h, decodeGetattr(h, p), r.ops.getattr, encodeAttrOut)],
  [Opcode.SETATTR, (r, h, p) => r.run(h, decodeSetattr(h, p), r.ops.setattr, encodeAttrOut)],
  [Opcode.READLINK, (r, h, p) => r.run(h, decodeNode(h, p), r.ops.readlink, readlinkPayload)],
  [Opcode.SYMLINK, (r, h, p) =>
    r.run(h, decodeSymlink(h, p), r.ops.symlink, entryPayload, entryLookups)],
  [Opcode.MKNOD, (r, h, p) =>
    r.run(h, decodeMknod(h, p), r.ops.mknod, entryPayload, entryLookups)],
  [Opcode.MKDIR, (r, h, p) =>
    r.run(h, decodeMkdir(h, p), r.ops.mkdir, entryPayload, entryLookups)],
  [Opcode.UNLINK, (r, h, p) => r.run(h, decodeNameReq(h, p), r.ops.unlink, none)],
  [Opcode.RMDIR, (r, h, p) => r.run(h, decodeNameReq(h, p), r.ops.rmdir, none)],
  [Opcode.RENAME, (r, h, p) => r.run(h, decodeRename(h, p), r.ops.rename, none)],
  [Opcode.RENAME2, (r, h, p) => r.run(h, decodeRename2(h, p), r.ops.rename, none)],
  [Opcode.LINK, (r, h, p) => r.run(h, decodeLink(h, p), r.ops.link, entryPayload, entryLookups)],
  [Opcode.OPEN, (r, h, p) =>
    r.run(h, decodeOpen(h, p), r.ops.open ?? openDefault, encodeOpenOut)],
  [Opcode.READ, (r, h, p) => r.run(h, decodeRead(h, p), r.ops.read, readPayload, undefined,
    undefined, r.ops.readReplied === undefined ? undefined : (d) => r.ops.readReplied!(d))],
  [Opcode.WRITE, (r, h, p, buf) =>
    r.run(h, decodeWrite(h, p), r.ops.write, encodeWriteOut, undefined, buf)],
  [Opcode.STATFS, (r, h, p) =>
    r.run(h, decodeNode(h, p), r.ops.statfs ?? statfsDefault, encodeStatfsOut)],
  [Opcode.RELEASE, (r, h, p) => r.run(h, decodeRelease(h, p), r.ops.release ?? okDefault, none)],
  [Opcode.FSYNC, (r, h, p) => r.run(h, decodeFsync(h, p), r.ops.fsync, none)],
  [Opcode.SETXATTR, (r, h, p) => r.run(h, decodeSetxattr(h, p), r.ops.setxattr, none)],
  [Opcode.GETXATTR, (r, h, p) =>
    r.run(h, decodeGetxattr(h, p), r.ops.getxattr, getxattrPayload)],
  [Opcode.LISTXATTR, (r, h, p) =>
    r.run(h, decodeListxattr(h, p), r.ops.listxattr, listxattrPayload)],
  [Opcode.REMOVEXATTR, (r, h, p) =>
    r.run(h, decodeRemovexattr(h, p), r.ops.removexattr, none)],
  [Opcode.FLUSH, (r, h, p) => r.run(h, decodeFlush(h, p), r.ops.flush ?? okDefault, none)],
  [Opcode.OPENDIR, (r, h, p) =>
    r.run(h, decodeOpen(h, p), r.ops.opendir ?? openDefault, encodeOpenOut)],
  [Opcode.READDIR, (r, h, p) =>
    r.run(h, readdirArgs(h, p, false), r.ops.readdir, readdirPayload)],
  [Opcode.READDIRPLUS, (r, h, p) => r.run(h, readdirArgs(h, p, true), r.ops.readdirplus,
    readdirPayload, (_res, req) => req.out.lookups)],
  [Opcode.RELEASEDIR, (r, h, p) =>
    r.run(h, decodeRelease(h, p), r.ops.releasedir ?? okDefault, none)],
  [Opcode.FSYNCDIR, (r, h, p) => r.run(h, decodeFsync(h, p), r.ops.fsyncdir, none)],
  [Opcode.GETLK, (r, h, p) => r.run(h, decodeLk(h, p), r.ops.getlk, encodeLkOut)],
  [Opcode.SETLK, (r, h, p) => r.run(h, decodeLk(h, p), setlkFn(r.ops, false), none)],
  [Opcode.SETLKW, (r, h, p) => r.run(h, decodeLk(h, p), setlkFn(r.ops, true), none)],
  [Opcode.ACCESS, (r, h, p) => r.run(h, decodeAccess(h, p), r.ops.access, none)],
  [Opcode.CREATE, (r, h, p) =>
    r.run(h, decodeCreate(h, p), r.ops.create, createPayload, createLookups)],
  [Opcode.TMPFILE, (r, h, p) =>
    r.run(h, decodeTmpfile(h, p), r.ops.tmpfile, createPayload, createLookups)],
  [Opcode.IOCTL, (r, h, p) => r.run(h, decodeIoctl(h, p), r.ops.ioctl, ioctlPayload)],
  [Opcode.FALLOCATE, (r, h, p) => r.run(h, decodeFallocate(h, p), r.ops.fallocate, none)],
  [Opcode.LSEEK, (r, h, p) => r.run(h, decodeLseek(h, p), r.ops.lseek, encodeLseekOut)],
  [Opcode.COPY_FILE_RANGE, (r, h, p) =>
    r.run(h, decodeCopyFileRange(h, p), r.ops.copyFileRange, encodeWriteOut)],
  [Opcode.SYNCFS, (r, h, p) => r.run(h, decodeNode(h, p), r.ops.syncfs, none)],
]);

/** SETLK and SETLKW share one method with a sleep flag. */
function setlkFn(ops: FuseOps, sleep: boolean):
  OpFn<ReturnType<typeof decodeLk>, void> | undefined {
  const fn = ops.setlk;
  if (fn === undefined) return undefined;
  return (ctx, req) => fn.call(ops, ctx, req, sleep);
}
