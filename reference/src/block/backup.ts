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
  readonly autoFinalize?: boolean;
  readonly autoDismiss?: boolean;
  /** UNSAFE, known bad (the backup suite's lossy target): while the job runs, guest writes to its
   * source mark no dirty bitmap, so the next incremental backup misses them. */
  readonly xDropDirtyWrites?: boolean;
}

/** QEMU's JobStatus (qapi/job.json). A sync=none backup runs until cancelled, so it only ever
 * reaches created, running, paused, aborting, concluded and null; the others are here so the
 * verb table reads as QEMU's. */
export type JobStatus = 'created' | 'running' | 'paused' | 'ready' | 'standby' | 'waiting' | 'pending' | 'aborting' | 'concluded' | 'null';
export type JobVerb = 'cancel' | 'pause' | 'resume' | 'set-speed' | 'complete' | 'finalize' | 'dismiss';

/** job.c's JobVerbTable (7.2): the states in which each verb is accepted. */
const VERB_STATES: Readonly<Record<JobVerb, readonly JobStatus[]>> = {
  cancel: ['created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending'],
  pause: ['created', 'running', 'paused', 'ready', 'standby'],
  resume: ['created', 'running', 'paused', 'ready', 'standby'],
  'set-speed': ['created', 'running', 'paused', 'ready', 'standby'],
  complete: ['ready'],
  finalize: ['pending'],
  dismiss: ['concluded'],
};

export class BackupJob implements RootParent {
  readonly kind = 'block-job' as const;
  status: JobStatus = 'created';
  filter!: CopyBeforeWriteNode;
  private source!: BlockNode;
  private userPaused = false;
  /** Set when the job concluded with an error ("Operation canceled" after a cancel). */
  error: string | undefined;
  readonly autoFinalize: boolean;
  readonly autoDismiss: boolean;

  constructor(
    private readonly graph: BlockGraph,
    readonly opts: BackupOptions,
  ) {
    this.autoFinalize = opts.autoFinalize ?? true;
    this.autoDismiss = opts.autoDismiss ?? true;
  }

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

  /** job_apply_verb: refuses a verb the current state does not take, in QEMU's words. */
  checkVerb(verb: JobVerb): void {
    if (!VERB_STATES[verb].includes(this.status)) {
      throw new BlockError('EPERM', `Job '${this.opts.jobId}' in state '${this.status}' cannot accept command verb '${verb}'`);
    }
  }

  /** The graph change and the 'created' state: what a transaction's prepare step does
   * (backup_job_create); `run` is its commit (job_start). */
  start(): void {
    this.prepare();
    this.run();
  }

  prepare(): void {
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
    if (this.opts.xDropDirtyWrites) source.dirtyTrackingSuppressed++;
    this.setStatus('created');
  }

  run(): void {
    this.setStatus('running');
  }

  /** job-pause / block-job-pause. Pausing a sync=none backup stops nothing that matters: its
   * copy-before-write filter keeps copying, as in QEMU (the job's coroutine only waits). */
  pause(): void {
    this.checkVerb('pause');
    if (this.userPaused) throw new BlockError('EINVAL', 'Job is already paused');
    this.userPaused = true;
    this.setStatus('paused');
  }

  resume(): void {
    this.checkVerb('resume');
    if (!this.userPaused) throw new BlockError('EINVAL', "Can't resume a job that was not paused");
    this.userPaused = false;
    this.setStatus('running');
  }

  /** job-dismiss: a concluded job (auto-dismiss off) goes away. */
  dismiss(): void {
    this.checkVerb('dismiss');
    this.setStatus('null');
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

  /** query-block-jobs' BlockJobInfo. */
  info(): Record<string, unknown> {
    return {
      type: 'backup',
      device: this.opts.jobId,
      len: this.source.length(),
      offset: this.opts.xNoJobProgress ? 0 : this.filter.bcs.bytesCopied,
      busy: false,
      paused: this.userPaused,
      speed: 0,
      'io-status': 'ok',
      ready: false,
      status: this.status,
      'auto-finalize': this.autoFinalize,
      'auto-dismiss': this.autoDismiss,
      ...(this.error !== undefined ? { error: this.error } : {}),
    };
  }

  /** query-jobs' JobInfo. */
  jobInfo(): Record<string, unknown> {
    return {
      id: this.opts.jobId,
      type: 'backup',
      status: this.status,
      'current-progress': this.opts.xNoJobProgress ? 0 : this.filter.bcs.bytesCopied,
      'total-progress': this.source.length(),
      ...(this.error !== undefined ? { error: this.error } : {}),
    };
  }

  /** job-cancel / block-job-cancel, or the abort of the transaction that created the job
   * (`quiet`: QEMU then emits no BLOCK_JOB_CANCELLED). The filter goes (bdrv_cbw_drop: its
   * parents go back to the source and the filter goes away in one transaction) and the job's
   * handles are released at finalize, before 'concluded'. QEMU's order: aborting,
   * BLOCK_JOB_CANCELLED, concluded, then null unless auto-dismiss is off. */
  async cancel(quiet = false): Promise<void> {
    this.checkVerb('cancel');
    const filter = this.filter;
    this.setStatus('aborting');
    const info = this.info();
    const closed: BlockNode[] = [];
    this.graph.transaction((tx) => {
      this.graph.detachRootTx(tx, this);
      for (const edge of [...filter.parents]) this.graph.replaceChild(tx, edge, this.source);
      this.graph.removeNodeTx(tx, filter, closed);
    });
    if (this.opts.xDropDirtyWrites) this.source.dirtyTrackingSuppressed--;
    for (const n of closed) await n.close();
    if (!quiet) {
      this.graph.emit('BLOCK_JOB_CANCELLED', {
        type: 'backup', device: this.opts.jobId, len: info['len'], offset: info['offset'], speed: 0,
      });
    }
    this.error = 'Operation canceled';
    this.setStatus('concluded');
    if (this.autoDismiss || quiet) this.setStatus('null');
  }
}
