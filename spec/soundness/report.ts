// Text and JSON forms of a soundness report: the counts first, then the accepted-but-unsafe
// graphs grouped by why they are unsafe (a writer on the temp, a writer bypassing cbw), each
// group with its count, one example graph and the shortest data-plane counterexample.
import type { GraphVerdict, SoundnessReport } from './soundness.ts';

/** The causes of an accepted-but-unsafe graph, most specific first: those of the reader whose
 * data-plane run failed. Causes that come from storage identity (a second node over the
 * source's or the temp's file) are named as aliasing, apart from the node-level ones. */
export function unsafeCauses(v: GraphVerdict): string[] {
  const r = v.readers[v.unsafeReader ?? 0];
  if (r === undefined) return ['the data-plane scheme itself'];
  const parts: string[] = [];
  if (r.readPath === 'alias-backing') {
    parts.push("aliasing: the temp's backing is another node over the source's file, so the copies into the temp are not serialised against snapshot reads (block-copy's fleecing check compares nodes)");
  }
  if (r.readPath === 'alias-target') {
    parts.push("aliasing: the snapshot is read through another node over the temp's file, whose reads the serialising copies do not wait for");
  }
  if (r.aliasSourceWriters.length > 0) parts.push("aliasing: a write through another node over the source's file, bypassing copy-before-write");
  if (r.aliasTempWriters.length > 0) parts.push("aliasing: a write through another node over the temp/target's file");
  if (r.tempWriters.length > 0) parts.push('a writer on the temp/target node (docs/requirements/qemu-fleecing.md §6 B6)');
  if (r.sourceBypassWriters.length > 0) parts.push('a writer on the source that bypasses copy-before-write');
  if (parts.length === 0) parts.push('the data-plane scheme itself');
  return parts;
}

/** Why an accepted graph is unsafe, in one line: its most specific cause (the report's group). */
export function unsafeReason(v: GraphVerdict): string {
  return unsafeCauses(v)[0]!;
}

/** Accepted-but-unsafe verdicts grouped by their most specific cause; in each group the graphs
 * with no other cause come first (their trace shows the group's cause), then by command count. */
export function unsafeGroups(r: SoundnessReport): Map<string, GraphVerdict[]> {
  const groups = new Map<string, GraphVerdict[]>();
  for (const v of r.verdicts) {
    if (v.verdict !== 'accepted-unsafe') continue;
    const k = unsafeReason(v);
    groups.set(k, [...(groups.get(k) ?? []), v]);
  }
  const others = (v: GraphVerdict) => Math.sign(unsafeCauses(v).length - 1);
  // a node-level cause is best shown on a graph without an alias
  const aliased = (why: string, v: GraphVerdict) => (!why.startsWith('aliasing') && v.id.includes(' alias=') ? 1 : 0);
  for (const [why, vs] of groups) {
    vs.sort((a, b) => others(a) - others(b) || aliased(why, a) - aliased(why, b) || (a.ops ?? 0) - (b.ops ?? 0) || a.id.localeCompare(b.id));
  }
  return groups;
}

export function soundnessText(r: SoundnessReport, examplesPerGroup = 1): string {
  const lines: string[] = [];
  lines.push(`permission soundness: ${r.graphs} graphs (at most ${r.bound.maxExports} exports), ${r.seconds.toFixed(1)} s, ${r.dataPlaneRuns} data-plane explorations`);
  lines.push(`  refused by the permission model:    ${r.counts.refused}`);
  lines.push(`  accepted, no snapshot reader:       ${r.counts['no-snapshot-reader']}`);
  lines.push(`  accepted and safe:                  ${r.counts['accepted-safe']}`);
  lines.push(`  accepted but UNSAFE:                ${r.counts['accepted-unsafe']}`);
  const aliasing = r.verdicts.filter((v) => v.id.includes(' alias='));
  const count = (k: GraphVerdict['verdict']) => aliasing.filter((v) => v.verdict === k).length;
  lines.push(`  of which aliasing graphs:            ${aliasing.length} (refused ${count('refused')}, no reader ${count('no-snapshot-reader')}, safe ${count('accepted-safe')}, UNSAFE ${count('accepted-unsafe')})`);
  for (const [why, vs] of unsafeGroups(r)) {
    lines.push('');
    const mixed = vs.filter((v) => unsafeCauses(v).length > 1).length;
    lines.push(`accepted but unsafe because of ${why}: ${vs.length} graphs${mixed > 0 ? ` (${mixed} of them with a further cause)` : ''}`);
    for (const v of vs.slice(0, examplesPerGroup)) {
      lines.push(`  e.g. ${v.id}${v.ops !== undefined ? ` (${v.ops} commands)` : ''}`);
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
      .map((v) => ({ id: v.id, reason: unsafeReason(v), causes: unsafeCauses(v), violation: v.violation, trace: v.trace, readers: v.readers })),
    acceptedSafe: r.verdicts.filter((v) => v.verdict === 'accepted-safe').map((v) => v.id),
  };
}
