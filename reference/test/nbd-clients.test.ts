// The reference NBD server driven by the real clients a user would point at it (docs/requirements/nbd.md
// §4): nbdinfo, nbdcopy, qemu-img and qemu-io, over a unix socket and over TCP.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdServer } from '../src/nbd/server.ts';
import { MemoryBackend, run, runOk, tmpDir } from './nbd-helpers.ts';

const MiB = 1024 * 1024;

describe.each(['unix', 'tcp'] as const)('NBD server with real clients over %s', (transport) => {
  const t = tmpDir();
  const server = new NbdServer();
  let disk: MemoryBackend;
  let ro: MemoryBackend;
  let uri: (name: string) => string;
  let imageOpts: (name: string) => string;

  beforeAll(async () => {
    disk = new MemoryBackend(16 * MiB, 'disk0');
    ro = new MemoryBackend(4 * MiB, 'ro0');
    ro.data.fill(0x5a, 0, 64 * 1024);
    ro.allocated.fill(1, 0, 16);
    server.addExport({ name: 'disk', description: 'a writable memory disk', backend: disk, writable: true });
    server.addExport({ name: 'ro', backend: ro, writable: false });
    if (transport === 'unix') {
      const sock = path.join(t.dir, 'nbd.sock');
      await server.listen({ type: 'unix', path: sock });
      uri = (n) => `nbd+unix:///${n}?socket=${sock}`;
      imageOpts = (n) => `driver=nbd,server.type=unix,server.path=${sock},export=${n}`;
    } else {
      const a = await server.listen({ type: 'inet', host: '127.0.0.1', port: 0 });
      uri = (n) => `nbd://127.0.0.1:${a.port}/${n}`;
      imageOpts = (n) => `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${a.port},export=${n}`;
    }
  });
  afterAll(async () => {
    await server.close();
    t.cleanup();
  });

  it('nbdinfo --list --json shows both exports with sizes, flags, block sizes and contexts', async () => {
    const j = JSON.parse(await runOk('nbdinfo', ['--list', '--json', uri('disk')]));
    expect(j.protocol).toBe('newstyle-fixed');
    const byName = Object.fromEntries(j.exports.map((e: { 'export-name': string }) => [e['export-name'], e]));
    const d = byName.disk;
    expect(d['export-size']).toBe(16 * MiB);
    expect(d.description).toBe('a writable memory disk');
    expect(d['is_read_only']).toBe(false);
    expect(d['can_multi_conn']).toBe(true);
    expect(d['can_zero']).toBe(true);
    expect(d['can_fast_zero']).toBe(true);
    expect(d['can_trim']).toBe(true);
    expect(d['can_df']).toBe(true);
    expect(d['block_size_maximum']).toBe(32 * MiB);
    expect(d.contexts).toContain('base:allocation');
    expect(byName.ro['is_read_only']).toBe(true);
    expect(byName.ro['can_trim']).toBe(false);
  });

  it('nbdinfo --map reports data and holes; --json read-only export', async () => {
    const map = JSON.parse(await runOk('nbdinfo', ['--map', '--json', uri('ro')]));
    expect(map[0]).toMatchObject({ offset: 0, length: 65536, type: 0 });
    expect(map[1]).toMatchObject({ offset: 65536, length: 4 * MiB - 65536, type: 3 });
  });

  it('nbdcopy both directions: file → export → file, contents equal', async () => {
    const src = path.join(t.dir, `src-${transport}.raw`);
    const back = path.join(t.dir, `back-${transport}.raw`);
    const content = Buffer.alloc(16 * MiB);
    crypto.randomFillSync(content, 0, 3 * MiB);
    content.fill(0xee, 9 * MiB, 10 * MiB);
    fs.writeFileSync(src, content);
    await runOk('nbdcopy', ['--flush', src, uri('disk')]);
    expect(disk.data.equals(content)).toBe(true);
    expect(disk.flushes).toBeGreaterThan(0);
    await runOk('nbdcopy', ['-C', '4', '--request-size=1048576', uri('disk'), back]);
    expect(fs.readFileSync(back).equals(content)).toBe(true);
  });

  it('qemu-img info, map, compare and convert', async () => {
    const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', uri('disk')]));
    expect(info['virtual-size']).toBe(16 * MiB);
    const src = path.join(t.dir, `conv-${transport}.raw`);
    const img = Buffer.alloc(16 * MiB);
    img.fill(0x11, 0, MiB);
    img.fill(0x22, 5 * MiB, 6 * MiB);
    fs.writeFileSync(src, img);
    await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri('disk')]);
    expect(disk.data.equals(img)).toBe(true);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri('disk')]);
    expect(cmp.code, cmp.stderr + cmp.stdout).toBe(0);
    // compare sees a difference after one byte changes through a different route.
    disk.data[5 * MiB + 7] = 0;
    const cmp2 = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri('disk')]);
    expect(cmp2.code).toBe(1);
    const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', uri('ro')]));
    expect(map[0]).toMatchObject({ start: 0, length: 65536, data: true, zero: false });
    expect(map[1]).toMatchObject({ start: 65536, data: false, zero: true });
  });

  it('qemu-io read/write/discard/write-zeroes with patterns', async () => {
    const io = (cmds: string[], ro = false) =>
      runOk('qemu-io', [...(ro ? ['-r'] : []), '-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri('disk')]);
    await io(['write -P 0xab 2M 64k', 'write -P 0xcd 3M 4k', 'flush', 'write -z 2M 4k', 'discard 3M 4k', 'write -f -P 0x5d 4M 1k']);
    const out = await io(['read -P 0 2M 4k', 'read -P 0xab 2052k 60k', 'read -P 0 3M 4k', 'read -P 0x5d 4M 1k'], true);
    expect(out).not.toMatch(/Pattern verification failed|error/i);
    // A pattern mismatch is reported: the check can fail.
    const bad = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0xab 2M 4k', uri('disk')]);
    expect(bad.stdout + bad.stderr).toMatch(/Pattern verification failed/);
    expect(disk.log).toContain(`write 4194304 1024 fua`);
    // --image-opts, the QMP-ish way qemu tests address an export.
    const o = await runOk('qemu-io', ['--image-opts', '-r', '-c', 'read -P 0xab 2060k 4k', imageOpts('disk')]);
    expect(o).toMatch(/read 4096\/4096/);
  });

  it('writes to the read-only export fail with EPERM, reads past the end with EINVAL', async () => {
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', uri('ro')]);
    expect(w.code).not.toBe(0);
    expect(w.stdout + w.stderr).toMatch(/read-only|Operation not permitted|permission/i);
  });
});
