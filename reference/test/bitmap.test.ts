// The cluster bitmap block-copy and copy-before-write keep (QEMU's BdrvDirtyBitmap/hbitmap):
// status() answers one extent per run of equal clusters, as bdrv_dirty_bitmap_status does, and
// firstSetRun() caps a run at the task size block-copy asks for.
import { describe, expect, it } from 'vitest';
import { ClusterBitmap } from '../src/block/bitmap.ts';

const G = 65536;

describe('ClusterBitmap', () => {
  // 8 clusters: 0-2 set, 3-5 clear, 6-7 set.
  const bm = () => {
    const b = new ClusterBitmap(8 * G, G);
    b.setClusters(0, 3, true);
    b.setClusters(6, 8, true);
    return b;
  };

  it.each([
    // offset, bytes -> set, bytes of the extent from offset
    [0, 8 * G, true, 3 * G],
    [G / 2, 8 * G - G / 2, true, 3 * G - G / 2],
    [3 * G, 5 * G, false, 3 * G],
    [3 * G + 1, G, false, G],
    [6 * G, 2 * G, true, 2 * G],
    [G, G, true, G],
  ])('status(%i, %i): set %s for %i bytes (one extent over a run of equal clusters)', (offset, bytes, set, len) => {
    expect(bm().status(offset, bytes)).toEqual({ set, bytes: len });
  });

  it('firstSetRun finds the first run of set clusters and caps it at maxClusters', () => {
    const b = bm();
    expect(b.firstSetRun(0, 8)).toEqual([0, 3]);
    expect(b.firstSetRun(0, 8, 2)).toEqual([0, 2]);
    expect(b.firstSetRun(0, 8, 3)).toEqual([0, 3]);
    expect(b.firstSetRun(3, 8)).toEqual([6, 8]);
    expect(b.firstSetRun(3, 6)).toBeUndefined();
    expect(b.firstSetRun(2, 8, 1)).toEqual([2, 3]);
  });

  it('allSet is true only when every touched cluster is set', () => {
    const b = bm();
    expect(b.allSet(0, 3 * G)).toBe(true);
    expect(b.allSet(0, 3 * G + 1)).toBe(false);
    expect(b.allSet(6 * G + 5, 10)).toBe(true);
  });
});
