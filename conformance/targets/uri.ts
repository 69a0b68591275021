// NBD URIs (doc/uri.md; docs/requirements/nbd.md §1.13, checklist H75): nbd://host[:port]/export and
// nbd+unix:///export?socket=PATH. TLS schemes are rejected: this client has no TLS.
import type { ExportRef } from './types.ts';

export class NbdUriError extends Error {
  override readonly name = 'NbdUriError';
}

export const DEFAULT_PORT = 10809;
const KNOWN_QUERY = new Set(['socket', 'tls-type', 'tls-hostname', 'tls-verify-peer', 'tls-certificates', 'tls-psk-file']);

export function parseNbdUri(text: string): ExportRef {
  const m = /^([a-z+]+):\/\/(?:([^@/?#]*)@)?(\[[^\]]*\]|[^:/?#]*)(?::([^/?#]*))?(\/[^?#]*)?(?:\?([^#]*))?(?:#.*)?$/i.exec(text);
  if (!m) throw new NbdUriError(`'${text}' is not an NBD URI (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)`);
  const [, schemeRaw, , hostRaw = '', portRaw, path = '', query = ''] = m;
  const scheme = (schemeRaw ?? '').toLowerCase();
  if (scheme === 'nbds' || scheme === 'nbds+unix') throw new NbdUriError(`'${text}': scheme ${scheme} requires TLS, which this client does not implement (doc/uri.md: clients without TLS reject nbds)`);
  if (scheme !== 'nbd' && scheme !== 'nbd+unix') throw new NbdUriError(`'${text}': unknown scheme '${scheme}' (use nbd or nbd+unix)`);
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
    if (k.startsWith('tls-')) throw new NbdUriError(`'${text}': TLS parameter '${k}' given, but this client does not implement TLS`);
    params.set(k, v);
  }
  if (scheme === 'nbd+unix') {
    if (hostRaw) throw new NbdUriError(`'${text}': nbd+unix URIs have no host (write nbd+unix:///EXPORT?socket=PATH)`);
    const socket = params.get('socket');
    if (!socket) throw new NbdUriError(`'${text}': nbd+unix needs ?socket=PATH`);
    return { address: { kind: 'unix', path: socket.startsWith('\0') ? socket : socket }, name };
  }
  if (params.has('socket')) throw new NbdUriError(`'${text}': socket= is only valid with nbd+unix`);
  const host = hostRaw.startsWith('[') ? hostRaw.slice(1, -1) : hostRaw || 'localhost';
  let port = DEFAULT_PORT;
  if (portRaw !== undefined && portRaw !== '') {
    if (!/^\d+$/.test(portRaw) || Number(portRaw) > 65535) throw new NbdUriError(`'${text}': port '${portRaw}' is not a number between 0 and 65535`);
    port = Number(portRaw);
  }
  return { address: { kind: 'tcp', host, port }, name };
}

export function isNbdUri(text: string): boolean {
  return /^nbds?(\+unix)?:\/\//i.test(text);
}
