// The fleecing schemes as data: which protection each design has (docs/requirements/qemu-fleecing.md §2.3, §3,
// §6 B0-B4). One model (model.ts) interprets a Scheme; a known-bad variant is the same record
// with one protection dropped, so "the check can fail" is shown on the closest possible design.

/** How snapshot reads are ordered against copy-before-write (the thing the seed argued about). */
export type ReaderProtection =
  /** S1: nothing orders the NBD read on temp against the backup's CBW (docs/requirements/qemu-fleecing.md §3). */
  | 'none'
  /** S2, the seed's fleecing-filter: wait for overlapping CoW, then hold a cow request on the
   * range for the whole read so CBW waits (backup_wait_for_overlapping_requests +
   * backup_cow_request_begin/end). */
  | 'cow-freeze'
  /** S2 without the freeze: the read waits for in-flight CoW but does not hold CBW off. */
  | 'cow-wait-only'
  /** S3, QEMU 3.0: the read is a tracked request on temp; the CBW write to temp is serialising
   * (BDRV_REQ_SERIALISING, §2.1 rules a-c), so it waits for it. */
  | 'temp-tracked'
  /** S4, QEMU 7.0+: reads of not-yet-done clusters register in frozen_read_reqs
   * (cbw_snapshot_read_lock) and the guest write waits for them (reqlist_wait_all). */
  | 'frozen-reqs'
  /** S4 without registering frozen reads: the wait finds nothing. */
  | 'frozen-untracked';

export interface Scheme {
  /** Model name as `fleece explore --model` accepts it. */
  readonly name: string;
  readonly summary: string;
  /** legacy: temp overlay backed by the source, reader = qcow2 allocation lookup then read;
   * cbw: copy-before-write + snapshot-access (done/access bitmaps, raw target). */
  readonly kind: 'legacy' | 'cbw';
  readonly readers: ReaderProtection;
  /** S3: the CBW write into temp is serialising (waits for overlapping temp reads). */
  readonly serialisedCopy: boolean;
  /** Known-bad: done bit set when the copy starts, before the data lands on the target. */
  readonly doneBeforeCopy: boolean;
  /** Known-bad: the guest write reaches the source before the old data lands on the target. */
  readonly writeBeforeCopy: boolean;
  /** Known-bad: a snapshot discard forgets in-flight frozen reads of the discarded range. */
  readonly discardUntracked: boolean;
  /** QEMU 7.1-as-merged: once snapshot_error is set, cbw_do_copy_before_write returns before
   * reqlist_wait_all, so a later guest write does not wait for reads frozen earlier. */
  readonly errorEarlyReturn: boolean;
  /** Known-bad: under break-snapshot, the write whose copy failed does not wait for readers. */
  readonly errorSkipsWait: boolean;
  /** Known-bad: under break-guest-write, a failed copy does not fail the guest write. */
  readonly errorIgnored: boolean;
  /** QEMU 7.2's hbitmap_status (util/hbitmap.c, fixed in 8.0): asked about a range that starts
   * in done clusters and reaches a not-done one, the done bitmap reports the done prefix (right
   * length) as not done, so cbw_snapshot_read_lock reads that prefix from the source. */
  readonly donePrefixNotDone: boolean;
  /** What the explorer must conclude with default parameters. */
  readonly expect: 'holds' | 'violates';
  /** The section of docs/requirements/qemu-fleecing.md the scheme mirrors. */
  readonly cites: string;
  /** Parameter defaults that differ from the common ones (a variant needs its feature on). */
  readonly defaults?: {
    readonly onCbwError?: 'break-guest-write' | 'break-snapshot';
    readonly discard?: boolean;
    readonly readSize?: number;
  };
}

const base = {
  serialisedCopy: false,
  doneBeforeCopy: false,
  writeBeforeCopy: false,
  discardUntracked: false,
  errorEarlyReturn: false,
  errorSkipsWait: false,
  errorIgnored: false,
  donePrefixNotDone: false,
} as const;

export const S1: Scheme = {
  ...base,
  name: 's1',
  summary: 'S1: backup sync=none into a temp overlay, no serialization (the seed race)',
  kind: 'legacy',
  readers: 'none',
  expect: 'violates',
  cites: 'docs/requirements/qemu-fleecing.md §3, §6 B0; docs/design.md "The race" steps 1-7',
};

export const S2: Scheme = {
  ...base,
  name: 's2',
  summary: "S2: the seed's fleecing-filter (reads freeze CBW for their range)",
  kind: 'legacy',
  readers: 'cow-freeze',
  expect: 'holds',
  cites: 'docs/requirements/qemu-fleecing.md §3 (fleecing-filter patch)',
};

export const S3: Scheme = {
  ...base,
  name: 's3',
  summary: 'S3: serialised CBW writes into temp (QEMU 3.0, f8d59dfb40bb)',
  kind: 'legacy',
  readers: 'temp-tracked',
  serialisedCopy: true,
  expect: 'holds',
  cites: 'docs/requirements/qemu-fleecing.md §2.1, §3',
};

export const S4: Scheme = {
  ...base,
  name: 's4',
  summary: 'S4: copy-before-write + snapshot-access (QEMU 7.0+), waiting for frozen reads on every path',
  kind: 'cbw',
  readers: 'frozen-reqs',
  expect: 'holds',
  cites: 'docs/requirements/qemu-fleecing.md §2.3, §6 B1-B4',
};

/** Known-bad variants: each drops exactly one protection of a scheme that holds. */
export const KNOWN_BAD: readonly Scheme[] = [
  {
    ...S2,
    name: 's2-no-freeze',
    summary: 'S2 with reads that wait for in-flight CoW but do not freeze it',
    readers: 'cow-wait-only',
    expect: 'violates',
  },
  {
    ...S3,
    name: 's3-no-read-tracking',
    summary: 'S3 with temp reads that are not tracked (the serialising CBW write has nothing to wait for)',
    readers: 'none',
    expect: 'violates',
  },
  {
    ...S4,
    name: 's4-no-read-tracking',
    summary: 'S4 with snapshot reads from the source not registered in frozen_read_reqs',
    readers: 'frozen-untracked',
    expect: 'violates',
  },
  {
    ...S4,
    name: 's4-done-before-copy',
    summary: 'S4 with the done bit set when the copy starts, before the data lands on the target',
    doneBeforeCopy: true,
    expect: 'violates',
  },
  {
    ...S4,
    name: 's4-write-before-copy',
    summary: 'S4 with the guest write reaching the source before the copy lands on the target',
    writeBeforeCopy: true,
    expect: 'violates',
  },
  {
    ...S4,
    name: 's4-discard-untracked',
    summary: 'S4 whose snapshot discard forgets in-flight frozen reads of the discarded range',
    discardUntracked: true,
    defaults: { discard: true },
    expect: 'violates',
  },
  {
    ...S4,
    name: 's4-error-skips-wait',
    summary: 'S4 whose failed copy under break-snapshot lets the guest write go without waiting for readers',
    errorSkipsWait: true,
    defaults: { onCbwError: 'break-snapshot' },
    expect: 'violates',
  },
  {
    ...S4,
    name: 's4-error-ignored',
    summary: 'S4 whose failed copy under break-guest-write still lets the guest write through',
    errorIgnored: true,
    expect: 'violates',
  },
];

/** QEMU 7.1-7.2 as merged ("block/copy-before-write: add on-cbw-error open parameter"): a guest
 * write that arrives after snapshot_error was set returns before reqlist_wait_all. A finding of
 * this model, not a deliberately broken design: see spec/README.md. */
export const S4_QEMU_EARLY_RETURN: Scheme = {
  ...S4,
  name: 's4-qemu-7.1-early-return',
  summary: 'S4 as merged in QEMU 7.1: after snapshot_error, guest writes skip the wait for frozen reads',
  errorEarlyReturn: true,
  defaults: { onCbwError: 'break-snapshot' },
  expect: 'violates',
  cites: 'docs/requirements/qemu-fleecing.md §2.3 step 2; PULL 02/10 "add on-cbw-error open parameter" (June 2022)',
};

/** QEMU 7.2's done-bitmap query (finding F1/F3, conformance/fleecing/README.md): hbitmap_status
 * reports a done prefix followed by a not-done cluster as not done, so cbw_snapshot_read_lock
 * serves that prefix from the source, which the guest may already have overwritten (its write to
 * a done cluster waits for nothing). Only reads of 2+ clusters can straddle, hence readSize 2. */
export const S4_QEMU_HBITMAP_STATUS: Scheme = {
  ...S4,
  name: 's4-qemu-7.2-hbitmap-status',
  summary:
    'S4 as in QEMU 7.2: the done-bitmap query reports a done prefix followed by a not-done cluster as not done (hbitmap_status), so that prefix is read from the source',
  donePrefixNotDone: true,
  defaults: { readSize: 2 },
  expect: 'violates',
  cites:
    'util/hbitmap.c hbitmap_status (QEMU 7.2; fixed in 8.0 by "hbitmap: fix hbitmap_status() return value for first dirty bit case"); conformance fleecing/straddle/*',
};

export const SCHEMES: readonly Scheme[] = [S1, S2, S3, S4, ...KNOWN_BAD, S4_QEMU_EARLY_RETURN, S4_QEMU_HBITMAP_STATUS];
