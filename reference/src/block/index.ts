// Public surface of the reference block layer.
export { BlockGraph, Transaction, type BlockGraphInfo, type BlockGraphEdgeInfo } from './graph.ts';
export { BlockNode, BdrvChild, FilterNode, type Parent } from './node.ts';
export { BackendImpl } from './backend.ts';
export { BackupJob, type BackupOptions } from './backup.ts';
export { BlockError, isBlockError, type Errno } from './errors.ts';
export { PERM, PERM_ALL, permList, permListQapi, permNames, permFromNames } from './perm.ts';
export type { BlockBackend, Extent, RequestFlags } from './types.ts';
export { CopyBeforeWriteNode } from './drivers/copy-before-write.ts';
export { SnapshotAccessNode } from './drivers/snapshot-access.ts';
export { OverlayNode } from './drivers/overlay.ts';
export { Qcow2Node } from './drivers/qcow2.ts';
export { DelayNode, Gate } from './drivers/delay.ts';
export { BlkdebugNode } from './drivers/blkdebug.ts';
export { MemoryNode } from './drivers/memory.ts';
export { FileNode } from './drivers/file.ts';
export { DRIVERS } from './drivers/index.ts';
export { Breakpoints, BREAKPOINT_EVENTS, type BreakpointEvent, type BreakpointHit, type BreakpointFilter } from './breakpoints.ts';

import { PERM, PERM_ALL } from './perm.ts';
/** blk_exp_add + NBD: consistent-read (+write when writable), shared all but resize (§1.6). */
export function exportPerms(writable: boolean): { perm: number; shared: number } {
  return {
    perm: PERM.CONSISTENT_READ | (writable ? PERM.WRITE : 0),
    shared: PERM_ALL & ~PERM.RESIZE,
  };
}
