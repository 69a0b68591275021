// Starting and stopping server processes for managed targets: private sockets in a temp dir,
// readiness by connecting, logs kept for diagnostics, SIGTERM then SIGKILL on stop.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { HarnessError } from './errors.ts';
import type { Address } from '../nbd/client.ts';
import { formatAddress } from '../nbd/client.ts';
import { peerCommand, recordStarted } from './peers.ts';

const found = new Map<string, boolean>();

/** Fails (never skips) when a peer is missing: the suite must not silently test less. */
export function requirePeer(command: string): void {
  command = peerCommand(command);
  let ok = found.get(command);
  if (ok === undefined) {
    ok = spawnSync('sh', ['-c', `command -v '${command}'`], { stdio: 'ignore' }).status === 0;
    found.set(command, ok);
  }
  if (!ok) throw new HarnessError(`required peer command '${command}' is not installed: run \`npm run peers\``);
}

export class ManagedProcess {
  private out = '';
  private exited: { code: number | null; signal: string | null } | undefined;
  private readonly exitPromise: Promise<void>;

  constructor(
    readonly label: string,
    readonly child: ChildProcess,
  ) {
    const keep = (d: Buffer) => {
      this.out += d.toString('utf8');
      if (this.out.length > 64_000) this.out = this.out.slice(-32_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exitPromise = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exited = { code, signal };
        resolve();
      });
      child.on('error', (e) => {
        this.out += `\nspawn error: ${e.message}`;
        this.exited = { code: null, signal: null };
        resolve();
      });
    });
  }

  static spawn(label: string, command: string, args: string[], env?: NodeJS.ProcessEnv): ManagedProcess {
    // A QEMU peer runs from the path the user chose (--qemu-nbd PATH, FLEECE_QEMU_NBD).
    command = peerCommand(command);
    requirePeer(command);
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
    recordStarted(`${label}: ${[command, ...args].join(' ')}`);
    return new ManagedProcess(label, child);
  }

  get output(): string {
    return this.out;
  }

  get hasExited(): boolean {
    return this.exited !== undefined;
  }

  get exitStatus(): string {
    return this.exited ? (this.exited.signal ? `signal ${this.exited.signal}` : `exit code ${this.exited.code}`) : 'running';
  }

  async stop(graceMs = 2000): Promise<void> {
    if (this.exited) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exitPromise;
    clearTimeout(t);
  }
}

function tryConnect(address: Address): Promise<boolean> {
  return new Promise((resolve) => {
    const s = address.kind === 'unix' ? net.createConnection({ path: address.path }) : net.createConnection({ host: address.host, port: address.port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Waits for a daemon to create `p` (a QMP socket or a pidfile it writes once every option is
 * open); a daemon that exits first, or a timeout, is a harness error with its output. */
export async function waitFile(p: string, proc: ManagedProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(p)) {
    if (proc.hasExited) throw new HarnessError(`${proc.label} exited (${proc.exitStatus}) before creating ${p}:\n${proc.output.trim()}`);
    if (Date.now() > deadline) throw new HarnessError(`${proc.label} did not create ${p} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until `address` accepts connections, or fails with the process output. */
export async function waitListening(address: Address, proc: ManagedProcess | undefined, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc?.hasExited) throw new HarnessError(`${proc.label} exited (${proc.exitStatus}) before listening on ${formatAddress(address)}:\n${proc.output.trim()}`);
    if ((address.kind === 'tcp' || fs.existsSync(address.path)) && (await tryConnect(address))) return;
    if (Date.now() > deadline) {
      throw new HarnessError(`${proc?.label ?? 'server'} did not listen on ${formatAddress(address)} within ${timeoutMs} ms${proc ? `:\n${proc.output.trim()}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A TCP port that was free a moment ago on 127.0.0.1 (for servers that cannot take port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}
