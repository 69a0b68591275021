// The interleavings suite against live servers (docs/design.md "Interleavings"): every model
// interleaving of the default scenarios driven through `fleece serve` with QMP breakpoints over
// NBD; the racy target breaks the invariant on exactly the interleavings where S1 does, and
// reference-hbitmap-status (QEMU 7.2's hbitmap_status) on the straddling read exactly where
// s4-qemu-7.2-hbitmap-status does; a broken
// breakpoint placement and a model/implementation mismatch are disagreements with both traces;
// qemu-storage-daemon reports the model interleavings its submission orders reached.
import { describe, expect, it } from 'vitest';
import { KNOWN_BAD, S1, S3, S4_QEMU_HBITMAP_STATUS } from '../../spec/models/fleecing/scheme.ts';
import { DEFAULT_SCENARIOS, predict, scenarioModel, type ScenarioExecution } from '../../spec/scenarios/fleecing.ts';
import { DEFAULT_MAPPING } from '../interleavings/drive.ts';
import { originKey, runInterleavings, type ScenarioReport } from '../interleavings/run.ts';
import { requirePeer } from '../targets/process.ts';

const byId = (id: string) => DEFAULT_SCENARIOS.filter((s) => s.id === id);
const ran = (rs: ScenarioReport[]) => rs.filter((r) => !r.skipped);
const noErrors = (rs: ScenarioReport[]) => expect(rs.map((r) => r.error).filter(Boolean)).toEqual([]);

describe('interleavings against fleece serve (breakpoints over QMP, requests over NBD)', () => {
  it('reference-racy: agrees with S1 everywhere and returns post-snapshot data on exactly the interleavings where S1 violates the invariant', async () => {
    const rs = await runInterleavings({ target: 'reference-racy' });
    noErrors(rs);
    let violations = 0;
    for (const r of ran(rs)) {
      expect(r.scheme).toBe('s1');
      expect(r.counts.executed).toBe(r.counts.enumerated);
      expect(r.counts.disagreeing, `${r.id}: ${r.interleavings.find((i) => !i.agree)?.disagreement}`).toBe(0);
      expect(r.counts.implViolations).toBe(r.counts.modelViolations);
      for (const i of r.interleavings) expect(i.implViolation !== undefined, `${r.id} #${i.index}`).toBe(i.modelViolation !== undefined);
      violations += r.counts.implViolations;
    }
    expect(violations).toBe(53); // 1 + 5 + 34 + 8 + 5: the S1 model's count
    expect(rs.find((r) => r.id === '2w1r-straddle-read')!.skipped).toMatch(/per cluster/);
  }, 90_000);

  it('reference-hbitmap-status (QEMU 7.2 hbitmap_status, F1/F3): on the straddling read it agrees with s4-qemu-7.2-hbitmap-status everywhere and returns post-snapshot data exactly where that model violates the invariant; reference agrees with s4 there, with none', async () => {
    // 2w1r-straddle-read: W0 writes [40K, 48K) of cluster 0, W1 [80K, 88K) of cluster 1, R0 reads
    // [32K, 96K) of the snapshot. cbw_snapshot_read_lock asks the done bitmap about both clusters;
    // with cluster 0 done and cluster 1 not, 7.2's hbitmap_status says "not done" for cluster 0,
    // so R0 reads it from the source, where W0 may already have landed.
    const sc = byId('2w1r-straddle-read');
    const [bug] = await runInterleavings({ target: 'reference-hbitmap-status', scenarios: sc });
    noErrors([bug!]);
    expect(bug!.scheme).toBe(S4_QEMU_HBITMAP_STATUS.name);
    expect(bug!.counts, bug!.interleavings.find((i) => !i.agree)?.disagreement).toMatchObject({ enumerated: 7, executed: 7, agreeing: 7, disagreeing: 0, modelViolations: 2, implViolations: 2 });
    for (const i of bug!.interleavings) expect(i.implViolation !== undefined, `#${i.index} ${i.order}`).toBe(i.modelViolation !== undefined);
    const v = bug!.interleavings.find((i) => i.implViolation)!;
    expect(v.implViolation).toMatch(/snapshot read R0 returned post-snapshot data: \[\d+, \d+\) snapshot, \[\d+, \d+\) W0, \[\d+, \d+\) snapshot$/);
    expect(v.modelTrace.join('\n')).toMatch(/W0\.write\(\)[\s\S]*R0\.lock\(cluster=0\)[\s\S]*R0\.read\(cluster=0, from=source\)/);
    // A read that locks with cluster 0 done but W0 not yet landed takes the same wrong branch and
    // still reads snapshot data: the bug is seen only when the write came first, as predicted.
    expect(bug!.interleavings.some((i) => !i.modelViolation && /R0\.lock\(cluster=0\)[\s\S]*R0\.read\(cluster=0, from=source\)[\s\S]*W0\.write/.test(i.modelTrace.join('\n')))).toBe(true);
    // The reduction loses no outcome of the 553 fused paths (28 of them violate): the driven 7 predict
    // the same set of replies, post-snapshot ones included.
    const m = scenarioModel(S4_QEMU_HBITMAP_STATUS, sc[0]!);
    const outcome = (ex: ScenarioExecution) => `${ex.violation !== undefined}|${predict(m, ex).origins.map(originKey).join(';')}`;
    const full = m.executions({ por: false, symmetry: false });
    expect([full.length, full.filter((e) => e.violation).length]).toEqual([553, 28]);
    expect([...new Set(m.executions().map(outcome))].sort()).toEqual([...new Set(full.map(outcome))].sort());

    const [ok] = await runInterleavings({ target: 'reference', scenarios: sc });
    noErrors([ok!]);
    expect(ok!.scheme).toBe('s4');
    expect(ok!.counts).toMatchObject({ enumerated: 5, executed: 5, agreeing: 5, disagreeing: 0, modelViolations: 0, implViolations: 0 });
  }, 60_000);

  it('without reduction (every path of the fused model, 126 interleavings) reference-racy still breaks the snapshot exactly where S1 does, and reference agrees everywhere', async () => {
    const [racy] = await runInterleavings({ target: 'reference-racy', scenarios: byId('2w1r-subcluster'), reduction: 'none' });
    expect(racy!.counts).toMatchObject({ fusedPaths: 126, enumerated: 126, executed: 126, agreeing: 126, modelViolations: 28, implViolations: 28 });
    for (const i of racy!.interleavings) expect(i.implViolation !== undefined).toBe(i.modelViolation !== undefined);
    expect(racy!.replay).toMatch(/--no-reduction$/);
    const [modern] = await runInterleavings({ target: 'reference', scenarios: byId('2w1r-subcluster'), reduction: 'none' });
    expect(modern!.counts).toMatchObject({ enumerated: 98, executed: 98, agreeing: 98, implViolations: 0 });
  }, 90_000);

  it('reference (S4) and reference-legacy (S3) agree with their models on every interleaving of the default scenarios, within 2 minutes', async () => {
    const t0 = performance.now();
    for (const target of ['reference', 'reference-legacy'] as const) {
      const rs = await runInterleavings({ target });
      noErrors(rs);
      for (const r of ran(rs)) {
        expect(r.counts.executed, `${target} ${r.id}`).toBe(r.counts.enumerated + r.counts.blockingExtra);
        expect(r.counts.agreeing, `${target} ${r.id}: ${r.interleavings.find((i) => !i.agree)?.disagreement}`).toBe(r.counts.executed);
        expect(r.counts.modelViolations + r.counts.implViolations).toBe(0);
        expect(r.counts.modelPaths).toBeGreaterThanOrEqual(r.counts.fusedPaths);
        expect(r.counts.fusedPaths).toBeGreaterThanOrEqual(r.counts.enumerated);
      }
      // The blocking check: every blocked step let go held (the implementation waits where the
      // model does), and there were some, in every scenario with a wait.
      for (const r of ran(rs)) {
        expect(r.counts.blockedHeld, `${target} ${r.id}`).toBe(r.counts.blockedTried);
        expect(r.counts.blockedTried, `${target} ${r.id}`).toBeGreaterThan(0);
      }
      // Model-action coverage: every action of the scheme is taken somewhere.
      const taken = new Set(ran(rs).flatMap((r) => Object.entries(r.coverage.actions).filter(([, n]) => n > 0).map(([k]) => k)));
      const names = target === 'reference' ? ['submit', 'copyWrite', 'copyFail', 'write', 'start', 'lock', 'read', 'discard'] : ['submit', 'serialise', 'copyWrite', 'write', 'start', 'lookup', 'read'];
      expect([...taken].sort()).toEqual(names.sort());
      const events = new Set(ran(rs).flatMap((r) => Object.keys(r.coverage.events)));
      expect(events.size).toBeGreaterThanOrEqual(3);
    }
    expect(performance.now() - t0).toBeLessThan(120_000);
  }, 150_000);

  it('the blocking check fails a known-bad option that removes a wait, and only the blocking check sees it: reference-no-read-wait (x-no-frozen-read-wait) lets a guest write through while the model has it wait for a frozen read; reference-racy (x-unserialized-target-writes) lets the copy into temp through while S3 has it wait for the temp read', async () => {
    const sc = byId('1w1r-same-cluster');
    // A generous grace period: a request that skips its wait gets to its event at once, so the
    // known-bad targets fail however loaded the machine is (a held request costs the full period,
    // and there are few here).
    const blockedGraceMs = 2000;
    const [bad] = await runInterleavings({ target: 'reference-no-read-wait', scenarios: sc, blockedGraceMs });
    noErrors([bad!]);
    expect(bad!.scheme).toBe('s4');
    expect(bad!.counts).toMatchObject({ executed: 2, disagreeing: 1, blockedTried: 1, blockedHeld: 0, implViolations: 0 });
    const d = bad!.interleavings.find((i) => !i.agree)!;
    expect(d.disagreement).toMatch(/^before step 4 R0\.read\(cluster=0, from=source\): W0 reached cbw-source-write \(BREAKPOINT_HIT W0-\d+\) while the model has it waiting for R0\.read \(.*reqlist_wait_all on frozen_read_reqs/);
    expect(d.modelTrace.join('\n')).toMatch(/R0\.lock\(cluster=0\)[\s\S]*W0\.copyWrite\(\)[\s\S]*R0\.read/);
    expect(d.wireTrace.map((w) => w.text).join('\n')).toMatch(/x-breakpoint-add cbw-source-write[\s\S]*x-breakpoint-resume .*blocking check[\s\S]*reached cbw-source-write/);
    // Without the blocking check the same option passes: the driver never asks for the step.
    const [unchecked] = await runInterleavings({ target: 'reference-no-read-wait', scenarios: sc, blockedGraceMs: 0 });
    expect(unchecked!.counts).toMatchObject({ executed: 2, agreeing: 2, blockedTried: 0 });
    // The snapshot stays broken on the same option under break-snapshot: the failed copy's wait.
    const [broken] = await runInterleavings({ target: 'reference-no-read-wait', scenarios: byId('2w1r-fail-break-snapshot'), blockedGraceMs });
    noErrors([broken!]);
    expect(broken!.interleavings.filter((i) => !i.agree).map((i) => i.disagreement).join('\n')).toMatch(/W0 reached cbw-source-write .* while the model has it waiting for R0\.read/);
    // The discard's wait for reads of the target range is on an interleaving the reduction skips
    // (added for the blocking check); reference holds there.
    const [discard] = await runInterleavings({ target: 'reference', scenarios: byId('1w1r1d-discard') });
    noErrors([discard!]);
    expect(discard!.counts).toMatchObject({ enumerated: 7, blockingExtra: 1, executed: 8, agreeing: 8 });
    expect(discard!.interleavings[7]!.wireTrace.map((w) => w.text).join('\n')).toMatch(/NBD_CMD_TRIM[\s\S]*BREAKPOINT_HIT \S+ snapshot-discard-wait[\s\S]*x-breakpoint-add snapshot-discard-target[\s\S]*held/);

    const [racy] = await runInterleavings({ target: 'reference-racy', scenarios: sc, scheme: S3, blockedGraceMs });
    noErrors([racy!]);
    expect(racy!.counts.disagreeing).toBeGreaterThan(0);
    expect(racy!.interleavings.find((i) => !i.agree)!.disagreement).toMatch(/W0 reached cbw-done-set \(BREAKPOINT_HIT W0-\d+\) while the model has it waiting for R0\.read \(the serialising copy into the temp image waits for overlapping tracked reads: bdrv_wait_serialising_requests/);
  }, 90_000);

  it('failing copies, injected at the block-copy target write (x-breakpoint-resume errno): under break-guest-write the write fails with the model and the rewrite copies again; under break-snapshot later reads fail', async () => {
    const [rewrite] = await runInterleavings({ target: 'reference', scenarios: byId('2w1r-fail-rewrite') });
    noErrors([rewrite!]);
    expect(rewrite!.counts).toMatchObject({ executed: 6, agreeing: 6, implViolations: 0 });
    expect(rewrite!.coverage.actions['copyFail']).toBeGreaterThan(0);
    const failedWrite = rewrite!.interleavings.flatMap((i) => i.wireTrace).find((w) => w.actor === 'W0' && w.text.startsWith('reply: error'));
    expect(failedWrite?.text).toMatch(/reply: error EIO/);
    expect(rewrite!.interleavings.flatMap((i) => i.wireTrace).some((w) => /x-breakpoint-resume \S+ errno EIO/.test(w.text))).toBe(true);

    const [broken] = await runInterleavings({ target: 'reference', scenarios: byId('2w1r-fail-break-snapshot') });
    noErrors([broken!]);
    expect(broken!.counts).toMatchObject({ executed: 6, agreeing: 6, implViolations: 0 });
    expect(broken!.counts.blockedHeld).toBe(broken!.counts.blockedTried);
    const r0 = broken!.interleavings.flatMap((i) => i.wireTrace).filter((w) => w.actor === 'R0' && w.text.startsWith('reply:'));
    expect(r0.some((w) => /error/.test(w.text))).toBe(true);
    expect(r0.some((w) => /OK, 131072 bytes/.test(w.text))).toBe(true);
  }, 60_000);

  it('a broken breakpoint placement (writer parked at the done bit before its copy) is a disagreement with both traces and a replay command', async () => {
    const broken = { ...DEFAULT_MAPPING, name: 'broken: writerBeforeCopy=cbw-done-set', writerBeforeCopy: 'cbw-done-set' };
    const [r] = await runInterleavings({ target: 'reference-racy', scenarios: byId('1w1r-same-cluster'), mapping: broken });
    expect(r!.mapping).toMatch(/broken/);
    expect(r!.counts.disagreeing).toBe(r!.counts.executed);
    const d = r!.interleavings[0]!;
    expect(d.agree).toBe(false);
    expect(d.disagreement).toMatch(/W0 finished \(OK\) without parking at cbw-done-set/);
    expect(d.modelTrace.join('\n')).toMatch(/W0\.copyWrite\(\)/);
    expect(d.wireTrace.map((w) => w.text).join('\n')).toMatch(/NBD_CMD_WRITE[\s\S]*BREAKPOINT_HIT[\s\S]*reply: OK/);
    expect(r!.replay).toMatch(/--target reference-racy --scenario 1w1r-same-cluster/);
  }, 60_000);

  it('model/implementation mismatch: reference-legacy (serialised) driven by S1 blocks where S1 lets the copy land; reference driven by a known-bad S4 returns other data than predicted', async () => {
    const [legacy] = await runInterleavings({ target: 'reference-legacy', scenarios: byId('1w1r-same-cluster'), scheme: S1, stepTimeoutMs: 800 });
    expect(legacy!.counts.disagreeing).toBeGreaterThan(0);
    const blocked = legacy!.interleavings.find((i) => !i.agree)!;
    expect(blocked.disagreement).toMatch(/W0\.copyWrite\(\): W0 neither parked at cbw-done-set nor replied .* blocks where the model allows the step/);
    expect(blocked.modelTrace.length).toBeGreaterThan(2);
    expect(blocked.wireTrace.some((w) => w.text.startsWith('BREAKPOINT_HIT'))).toBe(true);

    const doneBeforeCopy = KNOWN_BAD.find((s) => s.name === 's4-done-before-copy')!;
    const [modern] = await runInterleavings({ target: 'reference', scenarios: byId('1w1r-same-cluster'), scheme: doneBeforeCopy });
    const wrong = modern!.interleavings.filter((i) => !i.agree);
    expect(wrong.length).toBe(modern!.counts.modelViolations);
    expect(wrong[0]!.disagreement).toMatch(/snapshot read R0 returned \[65536, 131072\) snapshot; the model predicted \[65536, 131072\) zeroes/);
  }, 60_000);
});

describe('interleavings against qemu-storage-daemon (no breakpoints: submission orders, delay under the source)', () => {
  it('reports which model interleavings the runner reached, and every run is explained by the S4 model', async () => {
    requirePeer('qemu-storage-daemon'); // fails naming `npm run peers` when missing
    requirePeer('nbdkit');
    const rs = await runInterleavings({ target: 'qemu', scenarios: DEFAULT_SCENARIOS.filter((s) => s.id === '1w1r-same-cluster' || s.id === '2w1r-subcluster') });
    noErrors(rs);
    for (const r of rs) {
      expect(r.mode).toBe('submission-orders');
      const e = r.exploration!;
      expect(e.statement).toMatch(/reached \d+ of the \d+ distinct outcomes the s4 model predicts, covering \d+ of its \d+ interleavings/);
      expect(e.interleavingsReached.length).toBeGreaterThan(0);
      expect(r.counts.disagreeing).toBe(0);
      expect(r.counts.implViolations).toBe(0);
      expect(e.runs.length).toBe(r.id === '1w1r-same-cluster' ? 4 : 12);
    }
  }, 60_000);
});

describe('interleavings in `fleece conform` (same results, JUnit and HTML as the other suites)', () => {
  it('reference-racy fails the case with the post-snapshot interleavings and a replay command; the case passes on reference', async () => {
    const { run } = await import('../runner/run.ts');
    const { resolveTarget } = await import('../targets/registry.ts');
    const { interleavingsSuite } = await import('../interleavings/index.ts');
    const result = await run({
      targets: [resolveTarget('reference-racy'), resolveTarget('reference')],
      suites: [interleavingsSuite],
      filter: ['interleavings/1w1r-same-cluster'],
      strict: false,
      seed: 1,
      startTimeoutMs: 20_000,
    });
    const [racy, ok] = result.results;
    expect(racy!.target).toBe('reference-racy');
    expect(racy!.verdict).toBe('fail');
    expect(racy!.reason).toMatch(/no snapshot read returns post-snapshot data - observed: 1 interleavings \(#1\).*replay: npx tsx conformance\/interleavings\/cli.ts --target reference-racy --scenario 1w1r-same-cluster --interleaving 1/);
    expect(racy!.observations[0]).toMatch(/3 enumerated after partial-order and symmetry reduction; 3 executed, 3 agreeing, 0 disagreeing; model violates the invariant on 1, the implementation returned post-snapshot data on 1/);
    expect(racy!.wire.some((w) => /NBD_CMD_READ/.test(w.note))).toBe(true);
    expect(ok!.target).toBe('reference');
    expect(ok!.verdict).toBe('pass');
    expect(ok!.observations[0]).toMatch(/blocking check: 1 blocked steps let go, 1 held/);
  }, 60_000);
});
