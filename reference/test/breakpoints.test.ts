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
