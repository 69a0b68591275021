// NBD URIs (doc/uri.md; docs/requirements/nbd.md §1.13, checklist H75): nbd://host[:port]/export,
// nbd+unix:///export?socket=PATH, and their TLS forms nbds:// and nbds+unix:// with the query
// parameters libnbd spells: tls-certificates=DIR (x509, QEMU's file layout), tls-psk-file=FILE
// (PSK; the URI's user is the identity), tls-hostname=, tls-verify-peer=. TLS is required with
// nbds and never attempted with nbd (this client does not fall back to plaintext).
import type { TlsClientConfig } from '../nbd/tls.ts';
import type { ExportRef } from './types.ts';

export class NbdUriError extends Error {
  override readonly name = 'NbdUriError';
}

export const DEFAULT_PORT = 10809;
const KNOWN_QUERY = new Set(['socket', 'tls-type', 'tls-hostname', 'tls-verify-peer', 'tls-certificates', 'tls-psk-file']);

export function parseNbdUri(text: string): ExportRef {
  const m = /^([a-z+]+):\/\/(?:([^@/?#]*)@)?(\[[^\]]*\]|[^:/?#]*)(?::([^/?#]*))?(\/[^?#]*)?(?:\?([^#]*))?(?:#.*)?$/i.exec(text);
  if (!m) throw new NbdUriError(`'${text}' is not an NBD URI (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)`);
  const [, schemeRaw, userRaw, hostRaw = '', portRaw, path = '', query = ''] = m;
  const scheme = (schemeRaw ?? '').toLowerCase();
  if (!['nbd', 'nbd+unix', 'nbds', 'nbds+unix'].includes(scheme)) throw new NbdUriError(`'${text}': unknown scheme '${scheme}' (use nbd, nbd+unix, nbds or nbds+unix)`);
  const secure = scheme.startsWith('nbds');
  let name: string;
  try {
    name = decodeURIComponent(path.replace(/^\//, ''));
  } catch {
    throw new NbdUriError(`'${text}': export name is not valid percent-encoding`);
  }
  const params = new Map<string, string>();
  for (const kv of query.split('&').filter(Boolean)) {
    const i = kv.indexOf('=');
    const k = decodeURIComponent(i < 0 ? kv : kv.slice(0, i));
    const v = decodeURIComponent(i < 0 ? '' : kv.slice(i + 1));
    if (!KNOWN_QUERY.has(k) && !k.startsWith('x-')) throw new NbdUriError(`'${text}': unknown query parameter '${k}'`);
    if (k.startsWith('tls-') && !secure) throw new NbdUriError(`'${text}': TLS parameter '${k}' with scheme ${scheme}: use ${scheme.replace('nbd', 'nbds')} (this client never falls back to plaintext)`);
    params.set(k, v);
  }
  const tls = secure ? tlsFromQuery(text, params, userRaw) : undefined;
  const withTls = (ref: ExportRef): ExportRef => (tls ? { ...ref, tls } : ref);
  if (scheme === 'nbd+unix' || scheme === 'nbds+unix') {
    if (hostRaw) throw new NbdUriError(`'${text}': nbd+unix URIs have no host (write nbd+unix:///EXPORT?socket=PATH)`);
    const socket = params.get('socket');
    if (!socket) throw new NbdUriError(`'${text}': ${scheme} needs ?socket=PATH`);
    return withTls({ address: { kind: 'unix', path: socket }, name });
  }
  if (params.has('socket')) throw new NbdUriError(`'${text}': socket= is only valid with nbd+unix or nbds+unix`);
  const host = hostRaw.startsWith('[') ? hostRaw.slice(1, -1) : hostRaw || 'localhost';
  let port = DEFAULT_PORT;
  if (portRaw !== undefined && portRaw !== '') {
    if (!/^\d+$/.test(portRaw) || Number(portRaw) > 65535) throw new NbdUriError(`'${text}': port '${portRaw}' is not a number between 0 and 65535`);
    port = Number(portRaw);
  }
  return withTls({ address: { kind: 'tcp', host, port }, name });
}

function tlsFromQuery(text: string, params: Map<string, string>, user: string | undefined): TlsClientConfig {
  const certs = params.get('tls-certificates');
  const psk = params.get('tls-psk-file');
  const type = params.get('tls-type') ?? (psk !== undefined ? 'psk' : 'x509');
  if (type !== 'x509' && type !== 'psk') throw new NbdUriError(`'${text}': tls-type=${type} is not supported (x509 or psk)`);
  if (certs !== undefined && psk !== undefined) throw new NbdUriError(`'${text}': give tls-certificates or tls-psk-file, not both`);
  if (type === 'psk') {
    if (!psk) throw new NbdUriError(`'${text}': PSK requires TLS credentials: add tls-psk-file=FILE`);
    return { type: 'psk', pskFile: psk, identity: user ? decodeURIComponent(user) : undefined };
  }
  if (!certs) throw new NbdUriError(`'${text}': nbds requires TLS credentials: add tls-certificates=DIR (ca-cert.pem, client-cert.pem, client-key.pem) or tls-psk-file=FILE`);
  const vp = params.get('tls-verify-peer');
  if (vp !== undefined && !['0', '1', 'false', 'true'].includes(vp)) throw new NbdUriError(`'${text}': tls-verify-peer=${vp} is not a boolean (0, 1, false, true)`);
  return { type: 'x509', certificates: certs, hostname: params.get('tls-hostname'), verifyPeer: vp === undefined ? undefined : vp === '1' || vp === 'true' };
}

export function isNbdUri(text: string): boolean {
  return /^nbds?(\+unix)?:\/\//i.test(text);
}
