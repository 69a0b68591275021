// driver=throttle and throttle-group over QMP, the same sequence against qemu-storage-daemon 7.2
// and `fleece serve`: the permissions on every edge (x-debug-query-block-graph, normalised), and
// QEMU's answers to a group in use, a missing group, a wrong-typed limit and a missing iothread.
// Then data through the throttle node over NBD with qemu-io.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { requirePeer, run, tmpDir } from './nbd-helpers.ts';
import { QmpClient, diffGraphs, normaliseGraph, startDaemon, type Daemon, type GraphInfo } from './daemon-helpers.ts';

interface Observed {
  graph: GraphInfo;
  answers: Record<string, unknown>;
  io: string;
}

async function runSequence(kind: 'qsd' | 'fleece'): Promise<Observed> {
  requirePeer('qemu-img');
  requirePeer('qemu-io');
  const t = tmpDir(`qemu-opts-throttle-${kind}-`);
  const d = t.dir;
  let daemon: Daemon | undefined;
  try {
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', `${d}/src.raw`, '4M']);
    const qmpSock = path.join(d, 'qmp.sock');
    daemon = await startDaemon(kind, ['--chardev', `socket,id=qmp0,path=${qmpSock},server=on,wait=off`, '--monitor', 'chardev=qmp0'], qmpSock);
    const c = await QmpClient.connect(qmpSock);
    const err = async (cmd: string, args: Record<string, unknown>) => (await c.execute(cmd, args)).error;
    const answers: Record<string, unknown> = {};
    // The iotests' form: typed limits in a JSON object-add; a group per node, one shared.
    await c.ok('object-add', { 'qom-type': 'throttle-group', id: 'group0', limits: { 'iops-total': 1000, 'bps-total': 64 << 20 } });
    answers.badLimit = await err('object-add', { 'qom-type': 'throttle-group', id: 'group1', limits: { 'bps-total': 'lots' } });
    answers.burstOnly = await err('object-add', { 'qom-type': 'throttle-group', id: 'group1', 'x-iops-total-max': 10 });
    await c.ok('blockdev-add', { driver: 'file', 'node-name': 'disk', filename: `${d}/src.raw` });
    answers.missingGroup = await err('blockdev-add', { driver: 'throttle', 'node-name': 'bad', 'throttle-group': 'nope', file: 'disk' });
    await c.ok('blockdev-add', { driver: 'throttle', 'node-name': 'throttled', 'throttle-group': 'group0', file: 'disk' });
    await c.ok('blockdev-add', { driver: 'raw', 'node-name': 'fmt', file: 'throttled' });
    await c.ok('nbd-server-start', { addr: { type: 'unix', data: { path: `${d}/nbd.sock` } } });
    answers.noIothread = await err('block-export-add', { type: 'nbd', id: 'e1', 'node-name': 'fmt', iothread: 'io0' });
    await c.ok('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'fmt', name: 'disk', writable: true });
    answers.inUse = await err('object-del', { id: 'group0' });
    const graph = (await c.ok('x-debug-query-block-graph')) as GraphInfo;
    const uri = `nbd+unix:///disk?socket=${d}/nbd.sock`;
    const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 256k', '-c', 'read -P 0x5a 0 256k', uri]);
    await c.ok('quit');
    c.close();
    await daemon.exited;
    return { graph, answers, io: `${io.code} ${io.stdout.includes('read 262144/262144') && io.stdout.includes('wrote 262144/262144')}` };
  } finally {
    await daemon?.kill();
    t.cleanup();
  }
}

describe('throttle over QMP: qemu-storage-daemon 7.2 and fleece serve', () => {
  it('same permissions on every edge, same answers, data through the filter', async () => {
    const qsd = await runSequence('qsd');
    const ref = await runSequence('fleece');
    expect(diffGraphs(normaliseGraph(ref.graph), normaliseGraph(qsd.graph))).toEqual([]);
    expect(ref.answers).toEqual(qsd.answers);
    expect(qsd.io).toBe('0 true');
    expect(ref.io).toBe('0 true');
  });
});
