// The seed's race (docs/requirements/qemu-fleecing.md §3, B0), reproduced deterministically: a snapshot read is
// parked at a gate right after it decided to read the source; the guest then writes the same
// cluster. Pre-3.0 (the unsafe x-unserialized-target-writes option) the guest write lands and
// the parked read returns post-snapshot data; with serialising target writes the copy waits for
// the reader; on the modern graph the guest write waits for the frozen read.
import { describe, expect, it } from 'vitest';
import { KiB, legacyGraph, MiB, modernGraph, pattern, type FleecingSetup } from './support/graphs.ts';
import { eventually } from './support/wait.ts';
import * as path from 'node:path';
import { afterAll } from 'vitest';
import type { BlockNode } from '../src/block/index.ts';
import { runOk, tmpDir } from './nbd-helpers.ts';

const OLD = 0x11;
const NEW = 0x22;
const prefill = async (d: { write(o: number, b: Buffer): Promise<void> }) => d.write(0, pattern(OLD, 64 * KiB));

type Outcome = { guestWrite: 'landed-before-read' | 'waited-for-read'; readByte: number };

/** Runs the seed's schedule; `blocked` tells when the guest write is provably waiting. */
async function seedSchedule(setup: FleecingSetup, blocked: () => boolean): Promise<Outcome> {
  const gate = setup.source.hold('read');
  const read = setup.fleece.read(0, 64 * KiB); // step 1: decides to read the source, parks
  await gate.arrived;
  let landed = false;
  const write = setup.live.write(0, pattern(NEW, 64 * KiB)).then(() => { landed = true; }); // steps 2-5
  await eventually(() => landed || blocked(), 'guest write to land or to wait for the reader');
  const guestWrite = landed ? 'landed-before-read' : 'waited-for-read';
  gate.release(); // step 6: the parked read reaches the source
  const data = await read;
  await write;
  return { guestWrite, readByte: data[0]! };
}

const tempWaitsForReader = (setup: FleecingSetup) => () =>
  (setup.graph.node('temp') as BlockNode).tracked.inFlight().some((r) => r.serialising && r.waitingFor !== undefined);

describe('the 2018 fleecing race, deterministic schedule', () => {
  it('legacy graph with x-unserialized-target-writes: the snapshot read returns post-snapshot data', async () => {
    const setup = await legacyGraph({ size: MiB, unsafe: true, prefill });
    const out = await seedSchedule(setup, tempWaitsForReader(setup));
    expect(out).toEqual({ guestWrite: 'landed-before-read', readByte: NEW });
  });

  it('legacy graph (serialising target writes, QEMU 3.0): the copy waits, the read returns snapshot data', async () => {
    const setup = await legacyGraph({ size: MiB, prefill });
    const out = await seedSchedule(setup, tempWaitsForReader(setup));
    expect(out).toEqual({ guestWrite: 'waited-for-read', readByte: OLD });
    // And afterwards the copy is in temp: a new snapshot read finds it allocated there.
    expect((await setup.fleece.read(0, 64 * KiB))[0]).toBe(OLD);
    expect((await setup.live.read(0, 64 * KiB))[0]).toBe(NEW);
  });

  // The same two schedules with the temp image as QEMU's docs have it: qcow2, made by qemu-img.
  const dir = tmpDir('qcow2-race-');
  afterAll(() => dir.cleanup());
  const qcow2Temp = async (name: string): Promise<Record<string, unknown>> => {
    const filename = path.join(dir.dir, `${name}.qcow2`);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', filename, String(MiB)]);
    return { driver: 'qcow2', file: { driver: 'file', filename } };
  };

  it('legacy graph, qcow2 temp, x-unserialized-target-writes: post-snapshot data (qcow2 drops its lock before the backing read)', async () => {
    const setup = await legacyGraph({ size: MiB, unsafe: true, prefill, temp: await qcow2Temp('racy') });
    const out = await seedSchedule(setup, tempWaitsForReader(setup));
    expect(out).toEqual({ guestWrite: 'landed-before-read', readByte: NEW });
  });

  it('legacy graph, qcow2 temp, serialising target writes: snapshot data', async () => {
    const setup = await legacyGraph({ size: MiB, prefill, temp: await qcow2Temp('safe') });
    const out = await seedSchedule(setup, tempWaitsForReader(setup));
    expect(out).toEqual({ guestWrite: 'waited-for-read', readByte: OLD });
    expect((await setup.fleece.read(0, 64 * KiB))[0]).toBe(OLD);
    expect((await setup.live.read(0, 64 * KiB))[0]).toBe(NEW);
  });

  it('modern graph (cbw + snapshot-access): the guest write waits for the frozen read', async () => {
    const setup = await modernGraph({ size: MiB, prefill });
    const out = await seedSchedule(setup, () => setup.cbw.doneBitmap.get(0) && setup.cbw.frozenReadReqs.entries().length > 0);
    expect(out).toEqual({ guestWrite: 'waited-for-read', readByte: OLD });
    expect((await setup.fleece.read(0, 64 * KiB))[0]).toBe(OLD);
  });
});
