// Running the fleecing suite against fleecing flavors through the runner (used by tests and by
// `fleece conform --suite fleecing`): each flavor becomes a TargetDef whose RunningTarget
// carries a lab that starts one setup per case.
import type { RunResult } from '../runner/model.ts';
import { run } from '../runner/run.ts';
import { fleecingSuite } from './index.ts';
import { fleeceTargetDef, type FleeceFlavor } from './targets.ts';

export async function runFleecing(flavors: readonly FleeceFlavor[], opts: { filter?: string[]; seed?: number; timeoutMs?: number } = {}): Promise<RunResult> {
  return run({
    targets: flavors.map(fleeceTargetDef),
    suites: [fleecingSuite],
    filter: opts.filter ?? [],
    seed: opts.seed ?? 1,
    timeoutMs: opts.timeoutMs ?? 2000,
    startTimeoutMs: 20_000,
  });
}
