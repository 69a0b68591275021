// The Daemon in-process: command-line actions applied in order, QMP commands through the
// dispatcher, dirty bitmaps exported as qemu:dirty-bitmap, and the extension hook.
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseArgs } from '../src/daemon/args.ts';
import { Daemon, registerDaemonExtension } from '../src/daemon/daemon.ts';
import { runOk, tmpDir } from './nbd-helpers.ts';

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
        error: { desc: 'Granularity must be power of 2, and at least 512' },
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
      expect(nodes[0]!['dirty-bitmaps']).toEqual([{ name: 'bm0', granularity: 65536, count: 131072 }]);
    } finally {
      await d.close();
      t.cleanup();
    }
  });

  it('extensions registered before construction add QMP commands (issue 7 breakpoints plug in here)', async () => {
    registerDaemonExtension((d) => d.dispatcher.register('x-test-hello', () => ({ hello: d.graph.allNodes().length })));
    const d = new Daemon();
    expect(await d.dispatcher.dispatch({ execute: 'x-test-hello' }, { negotiated: true })).toEqual({ return: { hello: 0 } });
    await d.close();
  });
});
