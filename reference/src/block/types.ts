// Shared vocabulary of the reference block layer (mirrors include/block/block-common.h).

/** Request flags, the subset of QEMU's BdrvRequestFlags the fleecing stack needs. */
export interface RequestFlags {
  /** Force unit access: the write is durable when it completes (NBD_CMD_FLAG_FUA). */
  readonly fua?: boolean;
  /** BDRV_REQ_WRITE_UNCHANGED: the data written equals what is there; skips copy-before-write. */
  readonly writeUnchanged?: boolean;
  /** BDRV_REQ_SERIALISING: wait for every overlapping request, cluster-aligned (block/io.c). */
  readonly serialising?: boolean;
  /** Write-zeroes only: the range must read as zeroes and stay allocated (NBD_CMD_FLAG_NO_HOLE;
   * QEMU: absence of BDRV_REQ_MAY_UNMAP). */
  readonly noHole?: boolean;
  /** Write-zeroes only: fail with ENOTSUP rather than fall back to writing zero buffers
   * (NBD_CMD_FLAG_FAST_ZERO; BDRV_REQ_NO_FALLBACK). */
  readonly fastZero?: boolean;
}

/** One block-status extent (bdrv_co_block_status): `allocated` means the data comes from this
 * node or its file (not from a backing), `zero` means it reads as zeroes. `data` is
 * BDRV_BLOCK_DATA, what NBD base:allocation's HOLE flag is the negation of; absent, it equals
 * `allocated`. A qcow2 zero cluster is allocated (it hides the backing) but holds no data. */
export interface Extent {
  readonly offset: number;
  readonly length: number;
  readonly allocated: boolean;
  readonly zero: boolean;
  readonly data?: boolean;
}

/** Whether an extent holds data (not an NBD hole). */
export function extentHasData(e: Extent): boolean {
  return e.data ?? e.allocated;
}

/** The data-path contract an export (NBD) uses: a BlockBackend in QEMU terms. */
export interface BlockBackend {
  /** Who this root user is, for permission-conflict messages ("an unnamed block device", or
   * "block device 'exp-live'"). */
  readonly user: string;
  readonly nodeName: string;
  length(): number;
  read(offset: number, bytes: number, flags?: RequestFlags): Promise<Buffer>;
  write(offset: number, data: Buffer, flags?: RequestFlags): Promise<void>;
  writeZeroes(offset: number, bytes: number, flags?: RequestFlags): Promise<void>;
  discard(offset: number, bytes: number): Promise<void>;
  flush(): Promise<void>;
  /** Extents covering [offset, offset+bytes) in order, at least one, merged where equal. */
  blockStatus(offset: number, bytes: number): Promise<Extent[]>;
  /** Detach from the graph, dropping this user's permissions. */
  detach(): void;
}
