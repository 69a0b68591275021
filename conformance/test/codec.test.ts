// The strict codec and the raw-socket client: split frames (one byte at a time), 64 pipelined
// requests in one write with interleaved chunks answered out of order, and fuzzing with random
// and mutated replies: never an uncaught exception, always a protocol error with the bytes.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdConnection } from '../nbd/client.ts';
import {
  decodeGreeting,
  decodeOptionReply,
  decodeTransmissionReply,
  type Decoded,
  type PendingRequest,
} from '../nbd/codec.ts';
import { Cmd, Opt } from '../nbd/constants.ts';
import { NbdClientError, NbdProtocolError } from '../nbd/errors.ts';
import { negotiate } from '../nbd/session.ts';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

// ------------------------------------------------------------------ encoders for test replies
const optionReply = (opt: number, type: number, data = Buffer.alloc(0)): Buffer => {
  const h = Buffer.alloc(20);
  h.writeBigUInt64BE(0x0003e889045565a9n, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(type >>> 0, 12);
  h.writeUInt32BE(data.length, 16);
  return Buffer.concat([h, data]);
};
const chunk = (flags: number, type: number, cookie: bigint, payload: Buffer): Buffer => {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(0x668e33ef, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeUInt32BE(payload.length, 16);
  return Buffer.concat([h, payload]);
};
const offsetData = (cookie: bigint, offset: number, data: Buffer, done = false): Buffer => {
  const p = Buffer.alloc(8 + data.length);
  p.writeBigUInt64BE(BigInt(offset));
  data.copy(p, 8);
  return chunk(done ? 1 : 0, 1, cookie, p);
};
const simple = (err: number, cookie: bigint, data?: Buffer): Buffer => {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(0x67446698, 0);
  h.writeUInt32BE(err, 4);
  h.writeBigUInt64BE(cookie, 8);
  return data ? Buffer.concat([h, data]) : h;
};
const greeting = (): Buffer => {
  const b = Buffer.alloc(18);
  b.write('NBDMAGICIHAVEOPT');
  b.writeUInt16BE(3, 16);
  return b;
};
const goReplies = (): Buffer => {
  const info = Buffer.alloc(12);
  info.writeBigUInt64BE(1n << 20n, 2);
  info.writeUInt16BE(1, 10);
  return Buffer.concat([optionReply(Opt.GO, 3, info), optionReply(Opt.GO, 1)]);
};

/** A scripted server: `onRequests` sees every parsed request header and writes what it likes. */
function scriptedServer(onClient: (s: net.Socket, requests: (cb: (reqs: { type: number; cookie: bigint; offset: number; length: number }[]) => void) => void) => void): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'codec-test-'));
  const sock = path.join(dir, 's.sock');
  const srv = net.createServer((s) => {
    s.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let handshakeDone = false;
    let srDone = false;
    let listener: ((reqs: { type: number; cookie: bigint; offset: number; length: number }[]) => void) | undefined;
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!srDone) {
        // client flags (4) + NBD_OPT_STRUCTURED_REPLY (16)
        if (buf.length < 20) return;
        buf = buf.subarray(20);
        srDone = true;
        s.write(optionReply(Opt.STRUCTURED_REPLY, 1));
      }
      if (!handshakeDone) {
        // NBD_OPT_GO: 16-byte header + data
        if (buf.length < 16) return;
        const l = buf.readUInt32BE(12);
        if (buf.length < 16 + l) return;
        buf = buf.subarray(16 + l);
        handshakeDone = true;
        s.write(goReplies());
      }
      const reqs = [];
      while (buf.length >= 28) {
        reqs.push({ type: buf.readUInt16BE(6), cookie: buf.readBigUInt64BE(8), offset: Number(buf.readBigUInt64BE(16)), length: buf.readUInt32BE(24) });
        buf = buf.subarray(28);
      }
      if (reqs.length) listener?.(reqs);
    });
    s.write(greeting());
    onClient(s, (cb) => (listener = cb));
  });
  cleanups.push(() => {
    srv.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return new Promise((r) => srv.listen(sock, () => r(sock)));
}

async function client(sock: string, timeoutMs = 1000): Promise<NbdConnection> {
  const conn = await NbdConnection.connect({ kind: 'unix', path: sock }, { timeoutMs });
  cleanups.push(() => conn.close());
  await negotiate(conn, { exportName: 'disk', infos: [] });
  return conn;
}

const byteAt = (i: number) => (i * 7 + 3) & 0xff;

describe('codec: split frames', () => {
  it('every decoder asks for more bytes on every strict prefix and decodes the whole frame', () => {
    const read: PendingRequest = { type: Cmd.READ, offset: 0n, length: 64 };
    const ctx = (structured: boolean) => ({ structuredReplies: structured, pending: (c: bigint) => (c === 5n ? read : undefined) });
    const data = Buffer.from(Array.from({ length: 64 }, (_, i) => byteAt(i)));
    const frames: [Buffer, (b: Buffer) => Decoded<unknown>][] = [
      [greeting(), (b) => decodeGreeting(b)],
      [optionReply(Opt.LIST, 2, Buffer.from([0, 0, 0, 4, 100, 105, 115, 107])), (b) => decodeOptionReply(b, 0, Opt.LIST)],
      [simple(0, 5n, data), (b) => decodeTransmissionReply(b, 0, ctx(false))],
      [offsetData(5n, 0, data, true), (b) => decodeTransmissionReply(b, 0, ctx(true))],
    ];
    for (const [frame, decode] of frames) {
      for (let k = 0; k < frame.length; k++) expect(decode(frame.subarray(0, k)).ok).toBe(false);
      const full = decode(frame);
      expect(full.ok && full.size).toBe(frame.length);
    }
  });

  it('the client reassembles a handshake and a READ reply written one byte at a time', async () => {
    const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => byteAt(i)));
    const sock = await scriptedServer((s, requests) => {
      const origWrite = s.write.bind(s);
      // Dribble every server byte in its own write, yielding between bytes.
      const queue: number[] = [];
      let busy = false;
      const pump = () => {
        if (busy) return;
        busy = true;
        const step = () => {
          const b = queue.shift();
          if (b === undefined) return void (busy = false);
          origWrite(Buffer.from([b]));
          setImmediate(step);
        };
        step();
      };
      s.write = ((chunkBytes: Buffer) => {
        queue.push(...chunkBytes);
        pump();
        return true;
      }) as typeof s.write;
      requests((reqs) => {
        for (const r of reqs) s.write(Buffer.concat([offsetData(r.cookie, r.offset, data.subarray(0, 500)), offsetData(r.cookie, r.offset + 500, data.subarray(500), true)]));
      });
    });
    const conn = await client(sock, 3000);
    const r = await conn.request({ type: Cmd.READ, offset: 0, length: 1000 });
    expect(r.error).toBe(0);
    expect(r.data?.equals(data)).toBe(true);
  });
});

describe('client: pipelining', () => {
  it('64 requests in one write; replies out of order with chunks of different requests interleaved', async () => {
    let writes = 0;
    const sock = await scriptedServer((s, requests) => {
      s.on('data', () => writes++);
      requests((reqs) => {
        // Reverse order; each READ in two chunks, first halves of all, then second halves.
        const rev = [...reqs].reverse();
        const first = rev.map((r) => offsetData(r.cookie, r.offset, Buffer.alloc(256, r.offset / 512)));
        const second = rev.map((r) => offsetData(r.cookie, r.offset + 256, Buffer.alloc(256, r.offset / 512), true));
        s.write(Buffer.concat([...first, ...second]));
      });
    });
    const conn = await client(sock);
    const before = writes;
    const rs = await conn.pipeline(Array.from({ length: 64 }, (_, i) => ({ type: Cmd.READ, offset: i * 512, length: 512 })));
    expect(rs).toHaveLength(64);
    rs.forEach((r, i) => {
      expect(r.error).toBe(0);
      expect(r.data?.every((b) => b === i)).toBe(true);
    });
    expect(writes - before).toBeLessThanOrEqual(2); // one write from the client (the kernel may split it)
  });

  it('silence is a timeout that says "hang or desync"', async () => {
    const sock = await scriptedServer(() => undefined);
    const conn = await client(sock, 200);
    await expect(conn.request({ type: Cmd.READ, offset: 0, length: 512 })).rejects.toThrow(/hung or the stream is out of sync/);
  });
});

describe('codec: fuzzing', () => {
  const read: PendingRequest = { type: Cmd.READ, offset: 0n, length: 4096 };
  const status: PendingRequest = { type: Cmd.BLOCK_STATUS, offset: 0n, length: 4096 };
  const pending = (c: bigint) => (c === 1n ? read : c === 2n ? status : undefined);

  /** Decodes with every decoder: only a result or an NbdProtocolError with bytes and an offset may come out. */
  function decodeAll(b: Buffer): void {
    const attempts: (() => unknown)[] = [
      () => decodeGreeting(b, 100),
      () => decodeOptionReply(b, 100, Opt.GO),
      () => decodeTransmissionReply(b, 100, { structuredReplies: true, pending }),
      () => decodeTransmissionReply(b, 100, { structuredReplies: false, pending }),
    ];
    for (const a of attempts) {
      try {
        a();
      } catch (e) {
        expect(e).toBeInstanceOf(NbdProtocolError);
        const pe = e as NbdProtocolError;
        expect(pe.bytes.length).toBeGreaterThan(0);
        expect(pe.offset).toBeGreaterThanOrEqual(100);
        expect(pe.message).toMatch(/stream offset \d+, bytes: [0-9a-f]{2}/);
      }
    }
  }

  it('random bytes never throw anything but a protocol error', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => decodeAll(Buffer.from(bytes))), { numRuns: 2000 });
  });

  it('mutated valid replies never throw anything but a protocol error', () => {
    const valid = [
      greeting(),
      optionReply(Opt.GO, 3, Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1])),
      optionReply(Opt.GO, 0x80000001, Buffer.from('nope')),
      simple(0, 1n, Buffer.alloc(4096, 7)),
      offsetData(1n, 0, Buffer.alloc(100, 1)),
      chunk(1, 2, 1n, Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0])),
      chunk(1, 5, 2n, Buffer.from([0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 3])),
      chunk(1, 0x8001, 1n, Buffer.from([0, 0, 0, 22, 0, 2, 104, 105])),
    ];
    const mutation = fc.record({
      which: fc.nat({ max: valid.length - 1 }),
      edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
      cut: fc.option(fc.nat()),
    });
    fc.assert(
      fc.property(mutation, ({ which, edits, cut }) => {
        const b = Buffer.from(valid[which]!);
        for (const [at, v] of edits) b[at % b.length] = v;
        decodeAll(cut === null ? b : b.subarray(0, cut % (b.length + 1)));
      }),
      { numRuns: 3000 },
    );
  });

  it('over a socket, random replies end in a protocol error or a timeout, never an uncaught exception', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 120 }), fc.boolean(), async (bytes, asHeader) => {
        const sock = await scriptedServer((s, requests) => {
          requests((reqs) => {
            const junk = Buffer.from(bytes);
            if (asHeader && junk.length >= 16) {
              junk.writeUInt32BE(0x668e33ef, 0);
              junk.writeBigUInt64BE(reqs[0]!.cookie, 8);
            }
            s.write(junk);
          });
        });
        const conn = await client(sock, 150);
        try {
          const r = await conn.request({ type: Cmd.READ, offset: 0, length: 16 });
          expect(r).toBeDefined(); // a reply that happens to be valid is fine
        } catch (e) {
          const ok = e instanceof NbdProtocolError || (e instanceof NbdClientError && (e.kind === 'timeout' || e.kind === 'closed'));
          expect(ok, String(e)).toBe(true);
          if (e instanceof NbdProtocolError) expect(e.bytes.length).toBeGreaterThan(0);
        }
        for (const c of cleanups.splice(0)) c();
      }),
      { numRuns: 25 },
    );
  });
});
