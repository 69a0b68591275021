// The permission model against the ground truth: the edges measured on QEMU 7.2
// (docs/requirements/qemu-fleecing.md §1.5, both tables, edge by edge) and the measured conflicts of §1.4. Every
// check is also run against a known-bad cbw rule (forgets to unshare WRITE on the source), which
// it must catch.
import { describe, expect, it } from 'vitest';
import {
  applyOp,
  evaluate,
  findEdge,
  type GraphOp,
  type ModelOptions,
  QEMU_7_2,
} from '../models/permissions/graph.ts';
import { permNames, type PermName } from '../models/permissions/perm.ts';
import {
  DELETE_CBW,
  legacyFleecing,
  MEASURED,
  modernFleecing,
  READONLY_EXPORT_ON_SOURCE,
  RESIZE_CBW,
  SOURCE_FILE,
  WRITABLE_EXPORT_ON_SOURCE,
  WRITABLE_EXPORT_ON_TEMP,
} from '../models/permissions/scenarios.ts';

const CR = 'consistent-read';
const W = 'write';
const WU = 'write-unchanged';
const R = 'resize';
const ALL: PermName[] = [CR, W, WU, R];
const ALL_BUT_RESIZE: PermName[] = [CR, W, WU];

interface Row {
  parent: string;
  child: string;
  name?: string;
  perm: PermName[];
  shared: PermName[];
}

/** §1.5 modern table. */
const MODERN: Row[] = [
  { parent: 'export:exp-fleece', child: 'fl-access', perm: [CR], shared: ALL_BUT_RESIZE },
  { parent: 'export:exp-live', child: 'fl-cbw', perm: [W, CR], shared: ALL_BUT_RESIZE },
  { parent: 'fl-access', child: 'fl-cbw', name: 'file', perm: [], shared: ALL },
  { parent: 'fl-cbw', child: 'source', name: 'file', perm: [W, CR], shared: [WU, CR] },
  { parent: 'fl-cbw', child: 'temp', name: 'target', perm: [W], shared: ALL_BUT_RESIZE },
  { parent: 'source', child: SOURCE_FILE, name: 'file', perm: [R, W, CR], shared: [WU, CR] },
];

/** §1.5 legacy table (the implicit filter named '#cbw' here). */
const LEGACY: Row[] = [
  { parent: '#cbw', child: 'source', name: 'file', perm: [W, CR], shared: [WU, CR] },
  { parent: '#cbw', child: 'temp', name: 'target', perm: [W], shared: ALL_BUT_RESIZE },
  { parent: 'temp', child: 'source', name: 'backing', perm: [CR], shared: ALL },
  { parent: 'job:fleecing', child: '#cbw', name: 'main node', perm: [], shared: ALL },
  { parent: 'job:fleecing', child: 'temp', name: 'target', perm: [], shared: ALL },
  { parent: 'export:exp-live', child: '#cbw', perm: [W, CR], shared: ALL_BUT_RESIZE },
  { parent: 'export:exp-fleece', child: 'temp', perm: [CR], shared: ALL_BUT_RESIZE },
];

const asSet = (names: readonly PermName[]): string => [...names].sort().join(',');

/** Every mismatch between the model's graph after `ops` and the table, as readable lines. */
function tableMismatches(ops: GraphOp[], rows: Row[], options: ModelOptions): string[] {
  const ev = evaluate(ops, options);
  const out: string[] = [];
  if (!ev.accepted) out.push(`refused: ${ev.refusal?.message}`);
  for (const row of rows) {
    const e = findEdge(ev.graph, row.parent, row.child, row.name);
    if (e === undefined) {
      out.push(`missing edge ${row.parent} -> ${row.child}`);
      continue;
    }
    if (asSet(permNames(e.perm)) !== asSet(row.perm)) {
      out.push(`${row.parent} -> ${row.child}: perm [${permNames(e.perm)}] != [${row.perm}]`);
    }
    if (asSet(permNames(e.shared)) !== asSet(row.shared)) {
      out.push(`${row.parent} -> ${row.child}: shared [${permNames(e.shared)}] != [${row.shared}]`);
    }
  }
  return out;
}

/** The §1.4 measured verdicts; returns mismatches. */
function conflictMismatches(options: ModelOptions): string[] {
  const out: string[] = [];
  const base = evaluate(modernFleecing(), options);
  if (!base.accepted) return [`modern graph refused: ${base.refusal?.message}`];
  const g = base.graph;

  const src = applyOp(g, WRITABLE_EXPORT_ON_SOURCE).result;
  if (src.ok) out.push('writable export on source accepted');
  else if (src.error.message !== MEASURED.writableExportOnSource) out.push(`source message: ${src.error.message}`);

  const rs = applyOp(g, RESIZE_CBW).result;
  if (rs.ok) out.push('resize of fl-cbw accepted');
  else if (!rs.error.message.startsWith(MEASURED.resizeCbwPrefix) || !rs.error.message.includes(MEASURED.resizeCbwInfix)) {
    out.push(`resize message: ${rs.error.message}`);
  }

  const del = applyOp(g, DELETE_CBW).result;
  if (del.ok || del.error.message !== MEASURED.deleteInUse) out.push('blockdev-del fl-cbw not refused as in use');

  // Accepted although unsafe (B6), and the harmless read-only export on source.
  const temp = applyOp(g, WRITABLE_EXPORT_ON_TEMP).result;
  if (!temp.ok) out.push(`writable export on temp refused: ${temp.error.message}`);
  const ro = applyOp(g, READONLY_EXPORT_ON_SOURCE).result;
  if (!ro.ok) out.push(`read-only export on source refused: ${ro.error.message}`);
  return out;
}

const BAD: ModelOptions = { cbwRule: 'buggy-no-unshare' };

describe('permission model: docs/requirements/qemu-fleecing.md §1.5 tables', () => {
  it('reproduces every edge of the modern graph', () => {
    expect(tableMismatches(modernFleecing(), MODERN, QEMU_7_2)).toEqual([]);
  });
  it('reproduces every edge of the legacy graph (backup sync=none inserts cbw, re-parents live)', () => {
    expect(tableMismatches(legacyFleecing('#cbw'), LEGACY, QEMU_7_2)).toEqual([]);
  });
  it('the legacy filter gets an auto-generated #blockNNN name when none is given', () => {
    const ev = evaluate(legacyFleecing(undefined), QEMU_7_2);
    expect(ev.accepted).toBe(true);
    expect(ev.graph.nodes.find((n) => n.implicit)?.name).toMatch(/^#block\d+$/);
  });
  it('catches a cbw rule that forgets to unshare WRITE, in both tables', () => {
    expect(tableMismatches(modernFleecing(), MODERN, BAD)).toContain(
      'fl-cbw -> source: shared [consistent-read,write,write-unchanged] != [write-unchanged,consistent-read]',
    );
    expect(tableMismatches(legacyFleecing('#cbw'), LEGACY, BAD).length).toBeGreaterThan(0);
  });
});

describe('permission model: measured conflicts of docs/requirements/qemu-fleecing.md §1.4', () => {
  it('refuses and accepts exactly as QEMU 7.2 did, with its exact messages', () => {
    expect(conflictMismatches(QEMU_7_2)).toEqual([]);
  });
  // Full text checked over QMP on qemu-storage-daemon 7.2.22 (docs/requirements/qemu-fleecing.md §1.4 abridges it).
  it('the resize refusal names both BlockBackends as root users', () => {
    const g = evaluate(modernFleecing()).graph;
    const r = applyOp(g, RESIZE_CBW).result;
    expect(r.ok ? '' : r.error.message).toBe(
      "Permission conflict on node 'fl-cbw': permissions 'resize' are both required by an unnamed block device " +
        "(uses node 'fl-cbw' as 'root' child) and unshared by an unnamed block device (uses node 'fl-cbw' as 'root' child).",
    );
  });
  it('catches the known-bad cbw rule: it accepts the writable export on source', () => {
    expect(conflictMismatches(BAD)).toContain('writable export on source accepted');
  });
  it('a refused change is rolled back whole: the graph is the same object afterwards', () => {
    const g = evaluate(modernFleecing()).graph;
    const r = applyOp(g, WRITABLE_EXPORT_ON_SOURCE);
    expect(r.result.ok).toBe(false);
    expect(r.state).toBe(g);
    // A two-step export whose second step (unshare RESIZE) fails leaves no edge behind either.
    const withResizer = applyOp(g, { op: 'block_resize', nodeName: 'temp' });
    expect(withResizer.result.ok).toBe(false); // cbw's target edge unshares RESIZE on temp
    expect(withResizer.state.edges).toEqual(g.edges);
    // Message checked over QMP on qemu-storage-daemon 7.2.22 while writing this test.
    expect(withResizer.result.ok ? '' : withResizer.result.error.message).toBe(
      "Permission conflict on node 'temp': permissions 'resize' are both required by an unnamed block device " +
        "(uses node 'temp' as 'root' child) and unshared by node 'fl-cbw' (uses node 'temp' as 'target' child).",
    );
  });
  it('a session continues after a refusal (QMP semantics)', () => {
    const ev = evaluate([...modernFleecing(), WRITABLE_EXPORT_ON_SOURCE, WRITABLE_EXPORT_ON_TEMP]);
    expect(ev.results.map((r) => r.ok)).toEqual([true, true, true, true, true, true, true, false, true]);
    expect(ev.refusal?.kind).toBe('conflict');
    expect(ev.refusal?.context.perms).toEqual(['write']);
  });
});

describe('permission model: cbw_child_perm 7.2 vs 9.1 (bug B2)', () => {
  // The backup job's BlockBackend is cbw's only parent: 0 / ALL.
  const jobOnly: GraphOp[] = [
    { op: 'blockdev-add', node: { name: 'source', driver: 'file' } },
    { op: 'blockdev-add', node: { name: 'temp', driver: 'file' } },
    { op: 'blockdev-backup', jobId: 'j', device: 'source', target: 'temp', sync: 'none', filterNodeName: 'cbw' },
  ];
  it('7.2 takes no consistent-read on the source when no parent writes; 9.1 does', () => {
    const old = findEdge(evaluate(jobOnly, { cbwRule: '7.2' }).graph, 'cbw', 'source', 'file');
    const fixed = findEdge(evaluate(jobOnly, { cbwRule: '9.1' }).graph, 'cbw', 'source', 'file');
    expect(permNames(old?.perm ?? -1)).toEqual([]);
    expect(permNames(fixed?.perm ?? -1)).toEqual([CR]);
    expect(permNames(fixed?.shared ?? -1)).toEqual([CR, WU]);
  });
  it('9.1 agrees with 7.2 on both measured tables (a writer is always above cbw there)', () => {
    expect(tableMismatches(modernFleecing(), MODERN, { cbwRule: '9.1' })).toEqual([]);
    expect(tableMismatches(legacyFleecing('#cbw'), LEGACY, { cbwRule: '9.1' })).toEqual([]);
  });
});

describe('permission model: other operations', () => {
  it('block-job-cancel drops the filter and puts the live export back on source', () => {
    const ev = evaluate([...legacyFleecing('#cbw'), { op: 'block-job-cancel', jobId: 'fleecing' }]);
    expect(ev.accepted).toBe(true);
    expect(ev.graph.nodes.map((n) => n.name)).not.toContain('#cbw');
    expect(findEdge(ev.graph, 'export:exp-live', 'source')).toBeDefined();
    // Now nothing unshares WRITE on source: a second writer is accepted.
    expect(applyOp(ev.graph, { op: 'block-export-add', id: 'w2', nodeName: 'source', writable: true }).result.ok).toBe(true);
  });
  it('a writable export on a read-only node is refused', () => {
    const ev = evaluate([
      { op: 'blockdev-add', node: { name: 'ro', driver: 'file', readOnly: true } },
      { op: 'block-export-add', id: 'e', nodeName: 'ro', writable: true },
    ]);
    expect(ev.refusal?.message).toBe('Block node is read-only');
  });
  it('usage errors are refusals of kind usage, not conflicts', () => {
    const ev = evaluate([{ op: 'blockdev-add', node: { name: 'x', driver: 'qcow2', children: { file: 'nope' } } }]);
    expect(ev.refusal?.kind).toBe('usage');
  });
});

describe('permission model as a Behaviour (command orders)', () => {
  it('every order of the modern menu is conflict-free and refreshed; refusals are recorded', async () => {
    const { permissionBehaviour } = await import('../models/permissions/behaviour.ts');
    const { explore } = await import('../explorer/explore.ts');
    const menu = [...modernFleecing(), WRITABLE_EXPORT_ON_SOURCE, WRITABLE_EXPORT_ON_TEMP];
    const r = explore(permissionBehaviour(menu));
    expect(r.verdict).toBe('ok');
    expect(r.exhaustive).toBe(true);
    expect(r.distinct).toBeGreaterThan(menu.length);
  });

  it('with the soundness invariant, the explorer finds B6 as the shortest command sequence', async () => {
    const { permissionBehaviour } = await import('../models/permissions/behaviour.ts');
    const { noForeignWriterUnderSnapshot } = await import('../soundness/soundness.ts');
    const { explore } = await import('../explorer/explore.ts');
    const menu = [...modernFleecing(), WRITABLE_EXPORT_ON_SOURCE, WRITABLE_EXPORT_ON_TEMP];
    const r = explore(permissionBehaviour(menu, { invariants: [noForeignWriterUnderSnapshot] }));
    expect(r.verdict).toBe('violation');
    const steps = r.counterexample?.steps.map((s) => `${s.label.action}(${String(s.label.args?.['id'] ?? s.label.args?.['node-name'])})`);
    // 5 blockdev-adds, the fleece export, then the writable export on temp: 7 commands.
    expect(steps).toHaveLength(7);
    expect(steps?.at(-1)).toBe('block-export-add(exp-temp)');
    expect(r.counterexample?.message).toMatch(/^export exp-fleece reads a snapshot kept in 'temp', which another user may write/);
  });

  it('the self-consistency invariants catch a tampered graph (known-bad state)', async () => {
    const { conflictFree, fixedPoint } = await import('../models/permissions/behaviour.ts');
    const g = evaluate(modernFleecing()).graph;
    const ok = { graph: g, issued: 0, refused: 0 };
    expect(conflictFree.check(ok)).toBeUndefined();
    expect(fixedPoint(QEMU_7_2).check(ok)).toBeUndefined();
    // cbw's source edge forgets to unshare WRITE, and the live export is put on source as well.
    const stale = g.edges.map((e) => (e.name === 'file' && e.child === 'source' ? { ...e, shared: e.shared | 2 } : e));
    expect(fixedPoint(QEMU_7_2).check({ ...ok, graph: { ...g, edges: stale } })).toBe("edge fl-cbw -> source (file) is stale");
    const clash = [...g.edges, { ...g.edges.find((e) => e.parent.kind === 'export' && e.parent.id === 'exp-live')!, child: 'source', seq: 99 }];
    expect(conflictFree.check({ ...ok, graph: { ...g, edges: clash } })).toMatch(/node 'source' has parents export:exp-live using 'write' which fl-cbw does not share/);
  });
});

describe('permission model: cbw without parents (checked on qemu-storage-daemon 7.2.22 while writing this)', () => {
  // Legacy-style graph with an explicit copy-before-write node: temp (qcow2) backed by source,
  // fl-cbw (file=source, target=temp), a read-only export on temp. Run by hand on QSD 7.2:
  // with nothing above fl-cbw, a writable export on source is accepted (and a write through it
  // changed what the temp export returned); once fl-cbw has a parent, it is refused with
  // exactly the message below.
  const base: GraphOp[] = [
    { op: 'blockdev-add', node: { name: 'sf', driver: 'file' } },
    { op: 'blockdev-add', node: { name: 'source', driver: 'qcow2', children: { file: 'sf' } } },
    { op: 'blockdev-add', node: { name: 'tf', driver: 'file' } },
    { op: 'blockdev-add', node: { name: 'temp', driver: 'qcow2', children: { file: 'tf', backing: 'source' } } },
    { op: 'blockdev-add', node: { name: 'fl-cbw', driver: 'copy-before-write', children: { file: 'source', target: 'temp' } } },
    { op: 'block-export-add', id: 'exp-fleece', nodeName: 'temp', writable: false },
  ];
  const live: GraphOp = { op: 'block-export-add', id: 'exp-live', nodeName: 'source', writable: true };
  it('accepts a writable export on source while fl-cbw has no parent (6.2 relaxation)', () => {
    expect(evaluate([...base, live]).accepted).toBe(true);
  });
  it('refuses it once fl-cbw has a parent, with the message QSD printed', () => {
    const ev = evaluate([...base, { op: 'block-export-add', id: 'exp-cbw', nodeName: 'fl-cbw', writable: false }, live]);
    expect(ev.refusal?.message).toBe(
      "Permission conflict on node 'source': permissions 'write' are both required by an unnamed block device " +
        "(uses node 'source' as 'root' child) and unshared by node 'fl-cbw' (uses node 'source' as 'file' child).",
    );
  });
  it('the known-bad cbw rule misses that refusal', () => {
    const ev = evaluate([...base, { op: 'block-export-add', id: 'exp-cbw', nodeName: 'fl-cbw', writable: false }, live], { cbwRule: 'buggy-no-unshare' });
    expect(ev.accepted).toBe(true);
  });
});
