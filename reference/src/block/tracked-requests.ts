// Tracked requests per node (block/io.c, docs/requirements/qemu-fleecing.md §2.1). Every request in flight on a node
// is listed for its whole duration. A serialising request has its overlap window widened to the
// node's cluster size, and the wait rules are:
//   (a) a serialising request waits until no overlapping request of either kind is in flight;
//   (b) a normal request waits only for overlapping serialising requests;
//   (c) a request that is itself already waiting is skipped, which breaks wait cycles
//       (bdrv_find_conflicting_request).

export type TrackedRequestType = 'read' | 'write' | 'discard' | 'write-zeroes' | 'truncate';

import { Watchers } from './watchers.ts';

export class TrackedRequest {
  serialising = false;
  overlapOffset: number;
  overlapBytes: number;
  waitingFor: TrackedRequest | undefined;
  private resolveDone!: () => void;
  /** Settles when the request ends (tracked_request_end wakes the wait queue). */
  readonly done: Promise<void>;

  constructor(
    private readonly list: TrackedRequests,
    readonly id: number,
    readonly type: TrackedRequestType,
    readonly offset: number,
    readonly bytes: number,
  ) {
    this.overlapOffset = offset;
    this.overlapBytes = bytes;
    this.done = new Promise((r) => (this.resolveDone = r));
  }

  overlaps(offset: number, bytes: number): boolean {
    return offset < this.overlapOffset + this.overlapBytes && this.overlapOffset < offset + bytes;
  }

  /** tracked_request_set_serialising: widen to `align` and count it. */
  setSerialising(align: number): void {
    const a = Math.max(1, align);
    const start = Math.floor(this.offset / a) * a;
    const end = Math.ceil((this.offset + this.bytes) / a) * a;
    this.overlapOffset = Math.min(this.overlapOffset, start);
    this.overlapBytes = Math.max(this.overlapOffset + this.overlapBytes, end) - this.overlapOffset;
    if (!this.serialising) {
      this.serialising = true;
      this.list.serialisingInFlight++;
    }
  }

  /** bdrv_wait_serialising_requests: loop until no conflicting request is left. */
  async waitSerialising(): Promise<void> {
    while (this.list.serialisingInFlight > 0) {
      const other = this.list.findConflict(this);
      if (!other) return;
      this.waitingFor = other;
      this.list.notify();
      await other.done;
      this.waitingFor = undefined;
    }
  }

  end(): void {
    this.list.remove(this);
    this.resolveDone();
  }
}

export class TrackedRequests {
  private readonly reqs: TrackedRequest[] = [];
  private nextId = 1;
  serialisingInFlight = 0;
  private readonly watchers = new Watchers();

  begin(type: TrackedRequestType, offset: number, bytes: number): TrackedRequest {
    const req = new TrackedRequest(this, this.nextId++, type, offset, bytes);
    this.reqs.push(req);
    this.notify();
    return req;
  }

  findConflict(self: TrackedRequest): TrackedRequest | undefined {
    for (const req of this.reqs) {
      if (req === self || (!req.serialising && !self.serialising)) continue;
      if (req.overlaps(self.overlapOffset, self.overlapBytes) && !req.waitingFor) return req;
    }
    return undefined;
  }

  remove(req: TrackedRequest): void {
    const i = this.reqs.indexOf(req);
    if (i >= 0) this.reqs.splice(i, 1);
    if (req.serialising) this.serialisingInFlight--;
    this.notify();
  }

  /** Snapshot of what is in flight, for introspection (tests, breakpoints, QMP debugging). */
  inFlight(): ReadonlyArray<TrackedRequest> {
    return [...this.reqs];
  }

  /** Resolves once `pred` holds over the in-flight list; lets a test wait for "the CBW write is
   * now blocked on the reader" without sleeping. */
  until(pred: (reqs: ReadonlyArray<TrackedRequest>) => boolean): Promise<void> {
    return this.watchers.until(() => pred(this.reqs));
  }

  notify(): void {
    this.watchers.notify();
  }

}
