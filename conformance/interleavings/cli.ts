// Stand-alone entry of the interleavings suite, for replaying one interleaving and for the full
// per-interleaving report (the `fleece conform --suite interleavings` cases carry the summary):
//   fleece interleave [--target T]... [--scenario ID]... [--interleaving N]...
//        [--scheme s1|s3|s4|KNOWN-BAD] [--mode breakpoints|submission-orders] [--delay MS]
//        [--step-timeout MS] [--blocked-grace MS] [--no-reduction] [--json] [--out DIR] [--list]
// Writes DIR/interleavings/<target>.json (default DIR: reports/). Exit 0 when every interleaving
// agrees and no snapshot read returned post-snapshot data, 1 otherwise, 2 on a usage or harness
// error.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SCHEMES } from '../../spec/models/fleecing/scheme.ts';
import { DEFAULT_SCENARIOS } from '../../spec/scenarios/fleecing.ts';
import { describeScenario } from './format.ts';
import { runInterleavings, type ScenarioReport } from './run.ts';
import { INTERLEAVING_TARGETS, type InterleavingTargetName } from './setup.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const USAGE = `usage: fleece interleave [--target T]... [--scenario ID]... [--interleaving N]...
         [--scheme S] [--mode breakpoints|submission-orders] [--delay MS] [--step-timeout MS]
         [--blocked-grace MS] [--no-reduction] [--json] [--out DIR] [--list]
  --no-reduction  drive every path of the fused model, not one per trace and symmetry class
  --blocked-grace how long a request the model has wait is given to get past its wait (default
                  100 ms, a bound: a waiting implementation never gets there); 0: no blocking check
  targets:   ${Object.keys(INTERLEAVING_TARGETS).join(', ')} (default: reference)
  scenarios: ${DEFAULT_SCENARIOS.map((s) => s.id).join(', ')} (default: all)
  schemes:   the target's own (reference s4, reference-legacy s3, reference-racy s1,
             reference-hbitmap-status s4-qemu-7.2-hbitmap-status, reference-no-read-wait s4), or any of
             ${SCHEMES.map((s) => s.name).join(', ')} to check the checker`;

export async function main(argv: readonly string[]): Promise<number> {
  const targets: InterleavingTargetName[] = [];
  const scenarios: string[] = [];
  const only: number[] = [];
  let scheme: string | undefined;
  let mode: 'breakpoints' | 'submission-orders' | undefined;
  let delay: number | undefined;
  let stepTimeoutMs: number | undefined;
  let blockedGraceMs: number | undefined;
  let json = false;
  let noReduction = false;
  let list = false;
  let out = path.join(REPO, 'reports');
  try {
    for (let i = 0; i < argv.length; i++) {
      const a = argv[i]!;
      const v = () => {
        const x = argv[++i];
        if (x === undefined) throw new Error(`${a} needs a value`);
        return x;
      };
      const num = () => {
        const x = Number(v());
        if (!Number.isInteger(x) || x < 0) throw new Error(`${a} needs a non-negative integer`);
        return x;
      };
      switch (a) {
        case '--target': {
          const t = v();
          if (!(t in INTERLEAVING_TARGETS)) throw new Error(`unknown target '${t}'`);
          targets.push(t as InterleavingTargetName);
          break;
        }
        case '--scenario': {
          const s = v();
          if (!DEFAULT_SCENARIOS.some((x) => x.id === s)) throw new Error(`unknown scenario '${s}'`);
          scenarios.push(s);
          break;
        }
        case '--interleaving': only.push(num()); break;
        case '--scheme': {
          scheme = v();
          if (!SCHEMES.some((s) => s.name === scheme)) throw new Error(`unknown scheme '${scheme}'`);
          break;
        }
        case '--mode': {
          const m = v();
          if (m !== 'breakpoints' && m !== 'submission-orders') throw new Error(`--mode is breakpoints or submission-orders`);
          mode = m;
          break;
        }
        case '--delay': delay = num(); break;
        case '--step-timeout': stepTimeoutMs = num(); break;
        case '--blocked-grace': blockedGraceMs = num(); break;
        case '--json': json = true; break;
        case '--no-reduction': noReduction = true; break;
        case '--list': list = true; break;
        case '--out': out = path.resolve(v()); break;
        case '--help': case '-h': process.stdout.write(USAGE + '\n'); return 0;
        default: throw new Error(`unknown argument '${a}'`);
      }
    }
  } catch (e) {
    process.stderr.write(`interleavings: ${(e as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  const chosen = DEFAULT_SCENARIOS.filter((s) => scenarios.length === 0 || scenarios.includes(s.id));
  if (list) {
    for (const s of chosen) process.stdout.write(`${s.id.padEnd(22)} ${s.title}\n`);
    return 0;
  }
  let failed = false;
  let harness = false;
  const log = json ? process.stderr : process.stdout;
  const all: Record<string, ScenarioReport[]> = {};
  for (const t of targets.length ? targets : (['reference'] as InterleavingTargetName[])) {
    let rs: ScenarioReport[];
    try {
      rs = await runInterleavings({
        target: t,
        scenarios: chosen,
        ...(scheme ? { scheme: SCHEMES.find((s) => s.name === scheme)! } : {}),
        ...(mode ? { mode } : {}),
        ...(only.length ? { only } : {}),
        ...(delay !== undefined ? { sourceReadDelayMs: delay } : {}),
        ...(stepTimeoutMs !== undefined ? { stepTimeoutMs } : {}),
        ...(blockedGraceMs !== undefined ? { blockedGraceMs } : {}),
        ...(noReduction ? { reduction: 'none' as const } : {}),
      });
    } catch (e) {
      process.stderr.write(`interleavings: ${t}: ${(e as Error).message}\n`);
      harness = true;
      continue;
    }
    all[t] = rs;
    // An --interleaving that no chosen scenario has ran nothing: say so, exit 2.
    if (only.length && rs.every((r) => r.counts.executed === 0)) {
      const sizes = rs.map((r) => `${r.id}: ${r.counts.enumerated + (r.counts.blockingExtra ?? 0)}`).join(', ');
      process.stderr.write(`interleavings: ${t}: no interleaving ${only.join(', ')} in the chosen scenarios (interleavings per scenario: ${sizes})\n`);
      harness = true;
      continue;
    }
    for (const r of rs) {
      log.write(describeScenario(r, only.length ? 100 : 3, only.length > 0) + '\n\n');
      if (r.error) harness = true;
      if (r.counts.disagreeing > 0 || r.counts.implViolations > 0) failed = true;
    }
    fs.mkdirSync(path.join(out, 'interleavings'), { recursive: true });
    const file = path.join(out, 'interleavings', `${t}${scheme ? `-${scheme}` : ''}.json`);
    fs.writeFileSync(file, JSON.stringify({ tool: 'fleece interleavings', version: 1, target: t, scenarios: rs }, null, 2) + '\n');
    log.write(`report: ${path.relative(process.cwd(), file)}\n`);
  }
  const total = Object.values(all).flat();
  type NumericCount = Exclude<keyof ScenarioReport['counts'], 'blockedSkipped'>;
  const sum = (k: NumericCount) => total.reduce((a, r) => a + r.counts[k], 0);
  log.write(`${sum('enumerated')} interleavings enumerated, ${sum('executed')} executed, ${sum('agreeing')} agreeing, ${sum('disagreeing')} disagreeing, ${sum('implViolations')} with post-snapshot data\n`);
  log.write(`blocking check: ${sum('blockedTried')} blocked steps let go, ${sum('blockedHeld')} held (${sum('blockedRechecked')} later re-checks)\n`);
  const cov: Record<string, number> = {};
  for (const r of total) for (const [k, n] of Object.entries(r.coverage.actions)) cov[k] = (cov[k] ?? 0) + n;
  const never = Object.entries(cov).filter(([, n]) => n === 0).map(([k]) => k);
  if (Object.keys(cov).length) log.write(`model-action coverage: ${Object.entries(cov).map(([k, n]) => `${k} ${n}`).join(', ')}${never.length ? `; never taken: ${never.join(', ')}` : '; every action taken'}\n`);
  if (json) process.stdout.write(JSON.stringify(all, null, 2) + '\n');
  return harness ? 2 : failed ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then((c) => (process.exitCode = c));
}
