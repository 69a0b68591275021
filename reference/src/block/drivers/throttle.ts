// `throttle`: QEMU's throttle filter (block/throttle.c). Every read, write, write-zeroes and
// discard first passes its group's buckets (`throttle-group=ID`, a `--object throttle-group`);
// flush and block status are not throttled. A plain filter for permissions: QEMU 7.2 opens its
// `file` child as FILTERED|PRIMARY and takes bdrv_default_perms, so it passes its parents'
// permissions through (bdrv_filter_default_perms).
import { BlockError } from '../errors.ts';
import { FilterNode } from '../node.ts';
import { ThrottleGroup } from '../throttle.ts';
import type { RequestFlags } from '../types.ts';
import type { DriverContext } from './registry.ts';

export class ThrottleNode extends FilterNode {
  readonly group: ThrottleGroup;
  readonly groupId: string;
  private readonly release: () => void;

  constructor(ctx: DriverContext) {
    super(ctx.nodeName, 'throttle', ctx.common);
    // QAPI has throttle-group required (checked before the child is opened); the group itself is
    // looked up after the child, in throttle_configure_tgm.
    const id = ctx.opts.requiredString('throttle-group');
    ctx.addChild(this, 'file', 'filtered', true);
    const user = `node '${ctx.nodeName}'`;
    const group = ctx.graph.objects.use(id, 'throttle-group', user);
    if (!(group instanceof ThrottleGroup)) {
      throw new BlockError('ENOENT', `Throttle group '${id}' does not exist`, { node: ctx.nodeName });
    }
    this.group = group;
    this.groupId = id;
    this.release = () => ctx.graph.objects.release(id, user);
  }

  protected override async coRead(offset: number, bytes: number, flags: RequestFlags): Promise<Buffer> {
    await this.group.intercept(false, bytes);
    return super.coRead(offset, bytes, flags);
  }
  protected override async coWrite(offset: number, data: Buffer, flags: RequestFlags): Promise<void> {
    await this.group.intercept(true, data.length);
    return super.coWrite(offset, data, flags);
  }
  protected override async coWriteZeroes(offset: number, bytes: number, flags: RequestFlags): Promise<void> {
    await this.group.intercept(true, bytes);
    return super.coWriteZeroes(offset, bytes, flags);
  }
  protected override async coDiscard(offset: number, bytes: number): Promise<void> {
    await this.group.intercept(true, bytes);
    return super.coDiscard(offset, bytes);
  }

  override async close(): Promise<void> {
    this.release();
  }
}
