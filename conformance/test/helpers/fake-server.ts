// A tiny NBD server for the tests only: conforming by default, with named faults that each break
// one rule, so every kind of check is seen failing on a known-bad target. Independent of
// reference/ (the judge must not share code with the judged) and deliberately naive.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { DEFAULT_LAYOUT, expectedContent } from '../../targets/image.ts';
import type { RunningTarget, TargetDef } from '../../targets/types.ts';

export type Fault =
  | 'greeting-flags' // sets an undefined handshake flag bit
  | 'unknown-option-invalid' // ERR_INVALID instead of ERR_UNSUP
  | 'abort-no-ack' // closes on ABORT without ACK
  | 'pad-after-go' // 4 stray bytes after GO's ACK
  | 'info-size-zero' // INFO reports size 0
  | 'wrong-cookie' // replies carry cookie + 1
  | 'overlap-chunks' // structured READ sends an overlapping chunk
  | 'ignore-writes' // WRITE succeeds but stores nothing
  | 'disc-drops-inflight' // no reply to reads that precede DISC in the same packet
  | 'enospc-as-einval' // EINVAL for writes past the end
  | 'extent-past-eof' // last extent goes past the end of the export
  | 'zero-on-data' // ZERO flag on extents that hold data
  | 'reserved-bits' // status bit 2 set
  | 'double-done'; // a second DONE chunk after a READ

const MAGIC = Buffer.from('NBDMAGIC');
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x0003e889045565a9n;

export interface FakeServer {
  path: string;
  close(): Promise<void>;
}

export function startFakeServer(faults: ReadonlySet<Fault> = new Set(), size = DEFAULT_LAYOUT.size): Promise<FakeServer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-nbd-'));
  const sock = path.join(dir, 'nbd.sock');
  const disk = Buffer.alloc(size);
  for (const r of DEFAULT_LAYOUT.data) expectedContent(DEFAULT_LAYOUT, r.offset, r.length).copy(disk, r.offset);
  const conns = new Set<net.Socket>();
  const server = net.createServer((s) => {
    conns.add(s);
    s.on('close', () => conns.delete(s));
    s.on('error', () => undefined);
    serve(s, disk, faults);
  });
  return new Promise((resolve) => {
    server.listen(sock, () =>
      resolve({
        path: sock,
        close: () =>
          new Promise<void>((r) => {
            for (const c of conns) c.destroy();
            server.close(() => {
              fs.rmSync(dir, { recursive: true, force: true });
              r();
            });
          }),
      }),
    );
  });
}

/** The fake as a runner target, with the generated layout so content checks apply. */
export function fakeTarget(faults: Fault[], name = `fake(${faults.join(',') || 'conforming'})`): TargetDef {
  return {
    name,
    summary: 'in-test fake NBD server',
    peers: [],
    async start(): Promise<RunningTarget> {
      const f = await startFakeServer(new Set(faults));
      const ref = { address: { kind: 'unix' as const, path: f.path }, name: 'disk' };
      return { name, description: name, exports: { rw: ref }, image: DEFAULT_LAYOUT, logs: () => '', stop: () => f.close() };
    },
  };
}

const TF_FLAGS = 1 | 4 | 8 | 32 | 64 | 128 | 256; // HAS_FLAGS FLUSH FUA TRIM WRITE_ZEROES DF MULTI_CONN

function serve(s: net.Socket, disk: Buffer, faults: ReadonlySet<Fault>): void {
  let buf = Buffer.alloc(0);
  let phase: 'flags' | 'options' | 'transmission' = 'flags';
  let sr = false;
  let noZeroes = false;
  let metaSelected = false;
  const size = BigInt(disk.length);
  const hs = Buffer.alloc(2);
  hs.writeUInt16BE(faults.has('greeting-flags') ? 7 : 3);
  s.write(Buffer.concat([MAGIC, Buffer.from('IHAVEOPT'), hs]));

  const optReply = (opt: number, type: number, data: Buffer = Buffer.alloc(0)) => {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(REPLY_MAGIC, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(type >>> 0, 12);
    h.writeUInt32BE(data.length, 16);
    s.write(Buffer.concat([h, data]));
  };
  const simple = (err: number, cookie: bigint, data?: Buffer) => {
    const h = Buffer.alloc(16);
    h.writeUInt32BE(0x67446698, 0);
    h.writeUInt32BE(err, 4);
    h.writeBigUInt64BE(faults.has('wrong-cookie') ? BigInt.asUintN(64, cookie + 1n) : cookie, 8);
    s.write(data ? Buffer.concat([h, data]) : h);
  };
  const chunk = (flags: number, type: number, cookie: bigint, payload: Buffer) => {
    const h = Buffer.alloc(20);
    h.writeUInt32BE(0x668e33ef, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(faults.has('wrong-cookie') ? BigInt.asUintN(64, cookie + 1n) : cookie, 8);
    h.writeUInt32BE(payload.length, 16);
    s.write(Buffer.concat([h, payload]));
  };
  const done = (err: number, cookie: bigint) => {
    if (!sr) return simple(err, cookie);
    if (err === 0) return chunk(1, 0, cookie, Buffer.alloc(0));
    const p = Buffer.alloc(6);
    p.writeUInt32BE(err, 0);
    chunk(1, 0x8001, cookie, p);
  };
  const infoExport = (opt: number, zeroSize: boolean) => {
    const d = Buffer.alloc(12);
    d.writeUInt16BE(0, 0);
    d.writeBigUInt64BE(zeroSize ? 0n : size, 2);
    d.writeUInt16BE(TF_FLAGS & ~(sr ? 0 : 128), 10);
    optReply(opt, 3, d);
  };

  const option = (opt: number, data: Buffer): void => {
    switch (opt) {
      case 1: {
        // EXPORT_NAME
        if (data.toString() !== 'disk') return void s.destroy();
        const d = Buffer.alloc(noZeroes ? 10 : 134);
        d.writeBigUInt64BE(size, 0);
        d.writeUInt16BE(TF_FLAGS & ~(sr ? 0 : 128), 8);
        s.write(d);
        phase = 'transmission';
        return;
      }
      case 2:
        if (!faults.has('abort-no-ack')) optReply(opt, 1);
        s.end();
        return;
      case 3: {
        if (data.length) return optReply(opt, 0x80000003);
        const n = Buffer.alloc(8);
        n.writeUInt32BE(4, 0);
        n.write('disk', 4);
        optReply(opt, 2, n);
        return optReply(opt, 1);
      }
      case 5:
        return optReply(opt, 0x80000002);
      case 6:
      case 7: {
        if (data.length < 6) return optReply(opt, 0x80000003);
        const nl = data.readUInt32BE(0);
        if (nl > data.length - 6) return optReply(opt, 0x80000003);
        const name = data.subarray(4, 4 + nl).toString();
        if (name !== 'disk') return optReply(opt, 0x80000006);
        infoExport(opt, opt === 6 && faults.has('info-size-zero'));
        optReply(opt, 1);
        if (opt === 7) {
          if (faults.has('pad-after-go')) s.write(Buffer.alloc(4));
          phase = 'transmission';
        }
        return;
      }
      case 8:
        if (data.length) return optReply(opt, 0x80000003);
        sr = true;
        return optReply(opt, 1);
      case 9:
      case 10: {
        if (!sr) return optReply(opt, 0x80000003);
        const count = data.length >= 8 ? data.readUInt32BE(4 + data.readUInt32BE(0)) : 0;
        const queries: string[] = [];
        let o = 8 + data.readUInt32BE(0);
        for (let i = 0; i < count; i++) {
          const l = data.readUInt32BE(o);
          queries.push(data.subarray(o + 4, o + 4 + l).toString());
          o += 4 + l;
        }
        const match = opt === 9 ? count === 0 || queries.some((q) => q === 'base:' || q === 'base:allocation') : queries.includes('base:allocation');
        if (opt === 10) metaSelected = match;
        if (match) {
          const d = Buffer.alloc(4 + 15);
          d.writeUInt32BE(opt === 9 ? 0 : 1, 0);
          d.write('base:allocation', 4);
          optReply(opt, 4, d);
        }
        return optReply(opt, 1);
      }
      default:
        return optReply(opt, faults.has('unknown-option-invalid') ? 0x80000003 : 0x80000001);
    }
  };

  const request = (flags: number, type: number, cookie: bigint, offset: bigint, length: number, payload: Buffer, batchHasDisc: boolean): void => {
    const end = offset + BigInt(length);
    const o = Number(offset);
    switch (type) {
      case 0: {
        if (batchHasDisc && faults.has('disc-drops-inflight')) return;
        if (end > size || flags & ~(1 | 4)) return done(22, cookie);
        const data = disk.subarray(o, o + length);
        if (!sr) return simple(0, cookie, Buffer.from(data));
        const p = (at: number, d: Buffer) => {
          const b = Buffer.alloc(8 + d.length);
          b.writeBigUInt64BE(BigInt(at), 0);
          d.copy(b, 8);
          return b;
        };
        if (length === 0) return chunk(1, 0, cookie, Buffer.alloc(0));
        if (faults.has('overlap-chunks') && length > 1) chunk(0, 1, cookie, p(o, data.subarray(0, 1)));
        chunk(faults.has('double-done') ? 1 : 0, 1, cookie, p(o, Buffer.from(data)));
        return chunk(1, 0, cookie, Buffer.alloc(0));
      }
      case 1:
        if (end > size) return done(faults.has('enospc-as-einval') ? 22 : 28, cookie);
        if (!faults.has('ignore-writes')) payload.copy(disk, o);
        return done(0, cookie);
      case 3:
        return done(0, cookie);
      case 4:
        if (end > size) return done(22, cookie);
        return done(0, cookie);
      case 6:
        if (end > size) return done(faults.has('enospc-as-einval') ? 22 : 28, cookie);
        if (flags & 16) return done(22, cookie);
        disk.fill(0, o, o + length);
        return done(0, cookie);
      case 7: {
        if (!sr || !metaSelected || end > size || length === 0 || flags & ~8) return done(22, cookie);
        // One extent per 64 KiB: data (0) or zero (ZERO|HOLE = 3).
        const ext: [number, number][] = [];
        for (let at = o; at < o + length && ext.length < (flags & 8 ? 1 : 1 << 20); at += 65536) {
          const len = Math.min(65536, o + length - at);
          const zero = disk.subarray(at, at + len).every((b) => b === 0);
          let st = zero || faults.has('zero-on-data') ? 3 : 0;
          if (faults.has('reserved-bits')) st |= 4;
          ext.push([len, st]);
        }
        if (faults.has('extent-past-eof')) ext[ext.length - 1]![0] += 1 << 20;
        const b = Buffer.alloc(4 + 8 * ext.length);
        b.writeUInt32BE(1, 0);
        ext.forEach(([l, f], i) => {
          b.writeUInt32BE(l, 4 + 8 * i);
          b.writeUInt32BE(f, 8 + 8 * i);
        });
        chunk(0, 5, cookie, b);
        return chunk(1, 0, cookie, Buffer.alloc(0));
      }
      default:
        return done(22, cookie);
    }
  };

  let parts: Buffer[] = [];
  let pending = 0;
  let need = 0;
  s.on('data', (d: Buffer) => {
    // Accumulate without quadratic copying while a large WRITE payload arrives.
    parts.push(d);
    pending += d.length;
    if (buf.length + pending < need) return;
    buf = Buffer.concat([buf, ...parts]);
    parts = [];
    pending = 0;
    need = 0;
    const batchHasDisc = phase === 'transmission' && buf.length >= 8 && (() => {
      for (let i = 0; i + 28 <= buf.length; i += 28 + (buf.readUInt16BE(i + 6) === 1 ? buf.readUInt32BE(i + 24) : 0)) if (buf.readUInt16BE(i + 6) === 2) return true;
      return false;
    })();
    for (;;) {
      if (phase === 'flags') {
        if (buf.length < 4) return;
        const f = buf.readUInt32BE(0);
        buf = buf.subarray(4);
        if (f & ~3) return void s.destroy();
        noZeroes = (f & 2) !== 0;
        phase = 'options';
      } else if (phase === 'options') {
        if (buf.length < 16) return;
        if (buf.readBigUInt64BE(0) !== IHAVEOPT) return void s.destroy();
        const len = buf.readUInt32BE(12);
        if (buf.length < 16 + len) return;
        const opt = buf.readUInt32BE(8);
        const data = Buffer.from(buf.subarray(16, 16 + len));
        buf = buf.subarray(16 + len);
        option(opt, data);
      } else {
        if (buf.length < 28) return;
        if (buf.readUInt32BE(0) !== 0x25609513) return void s.destroy();
        const flags = buf.readUInt16BE(4);
        const type = buf.readUInt16BE(6);
        const cookie = buf.readBigUInt64BE(8);
        const offset = buf.readBigUInt64BE(16);
        const length = buf.readUInt32BE(24);
        const plen = type === 1 ? length : 0;
        if (plen > 64 << 20) return void s.destroy();
        if (buf.length < 28 + plen) {
          need = 28 + plen;
          return;
        }
        const payload = Buffer.from(buf.subarray(28, 28 + plen));
        buf = buf.subarray(28 + plen);
        if (type === 2) {
          if (!faults.has('disc-drops-inflight')) s.end();
          else s.destroy();
          return;
        }
        request(flags, type, cookie, offset, length, payload, batchHasDisc);
      }
    }
  });
}
