// The command line's errors against qemu-storage-daemon 7.2's, row by row: every row runs
// through the real qemu-storage-daemon and through `fleece serve` (in-process), and the two must
// print the same text after the program name and exit with the same status. A row that both
// accept ends with SENTINEL, an option both refuse, so neither keeps running and the earlier
// options are seen to pass. $D is a scratch directory holding a 1 MiB a.raw.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { serve } from '../src/daemon/cli.ts';
import { requirePeer } from './nbd-helpers.ts';

const SENTINEL = ['--blockdev', 'driver=bogus,node-name=end'];
const F = ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw'];
const N = ['--nbd-server', 'addr.type=unix,addr.path=$D/n.sock'];
const TG = '--object';

/** [what the row shows, argv]. */
const ROWS: ReadonlyArray<readonly [string, readonly string[]]> = [
  // options and arguments
  ['unknown option', ['--bogus']],
  ['option without its argument', ['--blockdev']],
  ['stray argument', ['foo']],
  // keyval syntax
  ['a bare key', ['--nbd-server', 'foo']],
  ['a bad key', ['--nbd-server', 'a..b=1']],
  ['dotted keys used inconsistently', ['--blockdev', 'driver=file,a.0=x,a.b=y']],
  ['a list with a gap', ['--blockdev', 'driver=file,a.0=x,a.2=y']],
  // --object
  ['unknown qom-type', ['--object', 'foo,id=x']],
  ['object without id', ['--object', 'throttle-group']],
  ['object id not an identifier', ['--object', 'throttle-group,id=1x']],
  ['iothread accepted', ['--object', 'iothread,id=io0,poll-max-ns=0,poll-grow=2,poll-shrink=2,aio-max-batch=3', ...SENTINEL]],
  ['iothread unknown property', ['--object', 'iothread,id=io0,bogus=1']],
  ['iothread non-integer', ['--object', 'iothread,id=io0,poll-max-ns=x']],
  ['iothread negative', ['--object', 'iothread,id=io0,poll-max-ns=-1']],
  ['duplicate object id', ['--object', 'iothread,id=io0', '--object', 'iothread,id=io0']],
  // throttle-group's properties and throttle_is_valid
  ['throttle-group accepted, both spellings', [TG, 'throttle-group,id=t0,limits.bps-total=1000,limits.bps-total-max=2000,limits.bps-total-max-length=3,limits.iops-read=10,limits.iops-size=4096', TG, 'throttle-group,id=t1,x-iops-total=100,x-iops-total-max=200,x-iops-total-max-length=3,x-iops-size=4096,x-bps-read=5,x-bps-write=6,x-bps-read-max=7,x-bps-write-max=8,x-bps-read-max-length=2,x-bps-write-max-length=2', ...SENTINEL]],
  ['burst without average (x-)', [TG, 'throttle-group,id=t0,x-bps-total-max=100']],
  ['burst without average (limits)', [TG, 'throttle-group,id=t0,limits.bps-total-max=100']],
  ['total and read together', [TG, 'throttle-group,id=t0,limits.bps-total=100,limits.bps-read=5']],
  ['iops total and read together', [TG, 'throttle-group,id=t0,limits.iops-total=100,limits.iops-size=100,limits.iops-read=4']],
  ['unknown property', [TG, 'throttle-group,id=t0,limits.bps-total=100,bogus=1']],
  ['unknown limits member', [TG, 'throttle-group,id=t0,limits.bogus=5']],
  ['limits not a struct', [TG, 'throttle-group,id=t0,limits=5']],
  ['non-integer limit', [TG, 'throttle-group,id=t0,limits.bps-total=abc']],
  ['non-integer x- limit', [TG, 'throttle-group,id=t0,x-bps-total=abc']],
  ['negative limit', [TG, 'throttle-group,id=t0,limits.bps-total=-1']],
  ['negative x- limit', [TG, 'throttle-group,id=t0,x-bps-total=-5']],
  ['limit over 1e15', [TG, 'throttle-group,id=t0,limits.bps-total=1000000000000001']],
  ['burst below average', [TG, 'throttle-group,id=t0,limits.bps-total=100,limits.bps-total-max=50']],
  ['burst length 0', [TG, 'throttle-group,id=t0,limits.bps-total=100,limits.bps-total-max=200,limits.bps-total-max-length=0']],
  ['x- burst length 0', [TG, 'throttle-group,id=t0,x-bps-total-max-length=0']],
  ['burst length without burst', [TG, 'throttle-group,id=t0,limits.bps-total=100,limits.bps-total-max-length=5']],
  ['burst length too high', [TG, 'throttle-group,id=t0,limits.bps-total=100,limits.bps-total-max=1000000000000000,limits.bps-total-max-length=5']],
  ['negative burst length', [TG, 'throttle-group,id=t0,limits.bps-total=100,limits.bps-total-max=200,limits.bps-total-max-length=-1']],
  ['burst length over UINT_MAX', [TG, 'throttle-group,id=t0,limits.bps-total=100,limits.bps-total-max=200,limits.bps-total-max-length=4294967296']],
  ['iops-size without iops', [TG, 'throttle-group,id=t0,limits.iops-size=100']],
  ['limits checked before the x- properties', [TG, 'throttle-group,id=t0,x-bps-total=100,limits.bps-total-max=7']],
  // driver=throttle
  ['throttle without group', [...F, '--blockdev', 'driver=throttle,node-name=t,file=f']],
  ['throttle with an unknown group', [...F, '--blockdev', 'driver=throttle,node-name=t,file=f,throttle-group=nope']],
  ['throttle naming an iothread', [...F, '--object', 'iothread,id=io0', '--blockdev', 'driver=throttle,node-name=t,file=f,throttle-group=io0']],
  ['throttle unknown option', [TG, 'throttle-group,id=t0,limits.bps-total=100', ...F, '--blockdev', 'driver=throttle,node-name=t,file=f,throttle-group=t0,bogus=1']],
  ['throttle accepted, two groups, an export on it', [TG, 'throttle-group,id=t0,limits.iops-total=100', ...F, '--blockdev', 'driver=throttle,node-name=t,file=f,throttle-group=t0', TG, 'throttle-group,id=t1,limits.bps-total=5000', '--blockdev', 'driver=throttle,node-name=t2,file=t,throttle-group=t1', ...N, '--export', 'type=nbd,id=e,node-name=t2,writable=on', ...SENTINEL]],
  // common block options
  ['force-share without read-only', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,force-share=on']],
  ['force-share with read-only', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,force-share=on,read-only=on', ...SENTINEL]],
  ['force-share not a bool', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,force-share=maybe']],
  ['force-share checked before detect-zeroes', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,detect-zeroes=unmap,force-share=on']],
  ['detect-zeroes bogus', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,detect-zeroes=bogus']],
  ['detect-zeroes=unmap without discard=unmap', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,detect-zeroes=unmap']],
  ['detect-zeroes=unmap with discard=unmap', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,detect-zeroes=unmap,discard=unmap', ...SENTINEL]],
  ['detect-zeroes=on', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,detect-zeroes=on', ...SENTINEL]],
  ['discard bogus', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,discard=bogus']],
  ['discard=on (not in QAPI)', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,discard=on']],
  ['discard=off (not in QAPI)', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,discard=off']],
  ['discard=ignore', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,discard=ignore', ...SENTINEL]],
  ['cache.direct not a bool', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,cache.direct=maybe']],
  ['cache.no-flush not a bool', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,cache.no-flush=x']],
  ['cache unknown member', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,cache.bogus=on']],
  ['cache.no-flush accepted', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,cache.no-flush=on,cache.direct=off', ...SENTINEL]],
  ['read-only not a bool', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,read-only=x']],
  ['auto-read-only not a bool', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,auto-read-only=x']],
  ['auto-read-only accepted', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,auto-read-only=on,read-only=true', ...SENTINEL]],
  ['QAPI before the semantic checks', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,detect-zeroes=off,bogus=1,read-only=x']],
  // other --blockdev errors
  ['unknown blockdev option', ['--blockdev', 'driver=file,node-name=f,filename=$D/a.raw,bogus=1,other=2']],
  ['nested unknown option', [...F, '--blockdev', 'driver=raw,node-name=r,file.driver=file,file.filename=$D/a.raw,file.bogus=1']],
  ['required option missing', ['--blockdev', 'driver=file,node-name=f,bogus=1']],
  ['unknown driver', ['--blockdev', 'driver=bogus,node-name=f']],
  ['no node-name', ['--blockdev', 'driver=file,filename=$D/a.raw']],
  ['bad node-name', ['--blockdev', 'driver=file,node-name=1bad,filename=$D/a.raw']],
  ['missing file', ['--blockdev', 'driver=file,node-name=f,filename=$D/nonexist.raw']],
  ['a child reference to nothing', ['--blockdev', 'driver=raw,node-name=r,file=nope']],
  ['duplicate node-name', [...F, ...F]],
  ['JSON --object: a string where an integer belongs', ['--object', '{"qom-type":"throttle-group","id":"t0","limits":{"bps-total":"5"}}']],
  ['JSON --object: typed limits accepted', ['--object', '{"qom-type":"throttle-group","id":"t0","limits":{"bps-total":5000,"bps-total-max":6000}}', ...SENTINEL]],
  // --nbd-server, --export, --monitor, --chardev
  ['nbd-server without path', ['--nbd-server', 'addr.type=unix']],
  ['nbd-server bad address type', ['--nbd-server', 'addr.type=foo']],
  ['nbd-server unknown option', ['--nbd-server', 'addr.type=unix,addr.path=$D/n.sock,bogus=1']],
  ['nbd-server non-integer max-connections', ['--nbd-server', 'addr.type=unix,addr.path=$D/n.sock,max-connections=x']],
  ['export with a missing iothread', [...F, ...N, '--export', 'type=nbd,id=e,node-name=f,iothread=io0']],
  ['export with an iothread', [...F, ...N, '--object', 'iothread,id=io0', '--export', 'type=nbd,id=e,node-name=f,iothread=io0,fixed-iothread=on', ...SENTINEL]],
  ['export iothread naming a node', [...F, ...N, '--export', 'type=nbd,id=e,node-name=f,iothread=f']],
  ['export iothread naming a throttle group', [...F, ...N, TG, 'throttle-group,id=t0', '--export', 'type=nbd,id=e,node-name=f,iothread=t0']],
  ['export bitmap= (7.2 has bitmaps)', [...F, ...N, '--export', 'type=nbd,id=e,node-name=f,bitmap=b']],
  ['export unknown option', [...F, ...N, '--export', 'type=nbd,id=e,node-name=f,bogus=1']],
  ['export writable not a bool', [...F, ...N, '--export', 'type=nbd,id=e,node-name=f,writable=x']],
  ['export bad type', [...F, ...N, '--export', 'type=foo,id=e,node-name=f']],
  ['export without id', [...F, ...N, '--export', 'type=nbd,node-name=f']],
  ['export on a missing node', [...F, ...N, '--export', 'type=nbd,id=e,node-name=g']],
  ['export without a server', [...F, '--export', 'type=nbd,id=e,node-name=f']],
  ['monitor on a missing chardev', ['--monitor', 'chardev=nope']],
  ['chardev unknown option', ['--chardev', 'socket,id=c0,path=$D/q.sock,server=on,wait=off,bogus=1']],
  ['pidfile in a missing directory', ['--pidfile', '/nonexistent-dir/p.pid', ...SENTINEL]],
];

const DIR = path.join(os.tmpdir(), `qemu-opts-qsd-errors-${process.pid}`);

function fresh(): void {
  fs.rmSync(DIR, { recursive: true, force: true });
  fs.mkdirSync(DIR);
  fs.writeFileSync(path.join(DIR, 'a.raw'), Buffer.alloc(1 << 20));
}

function qsd(argv: readonly string[]): { text: string; code: number } {
  fresh();
  const r = spawnSync('qemu-storage-daemon', argv, { encoding: 'utf8', timeout: 20_000, cwd: DIR });
  if (r.error) throw r.error;
  if (r.status === null) throw new Error(`qemu-storage-daemon ${argv.join(' ')} did not exit (signal ${r.signal}): a row both accept needs the sentinel`);
  return { text: r.stderr.replace(/^qemu-storage-daemon: /gm, ''), code: r.status };
}

async function fleece(argv: readonly string[]): Promise<{ text: string; code: number }> {
  fresh();
  let err = '';
  // A configuration the reference accepts keeps serving: a row with a missing sentinel, or one
  // the reference wrongly accepts, ends here instead of waiting for a quit that never comes.
  const running = new Promise<number>((r) => setTimeout(() => r(-1), 15_000).unref());
  const code = await Promise.race([serve([...argv], { stdout: { write: () => true }, stderr: { write: (s: string) => (err += s) }, env: {}, pid: 1 }), running]);
  if (code === -1) err += '(fleece serve accepted the configuration and kept running)';
  return { text: err.replace(/^fleece serve: /gm, '').replace(/^warning: unix connections keep.*\n/m, ''), code };
}

describe('command-line errors, qemu-storage-daemon 7.2 against fleece serve', () => {
  requirePeer('qemu-storage-daemon');
  afterAll(() => fs.rmSync(DIR, { recursive: true, force: true }));

  it.each(ROWS.map(([what, argv]) => [what, argv.map((a) => a.replaceAll('$D', DIR))] as const))('%s', async (_what, argv) => {
    const want = qsd(argv);
    const got = await fleece(argv);
    expect(got).toEqual(want);
  });
});
