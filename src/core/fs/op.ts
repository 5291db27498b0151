/*
 * How a namespace operation runs: local exclusion, cluster locks, reads, then one
 * synchronous write phase (upstream: i_rwsem + scoutfs_lock_* + scoutfs_hold_trans).
 *
 * An operation is a body run with an OpCtx. The runner:
 *  1. takes local mutexes (write operations only) for every inode group it will change, in
 *     sorted order: the cluster lock client lets local users share a granted lock, so two
 *     operations of this mount on one directory are serialized here, like the VFS's i_rwsem;
 *  2. takes the cluster locks of all those inode groups (plus the rename lock when asked) in
 *     ONE lockEach call, which acquires in key order: no two operations can deadlock;
 *  3. runs the body. Reads go through the item cache under the held locks. A read of an
 *     inode whose group is not locked throws NeedLocks: the runner drops everything and runs
 *     the body again with the larger set (the set only grows, so this converges). Writes are
 *     only recorded in the OpCtx;
 *  4. applies the recorded writes synchronously, with no await in between, so the commit of
 *     the transaction (which takes the dirty items at one instant) sees all of an operation's
 *     items or none of them. That is what upstream's transaction hold guarantees; here it
 *     falls out of JavaScript's run-to-completion. Dirty inodes get their meta_seq / data_seq
 *     index items moved to the open transaction's seq in the same step.
 *
 * The index and orphan items are written with the version (item seq) of the inode's group
 * lock: only a holder of that WRITE lock ever changes them, so that lock's write_seq orders
 * their versions across mounts exactly like the inode item's (see the report on index locks).
 */
import { assert } from "../../util/assert.js";
import { FsError } from "../../util/errno.js";
import type { MountClient } from "../client.js";
import { MAX_DIRTY_ITEMS } from "../client.js";
import { decodeInode, encodeInode, type InodeValue } from "../format.js";
import type { KeyVal } from "../item_cache.js";
import { dataSeqKey, inodeKey, metaSeqKey, orphanKey } from "../key.js";
import { type HeldLock, type LockHandle, lockItemSeq } from "../lock.js";
import { LockMode } from "../lock_msg.js";
import { inodeGroupFirst, inodeGroupRange, type LockRange, renameRange } from "../lock_names.js";
import type { PosixAcl } from "./acl.js";
import { isReg } from "./format.js";
import { KeyedMutex } from "./mutex.js";
import { aclCanMatter, type Cred } from "./perm.js";

/** Inode group lock ranges the runner keeps built (groupRange). */
const GROUP_RANGES_CACHED = 4096;
/** Times an operation re-runs to lock what it discovered it needs before giving up. */
export const OP_MAX_ATTEMPTS = 64;
/** Items one operation may write at most (bounds the write phase and the dirty set). */
export const OP_MAX_WRITES = 4096;
/** Dirty items above which an operation commits before it writes. */
export const OP_COMMIT_THRESHOLD = MAX_DIRTY_ITEMS - 2 * OP_MAX_WRITES;

/**
 * Thrown inside a body: these inodes' groups must be locked in these modes. Not an Error:
 * it is control flow the runner always catches, and capturing a stack trace per throw
 * showed in profiles of lookups.
 */
class NeedLocks {
  constructor(readonly inos: ReadonlyMap<bigint, LockMode>) {}
}

export interface OpSpec {
  /** Inodes the operation reads or writes, with the mode of each one's group lock. */
  inos: ReadonlyMap<bigint, LockMode>;
  /** Take the global rename lock (renames between directories). */
  rename?: boolean;
}

interface InodeState {
  val: InodeValue;
  dirty: boolean;
  /** The value's meta_seq/data_seq as read: index items to move when written. */
  readMetaSeq: bigint;
  readDataSeq: bigint;
  /** The file's contents or size changed: data_seq moves to this transaction. */
  dataDirty: boolean;
  deleted: boolean;
}

type Write = { put: true; key: Buffer; val: Buffer } | { put: false; key: Buffer };

/**
 * What the ACL layer (acl_xattr.ts) offers every operation; null on a noacl mount, where
 * stored ACLs are ignored. A hook rather than an import: the ACL layer itself runs on OpCtx.
 */
export interface AclHooks {
  /** The inode's access ACL, or null when it has none. */
  access(ctx: OpCtx, ino: bigint): Promise<PosixAcl | null>;
  /** A chmod of v (already applied) rewrites its access ACL's owner, mask and other. */
  chmod(ctx: OpCtx, ino: bigint, v: InodeValue): Promise<void>;
}

/** One run of an operation body: the held locks, inodes read, writes recorded. */
export class OpCtx {
  private readonly inodes = new Map<bigint, InodeState>();
  private readonly writes: Write[] = [];
  private readonly orphans: { ino: bigint; add: boolean }[] = [];
  private readonly endHooks: ((applied: boolean) => void)[] = [];
  private applied = false;
  /** The held lock of each group need() was asked about (spares building a key per call). */
  private readonly heldByGroup = new Map<bigint, HeldLock>();

  constructor(readonly client: MountClient, private readonly handle: LockHandle,
    private readonly modes: ReadonlyMap<bigint, LockMode>, readonly fmtVers: number,
    readonly acl: AclHooks | null = null,
    /** True the first time a group is asked about (the runner's memory, see checkNew). */
    private readonly warmGroup: (group: bigint) => boolean = () => false) {}

  /** ino's access ACL when it can decide cred's permission check (perm.ts), else null. */
  async accessAcl(ino: bigint, v: InodeValue, cred: Cred): Promise<PosixAcl | null> {
    if (this.acl === null || !aclCanMatter(cred, v)) return null;
    return this.acl.access(this, ino);
  }

  /** The held group lock of ino, or NeedLocks if its group is not held in `mode`. */
  need(ino: bigint, mode: LockMode = LockMode.READ): HeldLock {
    const group = inodeGroupFirst(ino);
    const have = this.modes.get(group);
    if (have === undefined || (mode === LockMode.WRITE && have !== LockMode.WRITE)) {
      throw new NeedLocks(new Map([[ino, mode]]));
    }
    let held = this.heldByGroup.get(group);
    if (held === undefined) {
      held = this.handle.covering(inodeKey(ino));
      assert(held !== undefined, "locked group has a held lock");
      this.heldByGroup.set(group, held);
    }
    return held;
  }

  /** The inode's current value (null if it has no inode item), read once per run. */
  async inode(ino: bigint, mode: LockMode = LockMode.READ): Promise<InodeValue | null> {
    const held = this.need(ino, mode);
    const st = this.inodes.get(ino);
    if (st) return st.deleted ? null : st.val;
    const raw = await this.client.lookupLocked(held, inodeKey(ino));
    if (raw === null) return null;
    const val = decodeInode(raw, this.fmtVers);
    this.inodes.set(ino, { val, dirty: false, readMetaSeq: val.metaSeq, readDataSeq: val.dataSeq,
      dataDirty: false, deleted: false });
    return val;
  }

  /** Like inode() but a missing inode is ENOENT (a stale entry or handle). */
  async mustInode(ino: bigint, mode: LockMode = LockMode.READ): Promise<InodeValue> {
    const v = await this.inode(ino, mode);
    if (v === null) throw new FsError("ENOENT", `inode ${ino} does not exist`);
    return v;
  }

  /**
   * EIO if ino already has an inode item. The first new inode of a group (per runner, see
   * warmGroup) is read through the item cache, which fills the rest of the group from ino on,
   * so the items of this and of every later inode handed out there stay cached after commits
   * (a committed item outside the cache's complete ranges leaves it, and a cold stat of a new
   * file then read it back). Later ones only look in the cache: under cache pressure a fill
   * per create would read the forest again and again.
   */
  async checkNew(ino: bigint): Promise<void> {
    const held = this.need(ino, LockMode.WRITE);
    const key = inodeKey(ino);
    const exists = this.warmGroup(inodeGroupFirst(ino)) ?
      await this.client.lookupLocked(held, key) !== null :
      this.client.items.get(key).kind === "hit";
    if (exists) throw new FsError("EIO", `inode ${ino} handed out for a new inode already exists`);
  }

  /** A new inode's value: written (with fresh index items) by apply(). */
  newInode(ino: bigint, val: InodeValue): void {
    this.need(ino, LockMode.WRITE);
    assert(!this.inodes.has(ino), "new inode already read in this operation");
    this.inodes.set(ino, { val, dirty: true, readMetaSeq: 0n, readDataSeq: 0n,
      dataDirty: isReg(val.mode), deleted: false });
  }

  /** Marks an inode read with inode() as changed: apply() writes it and its index items. */
  dirty(ino: bigint): InodeValue {
    this.need(ino, LockMode.WRITE);
    const st = this.inodes.get(ino);
    assert(st !== undefined && !st.deleted, "dirtied inode was read first");
    st.dirty = true;
    return st.val;
  }

  /** The inode's data (contents or size) changed: its data_seq moves too. */
  dataChanged(ino: bigint): void {
    this.dirty(ino);
    this.inodes.get(ino)!.dataDirty = true;
  }

  /** Deletes the inode item and its index items (the last step of inode deletion). */
  deleteInode(ino: bigint): void {
    this.need(ino, LockMode.WRITE);
    const st = this.inodes.get(ino);
    assert(st !== undefined, "deleted inode was read first");
    st.deleted = true;
  }

  /** An item of a locked inode group (cached read). */
  async lookup(key: Buffer, ino: bigint): Promise<Buffer | null> {
    return this.client.lookupLocked(this.need(ino), key);
  }

  /** The first item in [key, end] (both in the group of ino). */
  async next(key: Buffer, end: Buffer, ino: bigint): Promise<KeyVal | null> {
    return this.client.nextLocked(this.need(ino), key, end);
  }

  /**
   * The value of each item of [start, end] (both in the group of ino) to fn while it
   * returns true; fn gets the cache's buffer, valid only during the call (scanLocked).
   */
  async scan(start: Buffer, end: Buffer, ino: bigint, fn: (val: Buffer) => boolean):
    Promise<void> {
    return this.client.scanLocked(this.need(ino), start, end, fn);
  }

  /** Up to limit items of [start, end] (both in the group of ino). */
  async range(start: Buffer, end: Buffer, ino: bigint, limit: number): Promise<KeyVal[]> {
    return this.client.rangeLocked(this.need(ino), start, end, limit);
  }

  /** Records a new version of key; the operation takes key and val over (not copied). */
  put(key: Buffer, val: Buffer, ino: bigint): void {
    this.need(ino, LockMode.WRITE);
    this.addWrite({ put: true, key, val });
  }

  del(key: Buffer, ino: bigint): void {
    this.need(ino, LockMode.WRITE);
    this.addWrite({ put: false, key });
  }

  /** Adds (nlink reached 0) or removes (deleted, or relinked) the inode's orphan item. */
  orphan(ino: bigint, add: boolean): void {
    this.need(ino, LockMode.WRITE);
    this.orphans.push({ ino, add });
  }

  /**
   * fn runs once when this run ends: right after apply(), in its synchronous step (applied),
   * or when the run is abandoned (more locks needed, a commit first, an error). Data
   * operations settle their allocations and release their transaction hold here.
   */
  onEnd(fn: (applied: boolean) => void): void {
    this.endHooks.push(fn);
  }

  /** Runs the end hooks (the runner calls it once per run, before unlocking). */
  end(): void {
    for (const fn of this.endHooks.splice(0)) fn(this.applied);
  }

  get writeCount(): number {
    return this.writes.length + this.inodes.size * 3 + this.orphans.length;
  }

  private addWrite(w: Write): void {
    if (this.writes.length >= OP_MAX_WRITES) throw new FsError("E2BIG", "operation too large");
    this.writes.push(w);
  }

  /**
   * The write phase: synchronous from start to end (see the file comment). Inode items get
   * the open transaction's seq as meta_seq (and data_seq when dataChanged() was called).
   */
  apply(): void {
    const c = this.client;
    const transSeq = BigInt(c.transSeq);
    for (const w of this.writes) {
      const held = this.handle.covering(w.key);
      assert(held !== undefined && held.mode === LockMode.WRITE, "write under a held WRITE lock");
      // recorded buffers are the operation's own (put/del): handed over, not copied
      if (w.put) c.putLocked(held, w.key, w.val, true);
      else c.deleteLocked(held, w.key, true);
    }
    for (const [ino, st] of this.inodes) {
      if (st.dirty || st.deleted) this.applyInode(ino, st, transSeq);
    }
    for (const o of this.orphans) {
      const seq = lockItemSeq(this.need(o.ino, LockMode.WRITE), c.transSeq);
      if (o.add) c.put(orphanKey(o.ino), EMPTY, seq, true);
      else c.delete(orphanKey(o.ino), seq, true);
    }
    this.applied = true;
  }

  private applyInode(ino: bigint, st: InodeState, transSeq: bigint): void {
    const c = this.client;
    const held = this.need(ino, LockMode.WRITE);
    const seq = lockItemSeq(held, c.transSeq);
    const reg = isReg(st.val.mode);
    // the index items of the version read go; the new version's come (upstream
    // scoutfs_update_inode_item moves them when the seq changes)
    if (st.readMetaSeq !== 0n && (st.deleted || st.readMetaSeq !== transSeq)) {
      c.delete(metaSeqKey(st.readMetaSeq, ino), seq, true);
    }
    const dataChanged = st.dataDirty;
    if (reg && st.readDataSeq !== 0n && (st.deleted || (dataChanged && st.readDataSeq !== transSeq))) {
      c.delete(dataSeqKey(st.readDataSeq, ino), seq, true);
    }
    if (st.deleted) {
      c.deleteLocked(held, inodeKey(ino), true);
      return;
    }
    st.val.metaSeq = transSeq;
    if (dataChanged) st.val.dataSeq = transSeq;
    st.val.version += 1n;
    c.put(metaSeqKey(transSeq, ino), EMPTY, seq, true);
    if (reg && dataChanged) c.put(dataSeqKey(transSeq, ino), EMPTY, seq, true);
    c.putLocked(held, inodeKey(ino), encodeInode(st.val, this.fmtVers), true);
  }
}

/** Runs operation bodies under their locks (one per mount). */
export class OpRunner {
  private readonly local = new KeyedMutex();
  private readonly ranges = new Map<bigint, LockRange>();
  /** Inode groups a new inode was read through the cache in (OpCtx.checkNew), bounded. */
  private readonly warmed = new Set<bigint>();
  private readonly warmGroup = (group: bigint): boolean => {
    if (this.warmed.has(group)) return false;
    if (this.warmed.size >= GROUP_RANGES_CACHED) this.warmed.clear();
    this.warmed.add(group);
    return true;
  };
  /** The ACL layer every operation gets (ScoutFs sets it when the acl option is on). */
  acl: AclHooks | null = null;

  constructor(readonly client: MountClient, readonly fmtVers: number) {}

  /** inodeGroupRange(first), memoized: two keys built per group per operation otherwise. */
  private groupRange(first: bigint): LockRange {
    let r = this.ranges.get(first);
    if (r === undefined) {
      if (this.ranges.size >= GROUP_RANGES_CACHED) this.ranges.clear();
      r = inodeGroupRange(first);
      this.ranges.set(first, r);
    }
    return r;
  }

  /**
   * The inode's value as the item cache holds it at this instant, without locking: null if
   * known absent, undefined when the cache cannot tell (its group's lock is not granted for
   * reading, or the item is not cached). While the grant lasts the cache is current: a
   * change by another mount first revokes the grant, which drops the cached items. Only for
   * decisions that the next locked operation re-checks anyway.
   */
  peekInode(ino: bigint): InodeValue | null | undefined {
    const key = inodeKey(ino);
    const granted = this.client.locks.grantedModeAt(key);
    if (granted !== LockMode.READ && granted !== LockMode.WRITE) return undefined;
    const got = this.client.items.get(key);
    if (got.kind === "miss") return undefined;
    return got.kind === "negative" ? null : decodeInode(got.val, this.fmtVers);
  }

  /**
   * Runs body until it completes without needing more locks. Write operations (any inode
   * wanted in WRITE) apply their writes at the end; a read-only body must not record any.
   */
  async run<T>(spec: OpSpec, body: (ctx: OpCtx) => Promise<T>): Promise<T> {
    const want = new Map(spec.inos);
    for (let attempt = 0; attempt < OP_MAX_ATTEMPTS; attempt++) {
      const r = await this.attempt(want, spec.rename === true, body);
      if (r.done) return r.value;
      for (const [ino, mode] of r.more) {
        if (want.get(ino) !== LockMode.WRITE) want.set(ino, mode);
      }
    }
    throw new FsError("EAGAIN", "operation kept discovering inodes to lock");
  }

  private async attempt<T>(want: ReadonlyMap<bigint, LockMode>, rename: boolean,
    body: (ctx: OpCtx) => Promise<T>):
    Promise<{ done: true; value: T } | { done: false; more: ReadonlyMap<bigint, LockMode> }> {
    const groups = groupModes(want);
    const writeKeys = [...groups].filter(([, m]) => m === LockMode.WRITE)
      .map(([g]) => `g${g.toString(16).padStart(16, "0")}`);
    if (rename) writeKeys.unshift("rename");
    const releaseLocal = writeKeys.length === 0 ? noRelease : await this.local.lockAll(writeKeys);
    try {
      const reqs: { range: LockRange; mode: LockMode }[] = [...groups].map(([g, mode]) =>
        ({ range: this.groupRange(g), mode }));
      if (rename) reqs.push({ range: renameRange(), mode: LockMode.WRITE });
      const handle = await this.client.locks.lockEach(reqs);
      let value: T;
      let full = false;
      let ctx: OpCtx | null = null;
      try {
        ctx = new OpCtx(this.client, handle, groups, this.fmtVers, this.acl, this.warmGroup);
        value = await body(ctx);
        // too full to take this operation's items: commit, then run it again
        if (ctx.writeCount > 0 && this.client.dirtyCount > OP_COMMIT_THRESHOLD) full = true;
        else if (ctx.writeCount > 0) ctx.apply();
      } catch (e) {
        if (e instanceof NeedLocks) return { done: false, more: e.inos };
        throw e;
      } finally {
        ctx?.end();
        this.client.locks.unlock(handle);
      }
      if (!full) return { done: true, value };
      releaseLocal();
      await this.client.commit();
      return { done: false, more: new Map() };
    } finally {
      releaseLocal();
    }
  }
}

const EMPTY = Buffer.alloc(0);

/** Read-only operations take no local mutex. */
const noRelease = (): void => undefined;

/** The mode of each inode group: WRITE if any of its inodes is wanted in WRITE. */
function groupModes(want: ReadonlyMap<bigint, LockMode>): Map<bigint, LockMode> {
  const g = new Map<bigint, LockMode>();
  for (const [ino, mode] of want) {
    const first = inodeGroupFirst(ino);
    if (g.get(first) !== LockMode.WRITE) g.set(first, mode);
  }
  return g;
}

/** Shorthand for an OpSpec's inode map. */
export function inos(...pairs: [bigint, LockMode][]): Map<bigint, LockMode> {
  const m = new Map<bigint, LockMode>();
  for (const [ino, mode] of pairs) if (m.get(ino) !== LockMode.WRITE) m.set(ino, mode);
  return m;
}
