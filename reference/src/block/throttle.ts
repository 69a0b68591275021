// I/O throttling as QEMU's util/throttle.c and block/throttle-groups.c do it: six leaky buckets
// (bytes and operations per second; total, read, write), each with an average rate, an optional
// burst rate and a burst length in seconds, shared by every throttle node of one group. The
// buckets are plain arithmetic over a nanosecond clock (pure, testable with a fake clock); the
// group holds the queues and the one timer per direction.

/** THROTTLE_VALUE_MAX: the largest rate or burst QEMU accepts. */
export const THROTTLE_VALUE_MAX = 1e15;

/** QEMU's BucketType order, which is also the order throttle_is_valid checks them in. */
export const BUCKETS = ['bps-total', 'bps-read', 'bps-write', 'iops-total', 'iops-read', 'iops-write'] as const;
export type BucketName = (typeof BUCKETS)[number];

export interface BucketConfig {
  /** Average units per second; 0 = no limit. */
  avg: number;
  /** Burst units per second; 0 = none (then a tenth of a second of `avg` may pass at once). */
  max: number;
  /** Seconds the burst rate may last; 1 unless a burst is set. */
  burstLength: number;
}

export interface ThrottleConfig {
  readonly buckets: Record<BucketName, BucketConfig>;
  /** iops-size: an operation larger than this counts as size/opSize operations; 0 = always 1. */
  opSize: number;
}

export function defaultThrottleConfig(): ThrottleConfig {
  const b = (): BucketConfig => ({ avg: 0, max: 0, burstLength: 1 });
  return { buckets: { 'bps-total': b(), 'bps-read': b(), 'bps-write': b(), 'iops-total': b(), 'iops-read': b(), 'iops-write': b() }, opSize: 0 };
}

/** throttle_is_valid, its checks in its order and words; undefined when the config is valid.
 * Values below 0 stand for what QEMU stores as huge unsigned numbers (a `-1` on the command line). */
export function throttleConfigError(cfg: ThrottleConfig): string | undefined {
  const b = cfg.buckets;
  const both = (f: (x: BucketConfig) => number, kind: 'bps' | 'iops'): boolean =>
    f(b[`${kind}-total`]) !== 0 && (f(b[`${kind}-read`]) !== 0 || f(b[`${kind}-write`]) !== 0);
  const avg = (x: BucketConfig) => x.avg;
  const max = (x: BucketConfig) => x.max;
  if (both(avg, 'bps') || both(avg, 'iops') || both(max, 'bps') || both(max, 'iops')) {
    return 'bps/iops/max total values and read/write values cannot be used at the same time';
  }
  if (cfg.opSize && !b['iops-total'].avg && !b['iops-read'].avg && !b['iops-write'].avg) {
    return 'iops size requires an iops value to be set';
  }
  const huge = (v: number) => v < 0 || v > THROTTLE_VALUE_MAX;
  for (const name of BUCKETS) {
    const k = b[name];
    if (huge(k.avg) || huge(k.max)) return `bps/iops/max values must be within [0, ${THROTTLE_VALUE_MAX}]`;
    if (k.burstLength === 0) return 'the burst length cannot be 0';
    if (k.burstLength > 1 && !k.max) return 'burst length set without burst rate';
    if (k.max && (k.burstLength < 0 || k.burstLength > Math.floor(THROTTLE_VALUE_MAX / k.max))) return 'burst length too high for this burst rate';
    if (k.max && !k.avg) return 'bps_max/iops_max require corresponding bps/iops values';
    if (k.max && k.max < k.avg) return 'bps_max/iops_max cannot be lower than bps/iops';
  }
  return undefined;
}

const NS = 1e9;

interface Level {
  level: number;
  burstLevel: number;
}

/** The buckets' fill levels over time (ThrottleState). */
export class ThrottleState {
  private readonly levels = new Map<BucketName, Level>(BUCKETS.map((n) => [n, { level: 0, burstLevel: 0 }]));
  private previousLeak: number;

  constructor(
    readonly config: ThrottleConfig,
    now: number,
  ) {
    this.previousLeak = now;
  }

  /** throttle_do_leak: every bucket drains at its average rate (its burst level at the burst
   * rate) for the time since the last leak. */
  leak(now: number): void {
    const delta = now - this.previousLeak;
    this.previousLeak = Math.max(this.previousLeak, now);
    if (delta <= 0) return;
    for (const name of BUCKETS) {
      const c = this.config.buckets[name];
      const l = this.levels.get(name)!;
      l.level = Math.max(l.level - (c.avg * delta) / NS, 0);
      if (c.burstLength > 1) l.burstLevel = Math.max(l.burstLevel - (c.max * delta) / NS, 0);
    }
  }

  /** throttle_compute_wait for one bucket: ns until it has room again. */
  private bucketWait(name: BucketName): number {
    const c = this.config.buckets[name];
    const l = this.levels.get(name)!;
    if (!c.avg) return 0;
    // Without a burst rate a tenth of a second at the average rate may pass at once, so a
    // guest's small bursts are not each delayed; with one, the whole burst allowance.
    const size = c.max ? c.max * c.burstLength : c.avg / 10;
    const extra = l.level - size;
    if (extra > 0) return (extra * NS) / c.avg;
    if (c.burstLength > 1) {
      const burstExtra = l.burstLevel - c.max / 10;
      if (burstExtra > 0) return (burstExtra * NS) / c.max;
    }
    return 0;
  }

  /** throttle_compute_wait_for: the longest wait of the buckets a request of this direction fills. */
  waitNs(isWrite: boolean): number {
    const dir = isWrite ? 'write' : 'read';
    return Math.max(this.bucketWait('bps-total'), this.bucketWait('iops-total'), this.bucketWait(`bps-${dir}`), this.bucketWait(`iops-${dir}`));
  }

  /** throttle_account: the request's bytes and operations go into its buckets. */
  account(isWrite: boolean, bytes: number): void {
    const dir = isWrite ? 'write' : 'read';
    const ops = this.config.opSize && bytes > this.config.opSize ? bytes / this.config.opSize : 1;
    const add = (name: BucketName, units: number): void => {
      const l = this.levels.get(name)!;
      l.level += units;
      if (this.config.buckets[name].burstLength > 1) l.burstLevel += units;
    };
    add('bps-total', bytes);
    add(`bps-${dir}`, bytes);
    add('iops-total', ops);
    add(`iops-${dir}`, ops);
  }
}

export interface ThrottleClock {
  /** Nanoseconds, monotonic. */
  now(): number;
  /** Calls `f` after `ms`; returns a cancel function. */
  setTimer(ms: number, f: () => void): () => void;
}

export const realClock: ThrottleClock = {
  now: () => Number(process.hrtime.bigint()),
  setTimer(ms, f) {
    const t = setTimeout(f, ms);
    return () => clearTimeout(t);
  },
};

interface Waiter {
  readonly bytes: number;
  readonly resolve: () => void;
}

/**
 * A throttle group (the `throttle-group` object): one ThrottleState for all its throttle nodes.
 * A request that must wait joins its direction's queue, and the group's one timer per direction
 * lets the queue's head through once the buckets have room (throttle_group_co_io_limits_intercept).
 * QEMU keeps a queue per member node and takes members round robin; here the group has one queue
 * per direction, which is the same with one member and still first-come first-served with more.
 */
export class ThrottleGroup {
  private state: ThrottleState;
  private readonly queues: [Waiter[], Waiter[]] = [[], []];
  private readonly timers: [(() => void) | undefined, (() => void) | undefined] = [undefined, undefined];

  constructor(
    readonly name: string,
    config: ThrottleConfig,
    private readonly clock: ThrottleClock = realClock,
  ) {
    this.state = new ThrottleState(config, clock.now());
  }

  get config(): ThrottleConfig {
    return this.state.config;
  }

  /** Requests waiting for the buckets, per direction. */
  pending(isWrite: boolean): number {
    return this.queues[isWrite ? 1 : 0].length;
  }

  private waitNs(isWrite: boolean): number {
    this.state.leak(this.clock.now());
    return this.state.waitNs(isWrite);
  }

  /** Resolves when a request of `bytes` may go on; accounted when it is let through. */
  intercept(isWrite: boolean, bytes: number): Promise<void> {
    const d = isWrite ? 1 : 0;
    if (this.queues[d].length === 0 && this.waitNs(isWrite) === 0) {
      this.state.account(isWrite, bytes);
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      this.queues[d].push({ bytes, resolve });
      this.schedule(d);
    });
  }

  /** throttle_group_schedule_timer + schedule_next_request: lets through the queue's head while
   * the buckets have room, else arms the direction's timer for when they will. */
  private schedule(d: 0 | 1): void {
    const q = this.queues[d];
    while (!this.timers[d] && q.length > 0) {
      const ns = this.waitNs(d === 1);
      if (ns > 0) {
        this.timers[d] = this.clock.setTimer(Math.ceil(ns / 1e6), () => {
          this.timers[d] = undefined;
          this.schedule(d);
        });
        return;
      }
      const w = q.shift()!;
      this.state.account(d === 1, w.bytes);
      w.resolve();
    }
  }

  /** The group goes away (object-del once unused, daemon exit): nothing may stay parked. */
  close(): void {
    for (const d of [0, 1] as const) {
      this.timers[d]?.();
      this.timers[d] = undefined;
      for (const w of this.queues[d].splice(0)) w.resolve();
    }
  }
}
