// `copy-before-write` (block/copy-before-write.c, QEMU 7.0+ fleecing; docs/requirements/qemu-fleecing.md §2.3).
// Children: `file` (the source, filtered: guest I/O passes through) and `target` (where old data
// is copied). Before a guest write, write-zeroes or discard reaches the source, the old data of
// the touched clusters is copied to the target, the done bitmap is set, and the write waits for
// every snapshot read still reading those clusters from the source (frozen_read_reqs).
//
// Snapshot API, used by snapshot-access: reads of done clusters come from the target, others
// from the source while registered as frozen reads; inaccessible clusters (outside `bitmap`,
// snapshot-discarded, or the snapshot broken by a CBW error) fail with EACCES, never data.
//
// Known-bad option, UNSAFE, for tests only: `x-hbitmap-status-bug` restores QEMU 7.2's
// hbitmap_status bug (findings F1/F3, conformance/fleecing/README.md): the done prefix of a
// snapshot read that reaches a not-done cluster is read from the source, which the guest may
// already have overwritten.
// `x-no-frozen-read-wait` (UNSAFE, for tests only) drops the guest write's wait for frozen
// snapshot reads (reqlist_wait_all on frozen_read_reqs in cbw_do_copy_before_write) on every
// path, the failed-copy and broken-snapshot ones included: a snapshot read still reading a
// cluster from the source can then return the data the guest write lands. The interleavings
// suite's blocking check shows it (target reference-no-read-wait).
// `x-no-copy-reset` (UNSAFE, for tests only) skips block_copy_reset in a snapshot discard: the
// discarded clusters keep their copy duty, so a later guest write still copies them into the
// temp (which the discard just freed). Snapshot reads cannot tell (access is dropped); the temp
// can, and fleecing/discard/aligned looks at it.
// `x-copy-error-eio` (UNSAFE, for tests only) reports every failed copy as EIO instead of the
// target's own error, so under break-guest-write a temp out of space (ENOSPC) reaches the guest
// as a generic I/O error (fleecing/cbw-error/break-guest-write-enospc).
import { ClusterBitmap } from '../bitmap.ts';
import { BlockCopyState } from '../block-copy.ts';
import { BlockError } from '../errors.ts';
import { BlockNode, type BdrvChild } from '../node.ts';
import { filterDefaultPerms, PERM, PERM_ALL, type PermPair } from '../perm.ts';
import { RangeList } from '../reqlist.ts';
import { extentHasData, type Extent, type RequestFlags } from '../types.ts';
import type { DriverContext } from './registry.ts';

export type OnCbwError = 'break-guest-write' | 'break-snapshot';

/** bdrv_chain_contains: is `base` reachable from `top` through backing or filtered children? */
export function chainContains(top: BlockNode, base: BlockNode): boolean {
  for (let n: BlockNode | undefined = top; n; n = (n.backing() ?? n.filtered())?.node) {
    if (n === base) return true;
  }
  return false;
}

export class CopyBeforeWriteNode extends BlockNode {
  readonly bcs: BlockCopyState;
  readonly onCbwError: OnCbwError;
  /** cbw-timeout in milliseconds, 0 = none (QEMU takes whole seconds). */
  readonly cbwTimeoutMs: number;
  readonly accessBitmap: ClusterBitmap;
  readonly doneBitmap: ClusterBitmap;
  /** Snapshot reads in flight that read from the source (frozen_read_reqs). */
  readonly frozenReadReqs = new RangeList();
  /** Snapshot reads in flight that read from the target. QEMU does not track these; we do, so a
   * snapshot discard never punches the target under a reader (a hazard the spec's
   * "discard without tracking readers" variant shows). */
  readonly targetReadReqs = new RangeList();
  /** UNSAFE `x-hbitmap-status-bug`: QEMU 7.2's done-bitmap query (see snapshotReadLock). */
  readonly hbitmapStatusBug: boolean;
  /** UNSAFE `x-no-frozen-read-wait`: guest writes do not wait for frozen snapshot reads. */
  readonly noFrozenReadWait: boolean;
  /** UNSAFE `x-no-copy-reset`: a snapshot discard leaves its clusters to be copied. */
  readonly noCopyReset: boolean;
  /** UNSAFE `x-copy-error-eio`: a failed copy is EIO whatever the target said. */
  readonly copyErrorEio: boolean;
  snapshotError: BlockError | undefined;
  /** Copies that timed out but still run (B5): close waits for them. */
  private readonly orphanedCopies = new Set<Promise<void>>();

  constructor(ctx: DriverContext) {
    super(ctx.nodeName, 'copy-before-write', ctx.common);
    const o = ctx.opts;
    ctx.addChild(this, 'file', 'filtered', true);
    ctx.addChild(this, 'target', 'data', true);
    this.onCbwError = o.enumeration('on-cbw-error', ['break-guest-write', 'break-snapshot'] as const, 'break-guest-write');
    this.cbwTimeoutMs = o.number('cbw-timeout', 0) * 1000;
    const unserialized = o.bool('x-unserialized-target-writes', false);
    this.hbitmapStatusBug = o.bool('x-hbitmap-status-bug', false);
    this.noFrozenReadWait = o.bool('x-no-frozen-read-wait', false);
    this.noCopyReset = o.bool('x-no-copy-reset', false);
    this.copyErrorEio = o.bool('x-copy-error-eio', false);
    const clusterSize = Math.max(65536, this.target.node.clusterSize());
    const length = this.file.node.length();
    if (this.target.node.length() < length) {
      throw new BlockError('EINVAL', `copy-before-write '${ctx.nodeName}': target '${this.target.node.nodeName}' (${this.target.node.length()} bytes) is smaller than source '${this.file.node.nodeName}' (${length} bytes)`, { node: ctx.nodeName });
    }
    let initial: ClusterBitmap | undefined;
    const bitmapRef = o.raw('bitmap');
    if (bitmapRef !== undefined) initial = this.copyUserBitmap(ctx, bitmapRef, length, clusterSize);
    this.bcs = new BlockCopyState(this.file, this.target, {
      clusterSize,
      // block_copy_state_new: is_fleecing = bdrv_chain_contains(target, source).
      serialisingTargetWrites: !unserialized && chainContains(this.target.node, this.file.node),
      breakpoints: this.breakpoints,
      nodeName: ctx.nodeName,
      ...(initial ? { initialBitmap: initial } : {}),
    });
    this.accessBitmap = this.bcs.copyBitmap.clone();
    this.doneBitmap = new ClusterBitmap(length, clusterSize);
  }

  /** cbw takes a copy of the user bitmap at open; later changes to it do not matter. */
  private copyUserBitmap(ctx: DriverContext, ref: unknown, length: number, clusterSize: number): ClusterBitmap {
    const r = ref as { node?: unknown; name?: unknown };
    if (typeof ref !== 'object' || ref === null || typeof r.node !== 'string' || typeof r.name !== 'string') {
      throw new BlockError('EINVAL', `copy-before-write '${ctx.nodeName}': 'bitmap' expects {node, name}, got ${JSON.stringify(ref)}`);
    }
    const node = ctx.graph.node(r.node);
    if (!node) throw new BlockError('ENOENT', `Cannot find node-name '${r.node}' (bitmap of '${ctx.nodeName}')`);
    const user = node.dirtyBitmaps.get(r.name);
    if (!user) throw new BlockError('ENOENT', `Dirty bitmap '${r.name}' not found on node '${r.node}'`);
    const b = new ClusterBitmap(length, clusterSize);
    for (let c = 0; c < user.clusters; c++) {
      if (user.get(c)) b.setRange(c * user.granularity, user.granularity, true);
    }
    return b;
  }

  get file(): BdrvChild {
    return this.children.find((c) => c.name === 'file')!;
  }

  get target(): BdrvChild {
    return this.children.find((c) => c.name === 'target')!;
  }

  length(): number {
    return this.file.node.length();
  }

  override clusterSize(): number {
    return this.file.node.clusterSize();
  }

  /** cbw_child_perm. The target is written only by us; the source is held with consistent-read
   * and WRITE/RESIZE unshared whenever cbw has any parent: QEMU 9.1's form (bug B2 fixed; 7.2
   * added consistent-read only for a writing parent). Same result on every measured graph. */
  childPerm(child: BdrvChild, perm: number, shared: number): PermPair {
    if (child.role !== 'filtered') return { perm: PERM.WRITE, shared: PERM_ALL & ~PERM.RESIZE };
    const p = filterDefaultPerms(perm, shared);
    if (this.parents.length === 0) return p;
    return { perm: p.perm | PERM.CONSISTENT_READ, shared: p.shared & ~(PERM.WRITE | PERM.RESIZE) };
  }

  // ---- guest path ----------------------------------------------------------------------------

  /** cbw_do_copy_before_write */
  private async copyBeforeWrite(offset: number, bytes: number, flags: RequestFlags): Promise<void> {
    if (flags.writeUnchanged) return;
    const cl = this.bcs.clusterSize;
    const start = Math.floor(offset / cl) * cl;
    const end = Math.min(Math.ceil((offset + bytes) / cl) * cl, this.length());
    if (this.snapshotError) {
      // QEMU returns at once here. But a snapshot read that locked before the error may still
      // be reading these clusters from the source: without this wait it returns the data this
      // write is about to land (post-snapshot data from a successful read). Waiting costs
      // nothing once no reader is left (later reads fail with EACCES at lock time).
      if (this.breakpoints.armed) await this.breakpoints.reach('cbw-wait-readers', this.nodeName, offset, bytes);
      await this.waitFrozenReads(start, end);
      return;
    }
    let failed: BlockError | undefined;
    try {
      await this.withTimeout(this.bcs.copy(start, end - start), start, end);
    } catch (e) {
      failed = e instanceof BlockError && !this.copyErrorEio ? e : new BlockError('EIO', String(e));
      if (this.onCbwError === 'break-guest-write') {
        throw new BlockError(failed.errno, `copy-before-write '${this.nodeName}' failed, guest write refused: ${failed.message}`, {
          node: this.nodeName, op: 'copy-before-write', offset: start, bytes: end - start,
        });
      }
      this.snapshotError ??= failed;
    }
    // Under cbw's lock in QEMU; synchronous here, which makes it atomic against snapshot reads.
    if (!failed) this.doneBitmap.setRange(start, end - start, true);
    const bp = this.breakpoints;
    if (bp.armed) {
      // The guest request's own range (not its clusters'), so a breakpoint filter tells apart two
      // requests into one cluster (block-copy's task events are per cluster).
      if (!failed) await bp.reach('cbw-done-set', this.nodeName, offset, bytes);
      await bp.reach('cbw-wait-readers', this.nodeName, offset, bytes);
    }
    await this.waitFrozenReads(start, end);
  }

  /** reqlist_wait_all(&s->frozen_read_reqs, ...): the guest write goes on only once no snapshot
   * read is reading [start, end) from the source. */
  private async waitFrozenReads(start: number, end: number): Promise<void> {
    if (this.noFrozenReadWait) return;
    await this.frozenReadReqs.waitAll(start, end - start);
  }

  private withTimeout(p: Promise<void>, start: number, end: number): Promise<void> {
    if (this.cbwTimeoutMs <= 0) return p;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const orphan = p.catch(() => undefined).finally(() => this.orphanedCopies.delete(orphan));
        this.orphanedCopies.add(orphan);
        reject(new BlockError('ETIMEDOUT', `copy-before-write of [${start}, ${end}) timed out after ${this.cbwTimeoutMs} ms`, {
          node: this.nodeName, op: 'copy-before-write', offset: start, bytes: end - start,
        }));
      }, this.cbwTimeoutMs);
      p.then(
        () => { clearTimeout(timer); resolve(); },
        (e: unknown) => { clearTimeout(timer); reject(e); },
      );
    });
  }

  protected coRead(offset: number, bytes: number, flags: RequestFlags): Promise<Buffer> {
    return this.file.read(offset, bytes, flags);
  }

  protected async coWrite(offset: number, data: Buffer, flags: RequestFlags): Promise<void> {
    await this.copyBeforeWrite(offset, data.length, flags);
    if (this.breakpoints.armed) await this.breakpoints.reach('cbw-source-write', this.nodeName, offset, data.length);
    await this.file.write(offset, data, flags);
  }

  protected override async coWriteZeroes(offset: number, bytes: number, flags: RequestFlags): Promise<void> {
    await this.copyBeforeWrite(offset, bytes, flags);
    if (this.breakpoints.armed) await this.breakpoints.reach('cbw-source-write', this.nodeName, offset, bytes);
    await this.file.writeZeroes(offset, bytes, flags);
  }

  protected override async coDiscard(offset: number, bytes: number): Promise<void> {
    await this.copyBeforeWrite(offset, bytes, {});
    if (this.breakpoints.armed) await this.breakpoints.reach('cbw-source-write', this.nodeName, offset, bytes);
    await this.file.discard(offset, bytes);
  }

  protected override coBlockStatus(offset: number, bytes: number): Promise<Extent> {
    return this.file.blockStatus(offset, bytes);
  }

  // ---- snapshot API (bdrv_co_preadv_snapshot and friends) -------------------------------------

  private inaccessible(offset: number, bytes: number, op: string): BlockError | undefined {
    const ctx = { node: this.nodeName, op, offset, bytes };
    if (this.snapshotError) {
      return new BlockError('EACCES', `snapshot of '${this.nodeName}' is broken by an earlier copy-before-write error (${this.snapshotError.message})`, ctx);
    }
    if (!this.accessBitmap.allSet(offset, bytes)) {
      return new BlockError('EACCES', `snapshot of '${this.nodeName}' is not accessible in [${offset}, ${offset + bytes}) (outside the bitmap or discarded)`, ctx);
    }
    return undefined;
  }

  /** cbw_snapshot_read_lock: decide where the next prefix is read from, and register the read. */
  private snapshotReadLock(offset: number, bytes: number, op: string) {
    const err = this.inaccessible(offset, bytes, op);
    if (err) throw err;
    let st = this.doneBitmap.status(offset, bytes);
    // x-hbitmap-status-bug: QEMU 7.2's hbitmap_status (util/hbitmap.c) returns the right length
    // but "not done" for a done prefix that stops at a not-done cluster inside the range (fixed
    // in 8.0 by "hbitmap: fix hbitmap_status() return value for first dirty bit case").
    if (this.hbitmapStatusBug && st.set && st.bytes < bytes) st = { set: false, bytes: st.bytes };
    const list = st.set ? this.targetReadReqs : this.frozenReadReqs;
    const req = list.add(offset, st.bytes);
    return { fromTarget: st.set, bytes: st.bytes, unlock: () => list.remove(req) };
  }

  async snapshotRead(offset: number, bytes: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (let pos = offset; pos < offset + bytes; ) {
      const lock = this.snapshotReadLock(pos, offset + bytes - pos, 'snapshot-read');
      try {
        const bp = this.breakpoints;
        if (bp.armed) await bp.reach('snapshot-read-lock', this.nodeName, pos, lock.bytes);
        const child = lock.fromTarget ? this.target : this.file;
        parts.push(await child.read(pos, lock.bytes));
        if (bp.armed) await bp.reach('snapshot-read-unlock', this.nodeName, pos, lock.bytes);
      } finally {
        lock.unlock();
      }
      pos += lock.bytes;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  /** cbw_co_snapshot_block_status: one extent at `offset`; target areas report allocated. */
  async snapshotBlockStatus(offset: number, bytes: number): Promise<Extent> {
    const lock = this.snapshotReadLock(offset, bytes, 'snapshot-block-status');
    try {
      const child = lock.fromTarget ? this.target : this.file;
      const ext = await child.blockStatus(offset, lock.bytes);
      const allocated = lock.fromTarget || ext.allocated;
      const data = lock.fromTarget || extentHasData(ext);
      return { offset, length: Math.min(ext.length, lock.bytes), allocated, zero: ext.zero, ...(data !== allocated ? { data } : {}) };
    } finally {
      lock.unlock();
    }
  }

  /** cbw_co_pdiscard_snapshot, 9.1 semantics: shrink inward to whole clusters (a discard covering
   * no whole cluster is a no-op; QEMU 7.2 aborts here, bug B1), drop access, stop copying, and
   * free the target range once no snapshot read is reading it. */
  async snapshotDiscard(offset: number, bytes: number): Promise<void> {
    const cl = this.bcs.clusterSize;
    const len = this.length();
    const start = Math.ceil(offset / cl) * cl;
    const end = offset + bytes >= len ? len : Math.floor((offset + bytes) / cl) * cl;
    if (end <= start) return;
    this.accessBitmap.setRange(start, end - start, false);
    if (!this.noCopyReset) this.bcs.reset(start, end - start);
    const bp = this.breakpoints;
    if (bp.armed) await bp.reach('snapshot-discard-wait', this.nodeName, start, end - start);
    await this.targetReadReqs.waitAll(start, end - start);
    if (bp.armed) await bp.reach('snapshot-discard-target', this.nodeName, start, end - start);
    await this.target.discard(start, end - start);
  }

  override async close(): Promise<void> {
    await Promise.all([...this.orphanedCopies]);
  }
}
