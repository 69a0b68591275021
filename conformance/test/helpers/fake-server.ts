// A tiny NBD server for the tests only: conforming by default, with named faults that each break
// one rule, so every kind of check is seen failing on a known-bad target. Independent of
// reference/ (the judge must not share code with the judged) and deliberately naive.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { DEFAULT_LAYOUT, expectedContent } from '../../targets/image.ts';
import type { RunningTarget, TargetDef } from '../../targets/types.ts';

export const FAULTS = {
  'greeting-flags': 'sets an undefined handshake flag bit',
  'unknown-option-invalid': 'ERR_INVALID instead of ERR_UNSUP for an unknown option',
  'abort-no-ack': 'closes on ABORT without ACK',
  'pad-after-go': '4 stray bytes after the ACK to GO',
  'info-size-zero': 'INFO reports size 0',
  'list-no-ack': 'LIST ends with ERR_UNSUP instead of ACK',
  'starttls-tls-reqd': 'STARTTLS answered with ERR_TLS_REQD in NOTLS mode',
  'info-unknown-type-invalid': 'INFO with an unknown info type is refused',
  'bad-block-size': 'NBD_INFO_BLOCK_SIZE minimum 3 (not a power of 2)',
  'export-name-short-padding': 'EXPORT_NAME reply with 123 zero bytes instead of 124',
  'df-without-sr': 'SEND_DF advertised without structured replies',
  'sr-data-accepted': 'STRUCTURED_REPLY with data is ACKed',
  'meta-before-sr-ok': 'SET_META_CONTEXT accepted before STRUCTURED_REPLY',
  'unknown-namespace-invalid': 'a meta query in an unknown namespace is refused',
  'set-meta-keeps': 'SET_META_CONTEXT with zero queries keeps the old selection',
  'chunks-without-sr': 'structured chunks without structured replies negotiated',
  'simple-read-under-sr': 'READ answered with a simple reply under structured replies',
  'error-zero': 'error chunks carry error value 0',
  'unknown-cmd-ok': 'an unknown command succeeds',
  'ignore-flags': 'unknown and invalid command flags are accepted',
  'ignore-offset': 'READ always returns data from offset 0',
  'drop-after-error': 'hangs up after every error reply',
  'trim-past-end-ok': 'TRIM past the end succeeds',
  'bs-past-end-ok': 'BLOCK_STATUS past the end succeeds',
  'overflow-wraps': 'offset + length is computed modulo 2^64',
  'max-16m': 'READs above 16 MiB fail (below the 32 MiB a client may expect)',
  'big-read-ok': 'READs above the advertised maximum succeed',
  'df-split': 'a DF READ is sent as two chunks',
  'df-eoverflow': 'DF READs fail with EOVERFLOW',
  'flush-fails': 'FLUSH fails with EIO',
  'wz-noop': 'WRITE_ZEROES changes nothing',
  'fua-rejected': 'FUA is refused with EINVAL',
  'multi-conn-private': 'each connection has a private copy of the disk, yet CAN_MULTI_CONN',
  'cache-hangs-up': 'an unadvertised CACHE drops the connection',
  'two-chunks-per-context': 'two BLOCK_STATUS chunks for one context',
  'wrong-cookie': 'replies carry cookie + 1',
  'overlap-chunks': 'structured READ sends an overlapping chunk',
  'ignore-writes': 'WRITE succeeds but stores nothing',
  'disc-drops-inflight': 'no reply to reads that precede DISC in the same packet',
  'enospc-as-einval': 'EINVAL for writes past the end',
  'extent-past-eof': 'last extent goes past the end of the export',
  'zero-on-data': 'ZERO flag on extents that hold data',
  'reserved-bits': 'status bit 2 set',
  'double-done': 'a second DONE chunk after a READ',
  'half-close-drops': 'answers a tick later, and closes at once when the client shuts down its sending side',
  'quadratic-writes': 're-copies everything received so far on every socket read while a WRITE payload arrives',
  'reads-wait-for-writes': 'holds every other request until no WRITE payload is arriving on any connection',
} as const;
export type Fault = keyof typeof FAULTS;

const MAX_PAYLOAD = 32 << 20;

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
  const turns: Turns = { writing: new Set(), waiting: [] };
  const server = net.createServer((s) => {
    conns.add(s);
    s.on('close', () => {
      conns.delete(s);
      for (const w of turns.writing) if (w.socket === s) doneWriting(turns, w);
      turns.waiting = turns.waiting.filter((w) => w.socket !== s);
    });
    s.on('error', () => undefined);
    serve(s, disk, faults, turns);
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

/** 'reads-wait-for-writes': connections receiving a WRITE payload, and those whose next request
 * waits for them to finish. */
interface Turn {
  readonly socket: net.Socket;
  readonly go: () => void;
}
interface Turns {
  writing: Set<Turn>;
  waiting: Turn[];
}
function doneWriting(t: Turns, turn: Turn): void {
  if (!t.writing.delete(turn) || t.writing.size > 0) return;
  for (const w of t.waiting.splice(0)) {
    w.socket.resume();
    w.go();
  }
}

const TF_FLAGS = 1 | 4 | 8 | 32 | 64 | 128 | 256; // HAS_FLAGS FLUSH FUA TRIM WRITE_ZEROES DF MULTI_CONN

function serve(s: net.Socket, shared: Buffer, faults: ReadonlySet<Fault>, turns: Turns): void {
  const f = (x: Fault) => faults.has(x);
  const disk = f('multi-conn-private') ? Buffer.from(shared) : shared;
  let buf = Buffer.alloc(0);
  let phase: 'flags' | 'options' | 'transmission' = 'flags';
  let sr = false;
  let noZeroes = false;
  let metaSelected = false;
  const size = BigInt(disk.length);
  const hs = Buffer.alloc(2);
  hs.writeUInt16BE(f('greeting-flags') ? 7 : 3);
  s.write(Buffer.concat([MAGIC, Buffer.from('IHAVEOPT'), hs]));
  const flagsNow = () => (TF_FLAGS & ~(sr || f('df-without-sr') ? 0 : 128)) >>> 0;
  if (f('half-close-drops')) {
    // Replies leave a tick later, as from an asynchronous backend, and EOF drops them.
    const write = s.write.bind(s) as (b: Buffer) => boolean;
    (s as { write: (b: Buffer) => boolean }).write = (b: Buffer) => {
      if (phase !== 'transmission') return write(b);
      setTimeout(() => !s.destroyed && write(b), 5);
      return true;
    };
    s.on('end', () => s.destroy());
  }

  const optReply = (opt: number, type: number, data: Buffer = Buffer.alloc(0)) => {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(REPLY_MAGIC, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(type >>> 0, 12);
    h.writeUInt32BE(data.length, 16);
    s.write(Buffer.concat([h, data]));
  };
  const cookieOut = (c: bigint) => (f('wrong-cookie') ? BigInt.asUintN(64, c + 1n) : c);
  const simple = (err: number, cookie: bigint, data?: Buffer) => {
    const h = Buffer.alloc(16);
    h.writeUInt32BE(0x67446698, 0);
    h.writeUInt32BE(err, 4);
    h.writeBigUInt64BE(cookieOut(cookie), 8);
    s.write(data ? Buffer.concat([h, data]) : h);
  };
  const chunk = (flags: number, type: number, cookie: bigint, payload: Buffer) => {
    const h = Buffer.alloc(20);
    h.writeUInt32BE(0x668e33ef, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookieOut(cookie), 8);
    h.writeUInt32BE(payload.length, 16);
    s.write(Buffer.concat([h, payload]));
  };
  const structured = () => sr || f('chunks-without-sr');
  const done = (err: number, cookie: bigint) => {
    if (!structured()) simple(err, cookie);
    else if (err === 0) chunk(1, 0, cookie, Buffer.alloc(0));
    else {
      const p = Buffer.alloc(6);
      p.writeUInt32BE(f('error-zero') ? 0 : err, 0);
      chunk(1, 0x8001, cookie, p);
    }
    if (err !== 0 && f('drop-after-error')) s.destroy();
  };
  const infoReplies = (opt: number, infos: number[]) => {
    const d = Buffer.alloc(12);
    d.writeBigUInt64BE(opt === 6 && f('info-size-zero') ? 0n : size, 2);
    d.writeUInt16BE(flagsNow(), 10);
    optReply(opt, 3, d);
    if (infos.includes(3)) {
      const b = Buffer.alloc(14);
      b.writeUInt16BE(3, 0);
      b.writeUInt32BE(f('bad-block-size') ? 3 : 1, 2);
      b.writeUInt32BE(4096, 6);
      // 8 MiB keeps the quadratic fault's test short (its cost already grows ~4x from 4 to 8 MiB).
      b.writeUInt32BE(f('quadratic-writes') ? 8 << 20 : MAX_PAYLOAD, 10);
      optReply(opt, 3, b);
    }
  };

  const option = (opt: number, data: Buffer): void => {
    switch (opt) {
      case 1: {
        // EXPORT_NAME
        if (data.toString() !== 'disk') return void s.destroy();
        const d = Buffer.alloc(noZeroes ? 10 : f('export-name-short-padding') ? 133 : 134);
        d.writeBigUInt64BE(size, 0);
        d.writeUInt16BE(flagsNow(), 8);
        s.write(d);
        phase = 'transmission';
        return;
      }
      case 2:
        if (!f('abort-no-ack')) optReply(opt, 1);
        s.end();
        return;
      case 3: {
        if (data.length) return optReply(opt, 0x80000003);
        const n = Buffer.alloc(8);
        n.writeUInt32BE(4, 0);
        n.write('disk', 4);
        optReply(opt, 2, n);
        return optReply(opt, f('list-no-ack') ? 0x80000001 : 1);
      }
      case 5:
        return optReply(opt, f('starttls-tls-reqd') ? 0x80000005 : 0x80000002);
      case 6:
      case 7: {
        if (data.length < 6) return optReply(opt, 0x80000003);
        const nl = data.readUInt32BE(0);
        if (nl > data.length - 6) return optReply(opt, 0x80000003);
        const name = data.subarray(4, 4 + nl).toString();
        const n = data.readUInt16BE(4 + nl);
        const infos = Array.from({ length: n }, (_, i) => data.readUInt16BE(6 + nl + 2 * i));
        if (name !== 'disk') return optReply(opt, 0x80000006);
        if (f('info-unknown-type-invalid') && infos.some((t) => t > 3)) return optReply(opt, 0x80000003);
        infoReplies(opt, infos);
        optReply(opt, 1);
        if (opt === 7) {
          if (f('pad-after-go')) s.write(Buffer.alloc(4));
          phase = 'transmission';
        }
        return;
      }
      case 8:
        if (data.length && !f('sr-data-accepted')) return optReply(opt, 0x80000003);
        sr = true;
        return optReply(opt, 1);
      case 9:
      case 10: {
        if (!sr && !f('meta-before-sr-ok')) return optReply(opt, 0x80000003);
        const nl = data.readUInt32BE(0);
        const count = data.readUInt32BE(4 + nl);
        const queries: string[] = [];
        let o = 8 + nl;
        for (let i = 0; i < count; i++) {
          const l = data.readUInt32BE(o);
          queries.push(data.subarray(o + 4, o + 4 + l).toString());
          o += 4 + l;
        }
        if (f('unknown-namespace-invalid') && queries.some((q) => q.includes(':') && !q.startsWith('base:'))) return optReply(opt, 0x80000003);
        const match = opt === 9 ? count === 0 || queries.some((q) => q === 'base:' || q === 'base:allocation') : queries.includes('base:allocation');
        if (opt === 10 && !(f('set-meta-keeps') && count === 0)) metaSelected = match;
        if (match) {
          const d = Buffer.alloc(4 + 15);
          d.writeUInt32BE(opt === 9 ? 0 : 1, 0);
          d.write('base:allocation', 4);
          optReply(opt, 4, d);
        }
        return optReply(opt, 1);
      }
      default:
        return optReply(opt, f('unknown-option-invalid') ? 0x80000003 : 0x80000001);
    }
  };

  const pastEnd = (offset: bigint, length: number) => (f('overflow-wraps') ? BigInt.asUintN(64, offset + BigInt(length)) : offset + BigInt(length)) > size;

  const request = (flags: number, type: number, cookie: bigint, offset: bigint, length: number, payload: Buffer, batchHasDisc: boolean): void => {
    const o = Number(offset);
    const known = f('ignore-flags') ? 0xffff : type === 0 ? 1 | 4 : type === 7 ? 1 | 8 : type === 6 ? 1 | 2 : 1;
    if (flags & ~known) return done(22, cookie);
    if (flags & 1 && f('fua-rejected')) return done(22, cookie);
    switch (type) {
      case 0: {
        if (batchHasDisc && f('disc-drops-inflight')) return;
        if (length > (f('max-16m') ? 16 << 20 : f('big-read-ok') ? Infinity : MAX_PAYLOAD)) return done(22, cookie);
        if (pastEnd(offset, length)) return done(22, cookie);
        if (flags & 4 && f('df-eoverflow')) return done(75, cookie);
        const from = f('ignore-offset') ? 0 : o;
        const data = from + length <= disk.length ? Buffer.from(disk.subarray(from, from + length)) : Buffer.alloc(length);
        if (!structured() || f('simple-read-under-sr')) return simple(0, cookie, data);
        const p = (at: number, d: Buffer) => {
          const b = Buffer.alloc(8 + d.length);
          b.writeBigUInt64BE(BigInt.asUintN(64, offset + BigInt(at - o)), 0);
          d.copy(b, 8);
          return b;
        };
        if (length === 0) return chunk(1, 0, cookie, Buffer.alloc(0));
        if (f('overlap-chunks') && length > 1) chunk(0, 1, cookie, p(o, data.subarray(0, 1)));
        if ((f('df-split') || !(flags & 4)) && length >= 1024 && !f('double-done')) {
          // Two chunks (always allowed without DF; with DF only one content chunk is).
          chunk(0, 1, cookie, p(o, data.subarray(0, 512)));
          chunk(0, 1, cookie, p(o + 512, data.subarray(512)));
        } else chunk(f('double-done') ? 1 : 0, 1, cookie, p(o, data));
        return chunk(1, 0, cookie, Buffer.alloc(0));
      }
      case 1:
        if (length > MAX_PAYLOAD) return done(22, cookie);
        if (pastEnd(offset, length)) return done(f('enospc-as-einval') ? 22 : 28, cookie);
        if (!f('ignore-writes')) payload.copy(disk, o);
        return done(0, cookie);
      case 3:
        return done(f('flush-fails') ? 5 : 0, cookie);
      case 4:
        if (pastEnd(offset, length) && !f('trim-past-end-ok')) return done(22, cookie);
        return done(0, cookie);
      case 5:
        if (f('cache-hangs-up')) return void s.destroy();
        return done(22, cookie);
      case 6:
        if (pastEnd(offset, length)) return done(f('enospc-as-einval') ? 22 : 28, cookie);
        if (!f('wz-noop')) disk.fill(0, o, o + length);
        return done(0, cookie);
      case 7: {
        if (!sr || !metaSelected || length === 0) return done(22, cookie);
        if (pastEnd(offset, length) && !f('bs-past-end-ok')) return done(22, cookie);
        // One extent per 64 KiB: data (0) or zero (ZERO|HOLE = 3).
        const ext: [number, number][] = [];
        const lim = Math.min(o + length, disk.length);
        for (let at = o; at < lim && ext.length < (flags & 8 ? 1 : 1 << 20); at += 65536) {
          const len = Math.min(65536, lim - at);
          const zero = disk.subarray(at, at + len).every((b) => b === 0);
          let st = zero || f('zero-on-data') ? 3 : 0;
          if (f('reserved-bits')) st |= 4;
          ext.push([len, st]);
        }
        if (ext.length === 0) ext.push([512, 3]);
        if (f('extent-past-eof')) ext[ext.length - 1]![0] += 1 << 20;
        const b = Buffer.alloc(4 + 8 * ext.length);
        b.writeUInt32BE(1, 0);
        ext.forEach(([l, st], i) => {
          b.writeUInt32BE(l, 4 + 8 * i);
          b.writeUInt32BE(st, 8 + 8 * i);
        });
        chunk(0, 5, cookie, b);
        if (f('two-chunks-per-context')) chunk(0, 5, cookie, b);
        return chunk(1, 0, cookie, Buffer.alloc(0));
      }
      default:
        return done(f('unknown-cmd-ok') ? 0 : 22, cookie);
    }
  };

  let parts: Buffer[] = [];
  let pending = 0;
  let need = 0;
  const turn: Turn = { socket: s, go: () => process() };
  s.on('data', (d: Buffer) => {
    parts.push(d);
    pending += d.length;
    process();
  });
  const process = (): void => {
    if (f('quadratic-writes') && pending > 0) {
      // Known bad: concatenate on every 16 KiB received, so an N-byte payload costs O(N^2)
      // copying (small steps, so the quadratic term dwarfs the transfer whatever the machine).
      for (const part of parts) for (let o = 0; o < part.length; o += 16384) buf = Buffer.concat([buf, part.subarray(o, o + 16384)]);
      parts = [];
      pending = 0;
      if (buf.length < need) return;
    }
    // Accumulate without quadratic copying while a large WRITE payload arrives.
    if (buf.length + pending < need) return;
    buf = Buffer.concat([buf, ...parts]);
    parts = [];
    pending = 0;
    need = 0;
    const batchHasDisc =
      phase === 'transmission' &&
      (() => {
        for (let i = 0; i + 28 <= buf.length; i += 28 + (buf.readUInt16BE(i + 6) === 1 ? buf.readUInt32BE(i + 24) : 0)) if (buf.readUInt16BE(i + 6) === 2) return true;
        return false;
      })();
    for (;;) {
      if (s.destroyed) return;
      if (phase === 'flags') {
        if (buf.length < 4) return;
        const fl = buf.readUInt32BE(0);
        buf = buf.subarray(4);
        if (fl & ~3) return void s.destroy();
        noZeroes = (fl & 2) !== 0;
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
        if (f('reads-wait-for-writes') && type !== 1 && turns.writing.size > 0 && !turns.writing.has(turn)) {
          if (!turns.waiting.includes(turn)) turns.waiting.push(turn);
          s.pause();
          return;
        }
        if (plen > 64 << 20) return void s.destroy();
        if (buf.length < 28 + plen) {
          need = 28 + plen;
          if (f('reads-wait-for-writes') && plen >= 1 << 20) turns.writing.add(turn);
          return;
        }
        const payload = Buffer.from(buf.subarray(28, 28 + plen));
        buf = buf.subarray(28 + plen);
        if (type === 2) {
          if (!f('disc-drops-inflight')) s.end();
          else s.destroy();
          return;
        }
        request(flags, type, cookie, offset, length, payload, batchHasDisc);
        if (type === 1) doneWriting(turns, turn);
      }
    }
  };
}
