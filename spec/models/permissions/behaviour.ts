// The permission model as a Behaviour: the state is a block graph plus which commands of a
// finite menu have been issued; each action issues one command (QMP semantics: a refused
// command leaves the graph as it was, and is recorded). Exploring it visits every order in
// which the menu's commands can be issued, so the explorer can find the shortest command
// sequence that reaches a bad graph. Its own invariants are self-consistency checks of the
// refresh (every accepted graph is conflict-free and a fixed point of the driver rules);
// callers add safety invariants (spec/soundness: no foreign writer under a snapshot reader).
import type { ActionLabel, Behaviour, Invariant } from '../../explorer/behaviour.ts';
import { childPerm } from './drivers.ts';
import { applyOp, cumulative, emptyGraph, parentLabel, QEMU_7_2, type GraphOp, type GraphState, type ModelOptions } from './graph.ts';
import { allows, permText } from './perm.ts';

export interface PermissionState {
  readonly graph: GraphState;
  /** Bit i: menu[i] was issued. */
  readonly issued: number;
  /** Bit i: menu[i] was refused. */
  readonly refused: number;
}

/** An action is the index of a menu command. */
export type PermissionAction = number;

export interface PermissionBehaviourOptions {
  readonly model?: ModelOptions;
  /** Commands that must be issued in menu order relative to each other (e.g. blockdev-add of a
   * child before its parent): pairs [before, after] of menu indexes. Default: every
   * blockdev-add in menu order, before every other command. */
  readonly order?: ReadonlyArray<readonly [number, number]>;
  readonly invariants?: readonly Invariant<PermissionState>[];
}

function opLabel(op: GraphOp): ActionLabel {
  switch (op.op) {
    case 'blockdev-add':
      return { actor: 'qmp', action: op.op, args: { 'node-name': op.node.name, driver: op.node.driver, ...(op.node.children ?? {}) } };
    case 'blockdev-del':
      return { actor: 'qmp', action: op.op, args: { 'node-name': op.nodeName } };
    case 'block-export-add':
      return { actor: 'qmp', action: op.op, args: { id: op.id, 'node-name': op.nodeName, writable: op.writable } };
    case 'block-export-del':
      return { actor: 'qmp', action: op.op, args: { id: op.id } };
    case 'blockdev-backup':
      return { actor: 'qmp', action: op.op, args: { 'job-id': op.jobId, device: op.device, target: op.target, sync: op.sync } };
    case 'block-job-cancel':
      return { actor: 'qmp', action: op.op, args: { device: op.jobId } };
    case 'block_resize':
      return { actor: 'qmp', action: op.op, args: { 'node-name': op.nodeName } };
  }
}

/** Every accepted graph is free of parent conflicts (bdrv_parent_perms_conflict finds none). */
export const conflictFree: Invariant<PermissionState> = {
  name: 'accepted-graph-conflict-free',
  check({ graph }) {
    for (const n of graph.nodes) {
      const parents = graph.edges.filter((e) => e.child === n.name);
      for (const a of parents) {
        for (const b of parents) {
          if (a !== b && !allows(a.shared, b.perm)) {
            return `node '${n.name}' has parents ${parentLabel(b.parent)} using '${permText(b.perm & ~a.shared)}' which ${parentLabel(a.parent)} does not share`;
          }
        }
      }
    }
    return undefined;
  },
};

/** Every node's child edges equal its driver's rule applied to its cumulative permission. */
export function fixedPoint(model: ModelOptions): Invariant<PermissionState> {
  return {
    name: 'child-permissions-refreshed',
    check({ graph }) {
      for (const n of graph.nodes) {
        const cum = cumulative(graph.edges, n.name);
        const hasParents = graph.edges.some((e) => e.child === n.name);
        for (const e of graph.edges) {
          if (e.parent.kind !== 'node' || e.parent.node !== n.name) continue;
          const want = childPerm({ driver: n.driver, role: e.role, childName: e.name, writable: !n.readOnly, hasParents, cbwRule: model.cbwRule }, cum.perm, cum.shared);
          if (want.perm !== e.perm || want.shared !== e.shared) return `edge ${n.name} -> ${e.child} (${e.name}) is stale`;
        }
      }
      return undefined;
    },
  };
}

export function permissionBehaviour(menu: readonly GraphOp[], opts: PermissionBehaviourOptions = {}): Behaviour<PermissionState, PermissionAction> {
  if (menu.length > 30) throw new RangeError('permission behaviour: at most 30 commands in a menu');
  const model = opts.model ?? QEMU_7_2;
  const adds = menu.flatMap((op, i) => (op.op === 'blockdev-add' ? [i] : []));
  const others = menu.flatMap((op, i) => (op.op === 'blockdev-add' ? [] : [i]));
  const order =
    opts.order ??
    [...adds.slice(1).map((a, k) => [adds[k]!, a] as const), ...(adds.length > 0 ? others.map((o) => [adds[adds.length - 1]!, o] as const) : [])];
  const before = menu.map((_, i) => order.filter(([, b]) => b === i).map(([a]) => a));
  const all = (1 << menu.length) - 1;
  return {
    name: 'permissions',
    params: { commands: menu.length, cbwRule: model.cbwRule },
    initial: () => [{ graph: emptyGraph(model), issued: 0, refused: 0 }],
    enabled: (s) => menu.flatMap((_, i) => ((s.issued >> i) & 1 || before[i]!.some((b) => !((s.issued >> b) & 1)) ? [] : [i])),
    step(s, i) {
      const r = applyOp(s.graph, menu[i]!);
      return { graph: r.state, issued: s.issued | (1 << i), refused: r.result.ok ? s.refused : s.refused | (1 << i) };
    },
    label: (i) => opLabel(menu[i]!),
    actionName: (i) => menu[i]!.op,
    key: (s) => `${s.issued}|${s.refused}|${s.graph.nodes.map((n) => n.name).sort().join(',')}|${JSON.stringify(s.graph.edges.map((e) => [parentLabel(e.parent), e.child, e.name, e.perm, e.shared]).sort())}`,
    invariants: [conflictFree, fixedPoint(model), ...(opts.invariants ?? [])],
    pending: (s) => s.issued !== all,
    actionNames: [...new Set(menu.map((op) => op.op))],
  };
}
