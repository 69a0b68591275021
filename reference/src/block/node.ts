// The block node contract, in the spirit of QEMU's BlockDriver and nbdkit's filters: every driver
// is one module subclassing BlockNode and implementing the same small set of operations
// (co* methods) plus its child-permission rule. The public methods here are the generic layer of
// block/io.c: bounds checks, tracked requests and the serialising wait rules, dirty bitmaps.
import { DirtyBitmap } from './dirty-bitmap.ts';
import type { Breakpoints } from './breakpoints.ts';
import type { StorageIdentity } from './storage.ts';
import { BlockError } from './errors.ts';
import { filterDefaultPerms, PERM, PERM_ALL, permNames, type ChildRole, type PermPair } from './perm.ts';
import { TrackedRequests, type TrackedRequestType } from './tracked-requests.ts';
import type { Extent, RequestFlags } from './types.ts';

/** Who holds an edge: a node, or a root user (export, job, device): BdrvChildClass's parent. */
export interface Parent {
  /** For conflict messages: "node 'fl-cbw'", "an unnamed block device", "backup job 'j0'". */
  describe(): string;
}

/** An edge parent -> child node (BdrvChild) with the permissions the parent holds on it. */
export class BdrvChild {
  perm = 0;
  shared = PERM_ALL;

  constructor(
    readonly parent: Parent,
    /** Child name as QEMU shows it: file, backing, target, image, root. */
    readonly name: string,
    readonly role: ChildRole,
    public node: BlockNode,
  ) {}

  private need(bits: number, op: string, offset: number, bytes: number): void {
    if ((this.perm & bits) === 0) {
      // QEMU asserts this (bdrv_co_write_req_prepare); a clear error serves a test better.
      throw new BlockError(
        'EPERM',
        `${this.parent.describe()} does ${op} on node '${this.node.nodeName}' through its '${this.name}' child without permission '${permNames(bits)}'`,
        { node: this.node.nodeName, op, offset, bytes },
      );
    }
  }

  read(offset: number, bytes: number, flags: RequestFlags = {}): Promise<Buffer> {
    // BlockNode.read is async: it rejects, never throws, so no async wrapper is needed here.
    return this.node.read(offset, bytes, flags);
  }

  async write(offset: number, data: Buffer, flags: RequestFlags = {}): Promise<void> {
    this.need(flags.writeUnchanged ? PERM.WRITE | PERM.WRITE_UNCHANGED : PERM.WRITE, 'write', offset, data.length);
    // A write past the end grows a growable node, which takes RESIZE (bdrv_co_write_req_prepare).
    if (offset + data.length > this.node.length()) this.need(PERM.RESIZE, 'write past the end', offset, data.length);
    return this.node.write(offset, data, flags);
  }

  async writeZeroes(offset: number, bytes: number, flags: RequestFlags = {}): Promise<void> {
    this.need(PERM.WRITE, 'write-zeroes', offset, bytes);
    return this.node.writeZeroes(offset, bytes, flags);
  }

  async discard(offset: number, bytes: number): Promise<void> {
    this.need(PERM.WRITE, 'discard', offset, bytes);
    return this.node.discard(offset, bytes);
  }

  flush(): Promise<void> {
    return this.node.flush();
  }

  async blockStatus(offset: number, bytes: number): Promise<Extent> {
    return this.node.blockStatusAbove(offset, bytes);
  }
}

export interface NodeCommonOptions {
  readonly readOnly: boolean;
  /** The graph's breakpoint registry (x-breakpoint-* in QMP). */
  readonly breakpoints: Breakpoints;
  /** discard=unmap: pass discards down; with discard=ignore they succeed and do nothing (B8). */
  readonly discardUnmap: boolean;
  /** force-share=on (read-only nodes only): every parent shares all permissions on it. */
  readonly forceShare?: boolean;
  /** detect-zeroes: a write of zeroes becomes a write-zeroes (unmap: one that may unmap). */
  readonly detectZeroes?: 'off' | 'on' | 'unmap';
  /** cache.no-flush=on: flush skips this node's own flush (its children are still flushed). */
  readonly noFlush?: boolean;
  /** cache.direct: accepted, no effect (no O_DIRECT from Node). */
  readonly cacheDirect?: boolean;
}

export const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

/** buffer_is_zero. */
export function isZero(data: Buffer): boolean {
  for (let done = 0; done < data.length; done += ZERO_CHUNK.length) {
    const n = Math.min(ZERO_CHUNK.length, data.length - done);
    if (!data.subarray(done, done + n).equals(ZERO_CHUNK.subarray(0, n))) return false;
  }
  return true;
}

/**
 * Reusable buffers for large reads. A freshly allocated 256 KiB buffer costs a page-faulting,
 * cache-cold copy in pread and, at NBD rates, a major GC every few hundred MiB of external memory;
 * a buffer that was just sent is warm. Drivers that read into memory they allocate (`file`) take
 * from here; the final consumer (the NBD session, once the reply is written) gives it back. Only
 * buffers this pool lent out (the same object, not a view of it) are taken back, each once, so a
 * consumer may offer any buffer: one a driver built itself or kept is never recycled.
 */
export class ReadBufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private readonly lent = new WeakSet<Buffer>();
  private pooledBytes = 0;

  constructor(
    /** Smaller reads allocate normally (Node's own slab covers tiny ones; copies are cheap). */
    readonly minSize = 64 * 1024,
    readonly maxSize = 4 * 1024 * 1024,
    /** Bytes kept on the free lists at most. */
    readonly capacity = 32 * 1024 * 1024,
  ) {}

  /** An uninitialised buffer of exactly `size` bytes. */
  take(size: number): Buffer {
    if (size < this.minSize || size > this.maxSize) return Buffer.allocUnsafe(size);
    const list = this.free.get(size);
    let buf = list?.pop();
    if (buf) this.pooledBytes -= size;
    else buf = Buffer.allocUnsafe(size);
    this.lent.add(buf);
    return buf;
  }

  /** Returns a buffer from take() once nothing references it any more; others are ignored. */
  give(buf: Buffer): void {
    if (!this.lent.delete(buf)) return;
    if (this.pooledBytes + buf.length > this.capacity) return;
    let list = this.free.get(buf.length);
    if (!list) this.free.set(buf.length, (list = []));
    list.push(buf);
    this.pooledBytes += buf.length;
  }
}

export const readBuffers = new ReadBufferPool();

/** WRITE payloads of 1-32 MiB, reused once the write they carried has completed: a fresh buffer
 * of that size is new anonymous memory the kernel faults in and zeroes on every request, which
 * cost a 32 MiB WRITE several milliseconds and made its time vary. The NBD session gives a payload
 * back only after a successful write: by then no driver holds it (every write path awaits its
 * children, memory copies). */
export const writeBuffers = new ReadBufferPool(1024 * 1024, 32 * 1024 * 1024, 64 * 1024 * 1024);

export abstract class BlockNode implements Parent {
  readonly children: BdrvChild[] = [];
  /** Newest first, as QLIST_INSERT_HEAD leaves bs->parents; conflict messages depend on order. */
  readonly parents: BdrvChild[] = [];
  readonly tracked = new TrackedRequests();
  readonly dirtyBitmaps = new Map<string, DirtyBitmap>();
  /** UNSAFE (backup's x-drop-dirty-writes, known bad): while above 0, writes mark no bitmap. */
  dirtyTrackingSuppressed = 0;
  readonly readOnly: boolean;
  readonly discardUnmap: boolean;
  readonly forceShare: boolean;
  readonly detectZeroes: 'off' | 'on' | 'unmap';
  readonly noFlush: boolean;
  readonly breakpoints: Breakpoints;

  constructor(
    readonly nodeName: string,
    readonly driver: string,
    common: NodeCommonOptions,
  ) {
    this.readOnly = common.readOnly;
    this.discardUnmap = common.discardUnmap;
    this.forceShare = common.forceShare ?? false;
    this.detectZeroes = common.detectZeroes ?? 'off';
    this.noFlush = common.noFlush ?? false;
    this.breakpoints = common.breakpoints;
  }

  describe(): string {
    return `node '${this.nodeName}'`;
  }

  // ---- the driver contract -------------------------------------------------------------------

  abstract length(): number;
  protected abstract coRead(offset: number, bytes: number, flags: RequestFlags): Promise<Buffer>;
  protected abstract coWrite(offset: number, data: Buffer, flags: RequestFlags): Promise<void>;
  /** Child permissions from this node's cumulative (perm, shared): .bdrv_child_perm. */
  abstract childPerm(child: BdrvChild, perm: number, shared: number): PermPair;

  /** Default: write zero buffers (the generic fallback of bdrv_co_do_pwrite_zeroes). */
  protected async coWriteZeroes(offset: number, bytes: number, flags: RequestFlags): Promise<void> {
    if (flags.fastZero) {
      throw new BlockError('ENOTSUP', `node '${this.nodeName}' cannot write zeroes fast`, { node: this.nodeName, offset, bytes });
    }
    for (let done = 0; done < bytes; ) {
      const n = Math.min(ZERO_CHUNK.length, bytes - done);
      await this.coWrite(offset + done, ZERO_CHUNK.subarray(0, n), { fua: flags.fua });
      done += n;
    }
  }

  /** Default: discard is advisory, nothing to do. */
  protected async coDiscard(_offset: number, _bytes: number): Promise<void> {}

  protected async coFlush(): Promise<void> {
    for (const c of this.children) if (c.perm & PERM.WRITE) await c.flush();
  }

  /** One extent starting at `offset`, at most `bytes` long. Default: all data, allocated here. */
  protected async coBlockStatus(offset: number, bytes: number): Promise<Extent> {
    return { offset, length: bytes, allocated: true, zero: false };
  }

  /** Alignment for serialising requests (bdrv_get_cluster_size: cluster size or
   * request_alignment). */
  clusterSize(): number {
    return 1;
  }

  /** The child a read falls through to when this node does not allocate a range (COW). */
  backing(): BdrvChild | undefined {
    return this.children.find((c) => c.role === 'cow');
  }

  /** The filtered child, for filter drivers (bdrv_filter_child). */
  filtered(): BdrvChild | undefined {
    return this.children.find((c) => c.role === 'filtered');
  }

  /** The node's own side of a permission change (.bdrv_check_perm): may refuse the node's new
   * cumulative (perm, shared). Default: nothing to refuse. The file driver locks here. */
  checkPerm(_perm: number, _shared: number): void {}

  /** The change committed (.bdrv_set_perm). */
  setPerm(_perm: number, _shared: number): void {}

  /** The change abandoned after checkPerm accepted it (.bdrv_abort_perm). */
  abortPerm(): void {}

  async close(): Promise<void> {}

  /** The storage this node opens, for protocol nodes whose storage others can open too (a
   * file); undefined: private storage, or none of its own (storage.ts). */
  storage(): StorageIdentity | undefined {
    return undefined;
  }

  /** Whether a write past the end grows the node (a protocol node: the file a format driver
   * allocates clusters in). Other nodes refuse such writes as past their end. */
  growable(): boolean {
    return false;
  }

  /** A synchronous read for a format driver's open (header, tables), which runs inside the graph
   * transaction; undefined when this node cannot read synchronously. Filters pass it through. */
  readAtOpen(offset: number, bytes: number): Buffer | undefined {
    return this.filtered()?.node.readAtOpen(offset, bytes);
  }

  // ---- the generic layer (block/io.c) --------------------------------------------------------

  private checkRange(op: string, offset: number, bytes: number, grows = false): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset < 0 || bytes < 0) {
      throw new BlockError('EINVAL', `${op} on node '${this.nodeName}': invalid range offset=${offset} bytes=${bytes}`, {
        node: this.nodeName, op, offset, bytes,
      });
    }
    const len = this.length();
    if (offset + bytes > len && !(grows && this.growable())) {
      throw new BlockError('EIO', `${op} on node '${this.nodeName}' past its end: offset=${offset} bytes=${bytes} length=${len}`, {
        node: this.nodeName, op, offset, bytes,
      });
    }
  }

  private async tracked_<T>(
    type: TrackedRequestType,
    offset: number,
    bytes: number,
    flags: RequestFlags,
    body: () => Promise<T>,
  ): Promise<T> {
    this.checkRange(type, offset, bytes, type === 'write');
    const req = this.tracked.begin(type, offset, bytes);
    try {
      if (flags.serialising) req.setSerialising(this.clusterSize());
      // Only a serialising request can make anyone wait; without one in flight, the request goes
      // straight on, as in QEMU, where bdrv_wait_serialising_requests yields only on a conflict.
      if (this.tracked.serialisingInFlight > 0) await req.waitSerialising();
      return await body();
    } finally {
      req.end();
    }
  }

  private writable(op: string, offset: number, bytes: number): void {
    if (this.readOnly) {
      throw new BlockError('EPERM', `${op} on read-only node '${this.nodeName}'`, { node: this.nodeName, op, offset, bytes });
    }
  }

  private markDirty(offset: number, bytes: number): void {
    if (this.dirtyTrackingSuppressed > 0) return;
    // A disabled bitmap records nothing (bdrv_set_dirty skips !bdrv_dirty_bitmap_enabled).
    for (const b of this.dirtyBitmaps.values()) if (b.enabled) b.setRange(offset, bytes, true);
  }

  async read(offset: number, bytes: number, flags: RequestFlags = {}): Promise<Buffer> {
    if (bytes === 0) return Promise.resolve(Buffer.alloc(0));
    return this.tracked_('read', offset, bytes, flags, () => this.coRead(offset, bytes, flags));
  }

  async write(offset: number, data: Buffer, flags: RequestFlags = {}): Promise<void> {
    this.writable('write', offset, data.length);
    if (data.length === 0) return Promise.resolve();
    return this.tracked_('write', offset, data.length, flags, async () => {
      // bdrv_aligned_pwritev: with detect-zeroes, a zero-filled write goes down as write-zeroes
      // (allowed to unmap only with detect-zeroes=unmap, which needs discard=unmap).
      if (this.detectZeroes !== 'off' && !flags.writeUnchanged && isZero(data)) {
        await this.coWriteZeroes(offset, data.length, { ...(flags.fua ? { fua: true } : {}), noHole: this.detectZeroes !== 'unmap' });
      } else {
        await this.coWrite(offset, data, flags);
      }
      if (!flags.writeUnchanged) this.markDirty(offset, data.length);
    });
  }

  async writeZeroes(offset: number, bytes: number, flags: RequestFlags = {}): Promise<void> {
    this.writable('write-zeroes', offset, bytes);
    if (bytes === 0) return Promise.resolve();
    return this.tracked_('write-zeroes', offset, bytes, flags, async () => {
      await this.coWriteZeroes(offset, bytes, flags);
      this.markDirty(offset, bytes);
    });
  }

  async discard(offset: number, bytes: number): Promise<void> {
    this.writable('discard', offset, bytes);
    // bdrv_co_pdiscard returns 0 without BDRV_O_UNMAP (docs/requirements/qemu-fleecing.md §6 B8).
    if (bytes === 0 || !this.discardUnmap) return Promise.resolve();
    return this.tracked_('discard', offset, bytes, {}, async () => {
      await this.coDiscard(offset, bytes);
      this.markDirty(offset, bytes);
    });
  }

  async flush(): Promise<void> {
    // bdrv_co_flush with BDRV_O_NO_FLUSH: skip this node's flush, still flush its children.
    if (this.noFlush) {
      for (const c of this.children) if (c.perm & PERM.WRITE) await c.flush();
      return;
    }
    return this.coFlush();
  }

  /** bdrv_co_block_status on this node alone. */
  async blockStatus(offset: number, bytes: number): Promise<Extent> {
    this.checkRange('block-status', offset, bytes);
    return this.coBlockStatus(offset, bytes);
  }

  /** bdrv_block_status_above: where this node does not allocate a range, ask its backing; a
   * range unallocated in the whole chain reads as zeroes. */
  async blockStatusAbove(offset: number, bytes: number): Promise<Extent> {
    const ext = await this.blockStatus(offset, bytes);
    if (ext.allocated) return ext;
    const backing = this.backing();
    if (!backing) return ext;
    const below = await backing.node.blockStatusAbove(offset, ext.length);
    return { ...below, offset, length: Math.min(ext.length, below.length) };
  }

  /** A named dirty bitmap on this node (block-dirty-bitmap-add); it records every write. */
  addDirtyBitmap(name: string, granularity = 65536): DirtyBitmap {
    if (this.dirtyBitmaps.has(name)) {
      throw new BlockError('EEXIST', `Bitmap already exists: ${name}`, { node: this.nodeName });
    }
    const b = new DirtyBitmap(name, this.nodeName, this.length(), granularity);
    this.dirtyBitmaps.set(name, b);
    return b;
  }
}

/** Base for filters with one filtered child ("file" or "image"): everything passes through. */
export abstract class FilterNode extends BlockNode {
  protected get child(): BdrvChild {
    const c = this.filtered();
    if (!c) throw new BlockError('EINVAL', `filter node '${this.nodeName}' has no filtered child`, { node: this.nodeName });
    return c;
  }
  length(): number {
    return this.child.node.length();
  }
  childPerm(_child: BdrvChild, perm: number, shared: number): PermPair {
    return filterDefaultPerms(perm, shared);
  }
  protected coRead(offset: number, bytes: number, flags: RequestFlags): Promise<Buffer> {
    return this.child.read(offset, bytes, flags);
  }
  protected coWrite(offset: number, data: Buffer, flags: RequestFlags): Promise<void> {
    return this.child.write(offset, data, flags);
  }
  protected override coWriteZeroes(offset: number, bytes: number, flags: RequestFlags): Promise<void> {
    return this.child.writeZeroes(offset, bytes, flags);
  }
  protected override coDiscard(offset: number, bytes: number): Promise<void> {
    return this.child.discard(offset, bytes);
  }
  protected override coBlockStatus(offset: number, bytes: number): Promise<Extent> {
    return this.child.blockStatus(offset, bytes);
  }
  override clusterSize(): number {
    return this.child.node.clusterSize();
  }
}
