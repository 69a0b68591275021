// The small drivers and blockdev option handling.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlockGraph, exportPerms } from '../src/block/index.ts';

const KiB = 1024;
const rw = exportPerms(true);
const open = (g: BlockGraph, node: string) => g.attachBackend('an unnamed block device', node, rw.perm, rw.shared);

describe('memory', () => {
  it('reads zeroes, reports holes, and keeps NO_HOLE zeroes allocated', async () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'memory', 'node-name': 'm', size: '1M', discard: 'unmap' });
    const b = open(g, 'm');
    expect((await b.read(0, 8)).equals(Buffer.alloc(8))).toBe(true);
    await b.write(100, Buffer.from('hello'));
    expect((await b.read(100, 5)).toString()).toBe('hello');
    expect((await b.blockStatus(0, 128 * KiB))[0]).toMatchObject({ allocated: true, zero: false, length: 64 * KiB });
    await b.writeZeroes(0, 64 * KiB);
    expect((await b.blockStatus(0, 64 * KiB))[0]).toMatchObject({ allocated: false, zero: true });
    await b.writeZeroes(0, 64 * KiB, { noHole: true });
    expect((await b.blockStatus(0, 64 * KiB))[0]).toMatchObject({ allocated: true });
    await b.discard(0, 64 * KiB);
    expect((await b.blockStatus(0, 64 * KiB))[0]).toMatchObject({ allocated: false, zero: true });
  });

  it('refuses I/O past the end with a clear error', async () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'memory', 'node-name': 'm', size: 4096 });
    await expect(open(g, 'm').read(4000, 200)).rejects.toThrow(/past its end: offset=4000 bytes=200 length=4096/);
  });
});

describe('overlay', () => {
  it('falls through to its backing for unallocated clusters and copies on partial writes', async () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'memory', 'node-name': 'base', size: '1M' });
    await open(g, 'base').write(0, Buffer.alloc(128 * KiB, 0x42));
    g.addNode({ driver: 'overlay', 'node-name': 'top', file: { driver: 'memory', size: '1M' }, backing: 'base' });
    const top = g.attachBackend('an unnamed block device', 'top', rw.perm, rw.shared);
    expect((await top.read(0, 4))[0]).toBe(0x42);
    await top.write(4 * KiB, Buffer.alloc(4 * KiB, 0x99)); // partial cluster: COW the rest
    const c0 = await top.read(0, 64 * KiB);
    expect([c0[0], c0[4 * KiB], c0[8 * KiB]]).toEqual([0x42, 0x99, 0x42]);
    // Cluster 0 is allocated in top, cluster 1 in the backing: block-status-above merges them;
    // beyond, nothing in the chain allocates: a hole.
    const st = await top.blockStatus(0, 256 * KiB);
    expect(st).toEqual([
      { offset: 0, length: 128 * KiB, allocated: true, zero: false },
      { offset: 128 * KiB, length: 128 * KiB, allocated: false, zero: true },
    ]);
  });
});

describe('file', () => {
  it('reads and writes a raw image on disk through raw', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-file-'));
    const img = path.join(dir, 'disk.raw');
    fs.writeFileSync(img, Buffer.alloc(256 * KiB));
    try {
      const g = new BlockGraph();
      g.addNode({ driver: 'raw', 'node-name': 'disk', file: { driver: 'file', filename: img } });
      const b = open(g, 'disk');
      expect(b.length()).toBe(256 * KiB);
      await b.write(KiB, Buffer.from('fleece'));
      await b.flush();
      expect(fs.readFileSync(img).subarray(KiB, KiB + 6).toString()).toBe('fleece');
      b.detach();
      await g.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a missing file is a clear error naming it', () => {
    const g = new BlockGraph();
    expect(() => g.addNode({ driver: 'file', 'node-name': 'f', filename: '/nonexistent/x.img' })).toThrow(/Could not open '\/nonexistent\/x.img'/);
  });
});

describe('blockdev options', () => {
  const g = new BlockGraph();
  it('unknown driver: named, with a hint for QEMU-only drivers', () => {
    expect(() => g.addNode({ driver: 'null-co', 'node-name': 'q' })).toThrow(/Parameter 'driver' does not accept value 'null-co': the reference does not implement it, use 'memory'/);
    expect(() => g.addNode({ driver: 'bogus', 'node-name': 'q' })).toThrow(/^Parameter 'driver' does not accept value 'bogus'$/);
  });
  it('unknown option: named', () => {
    expect(() => g.addNode({ driver: 'memory', 'node-name': 'q', size: 1, colour: 'red' })).toThrow(/^Parameter 'colour' is unexpected$/);
  });
  it('bad values: named with what was expected', () => {
    expect(() => g.addNode({ driver: 'memory', 'node-name': 'q', size: 'lots' })).toThrow(/parameter 'size': expected a size/);
    expect(() => g.addNode({ driver: 'memory', 'node-name': 'q', size: 1, 'read-only': 'maybe' })).toThrow(/^Parameter 'read-only' expects 'on' or 'off'$/);
  });
  it('missing child reference: named', () => {
    expect(() => g.addNode({ driver: 'raw', 'node-name': 'q', file: 'nope' })).toThrow(/^Cannot find device='nope' nor node-name='nope'$/);
  });
  it('duplicate node names are refused', () => {
    g.addNode({ driver: 'memory', 'node-name': 'dup', size: 1 });
    expect(() => g.addNode({ driver: 'memory', 'node-name': 'dup', size: 1 })).toThrow(/Duplicate nodes with node-name='dup'/);
  });
  it('blkdebug rules are validated', () => {
    expect(() => g.addNode({ driver: 'blkdebug', 'node-name': 'bd', image: { driver: 'memory', size: 1 }, 'inject-error': [{ event: 'explode' }] }))
      .toThrow(/inject-error\[0\]: unknown event "explode"/);
  });
  it('snapshot-access needs a copy-before-write child', () => {
    g.addNode({ driver: 'memory', 'node-name': 'plain', size: 1 });
    expect(() => g.addNode({ driver: 'snapshot-access', 'node-name': 'sa', file: 'plain' })).toThrow(/does not provide the snapshot-access API/);
  });
});
