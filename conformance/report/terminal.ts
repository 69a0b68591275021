// Terminal output: progress while running, a summary grouped by target and verdict, and the
// final line `N passed, N failed, N skipped`.
import type { CaseResult, RunResult, Verdict } from '../runner/model.ts';
import type { ProgressEvent } from '../runner/run.ts';

const COLOR: Record<Verdict, string> = { pass: '32', fail: '31', 'non-strict': '33', info: '36', skipped: '90', error: '35' };
const MARK: Record<Verdict, string> = { pass: 'ok  ', fail: 'FAIL', 'non-strict': 'warn', info: 'info', skipped: 'skip', error: 'ERR ' };

export function paint(v: Verdict, text: string, color: boolean): string {
  return color ? `\x1b[${COLOR[v]}m${text}\x1b[0m` : text;
}

export function progressLine(e: ProgressEvent, color: boolean): string | undefined {
  switch (e.kind) {
    case 'target-start':
      return `== ${e.target}: ${e.cases} case(s)`;
    case 'target-error':
      return `!! ${e.target}: ${e.error}`;
    case 'not-applicable':
      return `-- ${e.target}: suite ${e.suite} does not apply: ${e.reason}`;
    case 'case': {
      const r = e.result;
      // The cases a dead or unreachable target never ran: the summary says it once.
      if (r.verdict === 'error' && r.reason.startsWith('not run: ')) return undefined;
      return `[${String(e.index).padStart(3)}/${e.total}] ${paint(r.verdict, MARK[r.verdict], color)} ${r.id} (${r.durationMs} ms)${r.verdict !== 'pass' && r.reason ? `\n          ${r.reason.slice(0, 300)}` : ''}`;
    }
  }
}

/** The strength of what a verdict says: a fail breaks a MUST, a warn a SHOULD, an info is a MAY
 * (the case's own level is the strongest it checks, which is not what failed). */
const SAYS: Partial<Record<Verdict, string>> = { fail: 'MUST', 'non-strict': 'SHOULD', info: 'MAY' };

function line(r: CaseResult, color: boolean): string {
  const level = SAYS[r.verdict];
  // The reason starts with the failed check's level already ("SHOULD: ..."): don't say it twice.
  const reason = level && r.reason.startsWith(`${level}: `) ? r.reason.slice(level.length + 2) : r.reason;
  return `  ${paint(r.verdict, MARK[r.verdict], color)} ${r.id}${level ? ` [${level}]` : ''}${reason ? ` - ${reason.slice(0, 400)}` : ''}`;
}

/** The final line counts passed (pass, info and - unless strict - non-strict), failed (fail, error, and non-strict with --strict) and skipped. */
export function countLine(run: RunResult): string {
  const c = run.counts;
  const failed = c.fail + c.error + (run.strict ? c['non-strict'] : 0);
  const passed = c.pass + c.info + (run.strict ? 0 : c['non-strict']);
  return `${passed} passed, ${failed} failed, ${c.skipped} skipped`;
}

/** The summary; `extra` lines (e.g. where the reports went) come before the final count line. */
export function renderSummary(run: RunResult, color: boolean, extra: readonly string[] = []): string {
  const out: string[] = [''];
  for (const t of run.targets) {
    const rs = run.results.filter((r) => r.target === t.name);
    out.push(`${t.name}: ${t.description}${t.error ? ` (error: ${t.error})` : ''}`);
    for (const v of ['fail', 'error', 'non-strict', 'info'] as const) {
      const these = rs.filter((x) => x.verdict === v);
      if (v !== 'error') {
        for (const r of these) out.push(line(r, color));
        continue;
      }
      // Harness errors with one cause (a suite that could not start, a target that went away) are
      // one line, with how many cases they cost.
      const byReason = new Map<string, CaseResult[]>();
      for (const r of these) byReason.set(r.reason, [...(byReason.get(r.reason) ?? []), r]);
      for (const [reason, group] of byReason) {
        if (group.length === 1) out.push(line(group[0]!, color));
        else out.push(`  ${paint('error', MARK.error, color)} ${group.length} cases (${group[0]!.id} ... ${group[group.length - 1]!.id}) - ${reason.slice(0, 400)}`);
      }
    }
    const n = (v: Verdict) => rs.filter((r) => r.verdict === v).length;
    out.push(`  -- ${n('pass')} pass, ${n('fail')} fail (MUST), ${n('non-strict')} warn (SHOULD), ${n('info')} info (MAY), ${n('skipped')} skip, ${n('error')} error`);
    for (const x of t.notApplicable ?? []) out.push(`  -- not applicable: suite ${x.suite}: ${x.reason}`);
    // What was tested, exactly: versions (and paths) of the peers, the command lines and set-up
    // QMP of the processes started for this target.
    const peers = t.facts.peers as Record<string, string> | undefined;
    for (const [p, v] of Object.entries(peers ?? {})) out.push(`  -- peer ${p}: ${v}`);
    // A suite that starts a daemon per case starts many alike: the first few here, all in the reports.
    const started = [...((t.facts.commands as string[] | undefined) ?? []), ...((t.facts.started as string[] | undefined) ?? [])];
    for (const c of started.slice(0, 4)) out.push(`  -- started: ${c}`);
    if (started.length > 4) out.push(`  -- started: ${started.length - 4} more (results.json, junit.xml, html)`);
  }
  out.push(`seed ${run.seed}${run.strict ? ', strict (SHOULD failures fail the run)' : ''}`);
  out.push(...extra);
  out.push(countLine(run));
  return out.join('\n') + '\n';
}
