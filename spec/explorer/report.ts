// Reporting apart from running (fast-check's RunDetailsFormatter): the final summary in the
// same shape as the progress line, coverage, and a JSON document with a stable schema.

import type { Behaviour } from './behaviour.ts';
import { formatCounterexample, toTraceFile, type TraceFile } from './counterexample.ts';
import { neverEnabled, type ExploreResult } from './explore.ts';

export function formatSummary(r: ExploreResult<unknown, unknown>): string {
  const params = Object.entries(r.params).map(([k, v]) => `${k}=${v}`).join(' ');
  const verdict =
    r.verdict === 'ok'
      ? r.exhaustive
        ? 'all invariants hold'
        : 'no violation found within the bounds'
      : r.verdict === 'deadlock'
        ? 'DEADLOCK'
        : 'INVARIANT VIOLATED';
  const exhaustive = r.exhaustive
    ? 'exhaustive: yes (every reachable state visited, exact keys)'
    : `exhaustive: no (stopped by ${r.stoppedBy})`;
  return [
    `model ${r.model}${params ? ` (${params})` : ''}${r.symmetry ? ', symmetry reduction on' : ''}`,
    `${verdict}; ${exhaustive}`,
    `distinct ${r.distinct}, generated ${r.generated}, depth ${r.depth}, terminal ${r.terminal}, ` +
      `${r.seconds.toFixed(2)} s (cpu ${r.cpuSeconds.toFixed(2)} s), ${Math.round(r.statesPerSecond)} states/s, peak rss ${Math.round(r.peakRssBytes / 2 ** 20)} MB`,
  ].join('\n');
}

export function formatCoverage(r: ExploreResult<unknown, unknown>): string {
  const w = Math.max(6, ...r.coverage.map((c) => c.action.length));
  const lines = [`coverage:  ${'action'.padEnd(w)}  ${'enabled'.padStart(10)}  ${'taken'.padStart(10)}`];
  for (const c of r.coverage) {
    lines.push(`           ${c.action.padEnd(w)}  ${String(c.enabled).padStart(10)}  ${String(c.taken).padStart(10)}${c.enabled === 0 ? (r.exhaustive ? '  NEVER ENABLED' : '  not enabled before the search stopped') : ''}`);
  }
  const never = neverEnabled(r);
  if (never.length > 0 && r.exhaustive) lines.push(`never enabled (vacuous model?): ${never.join(', ')}`);
  return lines.join('\n');
}

/** The full text report: summary, coverage, and the counterexample if any. */
export function formatReport<S, A>(model: Behaviour<S, A>, r: ExploreResult<S, A>): string {
  const parts = [formatSummary(r as ExploreResult<unknown, unknown>), formatCoverage(r as ExploreResult<unknown, unknown>)];
  if (r.counterexample) parts.push(formatCounterexample(model, r.counterexample));
  return parts.join('\n');
}

/** Stable JSON schema ("fleece-explore" v1). `trace` is a replayable trace file. */
export interface ExploreJson {
  readonly format: 'fleece-explore';
  readonly version: 1;
  readonly model: string;
  readonly params: Readonly<Record<string, string | number | boolean>>;
  readonly verdict: 'ok' | 'violation' | 'deadlock';
  readonly exhaustive: boolean;
  readonly stoppedBy: string | null;
  readonly symmetry: boolean;
  readonly distinct: number;
  readonly generated: number;
  readonly depth: number;
  readonly terminal: number;
  readonly seconds: number;
  readonly cpuSeconds: number;
  readonly statesPerSecond: number;
  readonly peakRssBytes: number;
  readonly coverage: readonly { action: string; enabled: number; taken: number }[];
  readonly neverEnabled: readonly string[];
  readonly trace: TraceFile | null;
}

export function toJson<S, A>(model: Behaviour<S, A>, r: ExploreResult<S, A>): ExploreJson {
  return {
    format: 'fleece-explore',
    version: 1,
    model: r.model,
    params: r.params,
    verdict: r.verdict,
    exhaustive: r.exhaustive,
    stoppedBy: r.stoppedBy ?? null,
    symmetry: r.symmetry,
    distinct: r.distinct,
    generated: r.generated,
    depth: r.depth,
    terminal: r.terminal,
    seconds: r.seconds,
    cpuSeconds: r.cpuSeconds,
    statesPerSecond: r.statesPerSecond,
    peakRssBytes: r.peakRssBytes,
    coverage: r.coverage,
    neverEnabled: neverEnabled(r),
    trace: r.counterexample ? toTraceFile(model, r.counterexample) : null,
  };
}
