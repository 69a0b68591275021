// `fleece bench --only writes`: large WRITEs against the reference, qemu-nbd and nbdkit on the
// same raw image in the same run. WRITEs of 1, 4, 16 and 32 MiB on one connection; 8 connections
// writing 32 MiB each at once while a ninth READs 4 KiB back to back (the latency a healthy client
// sees meanwhile). Servers are measured in alternation, round after round, and every number is a
// ratio to a peer from the same round; written to reports/bench/writes.json.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MiB = 1 << 20;
const IMAGE_MIB = 64;

interface Server {
  readonly name: string;
  start(img: string, sock: string): ChildProcess;
}

const SERVERS: readonly Server[] = [
  {
    name: 'reference',
    start: (img, sock) =>
      spawn(process.execPath, [
        path.join(REPO, 'bin/fleece.mjs'), 'serve',
        '--blockdev', `driver=file,node-name=disk,filename=${img}`,
        '--nbd-server', `addr.type=unix,addr.path=${sock}`,
        '--export', 'type=nbd,id=e,node-name=disk,name=disk,writable=on',
      ], { stdio: ['ignore', 'ignore', 'inherit'] }),
  },
  { name: 'qemu-nbd', start: (img, sock) => spawn('qemu-nbd', ['-f', 'raw', '-k', sock, '-x', 'disk', '--persistent', '--shared=16', img], { stdio: ['ignore', 'ignore', 'inherit'] }) },
  { name: 'nbdkit', start: (img, sock) => spawn('nbdkit', ['-f', '-U', sock, 'file', img], { stdio: ['ignore', 'ignore', 'inherit'] }) },
];

/** A minimal NBD client: fixed newstyle, NBD_OPT_GO, simple replies. Header and payload go out as
 * two writes, so the client never copies a payload. */
class Client {
  private chunks: Buffer[] = [];
  private size = 0;
  private waiter: (() => void) | undefined;
  private cookie = 0n;
  private readonly pending = new Map<bigint, (err: number) => void>();
  private constructor(private readonly s: net.Socket) {
    s.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.size += d.length;
      this.waiter?.();
      this.pump();
    });
  }
  private inTransmission = false;
  static async open(sock: string): Promise<Client> {
    const s = net.createConnection({ path: sock });
    await new Promise<void>((r, j) => s.once('connect', r).once('error', j));
    s.setNoDelay(true);
    const c = new Client(s);
    await c.read(18);
    s.write(Buffer.from([0, 0, 0, 1]));
    const name = Buffer.from('disk');
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length);
    name.copy(data, 4);
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT');
    h.writeUInt32BE(7, 8);
    h.writeUInt32BE(data.length, 12);
    s.write(Buffer.concat([h, data]));
    for (;;) {
      const r = await c.read(20);
      const type = r.readUInt32BE(12);
      await c.read(r.readUInt32BE(16));
      if (type === 1) break;
      if (type & 0x80000000) throw new Error(`NBD_OPT_GO refused (0x${type.toString(16)})`);
    }
    c.inTransmission = true;
    c.pump();
    return c;
  }
  private async read(n: number): Promise<Buffer> {
    while (this.size < n) await new Promise<void>((r) => (this.waiter = r));
    this.waiter = undefined;
    return this.take(n);
  }
  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = n < all.length ? [all.subarray(n)] : [];
    this.size -= n;
    return all.subarray(0, n);
  }
  private skipLater = 0;
  private pump(): void {
    // Simple replies to WRITEs, and to 4 KiB READs, whose data follows the header.
    while (this.inTransmission) {
      if (this.skipLater) {
        const k = Math.min(this.skipLater, this.size);
        if (k) this.take(k);
        this.skipLater -= k;
        if (this.skipLater) return;
      }
      if (this.size < 16) return;
      const h = this.take(16);
      const cookie = h.readBigUInt64BE(8);
      const done = this.pending.get(cookie);
      if (!done) throw new Error(`reply for an unknown cookie ${cookie}`);
      this.pending.delete(cookie);
      const err = h.readUInt32BE(4);
      if ((cookie & 1n) === 1n && err === 0) this.skipLater = 4096;
      done(err);
    }
  }
  request(type: 0 | 1, offset: number, length: number, payload?: Buffer): Promise<void> {
    // Even cookies for WRITEs, odd for READs (the READ's data is skipped by pump()).
    this.cookie += 2n;
    const cookie = this.cookie + (type === 0 ? 1n : 0n);
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    const p = new Promise<void>((resolve, reject) => this.pending.set(cookie, (err) => (err ? reject(new Error(`NBD error ${err}`)) : resolve())));
    this.s.write(h);
    if (payload) this.s.write(payload);
    return p;
  }
  close(): void {
    this.s.destroy();
  }
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function waitForSocket(p: string, proc: ChildProcess): Promise<void> {
  const t0 = Date.now();
  while (!fs.existsSync(p)) {
    if (proc.exitCode !== null) throw new Error(`server exited (${proc.exitCode}) before ${p} appeared`);
    if (Date.now() - t0 > 20_000) throw new Error(`${p} did not appear in 20 s`);
    await new Promise((r) => setTimeout(r, 25));
  }
  await new Promise((r) => setTimeout(r, 100));
}

/** One round of the 8-connection phase: total time, and the reader's latencies. */
async function concurrent(sock: string, payload: Buffer, writers: number): Promise<{ seconds: number; maxReadMs: number; p99ReadMs: number; reads: number }> {
  const ws = await Promise.all(Array.from({ length: writers }, () => Client.open(sock)));
  const reader = await Client.open(sock);
  const lat: number[] = [];
  let done = false;
  const loop = (async () => {
    while (!done) {
      const t0 = performance.now();
      await reader.request(0, 0, 4096);
      lat.push(performance.now() - t0);
    }
  })();
  const t0 = performance.now();
  await Promise.all(ws.map((w, i) => w.request(1, (i % 2) * 32 * MiB, payload.length, payload)));
  const seconds = (performance.now() - t0) / 1000;
  done = true;
  await loop;
  for (const c of [...ws, reader]) c.close();
  lat.sort((a, b) => a - b);
  return { seconds, maxReadMs: lat[lat.length - 1]!, p99ReadMs: lat[Math.floor(lat.length * 0.99)]!, reads: lat.length };
}

export async function run(argv: string[]): Promise<number> {
  for (const c of ['qemu-nbd', 'nbdkit']) if (spawnSync('sh', ['-c', `command -v ${c}`]).status !== 0) throw new Error(`peer command '${c}' is missing: run 'npm run peers'`);
  const quick = argv.includes('--quick');
  const rounds = quick ? 3 : 7;
  const sizes = [1, 4, 16, 32];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-bench-writes-'));
  const img = path.join(dir, 'disk.raw');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, IMAGE_MIB * MiB);
  const payload = Buffer.alloc(32 * MiB);
  for (let i = 0; i < payload.length; i += 4096) payload.writeUInt32BE(i, i);
  const procs: ChildProcess[] = [];
  const single: Array<Record<string, Record<number, number>>> = []; // round -> server -> MiB -> seconds
  const conc: Array<Record<string, Awaited<ReturnType<typeof concurrent>>>> = [];
  try {
    const socks: Record<string, string> = {};
    for (const s of SERVERS) {
      const sock = path.join(dir, `${s.name}.sock`);
      const p = s.start(img, sock);
      procs.push(p);
      await waitForSocket(sock, p);
      socks[s.name] = sock;
    }
    const names = SERVERS.map((s) => s.name);
    // Warm-up: each server writes the image through once (JIT, page cache, allocation).
    for (const n of names) {
      const c = await Client.open(socks[n]!);
      await c.request(1, 0, 32 * MiB, payload);
      await c.request(1, 32 * MiB, 32 * MiB, payload);
      c.close();
    }
    const rotated = (r: number) => names.map((_, k) => names[(k + r) % names.length]!);
    for (let r = 0; r < rounds; r++) {
      const round: Record<string, Record<number, number>> = {};
      for (const n of rotated(r)) {
        const c = await Client.open(socks[n]!);
        round[n] = {};
        for (const mib of sizes) {
          const t0 = performance.now();
          await c.request(1, 0, mib * MiB, payload.subarray(0, mib * MiB));
          round[n]![mib] = (performance.now() - t0) / 1000;
        }
        c.close();
      }
      single.push(round);
    }
    process.stderr.write(`bench writes: ${rounds} single-connection rounds done\n`);
    for (let r = 0; r < rounds; r++) {
      const round: Record<string, Awaited<ReturnType<typeof concurrent>>> = {};
      for (const n of rotated(r)) round[n] = await concurrent(socks[n]!, payload, 8);
      conc.push(round);
    }
    process.stderr.write(`bench writes: ${rounds} 8-connection rounds done\n`);
  } finally {
    for (const p of procs) {
      p.kill('SIGTERM');
      await new Promise((r) => (p.exitCode !== null ? r(undefined) : p.once('exit', r)));
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const names = SERVERS.map((s) => s.name);
  const results = Object.fromEntries(names.map((n) => [n, {
    singleMiBps: Object.fromEntries(sizes.map((mib) => [`${mib}MiB`, mib / median(single.map((r) => r[n]![mib]!))])),
    singleMs: Object.fromEntries(sizes.map((mib) => [`${mib}MiB`, 1000 * median(single.map((r) => r[n]![mib]!))])),
    growth16to32: median(single.map((r) => r[n]![32]! / r[n]![16]!)),
    eightConnMiBps: (8 * 32) / median(conc.map((r) => r[n]!.seconds)),
    readerMaxMs: median(conc.map((r) => r[n]!.maxReadMs)),
    readerP99Ms: median(conc.map((r) => r[n]!.p99ReadMs)),
    readerReads: median(conc.map((r) => r[n]!.reads)),
  }]));
  // Paired ratios, reference against each peer in the same round; above 1 the reference is
  // faster (for latency: the peer's latency over the reference's).
  const ratios = Object.fromEntries(names.filter((n) => n !== 'reference').map((p) => [p, {
    ...Object.fromEntries(sizes.map((mib) => [`single${mib}MiB`, median(single.map((r) => r[p]![mib]! / r.reference![mib]!))])),
    eightConn: median(conc.map((r) => r[p]!.seconds / r.reference!.seconds)),
    readerMaxLatency: median(conc.map((r) => r[p]!.maxReadMs / r.reference!.maxReadMs)),
    readerP99Latency: median(conc.map((r) => r[p]!.p99ReadMs / r.reference!.p99ReadMs)),
  }]));
  const report = {
    part: 'writes',
    date: new Date().toISOString(),
    host: { cpus: os.cpus().length, node: process.version, loadAverage: os.loadavg() },
    setup: { imageMiB: IMAGE_MIB, sizesMiB: sizes, rounds, concurrentWriters: 8, concurrentWriteMiB: 32, reader: '4 KiB READs back to back on a ninth connection', transport: 'unix', statistic: 'per server: median over rounds; ratios: median of per-round paired ratios (reference vs peer)' },
    results,
    ratios,
  };
  const outDir = path.join(REPO, 'reports/bench');
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'writes.json'), JSON.stringify(report, null, 2) + '\n');
  const f = (x: number, d = 1) => x.toFixed(d).padStart(9);
  const lines = [
    `${'server'.padEnd(10)} ${sizes.map((s) => `${s}MiB ms`.padStart(9)).join(' ')} ${'32/16'.padStart(9)} ${'8x32 MiB/s'.padStart(10)} ${'rd max ms'.padStart(9)} ${'rd p99 ms'.padStart(9)}`,
    ...names.map((n) => {
      const r = results[n]!;
      return `${n.padEnd(10)} ${sizes.map((s) => f(r.singleMs[`${s}MiB`]!)).join(' ')} ${f(r.growth16to32, 2)} ${f(r.eightConnMiBps, 0).padStart(10)} ${f(r.readerMaxMs)} ${f(r.readerP99Ms)}`;
    }),
    ...Object.entries(ratios).map(([p, r]) => `ref/${p}`.padEnd(10) + ' ' + sizes.map((s) => f(r[`single${s}MiB` as keyof typeof r] as number, 2)).join(' ') + ' '.repeat(10) + ` ${f(r.eightConn, 2).padStart(10)} ${f(r.readerMaxLatency, 2)} ${f(r.readerP99Latency, 2)}`),
    'ratios above 1: the reference is faster (latency: lower); written to reports/bench/writes.json',
  ];
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}
