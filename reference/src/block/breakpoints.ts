// Breakpoints at named internal events, in the spirit of QEMU's blkdebug `break`/`resume`/
// `wait_break`: a test or the conformance runner (through QMP x- commands) arms a breakpoint at an
// event, an in-flight request that reaches the event parks there, and it goes on when resumed.
// These are the steps where the fleecing race lives (docs/requirements/qemu-fleecing.md §2.3, §3), so a runner can
// force any interleaving of them over real NBD connections.
//
// Unarmed breakpoints cost one property read at each event: call sites test `armed` before
// awaiting anything, so an unarmed run takes no extra microtask.
import { EventEmitter } from 'node:events';
import { BlockError, type Errno } from './errors.ts';

export const BREAKPOINT_EVENTS = [
  /** overlay or qcow2 (the legacy temp image): allocation lookup finished for a range (the
   * reader has decided where to read). */
  'overlay-lookup-done',
  /** overlay or qcow2: about to read an unallocated range from the backing. */
  'overlay-backing-read',
  /** block-copy: about to write the old data to the target. */
  'cbw-target-write',
  /** copy-before-write: done bits set for the clusters of a guest request (the hit carries the
   * request's own range, as do cbw-wait-readers and cbw-source-write). */
  'cbw-done-set',
  /** copy-before-write: about to wait for snapshot readers of the range (after the copy, or at
   * once when the snapshot is already broken). */
  'cbw-wait-readers',
  /** copy-before-write: about to forward the guest write to the source. */
  'cbw-source-write',
  /** snapshot read: lock taken (source or target chosen, frozen read registered). */
  'snapshot-read-lock',
  /** snapshot read: data read, about to release the lock. */
  'snapshot-read-unlock',
  /** snapshot discard: access and copy bits dropped, about to wait for reads of the target range. */
  'snapshot-discard-wait',
  /** snapshot discard: no read of the range left on the target, about to free it. */
  'snapshot-discard-target',
] as const;
export type BreakpointEvent = (typeof BREAKPOINT_EVENTS)[number];

export interface BreakpointFilter {
  readonly node?: string;
  /** Only requests whose range overlaps [offset, offset+bytes). */
  readonly offset?: number;
  readonly bytes?: number;
}

export interface BreakpointHit {
  readonly tag: string;
  readonly event: BreakpointEvent;
  readonly node: string;
  readonly offset: number;
  readonly bytes: number;
  /** Order of this hit among all hits of the graph. */
  readonly seq: number;
}

interface Armed {
  readonly tag: string;
  readonly event: BreakpointEvent;
  readonly filter: BreakpointFilter;
  state: 'armed' | 'hit' | 'resumed';
  hit?: BreakpointHit;
  resume?: (error?: BlockError) => void;
  waiters: Array<(h: BreakpointHit) => void>;
}

export class Breakpoints {
  private readonly byTag = new Map<string, Armed>();
  private seq = 0;
  /** Armed breakpoints not yet hit; zero means every event is a no-op. */
  armed = 0;
  /** 'hit' (BreakpointHit) whenever a request parks. */
  readonly events = new EventEmitter();

  arm(event: string, tag: string, filter: BreakpointFilter = {}): void {
    if (!(BREAKPOINT_EVENTS as readonly string[]).includes(event)) {
      throw new BlockError('EINVAL', `unknown breakpoint event '${event}' (known: ${BREAKPOINT_EVENTS.join(', ')})`);
    }
    if (this.byTag.has(tag)) throw new BlockError('EEXIST', `breakpoint tag '${tag}' is already in use`);
    this.byTag.set(tag, { tag, event: event as BreakpointEvent, filter, state: 'armed', waiters: [] });
    this.armed++;
  }

  list(): Array<{ tag: string; event: BreakpointEvent; state: Armed['state']; filter: BreakpointFilter; hit?: BreakpointHit }> {
    return [...this.byTag.values()].map((a) => ({
      tag: a.tag, event: a.event, state: a.state, filter: a.filter, ...(a.hit ? { hit: a.hit } : {}),
    }));
  }

  private get_(tag: string): Armed {
    const a = this.byTag.get(tag);
    if (!a) throw new BlockError('ENOENT', `no breakpoint with tag '${tag}'`);
    return a;
  }

  /** Resolves with the hit once a request is parked at `tag` (at once if it already is). */
  wait(tag: string): Promise<BreakpointHit> {
    const a = this.get_(tag);
    if (a.hit) return Promise.resolve(a.hit);
    return new Promise((r) => a.waiters.push(r));
  }

  /** Lets the parked request go on; the breakpoint is then spent and removed. With `errno`, the
   * request fails at the event instead (blkdebug's inject-error, at a named point): e.g. a
   * block-copy target write that fails, so copy-before-write takes its on-cbw-error path. */
  resume(tag: string, errno?: Errno): void {
    const a = this.get_(tag);
    if (a.state !== 'hit') throw new BlockError('EINVAL', `breakpoint '${tag}' has not been hit (state ${a.state})`);
    a.state = 'resumed';
    this.byTag.delete(tag);
    a.resume!(errno === undefined ? undefined : new BlockError(errno, `error injected at breakpoint '${tag}' (${a.event})`, { offset: a.hit!.offset, bytes: a.hit!.bytes }));
  }

  /** Disarms a breakpoint that was never hit; resumes one that was. */
  remove(tag: string): void {
    const a = this.get_(tag);
    if (a.state === 'hit') return this.resume(tag);
    this.byTag.delete(tag);
    if (a.state === 'armed') this.armed--;
  }

  /** Resumes every parked request and disarms everything (teardown). */
  clear(): void {
    for (const tag of [...this.byTag.keys()]) this.remove(tag);
  }

  /** Called at an event; parks the request if an armed breakpoint matches. Call sites check
   * `armed` first. */
  async reach(event: BreakpointEvent, node: string, offset: number, bytes: number): Promise<void> {
    for (const a of this.byTag.values()) {
      if (a.state !== 'armed' || a.event !== event) continue;
      const f = a.filter;
      if (f.node !== undefined && f.node !== node) continue;
      if (f.offset !== undefined && !(offset < f.offset + (f.bytes ?? 1) && f.offset < offset + bytes)) continue;
      a.state = 'hit';
      this.armed--;
      const hit: BreakpointHit = { tag: a.tag, event, node, offset, bytes, seq: ++this.seq };
      a.hit = hit;
      const resumed = new Promise<BlockError | undefined>((r) => (a.resume = r));
      for (const w of a.waiters.splice(0)) w(hit);
      this.events.emit('hit', hit);
      const error = await resumed;
      if (error) throw error;
      return;
    }
  }
}
