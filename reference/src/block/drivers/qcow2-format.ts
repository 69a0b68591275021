// The qcow2 on-disk format as pure functions over buffers (QEMU's docs/interop/qcow2.txt): the
// header, its extensions, L1/L2 entries and refcount entries. No I/O here; the driver
// (qcow2.ts) reads and writes the bytes.

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"

/** Incompatible feature bits (qcow2.txt "incompatible_features"). */
export const INCOMPAT = {
  DIRTY: 1n << 0n,
  CORRUPT: 1n << 1n,
  DATA_FILE: 1n << 2n,
  COMPRESSION: 1n << 3n,
  EXTL2: 1n << 4n,
} as const;
export const INCOMPAT_NAMES: ReadonlyArray<readonly [bigint, string]> = [
  [INCOMPAT.DIRTY, 'dirty bit'],
  [INCOMPAT.CORRUPT, 'corrupt bit'],
  [INCOMPAT.DATA_FILE, 'external data file'],
  [INCOMPAT.COMPRESSION, 'compression type'],
  [INCOMPAT.EXTL2, 'extended L2 entries'],
];
/** Compatible feature bit 0: lazy refcounts (the reference never uses them: refcounts are
 * written with every allocation, so an image it leaves is consistent without a repair). */
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
/** Autoclear bit 0: the bitmaps extension is consistent. */
export const AUTOCLEAR_BITMAPS = 1n << 0n;

/** Header extension types (qcow2.txt "Header extensions"). */
export const EXT = {
  END: 0x00000000,
  BACKING_FORMAT: 0xe2792aca,
  FEATURE_TABLE: 0x6803f857,
  BITMAPS: 0x23852875,
  CRYPTO: 0x0537be77,
  DATA_FILE: 0x44415441,
} as const;

/** Byte offsets of the header fields the driver rewrites in place. */
export const HEADER_FIELD = {
  REFCOUNT_TABLE_OFFSET: 48,
  REFCOUNT_TABLE_CLUSTERS: 56,
  INCOMPATIBLE: 72,
  AUTOCLEAR: 88,
} as const;

export interface HeaderExtension {
  readonly type: number;
  readonly data: Buffer;
}

export interface Qcow2Header {
  readonly version: 2 | 3;
  readonly backingFileOffset: number;
  readonly backingFileSize: number;
  readonly clusterBits: number;
  readonly size: number;
  readonly cryptMethod: number;
  readonly l1Size: number;
  readonly l1TableOffset: number;
  readonly refcountTableOffset: number;
  readonly refcountTableClusters: number;
  readonly nbSnapshots: number;
  readonly snapshotsOffset: number;
  readonly incompatible: bigint;
  readonly compatible: bigint;
  readonly autoclear: bigint;
  readonly refcountOrder: number;
  readonly headerLength: number;
  readonly compressionType: number;
  readonly extensions: readonly HeaderExtension[];
  /** The backing file name, when the image names one. */
  readonly backingFile?: string;
  /** From the backing-format extension ("qcow2", "raw"), when present. */
  readonly backingFormat?: string;
}

/** A malformed or unsupported image; the driver turns it into a BlockError naming the node. */
export class Qcow2FormatError extends Error {
  override readonly name = 'Qcow2FormatError';
}

function u64(buf: Buffer, at: number, what: string): number {
  const v = buf.readBigUInt64BE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Qcow2FormatError(`${what} ${v} is too large`);
  return Number(v);
}

export function isQcow2(buf: Buffer): boolean {
  return buf.length >= 4 && buf.readUInt32BE(0) === QCOW2_MAGIC;
}

/** Decodes the header and its extensions from the image's first cluster (or more: the caller
 * passes at least the first cluster, and enough to hold the backing file name). */
export function decodeHeader(buf: Buffer): Qcow2Header {
  if (!isQcow2(buf)) throw new Qcow2FormatError('Image is not in qcow2 format');
  const version = buf.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new Qcow2FormatError(`Unsupported qcow2 version ${version}`);
  const clusterBits = buf.readUInt32BE(20);
  // QEMU's MIN_CLUSTER_BITS..MAX_CLUSTER_BITS.
  if (clusterBits < 9 || clusterBits > 21) throw new Qcow2FormatError(`Unsupported cluster size: 2^${clusterBits}`);
  const v3 = version === 3;
  const headerLength = v3 ? buf.readUInt32BE(100) : 72;
  if (v3 && (headerLength < 104 || headerLength > 1 << clusterBits)) {
    throw new Qcow2FormatError(`qcow2 header length ${headerLength} is invalid`);
  }
  const incompatible = v3 ? buf.readBigUInt64BE(72) : 0n;
  const h = {
    version: version as 2 | 3,
    backingFileOffset: u64(buf, 8, 'backing file offset'),
    backingFileSize: buf.readUInt32BE(16),
    clusterBits,
    size: u64(buf, 24, 'image size'),
    cryptMethod: buf.readUInt32BE(32),
    l1Size: buf.readUInt32BE(36),
    l1TableOffset: u64(buf, 40, 'L1 table offset'),
    refcountTableOffset: u64(buf, 48, 'refcount table offset'),
    refcountTableClusters: buf.readUInt32BE(56),
    nbSnapshots: buf.readUInt32BE(60),
    snapshotsOffset: u64(buf, 64, 'snapshot table offset'),
    incompatible,
    compatible: v3 ? buf.readBigUInt64BE(80) : 0n,
    autoclear: v3 ? buf.readBigUInt64BE(88) : 0n,
    refcountOrder: v3 ? buf.readUInt32BE(96) : 4,
    headerLength,
    compressionType: v3 && headerLength > 104 ? buf.readUInt8(104) : 0,
  };
  if (h.refcountOrder > 6) throw new Qcow2FormatError(`Refcount width 2^${h.refcountOrder} bits is invalid`);
  const clusterSize = 2 ** clusterBits;
  const extensions = decodeExtensions(buf, headerLength, h.backingFileOffset > 0 ? Math.min(h.backingFileOffset, clusterSize) : clusterSize);
  let backingFile: string | undefined;
  if (h.backingFileOffset > 0) {
    if (h.backingFileSize > 1023 || h.backingFileOffset + h.backingFileSize > clusterSize) {
      throw new Qcow2FormatError('Backing file name too long');
    }
    backingFile = buf.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize).toString('utf8');
  }
  const fmt = extensions.find((e) => e.type === EXT.BACKING_FORMAT);
  return {
    ...h,
    extensions,
    ...(backingFile !== undefined ? { backingFile } : {}),
    ...(fmt ? { backingFormat: fmt.data.toString('utf8').replace(/\0+$/, '') } : {}),
  };
}

/** Header extensions from `start` up to the end marker (or `limit`): type, length, data padded to
 * 8 bytes. Unknown types are kept (and skipped by the driver), as qcow2.txt requires. */
export function decodeExtensions(buf: Buffer, start: number, limit: number): HeaderExtension[] {
  const out: HeaderExtension[] = [];
  for (let at = start; at + 8 <= limit; ) {
    const type = buf.readUInt32BE(at);
    const len = buf.readUInt32BE(at + 4);
    if (type === EXT.END) break;
    if (at + 8 + len > limit) throw new Qcow2FormatError(`header extension 0x${type.toString(16)} at ${at} runs past the header`);
    out.push({ type, data: Buffer.from(buf.subarray(at + 8, at + 8 + len)) });
    at += 8 + Math.ceil(len / 8) * 8;
  }
  return out;
}

/** Names of set bits of `bits` that are in `known` ("name") or not ("unknown bit N"). */
export function featureNames(bits: bigint, table: ReadonlyArray<readonly [bigint, string]> = INCOMPAT_NAMES): string[] {
  const names: string[] = [];
  for (let i = 0n; i < 64n; i++) {
    const bit = 1n << i;
    if ((bits & bit) === 0n) continue;
    names.push(table.find(([b]) => b === bit)?.[1] ?? `unknown bit ${i}`);
  }
  return names;
}

// ---- L1 / L2 entries --------------------------------------------------------------------------

const OFLAG_COPIED = 1n << 63n;
const OFLAG_COMPRESSED = 1n << 62n;
const OFLAG_ZERO = 1n;
/** Bits 9-55: a cluster-aligned host offset. */
const OFFSET_MASK = 0x00fffffffffffe00n;

export interface L1Entry {
  /** Host offset of the L2 table, 0 when none. */
  readonly l2Offset: number;
  readonly copied: boolean;
}

export function decodeL1(v: bigint): L1Entry {
  return { l2Offset: Number(v & OFFSET_MASK), copied: (v & OFLAG_COPIED) !== 0n };
}

export function encodeL1(l2Offset: number): bigint {
  return l2Offset === 0 ? 0n : BigInt(l2Offset) | OFLAG_COPIED;
}

/** The kinds of a standard L2 entry (qcow2.txt "Standard Cluster Descriptor"; QEMU's
 * QCow2ClusterType). */
export type L2Kind = 'unallocated' | 'zero-plain' | 'zero-alloc' | 'normal' | 'compressed';

export interface L2Entry {
  readonly kind: L2Kind;
  /** Host offset of the data cluster (0 unless zero-alloc or normal). */
  readonly offset: number;
  readonly copied: boolean;
}

export function decodeL2(v: bigint, version: 2 | 3): L2Entry {
  const copied = (v & OFLAG_COPIED) !== 0n;
  if (v & OFLAG_COMPRESSED) return { kind: 'compressed', offset: 0, copied };
  const offset = Number(v & OFFSET_MASK);
  // The zero flag exists from version 3 on; in version 2 bit 0 is reserved.
  if (version === 3 && v & OFLAG_ZERO) return { kind: offset ? 'zero-alloc' : 'zero-plain', offset, copied };
  return { kind: offset ? 'normal' : 'unallocated', offset, copied };
}

export function encodeL2(e: { kind: Exclude<L2Kind, 'compressed'>; offset?: number }): bigint {
  switch (e.kind) {
    case 'unallocated':
      return 0n;
    case 'zero-plain':
      return OFLAG_ZERO;
    case 'zero-alloc':
      return BigInt(e.offset!) | OFLAG_COPIED | OFLAG_ZERO;
    case 'normal':
      return BigInt(e.offset!) | OFLAG_COPIED;
  }
}

/** Bits in an L1 or L2 entry that must be zero in a standard, uncompressed entry. */
export function reservedBits(v: bigint, kind: 'l1' | 'l2'): bigint {
  if (kind === 'l1') return v & 0x7f000000000001ffn;
  if (v & OFLAG_COMPRESSED) return 0n;
  return v & 0x3f000000000001fen;
}

// ---- refcounts --------------------------------------------------------------------------------

/** Refcount of entry `i` of a refcount block with 2^order-bit entries (big-endian, and for
 * widths under 8 bits the lowest entry in the lowest bits of a byte, as QEMU stores them). */
export function getRefcount(block: Buffer, i: number, order: number): number {
  const bits = 1 << order;
  if (bits >= 8) {
    const bytes = bits / 8;
    const at = i * bytes;
    if (bytes === 1) return block[at]!;
    if (bytes === 2) return block.readUInt16BE(at);
    if (bytes === 4) return block.readUInt32BE(at);
    return Number(block.readBigUInt64BE(at));
  }
  const perByte = 8 / bits;
  const byte = block[Math.floor(i / perByte)]!;
  return (byte >> ((i % perByte) * bits)) & ((1 << bits) - 1);
}

export function setRefcount(block: Buffer, i: number, order: number, value: number): void {
  const bits = 1 << order;
  if (value < 0 || (bits < 53 && value >= 2 ** bits)) throw new Qcow2FormatError(`refcount ${value} does not fit ${bits} bits`);
  if (bits >= 8) {
    const bytes = bits / 8;
    const at = i * bytes;
    if (bytes === 1) block[at] = value;
    else if (bytes === 2) block.writeUInt16BE(value, at);
    else if (bytes === 4) block.writeUInt32BE(value, at);
    else block.writeBigUInt64BE(BigInt(value), at);
    return;
  }
  const perByte = 8 / bits;
  const at = Math.floor(i / perByte);
  const shift = (i % perByte) * bits;
  const mask = ((1 << bits) - 1) << shift;
  block[at] = (block[at]! & ~mask) | (value << shift);
}

/** The byte range of a refcount block that holds entry `i`, rounded to 8 bytes: what the driver
 * writes back after changing that entry. */
export function refcountEntrySpan(i: number, order: number): { start: number; end: number } {
  const bitAt = i * (1 << order);
  const start = Math.floor(bitAt / 64) * 8;
  return { start, end: start + 8 };
}

/** The geometry a header implies. */
export interface Geometry {
  readonly clusterSize: number;
  /** L2 entries per L2 table. */
  readonly l2Entries: number;
  /** Refcount entries per refcount block. */
  readonly refcountBlockEntries: number;
  /** L1 entries the image size needs. */
  readonly l1Needed: number;
}

export function geometry(h: Pick<Qcow2Header, 'clusterBits' | 'refcountOrder' | 'size'>): Geometry {
  const clusterSize = 2 ** h.clusterBits;
  const l2Entries = clusterSize / 8;
  return {
    clusterSize,
    l2Entries,
    refcountBlockEntries: (clusterSize * 8) / (1 << h.refcountOrder),
    l1Needed: Math.ceil(h.size / (clusterSize * l2Entries)),
  };
}
