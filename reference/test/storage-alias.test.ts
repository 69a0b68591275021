// Storage identity (reference/src/block/storage.ts): two protocol nodes over one file are one
// disk. The legacy fleecing graph whose temp overlay is backed by a second `file` node over the
// source's file is shown returning post-snapshot data with the check turned off (the UNSAFE
// x-no-storage-identity), and refused with it; permissions are checked across the nodes of one
// file as QEMU's image locks would; safe aliasing (readers of a file no one writes) is accepted.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlockGraph, exportPerms, type DelayNode, type OverlayNode } from '../src/block/index.ts';
import { eventually } from './support/wait.ts';
import { PERM } from '../src/block/index.ts';

const PERM_CR = PERM.CONSISTENT_READ;

const KiB = 1024;
const SIZE = 1024 * KiB;
const OLD = 0x11;
const NEW = 0x22;

let dir: string;
let image: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'alias-ref-storage-'));
  image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(SIZE, OLD));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const exportOn = (g: BlockGraph, node: string, writable: boolean) => {
  const p = exportPerms(writable);
  return g.attachBackend('an unnamed block device', node, p.perm, p.shared);
};

/** Legacy fleecing with the temp's backing on a second node over the source's file, a delay
 * filter on that aliased path. `aliasOpts` goes into the alias `file` node. */
function aliasedLegacy(aliasOpts: Record<string, unknown> = {}) {
  const g = new BlockGraph();
  g.addNode({ driver: 'file', 'node-name': 'disk', filename: image });
  g.addNode({ driver: 'file', 'node-name': 'disk-alias', filename: image, 'read-only': true, ...aliasOpts });
  const delay = g.addNode({ driver: 'delay', 'node-name': 'alias-delay', file: 'disk-alias' }) as DelayNode;
  g.addNode({ driver: 'overlay', 'node-name': 'temp', file: { driver: 'memory', size: SIZE }, backing: 'alias-delay' });
  const live = exportOn(g, 'disk', true);
  return { g, delay, live };
}

describe('legacy fleecing over an alias of the source file', () => {
  it('with storage identity off (UNSAFE x-no-storage-identity), the graph is accepted and a snapshot read returns the guest\'s post-snapshot write', async () => {
    const { g, delay, live } = aliasedLegacy({ 'x-no-storage-identity': true });
    g.startBackup({ jobId: 'fleecing', device: 'disk', target: 'temp', sync: 'none' });
    const fleece = exportOn(g, 'temp', false);
    const gate = delay.hold('read');
    const read = fleece.read(0, 64 * KiB); // temp's lookup says unallocated: parks on the alias path
    await gate.arrived;
    let landed = false;
    const write = live.write(0, Buffer.alloc(64 * KiB, NEW)).then(() => { landed = true; });
    // The copy into temp is not serialising (temp's chain does not contain the node 'disk'), so
    // the guest write lands while the snapshot read is still on its way to the file.
    await eventually(() => landed || (g.node('temp') as OverlayNode).tracked.inFlight().some((r) => r.waitingFor !== undefined), 'the guest write to land or wait');
    expect(landed).toBe(true);
    gate.release();
    expect((await read)[0]).toBe(NEW);
    await write;
    await g.close();
  });

  it('with storage identity, blockdev-backup is refused, naming the nodes, the file and the path that bypasses the backup', async () => {
    const { g } = aliasedLegacy();
    let err: Error | undefined;
    try {
      g.startBackup({ jobId: 'fleecing', device: 'disk', target: 'temp', sync: 'none' });
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message).toMatch(/temp/);
    expect(err?.message).toContain(image);
    expect(err?.message).toMatch(/'temp' -> 'alias-delay' -> 'disk-alias'/);
    expect(err?.message).toMatch(/'disk'/);
    // Rolled back whole: no job, no filter, the live export still on 'disk'.
    expect(g.queryJobs()).toEqual([]);
    expect(g.allNodes().map((n) => n.driver)).not.toContain('copy-before-write');
    await g.close();
  });
});

const refusal = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('expected a refusal, the change was accepted');
};

describe('storage identity is the file, not its name', () => {
  it('a symlink, a path with .. and a hard link name one storage; another file with the same bytes does not', () => {
    fs.mkdirSync(path.join(dir, 'sub'));
    fs.symlinkSync(image, path.join(dir, 'link.img'));
    fs.linkSync(image, path.join(dir, 'hard.img'));
    fs.copyFileSync(image, path.join(dir, 'copy.img'));
    const g = new BlockGraph();
    const names = { direct: image, symlink: path.join(dir, 'link.img'), dotdot: path.join(dir, 'sub', '..', 'disk.img'), hardlink: path.join(dir, 'hard.img'), copy: path.join(dir, 'copy.img') };
    for (const [n, f] of Object.entries(names)) g.addNode({ driver: 'file', 'node-name': n, filename: f, 'read-only': true });
    const key = (n: string) => g.node(n)!.storage()!.key;
    expect(new Set(['direct', 'symlink', 'dotdot', 'hardlink'].map(key)).size).toBe(1);
    expect(key('copy')).not.toBe(key('direct'));
    expect(g.node('symlink')!.storage()!.file).toBe(names.symlink);
  });

  it('memory nodes have no storage identity: each is its own disk', () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'memory', 'node-name': 'm1', size: SIZE });
    g.addNode({ driver: 'memory', 'node-name': 'm2', size: SIZE });
    expect(g.node('m1')!.storage()).toBeUndefined();
    exportOn(g, 'm1', true);
    exportOn(g, 'm2', true);
  });
});

describe('permissions across the nodes of one file (as QEMU\'s image locks check them)', () => {
  /** The modern graph over a file: cbw on raw 'source' over file 'disk', temp in memory. */
  function modern(): BlockGraph {
    const g = new BlockGraph();
    g.addNode({ driver: 'file', 'node-name': 'disk', filename: image });
    g.addNode({ driver: 'raw', 'node-name': 'source', file: 'disk' });
    g.addNode({ driver: 'memory', 'node-name': 'temp', size: SIZE });
    g.addNode({ driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'source', target: 'temp' });
    g.addNode({ driver: 'snapshot-access', 'node-name': 'fl-access', file: 'fl-cbw' });
    exportOn(g, 'fl-cbw', true);
    exportOn(g, 'fl-access', false);
    return g;
  }

  it('a writable export on a second node over the source file is refused with QEMU 7.2\'s "Failed to get \\"write\\" lock", naming both nodes and the file', () => {
    const g = modern();
    g.addNode({ driver: 'file', 'node-name': 'disk-alias', filename: path.join(dir, '.', 'disk.img') });
    const msg = refusal(() => exportOn(g, 'disk-alias', true));
    expect(msg).toMatch(/^Failed to get "write" lock: node 'disk-alias' needs 'write' on file '.*disk.img' \(device \d+, inode \d+\), which node 'disk' opens too and does not share/);
    // A read-only export there is a reader of live data, not of the snapshot: accepted.
    exportOn(g, 'disk-alias', false);
  });

  it('without storage identity the same export is accepted (the known-bad x-no-storage-identity)', () => {
    const g = modern();
    g.addNode({ driver: 'file', 'node-name': 'disk-alias', filename: image, 'x-no-storage-identity': true });
    exportOn(g, 'disk-alias', true);
  });

  it('a cbw target over the source file is refused; a node that unshares what an alias holds gets "Failed to get shared"', async () => {
    const g = modern();
    g.addNode({ driver: 'file', 'node-name': 'disk-alias', filename: image });
    expect(refusal(() => g.addNode({ driver: 'copy-before-write', 'node-name': 'cbw2', file: 'temp', target: 'disk-alias' }))).toMatch(/^Failed to get "write" lock: node 'disk-alias'/);
    // The first graph's image locks would refuse the second graph's writer: another holder.
    await g.close();
    const h = new BlockGraph();
    h.addNode({ driver: 'file', 'node-name': 'a', filename: image });
    h.addNode({ driver: 'file', 'node-name': 'b', filename: image });
    exportOn(h, 'a', true);
    // A backend on b sharing nothing: b's cumulative shared lacks what a uses (consistent-read first, bit order).
    expect(refusal(() => h.attachBackend('an unnamed block device', 'b', PERM_CR, 0))).toMatch(/^Failed to get shared "consistent-read" lock: node 'b' does not share 'consistent-read' on file '.*' \(device \d+, inode \d+\), which node 'a' opens too and uses/);
  });

  it('safe aliasing stays accepted: two read-only nodes over a file no one writes, both exported; legacy fleecing of a read-only source over an alias', async () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'file', 'node-name': 'r1', filename: image, 'read-only': true });
    g.addNode({ driver: 'file', 'node-name': 'r2', filename: path.join(dir, '..', path.basename(dir), 'disk.img'), 'read-only': true });
    const e1 = exportOn(g, 'r1', false);
    const e2 = exportOn(g, 'r2', false);
    expect((await e1.read(0, 4096)).equals(await e2.read(0, 4096))).toBe(true);
    g.addNode({ driver: 'overlay', 'node-name': 'temp', file: { driver: 'memory', size: SIZE }, backing: 'r2' });
    g.startBackup({ jobId: 'fleecing', device: 'r1', target: 'temp', sync: 'none' });
    exportOn(g, 'temp', false);
    await g.close();
  });

  it('the bypass is refused whenever a writer appears: a writable export added on the backup filter after the job started', async () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'file', 'node-name': 'disk', filename: image });
    g.addNode({ driver: 'file', 'node-name': 'disk-alias', filename: image, 'read-only': true });
    g.addNode({ driver: 'overlay', 'node-name': 'temp', file: { driver: 'memory', size: SIZE }, backing: 'disk-alias' });
    g.startBackup({ jobId: 'fleecing', device: 'disk', target: 'temp', sync: 'none', filterNodeName: 'fl-filter' });
    exportOn(g, 'temp', false);
    const msg = refusal(() => exportOn(g, 'fl-filter', true));
    expect(msg).toMatch(/^copy-before-write node 'fl-filter' cannot keep its target 'temp' a snapshot of 'disk': reads of the target reach file '.*disk.img' \(device \d+, inode \d+\) by 'temp' -> 'disk-alias', not through 'disk'.*written through node 'disk'/);
    await g.close();
  });
});

describe('the snapshot store and the reads around copy-before-write', () => {
  it('a writer on a second node over the cbw target\'s file is refused: its writes change the snapshot behind cbw', () => {
    const tempImage = path.join(dir, 'temp.img');
    fs.writeFileSync(tempImage, '');
    fs.truncateSync(tempImage, SIZE);
    const g = new BlockGraph();
    g.addNode({ driver: 'file', 'node-name': 'disk', filename: image });
    g.addNode({ driver: 'file', 'node-name': 'temp', filename: tempImage });
    g.addNode({ driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'disk', target: 'temp' });
    g.addNode({ driver: 'snapshot-access', 'node-name': 'fl-access', file: 'fl-cbw' });
    exportOn(g, 'fl-cbw', true);
    exportOn(g, 'fl-access', false);
    g.addNode({ driver: 'file', 'node-name': 'temp-alias', filename: tempImage });
    expect(refusal(() => exportOn(g, 'temp-alias', true))).toMatch(/^copy-before-write node 'fl-cbw' keeps its snapshot in file '.*temp.img' \(device \d+, inode \d+\) \(node 'temp' under its target 'temp'\), which node 'temp-alias' also opens and writes/);
    exportOn(g, 'temp-alias', false);
  });

  it('a modern target backed by an alias of the source is accepted (snapshot-access reads only what cbw copied from it) and keeps the snapshot; a reader of that target directly is refused', async () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'file', 'node-name': 'disk', filename: image });
    g.addNode({ driver: 'file', 'node-name': 'disk-alias', filename: image, 'read-only': true });
    g.addNode({ driver: 'overlay', 'node-name': 'temp', file: { driver: 'memory', size: SIZE }, backing: 'disk-alias' });
    g.addNode({ driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'disk', target: 'temp' });
    g.addNode({ driver: 'snapshot-access', 'node-name': 'fl-access', file: 'fl-cbw' });
    const live = exportOn(g, 'fl-cbw', true);
    const fleece = exportOn(g, 'fl-access', false);
    await live.write(0, Buffer.alloc(4096, NEW));
    expect((await fleece.read(0, 64 * KiB)).every((b) => b === OLD)).toBe(true);
    expect(refusal(() => exportOn(g, 'temp', false))).toMatch(/reads of the target reach file .* by 'temp' -> 'disk-alias', not through 'disk'/);
    await g.close();
  });

  it('no alias needed: a legacy temp backed by the file node under a raw source (not the source node itself) is refused the same way', async () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'file', 'node-name': 'disk', filename: image });
    g.addNode({ driver: 'raw', 'node-name': 'source', file: 'disk' });
    g.addNode({ driver: 'overlay', 'node-name': 'temp', file: { driver: 'memory', size: SIZE }, backing: 'disk' });
    exportOn(g, 'source', true);
    expect(refusal(() => g.startBackup({ jobId: 'fleecing', device: 'source', target: 'temp', sync: 'none' }))).toMatch(/by 'temp' -> 'disk', not through 'source'/);
    await g.close();
  });
});
