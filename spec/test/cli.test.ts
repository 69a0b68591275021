// `fleece explore` end to end: spawns the real entry point (bin/fleece.mjs) and checks exit codes.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import command from '../cli.ts';

const root = join(import.meta.dirname, '..', '..');
function fleece(...args: string[]) {
  const r = spawnSync(process.execPath, [join(root, 'bin', 'fleece.mjs'), 'explore', ...args], { encoding: 'utf8', cwd: root });
  return { code: r.status, out: r.stdout, err: r.stderr };
}
/** The same command in-process (cheaper than a spawn), capturing its output. */
async function inProcess(...args: string[]) {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((c) => ((out += String(c)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((c) => ((err += String(c)), true));
  try {
    const code = await command.run(args);
    return { code, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}
const dir = mkdtempSync(join(tmpdir(), 'fleece-explore-'));

describe('fleece explore', () => {
  it('exits 0 when every invariant holds, with an exhaustive summary', () => {
    const r = fleece('--model', 's3', '--clusters', '3', '--writers', '2', '--readers', '2', '--symmetry', '--quiet');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/all invariants hold; exhaustive: yes/);
    expect(r.out).toMatch(/distinct \d+, generated \d+, depth \d+/);
    expect(r.out).not.toMatch(/NEVER ENABLED/);
  });

  it('exits 1 on a violation, writes a trace that --replay re-checks (1), and refuses a tampered one (2)', () => {
    const file = join(dir, 's1.json');
    const r = fleece('--model', 's1', '--trace-out', file, '--quiet');
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/Invariant snapshot-read-consistent violated after 6 steps/);
    expect(r.out).toMatch(/3\. R0\.lookup\(cluster=0\)/);
    const replayed = fleece('--replay', file);
    expect(replayed.code).toBe(1);
    expect(replayed.out).toMatch(/violated after step 6: .*written by W0 at step 5, after the snapshot/);
    const trace = JSON.parse(readFileSync(file, 'utf8'));
    trace.steps[2] = { actor: 'R0', action: 'read', args: { cluster: 0, from: 'backing' } };
    const bad = join(dir, 'tampered.json');
    writeFileSync(bad, JSON.stringify(trace));
    const t = fleece('--replay', bad);
    expect(t.code).toBe(2);
    expect(t.err).toMatch(/tampered\.json: step 3: R0\.read\(cluster=0, from=backing\) is not enabled; enabled here: /);
  });

  it('exits 1 on a deadlock and prints JSON on request', async () => {
    const r = await inProcess('--model', 'serialization-no-skip-waiting', '--json');
    expect(r.code).toBe(1);
    const json = JSON.parse(r.out);
    expect(json.format).toBe('fleece-explore');
    expect(json.verdict).toBe('deadlock');
    expect(json.trace.steps.length).toBeGreaterThan(0);
    const file = join(dir, 'deadlock.json');
    writeFileSync(file, JSON.stringify(json.trace));
    const again = await inProcess('--replay', file);
    expect(again.code).toBe(1);
    expect(again.out).toMatch(/deadlock: work is pending but no action is enabled/);
  });

  it('says when a bound stopped the search (exit 0: nothing violated so far)', async () => {
    const r = await inProcess('--model', 's4', '--max-states', '100', '--quiet');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/no violation found within the bounds; exhaustive: no \(stopped by max-states\)/);
  });

  it('exits 2 on usage errors, naming the flag or the model', async () => {
    const flag = await inProcess('--model', 's3', '--bitmap');
    expect(flag.code).toBe(2);
    expect(flag.err).toMatch(/unknown option '--bitmap'; parameters of s3:/);
    const model = fleece('--model', 'nope');
    expect(model.code).toBe(2);
    expect(model.err).toMatch(/unknown model 'nope'; known models: s1, s2/);
    const value = await inProcess('--model', 's4', '--on-cbw-error', 'explode');
    expect(value.code).toBe(2);
    expect(value.err).toMatch(/parameter onCbwError must be one of break-guest-write, break-snapshot, got "explode"/);
    expect((await inProcess()).code).toBe(2);
    expect((await inProcess('--list=yes')).err).toMatch(/--list takes no value/);
    expect((await inProcess('--model', 's3', '--max-states', 'many')).err).toMatch(/--max-states expects a positive integer, got 'many'/);
    const missing = await inProcess('--replay', join(dir, 'missing.json'));
    expect(missing.code).toBe(2);
    expect(missing.err).toMatch(/missing\.json: cannot read the trace file \(ENOENT\)/);
  });

  it('lists models, prints help and draws small graphs', async () => {
    const list = await inProcess('--list');
    expect(list.code).toBe(0);
    for (const name of ['s1', 's2', 's3', 's4', 'serialization', 'nbd-session']) expect(list.out).toMatch(new RegExp(`^${name} `, 'm'));
    const dot = await inProcess('--model', 's1', '--clusters', '1', '--writers', '1', '--readers', '1', '--dot');
    expect(dot.code).toBe(0);
    expect(dot.out).toMatch(/^digraph "s1"/);
    expect((await inProcess('--help')).out).toMatch(/--replay FILE/);
    const ex = await inProcess('--model', 's1', '--clusters', '1', '--writers', '1', '--readers', '1', '--executions');
    expect(ex.code).toBe(1);
    expect(ex.out).toMatch(/^20 executions, 3 end in a violation$/m);
    expect(ex.out).toMatch(/R0\.lookup\(cluster=0\) W0\.copyWrite\(\) W0\.write\(\) R0\.read\(cluster=0, from=backing\)  => violates snapshot-read-consistent/);
    const big = await inProcess('--model', 's4', '--executions', '--max-executions', '5');
    expect(big.code).toBe(2);
    expect(big.err).toMatch(/more than 5 executions/);
    expect((await inProcess('--model', 's4', '--help')).out).toMatch(/--on-cbw-error ENUM/);
  });
  it('--soundness counts accepted-but-unsafe graphs by cause, exits 1 while there are some, and names bad arguments', async () => {
    const text = await inProcess('--soundness', '--max-exports', '2');
    expect(text.code).toBe(1);
    expect(text.out).toMatch(/^permission soundness: \d+ graphs \(at most 2 exports\)/m);
    expect(text.out).toMatch(/accepted but UNSAFE: +[1-9]\d*$/m);
    expect(text.out).toMatch(/accepted but unsafe because of a writer on the temp\/target node \(docs\/requirements\/qemu-fleecing\.md §6 B6\)/);
    // every rule set by default, aliasing causes on their own with an example and its trace
    for (const name of ['qemu-7.2', 'reference', 'storage-aware']) expect(text.out).toMatch(new RegExp(`^== rules ${name}: `, 'm'));
    expect(text.out).toMatch(/accepted but unsafe because of aliasing: the temp's backing is another node over the source's file.*\n {2}e\.g\. source=raw .*alias=source.*:backing.*\n.*\n {7}1\. W0\.submit/);
    expect(text.out).toMatch(/^verdict \(storage-aware\): every graph the permission model accepts is safe/m);
    const json = await inProcess('--soundness', '--max-exports', '1', '--rules', 'qemu-7.2,storage-aware', '--json');
    const doc = JSON.parse(json.out) as { format: string; version: number; ruleSets: Array<{ name: string; counts: Record<string, number>; acceptedUnsafe: unknown[] }> };
    expect(doc.format).toBe('fleece-soundness');
    expect(doc.version).toBe(2);
    expect(doc.ruleSets.map((r) => r.name)).toEqual(['qemu-7.2', 'storage-aware']);
    for (const r of doc.ruleSets) expect(r.acceptedUnsafe.length).toBe(r.counts['accepted-unsafe']);
    expect(json.code).toBe(doc.ruleSets.some((r) => r.counts['accepted-unsafe']! > 0) ? 1 : 0);
    // Without exports there is no snapshot reader, so nothing can be unsafe: exit 0.
    const none = await inProcess('--soundness', '--max-exports', '0');
    expect(none.code).toBe(0);
    expect(none.out).toMatch(/every graph the permission model accepts is safe/);
    for (const [args, msg] of [
      [['--soundness', '--cbw-rule', '8.0'], /--cbw-rule takes 7\.2 or 9\.1, not '8\.0'/],
      [['--soundness', '--max-exports', '9'], /--max-exports takes an integer 0\.\.5, not '9'/],
      [['--soundness', '--rules', 'qemu-9'], /--rules takes 'all' or names from qemu-7\.2, reference, storage-aware, not 'qemu-9'/],
      [['--rules', 'all'], /--rules belongs to --soundness/],
      [['--max-exports', '2'], /--max-exports belongs to --soundness/],
      [['--soundness', '--model', 's1'], /--soundness runs on its own/],
    ] as const) {
      const r = await inProcess(...args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err).toMatch(msg);
    }
  });
});
