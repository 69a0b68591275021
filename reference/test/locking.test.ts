// Image locking (reference/src/block/locks.ts) against QEMU 7.2's tools: the lock bytes the
// reference takes on a fleecing graph are the ones qemu-storage-daemon takes on the same graph
// (read from /proc/locks), QEMU's tools are refused on an image the reference holds with QEMU's
// own wording and let in where the holder shares, the reference is refused on an image
// qemu-storage-daemon holds, and locking=off (the known-bad setting) lets both in.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockGraph } from '../src/block/graph.ts';
import { ImageLock, LOCK_PERM_BASE, LOCK_SHARED_BASE, imageLocking, lockedBytes, lockingEnabled, type LockOps } from '../src/block/locks.ts';
import { PERM, PERM_ALL } from '../src/block/perm.ts';
import { native } from '../src/native.ts';
import { QmpClient, runServe, startDaemon, type Daemon } from './daemon-helpers.ts';
import { requirePeer, run, tmpDir } from './nbd-helpers.ts';

const { CONSISTENT_READ: R, WRITE: W, WRITE_UNCHANGED: U, RESIZE: Z } = PERM;

/** The OFD lock bytes /proc/locks lists on a file (any process: OFD locks show pid -1). */
function lockBytesOn(file: string): number[] {
  const ino = fs.statSync(file).ino;
  const bytes = new Set<number>();
  for (const line of fs.readFileSync('/proc/locks', 'utf8').split('\n')) {
    const m = /OFDLCK\s+ADVISORY\s+\w+\s+-?\d+\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s+(\d+)\s+(\d+|EOF)/.exec(line);
    if (!m || Number(m[1]) !== ino) continue;
    for (let b = Number(m[2]); b <= Number(m[3]); b++) bytes.add(b);
  }
  return [...bytes].sort((a, b) => a - b);
}

describe('lock byte mapping (raw_apply_lock_bytes, raw_check_lock_bytes)', () => {
  it.each([
    // [perm, shared, bytes]: one byte per perm taken at 100+bit, one per perm not shared at 200+bit.
    [0, PERM_ALL, []],
    [R, PERM_ALL, [100]],
    [R | W, PERM_ALL & ~Z, [100, 101, 203]],
    [R | W, R | U, [100, 101, 201, 203]],
    [W, PERM_ALL & ~Z, [101, 203]],
    [0, 0, [200, 201, 202, 203]],
    [PERM_ALL, PERM_ALL, [100, 101, 102, 103]],
  ] as const)('perm %i shared %i locks %j', (perm, shared, bytes) => {
    expect(lockedBytes(perm, shared)).toEqual(bytes);
    expect(LOCK_PERM_BASE).toBe(100);
    expect(LOCK_SHARED_BASE).toBe(200);
  });
});

/** A fake kernel: holders' bytes per description, for the transaction rules without a file. */
function fakeOps(other: Set<number>, fail: { lock?: number; unlock?: number } = {}): LockOps & { mine: Set<number> } {
  const mine = new Set<number>();
  return {
    mine,
    available: () => true,
    lock: (_fd, s) => (fail.lock === s ? -5 : (mine.add(s), 0)),
    unlock: (_fd, s) => (fail.unlock === s ? -5 : (mine.delete(s), 0)),
    test: (_fd, s) => (other.has(s) ? -11 : 0),
    errnoText: (e) => (e === -5 ? 'Input/output error' : `errno ${e}`),
  };
}

describe('ImageLock transactions (raw_handle_perm_lock)', () => {
  it('prepare takes the union, commit drops what the new permissions do not need, abort goes back', () => {
    const ops = fakeOps(new Set());
    const l = new ImageLock(3, 'img', 'n', ops);
    l.prepare(R | W, R | U);
    expect([...ops.mine].sort()).toEqual([100, 101, 201, 203]);
    l.commit(R | W, R | U);
    l.prepare(R, PERM_ALL & ~Z);
    // Only dropping: nothing taken, nothing dropped before commit.
    expect([...ops.mine].sort()).toEqual([100, 101, 201, 203]);
    l.commit(R, PERM_ALL & ~Z);
    expect(l.held()).toEqual([100, 203]);
    l.prepare(R | Z, PERM_ALL);
    expect(l.held()).toEqual([100, 103, 203]);
    l.abort();
    expect(l.held()).toEqual([100, 203]);
    l.release();
    expect(ops.mine.size).toBe(0);
  });

  it.each([
    // [other holder's bytes, new perm, new shared, QEMU's message]
    [[201], R | W, PERM_ALL, 'Failed to get "write" lock'],
    [[203], Z, PERM_ALL, 'Failed to get "resize" lock'],
    [[101], R, R | U, 'Failed to get shared "write" lock'],
    [[100], 0, 0, 'Failed to get shared "consistent read" lock'],
  ] as const)('another holder of %j refuses perm %i shared %i: %s, with the hint naming the image', (held, perm, shared, msg) => {
    const ops = fakeOps(new Set(held));
    const l = new ImageLock(3, '/images/a.img', 'disk', ops);
    let err: unknown;
    try {
      l.prepare(perm, shared);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ errno: 'EBUSY', context: { node: 'disk', op: 'lock' } });
    expect((err as Error).message).toBe(`${msg}\nIs another process using the image [/images/a.img]?`);
    // Refused: back to what was committed (nothing).
    expect(ops.mine.size).toBe(0);
  });

  it('a lock call failing for another reason carries its errno text and no hint; a failed unlock warns and keeps the byte', async () => {
    const ops = fakeOps(new Set(), { lock: 101, unlock: 100 });
    const l = new ImageLock(3, 'img', 'n', ops);
    let err: unknown;
    try {
      l.prepare(R | W, PERM_ALL);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ errno: 'EIO', message: 'Failed to lock byte 101: Input/output error' });
    const warnings: string[] = [];
    const onWarn = (w: Error): void => void warnings.push(w.message);
    process.on('warning', onWarn);
    try {
      l.prepare(R, PERM_ALL);
      l.commit(R, PERM_ALL);
      l.release();
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off('warning', onWarn);
    }
    // Once when the refused prepare goes back, once on release: the byte stays held both times.
    expect(warnings).toEqual(['Failed to unlock byte 100: Input/output error', 'Failed to unlock byte 100: Input/output error']);
    expect(l.held()).toEqual([100]);
  });

  it('x-lock-bytes-swapped (UNSAFE, known bad) publishes perms at 200+bit and what it forbids at 100+bit', () => {
    const ops = fakeOps(new Set());
    const l = new ImageLock(3, 'img', 'n', ops, true);
    l.prepare(R | W, R | U);
    l.commit(R | W, R | U);
    expect(l.held()).toEqual([101, 103, 200, 201]);
    expect([...ops.mine].sort()).toEqual([101, 103, 200, 201]);
  });

  it('locking=on without lock calls is refused, naming the node and why; auto then does not lock; off never does', () => {
    const none = { available: false, reason: 'the module did not load (test)' };
    expect(() => lockingEnabled('on', 'disk', none)).toThrow("node 'disk' (driver file): locking=on, but the reference cannot lock images here: the module did not load (test)");
    expect(lockingEnabled('auto', 'disk', none)).toBe(false);
    expect(lockingEnabled('off', 'disk', { available: true })).toBe(false);
    expect(lockingEnabled('auto', 'disk', { available: true })).toBe(true);
  });
});

describe('OFD locks through the native module, in one process', () => {
  it('the module loaded and the kernel has OFD locks (the daemon would say otherwise)', () => {
    expect(native, imageLocking.reason).toBeDefined();
    expect(imageLocking.available, imageLocking.reason).toBe(true);
  });

  it('a second description of the file sees the first one\'s bytes; its own never conflict', () => {
    const t = tmpDir('locking-ofd-');
    const f = path.join(t.dir, 'img');
    fs.writeFileSync(f, Buffer.alloc(4096));
    const a = fs.openSync(f, 'r+');
    const b = fs.openSync(f, 'r');
    try {
      const m = native!;
      expect(m.ofdLock(a, 201, 1)).toBe(0);
      expect(m.ofdTest(a, 201, 1, 1)).toBe(0);
      expect(m.ofdTest(b, 201, 1, 1)).toBe(-11);
      expect(m.ofdTest(b, 201, 1, 0)).toBe(0); // shared locks do not conflict with each other
      expect(m.ofdTest(b, 202, 1, 1)).toBe(0);
      expect(lockBytesOn(f)).toEqual([201]);
      expect(m.ofdUnlock(a, 201, 1)).toBe(0);
      expect(m.ofdTest(b, 201, 1, 1)).toBe(0);
      expect(m.ofdLock(-1, 100, 1)).toBe(-9);
      expect(m.errnoText(-9)).toBe('Bad file descriptor');
      expect(() => (m.ofdLock as unknown as (fd: number) => number)(a)).toThrow(/^ofdlock: missing argument$/);
    } finally {
      fs.closeSync(a);
      fs.closeSync(b);
      t.cleanup();
    }
  });

  it('two file nodes over one image in one graph see each other\'s locks, as two QEMU nodes do', async () => {
    const t = tmpDir('locking-graph-');
    const f = path.join(t.dir, 'img');
    fs.writeFileSync(f, Buffer.alloc(1 << 20));
    const g = new BlockGraph();
    try {
      // Without the in-process storage check (storage.ts, which would refuse first, naming both
      // nodes), the OFD locks alone refuse, as they do between two QEMU nodes.
      g.addNode({ driver: 'file', 'node-name': 'a', filename: f, 'x-no-storage-identity': true, locking: 'on' });
      g.addNode({ driver: 'file', 'node-name': 'b', filename: f, 'x-no-storage-identity': true, locking: 'on' });
      g.attachBackend('reader', 'a', R, R | U);
      expect(lockBytesOn(f)).toEqual([100, 201, 203]);
      expect(() => g.attachBackend('writer', 'b', R | W, PERM_ALL)).toThrow(`Failed to get "write" lock\nIs another process using the image [${f}]?`);
      // The refused change left b unlocked and a as it was.
      expect(lockBytesOn(f)).toEqual([100, 201, 203]);
      g.attachBackend('second reader', 'b', R, PERM_ALL);
      await g.close();
      expect(lockBytesOn(f)).toEqual([]);
    } finally {
      t.cleanup();
    }
  });
});

// ---- against QEMU's tools -----------------------------------------------------------------------

interface Holding {
  daemon: Daemon;
  dir: string;
  src: string;
  tmp: string;
}

/** The modern fleecing graph (docs/requirements/qemu-fleecing.md §5.1) held by one daemon, on the
 * command line: the same arguments for both. */
async function hold(kind: 'fleece' | 'qsd', locking: 'on' | 'off' | 'auto' = 'auto'): Promise<Holding> {
  requirePeer('qemu-img');
  const t = tmpDir(`locking-${kind}-`);
  const src = path.join(t.dir, 'src.img');
  const tmp = path.join(t.dir, 'tmp.img');
  await run('qemu-img', ['create', '-q', '-f', 'raw', src, '1M']);
  await run('qemu-img', ['create', '-q', '-f', 'raw', tmp, '1M']);
  const qmp = path.join(t.dir, 'qmp.sock');
  // Both write the pid file once every option is processed (the QMP socket comes first).
  const pidfile = path.join(t.dir, 'daemon.pid');
  const daemon = await startDaemon(kind, [
    '--pidfile', pidfile,
    '--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m',
    '--nbd-server', `addr.type=unix,addr.path=${t.dir}/nbd.sock`,
    '--blockdev', `driver=file,node-name=source,filename=${src},locking=${locking}`,
    '--blockdev', `driver=file,node-name=temp,filename=${tmp},locking=${locking}`,
    '--blockdev', 'driver=copy-before-write,node-name=cbw,file=source,target=temp',
    '--blockdev', 'driver=snapshot-access,node-name=acc,file=cbw',
    '--export', 'type=nbd,id=live,node-name=cbw,name=live,writable=on',
    '--export', 'type=nbd,id=fleece,node-name=acc,name=fleece',
  ], pidfile);
  return { daemon, dir: t.dir, src, tmp };
}

/** QEMU's tools opening the held images: [name, command, args (SRC/TMP/OUT placeholders), refused
 * with (QEMU's first line) or undefined when let in]. The second line is always the hint. */
const OPENERS: ReadonlyArray<readonly [string, string, readonly string[], string | undefined]> = [
  ['qemu-io writing the source (cbw unshares write on it)', 'qemu-io', ['-f', 'raw', '-c', 'write 0 512', 'SRC'], 'qemu-io: can\'t open device SRC: Failed to get "write" lock'],
  ['qemu-io reading the source read-only (shares all)', 'qemu-io', ['-f', 'raw', '-r', '-c', 'read 0 512', 'SRC'], undefined],
  ['qemu-img convert reading the source (does not share write, which the export takes)', 'qemu-img', ['convert', '-f', 'raw', '-O', 'raw', 'SRC', 'OUT'], 'qemu-img: Could not open \'SRC\': Failed to get shared "write" lock'],
  ['qemu-img convert -U (force-share)', 'qemu-img', ['convert', '-U', '-f', 'raw', '-O', 'raw', 'SRC', 'OUT'], undefined],
  ['qemu-img resize on the temp image (the NBD export and cbw unshare resize)', 'qemu-img', ['resize', '-f', 'raw', 'TMP', '2M'], 'qemu-img: Could not open \'TMP\': Failed to get "resize" lock'],
  ['qemu-io writing the temp image (cbw shares write on its target)', 'qemu-io', ['-f', 'raw', '-c', 'write 0 512', 'TMP'], undefined],
  ['qemu-img info (opens with no I/O, shares all)', 'qemu-img', ['info', '-f', 'raw', 'SRC'], undefined],
];

async function openWith(h: Holding, cmd: string, args: readonly string[]): Promise<{ code: number; stderr: string }> {
  const sub = (s: string): string => s.replace('SRC', h.src).replace('TMP', h.tmp).replace('OUT', path.join(h.dir, 'out.img'));
  const r = await run(cmd, args.map(sub));
  return { code: r.code, stderr: r.stderr.replaceAll(h.src, 'SRC').replaceAll(h.tmp, 'TMP').trim() };
}

describe('the reference and qemu-storage-daemon 7.2 holding one fleecing graph', { timeout: 60_000 }, () => {
  const holders: Partial<Record<'fleece' | 'qsd', Holding>> = {};
  beforeAll(async () => {
    holders.fleece = await hold('fleece');
    holders.qsd = await hold('qsd');
  }, 60_000);
  afterAll(async () => {
    for (const h of Object.values(holders)) {
      await h?.daemon.kill();
      if (h) fs.rmSync(h.dir, { recursive: true, force: true });
    }
  });

  it('take the same lock bytes on the source and the temp image', () => {
    const seen = (h: Holding): { src: number[]; tmp: number[] } => ({ src: lockBytesOn(h.src), tmp: lockBytesOn(h.tmp) });
    // source: consistent-read+write taken, write+resize unshared (cbw_child_perm); temp: write
    // taken (the cbw target), resize unshared.
    expect(seen(holders.qsd!)).toEqual({ src: [100, 101, 201, 203], tmp: [101, 203] });
    expect(seen(holders.fleece!)).toEqual(seen(holders.qsd!));
  });

  it.each(OPENERS)('%s: the same verdict and words against both', async (_name, cmd, args, refusal) => {
    for (const kind of ['qsd', 'fleece'] as const) {
      const r = await openWith(holders[kind]!, cmd, args);
      if (refusal === undefined) {
        expect({ kind, code: r.code, stderr: r.stderr }).toMatchObject({ kind, code: 0 });
      } else {
        const image = args.includes('TMP') ? 'TMP' : 'SRC';
        expect({ kind, code: r.code, stderr: r.stderr }).toEqual({ kind, code: 1, stderr: `${refusal}\nIs another process using the image [${image}]?` });
      }
    }
  });

  it('the reference is refused on the images qemu-storage-daemon holds, with QEMU\'s wording, on its command line and over QMP', async () => {
    const h = holders.qsd!;
    const r = await runServe(['--blockdev', `driver=file,node-name=s,filename=${h.src}`, '--nbd-server', `addr.type=unix,addr.path=${h.dir}/ref.sock`, '--export', 'type=nbd,id=e,node-name=s,writable=on']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`--export type=nbd,id=e,node-name=s,writable=on: Failed to get "write" lock\nIs another process using the image [${h.src}]?\n`);
    // Over QMP, on a running reference: the add of an unlocked node is fine, the export that
    // takes write is refused, the node stays usable read-only.
    const qmp = path.join(h.dir, 'ref-qmp.sock');
    const ref = await startDaemon('fleece', ['--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m', '--nbd-server', `addr.type=unix,addr.path=${h.dir}/ref2.sock`], qmp);
    try {
      const c = await QmpClient.connect(qmp);
      await c.ok('blockdev-add', { driver: 'file', 'node-name': 's', filename: h.src });
      const refused = await c.execute('block-export-add', { type: 'nbd', id: 'e', 'node-name': 's', writable: true });
      expect(refused.error).toEqual({ class: 'GenericError', desc: `Failed to get "write" lock\nIs another process using the image [${h.src}]?` });
      await c.ok('block-export-add', { type: 'nbd', id: 'ro', 'node-name': 's' });
      // Its read-only export takes consistent-read (100) and unshares resize (203): now two holders.
      expect(lockBytesOn(h.src)).toEqual([100, 101, 201, 203]);
      // qemu-storage-daemon can no longer resize its own source... (it could not before either:
      // cbw unshares resize); its temp image is untouched by the reference.
      c.close();
    } finally {
      await ref.kill();
    }
  });
});

describe('permission changes move the reference\'s lock bytes (bdrv_set_perm path)', { timeout: 60_000 }, () => {
  it('an export adds bytes, its removal drops them, blockdev-del releases the image', async () => {
    requirePeer('qemu-io');
    const t = tmpDir('locking-perm-');
    const img = path.join(t.dir, 'a.img');
    fs.writeFileSync(img, Buffer.alloc(1 << 20));
    const qmp = path.join(t.dir, 'qmp.sock');
    const d = await startDaemon('fleece', ['--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m', '--nbd-server', `addr.type=unix,addr.path=${t.dir}/nbd.sock`], qmp);
    try {
      const c = await QmpClient.connect(qmp);
      await c.ok('blockdev-add', { driver: 'file', 'node-name': 'a', filename: img });
      expect(lockBytesOn(img)).toEqual([]); // no parents: no permissions, as in QEMU
      await c.ok('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'a', writable: true });
      expect(lockBytesOn(img)).toEqual([100, 101, 203]);
      expect((await run('qemu-img', ['resize', '-f', 'raw', img, '2M'])).stderr).toContain('Failed to get "resize" lock');
      await c.ok('block-export-del', { id: 'e' });
      await c.waitEvent('BLOCK_EXPORT_DELETED');
      expect(lockBytesOn(img)).toEqual([]);
      await c.ok('block-export-add', { type: 'nbd', id: 'e2', 'node-name': 'a' });
      expect(lockBytesOn(img)).toEqual([100, 203]);
      await c.ok('block-export-del', { id: 'e2' });
      await c.waitEvent('BLOCK_EXPORT_DELETED');
      await c.ok('blockdev-del', { 'node-name': 'a' });
      expect(lockBytesOn(img)).toEqual([]);
      c.close();
    } finally {
      await d.kill();
      t.cleanup();
    }
  });
});

describe('locking=off, the known-bad setting: nothing is locked, both sides get in', { timeout: 60_000 }, () => {
  it('qemu-io writes the source under the reference\'s cbw, and the lock-byte check sees no bytes', async () => {
    const h = await hold('fleece', 'off');
    try {
      expect(lockBytesOn(h.src)).toEqual([]);
      const r = await openWith(h, 'qemu-io', ['-f', 'raw', '-c', 'write 0 512', 'SRC']);
      expect(r).toMatchObject({ code: 0 });
    } finally {
      await h.daemon.kill();
      fs.rmSync(h.dir, { recursive: true, force: true });
    }
  });

  it('the reference with locking=off opens writable what qemu-storage-daemon holds', async () => {
    const h = await hold('qsd');
    try {
      const qmp = path.join(h.dir, 'ref-qmp.sock');
      const ref = await startDaemon('fleece', ['--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m', '--nbd-server', `addr.type=unix,addr.path=${h.dir}/ref.sock`], qmp);
      try {
        const c = await QmpClient.connect(qmp);
        await c.ok('blockdev-add', { driver: 'file', 'node-name': 's', filename: h.src, locking: 'off' });
        await c.ok('block-export-add', { type: 'nbd', id: 'e', 'node-name': 's', writable: true });
        const bad = await c.execute('blockdev-add', { driver: 'file', 'node-name': 't', filename: h.src, locking: 'maybe' });
        expect(bad.error?.desc).toMatch(/locking/);
        c.close();
      } finally {
        await ref.kill();
      }
    } finally {
      await h.daemon.kill();
      fs.rmSync(h.dir, { recursive: true, force: true });
    }
  });
});

describe('without the native module (FLEECE_NO_NATIVE=1): the daemon runs, says so, and does not pretend to lock', { timeout: 60_000 }, () => {
  it('warns at start; locking=auto opens unlocked; locking=on is refused naming the node and why', async () => {
    const t = tmpDir('locking-nonative-');
    const img = path.join(t.dir, 'a.img');
    fs.writeFileSync(img, Buffer.alloc(1 << 20));
    const qmp = path.join(t.dir, 'qmp.sock');
    process.env.FLEECE_NO_NATIVE = '1';
    let d: Daemon | undefined;
    try {
      d = await startDaemon('fleece', ['--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m', '--nbd-server', `addr.type=unix,addr.path=${t.dir}/nbd.sock`], qmp);
    } finally {
      delete process.env.FLEECE_NO_NATIVE;
    }
    try {
      const c = await QmpClient.connect(qmp);
      expect(d.stderr()).toContain('fleece serve: warning: image locking is off (file nodes with locking=auto do not lock, locking=on is refused): reference/native/build/fleece.node not loaded (FLEECE_NO_NATIVE=1)\n');
      expect(d.stderr()).toContain("fleece serve: warning: unix connections keep the kernel's send buffer: reference/native/build/fleece.node not loaded (FLEECE_NO_NATIVE=1)\n");
      await c.ok('blockdev-add', { driver: 'file', 'node-name': 'a', filename: img });
      await c.ok('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'a', writable: true });
      expect(lockBytesOn(img)).toEqual([]);
      const on = await c.execute('blockdev-add', { driver: 'file', 'node-name': 'b', filename: img, locking: 'on' });
      expect(on.error).toEqual({ class: 'GenericError', desc: "node 'b' (driver file): locking=on, but the reference cannot lock images here: reference/native/build/fleece.node not loaded (FLEECE_NO_NATIVE=1)" });
      await c.ok('query-block-exports'); // still serving
      c.close();
    } finally {
      await d.kill();
      t.cleanup();
    }
  });
});
