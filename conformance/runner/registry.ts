// Suite registry: each suite module registers itself; the CLI and tests look suites up by name.
import type { Suite } from './model.ts';

// Suites have different environment types; the runner only passes each suite's env back to it.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnySuite = Suite<any>;
const SUITES = new Map<string, AnySuite>();

export function registerSuite<Env>(suite: Suite<Env>): void {
  const ids = new Set<string>();
  for (const c of suite.cases) {
    if (!c.id.startsWith(`${suite.name}/`)) throw new Error(`case id ${c.id} does not start with its suite name ${suite.name}/`);
    if (ids.has(c.id)) throw new Error(`duplicate case id ${c.id}`);
    ids.add(c.id);
  }
  SUITES.set(suite.name, suite);
}

export function getSuite(name: string): AnySuite | undefined {
  return SUITES.get(name);
}

export function listSuites(): AnySuite[] {
  return [...SUITES.values()];
}
