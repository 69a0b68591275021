// Random writes, zero-writes and discards on a qcow2 image made by qemu-img, compared with a
// memory model of the guest view; afterwards `qemu-img check` is clean and `qemu-img compare`
// finds the image equal to the model (both real qemu-img 7.2).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fc, test } from '@fast-check/vitest';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockGraph } from '../src/block/index.ts';
import { run, tmpDir } from './nbd-helpers.ts';
import { closeAll, createQcow2, firstDiff, isClean, KiB, openQcow2, qemuCheck, qemuIo } from './qcow2-support.ts';

const SIZE = 1024 * KiB;
const t = tmpDir('qcow2-property-');
afterAll(() => t.cleanup());
let runs = 0;

type Op =
  | { kind: 'write'; offset: number; length: number; byte: number }
  | { kind: 'zero'; offset: number; length: number; noHole: boolean }
  | { kind: 'discard'; offset: number; length: number };

/** Ranges biased to cluster edges, where allocation, COW and the partial head/tail live. */
const rangeArb = (cluster: number) =>
  fc
    .tuple(
      fc.oneof(fc.integer({ min: 0, max: SIZE / cluster - 1 }).map((c) => c * cluster), fc.integer({ min: 0, max: SIZE - 1 })),
      fc.oneof(fc.integer({ min: 1, max: 4 }).map((c) => c * cluster), fc.integer({ min: 1, max: 3 * cluster })),
      fc.integer({ min: -1, max: 1 }),
    )
    .map(([offset, length, nudge]) => {
      const o = Math.min(SIZE - 1, Math.max(0, offset + nudge * 512));
      return { offset: o, length: Math.max(1, Math.min(length, SIZE - o)) };
    });

const opsArb = (cluster: number) =>
  fc.array(
    fc.oneof(
      { weight: 3, arbitrary: fc.tuple(rangeArb(cluster), fc.integer({ min: 1, max: 255 })).map(([r, byte]): Op => ({ kind: 'write', ...r, byte })) },
      { weight: 1, arbitrary: fc.tuple(rangeArb(cluster), fc.boolean()).map(([r, noHole]): Op => ({ kind: 'zero', ...r, noHole })) },
      { weight: 1, arbitrary: rangeArb(cluster).map((r): Op => ({ kind: 'discard', ...r })) },
    ),
    { minLength: 1, maxLength: 25 },
  );

interface Row {
  readonly name: string;
  readonly o: Record<string, string | number>;
  readonly cluster: number;
  readonly version: 2 | 3;
  /** A qcow2 backing image filled by qemu-io first. */
  readonly backing?: boolean;
}

const ROWS: Row[] = [
  { name: 'v3, 4 KiB clusters', o: { cluster_size: 4096 }, cluster: 4096, version: 3 },
  { name: 'v2, 4 KiB clusters', o: { compat: '0.10', cluster_size: 4096 }, cluster: 4096, version: 2 },
  { name: 'v3, 512-byte clusters, 64-bit refcounts', o: { cluster_size: 512, refcount_bits: 64 }, cluster: 512, version: 3 },
  { name: 'v3, 64 KiB clusters over a qcow2 backing', o: {}, cluster: 65536, version: 3, backing: true },
  { name: 'v2, 16 KiB clusters over a qcow2 backing', o: { compat: '0.10', cluster_size: 16384 }, cluster: 16384, version: 2, backing: true },
];

/** What the guest reads after `ops`, per QEMU's semantics: discard acts on whole clusters only; a
 * discarded cluster reads as zeroes in v3 (a zero cluster) and as the backing in v2. */
function model(row: Row, base: Buffer, ops: readonly Op[]): Buffer {
  const m = Buffer.from(base);
  for (const op of ops) {
    if (op.kind === 'write') m.fill(op.byte, op.offset, op.offset + op.length);
    else if (op.kind === 'zero') m.fill(0, op.offset, op.offset + op.length);
    else {
      const start = Math.ceil(op.offset / row.cluster) * row.cluster;
      const end = op.offset + op.length === SIZE ? SIZE : Math.floor((op.offset + op.length) / row.cluster) * row.cluster;
      for (let c = start; c < end; c += row.cluster) {
        if (row.version === 3) m.fill(0, c, c + row.cluster);
        else base.copy(m, c, c, c + row.cluster);
      }
    }
  }
  return m;
}

/** Consecutive ops with pairwise disjoint byte ranges, at most 4: run at once, they commute, so
 * the model stays the sequential one. (Disjoint bytes can still share a cluster: two partial
 * allocating writes into one new cluster is the l2meta-dependency case.) */
function batches(ops: readonly Op[]): Op[][] {
  const out: Op[][] = [];
  for (const op of ops) {
    const last = out[out.length - 1];
    const disjoint = last && last.length < 4 && last.every((o) => o.offset + o.length <= op.offset || op.offset + op.length <= o.offset);
    if (disjoint) last.push(op);
    else out.push([op]);
  }
  return out;
}

/** Runs one case; returns what went wrong, or undefined. */
async function runCase(row: Row, ops: readonly Op[], unsafe: Record<string, unknown> = {}, concurrent = false): Promise<string | undefined> {
  const dir = path.join(t.dir, `run-${++runs}`);
  fs.mkdirSync(dir);
  const image = path.join(dir, 'img.qcow2');
  const base = Buffer.alloc(SIZE);
  if (row.backing) {
    const b = path.join(dir, 'base.qcow2');
    await createQcow2(b, SIZE, { cluster_size: 4096 });
    await qemuIo(b, ['write -P 0x5a 0 300k', 'write -P 0xa5 600k 424k']);
    base.fill(0x5a, 0, 300 * KiB);
    base.fill(0xa5, 600 * KiB, SIZE);
    await createQcow2(image, SIZE, { ...row.o, backing_file: b, backing_fmt: 'qcow2' });
  } else {
    await createQcow2(image, SIZE, row.o);
  }
  const g = new BlockGraph();
  const be = openQcow2(g, 'q', image, unsafe);
  const apply = (op: Op): Promise<void> => {
    if (op.kind === 'write') return be.write(op.offset, Buffer.alloc(op.length, op.byte));
    if (op.kind === 'zero') return be.writeZeroes(op.offset, op.length, { noHole: op.noHole });
    return be.discard(op.offset, op.length);
  };
  for (const batch of concurrent ? batches(ops) : ops.map((op) => [op])) await Promise.all(batch.map(apply));
  const expected = model(row, base, ops);
  const got = await be.read(0, SIZE);
  await closeAll(g, [be]);
  try {
    const d = firstDiff(got, expected);
    if (d !== undefined) return `the reference reads 0x${got[d]!.toString(16)} at ${d}, the model 0x${expected[d]!.toString(16)}`;
    const check = await qemuCheck(image);
    if (!isClean(check)) return `qemu-img check:\n${check.output}`;
    const raw = path.join(dir, 'model.raw');
    fs.writeFileSync(raw, expected);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, image]);
    if (cmp.code !== 0) return `qemu-img compare: ${cmp.stdout}${cmp.stderr}`;
    return undefined;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('qcow2 property: random writes, zero-writes and discards against a memory model, then qemu-img check and compare', () => {
  for (const row of ROWS) {
    test.prop([opsArb(row.cluster)], { numRuns: 20 })(row.name, async (ops) => {
      expect(await runCase(row, ops)).toBeUndefined();
    });
  }

  for (const row of [ROWS[0]!, ROWS[3]!]) {
    test.prop([opsArb(row.cluster)], { numRuns: 20 })(`${row.name}, disjoint requests in flight together`, async (ops) => {
      expect(await runCase(row, ops, {}, true)).toBeUndefined();
    });
  }

  it('known bad: with x-unlocked-allocation=on (allocating writes not exclusive) the in-flight property fails', async () => {
    const row = ROWS[0]!;
    const result = await fc.check(
      fc.asyncProperty(opsArb(row.cluster), async (ops) => (await runCase(row, ops, { 'x-unlocked-allocation': true }, true)) === undefined),
      { numRuns: 50, seed: 1403 },
    );
    expect(result.failed).toBe(true);
  });

  it('known bad: with x-skip-cow=on (no copy-on-write from the backing) the property fails', async () => {
    const row = ROWS[3]!;
    const result = await fc.check(
      fc.asyncProperty(opsArb(row.cluster), async (ops) => (await runCase(row, ops, { 'x-skip-cow': true })) === undefined),
      { numRuns: 50, seed: 1402 },
    );
    expect(result.failed).toBe(true);
  });

  it('known bad: with x-skip-refcounts=on qemu-img check fails the same property', async () => {
    const row = ROWS[0]!;
    const v = await runCase(row, [{ kind: 'write', offset: 0, length: 10 * KiB, byte: 7 }], { 'x-skip-refcounts': true });
    expect(v).toMatch(/^qemu-img check:/);
  });
});
