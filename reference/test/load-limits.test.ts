// What a stray or hostile client can cost `fleece serve`, measured on the process: resident
// memory stays bounded and a healthy client on its own connection keeps being served while
// (1) clients flood 32 MiB WRITEs and never read a reply, (2) hundreds of connections sit idle
// in the handshake or in transmission, (3) clients drip their handshake a byte at a time.
// Bounds are on memory and on being served at all, never on time.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from './daemon-helpers.ts';
import { RawClient, openExport, readReply, request, tmpDir } from './nbd-helpers.ts';

const MiB = 1 << 20;

function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

describe('fleece serve under load from clients that misbehave', () => {
  const t = tmpDir('fleece-load-');
  const img = path.join(t.dir, 'disk.raw');
  const sock = path.join(t.dir, 'nbd.sock');
  let d: Daemon;
  const open: net.Socket[] = [];
  beforeAll(async () => {
    const content = Buffer.alloc(64 * MiB);
    content.fill(0x33, 0, MiB);
    fs.writeFileSync(img, content);
    d = await startDaemon('fleece', [
      '--blockdev', `driver=file,node-name=f,filename=${img}`,
      // Without the connection and handshake limits (their defaults would refuse most of these
      // clients, which nbd-tls-probe.test.ts counts): what is measured is the server's own cost.
      '--nbd-server', `addr.type=unix,addr.path=${sock},max-connections=0,handshake-max-seconds=0`,
      '--export', 'type=nbd,id=e,node-name=f,name=disk,writable=on',
    ], sock);
  });
  afterAll(async () => {
    for (const s of open) s.destroy();
    await d?.kill();
    t.cleanup();
  });

  /** A healthy client: a fresh connection, a 4 KiB READ of known data. */
  async function healthy(): Promise<void> {
    const c = await RawClient.connect(sock);
    try {
      await openExport(c, 'disk');
      c.send(request(0, 0, 4096, { cookie: 77n }));
      const r = await readReply(c, 4096);
      expect(r.error).toBe(0);
      expect(r.data!.equals(Buffer.alloc(4096, 0x33))).toBe(true);
    } finally {
      c.close();
    }
  }

  it('2 clients each send 4 WRITEs of 32 MiB and never read: memory stays bounded (the in-flight caps hold), a healthy client is served', async () => {
    const before = rss(d.proc.pid!);
    const payload = Buffer.alloc(32 * MiB, 0x44);
    const flooders: RawClient[] = [];
    const write = (k: number) => request(1, 32 * MiB, 32 * MiB, { cookie: BigInt(k + 1), data: payload });
    for (let i = 0; i < 2; i++) {
      const c = await RawClient.connect(sock);
      await openExport(c, 'disk');
      c.socket.pause(); // never read a reply
      flooders.push(c);
      // 128 MiB from this client at once: the server takes them as its in-flight caps allow.
      for (let k = 0; k < 4; k++) c.send(write(k));
    }
    let peak = before;
    for (let i = 0; i < 30; i++) {
      await new Promise((r) => setTimeout(r, 100));
      peak = Math.max(peak, rss(d.proc.pid!));
    }
    await healthy();
    peak = Math.max(peak, rss(d.proc.pid!));
    for (const c of flooders) c.close();
    // 2 connections x (the 64 MiB in-flight cap + one payload arriving), plus socket buffers.
    expect(peak - before).toBeLessThan(384 * MiB);
    expect(d.proc.exitCode).toBeNull();
  }, 120_000);

  it('400 idle connections (200 in the handshake, 200 in transmission): a healthy client is served, memory grows by under 128 MiB', async () => {
    const before = rss(d.proc.pid!);
    for (let i = 0; i < 200; i++) {
      const s = net.connect(sock);
      s.on('error', () => undefined);
      open.push(s);
    }
    for (let i = 0; i < 200; i++) {
      const c = await RawClient.connect(sock);
      await openExport(c, 'disk');
      open.push(c.socket);
    }
    await healthy();
    expect(rss(d.proc.pid!) - before).toBeLessThan(128 * MiB);
    expect(d.proc.exitCode).toBeNull();
    for (const s of open.splice(0)) s.destroy();
  }, 120_000);

  it('50 clients drip their handshake a byte every 50 ms: a healthy client is served meanwhile', async () => {
    const flags = Buffer.from([0, 0, 0, 3]);
    const drips = Array.from({ length: 50 }, () => {
      const s = net.connect(sock);
      s.on('error', () => undefined);
      s.on('data', () => undefined);
      open.push(s);
      return s;
    });
    let i = 0;
    const timer = setInterval(() => {
      for (const s of drips) if (!s.destroyed && i < flags.length) s.write(flags.subarray(i, i + 1));
      i++;
    }, 50);
    try {
      for (let k = 0; k < 3; k++) await healthy();
    } finally {
      clearInterval(timer);
    }
    expect(d.proc.exitCode).toBeNull();
  }, 60_000);
});
