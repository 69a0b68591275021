// `--target '[ CMD ARGS ]'`: a server the runner starts itself, by socket activation or where
// $unixsocket / $port say, over its scratch $image or the user's storage (never written without
// --allow-writes). Real peers (qemu-nbd, nbdkit, fleece serve); a missing one fails the test.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { CommandTargetError, commandFromArgv, commandSpec, parseCommandTarget, shellArg, splitWords } from '../targets/command.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'cmd-target-'));
afterAll(() => fs.rmSync(out, { recursive: true, force: true }));

function fleece(...args: string[]) {
  const r = spawnSync(process.execPath, [path.join(REPO, 'bin/fleece.mjs'), ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface Results {
  targets: { name: string; description: string; error?: string; facts: Record<string, unknown>; notApplicable?: { suite: string; reason: string }[] }[];
  results: { id: string; verdict: string; reason: string }[];
}
const results = (dir: string): Results => JSON.parse(fs.readFileSync(path.join(dir, 'results.json'), 'utf8')) as Results;
const verdictOf = (r: Results, id: string) => r.results.find((x) => x.id === id)?.verdict;
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const which = (cmd: string) => spawnSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { encoding: 'utf8' }).stdout.trim();
const listenPid = (commands: unknown): number => Number(/LISTEN_PID=(\d+)/.exec((commands as string[]).join(' '))?.[1]);

// Cases that read the generated data, write and read back, and check flags: enough to tell the
// scratch image is served and writable, without the whole suite each time.
const SOME = ['--case', 'nbd/handshake/go', '--case', 'nbd/structured-read/coverage', '--case', 'nbd/write/read-back', '--case', 'nbd/transmission/simple-replies-without-structured'];

describe("'[ CMD ARGS ]' parsing", () => {
  it('splits shell-like, keeps $placeholders, round-trips separate argv words', () => {
    expect(splitWords(`[ a 'b c' "d \\"e\\"" f\\ g $image ]`, 'x')).toEqual(['[', 'a', 'b c', 'd "e"', 'f g', '$image', ']']);
    expect(parseCommandTarget('[ qemu-nbd -f raw $image ]')).toEqual(['qemu-nbd', '-f', 'raw', '$image']);
    const words = ['sh', '-c', "echo 'it''s'; exit 3"];
    expect(parseCommandTarget(commandSpec(words))).toEqual(words);
    expect(commandFromArgv(['--target', '[', 'nbdkit', '--exit-with-parent', 'memory', '1M', ']', '--suite', 'nbd'], 1)).toEqual({ spec: '[ nbdkit --exit-with-parent memory 1M ]', end: 6 });
    expect(shellArg('[ qemu-nbd $image ]')).toBe("'[ qemu-nbd $image ]'");
  });
  it('names what is wrong', () => {
    expect(() => parseCommandTarget('[ qemu-nbd -f raw')).toThrow(/unterminated '\['/);
    expect(() => parseCommandTarget('[ ]')).toThrow(/no command between/);
    expect(() => parseCommandTarget("[ sh -c 'exit ]")).toThrow(/unterminated ' \(single quote\)/);
    expect(() => parseCommandTarget('[ qemu-nbd $imagefile ]')).toThrow(/unknown placeholder \$imagefile \(known: \$unixsocket, \$port, \$image\)/);
    expect(() => commandFromArgv(['[', 'qemu-nbd', '-f'], 0)).toThrow(CommandTargetError);
  });
});

describe("fleece conform --target '[ CMD ARGS ]'", () => {
  it('qemu-nbd by socket activation over $image: cases pass, writes allowed, command line and version recorded, stopped after the run; the suites that need a graph are listed as not applicable', () => {
    const dir = path.join(out, 'qemu-nbd');
    const spec = '[ qemu-nbd -f raw --persistent --shared=8 $image ]';
    const r = fleece('conform', '--target', spec, ...SOME, '--filter', 'fleecing', '--filter', 'permissions', '--filter', 'monitor', '--filter', 'interleavings', '--out', dir, '--no-color', '--seed', '1');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    for (const s of ['fleecing', 'permissions', 'interleavings', 'monitor']) expect(r.stdout).toContain(`-- ${spec}: suite ${s} does not apply: `);
    const res = results(dir);
    expect(res.results.map((x) => x.verdict)).toEqual(['pass', 'pass', 'pass', 'pass']);
    expect(verdictOf(res, 'nbd/write/read-back')).toBe('pass');
    const t = res.targets[0]!;
    expect(t.name).toBe(spec);
    expect(t.description).toMatch(/socket activation, export "" \(the one listed\); the runner's scratch image/);
    expect((t.facts.commands as string[])[0]).toMatch(/^LISTEN_FDS=1 LISTEN_PID=\d+ qemu-nbd -f raw --persistent --shared=8 \/\S+\/image\.raw {2}# socket activation: fd 3 listens on \S+nbd\.sock$/);
    expect(t.facts.peers).toEqual({ [which('qemu-nbd')]: expect.stringMatching(/qemu-nbd.*7\.2/) });
    expect(t.notApplicable?.map((x) => x.suite).sort()).toEqual(['fleecing', 'interleavings', 'monitor', 'permissions']);
    expect(alive(listenPid(t.facts.commands))).toBe(false);
  });

  it('the same command as separate argv words between [ and ]', () => {
    const dir = path.join(out, 'words');
    const r = fleece('conform', '--target', '[', 'qemu-nbd', '-f', 'raw', '--persistent', '--shared=8', '$image', ']', '--case', 'nbd/handshake/go', '--out', dir, '--no-color');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(results(dir).targets[0]!.name).toBe('[ qemu-nbd -f raw --persistent --shared=8 $image ]');
  });

  it('nbdkit --exit-with-parent by socket activation', () => {
    const dir = path.join(out, 'nbdkit');
    const r = fleece('conform', '--target', '[ nbdkit --exit-with-parent file $image ]', ...SOME, '--out', dir, '--no-color');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const t = results(dir).targets[0]!;
    expect((t.facts.commands as string[])[0]).toMatch(/^LISTEN_FDS=1 LISTEN_PID=\d+ nbdkit --exit-with-parent file /);
    expect(t.facts.peers).toEqual({ [which('nbdkit')]: expect.stringMatching(/nbdkit 1\./) });
    expect(results(dir).results.every((x) => x.verdict === 'pass')).toBe(true);
  });

  it('$unixsocket: the runner picks the path and connects there, no socket activation', () => {
    const dir = path.join(out, 'unixsocket');
    const r = fleece('conform', '--target', '[ qemu-nbd -f raw --persistent --shared=8 -k $unixsocket $image ]', ...SOME, '--out', dir, '--no-color');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const t = results(dir).targets[0]!;
    expect((t.facts.commands as string[])[0]).toMatch(/^qemu-nbd -f raw --persistent --shared=8 -k \/\S+\/nbd\.sock \/\S+\/image\.raw$/);
    expect(t.description).toMatch(/^unix socket, /);
    expect(results(dir).results.every((x) => x.verdict === 'pass')).toBe(true);
  });

  it('$port: a free TCP port on 127.0.0.1', () => {
    const dir = path.join(out, 'port');
    const r = fleece('conform', '--target', '[ nbdkit -f -i 127.0.0.1 -p $port file $image ]', ...SOME, '--out', dir, '--no-color');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const t = results(dir).targets[0]!;
    expect((t.facts.commands as string[])[0]).toMatch(/^nbdkit -f -i 127\.0\.0\.1 -p \d+ file \/\S+\/image\.raw$/);
    expect(t.description).toMatch(/^TCP 127\.0\.0\.1:\d+, /);
    expect(results(dir).results.every((x) => x.verdict === 'pass')).toBe(true);
  });

  it('fleece serve by socket activation: of two exports, "" selects the first', () => {
    const dir = path.join(out, 'serve');
    const spec = commandSpec([path.join(REPO, 'bin/fleece.mjs'), 'serve', '--blockdev', 'driver=file,node-name=d0,filename=$image', '--blockdev', 'driver=memory,node-name=m0,size=1M', '--export', 'type=nbd,id=e0,node-name=d0,name=disk,writable=on', '--export', 'type=nbd,id=e1,node-name=m0,name=other']);
    const r = fleece('conform', '--target', spec, ...SOME, '--out', dir, '--no-color');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const res = results(dir);
    expect(res.targets[0]!.description).toMatch(/socket activation, default export "" \(2 listed\)/);
    // The generated data read back from export "": it is the first export, over $image.
    expect(verdictOf(res, 'nbd/structured-read/coverage')).toBe('pass');
    expect((res.targets[0]!.facts.rw as { size: number }).size).toBe(64 << 20);
  });

  it('a command that exits at once: one clear harness error with its last output, exit 2, no line per case', () => {
    const dir = path.join(out, 'exits');
    const r = fleece('conform', '--target', "[ sh -c 'echo this server cannot start: no disk >&2; exit 3' ]", '--suite', 'nbd', '--out', dir, '--no-color');
    expect(r.code).toBe(2);
    expect(r.stdout).toMatch(/sh exited \(exit code 3\) before serving NBD on unix:\S+; its last output:\nthis server cannot start: no disk/);
    expect(r.stdout).not.toMatch(/\[ {2}1\/\d+\] ERR/);
    expect(r.stdout.split('\n').length).toBeLessThan(20);
  });

  it('servers that would fail every case for their configuration are one harness error saying what to change', () => {
    const once = fleece('conform', '--target', '[ qemu-nbd -f raw --shared=8 $image ]', '--case', 'nbd/handshake/go', '--out', path.join(out, 'once'), '--no-color');
    expect(once.code).toBe(2);
    expect(once.stdout).toMatch(/the server stopped serving after its first connections \(exit code 0\); .*\(qemu-nbd: --persistent\)/);
    const single = fleece('conform', '--target', '[ qemu-nbd -f raw --persistent $image ]', '--case', 'nbd/handshake/go', '--out', path.join(out, 'single'), '--no-color');
    expect(single.code).toBe(2);
    expect(single.stdout).toMatch(/the server did not greet a second connection while another was open \(no greeting within 3 s\); .*\(qemu-nbd: --shared=N, the default is 1\)/);
  });

  it('a command that forks its server into the background: one harness error saying so, not a run against a server nobody stops', () => {
    const pidfile = path.join(out, 'bg-nbdkit.pid');
    try {
      const r = fleece('conform', '--target', `[ nbdkit -P ${pidfile} -U $unixsocket file $image ]`, '--case', 'nbd/handshake/go', '--out', path.join(out, 'bg'), '--no-color');
      expect(r.code).toBe(2);
      expect(r.stdout).toMatch(/nbdkit exited \(exit code 0\) while its server still answers: it went to the background, .*run it in the foreground \(nbdkit: -f or --exit-with-parent/);
    } finally {
      // The server the command left behind, by the pid it wrote.
      const pid = fs.existsSync(pidfile) ? Number(fs.readFileSync(pidfile, 'utf8').trim()) : 0;
      if (pid > 0 && alive(pid)) process.kill(pid, 'SIGTERM');
    }
  });

  it('a command not found: a clear error naming it, exit 2', () => {
    const r = fleece('conform', '--target', '[ fleece-no-such-server --serve $image ]', '--suite', 'nbd', '--out', path.join(out, 'nf'), '--no-color');
    expect(r.code).toBe(2);
    expect(r.stdout).toMatch(/command 'fleece-no-such-server' not found on PATH/);
    expect(r.stdout.split('\n').length).toBeLessThan(20);
  });

  it("an unterminated '[' is a usage error, exit 2, as one value or as words", () => {
    const a = fleece('conform', '--target', '[ qemu-nbd -f raw $image', '--out', path.join(out, 'u1'));
    expect(a.code).toBe(2);
    expect(a.stderr).toMatch(/^fleece conform: --target \[ qemu-nbd -f raw \$image: unterminated '\['/);
    const b = fleece('conform', '--target', '[', 'qemu-nbd', '-f', 'raw', '--out', path.join(out, 'u2'));
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/unterminated '\['/);
    const f = fleece('fuzz', '--target', '[', 'qemu-nbd');
    expect(f.code).toBe(2);
    expect(f.stderr).toMatch(/unterminated '\['/);
  });

  it("a command over the user's file, without $image and --allow-writes, leaves the file byte for byte unchanged; with --allow-writes it says so before the run", () => {
    const img = path.join(out, 'users-disk.raw');
    const content = Buffer.alloc(64 << 20);
    for (let i = 0; i < content.length; i += 4096) content.writeUInt32BE(i ^ 0x5a5a5a5a, i);
    fs.writeFileSync(img, content);
    const spec = commandSpec(['qemu-nbd', '-f', 'raw', '--persistent', '--shared=8', img]);
    const dir = path.join(out, 'users');
    const r = fleece('conform', '--target', spec, '--suite', 'nbd', '--out', dir, '--no-color');
    expect([0, 1], r.stdout + r.stderr).toContain(r.code);
    expect(fs.readFileSync(img).equals(content)).toBe(true);
    const res = results(dir);
    expect(res.targets[0]!.description).toMatch(/your storage, not written \(no --allow-writes\)/);
    const readBack = res.results.find((x) => x.id === 'nbd/write/read-back')!;
    expect(readBack.verdict).toBe('skipped');
    expect(readBack.reason).toMatch(/is the user's export; --allow-writes lets the cases that write in it run/);
    expect(res.results.filter((x) => x.verdict === 'pass').length).toBeGreaterThan(30);
    // The fuzzer writes by design: it refuses such a target without the flag.
    const fz = fleece('fuzz', '--target', spec, '--inputs', '10');
    expect(fz.code).toBe(2);
    expect(fz.stderr).toMatch(/the fuzzer writes to the export, over what it holds; serve the runner's scratch image \(\$image\) or pass --allow-writes/);
    expect(fs.readFileSync(img).equals(content)).toBe(true);
    // Allowed: said before the run, and the writing case runs.
    const w = fleece('conform', '--target', spec, '--case', 'nbd/write/read-back', '--allow-writes', '--out', path.join(out, 'users-w'), '--no-color');
    expect(w.code, w.stdout + w.stderr).toBe(0);
    expect(w.stdout.split('\n')[0]).toBe(`fleece conform: the suites will write to the export of ${spec}, over your storage (--allow-writes)`);
    expect(verdictOf(results(path.join(out, 'users-w')), 'nbd/write/read-back')).toBe('pass');
    // ... and the byte comparison above would have seen it: the file has changed now.
    expect(fs.readFileSync(img).equals(content)).toBe(false);
  });
});

describe("fleece fuzz --target '[ CMD ARGS ]'", () => {
  it('fuzzes a server it starts over $image', () => {
    const o = path.join(out, 'fuzz');
    const r = fleece('fuzz', '--target', '[ nbdkit --exit-with-parent file $image ]', '--inputs', '300', '--seed', '3', '--protocol', 'nbd', '--out', o);
    expect([0, 1], r.stdout + r.stderr).toContain(r.code);
    expect(r.stdout).toMatch(/fleece fuzz: \[ nbdkit --exit-with-parent file \$image \] \(socket activation, export "" \(the one listed\); the runner's scratch image\), seed 3/);
    expect(r.stdout).toMatch(/healthy client probed \d+ times/);
    expect(fs.readdirSync(path.join(o, 'fuzz')).some((f) => f.endsWith('.json'))).toBe(true);
  });
});
