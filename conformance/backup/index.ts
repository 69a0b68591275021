// The backup suite (docs/requirements/backup.md): backup software's sequences (libvirt's
// pull-mode backup; copy-before-write + snapshot-access + bitmap) over QMP and NBD. Its targets
// are backup flavors (targets.ts) under the names of the fleecing targets; each case starts its
// own daemon in a directory of the suite's own.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Suite } from '../runner/model.ts';
import { registerSuite } from '../runner/registry.ts';
import { listTargets, registerTarget } from '../targets/registry.ts';
import { backupCases, type BackupEnv } from './cases.ts';
import { BACKUP_FLAVORS, BackupLab, findBackupFlavor } from './targets.ts';

export const backupSuite: Suite<BackupEnv> = {
  name: 'backup',
  description: 'Backup flows over fleecing: transactions, dirty bitmaps, incremental rebuilds, meta contexts (docs/requirements/backup.md)',
  roles: [],
  cases: backupCases,
  appliesTo: (target) =>
    findBackupFlavor(target.name) ? undefined : `it starts its own daemon: use a backup target (${BACKUP_FLAVORS.map((f) => f.name).join(', ')})`,
  async setup(target) {
    const flavor = findBackupFlavor(target.name)!;
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
for (const f of BACKUP_FLAVORS) {
  if (known.has(f.name)) continue;
  registerTarget({
    name: f.name,
    summary: f.summary,
    peers: f.peers,
    async start() {
      return { name: f.name, description: f.summary, exports: {}, logs: () => '', stop: async () => undefined };
    },
  });
}
