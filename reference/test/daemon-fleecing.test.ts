// QEMU's image-fleecing scenario (docs/requirements/qemu-fleecing.md §4.1) end to end over NBD against
// `fleece serve`: the guest writes through a writable export (modern: on the cbw node; legacy: on
// the source, moved above the backup job's filter), the snapshot is read with qemu-io.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runOk, tmpDir } from './nbd-helpers.ts';
import { QmpClient, startDaemon, type GraphInfo } from './daemon-helpers.ts';
import { overwrite, patterns, qemuIo, reads, remainder, writes, zeroes } from './support/image-fleecing.ts';

const k = 1024;

function makeImages(dir: string): { src: string; tmp: string } {
  const src = path.join(dir, 'src.raw');
  const tmp = path.join(dir, 'tmp.raw');
  execFileSync('qemu-img', ['create', '-q', '-f', 'raw', src, '64M']);
  execFileSync('qemu-img', ['create', '-q', '-f', 'raw', tmp, '64M']);
  execFileSync('qemu-io', ['-f', 'raw', ...writes(patterns).flatMap((c) => ['-c', c]), src]);
  return { src, tmp };
}

describe('image-fleecing over NBD against fleece serve', () => {
  it('modern graph: copy-before-write + snapshot-access, all on the command line (§5.1)', async () => {
    const t = tmpDir('fleece-if-modern-');
    const { src, tmp } = makeImages(t.dir);
    const nbd = path.join(t.dir, 'nbd.sock');
    const qmp = path.join(t.dir, 'qmp.sock');
    const d = await startDaemon('fleece', [
      // §5.1 verbatim, with raw in place of qcow2 for the source.
      '--blockdev', `driver=raw,node-name=source,file.driver=file,file.filename=${src}`,
      '--blockdev', `driver=file,node-name=temp,filename=${tmp}`,
      '--blockdev', 'driver=copy-before-write,node-name=fl-cbw,file=source,target=temp',
      '--blockdev', 'driver=snapshot-access,node-name=fl-access,file=fl-cbw',
      '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
      '--export', 'type=nbd,id=exp-live,node-name=fl-cbw,name=live,writable=on',
      '--export', 'type=nbd,id=exp-fleece,node-name=fl-access,name=fleece',
      '--chardev', `socket,id=qmp0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=qmp0',
    ], qmp);
    try {
      const live = `nbd+unix:///live?socket=${nbd}`;
      const fleece = `nbd+unix:///fleece?socket=${nbd}`;
      expect(await qemuIo(fleece, [...reads(patterns), ...reads(zeroes)], true)).toEqual([]);
      expect(await qemuIo(live, writes(overwrite), false)).toEqual([]);
      expect(await qemuIo(fleece, [...reads(patterns), ...reads(zeroes)], true)).toEqual([]);
      expect(await qemuIo(live, reads(overwrite), true)).toEqual([]);
      // Known-bad reader: the live export does show post-snapshot data; the check sees it.
      expect((await qemuIo(live, reads(patterns), true)).length).toBeGreaterThan(0);
      // Only the touched clusters were copied: 0, [0xF0000,0x110000), [32M,32M+128k), 64M-128k.
      const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', tmp]));
      const data = map.filter((e: { data: boolean }) => e.data).reduce((s: number, e: { length: number }) => s + e.length, 0);
      expect(data).toBeLessThanOrEqual(6 * 64 * k);
      const c = await QmpClient.connect(qmp);
      await c.ok('nbd-server-stop');
      await c.ok('blockdev-del', { 'node-name': 'fl-access' });
      await c.ok('blockdev-del', { 'node-name': 'fl-cbw' });
      await c.ok('quit');
      expect(await d.exited).toBe(0);
      c.close();
      expect(await qemuIo(src, [...reads(overwrite), ...reads(remainder)], true)).toEqual([]);
    } finally {
      await d.kill();
      t.cleanup();
    }
  });

  it('legacy graph: overlay temp backed by the source, blockdev-backup sync=none via QMP (§5.2)', async () => {
    const t = tmpDir('fleece-if-legacy-');
    const { src, tmp } = makeImages(t.dir);
    const nbd = path.join(t.dir, 'nbd.sock');
    const qmp = path.join(t.dir, 'qmp.sock');
    const d = await startDaemon('fleece', [
      '--blockdev', `driver=file,node-name=source,filename=${src}`,
      '--blockdev', `driver=overlay,node-name=temp,file.driver=file,file.filename=${tmp},backing=source`,
      '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
      '--export', 'type=nbd,id=exp-live,node-name=source,name=live,writable=on',
      '--chardev', `socket,id=qmp0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=qmp0',
    ], qmp);
    try {
      const c = await QmpClient.connect(qmp);
      await c.ok('blockdev-backup', { 'job-id': 'fleecing', device: 'source', target: 'temp', sync: 'none' });
      await c.ok('block-export-add', { type: 'nbd', id: 'exp-fleece', 'node-name': 'temp', name: 'fleece' });
      expect(c.events.filter((e) => e.event === 'JOB_STATUS_CHANGE').map((e) => e.data?.status)).toEqual(['created', 'running']);
      // The pre-existing writable export was moved above the job's implicit filter.
      const g = (await c.ok('x-debug-query-block-graph')) as GraphInfo;
      const name = (id: number) => g.nodes.find((n) => n.id === id)!;
      const liveEdges = g.edges.filter((e) => name(e.parent).type === 'block-backend' && e.perm.includes('write'));
      expect(liveEdges.map((e) => name(e.child).name)).toEqual([expect.stringMatching(/^#block/)]);
      const jobs = (await c.ok('query-block-jobs')) as { device: string; status: string }[];
      expect(jobs).toMatchObject([{ device: 'fleecing', status: 'running' }]);

      const live = `nbd+unix:///live?socket=${nbd}`;
      const fleece = `nbd+unix:///fleece?socket=${nbd}`;
      expect(await qemuIo(fleece, [...reads(patterns), ...reads(zeroes)], true)).toEqual([]);
      expect(await qemuIo(live, writes(overwrite), false)).toEqual([]);
      expect(await qemuIo(fleece, [...reads(patterns), ...reads(zeroes)], true)).toEqual([]);
      expect(await qemuIo(live, reads(overwrite), true)).toEqual([]);

      await c.ok('block-export-del', { id: 'exp-fleece', mode: 'hard' });
      await c.ok('block-job-cancel', { device: 'fleecing' });
      const cancelled = await c.waitEvent('BLOCK_JOB_CANCELLED');
      // 1 (@0) + 2 (straddling 1M) + 2 (straddling 32M) + 1 (@64M-128k) clusters of 64 KiB (§5.2).
      expect(cancelled).toMatchObject({ device: 'fleecing', offset: 393216 });
      expect(await c.execute('block-job-cancel', { device: 'fleecing' })).toMatchObject({ error: { class: 'DeviceNotActive' } });
      await c.ok('blockdev-del', { 'node-name': 'temp' });
      await c.ok('quit');
      expect(await d.exited).toBe(0);
      c.close();
      expect(await qemuIo(src, [...reads(overwrite), ...reads(remainder)], true)).toEqual([]);
    } finally {
      await d.kill();
      t.cleanup();
    }
  });
});
