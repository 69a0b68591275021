// Test helpers for `fleece serve` and qemu-storage-daemon: spawn either with the same command
// line, talk QMP to it, normalise x-debug-query-block-graph for edge-by-edge comparison.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requirePeer } from './nbd-helpers.ts';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const FLEECE = path.join(REPO, 'bin/fleece.mjs');

export interface Daemon {
  readonly proc: ChildProcess;
  stderr(): string;
  exited: Promise<number | null>;
  kill(): Promise<void>;
}

/** Starts `fleece serve ARGS` or `qemu-storage-daemon ARGS`; resolves once `waitFor` exists. */
export async function startDaemon(kind: 'fleece' | 'qsd', args: string[], waitFor: string, timeoutMs = 15_000): Promise<Daemon> {
  let proc: ChildProcess;
  if (kind === 'qsd') {
    requirePeer('qemu-storage-daemon');
    proc = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } else {
    proc = spawn(process.execPath, [FLEECE, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'], cwd: REPO });
  }
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  let done = false;
  void exited.then(() => (done = true));
  const t0 = Date.now();
  while (!fs.existsSync(waitFor)) {
    if (done) throw new Error(`${kind} exited before ${waitFor} appeared: ${err}`);
    if (Date.now() - t0 > timeoutMs) {
      proc.kill('SIGKILL');
      throw new Error(`${kind}: ${waitFor} did not appear in ${timeoutMs} ms: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    proc,
    exited,
    stderr: () => err,
    async kill() {
      if (!done) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

/** Runs `fleece serve ARGS` to completion (for configurations that must fail). */
export function runServe(args: string[], timeoutMs = 15_000): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [FLEECE, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'], cwd: REPO });
    let err = '';
    p.stderr!.on('data', (d) => (err += d));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.once('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stderr: err });
    });
  });
}

export interface QmpReply {
  return?: unknown;
  error?: { class: string; desc: string };
}

export class QmpClient {
  readonly events: { event: string; data?: Record<string, unknown> }[] = [];
  private buf = '';
  private pending: ((m: QmpReply) => void)[] = [];
  private eventWaiters: (() => void)[] = [];
  greeting: unknown;
  private constructor(private readonly s: net.Socket) {}

  /** Connects, retrying for a while: a unix socket file exists from bind(), a moment before
   * listen(), and a connect in between is refused. */
  static async connect(sock: string, timeoutMs = 10_000): Promise<QmpClient> {
    const t0 = Date.now();
    for (;;) {
      try {
        return await QmpClient.connectOnce(sock);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if ((code !== 'ECONNREFUSED' && code !== 'ENOENT') || Date.now() - t0 > timeoutMs) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  private static async connectOnce(sock: string): Promise<QmpClient> {
    const s = net.connect(sock);
    const c = new QmpClient(s);
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      let greeted = false;
      s.on('data', (d) => {
        c.buf += d.toString();
        let i;
        while ((i = c.buf.indexOf('\n')) >= 0) {
          const line = c.buf.slice(0, i).trim();
          c.buf = c.buf.slice(i + 1);
          if (!line) continue;
          const m = JSON.parse(line);
          if (!greeted) {
            greeted = true;
            c.greeting = m;
            resolve();
          } else if (m.event) {
            c.events.push(m);
            for (const w of c.eventWaiters.splice(0)) w();
          } else c.pending.shift()?.(m);
        }
      });
    });
    const r = await c.execute('qmp_capabilities');
    if (r.error) throw new Error(`qmp_capabilities: ${r.error.desc}`);
    return c;
  }

  execute(cmd: string, args?: Record<string, unknown>): Promise<QmpReply> {
    return new Promise((resolve) => {
      this.pending.push(resolve);
      this.s.write(JSON.stringify(args ? { execute: cmd, arguments: args } : { execute: cmd }) + '\n');
    });
  }

  async ok(cmd: string, args?: Record<string, unknown>): Promise<unknown> {
    const r = await this.execute(cmd, args);
    if (r.error) throw new Error(`${cmd}: ${r.error.class}: ${r.error.desc}`);
    return r.return;
  }

  async waitEvent(name: string, timeoutMs = 5000): Promise<Record<string, unknown> | undefined> {
    const t0 = Date.now();
    for (;;) {
      const e = this.events.find((x) => x.event === name);
      if (e) return e.data;
      if (Date.now() - t0 > timeoutMs) throw new Error(`no ${name} event in ${timeoutMs} ms; saw ${this.events.map((x) => x.event).join(', ')}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 100);
        this.eventWaiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  close(): void {
    this.s.destroy();
  }
}

export interface GraphInfo {
  nodes: { id: number; type: string; name: string }[];
  edges: { parent: number; child: number; name: string; perm: string[]; 'shared-perm': string[] }[];
}

/**
 * x-debug-query-block-graph → edge key → "perm | shared", with permission lists sorted. A
 * block-backend parent (unnamed for exports) is named by what it points at, so the two
 * implementations' numbering and auto-generated names do not matter.
 */
export function normaliseGraph(g: GraphInfo): Map<string, string> {
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const label = (id: number): string => {
    const n = byId.get(id)!;
    // QEMU 7.2 calls a node 'block-driver' (XDbgBlockGraphNodeType); accept either spelling here
    // and compare the types separately.
    if (n.type === 'block-node' || n.type === 'block-driver') return n.name.startsWith('#') ? '#implicit' : n.name;
    return `${n.type}${n.name ? `:${n.name}` : ''}`;
  };
  const out = new Map<string, string>();
  for (const e of g.edges) {
    const key = `${label(e.parent)} -[${e.name}]-> ${label(e.child)}`;
    out.set(key, `perm=${[...e.perm].sort().join(',')} shared=${[...e['shared-perm']].sort().join(',')}`);
  }
  return out;
}

/** Differences between two normalised graphs, one line per edge that differs. */
export function diffGraphs(a: Map<string, string>, b: Map<string, string>): string[] {
  const keys = new Set([...a.keys(), ...b.keys()]);
  const out: string[] = [];
  for (const k of [...keys].sort()) if (a.get(k) !== b.get(k)) out.push(`${k}: ${a.get(k) ?? '(missing)'} vs ${b.get(k) ?? '(missing)'}`);
  return out;
}
