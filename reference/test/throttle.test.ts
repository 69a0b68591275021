// Throttling (block/throttle.ts, drivers/throttle.ts, the throttle-group object) and the common
// block options that have an effect (detect-zeroes, force-share, cache.no-flush). Time is a fake
// clock: whether a request is held is seen from the queue, never from how long anything took.
import { describe, expect, it } from 'vitest';
import { BlockGraph, exportPerms } from '../src/block/index.ts';
import { DRIVERS } from '../src/block/drivers/index.ts';
import { RawNode } from '../src/block/drivers/raw.ts';
import { PERM_ALL } from '../src/block/perm.ts';
import { ThrottleGroup, ThrottleState, defaultThrottleConfig, throttleConfigError, type ThrottleClock } from '../src/block/throttle.ts';
import { parseArgs } from '../src/daemon/args.ts';
import { Daemon } from '../src/daemon/daemon.ts';

const KiB = 1024;
const rw = exportPerms(true);

class FakeClock implements ThrottleClock {
  ns = 0;
  private timers: { at: number; f: () => void }[] = [];
  now(): number {
    return this.ns;
  }
  setTimer(ms: number, f: () => void): () => void {
    const t = { at: this.ns + ms * 1e6, f };
    this.timers.push(t);
    return () => (this.timers = this.timers.filter((x) => x !== t));
  }
  /** Moves time on and fires what is due. */
  advance(ms: number): void {
    this.ns += ms * 1e6;
    const due = this.timers.filter((t) => t.at <= this.ns);
    this.timers = this.timers.filter((t) => t.at > this.ns);
    for (const t of due) t.f();
  }
}

const tick = () => new Promise((r) => setImmediate(r));

function bpsConfig(avg: number) {
  const cfg = defaultThrottleConfig();
  cfg.buckets['bps-total'].avg = avg;
  return cfg;
}

describe('leaky buckets (util/throttle.c)', () => {
  it('without a burst, a tenth of a second at the average rate passes, then a request waits for the excess to drain', () => {
    const s = new ThrottleState(bpsConfig(1000), 0);
    expect(s.waitNs(false)).toBe(0);
    s.account(false, 4096);
    // level 4096 over a bucket of 100: (4096 - 100) / 1000 s.
    expect(s.waitNs(false)).toBe(3.996e9);
    expect(s.waitNs(true)).toBe(3.996e9); // total counts both directions
    s.leak(3.996e9);
    expect(s.waitNs(false)).toBe(0);
  });

  it('a read limit leaves writes alone; iops-size counts a large request as several', () => {
    const cfg = defaultThrottleConfig();
    cfg.buckets['iops-read'].avg = 10;
    cfg.opSize = 4096;
    const s = new ThrottleState(cfg, 0);
    s.account(false, 64 * KiB); // 16 operations over a bucket of 1
    expect(s.waitNs(false)).toBe(1.5e9);
    expect(s.waitNs(true)).toBe(0);
  });

  it('a burst: max * length may pass at once, then the burst bucket holds it to max per second', () => {
    const cfg = defaultThrottleConfig();
    Object.assign(cfg.buckets['bps-total'], { avg: 100, max: 1000, burstLength: 2 });
    const s = new ThrottleState(cfg, 0);
    s.account(false, 1000);
    // main bucket 1000 of 2000: room; burst bucket 1000 over 100: (1000 - 100) / 1000 s.
    expect(s.waitNs(false)).toBe(0.9e9);
  });

  it('throttle_is_valid in its order', () => {
    const cfg = bpsConfig(100);
    cfg.buckets['bps-read'].avg = 5;
    expect(throttleConfigError(cfg)).toMatch(/cannot be used at the same time/);
    expect(throttleConfigError(bpsConfig(100))).toBeUndefined();
  });
});

/** Two 4 KiB reads at 1000 B/s through node `t`: is the second held until its time has come? */
async function secondReadHeld(drivers = DRIVERS): Promise<boolean> {
  const clock = new FakeClock();
  const group = new ThrottleGroup('t0', bpsConfig(1000), clock);
  const g = new BlockGraph({ drivers });
  g.objects = { use: (id, type) => (id === 't0' && type === 'throttle-group' ? group : undefined), release: () => {} };
  g.addNode({ driver: 'memory', 'node-name': 'm', size: '1M' });
  g.addNode({ driver: 'throttle', 'node-name': 't', file: 'm', 'throttle-group': 't0' });
  const b = g.attachBackend('an unnamed block device', 't', rw.perm, rw.shared);
  await b.read(0, 4 * KiB);
  let done = false;
  const second = b.read(0, 4 * KiB).then(() => (done = true));
  await tick();
  const held = !done && group.pending(false) === 1;
  clock.advance(3995);
  await tick();
  const stillHeld = !done;
  clock.advance(1);
  await second;
  return held && stillHeld;
}

describe('driver=throttle', () => {
  it('holds a request until the buckets have room, and lets it go then', async () => {
    expect(await secondReadHeld()).toBe(true);
  });

  it('the check fails on a throttle that does not throttle (a raw filter taking the same options)', async () => {
    const bad = { ...DRIVERS, throttle: (ctx: Parameters<(typeof DRIVERS)['raw']>[0]) => (ctx.opts.raw('throttle-group'), new RawNode(ctx)) };
    expect(await secondReadHeld(bad)).toBe(false);
  });

  it('is a filter for permissions: its file edge carries what its parents take, as raw does', () => {
    const g = new BlockGraph();
    const group = new ThrottleGroup('t0', bpsConfig(1000));
    g.objects = { use: () => group, release: () => {} };
    g.addNode({ driver: 'memory', 'node-name': 'm', size: '1M' });
    g.addNode({ driver: 'memory', 'node-name': 'm2', size: '1M' });
    g.addNode({ driver: 'throttle', 'node-name': 't', file: 'm', 'throttle-group': 't0' });
    g.addNode({ driver: 'raw', 'node-name': 'r', file: 'm2' });
    g.attachBackend('an unnamed block device', 't', rw.perm, rw.shared);
    g.attachBackend('an unnamed block device', 'r', rw.perm, rw.shared);
    const edge = (parent: string) => g.edges().find((e) => e.parent.describe() === `node '${parent}'`)!;
    expect({ perm: edge('t').perm, shared: edge('t').shared }).toEqual({ perm: edge('r').perm, shared: edge('r').shared });
    group.close();
  });

  it('through the daemon: the group is held by its node, object-del refuses until the node is gone', async () => {
    const d = new Daemon();
    try {
      const cfg = parseArgs(['--object', 'throttle-group,id=t0,limits.iops-total=1000', '--blockdev', 'driver=memory,node-name=m,size=1M', '--blockdev', 'driver=throttle,node-name=t,file=m,throttle-group=t0']);
      for (const a of cfg.actions) await d.apply(a);
      await expect(d.objects.delete('t0')).rejects.toThrow("object 't0' is in use, can not be deleted");
      await d.graph.deleteNode('t');
      await d.objects.delete('t0');
      expect(d.objects.list()).toEqual([]);
    } finally {
      await d.close();
    }
  });
});

describe('common block options with an effect', () => {
  async function zeroWriteLeavesHole(detectZeroes: string): Promise<boolean> {
    const g = new BlockGraph();
    g.addNode({ driver: 'memory', 'node-name': 'm', size: '1M', discard: 'unmap', 'detect-zeroes': detectZeroes });
    const b = g.attachBackend('an unnamed block device', 'm', rw.perm, rw.shared);
    await b.write(0, Buffer.alloc(64 * KiB, 1));
    await b.write(0, Buffer.alloc(64 * KiB));
    return !(await b.blockStatus(0, 64 * KiB))[0]!.allocated;
  }
  it('detect-zeroes=unmap turns a zero-filled write into a write-zeroes that may unmap; off and on keep it allocated', async () => {
    expect(await zeroWriteLeavesHole('unmap')).toBe(true);
    expect(await zeroWriteLeavesHole('on')).toBe(false);
    expect(await zeroWriteLeavesHole('off')).toBe(false);
  });

  it('force-share=on: its parents share every permission on it', () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'memory', 'node-name': 'a', size: '1M', 'read-only': 'on', 'force-share': 'on' });
    g.addNode({ driver: 'memory', 'node-name': 'b', size: '1M', 'read-only': 'on' });
    g.addNode({ driver: 'raw', 'node-name': 'ra', file: 'a', 'read-only': 'on' });
    g.addNode({ driver: 'raw', 'node-name': 'rb', file: 'b', 'read-only': 'on' });
    const ro = exportPerms(false);
    g.attachBackend('an unnamed block device', 'ra', ro.perm, ro.shared & ~PERM_ALL);
    g.attachBackend('an unnamed block device', 'rb', ro.perm, ro.shared & ~PERM_ALL);
    const edge = (parent: string) => g.edges().find((e) => e.parent.describe() === `node '${parent}'`)!;
    expect(edge('ra').shared).toBe(PERM_ALL);
    expect(edge('rb').shared).not.toBe(PERM_ALL);
  });
});
