// A tiny QMP monitor for the tests only, run as its own process so a crash is a crash: one JSON
// text per line, QEMU's greeting and capabilities negotiation, query-version, and named faults
// that each break one thing the monitor suite checks. Independent of reference/ and naive.
//   node --import tsx fake-qmp.ts SOCKET [FAULT,...]
import fs from 'node:fs';
import net from 'node:net';

export const QMP_FAULTS = {
  'crash-on-deep-nesting': 'exits when a text nests more than 1000 deep (as a recursive parser overflowing its stack)',
  'no-resync': 'after the first malformed text, answers nothing more on that connection',
  'silent-errors': 'drops malformed texts without an error reply',
  'unbounded-replies': 'keeps reading and answering a client that reads nothing',
} as const;
export type QmpFault = keyof typeof QMP_FAULTS;

function main(): void {
  const [sock, faultList = ''] = process.argv.slice(2);
  if (!sock) {
    process.stderr.write('usage: fake-qmp.ts SOCKET [FAULT,...]\n');
    process.exit(2);
  }
  const faults = new Set(faultList.split(',').filter(Boolean));
  fs.rmSync(sock, { force: true });
  const server = net.createServer((s) => {
    let buf = '';
    let negotiated = false;
    let broken = false;
    s.setEncoding('utf8');
    s.on('error', () => undefined);
    const send = (m: unknown) => {
      s.write(JSON.stringify(m) + '\r\n');
      if (!faults.has('unbounded-replies') && s.writableLength > 1 << 20) s.pause();
    };
    s.on('drain', () => s.resume());
    send({ QMP: { version: { qemu: { micro: 0, minor: 2, major: 7 }, package: 'fake' }, capabilities: ['oob'] } });
    s.on('data', (d: string) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).replace(/[\u0000-\u001f]/g, '').trim();
        buf = buf.slice(i + 1);
        if (!line || broken) continue;
        if (depth(line) > 1000) {
          if (faults.has('crash-on-deep-nesting')) process.exit(70);
          // Refused before anything recurses over it (JSON.stringify of the echoed id would not survive it).
          send({ error: { class: 'GenericError', desc: 'JSON nesting depth limit exceeded' } });
          continue;
        }
        let v: unknown;
        try {
          v = JSON.parse(line);
        } catch {
          if (faults.has('no-resync')) broken = true;
          if (!faults.has('silent-errors')) send({ error: { class: 'GenericError', desc: 'JSON parse error' } });
          continue;
        }
        const r = v as { execute?: unknown; id?: unknown; arguments?: unknown } | null;
        const id = r && typeof r === 'object' && 'id' in r ? { id: r.id } : {};
        if (!r || typeof r !== 'object' || Array.isArray(r)) send({ error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
        else if (r.execute === 'qmp_capabilities') {
          const a = (r.arguments ?? {}) as Record<string, unknown>;
          const enable = a.enable;
          if (negotiated) send({ error: { class: 'CommandNotFound', desc: 'Capabilities negotiation is already complete, command ignored' }, ...id });
          else if (Object.keys(a).some((k) => k !== 'enable') || (enable !== undefined && (!Array.isArray(enable) || enable.some((e) => e !== 'oob')))) send({ error: { class: 'GenericError', desc: 'bad arguments' }, ...id });
          else {
            negotiated = true;
            send({ return: {}, ...id });
          }
        } else if (!negotiated) send({ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" }, ...id });
        else if (r.execute === 'query-version' && (r.arguments === undefined || Object.keys(r.arguments as object).length === 0)) send({ return: { qemu: { micro: 0, minor: 2, major: 7 }, package: 'fake' }, ...id });
        else send({ error: { class: 'GenericError', desc: 'not supported' }, ...id });
      }
    });
  });
  server.listen(sock);
}

/** The deepest nesting of brackets and braces outside strings. */
function depth(text: string): number {
  let d = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '[' || c === '{') max = Math.max(max, ++d);
    else if (c === ']' || c === '}') d--;
  }
  return max;
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) main();
