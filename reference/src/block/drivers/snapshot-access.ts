// `snapshot-access` (block/snapshot-access.c): a read-only view of the point-in-time snapshot a
// copy-before-write node keeps. It holds no permission on its child (0 / ALL) because it only
// uses the snapshot API. Writes are not supported; discard (with discard=unmap) releases
// snapshot areas; reads of inaccessible areas fail with EACCES, never data.
import { BlockError } from '../errors.ts';
import { BlockNode, type BdrvChild } from '../node.ts';
import { PERM_ALL, type PermPair } from '../perm.ts';
import type { Extent } from '../types.ts';
import { CopyBeforeWriteNode } from './copy-before-write.ts';
import type { DriverContext } from './registry.ts';

export class SnapshotAccessNode extends BlockNode {
  constructor(ctx: DriverContext) {
    super(ctx.nodeName, 'snapshot-access', ctx.common);
    const file = ctx.addChild(this, 'file', 'data', true)!;
    if (!(file instanceof CopyBeforeWriteNode)) {
      throw new BlockError('ENOTSUP', `snapshot-access '${ctx.nodeName}': child '${file.nodeName}' (driver ${file.driver}) does not provide the snapshot-access API; it must be a copy-before-write node`, { node: ctx.nodeName });
    }
  }

  private get cbw(): CopyBeforeWriteNode {
    return this.children[0]!.node as CopyBeforeWriteNode;
  }

  length(): number {
    return this.cbw.length();
  }

  override clusterSize(): number {
    return this.cbw.bcs.clusterSize;
  }

  childPerm(_child: BdrvChild, _perm: number, _shared: number): PermPair {
    return { perm: 0, shared: PERM_ALL };
  }

  protected coRead(offset: number, bytes: number): Promise<Buffer> {
    return this.cbw.snapshotRead(offset, bytes);
  }

  private notSupported(op: string, offset: number, bytes: number): never {
    throw new BlockError('ENOTSUP', `${op} is not supported on snapshot-access node '${this.nodeName}'`, { node: this.nodeName, op, offset, bytes });
  }

  protected async coWrite(offset: number, data: Buffer): Promise<void> {
    this.notSupported('write', offset, data.length);
  }

  protected override async coWriteZeroes(offset: number, bytes: number): Promise<void> {
    this.notSupported('write-zeroes', offset, bytes);
  }

  protected override coDiscard(offset: number, bytes: number): Promise<void> {
    return this.cbw.snapshotDiscard(offset, bytes);
  }

  protected override async coFlush(): Promise<void> {}

  protected override coBlockStatus(offset: number, bytes: number): Promise<Extent> {
    return this.cbw.snapshotBlockStatus(offset, bytes);
  }
}
