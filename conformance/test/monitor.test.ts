// The monitor suite: the reference and qemu-storage-daemon 7.2 pass it, and each of its checks
// is seen failing on the in-test fake monitor with one fault.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import '../suites.ts';
import { monitorSuite, type MonitorFlavor } from '../monitor/index.ts';
import type { Verdict } from '../runner/model.ts';
import { run } from '../runner/run.ts';
import { ManagedProcess } from '../targets/process.ts';
import { resolveTarget } from '../targets/registry.ts';
import type { TargetDef } from '../targets/types.ts';
import type { QmpFault } from './helpers/fake-qmp.ts';
import { fakeTarget } from './helpers/fake-server.ts';

const FAKE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'helpers/fake-qmp.ts');

function fakeMonitorTarget(faults: QmpFault[]): TargetDef {
  const name = `fake-qmp(${faults.join(',') || 'conforming'})`;
  const flavor: MonitorFlavor = {
    name,
    describe: `in-test fake QMP monitor ${name}`,
    spawn: (p) => new ManagedProcess(name, spawn(process.execPath, ['--import', 'tsx', FAKE, p, faults.join(',')], { stdio: ['ignore', 'pipe', 'pipe'] })),
  };
  return {
    name,
    summary: flavor.describe,
    peers: [],
    start: async () => ({ name, description: flavor.describe, exports: {}, extra: { monitor: flavor }, logs: () => '', stop: async () => undefined }),
  };
}

async function verdicts(target: TargetDef, filter: string[] = []) {
  const res = await run({ targets: [target], suites: [monitorSuite], filter, seed: 5, timeoutMs: 2000, startTimeoutMs: 20_000 });
  expect(res.targets[0]?.error).toBeUndefined();
  return res.results;
}

describe('monitor suite', () => {
  it.each(['reference', 'qemu'])('%s passes every MUST and SHOULD', async (t) => {
    const rs = await verdicts(resolveTarget(t));
    expect(rs.length).toBe(monitorSuite.cases.length);
    expect(rs.filter((r) => r.verdict !== 'pass').map((r) => `${r.id}: ${r.verdict} ${r.reason}`)).toEqual([]);
  }, 180_000);

  it('the conforming fake passes the MUSTs and SHOULDs (its words differ from QEMU: info)', async () => {
    const rs = await verdicts(fakeMonitorTarget([]));
    expect(rs.filter((r) => !['pass', 'info'].includes(r.verdict)).map((r) => `${r.id}: ${r.verdict} ${r.reason}`)).toEqual([]);
  }, 60_000);

  it('a target without a monitor: the suite is listed once as not applicable, with the reason, and runs nothing', async () => {
    const res = await run({ targets: [fakeTarget([])], suites: [monitorSuite], seed: 5, timeoutMs: 2000 });
    expect(res.results).toEqual([]);
    expect(res.targets[0]?.error).toBeUndefined();
    expect(res.targets[0]?.notApplicable).toEqual([{ suite: 'monitor', reason: expect.stringMatching(/starts its own daemon with a QMP monitor/) }]);
  });

  const table: [QmpFault, string, Verdict, RegExp][] = [
    ['crash-on-deep-nesting', 'monitor/limits/nesting-5000', 'fail', /the daemon is still running - observed: it exited: exit code 70/],
    ['no-resync', 'monitor/resync/stray-quote', 'non-strict', /the next command on the same connection is answered .* no answer/],
    ['silent-errors', 'monitor/resync/bad-keyword', 'non-strict', /the input is answered with an error - observed: /],
    ['unbounded-replies', 'monitor/limits/unread-replies', 'non-strict', /resident memory grows by less than 64 MiB - observed: \d+ MiB/],
  ];
  it.each(table)('%s -> %s is %s', async (fault, id, verdict, reason) => {
    const [r] = await verdicts(fakeMonitorTarget([fault]), [id]);
    expect(r?.verdict).toBe(verdict);
    expect(r?.reason).toMatch(reason);
  }, 60_000);
});
