// The interleavings suite (docs/design.md "Interleavings") in `fleece conform`: one case per default scenario. A case
// runs every model interleaving of the scenario against the fleecing graph the target names
// (reference, reference-legacy, reference-racy, reference-hbitmap-status, reference-no-read-wait:
// breakpoints, with the blocking check; qemu,
// qemu-legacy and qemu-storage-daemon: submission orders) and records the counts, coverage,
// disagreements with both traces side by side and replay commands in the shared reports.
import type { CaseDef, Suite } from '../runner/model.ts';
import { registerSuite } from '../runner/registry.ts';
import { listTargets, registerTarget } from '../targets/registry.ts';
import { requirePeer } from '../targets/process.ts';
import { DEFAULT_SCENARIOS } from '../../spec/scenarios/fleecing.ts';
import { countsLine, coverageLine, describeDisagreement } from './format.ts';
import { runInterleavings } from './run.ts';
import { INTERLEAVING_TARGETS, type InterleavingTargetName } from './setup.ts';

export interface InterleavingsEnv {
  /** The fleecing graph to drive, or why the target has none. */
  readonly target: InterleavingTargetName | undefined;
  readonly reason?: string;
}

/** Which interleaving target a conform target name stands for. */
export function interleavingTargetOf(name: string): InterleavingTargetName | undefined {
  if (name in INTERLEAVING_TARGETS) return name as InterleavingTargetName;
  if (name === 'qemu-storage-daemon') return 'qemu';
  return undefined;
}

const cases: CaseDef<InterleavingsEnv>[] = DEFAULT_SCENARIOS.map((sc) => ({
  id: `interleavings/${sc.id}`,
  section: 'docs/design.md "Interleavings"; docs/requirements/qemu-fleecing.md §2.3, §3; spec/scenarios/fleecing.ts',
  level: 'MUST',
  title: sc.title,
  description:
    'Every interleaving of the scenario that the spec model of the target\'s scheme allows (S4 for copy-before-write, S3 for serialised legacy, S1 for the unsafe legacy option, s4-qemu-7.2-hbitmap-status for the unsafe cbw option), ' +
    'driven over real NBD connections by holding and releasing breakpoints through QMP in the model\'s order (targets without breakpoints: every order of submission and pipelining, with a delay under the source); ' +
    'every reply compared with the model\'s prediction. With breakpoints, every request the model has wait at a state (for a frozen read, a serialising copy, a read of the target range) is also let go and must not get past its wait until the model lets it (the blocking check; counts of blocked steps let go and held in the observations).',
  expectation: 'The implementation agrees with the model on every interleaving, takes no step the model has wait, and no snapshot read returns post-snapshot data.',
  async run(ctx) {
    const target = ctx.env.target;
    if (!target) return ctx.skip(ctx.env.reason ?? `no fleecing graph for target ${ctx.target.name}`);
    const [r] = await runInterleavings({ target, scenarios: [sc], wire: ctx.wire });
    if (!r) throw new Error('no result');
    if (r.skipped) ctx.skip(r.skipped);
    if (r.error) throw new Error(r.error);
    ctx.observe(countsLine(r));
    if (r.mode === 'breakpoints') ctx.observe(coverageLine(r));
    if (r.exploration) ctx.observe(r.exploration.statement);
    const bad = r.interleavings.filter((i) => !i.agree);
    for (const i of bad.slice(0, 5)) ctx.observe(describeDisagreement(r, i));
    ctx.must(
      r.counts.disagreeing === 0,
      r.mode === 'breakpoints' ? 'the implementation agrees with the model on every interleaving' : 'every run is explained by some model interleaving',
      bad.length ? `${bad.length} of ${r.counts.executed} disagree; first: #${bad[0]!.index}: ${bad[0]!.disagreement}` : undefined,
    );
    const post = r.interleavings.filter((i) => i.implViolation);
    ctx.must(
      r.counts.implViolations === 0,
      'no snapshot read returns post-snapshot data',
      post.length ? `${post.length} interleavings (${post.map((i) => `#${i.index}`).join(', ')}); e.g. ${post[0]!.implViolation}; replay: ${r.replay} --interleaving ${post[0]!.index}` : `${r.counts.implViolations} runs`,
    );
  },
}));

export const interleavingsSuite: Suite<InterleavingsEnv> = {
  name: 'interleavings',
  description: 'Every model interleaving of small fleecing scenarios, replayed on the implementation over NBD',
  roles: [],
  cases,
  appliesTo: (target) =>
    interleavingTargetOf(target.name) ? undefined : `it drives a fleecing graph it starts itself, for ${Object.keys(INTERLEAVING_TARGETS).join(', ')}; ${target.name} is none of them`,
  async setup(target) {
    const t = interleavingTargetOf(target.name);
    return t ? { target: t } : { target: undefined, reason: `target ${target.name} has no fleecing graph (use ${Object.keys(INTERLEAVING_TARGETS).join(', ')})` };
  },
  describeEnv: (env) => (env.target ? { interleavings: `${env.target}: ${INTERLEAVING_TARGETS[env.target].summary}, model ${INTERLEAVING_TARGETS[env.target].scheme}` } : {}),
};

registerSuite(interleavingsSuite);

// Fleecing targets by name for `fleece conform --target T --suite interleavings`, unless another
// module (the fleecing suite) registered them already: the suite starts its own processes per
// scenario, so the running target only carries the name.
const known = new Set(listTargets().map((t) => t.name));
for (const t of Object.values(INTERLEAVING_TARGETS)) {
  if (known.has(t.name)) continue;
  registerTarget({
    name: t.name,
    summary: `${t.summary} (fleecing graph; interleavings suite)`,
    peers: t.peers,
    async start() {
      for (const p of t.peers) requirePeer(p);
      return { name: t.name, description: t.summary, exports: {}, logs: () => '', stop: async () => undefined };
    },
  });
}
