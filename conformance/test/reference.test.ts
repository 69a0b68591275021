// The README's main job: `fleece conform` with no target runs every suite against the reference
// (fleece serve). Every MUST and SHOULD passes, within the 10 s budget.
import { describe, expect, it } from 'vitest';
import '../suites.ts';
import { nbdSuite } from '../cases/nbd/index.ts';
import { run } from '../runner/run.ts';
import { resolveTarget } from '../targets/registry.ts';

describe('reference target', () => {
  it('passes every MUST and SHOULD of the nbd suite in under 10 s', async () => {
    // Timed from the first case (the daemon's start-up, tsx compiling it, is not the suite's).
    let first: number | undefined;
    const res = await run({
      targets: [resolveTarget('reference')],
      suites: [nbdSuite],
      seed: 11,
      onProgress: (e) => {
        if (e.kind === 'case' && first === undefined) first = performance.now() - e.result.durationMs;
      },
    });
    const ms = performance.now() - first!;
    expect(res.targets[0]?.error).toBeUndefined();
    // The large-write case is graded on ratios measured in the run: a loaded machine may push it
    // to non-strict, so either is accepted here (knownbad.test.ts shows it failing on known-bad fakes).
    const measured = 'nbd/write/large-write-scaling';
    expect(['pass', 'non-strict']).toContain(res.results.find((r) => r.id === measured)?.verdict);
    expect(res.results.filter((r) => r.id !== measured && ['fail', 'non-strict', 'error'].includes(r.verdict)).map((r) => `${r.id}: ${r.reason}`)).toEqual([]);
    expect(res.results.find((r) => r.id === 'nbd/transmission/half-close')?.verdict).toBe('pass');
    expect(res.counts.pass).toBeGreaterThan(55);
    // The disconnect case passes here: the reference answers READs in flight before DISC.
    expect(res.results.find((r) => r.id === 'nbd/transmission/disconnect')?.verdict).toBe('pass');
    expect(ms).toBeLessThan(10_000);
  });
});
