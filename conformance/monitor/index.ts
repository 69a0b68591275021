// The monitor suite: what a QMP monitor does with malformed input, read as a table. Each row is
// bytes sent on a fresh connection and what must follow: an error reply, the next command still
// answered (the stream resynchronises, as QEMU's json-lexer.c/json-streamer.c do), and the daemon
// still serving every other client. Graded against QEMU's QMP specification
// (docs/interop/qmp-spec.rst "Server responses", "Synchronization") and QEMU 7.2's behaviour.
// The daemon is started by the suite (fleece serve or qemu-storage-daemon with nothing but a
// monitor): a QEMU socket chardev serves one client at a time, so cases run one by one.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CaseContext, CaseDef, Suite } from '../runner/model.ts';
import { registerSuite } from '../runner/registry.ts';
import { HarnessError } from '../targets/errors.ts';
import { ManagedProcess, requirePeer } from '../targets/process.ts';
import type { RunningTarget } from '../targets/types.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SPEC = 'qmp-spec.rst';

/** How to start a daemon whose QMP monitor listens on a given unix socket. A target may bring its
 * own as `extra.monitor` (the tests' known-bad fake does). */
export interface MonitorFlavor {
  readonly name: string;
  readonly describe: string;
  spawn(qmpPath: string): ManagedProcess;
}

const monitorArgs = (p: string) => ['--chardev', `socket,id=qmp0,path=${p},server=on,wait=off`, '--monitor', 'chardev=qmp0'];

const FLAVORS: readonly MonitorFlavor[] = [
  {
    name: 'reference',
    describe: 'fleece serve with one QMP monitor',
    spawn: (p) => new ManagedProcess('fleece serve', spawn(process.execPath, [path.join(REPO, 'bin/fleece.mjs'), 'serve', ...monitorArgs(p)], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] })),
  },
  {
    name: 'qemu',
    describe: 'qemu-storage-daemon with one QMP monitor',
    spawn: (p) => {
      requirePeer('qemu-storage-daemon');
      return ManagedProcess.spawn('qemu-storage-daemon', 'qemu-storage-daemon', monitorArgs(p));
    },
  },
];

export interface MonitorEnv {
  readonly flavor: MonitorFlavor;
  readonly dir: string;
  readonly qmpPath: string;
  proc: ManagedProcess;
  /** The command line, for reports. */
  readonly command: string;
}

async function startMonitor(flavor: MonitorFlavor, dir: string, timeoutMs: number): Promise<ManagedProcess> {
  const qmpPath = path.join(dir, 'qmp.sock');
  fs.rmSync(qmpPath, { force: true });
  const proc = flavor.spawn(qmpPath);
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(qmpPath)) {
    if (proc.hasExited || Date.now() > deadline) {
      await proc.stop();
      throw new HarnessError(`${flavor.describe} did not open its QMP socket (${proc.exitStatus}):\n${proc.output.trim()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return proc;
}

/** A raw monitor connection: bytes out, JSON texts in (one per line, as QEMU sends them). */
class RawMonitor {
  readonly replies: Array<Record<string, unknown>> = [];
  private buf = '';
  private wake: () => void = () => {};
  closed = false;
  private constructor(readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.buf += d;
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        if (!line) continue;
        try {
          const v = JSON.parse(line) as Record<string, unknown>;
          if (!('event' in v)) this.replies.push(v);
        } catch {
          this.replies.push({ unparsable: line.slice(0, 200) });
        }
      }
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }
  static connect(p: string, timeoutMs: number): Promise<RawMonitor> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection({ path: p });
      const t = setTimeout(() => {
        s.destroy();
        reject(new HarnessError(`no QMP connection to ${p} within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        resolve(new RawMonitor(s));
      });
      s.once('error', (e) => {
        clearTimeout(t);
        reject(new HarnessError(`cannot connect to the QMP socket ${p}: ${e.message}`));
      });
    });
  }
  /** Waits until `f` holds; false on timeout or close. */
  async until(f: () => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!f()) {
      if (this.closed || Date.now() > deadline) return f();
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, Math.min(100, Math.max(1, deadline - Date.now())));
      });
    }
    return true;
  }
  close(): void {
    this.socket.destroy();
  }
}

type Ctx = CaseContext<MonitorEnv>;

const CAPS = '{"execute":"qmp_capabilities"}\n';
const NEXT = '{"execute":"query-version","id":"fleece-next"}\n';

/** A row of the table: what is sent, and how strictly the resync is required. */
interface Row {
  readonly id: string;
  readonly section: string;
  readonly title: string;
  readonly input: () => string;
  /** Sent before qmp_capabilities (the input is a capabilities negotiation itself). */
  readonly beforeCaps?: boolean;
  /** The reply to the input must be an error; and, where given, match this (QEMU 7.2's words). */
  readonly desc?: RegExp;
  /** Large inputs: qemu-storage-daemon 7.2 takes seconds to lex one. */
  readonly large?: boolean;
}

const STRING = (n: number) => 'a'.repeat(n);

const ROWS: readonly Row[] = [
  { id: 'resync/stray-quote', section: 'json-lexer.c IN_RECOVERY', title: 'A line holding only a double quote', input: () => '"\n', desc: /^JSON parse error, stray '"\n'$/ },
  { id: 'resync/unterminated-string', section: 'json-lexer.c IN_RECOVERY', title: 'A string cut by a newline', input: () => '"abc\n', desc: /^JSON parse error/ },
  { id: 'resync/newline-in-string', section: 'json-lexer.c IN_RECOVERY', title: 'A command whose id string holds a raw newline', input: () => '{"execute":"query-version","id":"a\nb"}\n', desc: /^JSON parse error/ },
  { id: 'resync/stray-closer', section: 'json-streamer.c', title: 'A closing brace with nothing open', input: () => '}\n', desc: /^JSON parse error/ },
  { id: 'resync/bad-keyword', section: 'json-parser.c', title: 'An unknown bare word', input: () => 'tru\n', desc: /^JSON parse error, invalid keyword 'tru'$/ },
  { id: 'resync/control-character', section: `${SPEC} "Synchronization"`, title: 'An unfinished list, then a control character (the documented reset)', input: () => '[1,2\n\u0001', desc: /^JSON parse error/ },
  { id: 'resync/not-an-object', section: `${SPEC} "Issuing commands"`, title: 'A JSON text that is not an object', input: () => '[1,2]\n', desc: /^QMP input must be a JSON object$/ },
  { id: 'limits/nesting-5000', section: 'json-streamer.c MAX_NESTING', title: 'An id nested 5000 arrays deep', input: () => `{"execute":"query-version","id":${'['.repeat(5000)}${']'.repeat(5000)}}\n`, desc: /^JSON nesting depth limit exceeded$/ },
  { id: 'limits/oversized-command', section: 'json-streamer.c MAX_TOKEN_SIZE', title: 'A command with a 1.25 MiB string argument', input: () => `{"execute":"query-version","arguments":{"s":"${STRING(1.25 * 2 ** 20)}"}}\n`, large: true },
  { id: 'limits/oversized-garbage', section: 'json-streamer.c MAX_TOKEN_SIZE', title: 'A 1.25 MiB line of one bare word', input: () => `${'x'.repeat(1.25 * 2 ** 20)}\n`, large: true },
  { id: 'capabilities/before-negotiation', section: `${SPEC} "Capabilities negotiation"`, title: 'A command before qmp_capabilities', input: () => '{"execute":"query-version"}\n', beforeCaps: true, desc: /^Expecting capabilities negotiation with 'qmp_capabilities'$/ },
  { id: 'capabilities/enable-not-a-list', section: `${SPEC} "Capabilities negotiation"`, title: "qmp_capabilities with 'enable' a string", input: () => '{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}\n', beforeCaps: true, desc: /^Invalid parameter type for 'enable', expected: array$/ },
  { id: 'capabilities/enable-number', section: `${SPEC} "Capabilities negotiation"`, title: "qmp_capabilities with 'enable': [5]", input: () => '{"execute":"qmp_capabilities","arguments":{"enable":[5]}}\n', beforeCaps: true, desc: /^Invalid parameter type for 'enable\[0\]', expected: string$/ },
  { id: 'capabilities/unknown-argument', section: `${SPEC} "Capabilities negotiation"`, title: 'qmp_capabilities with an unknown argument', input: () => '{"execute":"qmp_capabilities","arguments":{"foo":1}}\n', beforeCaps: true, desc: /^Parameter 'foo' is unexpected$/ },
  { id: 'capabilities/exec-oob-without-oob', section: `${SPEC} "Out-of-band execution"`, title: "exec-oob without the 'oob' capability", input: () => '{"exec-oob":"query-version"}\n', desc: /^QMP input member 'exec-oob' is unexpected$/ },
];

/** One row: send, then (capabilities and) the next command; judge the replies in between. */
async function runRow(ctx: Ctx, row: Row): Promise<void> {
  const { env } = ctx;
  const wait = Math.max(ctx.timeoutMs, row.large ? 60_000 : 3000);
  // The greeting and the negotiation are the harness's own steps: a loaded machine gets room.
  const setupWait = Math.max(wait, 15_000);
  const m = await RawMonitor.connect(env.qmpPath, setupWait);
  ctx.defer(() => m.close());
  if (!(await m.until(() => m.replies.length >= 1, setupWait))) throw new HarnessError(`no QMP greeting from ${env.flavor.describe}`);
  let base = 1;
  if (!row.beforeCaps) {
    m.socket.write(CAPS);
    if (!(await m.until(() => m.replies.length >= 2, setupWait))) throw new HarnessError('qmp_capabilities was not answered');
    base = 2;
  }
  m.socket.write(row.input());
  m.socket.write(row.beforeCaps ? CAPS + NEXT : NEXT);
  const answered = await m.until(() => m.replies.some((r) => r.id === 'fleece-next'), wait);
  const next = m.replies.findIndex((r) => r.id === 'fleece-next');
  const between = m.replies.slice(base, next < 0 ? undefined : next);
  const first = between[0] as { error?: { class?: string; desc?: string } } | undefined;
  const desc = first?.error?.desc;
  ctx.observe(`replies before the next command: ${between.length}${desc !== undefined ? `; the first: ${first!.error!.class}: ${JSON.stringify(desc).slice(0, 160)}` : first ? `; the first: ${JSON.stringify(first).slice(0, 160)}` : ''}`);
  // The daemon itself: a crash is every client's loss. A connection closed under us may be a
  // crash whose exit has not been reported yet: give it a moment.
  if (!answered) for (let i = 0; i < 10 && !env.proc.hasExited; i++) await new Promise((r) => setTimeout(r, 50));
  const alive = !env.proc.hasExited;
  ctx.must(alive, 'the daemon is still running', `it exited: ${env.proc.exitStatus}`);
  if (!alive) {
    ctx.observe(env.proc.output.trim().split('\n').slice(-5).join(' | '));
    env.proc = await startMonitor(env.flavor, env.dir, wait);
    return;
  }
  const other = await RawMonitor.connect(env.qmpPath, wait).catch(() => undefined);
  // A QEMU chardev takes one client at a time: close ours first.
  m.close();
  const greets = other ? await other.until(() => other.replies.length >= 1, wait) : false;
  other?.close();
  ctx.must(greets, 'a new monitor connection is greeted afterwards', other ? 'no greeting' : 'connection refused');
  ctx.should(first?.error !== undefined, 'the input is answered with an error', first ? JSON.stringify(first).slice(0, 200) : 'no reply at all');
  if (row.desc && desc !== undefined) ctx.check('MAY', row.desc.test(desc), `the error says what QEMU 7.2 says (${row.desc.source})`, JSON.stringify(desc).slice(0, 200));
  ctx.should(answered && m.replies[next]?.return !== undefined, 'the next command on the same connection is answered (the stream resynchronises)', answered ? JSON.stringify(m.replies[next]).slice(0, 200) : `no answer within ${wait} ms${m.closed ? '; the connection was closed' : ''}`);
}

function rowCase(row: Row): CaseDef<MonitorEnv> {
  return {
    id: `monitor/${row.id}`,
    section: row.section,
    level: 'MUST',
    title: row.title,
    description: `Sends ${JSON.stringify(row.input().slice(0, 60))}${row.input().length > 60 ? `... (${row.input().length} bytes)` : ''}${row.beforeCaps ? ' before capabilities negotiation' : ''}, then ${row.beforeCaps ? 'qmp_capabilities and ' : ''}query-version.`,
    expectation: "MUST: the daemon keeps running and greets a new connection. SHOULD: an error reply, then the next command answered on the same connection. MAY: QEMU 7.2's wording.",
    exclusive: true,
    run: (ctx) => runRow(ctx, row),
  };
}

/** A client that sends commands and never reads: the daemon must not queue replies without bound. */
const unreadReplies: CaseDef<MonitorEnv> = {
  id: 'monitor/limits/unread-replies',
  section: 'QEMU monitor/qmp.c QMP_REQ_QUEUE_LEN_MAX',
  level: 'SHOULD',
  title: 'A client that sends 16 MiB of commands and reads nothing',
  description: 'Writes 16 MiB of query-version commands without reading a reply, waits 2 s, and samples the daemon\'s resident memory (/proc/PID/status) before and after.',
  expectation: 'The daemon stops reading from that client (QEMU suspends the monitor at 8 queued requests) instead of growing: resident memory grows by less than 64 MiB. The daemon keeps greeting new connections.',
  exclusive: true,
  async run(ctx) {
    const pid = ctx.env.proc.child.pid;
    const rss = () => {
      const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
      return m ? Number(m[1]) * 1024 : NaN;
    };
    const before = rss();
    const m = await RawMonitor.connect(ctx.env.qmpPath, 10_000);
    ctx.defer(() => m.close());
    m.socket.pause();
    const cmd = Buffer.from('{"execute":"query-version"}\n');
    const block = Buffer.concat(Array.from({ length: 1 << 14 }, () => cmd)); // 448 KiB
    let sent = 0;
    m.socket.write(CAPS);
    while (sent < 16 << 20) {
      m.socket.write(block);
      sent += block.length;
    }
    let peak = before;
    for (let i = 0; i < 20; i++) {
      await new Promise((r) => setTimeout(r, 100));
      peak = Math.max(peak, rss());
    }
    const grew = peak - before;
    ctx.observe(`resident memory ${(before / 2 ** 20).toFixed(0)} MiB before, ${(peak / 2 ** 20).toFixed(0)} MiB at most while ${(sent / 2 ** 20).toFixed(0)} MiB of commands were sent and no reply read; ${(m.socket.writableLength / 2 ** 20).toFixed(1)} MiB of them still waiting in this client`);
    ctx.must(!ctx.env.proc.hasExited, 'the daemon is still running', `it exited: ${ctx.env.proc.exitStatus}`);
    ctx.should(grew < 64 << 20, 'resident memory grows by less than 64 MiB', `${(grew / 2 ** 20).toFixed(0)} MiB`);
    m.close();
  },
};

export const monitorCases: readonly CaseDef<MonitorEnv>[] = [...ROWS.map((r) => rowCase(r)), unreadReplies];

function findMonitorFlavor(target: RunningTarget): MonitorFlavor | undefined {
  const own = target.extra?.monitor as MonitorFlavor | undefined;
  if (own && typeof own.spawn === 'function') return own;
  // qemu-nbd has no monitor; every other qemu... target is qemu-storage-daemon.
  if (target.name.startsWith('qemu') && target.name !== 'qemu-nbd') return FLAVORS[1]!;
  return target.name.startsWith('reference') ? FLAVORS[0]! : undefined;
}

function flavorFor(target: RunningTarget): MonitorFlavor {
  const f = findMonitorFlavor(target);
  if (!f) throw new HarnessError(notMonitorTarget(target));
  return f;
}

const notMonitorTarget = (target: RunningTarget) =>
  `it starts its own daemon with a QMP monitor, for the reference... and qemu... targets; ${target.name} has no monitor it can start`;

export const monitorSuite: Suite<MonitorEnv> = {
  name: 'monitor',
  description: 'QMP monitor robustness: malformed input, limits, capabilities negotiation (QEMU json-lexer.c/json-streamer.c, qmp-spec.rst)',
  roles: [],
  cases: monitorCases,
  appliesTo: (target) => (findMonitorFlavor(target) ? undefined : notMonitorTarget(target)),
  async setup(target, opts) {
    const flavor = flavorFor(target);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-monitor-'));
    const qmpPath = path.join(dir, 'qmp.sock');
    const proc = await startMonitor(flavor, dir, Math.max(opts.timeoutMs, 20_000));
    return { flavor, dir, qmpPath, proc, command: `${flavor.describe}: ${proc.child.spawnargs.join(' ')}` };
  },
  async teardown(env) {
    await env.proc.stop();
    fs.rmSync(env.dir, { recursive: true, force: true });
  },
  describeEnv: (env) => ({ daemon: env.flavor.describe, command: env.command }),
};

registerSuite(monitorSuite);
