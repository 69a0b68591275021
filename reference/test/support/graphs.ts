// Builders for the two fleecing graphs of docs/requirements/qemu-fleecing.md §1.5 / §5, in-process.
import {
  BlockGraph,
  exportPerms,
  type BlockBackend,
  type BackupJob,
  type CopyBeforeWriteNode,
  type DelayNode,
} from '../../src/block/index.ts';

export const MiB = 1024 * 1024;
export const KiB = 1024;

export interface FleecingSetup {
  graph: BlockGraph;
  /** The guest's view: writable export (modern: on fl-cbw; legacy: moved above the filter). */
  live: BlockBackend;
  /** The snapshot reader's view: read-only export (modern: fl-access; legacy: temp). */
  fleece: BlockBackend;
  /** A delay filter named `source` over the disk `disk0`, for gates and latency. */
  source: DelayNode;
  cbw: CopyBeforeWriteNode;
  job?: BackupJob;
  teardown(): Promise<void>;
}

export interface ModernOptions {
  size?: number;
  cbw?: Record<string, unknown>;
  /** Options for the temp (target) node; default a memory node of the same size. */
  temp?: Record<string, unknown>;
  /** Create the snapshot export writable (needed for snapshot discard). */
  fleeceWritable?: boolean;
  /** discard option of fl-access. */
  accessDiscard?: 'unmap' | 'ignore';
  /** Runs after disk0 exists and before cbw opens (e.g. to add a dirty bitmap). */
  beforeCbw?: (graph: BlockGraph) => void;
  /** Write initial data before the snapshot is taken. */
  prefill?: (disk: BlockBackend) => Promise<void>;
}

async function prefillDisk(graph: BlockGraph, fill?: (disk: BlockBackend) => Promise<void>): Promise<void> {
  if (!fill) return;
  const b = graph.attachBackend('an unnamed block device', 'source', exportPerms(true).perm, exportPerms(true).shared);
  await fill(b);
  b.detach();
}

/** Modern: source, temp, fl-cbw (copy-before-write), fl-access (snapshot-access). */
export async function modernGraph(o: ModernOptions = {}): Promise<FleecingSetup> {
  const size = o.size ?? 64 * MiB;
  const graph = new BlockGraph();
  graph.addNode({ driver: 'memory', 'node-name': 'disk0', size });
  const source = graph.addNode({ driver: 'delay', 'node-name': 'source', file: 'disk0' }) as DelayNode;
  await prefillDisk(graph, o.prefill);
  o.beforeCbw?.(graph);
  graph.addNode({ 'node-name': 'temp', ...(o.temp ?? { driver: 'memory', size }) });
  const cbw = graph.addNode({ driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'source', target: 'temp', ...o.cbw }) as CopyBeforeWriteNode;
  graph.addNode({ driver: 'snapshot-access', 'node-name': 'fl-access', file: 'fl-cbw', discard: o.accessDiscard ?? 'ignore' });
  const le = exportPerms(true);
  const live = graph.attachBackend('an unnamed block device', 'fl-cbw', le.perm, le.shared);
  const fe = exportPerms(o.fleeceWritable ?? false);
  const fleece = graph.attachBackend('an unnamed block device', 'fl-access', fe.perm, fe.shared);
  return {
    graph, live, fleece, source, cbw,
    async teardown() {
      fleece.detach();
      await graph.deleteNode('fl-access');
      live.detach();
      await graph.deleteNode('fl-cbw');
      await graph.deleteNode('temp');
    },
  };
}

export interface LegacyOptions {
  size?: number;
  unsafe?: boolean;
  prefill?: (disk: BlockBackend) => Promise<void>;
  filterNodeName?: string;
  /** The temp node's blockdev options in place of the in-memory overlay (e.g. a qcow2 image);
   * node-name and backing=source are added. */
  temp?: Record<string, unknown>;
}

/** Legacy: temp (overlay backed by source), export `live` on source, blockdev-backup sync=none
 * (which moves `live` above its filter), export `fleece` on temp. */
export async function legacyGraph(o: LegacyOptions = {}): Promise<FleecingSetup> {
  const size = o.size ?? 64 * MiB;
  const graph = new BlockGraph();
  graph.addNode({ driver: 'memory', 'node-name': 'disk0', size });
  const source = graph.addNode({ driver: 'delay', 'node-name': 'source', file: 'disk0' }) as DelayNode;
  await prefillDisk(graph, o.prefill);
  graph.addNode({ ...(o.temp ?? { driver: 'overlay', file: { driver: 'memory', size } }), 'node-name': 'temp', backing: 'source' });
  const le = exportPerms(true);
  const live = graph.attachBackend('an unnamed block device', 'source', le.perm, le.shared);
  const job = graph.startBackup({
    jobId: 'fleecing', device: 'source', target: 'temp', sync: 'none',
    ...(o.filterNodeName ? { filterNodeName: o.filterNodeName } : {}),
    ...(o.unsafe ? { xUnserializedTargetWrites: true } : {}),
  });
  const fe = exportPerms(false);
  const fleece = graph.attachBackend('an unnamed block device', 'temp', fe.perm, fe.shared);
  return {
    graph, live, fleece, source, cbw: job.filter, job,
    async teardown() {
      fleece.detach();
      await graph.cancelJob('fleecing');
      live.detach();
      await graph.deleteNode('temp');
    },
  };
}

export function pattern(byte: number, len: number): Buffer {
  return Buffer.alloc(len, byte);
}

/** A readable description of the first differing byte, for assertion messages. */
export function firstDiff(a: Buffer, b: Buffer, base = 0): string | undefined {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return `offset 0x${(base + i).toString(16)}: got 0x${a[i]!.toString(16)}, expected 0x${b[i]!.toString(16)}`;
  }
  return a.length === b.length ? undefined : `length ${a.length} != ${b.length}`;
}
