// Malformed QMP never takes the daemon down, and the stream resynchronises: after each text
// below, `fleece serve` answers with an error and then answers the next command, as
// qemu-storage-daemon 7.2 does (run beside it). Each of the first rows once killed the daemon
// and every export with it.
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from './daemon-helpers.ts';
import { tmpDir } from './nbd-helpers.ts';

const CAPS = '{"execute":"qmp_capabilities"}\n';
const AFTER = '{"execute":"query-version","id":"after"}\n';

interface Probe {
  readonly name: string;
  /** Sent first on a fresh connection (before capabilities when `beforeCaps`). */
  readonly text: string;
  readonly beforeCaps?: boolean;
  /** The reference's first reply to it. */
  readonly error: RegExp;
  /** Not sent to QEMU, whose limits differ (64 MiB texts). */
  readonly referenceOnly?: boolean;
}

const PROBES: readonly Probe[] = [
  { name: 'qmp_capabilities with enable as a string', text: '{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}\n', beforeCaps: true, error: /^Invalid parameter type for 'enable', expected: array$/ },
  { name: 'qmp_capabilities with enable: [5]', text: '{"execute":"qmp_capabilities","arguments":{"enable":[5]}}\n', beforeCaps: true, error: /^Invalid parameter type for 'enable\[0\]', expected: string$/ },
  { name: 'qmp_capabilities with an unknown argument', text: '{"execute":"qmp_capabilities","arguments":{"foo":1}}\n', beforeCaps: true, error: /^Parameter 'foo' is unexpected$/ },
  { name: 'an id nested 5000 arrays deep', text: '{"execute":"query-version","id":' + '['.repeat(5000) + ']'.repeat(5000) + '}\n', error: /^JSON nesting depth limit exceeded$/ },
  { name: 'a line holding only a quote', text: '"\n', error: /^JSON parse error, stray '"\n'$/ },
  { name: 'a text over the monitor limit (2 MiB)', text: '{"execute":"query-version","arguments":{"s":"' + 'a'.repeat(2 << 20) + '"}}\n', error: /input exceeds 1048576 bytes/, referenceOnly: true },
  { name: 'a 2 MiB line of garbage', text: 'x'.repeat(2 << 20) + '\n', error: /input exceeds 1048576 bytes/, referenceOnly: true },
  { name: 'exec-oob without the oob capability', text: '{"exec-oob":"query-version"}\n', error: /^QMP input member 'exec-oob' is unexpected$/ },
];

/** Sends the probe, then capabilities (where needed) and one more command; returns the replies
 * before the one to that command, or throws when it never comes. */
async function probe(sock: string, p: Probe): Promise<Array<{ error?: { desc: string } }>> {
  const s = net.connect(sock);
  try {
    let buf = '';
    const lines: Array<Record<string, unknown>> = [];
    let wake = () => {};
    s.on('data', (d) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const l = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (l) lines.push(JSON.parse(l));
      }
      wake();
    });
    const until = async (f: () => boolean, what: string) => {
      const t0 = Date.now();
      while (!f()) {
        if (Date.now() - t0 > 10_000) throw new Error(`${what}: no answer in 10 s; got ${JSON.stringify(lines).slice(0, 500)}`);
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 100);
        });
      }
    };
    await until(() => lines.length >= 1, 'greeting');
    if (!p.beforeCaps) {
      s.write(CAPS);
      await until(() => lines.length >= 2, 'qmp_capabilities');
    }
    s.write(p.text);
    s.write(p.beforeCaps ? CAPS + AFTER : AFTER);
    await until(() => lines.some((l) => l.id === 'after'), p.name);
    const after = lines.find((l) => l.id === 'after')!;
    expect(after.return, JSON.stringify(after)).toBeDefined();
    const first = p.beforeCaps ? 1 : 2;
    return lines.slice(first, lines.indexOf(after)).filter((l) => !('event' in l)) as Array<{ error?: { desc: string } }>;
  } finally {
    s.destroy();
  }
}

describe.each(['fleece', 'qsd'] as const)('QMP robustness: %s', (kind) => {
  const t = tmpDir('fleece-qmp-');
  const sock = path.join(t.dir, 'qmp.sock');
  let d: Daemon;
  beforeAll(async () => {
    d = await startDaemon(kind, ['--chardev', `socket,id=m,path=${sock},server=on,wait=off`, '--monitor', 'chardev=m'], sock);
  });
  afterAll(async () => {
    await d?.kill();
    t.cleanup();
  });

  it.each(PROBES.filter((p) => kind === 'fleece' || !p.referenceOnly).map((p) => [p.name, p] as const))('%s: an error, then the next command is answered', async (_n, p) => {
    const before = await probe(sock, p);
    expect(before.length).toBeGreaterThanOrEqual(1);
    expect(before[0]!.error, JSON.stringify(before[0])).toBeDefined();
    if (kind === 'fleece') {
      expect(before[0]!.error!.desc).toMatch(p.error);
      // One answer per text: the rest of a refused text is skipped, not answered piece by piece.
      expect(before.length).toBe(p.beforeCaps ? 2 : 1);
    }
  });

  it('is still running and serving a new connection', async () => {
    const r = await probe(sock, { name: 'a stray brace', text: '}\n', error: /expecting value/ });
    expect(r[0]!.error).toBeDefined();
    expect(d.proc.exitCode).toBeNull();
  });
});
