// Backup-flow targets (docs/requirements/backup.md): a daemon with a source node, a writable
// live export of it (the guest) and a QMP monitor; the suite itself builds every backup over QMP
// as backup software does. One private process per case, in its own directory.
//   reference / reference-legacy   fleece serve (raw source; temps raw / overlay)
//   qemu / qemu-legacy             qemu-storage-daemon (qcow2 source; temps raw / qcow2)
//   reference-backup-lossy         reference-legacy whose backup jobs get the UNSAFE
//                                  x-drop-dirty-writes: writes during a backup are not recorded
//                                  in the dirty bitmap (known bad: the incremental check fails)
//   reference-depth-zero           reference-legacy whose exports get the UNSAFE
//                                  x-allocation-depth-zero (known bad: the contexts check fails)
//   reference-zero-status          reference-legacy whose exports get the UNSAFE
//                                  x-base-allocation-zero (known bad: the contexts check fails)
//   reference-no-rollback          reference-legacy whose transactions get the UNSAFE property
//                                  x-no-rollback (known bad: the rollback check fails)
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Address } from '../nbd/client.ts';
import { QmpClient } from '../qmp/client.ts';
import { HarnessError } from '../targets/errors.ts';
import { ManagedProcess, requirePeer, waitFile, waitListening } from '../targets/process.ts';
import { Lab } from '../runner/lab.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export const DISK_SIZE = 4 * 1024 * 1024;
/** The source's content before any guest write: a few patterned regions, the rest sparse. */
export const INITIAL_REGIONS: readonly { offset: number; length: number; byte: number }[] = [
  { offset: 0, length: 0x30000, byte: 0x11 },
  { offset: 0x100000, length: 0x10000, byte: 0x22 },
  { offset: 0x208000, length: 0x3000, byte: 0x33 },
];

export function initialDisk(): Buffer {
  const b = Buffer.alloc(DISK_SIZE);
  for (const r of INITIAL_REGIONS) b.fill(r.byte, r.offset, r.offset + r.length);
  return b;
}

export type BackupGraph = 'legacy' | 'modern';

export interface BackupSetup {
  readonly qmp: QmpClient;
  readonly nbd: Address;
  /** The guest's export (writable, on the source). */
  readonly live: string;
  readonly graph: BackupGraph;
  /** blockdev-add arguments for temp image `i` (fresh, DISK_SIZE). */
  temp(i: number): Record<string, unknown>;
  /** Extra arguments for every blockdev-backup / block-export-add (known-bad options). */
  readonly backupExtra: Record<string, unknown>;
  readonly exportExtra: Record<string, unknown>;
  /** `properties` for every transaction (known-bad options). */
  readonly transactionProperties: Record<string, unknown>;
  /** Known-bad mutants only: export this node instead of the snapshot (the live disk). */
  readonly exportNodeOverride?: string;
  readonly description: string;
  logs(): string;
  stop(): Promise<void>;
}

export interface BackupFlavor {
  readonly name: string;
  readonly summary: string;
  readonly graph: BackupGraph;
  readonly peers: readonly string[];
  launch(dir: string, timeoutMs: number): Promise<BackupSetup>;
}

const TEMPS = 4;

async function started(proc: ManagedProcess, dir: string, timeoutMs: number, f: Omit<BackupSetup, 'qmp' | 'nbd' | 'live' | 'logs' | 'stop'>): Promise<BackupSetup> {
  const nbd: Address = { kind: 'unix', path: path.join(dir, 'nbd.sock') };
  const qmpPath = path.join(dir, 'qmp.sock');
  try {
    await waitListening(nbd, proc, timeoutMs);
    await waitFile(qmpPath, proc, timeoutMs);
    const qmp = await QmpClient.connect(qmpPath);
    return {
      ...f, qmp, nbd, live: 'live',
      logs: () => `--- ${proc.label} (${proc.exitStatus})\n${proc.output.trim()}`,
      stop: async () => {
        qmp.close();
        await proc.stop();
      },
    };
  } catch (e) {
    await proc.stop();
    throw new HarnessError(`${(e as Error).message}\n${proc.output.trim()}`);
  }
}

function commonArgs(dir: string, sourceBlockdev: string): string[] {
  return [
    '--blockdev', sourceBlockdev,
    '--nbd-server', `addr.type=unix,addr.path=${path.join(dir, 'nbd.sock')}`,
    '--export', 'type=nbd,id=exp-live,node-name=source,name=live,writable=on',
    '--chardev', `socket,id=qmp0,path=${path.join(dir, 'qmp.sock')},server=on,wait=off`, '--monitor', 'chardev=qmp0',
  ];
}

function writeSource(file: string): void {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, DISK_SIZE);
  const fd = fs.openSync(file, 'r+');
  try {
    for (const r of INITIAL_REGIONS) fs.writeSync(fd, Buffer.alloc(r.length, r.byte), 0, r.length, r.offset);
  } finally {
    fs.closeSync(fd);
  }
}

function referenceFlavor(name: string, graph: BackupGraph, bad?: 'lossy' | 'depth-zero' | 'zero-status' | 'no-rollback'): BackupFlavor {
  return {
    name,
    graph,
    peers: [],
    summary:
      bad === 'lossy'
        ? 'fleece serve, pull-mode backup with the UNSAFE x-drop-dirty-writes on every backup job (known bad)'
        : bad === 'zero-status'
          ? 'fleece serve, pull-mode backup with the UNSAFE x-base-allocation-zero on every export (known bad)'
          : bad === 'no-rollback'
          ? 'fleece serve, pull-mode backup with the UNSAFE transaction property x-no-rollback (known bad)'
          : bad === 'depth-zero'
          ? 'fleece serve, pull-mode backup with the UNSAFE x-allocation-depth-zero on every export (known bad)'
          : graph === 'legacy'
            ? 'fleece serve, pull-mode backup: blockdev-backup sync=none into an overlay temp backed by the source'
            : 'fleece serve, blockdev-backup sync=none into a raw temp, snapshot-access over its copy-before-write filter',
    async launch(dir, timeoutMs) {
      const src = path.join(dir, 'src.raw');
      writeSource(src);
      for (let i = 1; i <= TEMPS; i++) {
        const t = path.join(dir, `tmp${i}.raw`);
        fs.writeFileSync(t, '');
        fs.truncateSync(t, DISK_SIZE);
      }
      const args = [path.join(REPO, 'bin/fleece.mjs'), 'serve', ...commonArgs(dir, `driver=file,node-name=source,filename=${src}`)];
      const proc = new ManagedProcess('fleece serve', spawn(process.execPath, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] }));
      return started(proc, dir, Math.max(timeoutMs, 20_000), {
        graph,
        description: this.summary,
        temp: (i) =>
          graph === 'legacy'
            ? { driver: 'overlay', 'node-name': `temp${i}`, file: { driver: 'file', filename: path.join(dir, `tmp${i}.raw`) }, backing: 'source' }
            : { driver: 'file', 'node-name': `temp${i}`, filename: path.join(dir, `tmp${i}.raw`) },
        backupExtra: bad === 'lossy' ? { 'x-drop-dirty-writes': true } : {},
        exportExtra: bad === 'depth-zero' ? { 'x-allocation-depth-zero': true } : bad === 'zero-status' ? { 'x-base-allocation-zero': true } : {},
        transactionProperties: bad === 'no-rollback' ? { 'x-no-rollback': true } : {},
      });
    },
  };
}

function qemuFlavor(name: string, graph: BackupGraph): BackupFlavor {
  return {
    name,
    graph,
    peers: ['qemu-storage-daemon', 'qemu-img'],
    summary:
      graph === 'legacy'
        ? 'qemu-storage-daemon, pull-mode backup: blockdev-backup sync=none into a qcow2 temp backed by the qcow2 source (libvirt)'
        : 'qemu-storage-daemon, blockdev-backup sync=none into a raw temp, snapshot-access over its copy-before-write filter',
    async launch(dir, timeoutMs) {
      for (const p of this.peers) requirePeer(p);
      const raw = path.join(dir, 'src.raw');
      writeSource(raw);
      const q = path.join(dir, 'src.qcow2');
      execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, q], { stdio: 'pipe' });
      for (let i = 1; i <= TEMPS; i++) {
        if (graph === 'legacy') execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, `tmp${i}.qcow2`), String(DISK_SIZE)], { stdio: 'pipe' });
        else execFileSync('qemu-img', ['create', '-q', '-f', 'raw', path.join(dir, `tmp${i}.raw`), String(DISK_SIZE)], { stdio: 'pipe' });
      }
      const proc = ManagedProcess.spawn('qemu-storage-daemon', 'qemu-storage-daemon', commonArgs(dir, `driver=qcow2,node-name=source,file.driver=file,file.filename=${q}`));
      return started(proc, dir, timeoutMs, {
        graph,
        description: this.summary,
        temp: (i) =>
          graph === 'legacy'
            ? { driver: 'qcow2', 'node-name': `temp${i}`, file: { driver: 'file', filename: path.join(dir, `tmp${i}.qcow2`) }, backing: 'source' }
            : { driver: 'file', 'node-name': `temp${i}`, filename: path.join(dir, `tmp${i}.raw`) },
        backupExtra: {},
        exportExtra: {},
        transactionProperties: {},
      });
    },
  };
}

export const BACKUP_FLAVORS: readonly BackupFlavor[] = [
  referenceFlavor('reference', 'modern'),
  referenceFlavor('reference-legacy', 'legacy'),
  qemuFlavor('qemu', 'modern'),
  qemuFlavor('qemu-legacy', 'legacy'),
  referenceFlavor('reference-backup-lossy', 'legacy', 'lossy'),
  referenceFlavor('reference-depth-zero', 'legacy', 'depth-zero'),
  referenceFlavor('reference-zero-status', 'legacy', 'zero-status'),
  referenceFlavor('reference-no-rollback', 'legacy', 'no-rollback'),
];

/** A known-bad variant for tests: the same launch with the setup changed (e.g. the live disk
 * exported in place of the snapshot). */
export function mutantBackupFlavor(base: BackupFlavor, name: string, patch: Partial<Pick<BackupSetup, 'exportNodeOverride' | 'exportExtra' | 'backupExtra'>>): BackupFlavor {
  return {
    ...base,
    name,
    summary: `${base.summary} [known bad: ${name}]`,
    async launch(dir, timeoutMs) {
      return { ...(await base.launch(dir, timeoutMs)), ...patch };
    },
  };
}

export function findBackupFlavor(name: string): BackupFlavor | undefined {
  return BACKUP_FLAVORS.find((f) => f.name === name);
}

/** Starts one setup per case in subdirectories of a directory of its own; stops them all. */
export class BackupLab {
  private readonly lab: Lab<BackupSetup>;
  constructor(
    readonly flavor: BackupFlavor,
    dir: string,
    readonly startTimeoutMs: number,
  ) {
    this.lab = new Lab(dir);
  }

  launch(): Promise<BackupSetup> {
    return this.lab.launch((dir) => this.flavor.launch(dir, this.startTimeoutMs), (s, stop) => ({ ...s, stop }));
  }

  stopAll(): Promise<void> {
    return this.lab.stopAll();
  }
}
