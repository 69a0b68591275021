// blockdev-backup sync=none: legacy image fleecing (docs/requirements/qemu-fleecing.md §5.2). The job inserts a
// copy-before-write filter above the source (bdrv_cbw_append + bdrv_insert_node: the source's
// parents move onto the filter, except those the filter itself reaches, such as the temp image's
// backing edge) and holds two handles with no permissions (backup_job_create: "required
// permissions are already taken by block-copy-state target"). Its copies into the target are
// serialising because the target's backing chain contains the source (QEMU 3.0's fix), unless the
// explicitly unsafe `x-unserialized-target-writes` restores the pre-3.0 race.
import type { RootParent } from './backend.ts';
import { BlockError } from './errors.ts';
import type { BlockGraph, Transaction } from './graph.ts';
import { CopyBeforeWriteNode } from './drivers/copy-before-write.ts';
import { BlockNode } from './node.ts';
import { PERM_ALL } from './perm.ts';

export interface BackupOptions {
  readonly jobId: string;
  readonly device: string;
  readonly target: string;
  readonly sync: 'none';
  readonly filterNodeName?: string;
  /** UNSAFE, for reproducing the 2018 race only: copies into the target are not serialising. */
  readonly xUnserializedTargetWrites?: boolean;
  /** UNSAFE, known bad for tests only: the job reports no progress (`offset` stays 0). */
  readonly xNoJobProgress?: boolean;
  readonly onCbwError?: 'break-guest-write' | 'break-snapshot';
}

export type JobStatus = 'created' | 'running' | 'aborting' | 'concluded' | 'null';

export class BackupJob implements RootParent {
  readonly kind = 'block-job' as const;
  status: JobStatus = 'created';
  filter!: CopyBeforeWriteNode;
  private source!: BlockNode;

  constructor(
    private readonly graph: BlockGraph,
    readonly opts: BackupOptions,
  ) {}

  get name(): string {
    return this.opts.jobId;
  }

  describe(): string {
    return `backup job '${this.opts.jobId}'`;
  }

  private setStatus(status: JobStatus): void {
    this.status = status;
    this.graph.emit('JOB_STATUS_CHANGE', { id: this.opts.jobId, status });
  }

  start(): void {
    const { device, target, sync } = this.opts;
    if (sync !== 'none') throw new BlockError('ENOTSUP', `backup sync='${String(sync)}' is not supported by the reference (only 'none')`);
    const source = this.graph.requireNode(device);
    const targetNode = this.graph.requireNode(target);
    if (source === targetNode) throw new BlockError('EINVAL', `backup: source and target are the same node '${device}'`);
    if (targetNode.length() < source.length()) {
      throw new BlockError('EINVAL', `backup: target '${target}' (${targetNode.length()} bytes) is smaller than source '${device}' (${source.length()} bytes)`);
    }
    this.source = source;
    this.graph.transaction((tx) => {
      const filter = this.graph.createNode(
        tx,
        {
          driver: 'copy-before-write',
          ...(this.opts.filterNodeName ? { 'node-name': this.opts.filterNodeName } : {}),
          file: device,
          target,
          'on-cbw-error': this.opts.onCbwError ?? 'break-guest-write',
          'x-unserialized-target-writes': this.opts.xUnserializedTargetWrites ?? false,
        },
        this.opts.filterNodeName === undefined,
      ) as CopyBeforeWriteNode;
      this.filter = filter;
      this.insertAbove(tx, filter, source);
      this.graph.attachJobEdge(tx, this, 'main node', filter, 0, PERM_ALL);
      this.graph.attachJobEdge(tx, this, 'target', targetNode, 0, PERM_ALL);
    });
    this.setStatus('created');
    this.setStatus('running');
  }

  /** bdrv_replace_node(from, to) minus should_update_child's exceptions: an edge whose parent is
   * reachable from `to` stays, or the graph would get a loop. */
  private insertAbove(tx: Transaction, to: BlockNode, from: BlockNode): void {
    const reachable = new Set<BlockNode>();
    const walk = (n: BlockNode): void => {
      if (reachable.has(n)) return;
      reachable.add(n);
      for (const c of n.children) walk(c.node);
    };
    walk(to);
    for (const edge of [...from.parents].reverse()) {
      if (edge.parent === to) continue;
      if (edge.parent instanceof BlockNode && reachable.has(edge.parent)) continue;
      this.graph.replaceChild(tx, edge, to);
    }
  }

  info(): Record<string, unknown> {
    return {
      type: 'backup',
      device: this.opts.jobId,
      len: this.source.length(),
      offset: this.opts.xNoJobProgress ? 0 : this.filter.bcs.bytesCopied,
      busy: false,
      paused: false,
      speed: 0,
      'io-status': 'ok',
      ready: false,
      status: this.status,
      'auto-finalize': true,
      'auto-dismiss': true,
    };
  }

  /** block-job-cancel: drop the filter (bdrv_cbw_drop: its parents go back to the source and the
   * filter goes away in one transaction), release the job's handles. */
  async cancel(): Promise<void> {
    const filter = this.filter;
    this.setStatus('aborting');
    const info = this.info();
    const closed: BlockNode[] = [];
    this.graph.transaction((tx) => {
      this.graph.detachRootTx(tx, this);
      for (const edge of [...filter.parents]) this.graph.replaceChild(tx, edge, this.source);
      this.graph.removeNodeTx(tx, filter, closed);
    });
    for (const n of closed) await n.close();
    // QEMU's order: aborting, BLOCK_JOB_CANCELLED (at finalize), concluded, null.
    this.graph.emit('BLOCK_JOB_CANCELLED', {
      type: 'backup', device: this.opts.jobId, len: info['len'], offset: info['offset'], speed: 0,
    });
    this.setStatus('concluded');
    this.setStatus('null');
  }
}
