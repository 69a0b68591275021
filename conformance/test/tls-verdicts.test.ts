// The TLS verdict matrix from real runs (conformance/README.md "TLS"): qemu-nbd, qemu-storage-daemon
// and nbdkit over x509 and PSK, nbdkit with TLS optional, nbd-server in SELECTIVETLS mode. Every
// TLS case passes or is skipped, except two stated deviations, both MAY: no server discards the
// plaintext injected after STARTTLS (each hands it to GnuTLS, whose handshake then fails: safe,
// and allowed), and QEMU 7.2 does not apply tls-authz to PSK identities. A few ordinary cases run
// over TLS too, to show the suite does.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import '../suites.ts';
import { nbdSuite } from '../cases/nbd/index.ts';
import type { Verdict } from '../runner/model.ts';
import { run } from '../runner/run.ts';
import { resolveTarget } from '../targets/registry.ts';
import { parseNbdUri } from '../targets/uri.ts';

const OVER_TLS = ['nbd/handshake/go', 'nbd/transmission/structured-read', 'nbd/write/read-back', 'nbd/block-status/extents-valid'];

async function tlsRun(target: string) {
  const res = await run({ targets: [resolveTarget(target)], suites: [nbdSuite], filter: ['nbd/tls', ...OVER_TLS], seed: 11 });
  return res.results;
}

const INJECTION = { 'nbd/tls/starttls-injection': 'info' } as const;
const X509 = ['x509/accepted', 'x509/tls1.2', 'x509/untrusted-server', 'x509/wrong-host', 'x509/no-client-cert', 'x509/untrusted-client-cert'];
const PSK = ['psk/accepted', 'psk/tls1.2', 'psk/wrong-key', 'psk/unknown-identity'];
const FORCED = ['list', 'info', 'info-unknown-export', 'go', 'structured-reply', 'list-meta-context', 'set-meta-context', 'extended-headers', 'unknown-option', 'export-name'].map((n) => `forced/${n}`);
const SELECTIVE = ['clear-export', 'tls-only-export', 'tls-reqd-only-for-exports', 'export-name-tls-only'].map((n) => `selective/${n}`);
const passes = (names: string[]) => Object.fromEntries(names.map((n) => [`nbd/tls/${n}`, 'pass' as Verdict]));

const MATRIX: Record<string, Record<string, Verdict>> = {
  'qemu-nbd-tls-x509': { ...passes([...FORCED, ...X509, 'starttls-twice', 'stalled-handshake', 'authz/deny']), ...INJECTION },
  'qemu-nbd-tls-psk': { ...passes([...FORCED, ...PSK, 'starttls-twice', 'stalled-handshake']), ...INJECTION, 'nbd/tls/authz/psk-identity': 'info' },
  'qemu-storage-daemon-tls-x509': { ...passes([...FORCED, ...X509, 'starttls-twice', 'stalled-handshake', 'authz/deny']), ...INJECTION },
  'qemu-storage-daemon-tls-psk': { ...passes([...FORCED, ...PSK, 'starttls-twice', 'stalled-handshake']), ...INJECTION, 'nbd/tls/authz/psk-identity': 'info' },
  'nbdkit-tls-x509': { ...passes([...FORCED, ...X509, 'starttls-twice', 'stalled-handshake']), ...INJECTION },
  'nbdkit-tls-psk': { ...passes([...FORCED, ...PSK, 'starttls-twice', 'stalled-handshake']), ...INJECTION },
  'nbdkit-tls-x509-optional': { ...passes([...X509, 'starttls-twice', 'stalled-handshake', 'starttls-resets-state']), ...INJECTION },
  'nbd-server-tls-x509': { ...passes([...X509, ...SELECTIVE, 'starttls-twice', 'stalled-handshake']), ...INJECTION },
};

describe('TLS verdict matrix against the real servers', () => {
  for (const [target, expected] of Object.entries(MATRIX)) {
    it(`${target}: the TLS cases as stated, the rest skipped, ordinary cases pass over TLS`, async () => {
      const rs = await tlsRun(target);
      const got = Object.fromEntries(rs.filter((r) => r.id.startsWith('nbd/tls/') && r.verdict !== 'skipped').map((r) => [r.id, r.verdict]));
      expect(got).toEqual(expected);
      if (target.startsWith('qemu')) expect(rs.find((r) => r.id === 'nbd/tls/starttls-injection')?.reason).toMatch(/discards the injected plaintext/);
      if (target.endsWith('-psk') && target.startsWith('qemu')) expect(rs.find((r) => r.id === 'nbd/tls/authz/psk-identity')?.reason).toMatch(/observed: served over TLS/);
      const ordinary = rs.filter((r) => OVER_TLS.includes(r.id));
      expect(ordinary.filter((r) => r.verdict !== 'pass' && r.verdict !== 'skipped').map((r) => `${r.id}: ${r.verdict} ${r.reason}`)).toEqual([]);
      expect(ordinary.filter((r) => r.verdict === 'pass').length).toBeGreaterThanOrEqual(target.startsWith('nbd-server') ? 2 : 4);
    });
  }
});

describe('nbds URIs as libnbd spells them', () => {
  it('one URI string reaches qemu-storage-daemon over x509 and PSK from nbdinfo and from fleece conform', async () => {
    for (const mode of ['x509', 'psk'] as const) {
      const workDir = fs.mkdtempSync(path.join(os.tmpdir(), `tls-uri-${mode}-`));
      const t = await resolveTarget(`qemu-storage-daemon-tls-${mode}`).start({ workDir, startTimeoutMs: 10_000 });
      try {
        const ref = t.exports.rw!;
        const sock = (ref.address as { path: string }).path;
        const tls = ref.tls!;
        const uri = tls.type === 'x509' ? `nbds+unix:///${ref.name}?socket=${sock}&tls-certificates=${tls.certificates}` : `nbds+unix://${tls.identity}@/${ref.name}?socket=${sock}&tls-psk-file=${tls.pskFile}`;
        expect(parseNbdUri(uri)).toEqual({ address: ref.address, name: ref.name, tls: tls.type === 'x509' ? { type: 'x509', certificates: tls.certificates, hostname: undefined, verifyPeer: undefined } : tls });
        expect(execFileSync('nbdinfo', ['--size', uri], { encoding: 'utf8' }).trim()).toBe(String(64 << 20));
        const ids = ['nbd/handshake/go', 'nbd/tls/starttls-twice', `nbd/tls/${mode}/accepted`];
        const res = await run({ targets: [resolveTarget(uri)], suites: [nbdSuite], filter: ids, seed: 1 });
        expect(res.results.filter((r) => ids.includes(r.id)).map((r) => `${r.id}: ${r.verdict}`)).toEqual(ids.map((id) => `${id}: pass`));
      } finally {
        await t.stop();
        fs.rmSync(workDir, { recursive: true, force: true });
      }
    }
  }, 60_000);
});
