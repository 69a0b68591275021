// Fleecing setups for the interleavings suite: one server process per scenario (not per
// interleaving). The disk is cut into regions of `clusters` clusters, one region per interleaving:
// a region nobody touched yet is exactly a fresh snapshot (copy bitmap set, done bitmap clear,
// temp unallocated), so "resetting the disk" between interleavings costs nothing and needs no
// QMP rebuild. Command lines are those of docs/requirements/qemu-fleecing.md §5.1 (modern) and §5.2
// (legacy), as in conformance/fleecing/targets.ts.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Address } from '../nbd/client.ts';
import { QmpClient } from '../qmp/client.ts';
import { HarnessError } from '../targets/errors.ts';
import { ManagedProcess, requirePeer, waitFile, waitListening } from '../targets/process.ts';
import { peerCommand, recordStarted } from '../targets/peers.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export type InterleavingTargetName = 'reference' | 'reference-legacy' | 'reference-racy' | 'reference-hbitmap-status' | 'reference-no-read-wait' | 'qemu' | 'qemu-legacy';

export interface InterleavingTarget {
  readonly name: InterleavingTargetName;
  readonly summary: string;
  /** The model scheme whose interleavings the target must refine (a known-bad target: the
   * model variant with the same bug, spec/models/fleecing/scheme.ts). */
  readonly scheme: 's1' | 's3' | 's4' | 's4-qemu-7.2-hbitmap-status';
  readonly graph: 'modern' | 'legacy';
  /** The implementation has x-breakpoint-* QMP commands. */
  readonly breakpoints: boolean;
  readonly peers: readonly string[];
}

export const INTERLEAVING_TARGETS: Readonly<Record<InterleavingTargetName, InterleavingTarget>> = {
  reference: { name: 'reference', summary: 'fleece serve, copy-before-write + snapshot-access', scheme: 's4', graph: 'modern', breakpoints: true, peers: [] },
  'reference-legacy': { name: 'reference-legacy', summary: 'fleece serve, backup sync=none into a qcow2 temp backed by the source (serialised target writes)', scheme: 's3', graph: 'legacy', breakpoints: true, peers: ['qemu-img'] },
  'reference-racy': { name: 'reference-racy', summary: 'fleece serve, legacy graph with the UNSAFE x-unserialized-target-writes (known bad)', scheme: 's1', graph: 'legacy', breakpoints: true, peers: ['qemu-img'] },
  'reference-hbitmap-status': { name: 'reference-hbitmap-status', summary: "fleece serve, copy-before-write with the UNSAFE x-hbitmap-status-bug (QEMU 7.2's hbitmap_status, findings F1/F3; known bad)", scheme: 's4-qemu-7.2-hbitmap-status', graph: 'modern', breakpoints: true, peers: [] },
  'reference-no-read-wait': { name: 'reference-no-read-wait', summary: 'fleece serve, copy-before-write with the UNSAFE x-no-frozen-read-wait (guest writes do not wait for frozen snapshot reads; known bad: only the blocking check sees it)', scheme: 's4', graph: 'modern', breakpoints: true, peers: [] },
  qemu: { name: 'qemu', summary: 'qemu-storage-daemon, copy-before-write + snapshot-access', scheme: 's4', graph: 'modern', breakpoints: false, peers: ['qemu-storage-daemon', 'qemu-img'] },
  'qemu-legacy': { name: 'qemu-legacy', summary: 'qemu-storage-daemon, blockdev-backup sync=none into a qcow2 temp backed by the source', scheme: 's3', graph: 'legacy', breakpoints: false, peers: ['qemu-storage-daemon', 'qemu-img'] },
};

export interface SetupOptions {
  /** Disk size in bytes (regions x region size). */
  readonly size: number;
  /** Content of the disk at snapshot time. */
  readonly content: Buffer;
  /** Read delay under the source, to widen windows (reference: the delay driver; QEMU: the
   * source is an NBD client of nbdkit --filter=delay). */
  readonly sourceReadDelayMs?: number;
  /** copy-before-write's on-cbw-error (modern graphs; default: QEMU's, break-guest-write). */
  readonly onCbwError?: 'break-guest-write' | 'break-snapshot';
  /** discard=unmap on the snapshot-access node and a writable snapshot export (§5.1), for
   * snapshot discards (NBD_CMD_TRIM on the fleecing export). */
  readonly snapshotDiscard?: boolean;
  readonly startTimeoutMs?: number;
}

export interface Setup {
  readonly target: InterleavingTarget;
  readonly dir: string;
  readonly nbd: Address;
  readonly qmpPath: string;
  readonly qmp: QmpClient;
  /** The command line of the server, for replay commands and reports. */
  readonly commandLine: string;
  exited(): string | undefined;
  logs(): string;
  stop(): Promise<void>;
}

const unix = (p: string): Address => ({ kind: 'unix', path: p });

/** Starts `target` in a fresh private directory; the caller must stop() it. */
export async function startSetup(target: InterleavingTarget, o: SetupOptions, parentDir: string): Promise<Setup> {
  for (const p of target.peers) requirePeer(p);
  const dir = fs.mkdtempSync(path.join(parentDir, `${target.name}-`));
  const timeoutMs = o.startTimeoutMs ?? 20_000;
  const procs: ManagedProcess[] = [];
  let qmp: QmpClient | undefined;
  const stop = async () => {
    qmp?.close();
    for (const p of [...procs].reverse()) await p.stop();
  };
  try {
    const src = path.join(dir, 'src.raw');
    fs.writeFileSync(src, o.content);
    const nbd = path.join(dir, 'nbd.sock');
    const qmpPath = path.join(dir, 'qmp.sock');
    const args: string[] = [];
    const bd = (s: string) => args.push('--blockdev', s);
    const reference = target.name.startsWith('reference');
    if (reference && o.sourceReadDelayMs) {
      bd(`driver=file,node-name=source-file,filename=${src}`);
      bd(`driver=delay,node-name=source,file=source-file,read-delay-ms=${o.sourceReadDelayMs}`);
    } else if (o.sourceReadDelayMs) {
      requirePeer('nbdkit');
      const sock = path.join(dir, 'delay.sock');
      const p = ManagedProcess.spawn('nbdkit --filter=delay', 'nbdkit', ['-f', '-U', sock, '--filter=delay', 'file', src, `rdelay=${o.sourceReadDelayMs}ms`]);
      procs.push(p);
      await waitListening(unix(sock), p, timeoutMs);
      bd(`driver=nbd,node-name=source,server.type=unix,server.path=${sock}`);
    } else bd(`driver=file,node-name=source,filename=${src}`);
    if (target.graph === 'modern') {
      const tmp = path.join(dir, 'tmp.raw');
      fs.writeFileSync(tmp, '');
      fs.truncateSync(tmp, o.size);
      bd(`driver=file,node-name=temp,filename=${tmp}`);
      // reference-hbitmap-status: QEMU 7.2's hbitmap_status bug (util/hbitmap.c) on purpose, so a
      // read straddling done and not-done clusters reads the done prefix from the source.
      // reference-no-read-wait: guest writes skip their wait for frozen reads, on purpose.
      const bug = target.name === 'reference-hbitmap-status' ? ',x-hbitmap-status-bug=on' : target.name === 'reference-no-read-wait' ? ',x-no-frozen-read-wait=on' : '';
      const onErr = o.onCbwError ? `,on-cbw-error=${o.onCbwError}` : '';
      bd(`driver=copy-before-write,node-name=fl-cbw,file=source,target=temp${onErr}${bug}`);
      bd(`driver=snapshot-access,node-name=fl-access,file=fl-cbw${o.snapshotDiscard ? ',discard=unmap' : ''}`);
      args.push('--nbd-server', `addr.type=unix,addr.path=${nbd}`);
      args.push('--export', 'type=nbd,id=exp-live,node-name=fl-cbw,name=live,writable=on');
      args.push('--export', `type=nbd,id=exp-fleece,node-name=fl-access,name=fleece${o.snapshotDiscard ? ',writable=on' : ''}`);
    } else {
      // §5.2 on both: a qcow2 temp backed by the source (the reference's qcow2 reaches the legacy
      // temp's breakpoints between its lookup and its backing read).
      const tmp = path.join(dir, 'tmp.qcow2');
      execFileSync(peerCommand('qemu-img'), ['create', '-q', '-f', 'qcow2', tmp, String(o.size)], { stdio: 'pipe' });
      bd(`driver=qcow2,node-name=temp,file.driver=file,file.filename=${tmp},backing=source`);
      args.push('--nbd-server', `addr.type=unix,addr.path=${nbd}`);
      args.push('--export', 'type=nbd,id=exp-live,node-name=source,name=live,writable=on');
    }
    args.push('--chardev', `socket,id=qmp0,path=${qmpPath},server=on,wait=off`, '--monitor', 'chardev=qmp0');
    let proc: ManagedProcess;
    let commandLine: string;
    if (reference) {
      const full = [path.join(REPO, 'bin/fleece.mjs'), 'serve', ...args];
      proc = new ManagedProcess('fleece serve', spawn(process.execPath, full, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] }));
      commandLine = `node bin/fleece.mjs serve ${args.map(quote).join(' ')}`;
    } else {
      proc = ManagedProcess.spawn('qemu-storage-daemon', 'qemu-storage-daemon', args);
      commandLine = `qemu-storage-daemon ${args.map(quote).join(' ')}`;
    }
    procs.push(proc);
    await waitListening(unix(nbd), proc, timeoutMs);
    await waitFile(qmpPath, proc, timeoutMs);
    qmp = await QmpClient.connect(qmpPath, 10_000);
    if (target.graph === 'legacy') {
      const setup = [
        ['blockdev-backup', { 'job-id': 'fleecing', device: 'source', target: 'temp', sync: 'none', ...(target.name === 'reference-racy' ? { 'x-unserialized-target-writes': true } : {}) }],
        ['block-export-add', { type: 'nbd', id: 'exp-fleece', 'node-name': 'temp', name: 'fleece' }],
      ] as const;
      for (const [cmd, a] of setup) {
        // The reports name the QMP that set the daemon up, beside its command line.
        recordStarted(`${proc.label} QMP: ${JSON.stringify({ execute: cmd, arguments: a })}`);
        await qmp.ok(cmd, a);
      }
    }
    const q = qmp;
    return {
      target, dir, nbd: unix(nbd), qmpPath, qmp: q, commandLine,
      exited: () => (proc.hasExited ? proc.exitStatus : undefined),
      logs: () => procs.map((p) => `--- ${p.label} (${p.exitStatus})\n${p.output.trim()}`).join('\n'),
      stop: async () => {
        await stop();
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    const logs = procs.map((p) => `--- ${p.label} (${p.exitStatus})\n${p.output.trim()}`).join('\n');
    await stop();
    fs.rmSync(dir, { recursive: true, force: true });
    if (e instanceof HarnessError) throw e;
    throw new HarnessError(`${target.name}: ${(e as Error).message}${logs ? `\n${logs}` : ''}`);
  }
}

function quote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
