// The TLS half of the NBD server's I/O edge: after the session has answered NBD_OPT_STARTTLS
// with ACK, the plain socket is handed to node:tls (OpenSSL) as a server, and once the handshake
// is done the client's identity is checked the way QEMU's qcrypto_tls_session_check_credentials
// does: with x509 and verify-peer=on a certificate from the CA is required, and the authz object
// (if any) is asked about the certificate's distinguished name; with PSK about the username.
//
// Where node:tls (OpenSSL 3) and GnuTLS clients (libnbd, QEMU) meet, measured with nbdinfo,
// qemu-img and gnutls-cli (reference/src/daemon/README.md "TLS"):
//  - TLS 1.3 with a PSK works: OpenSSL hands the identity to the TLS 1.2-style pskCallback and
//    uses the key with SHA-256 suites; GnuTLS's default psk_dhe_ke mode is accepted. A client
//    that offers only psk_ke (no (EC)DHE) is not served by OpenSSL that way.
//  - TLS 1.2 PSK suites are not in Node's default cipher list: without adding them, a GnuTLS
//    client limited to TLS 1.2 gets "no shared cipher". We add PSK suites, and DHE groups
//    ('auto', or dh-params.pem) so DHE-PSK works as well as ECDHE-PSK and plain PSK.
import { X509Certificate } from 'node:crypto';
import * as net from 'node:net';
import * as tls from 'node:tls';

/** What the server needs of a tls-creds-x509 object (endpoint=server). */
export interface ServerX509 {
  readonly kind: 'x509';
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly crl?: Buffer;
  readonly dhparam?: Buffer;
  readonly verifyPeer: boolean;
}

/** What the server needs of a tls-creds-psk object (endpoint=server). */
export interface ServerPsk {
  readonly kind: 'psk';
  readonly keys: ReadonlyMap<string, Buffer>;
  readonly dhparam?: Buffer;
}

export interface ServerTls {
  readonly creds: ServerX509 | ServerPsk;
  /** The authz object's check, given the x509 DN or the PSK username. */
  readonly authz?: (identity: string) => boolean;
}

export class TlsRefused extends Error {
  override readonly name = 'TlsRefused';
}

/** Node's defaults with the TLS 1.2 PSK suites let in: the default list ends in `!PSK`, which
 * removes them for good, so it is dropped and `PSK` (every PSK key exchange) added. TLS 1.3
 * suites are configured apart and work with PSK as they are. */
const PSK_CIPHERS = [...tls.DEFAULT_CIPHERS.split(':').filter((c) => c !== '!PSK'), 'PSK'].join(':');

/**
 * Starts TLS as the server on `socket`. Resolves with the TLS socket and the client's identity
 * once the handshake succeeded and the identity is allowed; rejects with TlsRefused (QEMU's
 * wording) otherwise. The caller destroys the socket on rejection.
 */
export function startServerTls(socket: net.Socket, cfg: ServerTls): { socket: tls.TLSSocket; ready: Promise<string | undefined> } {
  const c = cfg.creds;
  let pskIdentity: string | undefined;
  const opts: tls.TLSSocketOptions =
    c.kind === 'x509'
      ? {
          isServer: true,
          ca: c.ca,
          cert: c.cert,
          key: c.key,
          ...(c.crl ? { crl: c.crl } : {}),
          dhparam: c.dhparam ?? 'auto',
          // QEMU requests a certificate and enforces it after the handshake; so do we, to refuse
          // with its words rather than a bare alert.
          requestCert: c.verifyPeer,
          rejectUnauthorized: false,
        }
      : {
          isServer: true,
          ciphers: PSK_CIPHERS,
          dhparam: c.dhparam ?? 'auto',
          pskCallback: (_s: tls.TLSSocket, identity: string) => {
            const key = c.keys.get(identity);
            if (key) pskIdentity = identity;
            // null: unknown identity, the handshake fails (as GnuTLS's server does).
            return key ?? null;
          },
        } as tls.TLSSocketOptions;
  const t = new tls.TLSSocket(socket, opts);
  const ready = new Promise<string | undefined>((resolve, reject) => {
    const onError = (e: Error) => reject(new TlsRefused(`TLS handshake failed: ${e.message}`));
    t.once('error', onError);
    t.once('close', () => reject(new TlsRefused('connection closed during the TLS handshake')));
    t.once('secure', () => {
      t.off('error', onError);
      try {
        resolve(checkPeer(t, cfg, pskIdentity));
      } catch (e) {
        reject(e);
      }
    });
  });
  return { socket: t, ready };
}

/** qcrypto_tls_session_check_credentials, after the handshake. Returns the identity. */
function checkPeer(t: tls.TLSSocket, cfg: ServerTls, pskIdentity: string | undefined): string | undefined {
  const c = cfg.creds;
  if (c.kind === 'psk') {
    if (pskIdentity === undefined) throw new TlsRefused('No PSK username available');
    // QEMU 7.2 does not consult tls-authz for PSK clients (measured: an authz-simple naming
    // another user lets any user with a valid key in); the reference does.
    if (cfg.authz && !cfg.authz(pskIdentity)) throw new TlsRefused(`TLS PSK authz check for ${pskIdentity} is denied`);
    return pskIdentity;
  }
  // verify-peer=off: QEMU skips the checks, tls-authz included.
  if (!c.verifyPeer) return undefined;
  const der = t.getPeerCertificate();
  if (!der || !der.raw) throw new TlsRefused('Verify failed: No certificate was found.');
  const err = verifyError(t);
  if (err) throw new TlsRefused(verifyReason(err));
  const dn = distinguishedName(new X509Certificate(der.raw));
  if (cfg.authz && !cfg.authz(dn)) throw new TlsRefused(`TLS x509 authz check for ${dn} is denied`);
  return dn;
}

/** OpenSSL's verification result for the peer's chain against `ca` (and the CRL). A TLSSocket
 * made by tls.Server sets `authorized` from it; one made directly (as STARTTLS needs) does not,
 * so we ask its handle, as tls.Server does. */
function verifyError(t: tls.TLSSocket): string | undefined {
  const h = (t as unknown as { ssl?: { verifyError?(): (Error & { code?: string }) | null } }).ssl;
  if (!h?.verifyError) return 'NO_VERIFY_RESULT';
  const e = h.verifyError();
  return e ? (e.code && e.code !== 'UNSPECIFIED' ? e.code : `${e.code ?? ''}: ${e.message}`) : undefined;
}

/** OpenSSL's verify error → QEMU's reason text (check_certificate). */
function verifyReason(code: string): string {
  switch (code) {
    case 'CERT_HAS_EXPIRED':
      return 'The certificate has expired';
    case 'CERT_NOT_YET_VALID':
      return 'The certificate is not yet activated';
    case 'CERT_REVOKED':
      return 'The certificate has been revoked';
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
      return "The certificate hasn't got a known issuer";
    default:
      return `The certificate is not trusted${code ? ` (${code})` : ''}`;
  }
}

/**
 * The DN as QEMU hands it to the authz object: gnutls_x509_crt_get_dn, RDNs in certificate order
 * joined by commas, special characters backslash-escaped, e.g.
 * `C=GB,ST=London,L=London,O=fleece\, test,CN=client.example.com` (measured with
 * qemu-storage-daemon 7.2's "TLS x509 authz check for ... is denied"). Node's X509Certificate
 * subject lists the same RDNs one per line, already escaped.
 */
export function distinguishedName(cert: X509Certificate): string {
  return cert.subject.split('\n').filter((l) => l !== '').join(',');
}
