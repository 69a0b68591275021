// The fleecing suite over TLS: qemu-storage-daemon's modern graph with its NBD server behind
// x509 and PSK TLS (fleecing targets qemu-tls-x509, qemu-tls-psk) gives the same verdicts as
// in plaintext (the known QEMU 7.2 findings fail, the rest pass), with every connection of the
// suite running STARTTLS first; and a setup the user runs is reachable by nbds+unix:// URIs.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { externalFlavor, findFlavor } from '../fleecing/targets.ts';
import { runFleecing } from '../fleecing/run.ts';
import { formatAddress } from '../nbd/client.ts';
import type { CaseResult } from '../runner/model.ts';

const traces = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-tls-traces-'));
process.env.FLEECE_TRACE_DIR = traces;
afterAll(() => fs.rmSync(traces, { recursive: true, force: true }));

const line = (r: CaseResult) => `${r.target} ${r.id}: ${r.verdict} ${r.reason}`;
// QEMU 7.2's findings (fleecing/README.md: B1, F1, F2, F3); the same list as in plaintext.
const FINDINGS = [
  'fleecing/discard/unaligned', 'fleecing/race/unaligned-write-zeroes', 'fleecing/model/zero-trim', 'fleecing/cbw-error/break-snapshot-inflight-read',
  'fleecing/straddle/write-zeroes', 'fleecing/straddle/df-read', 'fleecing/straddle/simple-reply-read',
];

describe('fleecing over TLS', () => {
  for (const name of ['qemu-tls-x509', 'qemu-tls-psk']) {
    it(`${name}: the plaintext verdicts, every connection over TLS`, async () => {
      const result = await runFleecing([findFlavor(name)!], { seed: 7 });
      const bad = result.results.filter((r) => r.verdict !== 'pass' && !FINDINGS.includes(r.id));
      expect(bad.map(line)).toEqual([]);
      for (const id of ['fleecing/discard/unaligned', 'fleecing/straddle/write-zeroes', 'fleecing/cbw-error/break-snapshot-inflight-read']) expect(result.results.find((r) => r.id === id)?.verdict, id).toBe('fail');
      const scenario = result.results.find((r) => r.id === 'fleecing/image-fleecing/scenario')!;
      expect(scenario.verdict).toBe('pass');
      const notes = scenario.wire.map((w) => w.note);
      const established = notes.filter((n) => n.startsWith('TLS established'));
      expect(established.length).toBeGreaterThanOrEqual(2);
      expect(notes.filter((n) => n.startsWith('TLS handshake')).length).toBe(established.length);
    }, 180_000);
  }

  it('--live nbds+unix://... --snapshot nbds+unix://...: a TLS setup the user runs', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-external-tls-'));
    const setup = await findFlavor('qemu-tls-psk')!.launch({ content: 'dense' }, dir, 10_000);
    try {
      const tls = setup.live.tls;
      expect(tls?.type).toBe('psk');
      const psk = tls as { pskFile: string; identity: string };
      const uri = (e: typeof setup.live) => `nbds+unix://${psk.identity}@/${e.name}?socket=${formatAddress(e.address).replace(/^unix:/, '')}&tls-psk-file=${psk.pskFile}`;
      const result = await runFleecing([externalFlavor(uri(setup.live), uri(setup.snapshot))], { filter: ['fleecing/model/concurrent'] });
      const r = result.results.find((x) => x.id === 'fleecing/model/concurrent')!;
      expect(r.verdict, r.reason).toBe('pass');
      expect(r.wire.some((w) => w.note.startsWith('TLS established'))).toBe(true);
    } finally {
      await setup.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
