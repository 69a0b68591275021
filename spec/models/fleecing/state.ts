// State of the fleecing models: the source (active image), the target (temp image), the CBW
// bitmaps and one record per actor. Synchronisation structures (block-copy in-flight tasks,
// cow requests, tracked requests on temp, frozen_read_reqs) are not global lists: each is the
// `claim`/`hold` mask of the actor that owns it, so permuting actors (symmetry) permutes them too.
//
// Cluster sets are bitmasks (cluster c is bit c).

/** Data values of a cluster. Positive values are post-snapshot guest data: writer k writes k+1. */
export const SNAPSHOT = 0; // the data at the moment the snapshot was taken
export const UNALLOCATED = -1; // legacy temp overlay: cluster not allocated, reads fall through
export const GARBAGE = -2; // cbw raw target: never written, holds whatever was there
export const DISCARDED = -3; // target range released by a snapshot discard
/** Data written straight into the temp/target image by client `t` of a writable export on it
 * (docs/requirements/qemu-fleecing.md §6 B6): TEMP_DATA + t. Guest data stays below this value. */
export const TEMP_DATA = 64;

/** Post-snapshot guest data: writer k writes k + 1. */
export function isGuestData(v: number): boolean {
  return v > 0 && v < TEMP_DATA;
}

export type WriterPc =
  | 'idle' // guest write not submitted yet
  | 'serialise' // S3: old data read, CBW write to temp not yet marked serialising
  | 'copyWrite' // old data read (claim, buf); writing it to the target
  | 'write' // CBW done (or skipped): waiting for readers where the scheme says so, then write source
  | 'writeEarly' // known-bad write-before-copy: source write first ...
  | 'copyLate' // ... then the copy to the target
  | 'done'
  | 'failed'; // the guest write failed (break-guest-write)

export interface Writer {
  readonly pc: WriterPc;
  /** First cluster of the guest write (-1 before submit or when finished). */
  readonly off: number;
  /** Clusters this write's block-copy task claimed (cleared from the copy bitmap). */
  readonly claim: number;
  /** Old data read from the source for the claimed clusters, in ascending cluster order. */
  readonly buf: readonly number[];
  /** The CBW copy failed. */
  readonly failed: boolean;
  /** The guest write goes to the source without waiting for frozen reads. */
  readonly noWait: boolean;
}

export type ReaderPc =
  | 'idle'
  | 'lookup' // legacy: qcow2 allocation lookup of cluster `pos`
  | 'lock' // cbw: cbw_snapshot_read_lock for [pos, end)
  | 'read' // reading `n` clusters from `pos`, from target (1) or source/backing (0)
  | 'done'
  | 'failed'; // the read returned an error (EACCES)

export interface Reader {
  readonly pc: ReaderPc;
  readonly off: number;
  readonly pos: number;
  /** Chunk length (cbw) or 1 (legacy). */
  readonly n: number;
  /** 1: read the target/temp, 0: read the source/backing. */
  readonly fromTarget: boolean;
  /** What this read holds against CBW: cow request (S2), tracked temp request (S3) or frozen
   * read request (S4), as a cluster mask. */
  readonly hold: number;
  /** First non-snapshot value this read returned (SNAPSHOT when none so far) and its cluster. */
  readonly bad: number;
  readonly badAt: number;
}

export interface Discarder {
  /** waiting: the reference's discard has dropped access, the target is not freed yet. */
  readonly pc: 'idle' | 'waiting' | 'done';
  readonly off: number;
}

export interface FleecingState {
  readonly source: readonly number[];
  readonly target: readonly number[];
  /** block-copy copy_bitmap: clusters whose old data still has to be copied. */
  readonly copy: number;
  /** cbw done_bitmap: old data is on the target. */
  readonly done: number;
  /** cbw access_bitmap: clusters the snapshot reader may read. */
  readonly access: number;
  /** cbw snapshot_error (break-snapshot after a failed copy). */
  readonly snapshotError: boolean;
  /** Copy failures the environment may still inject. */
  readonly failuresLeft: number;
  readonly writers: readonly Writer[];
  readonly readers: readonly Reader[];
  /** The snapshot client's discard (S4 with discard on), or undefined. */
  readonly discarder: Discarder | undefined;
  /** Temp writers (clients of a writable export on the temp image) that have written, as a mask. */
  readonly tempDone: number;
}

export const IDLE_WRITER: Writer = { pc: 'idle', off: -1, claim: 0, buf: [], failed: false, noWait: false };
export const IDLE_READER: Reader = { pc: 'idle', off: -1, pos: 0, n: 0, fromTarget: false, hold: 0, bad: SNAPSHOT, badAt: -1 };

/** Mask of clusters [off, off + size). */
export function rangeMask(off: number, size: number): number {
  return ((1 << size) - 1) << off;
}

/** Clusters of a mask, ascending. */
export function clustersOf(mask: number): number[] {
  const out: number[] = [];
  for (let c = 0; mask >> c; c++) if ((mask >> c) & 1) out.push(c);
  return out;
}

/** "cluster 2" or "clusters 1-2", for messages. */
export function describeRange(off: number, size: number): string {
  return size === 1 ? `cluster ${off}` : `clusters ${off}-${off + size - 1}`;
}

/** Readable name of a data value. */
export function describeValue(v: number): string {
  if (v === SNAPSHOT) return 'snapshot';
  if (v === UNALLOCATED) return 'unalloc';
  if (v === GARBAGE) return 'garbage';
  if (v === DISCARDED) return 'discarded';
  if (v >= TEMP_DATA) return `T${v - TEMP_DATA}`;
  return `W${v - 1}`;
}
