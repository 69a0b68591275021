// A raw-socket TLS probe against `fleece serve` configured as qemu-storage-daemon would be
// (--object tls-creds-*, --nbd-server ...,tls-creds=): the NBD spec's TLS rules (proto.md "TLS
// support", NBD_OPT_STARTTLS) and the connection limits (max-connections, handshake-max-seconds).
// Each probe returns what it saw; the tests judge it, and run the same probe against a known-bad
// configuration (no TLS, x-tls-keep-plaintext=on, no limits) to show the check failing there.
// No timed assertions: limits are judged by counting connections refused and closed.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseArgs } from '../src/daemon/args.ts';
import { RawClient, handshake, infoData, opt, readOptReplies, readOptReply, readReply, request, tmpDir } from './nbd-helpers.ts';
import { serveInProcess, type Addr, type Served } from './support/serve-inprocess.ts';
import { makeTestPki, type TestPki } from './support/tls-pki.ts';

const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META: 9, SET_META: 10 } as const;
const REP_ACK = 1;
const ERR_INVALID = 0x80000003;
const ERR_TLS_REQD = 0x80000005;

const serve = serveInProcess;

type ClientCreds = { kind: 'psk'; identity: string; key: Buffer } | { kind: 'x509'; dir: string };

function pskKey(file: string): Buffer {
  return Buffer.from(fs.readFileSync(file, 'utf8').trim().split(':')[1]!, 'hex');
}

/** The client side of the TLS upgrade on the plain socket of `c`; resolves with a client over
 * TLS, rejects if the server refused the handshake. */
function upgrade(c: RawClient, creds: ClientCreds): Promise<RawClient> {
  const base = { socket: c.socket, servername: 'localhost' } as tls.ConnectionOptions;
  const opts: tls.ConnectionOptions =
    creds.kind === 'psk'
      ? { ...base, pskCallback: () => ({ identity: creds.identity, psk: creds.key }), checkServerIdentity: () => undefined }
      : {
          ...base,
          ca: fs.readFileSync(path.join(creds.dir, 'ca-cert.pem')),
          ...(fs.existsSync(path.join(creds.dir, 'client-cert.pem'))
            ? { cert: fs.readFileSync(path.join(creds.dir, 'client-cert.pem')), key: fs.readFileSync(path.join(creds.dir, 'client-key.pem')) }
            : {}),
        };
  return new Promise((resolve, reject) => {
    const t = tls.connect(opts);
    t.once('secureConnect', () => resolve(RawClient.over(t)));
    t.once('error', reject);
    t.once('close', () => reject(new Error('closed during the TLS handshake')));
  });
}

/** Greeting, client flags, STARTTLS (ACK expected), TLS: a client over TLS in option haggling. */
async function tlsClient(addr: Addr, creds: ClientCreds): Promise<RawClient> {
  const c = await RawClient.connect(addr);
  await handshake(c);
  c.send(opt(OPT.STARTTLS));
  const r = await readOptReply(c);
  if (r.type !== REP_ACK) throw new Error(`STARTTLS answered 0x${r.type.toString(16)}`);
  return upgrade(c, creds);
}

/** A client over TLS, or the reason the server refused it ('refused: ...'). A refused client may
 * see the handshake fail or, as QEMU does it, the connection close after the handshake (the
 * identity checks come once it is done), so the probe asks for the export list to find out. */
async function tryTls(addr: Addr, creds: ClientCreds): Promise<'served' | `refused: ${string}`> {
  let c: RawClient;
  try {
    c = await tlsClient(addr, creds);
  } catch (e) {
    return `refused: ${(e as Error).message}`;
  }
  try {
    c.send(opt(OPT.LIST));
    const rs = await readOptReplies(c);
    return rs.at(-1)!.type === REP_ACK ? 'served' : `refused: LIST answered 0x${rs.at(-1)!.type.toString(16)}`;
  } catch (e) {
    return `refused: ${(e as Error).message}`;
  } finally {
    c.close();
  }
}

/** Every option but STARTTLS and ABORT before TLS: the reply types, then whether EXPORT_NAME
 * ends the session without a byte of reply (it cannot be refused otherwise). */
async function probeBeforeTls(addr: Addr): Promise<{ replies: Record<string, number>; exportNameClosed: boolean }> {
  const c = await RawClient.connect(addr);
  try {
    await handshake(c);
    const replies: Record<string, number> = {};
    const asks: [string, number, Buffer][] = [
      ['LIST', OPT.LIST, Buffer.alloc(0)],
      ['INFO', OPT.INFO, infoData('disk')],
      ['GO', OPT.GO, infoData('disk')],
      ['STRUCTURED_REPLY', OPT.STRUCTURED_REPLY, Buffer.alloc(0)],
      ['LIST_META', OPT.LIST_META, Buffer.alloc(8)],
      ['SET_META', OPT.SET_META, Buffer.alloc(8)],
      ['unknown 99', 99, Buffer.alloc(0)],
    ];
    for (const [name, o, data] of asks) {
      c.send(opt(o, data));
      const rs = await readOptReplies(c);
      replies[name] = rs.at(-1)!.type;
      // A server that let GO through is in transmission now: nothing more to ask.
      if (o === OPT.GO && rs.at(-1)!.type === REP_ACK) return { replies, exportNameClosed: false };
    }
    c.send(opt(OPT.EXPORT_NAME, Buffer.from('disk')));
    const closed = await c.waitEof(10_000);
    return { replies, exportNameClosed: closed && c.pending === 0 };
  } finally {
    c.close();
  }
}

/** STARTTLS with a LIST pipelined behind it in the same write (the STARTTLS injection), then TLS
 * and STRUCTURED_REPLY: the option of the first reply over TLS says whether the plaintext LIST
 * was acted on. */
async function probeInjection(addr: Addr, creds: ClientCreds): Promise<{ firstOptionOverTls: number }> {
  const c = await RawClient.connect(addr);
  await handshake(c);
  c.send(Buffer.concat([opt(OPT.STARTTLS), opt(OPT.LIST)]));
  const ack = await readOptReply(c);
  expect(ack.type).toBe(REP_ACK);
  const t = await upgrade(c, creds);
  try {
    t.send(opt(OPT.STRUCTURED_REPLY));
    const first = await readOptReply(t);
    return { firstOptionOverTls: first.option };
  } finally {
    t.close();
  }
}

describe('TLS probe against fleece serve', () => {
  let pki: TestPki;
  const t = tmpDir('fleece-tls-probe-');
  const img = path.join(t.dir, 'disk.raw');
  const sock = (n: string) => path.join(t.dir, `${n}.sock`);
  const servers: Served[] = [];
  let alice: ClientCreds;
  const common = (name: string, nbd: string, objects: string[] = []) => [
    ...objects.flatMap((o) => ['--object', o]),
    '--blockdev', `driver=file,node-name=f,filename=${img}`,
    '--nbd-server', nbd,
    '--export', `type=nbd,id=e,node-name=f,name=${name}`,
  ];
  const start = async (argv: string[]) => {
    const s = await serve(argv);
    servers.push(s);
    return s;
  };

  beforeAll(() => {
    pki = makeTestPki('fleece-tls-probe-pki-');
    alice = { kind: 'psk', identity: 'alice', key: pskKey(pki.pskClient('alice').file) };
    const content = Buffer.alloc(1 << 20);
    content.fill(0x5a, 0, 4096);
    fs.writeFileSync(img, content);
  });
  afterAll(async () => {
    for (const s of servers) await s.d.close();
    pki?.cleanup();
    t.cleanup();
  });

  const psk = () => `tls-creds-psk,id=tls0,dir=${pki.pskDir},endpoint=server`;
  const x509 = (extra = '') => `tls-creds-x509,id=tls0,dir=${pki.serverDir},endpoint=server${extra}`;

  it('options before TLS get ERR_TLS_REQD and EXPORT_NAME closes; a server without TLS (known-bad here) answers them', async () => {
    const good = await start(common('disk', `addr.type=unix,addr.path=${sock('forced')},tls-creds=tls0`, [psk()]));
    const r = await probeBeforeTls(good.addr);
    expect(r.replies).toEqual({ LIST: ERR_TLS_REQD, INFO: ERR_TLS_REQD, GO: ERR_TLS_REQD, STRUCTURED_REPLY: ERR_TLS_REQD, LIST_META: ERR_TLS_REQD, SET_META: ERR_TLS_REQD, 'unknown 99': ERR_TLS_REQD });
    expect(r.exportNameClosed).toBe(true);
    expect(good.d.nbdServer!.connectionCount).toBe(0);
    const plain = await start(common('disk', `addr.type=unix,addr.path=${sock('plain')}`));
    const bad = await probeBeforeTls(plain.addr);
    expect(bad.replies.LIST).toBe(REP_ACK);
    expect(bad.replies.GO).toBe(REP_ACK); // reached the export without TLS
  });

  it('STARTTLS with data is ERR_INVALID and the session goes on; a second STARTTLS over TLS is ERR_INVALID; over TLS the export is served', async () => {
    const s = await start(common('disk', `addr.type=unix,addr.path=${sock('starttls')},tls-creds=tls0`, [psk()]));
    const c = await RawClient.connect(s.addr);
    await handshake(c);
    c.send(opt(OPT.STARTTLS, Buffer.from('x')));
    expect((await readOptReply(c)).type).toBe(ERR_INVALID);
    c.send(opt(OPT.STARTTLS));
    expect((await readOptReply(c)).type).toBe(REP_ACK);
    const tc = await upgrade(c, alice);
    tc.send(opt(OPT.STARTTLS));
    expect((await readOptReply(tc)).type).toBe(ERR_INVALID);
    // No ERR_TLS_REQD once TLS is up; GO and a READ work.
    tc.send(opt(OPT.GO, infoData('disk')));
    expect((await readOptReplies(tc)).at(-1)!.type).toBe(REP_ACK);
    tc.send(request(0, 0, 4096));
    const rd = await readReply(tc, 4096);
    expect(rd.error).toBe(0);
    expect(rd.data!.every((b) => b === 0x5a)).toBe(true);
    tc.close();
  });

  it('plaintext pipelined after STARTTLS is not acted on; x-tls-keep-plaintext=on (UNSAFE) acts on it and the probe catches it', async () => {
    for (const creds of ['psk', 'x509'] as const) {
      const objects = [creds === 'psk' ? psk() : x509()];
      const who: ClientCreds = creds === 'psk' ? alice : { kind: 'x509', dir: pki.clientDir };
      const good = await start(common('disk', `addr.type=unix,addr.path=${sock(`inj-${creds}`)},tls-creds=tls0`, objects));
      expect(await probeInjection(good.addr, who)).toEqual({ firstOptionOverTls: OPT.STRUCTURED_REPLY });
      expect(good.logs.some((l) => /dropping 16 bytes sent in plaintext after NBD_OPT_STARTTLS/.test(l))).toBe(true);
      const bad = await start(common('disk', `addr.type=unix,addr.path=${sock(`inj-bad-${creds}`)},tls-creds=tls0,x-tls-keep-plaintext=on`, objects));
      expect(await probeInjection(bad.addr, who)).toEqual({ firstOptionOverTls: OPT.LIST });
    }
  });

  it('a wrong PSK key or an unknown identity is refused at the handshake, the right one served, and the server goes on', async () => {
    const s = await start(common('disk', `addr.type=unix,addr.path=${sock('wrongpsk')},tls-creds=tls0`, [psk()]));
    expect(await tryTls(s.addr, { kind: 'psk', identity: 'alice', key: pskKey(pki.wrongPsk.file) })).toMatch(/^refused/);
    expect(await tryTls(s.addr, { kind: 'psk', identity: 'mallory', key: pskKey(pki.pskClient('alice').file) })).toMatch(/^refused/);
    expect(await tryTls(s.addr, alice)).toBe('served');
    expect(s.d.nbdServer!.tlsRefusals).toBe(2);
  });

  it('x509 with verify-peer (the default): no client certificate, or one from another CA, is refused; verify-peer=off lets the first in', async () => {
    const s = await start(common('disk', `addr.type=unix,addr.path=${sock('x509')},tls-creds=tls0`, [x509()]));
    expect(await tryTls(s.addr, { kind: 'x509', dir: pki.caOnlyDir })).toMatch(/^refused/);
    expect(await tryTls(s.addr, { kind: 'x509', dir: pki.rogueDir })).toMatch(/^refused/);
    expect(await tryTls(s.addr, { kind: 'x509', dir: pki.clientDir })).toBe('served');
    expect(s.d.nbdServer!.tlsRefusals).toBe(2);
    expect(s.logs).toContain('nbd: option negotiation failed: Verify failed: No certificate was found.');
    expect(s.logs).toContain("nbd: option negotiation failed: The certificate hasn't got a known issuer");
    const off = await start(common('disk', `addr.type=unix,addr.path=${sock('x509-off')},tls-creds=tls0`, [x509(',verify-peer=off')]));
    expect(await tryTls(off.addr, { kind: 'x509', dir: pki.caOnlyDir })).toBe('served');
  });

  it('x509 with ca-crl.pem: the revoked client certificate is refused; the same server without the CRL serves it', async () => {
    const s = await start(common('disk', `addr.type=unix,addr.path=${sock('crl')},tls-creds=tls0`, [`tls-creds-x509,id=tls0,dir=${pki.revokingServerDir},endpoint=server`]));
    expect(await tryTls(s.addr, { kind: 'x509', dir: pki.clientDir })).toMatch(/^refused/);
    expect(s.logs, s.logs.join('\n')).toContain('nbd: option negotiation failed: The certificate has been revoked');
    const without = await start(common('disk', `addr.type=unix,addr.path=${sock('no-crl')},tls-creds=tls0`, [x509()]));
    expect(await tryTls(without.addr, { kind: 'x509', dir: pki.clientDir })).toBe('served');
  });

  it('authz: the x509 DN and the PSK username are checked; a denied client is refused after the handshake with QEMU\'s message', async () => {
    const allowDn = `{"qom-type":"authz-simple","id":"az0","identity":${JSON.stringify(pki.clientDn)}}`;
    const s = await start(common('disk', `addr.type=unix,addr.path=${sock('authz-x509')},tls-creds=tls0,tls-authz=az0`, [x509(), allowDn]));
    expect(await tryTls(s.addr, { kind: 'x509', dir: pki.clientDir })).toBe('served');
    const deny = await start(common('disk', `addr.type=unix,addr.path=${sock('authz-x509-deny')},tls-creds=tls0,tls-authz=az0`, [
      x509(), 'authz-list,id=az0,policy=deny,rules.0.match=*CN=other.example.com,rules.0.policy=allow,rules.0.format=glob',
    ]));
    expect(await tryTls(deny.addr, { kind: 'x509', dir: pki.clientDir })).toMatch(/^refused/);
    expect(deny.logs).toContain(`nbd: option negotiation failed: TLS x509 authz check for ${pki.clientDn} is denied`);
    const p = await start(common('disk', `addr.type=unix,addr.path=${sock('authz-psk')},tls-creds=tls0,tls-authz=az0`, [psk(), 'authz-simple,id=az0,identity=alice']));
    expect(await tryTls(p.addr, alice)).toBe('served');
    expect(await tryTls(p.addr, { kind: 'psk', identity: 'bob', key: pskKey(pki.pskClient('bob').file) })).toMatch(/^refused/);
    expect(p.logs).toContain('nbd: option negotiation failed: TLS PSK authz check for bob is denied');
  });

  it('handshake-max-seconds drops clients stalled before or inside the TLS handshake; with 0 (no limit, known-bad here) they stay', async () => {
    const good = await start(common('disk', `addr.type=unix,addr.path=${sock('stall')},tls-creds=tls0,handshake-max-seconds=1`, [psk()]));
    const bad = await start(common('disk', `addr.type=unix,addr.path=${sock('stall-bad')},tls-creds=tls0,handshake-max-seconds=0`, [psk()]));
    const stall = async (addr: Addr, inTls: boolean) => {
      const c = await RawClient.connect(addr);
      await handshake(c);
      if (inTls) {
        c.send(opt(OPT.STARTTLS));
        expect((await readOptReply(c)).type).toBe(REP_ACK);
        // ...and never a ClientHello.
      }
      return c;
    };
    const stalled = [await stall(good.addr, false), await stall(good.addr, true)];
    const kept = [await stall(bad.addr, false), await stall(bad.addr, true)];
    // Event-driven: wait (bounded) for the good server to close its stalled clients.
    for (const c of stalled) expect(await c.waitEof(20_000)).toBe(true);
    expect(good.d.nbdServer!.handshakeTimeouts).toBe(2);
    // By then, the server without a limit still holds both.
    expect(kept.map((c) => c.ended)).toEqual([false, false]);
    expect(bad.d.nbdServer!.handshakeTimeouts).toBe(0);
    expect(bad.d.nbdServer!.connectionCount).toBe(2);
    for (const c of [...stalled, ...kept]) c.close();
  });

  it('a flood past max-connections over TCP loopback is refused while a client in transmission is served; stalled ones are dropped, then a new client gets in', async () => {
    const MAX = 4;
    const FLOOD = 12;
    const flood = async (addr: Addr) => {
      const cs = await Promise.all(Array.from({ length: FLOOD }, () => RawClient.connect(addr)));
      // Each either gets the 18-byte greeting or is closed with nothing sent.
      const seen = await Promise.all(cs.map(async (c) => {
        try {
          await c.read(18, 20_000);
          return 'greeted' as const;
        } catch {
          return 'refused' as const;
        }
      }));
      return { cs, greeted: seen.filter((x) => x === 'greeted').length, refused: seen.filter((x) => x === 'refused').length };
    };
    const s = await start(common('disk', `addr.type=inet,addr.host=127.0.0.1,addr.port=0,tls-creds=tls0,max-connections=${MAX},handshake-max-seconds=1`, [psk()]));
    const healthy = await tlsClient(s.addr, alice);
    healthy.send(opt(OPT.GO, infoData('disk')));
    expect((await readOptReplies(healthy)).at(-1)!.type).toBe(REP_ACK);
    const f = await flood(s.addr);
    expect(f).toMatchObject({ greeted: MAX - 1, refused: FLOOD - (MAX - 1) });
    expect(s.d.nbdServer!.connectionsRefused).toBe(FLOOD - (MAX - 1));
    // Meanwhile the client in transmission is served.
    healthy.send(request(0, 0, 4096));
    const rd = await readReply(healthy, 4096);
    expect(rd.error).toBe(0);
    expect(rd.data![0]).toBe(0x5a);
    // The greeted flooders never negotiate: handshake-max-seconds frees their slots.
    for (const c of f.cs.filter((c) => !c.ended)) expect(await c.waitEof(20_000)).toBe(true);
    expect(s.d.nbdServer!.handshakeTimeouts).toBe(MAX - 1);
    expect(await tryTls(s.addr, alice)).toBe('served');
    healthy.close();
    // Known-bad: max-connections=0 (unlimited) greets the whole flood.
    const bad = await start(common('disk', `addr.type=inet,addr.host=127.0.0.1,addr.port=0,tls-creds=tls0,max-connections=0,handshake-max-seconds=0`, [psk()]));
    const fb = await flood(bad.addr);
    expect(fb).toMatchObject({ greeted: FLOOD, refused: 0 });
    for (const c of [...f.cs, ...fb.cs]) c.close();
  });

  it('the default limits: max-connections 100 and handshake-max-seconds 10 when not given', async () => {
    const s = await start(common('disk', `addr.type=unix,addr.path=${sock('defaults')}`));
    const cs = await Promise.all(Array.from({ length: 101 }, () => RawClient.connect(s.addr)));
    const seen = await Promise.all(cs.map((c) => c.read(18, 20_000).then(() => 'greeted', () => 'refused')));
    expect(seen.filter((x) => x === 'greeted').length).toBe(100);
    expect(s.d.nbdServer!.connectionsRefused).toBe(1);
    for (const c of cs) c.close();
    expect(parseArgs(['--nbd-server', 'addr.type=unix,addr.path=/x']).actions[0]).toMatchObject({ options: { maxConnections: 100, handshakeMaxSeconds: 10 } });
  });
});
