// The fleecing cases. Each starts its own setup of the target with the
// configuration it needs, drives it over NBD with the suite's own client, and judges every
// snapshot read against the shadow copy of the disk at snapshot time. Expectations: the snapshot
// invariant of spec/models/fleecing (S3 for the legacy graph, S4 for cbw + snapshot-access),
// docs/requirements/qemu-fleecing.md §4.1-§4.3 and §6 for bitmap, discard and on-cbw-error.
import fc from 'fast-check';
import fs from 'node:fs';
import { CF, Errno, STATE_ZERO, TF, errnoName } from '../nbd/constants.ts';
import type { Reply } from '../nbd/reply.ts';
import type { CaseContext, CaseDef } from '../runner/model.ts';
import { S3, S4 } from '../../spec/models/fleecing/index.ts';
import { CLUSTER, CONTENTS, HOT, IOTEST_OVERWRITE, IOTEST_PATTERNS, IOTEST_ZEROES, KiB, MiB, hex, range, type Region } from './content.ts';
import { contentShadow, describeMutation, describeOp, FleeceDriver, readWholeSnapshot, type Batch, type Op, type OpKind, type OpRecord, type Violation } from './driver.ts';
import { writeTrace, type FleeceTrace } from './trace.ts';
import { describeConfig, type FleeceConfig, type FleeceLab, type FleeceSetup } from './targets.ts';

export interface FleeceEnv {
  lab: FleeceLab;
  /** Set when the suite made the lab itself (its directory, removed at teardown). */
  ownDir?: string;
}

type Ctx = CaseContext<FleeceEnv>;

const INVARIANT = 'No snapshot read ever observes post-snapshot data (docs/design.md; spec/models/fleecing invariant)';

/** What a case launched and drove, for its trace if it fails (by case context). */
const CASE_STATE = new WeakMap<object, { config?: FleeceConfig; driver?: FleeceDriver; traced?: boolean }>();
const stateOf = (ctx: object) => {
  let s = CASE_STATE.get(ctx);
  if (!s) CASE_STATE.set(ctx, (s = {}));
  return s;
};

/** Wraps a fixed-step case: when one of its MUST checks fails, the run is written as a trace
 * (mode 'case': configuration, requests and replies with timing, wire log, the failed checks),
 * which `fleece replay` replays by running the case again. Model-based runs write their own. */
function traced(def: CaseDef<FleeceEnv>): CaseDef<FleeceEnv> {
  return {
    ...def,
    async run(ctx) {
      const failures: string[] = [];
      const wrapped: Ctx = {
        ...ctx,
        check(level, ok, what, observed) {
          if (!ok && level === 'MUST') failures.push(`${what}${observed !== undefined ? ` - observed: ${observed}` : ''}`);
          return ctx.check(level, ok, what, observed);
        },
        must(ok, what, observed) {
          return this.check('MUST', ok, what, observed);
        },
        should(ok, what, observed) {
          return this.check('SHOULD', ok, what, observed);
        },
      };
      CASE_STATE.set(wrapped, stateOf(ctx));
      try {
        await def.run(wrapped);
      } finally {
        const st = stateOf(ctx);
        if (failures.length && st.config && !st.traced) {
          const trace: FleeceTrace = {
            kind: 'fleece-trace',
            version: 1,
            mode: 'case',
            case: ctx.caseId,
            target: ctx.env.lab.flavor.name,
            seed: ctx.seed | 0,
            createdAt: new Date().toISOString(),
            config: st.config,
            connections: { live: 1, snapshot: 1 },
            batches: [],
            records: st.driver?.records ?? [],
            violations: failures.map((text) => ({ batch: -1, index: -1, kind: 'check' as const, text })),
            wire: ctx.wire.entries,
          };
          const file = writeTrace(trace);
          ctx.observe(`wire trace: ${file}`);
          ctx.observe(`replay: npx fleece replay ${file} --target ${ctx.env.lab.flavor.name}`);
        }
      }
    },
  };
}

/** Starts a setup for the case (skipping when the target cannot build it) and stops it after. */
async function launch(ctx: Ctx, config: FleeceConfig): Promise<FleeceSetup> {
  stateOf(ctx).config = config;
  const why = ctx.env.lab.flavor.unsupported(config);
  if (why) ctx.skip(`not applicable to ${ctx.env.lab.flavor.name}: ${why}`);
  const setup = await ctx.env.lab.launch(config);
  ctx.defer(() => setup.stop());
  ctx.observe(`setup: ${setup.description}`);
  return setup;
}

async function openDriver(ctx: Ctx, setup: FleeceSetup, config: FleeceConfig, live: number, snapshot: number, more: { snapshotStructured?: boolean } = {}): Promise<FleeceDriver> {
  const timeoutMs = Math.max(ctx.timeoutMs, 5000);
  const external = setup.graph === 'external';
  const shadow = external ? await readWholeSnapshot(setup, timeoutMs) : contentShadow(CONTENTS[config.content]!);
  const d = await FleeceDriver.open(setup, shadow, { live, snapshot, timeoutMs, log: ctx.wire, trackLive: !external, ...more });
  stateOf(ctx).driver = d;
  ctx.defer(() => d.close());
  return d;
}

/** The server died: say so in plain words, with its last output (an assertion, usually). */
function deathReport(setup: FleeceSetup, during: string): string | undefined {
  const how = setup.exited();
  if (!how) return undefined;
  const assertion = setup.logs().split('\n').find((l) => /assert|abort|panic|fatal/i.test(l));
  return `the server process died (${how}) ${during}${assertion ? `; it printed: ${assertion.trim()}` : ''}`;
}

async function readSnapshot(ctx: Ctx, d: FleeceDriver, rows: readonly Region[], when: string): Promise<void> {
  for (const r of rows) {
    const { rec, reply } = await d.request('read', r.offset, r.length);
    const v = d.judgeSnapshotRead(rec, reply);
    ctx.must(v.length === 0, `${when}: snapshot read of ${range(r.offset, r.length)} returns the snapshot (${r.byte === 0 ? 'zeroes' : `pattern ${hex(r.byte)}`})`, v[0]?.text);
  }
}

// ------------------------------------------------------------------------------------------
// §4.1 image-fleecing

const imageFleecing: CaseDef<FleeceEnv> = {
  id: 'fleecing/image-fleecing/scenario',
  section: 'docs/requirements/qemu-fleecing.md §4.1 (tests/qemu-iotests/tests/image-fleecing); docs/requirements/nbd.md I76-I77',
  level: 'MUST',
  title: "QEMU's image-fleecing scenario over the wire",
  description:
    'Disk with the iotest patterns; reads every pattern and zero range through the snapshot export, overwrites (full, partial-left, partial-right, adjacent) through the live export, reads the snapshot again, reads the overwrites back from the live export. Also checks the snapshot export is read-only.',
  expectation: "Every snapshot read returns the pre-write patterns and zeroes; the live export returns the overwrites; the snapshot export advertises READ_ONLY; on the legacy graph the backup job's offset is the bytes its copy-before-write copied (six clusters) and its len the disk size.",
  async run(ctx) {
    const config: FleeceConfig = { content: 'iotest' };
    if (ctx.env.lab.flavor.graph === 'external') ctx.skip('needs the §4.1 patterns on the disk, which the runner cannot write into a setup it did not start');
    const setup = await launch(ctx, config);
    const d = await openDriver(ctx, setup, config, 1, 1);
    const flags = d.snapshotFlags;
    ctx.must((flags & TF.READ_ONLY) !== 0, 'the snapshot export advertises NBD_FLAG_READ_ONLY (docs/requirements/nbd.md I77)', `transmission flags 0x${flags.toString(16)}`);
    await readSnapshot(ctx, d, [...IOTEST_PATTERNS, ...IOTEST_ZEROES], 'before the guest writes');
    for (const w of IOTEST_OVERWRITE) {
      const rec = await d.writePattern(w.offset, w.length, w.byte);
      ctx.must(rec.error === 0, `guest write ${hex(w.byte)} to ${range(w.offset, w.length)} through the live export succeeds`, rec.note);
    }
    await readSnapshot(ctx, d, [...IOTEST_PATTERNS, ...IOTEST_ZEROES], 'after the guest writes');
    for (const w of IOTEST_OVERWRITE) {
      const { rec, reply } = await d.request('live-read', w.offset, w.length);
      const ok = rec.error === 0 && !!reply?.data && reply.data.every((b) => b === w.byte);
      ctx.must(ok, `the live export returns the guest's ${hex(w.byte)} at ${range(w.offset, w.length)}`, ok ? undefined : rec.note ?? 'other bytes');
    }
    if (setup.graph === 'legacy' && setup.qmp) {
      // The backup job's progress is block-copy's: each cluster the writes touched, once (§5.2).
      const clusters = new Set<number>();
      for (const w of IOTEST_OVERWRITE) for (let c = Math.floor(w.offset / CLUSTER); c * CLUSTER < w.offset + w.length; c++) clusters.add(c);
      const want = clusters.size * CLUSTER;
      const size = CONTENTS[config.content]!.size;
      const jobs = (await setup.qmp.ok('query-block-jobs')) as Record<string, unknown>[];
      const job = jobs.find((j) => j.device === 'fleecing');
      ctx.must(job?.offset === want && job?.len === size, `query-block-jobs: the backup job's offset is the bytes copied before the guest writes, ${want} (the ${clusters.size} clusters they touched, each once), its len the disk size ${size} (docs/requirements/qemu-fleecing.md §5.2)`, job ? `offset ${String(job.offset)}, len ${String(job.len)}` : `no job 'fleecing' in ${JSON.stringify(jobs)}`);
    }
    const dead = deathReport(setup, 'during the scenario');
    ctx.must(!dead, 'the server keeps running', dead);
  },
};

// ------------------------------------------------------------------------------------------
// Model-based runs (fast-check commands)

interface RunPlan {
  /** Requests per batch are sent at random offsets in [0, jitterMs]. */
  jitterMs: number;
  numRuns: number;
  maxCommands: number;
  /** Stop generating runs after this long (a passing target must not take forever). */
  budgetMs: number;
  live: number;
  snapshot: number;
  /** Request mix: kind and weight. */
  kinds: readonly (readonly [OpKind, number])[];
}

/** Guest writes only (with live reads), against snapshot reads and block status. */
export const WRITE_MIX: readonly (readonly [OpKind, number])[] = [
  ['write', 6],
  ['live-read', 1],
  ['read', 6],
  ['status', 1],
];
/** Write-zeroes and trims on the live export too. */
export const ZERO_TRIM_MIX: readonly (readonly [OpKind, number])[] = [
  ['write', 3],
  ['zero', 3],
  ['trim', 2],
  ['live-read', 1],
  ['read', 6],
  ['status', 1],
];

/** A batch: requests around one hot cluster (so writes and reads meet), on several connections. */
export function batchArbitrary(size: number, jitterMs: number, kinds: readonly (readonly [OpKind, number])[] = WRITE_MIX): fc.Arbitrary<Batch> {
  const kind = fc.oneof(...kinds.map(([k, weight]) => ({ arbitrary: fc.constant(k), weight })));
  const op = fc.record({
    kind,
    conn: fc.nat(7),
    rel: fc.integer({ min: -64, max: 191 }),
    sectors: fc.integer({ min: 1, max: 256 }),
    at: fc.integer({ min: 0, max: jitterMs }),
  });
  return fc.record({ cluster: fc.nat(HOT / CLUSTER - 1), ops: fc.array(op, { minLength: 2, maxLength: 12 }) }).map(({ cluster, ops }) => ({
    ops: ops.map((o): Op => {
      const offset = Math.max(0, cluster * CLUSTER + o.rel * 512);
      const length = Math.min(o.sectors * 512, size - offset);
      return { kind: o.kind, conn: o.conn, offset, length, at: o.at };
    }),
  }));
}

class Runner {
  batches: Batch[] = [];
  violations: Violation[] = [];
  failedBatches: Batch[] | undefined;
  /** Where this run's records start in the driver's list. */
  readonly firstRecord: number;
  constructor(readonly d: FleeceDriver) {
    this.firstRecord = d.records.length;
  }
  async run(batch: Batch): Promise<void> {
    const i = this.batches.length;
    this.batches.push(batch);
    const v = await this.d.runBatch(batch, i);
    if (v.length) {
      this.violations = v;
      this.failedBatches = [...this.batches];
      throw new Error(v[0]!.text);
    }
  }
}

class BatchCommand implements fc.AsyncCommand<object, Runner> {
  constructor(readonly batch: Batch) {}
  check(): boolean {
    return true;
  }
  async run(_m: object, r: Runner): Promise<void> {
    await r.run(this.batch);
  }
  toString(): string {
    return `batch(${this.batch.ops.map((o) => `${o.kind}@${hex(o.offset)}+${hex(o.length)}`).join(' ')})`;
  }
}

/** Runs fast-check command sequences against one setup; a violation ends the case with a trace. */
async function modelRun(ctx: Ctx, config: FleeceConfig, plan: RunPlan): Promise<void> {
  const setup = await launch(ctx, config);
  const d = await openDriver(ctx, setup, config, plan.live, plan.snapshot);
  const size = CONTENTS[config.content]!.size;
  let current: Runner | undefined;
  let failed: Runner | undefined;
  const started = performance.now();
  let runs = 0;
  let batches = 0;
  const prop = fc.asyncProperty(fc.commands([batchArbitrary(size, plan.jitterMs, plan.kinds).map((b) => new BatchCommand(b))], { maxCommands: plan.maxCommands, size: 'max' }), async (cmds) => {
    current = new Runner(d);
    runs++;
    try {
      await fc.asyncModelRun(() => ({ model: {}, real: current! }), cmds);
    } finally {
      batches += current.batches.length;
      if (current.failedBatches) failed = current;
    }
  });
  try {
    await fc.assert(prop, { seed: ctx.seed | 0, numRuns: plan.numRuns, endOnFailure: true, interruptAfterTimeLimit: plan.budgetMs, markInterruptAsFailure: false });
  } catch (e) {
    if (!failed) throw e;
  }
  const elapsed = Math.round(performance.now() - started);
  const requests = d.records.length;
  ctx.observe(`${runs} fast-check run(s), ${batches} batch(es), ${requests} requests over ${plan.live} live + ${plan.snapshot} snapshot connections in ${elapsed} ms (seed ${ctx.seed | 0})`);
  const dead = deathReport(setup, 'during the model-based run');
  if (failed) {
    const v = [...failed.violations].sort((a, b) => Number(b.kind === 'post-snapshot') - Number(a.kind === 'post-snapshot'));
    const trace: FleeceTrace = {
      kind: 'fleece-trace',
      version: 1,
      mode: 'batches',
      case: ctx.caseId,
      target: ctx.env.lab.flavor.name,
      seed: ctx.seed | 0,
      createdAt: new Date().toISOString(),
      config,
      connections: { live: plan.live, snapshot: plan.snapshot },
      batches: failed.failedBatches!,
      records: d.records.slice(failed.firstRecord),
      violations: v,
      wire: ctx.wire.entries,
    };
    const file = writeTrace(trace);
    stateOf(ctx).traced = true;
    ctx.observe(`found after ${elapsed} ms; wire trace: ${file}`);
    ctx.observe(`replay: npx fleece replay ${file} --target ${ctx.env.lab.flavor.name}`);
    for (const x of v) {
      const what =
        x.kind === 'post-snapshot' ? INVARIANT
        : x.kind === 'status' ? 'block status agrees with the snapshot reads (docs/requirements/nbd.md I78)'
        : x.kind === 'live' ? 'the live export keeps every completed write'
        : 'every snapshot request succeeds with the snapshot bytes';
      ctx.must(false, what, x.text);
    }
  } else {
    ctx.must(true, INVARIANT);
  }
  ctx.must(!dead, 'the server keeps running', dead);
}

const modelConcurrent: CaseDef<FleeceEnv> = {
  id: 'fleecing/model/concurrent',
  section: `docs/requirements/nbd.md I76, I78; spec/models/fleecing ${S4.name} / ${S3.name} invariant`,
  level: 'MUST',
  title: 'Model-based runs: concurrent guest writes vs snapshot reads and block status',
  description:
    'fast-check command sequences; each command is a batch of up to 12 requests around one cluster (writes and reads on the live export; reads and base:allocation block status on the snapshot export) sent at once over 2 live and 3 snapshot connections. Every snapshot read is compared byte for byte with the shadow copy taken at snapshot time.',
  expectation: 'Every snapshot read returns exactly the shadow bytes; ZERO extents read as zeroes; completed live writes are visible on the live export.',
  run: (ctx) => modelRun(ctx, { content: 'dense' }, { jitterMs: 2, numRuns: 12, maxCommands: 6, budgetMs: 6000, live: 2, snapshot: 3, kinds: WRITE_MIX }),
};

const modelZeroTrim: CaseDef<FleeceEnv> = {
  id: 'fleecing/model/zero-trim',
  section: `docs/requirements/nbd.md I76, I78; docs/requirements/qemu-fleecing.md §2.3 (write-zeroes and discard go through CBW); spec/models/fleecing ${S4.name} / ${S3.name} invariant`,
  level: 'MUST',
  title: 'Model-based runs: concurrent write-zeroes and trims on the live export vs snapshot reads',
  description:
    'As fleecing/model/concurrent, with NBD_CMD_WRITE_ZEROES and NBD_CMD_TRIM on the live export as well as writes. The snapshot must not change whichever way the guest changes the disk.',
  expectation: 'Every snapshot read returns exactly the shadow bytes, whether the server sends them as data or hole chunks; ZERO extents read as zeroes.',
  run: (ctx) => modelRun(ctx, { content: 'dense' }, { jitterMs: 2, numRuns: 50, maxCommands: 8, budgetMs: 5000, live: 2, snapshot: 3, kinds: ZERO_TRIM_MIX }),
};

/** The delay under the source: long enough that the race window (docs/requirements/qemu-fleecing.md §3 steps 1-3)
 * is open for tens of milliseconds, short enough for a run of a few seconds. */
export const RACE_DELAY_MS = 25;

const raceDelayed: CaseDef<FleeceEnv> = {
  id: 'fleecing/race/delayed-source',
  // Timing is the point of this case: it runs alone, not next to other cases' load.
  exclusive: true,
  section: 'docs/requirements/qemu-fleecing.md §3 (the 2018 race), §6 B0; docs/design.md "The race" steps 1-7; spec/models/fleecing S1 (known bad) vs S3/S4',
  level: 'MUST',
  title: 'Widened race window: a read delay under the source',
  description: `As the model-based runs, with a ${RACE_DELAY_MS} ms read delay under the source (reference: the delay driver; QEMU: the source is an NBD client of nbdkit --filter=delay) and requests of a batch sent at random offsets within ${RACE_DELAY_MS + 15} ms, so a snapshot read that decided to read the source keeps going while a guest write copies and lands.`,
  expectation: 'A serialised or cbw design never returns post-snapshot data; an unserialised one is caught within seconds.',
  run: (ctx) => modelRun(ctx, { content: 'dense', sourceReadDelayMs: RACE_DELAY_MS }, { jitterMs: RACE_DELAY_MS + 15, numRuns: 40, maxCommands: 5, budgetMs: 5000, live: 2, snapshot: 3, kinds: WRITE_MIX }),
};

/** The reduced form of what the zero-trim runs found on QEMU 7.2 (finding F1 of this suite, not
 * in docs/requirements): two overlapping, unaligned write-zeroes on one live connection and a
 * snapshot read over the second cluster, all sent at once, repeated on fresh clusters. */
const zeroesVsRead: CaseDef<FleeceEnv> = {
  id: 'fleecing/race/unaligned-write-zeroes',
  exclusive: true,
  section: 'docs/requirements/nbd.md I76; docs/requirements/qemu-fleecing.md §2.3 (write-zeroes goes through CBW; snapshot block status); finding F1 (reduced from fleecing/model/zero-trim)',
  level: 'MUST',
  title: 'Snapshot reads racing unaligned write-zeroes on the live export',
  description:
    'For each of 60 clusters C of the dense disk: NBD_CMD_WRITE_ZEROES of [C+0xae00,+0x1b600) and of [C+0x18800,+0x15400) on one live connection and a READ of [C+0x1b000,+0x1c000) on the snapshot export, sent together. Reduced from a failing fleecing/model/zero-trim run on QEMU 7.2, where the read comes back with an OFFSET_HOLE chunk over snapshot data (see conformance/fleecing/README.md, finding F1).',
  expectation: 'Every snapshot read returns the snapshot bytes, as data or hole chunks; never the guest\'s zeroes.',
  async run(ctx) {
    const config: FleeceConfig = { content: 'dense' };
    const setup = await launch(ctx, config);
    const d = await openDriver(ctx, setup, config, 1, 1);
    const violations: Violation[] = [];
    const batches: Batch[] = [];
    for (let c = 0; c < 60 && violations.length === 0; c++) {
      const base = c * CLUSTER;
      const batch: Batch = {
        ops: [
          { kind: 'zero', conn: 0, offset: base + 0xae00, length: 0x1b600, at: 0 },
          { kind: 'read', conn: 0, offset: base + 0x1b000, length: 0x1c000, at: 0 },
          { kind: 'zero', conn: 0, offset: base + 0x18800, length: 0x15400, at: 0 },
        ],
      };
      batches.push(batch);
      violations.push(...(await d.runBatch(batch, c)));
    }
    ctx.observe(`${batches.length} batch(es) of 3 requests`);
    if (violations.length) {
      const trace: FleeceTrace = {
        kind: 'fleece-trace', version: 1, mode: 'batches', case: ctx.caseId, target: ctx.env.lab.flavor.name, seed: ctx.seed | 0,
        createdAt: new Date().toISOString(), config, connections: { live: 1, snapshot: 1 }, batches, records: d.records, violations, wire: ctx.wire.entries,
      };
      const file = writeTrace(trace);
      stateOf(ctx).traced = true;
      ctx.observe(`wire trace: ${file}`);
      ctx.observe(`replay: npx fleece replay ${file} --target ${ctx.env.lab.flavor.name}`);
    }
    const first = violations[0];
    ctx.must(!first, INVARIANT, first ? `${first.text} (in batch ${first.batch + 1} of ${batches.length})` : undefined);
    const dead = deathReport(setup, 'during the case');
    ctx.must(!dead, 'the server keeps running', dead);
  },
};

// ------------------------------------------------------------------------------------------
// Straddling reads: one live request, then one snapshot request that starts in clusters the
// live request made copy-before-write copy to the temp image and ends in a cluster nobody
// copied. Sequential, no timing: finding F1 without the race, and finding F3.

interface Span {
  offset: number;
  length: number;
}

/** The clusters copy-before-write copies for a live request: the request aligned out. */
function copiedBy(m: Span): Span {
  const from = Math.floor(m.offset / CLUSTER) * CLUSTER;
  const to = Math.ceil((m.offset + m.length) / CLUSTER) * CLUSTER;
  return { offset: from, length: to - from };
}

/** Where a straddling snapshot request lies against the clusters a live request copied. */
function straddleStory(req: Span, liveRec: OpRecord, noun = 'read'): string {
  const copied = copiedBy(liveRec);
  const end = copied.offset + copied.length;
  const tail = copiedBy({ offset: end, length: req.offset + req.length - end });
  const who = `${liveRec.kind === 'zero' ? 'live write-zeroes' : 'live write'} #${liveRec.mutation}`;
  const n = copied.length / CLUSTER;
  return (
    `the ${noun} starts inside ${range(copied.offset, copied.length)}, the ${n === 1 ? 'cluster' : `${n} clusters`} that ${who} had copied to the temp image before changing the disk ` +
    `(copy-before-write copies whole ${CLUSTER / KiB} KiB clusters), and ends in ${range(tail.offset, tail.length)}, which no live request had touched; ` +
    `the guest had already changed the ${noun}'s first ${hex(end - req.offset)} bytes, ${range(req.offset, end - req.offset)}, on the disk, so only the copy holds their snapshot bytes`
  );
}

/** Content chunks of a structured READ reply, in words ("OFFSET_HOLE [..] + OFFSET_DATA [..]"). */
function chunkWords(reply: Reply | undefined): string {
  if (!reply) return 'no reply';
  if (!reply.structured) return 'a simple reply';
  return reply.content.map((c) => `${c.kind === 'hole' ? 'NBD_REPLY_TYPE_OFFSET_HOLE' : 'NBD_REPLY_TYPE_OFFSET_DATA'} ${range(Number(c.offset), c.length)}`).join(' + ') || 'no content chunk';
}

/** (a) Write-zeroes over whole clusters, then a snapshot READ and BLOCK_STATUS straddling the end
 * of the copied clusters. On the dense disk, [0x1b000,+0x5000) holds 0x70 at snapshot time. */
export const STRADDLE_ZEROES: Span = { offset: 0xae00, length: 0x1b600 };
export const STRADDLE_ZEROES_READ: Span = { offset: 0x1b000, length: 0x1c000 };
/** (b), (c) A guest write of cluster A=[0x0,+0x10000), then a 64 KiB snapshot read of its second
 * half and the first half of cluster B (snapshot bytes 0x26 and 0x4b on the dense disk). */
export const STRADDLE_WRITE: Span = { offset: 0, length: CLUSTER };
export const STRADDLE_READ: Span = { offset: CLUSTER / 2, length: CLUSTER };

const straddleZeroes: CaseDef<FleeceEnv> = {
  id: 'fleecing/straddle/write-zeroes',
  section: 'docs/requirements/qemu-fleecing.md §4.1 (image-fleecing: cluster-granular copy-before-write), §5.1, §2.3 (snapshot read and block status under the cbw lock); docs/requirements/nbd.md §1.6 (structured READ, hole chunks), §1.9 (base:allocation), I76, I78; finding F1',
  level: 'MUST',
  title: 'After live write-zeroes, a snapshot read and block status that straddle copied and uncopied clusters',
  description:
    `The dense disk. The guest zeroes ${range(STRADDLE_ZEROES.offset, STRADDLE_ZEROES.length)} through the live export (NBD_CMD_WRITE_ZEROES), which makes copy-before-write copy clusters ${range(0, 0x30000)} to the temp image first. ` +
    `Once that is answered, the snapshot export is read over ${range(STRADDLE_ZEROES_READ.offset, STRADDLE_ZEROES_READ.length)} with structured replies (no DF), then asked for base:allocation block status over the same range. ` +
    'The range starts in the copied clusters and ends in one nobody copied. One request at a time: no timing involved.',
  expectation:
    `The read returns the snapshot's bytes over the whole range (0x70 at ${range(STRADDLE_ZEROES_READ.offset, 0x5000)}), whether as data or hole chunks, never the guest's zeroes; block status never says NBD_STATE_ZERO over bytes the snapshot holds.`,
  async run(ctx) {
    const config: FleeceConfig = { content: 'dense' };
    const setup = await launch(ctx, config);
    const d = await openDriver(ctx, setup, config, 1, 1);
    const R = STRADDLE_ZEROES_READ;
    const z = await d.request('zero', STRADDLE_ZEROES.offset, STRADDLE_ZEROES.length);
    if (!ctx.must(z.rec.error === 0, `the guest's write-zeroes of ${range(STRADDLE_ZEROES.offset, STRADDLE_ZEROES.length)} through the live export succeeds`, z.rec.note)) return;
    const { rec, reply } = await d.request('read', R.offset, R.length);
    ctx.observe(`snapshot read of ${range(R.offset, R.length)} after the write-zeroes: ${chunkWords(reply)}`);
    const v = d.judgeSnapshotRead(rec, reply);
    ctx.must(v.length === 0, `${INVARIANT}: a snapshot read that starts in clusters a live write-zeroes copied and ends in one nobody copied returns the snapshot`, v[0] && `${v[0].text}; ${straddleStory(R, z.rec)}`);
    const st = await d.request('status', R.offset, R.length);
    if (st.rec.error === -1) ctx.must(false, 'the snapshot block status request is answered', st.rec.note);
    else if (!st.reply) ctx.observe(`block status not checked: ${st.rec.note ?? 'no reply'}`);
    else {
      const extents = [...st.reply.status.values()][0] ?? [];
      ctx.observe(`snapshot block status of ${range(R.offset, R.length)}: ${extents.map((e) => `+${hex(e.length)}:${e.flags & STATE_ZERO ? 'ZERO' : 'data'}`).join(' ') || st.rec.note}`);
      const vs = d.judgeSnapshotStatus(st.rec, st.reply);
      ctx.must(vs.length === 0, 'snapshot block status over the same straddling range agrees with the snapshot: no NBD_STATE_ZERO over bytes it holds (docs/requirements/nbd.md I78)', vs[0] && `${vs[0].text}; ${straddleStory(R, z.rec, 'request')}; the zeroes are the guest's, from ${describeMutation(z.rec)}`);
    }
    const dead = deathReport(setup, 'during the case');
    ctx.must(!dead, 'the server keeps running', dead);
  },
};

/** (b), (c): one guest write, then one straddling snapshot read with DF or with a simple reply. */
async function straddleWriteRead(ctx: Ctx, mode: 'df' | 'simple'): Promise<void> {
  const config: FleeceConfig = { content: 'dense' };
  const setup = await launch(ctx, config);
  const d = await openDriver(ctx, setup, config, 1, 1, mode === 'simple' ? { snapshotStructured: false } : {});
  if (mode === 'df') {
    if (!d.snapshotStructured) ctx.skip(`not applicable to ${ctx.env.lab.flavor.name}: the snapshot export refused structured replies, and NBD_CMD_FLAG_DF needs them (docs/requirements/nbd.md §1.4)`);
    if (!(d.snapshotFlags & TF.SEND_DF)) ctx.skip(`not applicable to ${ctx.env.lab.flavor.name}: the snapshot export does not advertise NBD_FLAG_SEND_DF (transmission flags 0x${d.snapshotFlags.toString(16)}), so a client may not send NBD_CMD_FLAG_DF (docs/requirements/nbd.md §1.4)`);
  }
  const W = STRADDLE_WRITE;
  const R = STRADDLE_READ;
  const w = await d.request('write', W.offset, W.length);
  if (!ctx.must(w.rec.error === 0, `the guest's write of ${range(W.offset, W.length)} through the live export succeeds`, w.rec.note)) return;
  const { rec, reply } = await d.request('read', R.offset, R.length, 0, mode === 'df' ? CF.DF : 0);
  ctx.observe(`snapshot read of ${range(R.offset, R.length)}${mode === 'df' ? ' with NBD_CMD_FLAG_DF' : ' on a connection without structured replies'} after the guest write: ${chunkWords(reply)}`);
  if (mode === 'df' && reply && !reply.error) {
    ctx.must(reply.content.length <= 1, 'a READ with NBD_CMD_FLAG_DF gets at most one content chunk (docs/requirements/nbd.md §1.6, D56)', chunkWords(reply));
  }
  if (mode === 'simple' && reply) ctx.must(!reply.structured, 'the read on the connection without structured replies gets a simple reply (docs/requirements/nbd.md §1.6, B33)', chunkWords(reply));
  const v = d.judgeSnapshotRead(rec, reply);
  const how = mode === 'df' ? 'a snapshot read sent with NBD_CMD_FLAG_DF (one data chunk, no holes)' : 'a snapshot read on a connection without structured replies (a simple reply, as the Linux kernel NBD client gets)';
  ctx.must(v.length === 0, `${INVARIANT}: ${how} that starts in a cluster a live write copied and ends in one nobody copied returns the snapshot`, v[0] && `${v[0].text}; ${straddleStory(R, w.rec)}`);
  const dead = deathReport(setup, 'during the case');
  ctx.must(!dead, 'the server keeps running', dead);
}

const straddleDf: CaseDef<FleeceEnv> = {
  id: 'fleecing/straddle/df-read',
  section: 'docs/requirements/qemu-fleecing.md §4.1 (image-fleecing: cluster-granular copy-before-write), §5.1, §2.3 (snapshot read path); docs/requirements/nbd.md §1.4 (SEND_DF), §1.5 (DF), §1.6, D56, D57, I76; finding F3',
  level: 'MUST',
  title: 'After a live write, a snapshot read with NBD_CMD_FLAG_DF that straddles copied and uncopied clusters',
  description:
    `The dense disk. The guest writes cluster A=${range(STRADDLE_WRITE.offset, STRADDLE_WRITE.length)} through the live export, which makes copy-before-write copy A to the temp image first. ` +
    `Once that is answered, the snapshot export is read over ${range(STRADDLE_READ.offset, STRADDLE_READ.length)} (the second half of A and the first half of cluster B, which nobody copied) with NBD_CMD_FLAG_DF, ` +
    'so the server must answer with one data chunk for the whole range. One request at a time: no timing involved.',
  expectation: `The read returns the snapshot's bytes (0x26 in A, 0x4b in B) in at most one chunk, never the guest's write.`,
  run: (ctx) => straddleWriteRead(ctx, 'df'),
};

const straddleSimple: CaseDef<FleeceEnv> = {
  id: 'fleecing/straddle/simple-reply-read',
  section: 'docs/requirements/qemu-fleecing.md §4.1 (image-fleecing: cluster-granular copy-before-write), §5.1, §2.3 (snapshot read path); docs/requirements/nbd.md §1.6 (simple replies), §1.12 (baseline interoperability: simple replies), B33, I76; finding F3',
  level: 'MUST',
  title: 'After a live write, a snapshot read without structured replies that straddles copied and uncopied clusters',
  description:
    `The dense disk. The snapshot connection does not negotiate structured replies (as the Linux kernel's NBD client). The guest writes cluster A=${range(STRADDLE_WRITE.offset, STRADDLE_WRITE.length)} through the live export, which makes copy-before-write copy A to the temp image first. ` +
    `Once that is answered, the snapshot export is read over ${range(STRADDLE_READ.offset, STRADDLE_READ.length)} (the second half of A and the first half of cluster B, which nobody copied). One request at a time: no timing involved.`,
  expectation: `A simple reply with the snapshot's bytes (0x26 in A, 0x4b in B), never the guest's write.`,
  run: (ctx) => straddleWriteRead(ctx, 'simple'),
};

// ------------------------------------------------------------------------------------------
// Bitmap, snapshot discard, on-cbw-error (modern graph)

const bitmapCase: CaseDef<FleeceEnv> = {
  id: 'fleecing/bitmap/clean-clusters',
  section: 'docs/requirements/qemu-fleecing.md §5.1 (bitmap variant), §4.1 (d), §6 B3, B7',
  level: 'MUST',
  title: 'Bitmap fleecing: only dirty clusters are in the snapshot',
  description: 'The source carries bitmap0, dirty exactly over the iotest patterns; cbw has bitmap=bitmap0. Reads the patterns, overwrites a dirty and a clean cluster through the live export, reads both through the snapshot.',
  expectation: 'Dirty clusters read as the snapshot before and after the guest write; a clean cluster is not readable (an error, NBD EINVAL on QEMU 7.2: B7), never the guest data.',
  async run(ctx) {
    const config: FleeceConfig = { content: 'iotest', bitmap: true };
    const setup = await launch(ctx, config);
    const d = await openDriver(ctx, setup, config, 1, 1);
    await readSnapshot(ctx, d, IOTEST_PATTERNS, 'before the guest writes');
    const clean = 2 * MiB;
    for (const [off, byte] of [[0, 0xab], [clean, 0xee]] as const) {
      const rec = await d.writePattern(off, 64 * KiB, byte);
      ctx.must(rec.error === 0, `guest write to ${range(off, 64 * KiB)} succeeds`, rec.note);
    }
    await readSnapshot(ctx, d, IOTEST_PATTERNS.slice(0, 1), 'after the guest writes');
    const { rec, reply } = await d.request('read', clean, 64 * KiB);
    const leaked = rec.error === 0 && reply?.data?.some((b) => b === 0xee);
    ctx.must(!leaked, `a snapshot read of the clean cluster ${range(clean, 64 * KiB)} never returns the guest's data`, leaked ? 'it returned the guest write 0xee' : undefined);
    ctx.must(rec.error !== 0, 'a snapshot read of a cluster outside the bitmap fails (§6 B3)', rec.error === 0 ? 'it succeeded' : rec.note);
    ctx.should(rec.error === Errno.EINVAL, 'the error is EINVAL, as QEMU 7.2 maps EACCES (§6 B7)', rec.note);
  },
};

/** Bytes of the temp image file (raw) as the server left them. */
function tempBytes(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    fs.readSync(fd, buf, 0, length, offset);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

async function trimSnapshot(d: FleeceDriver, offset: number, length: number) {
  return d.request('snapshot-trim', offset, length);
}

const discardAligned: CaseDef<FleeceEnv> = {
  id: 'fleecing/discard/aligned',
  section: 'docs/requirements/qemu-fleecing.md §5.1 (snapshot discard variant), §2.3 "Snapshot discard", §4.3, §6 B7-B8',
  level: 'MUST',
  title: 'Snapshot discard of a whole cluster',
  description: 'snapshot-access and the temp with discard=unmap, snapshot export writable. Discards [0,+0x10000) through the snapshot export, reads it and a neighbour, then writes the discarded cluster through the live export.',
  expectation: 'The discard succeeds; the discarded cluster is no longer readable (EINVAL on QEMU 7.2), before and after the guest write; the neighbour still reads as the snapshot; the guest write copies nothing into the temp (where the judge made the temp).',
  async run(ctx) {
    const config: FleeceConfig = { content: 'iotest', snapshotDiscard: true };
    const setup = await launch(ctx, config);
    const d = await openDriver(ctx, setup, config, 1, 1);
    const t = await trimSnapshot(d, 0, CLUSTER);
    const dead = deathReport(setup, `when the snapshot export got a discard of ${range(0, CLUSTER)}`);
    ctx.must(!dead && t.rec.error === 0, `a cluster-aligned snapshot discard of ${range(0, CLUSTER)} succeeds`, dead ?? t.rec.note);
    if (dead) return;
    const r1 = await d.request('read', 0, CLUSTER);
    ctx.must(r1.rec.error !== 0, 'the discarded cluster is no longer readable', r1.rec.error === 0 ? 'the read succeeded' : r1.rec.note);
    ctx.should(r1.rec.error === Errno.EINVAL, 'the error is EINVAL (§6 B7)', r1.rec.note);
    await readSnapshot(ctx, d, [IOTEST_PATTERNS[1]!], 'after the discard');
    const w = await d.writePattern(0, CLUSTER, 0xab);
    ctx.must(w.error === 0, 'a guest write to the discarded cluster succeeds', w.note);
    const r2 = await d.request('read', 0, CLUSTER);
    const leaked = r2.rec.error === 0 && r2.reply?.data?.some((b) => b === 0xab);
    ctx.must(!leaked && r2.rec.error !== 0, 'after the guest write the discarded cluster is still unreadable, never the guest data', leaked ? 'it returned the guest write 0xab' : r2.rec.note);
    // The discard also dropped the copy duty (block_copy_reset in cbw_co_pdiscard_snapshot): the
    // guest write copied nothing into the temp. Only the temp shows it, when the judge made it.
    if (setup.temp) {
      const old = IOTEST_PATTERNS[0]!;
      const copied = tempBytes(setup.temp, old.offset, old.length).filter((b) => b === old.byte).length;
      ctx.must(copied === 0, `the guest write to the discarded cluster copies nothing into the temp: ${range(old.offset, old.length)} of the temp holds none of the snapshot's ${hex(old.byte)} (docs/requirements/qemu-fleecing.md §2.3 "Snapshot discard": stop copying it)`, copied ? `the temp holds ${copied} byte(s) ${hex(old.byte)} there: the write copied the discarded cluster` : undefined);
    }
  },
};

const discardUnaligned: CaseDef<FleeceEnv> = {
  id: 'fleecing/discard/unaligned',
  section: 'docs/requirements/qemu-fleecing.md §6 B1 (fixed in 9.1: "support unligned snapshot-discard"), §2.3 "Snapshot discard"',
  level: 'MUST',
  title: 'Snapshot discard that is not cluster-aligned',
  description: `Discards ${range(0, 32 * KiB)} (inside one cluster) and then ${range(96 * KiB, 160 * KiB)} (two whole clusters and a part) through the writable snapshot export.`,
  expectation: 'The server answers and keeps running; the discard shrinks inward to whole clusters: the first is a no-op (the cluster still reads as the snapshot), the second makes [0x20000,+0x20000) unreadable and leaves [0x10000,+0x10000) readable.',
  async run(ctx) {
    const config: FleeceConfig = { content: 'iotest', snapshotDiscard: true };
    const setup = await launch(ctx, config);
    const d = await openDriver(ctx, setup, config, 1, 1);
    const first = await trimSnapshot(d, 0, 32 * KiB);
    // A dropped connection usually means the process is dying: give its exit time to be seen.
    for (let i = 0; i < (first.rec.error === -1 ? 60 : 2) && !setup.exited(); i++) await new Promise((r) => setTimeout(r, 50));
    const dead = deathReport(setup, `when the snapshot export got a discard of ${range(0, 32 * KiB)}, which is not cluster-aligned (docs/requirements/qemu-fleecing.md §6 B1: QEMU before 9.1 passes the unaligned range to hbitmap_reset and aborts on its assertion)`);
    if (dead || first.rec.error === -1) {
      ctx.must(false, 'the server survives an unaligned snapshot discard and answers it', dead ?? `no reply: ${first.rec.note}`);
      return;
    }
    ctx.should(first.rec.error === 0, `the unaligned snapshot discard of ${range(0, 32 * KiB)} succeeds (a no-op: it covers no whole cluster)`, first.rec.note);
    await readSnapshot(ctx, d, [IOTEST_PATTERNS[0]!], 'after a discard covering no whole cluster');
    const second = await trimSnapshot(d, 96 * KiB, 160 * KiB);
    const dead2 = deathReport(setup, `when the snapshot export got a discard of ${range(96 * KiB, 160 * KiB)}`);
    ctx.must(!dead2 && second.rec.error !== -1, 'the server survives a second unaligned snapshot discard', dead2 ?? second.rec.note);
    if (dead2) return;
    const kept = await d.request('read', 64 * KiB, 64 * KiB);
    ctx.must(kept.rec.error === 0 && d.judgeSnapshotRead(kept.rec, kept.reply).length === 0, `the partly discarded cluster ${range(64 * KiB, 64 * KiB)} still reads as the snapshot (the discard shrinks inward)`, kept.rec.note);
    const gone = await d.request('read', 128 * KiB, 128 * KiB);
    ctx.must(gone.rec.error !== 0, `the wholly discarded clusters ${range(128 * KiB, 128 * KiB)} are no longer readable`, gone.rec.error === 0 ? 'the read succeeded' : undefined);
  },
};

/** The target's error a case injects: EIO (iotest copy-before-write), or ENOSPC, a temp out of
 * space, which break-guest-write must pass on to the guest as it is (§4.2). */
type InjectedErrno = 'EIO' | 'ENOSPC';

function cbwErrorCase(policy: 'break-guest-write' | 'break-snapshot', injected: InjectedErrno = 'EIO'): CaseDef<FleeceEnv> {
  const guestFails = policy === 'break-guest-write';
  const errno = Errno[injected];
  return {
    id: `fleecing/cbw-error/${policy}${injected === 'EIO' ? '' : `-${injected.toLowerCase()}`}`,
    section: `docs/requirements/qemu-fleecing.md §4.2 (tests/qemu-iotests/tests/copy-before-write${injected === 'EIO' ? '' : '; the target\'s own error reaches the guest'}), §6 B4; spec/models/fleecing S4 on-cbw-error`,
    level: 'MUST',
    title: `on-cbw-error=${policy} under an injected target write error${injected === 'EIO' ? '' : ` (${injected})`}`,
    description: `The cbw target fails its first write with ${injected} (reference: blkdebug over the temp; QEMU: raw over blkdebug over the temp file). The guest writes [0,+0x10000) through the live export; then the snapshot is read.`,
    expectation: guestFails
      ? `The guest write fails (${injected}${injected === 'EIO' ? '' : ', a MUST: the target\'s error, not a generic one'}); the snapshot stays readable and equal to the snapshot.`
      : 'The guest write succeeds; from then on every snapshot read fails (EINVAL on the wire for EACCES), none returns data.',
    async run(ctx) {
      const config: FleeceConfig = { content: 'iotest', cbwError: policy, ...(injected === 'EIO' ? {} : { cbwErrno: errno }) };
      const setup = await launch(ctx, config);
      const d = await openDriver(ctx, setup, config, 1, 1);
      const w = await d.writePattern(0, CLUSTER, 0xab);
      if (guestFails) {
        ctx.must(w.error > 0, 'the guest write whose copy-before-write failed fails', w.error === 0 ? 'it succeeded' : w.note);
        if (injected === 'EIO') ctx.should(w.error === Errno.EIO, 'with EIO, the injected error', w.note);
        else ctx.must(w.error === errno, `with ${injected}, the target's own error passed on (docs/requirements/qemu-fleecing.md §4.2: a temp out of space is ENOSPC to the guest, not EIO)`, w.error > 0 ? errnoName(w.error) : w.note);
        await readSnapshot(ctx, d, [...IOTEST_PATTERNS.slice(0, 2), ...IOTEST_ZEROES.slice(0, 1)], 'after the failed guest write');
      } else {
        ctx.must(w.error === 0, 'the guest write succeeds although its copy-before-write failed', w.note);
        for (const r of IOTEST_PATTERNS.slice(0, 2)) {
          const { rec, reply } = await d.request('read', r.offset, r.length);
          const leaked = rec.error === 0 && reply?.data?.some((b) => b === 0xab);
          ctx.must(!leaked, `the snapshot read of ${range(r.offset, r.length)} never returns the guest's data`, leaked ? 'it returned 0xab' : undefined);
          ctx.must(rec.error !== 0, `the broken snapshot refuses the read of ${range(r.offset, r.length)}`, rec.error === 0 ? 'it returned data' : undefined);
          ctx.should(rec.error === Errno.EINVAL, 'with EINVAL (EACCES on the wire, §6 B7)', rec.error ? errnoName(rec.error) : undefined);
        }
      }
      const dead = deathReport(setup, 'during the case');
      ctx.must(!dead, 'the server keeps running', dead);
    },
  };
}

/** The break-snapshot race (finding F2): a read delay under the source of D ms holds both the
 * copy-before-write of the first live write (its copy reads the source, then the target write
 * fails: the snapshot breaks at about D) and a snapshot read sent at D/2 (it reads the source,
 * not yet copied, so it answers at about 1.5 D). A second live write to the read's cluster, sent
 * as soon as the first is answered (so after the break), must not reach the source before the
 * read has read it. Margins: about D/2 on both sides of the window. */
export const BREAK_DELAY_MS = 1000;
export const BREAK_READ_AT_MS = BREAK_DELAY_MS / 2;
/** Fresh setups tried when an attempt did not open the window (the read failed or came late). */
export const BREAK_ATTEMPTS = 3;

const breakInflightRead: CaseDef<FleeceEnv> = {
  id: 'fleecing/cbw-error/break-snapshot-inflight-read',
  // Timing is the point of this case: it runs alone, not next to other cases' load.
  exclusive: true,
  section: 'docs/requirements/qemu-fleecing.md §4.2 (on-cbw-error), §6 B4; spec/models/fleecing s4-qemu-7.1-early-return (known bad) vs S4; finding F2',
  level: 'MUST',
  title: 'on-cbw-error=break-snapshot: a snapshot read already reading the source when the snapshot breaks',
  description:
    `A ${BREAK_DELAY_MS} ms read delay under the source and an injected EIO on the cbw target's first write, on-cbw-error=break-snapshot. ` +
    `The guest writes cluster Y=[0x0,+0x10000) through the live export: its copy-before-write reads Y from the (slow) source, then the copy to the target fails and the snapshot breaks. ` +
    `${BREAK_READ_AT_MS} ms after that write is sent, before the break, the snapshot export reads cluster X=[0x100000,+0x10000), which nobody has copied yet, so the read goes to the source and waits there. ` +
    `As soon as the write to Y is answered (the snapshot is broken by then), the guest writes X on a second live connection. ` +
    `Up to ${BREAK_ATTEMPTS} fresh setups when an attempt did not have the read in flight across the break and the second write.`,
  expectation:
    'The snapshot read of X returns the snapshot (pattern 0xd5) or fails; it never returns the guest\'s second write. The guest writes both succeed. A target can do it by holding the second write until snapshot reads of X that began before the break are done.',
  async run(ctx) {
    const config: FleeceConfig = { content: 'iotest', sourceReadDelayMs: BREAK_DELAY_MS, cbwError: 'break-snapshot' };
    const Y = IOTEST_PATTERNS[0]!;
    const X = IOTEST_PATTERNS[1]!;
    const outcomes: string[] = [];
    let exercised = false;
    for (let attempt = 1; attempt <= BREAK_ATTEMPTS && !exercised; attempt++) {
      const setup = await launch(ctx, config);
      const d = await openDriver(ctx, setup, config, 2, 1);
      const first = d.request('write', Y.offset, CLUSTER, 0);
      await new Promise((r) => setTimeout(r, BREAK_READ_AT_MS));
      const pending = d.request('read', X.offset, CLUSTER, 0);
      const wy = (await first).rec;
      if (!ctx.must(wy.error === 0, `the guest write to Y ${range(Y.offset, CLUSTER)} succeeds although its copy-before-write failed (on-cbw-error=break-snapshot)`, wy.note)) {
        await pending;
        break;
      }
      const wx = (await d.request('write', X.offset, CLUSTER, 1)).rec;
      const { rec: rx, reply } = await pending;
      const dead = deathReport(setup, `during attempt ${attempt}`);
      if (!ctx.must(!dead, 'the server keeps running', dead)) break;
      ctx.must(wx.error === 0, `the guest write to X ${range(X.offset, CLUSTER)} after the snapshot broke succeeds`, wx.note);
      const when = `attempt ${attempt} of at most ${BREAK_ATTEMPTS}`;
      const v = rx.error === 0 ? d.judgeSnapshotRead(rx, reply) : [];
      if (v.length) {
        const story =
          `${v[0]!.text}. Timeline (${when}): ${describeMutation(wy)}, whose copy-before-write failed (injected EIO), broke the snapshot; ` +
          `the snapshot read of ${range(X.offset, CLUSTER)} was sent ${(wy.doneMs - rx.sentMs).toFixed(1)} ms before that, when the cluster was not yet copied, so it was reading the source (reads there take ${BREAK_DELAY_MS} ms); ` +
          `live write #${wx.mutation} to that cluster was sent ${(wx.sentMs - wy.doneMs).toFixed(1)} ms after the break and answered ${(rx.doneMs - wx.doneMs).toFixed(1)} ms before the read: ` +
          'the live write did not wait for the snapshot read in flight on the source';
        ctx.must(false, `${INVARIANT}, also for a snapshot read in flight when the snapshot breaks`, story);
        return;
      }
      const inFlight = rx.sentMs < wy.doneMs && rx.doneMs > wx.sentMs;
      const heldWrite = wx.doneMs >= rx.doneMs;
      const note = (o: string) => {
        outcomes.push(o);
        ctx.observe(o);
      };
      if (rx.error !== 0) {
        note(`${when}: the snapshot read of X failed (${rx.note}): allowed, but it shows nothing about the window (the read may have reached the target after the break)`);
      } else if (!inFlight) {
        note(`${when}: the window did not open (read of X sent at ${rx.sentMs.toFixed(1)} ms, answered at ${rx.doneMs.toFixed(1)} ms; write to Y answered at ${wy.doneMs.toFixed(1)} ms; write to X sent at ${wx.sentMs.toFixed(1)} ms)`);
      } else {
        exercised = true;
        note(
          `${when}: the snapshot read of X, sent ${(wy.doneMs - rx.sentMs).toFixed(1)} ms before the break and answered ${(rx.doneMs - wx.sentMs).toFixed(1)} ms after the guest write to X was sent, returned the snapshot; ` +
            (heldWrite ? `the write to X was held until the read was done (answered ${(wx.doneMs - rx.doneMs).toFixed(1)} ms after it)` : 'the write to X was answered first, yet the read saw the snapshot'),
        );
      }
      await setup.stop();
    }
    if (outcomes.length && !exercised) {
      ctx.check('MAY', false, `within ${BREAK_ATTEMPTS} attempts a snapshot read was in flight across the break and the next guest write (else this case shows nothing either way)`, outcomes.join('; '));
    } else if (exercised) ctx.must(true, `${INVARIANT}, also for a snapshot read in flight when the snapshot breaks`);
  },
};

export const fleecingCases: readonly CaseDef<FleeceEnv>[] = [
  imageFleecing,
  modelConcurrent,
  modelZeroTrim,
  raceDelayed,
  zeroesVsRead,
  straddleZeroes,
  straddleDf,
  straddleSimple,
  bitmapCase,
  discardAligned,
  discardUnaligned,
  cbwErrorCase('break-guest-write'),
  cbwErrorCase('break-guest-write', 'ENOSPC'),
  cbwErrorCase('break-snapshot'),
  breakInflightRead,
].map(traced);

export { describeConfig, describeOp };
