// Any QEMU build as a target: --qemu-storage-daemon/--qemu-nbd/--qemu-img/--qemu-io PATH (and
// FLEECE_QEMU_*). Each path here is a wrapper script that logs its argv and execs the installed
// binary, so the test sees that the suites ran it, and that every report names its version,
// path and the command line (and set-up QMP) it was started with.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { requirePeer } from '../targets/process.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qemu-opts-peers-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const NOT_EXECUTABLE = path.join(dir, 'plain-file');
fs.writeFileSync(NOT_EXECUTABLE, 'not a program\n', { mode: 0o644 });

const PEERS = ['qemu-storage-daemon', 'qemu-nbd', 'qemu-img', 'qemu-io'];

/** wrapper for `peer` in `dir`: appends "peer argv" to argv.log, then execs the real one. */
function wrappers(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of PEERS) {
    requirePeer(p);
    const real = spawnSync('sh', ['-c', `command -v ${p}`], { encoding: 'utf8' }).stdout.trim();
    const w = path.join(dir, `my-${p}`);
    fs.writeFileSync(w, `#!/bin/sh\necho "${p} $*" >> '${path.join(dir, 'argv.log')}'\nexec '${real}' "$@"\n`, { mode: 0o755 });
    out[p] = w;
  }
  return out;
}

function conform(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const r = spawnSync(process.execPath, [path.join(REPO, 'bin/fleece.mjs'), 'conform', ...args], { encoding: 'utf8', timeout: 120_000, env });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const log = () => (fs.existsSync(path.join(dir, 'argv.log')) ? fs.readFileSync(path.join(dir, 'argv.log'), 'utf8') : '');

describe('fleece conform with a QEMU build given by path', () => {
  const w = wrappers();

  it('--help names the options and the environment variables', () => {
    const r = conform(['--help']);
    for (const o of ['--qemu-storage-daemon PATH', '--qemu-nbd PATH', '--qemu-img PATH', '--qemu-io PATH', 'FLEECE_QEMU_STORAGE_DAEMON', 'FLEECE_QEMU_NBD', 'FLEECE_QEMU_IMG', 'FLEECE_QEMU_IO']) expect(r.stdout).toContain(o);
  });

  it('qemu-storage-daemon, qemu-img, qemu-io by option: the fleecing suite runs them, the reports name version, path, command line and QMP', () => {
    const out = path.join(dir, 'legacy');
    const r = conform(['--target', 'qemu-legacy', '--case', 'fleecing/image-fleecing/scenario', '--qemu-storage-daemon', w['qemu-storage-daemon']!, '--qemu-img', w['qemu-img']!, '--qemu-io', w['qemu-io']!, '--out', out, '--no-color']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(log()).toMatch(/^qemu-storage-daemon --blockdev driver=qcow2,node-name=source/m);
    expect(log()).toMatch(/^qemu-img create -q -f qcow2 /m);
    const facts = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')).targets[0].facts;
    expect(facts.peers['qemu-storage-daemon']).toBe(`${spawnSync(w['qemu-storage-daemon']!, ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0]} (${w['qemu-storage-daemon']})`);
    expect(facts.peers['qemu-storage-daemon']).toMatch(/^qemu-storage-daemon version 7\.2/);
    const started: string[] = facts.started;
    expect(started.some((l) => l.startsWith(`qemu-storage-daemon: ${w['qemu-storage-daemon']} --blockdev driver=qcow2,node-name=source`))).toBe(true);
    expect(started).toContain('qemu-storage-daemon QMP: {"execute":"blockdev-backup","arguments":{"job-id":"fleecing","device":"source","target":"temp","sync":"none"}}');
    expect(started.some((l) => l.startsWith(`qemu-img: ${w['qemu-img']} create`))).toBe(true);
    // terminal, JUnit and HTML say the same
    expect(r.stdout).toContain(`-- peer qemu-storage-daemon: ${facts.peers['qemu-storage-daemon']}`);
    expect(r.stdout).toContain(`-- started: qemu-storage-daemon: ${w['qemu-storage-daemon']} --blockdev`);
    const junit = fs.readFileSync(path.join(out, 'junit.xml'), 'utf8');
    expect(junit).toContain(w['qemu-storage-daemon']!);
    expect(junit).toContain('blockdev-backup');
    const html = fs.readFileSync(path.join(out, 'html', 'index.html'), 'utf8');
    expect(html).toContain(w['qemu-storage-daemon']!);
    expect(html).toContain('blockdev-backup');
  });

  it('the permissions suite starts qemu-storage-daemon from the path too', () => {
    const out = path.join(dir, 'perm');
    fs.rmSync(path.join(dir, 'argv.log'), { force: true });
    const list = conform(['--list', '--suite', 'permissions']).stdout.split('\n')[0]!.split(/\s+/)[0]!;
    const r = conform(['--target', 'qemu', '--suite', 'permissions', '--case', list, '--qemu-storage-daemon', w['qemu-storage-daemon']!, '--qemu-img', w['qemu-img']!, '--out', out, '--no-color']);
    expect(r.code, r.stderr + r.stdout).not.toBe(2);
    expect(log()).toMatch(/^qemu-storage-daemon .*--chardev/m);
    const facts = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')).targets[0].facts;
    expect((facts.started as string[]).some((l) => l.includes(w['qemu-storage-daemon']!))).toBe(true);
  });

  it('qemu-nbd from FLEECE_QEMU_NBD: the target runs it and names it', () => {
    const out = path.join(dir, 'nbd');
    fs.rmSync(path.join(dir, 'argv.log'), { force: true });
    // Without it the wrapper is not run: the check below is seen failing first.
    const plain = conform(['--target', 'qemu-nbd', '--case', 'nbd/handshake/greeting', '--out', out, '--no-color'], { ...process.env, FLEECE_QEMU_NBD: '' });
    expect(plain.code, plain.stderr).toBe(0);
    expect(log()).not.toMatch(/^qemu-nbd .*-k /m);
    const r = conform(['--target', 'qemu-nbd', '--case', 'nbd/handshake/greeting', '--out', out, '--no-color'], { ...process.env, FLEECE_QEMU_NBD: w['qemu-nbd']! });
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(log()).toMatch(/^qemu-nbd .*-k /m);
    const facts = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')).targets[0].facts;
    // (qemu-nbd prints its argv[0], here the real binary the wrapper execs)
    expect(facts.peers['qemu-nbd']).toMatch(/qemu-nbd 7\.2/);
    expect(facts.peers['qemu-nbd'].endsWith(` (${w['qemu-nbd']})`)).toBe(true);
    expect(facts.commands[0]).toMatch(new RegExp(`^${w['qemu-nbd']!.replace(/[.]/g, '\\.')} `));
  });

  it.each([
    [['--qemu-nbd', '/nonexistent/qemu-nbd'], {}, /^fleece conform: --qemu-nbd \/nonexistent\/qemu-nbd: no such file \(the qemu-nbd to test\)$/m],
    [['--qemu-img', NOT_EXECUTABLE], {}, /^fleece conform: --qemu-img \S+\/plain-file: not executable \(the qemu-img to test\)$/m],
    [['--qemu-io', '/tmp'], {}, /^fleece conform: --qemu-io \/tmp: not a regular file/m],
    [[], { FLEECE_QEMU_STORAGE_DAEMON: '/nonexistent/qsd' }, /^fleece conform: FLEECE_QEMU_STORAGE_DAEMON \/nonexistent\/qsd: no such file/m],
  ])('a bad path %j %j: exit 2, naming the option and the path', (args, env, re) => {
    const r = conform(['--target', 'qemu-nbd', '--case', 'nbd/handshake/greeting', ...args], { ...process.env, ...env });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(re);
  });
});
