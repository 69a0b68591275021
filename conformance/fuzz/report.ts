// Fuzz results on disk and on the terminal. Under reports/fuzz/: one summary JSON per target
// (<slug>.json) and one replay file per finding (findings/<slug>-<kind>-<n>.json), each of which
// `fleece fuzz --target T --replay FILE` runs again.
import fs from 'node:fs';
import path from 'node:path';
import type { ReplayFile } from './case.ts';
import { shellArg } from '../targets/command.ts';
import type { CampaignResult, ReportedFinding } from './campaign.ts';

export const slug = (target: string): string => target.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80);

export function replayFileOf(target: string, f: ReportedFinding): ReplayFile {
  return { fleeceFuzz: 1, target, seed: f.seed, finding: { kind: f.kind, message: f.message }, case: f.case };
}

export interface Written {
  summary: string;
  findings: string[];
}

export function writeFuzzReport(dir: string, r: CampaignResult, corpusDir?: string): Written {
  const base = path.join(dir, 'fuzz');
  fs.mkdirSync(path.join(base, 'findings'), { recursive: true });
  const s = slug(r.target);
  const files: string[] = [];
  r.findings.forEach((f, i) => {
    const file = path.join(base, 'findings', `${s}-${f.kind}-${i + 1}.json`);
    const body = JSON.stringify(replayFileOf(r.target, f), null, 2) + '\n';
    fs.writeFileSync(file, body);
    if (corpusDir) {
      fs.mkdirSync(corpusDir, { recursive: true });
      fs.writeFileSync(path.join(corpusDir, `${s}-${f.kind}-${r.seed}-${i + 1}.json`), body);
    }
    files.push(file);
  });
  const summary = path.join(base, `${s}.json`);
  fs.writeFileSync(summary, JSON.stringify({ ...r, findings: r.findings.map((f, i) => ({ kind: f.kind, message: f.message, shrinks: f.shrinks, occurrences: f.occurrences, seed: f.seed, reproduced: f.reproduced, replay: files[i] })), writtenAt: new Date().toISOString() }, null, 2) + '\n');
  return { summary, findings: files };
}

export function renderResult(r: CampaignResult, files: Written, rel: (f: string) => string): string {
  const lines = [
    `fleece fuzz: ${r.target} (${r.description}), seed ${r.seed}`,
    `  ${r.cases} cases, ${r.inputs} inputs in ${(r.elapsedMs / 1000).toFixed(1)} s: ${r.inputsPerSecond} inputs/s; ${r.transmissionCases} cases reached transmission, ${r.qmpCases} QMP cases`,
    `  healthy client probed ${r.healthProbes} times; target restarts ${r.restarts}`,
  ];
  if (r.rss) lines.push(`  server RSS: ${(r.rss.startKiB / 1024).toFixed(0)} MiB at start, max ${(r.rss.maxKiB / 1024).toFixed(0)} MiB, ${(r.rss.endKiB / 1024).toFixed(0)} MiB at the end`);
  if (r.findings.length === 0) lines.push('  findings: none');
  r.findings.forEach((f, i) => {
    lines.push(`  finding ${i + 1} [${f.kind}]${f.occurrences > 1 ? ` (x${f.occurrences})` : ''}${f.reproduced === false ? ' (not reproduced alone)' : ''}: ${f.message}`);
    lines.push(`    shrunk in ${f.shrinks} steps; replay: npx fleece fuzz --target ${shellArg(r.target)} --replay ${rel(files.findings[i]!)}`);
  });
  lines.push(`  report: ${rel(files.summary)}`);
  return lines.join('\n') + '\n';
}
