#!/usr/bin/env node
// Turns Stryker's JSON reports (reports/mutation/{conform,unit}/mutation.json, mutation-testing-
// report-schema) into reports/mutation/summary.md: per score, the score per file and every
// surviving mutant with a one-line reason. Reasons are written by hand in
// reports/mutation/survivors.json; a survivor without one is listed as "not yet reviewed".
// Run by scripts/mutate.mjs after each Stryker run; `npm run mutation-summary` reruns it alone.
//
// survivors.json: [{ "file", "line", "column"? (when one line has two alike), "mutator", "replacement", "verdict": "equivalent" |
//   "not yet killed" | "killed by" | "timeout" (a Timeout mutant: why the hang is the mutant's doing; only then is it a kill), "case"? and "since"? (with "killed by": the case that now kills it, and the date it was
//   added; the mutant survived the last Stryker run, which predates the case), "reason", "score"?: "conform" | "unit" }]
//   (no score: applies to both). A "killed by" entry whose mutant a later run reports Killed is spent, not stale.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mutate as configured } from '../stryker.shared.mjs';

const DIR = 'reports/mutation';
const SCORES = [
  { key: 'conform', title: 'Score 1: the conformance suites as the judge', command: 'npm run mutate', judge: '`fleece conform --target reference --target reference-legacy` per mutant (command runner; any non-zero exit kills)' },
  { key: 'unit', title: "Score 2: the reference's unit tests", command: 'npm run mutate:unit', judge: '`reference/test/**/*.test.ts` through the vitest runner, per-test coverage' },
];

const readJson = (p) => (existsSync(p) ? JSON.parse(readFileSync(p, 'utf8')) : undefined);
const readLines = (p) => (existsSync(p) ? readFileSync(p, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : []);
const annotations = readJson(`${DIR}/survivors.json`) ?? [];
const used = new Set();

const oneLine = (s, max = 90) => {
  const t = s.replace(/\s+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max - 3)}...` : t;
};
const code = (s) => '`' + oneLine(s).replace(/`/g, "'") + '`';

/** The source text a mutant replaces (location: 1-based lines, 1-based columns, end exclusive). */
function original(source, { start, end }) {
  const lines = source.split('\n');
  if (start.line === end.line) return lines[start.line - 1].slice(start.column - 1, end.column - 1);
  const parts = [lines[start.line - 1].slice(start.column - 1)];
  for (let l = start.line; l < end.line - 1; l++) parts.push(lines[l]);
  parts.push(lines[end.line - 1].slice(0, end.column - 1));
  return parts.join('\n');
}

function findReason(score, file, m) {
  return annotations.findIndex(
    (a) =>
      a.file === file &&
      a.line === m.location.start.line &&
      (a.column === undefined || a.column === m.location.start.column) &&
      a.mutator === m.mutatorName &&
      a.replacement === m.replacement &&
      (a.score === undefined || a.score === score),
  );
}

function reasonFor(score, file, m) {
  const i = findReason(score, file, m);
  if (i < 0) return 'not yet reviewed';
  used.add(i);
  const a = annotations[i];
  if (a.verdict === 'killed by') return `killed by ${a.case}${a.since ? ` (since ${a.since})` : ''}: ${a.reason}`;
  return `${a.verdict}: ${a.reason}`;
}

const counted = ['Killed', 'Timeout', 'Survived', 'NoCoverage', 'RuntimeError', 'CompileError', 'Ignored', 'Pending'];
const pct = (n, d) => (d === 0 ? 'n/a' : `${((100 * n) / d).toFixed(1)}%`);

function section(score) {
  const out = [`## ${score.title}`, ''];
  // mutation.json is not committed; the committed incremental file has the same schema and
  // results, so a fresh clone regenerates the same summary.
  const report = readJson(`${DIR}/${score.key}/mutation.json`) ?? readJson(`${DIR}/${score.key}/stryker-incremental.json`);
  out.push(`Judge: ${score.judge}. Command: \`${score.command}\`.`, '');
  if (!report) {
    out.push('Not run yet.', '');
    return out;
  }
  const info = readJson(`${DIR}/${score.key}/run-info.json`);
  const runs = readLines(`${DIR}/${score.key}/runs.jsonl`);
  const files = Object.keys(report.files).sort();
  const missing = configured.filter((f) => !files.includes(f));
  const narrowed = info?.args?.find((a, i, all) => all[i - 1] === '--mutate');
  const partial = missing.length > 0 || (narrowed !== undefined && narrowed.includes(':'));
  out.push(
    partial
      ? `**PARTIAL**: ${files.length} of ${configured.length} files${narrowed ? ` (\`--mutate ${narrowed}\`)` : ''}; not yet run: ${missing.map((f) => `\`${f}\``).join(', ') || 'none'}.`
      : `Complete: all ${configured.length} configured files.`,
    '',
  );
  if (info) {
    const line = [`Last run ${info.startedAt} (${info.machine}), wall time ${(info.wallMs / 60000).toFixed(1)} min`];
    const timed = runs.filter((r) => r.mutant !== null);
    const dry = runs.find((r) => r.mutant === null);
    if (dry) line.push(`dry run (unmutated) ${(dry.ms / 1000).toFixed(1)} s`);
    if (timed.length) {
      const mean = timed.reduce((s, r) => s + r.ms, 0) / timed.length;
      line.push(`${timed.length} mutant runs, mean ${(mean / 1000).toFixed(1)} s per mutant (min ${(Math.min(...timed.map((r) => r.ms)) / 1000).toFixed(1)}, max ${(Math.max(...timed.map((r) => r.ms)) / 1000).toFixed(1)}; a mutant Stryker stops at its timeout is not timed here)`);
    }
    out.push(`${line.join('; ')}.`, '');
  }

  const rows = [];
  const total = Object.fromEntries(counted.map((k) => [k, 0]));
  const survivors = [];
  const exit2 = [];
  const timeouts = [];
  total.TimeoutUnexplained = 0;
  for (const f of files) {
    const { source, mutants } = report.files[f];
    const c = Object.fromEntries(counted.map((k) => [k, 0]));
    c.TimeoutUnexplained = 0;
    const byPlace = (a, b) => a.location.start.line - b.location.start.line || a.location.start.column - b.location.start.column;
    for (const m of [...mutants].sort(byPlace)) {
      c[m.status] = (c[m.status] ?? 0) + 1;
      total[m.status] = (total[m.status] ?? 0) + 1;
      const where = `${f}:${m.location.start.line}:${m.location.start.column}`;
      const what = `${m.mutatorName} ${code(original(source, m.location))} -> ${code(m.replacement ?? '')}`;
      if (m.status === 'Survived' || m.status === 'NoCoverage')
        survivors.push(`- \`${where}\` ${what}${m.status === 'NoCoverage' ? ' (no test reaches it)' : ''}: ${reasonFor(score.key, f, m)}`);
      if (m.status === 'Killed') {
        const k = findReason(score.key, f, m);
        if (k >= 0 && annotations[k].verdict === 'killed by') used.add(k);
      }
      if (m.status === 'Timeout') {
        // A timeout is a kill only with a stated reason (verdict "timeout" in survivors.json):
        // a mutant that hangs the judge may as well be one the judge never decides.
        const k = findReason(score.key, f, m);
        if (k >= 0 && annotations[k].verdict === 'timeout') {
          used.add(k);
          timeouts.push(`- \`${where}\` ${what}: ${annotations[k].reason}`);
        } else {
          c.TimeoutUnexplained++;
          total.TimeoutUnexplained++;
          timeouts.push(`- \`${where}\` ${what}: not yet reviewed (counted as survived)`);
        }
      }
      if (m.status === 'Killed' && /fleece conform exit 2/.test(m.statusReason ?? ''))
        exit2.push(`- \`${where}\` ${what}: ${oneLine((m.statusReason ?? '').replace(/^fleece conform exit 2:?/, ''), 160) || 'no verdicts (a target did not start)'}`);
    }
    rows.push([f, c]);
  }
  rows.push(['**all**', total]);
  const valid = (c) => c.Killed + c.Timeout + c.Survived + c.NoCoverage;
  out.push('| file | mutants | killed | timeout | survived | no coverage | errors | score | score of covered |');
  out.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const [f, c] of rows) {
    const n = counted.reduce((s, k) => s + c[k], 0);
    const detected = c.Killed + c.Timeout - c.TimeoutUnexplained;
    out.push(
      `| ${f.startsWith('*') ? f : `\`${f}\``} | ${n} | ${c.Killed} | ${c.Timeout} | ${c.Survived} | ${c.NoCoverage} | ${c.RuntimeError + c.CompileError} | ${pct(detected, valid(c))} | ${pct(detected, c.Killed + c.Timeout + c.Survived)} |`,
    );
  }
  out.push(
    '',
    'Score = (killed + timeout) / (killed + timeout + survived + no coverage), as Stryker computes it, except that a timeout counts as killed only where the Timeouts list below says why (otherwise it counts as survived); score of covered leaves out no coverage.',
    '',
  );
  out.push(`### Survivors (${survivors.length})`, '', ...(survivors.length ? survivors : ['None.']), '');
  out.push(`### Timeouts (${timeouts.length})`, '', ...(timeouts.length ? timeouts : ['None.']), '');
  if (score.key === 'conform') {
    out.push(
      `### Killed only by a harness error (exit 2: ${exit2.length})`,
      '',
      'Counted as killed: the dry run shows the unmutated reference passes with no harness error, so an `error` verdict or a daemon that no longer starts is the mutant\'s doing; no MUST names it, though.',
      '',
      ...(exit2.length ? exit2 : ['None.']),
      '',
    );
  }
  return out;
}

const doc = [
  '# Mutation testing',
  '',
  'Generated by `scripts/mutation-summary.mjs` from the Stryker JSON reports of `npm run mutate` and `npm run mutate:unit`; do not edit by hand. Survivor reasons live in `reports/mutation/survivors.json`. The two scores are kept apart: a mutant killed by the unit tests says nothing about the conformance suites, and the other way round.',
  '',
  ...SCORES.flatMap(section),
];
const stale = annotations.filter((_, i) => !used.has(i));
if (stale.length)
  doc.push('## Reasons in survivors.json that match no current survivor', '', ...stale.map((a) => `- \`${a.file}:${a.line}\` ${a.mutator} -> ${code(a.replacement)}${a.score ? ` (${a.score})` : ''}`), '');
writeFileSync(`${DIR}/summary.md`, doc.join('\n'));
process.stdout.write(`wrote ${DIR}/summary.md\n`);
