// Aliasing graphs: two protocol nodes over one image file (docs/requirements/qemu-fleecing.md §1;
// docs/design.md "Storage, not nodes"). Each row builds a graph over QMP in which a second `file`
// node opens the source's file - as the legacy temp image's backing, as a cbw target, exported
// writable or read-only - or two read-only nodes share a file no one writes. The spec's
// permission model has no storage yet, so nothing here is an expectation from a model: the wire
// is the judge. A graph the target refuses is reported as refused (with its message); a graph
// it accepts is driven over NBD - a live write racing a snapshot read held on the aliased path
// (reference: a `delay` filter there and a breakpoint in the temp overlay's backing read; QEMU
// 7.2, which has no delay driver: a `throttle` filter whose bucket a first read has filled) -
// and judged: accepted and safe, or accepted but unsafe with the bytes the snapshot returned (a
// MUST failure). The case level is MAY: what the target does with the graph is reported (the
// `info` line in the terminal says it); refusing is the reference's choice, returning
// post-snapshot data is the MUST.
import fs from 'node:fs';
import path from 'node:path';
import { Cmd } from '../nbd/constants.ts';
import type { NbdConnection } from '../nbd/client.ts';
import { open } from '../nbd/session.ts';
import type { CaseContext, CaseDef } from '../runner/model.ts';
import type { PermEnv } from './cases.ts';
import type { PermSession } from './targets.ts';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const BLOCK = 64 * 1024;
/** The disk at snapshot time: this byte in the first MiB, zeroes after. */
const OLD = 0x11;
const NEW = 0x22;
/** The second writer's byte (through an alias of the snapshot store). */
const STORE = 0x33;
/** The first snapshot read under QEMU's throttle passes at once and fills its bucket; it reads
 * here, a cluster no one writes. */
const WARM_OFFSET = 512 * 1024;
/** Throttle: 64 KiB/s of reads, so the read after the first 64 KiB one waits about 0.9 s. */
const THROTTLE_BPS = 65536;
/** How long the race waits for the snapshot read to be past its allocation lookup (QEMU), and
 * for the live write to complete while the read is held (both targets). */
const SETTLE_MS = 150;
const WRITE_GRACE_MS = 1000;

export interface AliasStep {
  command: string;
  args: Record<string, unknown>;
}

/** How an accepted graph is driven. `race`: a snapshot read held on the aliased path while a
 * write goes through `writer`; `plain`: a write through `writer`, then a snapshot read; without
 * a writer the exports are read and must all show the file's content. */
export interface AliasDrive {
  writer?: string;
  /** A second write, through this export, after the first (same range). */
  thenWriter?: string;
  /** Exports that must show the snapshot (the disk's content before any write). */
  snapshots: readonly string[];
  race?: boolean;
}

/** What a row builds, in the target's own driver names. */
export interface AliasBuilder {
  readonly p: (name: string) => string;
  /** A raw image with the snapshot-time content (OLD in the first MiB), created on first use. */
  disk(name: string): string;
  file(node: string, image: string, opts?: { readOnly?: boolean }): AliasStep;
  /** A zero-filled raw image file node of the disk's size (cbw target). */
  blankFile(node: string): AliasStep;
  /** The path of the image blankFile(node) made. */
  blank(node: string): string;
  /** The temp image: qcow2 (QEMU) or overlay (reference) over its own file, backed by `backing`. */
  temp(node: string, backing: string): AliasStep[];
  /** A filter that makes reads on this path slow: delay (reference), throttle (QEMU). */
  slow(node: string, child: string): AliasStep[];
  add(args: Record<string, unknown>): AliasStep;
  exportNbd(id: string, node: string, writable: boolean): AliasStep;
  backup(jobId: string, device: string, target: string): AliasStep;
}

export interface AliasCaseSpec {
  name: string;
  title: string;
  section: string;
  /** Set when a snapshot reader of this graph can see a write that bypasses copy-before-write or
   * the backup job's serialisation: accepting it is a hazard even where a run shows no harm. */
  hazard?: string;
  /** Where QEMU 7.2 refuses this graph (1-based step) with its image-locking message (measured
   * with qemu-storage-daemon 7.2 by this case); a target refusing there should say the same. */
  lock?: { step: number; message: string };
  steps(b: AliasBuilder): AliasStep[];
  drive: AliasDrive;
  /** For the race: the node whose backing read a breakpoint holds (reference targets). */
  heldNode?: string;
}

/** The modern graph over a file: cbw directly on the `file` node `disk`, a blank raw target. */
function modernOverFile(b: AliasBuilder): AliasStep[] {
  return [
    b.file('disk', b.disk('disk')),
    b.blankFile('temp'),
    b.add({ driver: 'copy-before-write', 'node-name': b.p('fl-cbw'), file: b.p('disk'), target: b.p('temp') }),
    b.add({ driver: 'snapshot-access', 'node-name': b.p('fl-access'), file: b.p('fl-cbw') }),
    b.exportNbd('live', 'fl-cbw', true),
    b.exportNbd('fleece', 'fl-access', false),
  ];
}

const BYPASS = 'a snapshot reader of this graph reaches the source file by a second node: the guest\'s writes through copy-before-write land in the same file without the copy, the frozen-read wait or the serialisation protecting that read';

export const ALIAS_CASES: readonly AliasCaseSpec[] = [
  {
    name: 'alias/legacy-backing',
    title: 'Legacy fleecing whose temp image is backed by a second file node over the source file',
    section: 'docs/requirements/qemu-fleecing.md §3, §5.2 (the serialisation the temp relies on), §6 B11',
    hazard: `${BYPASS} (the backup's copies into the temp are serialising only when the temp's chain contains the source node)`,
    steps: (b) => [
      b.file('disk', b.disk('disk')),
      b.file('disk-alias', b.disk('disk'), { readOnly: true }),
      ...b.slow('alias-slow', 'disk-alias'),
      ...b.temp('temp', 'alias-slow'),
      b.exportNbd('live', 'disk', true),
      b.backup('fleecing', 'disk', 'temp'),
      b.exportNbd('fleece', 'temp', false),
    ],
    drive: { writer: 'live', snapshots: ['fleece'], race: true },
    heldNode: 'temp',
  },
  {
    name: 'alias/writable-export-on-source-alias',
    title: 'Modern fleecing, and a writable export on a second file node over the source file',
    section: 'docs/requirements/qemu-fleecing.md §1.4 (the writable export on the source, refused), §2.3',
    hazard: `${BYPASS}: a write there is never copied to the target`,
    lock: { step: 8, message: 'Failed to get "write" lock' },
    steps: (b) => [...modernOverFile(b), b.file('disk-alias', b.disk('disk')), b.exportNbd('alias', 'disk-alias', true)],
    drive: { writer: 'alias', snapshots: ['fleece'] },
  },
  {
    name: 'alias/cbw-target-on-source-file',
    title: 'copy-before-write whose target is a second file node over the source file',
    section: 'docs/requirements/qemu-fleecing.md §2.3 (the target holds the old data), §1.4',
    hazard: 'the old data is copied onto the very file the guest then overwrites: the snapshot of a written cluster is the new data',
    // QEMU: cbw unshares write on its source once it has a parent (the snapshot-access node).
    lock: { step: 4, message: 'Failed to get shared "write" lock' },
    steps: (b) => [
      b.file('disk', b.disk('disk')),
      b.file('disk-alias', b.disk('disk')),
      b.add({ driver: 'copy-before-write', 'node-name': b.p('fl-cbw'), file: b.p('disk'), target: b.p('disk-alias') }),
      b.add({ driver: 'snapshot-access', 'node-name': b.p('fl-access'), file: b.p('fl-cbw') }),
      b.exportNbd('live', 'fl-cbw', true),
      b.exportNbd('fleece', 'fl-access', false),
    ],
    drive: { writer: 'live', snapshots: ['fleece'] },
  },
  {
    name: 'alias/writable-export-on-target-alias',
    title: 'Modern fleecing, and a writable export on a second file node over the cbw target\'s file',
    section: 'docs/requirements/qemu-fleecing.md §6 B6 (a writer on the cbw target), B12',
    hazard: 'a write there lands in the snapshot store itself: the snapshot of a copied cluster becomes data that was never on the disk (B6 through an alias: cbw shares write on its target)',
    steps: (b) => [...modernOverFile(b), b.file('temp-alias', b.blank('temp')), b.exportNbd('alias', 'temp-alias', true)],
    drive: { writer: 'live', thenWriter: 'alias', snapshots: ['fleece'] },
  },
  {
    name: 'alias/readonly-export-on-source-alias',
    title: 'Modern fleecing, and a read-only export on a second file node over the source file (a live reader, not a snapshot)',
    section: 'docs/requirements/qemu-fleecing.md §1.4 (a read-only export on the source, accepted)',
    steps: (b) => [...modernOverFile(b), b.file('disk-alias', b.disk('disk'), { readOnly: true }), b.exportNbd('alias', 'disk-alias', false)],
    drive: { writer: 'live', snapshots: ['fleece'] },
  },
  {
    name: 'alias/readonly-pair',
    title: 'Two read-only file nodes over one file no one writes, both exported (safe aliasing)',
    section: 'docs/requirements/qemu-fleecing.md §1.2 (consistent-read shared by both)',
    steps: (b) => [
      b.file('disk', b.disk('disk'), { readOnly: true }),
      b.file('disk-alias', b.disk('disk'), { readOnly: true }),
      b.exportNbd('ro-a', 'disk', false),
      b.exportNbd('ro-b', 'disk-alias', false),
    ],
    drive: { snapshots: ['ro-a', 'ro-b'] },
  },
];

function builder(s: PermSession, prefix: string, blank: (p: string) => void): AliasBuilder {
  const p = (n: string) => `${prefix}${n}`;
  const qemu = s.qcow2Driver === 'qcow2';
  const file = (node: string, image: string, opts: { readOnly?: boolean } = {}): AliasStep => ({
    command: 'blockdev-add',
    args: { driver: 'file', 'node-name': p(node), filename: image, ...(opts.readOnly ? { 'read-only': true } : {}), ...(s.fileOptions ?? {}) },
  });
  return {
    p,
    disk(name) {
      const img = path.join(s.dir, `${p(name)}.raw`);
      if (!fs.existsSync(img)) {
        fs.writeFileSync(img, Buffer.alloc(MiB, OLD));
        fs.truncateSync(img, SIZE);
      }
      return img;
    },
    file,
    blankFile(node) {
      const img = path.join(s.dir, `${p(node)}.raw`);
      blank(img);
      return file(node, img);
    },
    blank: (node) => path.join(s.dir, `${p(node)}.raw`),
    temp(node, backing) {
      return [file(`${node}-file`, s.image(p(`${node}-file`))), { command: 'blockdev-add', args: { driver: s.qcow2Driver, 'node-name': p(node), file: p(`${node}-file`), backing: p(backing) } }];
    },
    slow(node, child) {
      if (qemu) {
        return [
          { command: 'object-add', args: { 'qom-type': 'throttle-group', id: p('tg'), limits: { 'bps-read': THROTTLE_BPS } } },
          { command: 'blockdev-add', args: { driver: 'throttle', 'node-name': p(node), 'throttle-group': p('tg'), file: p(child) } },
        ];
      }
      return [{ command: 'blockdev-add', args: { driver: 'delay', 'node-name': p(node), file: p(child), 'read-delay-ms': 20 } }];
    },
    add: (args) => ({ command: 'blockdev-add', args }),
    exportNbd: (id, node, writable) => ({ command: 'block-export-add', args: { type: 'nbd', id: p(id), 'node-name': p(node), name: p(id), writable } }),
    backup: (jobId, device, target) => ({ command: 'blockdev-backup', args: { 'job-id': p(jobId), device: p(device), target: p(target), sync: 'none' } }),
  };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The first byte of `data` that is not the snapshot's, described, or undefined. */
function postSnapshotByte(data: Buffer, offset: number): string | undefined {
  for (let i = 0; i < data.length; i++) {
    const want = offset + i < MiB ? OLD : 0;
    if (data[i] !== want) return `byte at offset ${offset + i} is 0x${data[i]!.toString(16)}, the snapshot holds 0x${want.toString(16)}${data[i] === NEW ? ' (the live write\'s byte: post-snapshot data)' : data[i] === STORE ? ' (the byte written through the alias of the snapshot store: data that was never on the disk)' : ''}`;
  }
  return undefined;
}

async function readAt(conn: NbdConnection, offset: number): Promise<{ data?: Buffer; error?: number; at: number }> {
  const r = await conn.request({ type: Cmd.READ, offset, length: BLOCK });
  return { ...(r.data ? { data: r.data } : {}), ...(r.error ? { error: r.error } : {}), at: Date.now() };
}

/** Drives an accepted graph; returns whether every snapshot read showed the snapshot. */
async function drive(ctx: CaseContext<PermEnv>, s: PermSession, spec: AliasCaseSpec, prefix: string): Promise<boolean> {
  const addr = { kind: 'unix' as const, path: path.join(s.dir, 'nbd.sock') };
  const conns = new Map<string, NbdConnection>();
  const connect = async (id: string) => {
    const { conn } = await open(addr, { exportName: `${prefix}${id}`, timeoutMs: 10_000 });
    ctx.defer(() => conn.close());
    conns.set(id, conn);
    return conn;
  };
  for (const id of [...spec.drive.snapshots, ...(spec.drive.writer ? [spec.drive.writer] : []), ...(spec.drive.thenWriter ? [spec.drive.thenWriter] : [])]) await connect(id);
  const t0 = Date.now();
  const rel = (t: number) => `${t - t0} ms`;
  let safe = true;
  const judge = (what: string, id: string, offset: number, r: { data?: Buffer; error?: number; at: number }) => {
    const bad = r.data ? postSnapshotByte(r.data, offset) : `NBD error ${r.error}`;
    ctx.observe(`${what}: READ offset ${offset} length ${BLOCK} on export '${prefix}${id}' replied at ${rel(r.at)}${bad ? `: ${bad}` : ': the snapshot'}`);
    if (r.data && bad) safe = false;
    ctx.must(!r.data || !bad, `a READ of the snapshot on export '${prefix}${id}' returns the disk as it was at the snapshot, never post-snapshot data`, bad ? `${what}: ${bad}` : undefined);
  };
  const writer = spec.drive.writer;
  const write = async (id = spec.drive.writer!, byte = NEW) => {
    const r = await conns.get(id)!.request({ type: Cmd.WRITE, offset: 0, payload: Buffer.alloc(BLOCK, byte) });
    ctx.observe(`WRITE offset 0 length ${BLOCK} of 0x${byte.toString(16)} on export '${prefix}${id}' replied at ${rel(Date.now())}${r.error ? ` with NBD error ${r.error}` : ''}`);
    return r;
  };
  const [snap] = spec.drive.snapshots;
  const snapConn = conns.get(snap!)!;
  if (!writer) {
    for (const id of spec.drive.snapshots) judge('read', id, 0, await readAt(conns.get(id)!, 0));
    return safe;
  }
  if (spec.drive.race) {
    const reference = s.qcow2Driver !== 'qcow2';
    const tag = `${prefix}held`;
    if (reference) {
      // Deterministic on the reference: the snapshot read parks in the temp's backing read.
      await s.qmp.ok('x-breakpoint-add', { event: 'overlay-backing-read', tag, node: `${prefix}${spec.heldNode}`, offset: 0, bytes: BLOCK });
    } else {
      judge('warm-up (fills the throttle bucket)', snap!, WARM_OFFSET, await readAt(snapConn, WARM_OFFSET));
    }
    const held = readAt(snapConn, 0);
    if (reference) await s.qmp.ok('x-breakpoint-wait', { tag, 'timeout-ms': 10_000 });
    else await sleep(SETTLE_MS);
    ctx.observe(`snapshot READ offset 0 sent and held on the aliased path (${reference ? `breakpoint overlay-backing-read on '${prefix}${spec.heldNode}'` : `throttle ${THROTTLE_BPS} B/s after a first read`}) at ${rel(Date.now())}`);
    const w = write();
    const landed = await Promise.race([w.then(() => true), sleep(WRITE_GRACE_MS).then(() => false)]);
    ctx.observe(landed ? 'the live WRITE completed while the snapshot read was held' : `the live WRITE had not completed ${WRITE_GRACE_MS} ms later (it waits for the held read)`);
    if (reference) await s.qmp.ok('x-breakpoint-remove', { tag });
    judge('the held snapshot read', snap!, 0, await held);
    await w;
  } else {
    await write();
    if (spec.drive.thenWriter) await write(spec.drive.thenWriter, STORE);
  }
  for (const id of spec.drive.snapshots) judge('after the write', id, 0, await readAt(conns.get(id)!, 0));
  return safe;
}

function aliasCase(spec: AliasCaseSpec, index: number): CaseDef<PermEnv> {
  const prefix = `a${index}-`;
  return {
    id: `permissions/${spec.name}`,
    section: `${spec.section}; storage identity (reference/src/block/storage.ts describes the reference's rule)`,
    level: 'MAY',
    title: spec.title,
    description: `QMP: builds the graph (names prefixed '${prefix}'); if accepted, drives it over NBD${spec.drive.race ? ': a snapshot read held on the aliased path races a live write' : spec.drive.writer ? ': a write, then snapshot reads' : ': reads of every export'}.`,
    expectation: `Refused, or accepted and safe: no snapshot READ returns post-snapshot data (MUST)${spec.hazard ? `. The graph is unsafe by construction (${spec.hazard}): accepting it is a hazard (SHOULD)` : ''}${spec.lock ? `; a refusal at step ${spec.lock.step}, where QEMU 7.2 refuses, begins with its "${spec.lock.message}" (SHOULD)` : ''}.`,
    async run(ctx) {
      const s = await ctx.env.lab.session();
      const blank = (img: string) => {
        fs.writeFileSync(img, '');
        fs.truncateSync(img, SIZE);
      };
      const steps = spec.steps(builder(s, prefix, blank));
      const transcript: string[] = [];
      let refused: { index: number; step: AliasStep; desc: string } | undefined;
      for (const [i, step] of steps.entries()) {
        const r = await s.qmp.execute(step.command, step.args);
        transcript.push(`QMP #${i + 1} -> ${JSON.stringify({ execute: step.command, arguments: step.args })} <- ${r.ok ? '{"return": {}}' : JSON.stringify({ error: r.error })}`);
        if (!r.ok) {
          if (r.error.class === 'CommandNotFound') ctx.skip(`the target has no QMP command ${step.command}`);
          refused = { index: i + 1, step, desc: r.error.desc };
          break;
        }
      }
      let verdict: string;
      if (refused) {
        verdict = `refused at #${refused.index} ${refused.step.command}: "${refused.desc}"`;
        ctx.observe(`VERDICT: ${verdict}`);
        if (spec.lock && refused.index === spec.lock.step) {
          ctx.should(refused.desc.startsWith(spec.lock.message), `the refusal begins with QEMU 7.2's image-locking message "${spec.lock.message}"`, refused.desc);
        } else if (spec.lock) {
          ctx.observe(`refused at #${refused.index}, where QEMU 7.2 refuses at #${spec.lock.step} ("${spec.lock.message}")`);
        }
      } else {
        const safe = await drive(ctx, s, spec, prefix);
        verdict = safe ? 'accepted; driven over NBD, every snapshot read returned the snapshot (safe on this run)' : 'accepted but UNSAFE: a snapshot read returned post-snapshot data (evidence in the checks)';
        ctx.observe(`VERDICT: ${verdict}`);
        if (spec.hazard) ctx.should(false, `HAZARD: the aliasing graph is accepted - ${spec.hazard}`, 'accepted');
      }
      for (const t of transcript) ctx.observe(t);
      const dead = s.exited();
      ctx.must(!dead, 'the daemon keeps running', dead);
      // MAY: the verdict itself, so the run states what the target does with the graph.
      ctx.check('MAY', false, `what the target does with this aliasing graph: ${verdict}`);
    },
  };
}

export const aliasCases: readonly CaseDef<PermEnv>[] = ALIAS_CASES.map((c, i) => aliasCase(c, i + 1));
