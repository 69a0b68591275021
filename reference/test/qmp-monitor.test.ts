// The QMP codec, dispatcher and monitor socket (issue 3 outcome 3), without the block graph.
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JsonStreamParser, type Decoded } from '../src/qmp/codec.ts';
import { QmpDispatcher, QmpError } from '../src/qmp/dispatcher.ts';
import { QmpMonitor } from '../src/qmp/monitor.ts';
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
    p.feed('{"x":"' + 'y'.repeat(100), (d) => got.push(d));
    expect(got[2]).toMatchObject({ ok: false, error: expect.stringMatching(/exceeds 64 bytes/) });
    p.feed('{"c":2}', (d) => got.push(d));
    expect(got[3]).toEqual({ ok: true, value: { c: 2 } });
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
