// `--object tls-creds-x509,id=,dir=,endpoint=server|client[,verify-peer=on|off]` and
// `--object tls-creds-psk,id=,dir=,endpoint=...[,username=]`: QEMU's crypto/tlscredsx509.c and
// tlscredspsk.c, with their file layout in `dir` (qemu-storage-daemon(1) "--object"):
//   x509 server: ca-cert.pem, server-cert.pem, server-key.pem (required), ca-crl.pem, dh-params.pem
//   x509 client: ca-cert.pem (required), client-cert.pem, client-key.pem
//   psk:         keys.psk (psktool's `identity:hexkey` lines), dh-params.pem
// The files are read when the object is created, as QEMU loads them in its complete() step, so
// a missing file fails the --object option with QEMU's wording. The reference only serves, so
// client credentials are accepted (QEMU command lines carry them) and refused where a server
// needs credentials.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError, at as prefix, type Keys } from '../keys.ts';
import { registerObjectType } from './registry.ts';

export type TlsEndpoint = 'server' | 'client';

interface CredsProps {
  readonly dir: string;
  readonly endpoint: TlsEndpoint;
  readonly verifyPeer: boolean;
  readonly username?: string;
}

export interface X509Creds {
  readonly kind: 'x509';
  readonly id: string;
  readonly endpoint: TlsEndpoint;
  /** QEMU's default is on: a server then requires a client certificate signed by the CA. */
  readonly verifyPeer: boolean;
  readonly ca: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly crl?: Buffer;
  readonly dhparam?: Buffer;
}

export interface PskCreds {
  readonly kind: 'psk';
  readonly id: string;
  readonly endpoint: TlsEndpoint;
  /** identity → key, from keys.psk. */
  readonly keys: ReadonlyMap<string, Buffer>;
  readonly username?: string;
  readonly dhparam?: Buffer;
}

export type TlsCreds = X509Creds | PskCreds;

export const TLS_CREDS_TYPES = ['tls-creds-x509', 'tls-creds-psk'] as const;

function parseCommon(k: Keys, where: string, x509: boolean): CredsProps {
  // A QOM property, not a QAPI member: QEMU's words differ from a missing parameter's.
  if (k.get('dir') === undefined) throw new UsageError(`${prefix(where)}Missing 'dir' property value`);
  const dir = k.req('dir');
  const endpoint = k.str('endpoint') ?? 'client'; // QEMU's default endpoint
  if (endpoint !== 'server' && endpoint !== 'client') {
    throw new UsageError(`${prefix(where)}Parameter 'endpoint' does not accept value '${endpoint}'`);
  }
  // verify-peer is a property of every tls-creds type in QEMU (default on), used by x509 only.
  const verifyPeer = k.bool('verify-peer', true);
  // GnuTLS priority strings have no OpenSSL counterpart that would mean the same thing.
  if (k.get('priority') !== undefined) throw new UsageError(`${prefix(where)}'priority' (a GnuTLS priority string) is not supported by the reference`);
  if (k.get('passwordid') !== undefined) throw new UsageError(`${prefix(where)}'passwordid' (an encrypted server key) is not supported by the reference`);
  if (x509) k.bool('sanity-check', true); // the checks are OpenSSL's at handshake time
  k.get('loaded'); // deprecated read-only property QEMU still accepts
  let username: string | undefined;
  if (!x509) username = k.str('username');
  return { dir, endpoint, verifyPeer, ...(username !== undefined ? { username } : {}) };
}

/** qcrypto_tls_creds_get_path: a required file that cannot be read, in QEMU's words. */
function readCred(dir: string, file: string, required: boolean, where: string): Buffer | undefined {
  const p = path.join(dir, file);
  try {
    return fs.readFileSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (!required && code === 'ENOENT') return undefined;
    const why = code === 'ENOENT' ? 'No such file or directory' : code === 'EACCES' ? 'Permission denied' : code === 'EISDIR' ? 'Is a directory' : (e as Error).message;
    throw new UsageError(`${prefix(where)}Unable to access credentials ${p}: ${why}`);
  }
}

/** keys.psk: `identity:hexkey` per line (psktool(1)); blank lines ignored. */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') return;
    const colon = line.lastIndexOf(':');
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !/^(?:[0-9a-fA-F]{2})+$/.test(hex)) {
      throw new UsageError(`${file}:${i + 1}: expected 'identity:hexkey' (psktool's format)`);
    }
    keys.set(line.slice(0, colon), Buffer.from(hex, 'hex'));
  });
  return keys;
}

registerObjectType<CredsProps>({
  qomType: 'tls-creds-x509',
  parse: (k, where) => parseCommon(k, where, true),
  create(id, p, where): X509Creds {
    const server = p.endpoint === 'server';
    const side = server ? 'server' : 'client';
    const ca = readCred(p.dir, 'ca-cert.pem', true, where)!;
    const cert = readCred(p.dir, `${side}-cert.pem`, server, where);
    const key = readCred(p.dir, `${side}-key.pem`, server, where);
    const crl = server ? readCred(p.dir, 'ca-crl.pem', false, where) : undefined;
    const dhparam = server ? readCred(p.dir, 'dh-params.pem', false, where) : undefined;
    return {
      kind: 'x509', id, endpoint: p.endpoint, verifyPeer: p.verifyPeer, ca,
      ...(cert ? { cert } : {}), ...(key ? { key } : {}), ...(crl ? { crl } : {}), ...(dhparam ? { dhparam } : {}),
    };
  },
});

registerObjectType<CredsProps>({
  qomType: 'tls-creds-psk',
  parse: (k, where) => parseCommon(k, where, false),
  create(id, p, where): PskCreds {
    const file = path.join(p.dir, 'keys.psk');
    const keys = parsePskFile(readCred(p.dir, 'keys.psk', true, where)!.toString('utf8'), `${prefix(where)}${file}`);
    if (p.endpoint === 'client') {
      // QEMU's client looks its username up in the file (default "qemu").
      const user = p.username ?? 'qemu';
      if (!keys.has(user)) throw new UsageError(`${prefix(where)}Username ${user} not found in PSK file ${file}`);
    }
    const dhparam = readCred(p.dir, 'dh-params.pem', false, where);
    return { kind: 'psk', id, endpoint: p.endpoint, keys, ...(p.username !== undefined ? { username: p.username } : {}), ...(dhparam ? { dhparam } : {}) };
  },
});
