// The permission suite (docs/requirements/qemu-fleecing.md §1): each case is a QMP sequence that builds a graph -
// the fleecing graphs, the measured conflicts, the accepted-but-unsafe writers on the temp
// image - run against a fresh daemon. The expected verdict of every command comes from the spec
// permission model (spec/models/permissions `evaluate`, QEMU 7.2 rules), never from a target.
// Checks: each command is accepted or refused as the model says (MUST), with the model's
// message (SHOULD); an accepted graph has the model's permissions on every edge (MUST); a graph
// docs/requirements/qemu-fleecing.md calls unsafe is reported as a hazard (SHOULD: a non-strict verdict, not a pass).
import {
  DELETE_CBW,
  MEASURED,
  READONLY_EXPORT_ON_SOURCE,
  RESIZE_CBW,
  WRITABLE_EXPORT_ON_SOURCE,
  WRITABLE_EXPORT_ON_TEMP,
  edgeViews,
  evaluate,
  legacyFleecing,
  modernFleecing,
  QEMU_7_2,
  type Evaluation,
  type GraphOp,
  type ModelOptions,
} from '../../spec/models/permissions/index.ts';
import type { CaseContext, CaseDef } from '../runner/model.ts';
import type { QmpReply } from '../qmp/client.ts';
import { permLabOf, type PermLab, type PermSession } from './targets.ts';
import { aliasCases } from './aliasing.ts';

export interface PermEnv {
  lab: PermLab;
  /** Set when the suite made the lab itself (its directory, removed at teardown). */
  ownDir?: string;
}

export interface PermCaseSpec {
  name: string;
  title: string;
  section: string;
  ops: readonly GraphOp[];
  /** Set when docs/requirements/qemu-fleecing.md calls an accepted graph unsafe (§1.4, §6 B6). */
  hazard?: string;
}

/** One command as a target answered it. */
export interface Observed {
  command: string;
  /** The arguments as sent (for the transcript). */
  args?: Record<string, unknown>;
  ok: boolean;
  error?: { class: string; desc: string };
}

const LEGACY_FILTER = 'fl-filter';

export const PERM_CASES: readonly PermCaseSpec[] = [
  { name: 'modern-graph', title: 'The modern fleecing graph (§5.1) is accepted', section: 'docs/requirements/qemu-fleecing.md §1.5 (modern table), §5.1', ops: modernFleecing() },
  { name: 'legacy-graph', title: 'The legacy fleecing graph (§5.2, backup sync=none) is accepted', section: 'docs/requirements/qemu-fleecing.md §1.5 (legacy table), §5.2', ops: legacyFleecing(LEGACY_FILTER) },
  {
    name: 'writable-export-on-source',
    title: 'A writable export on the source under cbw is refused',
    section: 'docs/requirements/qemu-fleecing.md §1.4 (measured conflict 1)',
    ops: [...modernFleecing(), WRITABLE_EXPORT_ON_SOURCE],
  },
  { name: 'resize-cbw', title: 'block_resize of the cbw node held by NBD exports is refused', section: 'docs/requirements/qemu-fleecing.md §1.4 (measured conflict 2)', ops: [...modernFleecing(), RESIZE_CBW] },
  { name: 'delete-cbw-in-use', title: 'blockdev-del of the cbw node in use is refused', section: 'docs/requirements/qemu-fleecing.md §1.4 (in use, not a permission check)', ops: [...modernFleecing(), DELETE_CBW] },
  {
    name: 'readonly-export-on-source',
    title: 'A read-only export on the source under cbw is accepted',
    section: 'docs/requirements/qemu-fleecing.md §1.4 (accepted)',
    ops: [...modernFleecing(), READONLY_EXPORT_ON_SOURCE],
  },
  {
    name: 'writable-export-on-temp',
    title: 'A writable export on the temp (cbw target) is accepted: a hazard',
    section: 'docs/requirements/qemu-fleecing.md §1.4 (accepted but unsafe), §6 B6',
    ops: [...modernFleecing(), WRITABLE_EXPORT_ON_TEMP],
    hazard: 'a writer on the cbw target can overwrite the snapshot store: fleece reads may return data that was never on the disk (§6 B6); the permission system accepts it because cbw shares WRITE on its target',
  },
  {
    name: 'legacy-writable-export-on-temp',
    title: 'Legacy graph: a writable export on the temp overlay is accepted: a hazard',
    section: 'docs/requirements/qemu-fleecing.md §1.5 (legacy table), §1.6, §6 B6',
    ops: [...legacyFleecing(LEGACY_FILTER), WRITABLE_EXPORT_ON_TEMP],
    hazard: 'a writer on the temp overlay changes what the fleece export shows (§1.6: the read-only export still shares WRITE, Kevin Wolf\'s 2018 review)',
  },
  {
    name: 'cancel-legacy-job',
    title: 'Legacy graph: cancelling the backup job drops the filter and puts the live export back on the source',
    section: 'docs/requirements/qemu-fleecing.md §5.2 (cleanup), §1.5',
    ops: [...legacyFleecing(LEGACY_FILTER), { op: 'block-export-del', id: 'exp-fleece' }, { op: 'block-job-cancel', jobId: 'fleecing' }],
  },
];

/** The same sequence with every node, export and job name under `prefix`, so several cases can
 * share one daemon (the model evaluates the renamed sequence, so messages match too). */
export function prefixed(ops: readonly GraphOp[], prefix: string): GraphOp[] {
  const p = (n: string) => `${prefix}${n}`;
  return ops.map((op): GraphOp => {
    switch (op.op) {
      case 'blockdev-add':
        return { op: op.op, node: { ...op.node, name: p(op.node.name), ...(op.node.children ? { children: Object.fromEntries(Object.entries(op.node.children).map(([k, v]) => [k, p(v)])) } : {}) } };
      case 'blockdev-del':
        return { ...op, nodeName: p(op.nodeName) };
      case 'block-export-add':
        return { ...op, id: p(op.id), nodeName: p(op.nodeName) };
      case 'block-export-del':
        return { ...op, id: p(op.id) };
      case 'blockdev-backup':
        return { ...op, jobId: p(op.jobId), device: p(op.device), target: p(op.target), ...(op.filterNodeName ? { filterNodeName: p(op.filterNodeName) } : {}) };
      case 'block-job-cancel':
        return { ...op, jobId: p(op.jobId) };
      case 'block_resize':
        return { ...op, nodeName: p(op.nodeName) };
    }
  });
}

/** The QMP command for one model operation on this daemon. */
export function toQmp(op: GraphOp, s: PermSession): { command: string; args: Record<string, unknown> } {
  switch (op.op) {
    case 'blockdev-add': {
      const n = op.node;
      const args: Record<string, unknown> = { 'node-name': n.name, driver: n.driver === 'qcow2' ? s.qcow2Driver : n.driver, ...(n.children ?? {}) };
      if (n.driver === 'file') args.filename = s.image(n.name);
      if (n.readOnly) args['read-only'] = true;
      return { command: 'blockdev-add', args };
    }
    case 'blockdev-del':
      return { command: 'blockdev-del', args: { 'node-name': op.nodeName } };
    case 'block-export-add':
      return { command: 'block-export-add', args: { type: 'nbd', id: op.id, 'node-name': op.nodeName, name: op.id, writable: op.writable } };
    case 'block-export-del':
      return { command: 'block-export-del', args: { id: op.id } };
    case 'blockdev-backup':
      return { command: 'blockdev-backup', args: { 'job-id': op.jobId, device: op.device, target: op.target, sync: op.sync, ...(op.filterNodeName ? { 'filter-node-name': op.filterNodeName } : {}) } };
    case 'block-job-cancel':
      return { command: 'block-job-cancel', args: { device: op.jobId } };
    case 'block_resize':
      return { command: 'block_resize', args: { 'node-name': op.nodeName, size: 64 * 1024 * 1024 } };
  }
}

/** Runs the sequence; a refused command does not stop it (a QMP session goes on). */
export async function runSequence(s: PermSession, ops: readonly GraphOp[]): Promise<Observed[]> {
  const out: Observed[] = [];
  for (const op of ops) {
    const { command, args } = toQmp(op, s);
    const r: QmpReply = await s.qmp.execute(command, args);
    out.push(r.ok ? { command, args, ok: true } : { command, args, ok: false, error: r.error });
    if (r.ok && op.op === 'block-job-cancel') await s.qmp.waitEvent('BLOCK_JOB_CANCELLED', 10_000, (d) => d.device === op.jobId);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Graph comparison: x-debug-query-block-graph against the model's edges

interface QGraph {
  nodes: { id: number; type: string; name: string }[];
  edges: { parent: number; child: number; name: string; perm: string[]; 'shared-perm': string[] }[];
}

/** Edge keys: node and job edges by parent name, BlockBackend edges by child and permissions
 * only (QEMU's export BlockBackends have no name). */
export function targetEdges(g: QGraph, prefix = ''): string[] {
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  return g.edges
    .filter((e) => byId.get(e.child)?.name.startsWith(prefix))
    .map((e) => {
      const p = byId.get(e.parent);
      const c = byId.get(e.child);
      const perm = [...e.perm].sort().join(',');
      const shared = [...e['shared-perm']].sort().join(',');
      if (!p || !c) return '?';
      if (p.type === 'block-backend') return `backend -> ${c.name} [${perm}] shared [${shared}]`;
      const parent = p.type === 'block-job' ? `job:${p.name}` : p.name;
      return `${parent} -> ${c.name} (${e.name}) [${perm}] shared [${shared}]`;
    })
    .sort();
}

export function modelEdges(ev: Evaluation): string[] {
  return edgeViews(ev.graph)
    // The backup job's own BlockBackend (0 / ALL on the filter) is not listed by QEMU 7.2's
    // x-debug-query-block-graph (§1.5 legacy table has only the job's "main node" and "target"
    // children), so it cannot be compared.
    .filter((e) => !e.parent.startsWith('job-blk:'))
    .map((e) => {
      const perm = [...e.perm].sort().join(',');
      const shared = [...e.shared].sort().join(',');
      if (e.parent.startsWith('export:') || e.parent.startsWith('job-blk:') || e.parent.startsWith('blk:')) return `backend -> ${e.child} [${perm}] shared [${shared}]`;
      return `${e.parent} -> ${e.child} (${e.name}) [${perm}] shared [${shared}]`;
    })
    .sort();
}

function diff(a: readonly string[], b: readonly string[]): string {
  const onlyA = a.filter((x) => !b.includes(x));
  const onlyB = b.filter((x) => !a.includes(x));
  return [...onlyA.map((x) => `model only: ${x}`), ...onlyB.map((x) => `target only: ${x}`)].join('; ');
}

export function describeOutcome(o: { ok: boolean; error?: { desc: string } }): string {
  return o.ok ? 'accepted' : `refused: ${o.error?.desc ?? ''}`;
}

// ---------------------------------------------------------------------------------------------
// Cases

/** What the cases saw, per target and case, for the agreement table. */
export const OBSERVED = new Map<string, { expected: string[]; observed: string[] }>();

function permCase(spec: PermCaseSpec, index: number, model: ModelOptions): CaseDef<PermEnv> {
  const prefix = `c${index}-`;
  const ops = prefixed(spec.ops, prefix);
  const ev = evaluate(ops, model);
  const plain = evaluate(spec.ops, model);
  const lastRefusal = plain.results.findIndex((r) => !r.ok);
  return {
    id: `permissions/${spec.name}`,
    section: `${spec.section}; spec/models/permissions (QEMU 7.2 rules)`,
    level: 'MUST',
    title: spec.title,
    description: `QMP: ${spec.ops.map((o) => o.op).join(', ')} (node, export and job names prefixed with '${prefix}' on the target).`,
    expectation: plain.accepted
      ? `The spec model accepts every command${spec.hazard ? `, but the graph is unsafe: ${spec.hazard}` : ''}; the permissions on every edge equal the model's.`
      : `The spec model refuses command ${lastRefusal + 1} (${spec.ops[lastRefusal]!.op}): "${plain.refusal!.message}".`,
    async run(ctx: CaseContext<PermEnv>) {
      const s = await ctx.env.lab.session();
      const seen = await runSequence(s, ops);
      // The whole QMP transcript, arguments and answers, for the case page.
      seen.forEach((o, i) => ctx.observe(`QMP #${i + 1} -> ${JSON.stringify({ execute: o.command, arguments: o.args })} <- ${o.ok ? '{"return": {}}' : JSON.stringify({ error: o.error })}`));
      const expected = ev.results.map((r) => (r.ok ? 'accepted' : `refused: ${r.error.message}`));
      OBSERVED.set(`${ctx.target.name} ${ctx.caseId}`, { expected, observed: seen.map(describeOutcome) });
      const missing = seen.find((o) => o.error?.class === 'CommandNotFound');
      if (missing) ctx.skip(`the target has no QMP command ${missing.command}`);
      seen.forEach((o, i) => {
        const want = ev.results[i]!;
        ctx.must(o.ok === want.ok, `${o.command} (#${i + 1}) is ${want.ok ? 'accepted' : 'refused'} as the permission model says`, describeOutcome(o));
        if (!want.ok && !o.ok) ctx.should(o.error!.desc === want.error.message, `the refusal of ${o.command} says what QEMU 7.2 says: "${want.error.message}"`, o.error!.desc);
      });
      if (spec.name === 'writable-export-on-source' && !seen.at(-1)!.ok) {
        const measured = MEASURED.writableExportOnSource.replaceAll(`'source'`, `'${prefix}source'`).replaceAll(`'fl-cbw'`, `'${prefix}fl-cbw'`);
        ctx.should(seen.at(-1)!.error!.desc === measured, 'the message is the one measured on QEMU 7.2 (§1.4), with the prefixed names', seen.at(-1)!.error!.desc);
      }
      const g = (await s.qmp.ok('x-debug-query-block-graph')) as QGraph;
      const want = modelEdges(ev);
      const got = targetEdges(g, prefix);
      ctx.must(diff(want, got) === '', "every edge of the resulting graph carries the model's perm and shared permissions", diff(want, got) || undefined);
      if (spec.hazard && ev.accepted) {
        ctx.should(!seen.every((o) => o.ok), `HAZARD: the graph is accepted but unsafe - ${spec.hazard}`, 'accepted by the permission system');
      }
      const dead = s.exited();
      ctx.must(!dead, 'the daemon keeps running', dead);
    },
  };
}

/** The cases with expectations from the given model (QEMU 7.2's rules; tests pass a known-bad
 * variant to show every check can fail). */
export function buildPermissionCases(model: ModelOptions = QEMU_7_2): CaseDef<PermEnv>[] {
  return PERM_CASES.map((c, i) => permCase(c, i + 1, model));
}

export const permissionCases: readonly CaseDef<PermEnv>[] = [...buildPermissionCases(), ...aliasCases];

export async function setupPerm(target: Parameters<typeof permLabOf>[0]): Promise<PermEnv> {
  return { lab: permLabOf(target) };
}
