// junit.xml: one <testsuite> per target and suite, one <testcase> per case, spec section as
// classname and case id as name (docs/verification.md §4). non-strict and info are passes
// with a note in <system-out>; with --strict a non-strict is a <failure>.
import fs from 'node:fs';
import path from 'node:path';
import type { CaseResult, RunResult } from '../runner/model.ts';

export function xmlEscape(s: string): string {
  // Characters XML 1.0 cannot carry at all are dropped; the rest is escaped.
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, '').replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

function testcase(r: CaseResult, strict: boolean): string {
  const attrs = `classname="${xmlEscape(r.section)}" name="${xmlEscape(r.id)}" time="${(r.durationMs / 1000).toFixed(3)}"`;
  const out = [`[${r.level}] ${r.title}`, `verdict: ${r.verdict}${r.reason ? ` - ${r.reason}` : ''}`, ...r.observations].join('\n');
  let inner = '';
  if (r.verdict === 'fail' || (strict && r.verdict === 'non-strict')) inner = `<failure message="${xmlEscape(r.reason)}" type="${r.verdict}">${xmlEscape(r.expectation)}</failure>`;
  else if (r.verdict === 'error') inner = `<error message="${xmlEscape(r.reason)}" type="harness"/>`;
  else if (r.verdict === 'skipped') inner = `<skipped message="${xmlEscape(r.reason)}"/>`;
  return `    <testcase ${attrs}>${inner}<system-out>${xmlEscape(out)}</system-out></testcase>`;
}

export function renderJunit(run: RunResult): string {
  const groups = new Map<string, CaseResult[]>();
  for (const r of run.results) {
    const k = `${r.target} ${r.suite}`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  const suites = [...groups].map(([name, rs]) => {
    const failures = rs.filter((r) => r.verdict === 'fail' || (run.strict && r.verdict === 'non-strict')).length;
    const time = rs.reduce((a, r) => a + r.durationMs, 0) / 1000;
    return [
      `  <testsuite name="${xmlEscape(name)}" tests="${rs.length}" failures="${failures}" errors="${rs.filter((r) => r.verdict === 'error').length}" skipped="${rs.filter((r) => r.verdict === 'skipped').length}" time="${time.toFixed(3)}" timestamp="${run.startedAt}">`,
      ...rs.map((r) => testcase(r, run.strict)),
      '  </testsuite>',
    ].join('\n');
  });
  return `<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="fleece conform" tests="${run.results.length}">\n${suites.join('\n')}\n</testsuites>\n`;
}

export function writeJunit(dir: string, run: RunResult): string {
  const file = path.join(dir, 'junit.xml');
  fs.writeFileSync(file, renderJunit(run));
  return file;
}
