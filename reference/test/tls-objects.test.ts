// The TLS and authz object types without sockets: glob matching as QEMU's fnmatch(3) call does
// it, authz-list's first-match rule, authz-listfile reloads, psktool's key file, and what the
// daemon holds while the NBD server runs.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseArgs } from '../src/daemon/args.ts';
import { Daemon } from '../src/daemon/daemon.ts';
import type { Authz } from '../src/daemon/objects/authz.ts';
import { fnmatch } from '../src/daemon/objects/authz.ts';
import { parseObjectOptions } from '../src/daemon/objects/index.ts';
import { parsePskFile } from '../src/daemon/objects/tls-creds.ts';
import { tmpDir } from './nbd-helpers.ts';

async function authz(o: Record<string, unknown>): Promise<Authz> {
  const d = new Daemon();
  await d.objects.add(parseObjectOptions({ id: 'a', ...o }));
  return d.objects.get('a')!.instance as Authz;
}

describe('authz objects', () => {
  it.each([
    ['*', 'anything, at all', true],
    ['CN=*.example.com', 'CN=client.example.com', true],
    ['CN=*.example.com', 'CN=example.com', false],
    ['*CN=client.example.com', 'C=GB,O=x\\, y,CN=client.example.com', true],
    ['a?c', 'abc', true],
    ['a?c', 'ac', false],
    ['[a-c]x', 'bx', true],
    ['[!a-c]x', 'bx', false],
    ['[^a-c]x', 'dx', true],
    ['\\*', '*', true],
    ['\\*', 'x', false],
    ['a/*', 'a/b/c', true], // no FNM_PATHNAME: * crosses slashes
    ['[', '[', true], // an unclosed class is a literal
  ])('fnmatch(%j, %j) = %s', (p, s, want) => {
    expect(fnmatch(p, s)).toBe(want);
  });

  it('authz-simple allows exactly its identity', async () => {
    const a = await authz({ 'qom-type': 'authz-simple', identity: 'alice' });
    expect([a.isAllowed('alice'), a.isAllowed('Alice'), a.isAllowed('alice2')]).toEqual([true, false, false]);
  });

  it('authz-list: the first matching rule decides, else the policy (default deny); keyval and JSON forms agree', async () => {
    const fromKeyval = parseArgs(['--object', 'authz-list,id=a,policy=allow,rules.0.match=bob,rules.0.policy=deny,rules.1.match=b*,rules.1.policy=allow,rules.1.format=glob']).actions[0]!;
    const d = new Daemon();
    await d.apply(fromKeyval);
    const k = d.objects.get('a')!.instance as Authz;
    expect(['bob', 'bobby', 'carol'].map((x) => k.isAllowed(x))).toEqual([false, true, true]);
    const j = await authz({ 'qom-type': 'authz-list', rules: [{ match: 'c*', policy: 'allow', format: 'glob' }] });
    expect(['carol', 'dave'].map((x) => j.isAllowed(x))).toEqual([true, false]);
    // format defaults to exact: a glob pattern then matches only itself.
    const exact = await authz({ 'qom-type': 'authz-list', rules: [{ match: 'c*', policy: 'allow' }] });
    expect(['carol', 'c*'].map((x) => exact.isAllowed(x))).toEqual([false, true]);
  });

  it('authz-listfile reads the list from JSON and, with refresh on, sees changes; a broken file keeps the last good list', async () => {
    const t = tmpDir('fleece-authz-');
    try {
      const f = path.join(t.dir, 'list.json');
      fs.writeFileSync(f, JSON.stringify({ policy: 'deny', rules: [{ match: 'alice', policy: 'allow' }] }));
      const a = await authz({ 'qom-type': 'authz-listfile', filename: f });
      expect([a.isAllowed('alice'), a.isAllowed('bob')]).toEqual([true, false]);
      fs.writeFileSync(f, JSON.stringify({ policy: 'allow', rules: [{ match: 'alice', policy: 'deny' }] }));
      expect([a.isAllowed('alice'), a.isAllowed('bob')]).toEqual([false, true]);
      fs.writeFileSync(f, '{ not json');
      expect([a.isAllowed('alice'), a.isAllowed('bob')]).toEqual([false, true]);
      const fixed = await authz({ 'qom-type': 'authz-listfile', filename: f.replace('list', 'other'), refresh: false }).catch((e: Error) => e);
      expect(String(fixed)).toMatch(/cannot read authz list .*other\.json/);
    } finally {
      t.cleanup();
    }
  });
});

describe('tls-creds objects', () => {
  it('keys.psk: identity:hexkey lines, blank lines ignored, a bad line named with its number', () => {
    const k = parsePskFile('alice:00ff\n\nbob:0a0b0c\n', 'keys.psk');
    expect([...k.keys()]).toEqual(['alice', 'bob']);
    expect(k.get('bob')!.toString('hex')).toBe('0a0b0c');
    expect(() => parsePskFile('alice:00ff\nbob=1234\n', 'keys.psk')).toThrow("keys.psk:2: expected 'identity:hexkey'");
    expect(() => parsePskFile('alice:0f0\n', 'keys.psk')).toThrow('keys.psk:1');
  });

  it('a client-endpoint PSK object needs its username in the file (QEMU default "qemu")', async () => {
    const t = tmpDir('fleece-psk-');
    try {
      fs.writeFileSync(path.join(t.dir, 'keys.psk'), 'alice:00ff\n');
      const d = new Daemon();
      await d.objects.add(parseObjectOptions({ 'qom-type': 'tls-creds-psk', id: 'c0', dir: t.dir, endpoint: 'client', username: 'alice' }));
      await expect(d.objects.add(parseObjectOptions({ 'qom-type': 'tls-creds-psk', id: 'c1', dir: t.dir, endpoint: 'client' }))).rejects.toThrow(
        `Username qemu not found in PSK file ${t.dir}/keys.psk`,
      );
    } finally {
      t.cleanup();
    }
  });
});
