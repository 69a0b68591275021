// The aliasing cases of the permissions suite (conformance/permissions/aliasing.ts): graphs in
// which a second file node opens the source's file. The reference refuses the unsafe ones and
// accepts the safe ones; QEMU 7.2 accepts legacy fleecing over an alias of the source and a
// snapshot read returns the guest's post-snapshot write (a MUST failure with the bytes), and
// refuses the others with its image-locking messages. Each check is shown failing on a known-bad
// target: reference-no-storage-identity (the UNSAFE x-no-storage-identity) for the MUST and the
// hazard, a wrapper that rewords the reference's refusals for the message check.
import { describe, expect, it } from 'vitest';
import { permissionsSuite } from '../permissions/index.ts';
import { aliasCases } from '../permissions/aliasing.ts';
import { findPermFlavor, permTargetDef, type PermFlavor } from '../permissions/targets.ts';
import type { CaseResult } from '../runner/model.ts';
import { run } from '../runner/run.ts';

const suite = { ...permissionsSuite, cases: aliasCases };
const ids = aliasCases.map((c) => c.id);

async function runAlias(flavor: PermFlavor): Promise<Map<string, CaseResult>> {
  const result = await run({ targets: [permTargetDef(flavor)], suites: [suite], filter: [], seed: 1, timeoutMs: 5000, startTimeoutMs: 20_000 });
  expect(result.results.map((r) => r.id).sort()).toEqual([...ids].sort());
  return new Map(result.results.map((r) => [r.id.replace('permissions/alias/', ''), r]));
}

const failedChecks = (r: CaseResult) => r.checks.filter((c) => !c.ok).map((c) => `${c.level}: ${c.what}${c.observed ? ` - ${c.observed}` : ''}`);

describe('permissions: aliasing graphs (two nodes over one file)', () => {
  it('reference: refuses legacy fleecing over an alias of the source (naming nodes, file and path), the writable alias export (QEMU\'s lock message) and the cbw target on the source file; accepts the safe ones, and they are safe on the wire', async () => {
    const by = await runAlias(findPermFlavor('reference')!);
    for (const r of by.values()) expect(r.verdict, `${r.id}: ${r.reason}`).toBe('info');
    expect(by.get('legacy-backing')!.reason).toMatch(/refused at #7 blockdev-backup: "copy-before-write node '#block\d+' cannot keep its target 'a1-temp' a snapshot of 'a1-disk': reads of the target reach file '.*a1-disk.raw' \(device \d+, inode \d+\) by 'a1-temp' -> 'a1-alias-slow' -> 'a1-disk-alias', not through 'a1-disk'/);
    expect(by.get('writable-export-on-source-alias')!.reason).toMatch(/refused at #8 block-export-add: "Failed to get "write" lock: node 'a2-disk-alias' needs 'write' on file '.*a2-disk.raw'/);
    // Where QEMU refuses (#4, cbw unshares write on its source once it has a parent), in its words.
    expect(by.get('cbw-target-on-source-file')!.reason).toMatch(/refused at #4 blockdev-add: "Failed to get shared "write" lock: node 'a3-disk' does not share 'write' on file '.*a3-disk.raw' \(device \d+, inode \d+\), which node 'a3-disk-alias' opens too and uses/);
    expect(by.get('writable-export-on-target-alias')!.reason).toMatch(/refused at #8 block-export-add: "copy-before-write node 'a4-fl-cbw' keeps its snapshot in file '.*a4-temp.raw' \(device \d+, inode \d+\) \(node 'a4-temp' under its target 'a4-temp'\), which node 'a4-temp-alias' also opens and writes/);
    expect(by.get('readonly-export-on-source-alias')!.reason).toMatch(/accepted; driven over NBD, every snapshot read returned the snapshot/);
    expect(by.get('readonly-pair')!.reason).toMatch(/accepted; driven over NBD/);
  }, 60_000);

  it('known bad, reference-no-storage-identity: the four unsafe graphs are accepted and return post-snapshot data (MUST failures with the bytes, the hazard reported too); the safe ones stay safe', async () => {
    const by = await runAlias(findPermFlavor('reference-no-storage-identity')!);
    for (const name of ['legacy-backing', 'writable-export-on-source-alias', 'cbw-target-on-source-file', 'writable-export-on-target-alias']) {
      const r = by.get(name)!;
      expect(r.verdict, `${name}: ${r.reason}`).toBe('fail');
      expect(r.reason).toMatch(/^MUST: a READ of the snapshot on export 'a\d-fleece' returns the disk as it was at the snapshot, never post-snapshot data - observed: .*byte at offset 0 is (0x22, the snapshot holds 0x11 \(the live write's byte: post-snapshot data\)|0x33, the snapshot holds 0x11 \(the byte written through the alias of the snapshot store)/);
      expect(failedChecks(r).some((c) => c.startsWith('SHOULD: HAZARD: the aliasing graph is accepted'))).toBe(true);
    }
    // The race on the legacy graph: the live write completed while the snapshot read was held.
    expect(by.get('legacy-backing')!.observations).toContain('the live WRITE completed while the snapshot read was held');
    expect(by.get('readonly-export-on-source-alias')!.verdict).toBe('info');
    expect(by.get('readonly-pair')!.verdict).toBe('info');
  }, 60_000);

  it('known bad, refusals in other words: the message check fails where QEMU 7.2 refuses with its lock message', async () => {
    const ref = findPermFlavor('reference')!;
    const reworded: PermFlavor = {
      ...ref,
      name: 'reference-reworded',
      async start(dir, timeoutMs) {
        const s = await ref.start(dir, timeoutMs);
        const execute = s.qmp.execute.bind(s.qmp);
        s.qmp.execute = async (c, a) => {
          const r = await execute(c, a);
          return r.ok ? r : { ...r, error: { ...r.error, desc: r.error.desc.replace(/^Failed to get "write" lock/, 'Permission conflict on the file') } };
        };
        return s;
      },
    };
    const r = (await runAlias(reworded)).get('writable-export-on-source-alias')!;
    expect(r.verdict).toBe('non-strict');
    expect(r.reason).toMatch(/^SHOULD: the refusal begins with QEMU 7.2's image-locking message "Failed to get "write" lock" - observed: Permission conflict on the file/);
  }, 60_000);

  it('qemu-storage-daemon 7.2: accepts legacy fleecing over an alias of the source (a snapshot read can return post-snapshot data: fail, or the hazard when the throttled race did not show), and a writable export on an alias of the cbw target (the snapshot shows data never on the disk), refuses the other unsafe graphs with its lock messages, accepts the safe ones', async () => {
    const by = await runAlias(findPermFlavor('qemu')!);
    const legacy = by.get('legacy-backing')!;
    expect(legacy.observations.filter((o) => o.startsWith('QMP #')).every((o) => o.endsWith('{"return": {}}')), legacy.observations.join('\n')).toBe(true);
    // A race with a timed window (throttle): either outcome is QEMU's, both are reported.
    expect(['fail', 'non-strict'], legacy.reason).toContain(legacy.verdict);
    if (legacy.verdict === 'fail') expect(legacy.reason).toMatch(/post-snapshot data/);
    const store = by.get('writable-export-on-target-alias')!;
    expect(store.verdict, store.reason).toBe('fail');
    expect(store.reason).toMatch(/byte at offset 0 is 0x33, the snapshot holds 0x11/);
    expect(by.get('writable-export-on-source-alias')!.reason).toBe('MAY: what the target does with this aliasing graph: refused at #8 block-export-add: "Failed to get "write" lock"');
    expect(by.get('cbw-target-on-source-file')!.reason).toBe('MAY: what the target does with this aliasing graph: refused at #4 blockdev-add: "Failed to get shared "write" lock"');
    // A writer on an alias of the cbw target: deterministic, no race needed.
    expect(by.get('writable-export-on-target-alias')!.verdict).toBe('fail');
    expect(by.get('writable-export-on-target-alias')!.reason).toMatch(/byte at offset 0 is 0x33, the snapshot holds 0x11 \(the byte written through the alias of the snapshot store: data that was never on the disk\)/);
    expect(by.get('readonly-export-on-source-alias')!.verdict).toBe('info');
    expect(by.get('readonly-pair')!.verdict).toBe('info');
  }, 60_000);
});
