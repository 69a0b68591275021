// `fleece replay` argument handling and trace validation (docs/verification.md §4 item 5); the replays
// themselves are asserted in fleecing-knownbad.test.ts (racy) and fleecing-qemu.test.ts (B1).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import command, { parseReplayArgs } from '../replay/cli.ts';
import { readTrace, TraceError } from '../fleecing/trace.ts';

describe('fleece replay: arguments and traces', () => {
  it('parses the target, the URI pair and the attempts, and refuses what makes no sense', () => {
    expect(parseReplayArgs(['t.json'])).toMatchObject({ trace: 't.json', attempts: 3, json: false });
    expect(parseReplayArgs(['t.json', '--target', 'qemu', '--attempts', '5', '--json'])).toMatchObject({ target: 'qemu', attempts: 5, json: true });
    expect(parseReplayArgs([])).toBe('no trace file given');
    expect(parseReplayArgs(['a.json', 'b.json'])).toMatch(/more than one trace/);
    expect(parseReplayArgs(['t.json', '--live', 'nbd+unix:///l?socket=/s'])).toMatch(/--live and --snapshot go together/);
    expect(parseReplayArgs(['t.json', '--target', 'qemu', '--live', 'x', '--snapshot', 'y'])).toMatch(/either --target or --live/);
    expect(parseReplayArgs(['t.json', '--attempts', '0'])).toMatch(/positive integer/);
    expect(parseReplayArgs(['t.json', '--bogus'])).toMatch(/unknown option --bogus/);
  });

  it('rejects files that are not fleece traces, naming the file', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-replay-'));
    try {
      const bad = path.join(dir, 'bad.json');
      fs.writeFileSync(bad, JSON.stringify({ kind: 'something-else' }));
      expect(() => readTrace(bad)).toThrow(TraceError);
      expect(() => readTrace(bad)).toThrow(/bad\.json: not a fleece trace/);
      fs.writeFileSync(bad, '{not json');
      expect(() => readTrace(bad)).toThrow(/cannot read trace/);
      const odd = path.join(dir, 'odd.json');
      fs.writeFileSync(odd, JSON.stringify({ kind: 'fleece-trace', version: 1, config: { content: 'nope' }, batches: [], connections: { live: 1, snapshot: 1 } }));
      expect(() => readTrace(odd)).toThrow(/unknown content 'nope'/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('exits 2 on usage and harness errors', async () => {
    const err: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((s: string) => (err.push(String(s)), true)) as typeof process.stderr.write;
    try {
      expect(await command.run([])).toBe(2);
      expect(await command.run([path.join(os.tmpdir(), 'no-such-trace.json')])).toBe(2);
    } finally {
      process.stderr.write = write;
    }
    expect(err.join('')).toMatch(/no trace file given/);
    expect(err.join('')).toMatch(/no-such-trace\.json: cannot read trace/);
  });
});
