// The fleecing suite (issue 6): snapshot consistency over the wire against a fleecing target.
// Targets are fleecing flavors (targets.ts), not the nbd suite's single-export targets: a
// fleecing target hands the suite a lab that starts one private setup per case.
import type { Suite } from '../runner/model.ts';
import { registerSuite } from '../runner/registry.ts';
import { fleecingCases, type FleeceEnv } from './cases.ts';
import { labOf } from './targets.ts';

export const fleecingSuite: Suite<FleeceEnv> = {
  name: 'fleecing',
  description: 'Snapshot consistency of image fleecing over NBD (research/qemu-fleecing.md §4-§6, nbd-protocol.md §2 I)',
  roles: [],
  cases: fleecingCases,
  async setup(target) {
    return { lab: labOf(target) };
  },
  describeEnv: (env) => ({ graph: env.lab.flavor.graph, fleecing: env.lab.flavor.summary }),
};

registerSuite(fleecingSuite);

export { FLAVORS, externalFlavor, findFlavor, fleeceTargetDef, type FleeceConfig, type FleeceFlavor } from './targets.ts';
