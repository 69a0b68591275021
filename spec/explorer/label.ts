// Action labels: the one printed form `actor.action(k=v, ...)` and label equality (replay).

import type { ActionLabel } from './behaviour.ts';

/** `actor.action(k=v, ...)`, the one way a step is printed everywhere. */
export function formatLabel(label: ActionLabel): string {
  const args = label.args ? Object.entries(label.args).map(([k, v]) => `${k}=${v}`).join(', ') : '';
  return `${label.actor}.${label.action}(${args})`;
}

/** Same actor, action and arguments (argument order does not matter). */
export function sameLabel(a: ActionLabel, b: ActionLabel): boolean {
  if (a.actor !== b.actor || a.action !== b.action) return false;
  const ea = Object.entries(a.args ?? {});
  const eb = b.args ?? {};
  if (ea.length !== Object.keys(eb).length) return false;
  return ea.every(([k, v]) => Object.prototype.hasOwnProperty.call(eb, k) && eb[k] === v);
}
