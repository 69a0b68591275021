// The backup suite's cases (docs/requirements/backup.md): backup software's sequences driven
// over QMP and NBD, with guest writes before and during each backup. One table of rows, run by
// one function per kind.
import type { CaseContext, CaseDef } from '../runner/model.ts';
import type { NbdConnection } from '../nbd/client.ts';
import { Cmd } from '../nbd/constants.ts';
import { open } from '../nbd/session.ts';
import { HarnessError } from '../targets/errors.ts';
import { DISK_SIZE, initialDisk, type BackupLab, type BackupSetup } from './targets.ts';

export interface BackupEnv {
  lab: BackupLab;
  ownDir?: string;
}

type Ctx = CaseContext<BackupEnv>;

const hex = (n: number): string => `0x${n.toString(16)}`;
const range = (o: number, l: number): string => `[${hex(o)},+${hex(l)})`;
const CHUNK = 256 * 1024;
const BASE = 'base:allocation';
const DEPTH = 'qemu:allocation-depth';
const DIRTY = 'qemu:dirty-bitmap:';
const STATE_HOLE = 1;
const STATE_ZERO = 2;

/** A guest write, with when it happened relative to the backups. */
interface GuestWrite {
  n: number;
  offset: number;
  length: number;
  byte: number;
  phase: string;
}

class Guest {
  readonly writes: GuestWrite[] = [];
  readonly disk = initialDisk();
  constructor(
    private readonly conn: NbdConnection,
    private readonly ctx: Ctx,
  ) {}

  /** One write of 4-80 KiB at a 512-aligned offset, mostly unaligned to clusters. */
  async write(phase: string): Promise<void> {
    const length = 512 * (8 + Math.floor(this.ctx.random() * 152));
    const offset = 512 * Math.floor(this.ctx.random() * ((DISK_SIZE - length) / 512));
    const byte = 0x40 + ((this.writes.length * 37) % 0xb0);
    const r = await this.conn.request({ type: Cmd.WRITE, offset, payload: Buffer.alloc(length, byte) });
    if (r.error) throw new HarnessError(`guest write ${range(offset, length)} failed with NBD error ${r.error}`);
    this.disk.fill(byte, offset, offset + length);
    this.writes.push({ n: this.writes.length + 1, offset, length, byte, phase });
  }

  /** The guest writes that covered byte `at`, newest first. */
  who(at: number): string {
    const w = this.writes.filter((x) => x.offset <= at && at < x.offset + x.length).reverse();
    return w.length ? w.map((x) => `guest write #${x.n} ${range(x.offset, x.length)} ${x.phase}`).join('; ') : 'no guest write';
  }
}

/** First difference between two buffers, or -1. */
function firstDiff(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return a.length;
}

async function read(conn: NbdConnection, offset: number, length: number): Promise<Buffer> {
  const r = await conn.request({ type: Cmd.READ, offset, length });
  if (r.error || !r.data) throw new HarnessError(`snapshot read ${range(offset, length)} failed with NBD error ${r.error}`);
  return r.data;
}

/** The whole snapshot, a guest write between chunks when `guest` is given. */
async function readAll(conn: NbdConnection, guest?: Guest, phase = ''): Promise<Buffer> {
  const out = Buffer.alloc(DISK_SIZE);
  for (let pos = 0; pos < DISK_SIZE; pos += CHUNK) {
    (await read(conn, pos, CHUNK)).copy(out, pos);
    if (guest) await guest.write(phase);
  }
  return out;
}

/** Per-byte flags of every selected context over the whole export, from BLOCK_STATUS requests
 * on one connection, each answering every context (proto.md "BLOCK_STATUS"). */
async function statusMaps(ctx: Ctx, conn: NbdConnection, ids: Map<string, number>): Promise<Map<string, Uint32Array> | undefined> {
  const maps = new Map<string, Uint32Array>();
  for (const name of ids.keys()) maps.set(name, new Uint32Array(DISK_SIZE / 512));
  for (let pos = 0; pos < DISK_SIZE; ) {
    const r = await conn.request({ type: Cmd.BLOCK_STATUS, offset: pos, length: DISK_SIZE - pos });
    if (!ctx.must(r.error === 0, 'BLOCK_STATUS over the snapshot export with three contexts succeeds', `NBD error ${r.error} at ${hex(pos)}`)) return undefined;
    let end = DISK_SIZE;
    for (const [name, id] of ids) {
      const ext = r.status.get(id);
      if (!ctx.must(!!ext && ext.length > 0, `the reply has extents for ${name}`, `context id ${id} missing in the reply at ${hex(pos)}`)) return undefined;
      let at = pos;
      for (const e of ext!) {
        const m = maps.get(name)!;
        for (let s = at / 512; s < Math.min(DISK_SIZE, at + e.length) / 512; s++) m[s] = e.flags;
        at += e.length;
      }
      end = Math.min(end, at);
    }
    if (end <= pos) throw new HarnessError(`BLOCK_STATUS at ${hex(pos)} made no progress`);
    pos = end;
  }
  return maps;
}

interface Flow {
  s: BackupSetup;
  guest: Guest;
  full1: Buffer;
  snap1: Buffer;
  snap2: Buffer;
  /** The connection to backup 2's export, with the three contexts selected. */
  conn2: NbdConnection;
  ids: Map<string, number>;
  bitmap: string;
}

async function execute(ctx: Ctx, s: BackupSetup, what: string, command: string, args: Record<string, unknown>): Promise<boolean> {
  const r = await s.qmp.execute(command, args);
  return ctx.must(r.ok, what, r.ok ? undefined : `${command}: ${r.error.class}: ${r.error.desc}`);
}

function transactionArgs(s: BackupSetup, actions: unknown[]): Record<string, unknown> {
  return { actions, ...(Object.keys(s.transactionProperties).length ? { properties: s.transactionProperties } : {}) };
}

function backupAction(s: BackupSetup, i: number, extra: Record<string, unknown> = {}): unknown {
  return {
    type: 'blockdev-backup',
    data: { 'job-id': `backup${i}`, device: 'source', target: `temp${i}`, sync: 'none', ...(s.graph === 'modern' ? { 'filter-node-name': `fl-cbw${i}` } : {}), ...s.backupExtra, ...extra },
  };
}

/** One backup started the way backup software does: the temp, one transaction (bitmap actions
 * and blockdev-backup), snapshot-access on the modern graph, then the export. */
async function startBackup(ctx: Ctx, s: BackupSetup, i: number, bitmapActions: unknown[], bitmap?: string | { node: string; name: string }): Promise<boolean> {
  if (!(await execute(ctx, s, `temp ${i} is added`, 'blockdev-add', s.temp(i)))) return false;
  if (!(await execute(ctx, s, `backup ${i}: the transaction (bitmaps + blockdev-backup sync=none) is accepted`, 'transaction', transactionArgs(s, [...bitmapActions, backupAction(s, i)])))) return false;
  let node = `temp${i}`;
  if (s.graph === 'modern') {
    if (!(await execute(ctx, s, `backup ${i}: snapshot-access over the job's copy-before-write filter is added`, 'blockdev-add', { driver: 'snapshot-access', 'node-name': `fl-access${i}`, file: `fl-cbw${i}` }))) return false;
    node = `fl-access${i}`;
  }
  if (s.exportNodeOverride) {
    node = s.exportNodeOverride;
    if (typeof bitmap === 'string') bitmap = { node: `temp${i}`, name: bitmap };
  }
  return execute(ctx, s, `backup ${i}: the snapshot is exported`, 'block-export-add', {
    type: 'nbd', id: `exp-b${i}`, 'node-name': node, name: `backup${i}`, 'allocation-depth': true, ...(bitmap ? { bitmaps: [bitmap] } : {}), ...s.exportExtra,
  });
}

async function endBackup(ctx: Ctx, s: BackupSetup, i: number): Promise<boolean> {
  if (!(await execute(ctx, s, `backup ${i}: the export is removed`, 'block-export-del', { id: `exp-b${i}`, mode: 'hard' }))) return false;
  await s.qmp.waitEvent('BLOCK_EXPORT_DELETED', ctx.timeoutMs * 4, (d) => d['id'] === `exp-b${i}`);
  if (s.graph === 'modern' && !(await execute(ctx, s, `backup ${i}: snapshot-access is deleted`, 'blockdev-del', { 'node-name': `fl-access${i}` }))) return false;
  if (!(await execute(ctx, s, `backup ${i}: the job is cancelled`, 'job-cancel', { id: `backup${i}` }))) return false;
  await s.qmp.waitEvent('JOB_STATUS_CHANGE', ctx.timeoutMs * 4, (d) => d['id'] === `backup${i}` && d['status'] === 'null');
  return execute(ctx, s, `backup ${i}: the temp is deleted`, 'blockdev-del', { 'node-name': `temp${i}` });
}

/** libvirt's pull-mode sequence, twice: a full backup that starts checkpoint bitmap chk1 in
 * its transaction, then an incremental one whose transaction freezes chk1 into a disabled
 * bitmap on the temp (add + merge), starts chk2 and removes chk1; its export offers that bitmap
 * and qemu:allocation-depth. Guest writes before, during and between the backups. */
async function flow(ctx: Ctx): Promise<Flow | undefined> {
  const s = await ctx.env.lab.launch();
  ctx.defer(() => s.stop());
  ctx.observe(s.description);
  const { conn: live } = await open(s.nbd, { exportName: s.live, timeoutMs: ctx.timeoutMs * 4 });
  ctx.defer(() => live.close());
  const guest = new Guest(live, ctx);
  for (let k = 0; k < 3; k++) await guest.write('before backup 1');
  if (!(await startBackup(ctx, s, 1, [{ type: 'block-dirty-bitmap-add', data: { node: 'source', name: 'chk1' } }]))) return undefined;
  const snap1 = Buffer.from(guest.disk);
  const { conn: c1 } = await open(s.nbd, { exportName: 'backup1', timeoutMs: ctx.timeoutMs * 4 });
  const full1 = await readAll(c1, guest, 'during backup 1');
  c1.close();
  const d1 = firstDiff(full1, snap1);
  ctx.must(d1 < 0, 'the full backup equals the disk at its transaction (no post-snapshot data)', d1 < 0 ? undefined : `byte ${hex(d1)}: snapshot 0x${snap1[d1]!.toString(16)}, read 0x${full1[d1]!.toString(16)}; ${guest.who(d1)}`);
  if (!(await endBackup(ctx, s, 1))) return undefined;
  for (let k = 0; k < 3; k++) await guest.write('between the backups');
  const bitmap = s.graph === 'modern' ? { node: 'temp2', name: 'inc' } : 'inc';
  const started = await startBackup(ctx, s, 2, [
    { type: 'block-dirty-bitmap-add', data: { node: 'temp2', name: 'inc', disabled: true } },
    { type: 'block-dirty-bitmap-merge', data: { node: 'temp2', target: 'inc', bitmaps: [{ node: 'source', name: 'chk1' }] } },
    { type: 'block-dirty-bitmap-add', data: { node: 'source', name: 'chk2' } },
    { type: 'block-dirty-bitmap-remove', data: { node: 'source', name: 'chk1' } },
  ], bitmap);
  if (!started) return undefined;
  const snap2 = Buffer.from(guest.disk);
  const meta = [BASE, DEPTH, `${DIRTY}inc`];
  const { conn: conn2, session } = await open(s.nbd, { exportName: 'backup2', meta, timeoutMs: ctx.timeoutMs * 4 });
  ctx.defer(() => conn2.close());
  if (!ctx.must(meta.every((m) => session.contexts.has(m)), 'the incremental export offers base:allocation, qemu:allocation-depth and qemu:dirty-bitmap:inc', `selected: ${[...session.contexts.keys()].join(', ')}`)) return undefined;
  return { s, guest, full1, snap1, snap2, conn2, ids: session.contexts, bitmap: 'inc' };
}

async function runIncremental(ctx: Ctx, graph: 'legacy' | 'modern'): Promise<void> {
  if (ctx.env.lab.flavor.graph !== graph) {
    ctx.skip(graph === 'legacy' ? 'the pull-mode sequence exports the temp image backed by the source (the legacy graph); this target builds snapshot-access' : 'this target builds the pull-mode (legacy) graph; snapshot-access is its own sequence');
    return;
  }
  const f = await flow(ctx);
  if (!f) return;
  const id = f.ids.get(`${DIRTY}${f.bitmap}`)!;
  // The dirty extents first, then the data of each, with guest writes in between.
  const dirty: [number, number][] = [];
  for (let pos = 0; pos < DISK_SIZE; ) {
    const r = await f.conn2.request({ type: Cmd.BLOCK_STATUS, offset: pos, length: DISK_SIZE - pos });
    const ext = r.status.get(id);
    if (!ctx.must(r.error === 0 && !!ext && ext.length > 0, 'BLOCK_STATUS of qemu:dirty-bitmap:inc succeeds', `NBD error ${r.error} at ${hex(pos)}`)) return;
    for (const e of ext!) {
      if (e.flags & 1) dirty.push([pos, Math.min(e.length, DISK_SIZE - pos)]);
      pos += e.length;
      if (pos >= DISK_SIZE) break;
    }
  }
  const rebuilt = Buffer.from(f.full1);
  for (const [o, l] of dirty) {
    for (let p = o; p < o + l; p += CHUNK) {
      const n = Math.min(CHUNK, o + l - p);
      (await read(f.conn2, p, n)).copy(rebuilt, p);
      await f.guest.write('during backup 2');
    }
  }
  const dirtyBytes = dirty.reduce((a, [, l]) => a + l, 0);
  ctx.observe(`${dirty.length} dirty extent(s), ${dirtyBytes} bytes of ${DISK_SIZE}; ${f.guest.writes.length} guest writes`);
  const d = firstDiff(rebuilt, f.snap2);
  ctx.must(d < 0, 'the previous full backup plus the dirty extents read from the snapshot equals the snapshot (no change missed)',
    d < 0 ? undefined : `byte ${hex(d)}: snapshot 0x${f.snap2[d]!.toString(16)}, rebuilt 0x${rebuilt[d]!.toString(16)}, outside every dirty extent: ${f.guest.who(d)}`);
  const whole = await readAll(f.conn2, f.guest, 'during backup 2');
  const d2 = firstDiff(whole, f.snap2);
  ctx.must(d2 < 0, 'the incremental backup\'s snapshot equals the disk at its transaction (no post-snapshot data)', d2 < 0 ? undefined : `byte ${hex(d2)}: snapshot 0x${f.snap2[d2]!.toString(16)}, read 0x${whole[d2]!.toString(16)}; ${f.guest.who(d2)}`);
  await endBackup(ctx, f.s, 2);
}

/** First sector where `bad` holds, as text, or undefined. */
function where(bad: (s: number) => boolean, what: (s: number) => string): string | undefined {
  for (let s = 0; s < DISK_SIZE / 512; s++) if (bad(s)) return `at ${hex(s * 512)}: ${what(s)}`;
  return undefined;
}

async function runContexts(ctx: Ctx): Promise<void> {
  const f = await flow(ctx);
  if (!f) return;
  const maps = await statusMaps(ctx, f.conn2, f.ids);
  if (!maps) return;
  const data = await readAll(f.conn2);
  const base = maps.get(BASE)!;
  const depth = maps.get(DEPTH)!;
  const dirty = maps.get(`${DIRTY}${f.bitmap}`)!;
  const zeroSector = (s: number) => data.subarray(s * 512, s * 512 + 512).every((b) => b === 0);
  const fmt = (s: number) => `base:allocation 0x${base[s]!.toString(16)}, allocation-depth ${depth[s]}, dirty ${dirty[s]! & 1}, data ${zeroSector(s) ? 'zero' : 'non-zero'}`;
  let e = where((s) => (base[s]! & STATE_ZERO) !== 0 && !zeroSector(s), fmt);
  ctx.must(e === undefined, 'where base:allocation says NBD_STATE_ZERO, the snapshot reads as zeroes', e);
  e = where((s) => depth[s] === 0 && !zeroSector(s), fmt);
  ctx.must(e === undefined, 'where qemu:allocation-depth is 0 (no layer allocates), the snapshot reads as zeroes', e);
  e = where((s) => (base[s]! & STATE_HOLE) === 0 && depth[s] === 0, fmt);
  ctx.must(e === undefined, 'where base:allocation says allocated (no NBD_STATE_HOLE), qemu:allocation-depth is at least 1', e);
  e = where((s) => depth[s] === 0 && (base[s]! & STATE_HOLE) === 0, fmt);
  ctx.should(e === undefined, 'where qemu:allocation-depth is 0, base:allocation says NBD_STATE_HOLE', e);
  e = where((s) => (dirty[s]! & 1) === 0 && !f.full1.subarray(s * 512, s * 512 + 512).equals(data.subarray(s * 512, s * 512 + 512)), (s) => `${fmt(s)}; ${f.guest.who(s * 512)}`);
  ctx.must(e === undefined, 'where qemu:dirty-bitmap:inc is clean, the snapshot equals the previous full backup', e);
  await endBackup(ctx, f.s, 2);
}

interface Named {
  'node-name': string;
  drv: string;
  'dirty-bitmaps'?: { name: string }[];
}

async function runRollback(ctx: Ctx): Promise<void> {
  const s = await ctx.env.lab.launch();
  ctx.defer(() => s.stop());
  if (!(await execute(ctx, s, 'temp 1 is added', 'blockdev-add', s.temp(1)))) return;
  const actions = [{ type: 'block-dirty-bitmap-add', data: { node: 'source', name: 'chk1' } }, backupAction(s, 1), { type: 'abort', data: {} }];
  const r = await s.qmp.execute('transaction', transactionArgs(s, actions));
  ctx.must(!r.ok, 'a transaction with an abort action fails', r.ok ? 'it succeeded' : undefined);
  const jobs = (await s.qmp.ok('query-jobs')) as { id: string; status: string }[];
  ctx.must(!jobs.some((j) => j.id === 'backup1'), 'no backup job remains from the failed transaction', JSON.stringify(jobs));
  const nodes = (await s.qmp.ok('query-named-block-nodes', { flat: true })) as Named[];
  const src = nodes.find((n) => n['node-name'] === 'source');
  ctx.must(!(src?.['dirty-bitmaps'] ?? []).some((b) => b.name === 'chk1'), 'no bitmap remains from the failed transaction', JSON.stringify(src?.['dirty-bitmaps']));
  ctx.must(!nodes.some((n) => n.drv === 'copy-before-write'), 'no copy-before-write filter remains from the failed transaction', nodes.map((n) => `${n['node-name']} (${n.drv})`).join(', '));
  const events = s.qmp.events.filter((ev) => ev.event === 'JOB_STATUS_CHANGE' && ev.data?.['id'] === 'backup1').map((ev) => String(ev.data?.['status']));
  ctx.should(events.join(',') === 'created,aborting,concluded,null', "the job's JOB_STATUS_CHANGE events are created, aborting, concluded, null", events.join(', '));
  const again = await s.qmp.execute('transaction', transactionArgs(s, actions.slice(0, 2)));
  ctx.must(again.ok, 'the same transaction without the abort action then succeeds (its names are free again)', again.ok ? undefined : `${again.error.class}: ${again.error.desc}`);
}

interface Row {
  id: string;
  section: string;
  level: 'MUST' | 'SHOULD';
  title: string;
  expectation: string;
  run: (ctx: Ctx) => Promise<void>;
}

const ROWS: readonly Row[] = [
  {
    id: 'backup/pull/incremental',
    section: 'docs/requirements/backup.md §2.1, §2.3, §2.4',
    level: 'MUST',
    title: "libvirt's pull-mode backup: full, then incremental from the dirty bitmap",
    expectation: 'both snapshots equal the disk at their transactions; the full image plus the dirty extents equals the second snapshot',
    run: (ctx) => runIncremental(ctx, 'legacy'),
  },
  {
    id: 'backup/snapshot-access/incremental',
    section: 'docs/requirements/backup.md §2.2, §2.3, §2.4',
    level: 'MUST',
    title: 'copy-before-write + snapshot-access + bitmap: full, then incremental',
    expectation: 'as backup/pull/incremental, over snapshot-access on the backup job\'s filter, the bitmap exported as {node, name}',
    run: (ctx) => runIncremental(ctx, 'modern'),
  },
  {
    id: 'backup/contexts/consistent',
    section: 'docs/requirements/backup.md §2.5',
    level: 'MUST',
    title: 'base:allocation, qemu:allocation-depth and qemu:dirty-bitmap on one connection agree',
    expectation: 'ZERO and depth 0 read as zeroes; allocated means depth >= 1; depth 0 is a HOLE (SHOULD); clean means unchanged since the previous backup',
    run: runContexts,
  },
  {
    id: 'backup/transaction/rollback',
    section: 'docs/requirements/backup.md §1.1',
    level: 'MUST',
    title: 'a failed transaction leaves nothing behind',
    expectation: 'no job, bitmap or filter remains; the job went created, aborting, concluded, null (SHOULD); the same actions then succeed',
    run: runRollback,
  },
];

export const backupCases: CaseDef<BackupEnv>[] = ROWS.map((r) => ({
  id: r.id,
  section: r.section,
  level: r.level,
  title: r.title,
  description: r.title,
  expectation: r.expectation,
  run: r.run,
}));
