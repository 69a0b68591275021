#!/usr/bin/env node
// `npm run coverage` (docs/architecture.md "Reports"), two parts, one summary:
//  1. unit: vitest with the v8 provider over the test suite (vitest.config.ts coverage settings),
//     HTML and JSON summary under reports/coverage/unit;
//  2. server: the reference server *process* while the conformance suites drive it. Every
//     `fleece serve` the runner starts inherits NODE_V8_COVERAGE, writes V8 coverage when it
//     exits (SIGTERM and quit both end it normally), and c8 maps it back to reference/src/*.ts
//     through the source maps tsx leaves in the coverage files; HTML under reports/coverage/server.
// Then reports/coverage/summary.txt (both text summaries) and reports/coverage/index.html.
//
// usage: node scripts/coverage.mjs [--skip-unit] [--skip-server] [--target T]... [--suite S]...
//        [-- VITEST ARGS...]   (default targets: reference, reference-legacy; default suites: all)
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(REPO, 'reports/coverage');
const BIN = (name) => path.join(REPO, 'node_modules/.bin', name);

function parse(argv) {
  const a = { unit: true, server: true, targets: [], suites: [], vitest: [] };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    if (x === '--') {
      a.vitest = argv.slice(i + 1);
      break;
    }
    if (x === '--skip-unit') a.unit = false;
    else if (x === '--skip-server') a.server = false;
    else if (x === '--target') a.targets.push(argv[++i]);
    else if (x === '--suite') a.suites.push(argv[++i]);
    else if (x === '--help' || x === '-h') {
      console.log('usage: node scripts/coverage.mjs [--skip-unit] [--skip-server] [--target T]... [--suite S]... [-- VITEST ARGS...]');
      process.exit(0);
    } else {
      console.error(`coverage: unknown argument '${x}'`);
      process.exit(2);
    }
  }
  if (!a.targets.length) a.targets = ['reference', 'reference-legacy'];
  return a;
}

/** "Lines 67.43% (3524/5226)" rows from an istanbul json-summary file. */
function summarize(title, file) {
  if (!fs.existsSync(file)) return `${title}: no coverage summary (${path.relative(REPO, file)} missing)\n`;
  const total = JSON.parse(fs.readFileSync(file, 'utf8')).total;
  const row = (k) => `  ${k.padEnd(11)} ${String(total[k].pct).padStart(6)}% (${total[k].covered}/${total[k].total})`;
  return [`${title}`, ...['statements', 'branches', 'functions', 'lines'].map(row), ''].join('\n');
}

function step(label, cmd, args, opts = {}) {
  process.stdout.write(`\n== ${label}: ${path.basename(cmd)} ${args.join(' ')}\n`);
  const r = spawnSync(cmd, args, { cwd: REPO, stdio: 'inherit', ...opts });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

const args = parse(process.argv.slice(2));
fs.mkdirSync(OUT, { recursive: true });
const notes = [];
let failed = false;

if (args.unit) {
  const unitDir = path.join(OUT, 'unit');
  fs.rmSync(unitDir, { recursive: true, force: true });
  const code = step('unit tests (vitest, v8)', BIN('vitest'), [
    'run', '--coverage',
    `--coverage.reportsDirectory=${unitDir}`,
    '--coverage.reporter=text-summary', '--coverage.reporter=html', '--coverage.reporter=json-summary',
    ...args.vitest,
  ]);
  if (code !== 0) {
    notes.push(`unit tests exited ${code}: coverage below reflects a run with failures`);
    failed = true;
  }
}

if (args.server) {
  const raw = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-v8cov-'));
  const serverDir = path.join(OUT, 'server');
  fs.rmSync(serverDir, { recursive: true, force: true });
  try {
    const conform = [path.join(REPO, 'bin/fleece.mjs'), 'conform', '--no-color', '--timeout', '5000', '--out', path.join(OUT, 'server-run'),
      ...args.targets.flatMap((t) => ['--target', t]), ...args.suites.flatMap((s) => ['--suite', s])];
    const code = step('conformance suites driving the reference server (NODE_V8_COVERAGE)', process.execPath, conform, {
      env: { ...process.env, NODE_V8_COVERAGE: raw },
    });
    // 1 = a conformance verdict failed (expected for known-bad targets); the coverage still counts.
    if (code === 2) notes.push('fleece conform reported a harness error (exit 2): see reports/coverage/server-run');
    else if (code !== 0) notes.push(`fleece conform exited ${code} (a conformance verdict failed); coverage still recorded`);
    const files = fs.readdirSync(raw).length;
    if (files === 0) {
      notes.push('no V8 coverage was written by the server processes');
      failed = true;
    } else {
      step('c8 report (reference/src, source-mapped)', BIN('c8'), [
        'report', `--temp-directory=${raw}`, `--reports-dir=${serverDir}`,
        '--reporter=html', '--reporter=text-summary', '--reporter=json-summary',
        '--include=reference/src/**', '--exclude=**/test/**',
      ]);
    }
  } finally {
    fs.rmSync(raw, { recursive: true, force: true });
  }
}

const summary = [
  'fleece coverage',
  `written ${new Date().toISOString()}`,
  '',
  summarize(args.unit ? 'unit tests (vitest v8: reference/src, spec, conformance, cli)' : 'unit tests (vitest v8; not run this time: the previous report)', path.join(OUT, 'unit/coverage-summary.json')),
  summarize(
    args.server
      ? `reference server process under fleece conform (c8; targets ${args.targets.join(', ')}; suites ${args.suites.join(', ') || 'all'})`
      : 'reference server process under fleece conform (c8; not run this time: the previous report)',
    path.join(OUT, 'server/coverage-summary.json'),
  ),
  ...notes.map((n) => `note: ${n}`),
].join('\n');
fs.writeFileSync(path.join(OUT, 'summary.txt'), summary + '\n');
fs.writeFileSync(
  path.join(OUT, 'index.html'),
  `<!doctype html><meta charset="utf-8"><title>fleece coverage</title>
<h1>fleece coverage</h1>
<ul><li><a href="unit/index.html">unit tests (vitest, v8)</a></li>
<li><a href="server/index.html">reference server process driven by the conformance suites (c8)</a></li></ul>
<pre>${summary.replace(/&/g, '&amp;').replace(/</g, '&lt;')}</pre>\n`,
);
process.stdout.write(`\n${summary}\nreports: ${path.relative(REPO, path.join(OUT, 'index.html'))}, ${path.relative(REPO, path.join(OUT, 'summary.txt'))}\n`);
process.exit(failed ? 1 : 0);
