// The QMP of backup flows against qemu-storage-daemon 7.2 and `fleece serve`, step by step
// (docs/requirements/backup.md §1): transactions and their rollback, job states and verbs,
// dirty-bitmap refusals, exported bitmaps being busy, and the job events. Replies must be equal
// (values, error class and text); events must be equal once the paused/running pairs QEMU
// emits while it drains the graph are dropped (§1.2), from both sides alike.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { requirePeer, tmpDir } from './nbd-helpers.ts';
import { QmpClient, runServe, startDaemon, type Daemon } from './daemon-helpers.ts';

type Step = [string, Record<string, unknown>?] | { sleep: number };
const tx = (...actions: [string, Record<string, unknown>][]) => ({ actions: actions.map(([type, data]) => ({ type, data })) });
const backup = (id: string, extra: Record<string, unknown> = {}) => ({ 'job-id': id, device: 'source', target: 'temp', sync: 'none', ...extra });

/** Rows: one QMP command each (or a pause for events to arrive). */
const STEPS: readonly Step[] = [
  ['block-dirty-bitmap-add', { node: 'source', name: 'b0', persistent: true }],
  ['block-dirty-bitmap-add', { node: 'source', name: 'b0', granularity: 1000 }],
  ['block-dirty-bitmap-add', { node: 'source', name: '' }],
  ['block-dirty-bitmap-add', { node: 'nope', name: 'x' }],
  ['block-dirty-bitmap-add', { node: 'source', name: 'b0' }],
  ['block-dirty-bitmap-add', { node: 'source', name: 'b0' }],
  ['block-dirty-bitmap-remove', { node: 'source', name: 'zz' }],
  ['block-dirty-bitmap-clear', { node: 'source', name: 'zz' }],
  ['block-dirty-bitmap-merge', { node: 'source', target: 'zz', bitmaps: ['b0'] }],
  ['block-dirty-bitmap-merge', { node: 'source', target: 'b0', bitmaps: ['zz'] }],
  ['transaction', tx(['block-dirty-bitmap-remove', { node: 'source', name: 'b0' }], ['block-dirty-bitmap-add', { node: 'source', name: 'b1' }], ['abort', {}])],
  ['transaction', { actions: [] }],
  ['transaction', { actions: [{ type: 'bogus', data: {} }] }],
  ['transaction', { actions: [{ type: 'block-dirty-bitmap-add' }] }],
  ['transaction', { actions: [{ type: 'block-dirty-bitmap-add', data: { node: 'source' } }] }],
  ['transaction', { ...tx(['block-dirty-bitmap-add', { node: 'source', name: 'c' }]), properties: { 'completion-mode': 'bogus' } }],
  ['transaction', { ...tx(['block-dirty-bitmap-add', { node: 'source', name: 'c' }]), properties: { 'completion-mode': 'grouped' } }],
  ['transaction', tx(['block-dirty-bitmap-add', { node: 'source', name: 'e' }], ['block-dirty-bitmap-remove', { node: 'source', name: 'e' }])],
  ['transaction', tx(['block-dirty-bitmap-remove', { node: 'source', name: 'b0' }], ['block-dirty-bitmap-remove', { node: 'source', name: 'b0' }])],
  ['blockdev-backup', { device: 'source', target: 'temp', sync: 'none' }],
  // A transaction that fails after creating the job: created, aborting, concluded, null.
  ['transaction', tx(['block-dirty-bitmap-add', { node: 'source', name: 't1' }], ['blockdev-backup', backup('j1')], ['block-dirty-bitmap-add', { node: 'source', name: 'b0' }])],
  ['query-jobs'],
  ['block-dirty-bitmap-remove', { node: 'source', name: 't1' }],
  ['transaction', tx(['block-dirty-bitmap-add', { node: 'source', name: 't1' }], ['blockdev-backup', backup('j1', { 'auto-dismiss': false, 'auto-finalize': false })])],
  ['query-jobs'],
  ['query-block-jobs'],
  ['block-export-add', { type: 'nbd', id: 'f', 'node-name': 'temp', name: 'fleece', bitmaps: ['t1'] }],
  ['block-dirty-bitmap-add', { node: 'temp', name: 'tb', disabled: true }],
  ['block-dirty-bitmap-merge', { node: 'temp', target: 'tb', bitmaps: [{ node: 'source', name: 't1' }] }],
  ['block-export-add', { type: 'nbd', id: 'f', 'node-name': 'temp', name: 'fleece', bitmaps: ['tb'], 'allocation-depth': true }],
  ['block-export-add', { type: 'nbd', id: 'f2', 'node-name': 'temp', name: 'fleece2', bitmaps: ['tb'] }],
  ['block-export-add', { type: 'nbd', id: 'f3', 'node-name': 'temp', name: 'fleece3', bitmap: 'tb' }],
  ['block-dirty-bitmap-remove', { node: 'temp', name: 'tb' }],
  ['block-dirty-bitmap-clear', { node: 'temp', name: 'tb' }],
  ['block-dirty-bitmap-enable', { node: 'temp', name: 'tb' }],
  ['block-dirty-bitmap-merge', { node: 'source', target: 't1', bitmaps: [{ node: 'temp', name: 'tb' }] }],
  ['job-pause', { id: 'j1' }],
  { sleep: 50 },
  ['query-jobs'],
  ['job-pause', { id: 'j1' }],
  ['block-job-cancel', { device: 'j1' }],
  ['job-resume', { id: 'j1' }],
  ['job-resume', { id: 'j1' }],
  ['job-complete', { id: 'j1' }],
  ['job-dismiss', { id: 'j1' }],
  ['job-finalize', { id: 'j1' }],
  ['block-job-complete', { device: 'j1' }],
  ['job-cancel', { id: 'nope' }],
  ['block-job-cancel', { device: 'nope' }],
  ['block-job-dismiss', { id: 'nope' }],
  ['blockdev-backup', backup('j1')],
  ['block-export-del', { id: 'f', mode: 'hard' }],
  { sleep: 100 },
  ['job-cancel', { id: 'j1' }],
  { sleep: 200 },
  ['query-jobs'],
  ['job-cancel', { id: 'j1' }],
  ['job-dismiss', { id: 'j1' }],
  ['query-jobs'],
  ['blockdev-backup', backup('j2')],
  ['block-job-cancel', { device: 'j2' }],
  { sleep: 200 },
  ['query-jobs'],
];

/** Drops the drain pairs: a JOB_STATUS_CHANGE paused directly followed by running for one job. */
function dropDrainPairs(events: { event: string; data?: Record<string, unknown> }[]): string[] {
  const out: { event: string; data?: Record<string, unknown> }[] = [];
  for (const e of events) {
    const last = out[out.length - 1];
    if (e.event === 'JOB_STATUS_CHANGE' && e.data?.['status'] === 'running' && last?.event === 'JOB_STATUS_CHANGE' && last.data?.['status'] === 'paused' && last.data?.['id'] === e.data?.['id']) {
      out.pop();
      continue;
    }
    out.push(e);
  }
  return out.map((e) => `${e.event} ${stable(e.data)}`);
}

const stable = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => a.localeCompare(b))) : x));

async function run(kind: 'qsd' | 'fleece'): Promise<{ replies: string[]; events: string[] }> {
  requirePeer('qemu-img');
  const t = tmpDir(`fleece-qmpb-${kind}-`);
  const d = t.dir;
  let daemon: Daemon | undefined;
  try {
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', `${d}/src.raw`, '4M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', `${d}/tmp.qcow2`, '4M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', `${d}/tmp.raw`, '4M']);
    const qmp = path.join(d, 'qmp.sock');
    // The legacy temp: qcow2 for QEMU, the reference's overlay (it has no qcow2 here).
    const temp = kind === 'qsd' ? `driver=qcow2,node-name=temp,file.driver=file,file.filename=${d}/tmp.qcow2,backing=source` : `driver=overlay,node-name=temp,file.driver=file,file.filename=${d}/tmp.raw,backing=source`;
    daemon = await startDaemon(kind, [
      '--blockdev', `driver=file,node-name=source,filename=${d}/src.raw`, '--blockdev', temp,
      '--nbd-server', `addr.type=unix,addr.path=${d}/nbd.sock`, '--export', 'type=nbd,id=exp-live,node-name=source,name=live,writable=on',
      '--chardev', `socket,id=qmp0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=qmp0',
    ], qmp);
    const c = await QmpClient.connect(qmp);
    const replies: string[] = [];
    for (const s of STEPS) {
      if (!Array.isArray(s)) {
        await new Promise((r) => setTimeout(r, s.sleep));
        continue;
      }
      const r = await c.execute(s[0], s[1]);
      replies.push(`${s[0]} ${stable(s[1])} -> ${stable(r.error ? { error: r.error } : { return: r.return })}`);
    }
    await new Promise((r) => setTimeout(r, 200));
    const events = dropDrainPairs(c.events.filter((e) => e.event.startsWith('JOB') || e.event.startsWith('BLOCK_JOB')));
    c.close();
    return { replies, events };
  } finally {
    await daemon?.kill();
    t.cleanup();
  }
}

describe('QMP of backup flows: fleece serve answers as qemu-storage-daemon 7.2', () => {
  it('the same replies and the same job events for every step', async () => {
    const qsd = await run('qsd');
    const ref = await run('fleece');
    for (let i = 0; i < qsd.replies.length; i++) expect(ref.replies[i], `step ${i}`).toBe(qsd.replies[i]);
    expect(ref.events).toEqual(qsd.events);
    // What the sequence shows, so a change on either side is seen here.
    expect(qsd.events).toContain('JOB_STATUS_CHANGE {"id":"j1","status":"aborting"}');
    expect(qsd.events.filter((e) => e.startsWith('BLOCK_JOB_CANCELLED')).length).toBe(2);
  }, 60_000);

  it("--export ...,bitmap= is refused, in qemu-storage-daemon 7.2's words", async () => {
    requirePeer('qemu-storage-daemon');
    const t = tmpDir('fleece-qmpb-bitmap-');
    try {
      execFileSync('qemu-img', ['create', '-q', '-f', 'raw', `${t.dir}/a.raw`, '1M']);
      const args = ['--blockdev', `driver=file,node-name=s,filename=${t.dir}/a.raw`, '--nbd-server', `addr.type=unix,addr.path=${t.dir}/n.sock`, '--export', 'type=nbd,id=e,node-name=s,bitmap=b0'];
      let qsd = '';
      try {
        execFileSync('qemu-storage-daemon', args, { stdio: 'pipe', timeout: 10_000 });
      } catch (e) {
        qsd = String((e as { stderr?: Buffer }).stderr ?? '');
      }
      expect(qsd).toMatch(/Parameter 'bitmap' is unexpected/);
      const ref = await runServe(args);
      expect(ref.code).not.toBe(0);
      expect(ref.stderr).toMatch(/--export.*Parameter 'bitmap' is unexpected/);
    } finally {
      t.cleanup();
    }
  }, 30_000);
});

describe('qemu:allocation-depth on the legacy temp, as qemu-storage-daemon 7.2 reports it', () => {
  async function depths(kind: 'qsd' | 'fleece'): Promise<unknown> {
    requirePeer('nbdinfo');
    const t = tmpDir(`fleece-depth-${kind}-`);
    const d = t.dir;
    let daemon: Daemon | undefined;
    try {
      execFileSync('qemu-img', ['create', '-q', '-f', 'raw', `${d}/src.raw`, '4M']);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', `${d}/tmp.qcow2`, '4M']);
      execFileSync('qemu-img', ['create', '-q', '-f', 'raw', `${d}/tmp.raw`, '4M']);
      const qmp = path.join(d, 'qmp.sock');
      const temp = kind === 'qsd' ? `driver=qcow2,node-name=temp,file.driver=file,file.filename=${d}/tmp.qcow2,backing=source` : `driver=overlay,node-name=temp,file.driver=file,file.filename=${d}/tmp.raw,backing=source`;
      daemon = await startDaemon(kind, [
        '--blockdev', `driver=file,node-name=source,filename=${d}/src.raw`, '--blockdev', temp,
        '--nbd-server', `addr.type=unix,addr.path=${d}/nbd.sock`, '--export', 'type=nbd,id=exp-live,node-name=source,name=live,writable=on',
        '--chardev', `socket,id=qmp0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=qmp0',
      ], qmp);
      const c = await QmpClient.connect(qmp);
      await c.ok('transaction', tx(['blockdev-backup', backup('j1')]));
      // A guest write of one cluster and a bit: cbw copies clusters 0 and 1 into the temp.
      execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 0 0x18000', `nbd+unix:///live?socket=${d}/nbd.sock`], { stdio: 'pipe' });
      await c.ok('block-export-add', { type: 'nbd', id: 'f', 'node-name': 'temp', name: 'fleece', 'allocation-depth': true });
      const out = execFileSync('nbdinfo', ['--json', '--map=qemu:allocation-depth', `nbd+unix:///fleece?socket=${d}/nbd.sock`], { encoding: 'utf8' });
      c.close();
      return (JSON.parse(out) as { offset: number; length: number; type: number }[]).map(({ offset, length, type }) => ({ offset, length, type }));
    } finally {
      await daemon?.kill();
      t.cleanup();
    }
  }

  it('1 where the temp holds copied clusters, 2 where reads go to the source', async () => {
    const qsd = await depths('qsd');
    expect(qsd).toEqual([{ offset: 0, length: 0x20000, type: 1 }, { offset: 0x20000, length: 4 * 1024 * 1024 - 0x20000, type: 2 }]);
    expect(await depths('fleece')).toEqual(qsd);
  }, 60_000);
});
