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
  // Graded on ratios measured in the run: a loaded machine can push even the fake over them.
  const MEASURED = 'nbd/write/large-write-scaling';

  it('the conforming fake passes every MUST and SHOULD it can exercise (the measured case: pass or warn)', async () => {
    const rs = await verdictsOn([], []);
    expect(rs.filter((r) => r.id !== MEASURED && ['fail', 'non-strict', 'error'].includes(r.verdict)).map((r) => `${r.id}: ${r.reason}`)).toEqual([]);
    expect(['pass', 'non-strict']).toContain(rs.find((r) => r.id === MEASURED)?.verdict);
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
    ['list-no-ack', 'nbd/handshake/list', 'fail', /ends with NBD_REP_ACK/],
    ['starttls-tls-reqd', 'nbd/handshake/starttls-without-tls', 'fail', /ERR_TLS_REQD/],
    ['info-unknown-type-invalid', 'nbd/handshake/info-unknown-type', 'fail', /succeeds with NBD_INFO_EXPORT/],
    ['bad-block-size', 'nbd/handshake/block-size-valid', 'fail', /minimum is a power of 2/],
    ['export-name-short-padding', 'nbd/handshake/export-name', 'fail', /answers|protocol error|out of sync/],
    ['df-without-sr', 'nbd/handshake/transmission-flags', 'fail', /SEND_DF is clear without structured replies/],
    ['sr-data-accepted', 'nbd/handshake/structured-reply-with-data', 'non-strict', /ERR_INVALID - observed: NBD_REP_ACK/],
    ['meta-before-sr-ok', 'nbd/handshake/set-meta-before-structured', 'non-strict', /ERR_INVALID/],
    ['unknown-namespace-invalid', 'nbd/handshake/list-meta-unknown-namespace', 'fail', /NBD_REP_ACK only/],
    ['set-meta-keeps', 'nbd/handshake/set-meta-replaces', 'non-strict', /earlier selection was replaced/],
    ['chunks-without-sr', 'nbd/transmission/simple-replies-without-structured', 'fail', /structured replies were not negotiated/],
    ['simple-read-under-sr', 'nbd/transmission/structured-read', 'fail', /simple reply to NBD_CMD_READ after structured replies/],
    ['error-zero', 'nbd/transmission/error-chunk', 'fail', /error value 0/],
    ['unknown-cmd-ok', 'nbd/transmission/unknown-command', 'fail', /an unknown command fails/],
    ['ignore-flags', 'nbd/transmission/unknown-command-flag', 'non-strict', /unknown flag fails with EINVAL/],
    ['ignore-flags', 'nbd/transmission/flag-not-valid-for-command', 'non-strict', /REQ_ONE fails with EINVAL/],
    ['ignore-offset', 'nbd/transmission/pipelined-64', 'fail', /returns its own range/],
    ['drop-after-error', 'nbd/transmission/survives-errors', 'fail', /closed|keeps the connection open/],
    ['drop-after-error', 'nbd/bounds/read-past-end', 'fail', /still usable/],
    ['trim-past-end-ok', 'nbd/bounds/trim-past-end', 'fail', /TRIM crossing the end of the export fails/],
    ['bs-past-end-ok', 'nbd/bounds/block-status-past-end', 'fail', /BLOCK_STATUS past the end fails/],
    ['overflow-wraps', 'nbd/bounds/offset-overflow', 'fail', /overflowing READ fails|protocol error/],
    ['max-16m', 'nbd/bounds/read-32mib', 'non-strict', /succeeds with the right data/],
    ['big-read-ok', 'nbd/bounds/read-too-large', 'non-strict', /above the advertised maximum fails/],
    ['df-split', 'nbd/structured-read/df', 'fail', /at most one content chunk/],
    ['df-eoverflow', 'nbd/structured-read/df-no-eoverflow', 'fail', /no EOVERFLOW/],
    ['flush-fails', 'nbd/write/flush', 'fail', /FLUSH succeeds/],
    ['wz-noop', 'nbd/write/write-zeroes', 'fail', /reads as zeroes/],
    ['fua-rejected', 'nbd/write/fua', 'fail', /with FUA succeeds/],
    ['multi-conn-private', 'nbd/write/multi-conn', 'fail', /connection B reads the data flushed by A/],
    ['cache-hangs-up', 'nbd/write/unadvertised-command', 'non-strict', /CACHE/],
    ['two-chunks-per-context', 'nbd/block-status/one-chunk-per-context', 'fail', /second NBD_REPLY_TYPE_BLOCK_STATUS chunk/],
    ['half-close-drops', 'nbd/transmission/half-close', 'non-strict', /sent just before a half-close is delivered - observed: 0 of 10 delivered/],
    ['quadratic-writes', 'nbd/write/large-write-scaling', 'non-strict', /doubling the WRITE size .* at most triples the time - observed: [3-9]\.\d+x/],
  ];
  for (const [fault, id, verdict, reason] of table) {
    it(`${fault} -> ${id} is ${verdict}`, async () => {
      const r = (await verdictsOn([fault], [id])).find((x) => x.id === id);
      expect(r?.verdict).toBe(verdict);
      expect(r?.reason).toMatch(reason);
    });
  }

  // The case checks two things; the first to fail is its reason, so this one is found by check.
  it('reads-wait-for-writes -> nbd/write/large-write-scaling: the reader-served check fails (counted, not timed)', async () => {
    const r = (await verdictsOn(['reads-wait-for-writes'], [MEASURED])).find((x) => x.id === MEASURED)!;
    expect(r.verdict).toBe('non-strict');
    const fairness = r.checks.find((c) => /4 KiB READ on another connection is answered while the WRITEs are still arriving/.test(c.what));
    expect(fairness?.ok, JSON.stringify(r.checks)).toBe(false);
    expect(fairness?.observed).toMatch(/^[01] READs answered before the first WRITE reply/);
  });

  it('a protocol error carries the offending bytes in hex and their stream offset', async () => {
    const [r] = await verdictsOn(['pad-after-go'], ['nbd/handshake/go']);
    expect(r!.reason).toMatch(/stream offset \d+, bytes: 00 00 00 00/);
    expect(r!.wire.some((w) => w.note.startsWith('PROTOCOL ERROR'))).toBe(true);
  });
});
