// GraphViz export of a small state graph (TLC's -dump dot; docs/verification.md §1.6: only for
// configurations up to ~10^4 states).

import type { Behaviour } from './behaviour.ts';
import { viewOf } from './counterexample.ts';
import { SpecError } from './errors.ts';
import { formatLabel } from './label.ts';

export function toDot<S, A>(model: Behaviour<S, A>, options: { maxStates?: number; symmetry?: boolean } = {}): string {
  const maxStates = options.maxStates ?? 10_000;
  const sym = options.symmetry ?? false;
  const ids = new Map<string, number>();
  const nodes: string[] = [];
  const edges: string[] = [];
  const quote = (s: string) => JSON.stringify(s);
  const describe = (s: S) => {
    const bad = model.invariants.some((inv) => inv.check(s) !== undefined);
    const text = Object.entries(viewOf(model, s)).map(([k, v]) => `${k}=${v}`).join('\\n');
    return `label=${quote(text).replace(/\\\\n/g, '\\n')}${bad ? ', color=red, style=filled, fillcolor="#ffdddd"' : ''}`;
  };
  const queue: S[] = [];
  const visit = (s: S): number => {
    const k = model.key(s, sym);
    let id = ids.get(k);
    if (id === undefined) {
      id = ids.size;
      if (id >= maxStates) {
        throw new SpecError(`the graph has more than ${maxStates} states; --dot is for small configurations`, model.name);
      }
      ids.set(k, id);
      nodes.push(`  s${id} [${describe(s)}];`);
      queue.push(s);
    }
    return id;
  };
  for (const s of model.initial()) {
    const id = visit(s);
    nodes.push(`  init${id} [shape=point]; init${id} -> s${id};`);
  }
  for (let i = 0; i < queue.length; i++) {
    const s = queue[i]!;
    const from = ids.get(model.key(s, sym))!;
    for (const a of model.enabled(s)) {
      const to = visit(model.step(s, a));
      edges.push(`  s${from} -> s${to} [label=${quote(formatLabel(model.label(a)))}];`);
    }
  }
  return [`digraph ${quote(model.name)} {`, '  node [shape=box, fontname="monospace", fontsize=9];', ...nodes, ...edges, '}', ''].join('\n');
}
