// `--nbd-server ...,tls-creds=ID[,tls-authz=ID]` (and nbd-server-start): the objects resolved
// and held for the server, with qemu-storage-daemon 7.2's messages (blockdev-nbd.c
// nbd_get_tls_creds, measured).
import type { NbdServerOptions } from '../args.ts';
import { UsageError } from '../keys.ts';
import type { ServerTls } from '../../nbd/tls.ts';
import { AUTHZ_TYPES, type Authz } from './authz.ts';
import type { ObjectStore } from './registry.ts';
import { TLS_CREDS_TYPES, type TlsCreds } from './tls-creds.ts';

export function serverTlsFor(store: ObjectStore, opts: NbdServerOptions, user: string): ServerTls | undefined {
  if (opts.tlsCreds === undefined) return undefined;
  const id = opts.tlsCreds;
  const obj = store.get(id);
  if (!obj) throw new UsageError(`No TLS credentials with id '${id}'`);
  if (!(TLS_CREDS_TYPES as readonly string[]).includes(obj.qomType)) throw new UsageError(`Object with id '${id}' is not TLS credentials`);
  const creds = obj.instance as TlsCreds;
  if (creds.endpoint !== 'server') throw new UsageError('Expected TLS credentials for a server endpoint');
  let authz: Authz | undefined;
  if (opts.tlsAuthz !== undefined) {
    // QEMU 7.2 looks the authz object up only when a client connects (and then refuses every
    // client if it is missing); the reference says so at start.
    const a = store.get(opts.tlsAuthz);
    if (!a) throw new UsageError(`No authorization object with id '${opts.tlsAuthz}'`);
    authz = store.use<Authz>(opts.tlsAuthz, AUTHZ_TYPES, user, 'tls-authz');
  }
  store.use(id, TLS_CREDS_TYPES, user, 'tls-creds');
  const check = authz ? (who: string) => authz.isAllowed(who) : undefined;
  if (creds.kind === 'psk') {
    return { creds: { kind: 'psk', keys: creds.keys, ...(creds.dhparam ? { dhparam: creds.dhparam } : {}) }, ...(check ? { authz: check } : {}) };
  }
  return {
    creds: {
      kind: 'x509',
      ca: creds.ca,
      cert: creds.cert!,
      key: creds.key!,
      verifyPeer: creds.verifyPeer,
      ...(creds.crl ? { crl: creds.crl } : {}),
      ...(creds.dhparam ? { dhparam: creds.dhparam } : {}),
    },
    ...(check ? { authz: check } : {}),
  };
}
