// `fleece conform` as a user runs it: exit codes 0/1/2, --list, --json, reports under --out.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { parseNbdUri } from '../targets/uri.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'conform-cli-'));
afterAll(() => fs.rmSync(out, { recursive: true, force: true }));

function fleece(...args: string[]) {
  const r = spawnSync(process.execPath, [path.join(REPO, 'bin/fleece.mjs'), 'conform', ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('fleece conform', () => {
  it('--list prints the catalogue with ids, levels and sections, exit 0', () => {
    const r = fleece('--list', '--filter', 'nbd/handshake');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/nbd\/handshake\/unknown-client-flags\s+MUST/);
    expect(r.stdout).toMatch(/docs\/requirements\/nbd\.md A2/);
    expect(r.stdout).not.toMatch(/nbd\/transmission\//);
  });

  it('--fail-fast stops at the first failed MUST: every case after it, on this target and the next, is skipped saying why; exit 1', () => {
    const dir = path.join(out, 'fail-fast');
    const r = fleece('--target', 'reference-racy', '--target', 'reference', '--suite', 'fleecing', '--fail-fast', '--out', dir, '--seed', '7', '--no-color');
    expect(r.code, r.stderr).toBe(1);
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'results.json'), 'utf8'));
    const results = json.results as { target: string; id: string; verdict: string; reason: string }[];
    const first = results.find((x) => x.verdict === 'fail')!;
    expect(first.target).toBe('reference-racy');
    // Cases run four at a time: those that ran beside the first failure keep their verdicts
    // (they ran); nothing after that batch runs.
    const cut = results.findIndex((x) => x.verdict === 'skipped');
    expect(cut).toBeGreaterThan(results.indexOf(first));
    expect(cut - results.indexOf(first)).toBeLessThanOrEqual(4);
    const after = results.slice(cut);
    expect(after.some((x) => x.target === 'reference')).toBe(true);
    for (const x of after) {
      expect(x.verdict).toBe('skipped');
      expect(x.reason).toBe(`not run: --fail-fast: stopped after ${first.id} on reference-racy (fail)`);
    }
  });

  it('a check that held carries no "observed" text: that text describes a violation', () => {
    const dir = path.join(out, 'observed');
    const r = fleece('--target', 'reference', '--case', 'nbd/handshake/abort', '--out', dir, '--no-color');
    expect(r.code, r.stderr).toBe(0);
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'results.json'), 'utf8'));
    const checks = json.results[0].checks as { ok: boolean; what: string; observed?: string }[];
    expect(checks.map((c) => c.what)).toContain('the server closes the connection after acknowledging NBD_OPT_ABORT');
    expect(checks.every((c) => c.ok && c.observed === undefined)).toBe(true);
    const pages = fs.readdirSync(path.join(dir, 'html', 'cases'));
    expect(pages).toHaveLength(1);
    const page = fs.readFileSync(path.join(dir, 'html', 'cases', pages[0]!), 'utf8');
    expect(page).toContain('the server closes the connection after acknowledging NBD_OPT_ABORT');
    expect(page).not.toContain('still open');
  });

  it('exit 0 when every MUST passes; reports are written; the last line counts', () => {
    const dir = path.join(out, 'ok');
    const r = fleece('--target', 'qemu-nbd', '--filter', 'nbd/handshake/go', '--filter', 'nbd/bounds/write-past-end', '--out', dir, '--seed', '42', '--no-color');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n').pop()).toBe('3 passed, 0 failed, 0 skipped');
    expect(r.stdout).toMatch(/reports: .*results\.json/);
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'results.json'), 'utf8'));
    expect(json.seed).toBe(42);
    expect(json.results.map((x: { verdict: string }) => x.verdict).sort()).toEqual(['non-strict', 'pass', 'pass']);
    const junit = fs.readFileSync(path.join(dir, 'junit.xml'), 'utf8');
    // The conventional shape: counts and time on every level, a suite per target, the id's
    // section path as classname; the full id and the spec section as properties.
    expect(junit).toMatch(/<testsuites name="fleece conform" tests="3" failures="0" errors="0" skipped="0" time="\d+\.\d{3}"/);
    expect(junit).toMatch(/<testsuite name="qemu-nbd" tests="3" failures="0" errors="0" skipped="0" time="\d+\.\d{3}"/);
    expect(junit).toMatch(/<testcase classname="nbd\.handshake" name="go" time="\d+\.\d{3}"><properties><property name="id" value="nbd\/handshake\/go"\/><property name="section" value="[^"]*NBD_OPT_GO[^"]*"\/>/);
    // What was tested, exactly: the peer's version and the command line it was started with.
    expect(json.targets[0].facts.peers['qemu-nbd']).toMatch(/qemu-nbd.*7\.2/);
    expect(json.targets[0].facts.commands.join(' ')).toMatch(/^qemu-nbd .*-k .*rw\.sock/);
    const index = fs.readFileSync(path.join(dir, 'html/index.html'), 'utf8');
    expect(index).toMatch(/nbd\/handshake\/go/);
    // The matrix: per-target totals, rows grouped by section, the two filters.
    expect(index).toMatch(/<th colspan="2">totals<\/th><td><small>2 pass, 0 fail, 1 warn, 0 info, 0 skip, 0 error<\/small><\/td>/);
    expect(index).toMatch(/<tr class="section"><th colspan="3" style="text-align:left">nbd\/handshake<\/th><\/tr>/);
    expect(index).toMatch(/id="f-bad"[\s\S]*id="f-diff"/);
    expect(index).toMatch(/<tr class="case" data-verdicts="non-strict">/);
    const page = fs.readFileSync(path.join(dir, 'html/cases/nbd__bounds__write-past-end.html'), 'utf8');
    expect(page).toMatch(/Expectation/);
    expect(page).toMatch(/NBD_CMD_WRITE offset/); // the wire log
    expect(page).toMatch(/25 60 95 13/); // request magic in hex
    // Links lead into this checkout's docs/ (relative) or to the upstream proto.md, nowhere else.
    const pageDir = path.join(dir, 'html/cases');
    const hrefs = [...page.matchAll(/href="([^"]+)"/g)].map((m) => m[1]!.replace(/&amp;/g, '&'));
    expect(hrefs).toContain('https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#error-values');
    expect(hrefs.some((h) => h.endsWith('docs/requirements/nbd.md#c46'))).toBe(true);
    for (const h of hrefs) {
      if (/^https?:/.test(h)) expect(h).toMatch(/^https:\/\/github\.com\/NetworkBlockDevice\/nbd\/blob\/(master|extension-ext-header)\/doc\/proto\.md#/);
      else expect(fs.existsSync(path.resolve(pageDir, h.replace(/#.*/, ''))), h).toBe(true);
    }
  });

  it('--strict turns a SHOULD violation into exit 1', () => {
    const r = fleece('--target', 'qemu-nbd', '--filter', 'nbd/bounds/write-past-end', '--strict', '--out', path.join(out, 'strict'), '--no-color');
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/0 passed, 1 failed, 0 skipped\n/);
  });

  it('exit 1 on a MUST failure (nbd-server keeps negotiating after unknown client flags); --json prints results', () => {
    const r = fleece('--target', 'nbd-server', '--filter', 'nbd/handshake/unknown-client-flags', '--json', '--out', path.join(out, 'fail'));
    expect(r.code).toBe(1);
    const json = JSON.parse(r.stdout);
    expect(json.results[0].verdict).toBe('fail');
    expect(r.stderr).toMatch(/0 passed, 1 failed, 0 skipped/);
  });

  it('--case selects exactly one case where --filter selects a prefix; an unknown case is a usage error', () => {
    const exact = fleece('--suite', 'nbd', '--case', 'nbd/handshake/list', '--list');
    expect(exact.code).toBe(0);
    expect(exact.stdout.trim().split('\n').pop()).toBe('1 case(s)');
    const prefix = fleece('--suite', 'nbd', '--filter', 'nbd/handshake/list', '--list');
    expect(Number(/(\d+) case\(s\)/.exec(prefix.stdout)![1])).toBeGreaterThan(1);
    const both = fleece('--suite', 'nbd', '--case', 'nbd/handshake/list', '--case', 'nbd/transmission/half-close', '--list');
    expect(both.stdout).toMatch(/2 case\(s\)/);
    const bad = fleece('--suite', 'nbd', '--case', 'nbd/handshake/nope');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/unknown case 'nbd\/handshake\/nope'/);
  });

  it('exit 2 on usage errors, with a message naming what was wrong', () => {
    const bogus = fleece('--bogus');
    expect(bogus.code).toBe(2);
    expect(bogus.stderr).toMatch(/unknown argument '--bogus'/);
    expect(fleece('--seed', 'abc').stderr).toMatch(/--seed must be an integer/);
    expect(fleece('--target', 'no-such-server', '--out', out).stderr).toMatch(/unknown target 'no-such-server'/);
    expect(fleece('--target', 'nbd+unix:///disk').stderr).toMatch(/nbd\+unix needs \?socket=PATH/);
    expect(fleece('--filter', 'nbd/nothing-here').code).toBe(2);
    expect(fleece('--suite', 'nope').stderr).toMatch(/unknown suite 'nope'/);
    // Reports that cannot be written are a usage error before the run (was: a stack trace after
    // it; /proc made Node's recursive mkdir spin for ever).
    for (const [dir, code] of [['/proc/fleece-x', 'ENOENT'], ['/dev/null/x', 'ENOTDIR']] as const) {
      const r = fleece('--out', dir, '--filter', 'nbd/handshake/greeting');
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`--out ${dir}: cannot write reports there \\(${code}\\)`));
      expect(r.stdout).not.toMatch(/\[ +1\//);
    }
  });

  it('a --live export of the user is never written without --allow-writes (the image is checked)', async () => {
    const img = path.join(out, 'users-disk.raw');
    const content = Buffer.alloc(4 << 20, 0x6b);
    fs.writeFileSync(img, content);
    const sock = path.join(out, 'users-disk.sock');
    const nbdkit = spawn('nbdkit', ['-f', '-U', sock, 'file', img], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 25));
      const uri = `nbd+unix:///?socket=${sock}`;
      const r = fleece('--live', uri, '--snapshot', uri, '--suite', 'fleecing', '--out', path.join(out, 'live'));
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/--live nbd\+unix:.*writes guest data into the live export.*pass --allow-writes/);
      expect(fs.readFileSync(img).equals(content)).toBe(true);
      const replay = spawnSync(process.execPath, [path.join(REPO, 'bin/fleece.mjs'), 'replay', path.join(out, 'none.json'), '--live', uri, '--snapshot', uri], { encoding: 'utf8' });
      expect(replay.status).toBe(2);
      expect(replay.stderr).toMatch(/--allow-writes/);
      // The same export as an NBD URI target: the nbd suite runs, but every case that would
      // change data inside it is skipped, saying why; the image is untouched.
      const nbd = fleece('--target', uri, '--suite', 'nbd', '--out', path.join(out, 'uri'), '--no-color');
      expect([0, 1]).toContain(nbd.code);
      expect(fs.readFileSync(img).equals(content)).toBe(true);
      const results = JSON.parse(fs.readFileSync(path.join(out, 'uri', 'results.json'), 'utf8')) as { results: { id: string; verdict: string; reason: string }[] };
      const readBack = results.results.find((r) => r.id === 'nbd/write/read-back')!;
      expect(readBack.verdict).toBe('skipped');
      expect(readBack.reason).toMatch(/is the user's export; --allow-writes lets the cases that write in it run/);
      expect(results.results.filter((r) => r.verdict === 'pass').length).toBeGreaterThan(30);
    } finally {
      nbdkit.kill();
    }
  });

  it('fleece interleave --interleaving N that no chosen scenario has: exit 2, saying how many there are', () => {
    const r = spawnSync(process.execPath, [path.join(REPO, 'bin/fleece.mjs'), 'interleave', '--scenario', '1w1r-same-cluster', '--interleaving', '99999', '--out', path.join(out, 'il')], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/no interleaving 99999 in the chosen scenarios \(interleavings per scenario: 1w1r-same-cluster: \d+\)/);
  });

  it('exit 2 on a harness error: a URI where nothing listens', () => {
    const r = fleece('--target', `nbd+unix:///disk?socket=${path.join(out, 'nothing.sock')}`, '--filter', 'nbd/handshake/greeting', '--out', path.join(out, 'harness'), '--no-color');
    expect(r.code).toBe(2);
    expect(r.stdout).toMatch(/ERR|error/);
  });
});

describe('NBD URIs (doc/uri.md; checklist H75)', () => {
  it('parses the doc/uri.md table', () => {
    expect(parseNbdUri('nbd://example.com')).toEqual({ address: { kind: 'tcp', host: 'example.com', port: 10809 }, name: '' });
    expect(parseNbdUri('nbd://example.com/')).toMatchObject({ name: '' });
    expect(parseNbdUri('nbd://example.com//disk')).toMatchObject({ name: '/disk' });
    expect(parseNbdUri('nbd://h:1234/hello%20world')).toEqual({ address: { kind: 'tcp', host: 'h', port: 1234 }, name: 'hello world' });
    expect(parseNbdUri('nbd://[::1]:10809/disk')).toEqual({ address: { kind: 'tcp', host: '::1', port: 10809 }, name: 'disk' });
    expect(parseNbdUri('nbd+unix:///disk?socket=/tmp/x.sock')).toEqual({ address: { kind: 'unix', path: '/tmp/x.sock' }, name: 'disk' });
  });
  it('parses the TLS forms as libnbd spells them', () => {
    expect(parseNbdUri('nbds://h/disk?tls-certificates=/pki/client&tls-hostname=h.example&tls-verify-peer=false')).toEqual({
      address: { kind: 'tcp', host: 'h', port: 10809 }, name: 'disk',
      tls: { type: 'x509', certificates: '/pki/client', hostname: 'h.example', verifyPeer: false },
    });
    expect(parseNbdUri('nbds+unix://alice@/disk?socket=/tmp/x.sock&tls-psk-file=/pki/keys.psk')).toEqual({
      address: { kind: 'unix', path: '/tmp/x.sock' }, name: 'disk', tls: { type: 'psk', pskFile: '/pki/keys.psk', identity: 'alice' },
    });
    expect(parseNbdUri('nbds+unix:///?socket=/s&tls-psk-file=/k')).toMatchObject({ name: '', tls: { type: 'psk', pskFile: '/k', identity: undefined } });
  });
  it('rejects what it cannot or must not do', () => {
    expect(() => parseNbdUri('nbd+unix:///disk')).toThrow(/socket=PATH/);
    expect(() => parseNbdUri('nbds://h/disk')).toThrow(/requires TLS credentials/);
    expect(() => parseNbdUri('nbd://h/disk?tls-certificates=/x')).toThrow(/use nbds/);
    expect(() => parseNbdUri('nbds://h/disk?tls-certificates=/x&tls-psk-file=/y')).toThrow(/not both/);
    expect(() => parseNbdUri('nbds://h/disk?tls-certificates=/x&tls-verify-peer=maybe')).toThrow(/not a boolean/);
    expect(() => parseNbdUri('nbd://h/disk?frobnicate=1')).toThrow(/unknown query parameter 'frobnicate'/);
    expect(() => parseNbdUri('http://h/disk')).toThrow(/unknown scheme/);
    expect(() => parseNbdUri('nbd://h:99999/')).toThrow(/port/);
  });
});
