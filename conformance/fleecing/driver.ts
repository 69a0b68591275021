// Drives a fleecing setup over the wire: several connections to the live export and to the
// snapshot export, batches of requests sent with chosen start offsets (many in flight at once),
// and a judge that compares every snapshot read byte for byte with the shadow copy taken at
// snapshot time (docs/requirements/nbd.md I76, I78; docs/requirements/qemu-fleecing.md §2.3 "Invariant"). What it saw is
// kept as records, so a failing run can be written as a trace and replayed (trace.ts).
import { CF, Cmd, Errno, STATE_ZERO, errnoName } from '../nbd/constants.ts';
import type { NbdConnection } from '../nbd/client.ts';
import type { Reply } from '../nbd/reply.ts';
import { open } from '../nbd/session.ts';
import { WireLog } from '../nbd/wirelog.ts';
import { hex, range, snapshotBytes, type Content } from './content.ts';
import type { FleeceSetup } from './targets.ts';

/** write/zero/trim/live-read go to the live export, read/status to the snapshot export. */
export type OpKind = 'write' | 'zero' | 'trim' | 'live-read' | 'read' | 'status' | 'snapshot-trim';
export const LIVE_OPS: readonly OpKind[] = ['write', 'zero', 'trim', 'live-read'];

export interface Op {
  kind: OpKind;
  /** Index into the live or snapshot connection pool (taken modulo its size). */
  conn: number;
  offset: number;
  length: number;
  /** Milliseconds after the batch starts at which the request is sent. */
  at: number;
  /** NBD command flags (e.g. CF.DF on a snapshot read); default none. */
  flags?: number;
}

export interface Batch {
  ops: Op[];
}

export interface OpRecord {
  batch: number;
  index: number;
  kind: OpKind;
  /** Wire-log connection number. */
  conn: number;
  offset: number;
  length: number;
  /** Live mutations are numbered from 1 in the order they were sent ("live write #7"). */
  mutation?: number;
  /** The byte a live write wrote. */
  byte?: number;
  /** NBD command flags sent with the request, when not 0. */
  flags?: number;
  /** Set when the reply came as a simple reply (no structured replies on that connection). */
  simple?: boolean;
  sentMs: number;
  doneMs: number;
  /** NBD error value, 0 on success, -1 if no reply came (closed, timeout). */
  error: number;
  note?: string;
}

export interface Violation {
  batch: number;
  index: number;
  /** 'post-snapshot': the snapshot showed data written after it was taken; 'wrong-data': other
   * bytes than the snapshot's; 'read-error': a snapshot read failed; 'status': block status
   * contradicts the snapshot; 'live': the live export lost a write; 'check': a failed check of a
   * fixed-step case (bitmap, discard, on-cbw-error, image-fleecing). */
  kind: 'post-snapshot' | 'wrong-data' | 'read-error' | 'status' | 'live' | 'no-reply' | 'check';
  text: string;
}

/** The bytes a live write with mutation number n writes: top bit set, so they never equal the
 * snapshot content's bytes (content.ts: 1..126) and the judge can say which write leaked. */
export function writeByte(n: number): number {
  return 0x80 + (n % 127) + 1;
}

/** The disk at snapshot time. */
export interface Shadow {
  readonly size: number;
  bytes(offset: number, length: number): Buffer;
}

export function contentShadow(c: Content): Shadow {
  return { size: c.size, bytes: (o, l) => snapshotBytes(c, o, l) };
}

export function bufferShadow(b: Buffer): Shadow {
  return { size: b.length, bytes: (o, l) => Buffer.from(b.subarray(o, o + l)) };
}

const SECTOR = 512;

/** For a setup the runner did not start: the snapshot read once, in 4 MiB requests, is the
 * shadow copy (the snapshot must not change afterwards, which is what the cases check). */
export async function readWholeSnapshot(setup: FleeceSetup, timeoutMs: number): Promise<Shadow> {
  const { conn, session } = await open(setup.snapshot.address, { exportName: setup.snapshot.name, timeoutMs, tls: setup.snapshot.tls });
  try {
    const size = Number(session.size);
    const out = Buffer.alloc(size);
    for (let off = 0; off < size; off += 4 * 1024 * 1024) {
      const len = Math.min(4 * 1024 * 1024, size - off);
      const r = await conn.request({ type: Cmd.READ, offset: off, length: len });
      if (r.error || !r.data) throw new Error(`reading the snapshot at ${range(off, len)} for the shadow copy failed: ${errnoName(r.error)}`);
      r.data.copy(out, off);
    }
    return bufferShadow(out);
  } finally {
    conn.close();
  }
}
const ms = (t: number): string => `${t.toFixed(1)} ms`;

export interface DriverOptions {
  live: number;
  snapshot: number;
  timeoutMs: number;
  log?: WireLog;
  /** Follow the live export's content (needs the full disk in memory). Default true. */
  trackLive?: boolean;
  /** Negotiate structured replies (and base:allocation) on the snapshot connections. Default
   * true; false gives plain simple-reply connections, as the Linux kernel's NBD client uses. */
  snapshotStructured?: boolean;
}

export class FleeceDriver {
  readonly records: OpRecord[] = [];
  readonly log: WireLog;
  private readonly t0 = performance.now();
  private mutations = 0;
  private readonly mutationRecords: OpRecord[] = [];
  private liveShadow: Buffer | undefined;
  /** Sectors of the live disk whose content the driver cannot know (trim, failed or racing writes). */
  private liveUnknown: Uint8Array | undefined;

  private constructor(
    readonly setup: FleeceSetup,
    readonly shadow: Shadow,
    private readonly live: NbdConnection[],
    private readonly snap: NbdConnection[],
    private readonly statusContext: number | undefined,
    /** Transmission flags of the snapshot export (READ_ONLY expected, docs/requirements/nbd.md I77). */
    readonly snapshotFlags: number,
    /** Whether the snapshot connections negotiated structured replies. */
    readonly snapshotStructured: boolean,
    log: WireLog,
    trackLive: boolean,
  ) {
    this.log = log;
    if (trackLive) {
      this.liveShadow = shadow.bytes(0, shadow.size);
      this.liveUnknown = new Uint8Array(Math.ceil(shadow.size / SECTOR));
    }
  }

  static async open(setup: FleeceSetup, shadow: Shadow, o: DriverOptions): Promise<FleeceDriver> {
    const log = o.log ?? new WireLog(20_000);
    const conns: NbdConnection[] = [];
    try {
      const live: NbdConnection[] = [];
      for (let i = 0; i < o.live; i++) {
        const { conn } = await open(setup.live.address, { exportName: setup.live.name, timeoutMs: o.timeoutMs, log, tls: setup.live.tls });
        conns.push(conn);
        live.push(conn);
      }
      const snap: NbdConnection[] = [];
      let statusContext: number | undefined;
      let snapshotFlags = 0;
      const wantStructured = o.snapshotStructured ?? true;
      let snapshotStructured = wantStructured;
      for (let i = 0; i < o.snapshot; i++) {
        const { conn, session } = await open(setup.snapshot.address, {
          exportName: setup.snapshot.name,
          timeoutMs: o.timeoutMs,
          log,
          tls: setup.snapshot.tls,
          ...(wantStructured ? { meta: ['base:allocation'] } : { structured: false }),
        });
        conns.push(conn);
        snap.push(conn);
        statusContext = session.contexts.get('base:allocation');
        snapshotFlags = session.transmissionFlags;
        snapshotStructured &&= session.structured;
      }
      return new FleeceDriver(setup, shadow, live, snap, statusContext, snapshotFlags, snapshotStructured, log, o.trackLive ?? true);
    } catch (e) {
      for (const c of conns) c.close();
      throw e;
    }
  }

  now(): number {
    return Math.round((performance.now() - this.t0) * 10) / 10;
  }

  close(): void {
    for (const c of [...this.live, ...this.snap]) c.close();
  }

  /** Sends every op of the batch at its start offset, waits for all replies, then judges. */
  async runBatch(batch: Batch, bi: number): Promise<Violation[]> {
    const results = await Promise.all(
      batch.ops.map(
        (op, index) =>
          new Promise<{ rec: OpRecord; reply?: Reply }>((resolve) => {
            setTimeout(() => {
              void this.send(op, bi, index).then(resolve);
            }, op.at);
          }),
      ),
    );
    const violations: Violation[] = [];
    const mutationsHere = results.filter((r) => r.rec.mutation !== undefined).map((r) => r.rec);
    for (const { rec, reply } of results) {
      this.records.push(rec);
      if (rec.error === -1 && rec.kind !== 'live-read') {
        violations.push({ batch: bi, index: rec.index, kind: 'no-reply', text: `${describeOp(rec)} got no reply: ${rec.note ?? ''}` });
        continue;
      }
      if (rec.kind === 'read') violations.push(...this.judgeRead(rec, reply));
      else if (rec.kind === 'status') violations.push(...this.judgeStatus(rec, reply));
      else if (rec.kind === 'live-read') violations.push(...this.judgeLiveRead(rec, reply, mutationsHere));
    }
    this.applyMutations(mutationsHere);
    return violations;
  }

  private async send(op: Op, bi: number, index: number): Promise<{ rec: OpRecord; reply?: Reply }> {
    const live = LIVE_OPS.includes(op.kind);
    const pool = live ? this.live : this.snap;
    const conn = pool[op.conn % pool.length]!;
    const rec: OpRecord = { batch: bi, index, kind: op.kind, conn: conn.id, offset: op.offset, length: op.length, sentMs: this.now(), doneMs: 0, error: 0, ...(op.flags ? { flags: op.flags } : {}) };
    let input: Parameters<NbdConnection['request']>[0];
    switch (op.kind) {
      case 'write': {
        rec.mutation = ++this.mutations;
        rec.byte = writeByte(rec.mutation);
        this.mutationRecords.push(rec);
        input = { type: Cmd.WRITE, offset: op.offset, payload: Buffer.alloc(op.length, rec.byte) };
        break;
      }
      case 'zero':
        rec.mutation = ++this.mutations;
        this.mutationRecords.push(rec);
        input = { type: Cmd.WRITE_ZEROES, offset: op.offset, length: op.length };
        break;
      case 'trim':
        rec.mutation = ++this.mutations;
        this.mutationRecords.push(rec);
        input = { type: Cmd.TRIM, offset: op.offset, length: op.length };
        break;
      case 'live-read':
      case 'read':
        input = { type: Cmd.READ, offset: op.offset, length: op.length };
        break;
      case 'snapshot-trim':
        input = { type: Cmd.TRIM, offset: op.offset, length: op.length };
        break;
      case 'status':
        if (this.statusContext === undefined) {
          rec.note = 'the snapshot export offers no base:allocation context; skipped';
          rec.doneMs = rec.sentMs;
          return { rec };
        }
        input = { type: Cmd.BLOCK_STATUS, offset: op.offset, length: op.length };
        break;
    }
    try {
      const reply = await conn.request(op.flags ? { ...input, flags: op.flags } : input);
      rec.doneMs = this.now();
      rec.error = reply.error;
      if (!reply.structured && (op.kind === 'read' || op.kind === 'live-read')) rec.simple = true;
      if (reply.error) rec.note = `${errnoName(reply.error)}${reply.errorMessage ? ` "${reply.errorMessage}"` : ''}`;
      return { rec, reply };
    } catch (e) {
      rec.doneMs = this.now();
      rec.error = -1;
      rec.note = (e as Error).message;
      return { rec };
    }
  }

  private judgeRead(rec: OpRecord, reply: Reply | undefined): Violation[] {
    const at = { batch: rec.batch, index: rec.index };
    if (!reply || reply.error || !reply.data) {
      return [{ ...at, kind: 'read-error', text: `${describeOp(rec)} failed with ${rec.note ?? 'no data'}; every byte of the snapshot is readable in this configuration` }];
    }
    const want = this.shadow.bytes(rec.offset, rec.length);
    const got = reply.data;
    if (want.equals(got)) return [];
    let first = -1;
    let count = 0;
    for (let i = 0; i < want.length; i++) {
      if (want[i] !== got[i]) {
        if (first < 0) first = i;
        count++;
      }
    }
    const x = rec.offset + first;
    const g = got[first]!;
    const e = want[first]!;
    const source = this.attribute(x, g, rec.doneMs);
    const chunk = reply.content.find((c) => Number(c.offset) <= x && x < Number(c.offset) + c.length);
    const how = chunk ? `, inside an ${chunk.kind === 'hole' ? 'NBD_REPLY_TYPE_OFFSET_HOLE' : 'NBD_REPLY_TYPE_OFFSET_DATA'} chunk ${range(Number(chunk.offset), chunk.length)}` : reply.structured ? '' : ', in a simple reply';
    const head = `${describeOp(rec)} returned ${count} byte(s) that differ from the snapshot, the first at ${hex(x)} (snapshot byte ${hex(e)}, got ${hex(g)}${how})`;
    if (source) {
      return [{ ...at, kind: 'post-snapshot', text: `${head}: that is post-snapshot data, written by ${describeMutation(source)}, after the snapshot was taken` }];
    }
    return [{ ...at, kind: 'wrong-data', text: `${head}; no live write explains it` }];
  }

  /** The live mutation (latest sent before `before`) that would put byte `b` at `x`. */
  private attribute(x: number, b: number, before: number): OpRecord | undefined {
    for (let i = this.mutationRecords.length - 1; i >= 0; i--) {
      const m = this.mutationRecords[i]!;
      if (m.sentMs > before || x < m.offset || x >= m.offset + m.length) continue;
      if (m.kind === 'write' ? m.byte === b : b === 0) return m;
    }
    return undefined;
  }

  private judgeStatus(rec: OpRecord, reply: Reply | undefined): Violation[] {
    const at = { batch: rec.batch, index: rec.index };
    if (rec.note && !reply) return [];
    if (!reply || reply.error) return [{ ...at, kind: 'status', text: `${describeOp(rec)} failed with ${rec.note ?? 'no reply'}` }];
    const extents = reply.status.get(this.statusContext!) ?? [];
    let pos = rec.offset;
    for (const ext of extents) {
      const len = Math.min(ext.length, rec.offset + rec.length - pos);
      if (len <= 0) break;
      if (ext.flags & STATE_ZERO) {
        const bytes = this.shadow.bytes(pos, len);
        const nz = bytes.findIndex((v) => v !== 0);
        if (nz >= 0) {
          return [{ ...at, kind: 'status', text: `${describeOp(rec)} says ${range(pos, len)} reads as zeroes (NBD_STATE_ZERO), but the snapshot holds ${hex(bytes[nz]!)} at ${hex(pos + nz)}` }];
        }
      }
      pos += ext.length;
    }
    return [];
  }

  private judgeLiveRead(rec: OpRecord, reply: Reply | undefined, concurrent: OpRecord[]): Violation[] {
    if (!this.liveShadow || !this.liveUnknown) return [];
    const at = { batch: rec.batch, index: rec.index };
    if (!reply || reply.error || !reply.data) return [{ ...at, kind: 'live', text: `${describeOp(rec)} failed with ${rec.note ?? 'no data'}` }];
    if (concurrent.some((m) => overlaps(m, rec))) return [];
    for (let i = 0; i < rec.length; i++) {
      const x = rec.offset + i;
      if (this.liveUnknown[Math.floor(x / SECTOR)]) continue;
      if (reply.data[i] !== this.liveShadow[x]) {
        return [{ ...at, kind: 'live', text: `${describeOp(rec)} returned ${hex(reply.data[i]!)} at ${hex(x)} where the live disk holds ${hex(this.liveShadow[x]!)}: a completed live write was lost or misplaced` }];
      }
    }
    return [];
  }

  /** Applies a batch's live mutations to the live shadow; overlapping ones within one batch
   * raced, so their sectors become unknown, as do trims and failed writes. */
  private applyMutations(ms: OpRecord[]): void {
    if (!this.liveShadow || !this.liveUnknown) return;
    const unknown = (m: OpRecord) => {
      for (let s = Math.floor(m.offset / SECTOR); s < Math.ceil((m.offset + m.length) / SECTOR); s++) this.liveUnknown![s] = 1;
    };
    for (const m of ms) {
      if (m.error !== 0 || m.kind === 'trim' || ms.some((o) => o !== m && overlaps(o, m))) {
        unknown(m);
        continue;
      }
      this.liveShadow.fill(m.kind === 'write' ? m.byte! : 0, m.offset, m.offset + m.length);
      for (let s = Math.ceil(m.offset / SECTOR); s < Math.floor((m.offset + m.length) / SECTOR); s++) this.liveUnknown[s] = 0;
    }
  }

  /** One request outside batches, judged by the caller (cases with fixed steps). */
  async request(kind: OpKind, offset: number, length: number, conn = 0, flags = 0): Promise<{ rec: OpRecord; reply?: Reply }> {
    const r = await this.send({ kind, conn, offset, length, at: 0, ...(flags ? { flags } : {}) }, -1, this.records.length);
    this.records.push(r.rec);
    if (r.rec.mutation !== undefined) this.applyMutations([r.rec]);
    return r;
  }

  /** Writes a constant byte (for the image-fleecing scenario's overwrite table). */
  async writePattern(offset: number, length: number, byte: number, conn = 0): Promise<OpRecord> {
    const c = this.live[conn % this.live.length]!;
    const rec: OpRecord = { batch: -1, index: this.records.length, kind: 'write', conn: c.id, offset, length, byte, mutation: ++this.mutations, sentMs: this.now(), doneMs: 0, error: 0 };
    this.mutationRecords.push(rec);
    try {
      const reply = await c.request({ type: Cmd.WRITE, offset, payload: Buffer.alloc(length, byte) });
      rec.error = reply.error;
      if (reply.error) rec.note = errnoName(reply.error);
    } catch (e) {
      rec.error = -1;
      rec.note = (e as Error).message;
    }
    rec.doneMs = this.now();
    this.records.push(rec);
    this.applyMutations([rec]);
    return rec;
  }

  judgeSnapshotRead(rec: OpRecord, reply: Reply | undefined): Violation[] {
    return this.judgeRead(rec, reply);
  }

  /** Judges a snapshot BLOCK_STATUS: a ZERO extent over bytes the snapshot holds is a violation. */
  judgeSnapshotStatus(rec: OpRecord, reply: Reply | undefined): Violation[] {
    return this.judgeStatus(rec, reply);
  }
}

function overlaps(a: { offset: number; length: number }, b: { offset: number; length: number }): boolean {
  return a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

const OP_WORDS: Record<OpKind, string> = {
  write: 'live write',
  zero: 'live write-zeroes',
  trim: 'live trim',
  'live-read': 'live read',
  read: 'snapshot read',
  status: 'snapshot block-status',
  'snapshot-trim': 'snapshot discard',
};

export function describeOp(r: OpRecord): string {
  const df = r.flags && r.flags & CF.DF ? ' with NBD_CMD_FLAG_DF' : '';
  return `${OP_WORDS[r.kind]} of ${range(r.offset, r.length)}${df} on connection ${r.conn} (sent at ${ms(r.sentMs)}, answered at ${ms(r.doneMs)})`;
}

export function describeMutation(m: OpRecord): string {
  return `${OP_WORDS[m.kind]} #${m.mutation} of ${range(m.offset, m.length)} on connection ${m.conn} (sent at ${ms(m.sentMs)}, answered at ${ms(m.doneMs)})`;
}

export { Errno };
