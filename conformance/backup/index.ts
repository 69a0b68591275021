// The backup suite (docs/requirements/backup.md): backup software's sequences (libvirt's
// pull-mode backup; copy-before-write + snapshot-access + bitmap) over QMP and NBD. Its targets
// are backup flavors (targets.ts) under the names of the fleecing targets; each case starts its
// own daemon in a directory of the suite's own.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { RunResult, Suite } from '../runner/model.ts';
import { run } from '../runner/run.ts';
import type { RunningTarget, TargetDef } from '../targets/types.ts';
import { registerSuite } from '../runner/registry.ts';
import { listTargets, registerTarget } from '../targets/registry.ts';
import { backupCases, type BackupEnv } from './cases.ts';
import { BACKUP_FLAVORS, BackupLab, findBackupFlavor, type BackupFlavor } from './targets.ts';

/** The target's own flavor (a backup TargetDef's), or the flavor of its name. */
function flavorOf(target: RunningTarget): BackupFlavor | undefined {
  const own = target.extra?.['backup'];
  return own ? (own as BackupFlavor) : findBackupFlavor(target.name);
}

/** A flavor as a TargetDef whose RunningTarget names it (tests run mutants this way). */
export function backupTargetDef(f: BackupFlavor): TargetDef {
  return {
    name: f.name,
    summary: f.summary,
    peers: f.peers,
    async start() {
      return { name: f.name, description: f.summary, exports: {}, extra: { backup: f }, logs: () => '', stop: async () => undefined };
    },
  };
}

export async function runBackup(flavors: readonly BackupFlavor[], opts: { filter?: string[]; seed?: number } = {}): Promise<RunResult> {
  return run({ targets: flavors.map(backupTargetDef), suites: [backupSuite], filter: opts.filter ?? [], seed: opts.seed ?? 1, timeoutMs: 2000, startTimeoutMs: 20_000 });
}

export const backupSuite: Suite<BackupEnv> = {
  name: 'backup',
  description: 'Backup flows over fleecing: transactions, dirty bitmaps, incremental rebuilds, meta contexts (docs/requirements/backup.md)',
  roles: [],
  cases: backupCases,
  appliesTo: (target) =>
    flavorOf(target) ? undefined : `it starts its own daemon: use a backup target (${BACKUP_FLAVORS.map((f) => f.name).join(', ')})`,
  async setup(target) {
    const flavor = flavorOf(target)!;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-backup-'));
    return { lab: new BackupLab(flavor, dir, 20_000), ownDir: dir };
  },
  async teardown(env) {
    await env.lab.stopAll();
    if (env.ownDir) fs.rmSync(env.ownDir, { recursive: true, force: true });
  },
  describeEnv: (env) => ({ backup: env.lab.flavor.summary }),
};

registerSuite(backupSuite);

// The known-bad names nobody else registers: a target that starts nothing (the suite's lab does).
const known = new Set(listTargets().map((t) => t.name));
for (const f of BACKUP_FLAVORS) if (!known.has(f.name)) registerTarget(backupTargetDef(f));
