// `delay`: a filter that adds latency per operation (like nbdkit's delay filter) and lets a test
// or the daemon hold the next matching request at a gate until released, to widen race windows
// deterministically instead of by timing luck.
import { FilterNode } from '../node.ts';
import type { Extent, RequestFlags } from '../types.ts';
import type { DriverContext } from './registry.ts';

export type DelayOp = 'read' | 'write' | 'write-zeroes' | 'discard' | 'flush' | 'block-status';

export class Gate {
  private resolveArrived!: () => void;
  private resolveRelease!: () => void;
  /** Resolves when a request is parked at this gate. */
  readonly arrived: Promise<void>;
  readonly released: Promise<void>;
  parked: { op: DelayOp; offset: number; bytes: number } | undefined;

  constructor(
    readonly op: DelayOp,
    readonly match: (offset: number, bytes: number) => boolean,
  ) {
    this.arrived = new Promise((r) => (this.resolveArrived = r));
    this.released = new Promise((r) => (this.resolveRelease = r));
  }
  park(offset: number, bytes: number): Promise<void> {
    this.parked = { op: this.op, offset, bytes };
    this.resolveArrived();
    return this.released;
  }
  release(): void {
    this.resolveRelease();
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class DelayNode extends FilterNode {
  private readonly delays: Record<DelayOp, number>;
  private gates: Gate[] = [];
  /** Called before every request passes; a test scheduler (fast-check's fc.scheduler) uses it to
   * choose the order in which requests reach the child. */
  hook: ((op: DelayOp, offset: number, bytes: number) => Promise<void>) | undefined;

  constructor(ctx: DriverContext) {
    super(ctx.nodeName, 'delay', ctx.common);
    const o = ctx.opts;
    this.delays = {
      read: o.number('read-delay-ms', 0),
      write: o.number('write-delay-ms', 0),
      'write-zeroes': o.number('zero-delay-ms', 0),
      discard: o.number('discard-delay-ms', 0),
      flush: o.number('flush-delay-ms', 0),
      'block-status': o.number('block-status-delay-ms', 0),
    };
    ctx.addChild(this, 'file', 'filtered', true);
  }

  setDelay(op: DelayOp, ms: number): void {
    this.delays[op] = ms;
  }

  /** Holds the next request of kind `op` (overlapping [offset, offset+bytes) if given). */
  hold(op: DelayOp, range?: { offset: number; bytes: number }): Gate {
    const g = new Gate(op, (off, n) => !range || (off < range.offset + range.bytes && range.offset < off + n));
    this.gates.push(g);
    return g;
  }

  private async pass(op: DelayOp, offset: number, bytes: number): Promise<void> {
    if (this.hook) await this.hook(op, offset, bytes);
    const i = this.gates.findIndex((g) => g.op === op && g.match(offset, bytes));
    if (i >= 0) {
      const [g] = this.gates.splice(i, 1);
      await g!.park(offset, bytes);
    }
    const ms = this.delays[op];
    if (ms > 0) await sleep(ms);
  }

  protected override async coRead(offset: number, bytes: number, flags: RequestFlags): Promise<Buffer> {
    await this.pass('read', offset, bytes);
    return super.coRead(offset, bytes, flags);
  }
  protected override async coWrite(offset: number, data: Buffer, flags: RequestFlags): Promise<void> {
    await this.pass('write', offset, data.length);
    return super.coWrite(offset, data, flags);
  }
  protected override async coWriteZeroes(offset: number, bytes: number, flags: RequestFlags): Promise<void> {
    await this.pass('write-zeroes', offset, bytes);
    return super.coWriteZeroes(offset, bytes, flags);
  }
  protected override async coDiscard(offset: number, bytes: number): Promise<void> {
    await this.pass('discard', offset, bytes);
    return super.coDiscard(offset, bytes);
  }
  protected override async coFlush(): Promise<void> {
    await this.pass('flush', 0, 0);
    return super.coFlush();
  }
  protected override async coBlockStatus(offset: number, bytes: number): Promise<Extent> {
    await this.pass('block-status', offset, bytes);
    return super.coBlockStatus(offset, bytes);
  }
}
