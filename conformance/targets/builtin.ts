// The built-in NBD targets: each starts its server(s) on private unix sockets (nbd-server: a free
// TCP port on 127.0.0.1, as it cannot listen on a unix socket only) over generated images in the
// runner's temp dir. Role 'rw' is a writable export of disk.raw, 'ro' a read-only export of ro.raw
// (a separate copy, so image locks never conflict). Command lines: docs/requirements/nbd.md §3.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Address } from '../nbd/client.ts';
import { DEFAULT_LAYOUT, writeImage } from './image.ts';
import { freePort, ManagedProcess, requirePeer, waitListening } from './process.ts';
import { registerTarget } from './registry.ts';
import type { RunningTarget, TargetDef, TargetStartOptions } from './types.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function images(dir: string): { rw: string; ro: string } {
  const rw = path.join(dir, 'disk.raw');
  const ro = path.join(dir, 'ro.raw');
  writeImage(rw, DEFAULT_LAYOUT);
  writeImage(ro, DEFAULT_LAYOUT);
  return { rw, ro };
}

export const unix = (dir: string, name: string): Address => ({ kind: 'unix', path: path.join(dir, name) });

export async function startAll(
  name: string,
  description: string,
  procs: { proc: ManagedProcess; address: Address }[],
  exports: RunningTarget['exports'],
  opts: TargetStartOptions,
  qmp?: string,
): Promise<RunningTarget> {
  const stop = async () => {
    await Promise.all(procs.map((p) => p.proc.stop()));
  };
  try {
    await Promise.all(procs.map((p) => waitListening(p.address, p.proc, opts.startTimeoutMs)));
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    name,
    description,
    exports,
    image: DEFAULT_LAYOUT,
    ...(qmp !== undefined ? { qmp } : {}),
    pids: () => procs.flatMap((p) => (p.proc.child.pid !== undefined ? [p.proc.child.pid] : [])),
    commands: () => procs.map((p) => p.proc.child.spawnargs.join(' ')),
    logs: () => procs.map((p) => `--- ${p.proc.label}\n${p.proc.output}`).join('\n'),
    died: () => {
      const dead = procs.find((p) => p.proc.hasExited);
      return dead ? `${dead.proc.label} exited (${dead.proc.exitStatus}): ${dead.proc.output.trim().split('\n').slice(-3).join(' | ')}` : undefined;
    },
    stop,
  };
}

const qemuNbd: TargetDef = {
  name: 'qemu-nbd',
  summary: 'qemu-nbd over a raw image (one process per export)',
  peers: ['qemu-nbd'],
  async start(opts) {
    const img = images(opts.workDir);
    const rw = unix(opts.workDir, 'rw.sock');
    const ro = unix(opts.workDir, 'ro.sock');
    const common = ['-f', 'raw', '-x', 'disk', '--persistent', '--shared=8', '-A', '--cache=writeback'];
    return startAll(
      'qemu-nbd',
      'qemu-nbd, raw image, --shared=8 -A',
      [
        { proc: ManagedProcess.spawn('qemu-nbd (rw)', 'qemu-nbd', [...common, '-k', (rw as { path: string }).path, img.rw]), address: rw },
        { proc: ManagedProcess.spawn('qemu-nbd (ro)', 'qemu-nbd', [...common, '-r', '-k', (ro as { path: string }).path, img.ro]), address: ro },
      ],
      { rw: { address: rw, name: 'disk' }, ro: { address: ro, name: 'disk' } },
      opts,
    );
  },
};

const qsd: TargetDef = {
  name: 'qemu-storage-daemon',
  summary: 'qemu-storage-daemon with two NBD exports (writable and read-only)',
  peers: ['qemu-storage-daemon'],
  async start(opts) {
    const img = images(opts.workDir);
    const sock = unix(opts.workDir, 'qsd.sock');
    const qmp = path.join(opts.workDir, 'qsd-qmp.sock');
    const args = [
      '--chardev', `socket,id=m0,path=${qmp},server=on,wait=off`,
      '--monitor', 'chardev=m0',
      '--blockdev', `driver=file,node-name=f0,filename=${img.rw}`,
      '--blockdev', 'driver=raw,node-name=disk0,file=f0',
      '--blockdev', `driver=file,node-name=f1,filename=${img.ro},read-only=on`,
      '--blockdev', 'driver=raw,node-name=ro0,file=f1,read-only=on',
      '--nbd-server', `addr.type=unix,addr.path=${(sock as { path: string }).path},max-connections=16`,
      '--export', 'type=nbd,id=e0,node-name=disk0,name=disk,writable=on,allocation-depth=on',
      '--export', 'type=nbd,id=e1,node-name=ro0,name=ro',
    ];
    return startAll(
      'qemu-storage-daemon',
      'qemu-storage-daemon, raw over file, allocation-depth=on',
      [{ proc: ManagedProcess.spawn('qemu-storage-daemon', 'qemu-storage-daemon', args), address: sock }],
      { rw: { address: sock, name: 'disk' }, ro: { address: sock, name: 'ro' } },
      opts,
      qmp,
    );
  },
};

const nbdkit: TargetDef = {
  name: 'nbdkit',
  summary: 'nbdkit file plugin (one process per export)',
  peers: ['nbdkit'],
  async start(opts) {
    const img = images(opts.workDir);
    const rw = unix(opts.workDir, 'rw.sock');
    const ro = unix(opts.workDir, 'ro.sock');
    return startAll(
      'nbdkit',
      'nbdkit file plugin, raw image',
      [
        { proc: ManagedProcess.spawn('nbdkit (rw)', 'nbdkit', ['-f', '-U', (rw as { path: string }).path, '-e', 'disk', 'file', img.rw]), address: rw },
        { proc: ManagedProcess.spawn('nbdkit (ro)', 'nbdkit', ['-f', '-r', '-U', (ro as { path: string }).path, '-e', 'disk', 'file', img.ro]), address: ro },
      ],
      { rw: { address: rw, name: 'disk' }, ro: { address: ro, name: 'disk' } },
      opts,
    );
  },
};

/** Hook a target may offer for cases that need an injected failure (checklist D58). */
export interface ErrorInjection {
  /** From now on, reads of the 'rw' export fail with EIO. */
  armReadError(): void;
  disarmReadError(): void;
}

/**
 * nbdkit with non-default block sizes enforced (blocksize-policy: 512 / 4096 / 1 MiB, requests
 * outside them refused) and an error filter whose reads fail while a trigger file exists: the
 * fixture that exercises checklist A18 with real limits, C52 and D58.
 */
const nbdkitPolicy: TargetDef = {
  name: 'nbdkit-policy',
  summary: 'nbdkit file plugin behind --filter=blocksize-policy (512/4096/1M) and --filter=error',
  peers: ['nbdkit'],
  async start(opts) {
    const img = images(opts.workDir);
    const rw = unix(opts.workDir, 'rw.sock');
    const ro = unix(opts.workDir, 'ro.sock');
    const trigger = path.join(opts.workDir, 'inject-read-error');
    const filters = ['--filter=error', '--filter=blocksize-policy'];
    const params = ['blocksize-minimum=512', 'blocksize-preferred=4096', 'blocksize-maximum=1M', 'blocksize-error-policy=error', 'error-pread=EIO', 'error-pread-rate=100%', `error-pread-file=${trigger}`];
    const t = await startAll(
      'nbdkit-policy',
      'nbdkit file plugin, blocksize-policy 512/4096/1M (error), error filter on reads (trigger file)',
      [
        { proc: ManagedProcess.spawn('nbdkit-policy (rw)', 'nbdkit', ['-f', '-U', (rw as { path: string }).path, '-e', 'disk', ...filters, 'file', img.rw, ...params]), address: rw },
        { proc: ManagedProcess.spawn('nbdkit-policy (ro)', 'nbdkit', ['-f', '-r', '-U', (ro as { path: string }).path, '-e', 'disk', ...filters, 'file', img.ro, ...params]), address: ro },
      ],
      { rw: { address: rw, name: 'disk' }, ro: { address: ro, name: 'disk' } },
      opts,
    );
    const injection: ErrorInjection = {
      armReadError: () => fs.writeFileSync(trigger, ''),
      disarmReadError: () => fs.rmSync(trigger, { force: true }),
    };
    return { ...t, extra: { errorInjection: injection } };
  },
};

/** nbd-server with a generated config: `generic` lines added to [generic], `extra` sections
 * (name -> lines) after [disk] and [ro]; `exports` maps roles onto them. */
export async function launchNbdServer(
  opts: TargetStartOptions,
  name: string,
  description: string,
  more: { generic?: string[]; disk?: string[]; ro?: string[]; sections?: Record<string, string[]> } = {},
  exports: (address: Address) => RunningTarget['exports'] = (address) => ({ rw: { address, name: 'disk' }, ro: { address, name: 'ro' } }),
): Promise<RunningTarget> {
  const img = images(opts.workDir);
  const port = await freePort();
  const conf = path.join(opts.workDir, 'nbd-server.conf');
  const pidfile = path.join(opts.workDir, 'nbd-server.pid');
  const sections = Object.entries(more.sections ?? {}).flatMap(([n, lines]) => [`[${n}]`, ...lines.map((l) => l.replace('$RW', img.rw).replace('$RO', img.ro))]);
  fs.writeFileSync(
    conf,
    [
      '[generic]',
      `port = ${port}`,
      'listenaddr = 127.0.0.1',
      'allowlist = true',
      ...(more.generic ?? []),
      '[disk]',
      `exportname = ${img.rw}`,
      'flush = true',
      'fua = true',
      'trim = true',
      ...(more.disk ?? []),
      '[ro]',
      `exportname = ${img.ro}`,
      'readonly = true',
      ...(more.ro ?? []),
      ...sections,
      '',
    ].join('\n'),
  );
  requirePeer('nbd-server');
  // nbd-server daemonizes (forks); -d would serve one connection at a time. Track it by pidfile.
  const launcher = ManagedProcess.spawn('nbd-server', 'nbd-server', ['-C', conf, '-p', pidfile]);
  const address: Address = { kind: 'tcp', host: '127.0.0.1', port };
  const readPid = (): number | undefined => {
    try {
      const n = Number(fs.readFileSync(pidfile, 'utf8').trim());
      return Number.isInteger(n) && n > 0 ? n : undefined;
    } catch {
      return undefined;
    }
  };
  const stop = async () => {
    await launcher.stop();
    const pid = readPid();
    if (pid !== undefined) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
      for (let i = 0; i < 40; i++) {
        try {
          process.kill(pid, 0);
        } catch {
          return;
        }
        await new Promise((r) => setTimeout(r, 25));
      }
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  };
  try {
    await waitListening(address, undefined, opts.startTimeoutMs);
  } catch (e) {
    await stop();
    throw new Error(`${(e as Error).message}\n${launcher.output}`);
  }
  return {
    name,
    description,
    exports: exports(address),
    image: DEFAULT_LAYOUT,
    commands: () => [launcher.child.spawnargs.join(' ')],
    logs: () => launcher.output,
    pids: () => {
      const pid = readPid();
      return pid === undefined ? [] : [pid];
    },
    died: () => {
      const pid = readPid();
      if (pid === undefined) return 'nbd-server: no pid file';
      try {
        process.kill(pid, 0);
        return undefined;
      } catch {
        return `nbd-server (pid ${pid}) exited`;
      }
    },
    stop,
  };
}

const nbdServer: TargetDef = {
  name: 'nbd-server',
  summary: 'nbd-server (reference implementation) with a generated config, TCP on 127.0.0.1',
  peers: ['nbd-server'],
  start: (opts) => launchNbdServer(opts, 'nbd-server', 'nbd-server, generated config (flush, fua, trim)'),
};

/** Our own server (reference/), started with qemu-storage-daemon's command-line syntax. */
const reference: TargetDef = {
  name: 'reference',
  summary: "the reference server: node bin/fleece.mjs serve (qemu-storage-daemon syntax)",
  peers: [],
  async start(opts) {
    const img = images(opts.workDir);
    const sock = unix(opts.workDir, 'ref.sock');
    const qmp = path.join(opts.workDir, 'ref-qmp.sock');
    const args = [
      path.join(REPO, 'bin/fleece.mjs'),
      'serve',
      '--chardev', `socket,id=m0,path=${qmp},server=on,wait=off`,
      '--monitor', 'chardev=m0',
      '--blockdev', `driver=file,node-name=disk0,filename=${img.rw}`,
      '--blockdev', `driver=file,node-name=ro0,filename=${img.ro}`,
      '--nbd-server', `addr.type=unix,addr.path=${(sock as { path: string }).path}`,
      '--export', 'type=nbd,id=exp0,node-name=disk0,name=disk,writable=on',
      '--export', 'type=nbd,id=exp1,node-name=ro0,name=ro',
    ];
    return startAll(
      'reference',
      'fleece serve (reference/)',
      [{ proc: ManagedProcess.spawn('fleece serve', process.execPath, args), address: sock }],
      { rw: { address: sock, name: 'disk' }, ro: { address: sock, name: 'ro' } },
      { ...opts, startTimeoutMs: Math.max(opts.startTimeoutMs, 15_000) },
      qmp,
    );
  },
};

for (const t of [reference, qemuNbd, qsd, nbdkit, nbdkitPolicy, nbdServer]) registerTarget(t);
