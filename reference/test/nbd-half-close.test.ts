// A client that sends its last requests and then shuts down its sending side (shutdown(SHUT_WR),
// as `nbdsh` scripts and simple clients do) still reads: every request already received gets
// its reply before the server closes (proto.md "Terminating the transmission phase": the server
// finishes outstanding requests before it closes). Asynchronous requests are the ones at risk.
// With the same slow backend: pooled WRITE payloads are reused only after their write is done.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RequestFlags } from '../src/block/types.ts';
import { NbdServer } from '../src/nbd/server.ts';
import { startDaemon, type Daemon } from './daemon-helpers.ts';
import { MemoryBackend, RawClient, openExport, readReply, request, requirePeer, run, tmpDir } from './nbd-helpers.ts';

const CMD = { READ: 0, WRITE: 1, FLUSH: 3 } as const;
const FUA = 1;
const MiB = 1024 * 1024;

/** Every operation completes a few milliseconds later, on a timer: nothing is answered in the
 * same turn of the event loop as its request. */
class SlowBackend extends MemoryBackend {
  private later<T>(f: () => Promise<T>): Promise<T> {
    return new Promise((r) => setTimeout(r, 5)).then(f);
  }
  override read(offset: number, bytes: number): Promise<Buffer> {
    return this.later(() => super.read(offset, bytes));
  }
  override write(offset: number, data: Buffer, opts?: RequestFlags): Promise<void> {
    return this.later(() => super.write(offset, data, opts));
  }
  override flush(): Promise<void> {
    return this.later(() => super.flush());
  }
}

interface Trial {
  readonly name: string;
  readonly req: () => Buffer;
  readonly readLen: number;
}

const TRIALS: readonly Trial[] = [
  { name: 'FLUSH', req: () => request(CMD.FLUSH, 0, 0, { cookie: 1n }), readLen: 0 },
  { name: 'FUA WRITE of 64 KiB', req: () => request(CMD.WRITE, 0, 65536, { cookie: 1n, flags: FUA, data: Buffer.alloc(65536, 0x5a) }), readLen: 0 },
  { name: 'READ of 1 MiB', req: () => request(CMD.READ, 0, MiB, { cookie: 1n }), readLen: MiB },
];

/** One trial: open the export, send the request, shut down the sending side, expect the reply
 * and then EOF. Returns what went wrong, or undefined. */
async function halfCloseTrial(addr: string, exportName: string, t: Trial, extra = 0): Promise<string | undefined> {
  const c = await RawClient.connect(addr);
  try {
    await openExport(c, exportName);
    const reqs = [t.req(), ...Array.from({ length: extra }, (_, i) => request(CMD.READ, 0, 4096, { cookie: BigInt(i + 2) }))];
    c.socket.end(Buffer.concat(reqs));
    for (let i = 0; i <= extra; i++) {
      const r = await readReply(c, i === 0 ? t.readLen : 4096).catch((e: Error) => e);
      if (r instanceof Error) return `reply ${i + 1} of ${extra + 1}: ${r.message}`;
      if (r.error !== 0) return `reply ${i + 1}: error ${r.error}`;
    }
    if (!(await c.waitEof(5000))) return 'the server did not close after the replies';
    return undefined;
  } finally {
    c.close();
  }
}

/** The trials of `n` that went wrong, each with what went wrong. */
async function failedTrials(addr: string, trial: Trial, n: number): Promise<string[]> {
  const failures: string[] = [];
  for (let i = 0; i < n; i++) {
    const f = await halfCloseTrial(addr, 'disk', trial);
    if (f) failures.push(`trial ${i}: ${f}`);
  }
  return failures;
}

describe('NBD server: replies survive a half-close (in process, every operation asynchronous)', () => {
  const t = tmpDir();
  const sock = path.join(t.dir, 'nbd.sock');
  const server = new NbdServer();
  beforeAll(async () => {
    server.addExport({ name: 'disk', backend: new SlowBackend(4 * MiB), writable: true });
    await server.listen({ type: 'unix', path: sock });
  });
  afterAll(async () => {
    await server.close();
    t.cleanup();
  });

  it.each(TRIALS.map((x) => [x.name, x] as const))('%s, 20 trials: every reply delivered, then EOF', async (_n, trial) => {
    expect(await failedTrials(sock, trial, 20)).toEqual([]);
  });

  it('requests held back by flow control are answered too (70 pipelined reads, 64 in flight at most)', async () => {
    expect(await halfCloseTrial(sock, 'disk', TRIALS[2]!, 69)).toBeUndefined();
  });

  it('a partial request at EOF is dropped, the whole ones before it answered', async () => {
    const c = await RawClient.connect(sock);
    await openExport(c, 'disk');
    c.socket.end(Buffer.concat([request(CMD.FLUSH, 0, 0, { cookie: 9n }), request(CMD.READ, 0, 512).subarray(0, 20)]));
    const r = await readReply(c);
    expect([r.cookie, r.error]).toEqual([9n, 0]);
    expect(await c.waitEof(5000)).toBe(true);
    c.close();
  });
});

describe('fleece serve: replies survive a half-close (file driver, QMP-free command line)', () => {
  const t = tmpDir();
  const img = path.join(t.dir, 'disk.raw');
  const sock = path.join(t.dir, 'nbd.sock');
  let d: Daemon;
  beforeAll(async () => {
    fs.writeFileSync(img, Buffer.alloc(4 * MiB));
    d = await startDaemon(
      'fleece',
      [
        '--blockdev', `driver=file,node-name=f,filename=${img}`,
        '--nbd-server', `addr.type=unix,addr.path=${sock}`,
        '--export', 'type=nbd,id=e,node-name=f,name=disk,writable=on',
      ],
      sock,
    );
  });
  afterAll(async () => {
    await d?.kill();
    t.cleanup();
  });

  it.each(TRIALS.map((x) => [x.name, x] as const))('%s, 20 trials: every reply delivered, then EOF', async (_n, trial) => {
    expect(await failedTrials(sock, trial, 20)).toEqual([]);
  });

  it('the FUA writes reached the image (qemu-io reads them back)', async () => {
    requirePeer('qemu-io');
    const r = await run('qemu-io', ['-f', 'raw', '-r', '-U', '-c', 'read -P 0x5a 0 64k', img]);
    expect(r.stdout + r.stderr).not.toMatch(/Pattern verification failed/);
    expect(r.code).toBe(0);
  });
});

describe('NBD server: pooled WRITE payloads are reused only once their write is done', () => {
  const t = tmpDir();
  const sock = path.join(t.dir, 'nbd.sock');
  const server = new NbdServer();
  beforeAll(async () => {
    // Every write copies its payload 5 ms late: a payload handed to the next WRITE too early
    // would be overwritten before it is copied.
    server.addExport({ name: 'disk', backend: new SlowBackend(16 * MiB), writable: true });
    await server.listen({ type: 'unix', path: sock });
  });
  afterAll(async () => {
    await server.close();
    t.cleanup();
  });

  it('8 pipelined WRITEs of 1 MiB, each with its own pattern, then 4 rounds more: every byte reads back', async () => {
    const c = await RawClient.connect(sock);
    try {
      await openExport(c, 'disk');
      for (let round = 0; round < 4; round++) {
        const reqs = Array.from({ length: 8 }, (_, i) => request(CMD.WRITE, i * MiB, MiB, { cookie: BigInt(100 + i), data: Buffer.alloc(MiB, 1 + i + round * 8) }));
        c.send(Buffer.concat(reqs));
        for (let i = 0; i < 8; i++) expect((await readReply(c)).error).toBe(0);
        for (let i = 0; i < 8; i++) {
          c.send(request(CMD.READ, i * MiB, MiB, { cookie: BigInt(200 + i) }));
          const r = await readReply(c, MiB);
          expect(r.data!.equals(Buffer.alloc(MiB, 1 + i + round * 8)), `round ${round}, MiB ${i}`).toBe(true);
        }
      }
    } finally {
      c.close();
    }
  });
});
