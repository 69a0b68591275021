// Fleecing suite (docs/requirements/qemu-fleecing.md §4-§6): reference, reference-legacy, qemu and qemu-legacy pass every fleecing case that
// applies to their graph (the modern-only cases - bitmap, snapshot discard, on-cbw-error - are
// skipped on the legacy graph with the reason; the reference has no cbw bitmap, see the reason);
// qemu-storage-daemon 7.2 fails the unaligned snapshot-discard case because it aborts (§6 B1),
// the break-snapshot in-flight read case because a snapshot read returns post-snapshot data
// (finding F2: cbw_do_copy_before_write returns early once the snapshot is broken), and the three
// straddle cases, deterministically (findings F1 and F3: hbitmap_status reports the copied prefix
// of a snapshot range as not copied, so cbw serves it from the source the guest already changed).
import { afterAll, describe, expect, it } from 'vitest';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { externalFlavor, findFlavor } from '../fleecing/targets.ts';
import { formatAddress } from '../nbd/client.ts';
import { runFleecing } from '../fleecing/run.ts';
import { replay } from '../fleecing/replay.ts';
import { readTrace } from '../fleecing/trace.ts';
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

describe('QEMU fleecing targets: every fleecing case passes but the known QEMU bugs', () => {
  it('qemu (qemu-storage-daemon 7.2, cbw + snapshot-access): all pass but B1 (unaligned snapshot discard aborts the daemon), F1 (hole over snapshot data after unaligned write-zeroes), F2 (break-snapshot lets a write overtake a snapshot read in flight) and F3 (DF and simple-reply snapshot reads return post-snapshot data)', async () => {
    const { result, by } = await suite('qemu');
    const straddle = ['fleecing/straddle/write-zeroes', 'fleecing/straddle/df-read', 'fleecing/straddle/simple-reply-read'];
    const findings = ['fleecing/discard/unaligned', 'fleecing/race/unaligned-write-zeroes', 'fleecing/model/zero-trim', 'fleecing/cbw-error/break-snapshot-inflight-read', ...straddle];
    const bad = result.results.filter((r) => r.verdict !== 'pass' && !findings.includes(r.id));
    expect(bad.map(line)).toEqual([]);
    // Finding F1 (this suite): a snapshot read racing two overlapping unaligned write-zeroes on
    // the live export gets an NBD_REPLY_TYPE_OFFSET_HOLE chunk over snapshot data, on the first
    // or second cluster tried. The legacy graph and the reference pass the same case.
    const f1reduced = by.get('fleecing/race/unaligned-write-zeroes')!;
    expect(f1reduced.verdict).toBe('fail');
    expect(f1reduced.reason).toMatch(/snapshot read of .* returned \d+ byte\(s\) that differ from the snapshot, .*got 0x0, inside an NBD_REPLY_TYPE_OFFSET_HOLE chunk.*written by live write-zeroes #\d+/);
    // Finding F1 (this suite, not in docs/requirements): under concurrent write-zeroes/trims on
    // the live export, QEMU 7.2 sometimes answers a snapshot read with a HOLE chunk (or a ZERO
    // extent) over snapshot data. It is a race, so this case may pass on a given seed; when it
    // fails it must be for that reason, said in plain words.
    // The random runs that first found it fail too when a seed meets the race.
    const f1 = by.get('fleecing/model/zero-trim')!;
    if (f1.verdict !== 'pass') {
      expect(f1.verdict).toBe('fail');
      expect(f1.reason).toMatch(/post-snapshot data, written by live (write-zeroes|trim) #\d+|reads as zeroes \(NBD_STATE_ZERO\), but the snapshot holds/);
    }
    // Finding F2 (predicted by spec model s4-qemu-7.1-early-return, here on a running QEMU): with
    // on-cbw-error=break-snapshot, a snapshot read that was reading the source when the snapshot
    // broke returns the data of a live write sent after the break, because
    // cbw_do_copy_before_write returns early once snapshot_error is set, without waiting for
    // the frozen reads. The reference holds that write (fleecing-reference.test.ts).
    const f2 = by.get('fleecing/cbw-error/break-snapshot-inflight-read')!;
    expect(f2.verdict, f2.reason).toBe('fail');
    expect(f2.reason).toMatch(/^MUST: No snapshot read ever observes post-snapshot data.*also for a snapshot read in flight when the snapshot breaks/);
    expect(f2.reason).toMatch(/snapshot read of \[0x100000,\+0x10000\) on connection \d+ .* returned 65536 byte\(s\) that differ from the snapshot, the first at 0x100000 \(snapshot byte 0xd5, got 0x83.*that is post-snapshot data, written by live write #2 of \[0x100000,\+0x10000\)/);
    expect(f2.reason).toMatch(/live write #1 of \[0x0,\+0x10000\) .*whose copy-before-write failed \(injected EIO\), broke the snapshot; the snapshot read of \[0x100000,\+0x10000\) was sent [\d.]+ ms before that.*the live write did not wait for the snapshot read in flight on the source/);
    expect(f2.reason).toMatch(/attempt [123] of at most 3/);
    // Findings F1 and F3 without concurrency (QEMU 7.2's hbitmap_status: a range that starts in
    // a copied cluster and reaches an uncopied one is reported "not copied" for its copied
    // prefix, so cbw reads that prefix from the source, which the guest already changed). One
    // live request, then one snapshot request that straddles the copied/uncopied boundary.
    // (a) After write-zeroes: a hole chunk over snapshot data, and block status says ZERO.
    const sz = by.get('fleecing/straddle/write-zeroes')!;
    expect(sz.verdict, sz.reason).toBe('fail');
    expect(sz.reason).toMatch(/^MUST: No snapshot read ever observes post-snapshot data.*: a snapshot read that starts in clusters a live write-zeroes copied and ends in one nobody copied returns the snapshot/);
    expect(sz.reason).toMatch(/snapshot read of \[0x1b000,\+0x1c000\) on connection \d+ .* returned 20480 byte\(s\) that differ from the snapshot, the first at 0x1b000 \(snapshot byte 0x70, got 0x0, inside an NBD_REPLY_TYPE_OFFSET_HOLE chunk \[0x1b000,\+0x5000\)\): that is post-snapshot data, written by live write-zeroes #1 of \[0xae00,\+0x1b600\)/);
    expect(sz.reason).toMatch(/the read starts inside \[0x0,\+0x30000\), the 3 clusters that live write-zeroes #1 had copied to the temp image .* and ends in \[0x30000,\+0x10000\), which no live request had touched/);
    const szStatus = sz.checks.find((c) => /snapshot block status over the same straddling range/.test(c.what))!;
    expect(szStatus.ok).toBe(false);
    expect(szStatus.observed).toMatch(/snapshot block-status of \[0x1b000,\+0x1c000\) .* says \[0x1b000,\+0x5000\) reads as zeroes \(NBD_STATE_ZERO\), but the snapshot holds 0x70 at 0x1b000.*the zeroes are the guest's, from live write-zeroes #1/);
    // (b), (c) After a plain write: the guest's bytes, with DF (one data chunk) and in a simple
    // reply (no structured replies, as the Linux kernel NBD client).
    expectStraddleReadsFail(by);
    const b1 = by.get('fleecing/discard/unaligned')!;
    expect(b1.verdict).toBe('fail');
    // In plain words: the daemon died, with which signal, on which request, and why (§6 B1).
    expect(b1.reason).toMatch(/the server process died \(signal SIGABRT\) when the snapshot export got a discard of \[0x0,\+0x8000\), which is not cluster-aligned/);
    expect(b1.reason).toMatch(/§6 B1/);
    expect(b1.reason).toMatch(/hbitmap_reset: Assertion/);
    // The failing run left a trace; replaying it reproduces the abort on qemu, not on the reference.
    const file = /wire trace: (\S+\.json)/.exec(b1.observations.join('\n'))![1]!;
    const trace = readTrace(file);
    expect(trace.mode).toBe('case');
    expect(trace.config).toMatchObject({ content: 'iotest', snapshotDiscard: true });
    expect(trace.wire.some((w) => /TRIM|TRIM/.test(w.note))).toBe(true);
    const again = await replay(trace, findFlavor('qemu')!);
    expect(again[0]!.violations.map((v) => v.text).join('\n')).toMatch(/signal SIGABRT/);
    const ref = await replay(trace, findFlavor('reference')!);
    expect(ref[0]!.violations).toEqual([]);
  }, 120_000);

  it('qemu-legacy (blockdev-backup sync=none over QMP)', async () => {
    const { result, by } = await suite('qemu-legacy');
    expect(result.results.filter((r) => r.verdict !== 'pass' && r.verdict !== 'skipped').map(line)).toEqual([]);
    for (const id of ['fleecing/image-fleecing/scenario', 'fleecing/model/concurrent', 'fleecing/model/zero-trim', 'fleecing/race/delayed-source', 'fleecing/race/unaligned-write-zeroes', 'fleecing/straddle/write-zeroes', 'fleecing/straddle/df-read', 'fleecing/straddle/simple-reply-read']) expect(by.get(id)?.verdict, id).toBe('pass');
  }, 120_000);

  it('--live URI --snapshot URI: a setup the user runs (here a qemu-storage-daemon §5.1 setup)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-external-'));
    const setup = await findFlavor('qemu')!.launch({ content: 'dense' }, dir, 10_000);
    try {
      const uri = (e: typeof setup.live) => `nbd+unix:///${e.name}?socket=${formatAddress(e.address).replace(/^unix:/, '')}`;
      const flavor = externalFlavor(uri(setup.live), uri(setup.snapshot));
      const result = await runFleecing([flavor], { filter: ['fleecing/model/concurrent', 'fleecing/image-fleecing', 'fleecing/discard/aligned'] });
      const by = new Map(result.results.map((r) => [r.id, r]));
      expect(by.get('fleecing/model/concurrent')!.verdict, by.get('fleecing/model/concurrent')!.reason).toBe('pass');
      expect(by.get('fleecing/image-fleecing/scenario')!.verdict).toBe('skipped');
      expect(by.get('fleecing/discard/aligned')!.reason).toMatch(/cannot reconfigure a setup it did not start/);
    } finally {
      await setup.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
