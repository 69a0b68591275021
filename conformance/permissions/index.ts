// The permissions suite (docs/requirements/qemu-fleecing.md §1) and its agreement table: for every case, the spec
// model's verdict, what each target did, and whether they agree; an accepted-but-unsafe graph
// shows as a hazard, not as a plain pass.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { CaseResult, RunResult, Suite } from '../runner/model.ts';
import { registerSuite } from '../runner/registry.ts';
import { run } from '../runner/run.ts';
import { OBSERVED, PERM_CASES, permissionCases, setupPerm, type PermEnv } from './cases.ts';
import { lockingCases } from './locking.ts';
import { KNOWN_BAD_PERM_FLAVORS, PermLab, findPermFlavor, permTargetDef, type PermFlavor } from './targets.ts';
import { listTargets, registerTarget } from '../targets/registry.ts';
import { evaluate } from '../../spec/models/permissions/index.ts';

/** A target registered by another module: `reference...` is fleece serve, `qemu...` QEMU. */
const flavorName = (n: string) => (findPermFlavor(n) ? n : n.startsWith('qemu') ? 'qemu' : n.startsWith('reference') ? 'reference' : n);

export const permissionsSuite: Suite<PermEnv> = {
  name: 'permissions',
  description: 'Block-graph permissions over QMP against the spec permission model (docs/requirements/qemu-fleecing.md §1)',
  roles: [],
  cases: [...permissionCases, ...lockingCases],
  appliesTo: (target) =>
    target.extra?.permissions instanceof PermLab || (target.name !== 'qemu-nbd' && findPermFlavor(flavorName(target.name)))
      ? undefined
      : `it builds block graphs over QMP in a daemon it starts itself, for the reference... and qemu... targets; ${target.name} has none`,
  async setup(target) {
    if (target.extra?.permissions instanceof PermLab) return setupPerm(target);
    const flavor = findPermFlavor(flavorName(target.name));
    if (!flavor) return setupPerm(target);
    const ownDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-permissions-'));
    return { lab: new PermLab(flavor, ownDir, 20_000), ownDir };
  },
  async teardown(env) {
    if (!env.ownDir) return;
    await env.lab.stopAll();
    fs.rmSync(env.ownDir, { recursive: true, force: true });
  },
};

registerSuite(permissionsSuite);

// The known-bad permission targets by name, for `fleece conform --target T --suite permissions`.
for (const f of KNOWN_BAD_PERM_FLAVORS) if (!listTargets().some((t) => t.name === f.name)) registerTarget(permTargetDef(f));

export async function runPermissions(flavors: readonly PermFlavor[], opts: { filter?: string[]; seed?: number } = {}): Promise<RunResult> {
  return run({ targets: flavors.map(permTargetDef), suites: [permissionsSuite], filter: opts.filter ?? [], seed: opts.seed ?? 1, timeoutMs: 2000, startTimeoutMs: 20_000 });
}

export interface AgreementRow {
  case: string;
  /** The model's verdict for the whole sequence. */
  model: string;
  hazard?: string;
  targets: Record<string, { verdict: string; outcome: string; agrees: boolean; note?: string }>;
  /** Every target that ran the case did what every other did, command by command. */
  targetsAgree: boolean;
}

function outcomeOf(r: CaseResult): string {
  const o = OBSERVED.get(`${r.target} ${r.id}`);
  if (!o) return r.verdict === 'skipped' ? `not run: ${r.reason}` : 'not run';
  const refused = o.observed.findIndex((x) => x.startsWith('refused'));
  return refused < 0 ? 'accepted' : `#${refused + 1} ${o.observed[refused]}`;
}

/** The agreement table from one or more runs of the suite. */
export function agreementTable(results: readonly CaseResult[]): AgreementRow[] {
  return PERM_CASES.map((spec) => {
    const id = `permissions/${spec.name}`;
    const ev = evaluate(spec.ops);
    const refused = ev.results.findIndex((r) => !r.ok);
    const model = refused < 0 ? 'accepted' : `#${refused + 1} refused: ${ev.refusal!.message}`;
    const targets: AgreementRow['targets'] = {};
    const outcomes: string[] = [];
    for (const r of results.filter((x) => x.id === id)) {
      const outcome = outcomeOf(r);
      if (r.verdict === 'skipped') {
        targets[r.target] = { verdict: r.verdict, outcome: `not run: ${r.reason}`, agrees: true, note: 'not comparable' };
        continue;
      }
      const agrees = r.verdict === 'pass' || (r.verdict === 'non-strict' && !r.checks.some((c) => !c.ok && c.level === 'MUST'));
      const softs = r.checks.filter((c) => !c.ok && c.level === 'SHOULD').map((c) => c.what);
      targets[r.target] = { verdict: r.verdict, outcome, agrees, ...(softs.length ? { note: softs.join('; ') } : {}) };
      const o = OBSERVED.get(`${r.target} ${r.id}`);
      if (o) outcomes.push(o.observed.map((x) => (x.startsWith('refused') ? 'refused' : 'accepted')).join(','));
    }
    return { case: id, model, ...(spec.hazard ? { hazard: spec.hazard } : {}), targets, targetsAgree: outcomes.every((x) => x === outcomes[0]) };
  });
}

export function renderAgreement(rows: readonly AgreementRow[]): string {
  const names = [...new Set(rows.flatMap((r) => Object.keys(r.targets)))];
  const lines = [`case | model | ${names.join(' | ')} | targets agree`, `--- | --- | ${names.map(() => '---').join(' | ')} | ---`];
  for (const r of rows) {
    const cells = names.map((n) => {
      const t = r.targets[n];
      if (!t) return '-';
      const mark = t.verdict === 'skipped' ? 'n/a' : t.agrees ? (r.hazard ? 'HAZARD (agrees)' : 'agrees') : 'DISAGREES';
      return `${mark}: ${t.outcome}`;
    });
    lines.push(`${r.case} | ${r.model}${r.hazard ? ` [hazard: ${r.hazard}]` : ''} | ${cells.join(' | ')} | ${r.targetsAgree ? 'yes' : 'NO'}`);
  }
  return lines.join('\n');
}

export function writeAgreement(rows: readonly AgreementRow[], dir = path.resolve('reports/permissions')): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'agreement.json'), JSON.stringify(rows, null, 1) + '\n');
  const md = path.join(dir, 'agreement.md');
  fs.writeFileSync(md, `# Permission agreement: spec model vs targets\n\n${renderAgreement(rows)}\n`);
  return md;
}

export { KNOWN_BAD_PERM_FLAVORS, PERM_FLAVORS, findPermFlavor, permTargetDef } from './targets.ts';
