// Bounded enumeration of block graphs for permission soundness (docs/design.md "Permission soundness"): every
// graph built from the drivers of docs/requirements/qemu-fleecing.md §1 within a small bound, as the command
// sequence that builds it, so the permission model (spec/models/permissions) judges each one
// exactly as it would judge a QMP session.
//
// The bound:
//   - `source`: qcow2 over its file (the live disk), always present;
//   - `temp`: a raw file, a qcow2 without backing, or a qcow2 backed by `source`;
//   - `fl-cbw`: none, copy-before-write (file=source, target=temp) or the reverse roles;
//   - `fl-access`: snapshot-access over fl-cbw, or none;
//   - `fl-raw`: a raw filter over temp, over source, or none;
//   - a backup job sync=none source -> temp (inserting its cbw filter '#cbw'), or none;
//   - NBD exports, read-only or writable, on any of source, temp, fl-cbw, fl-access, fl-raw,
//     at most `maxExports` of them.
// Order: blockdev-add (children first), then the exports, then the backup job, so that an export
// on `source` is re-parented onto the job's filter as in docs/requirements/qemu-fleecing.md §5.2.
import type { GraphOp, NodeSpec } from '../models/permissions/graph.ts';

export type TempKind = 'raw' | 'qcow2' | 'qcow2-backed';
export type CbwKind = 'none' | 'source->temp' | 'temp->source';
export type RawKind = 'none' | 'over-temp' | 'over-source';
export type ExportMode = 'ro' | 'rw';

export interface GraphShape {
  readonly temp: TempKind;
  readonly cbw: CbwKind;
  readonly access: boolean;
  readonly raw: RawKind;
  readonly backup: boolean;
  /** Exports by node name. */
  readonly exports: Readonly<Record<string, ExportMode>>;
}

export interface GraphCase {
  /** Stable id: the shape in one line. */
  readonly id: string;
  readonly shape: GraphShape;
  readonly ops: readonly GraphOp[];
}

export interface GraphBound {
  readonly maxExports: number;
  readonly temps?: readonly TempKind[];
}

export const DEFAULT_BOUND: GraphBound = { maxExports: 3 };

export function shapeId(s: GraphShape): string {
  const ex = Object.entries(s.exports)
    .map(([n, m]) => `${n}:${m}`)
    .join(',');
  return `temp=${s.temp} cbw=${s.cbw}${s.access ? ' access' : ''}${s.raw !== 'none' ? ` raw=${s.raw}` : ''}${s.backup ? ' backup' : ''} exports=[${ex}]`;
}

/** The command sequence that builds a shape. */
export function opsOf(s: GraphShape): GraphOp[] {
  const add = (node: NodeSpec): GraphOp => ({ op: 'blockdev-add', node });
  const ops: GraphOp[] = [
    add({ name: 'source-file', driver: 'file' }),
    add({ name: 'source', driver: 'qcow2', children: { file: 'source-file' } }),
  ];
  if (s.temp === 'raw') ops.push(add({ name: 'temp', driver: 'file' }));
  else {
    ops.push(add({ name: 'temp-file', driver: 'file' }));
    ops.push(
      add({ name: 'temp', driver: 'qcow2', children: s.temp === 'qcow2-backed' ? { file: 'temp-file', backing: 'source' } : { file: 'temp-file' } }),
    );
  }
  if (s.cbw !== 'none') {
    const [file, target] = s.cbw === 'source->temp' ? ['source', 'temp'] : ['temp', 'source'];
    ops.push(add({ name: 'fl-cbw', driver: 'copy-before-write', children: { file, target } }));
    if (s.access) ops.push(add({ name: 'fl-access', driver: 'snapshot-access', children: { file: 'fl-cbw' } }));
  }
  if (s.raw !== 'none') ops.push(add({ name: 'fl-raw', driver: 'raw', children: { file: s.raw === 'over-temp' ? 'temp' : 'source' } }));
  for (const [nodeName, mode] of Object.entries(s.exports)) {
    ops.push({ op: 'block-export-add', id: `exp-${nodeName}`, nodeName, writable: mode === 'rw' });
  }
  if (s.backup) ops.push({ op: 'blockdev-backup', jobId: 'fleecing', device: 'source', target: 'temp', sync: 'none', filterNodeName: '#cbw' });
  return ops;
}

/** Every shape within the bound, each once, in a fixed order. */
export function enumerateGraphs(bound: GraphBound = DEFAULT_BOUND): GraphCase[] {
  const out: GraphCase[] = [];
  for (const temp of bound.temps ?? (['raw', 'qcow2', 'qcow2-backed'] as const)) {
    for (const cbw of ['none', 'source->temp', 'temp->source'] as const) {
      for (const access of cbw === 'none' ? [false] : [false, true]) {
        for (const raw of ['none', 'over-temp', 'over-source'] as const) {
          for (const backup of [false, true]) {
            const nodes = ['source', 'temp', ...(cbw !== 'none' ? ['fl-cbw'] : []), ...(access ? ['fl-access'] : []), ...(raw !== 'none' ? ['fl-raw'] : [])];
            for (const exports of exportChoices(nodes, bound.maxExports)) {
              const shape: GraphShape = { temp, cbw, access, raw, backup, exports };
              out.push({ id: shapeId(shape), shape, ops: opsOf(shape) });
            }
          }
        }
      }
    }
  }
  return out;
}

function exportChoices(nodes: readonly string[], max: number): Array<Record<string, ExportMode>> {
  const out: Array<Record<string, ExportMode>> = [];
  const go = (i: number, acc: Record<string, ExportMode>, n: number): void => {
    if (i === nodes.length) {
      out.push({ ...acc });
      return;
    }
    const node = nodes[i]!;
    go(i + 1, acc, n);
    if (n < max) {
      for (const m of ['ro', 'rw'] as const) {
        acc[node] = m;
        go(i + 1, acc, n + 1);
        delete acc[node];
      }
    }
  };
  go(0, {}, 0);
  return out;
}
