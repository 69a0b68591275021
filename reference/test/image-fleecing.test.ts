// QEMU's image-fleecing iotest (docs/requirements/qemu-fleecing.md §4.1) in-process on both graphs: 64 MiB disk,
// 64 KiB clusters, the exact patterns, overwrites, zeroes and remainder.
import { describe, expect, it } from 'vitest';
import { firstDiff, legacyGraph, modernGraph, pattern, type FleecingSetup } from './support/graphs.ts';

const PATTERNS: Array<[number, number, number]> = [
  [0x5d, 0x0000000, 0x10000],
  [0xd5, 0x0100000, 0x10000],
  [0xdc, 0x2000000, 0x10000],
  [0xcd, 0x3ff0000, 0x10000],
];
const OVERWRITE: Array<[number, number, number]> = [
  [0xab, 0x0000000, 0x10000], // full overwrite of patterns[0]
  [0xad, 0x00f8000, 0x10000], // partial-left, straddles the start of patterns[1]
  [0x1d, 0x2008000, 0x10000], // partial-right, straddles the end of patterns[2]
  [0xea, 0x3fe0000, 0x10000], // adjacent-left of patterns[3]
];
const ZEROES: Array<[number, number, number]> = [
  [0, 0x00f8000, 0x8000],
  [0, 0x2010000, 0x8000],
  [0, 0x3fe0000, 0x10000],
];
const REMAINDER: Array<[number, number, number]> = [
  [0xd5, 0x108000, 0x8000],
  [0xdc, 0x2000000, 0x8000],
  [0xcd, 0x3ff0000, 0x10000],
];

async function expectReads(view: { read(o: number, n: number): Promise<Buffer> }, table: Array<[number, number, number]>, what: string): Promise<void> {
  for (const [byte, off, len] of table) {
    const got = await view.read(off, len);
    const diff = firstDiff(got, pattern(byte, len), off);
    expect(diff, `${what}: read -P 0x${byte.toString(16)} 0x${off.toString(16)} 0x${len.toString(16)}`).toBeUndefined();
  }
}

async function scenario(setup: FleecingSetup): Promise<void> {
  // Sanity: the snapshot shows the patterns and zeroes.
  await expectReads(setup.fleece, PATTERNS, 'sanity');
  await expectReads(setup.fleece, ZEROES, 'sanity zeroes');
  // The guest overwrites.
  for (const [byte, off, len] of OVERWRITE) await setup.live.write(off, pattern(byte, len));
  // The snapshot is unchanged.
  await expectReads(setup.fleece, PATTERNS, 'after overwrite');
  await expectReads(setup.fleece, ZEROES, 'after overwrite zeroes');
  // The guest sees its writes.
  await expectReads(setup.live, OVERWRITE, 'live');
}

const prefill = async (disk: { write(o: number, d: Buffer): Promise<void> }): Promise<void> => {
  for (const [byte, off, len] of PATTERNS) await disk.write(off, pattern(byte, len));
};

describe('image-fleecing (iotest, docs/requirements/qemu-fleecing.md §4.1)', () => {
  it('modern graph: copy-before-write + snapshot-access with a raw temp', async () => {
    const setup = await modernGraph({ prefill });
    await scenario(setup);
    // Cluster-granular CBW: 1 + 2 + 2 + 1 clusters of 64 KiB were copied.
    expect(setup.cbw.bcs.bytesCopied).toBe(6 * 0x10000);
    await setup.teardown();
    const base = setup.graph.attachBackend('an unnamed block device', 'source', 1, 0x0f);
    await expectReads(base, OVERWRITE, 'base after teardown');
    await expectReads(base, REMAINDER, 'base remainder');
  });

  it('legacy graph: backup sync=none into an overlay temp backed by the source', async () => {
    const setup = await legacyGraph({ prefill });
    await scenario(setup);
    // docs/requirements/qemu-fleecing.md §5.2: cancel reported offset 393216 = 6 clusters.
    expect(setup.job!.info()['offset']).toBe(393216);
    await setup.teardown();
    const base = setup.graph.attachBackend('an unnamed block device', 'source', 1, 0x0f);
    await expectReads(base, OVERWRITE, 'base after teardown');
    await expectReads(base, REMAINDER, 'base remainder');
  });

  it('a snapshot that misses the copy is caught: reading the live view instead fails the same checks', async () => {
    // The check must be able to fail: the live export after the overwrites does not hold the
    // snapshot patterns.
    const setup = await modernGraph({ prefill });
    for (const [byte, off, len] of OVERWRITE) await setup.live.write(off, pattern(byte, len));
    await expect(expectReads(setup.live, PATTERNS, 'live as snapshot')).rejects.toThrow(/after|live as snapshot/);
  });
});
