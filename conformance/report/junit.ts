// junit.xml in the shape CI tools read: one <testsuite> per target, one <testcase> per case with
// the case id's section path as classname (`nbd.handshake`) and its last part as name (`go`),
// failures/errors/skipped/time on every level. The full id, the spec section and the level are
// testcase properties. non-strict and info are passes with a note in <system-out>; with
// --strict a non-strict is a <failure>.
import fs from 'node:fs';
import path from 'node:path';
import type { CaseResult, RunResult } from '../runner/model.ts';

export function xmlEscape(s: string): string {
  // Characters XML 1.0 cannot carry at all are dropped; the rest is escaped.
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, '').replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** `nbd/handshake/go` -> classname `nbd.handshake`, name `go`. */
export function junitNames(id: string): { classname: string; name: string } {
  const parts = id.split('/');
  const name = parts.pop()!;
  return { classname: parts.join('.') || name, name };
}

function failed(r: CaseResult, strict: boolean): boolean {
  return r.verdict === 'fail' || (strict && r.verdict === 'non-strict');
}

function counts(rs: readonly CaseResult[], strict: boolean): string {
  const time = rs.reduce((a, r) => a + r.durationMs, 0) / 1000;
  return `tests="${rs.length}" failures="${rs.filter((r) => failed(r, strict)).length}" errors="${rs.filter((r) => r.verdict === 'error').length}" skipped="${rs.filter((r) => r.verdict === 'skipped').length}" time="${time.toFixed(3)}"`;
}

const property = (name: string, value: string) => `<property name="${xmlEscape(name)}" value="${xmlEscape(value)}"/>`;

function testcase(r: CaseResult, strict: boolean): string {
  const { classname, name } = junitNames(r.id);
  const attrs = `classname="${xmlEscape(classname)}" name="${xmlEscape(name)}" time="${(r.durationMs / 1000).toFixed(3)}"`;
  const props = `<properties>${property('id', r.id)}${property('section', r.section)}${property('level', r.level)}${property('verdict', r.verdict)}</properties>`;
  const out = [`${r.id} [${r.level}] ${r.title}`, `section: ${r.section}`, `verdict: ${r.verdict}${r.reason ? ` - ${r.reason}` : ''}`, ...r.observations].join('\n');
  let inner = '';
  if (failed(r, strict)) inner = `<failure message="${xmlEscape(r.reason)}" type="${r.verdict}">${xmlEscape(r.expectation)}</failure>`;
  else if (r.verdict === 'error') inner = `<error message="${xmlEscape(r.reason)}" type="harness"/>`;
  else if (r.verdict === 'skipped') inner = `<skipped message="${xmlEscape(r.reason)}"/>`;
  return `    <testcase ${attrs}>${props}${inner}<system-out>${xmlEscape(out)}</system-out></testcase>`;
}

export function renderJunit(run: RunResult): string {
  const suites = run.targets.map((t) => {
    const rs = run.results.filter((r) => r.target === t.name);
    const props = [
      property('description', t.description),
      ...(t.error ? [property('error', t.error)] : []),
      ...(t.notApplicable ?? []).map((x) => property(`not-applicable: ${x.suite}`, x.reason)),
      ...Object.entries(t.facts).map(([k, v]) => property(k, typeof v === 'string' ? v : JSON.stringify(v))),
    ];
    return [
      `  <testsuite name="${xmlEscape(t.name)}" ${counts(rs, run.strict)} timestamp="${run.startedAt}">`,
      `    <properties>${props.join('')}</properties>`,
      ...rs.map((r) => testcase(r, run.strict)),
      '  </testsuite>',
    ].join('\n');
  });
  return `<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="fleece conform" ${counts(run.results, run.strict)} timestamp="${run.startedAt}">\n${suites.join('\n')}\n</testsuites>\n`;
}

export function writeJunit(dir: string, run: RunResult): string {
  const file = path.join(dir, 'junit.xml');
  fs.writeFileSync(file, renderJunit(run));
  return file;
}
