// QEMU's image-fleecing scenario (docs/requirements/qemu-fleecing.md §4.1) with qcow2 images, on
// the command lines of §5 unchanged, against `fleece serve` and, the same way, against
// qemu-storage-daemon 7.2: the legacy graph with a qcow2 temp backed by the source
// (driver=qcow2,file.driver=file,file.filename=...,backing=source) and blockdev-backup sync=none,
// and the modern graph over a qcow2 source. The snapshot is read with qemu-io over NBD, the guest
// writes with qemu-io over NBD; afterwards `qemu-img check` of each image is clean.
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { diffGraphs, normaliseGraph, QmpClient, startDaemon, type Daemon, type GraphInfo } from './daemon-helpers.ts';
import { runOk, tmpDir } from './nbd-helpers.ts';
import { createQcow2, isClean, qemuCheck, type CheckResult } from './qcow2-support.ts';
import { overwrite, patterns, qemuIo, reads, remainder, writes, zeroes } from './support/image-fleecing.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

interface MapExtent {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

interface Observed {
  /** qemu-io failures, by step. */
  failures: Record<string, string[]>;
  graph: GraphInfo;
  /** qemu-img map of the snapshot export (base:allocation through NBD). */
  fleeceMap: MapExtent[];
  cancelled?: Record<string, unknown>;
  exit: number | null;
  checkTemp: CheckResult;
  checkSource: CheckResult;
  /** Bytes qemu-img map reports as data in the temp image. */
  tempData: number;
}

const dataIn = (map: MapExtent[], from: number, to: number): boolean =>
  map.some((e) => e.data && e.start < to && e.start + e.length > from);

async function nbdMap(uri: string): Promise<MapExtent[]> {
  return JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', uri])) as MapExtent[];
}

async function fileData(image: string, fmt: string): Promise<number> {
  const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', fmt, image])) as Array<MapExtent & { depth: number }>;
  return map.filter((e) => e.data && e.depth === 0).reduce((s, e) => s + e.length, 0);
}

/** §5.2 verbatim: source and temp qcow2, temp backed by the source; the job and the fleece export
 * by QMP. `tempExtra` adds options to the temp's --blockdev (a known-bad variant). */
async function legacy(kind: 'fleece' | 'qsd', tempExtra = ''): Promise<Observed> {
  const t = tmpDir(`qcow2-fleece-legacy-${kind}-`);
  const src = path.join(t.dir, 'src2.qcow2');
  const tmp = path.join(t.dir, 'tmp2.qcow2');
  const nbd = path.join(t.dir, 'nbd.sock');
  const qmp = path.join(t.dir, 'qmp.sock');
  let d: Daemon | undefined;
  try {
    await createQcow2(src, '64M');
    await createQcow2(tmp, '64M');
    expect(await qemuIo(src, writes(patterns), false, 'qcow2')).toEqual([]);
    d = await startDaemon(kind, [
      '--blockdev', `driver=qcow2,node-name=source,file.driver=file,file.filename=${src}`,
      '--blockdev', `driver=qcow2,node-name=temp,file.driver=file,file.filename=${tmp},backing=source${tempExtra}`,
      '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
      '--export', 'type=nbd,id=exp-live,node-name=source,name=live,writable=on',
      '--chardev', `socket,id=qmp0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=qmp0',
    ], qmp);
    const c = await QmpClient.connect(qmp);
    await c.ok('blockdev-backup', { 'job-id': 'fleecing', device: 'source', target: 'temp', sync: 'none' });
    await c.ok('block-export-add', { type: 'nbd', id: 'exp-fleece', 'node-name': 'temp', name: 'fleece' });
    const graph = (await c.ok('x-debug-query-block-graph')) as GraphInfo;
    const live = `nbd+unix:///live?socket=${nbd}`;
    const fleece = `nbd+unix:///fleece?socket=${nbd}`;
    const failures: Record<string, string[]> = {};
    failures['sanity'] = await qemuIo(fleece, [...reads(patterns), ...reads(zeroes)], true);
    failures['overwrite'] = await qemuIo(live, writes(overwrite), false);
    failures['snapshot unchanged'] = await qemuIo(fleece, [...reads(patterns), ...reads(zeroes)], true);
    failures['live'] = await qemuIo(live, reads(overwrite), true);
    const fleeceMap = await nbdMap(fleece);
    await c.ok('block-export-del', { id: 'exp-fleece', mode: 'hard' });
    await c.ok('block-job-cancel', { device: 'fleecing' });
    const cancelled = await c.waitEvent('BLOCK_JOB_CANCELLED');
    await c.ok('blockdev-del', { 'node-name': 'temp' });
    await c.ok('quit');
    const exit = await d.exited;
    c.close();
    failures['base after shutdown'] = await qemuIo(src, [...reads(overwrite), ...reads(remainder)], true, 'qcow2');
    return {
      failures, graph, fleeceMap, ...(cancelled ? { cancelled } : {}), exit,
      checkTemp: await qemuCheck(tmp), checkSource: await qemuCheck(src), tempData: await fileData(tmp, 'qcow2'),
    };
  } finally {
    await d?.kill();
    t.cleanup();
  }
}

/** §5.1 verbatim, with the qcow2 source it names: cbw + snapshot-access over a raw temp. */
async function modern(kind: 'fleece' | 'qsd'): Promise<Observed> {
  const t = tmpDir(`qcow2-fleece-modern-${kind}-`);
  const src = path.join(t.dir, 'src.qcow2');
  const tmp = path.join(t.dir, 'tmp.raw');
  const nbd = path.join(t.dir, 'nbd.sock');
  const qmp = path.join(t.dir, 'qmp.sock');
  let d: Daemon | undefined;
  try {
    await createQcow2(src, '64M');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', tmp, '64M']);
    expect(await qemuIo(src, writes(patterns), false, 'qcow2')).toEqual([]);
    d = await startDaemon(kind, [
      '--blockdev', `driver=qcow2,node-name=source,file.driver=file,file.filename=${src}`,
      '--blockdev', `driver=file,node-name=temp,filename=${tmp}`,
      '--blockdev', 'driver=copy-before-write,node-name=fl-cbw,file=source,target=temp',
      '--blockdev', 'driver=snapshot-access,node-name=fl-access,file=fl-cbw',
      '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
      '--export', 'type=nbd,id=exp-live,node-name=fl-cbw,name=live,writable=on',
      '--export', 'type=nbd,id=exp-fleece,node-name=fl-access,name=fleece',
      '--chardev', `socket,id=qmp0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=qmp0',
    ], qmp);
    const c = await QmpClient.connect(qmp);
    const graph = (await c.ok('x-debug-query-block-graph')) as GraphInfo;
    const live = `nbd+unix:///live?socket=${nbd}`;
    const fleece = `nbd+unix:///fleece?socket=${nbd}`;
    const failures: Record<string, string[]> = {};
    failures['sanity'] = await qemuIo(fleece, [...reads(patterns), ...reads(zeroes)], true);
    failures['overwrite'] = await qemuIo(live, writes(overwrite), false);
    failures['snapshot unchanged'] = await qemuIo(fleece, [...reads(patterns), ...reads(zeroes)], true);
    failures['live'] = await qemuIo(live, reads(overwrite), true);
    const fleeceMap = await nbdMap(live);
    await c.ok('nbd-server-stop');
    await c.ok('blockdev-del', { 'node-name': 'fl-access' });
    await c.ok('blockdev-del', { 'node-name': 'fl-cbw' });
    await c.ok('quit');
    const exit = await d.exited;
    c.close();
    failures['base after shutdown'] = await qemuIo(src, [...reads(overwrite), ...reads(remainder)], true, 'qcow2');
    return {
      failures, graph, fleeceMap, exit,
      checkTemp: { code: 0, output: 'raw temp' }, checkSource: await qemuCheck(src), tempData: await fileData(tmp, 'raw'),
    };
  } finally {
    await d?.kill();
    t.cleanup();
  }
}

const noFailures = (o: Observed) => Object.fromEntries(Object.keys(o.failures).map((k) => [k, []]));

describe('legacy fleecing with a qcow2 temp, QEMU docs command line (§5.2)', () => {
  const seen: Partial<Record<'fleece' | 'qsd', Observed>> = {};

  it.each(['qsd', 'fleece'] as const)('%s: snapshot unchanged under guest writes; images clean afterwards', async (kind) => {
    const o = (seen[kind] = await legacy(kind));
    expect(o.failures).toEqual(noFailures(o));
    // 1 (@0) + 2 (straddling 1M) + 2 (straddling 32M) + 1 (@64M-128k) clusters of 64 KiB (§5.2).
    expect(o.cancelled).toMatchObject({ device: 'fleecing', offset: 393216 });
    expect(o.exit).toBe(0);
    expect(isClean(o.checkTemp), o.checkTemp.output).toBe(true);
    expect(isClean(o.checkSource), o.checkSource.output).toBe(true);
    // Only the copied clusters hold data in the temp image.
    expect(o.tempData).toBeGreaterThan(0);
    expect(o.tempData).toBeLessThanOrEqual(6 * 64 * KiB);
    // base:allocation through the temp and its backing: the patterns are data, the rest holes.
    for (const [, off, len] of patterns) expect(dataIn(o.fleeceMap, off, off + len)).toBe(true);
    expect(dataIn(o.fleeceMap, 2 * MiB, 31 * MiB)).toBe(false);
    expect(o.fleeceMap.filter((e) => !e.data).every((e) => e.zero)).toBe(true);
  });

  it('the two graphs have the same edges with the same perm and shared-perm (x-debug-query-block-graph)', () => {
    const a = normaliseGraph(seen.qsd!.graph);
    const b = normaliseGraph(seen.fleece!.graph);
    expect(diffGraphs(a, b)).toEqual([]);
    // The qcow2 nodes' file children: bdrv_default_perms for a format node (data+metadata).
    expect(b.get('temp -[file]-> #implicit')).toBe('perm=consistent-read,resize,write shared=consistent-read,write-unchanged');
    expect(b.get('temp -[backing]-> source')).toBe('perm=consistent-read shared=consistent-read,resize,write,write-unchanged');
  });

  it('known bad: a temp with x-skip-refcounts=on fails qemu-img check (the check can fail)', async () => {
    const o = await legacy('fleece', ',x-skip-refcounts=on');
    expect(o.failures).toEqual(noFailures(o));
    expect(isClean(o.checkTemp)).toBe(false);
    expect(o.checkTemp.output).toMatch(/ERROR cluster \d+ refcount=0 reference=1/);
  });
});

describe('modern fleecing over a qcow2 source, QEMU docs command line (§5.1)', () => {
  const seen: Partial<Record<'fleece' | 'qsd', Observed>> = {};

  it.each(['qsd', 'fleece'] as const)('%s: snapshot unchanged, source image clean afterwards', async (kind) => {
    const o = (seen[kind] = await modern(kind));
    expect(o.failures).toEqual(noFailures(o));
    expect(o.exit).toBe(0);
    expect(isClean(o.checkSource), o.checkSource.output).toBe(true);
    expect(o.tempData).toBeLessThanOrEqual(6 * 64 * KiB);
    // The live view (cbw over the qcow2 source) reports holes where nothing was written.
    expect(dataIn(o.fleeceMap, 2 * MiB, 31 * MiB)).toBe(false);
  });

  it('the same edges as qemu-storage-daemon', () => {
    expect(diffGraphs(normaliseGraph(seen.qsd!.graph), normaliseGraph(seen.fleece!.graph))).toEqual([]);
  });
});

/** A qcow2 image exported writable with discard=unmap; qemu-io writes, zero-writes (with and
 * without NO_HOLE's counterpart, and FUA) and discards over NBD; base:allocation read with
 * qemu-img map through NBD, then the image itself checked and read. */
async function exportedImage(kind: 'fleece' | 'qsd'): Promise<{ map: MapExtent[]; check: CheckResult; bytes: Buffer; exit: number | null }> {
  const t = tmpDir(`qcow2-export-${kind}-`);
  const img = path.join(t.dir, 'disk.qcow2');
  const nbd = path.join(t.dir, 'nbd.sock');
  const qmp = path.join(t.dir, 'qmp.sock');
  let d: Daemon | undefined;
  try {
    await createQcow2(img, '8M');
    d = await startDaemon(kind, [
      '--blockdev', `driver=qcow2,node-name=disk,discard=unmap,file.driver=file,file.filename=${img}`,
      '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
      '--export', 'type=nbd,id=e,node-name=disk,name=disk,writable=on',
      '--chardev', `socket,id=qmp0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=qmp0',
    ], qmp);
    const uri = `nbd+unix:///disk?socket=${nbd}`;
    const cmds = [
      'write -P 0x41 0 1M', 'write -P 0x42 3M 100k', 'write -z 256k 256k', 'write -z -u 3M 64k',
      'discard 640k 128k', 'write -P 0x43 6M 4k', 'write -z 6M 2k', 'write -f -P 0x44 7M 64k',
    ];
    expect(await qemuIo(uri, cmds, false)).toEqual([]);
    const map = await nbdMap(uri);
    const c = await QmpClient.connect(qmp);
    await c.ok('quit');
    const exit = await d.exited;
    c.close();
    const raw = path.join(t.dir, 'out.raw');
    await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', img, raw]);
    const { readFileSync } = await import('node:fs');
    return { map, check: await qemuCheck(img), bytes: readFileSync(raw), exit };
  } finally {
    await d?.kill();
    t.cleanup();
  }
}

describe('a qcow2 image exported over NBD, fleece serve and qemu-storage-daemon alike', () => {
  it('same guest bytes, same base:allocation (data and zero per 64 KiB), images clean', async () => {
    const [q, f] = [await exportedImage('qsd'), await exportedImage('fleece')];
    expect(f.exit).toBe(0);
    expect(isClean(f.check), f.check.output).toBe(true);
    expect(isClean(q.check), q.check.output).toBe(true);
    expect(f.bytes.equals(q.bytes)).toBe(true);
    const flags = (m: MapExtent[]) => {
      const out: string[] = [];
      for (const e of m) for (let o = e.start; o < e.start + e.length; o += 64 * KiB) out[o / (64 * KiB)] = `${e.data ? 'D' : '-'}${e.zero ? 'Z' : '-'}`;
      return out.join('');
    };
    expect(flags(f.map)).toEqual(flags(q.map));
    // The comparison can fail: zero clusters reported as data (what the reference's NBD export did
    // before extents carried BDRV_BLOCK_DATA apart from allocation) differ from QEMU's holes.
    const bad = f.map.map((e) => (e.zero ? { ...e, data: true } : e));
    expect(flags(bad)).not.toEqual(flags(q.map));
    // Holes: nothing was ever written at 1M..3M.
    expect(dataIn(f.map, 1 * MiB, 3 * MiB)).toBe(false);
  });
});
