// `qcow2`: QEMU's image format over a `file` child, with an optional `backing` child (the legacy
// fleecing temp image of QEMU's docs is one: driver=qcow2,file...,backing=source). Versions 2 and
// 3 as `qemu-img create -f qcow2` makes them, read and written in place (qcow2.txt):
// - the header and its extensions (unknown ones skipped); L1 and L2 tables; refcount table and
//   blocks of any refcount width; zero clusters (v3); discard; the image's own backing file.
// - Metadata is loaded whole at open (the L1 table, every L2 table and refcount block) and written
//   through on every change, refcounts first, then data, then the L2 entry, then the L1 entry, so
//   the image on disk is consistent after each request without lazy refcounts or a dirty bit.
// - Refused with an error naming the node: another format's file ("Image is not in qcow2 format",
//   as QEMU says), encryption, external data files, extended L2 entries, a compression type other
//   than zlib, compressed clusters (when a request reaches one), unknown incompatible feature bits;
//   and, for writable opens, internal snapshots, persistent dirty bitmaps, dirty or corrupt images.
// Concurrency (QEMU: s->lock, and l2meta dependencies for allocating writes): reading or writing
// an allocated cluster holds the metadata lock shared from the lookup to the end of the data I/O;
// anything that changes a mapping (allocation, zero, discard) holds it exclusively, so no cluster
// is freed or re-used under a request that looked it up. A read of an unallocated range drops the
// lock before it reads the backing, as QEMU does (see coRead).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockError } from '../errors.ts';
import { BlockNode, type BdrvChild } from '../node.ts';
import { defaultPerms, type PermPair } from '../perm.ts';
import type { Extent, RequestFlags } from '../types.ts';
import { FileNode } from './file.ts';
import {
  AUTOCLEAR_BITMAPS,
  decodeHeader,
  decodeL1,
  decodeL2,
  encodeL1,
  encodeL2,
  EXT,
  featureNames,
  geometry,
  getRefcount,
  HEADER_FIELD,
  INCOMPAT,
  isQcow2,
  Qcow2FormatError,
  refcountEntrySpan,
  reservedBits,
  setRefcount,
  type Geometry,
  type L2Entry,
  type Qcow2Header,
} from './qcow2-format.ts';
import type { DriverContext } from './registry.ts';

/** A readers-writer lock, first come first served (a waiting exclusive holder stops new shared
 * ones, so a stream of reads cannot starve an allocation). */
class MetadataLock {
  private readers = 0;
  private writer = false;
  private readonly queue: Array<{ exclusive: boolean; grant: () => void }> = [];

  async acquire(exclusive: boolean): Promise<() => void> {
    const free = exclusive ? !this.writer && this.readers === 0 : !this.writer;
    if (free && this.queue.length === 0) this.take(exclusive);
    else await new Promise<void>((grant) => this.queue.push({ exclusive, grant }));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (exclusive) this.writer = false;
      else this.readers--;
      this.dispatch();
    };
  }

  private take(exclusive: boolean): void {
    if (exclusive) this.writer = true;
    else this.readers++;
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      const next = this.queue[0]!;
      if (this.writer || (next.exclusive && this.readers > 0)) return;
      this.queue.shift();
      this.take(next.exclusive);
      next.grant();
      if (next.exclusive) return;
    }
  }
}

type Fail = (msg: string, errno?: 'EINVAL' | 'ENOTSUP') => never;

const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);

export class Qcow2Node extends BlockNode {
  readonly header: Qcow2Header;
  private readonly geo: Geometry;
  private readonly cs: number;
  private readonly l1: Buffer;
  /** L2 tables by host offset. */
  private readonly l2 = new Map<number, Buffer>();
  /** Refcount table: host offsets of refcount blocks (0: none); its length is the capacity. */
  private rcTable: number[];
  private rcTableOffset: number;
  private rcTableClusters: number;
  /** Refcount blocks by refcount-table index. */
  private readonly rcBlocks = new Map<number, Buffer>();
  /** No cluster below this index is free (QEMU's free_cluster_index). */
  private freeHint = 0;
  /** Table entries are written once at the end while the refcount table grows. */
  private growingTable = false;
  private readonly lock = new MetadataLock();
  private autoclearPending: boolean;
  private autoclearDone?: Promise<void>;
  /** UNSAFE, known bad: refcount changes stay in memory and never reach the image, which then
   * fails `qemu-img check` (tests show that check failing on it). */
  private readonly skipRefcounts: boolean;
  /** UNSAFE, known bad: a partial write into a cluster not yet allocated here fills the rest of
   * the new cluster with zeroes instead of what the backing holds (no copy-on-write). */
  private readonly skipCow: boolean;
  /** UNSAFE, known bad: allocating writes do not take the metadata lock exclusively, so two of
   * them into one new cluster both allocate it (what qcow2's l2meta dependencies prevent). */
  private readonly unlockedAllocation: boolean;

  constructor(ctx: DriverContext) {
    super(ctx.nodeName, 'qcow2', ctx.common);
    const where = ctx.opts.where;
    const fail: Fail = (msg, errno = 'EINVAL') => {
      throw new BlockError(errno, `${where}: ${msg}`, { node: ctx.nodeName });
    };
    ctx.opts.ignore('lazy-refcounts', 'pass-discard-request', 'pass-discard-snapshot', 'pass-discard-other',
      'overlap-check', 'cache-size', 'l2-cache-size', 'l2-cache-entry-size', 'refcount-cache-size', 'cache-clean-interval');
    if (ctx.opts.has('data-file')) fail("data-file: external data files are not supported by the reference", 'ENOTSUP');
    if (ctx.opts.has('encrypt')) fail('encrypt: encrypted images are not supported by the reference', 'ENOTSUP');
    if (ctx.opts.bool('lazy-refcounts', false)) fail("lazy-refcounts=on is not supported: the reference always writes refcounts", 'ENOTSUP');
    this.skipRefcounts = ctx.opts.bool('x-skip-refcounts', false);
    this.skipCow = ctx.opts.bool('x-skip-cow', false);
    this.unlockedAllocation = ctx.opts.bool('x-unlocked-allocation', false);
    const backingOpt = ctx.opts.raw('backing');
    ctx.addChild(this, 'file', 'data+metadata', true);
    const file = this.file.node;
    const at = (offset: number, bytes: number): Buffer => {
      const b = file.readAtOpen(offset, bytes);
      if (!b) fail(`cannot read the image at open: its file child '${file.nodeName}' (driver ${file.driver}) has no synchronous read; use driver=file`, 'ENOTSUP');
      if (b.length >= bytes) return b;
      const padded = Buffer.alloc(bytes);
      b.copy(padded);
      return padded;
    };
    try {
      const first = at(0, 512);
      if (!isQcow2(first)) fail('Image is not in qcow2 format');
      const clusterBits = first.readUInt32BE(20);
      this.header = decodeHeader(clusterBits >= 9 && clusterBits <= 21 ? at(0, 2 ** clusterBits) : first);
    } catch (e) {
      if (e instanceof Qcow2FormatError) fail(e.message);
      throw e;
    }
    const h = this.header;
    this.geo = geometry(h);
    this.cs = this.geo.clusterSize;
    this.checkSupported(fail);
    // QEMU's QCOW_MAX_L1_SIZE and QCOW_MAX_REFTABLE_SIZE: a corrupt header cannot make us
    // allocate gigabytes at open.
    if (h.l1Size * 8 > 32 * 1024 * 1024) fail(`Active L1 table too large: ${h.l1Size} entries`);
    if (h.refcountTableClusters * this.cs > 8 * 1024 * 1024) fail(`Reference count table too large: ${h.refcountTableClusters} clusters`);
    if (h.l1Size < this.geo.l1Needed) fail(`L1 table is too small: ${h.l1Size} entries for ${h.size} bytes (corrupt image)`);
    this.l1 = h.l1Size > 0 ? at(h.l1TableOffset, h.l1Size * 8) : Buffer.alloc(0);
    for (let i = 0; i < h.l1Size; i++) {
      const v = this.l1.readBigUInt64BE(i * 8);
      if (reservedBits(v, 'l1')) fail(`L1 entry ${i} has reserved bits set (corrupt image)`);
      const { l2Offset, copied } = decodeL1(v);
      if (l2Offset === 0) continue;
      if (l2Offset % this.cs) fail(`L2 table offset 0x${l2Offset.toString(16)} is not cluster-aligned (corrupt image)`);
      if (!copied && !this.readOnly) fail(`L2 table ${i} is shared (internal snapshot); open read-only`, 'ENOTSUP');
      this.l2.set(l2Offset, at(l2Offset, this.cs));
    }
    this.rcTableOffset = h.refcountTableOffset;
    this.rcTableClusters = h.refcountTableClusters;
    const table = at(h.refcountTableOffset, h.refcountTableClusters * this.cs);
    this.rcTable = [];
    for (let i = 0; i < table.length / 8; i++) {
      const v = table.readBigUInt64BE(i * 8);
      if (v > SAFE_MAX) fail(`refcount table entry ${i} is out of range (corrupt image)`);
      const off = Number(v & ~0x1ffn);
      this.rcTable.push(off);
      if (off === 0) continue;
      if (off % this.cs) fail(`refcount block offset 0x${off.toString(16)} is not cluster-aligned (corrupt image)`);
      this.rcBlocks.set(i, at(off, this.cs));
    }
    this.autoclearPending = !this.readOnly && h.version === 3 && h.autoclear !== 0n;
    this.openBacking(ctx, backingOpt, fail);
  }

  private checkSupported(fail: Fail): void {
    const h = this.header;
    if (h.cryptMethod !== 0) fail('encrypted images are not supported by the reference', 'ENOTSUP');
    if (h.extensions.some((e) => e.type === EXT.CRYPTO)) fail('encrypted images are not supported by the reference', 'ENOTSUP');
    // Dirty (lazy refcounts left unrepaired) and corrupt images are readable, not writable.
    const tolerated = this.readOnly ? INCOMPAT.DIRTY | INCOMPAT.CORRUPT : 0n;
    const refused = h.incompatible & ~tolerated;
    if (refused & INCOMPAT.DIRTY) fail("the image is dirty (lazy refcounts were not repaired): run 'qemu-img check -r all' first, or open it read-only", 'ENOTSUP');
    if (refused & INCOMPAT.CORRUPT) fail('the image is marked corrupt: open it read-only, or repair it with qemu-img check -r all', 'ENOTSUP');
    if (refused) fail(`Unsupported qcow2 feature(s): ${featureNames(refused).join(', ')}`, 'ENOTSUP');
    if (h.compressionType !== 0) fail(`compression type ${h.compressionType} is not supported (only zlib images open)`, 'ENOTSUP');
    if (!this.readOnly && h.nbSnapshots > 0) fail(`the image has ${h.nbSnapshots} internal snapshot(s): the reference opens such images read-only only`, 'ENOTSUP');
    if (!this.readOnly && h.autoclear & AUTOCLEAR_BITMAPS && h.extensions.some((e) => e.type === EXT.BITMAPS)) {
      fail('the image has persistent dirty bitmaps, which the reference does not keep: open it read-only', 'ENOTSUP');
    }
    if (h.extensions.some((e) => e.type === EXT.DATA_FILE)) fail('external data files are not supported', 'ENOTSUP');
  }

  /** backing=<node or blockdev>: that child; backing=null (or "", deprecated in QEMU): none;
   * absent: the backing file the image names, read-only, its format from the backing-format
   * extension or else probed (qcow2 magic or raw). */
  private openBacking(ctx: DriverContext, opt: unknown, fail: Fail): void {
    if (opt === null || opt === '') return;
    if (opt !== undefined) {
      ctx.addChild(this, 'backing', 'cow', false);
      return;
    }
    const name = this.header.backingFile;
    if (name === undefined) return;
    if (name.startsWith('json:') || /^[a-z+]+:\/\//i.test(name)) fail(`backing file '${name}' is not a plain file name; give backing= explicitly`, 'ENOTSUP');
    const file = this.file.node;
    let filename = name;
    if (!path.isAbsolute(name)) {
      if (!(file instanceof FileNode)) fail(`cannot resolve the relative backing file name '${name}': the file child is not a file node; give backing= explicitly`, 'ENOTSUP');
      filename = path.join(path.dirname((file as FileNode).filename), name);
    }
    let format = this.header.backingFormat;
    const fileOpts = { driver: 'file', filename, 'read-only': true };
    if (format === undefined) {
      // Probe, as QEMU does without a backing format: qcow2 by its magic, otherwise raw.
      format = probeFormat(filename);
    }
    if (format !== 'qcow2' && format !== 'raw') fail(`backing file '${name}' has format '${format}', which the reference does not implement`, 'ENOTSUP');
    try {
      ctx.addChild(this, 'backing', 'cow', false, undefined, { driver: format, 'read-only': true, file: fileOpts });
    } catch (e) {
      if (e instanceof BlockError) throw new BlockError(e.errno, `${ctx.opts.where}: Could not open backing file: ${e.message}`, e.context);
      throw e;
    }
  }

  private get file(): BdrvChild {
    return this.children.find((c) => c.name === 'file')!;
  }

  length(): number {
    return this.header.size;
  }

  /** The image file's name, as query-named-block-nodes shows it (QEMU: bs->filename). */
  get filename(): string | undefined {
    const f = this.file.node;
    return f instanceof FileNode ? f.filename : undefined;
  }

  override clusterSize(): number {
    return this.cs;
  }

  /** bdrv_default_perms for a format node: the file child as data+metadata (consistent-read, and
   * write+resize when writable; unshares write and resize), the backing child as COW. */
  childPerm(child: BdrvChild, perm: number, shared: number): PermPair {
    return defaultPerms(child.role, perm, shared, !this.readOnly);
  }

  // ---- lookups (metadata is in memory) --------------------------------------------------------

  private err(errno: 'EIO' | 'ENOTSUP' | 'ENOSPC', op: string, offset: number, bytes: number, msg: string): BlockError {
    return new BlockError(errno, `${op} on qcow2 node '${this.nodeName}': ${msg}`, { node: this.nodeName, op, offset, bytes });
  }

  private l2Table(guestCluster: number): { table: Buffer | undefined; index: number; l1Index: number } {
    const l1Index = Math.floor(guestCluster / this.geo.l2Entries);
    const index = guestCluster % this.geo.l2Entries;
    const { l2Offset } = decodeL1(this.l1.readBigUInt64BE(l1Index * 8));
    return { table: l2Offset ? this.l2.get(l2Offset) : undefined, index, l1Index };
  }

  private entry(guestCluster: number): L2Entry {
    const { table, index } = this.l2Table(guestCluster);
    if (!table) return { kind: 'unallocated', offset: 0, copied: false };
    return decodeL2(table.readBigUInt64BE(index * 8), this.header.version);
  }

  /** A cluster's refcount (0 beyond the refcount table or without a refcount block). */
  refcount(cluster: number): number {
    const group = Math.floor(cluster / this.geo.refcountBlockEntries);
    const block = this.rcBlocks.get(group);
    return block ? getRefcount(block, cluster % this.geo.refcountBlockEntries, this.header.refcountOrder) : 0;
  }

  // ---- metadata writes (exclusive lock held) --------------------------------------------------

  private async writeMeta(offset: number, data: Buffer): Promise<void> {
    await this.file.write(offset, data);
  }

  private async clearAutoclear(): Promise<void> {
    if (!this.autoclearPending) return;
    // QEMU clears autoclear bits it does not understand on a writable open (qcow2_do_open), so
    // a program that set one can see the image was changed by one that does not keep it.
    this.autoclearDone ??= this.writeMeta(HEADER_FIELD.AUTOCLEAR, Buffer.alloc(8)).then(() => {
      this.autoclearPending = false;
    });
    await this.autoclearDone;
  }

  /** Sets a cluster's refcount, creating its refcount block (inside the group it covers, so it
   * counts itself) or growing the refcount table when needed. `reserved` are clusters chosen but
   * not yet counted, which a new refcount block must not take. */
  private async setRefcountOf(cluster: number, value: number, reserved: ReadonlySet<number>): Promise<void> {
    const E = this.geo.refcountBlockEntries;
    const group = Math.floor(cluster / E);
    if (group >= this.rcTable.length) await this.growRefcountTable(group, reserved);
    let block = this.rcBlocks.get(group);
    if (!block) {
      // Every cluster of a group without a block is free; the block takes the first one not
      // reserved, and describes itself.
      let b = group * E;
      while (reserved.has(b) || b === cluster) b++;
      block = Buffer.alloc(this.cs);
      setRefcount(block, b - group * E, this.header.refcountOrder, 1);
      this.rcBlocks.set(group, block);
      await this.writeMeta(b * this.cs, block);
      this.rcTable[group] = b * this.cs;
      if (!this.growingTable) {
        const e = Buffer.alloc(8);
        e.writeBigUInt64BE(BigInt(b * this.cs));
        await this.writeMeta(this.rcTableOffset + group * 8, e);
      }
    }
    const i = cluster % E;
    setRefcount(block, i, this.header.refcountOrder, value);
    const span = refcountEntrySpan(i, this.header.refcountOrder);
    if (!this.skipRefcounts) await this.writeMeta(this.rcTable[group]! + span.start, Buffer.from(block.subarray(span.start, span.end)));
    if (value === 0) this.freeHint = Math.min(this.freeHint, cluster);
  }

  /** A bigger refcount table after everything in use, covering itself and `group`; the header
   * points to it in one write, then the old table's clusters are freed. */
  private async growRefcountTable(group: number, reserved: ReadonlySet<number>): Promise<void> {
    const E = this.geo.refcountBlockEntries;
    const perCluster = this.cs / 8;
    let top = Math.ceil(this.file.node.length() / this.cs);
    for (const r of reserved) top = Math.max(top, r + 1);
    let n = Math.max(1, this.rcTableClusters * 2);
    // Room for the table itself and the refcount blocks its own clusters may need.
    while (n * perCluster <= Math.max(group, Math.floor((top + n + Math.ceil(n / E) + 2) / E))) n *= 2;
    const oldOffset = this.rcTableOffset;
    const oldClusters = this.rcTableClusters;
    while (this.rcTable.length < n * perCluster) this.rcTable.push(0);
    const mine = new Set(reserved);
    for (let c = top; c < top + n; c++) mine.add(c);
    this.growingTable = true;
    try {
      for (let c = top; c < top + n; c++) await this.setRefcountOf(c, 1, mine);
    } finally {
      this.growingTable = false;
    }
    const table = Buffer.alloc(n * this.cs);
    this.rcTable.forEach((off, i) => table.writeBigUInt64BE(BigInt(off), i * 8));
    await this.writeMeta(top * this.cs, table);
    const hdr = Buffer.alloc(12);
    hdr.writeBigUInt64BE(BigInt(top * this.cs), 0);
    hdr.writeUInt32BE(n, 8);
    await this.writeMeta(HEADER_FIELD.REFCOUNT_TABLE_OFFSET, hdr);
    this.rcTableOffset = top * this.cs;
    this.rcTableClusters = n;
    for (let c = 0; c < oldClusters; c++) await this.setRefcountOf(oldOffset / this.cs + c, 0, reserved);
  }

  /** Allocates one cluster (refcount 1) and returns its host offset. */
  private async allocCluster(): Promise<number> {
    let c = this.freeHint;
    while (this.refcount(c) !== 0) c++;
    if (c * this.cs > Number.MAX_SAFE_INTEGER - this.cs || c * this.cs >= 2 ** 56) {
      throw this.err('ENOSPC', 'allocate', c * this.cs, this.cs, 'host offset out of range');
    }
    await this.setRefcountOf(c, 1, new Set([c]));
    this.freeHint = c + 1;
    return c * this.cs;
  }

  private async freeCluster(hostOffset: number): Promise<void> {
    const c = hostOffset / this.cs;
    const rc = this.refcount(c);
    if (rc === 0) throw this.err('EIO', 'free', hostOffset, this.cs, `cluster at 0x${hostOffset.toString(16)} already has refcount 0 (corrupt image)`);
    await this.setRefcountOf(c, rc - 1, new Set());
  }

  /** The L2 table of a guest cluster, allocated (zeroed, then linked from L1) when missing. */
  private async ensureL2(guestCluster: number): Promise<{ table: Buffer; index: number; offset: number }> {
    const t = this.l2Table(guestCluster);
    const { l2Offset } = decodeL1(this.l1.readBigUInt64BE(t.l1Index * 8));
    if (t.table) return { table: t.table, index: t.index, offset: l2Offset };
    const off = await this.allocCluster();
    const table = Buffer.alloc(this.cs);
    await this.writeMeta(off, table);
    this.l2.set(off, table);
    const e = Buffer.alloc(8);
    e.writeBigUInt64BE(encodeL1(off));
    e.copy(this.l1, t.l1Index * 8);
    await this.writeMeta(this.header.l1TableOffset + t.l1Index * 8, e);
    return { table, index: t.index, offset: off };
  }

  private async setEntry(guestCluster: number, v: bigint): Promise<void> {
    const { table, index, offset } = await this.ensureL2(guestCluster);
    table.writeBigUInt64BE(v, index * 8);
    await this.writeMeta(offset + index * 8, Buffer.from(table.subarray(index * 8, index * 8 + 8)));
  }

  // ---- reads -----------------------------------------------------------------------------------

  private async readBacking(offset: number, bytes: number, flags: RequestFlags): Promise<Buffer> {
    const backing = this.backing();
    const out = Buffer.alloc(bytes);
    if (!backing) return out;
    // A backing file shorter than the image reads as zeroes past its end.
    const n = Math.max(0, Math.min(bytes, backing.node.length() - offset));
    if (n > 0) (await backing.read(offset, n, flags)).copy(out);
    return out;
  }

  /** Per run of clusters of one kind: look up, then read. Data clusters are read with the lock
   * held shared, so they cannot be freed and re-used meanwhile. For an unallocated run the lock is
   * dropped before the backing is read, as qcow2_co_preadv_part drops s->lock after
   * qcow2_get_host_offset: that gap, between the lookup and the backing read, is where the legacy
   * fleecing race lives (docs/requirements/qemu-fleecing.md §3), and the breakpoints mark it. */
  protected async coRead(offset: number, bytes: number, flags: RequestFlags): Promise<Buffer> {
    const out = Buffer.alloc(bytes);
    const end = offset + bytes;
    for (let pos = offset; pos < end; ) {
      const release = await this.lock.acquire(false);
      let backingRun = false;
      let n: number;
      try {
        const gc = Math.floor(pos / this.cs);
        const e = this.entry(gc);
        // Extend over following clusters of the same kind (and, for data, contiguous on the host).
        let runEnd = Math.min(end, (gc + 1) * this.cs);
        for (let next = gc + 1; runEnd < end; next++) {
          const f = this.entry(next);
          const same = f.kind === e.kind && (e.kind !== 'normal' || f.offset === e.offset + (next - gc) * this.cs);
          if (!same && !(isZero(e) && isZero(f))) break;
          runEnd = Math.min(end, (next + 1) * this.cs);
        }
        n = runEnd - pos;
        if (e.kind === 'compressed') throw this.err('ENOTSUP', 'read', pos, n, `compressed cluster at guest offset 0x${(gc * this.cs).toString(16)}: compressed clusters are not supported by the reference`);
        if (e.kind === 'normal') (await this.file.read(e.offset + (pos - gc * this.cs), n, flags)).copy(out, pos - offset);
        backingRun = e.kind === 'unallocated';
      } finally {
        release();
      }
      const bp = this.breakpoints;
      if (bp.armed) await bp.reach('overlay-lookup-done', this.nodeName, pos, n);
      if (backingRun) {
        if (bp.armed && this.backing()) await bp.reach('overlay-backing-read', this.nodeName, pos, n);
        (await this.readBacking(pos, n, flags)).copy(out, pos - offset);
      }
      pos += n;
    }
    return out;
  }

  // ---- writes ----------------------------------------------------------------------------------

  protected async coWrite(offset: number, data: Buffer, flags: RequestFlags): Promise<void> {
    await this.clearAutoclear();
    const end = offset + data.length;
    for (let pos = offset; pos < end; ) {
      const gc = Math.floor(pos / this.cs);
      const segEnd = Math.min(end, (gc + 1) * this.cs);
      await this.writeCluster(gc, pos, data.subarray(pos - offset, segEnd - offset), flags);
      pos = segEnd;
    }
    if (flags.fua) await this.file.flush();
  }

  private async writeCluster(gc: number, pos: number, seg: Buffer, flags: RequestFlags): Promise<void> {
    const inCluster = pos - gc * this.cs;
    // An allocated cluster only this image uses is written in place under the shared lock.
    {
      const release = await this.lock.acquire(false);
      try {
        const e = this.entry(gc);
        if (e.kind === 'normal' && this.ownedOnly(e)) {
          await this.file.write(e.offset + inCluster, seg, { fua: flags.fua });
          return;
        }
      } finally {
        release();
      }
    }
    const release = this.unlockedAllocation ? await Promise.resolve(() => {}) : await this.lock.acquire(true);
    try {
      const e = this.entry(gc); // again: another request may have allocated it meanwhile
      if (e.kind === 'normal') {
        if (!this.ownedOnly(e)) throw this.err('ENOTSUP', 'write', pos, seg.length, `cluster at 0x${e.offset.toString(16)} is shared (refcount ${this.refcount(e.offset / this.cs)})`);
        await this.file.write(e.offset + inCluster, seg, { fua: flags.fua });
        return;
      }
      if (e.kind === 'compressed') throw this.err('ENOTSUP', 'write', pos, seg.length, `compressed cluster at guest offset 0x${(gc * this.cs).toString(16)}: compressed clusters are not supported by the reference`);
      // Allocating write: the whole cluster, the rest of it from what reads there now (backing
      // for unallocated, zeroes for zero clusters): copy-on-write.
      const guestLen = Math.min(this.cs, this.header.size - gc * this.cs);
      let buf: Buffer;
      if (inCluster === 0 && seg.length === guestLen) {
        buf = seg.length === this.cs ? seg : Buffer.concat([seg, Buffer.alloc(this.cs - seg.length)]);
      } else {
        buf = Buffer.alloc(this.cs);
        if (e.kind === 'unallocated' && !this.skipCow) (await this.readBacking(gc * this.cs, guestLen, {})).copy(buf);
        seg.copy(buf, inCluster);
      }
      const host = e.kind === 'zero-alloc' ? e.offset : await this.allocCluster();
      await this.file.write(host, buf, { fua: flags.fua });
      await this.setEntry(gc, encodeL2({ kind: 'normal', offset: host }));
    } finally {
      release();
    }
  }

  private ownedOnly(e: L2Entry): boolean {
    return e.copied || this.refcount(e.offset / this.cs) === 1;
  }

  /** Full clusters in [offset, offset+bytes), and the partial head and tail around them. */
  private split(offset: number, bytes: number): { first: number; last: number; head: [number, number]; tail: [number, number] } {
    const end = offset + bytes;
    const alignedStart = Math.ceil(offset / this.cs) * this.cs;
    // The image's last cluster counts as whole when the range reaches the image's end.
    const alignedEnd = end === this.header.size ? end : Math.floor(end / this.cs) * this.cs;
    if (alignedStart >= alignedEnd) return { first: 0, last: 0, head: [offset, bytes], tail: [end, 0] };
    return {
      first: alignedStart / this.cs,
      last: Math.ceil(alignedEnd / this.cs),
      head: [offset, alignedStart - offset],
      tail: [alignedEnd, end - alignedEnd],
    };
  }

  /** Zero clusters need version 3; a version 2 image gets zeroes written (qcow2_co_pwrite_zeroes
   * returns ENOTSUP there and the generic layer writes a zero buffer). Whole clusters become
   * zero clusters: freed (zero-plain) unless NO_HOLE keeps them allocated (zero-alloc), as
   * zero_in_l2_slice does with and without BDRV_REQ_MAY_UNMAP. */
  protected override async coWriteZeroes(offset: number, bytes: number, flags: RequestFlags): Promise<void> {
    const { first, last, head, tail } = this.split(offset, bytes);
    if (this.header.version === 2 || (flags.fastZero && (head[1] > 0 || tail[1] > 0))) {
      if (flags.fastZero) throw new BlockError('ENOTSUP', `qcow2 node '${this.nodeName}' cannot write zeroes fast here${this.header.version === 2 ? ' (version 2 has no zero clusters)' : ' (the range is not cluster-aligned)'}`, { node: this.nodeName, offset, bytes });
      return super.coWriteZeroes(offset, bytes, flags);
    }
    await this.clearAutoclear();
    if (head[1] > 0) await this.coWrite(head[0], Buffer.alloc(head[1]), {});
    const release = await this.lock.acquire(true);
    try {
      for (let gc = first; gc < last; gc++) {
        const e = this.entry(gc);
        if (e.kind === 'compressed') throw this.err('ENOTSUP', 'write-zeroes', gc * this.cs, this.cs, 'compressed clusters are not supported by the reference');
        const allocated = e.kind === 'normal' || e.kind === 'zero-alloc';
        if (flags.noHole && allocated) {
          if (e.kind !== 'zero-alloc') await this.setEntry(gc, encodeL2({ kind: 'zero-alloc', offset: e.offset }));
          continue;
        }
        if (e.kind === 'zero-plain') continue;
        await this.setEntry(gc, encodeL2({ kind: 'zero-plain' }));
        if (allocated) await this.freeCluster(e.offset);
      }
    } finally {
      release();
    }
    if (tail[1] > 0) await this.coWrite(tail[0], Buffer.alloc(tail[1]), {});
    if (flags.fua) await this.file.flush();
  }

  /** Discard of whole clusters (a partial head or tail is dropped, as with the cluster-sized
   * pdiscard_alignment of block/io.c). Afterwards a v3 cluster reads as zeroes (a zero cluster),
   * a v2 one as unallocated (the backing shows through, as in QEMU); the data cluster is freed
   * (discard_in_l2_slice with full_discard off). */
  protected override async coDiscard(offset: number, bytes: number): Promise<void> {
    const { first, last } = this.split(offset, bytes);
    if (first >= last) return;
    await this.clearAutoclear();
    const release = await this.lock.acquire(true);
    try {
      const hasBacking = this.backing() !== undefined;
      for (let gc = first; gc < last; gc++) {
        const e = this.entry(gc);
        if (e.kind === 'compressed') throw this.err('ENOTSUP', 'discard', gc * this.cs, this.cs, 'compressed clusters are not supported by the reference');
        const allocated = e.kind === 'normal' || e.kind === 'zero-alloc';
        if (!allocated && !hasBacking) continue; // already reads as zeroes
        if (e.kind === 'zero-plain') continue;
        const next = this.header.version === 3 ? encodeL2({ kind: 'zero-plain' }) : 0n;
        if (e.kind === 'unallocated' && next === 0n) continue;
        await this.setEntry(gc, next);
        if (allocated) await this.freeCluster(e.offset);
      }
    } finally {
      release();
    }
  }

  // ---- block status ----------------------------------------------------------------------------

  /** From the L2 entries: data clusters are allocated data, zero clusters allocated zeroes without
   * data (they hide the backing; NBD shows them as holes, as QEMU's qcow2 reports ZERO without
   * DATA for both kinds), unallocated ones fall through to the backing, or read as zeroes without
   * one or past its end. */
  protected override async coBlockStatus(offset: number, bytes: number): Promise<Extent> {
    const end = offset + bytes;
    const kindAt = (gc: number): 'data' | 'zero' | 'unallocated' => {
      const e = this.entry(gc);
      if (e.kind === 'normal' || e.kind === 'compressed') return 'data';
      return isZero(e) ? 'zero' : 'unallocated';
    };
    const gc0 = Math.floor(offset / this.cs);
    const kind = kindAt(gc0);
    let runEnd = Math.min(end, (gc0 + 1) * this.cs);
    for (let gc = gc0 + 1; runEnd < end && kindAt(gc) === kind; gc++) runEnd = Math.min(end, (gc + 1) * this.cs);
    if (kind === 'data') return { offset, length: runEnd - offset, allocated: true, zero: false };
    if (kind === 'zero') return { offset, length: runEnd - offset, allocated: true, zero: true, data: false };
    const backing = this.backing();
    if (!backing) return { offset, length: runEnd - offset, allocated: false, zero: true };
    const bl = backing.node.length();
    // Split at the backing's end: before it the backing answers, after it zeroes.
    if (offset < bl) return { offset, length: Math.min(runEnd, bl) - offset, allocated: false, zero: false };
    return { offset, length: runEnd - offset, allocated: false, zero: true };
  }

  override async blockStatusAbove(offset: number, bytes: number): Promise<Extent> {
    const backing = this.backing();
    if (backing && offset >= backing.node.length()) return this.blockStatus(offset, bytes);
    return super.blockStatusAbove(offset, bytes);
  }
}

/** The format of a backing file the image names without a backing-format extension (QEMU probes:
 * qcow2 by its magic; anything else opens as raw). A missing file fails when it is opened. */
function probeFormat(filename: string): string {
  try {
    const fd = fs.openSync(filename, 'r');
    try {
      const b = Buffer.alloc(4);
      fs.readSync(fd, b, 0, 4, 0);
      return isQcow2(b) ? 'qcow2' : 'raw';
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return 'raw';
  }
}

function isZero(e: L2Entry): boolean {
  return e.kind === 'zero-plain' || e.kind === 'zero-alloc';
}
