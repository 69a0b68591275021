// `overlay`: an allocating image with a `file` child for data and an optional `backing` child
// (the legacy fleecing temp image, standing in for qcow2). As in qcow2, a read first looks up
// allocation (qcow2_get_host_offset) and only then reads the file or falls through to the
// backing: two separate steps, and the seed's race lives between them (docs/requirements/qemu-fleecing.md §3).
// Allocation metadata lives in memory: the temp image of a fleecing setup is thrown away.
// Its file holds guest data at guest offsets, so opened over a qcow2 image it would export the
// image's raw bytes and overwrite its metadata: a file that starts with the qcow2 magic is refused
// (use driver=qcow2). raw over a qcow2 file is allowed, as in QEMU: it exports the bytes.
import { ClusterBitmap } from '../bitmap.ts';
import { BlockError } from '../errors.ts';
import { BlockNode, type BdrvChild } from '../node.ts';
import { defaultPerms, type PermPair } from '../perm.ts';
import { RangeList } from '../reqlist.ts';
import type { Extent, RequestFlags } from '../types.ts';
import { isQcow2 } from './qcow2-format.ts';
import type { DriverContext } from './registry.ts';

export class OverlayNode extends BlockNode {
  private readonly cluster: number;
  private readonly allocation: ClusterBitmap;
  /** Cluster allocations in flight: a second allocating write to the same cluster waits, as
   * qcow2's l2meta dependencies make it. */
  private readonly allocating = new RangeList();

  constructor(ctx: DriverContext) {
    super(ctx.nodeName, 'overlay', ctx.common);
    this.cluster = ctx.opts.size('cluster-size', 65536);
    const file = ctx.addChild(this, 'file', 'data+metadata', true)!;
    const head = file.readAtOpen(0, 4);
    if (head && isQcow2(head)) {
      throw new BlockError('EINVAL', `${ctx.opts.where}: the file child '${file.nodeName}' holds a qcow2 image; open it with driver=qcow2 (overlay keeps guest data at guest offsets and would overwrite the image's metadata)`, { node: ctx.nodeName });
    }
    ctx.addChild(this, 'backing', 'cow', false);
    this.allocation = new ClusterBitmap(this.length(), this.cluster);
  }

  private get file(): BdrvChild {
    return this.children.find((c) => c.name === 'file')!;
  }

  length(): number {
    return this.file.node.length();
  }

  override clusterSize(): number {
    return this.cluster;
  }

  childPerm(child: BdrvChild, perm: number, shared: number): PermPair {
    return defaultPerms(child.role, perm, shared, !this.readOnly);
  }

  /** Allocation lookup, its own step (a yield point), like an L2 table read. */
  private async lookup(offset: number, bytes: number): Promise<{ allocated: boolean; bytes: number }> {
    await Promise.resolve();
    const st = this.allocation.status(offset, bytes);
    return { allocated: st.set, bytes: st.bytes };
  }

  isAllocated(offset: number, bytes: number): boolean {
    return this.allocation.allSet(offset, bytes);
  }

  protected async coRead(offset: number, bytes: number, flags: RequestFlags): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (let pos = offset; pos < offset + bytes; ) {
      const st = await this.lookup(pos, offset + bytes - pos);
      const bp = this.breakpoints;
      if (bp.armed) await bp.reach('overlay-lookup-done', this.nodeName, pos, st.bytes);
      const backing = this.backing();
      if (st.allocated) parts.push(await this.file.read(pos, st.bytes, flags));
      else if (backing) {
        if (bp.armed) await bp.reach('overlay-backing-read', this.nodeName, pos, st.bytes);
        parts.push(await backing.read(pos, st.bytes, flags));
      } else parts.push(Buffer.alloc(st.bytes));
      pos += st.bytes;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  protected async coWrite(offset: number, data: Buffer, flags: RequestFlags): Promise<void> {
    const end = offset + data.length;
    for (let pos = offset; pos < end; ) {
      const cStart = Math.floor(pos / this.cluster) * this.cluster;
      const cEnd = Math.min(cStart + this.cluster, this.length());
      const segEnd = Math.min(end, cEnd);
      await this.allocating.waitAll(cStart, cEnd - cStart);
      const seg = data.subarray(pos - offset, segEnd - offset);
      if (this.allocation.get(cStart / this.cluster)) {
        await this.file.write(pos, seg, { fua: flags.fua });
      } else {
        // Allocating write: copy the rest of the cluster from the backing (COW), then mark.
        const alloc = this.allocating.add(cStart, cEnd - cStart);
        try {
          let buf = seg;
          let at = pos;
          if (pos !== cStart || segEnd !== cEnd) {
            const backing = this.backing();
            buf = backing ? await backing.read(cStart, cEnd - cStart) : Buffer.alloc(cEnd - cStart);
            seg.copy(buf, pos - cStart);
            at = cStart;
          }
          await this.file.write(at, buf, { fua: flags.fua });
          this.allocation.setClusters(cStart / this.cluster, cStart / this.cluster + 1, true);
        } finally {
          this.allocating.remove(alloc);
        }
      }
      pos = segEnd;
    }
  }

  protected override async coBlockStatus(offset: number, bytes: number): Promise<Extent> {
    const st = this.allocation.status(offset, bytes);
    return { offset, length: st.bytes, allocated: st.set, zero: false };
  }
}
