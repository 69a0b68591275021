// Permission soundness (docs/design.md "Permission soundness"): for every graph within the bound, the permission
// model accepts or refuses it; for an accepted graph with a snapshot reader, the data-plane model
// of the scheme it implements decides whether every snapshot read returns snapshot data.
// Graphs QEMU would accept but that can hand a snapshot reader other data are reported apart
// from the safe ones (docs/requirements/qemu-fleecing.md §6 B6: a writable export on the temp image is accepted).
import { KNOWN_BAD, S1, S3, S4, type Scheme } from '../models/fleecing/index.ts';
import { applyOp, evaluate, QEMU_7_2, type GraphOp, type GraphState, type ModelOptions, type PermissionModelError } from '../models/permissions/graph.ts';
import { readerHazard, snapshotReaders, type SnapshotReader } from '../models/permissions/storage.ts';
import type { PermissionState } from '../models/permissions/behaviour.ts';
import type { Invariant } from '../explorer/behaviour.ts';
import { enumerateGraphs, type GraphBound, type GraphCase, DEFAULT_BOUND } from './graphs.ts';
import { runDataPlane, type DataPlaneConfig, type DataPlaneVerdict } from './dataplane.ts';

export type SoundnessVerdict = 'refused' | 'no-snapshot-reader' | 'accepted-safe' | 'accepted-unsafe';

export type { SnapshotReader, ForeignWriter, ReadPath } from '../models/permissions/storage.ts';
export { snapshotReaders } from '../models/permissions/storage.ts';

export interface GraphVerdict {
  readonly id: string;
  readonly verdict: SoundnessVerdict;
  readonly refusal?: string;
  readonly readers: readonly SnapshotReader[];
  /** For accepted-unsafe: the reader whose data-plane run failed (index into readers). */
  readonly unsafeReader?: number;
  /** Command count of the graph (the report's examples are the shortest graphs). */
  readonly ops?: number;
  /** For accepted-unsafe: the first violation found and its trace. */
  readonly violation?: string;
  readonly trace?: readonly string[];
}

export interface SoundnessOptions {
  readonly permissions: ModelOptions;
  /** Data-plane schemes: the known-good S3/S4 by default; tests swap in known-bad ones. */
  readonly legacyScheme: Scheme;
  readonly cbwScheme: Scheme;
  /** The legacy scheme when the copies are not serialising (the target's backing is an alias
   * of the source, not the node): S1, the seed race. */
  readonly unserialisedScheme: Scheme;
  /** The legacy scheme when the reader reads an alias of the target: the copies serialise on
   * the target node, the reads are tracked on the alias: S3 without read tracking. */
  readonly untrackedScheme: Scheme;
  /** Clusters of the data-plane runs, and the cap on guest writers modelled. */
  readonly clusters: number;
  readonly maxGuestWriters: number;
}

export const DEFAULT_SOUNDNESS: SoundnessOptions = {
  permissions: QEMU_7_2,
  legacyScheme: S3,
  cbwScheme: S4,
  unserialisedScheme: S1,
  untrackedScheme: KNOWN_BAD.find((k) => k.name === 's3-no-read-tracking')!,
  clusters: 2,
  maxGuestWriters: 1,
};

/** Judge one graph. `cache` memoises data-plane runs, which depend on few parameters. */
/** `evaluate` with the graph after the leading blockdev-adds memoised: every export choice of
 * one structure shares them (the enumeration's cost is the permission model, not the data plane). */
function evaluateCached(ops: readonly GraphOp[], options: ModelOptions, prefixes?: Map<string, { graph: GraphState; refusal?: PermissionModelError }>) {
  if (prefixes === undefined) return evaluate(ops, options);
  let n = 0;
  while (n < ops.length && ops[n]!.op === 'blockdev-add') n++;
  const key = JSON.stringify(ops.slice(0, n));
  let pre = prefixes.get(key);
  if (pre === undefined) {
    const ev = evaluate(ops.slice(0, n), options);
    pre = { graph: ev.graph, ...(ev.refusal !== undefined ? { refusal: ev.refusal } : {}) };
    prefixes.set(key, pre);
  }
  let g = pre.graph;
  let refusal = pre.refusal;
  for (const op of ops.slice(n)) {
    const r = applyOp(g, op);
    g = r.state;
    if (!r.result.ok && refusal === undefined) refusal = r.result.error;
  }
  return refusal === undefined ? { graph: g, accepted: true as const } : { graph: g, accepted: false as const, refusal };
}

export function judge(
  c: GraphCase,
  opts: SoundnessOptions = DEFAULT_SOUNDNESS,
  cache = new Map<string, DataPlaneVerdict>(),
  prefixes?: Map<string, { graph: GraphState; refusal?: PermissionModelError }>,
): GraphVerdict {
  const ev = evaluateCached(c.ops, opts.permissions, prefixes);
  if (!ev.accepted) return { id: c.id, verdict: 'refused', refusal: ev.refusal?.message ?? '', readers: [] };
  const readers = snapshotReaders(ev.graph);
  if (readers.length === 0) return { id: c.id, verdict: 'no-snapshot-reader', readers };
  for (const [i, r] of readers.entries()) {
    const cfg = dataPlaneConfig(r, opts);
    const key = JSON.stringify(cfg);
    let v = cache.get(key);
    if (v === undefined) {
      v = runDataPlane(cfg);
      cache.set(key, v);
    }
    if (!v.safe) {
      return {
        id: c.id,
        verdict: 'accepted-unsafe',
        readers,
        unsafeReader: i,
        ops: c.ops.length,
        ...(v.violation !== undefined ? { violation: `${r.exportId}: ${v.violation}` } : {}),
        ...(v.trace !== undefined ? { trace: v.trace } : {}),
      };
    }
  }
  return { id: c.id, verdict: 'accepted-safe', readers };
}

/** The data-plane configuration of one snapshot reader: the scheme its read path gives, and
 * one extra writer per storage it can be written through outside the protection (its label
 * names the node it writes through and the file, so a trace shows the alias). */
export function dataPlaneConfig(r: SnapshotReader, opts: SoundnessOptions): DataPlaneConfig {
  const scheme =
    r.scheme === 'S4' ? opts.cbwScheme : r.readPath === 'alias-backing' ? opts.unserialisedScheme : r.readPath === 'alias-target' ? opts.untrackedScheme : opts.legacyScheme;
  const tempVia = r.tempWriters.length > 0 ? r.target : r.aliasTempWriters[0]?.via;
  const sourceVia = r.sourceBypassWriters.length > 0 ? r.source : r.aliasSourceWriters[0]?.via;
  return {
    scheme,
    guestWriters: Math.min(r.guestWriters.length, opts.maxGuestWriters),
    tempIntruder: tempVia !== undefined,
    sourceIntruder: sourceVia !== undefined,
    clusters: opts.clusters,
    ...(tempVia !== undefined ? { tempVia: { node: tempVia, storage: r.targetStorage ?? r.target } } : {}),
    ...(sourceVia !== undefined ? { sourceVia: { node: sourceVia, storage: r.sourceStorage ?? r.source } } : {}),
  };
}

export interface SoundnessReport {
  readonly bound: GraphBound;
  readonly graphs: number;
  readonly counts: Readonly<Record<SoundnessVerdict, number>>;
  /** Data-plane configurations actually explored (after memoisation). */
  readonly dataPlaneRuns: number;
  readonly verdicts: readonly GraphVerdict[];
  readonly seconds: number;
}

export function soundness(bound: GraphBound = DEFAULT_BOUND, opts: SoundnessOptions = DEFAULT_SOUNDNESS): SoundnessReport {
  const t0 = process.hrtime.bigint();
  const cache = new Map<string, DataPlaneVerdict>();
  const prefixes = new Map<string, { graph: GraphState; refusal?: PermissionModelError }>();
  const verdicts = enumerateGraphs(bound).map((c) => judge(c, opts, cache, prefixes));
  const counts: Record<SoundnessVerdict, number> = { refused: 0, 'no-snapshot-reader': 0, 'accepted-safe': 0, 'accepted-unsafe': 0 };
  for (const v of verdicts) counts[v.verdict]++;
  return { bound, graphs: verdicts.length, counts, dataPlaneRuns: cache.size, verdicts, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

/** For the permission Behaviour: no accepted graph lets anything but cbw write under a snapshot
 * reader (the temp/target, or the source around cbw, through the node or an alias of its
 * file), nor reads it around the serialisation. Violated on QEMU 7.2 by B6. */
export const noForeignWriterUnderSnapshot: Invariant<PermissionState> = {
  name: 'no-foreign-writer-under-snapshot',
  check({ graph }) {
    for (const r of snapshotReaders(graph)) {
      // direct writers first: the sentences the B6 tests know
      if (r.tempWriters.length > 0) {
        return `export ${r.exportId} reads a snapshot kept in '${r.target}', which another user may write: ${r.tempWriters.join('; ')}`;
      }
      if (r.sourceBypassWriters.length > 0) {
        return `export ${r.exportId} reads a snapshot of '${r.source}', which a user may write without copy-before-write: ${r.sourceBypassWriters.join('; ')}`;
      }
      const why = readerHazard(r);
      if (why !== undefined) return why;
    }
    return undefined;
  },
};
