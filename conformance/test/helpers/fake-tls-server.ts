// A TLS front for the in-test fake NBD server (fake-server.ts), for the tests only: it speaks the
// handshake up to NBD_OPT_STARTTLS itself, runs the TLS handshake on node:tls, then relays the
// decrypted stream to a fresh plaintext connection of the fake (so negotiation state is reset,
// as proto.md "NBD_OPT_STARTTLS" requires). Conforming by default; each named fault breaks one
// TLS rule so every nbd/tls check is seen failing.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { parsePskKeys } from '../../nbd/tls.ts';
import { DEFAULT_LAYOUT } from '../../targets/image.ts';
import { clientCreds, type TlsMode, type TlsTargetInfo } from '../../targets/tls.ts';
import type { RunningTarget, TargetDef } from '../../targets/types.ts';
import { makePki, type Pki } from '../../tls/pki.ts';
import { startFakeServer } from './fake-server.ts';

export const TLS_FAULTS = {
  'answers-before-tls': 'forwards every option before TLS to the server (FORCEDTLS not enforced)',
  'export-name-before-tls': 'serves NBD_OPT_EXPORT_NAME before TLS',
  'acts-on-injection': 'keeps the plaintext bytes pipelined after STARTTLS and acts on them once TLS is up (the STARTTLS injection)',
  'keeps-state': 'keeps the pre-STARTTLS negotiation (relays to the same server connection after TLS)',
  'starttls-twice-ack': 'acknowledges a second STARTTLS (and then carries on without a second handshake)',
  'tls-reqd-after-tls': 'answers NBD_OPT_LIST with ERR_TLS_REQD even after TLS',
  'no-client-verify': 'x509: asks for no client certificate (and so has no name to authorize)',
  'ignores-authz': 'lets in any client that authenticates (no authorization list)',
  'wrong-host-cert': 'x509: presents a certificate for wrong.invalid',
  'untrusted-cert': 'x509: presents a certificate signed by a CA the client does not trust',
  'answers-injection-in-plaintext': 'answers an option pipelined after STARTTLS in plaintext, right after the ACK',
  'serial-handshakes': 'runs one TLS handshake at a time, so a client that stalls after STARTTLS holds up every other',
} as const;
export type TlsFault = keyof typeof TLS_FAULTS;

const REPLY_MAGIC = 0x0003e889045565a9n;
const ALLOWED_CN = 'fleece-client';

function optReply(opt: number, type: number): Buffer {
  const h = Buffer.alloc(20);
  h.writeBigUInt64BE(REPLY_MAGIC, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(type >>> 0, 12);
  return h;
}

/** Reads exactly n bytes from a plaintext socket (the fake's greeting). */
function readN(s: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const on = (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= n) {
        s.off('data', on);
        s.pause();
        if (got.length > n) s.unshift(got.subarray(n));
        resolve(got.subarray(0, n));
      }
    };
    s.on('data', on);
    s.once('error', reject);
  });
}

async function backend(fakePath: string, clientFlags: Buffer): Promise<net.Socket> {
  const b = net.createConnection({ path: fakePath });
  b.on('error', () => undefined);
  await readN(b, 18);
  b.write(clientFlags);
  return b;
}

interface Front {
  path: string;
  close(): Promise<void>;
}

export async function startFakeTlsServer(pki: Pki, mode: TlsMode, policy: 'forced' | 'optional', faults: ReadonlySet<TlsFault>): Promise<Front> {
  const f = (x: TlsFault) => faults.has(x);
  const fake = await startFakeServer();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-nbd-tls-'));
  const sock = path.join(dir, 'tls.sock');
  // node:tls does not say which PSK identity a server accepted: the callback records it.
  const identities = new WeakMap<tls.TLSSocket, string>();
  const keys = parsePskKeys(fs.readFileSync(pki.psk.serverFile, 'utf8'), pki.psk.serverFile);
  const serverDir = f('wrong-host-cert') ? pki.wrongHost : f('untrusted-cert') ? pki.untrustedServer : pki.server;
  const tlsOptions: tls.TlsOptions =
    mode === 'x509'
      ? { cert: fs.readFileSync(serverDir.cert), key: fs.readFileSync(serverDir.key), ca: fs.readFileSync(pki.server.caCert), requestCert: !f('no-client-verify'), rejectUnauthorized: !f('no-client-verify') }
      : {
          ciphers: 'PSK:ECDHE-PSK:DHE-PSK',
          pskCallback: (s: tls.TLSSocket, id: string) => {
            identities.set(s, id);
            return keys.get(id) ?? null;
          },
        };
  const conns = new Set<net.Socket>();

  const serve = async (raw: net.Socket) => {
    raw.on('error', () => undefined);
    const greeting = Buffer.alloc(18);
    Buffer.from('NBDMAGICIHAVEOPT').copy(greeting);
    greeting.writeUInt16BE(3, 16);
    raw.write(greeting);
    let buf = Buffer.alloc(0);
    let flags: Buffer | undefined;
    let plain: net.Socket | undefined; // the fake's connection for options before TLS
    let started = false;
    const onData = async (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!flags) {
        if (buf.length < 4) return;
        flags = buf.subarray(0, 4);
        buf = buf.subarray(4);
        if (policy === 'optional' || f('answers-before-tls') || f('export-name-before-tls')) {
          raw.pause();
          plain = await backend(fake.path, flags);
          plain.on('data', (x) => !started && raw.write(x));
          plain.resume();
          raw.resume();
        }
      }
      while (!started && buf.length >= 16) {
        const opt = buf.readUInt32BE(8);
        const len = buf.readUInt32BE(12);
        if (buf.length < 16 + len) return;
        const whole = buf.subarray(0, 16 + len);
        buf = buf.subarray(16 + len);
        if (opt === 5) {
          raw.write(optReply(5, 1));
          started = true;
          raw.off('data', onData);
          // Conforming: whatever came after STARTTLS in plaintext is dropped.
          const injected = f('acts-on-injection') ? buf : Buffer.alloc(0);
          if (f('answers-injection-in-plaintext') && buf.length >= 16) raw.write(optReply(buf.readUInt32BE(8), 0x80000005));
          buf = Buffer.alloc(0);
          return upgrade(raw, flags, injected, f('keeps-state') ? plain : undefined, plain);
        }
        if (opt === 2) {
          raw.end(optReply(2, 1));
          return;
        }
        const forward = policy === 'optional' || f('answers-before-tls') || (opt === 1 && f('export-name-before-tls'));
        if (forward && plain) plain.write(whole);
        else if (opt === 1) raw.destroy();
        else raw.write(optReply(opt, 0x80000005));
      }
    };
    raw.on('data', (d) => void onData(d));
  };

  let previous: Promise<void> = Promise.resolve();
  const upgrade = async (raw: net.Socket, flags: Buffer, injected: Buffer, keep: net.Socket | undefined, old: net.Socket | undefined) => {
    const before = previous;
    let finished = () => undefined as void;
    if (f('serial-handshakes')) {
      previous = new Promise<void>((r) => (finished = r));
      await before;
    }
    const secure = new tls.TLSSocket(raw, { isServer: true, ...tlsOptions });
    secure.on('error', () => raw.destroy());
    secure.on('close', () => finished());
    await new Promise<void>((resolve) => secure.once('secure', () => resolve()));
    finished();
    if (mode === 'x509' && !f('no-client-verify')) {
      // A bare TLSSocket neither sets `authorized` nor acts on rejectUnauthorized (only
      // tls.Server does): ask OpenSSL's verify result, as tls.Server does internally.
      const verifyError = (secure as unknown as { _handle?: { verifyError(): Error | null } })._handle?.verifyError();
      const peer = secure.getPeerCertificate();
      if (verifyError || !peer || Object.keys(peer).length === 0) return void secure.destroy();
    }
    const who = mode === 'x509' ? String(secure.getPeerCertificate()?.subject?.CN ?? '') : (identities.get(secure) ?? '');
    const authz = !f('ignores-authz') && !(mode === 'x509' && f('no-client-verify'));
    if (authz && who !== (mode === 'x509' ? ALLOWED_CN : pki.psk.identity)) return void secure.destroy();
    if (!keep) old?.destroy();
    const b = keep ?? (await backend(fake.path, flags));
    if (keep) keep.removeAllListeners('data');
    b.on('data', (x) => secure.write(x));
    b.resume();
    b.on('close', () => secure.destroy());
    secure.on('close', () => b.destroy());
    // After TLS the front still answers STARTTLS itself (the fake knows no TLS), until GO.
    let pre = Buffer.alloc(0);
    let relaying = false;
    const onTls = (d: Buffer) => {
      if (relaying) return void b.write(d);
      pre = Buffer.concat([pre, d]);
      while (!relaying && pre.length >= 16) {
        const opt = pre.readUInt32BE(8);
        const len = pre.readUInt32BE(12);
        if (pre.length < 16 + len) return;
        const whole = pre.subarray(0, 16 + len);
        pre = pre.subarray(16 + len);
        if (opt === 5) secure.write(optReply(5, f('starttls-twice-ack') ? 1 : 0x80000003));
        else if (opt === 3 && f('tls-reqd-after-tls')) secure.write(optReply(3, 0x80000005));
        else {
          b.write(whole);
          if (opt === 7 || opt === 1) {
            relaying = true;
            if (pre.length) b.write(pre);
          }
        }
      }
    };
    if (injected.length) onTls(injected);
    secure.on('data', onTls);
  };

  const server = net.createServer((s) => {
    conns.add(s);
    s.on('close', () => conns.delete(s));
    void serve(s);
  });
  await new Promise<void>((r) => server.listen(sock, () => r()));
  return {
    path: sock,
    close: () =>
      new Promise<void>((r) => {
        for (const c of conns) c.destroy();
        server.close(() => {
          fs.rmSync(dir, { recursive: true, force: true });
          void fake.close().then(r);
        });
      }),
  };
}

/** The TLS fake as a runner target: FORCEDTLS (or TLS optional), x509 with client certificates
 * and an authorization list naming the runner's client, or PSK. */
export function fakeTlsTarget(mode: TlsMode, faults: TlsFault[], policy: 'forced' | 'optional' = 'forced'): TargetDef {
  const name = `fake-tls-${mode}-${policy}(${faults.join(',') || 'conforming'})`;
  return {
    name,
    summary: 'in-test fake NBD server behind a node:tls front',
    peers: ['certtool', 'psktool'],
    async start({ workDir }): Promise<RunningTarget> {
      const pki = makePki(path.join(workDir, 'tls'));
      const front = await startFakeTlsServer(pki, mode, policy, new Set(faults));
      const creds = clientCreds(pki, mode);
      const info: TlsTargetInfo = {
        mode,
        policy,
        pki,
        verifyPeer: mode === 'x509',
        ...(mode === 'x509' ? { authzDenied: { type: 'x509', certificates: pki.stranger.dir } } : { authzDenied: { type: 'psk', pskFile: pki.psk.strangerFile, identity: pki.psk.strangerIdentity } }),
      };
      const ref = { address: { kind: 'unix' as const, path: front.path }, name: 'disk', tls: creds };
      return { name, description: name, exports: { rw: ref }, image: DEFAULT_LAYOUT, extra: { tls: info }, logs: () => '', stop: () => front.close() };
    },
  };
}
