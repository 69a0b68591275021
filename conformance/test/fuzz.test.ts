// `fleece fuzz` against real servers, bounded by input count (never by time):
//  - the known-bad implementation: nbdkit 1.32 aborts on NBD_CMD_WRITE_ZEROES with FAST_ZERO
//    (backend_zero's assertion on can_fast_zero); the fuzzer finds it on its own, reports a dead
//    server with the shrunk case, and the replay of that case kills a fresh nbdkit again;
//  - a smoke of the campaign against the reference (NBD) and against qemu-storage-daemon (QMP),
//    which must find nothing the suite does not already know.
// Peers missing fail the test (requirePeer), they never skip it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import '../targets/builtin.ts';
import { describe, expect, it } from 'vitest';
import { Cmd, CF as CmdFlag } from '../nbd/constants.ts';
import { resolveTarget } from '../targets/registry.ts';
import { replayCase, runCampaign, signature, type CampaignResult } from '../fuzz/campaign.ts';
import { parseFuzzArgs } from '../fuzz/command.ts';
import type { NbdCase } from '../fuzz/case.ts';

const FLEECE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/fleece.mjs');
const CORPUS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fuzz/corpus');

function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    // stdin is /dev/null: the command reads nothing, and a pipe left open to the test worker
    // is not something the fuzzed servers it starts should inherit.
    const p = spawn(process.execPath, [FLEECE, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGTERM'), 170_000);
    p.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

const base = { timeoutMs: 3000, maxRequests: 16, rssLimitMiB: 1024, healthEvery: 10, continueAfterFinding: false } as const;


describe('fleece fuzz finds nbdkit 1.32\'s abort on FAST_ZERO (a dead server)', () => {
  it('within 3000 inputs, shrunk to a GO and one WRITE_ZEROES with FAST_ZERO, and the replay kills nbdkit again', async () => {
    const def = resolveTarget('nbdkit');
    const r = await runCampaign({ ...base, target: def, seed: 1, inputs: 3000, protocols: ['nbd'] });
    const dead = r.findings.find((f) => f.kind === 'dead');
    expect(dead, JSON.stringify(r.findings.map((f) => f.message))).toBeDefined();
    expect(dead!.message).toMatch(/backend_zero: Assertion .c->can_fast_zero == 1. failed/);
    const c = dead!.case as NbdCase;
    const reqs = c.requests.filter((m) => m.kind === 'request');
    expect(reqs).toHaveLength(1);
    expect(reqs[0]).toMatchObject({ type: Cmd.WRITE_ZEROES });
    expect(reqs[0]!.kind === 'request' && reqs[0]!.flags & CmdFlag.FAST_ZERO).toBeTruthy();
    const again = await replayCase(def, { fleeceFuzz: 1, target: 'nbdkit', case: c }, 3000);
    expect(again.findings.map((f) => f.kind)).toContain('dead');
  }, 180_000);
});

function unexpected(r: CampaignResult): string[] {
  return r.findings.map((f) => `${signature(f)}\n${JSON.stringify(f.case)}`);
}

describe('fuzz smoke (bounded by input count)', () => {
  it('reference, NBD: 2000 inputs, no crash, hang, desync or unhealthy client', async () => {
    const r = await runCampaign({ ...base, target: resolveTarget('reference'), seed: 7, inputs: 2000, protocols: ['nbd'], continueAfterFinding: true });
    expect(r.inputs).toBeGreaterThanOrEqual(2000);
    expect(r.transmissionCases).toBeGreaterThan(20);
    expect(unexpected(r)).toEqual([]);
    expect(r.restarts).toBe(0);
  }, 120_000);

  it('reference, QMP: 300 inputs with huge and deeply nested texts, every reply well-formed and the daemon alive', async () => {
    const r = await runCampaign({ ...base, timeoutMs: 10_000, target: resolveTarget('reference'), seed: 7, inputs: 300, protocols: ['qmp'], continueAfterFinding: true });
    expect(r.qmpCases).toBeGreaterThan(20);
    expect(unexpected(r)).toEqual([]);
    expect(r.restarts).toBe(0);
  }, 180_000);

  it('the reference faults fleece fuzz found, replayed from the corpus, are gone (NUL in a message, wrong-typed capabilities, a 4112-deep id)', async () => {
    const def = resolveTarget('reference');
    for (const f of ['reference-error-message-nul.json', 'reference-qmp-capabilities-wrong-type.json', 'reference-qmp-nested-id.json']) {
      const file = JSON.parse(fs.readFileSync(path.join(CORPUS, f), 'utf8'));
      const again = await replayCase(def, file, 5000);
      expect(again.findings.map((x) => `${f}: ${x.message}`)).toEqual([]);
    }
  }, 120_000);

  it('qemu-storage-daemon, QMP: 200 inputs (no multi-MiB texts), every reply well-formed and the monitor alive', async () => {
    // Large texts are left out of the smoke: qemu-storage-daemon 7.2 lexes about 200 KiB/s, so
    // whether one is answered within a timeout depends on the machine's load.
    const r = await runCampaign({ ...base, timeoutMs: 10_000, target: resolveTarget('qemu-storage-daemon'), seed: 7, inputs: 200, protocols: ['qmp'], qmpHugeTexts: false, continueAfterFinding: true });
    expect(r.qmpCases).toBeGreaterThan(20);
    expect(r.findings.map((f) => `${signature(f)}\n${JSON.stringify(f.case)}`)).toEqual([]);
  }, 180_000);
});

describe('fleece fuzz arguments', () => {
  it('a bad argument exits 2 with the usage', async () => {
    const r = await runCli(['fuzz', '--target', 'reference', '--inputs', 'many']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--inputs must be an integer/);
    expect(r.stderr).toMatch(/usage: fleece fuzz/);
  });

  it('bad arguments are usage errors naming the argument', () => {
    expect(() => parseFuzzArgs([])).toThrow(/--target is required/);
    expect(() => parseFuzzArgs(['--target', 'reference', '--seconds', 'x'])).toThrow(/--seconds must be an integer/);
    expect(() => parseFuzzArgs(['--target', 'reference', '--protocol', 'tcp'])).toThrow(/--protocol must be nbd, qmp or both/);
    expect(() => parseFuzzArgs(['--target', 'reference', '--replay', 'f.json', '--inputs', '5'])).toThrow(/--replay runs one case/);
    expect(() => parseFuzzArgs(['--target', 'reference', '--bogus'])).toThrow(/unknown argument '--bogus'/);
    expect(parseFuzzArgs(['--target=nbdkit', '--inputs', '10', '--seed', '3'])).toMatchObject({ target: 'nbdkit', inputs: 10, seed: 3 });
    // A server of the user's is written only when they say so.
    expect(() => parseFuzzArgs(['--target', 'nbd+unix:///?socket=/tmp/s'])).toThrow(/the fuzzer writes to the export.*--allow-writes/);
    expect(parseFuzzArgs(['--target', 'nbd+unix:///?socket=/tmp/s', '--allow-writes'])).toMatchObject({ allowWrites: true });
  });
});
