// The wire codec as pure functions: any split of a client stream parses to the same messages
// (partial frames, docs/requirements/nbd.md §7), and decoding errors carry the offset and the bytes.
import { fc, test } from '@fast-check/vitest';
import { describe, expect, it, vi } from 'vitest';
import { NbdProtocolError, Parser, decodeInfoRequest, decodeMetaContextRequest, type ClientMessage } from '../src/nbd/codec.ts';
import { infoData, metaData, opt, request } from './nbd-helpers.ts';

/** Parses a stream cut at the given points, switching to transmission after GO as a session does. */
function parseSplit(stream: Buffer, cuts: number[]): ClientMessage[] {
  const p = new Parser();
  const out: ClientMessage[] = [];
  const emit = (m: ClientMessage) => {
    out.push(m);
    if (m.kind === 'client-flags') p.phase = 'options';
    if (m.kind === 'option' && m.option === 7) p.phase = 'transmission';
  };
  let last = 0;
  for (const c of [...cuts].sort((a, b) => a - b)) {
    p.parse(stream.subarray(last, c), emit);
    last = c;
  }
  p.parse(stream.subarray(last), emit);
  return out;
}

describe('Parser', () => {
  const stream = Buffer.concat([
    Buffer.from([0, 0, 0, 3]),
    opt(0x7654321, Buffer.from('abcd')),
    opt(6, Buffer.alloc(70_000)), // oversized: skipped, reported
    opt(7, infoData('disk', [3])),
    request(1, 4096, 5, { cookie: 1n, data: Buffer.from('hello') }),
    request(0, 4096, 5, { cookie: 2n }),
    request(1, 0, 0, { cookie: 3n }),
  ]);
  const whole = parseSplit(stream, []);

  it('decodes every message kind', () => {
    expect(whole.map((m) => m.kind)).toEqual(['client-flags', 'option', 'option-too-big', 'option', 'request', 'request', 'request']);
    const w = whole[4] as Extract<ClientMessage, { kind: 'request' }>;
    expect([w.type, w.offset, w.length, w.data?.toString(), w.cookie.readBigUInt64BE(0)]).toEqual([1, 4096, 5, 'hello', 1n]);
  });

  test.prop([fc.array(fc.integer({ min: 0, max: stream.length }), { maxLength: 20 })])('any split gives the same messages', (cuts) => {
    expect(parseSplit(stream, cuts)).toEqual(whole);
  });

  // Clients write a frame in several pieces (libnbd sends an option's length, name and info
  // requests separately): cut the stream into equal pieces of every size up to two headers.
  it('pieces of every size from 1 to 64 bytes give the same messages', () => {
    const bad: number[] = [];
    for (let size = 1; size <= 64; size++) {
      const cuts: number[] = [];
      for (let at = size; at < stream.length; at += size) cuts.push(at);
      if (JSON.stringify(parseSplit(stream, cuts)) !== JSON.stringify(whole)) bad.push(size);
    }
    expect(bad).toEqual([]);
  });

  it('bad magic is an NbdProtocolError with the stream offset and bytes in hex', () => {
    const p = new Parser();
    p.phase = 'transmission';
    const bad = Buffer.concat([request(0, 0, 1), Buffer.from('garbage-garbage-garbage-garb')]);
    let err: unknown;
    try {
      p.parse(bad, () => {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect((err as NbdProtocolError).streamOffset).toBe(28);
    expect((err as Error).message).toMatch(/at stream offset 28, bytes 67617262616765/);
  });
});

/** Bytes memcopied by Buffer's copying entry points while `f` runs (concat, copy, from, set). */
function bytesCopied(f: () => void): number {
  let n = 0;
  const concat = Buffer.concat;
  const copy = Buffer.prototype.copy;
  const spies = [
    vi.spyOn(Buffer, 'concat').mockImplementation((list: readonly Uint8Array[], total?: number) => {
      const out = concat(list, total);
      n += out.length;
      return out;
    }),
    vi.spyOn(Buffer.prototype, 'copy').mockImplementation(function (this: Buffer, ...a: unknown[]) {
      const m = (copy as (...x: unknown[]) => number).apply(this, a);
      n += m;
      return m;
    }),
  ];
  try {
    f();
  } finally {
    for (const s of spies) s.mockRestore();
  }
  return n;
}

describe('Parser cost', () => {
  // A WRITE arriving in socket-sized pieces must cost one copy of its payload, not one copy of
  // everything received so far per piece (32 MiB in 64 KiB pieces: 8 GiB of copying that way).
  it('a 32 MiB WRITE fed in 64 KiB pieces copies each payload byte once', () => {
    const len = 32 * 1024 * 1024;
    const payload = Buffer.alloc(len, 0xab);
    const stream = Buffer.concat([request(1, 0, len, { cookie: 7n, data: payload }), request(3, 0, 0, { cookie: 8n })]);
    const p = new Parser();
    p.phase = 'transmission';
    const got: ClientMessage[] = [];
    const piece = 64 * 1024;
    const copied = bytesCopied(() => {
      for (let at = 0; at < stream.length; at += piece) p.parse(stream.subarray(at, at + piece), (m) => got.push(m));
    });
    expect(got.map((m) => (m.kind === 'request' ? m.type : -1))).toEqual([1, 3]);
    const w = got[0] as Extract<ClientMessage, { kind: 'request' }>;
    expect(w.data!.equals(payload)).toBe(true);
    // The payload once, plus headers that straddle a piece boundary.
    expect(copied).toBeLessThanOrEqual(len + 2 * 28);
    expect(p.buffered).toBe(0);
  });

  it('a WRITE completed while held is emitted on the first parse after release, and counts as buffered', () => {
    const p = new Parser();
    p.phase = 'transmission';
    const got: ClientMessage[] = [];
    const w = request(1, 0, 8, { cookie: 1n, data: Buffer.from('abcdefgh') });
    p.parse(w.subarray(0, 30), (m) => got.push(m));
    p.held = true;
    p.parse(w.subarray(30), (m) => got.push(m));
    expect(got).toEqual([]);
    expect(p.buffered).toBe(8);
    p.held = false;
    p.parse(Buffer.alloc(0), (m) => got.push(m));
    expect(got.length).toBe(1);
    expect((got[0] as Extract<ClientMessage, { kind: 'request' }>).data!.toString()).toBe('abcdefgh');
  });
});

describe('option payload decoders', () => {
  it('INFO/GO: exact lengths, names ≤ 4096', () => {
    expect(decodeInfoRequest(infoData('x', [0, 3]))).toEqual({ name: 'x', infos: [0, 3] });
    expect(() => decodeInfoRequest(Buffer.concat([infoData('x', [1]), Buffer.from([0])]))).toThrow(/needs 9 bytes, got 10/);
    expect(() => decodeInfoRequest(infoData('n'.repeat(4097)))).toThrow(/exceeds 4096/);
    expect(decodeInfoRequest(infoData('n'.repeat(4096))).name.length).toBe(4096);
  });
  it('META_CONTEXT: queries, trailing bytes, truncated queries', () => {
    expect(decodeMetaContextRequest(metaData('d', ['base:allocation', 'qemu:']))).toEqual({ exportName: 'd', queries: ['base:allocation', 'qemu:'] });
    expect(() => decodeMetaContextRequest(metaData('d', ['a']).subarray(0, 12))).toThrow(/query 0 of 1 is missing|past the payload/);
    expect(() => decodeMetaContextRequest(Buffer.concat([metaData('d', []), Buffer.from([1])]))).toThrow(/trailing bytes/);
  });
});
