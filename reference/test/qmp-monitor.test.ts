// The QMP codec, dispatcher and monitor socket, without the block graph.
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { JsonStreamParser, type Decoded } from '../src/qmp/codec.ts';
import { QmpDispatcher, QmpError } from '../src/qmp/dispatcher.ts';
import { MAX_QUEUED_REPLY_BYTES, QmpMonitor } from '../src/qmp/monitor.ts';
import { tmpDir } from './nbd-helpers.ts';

describe('JSON stream splitting', () => {
  it('finds objects across chunk boundaries, several per chunk, with braces inside strings', () => {
    const p = new JsonStreamParser();
    const got: Decoded[] = [];
    const text = '{"execute":"a","arguments":{"s":"}{\\"x"}}{"execute"  :\n"b"}  [1,2]';
    for (const ch of text) p.feed(ch, (d) => got.push(d));
    p.feed(' ', (d) => got.push(d));
    expect(got).toEqual([
      { ok: true, value: { execute: 'a', arguments: { s: '}{"x' } } },
      { ok: true, value: { execute: 'b' } },
      { ok: true, value: [1, 2] },
    ]);
  });
  it('reports bad JSON and keeps going; bounds the buffer', () => {
    const p = new JsonStreamParser(64);
    const got: Decoded[] = [];
    p.feed('{"a":,} {"b":1}', (d) => got.push(d));
    expect(got[0]).toMatchObject({ ok: false });
    expect(got[1]).toEqual({ ok: true, value: { b: 1 } });
    // Reported as soon as it outgrows the limit, before it ends; the rest of it is skipped.
    p.feed('{"x":"' + 'y'.repeat(100), (d) => got.push(d));
    expect(got[2]).toMatchObject({ ok: false, error: expect.stringMatching(/exceeds 64 bytes/) });
    p.feed('y'.repeat(100) + '"}{"c":2}', (d) => got.push(d));
    expect(got.slice(3)).toEqual([{ ok: true, value: { c: 2 } }]);
  });
});

/** Feeds `text` whole and one character at a time; both must decode alike. */
function decodeAll(text: string, max?: number): Decoded[] {
  const whole: Decoded[] = [];
  new JsonStreamParser(max).feed(text, (d) => whole.push(d));
  const bytewise: Decoded[] = [];
  const p = new JsonStreamParser(max);
  for (const ch of text) p.feed(ch, (d) => bytewise.push(d));
  expect(bytewise).toEqual(whole);
  return whole;
}
const NEXT = '{"execute":"next"}\n';
const ok: Decoded = { ok: true, value: { execute: 'next' } };
const err = (e: string | RegExp): Decoded => ({ ok: false as const, error: typeof e === 'string' ? e : expect.stringMatching(e) });

// What qemu-storage-daemon 7.2 answers to each (its own words, from a run), and that the command
// after it is answered: json-lexer.c skips to the next structural or control character after a
// lexical error, json-streamer.c ends a text where it balances.
describe('JSON stream resynchronisation (QEMU json-lexer.c / json-streamer.c)', () => {
  const rows: [string, string, Decoded[]][] = [
    ['a line holding only a quote', '"\n', [err(`JSON parse error, stray '"\n'`)]],
    ['an unterminated string', '"abc\n', [err(`JSON parse error, stray '"abc\n'`)]],
    ['a newline inside a string of a command', '{"execute":"x","id":"a\nb"}\n', [err(`JSON parse error, stray '"a\n'`), err('JSON parse error, expecting value')]],
    ['a stray closing brace', '}\n', [err('JSON parse error, expecting value')]],
    ['an unknown keyword', 'tru\n', [err("JSON parse error, invalid keyword 'tru'")]],
    ['a control character', '\u0001', [err(`JSON parse error, stray '\u0001'`)]],
    ['an unfinished list reset by a control character', '[1,2\n\u0001', [err(`JSON parse error, stray '\u0001'`)]],
    ['a bad escape', '{"a":"\\q"}\n', [err(`JSON parse error, stray '"\\q'`), err('JSON parse error, expecting value')]],
    ['a bare number', '1 ', [{ ok: true, value: 1 }]],
    ['trailing garbage after a text', '{"a":1} xyz ', [{ ok: true, value: { a: 1 } }, err("JSON parse error, invalid keyword 'xyz'")]],
  ];
  it.each(rows)('%s: the error, then the next command', (_n, text, expected) => {
    expect(decodeAll(text + NEXT)).toEqual([...expected, ok]);
  });

  it('an id nested 5000 deep: one nesting error (nothing recursed over it), then the next command', () => {
    const deep = '{"execute":"x","id":' + '['.repeat(5000) + ']'.repeat(5000) + '}\n';
    expect(decodeAll(deep + NEXT)).toEqual([err('JSON nesting depth limit exceeded'), ok]);
    const atLimit = '['.repeat(1024) + ']'.repeat(1024);
    expect(decodeAll(atLimit + ' ')[0]!.ok).toBe(true);
  });

  it('a text over the size limit: one error, then the next command, whether it is one string or many tokens', () => {
    const big = '{"execute":"x","arguments":{"s":"' + 'a'.repeat(5000) + '"}}\n';
    expect(decodeAll(big + NEXT, 1024)).toEqual([err(/input exceeds 1024 bytes/), ok]);
    const many = '{"execute":"x","arguments":{"l":[' + '1,'.repeat(3000) + '1]}}\n';
    expect(decodeAll(many + NEXT, 1024)).toEqual([err(/input exceeds 1024 bytes/), ok]);
    const bareString = '"' + 'a'.repeat(5000) + '"\n';
    expect(decodeAll(bareString + NEXT, 1024)).toEqual([err(/input exceeds 1024 bytes/), ok]);
    // An oversized text that never ends its string: the newline (a control character inside a
    // string) ends the skipping, as it ends any string.
    const unterminated = '{"execute":"x","arguments":{"s":"' + 'a'.repeat(5000) + '\n';
    expect(decodeAll(unterminated + NEXT, 1024)).toEqual([err(/input exceeds 1024 bytes/), ok]);
  });

  it('strings: escapes, unicode, single quotes (a QEMU extension); __proto__ is an ordinary key', () => {
    const [d] = decodeAll(`{"a":"\\u00e9\\n\\"","b":'it\\'s',"__proto__":{"polluted":1}}\n`);
    expect(d).toEqual({ ok: true, value: { a: 'é\n"', b: "it's", ['__proto__']: { polluted: 1 } } });
    const v = (d as { value: Record<string, unknown> }).value;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('structure errors are reported and the stream goes on', () => {
    const got = decodeAll('{"a" 1} {1:2} [1 2] {"a":1,"a":2} ' + NEXT);
    expect(got).toEqual([
      err('JSON parse error, missing : in object pair'),
      err('JSON parse error, key is not a string in object'),
      err('JSON parse error, expected separator in list'),
      err("JSON parse error, duplicate key 'a'"),
      ok,
    ]);
  });
});

describe('QMP dispatch (qmp-dispatch.c semantics)', () => {
  const d = new QmpDispatcher();
  d.register('echo', (a) => {
    const v = a.str('value');
    a.finish();
    return { value: v };
  });
  d.register('fail', () => {
    throw new QmpError('DeviceNotFound', "Block job 'x' not found");
  });
  d.register('boom', () => {
    throw new Error('Permission conflict on node');
  });
  it('capabilities first, then commands; errors carry class and desc; ids echoed', async () => {
    const s = { negotiated: false };
    expect(await d.dispatch({ execute: 'echo', arguments: { value: 'x' } }, s)).toEqual({
      error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" },
    });
    expect(await d.dispatch({ execute: 'qmp_capabilities', id: 1 }, s)).toEqual({ return: {}, id: 1 });
    expect((await d.dispatch({ execute: 'qmp_capabilities' }, s)).error?.class).toBe('CommandNotFound');
    expect(await d.dispatch({ execute: 'echo', arguments: { value: 'x' }, id: 'a' }, s)).toEqual({ return: { value: 'x' }, id: 'a' });
    expect((await d.dispatch({ execute: 'echo', arguments: { value: 1 } }, s)).error?.desc).toBe("Invalid parameter type for 'value', expected: string");
    expect((await d.dispatch({ execute: 'echo', arguments: {} }, s)).error?.desc).toBe("Parameter 'value' is missing");
    expect((await d.dispatch({ execute: 'echo', arguments: { value: 'x', z: 1 } }, s)).error?.desc).toBe("Parameter 'z' is unexpected");
    expect((await d.dispatch({ execute: 'nope' }, s)).error).toEqual({ class: 'CommandNotFound', desc: 'The command nope has not been found' });
    expect((await d.dispatch({ execute: 'fail' }, s)).error?.class).toBe('DeviceNotFound');
    expect((await d.dispatch({ execute: 'boom' }, s)).error).toEqual({ class: 'GenericError', desc: 'Permission conflict on node' });
    expect((await d.dispatch([1], s)).error?.desc).toBe('QMP input must be a JSON object');
    expect((await d.dispatch({ foo: 1 }, s)).error?.desc).toBe("QMP input member 'foo' is unexpected");
    expect((await d.dispatch({ arguments: {} }, s)).error?.desc).toBe("QMP input lacks member 'execute'");
  });
});

describe('QMP monitor over a unix socket', () => {
  const t = tmpDir('fleece-qmp-');
  const sock = path.join(t.dir, 'qmp.sock');
  const d = new QmpDispatcher();
  const mon = new QmpMonitor(d);
  d.register('ping', () => {
    mon.emit('PONG', { n: 1 });
    return {};
  });
  beforeAll(() => mon.listen(sock));
  afterAll(async () => {
    await mon.close();
    t.cleanup();
  });
  it('greets, negotiates, answers and broadcasts events to negotiated sessions only', async () => {
    const lines = async (s: net.Socket, n: number): Promise<unknown[]> => {
      let buf = '';
      const out: unknown[] = [];
      return new Promise((resolve, reject) => {
        const t0 = setTimeout(() => reject(new Error(`timeout: ${buf}`)), 3000);
        const on = (c: Buffer) => {
          buf += c.toString();
          let i;
          while ((i = buf.indexOf('\r\n')) >= 0) {
            out.push(JSON.parse(buf.slice(0, i)));
            buf = buf.slice(i + 2);
          }
          if (out.length >= n) {
            clearTimeout(t0);
            s.off('data', on);
            resolve(out);
          }
        };
        s.on('data', on);
      });
    };
    const a = net.connect(sock);
    const b = net.connect(sock);
    const [ga] = await lines(a, 1);
    await lines(b, 1);
    expect(ga).toMatchObject({ QMP: { version: { qemu: { major: 7, minor: 2 } }, capabilities: ['oob'] } });
    a.write('{"execute":"qmp_capabilities"}\n{"execute":"ping","id":5}');
    const r = await lines(a, 3);
    expect(r[0]).toEqual({ return: {} });
    expect(r[1]).toMatchObject({ event: 'PONG', data: { n: 1 }, timestamp: { seconds: expect.any(Number) } });
    expect(r[2]).toEqual({ return: {}, id: 5 });
    b.write('{"execute":"ping"}');
    const rb = await lines(b, 1);
    expect(rb[0]).toMatchObject({ error: { class: 'CommandNotFound' } });
    a.destroy();
    b.destroy();
  });
});

describe('QMP monitor: a client that sends commands and never reads the replies', () => {
  const t = tmpDir('fleece-qmp-');
  const sock = path.join(t.dir, 'qmp.sock');
  const d = new QmpDispatcher();
  const mon = new QmpMonitor(d);
  // A reply of 4 KiB, so a few thousand commands are several MiB of replies.
  d.register('big', () => ({ s: 'x'.repeat(4096) }));
  beforeAll(() => mon.listen(sock));
  afterAll(async () => {
    await mon.close();
    t.cleanup();
  });

  it('stops reading it once its unread replies pass the cap, and answers everything once it reads', async () => {
    const n = 4000; // 16 MiB of replies
    const c = net.connect(sock);
    onTestFinished(() => void c.destroy());
    await new Promise((r) => c.once('connect', r));
    c.pause();
    c.write('{"execute":"qmp_capabilities"}\n');
    const cmd = '{"execute":"big"}\n';
    for (let i = 0; i < n; i++) c.write(cmd);
    // Give the monitor time to take all it will take.
    let peak = 0;
    for (let i = 0; i < 40; i++) {
      await new Promise((r) => setTimeout(r, 25));
      peak = Math.max(peak, mon.queuedReplyBytes);
    }
    // The cap and one reply past it (the one that crossed it); the kernel's buffers hold the rest.
    expect(peak).toBeLessThanOrEqual(MAX_QUEUED_REPLY_BYTES + 8192);
    let replies = 0;
    let buf = '';
    c.on('data', (b: Buffer) => {
      buf += b.toString();
      let i;
      while ((i = buf.indexOf('\r\n')) >= 0) {
        if (buf.startsWith('{"return": {"s"') || buf.startsWith('{"return":{"s"')) replies++;
        buf = buf.slice(i + 2);
      }
    });
    c.resume();
    for (let i = 0; i < 400 && replies < n; i++) await new Promise((r) => setTimeout(r, 25));
    expect(replies).toBe(n);
    c.destroy();
  });
});
