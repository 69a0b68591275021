// Text forms of interleaving results: a one-line summary per scenario, coverage, and each
// disagreement as the model trace and the wire trace side by side, with a replay command.
import type { InterleavingResult } from './drive.ts';
import type { ScenarioReport } from './run.ts';

export function replayInterleaving(r: ScenarioReport, index: number): string {
  return `${r.replay} --interleaving ${index}`;
}

export function countsLine(r: ScenarioReport): string {
  const c = r.counts;
  if (r.skipped) return `${r.id}: skipped (${r.skipped})`;
  const head =
    r.mode === 'breakpoints'
      ? `${c.modelPaths} model paths, ${c.fusedPaths} after fusing atomic steps, ${c.enumerated} enumerated ${r.reduction === 'none' ? '(no further reduction)' : 'after partial-order and symmetry reduction'}${c.blockingExtra ? ` + ${c.blockingExtra} through waiting states the reduction skips` : ''}; ${c.executed} executed, ${c.agreeing} agreeing, ${c.disagreeing} disagreeing`
      : `${c.enumerated} model interleavings (${c.modelPaths} paths); ${c.executed} runs, ${c.agreeing} explained by the model, ${c.disagreeing} not`;
  return `${r.id} [${r.target} vs ${r.scheme}]: ${head}; model violates the invariant on ${c.modelViolations}, the implementation returned post-snapshot data on ${c.implViolations}${r.mode === 'breakpoints' ? `; ${blockingLine(r)}` : ''}`;
}

/** The blocking check's counts: "blocking check: 12 blocked steps let go, 12 held (3 re-checks);
 * not tried: 4 unsubmitted". */
export function blockingLine(r: ScenarioReport): string {
  const c = r.counts;
  const skipped = Object.entries(c.blockedSkipped).map(([k, n]) => `${n} ${k}`).join(', ');
  return `blocking check: ${c.blockedTried} blocked steps let go, ${c.blockedHeld} held (${c.blockedRechecked} later re-checks)${skipped ? `; not tried: ${skipped}` : ''}`;
}

export function coverageLine(r: ScenarioReport): string {
  const a = Object.entries(r.coverage.actions).map(([k, n]) => `${k} ${n}`).join(', ');
  const e = Object.entries(r.coverage.events).map(([k, n]) => `${k} ${n}`).join(', ');
  return `model-action coverage: ${a || '-'}${r.coverage.neverTaken.length ? ` (never taken: ${r.coverage.neverTaken.join(', ')})` : ''}; breakpoint events hit: ${e || '-'}`;
}

/** Model trace (left) and wire trace (right), side by side, each model step next to the wire
 * events it caused. */
export function sideBySide(i: InterleavingResult, width = 52): string {
  const w = (e: InterleavingResult['wireTrace'][number]) => `${String(e.t).padStart(7)} ${e.actor.padEnd(3)} ${e.text}`;
  const rows: string[] = [`${'MODEL'.padEnd(width)} | WIRE (ms actor event)`];
  const emit = (left: string, right: string[]) => {
    rows.push(`${left.slice(0, width).padEnd(width)} | ${right[0] ?? ''}`);
    for (const r of right.slice(1)) rows.push(`${''.padEnd(width)} | ${r}`);
  };
  i.modelTrace.forEach((m, k) => emit(m, i.wireTrace.filter((e) => e.step === k + 1).map(w)));
  const after = i.wireTrace.filter((e) => e.step === 0 || e.step > i.modelTrace.length).map(w);
  if (after.length) emit('(after the last step)', after);
  return rows.join('\n');
}

export function describeDisagreement(r: ScenarioReport, i: InterleavingResult): string {
  return [
    `interleaving #${i.index} (${i.order}): ${i.disagreement}`,
    sideBySide(i),
    `replay: ${replayInterleaving(r, i.index)}`,
  ].join('\n');
}

export function describeScenario(r: ScenarioReport, maxDisagreements = 3, everyTrace = false): string {
  const out = [countsLine(r)];
  if (r.skipped || r.error) {
    if (r.error) out.push(`error: ${r.error}`);
    return out.join('\n');
  }
  if (r.mode === 'breakpoints') out.push(coverageLine(r));
  if (r.exploration) out.push(r.exploration.statement);
  for (const i of r.interleavings.filter((x) => !x.agree).slice(0, maxDisagreements)) out.push(describeDisagreement(r, i));
  if (everyTrace) {
    for (const i of r.interleavings.filter((x) => x.agree)) {
      out.push(`interleaving #${i.index} (${i.order}): agrees${i.modelViolation ? `; model: ${i.modelViolation}` : ''}${i.implViolation ? `; ${i.implViolation}` : ''}`, sideBySide(i));
    }
  }
  const v = r.interleavings.filter((x) => x.implViolation);
  if (v.length) out.push(`post-snapshot data on interleavings ${v.map((x) => `#${x.index}`).join(', ')}; e.g. #${v[0]!.index}: ${v[0]!.implViolation}`);
  return out.join('\n');
}
