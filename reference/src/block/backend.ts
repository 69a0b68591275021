// A root user of a node (QEMU's BlockBackend): an export, a device, or a job's handle. It holds
// fixed (perm, shared) on its root edge and is the only way data enters or leaves the graph.
import { BlockError } from './errors.ts';
import type { BdrvChild, Parent } from './node.ts';
import { PERM } from './perm.ts';
import { extentHasData, type BlockBackend, type Extent, type RequestFlags } from './types.ts';

export type RootKind = 'block-backend' | 'block-job';

export interface RootParent extends Parent {
  readonly kind: RootKind;
  /** Name shown by x-debug-query-block-graph ("" for an unnamed backend, the job id). */
  readonly name: string;
}

export class BackendImpl implements BlockBackend, RootParent {
  readonly kind = 'block-backend' as const;
  edge!: BdrvChild;

  constructor(
    readonly user: string,
    readonly name: string,
    private readonly onDetach: (b: BackendImpl) => void,
  ) {}

  describe(): string {
    return this.user;
  }

  get nodeName(): string {
    return this.edge.node.nodeName;
  }

  private need(bit: number, op: string, offset: number, bytes: number): void {
    if ((this.edge.perm & bit) === 0) {
      // blk_check_byte_request / blk_co_pwritev: a backend without WRITE is read-only.
      throw new BlockError('EPERM', `${op} refused: ${this.user} on node '${this.nodeName}' is read-only`, {
        node: this.nodeName, op, offset, bytes,
      });
    }
  }

  length(): number {
    return this.edge.node.length();
  }

  async read(offset: number, bytes: number, flags: RequestFlags = {}): Promise<Buffer> {
    return this.edge.read(offset, bytes, flags);
  }

  async write(offset: number, data: Buffer, flags: RequestFlags = {}): Promise<void> {
    this.need(PERM.WRITE, 'write', offset, data.length);
    await this.edge.write(offset, data, flags);
    if (flags.fua) await this.edge.flush();
  }

  async writeZeroes(offset: number, bytes: number, flags: RequestFlags = {}): Promise<void> {
    this.need(PERM.WRITE, 'write-zeroes', offset, bytes);
    await this.edge.writeZeroes(offset, bytes, flags);
    if (flags.fua) await this.edge.flush();
  }

  async discard(offset: number, bytes: number): Promise<void> {
    this.need(PERM.WRITE, 'discard', offset, bytes);
    return this.edge.discard(offset, bytes);
  }

  flush(): Promise<void> {
    return this.edge.flush();
  }

  async blockStatus(offset: number, bytes: number): Promise<Extent[]> {
    const out: Extent[] = [];
    for (let pos = offset; pos < offset + bytes; ) {
      const e = await this.edge.blockStatus(pos, offset + bytes - pos);
      const length = Math.max(1, Math.min(e.length, offset + bytes - pos));
      const last = out[out.length - 1];
      const data = extentHasData(e);
      if (last && last.allocated === e.allocated && last.zero === e.zero && extentHasData(last) === data) {
        out[out.length - 1] = { ...last, length: last.length + length };
      } else {
        out.push({ offset: pos, length, allocated: e.allocated, zero: e.zero, ...(data !== e.allocated ? { data } : {}) });
      }
      pos += length;
    }
    return out;
  }

  detach(): void {
    this.onDetach(this);
  }
}
