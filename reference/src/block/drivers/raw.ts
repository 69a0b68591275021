// `raw`: the raw format over a `file` child. Without offset/size it is a pure filter
// (BDRV_CHILD_FILTERED), which is how QEMU treats it for permissions.
import { FilterNode } from '../node.ts';
import type { DriverContext } from './registry.ts';

export class RawNode extends FilterNode {
  constructor(ctx: DriverContext) {
    super(ctx.nodeName, 'raw', ctx.common);
    ctx.addChild(this, 'file', 'filtered', true);
  }
}
