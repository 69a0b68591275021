// Breakpoints at named internal events: the seed's race forced through them, the reverse order
// forced too, and the registry's errors.
import { describe, expect, it } from 'vitest';
import { BlockGraph } from '../src/block/index.ts';
import { KiB, legacyGraph, MiB, modernGraph, pattern } from './support/graphs.ts';

const prefill = async (d: { write(o: number, b: Buffer): Promise<void> }) => d.write(0, pattern(0x11, 64 * KiB));

describe('breakpoints', () => {
  it('legacy + unsafe: hold the reader after its allocation lookup, let the guest write land, and the read returns new data', async () => {
    const s = await legacyGraph({ size: MiB, unsafe: true, prefill });
    const bp = s.graph.breakpoints;
    bp.arm('overlay-backing-read', 'reader', { node: 'temp' });
    const read = s.fleece.read(0, 64 * KiB);
    const hit = await bp.wait('reader');
    expect(hit).toMatchObject({ event: 'overlay-backing-read', node: 'temp', offset: 0, bytes: 64 * KiB });
    await s.live.write(0, pattern(0x22, 64 * KiB));
    bp.resume('reader');
    expect((await read)[0]).toBe(0x22);
  });

  it('modern: the guest write reaches cbw-wait-readers while the snapshot read holds the lock, and reads old data', async () => {
    const s = await modernGraph({ size: MiB, prefill });
    const bp = s.graph.breakpoints;
    bp.arm('snapshot-read-lock', 'R0');
    bp.arm('cbw-wait-readers', 'W0');
    const read = s.fleece.read(0, 64 * KiB);
    await bp.wait('R0');
    const write = s.live.write(0, pattern(0x22, 64 * KiB));
    const w = await bp.wait('W0');
    expect(w.seq).toBeGreaterThan((await bp.wait('R0')).seq);
    bp.resume('W0'); // the write now waits for the frozen read...
    bp.resume('R0'); // ...which reads the source before the write lands
    expect((await read)[0]).toBe(0x11);
    await write;
    expect((await s.fleece.read(0, 4))[0]).toBe(0x11);
  });

  it('modern: a read that locks after the done bit reads the target', async () => {
    const s = await modernGraph({ size: MiB, prefill });
    const bp = s.graph.breakpoints;
    bp.arm('cbw-source-write', 'W0');
    const write = s.live.write(0, pattern(0x22, 64 * KiB));
    await bp.wait('W0');
    expect(s.cbw.doneBitmap.get(0)).toBe(true);
    expect((await s.fleece.read(0, 4))[0]).toBe(0x11);
    bp.resume('W0');
    await write;
  });

  it('resume with an errno fails the parked request there: a block-copy target write that fails takes on-cbw-error (break-guest-write: the guest write fails, the cluster is to be copied again)', async () => {
    const s = await modernGraph({ size: MiB, prefill });
    const bp = s.graph.breakpoints;
    bp.arm('cbw-target-write', 'W0');
    const write = s.live.write(0, pattern(0x22, 64 * KiB));
    await bp.wait('W0');
    expect(s.cbw.bcs.copyBitmap.get(0)).toBe(false);
    bp.resume('W0', 'EIO');
    await expect(write).rejects.toMatchObject({ errno: 'EIO', message: expect.stringMatching(/guest write refused: error injected at breakpoint 'W0' \(cbw-target-write\)/) });
    expect(s.cbw.bcs.copyBitmap.get(0)).toBe(true);
    expect((await s.fleece.read(0, 4))[0]).toBe(0x11);
  });

  it('break-snapshot: the write whose copy failed and a later one both park at cbw-wait-readers before waiting for frozen reads; x-no-frozen-read-wait (UNSAFE) lets a write through under a frozen read', async () => {
    for (const unsafe of [false, true]) {
      const s = await modernGraph({ size: MiB, prefill, cbw: { 'on-cbw-error': 'break-snapshot', ...(unsafe ? { 'x-no-frozen-read-wait': true } : {}) } });
      const bp = s.graph.breakpoints;
      bp.arm('snapshot-read-lock', 'R0');
      const read = s.fleece.read(0, 64 * KiB);
      await bp.wait('R0');
      bp.arm('cbw-target-write', 'W0');
      const w0 = s.live.write(0, pattern(0x22, 64 * KiB));
      await bp.wait('W0');
      bp.arm('cbw-wait-readers', 'W0-wait');
      bp.resume('W0', 'EIO');
      await bp.wait('W0-wait');
      expect(s.cbw.snapshotError?.errno).toBe('EIO');
      bp.arm('cbw-wait-readers', 'W1-wait');
      const w1 = s.live.write(0, pattern(0x33, 64 * KiB));
      await bp.wait('W1-wait');
      bp.arm('cbw-source-write', 'W0-src');
      bp.arm('cbw-source-write', 'W1-src');
      let through = 0;
      void bp.wait('W0-src').then(() => through++);
      void bp.wait('W1-src').then(() => through++);
      bp.resume('W0-wait');
      bp.resume('W1-wait');
      // Both wait for R0 unless unsafe (in-memory graph: a few turns of the event loop are all it
      // takes to get there, and a waiting write never does).
      for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
      expect(through).toBe(unsafe ? 2 : 0);
      bp.resume('R0');
      expect((await read)[0]).toBe(0x11); // unsafe: the writes are still parked before the source
      bp.clear();
      await w0;
      await w1;
    }
  });

  it('rejects unknown events, duplicate tags and resuming what was not hit; clear() releases everything', async () => {
    const g = new BlockGraph();
    const bp = g.breakpoints;
    expect(() => bp.arm('nope', 't')).toThrow(/unknown breakpoint event 'nope'/);
    bp.arm('cbw-done-set', 't');
    expect(() => bp.arm('cbw-done-set', 't')).toThrow(/already in use/);
    expect(() => bp.resume('t')).toThrow(/has not been hit/);
    expect(() => bp.resume('zzz')).toThrow(/no breakpoint with tag 'zzz'/);
    expect(bp.armed).toBe(1);
    bp.clear();
    expect(bp.armed).toBe(0);
    expect(bp.list()).toEqual([]);
  });
});
