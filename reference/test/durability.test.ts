// Durability of acknowledged writes (proto.md "NBD_CMD_FLUSH": every write acknowledged before
// the FLUSH reply is on stable storage; "NBD_CMD_FLAG_FUA": the write is on stable storage when
// its reply is sent). `fleece serve` runs under strace, a client writes 64 KiB of 0xab with FUA
// (or writes, then FLUSHes), the server is killed with SIGKILL while the connection is still open
// (so no close-time flush can help), and qemu-io reads the image.
//
// What this proves, honestly: SIGKILL does not drop the page cache, so the qemu-io read passes
// whether or not the server synced - it shows the acknowledged data reached the file, not that it
// reached the disk. Stable storage is shown by the syscall trace: an fdatasync on the image's file
// descriptor comes after the data's pwrite and before the reply's bytes go out on the socket.
// With the UNSAFE known-bad x-skip-flush=on that fdatasync is missing, and the test shows the
// durability check failing on it. Needs strace and qemu-io (never skipped).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FLEECE, REPO } from './daemon-helpers.ts';
import { infoData, opt, RawClient, requirePeer, run, tmpDir } from './nbd-helpers.ts';

const KiB = 1024;
const DATA = 64 * KiB;

interface Trace {
  /** The sequence of interesting syscalls of the server, in order. */
  events: { kind: 'pwrite' | 'fdatasync' | 'reply'; fd: number; line: string }[];
}

/** Parses `strace -f -xx` output: pwrite64s of the data, fdatasyncs, and writes of a simple
 * reply (magic 0x67446698) to a socket. */
export function parseTrace(text: string): Trace {
  const events: Trace['events'] = [];
  for (const line of text.split('\n')) {
    // A call interrupted by another thread's is logged as "name(fd, args <unfinished ...>" and
    // later "<... name resumed>": the first half has the name, fd and data, so it is the one kept.
    const m = /(pwrite64|fdatasync|write|writev)\((\d+)/.exec(line);
    if (!m) continue;
    const fd = Number(m[2]);
    if (m[1] === 'pwrite64' && line.includes(`, ${DATA}, `)) events.push({ kind: 'pwrite', fd, line });
    else if (m[1] === 'fdatasync') events.push({ kind: 'fdatasync', fd, line });
    else if ((m[1] === 'write' || m[1] === 'writev') && line.includes('\\x67\\x44\\x66\\x98')) events.push({ kind: 'reply', fd, line });
  }
  return { events };
}

/** undefined when the data's pwrite is followed by an fdatasync of the same fd before the
 * reply of the acknowledging request; else what is missing. */
export function durabilityProblem(t: Trace, replyIndex: number): string | undefined {
  const w = t.events.findIndex((e) => e.kind === 'pwrite');
  if (w < 0) return 'the 64 KiB pwrite64 of the data is not in the trace';
  const replies = t.events.map((e, i) => ({ e, i })).filter(({ e, i }) => e.kind === 'reply' && i > w);
  const ack = replies[replyIndex];
  if (!ack) return `reply ${replyIndex + 1} after the data's pwrite is not in the trace`;
  const synced = t.events.slice(w + 1, ack.i).some((e) => e.kind === 'fdatasync' && e.fd === t.events[w]!.fd);
  return synced ? undefined : `no fdatasync(${t.events[w]!.fd}) between the data's pwrite and the acknowledgement: the write was acknowledged from the page cache`;
}

const dirs: { cleanup(): void }[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) d.cleanup();
});

async function scenario(mode: 'fua' | 'flush', skipFlush: boolean): Promise<{ problem: string | undefined; qemuIo: string; trace: Trace }> {
  requirePeer('strace');
  requirePeer('qemu-io');
  const tmp = tmpDir('fleece-durable-');
  dirs.push(tmp);
  const img = path.join(tmp.dir, 'disk.raw');
  fs.writeFileSync(img, Buffer.alloc(1 << 20));
  const sock = path.join(tmp.dir, 'nbd.sock');
  const log = path.join(tmp.dir, 'strace.log');
  const proc = spawn(
    'strace',
    ['-f', '-qq', '-xx', '-s', '8', '-e', 'trace=pwrite64,fdatasync,write,writev', '-o', log, process.execPath, FLEECE, 'serve',
      '--blockdev', `driver=file,node-name=d0,filename=${img}${skipFlush ? ',x-skip-flush=on' : ''}`,
      '--nbd-server', `addr.type=unix,addr.path=${sock}`,
      '--export', 'type=nbd,id=e0,node-name=d0,name=disk,writable=on'],
    { stdio: ['ignore', 'ignore', 'pipe'], cwd: REPO },
  );
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  try {
    for (const t0 = Date.now(); !fs.existsSync(sock); ) {
      if (Date.now() - t0 > 30_000) throw new Error(`fleece serve did not listen: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const c = await RawClient.connect(sock);
    await c.read(18, 10_000);
    c.send(Buffer.from([0, 0, 0, 3])); // FIXED_NEWSTYLE | NO_ZEROES
    c.send(opt(7, infoData('disk')));
    for (;;) {
      const h = await c.read(20, 10_000);
      const type = h.readUInt32BE(12);
      await c.read(h.readUInt32BE(16), 10_000);
      if (type === 1) break; // NBD_REP_ACK
      if (type & 0x80000000) throw new Error(`GO refused: 0x${type.toString(16)}`);
    }
    const req = (type: number, flags: number, cookie: number, length: number, payload?: Buffer) => {
      const b = Buffer.alloc(28);
      b.writeUInt32BE(0x25609513, 0);
      b.writeUInt16BE(flags, 4);
      b.writeUInt16BE(type, 6);
      b.writeBigUInt64BE(BigInt(cookie), 8);
      b.writeBigUInt64BE(0n, 16);
      b.writeUInt32BE(length, 24);
      return payload ? Buffer.concat([b, payload]) : b;
    };
    const data = Buffer.alloc(DATA, 0xab);
    const expectOk = async (cookie: number) => {
      const r = await c.read(16, 10_000);
      expect(r.readUInt32BE(4), 'NBD error').toBe(0);
      expect(r.readBigUInt64BE(8)).toBe(BigInt(cookie));
    };
    if (mode === 'fua') {
      c.send(req(1, 1 /* FUA */, 1, DATA, data));
      await expectOk(1);
    } else {
      c.send(req(1, 0, 1, DATA, data));
      await expectOk(1);
      c.send(req(3, 0, 2, 0)); // FLUSH
      await expectOk(2);
    }
    // kill -9 the server (strace's child) with the connection still open.
    const children = fs.readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').trim().split(/\s+/).map(Number);
    expect(children.length).toBe(1);
    process.kill(children[0]!, 'SIGKILL');
    await exited;
    c.close();
    const io = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xab 0 64k', img]);
    const trace = parseTrace(fs.readFileSync(log, 'utf8'));
    return { problem: durabilityProblem(trace, mode === 'fua' ? 0 : 1), qemuIo: io.stdout + io.stderr, trace };
  } finally {
    proc.kill('SIGKILL');
    await exited;
  }
}

describe('durability: acknowledged FUA writes and FLUSHes survive kill -9 (file driver fdatasync)', () => {
  for (const mode of ['fua', 'flush'] as const) {
    it(`${mode}: qemu-io reads the data after kill -9, and fdatasync came before the acknowledgement`, async () => {
      const r = await scenario(mode, false);
      expect(r.qemuIo).not.toMatch(/Pattern verification failed|error/i);
      expect(r.qemuIo).toMatch(/read 65536\/65536 bytes/);
      expect(r.problem, JSON.stringify(r.trace.events.map((e) => `${e.kind}(${e.fd})`))).toBeUndefined();
    });

    it(`${mode}: fails on the UNSAFE known-bad x-skip-flush=on (no fdatasync before the acknowledgement)`, async () => {
      const r = await scenario(mode, true);
      // The page cache survives SIGKILL: the read alone cannot tell (see the header comment).
      expect(r.qemuIo).toMatch(/read 65536\/65536 bytes/);
      expect(r.problem).toMatch(/no fdatasync/);
    });
  }
});
