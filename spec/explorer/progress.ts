// The progress line of long runs (TLC prints one about once a minute, docs/verification.md §1.1):
// depth, distinct, generated, queue, states/s and memory, to stderr by default.

export interface ProgressOptions {
  /** Minimum time between two lines (default 2000 ms). */
  readonly intervalMs?: number;
  /** Where lines go (default: process.stderr). */
  readonly write?: (line: string) => void;
}

export interface ProgressSample {
  readonly depth: number;
  readonly distinct: number;
  readonly generated: number;
  readonly queue: number;
}

export class ProgressMeter {
  private readonly intervalMs: number;
  private readonly write: (line: string) => void;
  private readonly start = Date.now();
  private last = Date.now();
  private lastDistinct = 0;
  private printed = false;

  constructor(options: ProgressOptions) {
    this.intervalMs = options.intervalMs ?? 2000;
    this.write = options.write ?? ((line) => process.stderr.write(line + '\n'));
  }

  due(): boolean {
    return Date.now() - this.last >= this.intervalMs;
  }

  report(s: ProgressSample): void {
    const now = Date.now();
    const rate = ((s.distinct - this.lastDistinct) * 1000) / Math.max(1, now - this.last);
    this.last = now;
    this.lastDistinct = s.distinct;
    this.printed = true;
    this.write(formatProgress(s, rate, (now - this.start) / 1000));
  }

  /** A closing line, only if the run was long enough to print progress at all. */
  finish(s: ProgressSample): void {
    if (!this.printed) return;
    const secs = (Date.now() - this.start) / 1000;
    this.write(formatProgress(s, s.distinct / Math.max(secs, 1e-3), secs) + ' (done)');
  }
}

export function formatProgress(s: ProgressSample, statesPerSecond: number, elapsed: number): string {
  const mb = Math.round(process.memoryUsage.rss() / 2 ** 20);
  return (
    `progress ${elapsed.toFixed(1)}s: depth ${s.depth}, distinct ${s.distinct}, generated ${s.generated}, ` +
    `queue ${s.queue}, ${Math.round(statesPerSecond)} states/s, rss ${mb} MB`
  );
}
