// Permission targets: a storage daemon with nothing but a QMP monitor and an NBD server, in a
// private directory with empty images, started fresh for each case (a permission case is a QMP
// session that builds a graph from nothing). `reference` is `fleece serve` (the `overlay` driver
// stands in for qcow2, docs/requirements/qemu-fleecing.md §5 notes), `qemu` is qemu-storage-daemon 7.2.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { QmpClient } from '../qmp/client.ts';
import { HarnessError } from '../targets/errors.ts';
import { ManagedProcess, requirePeer } from '../targets/process.ts';
import { peerCommand, recordStarted } from '../targets/peers.ts';
import type { RunningTarget, TargetDef, TargetStartOptions } from '../targets/types.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SIZE = 64 * 1024 * 1024;

export interface PermSession {
  readonly qmp: QmpClient;
  readonly dir: string;
  /** The blockdev-add driver this daemon uses for the model's qcow2 nodes. */
  readonly qcow2Driver: string;
  /** Options added to every `file` node the aliasing and locking cases create (a known-bad
   * target's UNSAFE x-no-storage-identity, or a known-bad flavor's locking=off). */
  readonly fileOptions?: Readonly<Record<string, unknown>>;
  /** Path of the image behind a `file` node of this name (created on demand). */
  image(nodeName: string): string;
  exited(): string | undefined;
  logs(): string;
  stop(): Promise<void>;
}

export interface PermFlavor {
  readonly name: string;
  readonly summary: string;
  readonly peers: readonly string[];
  start(dir: string, timeoutMs: number): Promise<PermSession>;
}

async function startDaemon(label: string, command: string, args: string[], dir: string, timeoutMs: number, qcow2Driver: string, makeImage: (p: string) => void, fileOptions?: Record<string, unknown>): Promise<PermSession> {
  const qmpPath = path.join(dir, 'qmp.sock');
  const proc = command === 'fleece'
    ? new ManagedProcess(label, spawn(process.execPath, [path.join(REPO, 'bin/fleece.mjs'), 'serve', ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] }))
    : ManagedProcess.spawn(label, command, args);
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(qmpPath)) {
    if (proc.hasExited || Date.now() > deadline) {
      await proc.stop();
      throw new HarnessError(`${label} did not open its QMP socket (${proc.exitStatus}):\n${proc.output.trim()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(qmpPath);
    const addr = { addr: { type: 'unix', data: { path: path.join(dir, 'nbd.sock') } } };
    recordStarted(`${label} QMP: ${JSON.stringify({ execute: 'nbd-server-start', arguments: addr })}`);
    await qmp.ok('nbd-server-start', addr);
  } catch (e) {
    await proc.stop();
    throw new HarnessError(`${label}: ${(e as Error).message}\n${proc.output.trim()}`);
  }
  return {
    qmp,
    dir,
    qcow2Driver,
    ...(fileOptions ? { fileOptions } : {}),
    image(nodeName) {
      const p = path.join(dir, `${nodeName.replace(/[^A-Za-z0-9_-]/g, '_')}.img`);
      if (!fs.existsSync(p)) makeImage(p);
      return p;
    },
    exited: () => (proc.hasExited ? proc.exitStatus : undefined),
    logs: () => proc.output,
    async stop() {
      qmp.close();
      await proc.stop();
    },
  };
}

const monitorArgs = (dir: string) => ['--chardev', `socket,id=qmp0,path=${path.join(dir, 'qmp.sock')},server=on,wait=off`, '--monitor', 'chardev=qmp0'];

export const PERM_FLAVORS: readonly PermFlavor[] = [
  {
    name: 'reference',
    summary: 'fleece serve (reference/), QMP only; overlay in place of qcow2',
    peers: [],
    start: (dir, timeoutMs) =>
      startDaemon('fleece serve', 'fleece', monitorArgs(dir), dir, Math.max(timeoutMs, 20_000), 'overlay', (p) => {
        fs.writeFileSync(p, '');
        fs.truncateSync(p, SIZE);
      }),
  },
  {
    name: 'qemu',
    summary: 'qemu-storage-daemon 7.2, QMP only; qcow2 images',
    peers: ['qemu-storage-daemon', 'qemu-img'],
    start: (dir, timeoutMs) =>
      startDaemon('qemu-storage-daemon', 'qemu-storage-daemon', monitorArgs(dir), dir, timeoutMs, 'qcow2', (p) => {
        requirePeer(peerCommand('qemu-img'));
        execFileSync(peerCommand('qemu-img'), ['create', '-q', '-f', 'qcow2', p, String(SIZE)], { stdio: 'pipe' });
      }),
  },
];

const blankImage = (p: string) => {
  fs.writeFileSync(p, '');
  fs.truncateSync(p, SIZE);
};

/** Known-bad permission targets: each check of the aliasing cases is shown failing on one. */
export const KNOWN_BAD_PERM_FLAVORS: readonly PermFlavor[] = [
  {
    name: 'reference-no-storage-identity',
    summary: 'fleece serve with the UNSAFE x-no-storage-identity on every file node of the aliasing cases: nodes over one file are separate disks to it (known bad)',
    peers: [],
    start: (dir, timeoutMs) => startDaemon('fleece serve', 'fleece', monitorArgs(dir), dir, Math.max(timeoutMs, 20_000), 'overlay', blankImage, { 'x-no-storage-identity': true }),
  },
];

/** Known bad, for the locking cases' tests: the reference with locking=off on every file node
 * the locking cases open, so QEMU's tools and the reference no longer see each other. Not in
 * PERM_FLAVORS (the agreement table compares conforming daemons). */
export const REFERENCE_NO_LOCKING: PermFlavor = {
  name: 'reference-no-locking',
  summary: 'fleece serve with locking=off on the locking cases\' file nodes (known bad)',
  peers: [],
  async start(dir, timeoutMs) {
    const s = await PERM_FLAVORS[0]!.start(dir, timeoutMs);
    return { ...s, fileOptions: { locking: 'off' } };
  },
};

/** Known bad, for the same tests: the reference's UNSAFE x-lock-bytes-swapped (perm bytes at
 * 200+bit, unshared ones at 100+bit), so QEMU's tools read its locks wrongly. */
export const REFERENCE_SWAPPED_LOCK_BYTES: PermFlavor = {
  name: 'reference-swapped-lock-bytes',
  summary: 'fleece serve with x-lock-bytes-swapped on the locking cases\' file nodes (known bad)',
  peers: [],
  async start(dir, timeoutMs) {
    const s = await PERM_FLAVORS[0]!.start(dir, timeoutMs);
    return { ...s, fileOptions: { 'x-lock-bytes-swapped': true } };
  },
};

export function findPermFlavor(name: string): PermFlavor | undefined {
  return PERM_FLAVORS.find((f) => f.name === name) ?? KNOWN_BAD_PERM_FLAVORS.find((f) => f.name === name);
}

/** One daemon for the whole suite run (a fleece serve start costs seconds); every case builds
 * its graph under its own name prefix, so cases never share a node, export or job. A daemon
 * that died is replaced for the next case. */
export class PermLab {
  private current: PermSession | undefined;
  private starting: Promise<PermSession> | undefined;
  constructor(
    readonly flavor: PermFlavor,
    private readonly workDir: string,
    private readonly timeoutMs: number,
  ) {}

  /** The shared daemon; the runner may run several cases at once, so one start is shared. */
  session(): Promise<PermSession> {
    if (this.current && !this.current.exited() && !this.current.qmp.isClosed) return Promise.resolve(this.current);
    this.starting ??= (async () => {
      await this.current?.stop().catch(() => undefined);
      const dir = fs.mkdtempSync(path.join(this.workDir, 'perm-'));
      try {
        this.current = await this.flavor.start(dir, this.timeoutMs);
        return this.current;
      } finally {
        this.starting = undefined;
      }
    })();
    return this.starting;
  }

  async stopAll(): Promise<void> {
    await this.starting?.catch(() => undefined);
    await this.current?.stop().catch(() => undefined);
    this.current = undefined;
  }
}

export function permTargetDef(flavor: PermFlavor): TargetDef {
  return {
    name: flavor.name,
    summary: flavor.summary,
    peers: flavor.peers,
    async start(opts: TargetStartOptions): Promise<RunningTarget> {
      for (const p of flavor.peers) requirePeer(p);
      const lab = new PermLab(flavor, opts.workDir, Math.max(opts.startTimeoutMs, 10_000));
      return { name: flavor.name, description: flavor.summary, exports: {}, extra: { permissions: lab }, logs: () => '', stop: () => lab.stopAll() };
    },
  };
}

export function permLabOf(target: RunningTarget): PermLab {
  const lab = target.extra?.permissions;
  if (!(lab instanceof PermLab)) throw new HarnessError(`target ${target.name} is not a permission target: use ${PERM_FLAVORS.map((f) => f.name).join(' or ')}`);
  return lab;
}
