// results.json: the source of truth for every other report.
import fs from 'node:fs';
import path from 'node:path';
import type { RunResult } from '../runner/model.ts';

export function writeJson(dir: string, run: RunResult): string {
  const file = path.join(dir, 'results.json');
  fs.writeFileSync(file, JSON.stringify(run, null, 2) + '\n');
  return file;
}

export function readJson(file: string): RunResult {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as RunResult;
}
