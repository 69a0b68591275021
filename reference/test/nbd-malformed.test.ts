// Malformed and hostile input over raw sockets (docs/requirements/nbd.md A–C, §6, §7): the server
// answers per spec or disconnects that client, keeps serving the others, and never exits.
// Each check is also run against a deliberately broken server, to show it can fail.
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockError } from '../src/block/errors.ts';
import { NbdServer } from '../src/nbd/server.ts';
import {
  MemoryBackend,
  RawClient,
  handshake,
  infoData,
  metaData,
  openExport,
  opt,
  readOptReplies,
  readReply,
  request,
  tmpDir,
} from './nbd-helpers.ts';

const MiB = 1024 * 1024;
const ERR = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, ENOTSUP: 95 };
const REP_ACK = 1;
const REP_ERR_UNSUP = 0x80000001;
const REP_ERR_POLICY = 0x80000002;
const REP_ERR_INVALID = 0x80000003;
const REP_ERR_UNKNOWN = 0x80000006;
const REP_ERR_TOO_BIG = 0x80000009;

/** Wraps a backend to delay reads at given offsets (out-of-order replies). */
class SlowReads extends MemoryBackend {
  delays = new Map<number, number>();
  override async read(offset: number, bytes: number): Promise<Buffer> {
    const d = this.delays.get(offset);
    if (d) await new Promise((r) => setTimeout(r, d));
    return super.read(offset, bytes);
  }
}

// ---- checks, each returning what it saw; run against the reference and a broken server ----

/** §2 case 2: an unknown client flag MUST make the server drop the connection. */
async function dropsOnUnknownClientFlags(sock: string): Promise<boolean> {
  const c = await RawClient.connect(sock);
  await handshake(c, 0x80000001);
  c.send(opt(3)); // LIST: a server that kept negotiating would answer it
  const eof = await c.waitEof(1500);
  const answered = c.pending > 0;
  c.close();
  return eof && !answered;
}

/** §2 case 5/6: an unknown option gets ERR_UNSUP, and the next option still parses. */
async function staysInSyncAfterUnknownOption(sock: string): Promise<boolean> {
  const c = await RawClient.connect(sock);
  await handshake(c);
  c.send(Buffer.concat([opt(0x7654321, Buffer.from('abcd')), opt(3)]));
  try {
    const a = await readOptReplies(c);
    const b = await readOptReplies(c);
    return a[0]!.type === REP_ERR_UNSUP && b[b.length - 1]!.type === REP_ACK && b[0]!.option === 3;
  } catch {
    return false;
  } finally {
    c.close();
  }
}

/** A broken server: keeps negotiating on unknown client flags and ignores option lengths
 * (answers ERR_UNSUP to the 16-byte header only, leaving the payload in the stream). */
function brokenServer(sockPath: string): Promise<net.Server> {
  return new Promise((resolve) => {
    const srv = net.createServer((s) => {
      const g = Buffer.alloc(18);
      g.write('NBDMAGICIHAVEOPT', 'latin1');
      g.writeUInt16BE(3, 16);
      s.write(g);
      let buf = Buffer.alloc(0);
      let gotFlags = false;
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (!gotFlags && buf.length >= 4) {
          gotFlags = true;
          buf = buf.subarray(4);
        }
        while (buf.length >= 16) {
          const o = buf.readUInt32BE(8);
          buf = buf.subarray(16);
          const r = Buffer.alloc(20);
          r.writeBigUInt64BE(0x0003e889045565a9n, 0);
          r.writeUInt32BE(o, 8);
          r.writeUInt32BE(REP_ERR_UNSUP, 12);
          s.write(r);
        }
      });
      s.on('error', () => {});
    });
    srv.listen(sockPath, () => resolve(srv));
  });
}

describe('NBD server under malformed input', () => {
  const t = tmpDir();
  const sock = path.join(t.dir, 'nbd.sock');
  const server = new NbdServer();
  const disk = new SlowReads(4 * MiB, 'disk0');
  const ro = new MemoryBackend(1 * MiB, 'ro0');
  const logs: string[] = [];
  let badSrv: net.Server;
  const badSock = path.join(t.dir, 'bad.sock');

  beforeAll(async () => {
    (server as unknown as { opts: { log: (m: string) => void } }).opts.log = (m) => logs.push(m);
    server.addExport({ name: 'disk', backend: disk, writable: true });
    server.addExport({ name: 'ro', backend: ro, writable: false });
    await server.listen({ type: 'unix', path: sock });
    badSrv = await brokenServer(badSock);
  });
  afterAll(async () => {
    await server.close();
    await new Promise((r) => badSrv.close(r));
    t.cleanup();
  });

  /** After every hostile case: a fresh connection still negotiates and reads. */
  async function stillServing(): Promise<void> {
    const c = await RawClient.connect(sock);
    await openExport(c, 'disk');
    c.send(request(0, 0, 512, { cookie: 7n }));
    const r = await readReply(c, 512);
    expect(r.error).toBe(0);
    expect(r.cookie).toBe(7n);
    c.close();
  }

  it('unknown client flags: the reference drops the link; the broken server does not', async () => {
    expect(await dropsOnUnknownClientFlags(sock)).toBe(true);
    expect(await dropsOnUnknownClientFlags(badSock)).toBe(false);
    await stillServing();
  });

  it('unknown option: ERR_UNSUP and in sync; the broken server desyncs', async () => {
    expect(await staysInSyncAfterUnknownOption(sock)).toBe(true);
    expect(await staysInSyncAfterUnknownOption(badSock)).toBe(false);
  });

  it('bad option magic: disconnect, the daemon keeps serving', async () => {
    const c = await RawClient.connect(sock);
    await handshake(c);
    c.send(Buffer.from('IHAVEOPX' + '\0'.repeat(8), 'latin1'));
    expect(await c.waitEof()).toBe(true);
    expect(logs.some((l) => /without IHAVEOPT magic .*bytes 4948415645/.test(l))).toBe(true);
    await stillServing();
  });

  it('INFO with a name length past the payload → ERR_INVALID, stream stays in sync', async () => {
    const c = await RawClient.connect(sock);
    await handshake(c);
    const bad = Buffer.alloc(10);
    bad.writeUInt32BE(1000, 0);
    c.send(Buffer.concat([opt(6, bad), opt(6, infoData('disk'))]));
    const a = await readOptReplies(c);
    expect(a.map((r) => r.type)).toEqual([REP_ERR_INVALID]);
    expect(a[0]!.data.toString()).toMatch(/name length 1000/);
    const b = await readOptReplies(c);
    expect(b[b.length - 1]!.type).toBe(REP_ACK);
    c.close();
  });

  it('INFO on an unknown export → ERR_UNKNOWN; EXPORT_NAME unknown → close; known → 10 or 134 bytes', async () => {
    let c = await RawClient.connect(sock);
    await handshake(c);
    c.send(opt(6, infoData('nope')));
    expect((await readOptReplies(c)).map((r) => r.type)).toEqual([REP_ERR_UNKNOWN]);
    c.send(opt(1, Buffer.from('nope')));
    expect(await c.waitEof()).toBe(true);
    for (const [flags, bytes] of [[3, 10], [1, 134]] as const) {
      c = await RawClient.connect(sock);
      await handshake(c, flags);
      c.send(opt(1, Buffer.from('disk')));
      const r = await c.read(bytes);
      expect(r.readBigUInt64BE(0)).toBe(BigInt(4 * MiB));
      expect(r.readUInt16BE(8) & 0x80).toBe(0); // DF clear without SR (§2 case 20)
      c.send(request(0, 0, 4, { cookie: 9n }));
      expect((await readReply(c, 4)).cookie).toBe(9n);
      c.close();
    }
  });

  it('LIST with data → one ERR_INVALID; STARTTLS → ERR_POLICY; SR twice → ERR_INVALID; ABORT → ACK + close', async () => {
    const c = await RawClient.connect(sock);
    await handshake(c);
    c.send(opt(3, Buffer.from('x')));
    expect((await readOptReplies(c)).map((r) => r.type)).toEqual([REP_ERR_INVALID]);
    c.send(opt(3));
    const list = await readOptReplies(c);
    expect(list.length).toBe(3);
    c.send(opt(5));
    expect((await readOptReplies(c))[0]!.type).toBe(REP_ERR_POLICY);
    c.send(opt(8));
    expect((await readOptReplies(c))[0]!.type).toBe(REP_ACK);
    c.send(opt(8));
    expect((await readOptReplies(c))[0]!.type).toBe(REP_ERR_INVALID);
    c.send(opt(2, Buffer.from('ignored')));
    expect((await readOptReplies(c))[0]!.type).toBe(REP_ACK);
    expect(await c.waitEof()).toBe(true);
  });

  it('meta contexts: SET before SR → ERR_INVALID; LIST wildcard; unknown namespace ignored', async () => {
    const c = await RawClient.connect(sock);
    await handshake(c);
    c.send(opt(10, metaData('disk', ['base:allocation'])));
    expect((await readOptReplies(c))[0]!.type).toBe(REP_ERR_INVALID);
    c.send(opt(8));
    await readOptReplies(c);
    c.send(opt(9, metaData('disk', ['base:'])));
    const l = await readOptReplies(c);
    expect(l.map((r) => r.data.subarray(4).toString())).toEqual(['base:allocation', '']);
    c.send(opt(10, metaData('disk', ['x-nonexist:foo', 'base:'])));
    expect((await readOptReplies(c)).map((r) => r.type)).toEqual([REP_ACK]);
    c.close();
  });

  it('truncated options and option lengths past the end: no crash, others served', async () => {
    const c1 = await RawClient.connect(sock);
    await handshake(c1);
    c1.send(opt(6, Buffer.alloc(0), 100).subarray(0, 16));
    c1.send(Buffer.alloc(10));
    c1.close();
    const c2 = await RawClient.connect(sock);
    await handshake(c2);
    c2.send(Buffer.concat([opt(6, Buffer.alloc(0), 0xffffffff), Buffer.alloc(5000)]));
    c2.close();
    const c3 = await RawClient.connect(sock);
    await handshake(c3);
    c3.send(Buffer.from('IHAV'));
    c3.close();
    // A complete oversized option is drained, refused, and the stream stays in sync.
    const c4 = await RawClient.connect(sock);
    await handshake(c4);
    c4.send(Buffer.concat([opt(6, Buffer.alloc(100_000)), opt(3)]));
    expect((await readOptReplies(c4)).map((r) => r.type)).toEqual([REP_ERR_TOO_BIG]);
    expect((await readOptReplies(c4)).pop()!.type).toBe(REP_ACK);
    c4.close();
    await stillServing();
  });

  it('transmission errors: unknown command and flags, bounds, read-only; the connection stays usable', async () => {
    const c = await RawClient.connect(sock);
    await openExport(c, 'disk');
    const expectErr = async (req: Buffer, err: number) => {
      c.send(req);
      expect((await readReply(c)).error).toBe(err);
    };
    await expectErr(request(99, 0, 0), ERR.EINVAL);
    await expectErr(request(0, 0, 512, { flags: 0x8000 }), ERR.EINVAL);
    await expectErr(request(0, 0, 512, { flags: 8 }), ERR.EINVAL); // REQ_ONE on READ
    await expectErr(request(0, 4 * MiB - 256, 512), ERR.EINVAL);
    await expectErr(request(0, 2n ** 64n - 512n, 512), ERR.EINVAL);
    await expectErr(request(1, 4 * MiB - 256, 512, { data: Buffer.alloc(512, 1) }), ERR.ENOSPC);
    await expectErr(request(6, 4 * MiB, 512), ERR.ENOSPC);
    await expectErr(request(4, 4 * MiB, 512), ERR.EINVAL);
    await expectErr(request(0, 0, 32 * MiB + 512), ERR.EINVAL);
    await expectErr(request(7, 0, 512), ERR.EINVAL); // BLOCK_STATUS without SR/meta
    // The payload of the refused WRITE was consumed: the next request parses.
    c.send(request(0, 0, 16, { cookie: 3n }));
    const r = await readReply(c, 16);
    expect([r.error, r.cookie]).toEqual([0, 3n]);
    c.close();
    const r2 = await RawClient.connect(sock);
    await openExport(r2, 'ro');
    for (const type of [1, 4, 6]) {
      r2.send(request(type, 0, 512, type === 1 ? { data: Buffer.alloc(512) } : {}));
      expect((await readReply(r2)).error).toBe(ERR.EPERM);
    }
    r2.close();
  });

  it('oversized WRITE payload header → disconnect; abrupt disconnect mid-payload → others unaffected', async () => {
    const c = await RawClient.connect(sock);
    await openExport(c, 'disk');
    c.send(request(1, 0, 64 * MiB));
    expect(await c.waitEof()).toBe(true);
    expect(logs.some((l) => /exceeds the 33554432-byte cap/.test(l))).toBe(true);
    const d = await RawClient.connect(sock);
    await openExport(d, 'disk');
    d.send(request(1, 0, 1 * MiB, { data: Buffer.alloc(4096, 0x77) }));
    d.close();
    const e = await RawClient.connect(sock);
    await openExport(e, 'disk');
    e.send(request(0, 0, 4096, { cookie: 1n }).subarray(0, 13));
    e.close();
    await stillServing();
    expect(disk.data[0]).not.toBe(0x77);
  });

  it('partial frames (one byte at a time) and 64 pipelined requests in one write', async () => {
    const c = await RawClient.connect(sock);
    await openExport(c, 'disk');
    const w = request(1, 8192, 8, { cookie: 0xffffffffffffffffn, data: Buffer.from('abcdefgh') });
    for (const b of w) c.send(Buffer.from([b]));
    const r = await readReply(c);
    expect([r.error, r.cookie]).toEqual([0, 0xffffffffffffffffn]);
    c.send(Buffer.concat(Array.from({ length: 64 }, (_, i) => request(0, 8192, 8, { cookie: BigInt(i) }))));
    const seen = new Set<bigint>();
    for (let i = 0; i < 64; i++) {
      const x = await readReply(c, 8);
      expect(x.data!.toString()).toBe('abcdefgh');
      seen.add(x.cookie);
    }
    expect(seen.size).toBe(64);
    c.close();
  });

  it('replies come out of order when an earlier request is slower', async () => {
    disk.delays.set(65536, 200);
    const c = await RawClient.connect(sock);
    await openExport(c, 'disk', { structured: true });
    c.send(Buffer.concat([request(0, 65536, 512, { cookie: 1n }), request(0, 0, 512, { cookie: 2n })]));
    const first = await readReply(c);
    const second = await readReply(c);
    expect([first.cookie, second.cookie]).toEqual([2n, 1n]);
    disk.delays.clear();
    c.close();
  });

  it('DISC after pipelined reads: every reply, then EOF', async () => {
    disk.delays.set(0, 100);
    const c = await RawClient.connect(sock);
    await openExport(c, 'disk');
    c.send(Buffer.concat([request(0, 0, 512, { cookie: 1n }), request(0, 512, 512, { cookie: 2n }), request(2, 0, 0)]));
    const got = [await readReply(c, 512), await readReply(c, 512)].map((r) => r.cookie).sort();
    expect(got).toEqual([1n, 2n]);
    expect(await c.waitEof()).toBe(true);
    disk.delays.clear();
  });

  it('structured replies: OFFSET_DATA + DONE, NONE for length 0, ERROR chunks with messages, block status', async () => {
    const c = await RawClient.connect(sock);
    const ex = await openExport(c, 'disk', { structured: true, meta: ['base:allocation'] });
    expect(ex.flags & 0x80).toBe(0x80); // DF offered with SR
    c.send(request(1, 1 * MiB, 4096, { data: Buffer.alloc(4096, 9) }));
    await readReply(c);
    c.send(request(0, 1 * MiB, 4096, { flags: 4 }));
    const r = await readReply(c);
    expect(r.chunks.map((x) => [x.type, x.flags])).toEqual([[1, 1]]);
    expect(r.chunks[0]!.data.readBigUInt64BE(0)).toBe(BigInt(MiB));
    c.send(request(0, 0, 0));
    expect((await readReply(c)).chunks.map((x) => [x.type, x.flags])).toEqual([[0, 1]]);
    c.send(request(0, 4 * MiB, 1));
    const e = await readReply(c);
    expect(e.chunks[0]!.type).toBe(0x8001);
    expect(e.error).toBe(ERR.EINVAL);
    expect(e.chunks[0]!.data.subarray(6).toString()).toMatch(/past the end/);
    c.send(request(7, MiB - 4096, 3 * 4096));
    const bs = await readReply(c);
    const d = bs.chunks[0]!.data;
    expect(bs.chunks[0]!.type).toBe(5);
    const ext = [];
    for (let p = 4; p < d.length; p += 8) ext.push([d.readUInt32BE(p), d.readUInt32BE(p + 4)]);
    expect(ext.slice(0, 2)).toEqual([[4096, 3], [4096, 0]]);
    c.send(request(7, MiB - 4096, 3 * 4096, { flags: 8 }));
    const one = (await readReply(c)).chunks[0]!.data;
    expect(one.length).toBe(12);
    c.send(request(7, 0, 0));
    expect((await readReply(c)).error).toBe(ERR.EINVAL);
    c.close();
  });

  it('block-layer errors map to NBD errors (EACCES → EINVAL as QEMU; ENOTSUP only with FAST_ZERO)', async () => {
    const c = await RawClient.connect(sock);
    await openExport(c, 'disk', { structured: true });
    const cases: [BlockError | Error, Buffer, number][] = [
      [new BlockError('EACCES', 'snapshot range not accessible'), request(0, 0, 512), ERR.EINVAL],
      [new BlockError('EIO', 'media error'), request(0, 0, 512), ERR.EIO],
      [new BlockError('ENOSPC', 'target full'), request(1, 0, 4, { data: Buffer.alloc(4) }), ERR.ENOSPC],
      [new BlockError('ENOTSUP', 'no fast zero'), request(6, 0, 512, { flags: 0x10 }), ERR.ENOTSUP],
      [new BlockError('ENOTSUP', 'no zero'), request(6, 0, 512), ERR.EINVAL],
      [new Error('boom'), request(3, 0, 0), ERR.EIO],
    ];
    for (const [err, req, want] of cases) {
      disk.failWith = err as BlockError;
      c.send(req);
      const r = await readReply(c);
      expect(r.error, err.message).toBe(want);
      expect(r.chunks[0]!.data.subarray(6).toString()).toContain(err.message);
    }
    disk.failWith = undefined;
    c.close();
    await stillServing();
  });
});
