/*
 * Directory entry items (upstream dir.c): every entry is stored three times with one value,
 *  - DIRENT (dir, name hash, pos): lookup by name,
 *  - READDIR (dir, pos): readdir in creation order,
 *  - LINK_BACKREF (target, dir, pos): from an inode to the entries naming it (ino-path, and
 *    a directory's parent for ".." and the rename ancestry check).
 * Positions come from the directory inode's next_readdir_pos (from 2, never reused) and the
 * directory's size is the sum of its entries' name lengths.
 *
 * These helpers work inside an operation (OpCtx): reads under its locks, writes recorded for
 * its write phase. The caller dirties the directory inode whose fields they change.
 */
import { FsError } from "../../util/errno.js";
import type { InodeValue } from "../format.js";
import { direntKey, keySecond, linkBackrefKey, readdirKey, U64_MAX } from "../key.js";
import {
  decodeDirent, direntNameHash, type DirentValue, encodeDirent, NAME_LEN_MAX, READDIR_POS_END,
} from "./format.js";
import type { OpCtx } from "./op.js";

/** Entries sharing one name hash that a lookup walks at most (hash collisions). */
export const DIRENT_HASH_COLLISIONS_MAX = 1024;

/** ENAMETOOLONG / EINVAL for names no entry may have ("." and ".." are the caller's). */
export function checkName(name: Buffer): void {
  if (name.length > NAME_LEN_MAX) throw new FsError("ENAMETOOLONG");
  if (name.length === 0 || name.includes(0x2f) || name.includes(0)) {
    throw new FsError("EINVAL", "invalid entry name");
  }
}

export function isDot(name: Buffer): boolean {
  return name.length === 1 && name[0] === 0x2e;
}

export function isDotDot(name: Buffer): boolean {
  return name.length === 2 && name[0] === 0x2e && name[1] === 0x2e;
}

/** The entry named `name` in directory `dir`, or null. */
export async function findEntry(ctx: OpCtx, dir: bigint, name: Buffer):
  Promise<DirentValue | null> {
  const hash = direntNameHash(name);
  const end = direntKey(dir, hash, U64_MAX);
  let key = direntKey(dir, hash, 0n);
  for (let i = 0; i < DIRENT_HASH_COLLISIONS_MAX; i++) {
    const it = await ctx.next(key, end, dir);
    if (it === null) return null;
    const d = decodeDirent(it.val);
    if (d.name.equals(name)) return d;
    if (keySecond(it.key) !== hash) return null;
    key = direntKey(dir, hash, d.pos + 1n);
  }
  throw new FsError("EIO", "too many dirent hash collisions");
}

/**
 * Adds the three items of a new entry at the directory's next position; updates the
 * directory's size and next position (the caller has dirtied `dirVal`).
 */
export function addEntry(ctx: OpCtx, dir: bigint, dirVal: InodeValue, name: Buffer, ino: bigint,
  type: number): DirentValue {
  const pos = dirVal.nextReaddirPos;
  if (pos >= READDIR_POS_END) throw new FsError("ENOSPC", "directory positions exhausted");
  dirVal.nextReaddirPos = pos + 1n;
  dirVal.size += BigInt(name.length);
  const d: DirentValue = { ino, hash: direntNameHash(name), pos, type, name: Buffer.from(name) };
  const val = encodeDirent(d);
  ctx.put(direntKey(dir, d.hash, pos), val, dir);
  ctx.put(readdirKey(dir, pos), val, dir);
  ctx.put(linkBackrefKey(ino, dir, pos), val, ino);
  return d;
}

/** Deletes the three items of an entry; shrinks the directory's size. */
export function removeEntry(ctx: OpCtx, dir: bigint, dirVal: InodeValue, d: DirentValue): void {
  ctx.del(direntKey(dir, d.hash, d.pos), dir);
  ctx.del(readdirKey(dir, d.pos), dir);
  ctx.del(linkBackrefKey(d.ino, dir, d.pos), d.ino);
  dirVal.size -= BigInt(d.name.length);
}

/** True if the directory has no entries. */
export async function dirEmpty(ctx: OpCtx, dir: bigint): Promise<boolean> {
  return (await ctx.next(readdirKey(dir, 0n), readdirKey(dir, U64_MAX), dir)) === null;
}

/**
 * The parent of a directory: the directory holding its only entry (its backref), or the
 * directory itself for the root (which has none).
 */
export async function parentOf(ctx: OpCtx, dir: bigint): Promise<bigint> {
  const it = await ctx.next(linkBackrefKey(dir, 0n, 0n), linkBackrefKey(dir, U64_MAX, U64_MAX),
    dir);
  return it === null ? dir : keySecond(it.key);
}

/** Up to `limit` entries of the directory from position `pos` on, in position order. */
export async function entriesFrom(ctx: OpCtx, dir: bigint, pos: bigint, limit: number):
  Promise<DirentValue[]> {
  const items = await ctx.range(readdirKey(dir, pos), readdirKey(dir, READDIR_POS_END), dir,
    limit);
  return items.map((it) => decodeDirent(it.val));
}

/** Every entry naming `ino` (its backrefs), at most `limit`. */
export async function backrefs(ctx: OpCtx, ino: bigint, limit: number): Promise<DirentValue[]> {
  const items = await ctx.range(linkBackrefKey(ino, 0n, 0n), linkBackrefKey(ino, U64_MAX, U64_MAX),
    ino, limit);
  return items.map((it) => decodeDirent(it.val));
}
