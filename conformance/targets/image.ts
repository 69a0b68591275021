// The generated test image: a sparse raw file with known data regions and a scratch area that
// cases may write to. Content is a function of the offset, so any read can be checked.
import fs from 'node:fs';

export interface ImageLayout {
  size: number;
  /** Regions holding pattern data; everything else reads as zeroes (and is a hole on disk). */
  data: readonly { offset: number; length: number }[];
  /** Area reserved for cases that write; handed out in slots by the runner. */
  scratch: { offset: number; length: number };
}

/** Where the oversized-WRITE case may write 32 MiB + 512 bytes. */
export const BIG_WRITE_OFFSET = 30 * (1 << 20);

const MiB = 1 << 20;

/** 64 MiB so a 32 MiB + 512 request is "too big" without also being "past the end".
 *  [30 MiB, 64 MiB) is left to the oversized-WRITE case, so cases can run concurrently. */
export const DEFAULT_LAYOUT: ImageLayout = {
  size: 64 * MiB,
  data: [
    { offset: 0, length: MiB },
    { offset: 2 * MiB, length: 64 * 1024 },
    { offset: 3 * MiB + 4096, length: 4096 },
  ],
  scratch: { offset: 16 * MiB, length: 14 * MiB },
};

/** Pattern byte at absolute offset i: never zero, differs between neighbouring sectors. */
export function patternByte(i: number): number {
  return ((Math.floor(i / 512) * 31 + i) % 251) + 1;
}

/** What the image holds in [offset, offset+length) as generated. */
export function expectedContent(layout: ImageLayout, offset: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (const r of layout.data) {
    const from = Math.max(offset, r.offset);
    const to = Math.min(offset + length, r.offset + r.length);
    for (let i = from; i < to; i++) out[i - offset] = patternByte(i);
  }
  return out;
}

export function writeImage(path: string, layout: ImageLayout = DEFAULT_LAYOUT): void {
  const fd = fs.openSync(path, 'w');
  try {
    fs.ftruncateSync(fd, layout.size);
    for (const r of layout.data) fs.writeSync(fd, expectedContent(layout, r.offset, r.length), 0, r.length, r.offset);
  } finally {
    fs.closeSync(fd);
  }
}
