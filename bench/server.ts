// `fleece bench --only server`: the reference NBD server against qemu-nbd and
// nbdkit on the same raw image in the same run. Sequential read through nbdcopy, 4 KiB random
// read and write at queue depth 16 through fio's nbd engine, and each server's CPU per GiB read.
// Results are ratios to the peers, written to reports/bench/server.json and shown as a table. Targets: sequential read
// ≥ 1.0× qemu-nbd, random read ≥ 0.8× qemu-nbd. Missing targets are reported, not fatal: timing
// on a shared machine is evidence, not a verdict.
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sendBufferTuning } from '../reference/src/nbd/sockopt.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** libuv's pool serves the reference's file requests above 64 KiB (the benchmark's 256 KiB
 * sequential reads; its 4 KiB requests run on the event loop, see
 * reference/src/block/drivers/file.ts). Node's default of 4 threads is what a user gets, so it is
 * what we measure unless UV_THREADPOOL_SIZE is set; the value is recorded in the report. */
const REFERENCE_THREADPOOL = process.env.UV_THREADPOOL_SIZE ?? '4';

interface Target {
  readonly name: string;
  /** Measured in the sequential-read phase only: a point of comparison, not a target's peer. */
  readonly seqOnly?: boolean;
  start(img: string, sock: string): ChildProcess;
}

/** `fleece serve` on the image, with extra environment. */
function startReference(env: Record<string, string>): Target['start'] {
  return (img, sock) =>
    spawn(process.execPath, [
      path.join(REPO, 'bin/fleece.mjs'), 'serve',
      '--blockdev', `driver=file,node-name=disk,filename=${img}`,
      '--nbd-server', `addr.type=unix,addr.path=${sock}`,
      '--export', 'type=nbd,id=e,node-name=disk,name=disk,writable=on',
    ], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, UV_THREADPOOL_SIZE: REFERENCE_THREADPOOL, ...env } });
}

const TARGETS: Target[] = [
  { name: 'reference', start: startReference({}) },
  {
    // The same server with the kernel's default send buffer on its unix sockets (208 KiB), in
    // the sequential-read phase only: what SO_SNDBUF is worth there (UNIX_SEND_BUFFER_BYTES).
    name: 'ref-sndbuf0',
    seqOnly: true,
    start: startReference({ FLEECE_NBD_UNIX_SNDBUF: '0' }),
  },
  {
    name: 'qemu-nbd',
    // --shared so nbdcopy's several connections are accepted and multi-conn is advertised.
    start: (img, sock) => spawn('qemu-nbd', ['-f', 'raw', '-k', sock, '-x', 'disk', '--persistent', '--shared=16', img], { stdio: ['ignore', 'ignore', 'inherit'] }),
  },
  {
    name: 'nbdkit',
    start: (img, sock) => spawn('nbdkit', ['-f', '-U', sock, 'file', img], { stdio: ['ignore', 'ignore', 'inherit'] }),
  },
  {
    // One thread per connection that preads and sends with blocking calls: the least server CPU
    // per byte of the shapes measured, and the fastest here, because nbdcopy itself takes most of
    // the two CPUs. It shows how far a server can move this client-bound number.
    name: 'nbdkit-t1',
    seqOnly: true,
    start: (img, sock) => spawn('nbdkit', ['-f', '--threads=1', '-U', sock, 'file', img], { stdio: ['ignore', 'ignore', 'inherit'] }),
  },
];

interface Result {
  seqReadMiBps: number;
  /** Server CPU (user + system, every thread) per GiB read sequentially: what the copy costs it. */
  seqReadCpuMsPerGiB: number;
  /** Absent for a sequential-read-only comparison point. */
  randReadIops?: number;
  randWriteIops?: number;
}

function need(cmd: string): void {
  if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0) throw new Error(`peer command '${cmd}' is missing: run 'npm run peers'`);
}

function exec(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { maxBuffer: 64 << 20, timeout: 120_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`)) : resolve(String(stdout)),
    ),
  );
}

async function waitForSocket(p: string, proc: ChildProcess): Promise<void> {
  const t0 = Date.now();
  while (!fs.existsSync(p)) {
    if (proc.exitCode !== null) throw new Error(`server exited (${proc.exitCode}) before listening on ${p}`);
    if (Date.now() - t0 > 20_000) throw new Error(`no socket ${p} after 20 s`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const done = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await done;
  clearTimeout(t);
}

async function fio(uri: string, rw: 'randread' | 'randwrite', seconds: number): Promise<number> {
  const out = await exec('fio', [
    '--name=bench', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, '--bs=4k', '--iodepth=16',
    `--runtime=${seconds}`, '--ramp_time=0.5', '--time_based', '--output-format=json',
  ]);
  const j = JSON.parse(out.slice(out.indexOf('{')));
  const job = j.jobs[0];
  return rw === 'randread' ? job.read.iops : job.write.iops;
}

function median(xs: readonly number[]): number {
  const v = [...xs].sort((a, b) => a - b);
  const m = v.length >> 1;
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

/** Seconds for one nbdcopy of the whole export to null:. */
async function copyOnce(uri: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  await exec('nbdcopy', [uri, 'null:']);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** User + system CPU seconds of a process, all its threads (proc(5): utime and stime, fields 14
 * and 15 of /proc/PID/stat; the command name before them may contain spaces, so count from ')'). */
function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

export async function run(argv: string[]): Promise<number> {
  for (const c of ['nbdcopy', 'fio', 'qemu-nbd', 'nbdkit']) need(c);
  const quick = argv.includes('--quick');
  const sizeMiB = quick ? 64 : 256;
  const seconds = quick ? 1 : 2;
  const rounds = quick ? 3 : 5;
  // Single nbdcopy runs are cheap (~0.4 s) and vary by ±10% on a shared 2-CPU machine, so the
  // sequential-read ratio gets many paired rounds of one run each rather than a few of three.
  const seqRounds = quick ? 7 : 21;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-bench-server-'));
  const img = path.join(dir, 'disk.raw');
  const names = TARGETS.map((t) => t.name);
  const fioNames = TARGETS.filter((t) => !t.seqOnly).map((t) => t.name);
  // Per round and server: one measurement of the round's kind.
  const seqRoundsOut: Array<Record<string, { seconds: number; cpuSeconds: number }>> = [];
  const fioRounds: Array<Record<string, { randReadIops: number; randWriteIops: number }>> = [];
  const procs: ChildProcess[] = [];
  try {
    // Fully allocated random data: no server can skip holes, every byte is read.
    const fd = fs.openSync(img, 'w');
    const chunk = Buffer.alloc(1 << 20);
    for (let i = 0; i < sizeMiB; i++) {
      crypto.randomFillSync(chunk);
      fs.writeSync(fd, chunk);
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    // All servers run at once and are measured in alternation, round after round, so a
    // change in the machine's load (it is shared) hits every server alike. The order rotates each
    // round so that no server always follows the same one. One untimed warm-up pass first: the
    // reference's JIT and every server's page cache start equal. Phases run in the order
    // sequential read, random read, random write: the writes leave dirty pages whose writeback
    // would otherwise run under the next server's reads.
    const uris: Record<string, string> = {};
    const pids: Record<string, number> = {};
    for (const t of TARGETS) {
      const sock = path.join(dir, `${t.name}.sock`);
      const proc = t.start(img, sock);
      procs.push(proc);
      await waitForSocket(sock, proc);
      uris[t.name] = `nbd+unix:///disk?socket=${sock}`;
      pids[t.name] = proc.pid!;
    }
    for (const n of names) for (let i = 0; i < 2; i++) await copyOnce(uris[n]!);
    for (const n of fioNames) await fio(uris[n]!, 'randread', 1);
    const rotated = (ns: string[], r: number) => ns.map((_, k) => ns[(k + r) % ns.length]!);
    for (let r = 0; r < seqRounds; r++) {
      const round: Record<string, { seconds: number; cpuSeconds: number }> = {};
      for (const n of rotated(names, r)) {
        const c0 = cpuSeconds(pids[n]!);
        const seconds = await copyOnce(uris[n]!);
        round[n] = { seconds, cpuSeconds: cpuSeconds(pids[n]!) - c0 };
      }
      seqRoundsOut.push(round);
    }
    process.stderr.write(`bench server: ${seqRounds} sequential-read rounds done\n`);
    for (const rw of ['randread', 'randwrite'] as const) {
      for (let r = 0; r < rounds; r++) {
        if (rw === 'randread') fioRounds.push({});
        for (const n of rotated(fioNames, r)) {
          const iops = await fio(uris[n]!, rw, seconds);
          const entry = (fioRounds[r]![n] ??= { randReadIops: 0, randWriteIops: 0 });
          if (rw === 'randread') entry.randReadIops = iops;
          else entry.randWriteIops = iops;
        }
      }
      process.stderr.write(`bench server: ${rounds} ${rw} rounds done\n`);
    }
  } finally {
    for (const p of procs) await stop(p);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  // Each server's median over its rounds. A ratio of the reference to a peer is the median of the
  // per-round ratios (paired: both measured within seconds of each other), with its range; speed
  // ratios, so above 1 the reference is faster.
  const gib = (sizeMiB << 20) / 2 ** 30;
  const results: Record<string, Result> = Object.fromEntries(names.map((n) => {
    const seq = seqRoundsOut.map((r) => r[n]!);
    const res: Result = {
      seqReadMiBps: sizeMiB / median(seq.map((x) => x.seconds)),
      seqReadCpuMsPerGiB: (1000 * seq.reduce((a, x) => a + x.cpuSeconds, 0)) / (seq.length * gib),
    };
    if (fioNames.includes(n)) {
      res.randReadIops = median(fioRounds.map((r) => r[n]!.randReadIops));
      res.randWriteIops = median(fioRounds.map((r) => r[n]!.randWriteIops));
    }
    return [n, res];
  }));
  const detail = (xs: number[]) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs), fasterIn: xs.filter((x) => x > 1).length, rounds: xs });
  const ratioDetail = Object.fromEntries(names.filter((n) => n !== 'reference').map((p) => [p, {
    seqRead: detail(seqRoundsOut.map((r) => r[p]!.seconds / r.reference!.seconds)),
    ...(fioNames.includes(p) ? {
      randRead: detail(fioRounds.map((r) => r.reference!.randReadIops / r[p]!.randReadIops)),
      randWrite: detail(fioRounds.map((r) => r.reference!.randWriteIops / r[p]!.randWriteIops)),
    } : {}),
  }]));
  const ratios = Object.fromEntries(
    Object.entries(ratioDetail).map(([p, d]) => [p, { seqRead: d.seqRead.median, randRead: d.randRead?.median, randWrite: d.randWrite?.median }]),
  );
  const seqQ = ratioDetail['qemu-nbd']!.seqRead;
  // The ceiling: how much faster than qemu-nbd the thread-per-connection nbdkit is, round by round.
  const ceiling = detail(seqRoundsOut.map((r) => r['qemu-nbd']!.seconds / r['nbdkit-t1']!.seconds));
  const targets = {
    'seq-read >= 1.0x qemu-nbd': seqQ.median >= 1.0,
    'rand-read 4k >= 0.8x qemu-nbd': ratios['qemu-nbd']!.randRead! >= 0.8,
  };
  const report = {
    part: 'server',
    date: new Date().toISOString(),
    host: { cpus: os.cpus().length, node: process.version },
    setup: {
      imageMiB: sizeMiB, fioSeconds: seconds, seqRounds, fioRounds: rounds,
      statistic: 'per server: median over rounds (CPU: mean); ratios: median of per-round paired speed ratios (reference vs peer in the same round), with min, max and the number of rounds the reference was faster',
      cpu: 'server user+system CPU from /proc/PID/stat over each nbdcopy run, all threads',
      loadAverage: os.loadavg(), referenceEnv: { UV_THREADPOOL_SIZE: REFERENCE_THREADPOOL },
      referenceUnixSendBuffer: sendBufferTuning.available ? (process.env.FLEECE_NBD_UNIX_SNDBUF ?? 'UNIX_SEND_BUFFER_BYTES') : `kernel default: ${sendBufferTuning.reason}`, blockSize: 4096, iodepth: 16, transport: 'unix',
    },
    results,
    ratios,
    ratioDetail,
    seqReadNbdkitT1VsQemuNbd: ceiling,
    targets,
  };
  const outDir = path.join(REPO, 'reports/bench');
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'server.json'), JSON.stringify(report, null, 2) + '\n');
  const f = (n: number | undefined, d = 0) => (n === undefined ? '-' : n.toFixed(d)).padStart(10);
  const lines = [
    `${'server'.padEnd(14)} ${'seq MiB/s'.padStart(10)} ${'cpu ms/GiB'.padStart(10)} ${'rread IOPS'.padStart(10)} ${'rwrite IOPS'.padStart(11)}`,
    ...Object.entries(results).map(([n, r]) => `${n.padEnd(14)} ${f(r.seqReadMiBps)} ${f(r.seqReadCpuMsPerGiB)} ${f(r.randReadIops)} ${f(r.randWriteIops).padStart(11)}`),
    ...Object.entries(ratios).map(([p, r]) => `${`ref/${p}`.padEnd(14)} ${f(r.seqRead, 2)} ${''.padStart(10)} ${f(r.randRead, 2)} ${f(r.randWrite, 2).padStart(11)}`),
    `seq read ref/qemu-nbd: median ${seqQ.median.toFixed(3)} over ${seqQ.rounds.length} paired rounds (range ${seqQ.min.toFixed(2)}-${seqQ.max.toFixed(2)}, reference faster in ${seqQ.fasterIn})`,
    ...(sendBufferTuning.available ? [] : [`WARNING: the reference ran with the kernel's send buffer: ${sendBufferTuning.reason}`]),
    `seq read ref/ref-sndbuf0 (SO_SNDBUF 1 MiB vs the kernel default): median ${ratioDetail['ref-sndbuf0']!.seqRead.median.toFixed(3)} (faster in ${ratioDetail['ref-sndbuf0']!.seqRead.fasterIn})`,
    `seq read nbdkit-t1/qemu-nbd: median ${ceiling.median.toFixed(3)} (faster in ${ceiling.fasterIn}): a thread per connection with blocking pread and send, which a Node server cannot be`,
    ...Object.entries(targets).map(([k, ok]) => `target ${k}: ${ok ? 'met' : 'NOT met'}`),
    `written to reports/bench/server.json`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}
