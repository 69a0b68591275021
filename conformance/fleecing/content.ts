// The disk content at snapshot time: constant-byte regions, so it can be written by any tool
// (a raw file, `qemu-io -c "write -P"` for images with a dirty bitmap) and any read of the
// snapshot can be predicted exactly. The shadow copy of the disk taken at snapshot time IS this
// description. Pure: no I/O here except writeRaw.
import fs from 'node:fs';

export const KiB = 1024;
export const MiB = 1024 * KiB;
/** Copy-before-write cluster size on every target here (docs/requirements/qemu-fleecing.md §4.1: 64k). */
export const CLUSTER = 64 * KiB;

export interface Region {
  offset: number;
  length: number;
  byte: number;
}

export interface Content {
  readonly name: string;
  readonly size: number;
  readonly regions: readonly Region[];
}

/** docs/requirements/qemu-fleecing.md §4.1 "patterns", written to the base before the export starts. */
export const IOTEST_PATTERNS: readonly Region[] = [
  { byte: 0x5d, offset: 0, length: 64 * KiB },
  { byte: 0xd5, offset: 1 * MiB, length: 64 * KiB },
  { byte: 0xdc, offset: 32 * MiB, length: 64 * KiB },
  { byte: 0xcd, offset: 0x3ff0000, length: 64 * KiB },
];
/** §4.1 "overwrite": guest writes after the export is up. */
export const IOTEST_OVERWRITE: readonly Region[] = [
  { byte: 0xab, offset: 0, length: 64 * KiB },
  { byte: 0xad, offset: 0x00f8000, length: 64 * KiB },
  { byte: 0x1d, offset: 0x2008000, length: 64 * KiB },
  { byte: 0xea, offset: 0x3fe0000, length: 64 * KiB },
];
/** §4.1 "zeroes": must still read as zeroes through the snapshot. */
export const IOTEST_ZEROES: readonly Region[] = [
  { byte: 0, offset: 0x00f8000, length: 32 * KiB },
  { byte: 0, offset: 0x2010000, length: 32 * KiB },
  { byte: 0, offset: 0x3fe0000, length: 64 * KiB },
];

/** The iotest image: 64 MiB with the four §4.1 patterns. */
export const IOTEST_CONTENT: Content = { name: 'iotest', size: 64 * MiB, regions: IOTEST_PATTERNS };

/** Byte of dense region i: never 0, never one of the bytes guest writes use (those have the
 * top bit set, see GuestBytes), so any returned byte tells where it came from. */
export function denseByte(i: number): number {
  return 1 + ((i * 37) % 126);
}

/** Where model-based runs work: the first HOT bytes, 32 KiB regions of distinct bytes with a
 * hole every fifth region, so reads meet data, holes and region boundaries inside a cluster. */
export const HOT = 4 * MiB;
export const DENSE_CONTENT: Content = {
  name: 'dense',
  size: 64 * MiB,
  regions: [
    ...Array.from({ length: HOT / (32 * KiB) }, (_, i) => ({ offset: i * 32 * KiB, length: 32 * KiB, byte: denseByte(i) })).filter((_, i) => i % 5 !== 4),
    ...IOTEST_PATTERNS.slice(2),
  ],
};

export const CONTENTS: Readonly<Record<string, Content>> = { iotest: IOTEST_CONTENT, dense: DENSE_CONTENT };

/** The snapshot's bytes in [offset, offset+length). */
export function snapshotBytes(c: Content, offset: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (const r of c.regions) {
    const from = Math.max(offset, r.offset);
    const to = Math.min(offset + length, r.offset + r.length);
    if (from < to) out.fill(r.byte, from - offset, to - offset);
  }
  return out;
}

export function writeRaw(path: string, c: Content): void {
  const fd = fs.openSync(path, 'w');
  try {
    fs.ftruncateSync(fd, c.size);
    for (const r of c.regions) fs.writeSync(fd, Buffer.alloc(r.length, r.byte), 0, r.length, r.offset);
  } finally {
    fs.closeSync(fd);
  }
}

/** qemu-io commands writing the content (for images whose dirty bitmap must see the writes). */
export function qemuIoWrites(c: Content): string[] {
  return c.regions.map((r) => `write -P 0x${r.byte.toString(16)} ${r.offset} ${r.length}`);
}

export const hex = (n: number): string => `0x${n.toString(16)}`;
/** "[0x10000,+0x1000)" */
export const range = (offset: number, length: number): string => `[${hex(offset)},+${hex(length)})`;
