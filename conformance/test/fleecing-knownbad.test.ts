// Every fleecing check is shown failing on a known-bad target (docs/design.md "Known-bad variants"): reference-racy (the
// unserialised legacy graph, docs/requirements/qemu-fleecing.md §3) for the snapshot invariant - found within
// 30 s, with a trace that `fleece replay` reproduces - and mutants of the qemu target for the
// rest: the snapshot export replaced by the live one, the bitmap dropped, discard=ignore (§6 B8),
// the on-cbw-error policy flipped.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { findFlavor, mutantFlavor, type FleeceConfig } from '../fleecing/targets.ts';
import { runFleecing } from '../fleecing/run.ts';
import { readTrace, replayTrace } from '../fleecing/trace.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const traces = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-traces-'));
process.env.FLEECE_TRACE_DIR = traces;
afterAll(() => fs.rmSync(traces, { recursive: true, force: true }));

describe('reference-racy: the seed race on a real wire', () => {
  it('fails with a snapshot read that returned post-snapshot data, within 30 s, with a trace that replays', async () => {
    const t0 = Date.now();
    const result = await runFleecing([findFlavor('reference-racy')!], { filter: ['fleecing/race/delayed-source'], seed: 3 });
    const r = result.results[0]!;
    expect(r.verdict).toBe('fail');
    expect(r.reason).toMatch(/^MUST: No snapshot read ever observes post-snapshot data/);
    expect(r.reason).toMatch(/snapshot read of \[0x[0-9a-f]+,\+0x[0-9a-f]+\) on connection \d+ .* returned \d+ byte\(s\) that differ from the snapshot.*that is post-snapshot data, written by live write #\d+/);
    const found = r.observations.find((o) => o.startsWith('found after '))!;
    expect(Number(/found after (\d+) ms/.exec(found)![1])).toBeLessThan(30_000);
    expect(Date.now() - t0).toBeLessThan(60_000);

    const file = /wire trace: (\S+\.json)/.exec(found)![1]!;
    const trace = readTrace(file);
    expect(trace.target).toBe('reference-racy');
    expect(trace.violations[0]!.kind).toBe('post-snapshot');
    expect(trace.wire.length).toBeGreaterThan(0);
    expect(trace.records.some((x) => x.kind === 'read')).toBe(true);

    // The replay re-judges: it reproduces on reference-racy...
    const again = await replayTrace(trace, findFlavor('reference-racy')!, { attempts: 5 });
    expect(again.some((a) => a.violations.some((v) => v.kind === 'post-snapshot'))).toBe(true);
    // ...and the same schedule passes on the serialised legacy graph.
    const fixed = await replayTrace(trace, findFlavor('reference-legacy')!, { attempts: 1 });
    expect(fixed[0]!.violations).toEqual([]);

    // The CLI: exit 1 when the violation reproduced.
    const cli = await new Promise<{ code: number; out: string }>((resolve) => {
      execFile(process.execPath, [path.join(REPO, 'bin/fleece.mjs'), 'replay', file, '--attempts', '5'], { cwd: REPO }, (e, stdout, stderr) => {
        resolve({ code: e ? ((e as { code?: number }).code ?? -1) : 0, out: stdout + stderr });
      });
    });
    expect(cli.out).toMatch(/recorded failure: snapshot read of/);
    expect(cli.code, cli.out).toBe(1);
    expect(cli.out).toMatch(/FAIL: the recorded violation reproduced/);
  }, 90_000);
});

describe('every other fleecing check fails on a known-bad qemu target', () => {
  const qemu = findFlavor('qemu')!;
  const verdicts = async (flavor: ReturnType<typeof mutantFlavor>, filter: string[]) => {
    const res = await runFleecing([flavor], { filter, seed: 5 });
    return new Map(res.results.map((r) => [r.id, r]));
  };

  it('snapshot export = live export: image-fleecing and the model-based run fail', async () => {
    const by = await verdicts(mutantFlavor(qemu, 'snapshot-is-live', { snapshotIsLive: true }), ['fleecing/image-fleecing', 'fleecing/model/concurrent']);
    const img = by.get('fleecing/image-fleecing/scenario')!;
    expect(img.verdict).toBe('fail');
    expect(img.checks.filter((c) => !c.ok).map((c) => c.what)).toEqual(
      expect.arrayContaining([expect.stringMatching(/NBD_FLAG_READ_ONLY/), expect.stringMatching(/after the guest writes: snapshot read/)]),
    );
    const model = by.get('fleecing/model/concurrent')!;
    expect(model.verdict).toBe('fail');
    expect(model.reason).toMatch(/post-snapshot data, written by live (write|write-zeroes|trim) #\d+/);
  }, 60_000);

  it('bitmap dropped: a clean cluster reads the guest data', async () => {
    const by = await verdicts(mutantFlavor(qemu, 'no-bitmap', { config: (c: FleeceConfig) => ({ ...c, bitmap: false }) }), ['fleecing/bitmap']);
    const r = by.get('fleecing/bitmap/clean-clusters')!;
    expect(r.verdict).toBe('fail');
    expect(r.reason).toMatch(/never returns the guest's data|outside the bitmap fails/);
  }, 60_000);

  it('snapshot-access at discard=ignore (B8): the aligned discard leaves the cluster readable', async () => {
    const by = await verdicts(mutantFlavor(qemu, 'discard-ignored', { config: (c: FleeceConfig) => ({ ...c, discardIgnored: true }) }), ['fleecing/discard/aligned']);
    const r = by.get('fleecing/discard/aligned')!;
    expect(r.verdict).toBe('fail');
    expect(r.reason).toMatch(/no longer readable/);
  }, 60_000);

  it('on-cbw-error policy flipped: both policy cases fail', async () => {
    const flip = mutantFlavor(qemu, 'policy-flipped', {
      config: (c: FleeceConfig) => (c.cbwError ? { ...c, cbwError: c.cbwError === 'break-snapshot' ? 'break-guest-write' : 'break-snapshot' } : c),
    });
    const by = await verdicts(flip, ['fleecing/cbw-error']);
    expect(by.get('fleecing/cbw-error/break-guest-write')!.reason).toMatch(/the guest write whose copy-before-write failed fails/);
    expect(by.get('fleecing/cbw-error/break-snapshot')!.reason).toMatch(/succeeds although its copy-before-write failed/);
  }, 60_000);
});

describe('a fleecing check that only the reference can fail: its UNSAFE x- options', () => {
  it('copy-before-write x-no-copy-reset: after a snapshot discard the guest write still copies the cluster into the temp, and discard/aligned sees it there', async () => {
    const bad = mutantFlavor(findFlavor('reference')!, 'no-copy-reset', { config: (c: FleeceConfig) => ({ ...c, noCopyReset: true }) });
    const res = await runFleecing([bad], { filter: ['fleecing/discard/aligned'], seed: 5 });
    const r = res.results.find((x) => x.id === 'fleecing/discard/aligned')!;
    expect(r.verdict).toBe('fail');
    expect(r.checks.filter((c) => !c.ok).map((c) => c.what)).toEqual([expect.stringMatching(/copies nothing into the temp/)]);
    const good = await runFleecing([findFlavor('reference')!], { filter: ['fleecing/discard/aligned'], seed: 5 });
    expect(good.results.find((x) => x.id === 'fleecing/discard/aligned')!.verdict).toBe('pass');
  }, 60_000);

  it("blockdev-backup x-no-job-progress: the legacy graph's backup job reports offset 0 after six clusters were copied, and image-fleecing sees it in query-block-jobs", async () => {
    const bad = mutantFlavor(findFlavor('reference-legacy')!, 'no-job-progress', { config: (c: FleeceConfig) => ({ ...c, noJobProgress: true }) });
    const res = await runFleecing([bad], { filter: ['fleecing/image-fleecing'], seed: 5 });
    const r = res.results.find((x) => x.id === 'fleecing/image-fleecing/scenario')!;
    expect(r.verdict).toBe('fail');
    expect(r.checks.filter((c) => !c.ok).map((c) => `${c.what} / ${c.observed}`)).toEqual([expect.stringMatching(/backup job's offset is the bytes copied .* 393216 .* \/ offset 0, len 67108864$/)]);
    const good = await runFleecing([findFlavor('reference-legacy')!], { filter: ['fleecing/image-fleecing'], seed: 5 });
    expect(good.results.find((x) => x.id === 'fleecing/image-fleecing/scenario')!.verdict).toBe('pass');
  }, 60_000);

  it('copy-before-write x-copy-error-eio: a temp out of space (ENOSPC) reaches the guest as EIO under break-guest-write, and break-guest-write-enospc fails on it', async () => {
    const id = 'fleecing/cbw-error/break-guest-write-enospc';
    const bad = mutantFlavor(findFlavor('reference')!, 'copy-error-eio', { config: (c: FleeceConfig) => ({ ...c, copyErrorEio: true }) });
    const res = await runFleecing([bad], { filter: [id], seed: 5 });
    const r = res.results.find((x) => x.id === id)!;
    expect(r.verdict).toBe('fail');
    expect(r.checks.filter((c) => !c.ok).map((c) => `${c.what} / ${c.observed}`)).toEqual([expect.stringMatching(/with ENOSPC, the target's own error passed on .* \/ EIO$/)]);
    const good = await runFleecing([findFlavor('reference')!], { filter: [id], seed: 5 });
    expect(good.results.find((x) => x.id === id)!.verdict).toBe('pass');
  }, 60_000);
});
