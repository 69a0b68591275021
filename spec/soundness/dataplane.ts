// The data plane behind an accepted graph: the explorer engineer's fleecing model of the scheme
// the graph implements (S3 for a temp overlay backed by the source, S4 for snapshot-access over
// copy-before-write), plus the writers the permission system let in:
//   - a writer on the temp/target node (or below it) other than cbw: it can overwrite the
//     snapshot store at any time (docs/requirements/qemu-fleecing.md §6 B6). The fleecing model has these natively
//     (its `tempWriters` parameter);
//   - a writer on the source (or below it) that does not go through cbw: its writes are never
//     copied first. The fleecing model has no such actor, so this file wraps it with one: an
//     extra actor that writes one cluster of the source once, at any moment, with a value that
//     names no guest writer.
//   - with storage identity (spec/models/permissions/storage.ts), the same two writers when they
//     write through another node over the source's or the target's file (an alias): the
//     fleecing state holds one array per storage (`source`, `target`), not per node, so a
//     write through one alias lands in that array and every node over the file, the cbw's
//     own child included, reads it. The labels name the node written through and the file.
// A graph whose reads go around the serialisation gets the fleecing scheme that has lost it
// (spec/soundness/soundness.ts dataPlaneConfig: S1 when the copies are not serialising, S3
// without read tracking when the reads are tracked on an alias).
// The fleecing model's snapshot-read invariant judges the result.
import type { ActionLabel, Behaviour, Invariant } from '../explorer/behaviour.ts';
import { explore } from '../explorer/explore.ts';
import { fleecingModel, type FleecingAction, type FleecingState, type Scheme } from '../models/fleecing/index.ts';

export interface DataPlaneConfig {
  readonly scheme: Scheme;
  /** Guest writers going through cbw (capped by the caller). */
  readonly guestWriters: number;
  readonly tempIntruder: boolean;
  readonly sourceIntruder: boolean;
  readonly clusters: number;
  /** The node the extra writers write through, and the file they change (for the labels). */
  readonly tempVia?: { readonly node: string; readonly storage: string };
  readonly sourceVia?: { readonly node: string; readonly storage: string };
}

interface State {
  readonly inner: FleecingState;
  readonly sourcePending: boolean;
}

type Action = { readonly kind: 'inner'; readonly a: FleecingAction } | { readonly kind: 'source-intruder'; readonly c: number };

export interface DataPlaneVerdict {
  readonly safe: boolean;
  readonly exhaustive: boolean;
  readonly distinct: number;
  /** The violation in domain terms, when unsafe. */
  readonly violation?: string;
  readonly trace?: readonly string[];
}

export function dataPlaneBehaviour(cfg: DataPlaneConfig): Behaviour<State, Action> {
  const inner = fleecingModel(cfg.scheme, {
    clusters: cfg.clusters,
    writers: cfg.guestWriters,
    readers: 1,
    cbwFailures: 0,
    discard: false,
    bitmap: false,
    tempWriters: cfg.tempIntruder ? 1 : 0,
  });
  // Intruder data: the value a writer with index `guestWriters` would write; no guest has it.
  const INTRUDER = cfg.guestWriters + 1;
  const intruderName = `W${cfg.guestWriters}`;
  const rename = (msg: string) =>
    msg
      .split(`written by ${intruderName}`).join('written by an extra writer the permissions allowed')
      .split(intruderName).join('data of an extra writer the permissions allowed');
  // Judge by what a snapshot read returns (the property of docs/design.md), not by the model's
  // intermediate invariants (copied-before-overwritten), so a counterexample ends in a read.
  const readInvariants = inner.invariants.filter((inv) => inv.name === 'snapshot-read-consistent');
  const invariants: Invariant<State>[] = (readInvariants.length > 0 ? readInvariants : inner.invariants).map((inv) => ({
    name: inv.name,
    check: (s: State) => {
      const m = inv.check(s.inner);
      return m === undefined ? undefined : rename(m);
    },
  }));
  const setCluster = (arr: readonly number[], c: number): number[] => {
    // a value below TEMP_DATA that no guest writer uses: "post-snapshot data" to the model
    const out = arr.slice();
    out[c] = INTRUDER;
    return out;
  };
  return {
    name: `soundness-${inner.name}`,
    params: { ...inner.params, sourceIntruder: cfg.sourceIntruder },
    initial: () => inner.initial().map((i) => ({ inner: i, sourcePending: cfg.sourceIntruder })),
    enabled(s) {
      const out: Action[] = inner.enabled(s.inner).map((a) => ({ kind: 'inner', a }) as const);
      if (s.sourcePending) for (let c = 0; c < cfg.clusters; c++) out.push({ kind: 'source-intruder', c });
      return out;
    },
    step(s, act) {
      switch (act.kind) {
        case 'inner':
          return { ...s, inner: inner.step(s.inner, act.a) };
        case 'source-intruder':
          return { ...s, sourcePending: false, inner: { ...s.inner, source: setCluster(s.inner.source, act.c) } };
      }
    },
    label(act): ActionLabel {
      switch (act.kind) {
        case 'inner': {
          const l = inner.label(act.a);
          // the inner model's temp writers write the target's file; say through which node
          return l.action === 'tempWrite' && cfg.tempVia !== undefined ? { ...l, args: { via: cfg.tempVia.node, file: cfg.tempVia.storage, ...l.args } } : l;
        }
        case 'source-intruder':
          return {
            actor: 'Y',
            action: 'write-source-bypassing-cbw',
            args: cfg.sourceVia !== undefined ? { via: cfg.sourceVia.node, file: cfg.sourceVia.storage, cluster: act.c } : { cluster: act.c },
          };
      }
    },
    actionName: (act) => (act.kind === 'inner' ? (inner.actionName?.(act.a) ?? inner.label(act.a).action) : act.kind),
    // No symmetry: the intruder value names no writer, which the inner symmetry key cannot rename.
    key: (s) => `${inner.key(s.inner, false)}|${s.sourcePending ? 1 : 0}`,
    invariants,
    pending: (s) => inner.pending(s.inner),
    actionNames: [...inner.actionNames, ...(cfg.sourceIntruder ? ['source-intruder'] : [])],
  };
}

export function runDataPlane(cfg: DataPlaneConfig): DataPlaneVerdict {
  const m = dataPlaneBehaviour(cfg);
  const r = explore(m, { symmetry: false });
  const ce = r.counterexample;
  const base = { safe: r.verdict === 'ok', exhaustive: r.exhaustive, distinct: r.distinct };
  if (ce === undefined) return base;
  return {
    ...base,
    violation: ce.message,
    trace: ce.steps.map((st, i) => `${i + 1}. ${st.label.actor}.${st.label.action}(${Object.entries(st.label.args ?? {}).map(([k, v]) => `${k}=${v}`).join(', ')})`),
  };
}
