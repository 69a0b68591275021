// Test credentials made during the run (never committed): an x509 PKI with certtool and PSK
// files in GnuTLS psktool's `identity:hexkey` format, laid out as QEMU's tls-creds-x509 and
// tls-creds-psk read them (ca-cert.pem, server-cert.pem, server-key.pem; client-cert.pem,
// client-key.pem; keys.psk), so the same directory serves qemu-nbd, qemu-storage-daemon,
// nbdkit (--tls-certificates=DIR, --tls-psk=FILE), libnbd (tls-certificates=DIR) and the
// conformance client. QEMU docs: system/tls.rst "Certificate and key setup".
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parsePskKeys } from '../nbd/tls.ts';
import { requirePeer } from '../targets/process.ts';

/** One x509 directory in QEMU's layout (the files present depend on the role). */
export interface X509Dir {
  dir: string;
  caCert: string;
  cert: string;
  key: string;
}

export interface Pki {
  root: string;
  /** Server side: ca-cert.pem (the CA clients are checked against), server-cert.pem for
   * localhost and 127.0.0.1, server-key.pem. */
  server: X509Dir;
  /** Client side: ca-cert.pem and client-cert.pem / client-key.pem signed by the same CA. */
  client: X509Dir;
  /** The client certificate's distinguished name (authz-simple identity). The client
   * certificates carry a CN only: GnuTLS's certtool and QEMU print a DN with several attributes
   * in opposite orders (measured: "CN=a,O=b" and "O=b,CN=a"), a single one the same way. */
  clientDn: string;
  /** A second client of the same CA with another name: authorization must tell them apart. */
  stranger: X509Dir;
  strangerDn: string;
  /** A CA nobody trusts, with a client certificate it signed: ca-cert.pem is the untrusted CA. */
  untrusted: X509Dir;
  /** A server certificate for localhost that the untrusted CA signed (a server to refuse). */
  untrustedServer: X509Dir;
  /** The right CA to trust, and a client certificate the untrusted CA signed. */
  untrustedClient: X509Dir;
  /** A server certificate of the right CA for another host name (wrong.invalid). */
  wrongHost: X509Dir;
  /** PSK: the server's keys.psk (the client's identity and a second one), and client files. */
  psk: {
    identity: string;
    /** Directory holding the server's keys.psk (QEMU's tls-creds-psk dir). */
    serverDir: string;
    serverFile: string;
    /** The client's keys.psk: its identity and the right key. */
    clientFile: string;
    /** The right identity with a wrong key. */
    wrongKeyFile: string;
    /** An identity the server does not know, with the right key. */
    wrongIdentityFile: string;
    /** A second identity the server knows (authorization must refuse it). */
    strangerIdentity: string;
    strangerFile: string;
  };
}

const CERTTOOL = 'certtool';

function certtool(args: string[], template?: string): string {
  requirePeer(CERTTOOL);
  const tmpl = template ? ['--template', template] : [];
  return execFileSync(CERTTOOL, [...args, ...tmpl], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
}

function privkey(file: string): void {
  // ECDSA P-256: accepted by GnuTLS and OpenSSL, and far quicker to make than RSA.
  certtool(['--generate-privkey', '--key-type=ecdsa', '--curve=secp256r1', '--outfile', file]);
  fs.chmodSync(file, 0o600);
}

function template(dir: string, name: string, lines: string[]): string {
  const file = path.join(dir, `${name}.tmpl`);
  fs.writeFileSync(file, [...lines, 'expiration_days = 2', ''].join('\n'));
  return file;
}

interface Ca {
  cert: string;
  key: string;
}

function makeCa(dir: string, name: string, cn: string): Ca {
  const key = path.join(dir, `${name}-key.pem`);
  const cert = path.join(dir, `${name}-cert.pem`);
  privkey(key);
  certtool(['--generate-self-signed', '--load-privkey', key, '--outfile', cert], template(dir, name, [`cn = "${cn}"`, 'organization = "fleece"', 'ca', 'cert_signing_key']));
  return { cert, key };
}

function issue(ca: Ca, outDir: string, base: 'server' | 'client', lines: string[], scratch: string, label: string): X509Dir {
  fs.mkdirSync(outDir, { recursive: true });
  const key = path.join(outDir, `${base}-key.pem`);
  const cert = path.join(outDir, `${base}-cert.pem`);
  privkey(key);
  certtool(
    ['--generate-certificate', '--load-privkey', key, '--load-ca-certificate', ca.cert, '--load-ca-privkey', ca.key, '--outfile', cert],
    template(scratch, label, [...lines, 'signing_key', 'encryption_key']),
  );
  const caCert = path.join(outDir, 'ca-cert.pem');
  fs.copyFileSync(ca.cert, caCert);
  return { dir: outDir, caCert, cert, key };
}

/** The subject DN as GnuTLS formats it (what QEMU's authz-simple compares with, for x509). */
export function subjectDn(certFile: string): string {
  const info = certtool(['--certificate-info', '--infile', certFile]);
  const m = /^\s*Subject: (.+)$/m.exec(info);
  if (!m?.[1]) throw new Error(`certtool printed no Subject for ${certFile}`);
  return m[1].trim();
}

function pskLine(identity: string, key: Buffer): string {
  return `${identity}:${key.toString('hex')}\n`;
}

/** Makes every credential the TLS cases use under `root` (created; the caller removes it). */
export function makePki(root: string): Pki {
  fs.mkdirSync(root, { recursive: true });
  const scratch = path.join(root, 'ca');
  fs.mkdirSync(scratch, { recursive: true });
  const ca = makeCa(scratch, 'ca', 'fleece test CA');
  const other = makeCa(scratch, 'other-ca', 'fleece untrusted CA');
  const server = issue(ca, path.join(root, 'server'), 'server', ['cn = "localhost"', 'organization = "fleece"', 'dns_name = "localhost"', 'ip_address = "127.0.0.1"', 'tls_www_server'], scratch, 'server');
  const client = issue(ca, path.join(root, 'client'), 'client', ['cn = "fleece-client"', 'tls_www_client'], scratch, 'client');
  const stranger = issue(ca, path.join(root, 'stranger'), 'client', ['cn = "fleece-stranger"', 'tls_www_client'], scratch, 'stranger');
  const untrusted = issue(other, path.join(root, 'untrusted'), 'client', ['cn = "fleece-client"', 'organization = "fleece"', 'tls_www_client'], scratch, 'untrusted');
  const untrustedServer = issue(other, path.join(root, 'untrusted-server'), 'server', ['cn = "localhost"', 'dns_name = "localhost"', 'ip_address = "127.0.0.1"', 'tls_www_server'], scratch, 'untrusted-server');
  const untrustedClient = issue(other, path.join(root, 'untrusted-client'), 'client', ['cn = "fleece-client"', 'organization = "fleece"', 'tls_www_client'], scratch, 'untrusted-client');
  fs.copyFileSync(ca.cert, untrustedClient.caCert);
  const wrongHost = issue(ca, path.join(root, 'wrong-host'), 'server', ['cn = "wrong.invalid"', 'organization = "fleece"', 'dns_name = "wrong.invalid"', 'tls_www_server'], scratch, 'wrong-host');

  const pskDir = path.join(root, 'psk');
  fs.mkdirSync(pskDir, { recursive: true });
  const identity = 'fleece';
  const strangerIdentity = 'stranger';
  const serverFile = path.join(pskDir, 'keys.psk');
  // psktool writes the key file the way QEMU and nbdkit read it (one `identity:hex` a line).
  requirePeer('psktool');
  execFileSync('psktool', ['-u', identity, '-p', serverFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  execFileSync('psktool', ['-u', strangerIdentity, '-p', serverFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  const keys = parsePskKeys(fs.readFileSync(serverFile, 'utf8'), serverFile);
  const right = keys.get(identity)!;
  const write = (name: string, text: string) => {
    const d = path.join(root, name);
    fs.mkdirSync(d, { recursive: true });
    const f = path.join(d, 'keys.psk');
    fs.writeFileSync(f, text, { mode: 0o600 });
    return f;
  };
  let wrong = randomBytes(right.length);
  while (wrong.equals(right)) wrong = randomBytes(right.length);
  return {
    root,
    server,
    client,
    clientDn: subjectDn(client.cert),
    stranger,
    strangerDn: subjectDn(stranger.cert),
    untrusted,
    untrustedServer,
    untrustedClient,
    wrongHost,
    psk: {
      identity,
      serverDir: pskDir,
      serverFile,
      clientFile: write('psk-client', pskLine(identity, right)),
      wrongKeyFile: write('psk-wrong-key', pskLine(identity, wrong)),
      wrongIdentityFile: write('psk-wrong-identity', pskLine('nobody', right)),
      strangerIdentity,
      strangerFile: write('psk-stranger', pskLine(strangerIdentity, keys.get(strangerIdentity)!)),
    },
  };
}
