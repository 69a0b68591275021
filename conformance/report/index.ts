// Writes every report of a run under one directory (default reports/).
import fs from 'node:fs';
import type { RunResult } from '../runner/model.ts';
import { writeHtml } from './html.ts';
import { writeJson } from './json.ts';
import { writeJunit } from './junit.ts';

export function writeReports(dir: string, run: RunResult): { json: string; junit: string; html: string } {
  fs.mkdirSync(dir, { recursive: true });
  return { json: writeJson(dir, run), junit: writeJunit(dir, run), html: writeHtml(dir, run) };
}
