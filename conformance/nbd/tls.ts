// The conformance client's TLS credentials, spelled as libnbd's URIs spell them (doc/uri.md:
// tls-certificates=DIR, tls-psk-file=FILE, tls-hostname=, tls-verify-peer=, the URI's user as the
// PSK identity), and their translation to node:tls options. The STARTTLS exchange itself is
// proto.md "TLS support" / "NBD_OPT_STARTTLS"; the socket upgrade is NbdConnection.startTls.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';

export type TlsClientConfig =
  | {
      type: 'x509';
      /** A directory in QEMU's layout: ca-cert.pem, and optionally client-cert.pem + client-key.pem. */
      certificates: string;
      /** The name the server's certificate must carry (default: the TCP host, or localhost). */
      hostname?: string | undefined;
      /** false: accept any server certificate (tls-verify-peer=false). Default true. */
      verifyPeer?: boolean | undefined;
      /** Do not present client-cert.pem even if the directory has one. */
      noClientCert?: boolean | undefined;
      /** Cap the TLS version (the cases try TLS 1.2 on its own). */
      maxVersion?: tls.SecureVersion | undefined;
    }
  | {
      type: 'psk';
      /** A keys.psk file (`identity:hexkey` lines, GnuTLS psktool's format). */
      pskFile: string;
      /** The identity to use (libnbd: the URI's user); default the file's only identity. */
      identity?: string | undefined;
      maxVersion?: tls.SecureVersion | undefined;
    };

export class TlsConfigError extends Error {
  override readonly name = 'TlsConfigError';
}

/** Parses `identity:hexkey` lines (psktool's format): identity -> key. */
export function parsePskKeys(text: string, where: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  text.split('\n').forEach((line, i) => {
    const l = line.trim();
    if (!l || l.startsWith('#')) return;
    const c = l.lastIndexOf(':');
    const hex = l.slice(c + 1);
    if (c <= 0 || !/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw new TlsConfigError(`${where}:${i + 1}: not an 'identity:hexkey' line`);
    out.set(l.slice(0, c), Buffer.from(hex, 'hex'));
  });
  if (out.size === 0) throw new TlsConfigError(`${where}: no key in the file`);
  return out;
}

// TLS 1.2 cipher suites offered with a PSK. Node (OpenSSL) offers none unless asked. Against
// GnuTLS 3.7 (QEMU's "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK", nbdkit) each of these completes alone
// (measured with qemu-nbd 7.2); the CBC suites with SHA-256/384 MACs do not (GnuTLS's NORMAL
// leaves them out) and RSA-PSK needs a server certificate. TLS 1.3 stays enabled: node's
// pskCallback works there too and GnuTLS picks it (conformance/README.md "TLS").
export const PSK_CIPHERS = [
  'ECDHE-PSK-CHACHA20-POLY1305', 'DHE-PSK-AES128-GCM-SHA256', 'DHE-PSK-AES256-GCM-SHA384', 'DHE-PSK-CHACHA20-POLY1305',
  'PSK-AES128-GCM-SHA256', 'PSK-AES256-GCM-SHA384', 'PSK-CHACHA20-POLY1305', 'ECDHE-PSK-AES128-CBC-SHA', 'PSK-AES128-CBC-SHA',
].join(':');

/** node:tls connect options for `config` over an established socket to `host`. */
export function tlsConnectOptions(config: TlsClientConfig, socket: net.Socket, host: string | undefined): tls.ConnectionOptions {
  if (config.type === 'psk') {
    let keys: Map<string, Buffer>;
    try {
      keys = parsePskKeys(fs.readFileSync(config.pskFile, 'utf8'), config.pskFile);
    } catch (e) {
      if (e instanceof TlsConfigError) throw e;
      throw new TlsConfigError(`cannot read tls-psk-file ${config.pskFile}: ${(e as Error).message}`);
    }
    let identity = config.identity;
    if (identity === undefined) {
      if (keys.size !== 1) throw new TlsConfigError(`${config.pskFile} holds ${keys.size} identities; say which one (nbds://IDENTITY@host/...)`);
      identity = [...keys.keys()][0]!;
    }
    const key = keys.get(identity);
    if (!key) throw new TlsConfigError(`${config.pskFile} has no key for identity '${identity}'`);
    const id = identity;
    return {
      socket,
      ciphers: PSK_CIPHERS,
      ...(config.maxVersion ? { maxVersion: config.maxVersion } : {}),
      // The PSK authenticates the server too: no certificate is involved.
      checkServerIdentity: () => undefined,
      pskCallback: () => ({ identity: id, psk: key }),
    };
  }
  const file = (n: string) => path.join(config.certificates, n);
  const read = (n: string) => {
    try {
      return fs.readFileSync(file(n));
    } catch (e) {
      throw new TlsConfigError(`tls-certificates ${config.certificates}: cannot read ${n}: ${(e as Error).message}`);
    }
  };
  const ca = read('ca-cert.pem');
  const hasClient = !config.noClientCert && fs.existsSync(file('client-cert.pem'));
  const name = config.hostname ?? (host && host !== '' ? host : 'localhost');
  const verify = config.verifyPeer !== false;
  return {
    socket,
    ca,
    ...(hasClient ? { cert: read('client-cert.pem'), key: read('client-key.pem') } : {}),
    // SNI takes a host name, never an address; the identity check below covers both.
    ...(net.isIP(name) ? {} : { servername: name }),
    rejectUnauthorized: verify,
    ...(config.maxVersion ? { maxVersion: config.maxVersion } : {}),
    checkServerIdentity: (_h, cert) => (verify ? tls.checkServerIdentity(name, cert) : undefined),
  };
}

/** What a finished TLS handshake agreed on (for the wire log and the reports). */
export function describeTls(s: tls.TLSSocket): string {
  const c = s.getCipher();
  return `${s.getProtocol() ?? '?'} ${c?.standardName ?? c?.name ?? '?'}`;
}
