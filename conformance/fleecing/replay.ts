// Replaying a fleecing trace (docs/verification.md §4 item 5), whatever produced it: a model-based run is
// replayed batch by batch (trace.ts replayTrace); a fixed-step case (mode 'case') is replayed by
// running that case again against a fresh setup with the trace's configuration and judging it
// by its own checks.
import type { Violation } from './driver.ts';
import { runFleecing } from './run.ts';
import { replayTrace, TraceError, type FleeceTrace, type ReplayResult } from './trace.ts';
import { type FleeceFlavor } from './targets.ts';

export async function replay(trace: FleeceTrace, flavor: FleeceFlavor, opts: { attempts?: number; onAttempt?: (r: ReplayResult) => void } = {}): Promise<ReplayResult[]> {
  if ((trace.mode ?? 'batches') === 'batches') return replayTrace(trace, flavor, opts);
  const out: ReplayResult[] = [];
  for (let attempt = 1; attempt <= (opts.attempts ?? 1); attempt++) {
    const res = await runFleecing([flavor], { filter: [trace.case], seed: trace.seed });
    const r = res.results.find((x) => x.id === trace.case);
    if (!r) throw new TraceError(`case ${trace.case} does not exist (any more)`);
    if (r.verdict === 'error') throw new TraceError(`replaying ${trace.case} on ${flavor.name} hit a harness error: ${r.reason}`);
    if (r.verdict === 'skipped') throw new TraceError(`case ${trace.case} does not apply to ${flavor.name}: ${r.reason}`);
    const violations: Violation[] = r.checks
      .filter((c) => !c.ok && c.level === 'MUST')
      .map((c) => ({ batch: -1, index: -1, kind: 'check', text: `${c.what}${c.observed !== undefined ? ` - observed: ${c.observed}` : ''}` }));
    const result: ReplayResult = { attempt, violations, records: [], wire: r.wire, setup: `${flavor.summary} (case ${trace.case} run again)` };
    out.push(result);
    opts.onAttempt?.(result);
    if (violations.length) break;
  }
  return out;
}
