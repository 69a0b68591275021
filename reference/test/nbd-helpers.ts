// Test helpers for the NBD server tests: an in-memory BlockBackend, a raw-socket client that
// reads exact byte counts, and peer-command runners that fail loudly when a peer is missing.
import { execFile, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { BlockError } from '../src/block/errors.ts';
import type { BlockBackend, Extent, RequestFlags } from '../src/block/types.ts';

const GRAIN = 4096;

/** A sparse in-memory disk: data + an allocation map at 4 KiB grain (zeroed grains are holes). */
export class MemoryBackend implements BlockBackend {
  readonly user = 'an unnamed block device';
  readonly data: Buffer;
  readonly allocated: Uint8Array;
  flushes = 0;
  readonly log: string[] = [];
  /** Make the next operations fail with this errno (fault injection for error mapping tests). */
  failWith: BlockError | undefined;
  constructor(
    size: number,
    readonly nodeName = 'mem0',
  ) {
    this.data = Buffer.alloc(size);
    this.allocated = new Uint8Array(Math.ceil(size / GRAIN));
  }
  length(): number {
    return this.data.length;
  }
  private check(op: string, offset: number, bytes: number): void {
    if (this.failWith) throw this.failWith;
    if (offset + bytes > this.data.length) throw new BlockError('EINVAL', `${op} past end`, { node: this.nodeName, op, offset, bytes });
  }
  async read(offset: number, bytes: number): Promise<Buffer> {
    this.check('read', offset, bytes);
    const out = Buffer.allocUnsafe(bytes);
    this.data.copy(out, 0, offset, offset + bytes);
    return out;
  }
  async write(offset: number, data: Buffer, flags?: RequestFlags): Promise<void> {
    this.check('write', offset, data.length);
    this.log.push(`write ${offset} ${data.length}${flags?.fua ? ' fua' : ''}`);
    data.copy(this.data, offset);
    for (let g = Math.floor(offset / GRAIN); g * GRAIN < offset + data.length; g++) this.allocated[g] = 1;
  }
  async writeZeroes(offset: number, bytes: number, flags?: RequestFlags): Promise<void> {
    this.check('write-zeroes', offset, bytes);
    this.log.push(`write-zeroes ${offset} ${bytes}${flags?.noHole ? ' no-hole' : ''}${flags?.fastZero ? ' fast' : ''}`);
    this.data.fill(0, offset, offset + bytes);
    this.unmap(offset, bytes, !flags?.noHole);
  }
  async discard(offset: number, bytes: number): Promise<void> {
    this.check('discard', offset, bytes);
    this.log.push(`discard ${offset} ${bytes}`);
    this.data.fill(0, offset, offset + bytes);
    this.unmap(offset, bytes, true);
  }
  private unmap(offset: number, bytes: number, punch: boolean): void {
    for (let g = Math.ceil(offset / GRAIN); (g + 1) * GRAIN <= offset + bytes; g++) this.allocated[g] = punch ? 0 : 1;
  }
  async flush(): Promise<void> {
    if (this.failWith) throw this.failWith;
    this.flushes++;
  }
  async blockStatus(offset: number, bytes: number): Promise<Extent[]> {
    this.check('block-status', offset, bytes);
    const out: Extent[] = [];
    let pos = offset;
    while (pos < offset + bytes) {
      const g = Math.floor(pos / GRAIN);
      const next = Math.min((g + 1) * GRAIN, this.data.length);
      const allocated = this.allocated[g] === 1;
      const last = out[out.length - 1];
      const len = next - pos;
      if (last && last.allocated === allocated) out[out.length - 1] = { ...last, length: last.length + len };
      else out.push({ offset: pos, length: len, allocated, zero: !allocated });
      pos = next;
    }
    return out;
  }
  detach(): void {}
}

export function tmpDir(prefix = 'fleece-nbd-'): { dir: string; cleanup(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Fails (never skips) when a peer command is not installed. */
export function requirePeer(cmd: string): void {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`]);
  if (r.status !== 0) throw new Error(`peer command '${cmd}' is missing: run 'npm run peers'`);
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a peer asynchronously (the server under test lives in this process: a sync spawn would
 * block its event loop). Never rejects; check `code`. */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  requirePeer(cmd);
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 64 << 20, env: opts.env ?? process.env }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

export async function runOk(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

/** A raw NBD byte-level client: send bytes, read exact counts, observe EOF. */
export class RawClient {
  // Received bytes as a chunk list: concatenating on every 'data' event would be quadratic when
  // a test lets hundreds of MiB of replies pile up.
  private chunks: Buffer[] = [];
  private size = 0;
  private waiters: (() => void)[] = [];
  ended = false;
  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.size += d.length;
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', () => {
      this.ended = true;
      this.wake();
    });
  }
  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  private take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let p = 0;
    while (p < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - p);
      c.copy(out, p, 0, k);
      p += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.size -= n;
    return out;
  }
  /** A client over a socket made elsewhere (the TLS socket after STARTTLS). */
  static over(socket: net.Socket): RawClient {
    return new RawClient(socket);
  }
  static connect(addr: string | { port: number; host: string }): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = typeof addr === 'string' ? net.connect(addr) : net.connect(addr.port, addr.host);
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }
  send(b: Buffer): void {
    this.socket.write(b);
  }
  /** Reads exactly n bytes, or throws on EOF/timeout. */
  async read(n: number, timeoutMs = 3000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.size < n) {
      if (this.ended) throw new Error(`EOF after ${this.size} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for ${n} bytes (have ${this.size})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return this.take(n);
  }
  /** Resolves true when the server closed the connection (with nothing more to read). */
  async waitEof(timeoutMs = 3000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return true;
  }
  get pending(): number {
    return this.size;
  }
  close(): void {
    this.socket.destroy();
  }
}

// Raw message builders (independent of the server's codec on purpose: a test that used the
// codec under test to build its input could share its bugs).
export function opt(option: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): Buffer {
  const b = Buffer.alloc(16);
  b.write('IHAVEOPT', 0, 'latin1');
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(lengthOverride ?? data.length, 12);
  return Buffer.concat([b, data]);
}
export function infoData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}
export function metaData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(n.length);
  parts.push(h, n);
  const c = Buffer.alloc(4);
  c.writeUInt32BE(queries.length);
  parts.push(c);
  for (const q of queries) {
    const qb = Buffer.from(q);
    const l = Buffer.alloc(4);
    l.writeUInt32BE(qb.length);
    parts.push(l, qb);
  }
  return Buffer.concat(parts);
}
export function request(type: number, offset: number | bigint, length: number, opts: { flags?: number; cookie?: bigint; data?: Buffer } = {}): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(opts.flags ?? 0, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(opts.cookie ?? 0x1234n, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return opts.data ? Buffer.concat([b, opts.data]) : b;
}

export interface OptReply {
  option: number;
  type: number;
  data: Buffer;
}
export async function readOptReply(c: RawClient): Promise<OptReply> {
  const h = await c.read(20);
  if (h.readBigUInt64BE(0) !== 0x0003e889045565a9n) throw new Error(`bad option reply magic ${h.toString('hex')}`);
  const len = h.readUInt32BE(16);
  return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? Buffer.from(await c.read(len)) : Buffer.alloc(0) };
}
/** Reads option replies up to the final one (ACK or an error). */
export async function readOptReplies(c: RawClient): Promise<OptReply[]> {
  const out: OptReply[] = [];
  for (;;) {
    const r = await readOptReply(c);
    out.push(r);
    if (r.type === 1 || r.type >= 0x80000000) return out;
  }
}

export interface Reply {
  structured: boolean;
  cookie: bigint;
  error: number;
  /** Structured: every chunk. */
  chunks: { type: number; flags: number; data: Buffer }[];
  data?: Buffer;
}
/** Reads one whole reply: a simple reply (with `readLen` bytes of data for a successful simple
 * READ) or structured chunks up to DONE. */
export async function readReply(c: RawClient, readLen = 0): Promise<Reply> {
  const m = (await c.read(4)).readUInt32BE(0);
  if (m === 0x67446698) {
    const r = await c.read(12);
    const error = r.readUInt32BE(0);
    const cookie = r.readBigUInt64BE(4);
    const data = error === 0 && readLen > 0 ? Buffer.from(await c.read(readLen)) : undefined;
    return { structured: false, cookie, error, chunks: [], ...(data ? { data } : {}) };
  }
  if (m !== 0x668e33ef) throw new Error(`bad reply magic ${m.toString(16)}`);
  const chunks: Reply['chunks'] = [];
  let cookie = 0n;
  let error = 0;
  let first = true;
  for (;;) {
    const h = first ? await c.read(16) : (await c.read(20)).subarray(4);
    first = false;
    const flags = h.readUInt16BE(0);
    const type = h.readUInt16BE(2);
    cookie = h.readBigUInt64BE(4);
    const len = h.readUInt32BE(12);
    const data = len ? Buffer.from(await c.read(len)) : Buffer.alloc(0);
    chunks.push({ type, flags, data });
    if (type & 0x8000) error = data.readUInt32BE(0);
    if (flags & 1) break;
  }
  return { structured: true, cookie, error, chunks };
}

/** Newstyle handshake up to options: reads the greeting, sends client flags. */
export async function handshake(c: RawClient, clientFlags = 3): Promise<Buffer> {
  const g = await c.read(18);
  const f = Buffer.alloc(4);
  f.writeUInt32BE(clientFlags >>> 0);
  c.send(f);
  return g;
}
/** Handshake + optional SR + optional meta + GO on `name`: returns the INFO_EXPORT (size, flags). */
export async function openExport(c: RawClient, name: string, opts: { structured?: boolean; meta?: string[] } = {}): Promise<{ size: bigint; flags: number }> {
  await handshake(c);
  if (opts.structured) {
    c.send(opt(8));
    const r = await readOptReplies(c);
    if (r[0]!.type !== 1) throw new Error('SR refused');
  }
  if (opts.meta) {
    c.send(opt(10, metaData(name, opts.meta)));
    await readOptReplies(c);
  }
  c.send(opt(7, infoData(name)));
  const rs = await readOptReplies(c);
  const last = rs[rs.length - 1]!;
  if (last.type !== 1) throw new Error(`GO failed: 0x${last.type.toString(16)} ${last.data.toString()}`);
  const ex = rs.find((r) => r.type === 3 && r.data.readUInt16BE(0) === 0)!;
  return { size: ex.data.readBigUInt64BE(2), flags: ex.data.readUInt16BE(10) };
}
