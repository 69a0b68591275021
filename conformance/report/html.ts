// Static HTML report in the style of Autobahn|Testsuite: index.html is a matrix of cases x
// targets with coloured cells; cases/<id>.html per case shows description, expectation, and per
// target the verdict, checks, observations and the wire log in hex. The section links into docs/
// and, for NBD cases, to the upstream proto.md section (links.ts).
import fs from 'node:fs';
import path from 'node:path';
import type { CaseResult, RunResult, Verdict } from '../runner/model.ts';
import { sectionHtml, upstreamLinks } from './links.ts';
import { countLine } from './terminal.ts';
import { shellArg } from '../targets/command.ts';

const BG: Record<Verdict, string> = { pass: '#3c3', fail: '#e33', 'non-strict': '#fc3', info: '#6bf', skipped: '#ccc', error: '#c3c' };

export function htmlEscape(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** File name of a case page: the id with '/' turned into '__'. */
export function casePage(id: string): string {
  return `${id.replace(/[^A-Za-z0-9._-]/g, '__')}.html`;
}

const STYLE = `body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #999;padding:2px 6px;vertical-align:top}th{background:#eee}.v{text-align:center;font-weight:600}
a{color:#036}pre{background:#f6f6f6;padding:6px;overflow:auto}.wire td{font-family:monospace;font-size:12px}
.legend span{padding:2px 8px;margin-right:4px}li{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px}`;

function page(title: string, body: string): string {
  return `<!doctype html>\n<html><head><meta charset="utf-8"><title>${htmlEscape(title)}</title><style>${STYLE}</style></head><body>${body}</body></html>\n`;
}

function cell(r: CaseResult | undefined, link: string): string {
  if (!r) return '<td></td>';
  return `<td class="v" style="background:${BG[r.verdict]}" title="${htmlEscape(r.reason)}"><a href="${link}">${r.verdict}</a><br><small>${r.durationMs} ms</small></td>`;
}

function legend(): string {
  return `<p class="legend">${(Object.keys(BG) as Verdict[]).map((v) => `<span style="background:${BG[v]}">${v}</span>`).join('')}</p>`;
}

/** The section a case id belongs to: `nbd/handshake/go` -> `nbd/handshake`. */
const sectionOf = (id: string): string => id.split('/').slice(0, -1).join('/') || id;

/** Filters on the matrix, in the page itself: failures only, rows where the targets differ. */
const FILTER_SCRIPT = `<p><label><input type="checkbox" id="f-bad"> failures only (fail, non-strict, error)</label>
<label><input type="checkbox" id="f-diff"> only where the targets differ</label></p>
<script>
function applyFilters(){var bad=document.getElementById('f-bad').checked,diff=document.getElementById('f-diff').checked;
document.querySelectorAll('tr.case').forEach(function(tr){var v=tr.dataset.verdicts.split(' ');
var show=(!bad||v.some(function(x){return x==='fail'||x==='non-strict'||x==='error'}))&&(!diff||new Set(v.filter(Boolean)).size>1);
tr.style.display=show?'':'none'});
document.querySelectorAll('tr.section').forEach(function(h){var n=h.nextElementSibling,any=false;
while(n&&n.classList.contains('case')){if(n.style.display!=='none')any=true;n=n.nextElementSibling}h.style.display=any?'':'none'})}
document.getElementById('f-bad').onchange=applyFilters;document.getElementById('f-diff').onchange=applyFilters;
</script>`;

function renderIndex(run: RunResult): string {
  const ids = [...new Set(run.results.map((r) => r.id))];
  const byKey = new Map(run.results.map((r) => [`${r.target}\u0000${r.id}`, r]));
  const first = new Map<string, CaseResult>();
  for (const r of run.results) if (!first.has(r.id)) first.set(r.id, r);
  const head = `<tr><th>case</th><th>level</th>${run.targets.map((t) => `<th title="${htmlEscape(t.description)}">${htmlEscape(t.name)}</th>`).join('')}</tr>`;
  // Per-target totals in the same vocabulary as the terminal.
  const totals = `<tr><th colspan="2">totals</th>${run.targets
    .map((t) => {
      const rs = run.results.filter((r) => r.target === t.name);
      const n = (v: Verdict) => rs.filter((r) => r.verdict === v).length;
      return `<td><small>${n('pass')} pass, ${n('fail')} fail, ${n('non-strict')} warn, ${n('info')} info, ${n('skipped')} skip, ${n('error')} error${t.notApplicable?.length ? `; not applicable: ${htmlEscape(t.notApplicable.map((x) => x.suite).join(', '))}` : ''}</small></td>`;
    })
    .join('')}</tr>`;
  const rows: string[] = [];
  let section = '';
  for (const id of ids) {
    const c = first.get(id)!;
    if (sectionOf(id) !== section) {
      section = sectionOf(id);
      rows.push(`<tr class="section"><th colspan="${2 + run.targets.length}" style="text-align:left">${htmlEscape(section)}</th></tr>`);
    }
    const link = `cases/${casePage(id)}`;
    const up = upstreamLinks(c.section)[0];
    const spec = up ? ` <small><a href="${htmlEscape(up)}" title="upstream specification section">spec</a></small>` : '';
    const verdicts = run.targets.map((t) => byKey.get(`${t.name}\u0000${id}`)?.verdict ?? '').join(' ');
    rows.push(`<tr class="case" data-verdicts="${verdicts}"><td><a href="${link}">${htmlEscape(id)}</a>${spec}<br><small>${htmlEscape(c.title)}</small></td><td>${c.level}</td>${run.targets.map((t) => cell(byKey.get(`${t.name}\u0000${id}`), link)).join('')}</tr>`);
  }
  const targets = run.targets
    .map((t) => {
      const na = (t.notApplicable ?? []).map((x) => `<li>not applicable: suite ${htmlEscape(x.suite)}: ${htmlEscape(x.reason)}</li>`).join('');
      return `<li><b>${htmlEscape(t.name)}</b>: ${htmlEscape(t.description)}${t.error ? ` <b style="color:#c00">error: ${htmlEscape(t.error)}</b>` : ''}${na ? `<ul>${na}</ul>` : ''}<pre>${htmlEscape(JSON.stringify(t.facts, null, 2))}</pre></li>`;
    })
    .join('');
  return page(
    'fleece conform',
    `<h1>fleece conform</h1><p>${htmlEscape(run.startedAt)} - suites ${htmlEscape(run.suites.join(', '))} - seed ${run.seed}${run.strict ? ' - strict' : ''}${run.filter.length ? ` - filter ${htmlEscape(run.filter.join(' '))}` : ''}</p>
<p><b>${htmlEscape(countLine(run))}</b></p>${legend()}${FILTER_SCRIPT}<table>${head}${totals}${rows.join('\n')}</table><h2>Targets</h2><p>Each target's facts: the peers' versions and the command lines it was started with, where the runner started it, and what the suites probed.</p><ul>${targets}</ul>`,
  );
}

function renderWire(r: CaseResult): string {
  if (!r.wire.length) return '<p>(no wire traffic)</p>';
  const rows = r.wire.map((w) => {
    const hex = w.hex.replace(/(..)/g, '$1 ').trim();
    const more = w.size * 2 > w.hex.length ? ` ... (${w.size} bytes)` : '';
    const dir = w.dir === 'send' ? 'C&rarr;S' : w.dir === 'recv' ? 'S&rarr;C' : '';
    return `<tr><td>${w.t}</td><td>#${w.conn}</td><td>${dir}</td><td>${w.dir === 'note' ? '' : w.offset}</td><td>${htmlEscape(w.note)}</td><td>${htmlEscape(hex)}${more}</td></tr>`;
  });
  return `<table class="wire"><tr><th>ms</th><th>conn</th><th>dir</th><th>offset</th><th>decoded</th><th>hex</th></tr>${rows.join('\n')}</table>`;
}

/** The case id, linked to the first upstream spec section its `section` names (NBD cases). */
function idHtml(id: string, section: string): string {
  const up = upstreamLinks(section)[0];
  return up ? `<a href="${htmlEscape(up)}" title="upstream specification">${htmlEscape(id)}</a>` : htmlEscape(id);
}

function renderCase(id: string, rs: CaseResult[], run: RunResult, pageDir: string): string {
  const c = rs[0]!;
  const per = rs.map((r) => {
    const checks = r.checks.map((k) => `<tr><td>${k.level}</td><td style="background:${k.ok ? BG.pass : k.level === 'MUST' ? BG.fail : k.level === 'SHOULD' ? BG['non-strict'] : BG.info}">${k.ok ? 'ok' : 'violated'}</td><td>${htmlEscape(k.what)}</td><td>${htmlEscape(k.observed ?? '')}</td></tr>`);
    return `<h2>${htmlEscape(r.target)}: <span style="background:${BG[r.verdict]};padding:0 6px">${r.verdict}</span></h2>
<p>${htmlEscape(r.reason)}</p><p><small>${r.durationMs} ms, case seed ${r.seed}; re-run: <code>npx fleece conform --target ${htmlEscape(shellArg(r.target))} --case ${htmlEscape(r.id)} --seed ${run.seed}</code></small></p>
<h3>Checks</h3>${checks.length ? `<table><tr><th>level</th><th>result</th><th>requirement</th><th>observed</th></tr>${checks.join('')}</table>` : '<p>(none)</p>'}
<h3>Observations</h3>${r.observations.length ? `<ul>${r.observations.map((o) => `<li>${htmlEscape(o)}</li>`).join('')}</ul>` : '<p>(none)</p>'}
<h3>Wire log</h3>${renderWire(r)}`;
  });
  return page(
    id,
    `<p><a href="../index.html">&larr; matrix</a></p><h1>${idHtml(id, c.section)}</h1><p><b>${htmlEscape(c.title)}</b> [${c.level}]</p><p>Section: ${sectionHtml(c.section, pageDir)}</p>
<p><b>Description.</b> ${htmlEscape(c.description)}</p><p><b>Expectation.</b> ${htmlEscape(c.expectation)}</p>${per.join('\n')}`,
  );
}

export function writeHtml(dir: string, run: RunResult): string {
  const root = path.join(dir, 'html');
  fs.mkdirSync(path.join(root, 'cases'), { recursive: true });
  fs.writeFileSync(path.join(root, 'index.html'), renderIndex(run));
  const byId = new Map<string, CaseResult[]>();
  for (const r of run.results) byId.set(r.id, [...(byId.get(r.id) ?? []), r]);
  for (const [id, rs] of byId) fs.writeFileSync(path.join(root, 'cases', casePage(id)), renderCase(id, rs, run, path.resolve(root, 'cases')));
  return path.join(root, 'index.html');
}
