// The verdict matrix against the real servers reproduces docs/requirements/nbd.md §3 from a fresh
// run: nbd-server 3.24's MUST failures fail, qemu 7.2's EINVAL-instead-of-EPERM/ENOSPC are
// non-strict, legitimate differences are info. Each real server also shows that its kind of check
// can fail. Two findings beyond §3 are pinned too: QEMU 7.2 drops READs in flight when NBD_CMD_DISC
// follows them in the same write, and nbdkit 1.32 aborts (assertion) on an unadvertised FAST_ZERO.
import { describe, expect, it } from 'vitest';
import '../suites.ts';
import { nbdSuite } from '../cases/nbd/index.ts';
import type { RunResult, Verdict } from '../runner/model.ts';
import { run } from '../runner/run.ts';
import { resolveTarget } from '../targets/registry.ts';

async function runAgainst(target: string): Promise<{ res: RunResult; ms: number; verdict: (id: string) => Verdict | undefined }> {
  const t0 = performance.now();
  const res = await run({ targets: [resolveTarget(target)], suites: [nbdSuite], seed: 7 });
  const ms = performance.now() - t0;
  const verdict = (id: string) => res.results.find((r) => r.id === id)?.verdict;
  return { res, ms, verdict };
}

function expectVerdicts(verdict: (id: string) => Verdict | undefined, expected: Record<string, Verdict>): void {
  const got = Object.fromEntries(Object.keys(expected).map((id) => [id, verdict(id)]));
  expect(got).toEqual(expected);
}

/** Cases graded on ratios measured in the run (SHOULD): on a loaded machine any server may miss
 * them, so the matrix accepts pass or non-strict; knownbad.test.ts shows them failing. */
const MEASURED = ['nbd/write/large-write-scaling'];

/** Every case not named in `exceptions` passes, is info, or is skipped: no other fail, no harness error. */
function expectNoOtherFailures(res: RunResult, exceptions: readonly string[]): void {
  for (const id of MEASURED) expect(['pass', 'non-strict', 'skipped']).toContain(res.results.find((r) => r.id === id)?.verdict);
  const bad = res.results.filter((r) => ![...exceptions, ...MEASURED].includes(r.id) && (r.verdict === 'fail' || r.verdict === 'error' || r.verdict === 'non-strict'));
  expect(bad.map((r) => `${r.id}: ${r.verdict} ${r.reason}`)).toEqual([]);
}

const LEGIT_DIFFERENCES = {
  'nbd/transmission/zero-length-read': 'info',
  'nbd/transmission/flush-with-length': 'info',
} as const;

describe('verdict matrix against the real servers (docs/requirements/nbd.md §3)', () => {
  it('nbd-server 3.24: the five MUST failures fail, legitimate differences are info', async () => {
    const { res, ms, verdict } = await runAgainst('nbd-server');
    const fails = {
      'nbd/handshake/unknown-client-flags': 'fail', // keeps negotiating after unknown client flags
      'nbd/handshake/list-with-data': 'fail', // ERR_INVALID, then SERVER + ACK anyway (double reply)
      'nbd/handshake/info-bad-name-length': 'fail', // stream desyncs after a bad INFO
      'nbd/handshake/info-go-consistent': 'fail', // INFO says size 0, GO says the real size
      'nbd/handshake/abort': 'fail', // closes without NBD_REP_ACK
    } as const;
    expectVerdicts(verdict, { ...fails, ...LEGIT_DIFFERENCES, 'nbd/transmission/structured-read': 'skipped', 'nbd/bounds/write-past-end': 'pass', 'nbd/write/read-only-export': 'pass', 'nbd/transmission/half-close': 'pass' });
    expect(res.results.find((r) => r.id === 'nbd/handshake/list-with-data')!.reason).toMatch(/option stream is out of sync|echoes NBD_OPT_LIST/);
    expect(res.results.find((r) => r.id === 'nbd/transmission/structured-read')!.reason).toMatch(/structured replies not supported/);
    expectNoOtherFailures(res, Object.keys(fails));
    // nbd-server forks per connection (60-400 ms each) and moves 32 MiB in ~1.5 s, and the desync
    // case waits out one timeout: it is the slow one. The 10 s budget holds for the other targets.
    expect(ms).toBeLessThan(20_000);
  });

  for (const target of ['qemu-nbd', 'qemu-storage-daemon']) {
    it(`${target} 7.2: EINVAL instead of ENOSPC/EPERM is non-strict; differences are info; DISC drops reads in flight`, async () => {
      const { res, ms, verdict } = await runAgainst(target);
      const deviations = {
        'nbd/bounds/write-past-end': 'non-strict',
        'nbd/bounds/write-zeroes-past-end': 'non-strict',
        'nbd/write/read-only-export': 'non-strict',
        'nbd/transmission/disconnect': 'fail',
        // Replies to requests that complete after the client's EOF (a FUA WRITE, a 1 MiB READ)
        // are dropped, nearly always; a FLUSH is answered.
        'nbd/transmission/half-close': 'non-strict',
      } as const;
      expectVerdicts(verdict, {
        ...deviations,
        ...LEGIT_DIFFERENCES,
        'nbd/handshake/structured-reply-twice': 'info',
        'nbd/structured-read/holes': 'info',
        'nbd/handshake/unknown-client-flags': 'pass',
        'nbd/handshake/abort': 'pass',
        'nbd/handshake/list-with-data': 'pass',
        'nbd/handshake/info-go-consistent': 'pass',
        'nbd/handshake/info-bad-name-length': 'pass',
      });
      expect(res.results.find((r) => r.id === 'nbd/write/read-only-export')!.reason).toMatch(/EPERM - observed: EINVAL/);
      expect(res.results.find((r) => r.id === 'nbd/transmission/half-close')!.reason).toMatch(/half-close is delivered - observed: [0-9] of 10 delivered/);
      expect(res.results.find((r) => r.id === 'nbd/structured-read/holes')!.reason).toMatch(/OFFSET_HOLE/);
      // write-too-large: qemu may reply EINVAL and hang up (allowed above 32 MiB): pass either way.
      expectNoOtherFailures(res, Object.keys(deviations));
      expect(ms).toBeLessThan(10_000);
    });
  }

  it('nbdkit 1.32: conforms on the MUSTs; a second SR is ACKed and holes come as data (info)', async () => {
    const { res, ms, verdict } = await runAgainst('nbdkit');
    expectVerdicts(verdict, {
      ...LEGIT_DIFFERENCES,
      'nbd/handshake/structured-reply-twice': 'info',
      'nbd/structured-read/holes': 'info',
      'nbd/handshake/info-unknown-export': 'info',
      'nbd/bounds/write-past-end': 'pass',
      'nbd/write/read-only-export': 'pass',
      'nbd/transmission/half-close': 'pass',
      // nbdkit 1.32 aborts on an assertion (backend_zero: c->can_fast_zero == 1) instead of EINVAL;
      // the runner notices the dead server, says so, and restarts it for the next cases.
      'nbd/write/fast-zero-unadvertised': 'non-strict',
    });
    expect(res.results.find((r) => r.id === 'nbd/structured-read/holes')!.reason).toMatch(/as data/);
    const crash = res.results.find((r) => r.id === 'nbd/write/fast-zero-unadvertised')!;
    expect(crash.observations.join(' ')).toMatch(/server process died.*SIGABRT/);
    // nbdkit 1.32 sometimes drops a READ in flight when DISC follows it (timing-dependent): either verdict.
    expect(['pass', 'fail']).toContain(verdict('nbd/transmission/disconnect'));
    expectNoOtherFailures(res, ['nbd/write/fast-zero-unadvertised', 'nbd/transmission/disconnect']);
    expect(ms).toBeLessThan(10_000);
  });

  it('nbdkit-policy (512/4096/1M enforced, read errors injected): A18, C52 and D58 are exercised and pass', async () => {
    const { res, ms, verdict } = await runAgainst('nbdkit-policy');
    expectVerdicts(verdict, {
      'nbd/handshake/block-size-valid': 'pass',
      'nbd/bounds/unaligned-min-block': 'pass',
      'nbd/bounds/read-too-large': 'pass',
      'nbd/structured-read/error-midway': 'pass',
      'nbd/structured-read/coverage': 'pass',
    });
    expect(res.results.find((r) => r.id === 'nbd/handshake/block-size-valid')!.observations.join(' ')).toMatch(/512 \/ 4096 \/ 1048576/);
    expect(res.results.find((r) => r.id === 'nbd/structured-read/error-midway')!.observations.join(' ')).toMatch(/error 5/);
    expectNoOtherFailures(res, ['nbd/write/fast-zero-unadvertised', 'nbd/transmission/disconnect']);
    expect(ms).toBeLessThan(10_000);
  });
});
