// Permission soundness (docs/design.md "Permission soundness"): for every graph within the bound, the permission
// model accepts or refuses it; for an accepted graph with a snapshot reader, the data-plane model
// of the scheme it implements decides whether every snapshot read returns snapshot data.
// Graphs QEMU would accept but that can hand a snapshot reader other data are reported apart
// from the safe ones (docs/requirements/qemu-fleecing.md §6 B6: a writable export on the temp image is accepted).
import { S3, S4, type Scheme } from '../models/fleecing/index.ts';
import { evaluate, QEMU_7_2, type GraphState, type ModelOptions } from '../models/permissions/graph.ts';
import { WRITE } from '../models/permissions/perm.ts';
import type { PermissionState } from '../models/permissions/behaviour.ts';
import type { Invariant } from '../explorer/behaviour.ts';
import { enumerateGraphs, type GraphBound, type GraphCase, DEFAULT_BOUND } from './graphs.ts';
import { runDataPlane, type DataPlaneConfig, type DataPlaneVerdict } from './dataplane.ts';

export type SoundnessVerdict = 'refused' | 'no-snapshot-reader' | 'accepted-safe' | 'accepted-unsafe';

/** A snapshot reader found in a graph, and what can write under it. */
export interface SnapshotReader {
  readonly exportId: string;
  /** 'S3': export on a temp overlay backed by cbw's source; 'S4': snapshot-access over cbw. */
  readonly scheme: 'S3' | 'S4';
  readonly cbw: string;
  readonly source: string;
  readonly target: string;
  /** Edges that write through cbw (guest writes, copied before they land). */
  readonly guestWriters: readonly string[];
  /** Edges with WRITE on the target or below it, other than cbw's own. */
  readonly tempWriters: readonly string[];
  /** Edges with WRITE on the source or below it that do not go through cbw. */
  readonly sourceBypassWriters: readonly string[];
}

export interface GraphVerdict {
  readonly id: string;
  readonly verdict: SoundnessVerdict;
  readonly refusal?: string;
  readonly readers: readonly SnapshotReader[];
  /** For accepted-unsafe: the first violation found and its trace. */
  readonly violation?: string;
  readonly trace?: readonly string[];
}

export interface SoundnessOptions {
  readonly permissions: ModelOptions;
  /** Data-plane schemes: the known-good S3/S4 by default; tests swap in known-bad ones. */
  readonly legacyScheme: Scheme;
  readonly cbwScheme: Scheme;
  /** Clusters of the data-plane runs, and the cap on guest writers modelled. */
  readonly clusters: number;
  readonly maxGuestWriters: number;
}

export const DEFAULT_SOUNDNESS: SoundnessOptions = {
  permissions: QEMU_7_2,
  legacyScheme: S3,
  cbwScheme: S4,
  clusters: 2,
  maxGuestWriters: 1,
};

const edgeName = (e: GraphState['edges'][number]): string => {
  const p = e.parent;
  const who = p.kind === 'node' ? p.node : p.kind === 'export' ? `export ${p.id}` : p.kind === 'blk' ? 'a block device' : `job ${p.id}`;
  return `${who} -> ${e.child} (${e.name})`;
};

function childOf(g: GraphState, node: string, name: string): string | undefined {
  return g.edges.find((e) => e.parent.kind === 'node' && e.parent.node === node && e.name === name)?.child;
}

function driverOf(g: GraphState, node: string) {
  return g.nodes.find((n) => n.name === node)?.driver;
}

/** The node and everything its data lives in: itself and its `file` descendants. Not the
 * backing chain (another image, protected by its own means) and not a cbw target (where cbw
 * copies to, not where the node's data is). */
function store(g: GraphState, node: string): Set<string> {
  const out = new Set<string>();
  const go = (n: string): void => {
    if (out.has(n)) return;
    out.add(n);
    for (const e of g.edges) if (e.parent.kind === 'node' && e.parent.node === n && e.name === 'file') go(e.child);
  };
  go(node);
  return out;
}

function backingChain(g: GraphState, node: string): string[] {
  const out: string[] = [];
  for (let b = childOf(g, node, 'backing'); b !== undefined && !out.includes(b); b = childOf(g, b, 'backing')) out.push(b);
  return out;
}

/** Writers into `within` from outside it, except the `except` parent node. */
function writersInto(g: GraphState, within: Set<string>, except: string): string[] {
  return g.edges
    .filter(
      (e) =>
        within.has(e.child) &&
        (e.perm & WRITE) !== 0 &&
        !(e.parent.kind === 'node' && (e.parent.node === except || within.has(e.parent.node))),
    )
    .map(edgeName);
}

/** Snapshot readers of an accepted graph (docs/requirements/qemu-fleecing.md §1.5 modern and legacy shapes). */
export function snapshotReaders(g: GraphState): SnapshotReader[] {
  const out: SnapshotReader[] = [];
  const cbws = g.nodes.filter((n) => n.driver === 'copy-before-write').map((n) => n.name);
  for (const ex of g.exports) {
    // Look through raw filters: they pass reads down unchanged.
    let node = ex.nodeName;
    while (driverOf(g, node) === 'raw') node = childOf(g, node, 'file') ?? node;
    let found: { scheme: 'S3' | 'S4'; cbw: string } | undefined;
    if (driverOf(g, node) === 'snapshot-access') {
      const c = childOf(g, node, 'file');
      if (c !== undefined && driverOf(g, c) === 'copy-before-write') found = { scheme: 'S4', cbw: c };
    } else {
      // block_copy_state_new's is_fleecing: the target's backing chain contains the source.
      const c = cbws.find((c) => childOf(g, c, 'target') === node && backingChain(g, node).includes(childOf(g, c, 'file') ?? ''));
      if (c !== undefined) found = { scheme: 'S3', cbw: c };
    }
    if (found === undefined) continue;
    const source = childOf(g, found.cbw, 'file')!;
    const target = childOf(g, found.cbw, 'target')!;
    out.push({
      exportId: ex.id,
      scheme: found.scheme,
      cbw: found.cbw,
      source,
      target,
      guestWriters: writersInto(g, new Set([found.cbw]), ''),
      tempWriters: writersInto(g, store(g, target), found.cbw),
      sourceBypassWriters: writersInto(g, store(g, source), found.cbw),
    });
  }
  return out;
}

/** Judge one graph. `cache` memoises data-plane runs, which depend on few parameters. */
export function judge(c: GraphCase, opts: SoundnessOptions = DEFAULT_SOUNDNESS, cache = new Map<string, DataPlaneVerdict>()): GraphVerdict {
  const ev = evaluate(c.ops, opts.permissions);
  if (!ev.accepted) return { id: c.id, verdict: 'refused', refusal: ev.refusal?.message ?? '', readers: [] };
  const readers = snapshotReaders(ev.graph);
  if (readers.length === 0) return { id: c.id, verdict: 'no-snapshot-reader', readers };
  for (const r of readers) {
    const cfg: DataPlaneConfig = {
      scheme: r.scheme === 'S3' ? opts.legacyScheme : opts.cbwScheme,
      guestWriters: Math.min(r.guestWriters.length, opts.maxGuestWriters),
      tempIntruder: r.tempWriters.length > 0,
      sourceIntruder: r.sourceBypassWriters.length > 0,
      clusters: opts.clusters,
    };
    const key = JSON.stringify([cfg.scheme.name, cfg.guestWriters, cfg.tempIntruder, cfg.sourceIntruder, cfg.clusters]);
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
        ...(v.violation !== undefined ? { violation: `${r.exportId}: ${v.violation}` } : {}),
        ...(v.trace !== undefined ? { trace: v.trace } : {}),
      };
    }
  }
  return { id: c.id, verdict: 'accepted-safe', readers };
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
  const verdicts = enumerateGraphs(bound).map((c) => judge(c, opts, cache));
  const counts: Record<SoundnessVerdict, number> = { refused: 0, 'no-snapshot-reader': 0, 'accepted-safe': 0, 'accepted-unsafe': 0 };
  for (const v of verdicts) counts[v.verdict]++;
  return { bound, graphs: verdicts.length, counts, dataPlaneRuns: cache.size, verdicts, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

/** For the permission Behaviour: no accepted graph lets anything but cbw write under a snapshot
 * reader (the temp/target, or the source around cbw). Violated on QEMU 7.2 by B6. */
export const noForeignWriterUnderSnapshot: Invariant<PermissionState> = {
  name: 'no-foreign-writer-under-snapshot',
  check({ graph }) {
    for (const r of snapshotReaders(graph)) {
      if (r.tempWriters.length > 0) {
        return `export ${r.exportId} reads a snapshot kept in '${r.target}', which another user may write: ${r.tempWriters.join('; ')}`;
      }
      if (r.sourceBypassWriters.length > 0) {
        return `export ${r.exportId} reads a snapshot of '${r.source}', which a user may write without copy-before-write: ${r.sourceBypassWriters.join('; ')}`;
      }
    }
    return undefined;
  },
};
