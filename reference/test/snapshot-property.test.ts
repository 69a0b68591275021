// Property: on every fleecing graph, whatever the guest writes and however the requests
// interleave at the source, every snapshot read equals the snapshot image (docs/design.md's one
// property). fast-check's scheduler decides the order in which requests reach the source; the
// same property must FAIL on the legacy graph with the unsafe unserialised option.
import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { firstDiff, KiB, legacyGraph, MiB, modernGraph, type FleecingSetup } from './support/graphs.ts';

const CLUSTER = 64 * KiB;
const SIZE = MiB;
/** Ops land in the first 4 clusters, so they collide often. */
const SPAN = 4 * CLUSTER;

type Op =
  | { kind: 'write'; offset: number; bytes: number; byte: number }
  | { kind: 'zero'; offset: number; bytes: number }
  | { kind: 'read'; offset: number; bytes: number };

const range = fc
  .tuple(fc.integer({ min: 0, max: SPAN / (16 * KiB) - 1 }), fc.integer({ min: 1, max: 6 }))
  .map(([start, n]) => ({ offset: start * 16 * KiB, bytes: Math.min(n * 16 * KiB, SPAN - start * 16 * KiB) }));

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.tuple(range, fc.integer({ min: 0x80, max: 0xff })).map(([r, byte]) => ({ kind: 'write' as const, ...r, byte })),
  range.map((r) => ({ kind: 'zero' as const, ...r })),
  range.map((r) => ({ kind: 'read' as const, ...r })),
  range.map((r) => ({ kind: 'read' as const, ...r })),
);
const batchesArb = fc.array(fc.array(opArb, { minLength: 1, maxLength: 5 }), { minLength: 1, maxLength: 4 });

/** Snapshot image: cluster c holds byte c+1, so any mix-up shows. */
function image(): Buffer {
  const b = Buffer.alloc(SIZE);
  for (let c = 0; c < SIZE / CLUSTER; c++) b.fill(c + 1, c * CLUSTER, (c + 1) * CLUSTER);
  return b;
}
const prefill = async (d: { write(o: number, b: Buffer): Promise<void> }) => d.write(0, image());

async function runBatches(setup: FleecingSetup, s: fc.Scheduler, batches: Op[][]): Promise<string | undefined> {
  const snap = image();
  setup.source.hook = (op, off, n) => s.schedule(Promise.resolve(), `${op} source @${off}+${n}`);
  let violation: string | undefined;
  for (const batch of batches) {
    const ps = batch.map(async (op) => {
      if (op.kind === 'write') await setup.live.write(op.offset, Buffer.alloc(op.bytes, op.byte));
      else if (op.kind === 'zero') await setup.live.writeZeroes(op.offset, op.bytes);
      else {
        const got = await setup.fleece.read(op.offset, op.bytes);
        const d = firstDiff(got, snap.subarray(op.offset, op.offset + op.bytes), op.offset);
        if (d) violation ??= `snapshot read [${op.offset}, +${op.bytes}) returned post-snapshot data at ${d}`;
      }
    });
    await s.waitFor(Promise.all(ps));
  }
  setup.source.hook = undefined;
  return violation;
}

const graphs: Array<[string, () => Promise<FleecingSetup>]> = [
  ['modern (cbw + snapshot-access)', () => modernGraph({ size: SIZE, prefill })],
  ['legacy (backup sync=none, serialised)', () => legacyGraph({ size: SIZE, prefill })],
];

describe('every snapshot read equals the snapshot image', () => {
  for (const [name, build] of graphs) {
    test.prop([fc.scheduler(), batchesArb], { numRuns: 60 })(name, async (s, batches) => {
      const setup = await build();
      const v = await runBatches(setup, s, batches);
      expect(v, `${v}\nschedule: ${s.report().map((t) => t.label).join(' -> ')}`).toBeUndefined();
    });
  }

  it('fails on the legacy graph with x-unserialized-target-writes (the check can fail)', async () => {
    const result = await fc.check(
      fc.asyncProperty(fc.scheduler(), batchesArb, async (s, batches) => {
        const setup = await legacyGraph({ size: SIZE, prefill, unsafe: true });
        return (await runBatches(setup, s, batches)) === undefined;
      }),
      { numRuns: 400, seed: 20181 },
    );
    expect(result.failed).toBe(true);
  });
});
