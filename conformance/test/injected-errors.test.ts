// Errors injected below an export (blkdebug under the exported node) reach the NBD client as
// NBD errors on a connection that stays usable, and never as wrong data (proto.md "Error
// values": the server reports an error in the reply; a failed READ carries no data, and the
// client keeps the connection). The same command line runs on the reference and on
// qemu-storage-daemon 7.2; a server that answered with data, or dropped the connection, fails.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { Cmd, CF as CmdFlag } from '../nbd/constants.ts';
import { open } from '../nbd/session.ts';
import { expectedContent, writeImage, DEFAULT_LAYOUT } from '../targets/image.ts';
import { ManagedProcess, waitListening } from '../targets/process.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0)) await c();
});

/** Sector 8 (4 KiB) fails reads, sector 16 (8 KiB) fails writes, with EIO, every time. */
function args(img: string, sock: string): string[] {
  const dbg = {
    driver: 'blkdebug',
    'node-name': 'dbg',
    image: 'f0',
    'inject-error': [
      { event: 'read_aio', errno: 5, sector: 8 },
      { event: 'write_aio', errno: 5, sector: 16 },
    ],
  };
  return [
    '--blockdev', `driver=file,node-name=f0,filename=${img}`,
    '--blockdev', JSON.stringify(dbg),
    // QEMU raises blkdebug's read_aio/write_aio events from the format driver above it.
    '--blockdev', 'driver=raw,node-name=fmt,file=dbg',
    '--nbd-server', `addr.type=unix,addr.path=${sock}`,
    '--export', 'type=nbd,id=e0,node-name=fmt,name=disk,writable=on',
  ];
}

async function start(kind: 'reference' | 'qemu-storage-daemon'): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-inject-'));
  const img = path.join(dir, 'disk.raw');
  writeImage(img, DEFAULT_LAYOUT);
  const sock = path.join(dir, 'nbd.sock');
  const proc =
    kind === 'reference'
      ? ManagedProcess.spawn('fleece serve', process.execPath, [path.join(REPO, 'bin/fleece.mjs'), 'serve', ...args(img, sock)])
      : ManagedProcess.spawn('qemu-storage-daemon', 'qemu-storage-daemon', args(img, sock));
  cleanup.push(async () => {
    await proc.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await waitListening({ kind: 'unix', path: sock }, proc, 15_000);
  return sock;
}

describe('injected errors below an export reach the client as NBD errors, on a usable connection', () => {
  for (const kind of ['reference', 'qemu-storage-daemon'] as const) {
    for (const structured of [true, false]) {
      if (kind === 'qemu-storage-daemon' && structured) continue; // its finding: below
      it(`${kind}, ${structured ? 'structured' : 'simple'} replies: EIO for the failing sectors, right data around them, the connection keeps serving`, async () => {
        const sock = await start(kind);
        const { conn } = await open({ kind: 'unix', path: sock }, { exportName: 'disk', timeoutMs: 5000, structured });
        try {
          const bad = await conn.request({ type: Cmd.READ, offset: 4096, length: 512 }).catch((e: Error) => {
            throw new Error(`the READ of the failing sector: ${e.message}`);
          });
          expect(bad.error).toBe(5);
          expect(bad.data).toBeUndefined();
          // A READ spanning the failing sector fails whole: no partial data passed off as success.
          const span = await conn.request({ type: Cmd.READ, offset: 0, length: 64 * 1024 });
          expect(span.error).toBe(5);
          const good = await conn.request({ type: Cmd.READ, offset: 0, length: 4096 });
          expect(good.error).toBe(0);
          expect(good.data!.equals(expectedContent(DEFAULT_LAYOUT, 0, 4096))).toBe(true);
          const w = await conn.request({ type: Cmd.WRITE, offset: 8192, length: 512, payload: Buffer.alloc(512, 0xee), flags: CmdFlag.FUA });
          expect(w.error).toBe(5);
          const after = await conn.request({ type: Cmd.READ, offset: 8192, length: 512 });
          expect(after.error).toBe(0);
          expect(after.data!.equals(expectedContent(DEFAULT_LAYOUT, 8192, 512))).toBe(true);
          const ok = await conn.request({ type: Cmd.WRITE, offset: 16 << 20, length: 512, payload: Buffer.alloc(512, 0x11) });
          expect(ok.error).toBe(0);
          expect((await conn.request({ type: Cmd.FLUSH })).error).toBe(0);
          const back = await conn.request({ type: Cmd.READ, offset: 16 << 20, length: 512 });
          expect(back.data!.equals(Buffer.alloc(512, 0x11))).toBe(true);
          expect(conn.isClosed).toBe(false);
        } finally {
          conn.close();
        }
      });
    }
  }
});

describe('qemu-storage-daemon 7.2 finding: a structured READ failing below the export drops the connection', () => {
  it('the READ of the failing sector gets no error chunk: the server closes (with simple replies it answers EIO, above)', async () => {
    const sock = await start('qemu-storage-daemon');
    const { conn } = await open({ kind: 'unix', path: sock }, { exportName: 'disk', timeoutMs: 5000, structured: true });
    try {
      await expect(conn.request({ type: Cmd.READ, offset: 4096, length: 512 })).rejects.toThrow(/closed/);
    } finally {
      conn.close();
    }
  });
});
