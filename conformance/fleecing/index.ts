// The fleecing suite (docs/requirements/qemu-fleecing.md §4-§6): snapshot consistency over the wire against a fleecing target.
// Targets are fleecing flavors (targets.ts), not the nbd suite's single-export targets: a
// fleecing target hands the suite a lab that starts one private setup per case.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Suite } from '../runner/model.ts';
import { registerSuite } from '../runner/registry.ts';
import { listTargets, registerTarget } from '../targets/registry.ts';
import type { RunningTarget } from '../targets/types.ts';
import { fleecingCases, type FleeceEnv } from './cases.ts';
import { FLAVORS, FleeceLab, findFlavor, fleeceTargetDef, labOf } from './targets.ts';

/** The lab for a target: its own (a fleecing TargetDef), or - for a target registered by another
 * module under a fleecing name (the nbd suite's `reference`, the interleavings suite's names) -
 * a lab of the flavor with that name, in a directory of its own. */
function labFor(target: RunningTarget): { lab: FleeceLab; own?: string } {
  if (target.extra?.fleecing instanceof FleeceLab) return { lab: labOf(target) };
  const flavor = findFlavor(target.name);
  if (!flavor) return { lab: labOf(target) };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-fleecing-'));
  return { lab: new FleeceLab(flavor, dir, 20_000), own: dir };
}

export const fleecingSuite: Suite<FleeceEnv> = {
  name: 'fleecing',
  description: 'Snapshot consistency of image fleecing over NBD (docs/requirements/qemu-fleecing.md §4-§6, docs/requirements/nbd.md I)',
  roles: [],
  cases: fleecingCases,
  appliesTo: (target) =>
    target.extra?.fleecing instanceof FleeceLab || findFlavor(target.name)
      ? undefined
      : `it needs a fleecing graph: a fleecing target (${FLAVORS.map((f) => f.name).join(', ')}) or --live URI --snapshot URI`,
  async setup(target) {
    const { lab, own } = labFor(target);
    return { lab, ...(own ? { ownDir: own } : {}) };
  },
  async teardown(env) {
    if (!env.ownDir) return;
    await env.lab.stopAll();
    fs.rmSync(env.ownDir, { recursive: true, force: true });
  },
  describeEnv: (env) => ({ graph: env.lab.flavor.graph, fleecing: env.lab.flavor.summary }),
};

registerSuite(fleecingSuite);

// `fleece conform --suite fleecing --target qemu-legacy`: the fleecing names another module has
// not registered yet (the nbd suite owns `reference`; labFor covers it).
const known = new Set(listTargets().map((t) => t.name));
for (const f of FLAVORS) if (!known.has(f.name)) registerTarget(fleeceTargetDef(f));

export { FLAVORS, externalFlavor, findFlavor, fleeceTargetDef, type FleeceConfig, type FleeceFlavor } from './targets.ts';
