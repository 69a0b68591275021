// `memory`: a sparse in-memory disk. Storage is a map of fixed-size chunks; a chunk that was never
// written (or was zeroed/discarded whole) is a hole that reads as zeroes and is reported
// unallocated+zero by block-status.
import { BlockNode } from '../node.ts';
import type { PermPair } from '../perm.ts';
import type { Extent, RequestFlags } from '../types.ts';
import type { DriverContext } from './registry.ts';

const CHUNK = 64 * 1024;

export class MemoryNode extends BlockNode {
  private readonly chunks = new Map<number, Buffer>();
  private readonly size: number;

  constructor(ctx: DriverContext) {
    super(ctx.nodeName, 'memory', ctx.common);
    this.size = ctx.opts.size('size');
  }

  length(): number {
    return this.size;
  }

  childPerm(): PermPair {
    throw new Error('memory has no children');
  }

  override readAtOpen(offset: number, bytes: number): Buffer {
    return this.readNow(offset, Math.max(0, Math.min(bytes, this.size - offset)));
  }

  protected async coRead(offset: number, bytes: number): Promise<Buffer> {
    return this.readNow(offset, bytes);
  }

  private readNow(offset: number, bytes: number): Buffer {
    const out = Buffer.alloc(bytes);
    for (let pos = offset; pos < offset + bytes; ) {
      const idx = Math.floor(pos / CHUNK);
      const inChunk = pos - idx * CHUNK;
      const n = Math.min(CHUNK - inChunk, offset + bytes - pos);
      const chunk = this.chunks.get(idx);
      if (chunk) chunk.copy(out, pos - offset, inChunk, inChunk + n);
      pos += n;
    }
    return out;
  }

  protected async coWrite(offset: number, data: Buffer): Promise<void> {
    for (let pos = offset; pos < offset + data.length; ) {
      const idx = Math.floor(pos / CHUNK);
      const inChunk = pos - idx * CHUNK;
      const n = Math.min(CHUNK - inChunk, offset + data.length - pos);
      let chunk = this.chunks.get(idx);
      if (!chunk) {
        chunk = Buffer.alloc(Math.min(CHUNK, this.size - idx * CHUNK));
        this.chunks.set(idx, chunk);
      }
      data.copy(chunk, inChunk, pos - offset, pos - offset + n);
      pos += n;
    }
  }

  /** Whole chunks become holes unless NO_HOLE; partial chunks get zeroes written. */
  private punch(offset: number, bytes: number, keepAllocated: boolean): void {
    for (let pos = offset; pos < offset + bytes; ) {
      const idx = Math.floor(pos / CHUNK);
      const inChunk = pos - idx * CHUNK;
      const chunkLen = Math.min(CHUNK, this.size - idx * CHUNK);
      const n = Math.min(chunkLen - inChunk, offset + bytes - pos);
      const chunk = this.chunks.get(idx);
      if (inChunk === 0 && n === chunkLen && !keepAllocated) this.chunks.delete(idx);
      else if (chunk) chunk.fill(0, inChunk, inChunk + n);
      else if (keepAllocated) this.chunks.set(idx, Buffer.alloc(chunkLen));
      pos += n;
    }
  }

  protected override async coWriteZeroes(offset: number, bytes: number, flags: RequestFlags): Promise<void> {
    this.punch(offset, bytes, flags.noHole === true);
  }

  protected override async coDiscard(offset: number, bytes: number): Promise<void> {
    this.punch(offset, bytes, false);
  }

  protected override async coBlockStatus(offset: number, bytes: number): Promise<Extent> {
    const end = offset + bytes;
    const allocatedAt = (pos: number): boolean => this.chunks.has(Math.floor(pos / CHUNK));
    const allocated = allocatedAt(offset);
    let pos = (Math.floor(offset / CHUNK) + 1) * CHUNK;
    while (pos < end && allocatedAt(pos) === allocated) pos += CHUNK;
    return { offset, length: Math.min(pos, end) - offset, allocated, zero: !allocated };
  }

  override clusterSize(): number {
    return 1;
  }
}
