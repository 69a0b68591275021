// Wire traces of failing fleecing runs (docs/verification.md §4 item 5): the configuration, the seed, every
// batch of requests with its connections and send offsets, what each request got back and when,
// the violations in plain words, and the NBD wire log. `fleece replay TRACE --target T` starts
// a fresh setup with the same configuration, sends the same batches the same way, and judges
// the replies again (replayTrace below).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { WireEntry } from '../nbd/wirelog.ts';
import { WireLog } from '../nbd/wirelog.ts';
import { CONTENTS } from './content.ts';
import { contentShadow, FleeceDriver, type Batch, type OpRecord, type Violation } from './driver.ts';
import type { FleeceConfig, FleeceFlavor } from './targets.ts';

export interface FleeceTrace {
  kind: 'fleece-trace';
  version: 1;
  /** 'batches': a model-based run, replayed batch by batch; 'case': a fixed-step case, replayed
   * by running the case again (its steps are its code) and judged by its own checks. */
  mode?: 'batches' | 'case';
  case: string;
  target: string;
  seed: number;
  createdAt: string;
  config: FleeceConfig;
  connections: { live: number; snapshot: number };
  batches: Batch[];
  records: OpRecord[];
  violations: Violation[];
  wire: WireEntry[];
}

export class TraceError extends Error {
  override readonly name = 'TraceError';
  constructor(
    message: string,
    readonly file?: string,
  ) {
    super(file ? `${file}: ${message}` : message);
  }
}

export function traceDir(): string {
  return process.env.FLEECE_TRACE_DIR ?? path.resolve('reports/traces');
}

export function writeTrace(t: FleeceTrace, dir = traceDir()): string {
  fs.mkdirSync(dir, { recursive: true });
  const safe = `${t.case}--${t.target}`.replace(/[^A-Za-z0-9._-]+/g, '_');
  const file = path.join(dir, `${safe}--seed-${t.seed}.json`);
  fs.writeFileSync(file, JSON.stringify(t, null, 1) + '\n');
  return file;
}

export function readTrace(file: string): FleeceTrace {
  let t: unknown;
  try {
    t = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new TraceError(`cannot read trace: ${(e as Error).message}`, file);
  }
  const o = t as Partial<FleeceTrace>;
  if (o.kind !== 'fleece-trace' || o.version !== 1) throw new TraceError('not a fleece trace (kind "fleece-trace", version 1)', file);
  if (!o.config || !Array.isArray(o.batches) || !o.connections) throw new TraceError('trace lacks config, connections or batches', file);
  if (o.mode !== undefined && o.mode !== 'batches' && o.mode !== 'case') throw new TraceError(`unknown trace mode '${String(o.mode)}'`, file);
  if (!CONTENTS[o.config.content]) throw new TraceError(`unknown content '${o.config.content}'`, file);
  return o as FleeceTrace;
}

export interface ReplayResult {
  attempt: number;
  violations: Violation[];
  records: OpRecord[];
  wire: WireEntry[];
  setup: string;
  /** How the server ended, if it died during the replay. */
  exited?: string;
}

/** Replays a trace's batches against a fresh setup of `flavor`, once per attempt, stopping at
 * the first attempt that shows a violation. Timing-dependent failures (races) may need more than
 * one attempt; the result says which attempt reproduced it. */
export async function replayTrace(trace: FleeceTrace, flavor: FleeceFlavor, opts: { attempts?: number; timeoutMs?: number; onAttempt?: (r: ReplayResult) => void } = {}): Promise<ReplayResult[]> {
  const why = flavor.unsupported(trace.config);
  if (why) throw new TraceError(`target ${flavor.name} cannot build this trace's configuration: ${why}`);
  const out: ReplayResult[] = [];
  for (let attempt = 1; attempt <= (opts.attempts ?? 3); attempt++) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-replay-'));
    const setup = await flavor.launch(trace.config, dir, 20_000).catch((e: Error) => {
      fs.rmSync(dir, { recursive: true, force: true });
      throw e;
    });
    let driver: FleeceDriver | undefined;
    try {
      const log = new WireLog(20_000);
      driver = await FleeceDriver.open(setup, contentShadow(CONTENTS[trace.config.content]!), { ...trace.connections, timeoutMs: opts.timeoutMs ?? 5000, log });
      const violations: Violation[] = [];
      for (let i = 0; i < trace.batches.length; i++) violations.push(...(await driver.runBatch(trace.batches[i]!, i)));
      const r: ReplayResult = { attempt, violations, records: driver.records, wire: log.entries, setup: setup.description, ...(setup.exited() ? { exited: setup.exited()! } : {}) };
      out.push(r);
      opts.onAttempt?.(r);
      if (violations.length) break;
    } finally {
      driver?.close();
      await setup.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  return out;
}
