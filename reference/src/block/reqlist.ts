// A range list (block/reqlist.c, docs/requirements/qemu-fleecing.md §2.2): in-flight byte ranges where every entry
// excludes every overlapping waiter; no serialising distinction. copy-before-write keeps its
// frozen snapshot reads here, block-copy its in-flight copy tasks.

export class RangeReq {
  private resolveDone!: () => void;
  private waiters: Array<() => void> = [];
  readonly done: Promise<void>;
  constructor(
    public offset: number,
    public bytes: number,
  ) {
    this.done = new Promise((r) => (this.resolveDone = r));
  }
  overlaps(offset: number, bytes: number): boolean {
    return offset < this.offset + this.bytes && this.offset < offset + bytes;
  }
  /** Resolves at the next shrink or at removal, whichever comes first. */
  changed(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }
  wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  finish(): void {
    this.resolveDone();
    this.wake();
  }
}

export class RangeList {
  private readonly reqs: RangeReq[] = [];

  /** reqlist_init_req */
  add(offset: number, bytes: number): RangeReq {
    const r = new RangeReq(offset, bytes);
    this.reqs.push(r);
    return r;
  }

  /** reqlist_find_conflict */
  findConflict(offset: number, bytes: number): RangeReq | undefined {
    return this.reqs.find((r) => r.overlaps(offset, bytes));
  }

  /** reqlist_wait_one: wait for one conflicting entry to change; true if it waited. */
  async waitOne(offset: number, bytes: number): Promise<boolean> {
    const r = this.findConflict(offset, bytes);
    if (!r) return false;
    await r.changed();
    return true;
  }

  /** reqlist_wait_all */
  async waitAll(offset: number, bytes: number): Promise<void> {
    while (await this.waitOne(offset, bytes));
  }

  /** reqlist_shrink_req */
  shrink(r: RangeReq, newBytes: number): void {
    r.bytes = newBytes;
    r.wake();
  }

  /** reqlist_remove_req */
  remove(r: RangeReq): void {
    const i = this.reqs.indexOf(r);
    if (i >= 0) this.reqs.splice(i, 1);
    r.finish();
  }

  entries(): ReadonlyArray<RangeReq> {
    return [...this.reqs];
  }

}
