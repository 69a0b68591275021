// The reference over TLS (fleece serve with qemu-storage-daemon's --object tls-creds-x509 /
// tls-creds-psk, authz-simple and --nbd-server ...,tls-creds=,tls-authz=): every nbd/tls case
// passes with x509 and with PSK (the PSK authorization row is a MAY, so its verdict is info; the
// reference refuses the identity the list does not name, where QEMU 7.2 lets it in), a few
// ordinary cases pass over TLS, and the fleecing suite runs over TLS.
import { describe, expect, it } from 'vitest';
import '../suites.ts';
import { nbdSuite } from '../cases/nbd/index.ts';
import { findFlavor } from '../fleecing/targets.ts';
import { runFleecing } from '../fleecing/run.ts';
import { run } from '../runner/run.ts';
import { resolveTarget } from '../targets/registry.ts';

describe('the reference over TLS', () => {
  for (const mode of ['x509', 'psk'] as const) {
    it(`reference-tls-${mode}: every TLS case passes, ordinary cases pass over TLS`, async () => {
      const res = await run({ targets: [resolveTarget(`reference-tls-${mode}`)], suites: [nbdSuite], filter: ['nbd/tls', 'nbd/handshake/go', 'nbd/write/read-back', 'nbd/transmission/structured-read'], seed: 13 });
      const bad = res.results.filter((r) => !['pass', 'skipped'].includes(r.verdict) && r.id !== 'nbd/tls/authz/psk-identity');
      expect(bad.map((r) => `${r.id}: ${r.verdict} ${r.reason}`)).toEqual([]);
      expect(res.results.find((r) => r.id === 'nbd/tls/starttls-injection')?.verdict).toBe('pass');
      if (mode === 'psk') {
        const authz = res.results.find((r) => r.id === 'nbd/tls/authz/psk-identity')!;
        expect(authz.verdict).toBe('info');
        expect(authz.checks.every((c) => c.ok), authz.reason).toBe(true);
      } else expect(res.results.find((r) => r.id === 'nbd/tls/authz/deny')?.verdict).toBe('pass');
      expect(res.results.filter((r) => r.verdict === 'pass').length).toBeGreaterThan(mode === 'x509' ? 20 : 17);
    }, 60_000);
  }

  it('fleecing over TLS on the reference (modern graph, x509 and PSK)', async () => {
    const result = await runFleecing([findFlavor('reference-tls-x509')!, findFlavor('reference-tls-psk')!], { seed: 7, filter: ['fleecing/model', 'fleecing/image-fleecing', 'fleecing/straddle'] });
    expect(result.results.filter((r) => r.verdict !== 'pass').map((r) => `${r.target} ${r.id}: ${r.verdict} ${r.reason}`)).toEqual([]);
    expect(result.results.length).toBe(12);
  }, 120_000);
});
