// Request serialization rules of block/io.c (docs/requirements/qemu-fleecing.md §2.1) and the range list of
// block/reqlist.c (§2.2).
import { describe, expect, it } from 'vitest';
import { TrackedRequests } from '../src/block/tracked-requests.ts';
import { RangeList } from '../src/block/reqlist.ts';

const settled = async (p: Promise<unknown>): Promise<boolean> => {
  let done = false;
  void p.then(() => (done = true));
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return done;
};

describe('tracked requests', () => {
  it('(c) a serialising request widens its overlap window to the cluster size', () => {
    const t = new TrackedRequests();
    const r = t.begin('write', 70_000, 100);
    r.setSerialising(65536);
    expect([r.overlapOffset, r.overlapBytes]).toEqual([65536, 65536]);
    expect(t.serialisingInFlight).toBe(1);
    r.end();
    expect(t.serialisingInFlight).toBe(0);
  });

  it('(a) a serialising request waits for an overlapping normal request', async () => {
    const t = new TrackedRequests();
    const read = t.begin('read', 0, 4096);
    const write = t.begin('write', 65000, 10);
    write.setSerialising(65536); // widened to [0, 128K): overlaps the read
    const waited = write.waitSerialising();
    expect(await settled(waited)).toBe(false);
    expect(write.waitingFor).toBe(read);
    read.end();
    expect(await settled(waited)).toBe(true);
  });

  it('(b) a normal request waits only for overlapping serialising requests', async () => {
    const t = new TrackedRequests();
    const a = t.begin('read', 0, 4096);
    const b = t.begin('read', 0, 4096);
    expect(await settled(b.waitSerialising())).toBe(true); // two normal requests never conflict
    const s = t.begin('write', 0, 512);
    s.setSerialising(65536);
    const c = t.begin('read', 60_000, 10); // inside the widened window only
    const waited = c.waitSerialising();
    expect(await settled(waited)).toBe(false);
    a.end();
    b.end();
    expect(await settled(s.waitSerialising())).toBe(true);
    s.end();
    expect(await settled(waited)).toBe(true);
  });

  it('non-overlapping requests never wait; without the widening they would not conflict either', async () => {
    const t = new TrackedRequests();
    t.begin('read', 0, 4096);
    const s = t.begin('write', 70_000, 100);
    s.setSerialising(1); // no widening: [70000, 70100) does not touch [0, 4096)
    expect(await settled(s.waitSerialising())).toBe(true);
  });

  it('a request that is itself waiting is skipped, so two serialising requests cannot deadlock', async () => {
    const t = new TrackedRequests();
    const r = t.begin('read', 0, 10);
    const a = t.begin('write', 0, 10);
    a.setSerialising(65536);
    const aw = a.waitSerialising(); // waits for r
    const b = t.begin('write', 0, 10);
    b.setSerialising(65536);
    const bw = b.waitSerialising(); // r is not waiting -> waits for r; a is waiting -> skipped
    r.end();
    const deadline = <T,>(p: Promise<T>) =>
      Promise.race([p, new Promise<T>((_, rej) => setTimeout(() => rej(new Error('deadlock')), 500))]);
    await deadline(aw); // a runs first...
    expect(await settled(bw)).toBe(false); // ...while b, awake now, waits for a (both serialising)
    a.end();
    await deadline(bw);
  });
});

describe('range list', () => {
  it('waitAll returns once no overlapping entry is left; shrink wakes waiters', async () => {
    const l = new RangeList();
    const a = l.add(0, 100);
    const waited = l.waitAll(50, 10);
    expect(await settled(waited)).toBe(false);
    l.shrink(a, 40); // no longer overlaps [50, 60)
    expect(await settled(waited)).toBe(true);
    const w2 = l.waitAll(0, 10);
    expect(await settled(w2)).toBe(false);
    l.remove(a);
    expect(await settled(w2)).toBe(true);
    expect(l.entries()).toHaveLength(0);
  });

  it('abutting ranges do not conflict; waitAll waits until every overlapping entry is gone', async () => {
    const l = new RangeList();
    const a = l.add(100, 100);
    expect(l.findConflict(0, 100)).toBeUndefined(); // ends where a starts
    expect(l.findConflict(200, 50)).toBeUndefined(); // starts where a ends
    expect(l.findConflict(199, 1)).toBe(a);
    expect(l.findConflict(0, 101)).toBe(a);
    // reqlist_wait_all: a write over two frozen reads must outwait both, not just the first.
    const b = l.add(150, 100);
    const waited = l.waitAll(180, 10);
    l.remove(a);
    expect(await settled(waited)).toBe(false);
    l.remove(b);
    expect(await settled(waited)).toBe(true);
  });
});
