// Session-level behaviour: flow control (bounded requests in flight), multi-conn visibility,
// max-connections, and qemu:dirty-bitmap contexts as nbdinfo sees them.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdServer, UNIX_SEND_BUFFER_BYTES } from '../src/nbd/server.ts';
import { getSendBuffer, nativeSockopt, sendBufferTuning, setSendBuffer } from '../src/nbd/sockopt.ts';
import { NbdSession, type ExportLookup, type NbdExport } from '../src/nbd/session.ts';
import { MemoryBackend, RawClient, handshake, metaData, openExport, opt, readOptReplies, readReply, request, runOk, tmpDir } from './nbd-helpers.ts';

/** Reads that wait until released. */
class HeldReads extends MemoryBackend {
  held: (() => void)[] = [];
  override async read(offset: number, bytes: number): Promise<Buffer> {
    await new Promise<void>((r) => this.held.push(r));
    return super.read(offset, bytes);
  }
}

function rawOptions(name: string): Buffer {
  // client flags + GO on `name` with no info requests
  const flags = Buffer.from([0, 0, 0, 3]);
  const n = Buffer.from(name);
  const d = Buffer.alloc(4 + n.length + 2);
  d.writeUInt32BE(n.length, 0);
  n.copy(d, 4);
  return Buffer.concat([flags, opt(7, d)]);
}

describe('NbdSession flow control', () => {
  it.each([
    [4, true],
    [100, false],
  ])('with maxInFlight=%i, 10 held reads pause reading: %s; releasing them resumes', async (max, pauses) => {
    const be = new HeldReads(1 << 20);
    const exp: NbdExport = { name: 'd', backend: be, writable: true };
    const lookup: ExportLookup = { find: () => exp, list: () => [exp] };
    const events: string[] = [];
    let replies = 0;
    const s = new NbdSession(lookup, {
      send: (b) => {
        if (b[0]!.readUInt32BE(0) === 0x67446698) replies++;
      },
      close: (r) => events.push(`close ${r}`),
      pause: () => events.push('pause'),
      resume: () => events.push('resume'),
    }, { maxInFlight: max });
    s.start();
    s.feed(rawOptions('d'));
    expect(s.phase).toBe('transmission');
    s.feed(Buffer.concat(Array.from({ length: 10 }, (_, i) => request(0, i * 512, 512, { cookie: BigInt(i) }))));
    await new Promise((r) => setTimeout(r, 10));
    // The cap holds within one chunk: the parser keeps the rest buffered.
    expect(s.requestsInFlight).toBe(Math.min(10, max));
    expect(events).toEqual(pauses ? ['pause'] : []);
    for (let round = 0; replies < 10 && round < 20; round++) {
      for (const r of be.held.splice(0)) r();
      await new Promise((r) => setTimeout(r, 10));
      expect(s.requestsInFlight).toBeLessThanOrEqual(max);
    }
    expect(replies).toBe(10);
    expect(events.at(-1)).toBe(pauses ? 'resume' : undefined);
  });
});

describe('NBD server: connections and bitmaps', () => {
  const t = tmpDir();
  const sock = path.join(t.dir, 'nbd.sock');
  const server = new NbdServer({ maxConnections: 3 });
  const disk = new MemoryBackend(4 << 20);
  beforeAll(async () => {
    // A dirty bitmap with 64 KiB granularity: clusters 1 and 3 dirty.
    const dirty = new Set([1, 3]);
    const G = 65536;
    server.addExport({
      name: 'disk',
      backend: disk,
      writable: true,
      bitmaps: new Map([
        ['bm0', {
          async status(offset: number, bytes: number) {
            const out: { length: number; dirty: boolean }[] = [];
            for (let p = offset; p < offset + bytes; ) {
              const c = Math.floor(p / G);
              const len = Math.min((c + 1) * G, offset + bytes) - p;
              out.push({ length: len, dirty: dirty.has(c) });
              p += len;
            }
            return out;
          },
        }],
      ]),
    });
    await server.listen({ type: 'unix', path: sock });
  });
  afterAll(async () => {
    await server.close();
    t.cleanup();
  });

  it('multi-conn: a write + flush on one connection is visible to a read on another', async () => {
    const a = await RawClient.connect(sock);
    const b = await RawClient.connect(sock);
    const fa = await openExport(a, 'disk');
    await openExport(b, 'disk');
    expect(fa.flags & 0x100).toBe(0x100);
    a.send(request(1, 4096, 5, { data: Buffer.from('hello') }));
    await readReply(a);
    a.send(request(3, 0, 0));
    expect((await readReply(a)).error).toBe(0);
    b.send(request(0, 4096, 5));
    expect((await readReply(b, 5)).data!.toString()).toBe('hello');
    a.close();
    b.close();
  });

  it('max-connections: the connection past the limit is closed at once', async () => {
    const cs = await Promise.all([0, 1, 2].map(() => RawClient.connect(sock)));
    for (const c of cs) await handshake(c);
    const extra = await RawClient.connect(sock);
    expect(await extra.waitEof()).toBe(true);
    for (const c of cs) c.close();
    await new Promise((r) => setTimeout(r, 50));
    const again = await RawClient.connect(sock);
    expect((await again.read(18)).subarray(0, 8).toString()).toBe('NBDMAGIC');
    again.close();
  });

  it('LIST_META lists qemu:dirty-bitmap:bm0; nbdinfo --map shows the dirty clusters', async () => {
    const c = await RawClient.connect(sock);
    await handshake(c);
    c.send(opt(8));
    await readOptReplies(c);
    c.send(opt(9, metaData('disk', [])));
    const names = (await readOptReplies(c)).filter((r) => r.type === 4).map((r) => r.data.subarray(4).toString());
    expect(names).toEqual(['base:allocation', 'qemu:dirty-bitmap:bm0']);
    c.send(opt(9, metaData('disk', ['qemu:'])));
    expect((await readOptReplies(c)).filter((r) => r.type === 4).length).toBe(1);
    c.close();
    const map = JSON.parse(await runOk('nbdinfo', ['--map=qemu:dirty-bitmap:bm0', '--json', `nbd+unix:///disk?socket=${sock}`]));
    expect(map.slice(0, 4)).toMatchObject([
      { offset: 0, length: 65536, type: 0 },
      { offset: 65536, length: 65536, type: 1 },
      { offset: 131072, length: 65536, type: 0 },
      { offset: 196608, length: 65536, type: 1 },
    ]);
  });
});

describe('NBD server: a client that never reads its replies', () => {
  /** Sends `n` 1 MiB READs without reading any reply; returns the bytes the server queued and
   * the connection's kernel send buffer (which holds the rest). */
  async function queuedAfterBurst(maxQueuedReplyBytes: number, n: number): Promise<{ queued: number; kernel: number }> {
    const t = tmpDir();
    const sock = path.join(t.dir, 'nbd.sock');
    // Memory bound = queued cap + what is in flight when it trips (here ≤ 4 requests of 1 MiB).
    const server = new NbdServer({ maxQueuedReplyBytes, limits: { maxInFlight: 4 } });
    server.addExport({ name: 'disk', backend: new MemoryBackend(32 << 20), writable: false });
    await server.listen({ type: 'unix', path: sock });
    try {
      const c = await RawClient.connect(sock);
      await openExport(c, 'disk');
      c.socket.pause(); // never read a reply
      c.socket.write(Buffer.concat(Array.from({ length: n }, (_, i) => request(0, (i % 32) << 20, 1 << 20, { cookie: BigInt(i) }))));
      await new Promise((r) => setTimeout(r, 500));
      const queued = server.queuedReplyBytes;
      const kernel = server.sendBuffers[0]!;
      // Reading resumes: every reply arrives once the client reads.
      c.socket.resume();
      for (let i = 0; i < n; i++) await readReply(c, 1 << 20);
      expect(server.queuedReplyBytes).toBe(0);
      c.close();
      return { queued, kernel };
    } finally {
      await server.close();
      t.cleanup();
    }
  }

  it('stops being read once its queued replies pass the cap (8 MiB here; 4 MiB by default)', async () => {
    const { queued: q } = await queuedAfterBurst(8 << 20, 40);
    expect(q).toBeGreaterThan(8 << 20);
    expect(q).toBeLessThan(16 << 20);
  });

  it('known-bad variant: with no cap, all 40 MiB of replies pile up', async () => {
    // All of it in our queue but what the kernel's send buffer took.
    const { queued, kernel } = await queuedAfterBurst(Infinity, 40);
    expect(queued).toBeGreaterThanOrEqual((40 << 20) - kernel);
  });
});

describe('NBD server: the send buffer of unix-socket connections (SO_SNDBUF)', () => {
  /** Opens one connection to a fresh server and returns what the kernel reports for its socket. */
  async function sendBufferOf(addr: 'unix' | 'inet', unixSendBufferBytes?: number): Promise<number | undefined> {
    const t = tmpDir();
    const sock = path.join(t.dir, 'nbd.sock');
    const server = new NbdServer({ unixSendBufferBytes });
    server.addExport({ name: 'disk', backend: new MemoryBackend(1 << 20), writable: false });
    const bound = await server.listen(addr === 'unix' ? { type: 'unix', path: sock } : { type: 'inet', host: '127.0.0.1', port: 0 });
    try {
      const c = await (addr === 'unix' ? RawClient.connect(sock) : RawClient.connect({ port: bound.port!, host: '127.0.0.1' }));
      await openExport(c, 'disk');
      const [b] = server.sendBuffers;
      c.close();
      return b;
    } finally {
      await server.close();
      t.cleanup();
    }
  }

  it('the native module is built and loads (scripts/build-native.sh)', () => {
    expect(sendBufferTuning.available, sendBufferTuning.reason).toBe(true);
  });

  it('is raised to 1 MiB on a unix socket (Linux reports twice the value set)', async () => {
    expect(await sendBufferOf('unix')).toBe(2 * UNIX_SEND_BUFFER_BYTES);
    expect(await sendBufferOf('unix', 512 * 1024)).toBe(1024 * 1024);
  });

  it('stays the kernel default with 0, and on TCP, whose buffers autotune', async () => {
    const dflt = await sendBufferOf('unix', 0);
    expect(dflt).toBeGreaterThan(0);
    expect(dflt).toBeLessThan(2 * UNIX_SEND_BUFFER_BYTES);
    expect(await sendBufferOf('inet')).not.toBe(2 * UNIX_SEND_BUFFER_BYTES);
  });

  it('setSendBuffer/getSendBuffer name the descriptor and errno when the kernel refuses, and skip a closed socket', () => {
    const closed = new net.Socket();
    expect(setSendBuffer(closed, 1 << 20)).toBeUndefined();
    expect(getSendBuffer(closed)).toBeUndefined();
    // A descriptor that is not a socket: a regular file.
    const mod = nativeSockopt!;
    expect(mod, sendBufferTuning.reason).toBeDefined();
    const t = tmpDir();
    const fd = fs.openSync(path.join(t.dir, 'f'), 'w');
    try {
      expect(() => mod.getSendBuffer(fd)).toThrow(new RegExp(`^getsockopt\\(SO_SNDBUF\\) on fd ${fd}: Socket operation on non-socket$`));
      expect(() => mod.setSendBuffer(fd, 1024)).toThrow(new RegExp(`^setsockopt\\(SO_SNDBUF\\) on fd ${fd}: Socket operation on non-socket$`));
      expect(() => (mod.setSendBuffer as unknown as (fd: number) => number)(fd)).toThrow(/^sockopt: missing argument$/);
      expect(() => mod.setSendBuffer(fd, 'x' as unknown as number)).toThrow(/^sockopt: arguments must be integers$/);
    } finally {
      fs.closeSync(fd);
      t.cleanup();
    }
  });
});
