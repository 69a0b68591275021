// Text and JSON forms of a soundness report: the counts first, then the accepted-but-unsafe
// graphs grouped by why they are unsafe (a writer on the temp, a writer bypassing cbw), each
// group with its count, one example graph and the shortest data-plane counterexample.
import type { GraphVerdict, SoundnessReport } from './soundness.ts';

/** Why an accepted graph is unsafe, in one line. */
export function unsafeReason(v: GraphVerdict): string {
  const temp = v.readers.some((r) => r.tempWriters.length > 0);
  const bypass = v.readers.some((r) => r.sourceBypassWriters.length > 0);
  const parts: string[] = [];
  if (temp) parts.push('a writer on the temp/target node (docs/requirements/qemu-fleecing.md §6 B6)');
  if (bypass) parts.push('a writer on the source that bypasses copy-before-write');
  if (parts.length === 0) parts.push('the data-plane scheme itself');
  return parts.join(' and ');
}

export function soundnessText(r: SoundnessReport, examplesPerGroup = 1): string {
  const lines: string[] = [];
  lines.push(`permission soundness: ${r.graphs} graphs (at most ${r.bound.maxExports} exports), ${r.seconds.toFixed(1)} s, ${r.dataPlaneRuns} data-plane explorations`);
  lines.push(`  refused by the permission model:    ${r.counts.refused}`);
  lines.push(`  accepted, no snapshot reader:       ${r.counts['no-snapshot-reader']}`);
  lines.push(`  accepted and safe:                  ${r.counts['accepted-safe']}`);
  lines.push(`  accepted but UNSAFE:                ${r.counts['accepted-unsafe']}`);
  const groups = new Map<string, GraphVerdict[]>();
  for (const v of r.verdicts) {
    if (v.verdict !== 'accepted-unsafe') continue;
    const k = unsafeReason(v);
    groups.set(k, [...(groups.get(k) ?? []), v]);
  }
  for (const [why, vs] of groups) {
    lines.push('');
    lines.push(`accepted but unsafe because of ${why}: ${vs.length} graphs`);
    for (const v of vs.slice(0, examplesPerGroup)) {
      lines.push(`  e.g. ${v.id}`);
      if (v.violation !== undefined) lines.push(`       ${v.violation}`);
      for (const t of v.trace ?? []) lines.push(`       ${t}`);
    }
  }
  return lines.join('\n');
}

/** JSON without the per-graph reader details of safe graphs (they are many and dull). */
export function soundnessJson(r: SoundnessReport): unknown {
  return {
    bound: r.bound,
    graphs: r.graphs,
    counts: r.counts,
    dataPlaneRuns: r.dataPlaneRuns,
    seconds: r.seconds,
    acceptedUnsafe: r.verdicts
      .filter((v) => v.verdict === 'accepted-unsafe')
      .map((v) => ({ id: v.id, reason: unsafeReason(v), violation: v.violation, trace: v.trace, readers: v.readers })),
    acceptedSafe: r.verdicts.filter((v) => v.verdict === 'accepted-safe').map((v) => v.id),
  };
}
