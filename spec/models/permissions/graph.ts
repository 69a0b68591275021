// Permission negotiation over a block graph, as QEMU 7.2 does it: every edge carries
// (perm, shared); a node's cumulative permission is the OR of its parents' perm and the AND of
// their shared; a refresh runs top-down in topological order, checks every ordered pair of
// parents (bdrv_parent_perms_conflict) and derives each child edge with the driver's rule; a
// refused change is rolled back whole. docs/requirements/qemu-fleecing.md §1.2-§1.5.
//
// The model is a pure function: a graph state and an operation in, a new state or a refusal
// (with QEMU's message) out. `evaluate` runs a sequence of operations the way a QMP session
// does: a refused command changes nothing and the session goes on.
import { match } from 'ts-pattern';
import { SpecError } from '../../explorer/errors.ts';
import { childPerm, childSlots, roleNames, type CbwRule, type Driver, type Role } from './drivers.ts';
import { changedFileNodes, readerHazard, snapshotReaders, storageConflict, type StorageRule } from './storage.ts';
import { ALL, NONE, RESIZE, WRITE, WRITE_UNCHANGED, CONSISTENT_READ, allows, cumulative, permNames, permText, type PermName, type PermSet } from './perm.ts';

export { cumulative };

// ---------------------------------------------------------------------------------------------
// Plain-data descriptions

/** A node as blockdev-add describes it: driver, and children by name ('file', 'backing',
 * 'target') referring to existing node names. */
export interface NodeSpec {
  readonly name: string;
  readonly driver: Driver;
  readonly children?: Readonly<Record<string, string>>;
  /** read-only=on: refuses any parent that needs WRITE or WRITE_UNCHANGED. */
  readonly readOnly?: boolean;
  /** `file` nodes: the storage (image file) the node opens; two file nodes with one storage
   * are aliases (spec/models/permissions/storage.ts). Default: the node's own name. */
  readonly storage?: string;
}

/** The graph-changing QMP commands the model knows. */
export type GraphOp =
  | { readonly op: 'blockdev-add'; readonly node: NodeSpec }
  | { readonly op: 'blockdev-del'; readonly nodeName: string }
  | { readonly op: 'block-export-add'; readonly id: string; readonly nodeName: string; readonly writable: boolean }
  | { readonly op: 'block-export-del'; readonly id: string }
  | {
      readonly op: 'blockdev-backup';
      readonly jobId: string;
      readonly device: string;
      readonly target: string;
      readonly sync: 'none';
      /** Name of the implicit copy-before-write filter; QEMU generates '#blockNNN' otherwise. */
      readonly filterNodeName?: string;
    }
  | { readonly op: 'block-job-cancel'; readonly jobId: string }
  | { readonly op: 'block_resize'; readonly nodeName: string };

export interface ModelOptions {
  readonly cbwRule: CbwRule;
  /** How nodes over one storage are checked against each other (storage.ts); default 'none'. */
  readonly storage?: StorageRule;
}
/** QEMU 7.2: its cbw rule and image locking (locking=auto is on for Linux with OFD locks). */
export const QEMU_7_2: ModelOptions = { cbwRule: '7.2', storage: 'locking' };
/** The reference as it stands: QEMU 9.1's cbw rule, no storage identity. */
export const REFERENCE: ModelOptions = { cbwRule: '9.1', storage: 'none' };
/** What the reference is to do: 9.1's cbw rule, permissions across each storage, and no
 * snapshot reader exposed to a write its protection does not see (storage.ts). */
export const STORAGE_AWARE: ModelOptions = { cbwRule: '9.1', storage: 'storage-aware' };

// ---------------------------------------------------------------------------------------------
// State

/** Who holds an edge: a node (its child), a BlockBackend of an export, of a job, or a
 * short-lived BlockBackend a command creates (block_resize). */
export type Parent =
  | { readonly kind: 'node'; readonly node: string }
  | { readonly kind: 'export'; readonly id: string }
  | { readonly kind: 'job-blk'; readonly id: string }
  | { readonly kind: 'job'; readonly id: string }
  | { readonly kind: 'blk'; readonly purpose: string };

export interface Edge {
  readonly parent: Parent;
  readonly child: string;
  /** Child name: 'file', 'backing', 'target', 'root' (a BlockBackend), 'main node'. */
  readonly name: string;
  readonly role: Role;
  readonly perm: PermSet;
  readonly shared: PermSet;
  /** Position in the child node's parent list: QEMU inserts at the head, so a larger seq
   * comes first (QLIST_INSERT_HEAD in bdrv_replace_child_noperm). */
  readonly seq: number;
  /** Position in the parent's children list (also head-inserted). */
  readonly created: number;
}

export interface NodeState {
  readonly name: string;
  readonly driver: Driver;
  readonly readOnly: boolean;
  /** Inserted by a job (the backup filter), not by blockdev-add. */
  readonly implicit: boolean;
  /** The storage a `file` node opens (its name unless NodeSpec.storage says otherwise). */
  readonly storage: string;
}

export interface ExportState {
  readonly id: string;
  readonly nodeName: string;
  readonly writable: boolean;
}

export interface JobState {
  readonly id: string;
  readonly device: string;
  readonly target: string;
  readonly filter: string;
}

export interface GraphState {
  readonly options: ModelOptions;
  readonly nodes: readonly NodeState[];
  readonly edges: readonly Edge[];
  readonly exports: readonly ExportState[];
  readonly jobs: readonly JobState[];
  readonly seq: number;
  readonly autoId: number;
}

export function emptyGraph(options: ModelOptions = QEMU_7_2): GraphState {
  return { options, nodes: [], edges: [], exports: [], jobs: [], seq: 0, autoId: 100 };
}

// ---------------------------------------------------------------------------------------------
// Errors

export type RefusalKind = 'conflict' | 'read-only' | 'in-use' | 'usage' | 'lock' | 'storage';

/** A refusal of the modelled QEMU: the spec layer's SpecError, whose message is QEMU 7.2's
 * text where QEMU has one (so the conformance suite can compare it verbatim). */
export class PermissionModelError extends SpecError {
  constructor(
    readonly kind: RefusalKind,
    message: string,
    readonly context: Readonly<{ op?: GraphOp['op']; node?: string; perms?: readonly PermName[] }> = {},
  ) {
    super(message);
    this.name = 'PermissionModelError';
  }
}

/** bdrv_child_user_desc: how an error message names a parent. */
export function userDesc(p: Parent): string {
  return match(p)
    .with({ kind: 'node' }, (n) => `node '${n.node}'`)
    // BlockBackends of exports, jobs and commands have no name on 7.2 (measured, §1.4).
    .with({ kind: 'export' }, { kind: 'job-blk' }, { kind: 'blk' }, () => 'an unnamed block device')
    // child_job_get_parent_desc: "<type> job '<id>'".
    .with({ kind: 'job' }, (j) => `backup job '${j.id}'`)
    .exhaustive();
}

/** A short stable label for tables and tests: the node name, `export:<id>`, `job:<id>`. */
export function parentLabel(p: Parent): string {
  return match(p)
    .with({ kind: 'node' }, (n) => n.node)
    .with({ kind: 'export' }, (e) => `export:${e.id}`)
    .with({ kind: 'job-blk' }, (j) => `job-blk:${j.id}`)
    .with({ kind: 'job' }, (j) => `job:${j.id}`)
    .with({ kind: 'blk' }, (b) => `blk:${b.purpose}`)
    .exhaustive();
}

// ---------------------------------------------------------------------------------------------
// Refresh: bdrv_list_refresh_perms over bdrv_topological_dfs

/** A mutable working copy; every operation edits one and keeps it only on success. */
interface Work {
  options: ModelOptions;
  nodes: NodeState[];
  edges: Array<{ -readonly [K in keyof Edge]: Edge[K] }>;
  exports: ExportState[];
  jobs: JobState[];
  seq: number;
  autoId: number;
}

function work(g: GraphState): Work {
  return {
    options: g.options,
    nodes: [...g.nodes],
    edges: g.edges.map((e) => ({ ...e })),
    exports: [...g.exports],
    jobs: [...g.jobs],
    seq: g.seq,
    autoId: g.autoId,
  };
}

function freeze(w: Work): GraphState {
  return { ...w };
}

const isNodeParent = (p: Parent, name: string): boolean => p.kind === 'node' && p.node === name;

/** bs->parents in QEMU's order (newest first). */
function parentsOf(w: Work, node: string) {
  return w.edges.filter((e) => e.child === node).sort((a, b) => b.seq - a.seq);
}

/** bs->children in QEMU's order (newest first). */
function childrenOf(w: Work, node: string) {
  return w.edges.filter((e) => isNodeParent(e.parent, node)).sort((a, b) => b.created - a.created);
}

/** bdrv_topological_dfs from every node: parents come before their children. */
function topological(w: Work): NodeState[] {
  const found = new Set<string>();
  let list: NodeState[] = [];
  const byName = new Map(w.nodes.map((n) => [n.name, n]));
  const dfs = (n: NodeState): void => {
    if (found.has(n.name)) return;
    found.add(n.name);
    for (const c of childrenOf(w, n.name)) {
      const child = byName.get(c.child);
      if (child !== undefined) dfs(child);
    }
    list = [n, ...list];
  };
  for (const n of w.nodes) dfs(n);
  return list;
}


/** The conflict message of bdrv_a_allow_b since 6.1 (docs/requirements/qemu-fleecing.md §1.4). */
export function conflictMessage(node: string, perms: PermSet, b: Pick<Edge, 'parent' | 'name'>, a: Pick<Edge, 'parent' | 'name'>): string {
  return (
    `Permission conflict on node '${node}': permissions '${permText(perms)}' are both required by ` +
    `${userDesc(b.parent)} (uses node '${node}' as '${b.name}' child) and unshared by ` +
    `${userDesc(a.parent)} (uses node '${node}' as '${a.name}' child).`
  );
}

/** bdrv_list_refresh_perms: per node, top-down: parent conflicts, read-only, then children. */
function refresh(w: Work): PermissionModelError | undefined {
  for (const n of topological(w)) {
    const parents = parentsOf(w, n.name);
    // bdrv_parent_perms_conflict: every ordered pair (a, b), a != b.
    for (const a of parents) {
      for (const b of parents) {
        if (a === b || allows(a.shared, b.perm)) continue;
        const perms = b.perm & ~a.shared;
        return new PermissionModelError('conflict', conflictMessage(n.name, perms, b, a), {
          node: n.name,
          perms: permNames(perms),
        });
      }
    }
    const cum = cumulative(w.edges, n.name);
    if ((cum.perm & (WRITE | WRITE_UNCHANGED)) !== 0 && n.readOnly) {
      // bdrv_node_refresh_perm: write permissions never work with read-only images.
      return new PermissionModelError('read-only', 'Block node is read-only', { node: n.name });
    }
    for (const c of childrenOf(w, n.name)) {
      const r = childPerm(
        {
          driver: n.driver,
          role: c.role,
          childName: c.name,
          writable: !n.readOnly,
          hasParents: parents.length > 0,
          cbwRule: w.options.cbwRule,
        },
        cum.perm,
        cum.shared,
      );
      c.perm = r.perm;
      c.shared = r.shared;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Operations

const usage = (op: GraphOp['op'], message: string): PermissionModelError =>
  new PermissionModelError('usage', message, { op });

function attach(w: Work, parent: Parent, child: string, name: string, role: Role, perm: PermSet, shared: PermSet): void {
  w.seq += 1;
  w.edges.push({ parent, child, name, role, perm, shared, seq: w.seq, created: w.seq });
}

/** Nodes reachable from `from` through children (including itself). */
function descendants(w: Work, from: string): Set<string> {
  const seen = new Set<string>();
  const go = (n: string): void => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const c of childrenOf(w, n)) go(c.child);
  };
  go(from);
  return seen;
}

/** bdrv_replace_node: move `from`'s parents onto `to`, except those that must stay (job
 * children: stay_at_node) or would close a loop (the parent is `to` or below it:
 * should_update_child). This is why the legacy temp's backing edge stays on `source`. */
function replaceNode(w: Work, from: string, to: string): void {
  const below = descendants(w, to);
  for (const e of parentsOf(w, from).reverse()) {
    if (e.parent.kind === 'job') continue;
    if (e.parent.kind === 'node' && below.has(e.parent.node)) continue;
    w.seq += 1;
    e.child = to;
    e.seq = w.seq;
  }
}

function hasNode(w: Work, name: string): boolean {
  return w.nodes.some((n) => n.name === name);
}

function step(w: Work, op: GraphOp): PermissionModelError | undefined {
  return match(op)
    .with({ op: 'blockdev-add' }, ({ node }) => {
      if (hasNode(w, node.name)) return usage(op.op, `Duplicate nodes with node-name='${node.name}'`);
      const slots = childSlots(node.driver);
      const given = node.children ?? {};
      for (const k of Object.keys(given)) {
        if (!slots.some((s) => s.name === k)) return usage(op.op, `Invalid parameter '${k}'`);
      }
      for (const s of slots) {
        const child = given[s.name];
        if (child === undefined) {
          if (s.required) return usage(op.op, `Parameter '${s.name}' is missing`);
          continue;
        }
        if (!hasNode(w, child)) return usage(op.op, `Cannot find device='' nor node-name='${child}'`);
      }
      w.nodes.push({ name: node.name, driver: node.driver, readOnly: node.readOnly ?? false, implicit: false, storage: node.storage ?? node.name });
      for (const s of slots) {
        const child = given[s.name];
        if (child !== undefined) attach(w, { kind: 'node', node: node.name }, child, s.name, s.role, NONE, ALL);
      }
      return refresh(w);
    })
    .with({ op: 'blockdev-del' }, ({ nodeName }) => {
      if (!hasNode(w, nodeName)) return usage(op.op, `Failed to find node with node-name='${nodeName}'`);
      // A user check, not a permission check (docs/requirements/qemu-fleecing.md §1.4).
      if (w.edges.some((e) => e.child === nodeName)) {
        return new PermissionModelError('in-use', `Node ${nodeName} is in use`, { node: nodeName });
      }
      w.nodes = w.nodes.filter((n) => n.name !== nodeName);
      w.edges = w.edges.filter((e) => !isNodeParent(e.parent, nodeName));
      return refresh(w);
    })
    .with({ op: 'block-export-add' }, ({ id, nodeName, writable }) => {
      if (w.exports.some((e) => e.id === id)) return usage(op.op, `Block export id '${id}' is already in use`);
      if (!hasNode(w, nodeName)) return usage(op.op, `Cannot find device='${nodeName}' nor node-name='${nodeName}'`);
      // blk_exp_add: perm CONSISTENT_READ (+WRITE), shared ALL; then the NBD export unshares
      // RESIZE with blk_set_perm (docs/requirements/qemu-fleecing.md §1.6): two refreshes, either may fail.
      const perm = CONSISTENT_READ | (writable ? WRITE : NONE);
      attach(w, { kind: 'export', id }, nodeName, 'root', 0, perm, ALL);
      const first = refresh(w);
      if (first !== undefined) return first;
      const edge = w.edges[w.edges.length - 1]!;
      edge.shared = ALL & ~RESIZE;
      w.exports.push({ id, nodeName, writable });
      return refresh(w);
    })
    .with({ op: 'block-export-del' }, ({ id }) => {
      if (!w.exports.some((e) => e.id === id)) return usage(op.op, `Export '${id}' is not found`);
      w.exports = w.exports.filter((e) => e.id !== id);
      w.edges = w.edges.filter((e) => !(e.parent.kind === 'export' && e.parent.id === id));
      return refresh(w);
    })
    .with({ op: 'blockdev-backup' }, ({ jobId, device, target, filterNodeName }) => {
      if (w.jobs.some((j) => j.id === jobId)) return usage(op.op, `Job ID '${jobId}' already in use`);
      if (!hasNode(w, device)) return usage(op.op, `Cannot find device='${device}' nor node-name='${device}'`);
      if (!hasNode(w, target)) return usage(op.op, `Cannot find device='${target}' nor node-name='${target}'`);
      if (device === target) return usage(op.op, 'Source and target cannot be the same');
      let filter = filterNodeName;
      if (filter === undefined) {
        w.autoId += 1;
        filter = `#block${w.autoId}`;
      }
      if (hasNode(w, filter)) return usage(op.op, `Duplicate nodes with node-name='${filter}'`);
      // bdrv_cbw_append -> bdrv_insert_node: open the cbw filter on (file=device,
      // target=target), then move device's parents onto it, in one transaction.
      w.nodes.push({ name: filter, driver: 'copy-before-write', readOnly: false, implicit: true, storage: filter });
      const slots = childSlots('copy-before-write');
      for (const s of slots) {
        attach(w, { kind: 'node', node: filter }, s.name === 'file' ? device : target, s.name, s.role, NONE, ALL);
      }
      const opened = refresh(w);
      if (opened !== undefined) return opened;
      replaceNode(w, device, filter);
      const inserted = refresh(w);
      if (inserted !== undefined) return inserted;
      // backup_job_create: the job's BlockBackend and its "main node" child on the filter, and
      // its "target" child, all 0 / ALL: "Required permissions are already taken by
      // block-copy-state target" (docs/requirements/qemu-fleecing.md §1.5 notes).
      attach(w, { kind: 'job-blk', id: jobId }, filter, 'root', 0, NONE, ALL);
      attach(w, { kind: 'job', id: jobId }, filter, 'main node', 0, NONE, ALL);
      attach(w, { kind: 'job', id: jobId }, target, 'target', 0, NONE, ALL);
      w.jobs.push({ id: jobId, device, target, filter });
      return refresh(w);
    })
    .with({ op: 'block-job-cancel' }, ({ jobId }) => {
      const job = w.jobs.find((j) => j.id === jobId);
      if (job === undefined) return usage(op.op, `Job '${jobId}' not found`);
      w.jobs = w.jobs.filter((j) => j !== job);
      w.edges = w.edges.filter((e) => !((e.parent.kind === 'job' || e.parent.kind === 'job-blk') && e.parent.id === jobId));
      // bdrv_cbw_drop -> bdrv_drop_filter: parents go back to the source, the filter goes.
      replaceNode(w, job.filter, job.device);
      w.edges = w.edges.filter((e) => !isNodeParent(e.parent, job.filter));
      w.nodes = w.nodes.filter((n) => n.name !== job.filter);
      return refresh(w);
    })
    .with({ op: 'block_resize' }, ({ nodeName }) => {
      if (!hasNode(w, nodeName)) return usage(op.op, `Cannot find device='' nor node-name='${nodeName}'`);
      // qmp_block_resize: a temporary BlockBackend with perm RESIZE, shared ALL. The resize
      // itself is data, not graph: on success the graph is unchanged.
      attach(w, { kind: 'blk', purpose: 'block_resize' }, nodeName, 'root', 0, RESIZE, ALL);
      const err = refresh(w);
      if (err !== undefined) return err;
      w.edges = w.edges.filter((e) => !(e.parent.kind === 'blk'));
      return refresh(w);
    })
    .exhaustive();
}

/** The storage rule, once the command's graph change is complete (storage.ts). QEMU takes the
 * locks during the refresh itself; checking the finished graph is the model's simplification,
 * and lets a command that moves a writer onto a filter (blockdev-backup) pass through its
 * intermediate graphs. */
function storageCheck(before: GraphState, after: GraphState): PermissionModelError | undefined {
  const rule = after.options.storage ?? 'none';
  if (rule === 'none') return undefined;
  const c = storageConflict(after, rule, changedFileNodes(before, after));
  if (c !== undefined) {
    return new PermissionModelError(rule === 'locking' ? 'lock' : 'storage', c.message, { node: c.node, perms: permNames(c.perms) });
  }
  if (rule === 'storage-aware') {
    for (const r of snapshotReaders(after)) {
      const why = readerHazard(r, true);
      if (why !== undefined) return new PermissionModelError('storage', `Unprotected snapshot: ${why}`, { node: r.cbw });
    }
  }
  return undefined;
}

export type OpResult = { readonly ok: true } | { readonly ok: false; readonly error: PermissionModelError };

/** Apply one command. A refusal leaves the state exactly as it was (the Transaction abort). */
export function applyOp(g: GraphState, op: GraphOp): { state: GraphState; result: OpResult } {
  const w = work(g);
  const err = step(w, op) ?? storageCheck(g, freeze(w));
  if (err !== undefined) {
    return { state: g, result: { ok: false, error: new PermissionModelError(err.kind, err.message, { ...err.context, op: op.op }) } };
  }
  return { state: freeze(w), result: { ok: true } };
}

export interface Evaluation {
  /** One result per operation, in order. */
  readonly results: readonly OpResult[];
  /** The graph after every accepted operation. */
  readonly graph: GraphState;
  /** True when every operation was accepted. */
  readonly accepted: boolean;
  /** The first refusal, if any. */
  readonly refusal?: PermissionModelError;
}

/** The expected-verdict oracle: run a command sequence like a QMP session. */
export function evaluate(ops: readonly GraphOp[], options: ModelOptions = QEMU_7_2): Evaluation {
  let g = emptyGraph(options);
  const results: OpResult[] = [];
  for (const op of ops) {
    const r = applyOp(g, op);
    g = r.state;
    results.push(r.result);
  }
  const firstBad = results.find((r): r is Extract<OpResult, { ok: false }> => !r.ok);
  return firstBad === undefined
    ? { results, graph: g, accepted: true }
    : { results, graph: g, accepted: false, refusal: firstBad.error };
}

/** An edge as plain data, with QAPI permission names: what x-debug-query-block-graph shows. */
export interface EdgeView {
  readonly parent: string;
  readonly user: string;
  readonly child: string;
  readonly name: string;
  readonly roles: readonly string[];
  readonly perm: readonly PermName[];
  readonly shared: readonly PermName[];
}

export function edgeViews(g: GraphState): EdgeView[] {
  return g.edges.map((e) => ({
    parent: parentLabel(e.parent),
    user: userDesc(e.parent),
    child: e.child,
    name: e.name,
    roles: roleNames(e.role),
    perm: permNames(e.perm),
    shared: permNames(e.shared),
  }));
}

/** The edge from `parent` (label as in parentLabel) to `child` named `name`, if any. */
export function findEdge(g: GraphState, parent: string, child: string, name?: string): Edge | undefined {
  return g.edges.find((e) => parentLabel(e.parent) === parent && e.child === child && (name === undefined || e.name === name));
}
