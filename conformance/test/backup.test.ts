// The backup suite (docs/requirements/backup.md) passes on the reference's two graphs and on
// qemu-storage-daemon 7.2's, and every check fails on a known-bad target: the UNSAFE reference
// options x-drop-dirty-writes (writes during a backup unrecorded), x-allocation-depth-zero,
// x-base-allocation-zero, the transaction property x-no-rollback, and a mutant that exports the
// live disk in place of the snapshot.
import { describe, expect, it } from 'vitest';
import { runBackup } from '../backup/index.ts';
import { findBackupFlavor, mutantBackupFlavor } from '../backup/targets.ts';
import type { CaseResult } from '../runner/model.ts';

const flavor = (n: string) => findBackupFlavor(n)!;
const failed = (r: CaseResult) => r.checks.filter((c) => !c.ok).map((c) => c.what);
const byId = (rs: readonly CaseResult[], target: string, id: string) => rs.find((r) => r.target === target && r.id === id)!;

describe('backup suite: conforming targets', () => {
  it.each(['reference', 'reference-legacy', 'qemu', 'qemu-legacy'])('%s passes every case of its graph', async (name) => {
    const res = await runBackup([flavor(name)], { seed: 5 });
    const verdicts = Object.fromEntries(res.results.map((r) => [r.id, r.verdict]));
    const legacy = name.endsWith('legacy');
    expect(verdicts, JSON.stringify(res.results.map((r) => [r.id, r.reason]))).toEqual({
      'backup/pull/incremental': legacy ? 'pass' : 'skipped',
      'backup/snapshot-access/incremental': legacy ? 'skipped' : 'pass',
      'backup/contexts/consistent': 'pass',
      'backup/transaction/rollback': 'pass',
    });
  }, 120_000);
});

describe('backup suite: every check fails on a known-bad target', () => {
  it('reference-backup-lossy (x-drop-dirty-writes): the incremental image misses a write made during the previous backup', async () => {
    const res = await runBackup([flavor('reference-backup-lossy')], { seed: 5 });
    const inc = byId(res.results, 'reference-backup-lossy', 'backup/pull/incremental');
    expect(inc.verdict).toBe('fail');
    expect(failed(inc)).toEqual(['the previous full backup plus the dirty extents read from the snapshot equals the snapshot (no change missed)']);
    expect(inc.reason).toMatch(/outside every dirty extent: guest write #\d+ .* during backup 1/);
    const ctx = byId(res.results, 'reference-backup-lossy', 'backup/contexts/consistent');
    expect(failed(ctx)).toEqual(['where qemu:dirty-bitmap:inc is clean, the snapshot equals the previous full backup']);
  }, 120_000);

  it('reference-depth-zero and reference-zero-status: the meta contexts contradict each other and the data', async () => {
    const res = await runBackup([flavor('reference-depth-zero'), flavor('reference-zero-status')], { seed: 5, filter: ['backup/contexts'] });
    expect(failed(byId(res.results, 'reference-depth-zero', 'backup/contexts/consistent'))).toEqual([
      'where qemu:allocation-depth is 0 (no layer allocates), the snapshot reads as zeroes',
      'where base:allocation says allocated (no NBD_STATE_HOLE), qemu:allocation-depth is at least 1',
      'where qemu:allocation-depth is 0, base:allocation says NBD_STATE_HOLE',
    ]);
    expect(failed(byId(res.results, 'reference-zero-status', 'backup/contexts/consistent'))).toEqual([
      'where base:allocation says NBD_STATE_ZERO, the snapshot reads as zeroes',
    ]);
  }, 120_000);

  it('reference-no-rollback (x-no-rollback): a failed transaction leaves its job, bitmap and filter', async () => {
    const res = await runBackup([flavor('reference-no-rollback')], { seed: 5, filter: ['backup/transaction'] });
    expect(failed(byId(res.results, 'reference-no-rollback', 'backup/transaction/rollback'))).toEqual([
      'no backup job remains from the failed transaction',
      'no bitmap remains from the failed transaction',
      'no copy-before-write filter remains from the failed transaction',
      "the job's JOB_STATUS_CHANGE events are created, aborting, concluded, null",
      'the same transaction without the abort action then succeeds (its names are free again)',
    ]);
  }, 120_000);

  it('the live disk exported in place of the snapshot: both backups hold post-snapshot data', async () => {
    const bad = mutantBackupFlavor(flavor('reference-legacy'), 'reference-legacy-live-export', { exportNodeOverride: 'source' });
    const res = await runBackup([bad], { seed: 5, filter: ['backup/pull'] });
    const r = byId(res.results, 'reference-legacy-live-export', 'backup/pull/incremental');
    expect(failed(r)).toContain('the full backup equals the disk at its transaction (no post-snapshot data)');
    expect(failed(r)).toContain("the incremental backup's snapshot equals the disk at its transaction (no post-snapshot data)");
  }, 120_000);

  it('the steps the checks stand on fail visibly: an export without qemu:allocation-depth, a transaction the daemon refuses', async () => {
    const noDepth = mutantBackupFlavor(flavor('reference-legacy'), 'reference-legacy-no-depth', { exportExtra: { 'allocation-depth': false } });
    const refused = mutantBackupFlavor(flavor('reference-legacy'), 'reference-legacy-refused', { backupExtra: { 'x-bogus': true } });
    const res = await runBackup([noDepth, refused], { seed: 5, filter: ['backup/pull', 'backup/contexts'] });
    for (const id of ['backup/pull/incremental', 'backup/contexts/consistent']) {
      expect(failed(byId(res.results, 'reference-legacy-no-depth', id))).toEqual(['the incremental export offers base:allocation, qemu:allocation-depth and qemu:dirty-bitmap:inc']);
      const r = byId(res.results, 'reference-legacy-refused', id);
      expect(failed(r)).toEqual(['backup 1: the transaction (bitmaps + blockdev-backup sync=none) is accepted']);
      expect(r.reason).toMatch(/Parameter 'actions\[1\]\.data\.x-bogus' is unexpected/);
    }
  }, 120_000);
});
