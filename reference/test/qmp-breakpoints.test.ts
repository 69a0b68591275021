// The x-breakpoint-* QMP commands and BREAKPOINT_HIT (docs/design.md "Interleavings"), over the daemon's
// dispatcher on the modern and legacy fleecing graphs: the seed's race forced through QMP alone.
import { describe, expect, it } from 'vitest';
import { Daemon } from '../src/daemon/daemon.ts';
import { KiB, legacyGraph, MiB, modernGraph, pattern } from './support/graphs.ts';

const prefill = async (d: { write(o: number, b: Buffer): Promise<void> }) => d.write(0, pattern(0x11, 128 * KiB));
const S = { negotiated: true };
const settle = () => new Promise((r) => setTimeout(r, 20));

function daemonOver(graph: Daemon['graph']) {
  const d = new Daemon({ graph });
  const events: { event: string; data: unknown }[] = [];
  d.emit = (event: string, data?: unknown) => void events.push({ event, data });
  const q = (execute: string, args?: Record<string, unknown>) => d.dispatcher.dispatch({ execute, ...(args ? { arguments: args } : {}) }, S);
  return { d, q, events };
}

describe('x-breakpoint-* over QMP', () => {
  it('legacy + unsafe: holding the reader at overlay-backing-read through QMP lets the guest write land first', async () => {
    const s = await legacyGraph({ size: MiB, unsafe: true, prefill });
    const { q, events } = daemonOver(s.graph);
    expect(await q('x-breakpoint-add', { event: 'overlay-backing-read', tag: 'R0', node: 'temp', offset: 0, bytes: 64 * KiB })).toEqual({ return: {} });
    expect((await q('x-breakpoint-list')).return).toEqual([{ tag: 'R0', event: 'overlay-backing-read', state: 'armed', node: 'temp', offset: 0, bytes: 65536 }]);
    let done = false;
    const read = s.fleece.read(0, 64 * KiB).then((b) => ((done = true), b));
    const hit = await q('x-breakpoint-wait', { tag: 'R0' });
    expect(hit.return).toMatchObject({ tag: 'R0', event: 'overlay-backing-read', node: 'temp', offset: 0, bytes: 65536 });
    expect(events).toEqual([{ event: 'BREAKPOINT_HIT', data: hit.return }]);
    expect((await q('x-breakpoint-list')).return).toMatchObject([{ tag: 'R0', state: 'hit' }]);
    await s.live.write(0, pattern(0x22, 64 * KiB));
    await settle();
    expect(done).toBe(false); // parked: without the breakpoint the read would have finished
    expect(await q('x-breakpoint-resume', { tag: 'R0' })).toEqual({ return: {} });
    expect((await read)[0]).toBe(0x22); // the seed's race, forced
    expect((await q('x-breakpoint-list')).return).toEqual([]);
  });

  it('modern: the reader holds the lock, the write parks at cbw-wait-readers, and the snapshot read still returns old data', async () => {
    const s = await modernGraph({ size: MiB, prefill });
    const { q } = daemonOver(s.graph);
    await q('x-breakpoint-add', { event: 'snapshot-read-lock', tag: 'R0' });
    await q('x-breakpoint-add', { event: 'cbw-wait-readers', tag: 'W0', offset: 0, bytes: 4096 });
    const read = s.fleece.read(0, 64 * KiB);
    await q('x-breakpoint-wait', { tag: 'R0' });
    const write = s.live.write(0, pattern(0x22, 64 * KiB));
    const w = (await q('x-breakpoint-wait', { tag: 'W0' })).return as { seq: number };
    expect(w.seq).toBe(2);
    await q('x-breakpoint-resume', { tag: 'W0' });
    await q('x-breakpoint-resume', { tag: 'R0' });
    expect((await read)[0]).toBe(0x11);
    await write;
  });

  it('filters by offset: a breakpoint on cluster 1 lets a request on cluster 0 through', async () => {
    const s = await modernGraph({ size: MiB, prefill });
    const { q } = daemonOver(s.graph);
    await q('x-breakpoint-add', { event: 'cbw-source-write', tag: 'c1', offset: 64 * KiB, bytes: 64 * KiB });
    await s.live.write(0, pattern(0x33, 4096)); // not parked
    const w1 = s.live.write(64 * KiB, pattern(0x44, 4096));
    expect((await q('x-breakpoint-wait', { tag: 'c1' })).return).toMatchObject({ offset: 65536, bytes: 4096 });
    await q('x-breakpoint-resume', { tag: 'c1' });
    await w1;
  });

  it('resume with errno: the copy of a parked guest write fails there (break-guest-write: the write fails with it)', async () => {
    const s = await modernGraph({ size: MiB, prefill });
    const { q } = daemonOver(s.graph);
    await q('x-breakpoint-add', { event: 'cbw-target-write', tag: 'W0' });
    const write = s.live.write(0, pattern(0x22, 64 * KiB)).then(() => 'ok', (e: Error & { errno?: string }) => e.errno);
    await q('x-breakpoint-wait', { tag: 'W0' });
    expect(await q('x-breakpoint-resume', { tag: 'W0', errno: 'EIO' })).toEqual({ return: {} });
    expect(await write).toBe('EIO');
    expect((await s.fleece.read(0, 4))[0]).toBe(0x11);
  });

  it('errors: unknown event, duplicate tag, unknown node, resume before hit, wait timeout, wait ended by remove', async () => {
    const s = await modernGraph({ size: MiB, prefill });
    const { q } = daemonOver(s.graph);
    expect(await q('x-breakpoint-add', { event: 'nope', tag: 't' })).toMatchObject({ error: { class: 'GenericError', desc: expect.stringMatching(/unknown breakpoint event 'nope'/) } });
    expect(await q('x-breakpoint-add', { event: 'cbw-done-set', tag: 't' })).toEqual({ return: {} });
    expect(await q('x-breakpoint-add', { event: 'cbw-done-set', tag: 't' })).toMatchObject({ error: { desc: expect.stringMatching(/already in use/) } });
    expect(await q('x-breakpoint-add', { event: 'cbw-done-set', tag: 'u', node: 'zz' })).toMatchObject({ error: { class: 'DeviceNotFound' } });
    expect(await q('x-breakpoint-add', { event: 'cbw-done-set', tag: 'u', bytes: 5 })).toMatchObject({ error: { desc: "Parameter 'bytes' needs 'offset'" } });
    expect(await q('x-breakpoint-add', { event: 'cbw-done-set', tag: 'u', extra: 1 })).toMatchObject({ error: { desc: "Parameter 'extra' is unexpected" } });
    expect(await q('x-breakpoint-resume', { tag: 't' })).toMatchObject({ error: { desc: expect.stringMatching(/has not been hit/) } });
    expect(await q('x-breakpoint-resume', { tag: 't', errno: 'EWHAT' })).toMatchObject({ error: { desc: "Parameter 'errno' must be one of EIO, ENOSPC, ETIMEDOUT, EPERM" } });
    expect(await q('x-breakpoint-wait', { tag: 't', 'timeout-ms': 30 })).toMatchObject({ error: { desc: "breakpoint 't' was not hit within 30 ms" } });
    const waiting = q('x-breakpoint-wait', { tag: 't' });
    expect(await q('x-breakpoint-remove', { tag: 't' })).toEqual({ return: {} });
    expect(await waiting).toMatchObject({ error: { desc: "breakpoint 't' was removed before it was hit" } });
    expect(await q('x-breakpoint-wait', { tag: 't' })).toMatchObject({ error: { desc: "no breakpoint with tag 't'" } });
    expect(s.graph.breakpoints.armed).toBe(0);
  });
});
