// Certificates and PSK keys for the TLS tests, made with GnuTLS's certtool and psktool (the
// tools QEMU's and nbdkit's own TLS tests use) in a temp dir at test time, never committed.
// Directories follow the layouts the peers read:
//   serverDir   ca-cert.pem server-cert.pem server-key.pem     (QEMU tls-creds-x509 endpoint=server)
//   revokingServerDir  the same and ca-crl.pem revoking the client certificate
//   clientDir   ca-cert.pem client-cert.pem client-key.pem     (QEMU endpoint=client, libnbd tls-certificates=)
//   caOnlyDir   ca-cert.pem                                    (a client with no certificate)
//   rogueDir    ca-cert.pem + a client certificate from another CA
//   pskDir      keys.psk with alice and bob                    (QEMU tls-creds-psk, server side)
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requirePeer, tmpDir } from '../nbd-helpers.ts';

export interface TestPki {
  readonly root: string;
  readonly serverDir: string;
  /** serverDir plus ca-crl.pem revoking the client certificate. */
  readonly revokingServerDir: string;
  readonly clientDir: string;
  readonly caOnlyDir: string;
  readonly rogueDir: string;
  /** The client certificate's DN as GnuTLS/QEMU print it (certificate order, escaped). */
  readonly clientDn: string;
  readonly pskDir: string;
  /** A psk file (and a QEMU client dir holding it as keys.psk) with only `user`'s line. */
  pskClient(user: 'alice' | 'bob'): { file: string; dir: string };
  /** alice with a key the server does not have. */
  readonly wrongPsk: { file: string; dir: string };
  cleanup(): void;
}

function certtool(args: string[]): void {
  execFileSync('certtool', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

export function makeTestPki(prefix = 'fleece-tls-'): TestPki {
  requirePeer('certtool');
  requirePeer('psktool');
  const t = tmpDir(prefix);
  const root = t.dir;
  const p = (...x: string[]) => path.join(root, ...x);
  const dir = (name: string) => {
    fs.mkdirSync(p(name), { recursive: true });
    return p(name);
  };
  const key = (file: string) => certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', file]);
  const template = (name: string, lines: string[]) => {
    fs.writeFileSync(p(`${name}.info`), `${lines.join('\n')}\n`);
    return p(`${name}.info`);
  };
  // crl_signing_key: OpenSSL refuses a CRL from a CA whose key usage lacks cRLSign ("key usage
  // does not include CRL signing"); QEMU's documented CA template has only cert_signing_key.
  const ca = (name: string, cn: string) => {
    key(p(`${name}-key.pem`));
    certtool(['--generate-self-signed', '--load-privkey', p(`${name}-key.pem`), '--template', template(name, [`cn = ${cn}`, 'ca', 'cert_signing_key', 'crl_signing_key', 'expiration_days = 30']), '--outfile', p(`${name}-cert.pem`)]);
  };
  const issue = (caName: string, name: string, lines: string[]) => {
    key(p(`${name}-key.pem`));
    certtool([
      '--generate-certificate', '--load-ca-certificate', p(`${caName}-cert.pem`), '--load-ca-privkey', p(`${caName}-key.pem`),
      '--load-privkey', p(`${name}-key.pem`), '--template', template(name, [...lines, 'expiration_days = 30', 'encryption_key', 'signing_key']),
      '--outfile', p(`${name}-cert.pem`),
    ]);
  };
  ca('ca', 'fleece test CA');
  ca('rogue-ca', 'fleece rogue CA');
  issue('ca', 'server', ['organization = fleece', 'cn = localhost', 'dns_name = localhost', 'ip_address = 127.0.0.1', 'tls_www_server']);
  // A comma in the organisation: the DN then needs escaping, as authz identities must spell it.
  issue('ca', 'client', ['country = GB', 'state = London', 'locality = London', 'organization = fleece, test', 'cn = client.example.com', 'tls_www_client']);
  issue('rogue-ca', 'rogue', ['organization = fleece', 'cn = rogue.example.com', 'tls_www_client']);

  const serverDir = dir('server');
  for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) fs.copyFileSync(p(f), path.join(serverDir, f));
  // The same server with a CRL that revokes the client certificate.
  const revokingServerDir = dir('server-crl');
  for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) fs.copyFileSync(p(f), path.join(revokingServerDir, f));
  certtool([
    '--generate-crl', '--load-ca-privkey', p('ca-key.pem'), '--load-ca-certificate', p('ca-cert.pem'),
    '--load-certificate', p('client-cert.pem'), '--template', template('crl', ['crl_next_update = 30', 'crl_number = 1']),
    '--outfile', path.join(revokingServerDir, 'ca-crl.pem'),
  ]);
  const clientDir = dir('client');
  for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) fs.copyFileSync(p(f), path.join(clientDir, f));
  const caOnlyDir = dir('ca-only');
  fs.copyFileSync(p('ca-cert.pem'), path.join(caOnlyDir, 'ca-cert.pem'));
  const rogueDir = dir('rogue');
  fs.copyFileSync(p('ca-cert.pem'), path.join(rogueDir, 'ca-cert.pem'));
  fs.copyFileSync(p('rogue-cert.pem'), path.join(rogueDir, 'client-cert.pem'));
  fs.copyFileSync(p('rogue-key.pem'), path.join(rogueDir, 'client-key.pem'));

  const pskDir = dir('psk');
  const keys = path.join(pskDir, 'keys.psk');
  for (const user of ['alice', 'bob']) execFileSync('psktool', ['-u', user, '-p', keys], { stdio: 'ignore' });
  const lines = fs.readFileSync(keys, 'utf8').trim().split('\n');
  const clientPsk = (name: string, line: string) => {
    const d = dir(name);
    fs.writeFileSync(path.join(d, 'keys.psk'), `${line}\n`);
    return { file: path.join(d, 'keys.psk'), dir: d };
  };
  const alice = clientPsk('psk-alice', lines.find((l) => l.startsWith('alice:'))!);
  const bob = clientPsk('psk-bob', lines.find((l) => l.startsWith('bob:'))!);
  const aliceKey = alice.file && fs.readFileSync(alice.file, 'utf8').trim().split(':')[1]!;
  // Same length, every nibble changed.
  const wrong = aliceKey.replace(/[0-9a-f]/g, (c) => ((parseInt(c, 16) + 1) % 16).toString(16));
  const wrongPsk = clientPsk('psk-wrong', `alice:${wrong}`);

  return {
    root, serverDir, revokingServerDir, clientDir, caOnlyDir, rogueDir, pskDir, wrongPsk,
    clientDn: 'C=GB,ST=London,L=London,O=fleece\\, test,CN=client.example.com',
    pskClient: (user) => (user === 'alice' ? alice : bob),
    cleanup: t.cleanup,
  };
}
