// Fleecing suite (docs/requirements/qemu-fleecing.md §4-§6): reference, reference-legacy, qemu and qemu-legacy pass every fleecing case that
// applies to their graph (the modern-only cases - bitmap, snapshot discard, on-cbw-error - are
// skipped on the legacy graph with the reason; the reference has no cbw bitmap, see the reason);
// qemu-storage-daemon 7.2 fails the unaligned snapshot-discard case because it aborts (§6 B1).
// reference-hbitmap-status (the reference with the UNSAFE copy-before-write option
// x-hbitmap-status-bug, QEMU 7.2's hbitmap_status) is known bad: the straddle checks are shown
// failing on it, as on QEMU 7.2 (fleecing-qemu.test.ts).
import { afterAll, describe, expect, it } from 'vitest';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { findFlavor } from '../fleecing/targets.ts';
import { runFleecing } from '../fleecing/run.ts';
import type { CaseResult } from '../runner/model.ts';
import { expectStraddleReadsFail } from './helpers/straddle.ts';

const traces = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-traces-'));
process.env.FLEECE_TRACE_DIR = traces;
afterAll(() => fs.rmSync(traces, { recursive: true, force: true }));

const line = (r: CaseResult) => `${r.target} ${r.id}: ${r.verdict} ${r.reason}`;

async function suite(name: string) {
  const flavor = findFlavor(name)!;
  const result = await runFleecing([flavor], { seed: 7 });
  const by = new Map(result.results.map((r) => [r.id, r]));
  return { result, by };
}

describe('reference fleecing targets pass every fleecing case', () => {
  for (const name of ['reference', 'reference-legacy']) {
    it(`${name}`, async () => {
      const { result, by } = await suite(name);
      const bad = result.results.filter((r) => r.verdict === 'fail' || r.verdict === 'error' || r.verdict === 'non-strict');
      expect(bad.map(line)).toEqual([]);
      expect(by.get('fleecing/image-fleecing/scenario')?.verdict).toBe('pass');
      expect(by.get('fleecing/model/concurrent')?.verdict).toBe('pass');
      expect(by.get('fleecing/race/delayed-source')?.verdict).toBe('pass');
      expect(by.get('fleecing/race/unaligned-write-zeroes')?.verdict).toBe('pass');
      // Findings F1 and F3 (QEMU 7.2 fails these, fleecing-qemu.test.ts): a snapshot read or
      // block status straddling copied and uncopied clusters, with structured replies, with DF,
      // and on a connection without structured replies. Both graphs can build them.
      for (const id of ['fleecing/straddle/write-zeroes', 'fleecing/straddle/df-read', 'fleecing/straddle/simple-reply-read']) {
        const r = by.get(id)!;
        expect(r.verdict, `${id}: ${r.reason}`).toBe('pass');
      }
      expect(by.get('fleecing/straddle/write-zeroes')!.observations.join('\n')).toMatch(/snapshot block status of \[0x1b000,\+0x1c000\): /);
      expect(by.get('fleecing/straddle/df-read')!.observations.join('\n')).toMatch(/with NBD_CMD_FLAG_DF after the guest write: NBD_REPLY_TYPE_OFFSET_DATA \[0x8000,\+0x10000\)$/m);
      expect(by.get('fleecing/straddle/simple-reply-read')!.observations.join('\n')).toMatch(/without structured replies after the guest write: a simple reply/);
      if (name === 'reference') {
        for (const id of ['fleecing/bitmap/clean-clusters', 'fleecing/model/zero-trim', 'fleecing/discard/aligned', 'fleecing/discard/unaligned', 'fleecing/cbw-error/break-guest-write', 'fleecing/cbw-error/break-snapshot']) expect(by.get(id)?.verdict, id).toBe('pass');
        // Finding F2's case: the reference holds a live write sent after the snapshot broke until
        // the snapshot read already reading the source is done, so the read returns the
        // snapshot (QEMU 7.2 fails this case, fleecing-qemu.test.ts).
        const f2 = by.get('fleecing/cbw-error/break-snapshot-inflight-read')!;
        expect(f2.verdict, f2.reason).toBe('pass');
        expect(f2.observations.join('\n')).toMatch(/attempt [123] of at most 3: the snapshot read of X, sent [\d.]+ ms before the break .* returned the snapshot; the write to X was held until the read was done/);
      }
      for (const r of result.results.filter((x) => x.verdict === 'skipped')) expect(r.reason).toMatch(/not applicable/);
    }, 120_000);
  }

});

describe('reference-hbitmap-status (known bad: QEMU 7.2 hbitmap_status on the reference, findings F1/F3)', () => {
  it('fails the three straddle cases, saying what the snapshot read returned and why; fails no case whose snapshot reads cannot span copied and uncopied clusters', async () => {
    const { result, by } = await suite('reference-hbitmap-status');
    // Read after one live request, deterministic: the copied prefix of the straddling read is
    // served from the source, which holds the guest's data.
    const straddle = ['fleecing/straddle/write-zeroes', 'fleecing/straddle/df-read', 'fleecing/straddle/simple-reply-read'];
    // Randomised cases with multi-cluster snapshot reads next to live writes: they met a
    // straddling read on each of 5 runs with seed 7, but whether one does depends on timing, so
    // they may fail (with the reason below) or pass, never anything else. Unlike QEMU's NBD server,
    // which reads a structured READ without DF extent by extent (each extent inside the copied
    // prefix, so right), fleece serve reads every READ whole and sends one OFFSET_DATA chunk, so
    // every straddling read is exposed here, not only DF and simple-reply ones.
    const concurrent = ['fleecing/model/concurrent', 'fleecing/model/zero-trim', 'fleecing/race/delayed-source', 'fleecing/race/unaligned-write-zeroes'];
    const failing = [...straddle, ...concurrent];
    expect(result.results.filter((r) => r.verdict !== 'pass' && !failing.includes(r.id)).map(line)).toEqual([]);
    // The others pass: the scenario, bitmap (no straddling read), discard and on-cbw-error cases.
    for (const id of ['fleecing/image-fleecing/scenario', 'fleecing/bitmap/clean-clusters', 'fleecing/discard/aligned', 'fleecing/discard/unaligned', 'fleecing/cbw-error/break-guest-write', 'fleecing/cbw-error/break-snapshot', 'fleecing/cbw-error/break-snapshot-inflight-read']) {
      expect(by.get(id)?.verdict, `${id}: ${by.get(id)?.reason}`).toBe('pass');
    }
    for (const id of concurrent) {
      const r = by.get(id)!;
      expect(['pass', 'fail'], `${id}: ${r.reason}`).toContain(r.verdict);
      if (r.verdict === 'fail') expect(r.reason).toMatch(/^MUST: No snapshot read ever observes post-snapshot data.* - observed: snapshot read of \[0x[0-9a-f]+,\+0x[0-9a-f]+\) on connection \d+ .* returned \d+ byte\(s\) that differ from the snapshot, .*inside an NBD_REPLY_TYPE_OFFSET_DATA chunk .*that is post-snapshot data, written by live (write|write-zeroes|trim) #\d+/);
    }
    // (a) After write-zeroes: the zeroes in a data chunk (QEMU gives a HOLE chunk: its source
    // is qcow2 and its server reads per extent). Block status passes here: the reference's
    // file source reports data everywhere, so the source's answer for the prefix is not ZERO.
    const sz = by.get('fleecing/straddle/write-zeroes')!;
    expect(sz.verdict, sz.reason).toBe('fail');
    expect(sz.reason).toMatch(/^MUST: No snapshot read ever observes post-snapshot data.*: a snapshot read that starts in clusters a live write-zeroes copied and ends in one nobody copied returns the snapshot/);
    expect(sz.reason).toMatch(/snapshot read of \[0x1b000,\+0x1c000\) on connection \d+ .* returned 20480 byte\(s\) that differ from the snapshot, the first at 0x1b000 \(snapshot byte 0x70, got 0x0, inside an NBD_REPLY_TYPE_OFFSET_DATA chunk \[0x1b000,\+0x1c000\)\): that is post-snapshot data, written by live write-zeroes #1 of \[0xae00,\+0x1b600\)/);
    expect(sz.reason).toMatch(/the read starts inside \[0x0,\+0x30000\), the 3 clusters that live write-zeroes #1 had copied to the temp image .* and ends in \[0x30000,\+0x10000\), which no live request had touched; the guest had already changed the read's first 0x15000 bytes, \[0x1b000,\+0x15000\)/);
    expect(sz.checks.find((c) => /snapshot block status over the same straddling range/.test(c.what))!.ok).toBe(true);
    // (b), (c) After a plain write: the guest's bytes, with DF and in a simple reply, exactly
    // as on QEMU 7.2.
    expectStraddleReadsFail(by);
  }, 120_000);
});
