// The permissions suite's locking section (conformance/permissions/locking.ts) against real
// peers: fleece serve and qemu-storage-daemon 7.2 pass every row (QEMU's tools refused or let in
// as QEMU decides, and the reverse); the known-bad reference with locking=off fails the rows
// where a writer or a resize gets past a fleecing graph, with the run's own evidence.
import { describe, expect, it } from 'vitest';
import { permissionsSuite } from '../permissions/index.ts';
import { PERM_FLAVORS, REFERENCE_NO_LOCKING, REFERENCE_SWAPPED_LOCK_BYTES, permTargetDef } from '../permissions/targets.ts';
import { run } from '../runner/run.ts';

const FILTER = ['permissions/locking/'];

describe('permissions/locking: the target and QEMU\'s tools on one image', () => {
  it('the reference and qemu-storage-daemon 7.2 pass every row', async () => {
    const result = await run({ targets: PERM_FLAVORS.map(permTargetDef), suites: [permissionsSuite], filter: FILTER, seed: 1, timeoutMs: 2000, startTimeoutMs: 20_000 });
    const ids = new Set(result.results.map((r) => r.id));
    expect(ids.size).toBe(8);
    for (const r of result.results) expect({ target: r.target, id: r.id, verdict: r.verdict, reason: r.reason }).toMatchObject({ verdict: 'pass' });
    expect(result.results.filter((r) => r.target === 'qemu')).toHaveLength(8);
  }, 90_000);

  it('locking=off on the reference (known bad): the writer and the resize get in, the reverse export is accepted', async () => {
    const result = await run({ targets: [permTargetDef(REFERENCE_NO_LOCKING)], suites: [permissionsSuite], filter: FILTER, seed: 1, timeoutMs: 2000, startTimeoutMs: 20_000 });
    const by = new Map(result.results.map((r) => [r.id.replace('permissions/locking/', ''), r]));
    expect(by.get('qemu-io-write-source')).toMatchObject({ verdict: 'fail' });
    expect(by.get('qemu-io-write-source')!.reason).toMatch(/^MUST: refused, as QEMU 7\.2 refuses it: cbw unshares write on its source .* - observed: let in/);
    expect(by.get('qemu-img-resize-temp')).toMatchObject({ verdict: 'fail' });
    expect(by.get('writable-export-on-held-source')).toMatchObject({ verdict: 'fail' });
    expect(by.get('writable-export-on-held-source')!.reason).toMatch(/observed: let in/);
    expect(by.get('qemu-img-convert-source')).toMatchObject({ verdict: 'non-strict' });
    // The rows where QEMU lets the opener in still pass: not locking never refuses anyone.
    for (const id of ['qemu-io-read-source', 'qemu-img-convert-force-share', 'qemu-io-write-temp', 'readonly-export-on-held-source']) expect(by.get(id), id).toMatchObject({ verdict: 'pass' });
  }, 90_000);

  it('swapped lock bytes (known bad x-lock-bytes-swapped): harmless openers refused, and refusals naming the wrong permission', async () => {
    const result = await run({ targets: [permTargetDef(REFERENCE_SWAPPED_LOCK_BYTES)], suites: [permissionsSuite], filter: FILTER, seed: 1, timeoutMs: 2000, startTimeoutMs: 20_000 });
    const by = new Map(result.results.map((r) => [r.id.replace('permissions/locking/', ''), r]));
    // The target's perm bytes sit where QEMU looks for what it forbids: consistent read (200).
    expect(by.get('qemu-io-read-source')).toMatchObject({ verdict: 'non-strict' });
    expect(by.get('qemu-io-read-source')!.reason).toMatch(/^SHOULD: let in, as QEMU 7\.2 lets it in: .* - observed: qemu-io: can't open device .*: Failed to get "consistent read" lock/);
    expect(by.get('qemu-img-convert-source')!.reason).toMatch(/^SHOULD: the refusal says what QEMU says: "Failed to get shared \\"write\\" lock\\nIs another process using the image \[.*\]\?" - observed: .*Failed to get "consistent read" lock/);
    expect(by.get('writable-export-on-held-source')!.reason).toMatch(/^SHOULD: the refusal says what QEMU says: "Failed to get \\"write\\" lock" - observed: block-export-add: Failed to get "consistent read" lock/);
    expect(by.get('readonly-export-on-held-source')).toMatchObject({ verdict: 'non-strict' });
  }, 90_000);
});
