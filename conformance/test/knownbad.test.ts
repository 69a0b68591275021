// Every kind of check, seen failing on a known-bad target: the in-test fake server, conforming by
// default, with one fault at a time. (The real servers' deviations are in verdicts.test.ts.)
import { describe, expect, it } from 'vitest';
import { nbdSuite } from '../cases/nbd/index.ts';
import type { Verdict } from '../runner/model.ts';
import { run } from '../runner/run.ts';
import { fakeTarget, type Fault } from './helpers/fake-server.ts';

async function verdictsOn(faults: Fault[], filter: string[]) {
  const res = await run({ targets: [fakeTarget(faults)], suites: [nbdSuite], filter, seed: 3, timeoutMs: filter.length ? 400 : 2000 });
  return res.results;
}

describe('known-bad targets: each fault is caught by its case', () => {
  it('the conforming fake passes every MUST and SHOULD it can exercise', async () => {
    const rs = await verdictsOn([], []);
    expect(rs.filter((r) => ['fail', 'non-strict', 'error'].includes(r.verdict)).map((r) => `${r.id}: ${r.reason}`)).toEqual([]);
    expect(rs.filter((r) => r.verdict === 'pass').length).toBeGreaterThan(40);
  });

  const table: [Fault, string, Verdict, RegExp][] = [
    ['greeting-flags', 'nbd/handshake/greeting', 'fail', /no handshake flag other than/],
    ['unknown-option-invalid', 'nbd/handshake/unknown-option', 'fail', /ERR_UNSUP/],
    ['abort-no-ack', 'nbd/handshake/abort', 'fail', /closed without a reply/],
    ['pad-after-go', 'nbd/handshake/go', 'fail', /unknown reply magic 0x00000000/],
    ['info-size-zero', 'nbd/handshake/info-go-consistent', 'fail', /INFO: size 0/],
    ['wrong-cookie', 'nbd/transmission/cookie-echo', 'fail', /matches no request in flight/],
    ['overlap-chunks', 'nbd/structured-read/coverage', 'fail', /overlaps an earlier chunk/],
    ['double-done', 'nbd/transmission/structured-done', 'fail', /matches no request in flight|covers 65536 of 65536|protocol error/],
    ['ignore-writes', 'nbd/write/read-back', 'fail', /returns the written bytes/],
    ['disc-drops-inflight', 'nbd/transmission/disconnect', 'fail', /0 of 4 answered/],
    ['enospc-as-einval', 'nbd/bounds/write-past-end', 'non-strict', /ENOSPC - observed: EINVAL/],
    ['extent-past-eof', 'nbd/block-status/extents-valid', 'fail', /does not pass the end/],
    ['zero-on-data', 'nbd/block-status/zero-reads-zero', 'fail', /reads as zeroes/],
    ['reserved-bits', 'nbd/block-status/reserved-bits', 'non-strict', /no reserved status bits/],
  ];
  for (const [fault, id, verdict, reason] of table) {
    it(`${fault} -> ${id} is ${verdict}`, async () => {
      const [r] = await verdictsOn([fault], [id]);
      expect(r?.verdict).toBe(verdict);
      expect(r?.reason).toMatch(reason);
    });
  }

  it('a protocol error carries the offending bytes in hex and their stream offset', async () => {
    const [r] = await verdictsOn(['pad-after-go'], ['nbd/handshake/go']);
    expect(r!.reason).toMatch(/stream offset \d+, bytes: 00 00 00 00/);
    expect(r!.wire.some((w) => w.note.startsWith('PROTOCOL ERROR'))).toBe(true);
  });
});
