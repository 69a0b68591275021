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
//
// Aliasing graphs (storage identity, spec/models/permissions/storage.ts): a second node `alias`
// over the source's or the temp's image file (a file node, with a qcow2 on it when the aliased
// image is qcow2), read-only or not, that is the temp's backing, cbw's target or source, the
// backup job's target, or none of these; `alias` may be exported like any node. The source is
// then qcow2 (as above) or a raw file node. To keep the run short these graphs drop what
// the plain enumeration already covers without an alias: the raw filter, the plain qcow2 temp
// (it behaves as the raw one) and cbw with reversed roles; their exports are bounded by
// `maxAliasExports`, and a read-only alias is never exported writable (refused, and dull).
import type { GraphOp, NodeSpec } from '../models/permissions/graph.ts';

export type TempKind = 'raw' | 'qcow2' | 'qcow2-backed';
export type CbwKind = 'none' | 'source->temp' | 'temp->source';
export type RawKind = 'none' | 'over-temp' | 'over-source';
export type ExportMode = 'ro' | 'rw';
export type SourceKind = 'qcow2' | 'raw';
export type AliasUse = 'none' | 'backing' | 'cbw-target' | 'cbw-source' | 'backup-target';

/** A second node over the image file of `of` (storage identity). */
export interface AliasShape {
  readonly of: 'source' | 'temp';
  readonly use: AliasUse;
  readonly readOnly: boolean;
}

export interface GraphShape {
  readonly temp: TempKind;
  readonly cbw: CbwKind;
  readonly access: boolean;
  readonly raw: RawKind;
  readonly backup: boolean;
  /** Exports by node name. */
  readonly exports: Readonly<Record<string, ExportMode>>;
  /** Default qcow2 over its file. */
  readonly source?: SourceKind;
  readonly alias?: AliasShape;
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
  /** Exports of an aliasing graph, the alias's included; 0 leaves aliasing graphs out. Default
   * min(maxExports, 3). */
  readonly maxAliasExports?: number;
}

export const DEFAULT_BOUND: GraphBound = { maxExports: 3 };

/** Image files of the enumerated graphs: what the storage-identity rules compare. */
export const SOURCE_IMG = 'source.img';
export const TEMP_IMG = 'temp.img';

export function shapeId(s: GraphShape): string {
  const ex = Object.entries(s.exports)
    .map(([n, m]) => `${n}:${m}`)
    .join(',');
  const src = s.source !== undefined && s.source !== 'qcow2' ? `source=${s.source} ` : '';
  const al = s.alias !== undefined ? ` alias=${s.alias.of}${s.alias.readOnly ? '(ro)' : ''}${s.alias.use !== 'none' ? `:${s.alias.use}` : ''}` : '';
  return `${src}temp=${s.temp} cbw=${s.cbw}${s.access ? ' access' : ''}${s.raw !== 'none' ? ` raw=${s.raw}` : ''}${s.backup ? ' backup' : ''}${al} exports=[${ex}]`;
}

/** The command sequence that builds a shape. */
export function opsOf(s: GraphShape): GraphOp[] {
  const add = (node: NodeSpec): GraphOp => ({ op: 'blockdev-add', node });
  const al = s.alias;
  const ops: GraphOp[] = [];
  // The alias stack over `img`: a file node, and a qcow2 on it when the aliased image is qcow2.
  const addAlias = (img: string, qcow2: boolean, backing?: string): void => {
    const ro = al!.readOnly ? { readOnly: true } : {};
    if (!qcow2) {
      ops.push(add({ name: 'alias', driver: 'file', storage: img, ...ro }));
      return;
    }
    ops.push(add({ name: 'alias-file', driver: 'file', storage: img, ...ro }));
    ops.push(add({ name: 'alias', driver: 'qcow2', children: backing !== undefined ? { file: 'alias-file', backing } : { file: 'alias-file' }, ...ro }));
  };
  if (s.source === 'raw') ops.push(add({ name: 'source', driver: 'file', storage: SOURCE_IMG }));
  else {
    ops.push(add({ name: 'source-file', driver: 'file', storage: SOURCE_IMG }));
    ops.push(add({ name: 'source', driver: 'qcow2', children: { file: 'source-file' } }));
  }
  if (al?.of === 'source') addAlias(SOURCE_IMG, s.source !== 'raw');
  const backing = al?.use === 'backing' ? 'alias' : 'source';
  if (s.temp === 'raw') ops.push(add({ name: 'temp', driver: 'file', storage: TEMP_IMG }));
  else {
    ops.push(add({ name: 'temp-file', driver: 'file', storage: TEMP_IMG }));
    ops.push(add({ name: 'temp', driver: 'qcow2', children: s.temp === 'qcow2-backed' ? { file: 'temp-file', backing } : { file: 'temp-file' } }));
  }
  if (al?.of === 'temp') addAlias(TEMP_IMG, s.temp !== 'raw', s.temp === 'qcow2-backed' ? 'source' : undefined);
  if (s.cbw !== 'none') {
    let [file, target] = s.cbw === 'source->temp' ? ['source', 'temp'] : ['temp', 'source'];
    if (al?.use === 'cbw-source') file = 'alias';
    if (al?.use === 'cbw-target') target = 'alias';
    ops.push(add({ name: 'fl-cbw', driver: 'copy-before-write', children: { file, target } }));
    if (s.access) ops.push(add({ name: 'fl-access', driver: 'snapshot-access', children: { file: 'fl-cbw' } }));
  }
  if (s.raw !== 'none') ops.push(add({ name: 'fl-raw', driver: 'raw', children: { file: s.raw === 'over-temp' ? 'temp' : 'source' } }));
  for (const [nodeName, mode] of Object.entries(s.exports)) {
    ops.push({ op: 'block-export-add', id: `exp-${nodeName}`, nodeName, writable: mode === 'rw' });
  }
  if (s.backup) {
    const target = al?.use === 'backup-target' ? 'alias' : 'temp';
    ops.push({ op: 'blockdev-backup', jobId: 'fleecing', device: 'source', target, sync: 'none', filterNodeName: '#cbw' });
  }
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
  return [...out, ...enumerateAliasGraphs(bound)];
}

/** The aliasing graphs within the bound (see the head of this file). */
export function enumerateAliasGraphs(bound: GraphBound = DEFAULT_BOUND): GraphCase[] {
  const out: GraphCase[] = [];
  const max = bound.maxAliasExports ?? Math.min(bound.maxExports, 3);
  if (max <= 0) return out;
  const temps = (bound.temps ?? ['raw', 'qcow2-backed']).filter((t) => t !== 'qcow2');
  for (const source of ['raw', 'qcow2'] as const) {
    for (const temp of temps) {
      for (const [cbw, access] of [['none', false], ['source->temp', false], ['source->temp', true]] as const) {
        for (const backup of [false, true]) {
          for (const of of ['source', 'temp'] as const) {
            for (const use of ['none', 'backing', 'cbw-target', 'cbw-source', 'backup-target'] as const) {
              if (use === 'backing' && (of !== 'source' || temp !== 'qcow2-backed')) continue;
              if ((use === 'cbw-target' || use === 'cbw-source') && cbw === 'none') continue;
              if (use === 'backup-target' && !backup) continue;
              for (const readOnly of [false, true]) {
                const alias: AliasShape = { of, use, readOnly };
                const nodes = ['source', 'temp', ...(cbw !== 'none' ? ['fl-cbw'] : []), ...(access ? ['fl-access'] : []), 'alias'];
                for (const exports of exportChoices(nodes, max)) {
                  if (readOnly && exports['alias'] === 'rw') continue;
                  const shape: GraphShape = { source, temp, cbw, access, raw: 'none', backup, exports, alias };
                  out.push({ id: shapeId(shape), shape, ops: opsOf(shape) });
                }
              }
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
