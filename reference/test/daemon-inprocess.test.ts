// The Daemon in-process: command-line actions applied in order, QMP commands through the
// dispatcher, dirty bitmaps exported as qemu:dirty-bitmap, and the extension hook.
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseArgs } from '../src/daemon/args.ts';
import { Daemon, registerDaemonExtension } from '../src/daemon/daemon.ts';
import { RawClient, openExport, run, runOk, tmpDir } from './nbd-helpers.ts';

describe('Daemon in-process', () => {
  it('block-dirty-bitmap-add, writes through the export mark it, nbdinfo maps it', async () => {
    const t = tmpDir('fleece-daemon-');
    const sock = path.join(t.dir, 'nbd.sock');
    const d = new Daemon();
    try {
      const cfg = parseArgs(['--blockdev', 'driver=memory,node-name=m,size=4M', '--nbd-server', `addr.type=unix,addr.path=${sock}`]);
      for (const a of cfg.actions) await d.apply(a);
      const s = { negotiated: true };
      expect(await d.dispatcher.dispatch({ execute: 'block-dirty-bitmap-add', arguments: { node: 'm', name: 'bm0', granularity: 1000 } }, s)).toMatchObject({
        error: { desc: 'Granularity must be power of 2 and at least 512' },
      });
      expect(await d.dispatcher.dispatch({ execute: 'block-dirty-bitmap-add', arguments: { node: 'm', name: 'bm0' } }, s)).toEqual({ return: {} });
      expect(
        await d.dispatcher.dispatch({ execute: 'block-export-add', arguments: { type: 'nbd', id: 'e', 'node-name': 'm', name: 'disk', writable: true, bitmaps: ['bm0'] } }, s),
      ).toEqual({ return: {} });
      const uri = `nbd+unix:///disk?socket=${sock}`;
      await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 1 70000 10', '-c', 'write -P 2 3M 64k', uri]);
      const map = JSON.parse(await runOk('nbdinfo', ['--map=qemu:dirty-bitmap:bm0', '--json', uri]));
      const dirty = map.filter((e: { type: number }) => e.type === 1).map((e: { offset: number; length: number }) => [e.offset, e.length]);
      expect(dirty).toEqual([[65536, 65536], [3 << 20, 65536]]);
      const nodes = (await d.dispatcher.dispatch({ execute: 'query-named-block-nodes' }, s)).return as { 'dirty-bitmaps': unknown[] }[];
      expect(nodes[0]!['dirty-bitmaps']).toEqual([{ name: 'bm0', recording: true, persistent: false, busy: true, granularity: 65536, count: 131072 }]);
    } finally {
      await d.close();
      t.cleanup();
    }
  });

  it('snapshot discard over NBD: the range then reads as NBD EINVAL (EACCES, B7), unaligned discard is harmless (B1)', async () => {
    const t = tmpDir('fleece-daemon-');
    const sock = path.join(t.dir, 'nbd.sock');
    const d = new Daemon();
    try {
      const cfg = parseArgs([
        '--blockdev', 'driver=memory,node-name=source,size=4M',
        '--blockdev', 'driver=memory,node-name=temp,size=4M',
        '--blockdev', 'driver=copy-before-write,node-name=fl-cbw,file=source,target=temp',
        '--blockdev', 'driver=snapshot-access,node-name=fl-access,file=fl-cbw,discard=unmap',
        '--nbd-server', `addr.type=unix,addr.path=${sock}`,
        '--export', 'type=nbd,id=exp-live,node-name=fl-cbw,name=live,writable=on',
        '--export', 'type=nbd,id=exp-fleece,node-name=fl-access,name=fleece,writable=on',
      ]);
      for (const a of cfg.actions) await d.apply(a);
      const fleece = `nbd+unix:///fleece?socket=${sock}`;
      await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 256k', `nbd+unix:///live?socket=${sock}`]);
      await runOk('qemu-io', ['-f', 'raw', '-c', 'discard 0 64k', '-c', 'discard 128k 32k', fleece]);
      const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 4k', '-c', 'read -P 0 64k 64k', '-c', 'read -P 0 128k 64k', fleece]);
      const out = r.stdout + r.stderr;
      expect(out).toMatch(/read failed: Invalid argument/);
      // The unaligned discard covered no whole cluster: that range still reads the snapshot.
      expect(out.match(/read 65536\/65536/g)?.length).toBe(2);
      expect(out).not.toMatch(/Pattern verification failed/);
    } finally {
      await d.close();
      t.cleanup();
    }
  });

  it('nbd-server-add / nbd-server-remove (the pre-5.2 commands image-fleecing still uses)', async () => {
    const t = tmpDir('fleece-daemon-');
    const sock = path.join(t.dir, 'nbd.sock');
    const d = new Daemon();
    const s = { negotiated: true };
    const q = (execute: string, args?: Record<string, unknown>) => d.dispatcher.dispatch(args ? { execute, arguments: args } : { execute }, s);
    try {
      for (const a of parseArgs(['--blockdev', 'driver=memory,node-name=fl,size=1M', '--nbd-server', `addr.type=unix,addr.path=${sock}`]).actions) await d.apply(a);
      expect(await q('nbd-server-add', { device: 'fl' })).toEqual({ return: {} });
      const j = JSON.parse(await runOk('nbdinfo', ['--json', `nbd+unix:///fl?socket=${sock}`]));
      expect(j.exports[0]).toMatchObject({ 'export-name': 'fl', is_read_only: true });
      expect(await q('query-block-exports')).toEqual({ return: [{ type: 'nbd', id: 'fl', 'node-name': 'fl', 'shutting-down': false }] });
      expect(await q('nbd-server-remove', { name: 'nope' })).toMatchObject({ error: { desc: "Export 'nope' is not found" } });
      // mode=safe (the default) refuses while a client is connected; hard drops it.
      const c = await RawClient.connect(sock);
      await openExport(c, 'fl');
      expect(await q('nbd-server-remove', { name: 'fl' })).toMatchObject({ error: { desc: "export 'fl' still in use" } });
      expect(await q('nbd-server-remove', { name: 'fl', mode: 'hard' })).toEqual({ return: {} });
      expect(await c.waitEof()).toBe(true);
      expect(await q('query-block-exports')).toEqual({ return: [] });
    } finally {
      await d.close();
      t.cleanup();
    }
  });

  it('--object and object-add/object-del: ids unique, QEMU\'s words for a duplicate and a missing id', async () => {
    const d = new Daemon();
    try {
      for (const a of parseArgs(['--object', 'iothread,id=io0', '--object', '{"qom-type":"iothread","id":"io1"}']).actions) await d.apply(a);
      expect(d.objects.list().map((o) => [o.qomType, o.id])).toEqual([['iothread', 'io0'], ['iothread', 'io1']]);
      await expect(d.apply(parseArgs(['--object', 'iothread,id=io0']).actions[0]!)).rejects.toThrow(/duplicate property 'io0'/);
      const s = { negotiated: true };
      const q = (execute: string, args: object) => d.dispatcher.dispatch({ execute, arguments: args }, s);
      expect(await q('object-add', { 'qom-type': 'iothread', id: 'io2' })).toEqual({ return: {} });
      expect(await q('object-add', { 'qom-type': 'iothread', id: 'io2' })).toMatchObject({ error: { class: 'GenericError', desc: expect.stringMatching(/duplicate property 'io2'/) } });
      expect(await q('object-add', { 'qom-type': 'nope', id: 'x' })).toMatchObject({ error: { desc: expect.stringMatching(/'qom-type' does not accept value 'nope'/) } });
      expect(await q('object-del', { id: 'missing' })).toMatchObject({ error: { desc: "object 'missing' not found" } });
      d.objects.use('io2', ['iothread'], "export 'e'", 'test');
      expect(await q('object-del', { id: 'io2' })).toMatchObject({ error: { desc: "object 'io2' is in use, can not be deleted" } });
      d.objects.release('io2', "export 'e'");
      expect(await q('object-del', { id: 'io2' })).toEqual({ return: {} });
      expect(() => d.objects.use('io0', ['tls-creds-x509'], 'NBD server', 'nbd-server-start')).toThrow(/object 'io0' is a 'iothread', expected 'tls-creds-x509'/);
    } finally {
      await d.close();
    }
  });

  it('extensions registered before construction add QMP commands (the breakpoint commands plug in here)', async () => {
    registerDaemonExtension((d) => d.dispatcher.register('x-test-hello', () => ({ hello: d.graph.allNodes().length })));
    const d = new Daemon();
    expect(await d.dispatcher.dispatch({ execute: 'x-test-hello' }, { negotiated: true })).toEqual({ return: { hello: 0 } });
    await d.close();
  });
});
