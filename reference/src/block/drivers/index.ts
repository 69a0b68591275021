// The driver table: blockdev-add's `driver` values the reference supports.
import { BlkdebugNode } from './blkdebug.ts';
import { CopyBeforeWriteNode } from './copy-before-write.ts';
import { DelayNode } from './delay.ts';
import { FileNode } from './file.ts';
import { MemoryNode } from './memory.ts';
import { OverlayNode } from './overlay.ts';
import { Qcow2Node } from './qcow2.ts';
import { RawNode } from './raw.ts';
import type { DriverFactory } from './registry.ts';
import { SnapshotAccessNode } from './snapshot-access.ts';
import { ThrottleNode } from './throttle.ts';

export const DRIVERS: Readonly<Record<string, DriverFactory>> = {
  file: (ctx) => new FileNode(ctx),
  memory: (ctx) => new MemoryNode(ctx),
  raw: (ctx) => new RawNode(ctx),
  overlay: (ctx) => new OverlayNode(ctx),
  'copy-before-write': (ctx) => new CopyBeforeWriteNode(ctx),
  'snapshot-access': (ctx) => new SnapshotAccessNode(ctx),
  delay: (ctx) => new DelayNode(ctx),
  blkdebug: (ctx) => new BlkdebugNode(ctx),
  qcow2: (ctx) => new Qcow2Node(ctx),
  throttle: (ctx) => new ThrottleNode(ctx),
};

/** QEMU drivers a user may reach for, and what to use in the reference instead. */
export const DRIVER_HINTS: Readonly<Record<string, string>> = {
  'null-co': "use 'memory'",
};
