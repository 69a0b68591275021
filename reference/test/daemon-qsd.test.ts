// The same QMP sequence against qemu-storage-daemon and `fleece serve`: x-debug-query-block-graph
// permissions compared edge by edge, and the refusal of a conflicting export compared by error
// class and text (docs/requirements/qemu-fleecing.md §1.5, §5.1).
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { requirePeer, tmpDir } from './nbd-helpers.ts';
import { QmpClient, diffGraphs, normaliseGraph, startDaemon, type Daemon, type GraphInfo } from './daemon-helpers.ts';

interface Observed {
  graph: GraphInfo;
  conflict: { class: string; desc: string } | undefined;
  inUse: { class: string; desc: string } | undefined;
  resize: { class: string; desc: string } | undefined;
  events: string[];
}

async function runSequence(kind: 'qsd' | 'fleece'): Promise<Observed> {
  requirePeer('qemu-img');
  const t = tmpDir(`fleece-cmp-${kind}-`);
  const d = t.dir;
  let daemon: Daemon | undefined;
  try {
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', `${d}/src.raw`, '64M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', `${d}/tmp.raw`, '64M']);
    const qmpSock = path.join(d, 'qmp.sock');
    daemon = await startDaemon(kind, ['--chardev', `socket,id=qmp0,path=${qmpSock},server=on,wait=off`, '--monitor', 'chardev=qmp0'], qmpSock);
    const c = await QmpClient.connect(qmpSock);
    await c.ok('blockdev-add', { driver: 'file', 'node-name': 'source', filename: `${d}/src.raw` });
    await c.ok('blockdev-add', { driver: 'file', 'node-name': 'temp', filename: `${d}/tmp.raw` });
    await c.ok('blockdev-add', { driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'source', target: 'temp' });
    await c.ok('blockdev-add', { driver: 'snapshot-access', 'node-name': 'fl-access', file: 'fl-cbw' });
    await c.ok('nbd-server-start', { addr: { type: 'unix', data: { path: `${d}/nbd.sock` } } });
    await c.ok('block-export-add', { type: 'nbd', id: 'exp-live', 'node-name': 'fl-cbw', name: 'live', writable: true });
    await c.ok('block-export-add', { type: 'nbd', id: 'exp-fleece', 'node-name': 'fl-access', name: 'fleece' });
    const graph = (await c.ok('x-debug-query-block-graph')) as GraphInfo;
    const conflict = (await c.execute('block-export-add', { type: 'nbd', id: 'bad', 'node-name': 'source', name: 'bad', writable: true })).error;
    const inUse = (await c.execute('blockdev-del', { 'node-name': 'fl-cbw' })).error;
    const resize = (await c.execute('block_resize', { 'node-name': 'fl-cbw', size: 128 << 20 })).error;
    await c.ok('block-export-del', { id: 'exp-fleece' });
    await c.ok('nbd-server-stop');
    await c.waitEvent('BLOCK_EXPORT_DELETED');
    const events = c.events.map((e) => `${e.event} ${JSON.stringify(e.data)}`);
    await c.ok('quit');
    c.close();
    await daemon.exited;
    return { graph, conflict, inUse, resize, events };
  } finally {
    await daemon?.kill();
    t.cleanup();
  }
}

interface LegacyObserved {
  graph: GraphInfo;
  /** B6 (docs/requirements/qemu-fleecing.md §6): a writable export on the temp node is accepted by QEMU. */
  writableOnTemp: unknown;
  inUse: unknown;
  cancelled: Record<string, unknown> | undefined;
}

/** Legacy fleecing (§5.2) by QMP: the temp image is qcow2 with backing=source on both; the export
 * on the source predates the job. */
async function runLegacy(kind: 'qsd' | 'fleece'): Promise<LegacyObserved> {
  const t = tmpDir(`fleece-cmp-legacy-${kind}-`);
  const d = t.dir;
  let daemon: Daemon | undefined;
  try {
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', `${d}/src.raw`, '64M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', `${d}/tmp.img`, '64M']);
    const qmpSock = path.join(d, 'qmp.sock');
    daemon = await startDaemon(kind, ['--chardev', `socket,id=qmp0,path=${qmpSock},server=on,wait=off`, '--monitor', 'chardev=qmp0'], qmpSock);
    const c = await QmpClient.connect(qmpSock);
    await c.ok('blockdev-add', { driver: 'file', 'node-name': 'source', filename: `${d}/src.raw` });
    await c.ok('blockdev-add', { driver: 'qcow2', 'node-name': 'temp', file: { driver: 'file', filename: `${d}/tmp.img` }, backing: 'source' });
    await c.ok('nbd-server-start', { addr: { type: 'unix', data: { path: `${d}/nbd.sock` } } });
    await c.ok('block-export-add', { type: 'nbd', id: 'exp-live', 'node-name': 'source', name: 'live', writable: true });
    await c.ok('blockdev-backup', { 'job-id': 'fleecing', device: 'source', target: 'temp', sync: 'none' });
    await c.ok('block-export-add', { type: 'nbd', id: 'exp-fleece', 'node-name': 'temp', name: 'fleece' });
    const graph = (await c.ok('x-debug-query-block-graph')) as GraphInfo;
    const writableOnTemp = await c.execute('block-export-add', { type: 'nbd', id: 'w', 'node-name': 'temp', name: 'w', writable: true });
    const inUse = await c.execute('blockdev-del', { 'node-name': 'temp' });
    await c.ok('block-job-cancel', { device: 'fleecing' });
    const cancelled = await c.waitEvent('BLOCK_JOB_CANCELLED');
    await c.ok('quit');
    c.close();
    await daemon.exited;
    return { graph, writableOnTemp, inUse, cancelled };
  } finally {
    await daemon?.kill();
    t.cleanup();
  }
}

describe('qemu-storage-daemon and fleece serve, same QMP sequence', () => {
  let qsd: Observed;
  let ref: Observed;

  it('runs on both', async () => {
    [qsd, ref] = [await runSequence('qsd'), await runSequence('fleece')];
  });

  it('x-debug-query-block-graph: every edge has the same perm and shared-perm', () => {
    const a = normaliseGraph(qsd.graph);
    const b = normaliseGraph(ref.graph);
    expect(a.size).toBe(5);
    expect(diffGraphs(a, b)).toEqual([]);
    // The measured table (docs/requirements/qemu-fleecing.md §1.5): cbw holds WRITE on the target, unshares WRITE on the source.
    expect(b.get('fl-cbw -[file]-> source')).toBe('perm=consistent-read,write shared=consistent-read,write-unchanged');
  });

  it('the comparison catches a changed edge (known-bad variant)', () => {
    const bad = structuredClone(ref.graph);
    const e = bad.edges.find((x) => x.name === 'target')!;
    e['shared-perm'] = [...e['shared-perm'], 'resize'];
    expect(diffGraphs(normaliseGraph(qsd.graph), normaliseGraph(bad))).toEqual([
      "fl-cbw -[target]-> temp: perm=write shared=consistent-read,write,write-unchanged vs perm=write shared=consistent-read,resize,write,write-unchanged",
    ]);
  });

  it('a writable export on the source under cbw is refused the same way', () => {
    expect(qsd.conflict?.class).toBe('GenericError');
    expect(ref.conflict).toEqual(qsd.conflict);
    expect(ref.inUse).toEqual(qsd.inUse);
  });

  it('block_resize of the cbw node is refused: the exports unshare RESIZE (§1.4)', () => {
    expect(qsd.resize?.desc).toMatch(/^Permission conflict on node 'fl-cbw': permissions 'resize'/);
    expect(ref.resize).toEqual(qsd.resize);
  });

  it('BLOCK_EXPORT_DELETED for each export, by block-export-del and nbd-server-stop', () => {
    const ids = (ev: string[]) => ev.filter((e) => e.startsWith('BLOCK_EXPORT_DELETED')).sort();
    expect(ids(ref.events)).toEqual(ids(qsd.events));
    expect(ids(ref.events)).toHaveLength(2);
  });
});

describe('legacy fleecing graph (backup sync=none), same QMP sequence on both', () => {
  it('x-debug-query-block-graph edges match, with the export moved above the implicit filter', async () => {
    const [qsd, ref] = [await runLegacy('qsd'), await runLegacy('fleece')];
    const a = normaliseGraph(qsd.graph);
    const b = normaliseGraph(ref.graph);
    expect(a.size).toBe(8);
    expect(diffGraphs(a, b)).toEqual([]);
    expect(b.get('block-backend -[root]-> #implicit')).toBe('perm=consistent-read,write shared=consistent-read,write,write-unchanged');
    expect(ref.writableOnTemp).toEqual(qsd.writableOnTemp);
    expect(qsd.writableOnTemp).toEqual({ return: {} });
    expect(ref.inUse).toEqual(qsd.inUse);
    expect(ref.cancelled).toEqual(qsd.cancelled);
  });
});
