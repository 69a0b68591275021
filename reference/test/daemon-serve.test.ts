// `fleece serve` as a process: socket activation under nbdinfo, clear failures for bad
// configurations, QMP export management.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { serve } from '../src/daemon/cli.ts';
import { FLEECE, QmpClient, runServe, startDaemon } from './daemon-helpers.ts';
import { run, runOk, tmpDir } from './nbd-helpers.ts';

describe('fleece serve', () => {
  it('systemd socket activation: nbdinfo -- [ fleece serve ... ] and nbdcopy from it', async () => {
    const t = tmpDir('fleece-sa-');
    try {
      const img = path.join(t.dir, 'a.raw');
      const content = Buffer.alloc(4 << 20);
      content.fill(0x42, 1 << 20, 2 << 20);
      fs.writeFileSync(img, content);
      const serve = [process.execPath, FLEECE, 'serve', '--blockdev', `driver=file,node-name=f,filename=${img}`, '--export', 'type=nbd,id=e,node-name=f,name=disk'];
      const j = JSON.parse(await runOk('nbdinfo', ['--json', '--', '[', ...serve, ']']));
      expect(j.exports[0]).toMatchObject({ 'export-name': 'disk', 'export-size': 4 << 20, is_read_only: true });
      const out = path.join(t.dir, 'out.raw');
      await runOk('nbdcopy', ['--', '[', ...serve, ']', out]);
      expect(fs.readFileSync(out).equals(content)).toBe(true);
    } finally {
      t.cleanup();
    }
  });

  it('--help, --version, and an inet port 0 announced on stderr (in-process)', async () => {
    const io = () => {
      const o = { out: '', err: '' };
      return { o, io: { stdout: { write: (x: string) => (o.out += x) }, stderr: { write: (x: string) => (o.err += x) }, env: {}, pid: 1 } };
    };
    const h = io();
    expect(await serve(['--help'], h.io)).toBe(0);
    expect(h.o.out).toMatch(/--blockdev \[driver=\]<driver>/);
    const v = io();
    expect(await serve(['-V'], v.io)).toBe(0);
    expect(v.o.out).toMatch(/qemu-storage-daemon 7\.2/);
  });

  it('a bad configuration exits non-zero as a process', async () => {
    const r = await runServe(['--blockdev', 'driver=vmdk,node-name=x,file=y']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^fleece serve: --blockdev driver=vmdk,node-name=x,file=y: Parameter 'driver' does not accept value 'vmdk'/);
  });

  it.each([
    [['--blockdev', 'driver=null-co,node-name=x'], 1, /does not accept value 'null-co'.*use 'memory'/],
    [['--blockdev', 'driver=qcow2,node-name=x,file=y'], 1, /^fleece serve: --blockdev driver=qcow2,node-name=x,file=y: Cannot find device='y' nor node-name='y'\n$/],
    [['--blockdev', 'driver=memory,node-name=m,size=1M,colour=red'], 1, /^fleece serve: --blockdev driver=memory,node-name=m,size=1M,colour=red: Parameter 'colour' is unexpected\n$/],
    [['--blockdev', 'driver=memory,node-name=m,size=1M', '--export', 'type=nbd,id=e,node-name=m'], 1, /NBD server not running/],
    [['--export', 'type=nbd,id=e,node-name=m,frob=1'], 1, /^fleece serve: --export type=nbd,id=e,node-name=m,frob=1: Parameter 'frob' is unexpected\n$/],
    [['--bogus'], 1, /unrecognized option '--bogus'/],
    [['--monitor', 'chardev=nope'], 1, /^fleece serve: --monitor chardev=nope: chardev "nope" not found\n$/],
    [['--blockdev', 'driver=memory,node-name=m,size=1M', '--blockdev', 'driver=memory,node-name=m,size=1M'], 1, /Duplicate nodes with node-name='m'/],
    // The option first, then the cause in qemu-storage-daemon's words (libuv says EACCES here).
    [['--nbd-server', 'addr.type=unix,addr.path=/nonexistent-dir/n.sock'], 1, /^fleece serve: --nbd-server addr\.type=unix,addr\.path=\/nonexistent-dir\/n\.sock: Failed to bind socket to \/nonexistent-dir\/n\.sock: No such file or directory\n$/],
    [['--chardev', 'socket,id=m,path=/nonexistent-dir/q.sock,server=on,wait=off', '--monitor', 'chardev=m'], 1, /^fleece serve: --monitor chardev=m: Failed to bind socket to \/nonexistent-dir\/q\.sock: No such file or directory\n$/],
    [['--pidfile', '/nonexistent-dir/p.pid'], 1, /^fleece serve: cannot create PID file: Could not create '\/nonexistent-dir\/p\.pid': No such file or directory\n$/],
  ])('%j exits %i with a clear error (in-process)', async (args, code, re) => {
    let err = '';
    const rc = await serve(args, { stdout: { write: () => true }, stderr: { write: (s: string) => (err += s) }, env: {}, pid: 1 });
    expect(rc).toBe(code);
    expect(err).toMatch(re);
  });

  it('with nothing to serve it keeps running, as qemu-storage-daemon does, until SIGTERM; its pid file is removed at exit', async () => {
    const t = tmpDir('fleece-idle-');
    try {
      const pid = path.join(t.dir, 'd.pid');
      // startDaemon waits for the pid file, written once the (empty) configuration is applied.
      const d = await startDaemon('fleece', ['--pidfile', pid], pid);
      await new Promise((r) => setTimeout(r, 300));
      expect(d.proc.exitCode).toBeNull();
      expect(fs.readFileSync(pid, 'utf8').trim()).toBe(String(d.proc.pid));
      await d.kill();
      expect(await d.exited).toBe(0);
      expect(fs.existsSync(pid)).toBe(false);
    } finally {
      t.cleanup();
    }
  });

  it('quit with an NBD client still connected: the daemon exits at once, closing the client', async () => {
    const t = tmpDir('fleece-quit-');
    try {
      const img = path.join(t.dir, 'a.raw');
      fs.writeFileSync(img, Buffer.alloc(1 << 20));
      const qmp = path.join(t.dir, 'qmp.sock');
      const nbd = path.join(t.dir, 'nbd.sock');
      const d = await startDaemon('fleece', [
        '--blockdev', `driver=file,node-name=f,filename=${img}`,
        '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
        '--export', 'type=nbd,id=e,node-name=f,name=disk',
        '--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m',
      ], qmp);
      const client = net.connect(nbd);
      client.on('error', () => undefined);
      client.resume(); // flowing, so its EOF is seen
      const clientClosed = new Promise((r) => client.once('close', r));
      await new Promise((r) => client.once('connect', r));
      const q = await QmpClient.connect(qmp);
      void q.execute('quit');
      // Before, nbd-server close waited for every client to leave: a client that stayed kept the
      // daemon alive. Exiting is bounded by the test's own timeout, not asserted in time.
      expect(await d.exited).toBe(0);
      await clientClosed;
      q.close();
    } finally {
      t.cleanup();
    }
  });

  it('QMP: exports over TCP and unix, errors for duplicates, read-only nodes and unknown bitmaps', async () => {
    const t = tmpDir('fleece-qmp-exp-');
    const qmp = path.join(t.dir, 'qmp.sock');
    const d = await startDaemon('fleece', ['--blockdev', 'driver=memory,node-name=m,size=4M', '--chardev', `socket,id=q,path=${qmp},server=on,wait=off`, '--monitor', 'q'], qmp);
    try {
      const c = await QmpClient.connect(qmp);
      expect(c.greeting).toMatchObject({ QMP: { version: { qemu: { major: 7 } } } });
      expect(await c.execute('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'm' })).toMatchObject({ error: { class: 'GenericError', desc: 'NBD server not running' } });
      await c.ok('nbd-server-start', { addr: { type: 'unix', data: { path: path.join(t.dir, 'nbd.sock') } } });
      expect(await c.execute('nbd-server-start', { addr: { type: 'unix', data: { path: path.join(t.dir, 'x.sock') } } })).toMatchObject({ error: { desc: 'NBD server already running' } });
      await c.ok('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'm', writable: true });
      expect(await c.execute('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'm' })).toMatchObject({ error: { desc: "Block export id 'e' is already in use" } });
      expect(await c.execute('block-export-add', { type: 'nbd', id: 'e2', 'node-name': 'm' })).toMatchObject({ error: { desc: "NBD server already has export named 'm'" } });
      expect(await c.execute('block-export-add', { type: 'nbd', id: 'e3', 'node-name': 'nope' })).toMatchObject({ error: { class: 'GenericError' } });
      expect(await c.execute('block-export-add', { type: 'nbd', id: 'e4', 'node-name': 'm', name: 'b', bitmaps: ['bm0'] })).toMatchObject({ error: { desc: "Bitmap 'bm0' is not found" } });
      await c.ok('blockdev-add', { driver: 'memory', 'node-name': 'r', size: 1048576, 'read-only': true });
      expect(await c.execute('block-export-add', { type: 'nbd', id: 'e5', 'node-name': 'r', writable: true })).toMatchObject({ error: { class: 'GenericError' } });
      const uri = `nbd+unix:///m?socket=${path.join(t.dir, 'nbd.sock')}`;
      await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 64k', uri]);
      expect(await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x33 0 64k', uri])).not.toMatch(/fail/i);
      expect(await c.ok('query-block-exports')).toEqual([{ type: 'nbd', id: 'e', 'node-name': 'm', 'shutting-down': false }]);
      // hard: qemu-io has exited, but its connection may not be reaped yet (safe mode would race).
      await c.ok('block-export-del', { id: 'e', mode: 'hard' });
      expect(await c.execute('block-export-del', { id: 'e' })).toMatchObject({ error: { desc: "Export 'e' is not found" } });
      expect((await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 4k', uri])).code).not.toBe(0);
      await c.ok('nbd-server-stop');
      // TCP, on a port the kernel picks via a first bind (QEMU needs an explicit port).
      const port = await new Promise<number>((resolve) => {
        const s = net.createServer().listen(0, '127.0.0.1', () => {
          const p = (s.address() as { port: number }).port;
          s.close(() => resolve(p));
        });
      });
      await c.ok('nbd-server-start', { addr: { type: 'inet', data: { host: '127.0.0.1', port: String(port) } } });
      await c.ok('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'm', name: 'disk' });
      expect(await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x33 0 64k', `nbd://127.0.0.1:${port}/disk`])).not.toMatch(/fail/i);
      expect(c.events.map((e) => e.event)).toContain('BLOCK_EXPORT_DELETED');
      await c.ok('quit');
      expect(await d.exited).toBe(0);
      c.close();
    } finally {
      await d.kill();
      t.cleanup();
    }
  });
});

