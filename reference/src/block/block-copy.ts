// block-copy (block/block-copy.c): copies dirty clusters from a source edge to a target edge,
// clearing them in the copy bitmap when a task starts and setting them back if it fails. In-flight
// tasks sit in a range list; a caller that needs a range owned by another task waits for it, so
// block_copy returns only when every cluster of its range is on the target (docs/requirements/qemu-fleecing.md §2.2).
import { ClusterBitmap } from './bitmap.ts';
import type { Breakpoints } from './breakpoints.ts';
import type { BdrvChild } from './node.ts';
import { RangeList } from './reqlist.ts';

/** Largest single copy task, in clusters. */
const MAX_TASK_CLUSTERS = 16;

export interface BlockCopyOptions {
  readonly clusterSize: number;
  /** BDRV_REQ_SERIALISING on target writes: the legacy fleecing fix of QEMU 3.0
   * (commit f8d59dfb40bb), on when the target's backing chain contains the source. */
  readonly serialisingTargetWrites: boolean;
  /** Clusters to copy; all clusters when absent. */
  readonly initialBitmap?: ClusterBitmap;
  readonly breakpoints: Breakpoints;
  /** The owning filter's node name, for breakpoint filters. */
  readonly nodeName: string;
}

export class BlockCopyState {
  readonly copyBitmap: ClusterBitmap;
  readonly tasks = new RangeList();
  readonly clusterSize: number;
  readonly serialisingTargetWrites: boolean;
  /** Bytes copied so far (the backup job's `offset`). */
  bytesCopied = 0;
  private readonly bp: Breakpoints;
  private readonly nodeName: string;

  constructor(
    readonly source: BdrvChild,
    readonly target: BdrvChild,
    opts: BlockCopyOptions,
  ) {
    this.clusterSize = opts.clusterSize;
    this.serialisingTargetWrites = opts.serialisingTargetWrites;
    this.copyBitmap = opts.initialBitmap ?? new ClusterBitmap(source.node.length(), this.clusterSize, true);
    this.bp = opts.breakpoints;
    this.nodeName = opts.nodeName;
  }

  /** block_copy: on return every cluster of [offset, offset+bytes) that needed copying is on the
   * target; throws the first copy error of this call. */
  async copy(offset: number, bytes: number): Promise<void> {
    const [first, last] = this.copyBitmap.clusterRange(offset, bytes);
    for (;;) {
      const run = this.copyBitmap.firstSetRun(first, last, MAX_TASK_CLUSTERS);
      if (run) {
        await this.runTask(run[0], run[1]);
        continue;
      }
      const start = first * this.clusterSize;
      const end = Math.min(last * this.clusterSize, this.copyBitmap.length);
      const other = this.tasks.findConflict(start, end - start);
      if (!other) return;
      await other.done;
    }
  }

  private async runTask(firstCluster: number, lastCluster: number): Promise<void> {
    const off = firstCluster * this.clusterSize;
    const end = Math.min(lastCluster * this.clusterSize, this.copyBitmap.length);
    this.copyBitmap.setClusters(firstCluster, lastCluster, false);
    const task = this.tasks.add(off, end - off);
    try {
      const data = await this.source.read(off, end - off);
      if (this.bp.armed) await this.bp.reach('cbw-target-write', this.nodeName, off, end - off);
      await this.target.write(off, data, { serialising: this.serialisingTargetWrites });
      this.bytesCopied += end - off;
    } catch (e) {
      // Passed on as it is: copy-before-write keeps the target's own errno for the guest under
      // break-guest-write (and makes anything that is not a BlockError EIO).
      this.copyBitmap.setClusters(firstCluster, lastCluster, true);
      throw e;
    } finally {
      this.tasks.remove(task);
    }
  }

  /** block_copy_reset: these clusters need no copy any more (snapshot discard). */
  reset(offset: number, bytes: number): void {
    this.copyBitmap.setRange(offset, bytes, false);
  }
}
