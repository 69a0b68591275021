// copy-before-write behaviours beyond the happy path: on-cbw-error and cbw-timeout
// (docs/requirements/qemu-fleecing.md §4.2, B4), the bitmap option (§2.3, §5.1), snapshot discard (B1, B8),
// WRITE_UNCHANGED (B9), EACCES on inaccessible areas (B7), and the UNSAFE known-bad
// x-hbitmap-status-bug (QEMU 7.2's hbitmap_status, findings F1/F3).
import { describe, expect, it } from 'vitest';
import { BlockGraph, exportPerms, type CopyBeforeWriteNode, type BlockBackend } from '../src/block/index.ts';
import { KiB, MiB, modernGraph, pattern } from './support/graphs.ts';

const fill = async (d: BlockBackend) => d.write(0, pattern(0x01, MiB));

function blkdebugTemp(): Record<string, unknown> {
  return { driver: 'blkdebug', image: { driver: 'memory', size: MiB }, 'inject-error': [{ event: 'write_aio', errno: 5, once: true }] };
}

function slowTemp(ms: number): Record<string, unknown> {
  return { driver: 'delay', 'write-delay-ms': ms, file: { driver: 'memory', size: MiB } };
}

describe('on-cbw-error (docs/requirements/qemu-fleecing.md §4.2)', () => {
  it('break-snapshot: target write error -> guest write succeeds, snapshot read fails with EACCES', async () => {
    const s = await modernGraph({ size: MiB, prefill: fill, temp: blkdebugTemp(), cbw: { 'on-cbw-error': 'break-snapshot' } });
    await s.live.write(0, pattern(0x02, MiB));
    await expect(s.fleece.read(0, MiB)).rejects.toMatchObject({ errno: 'EACCES' });
    // And every later snapshot read too, even of clusters never written.
    await expect(s.fleece.read(0, 4 * KiB)).rejects.toMatchObject({ errno: 'EACCES' });
    expect((await s.live.read(0, 4))[0]).toBe(0x02);
  });

  it('break-guest-write (default): the guest write fails with EIO, the snapshot stays intact', async () => {
    const s = await modernGraph({ size: MiB, prefill: fill, temp: blkdebugTemp() });
    await expect(s.live.write(0, pattern(0x02, MiB))).rejects.toMatchObject({ errno: 'EIO' });
    expect((await s.fleece.read(0, MiB)).equals(pattern(0x01, MiB))).toBe(true);
    expect((await s.live.read(0, MiB)).equals(pattern(0x01, MiB))).toBe(true);
  });

  it('cbw-timeout + break-guest-write: a slow copy fails the guest write with ETIMEDOUT, the snapshot is intact', async () => {
    const s = await modernGraph({ size: MiB, prefill: fill, temp: slowTemp(300), cbw: { 'cbw-timeout': 0.05 } });
    await expect(s.live.write(0, pattern(0x02, 512 * KiB))).rejects.toMatchObject({ errno: 'ETIMEDOUT' });
    expect((await s.fleece.read(0, MiB)).equals(pattern(0x01, MiB))).toBe(true);
    await s.graph.close(); // waits for the orphaned copy (B5)
  });

  it('cbw-timeout + break-snapshot: the guest write succeeds, the snapshot reads fail', async () => {
    const s = await modernGraph({ size: MiB, prefill: fill, temp: slowTemp(300), cbw: { 'cbw-timeout': 0.05, 'on-cbw-error': 'break-snapshot' } });
    await s.live.write(0, pattern(0x02, 512 * KiB));
    await expect(s.fleece.read(0, MiB)).rejects.toMatchObject({ errno: 'EACCES' });
    await s.graph.close();
  });
});

describe('bitmap option', () => {
  async function bitmapSetup() {
    const g = new BlockGraph();
    g.addNode({ driver: 'memory', 'node-name': 'disk0', size: MiB });
    g.addNode({ driver: 'delay', 'node-name': 'source', file: 'disk0' });
    g.node('source')!.addDirtyBitmap('bitmap0');
    const w = g.attachBackend('an unnamed block device', 'source', exportPerms(true).perm, exportPerms(true).shared);
    await w.write(0, pattern(0xaa, 64 * KiB)); // cluster 0 dirty
    await w.write(4 * 64 * KiB, pattern(0xbb, 64 * KiB)); // cluster 4 dirty
    w.detach();
    g.addNode({ driver: 'memory', 'node-name': 'temp', size: MiB });
    const cbw = g.addNode({ driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'source', target: 'temp', bitmap: { node: 'source', name: 'bitmap0' } }) as CopyBeforeWriteNode;
    g.addNode({ driver: 'snapshot-access', 'node-name': 'fl-access', file: 'fl-cbw' });
    const live = g.attachBackend('an unnamed block device', 'fl-cbw', exportPerms(true).perm, exportPerms(true).shared);
    const fleece = g.attachBackend('an unnamed block device', 'fl-access', exportPerms(false).perm, exportPerms(false).shared);
    return { g, cbw, live, fleece };
  }

  it('dirty clusters are readable and copied; clean clusters are unreadable (EACCES) and never copied', async () => {
    const { cbw, live, fleece } = await bitmapSetup();
    await live.write(0, pattern(0x01, MiB));
    expect(cbw.bcs.bytesCopied).toBe(2 * 64 * KiB);
    expect((await fleece.read(0, 64 * KiB)).equals(pattern(0xaa, 64 * KiB))).toBe(true);
    expect((await fleece.read(4 * 64 * KiB, 64 * KiB)).equals(pattern(0xbb, 64 * KiB))).toBe(true);
    await expect(fleece.read(64 * KiB, 4 * KiB)).rejects.toMatchObject({ errno: 'EACCES' });
    // A read straddling a dirty and a clean cluster fails whole (the lock checks the whole range).
    await expect(fleece.read(60 * KiB, 8 * KiB)).rejects.toMatchObject({ errno: 'EACCES' });
  });

  it('a missing bitmap is a clear error naming it', () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'memory', 'node-name': 'source', size: MiB });
    g.addNode({ driver: 'memory', 'node-name': 'temp', size: MiB });
    expect(() => g.addNode({ driver: 'copy-before-write', 'node-name': 'c', file: 'source', target: 'temp', bitmap: { node: 'source', name: 'nope' } }))
      .toThrow("Dirty bitmap 'nope' not found on node 'source'");
  });
});

describe('snapshot discard', () => {
  const discardable = () => modernGraph({ size: MiB, prefill: fill, fleeceWritable: true, accessDiscard: 'unmap' });

  it('an aligned discard makes the range inaccessible and stops copying it', async () => {
    const s = await discardable();
    await s.fleece.discard(0, 64 * KiB);
    await expect(s.fleece.read(0, 4 * KiB)).rejects.toMatchObject({ errno: 'EACCES' });
    expect((await s.fleece.read(64 * KiB, 64 * KiB)).equals(pattern(0x01, 64 * KiB))).toBe(true);
    await s.live.write(0, pattern(0x02, 64 * KiB));
    expect(s.cbw.bcs.bytesCopied).toBe(0);
  });

  it('an unaligned discard shrinks inward, a discard covering no whole cluster is a no-op (QEMU 7.2 aborts: B1)', async () => {
    const s = await discardable();
    await s.fleece.discard(0, 32 * KiB); // no whole cluster
    expect((await s.fleece.read(0, 64 * KiB)).equals(pattern(0x01, 64 * KiB))).toBe(true);
    await s.fleece.discard(32 * KiB, 128 * KiB); // covers only [64K, 128K) whole
    expect((await s.fleece.read(0, 64 * KiB)).equals(pattern(0x01, 64 * KiB))).toBe(true);
    await expect(s.fleece.read(64 * KiB, 4 * KiB)).rejects.toMatchObject({ errno: 'EACCES' });
    expect((await s.fleece.read(128 * KiB, 64 * KiB)).equals(pattern(0x01, 64 * KiB))).toBe(true);
  });

  it('after a guest write, discarding the copied cluster frees it and later reads fail', async () => {
    const s = await discardable();
    await s.live.write(0, pattern(0x02, 64 * KiB));
    expect((await s.fleece.read(0, 64 * KiB))[0]).toBe(0x01);
    await s.fleece.discard(0, 64 * KiB);
    await expect(s.fleece.read(0, 64 * KiB)).rejects.toMatchObject({ errno: 'EACCES' });
  });

  it('without discard=unmap a snapshot discard succeeds and does nothing (B8)', async () => {
    const s = await modernGraph({ size: MiB, prefill: fill, fleeceWritable: true });
    await s.fleece.discard(0, 64 * KiB);
    expect((await s.fleece.read(0, 64 * KiB)).equals(pattern(0x01, 64 * KiB))).toBe(true);
  });

  it('writes to the snapshot are not supported', async () => {
    const s = await discardable();
    await expect(s.fleece.write(0, pattern(0x03, 512))).rejects.toMatchObject({ errno: 'ENOTSUP' });
  });

  it('a read-only snapshot export refuses discard with EPERM', async () => {
    const s = await modernGraph({ size: MiB, prefill: fill });
    await expect(s.fleece.discard(0, 64 * KiB)).rejects.toMatchObject({ errno: 'EPERM' });
  });
});

describe('WRITE_UNCHANGED and block status', () => {
  it('a WRITE_UNCHANGED write does not trigger a copy (B9)', async () => {
    const s = await modernGraph({ size: MiB, prefill: fill });
    await s.live.write(0, pattern(0x01, 64 * KiB), { writeUnchanged: true });
    expect(s.cbw.bcs.bytesCopied).toBe(0);
    await s.live.write(0, pattern(0x01, 64 * KiB));
    expect(s.cbw.bcs.bytesCopied).toBe(64 * KiB);
  });

  it('snapshot block status: copied clusters are allocated data; discarded areas fail with EACCES', async () => {
    const s = await modernGraph({ size: MiB, fleeceWritable: true, accessDiscard: 'unmap' });
    // Nothing written: the whole disk is a hole in the snapshot.
    expect(await s.fleece.blockStatus(0, MiB)).toEqual([{ offset: 0, length: MiB, allocated: false, zero: true }]);
    await s.live.write(64 * KiB, pattern(0x05, 4 * KiB));
    const ext = await s.fleece.blockStatus(0, MiB);
    expect(ext.find((e) => e.offset <= 64 * KiB && 64 * KiB < e.offset + e.length)!.allocated).toBe(true);
    await s.fleece.discard(0, 64 * KiB);
    await expect(s.fleece.blockStatus(0, 64 * KiB)).rejects.toMatchObject({ errno: 'EACCES' });
  });
});

describe('break-snapshot with a snapshot read in flight', () => {
  it('a guest write after the snapshot broke still waits for readers that locked before (QEMU 7.2 does not)', async () => {
    const s = await modernGraph({ size: MiB, prefill: fill, temp: blkdebugTemp(), cbw: { 'on-cbw-error': 'break-snapshot' } });
    const bp = s.graph.breakpoints;
    bp.arm('snapshot-read-lock', 'R0', { offset: 0, bytes: 1 });
    const read = s.fleece.read(0, 64 * KiB); // locks cluster 0, reads the source
    await bp.wait('R0');
    await s.live.write(8 * 64 * KiB, pattern(0x02, 4 * KiB)); // its copy fails: snapshot broken
    expect(s.cbw.snapshotError).toBeDefined();
    let landed = false;
    const write = s.live.write(0, pattern(0x03, 64 * KiB)).then(() => (landed = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(landed).toBe(false); // held back by the frozen read
    bp.resume('R0');
    expect((await read).equals(pattern(0x01, 64 * KiB))).toBe(true);
    await write;
    await expect(s.fleece.read(0, 4)).rejects.toMatchObject({ errno: 'EACCES' });
  });
});

describe('x-hbitmap-status-bug (UNSAFE, known bad: QEMU 7.2 hbitmap_status, findings F1/F3)', () => {
  const CL = 64 * KiB;
  // 4 clusters of 0x01 at snapshot time; the guest then writes clusters 0 and 2 with 0x02, so
  // clusters 0 and 2 are done (copied) and 1 and 3 are not: done->not-done boundaries at 1*CL
  // and 3*CL.
  async function setup(bug: boolean) {
    const s = await modernGraph({ size: 4 * CL, prefill: async (d) => d.write(0, pattern(0x01, 4 * CL)), cbw: bug ? { 'x-hbitmap-status-bug': true } : {} });
    await s.live.write(0, pattern(0x02, CL));
    await s.live.write(2 * CL, pattern(0x02, CL));
    return s;
  }

  it('off by default; on, a read starting in a done cluster and reaching a not-done one returns the source (post-snapshot) bytes for the done prefix', async () => {
    const off = await setup(false);
    const on = await setup(true);
    expect(off.cbw.hbitmapStatusBug).toBe(false);
    expect(on.cbw.hbitmapStatusBug).toBe(true);
    // [CL/2, +CL): second half of done cluster 0, first half of not-done cluster 1.
    expect((await off.fleece.read(CL / 2, CL)).equals(pattern(0x01, CL))).toBe(true);
    const bad = await on.fleece.read(CL / 2, CL);
    expect(bad.subarray(0, CL / 2).equals(pattern(0x02, CL / 2))).toBe(true); // the guest's bytes
    expect(bad.subarray(CL / 2).equals(pattern(0x01, CL / 2))).toBe(true);
    // Block status takes the same lock: the prefix is answered by the source, the same length.
    expect(await on.fleece.blockStatus(CL / 2, CL)).toEqual(await off.fleece.blockStatus(CL / 2, CL));
  });

  it('changes the answer exactly for ranges with a done->not-done boundary inside them', async () => {
    const off = await setup(false);
    const on = await setup(true);
    const step = CL / 2;
    let straddling = 0;
    for (let offset = 0; offset < 4 * CL; offset += step) {
      for (let bytes = step; offset + bytes <= 4 * CL; bytes += step) {
        const end = offset + bytes;
        const what = `read [${offset / KiB}K, +${bytes / KiB}K)`;
        expect((await off.fleece.read(offset, bytes)).equals(pattern(0x01, bytes)), `${what} without the bug`).toBe(true);
        const straddles = [CL, 3 * CL].some((b) => offset < b && b < end);
        if (straddles) straddling++;
        expect(!(await on.fleece.read(offset, bytes)).equals(pattern(0x01, bytes)), `${what} with the bug differs from the snapshot`).toBe(straddles);
      }
    }
    expect(straddling).toBeGreaterThan(0);
  });
});
