// `fleece serve` command line: qemu-storage-daemon's options (qemu-storage-daemon(1);
// docs/requirements/qemu-fleecing.md §5.1), parsed into an ordered list of actions without touching any I/O.
// Options act in the order given, as in qemu-storage-daemon: an --export needs its node and the
// NBD server to exist already.
import type { ListenAddress } from '../nbd/server.ts';
import { KeyvalError, parseKeyval, type KeyvalObject } from './keyval.ts';
import { Keys, UsageError, at } from './keys.ts';
import { objectTypes, parseObjectOptions, type ObjectOptions } from './objects/index.ts';

export { UsageError };


export interface ExportOptions {
  readonly type: 'nbd';
  readonly id: string;
  readonly nodeName: string;
  /** The NBD export name; defaults to the node name (QEMU). */
  readonly name: string;
  readonly writable: boolean;
  readonly description?: string;
  /** Dirty bitmaps to expose as qemu:dirty-bitmap:NAME: a name (searched on the node and down
   * its filter and backing chain) or {node, name} (BlockDirtyBitmapOrStr). */
  readonly bitmaps: ExportBitmap[];
  /** qemu:allocation-depth (docs/interop/nbd.txt). */
  readonly allocationDepth?: boolean;
  /** UNSAFE, known bad (the backup suite's contexts check): qemu:allocation-depth says 0 everywhere. */
  readonly xAllocationDepthZero?: boolean;
  /** UNSAFE, known bad (the backup suite's contexts check): base:allocation says ZERO everywhere. */
  readonly xBaseAllocationZero?: boolean;
  /** `iothread=`: must name an --object iothread (it has no effect here: one event loop). */
  readonly iothread?: string;
}

export type ExportBitmap = string | { readonly node: string; readonly name: string };

export interface NbdServerOptions {
  readonly addr: ListenAddress;
  /** 0 = unlimited. Default DEFAULT_MAX_CONNECTIONS (QEMU 9.1's, not 7.2's unlimited). */
  readonly maxConnections: number;
  /** Clients that have not reached transmission by then are dropped; 0 = no limit. */
  readonly handshakeMaxSeconds: number;
  /** Object id of the tls-creds-x509/psk (endpoint=server): the server is then TLS-only. */
  readonly tlsCreds?: string;
  /** Object id of an authz-* object checked against each client's TLS identity. */
  readonly tlsAuthz?: string;
  /** UNSAFE, known-bad: act on plaintext bytes the client pipelined after NBD_OPT_STARTTLS
   * as if they had arrived over TLS (the STARTTLS injection); only for testing checks. */
  readonly xTlsKeepPlaintext?: boolean;
}

/** CVE-2024-7409: QEMU 9.1 set nbd-server-start's and qemu-storage-daemon --nbd-server's
 * default max-connections to 100 (it was unlimited in 7.2); the reference takes the fixed one. */
export const DEFAULT_MAX_CONNECTIONS = 100;
/** QEMU 10.0's default handshake-max-seconds (9.1 had the same 10 s, not configurable). */
export const DEFAULT_HANDSHAKE_MAX_SECONDS = 10;

export interface ChardevOptions {
  readonly id: string;
  readonly path: string;
}

export type Action = (
  | { readonly kind: 'blockdev'; readonly options: KeyvalObject }
  | { readonly kind: 'nbd-server'; readonly options: NbdServerOptions }
  | { readonly kind: 'export'; readonly options: ExportOptions }
  | { readonly kind: 'chardev'; readonly options: ChardevOptions }
  | { readonly kind: 'monitor'; readonly chardev: string; readonly pretty: boolean }
  | { readonly kind: 'object'; readonly options: ObjectOptions }
) & {
  /** The option as given (`--nbd-server addr.type=unix,...`): errors while acting on it start
   * with it, as qemu-storage-daemon's do. */
  readonly source?: string;
};

export interface DaemonConfig {
  readonly actions: Action[];
  readonly pidfile?: string;
  readonly help: boolean;
  readonly version: boolean;
  /** systemd socket activation: listening fds handed over (LISTEN_PID/LISTEN_FDS, from fd 3). */
  readonly activationFds: number[];
}


/** SocketAddress, flat (`type=unix,path=...`) or QMP's legacy form (`{type, data: {...}}`). */
export function parseSocketAddress(raw: unknown, where: string): ListenAddress {
  if (raw === undefined) throw new UsageError(`${at(where)}Parameter 'addr' is missing`);
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new UsageError(`${at(where)}Invalid parameter type for 'addr', expected: object`);
  let o = raw as Record<string, unknown>;
  if (o.data !== undefined && typeof o.data === 'object' && o.data !== null) o = { type: o.type, ...(o.data as object) };
  const k = new Keys(o, where, 'addr.');
  const type = k.req('type');
  let addr: ListenAddress;
  switch (type) {
    case 'unix':
      addr = { type: 'unix', path: k.req('path') };
      // Accepted with QEMU's defaults (no abstract namespace here).
      if (k.get('abstract') !== undefined && k.bool('abstract', false)) throw new UsageError(`${at(where)}abstract unix sockets are not supported`);
      k.get('tight');
      break;
    case 'inet': {
      const host = k.req('host');
      const port = k.req('port');
      if (!/^\d+$/.test(port) || Number(port) > 65535) throw new UsageError(`${at(where)}port '${port}' is not a port number`);
      k.get('numeric');
      addr = { type: 'inet', host, port: Number(port) };
      break;
    }
    case 'fd': {
      const s = k.req('str');
      if (!/^\d+$/.test(s)) throw new UsageError(`${at(where)}fd '${s}' must be a file descriptor number`);
      addr = { type: 'fd', fd: Number(s) };
      break;
    }
    case 'vsock':
      throw new UsageError(`${at(where)}address type '${type}' is not supported (use unix, inet or fd)`);
    default:
      // QAPI's check of the union's discriminator names it without the 'addr.' path.
      throw new UsageError(`${at(where)}Parameter 'type' does not accept value '${type}'`);
  }
  k.finish();
  return addr;
}

export function parseNbdServerOptions(o: Record<string, unknown>, where = '--nbd-server'): NbdServerOptions {
  const k = new Keys(o, where);
  const addr = parseSocketAddress(k.get('addr'), where);
  const tlsCreds = k.str('tls-creds');
  const tlsAuthz = k.str('tls-authz');
  // QEMU 7.2 accepts this and ignores the authz: a configuration that authorizes nobody it
  // checks is refused here instead.
  if (tlsAuthz !== undefined && tlsCreds === undefined) throw new UsageError(`${at(where)}'tls-authz' is not supported without 'tls-creds'`);
  const maxConnections = k.int('max-connections', DEFAULT_MAX_CONNECTIONS);
  const handshakeMaxSeconds = k.int('handshake-max-seconds', DEFAULT_HANDSHAKE_MAX_SECONDS);
  const xTlsKeepPlaintext = k.bool('x-tls-keep-plaintext', false);
  k.finish();
  return {
    addr, maxConnections, handshakeMaxSeconds,
    ...(tlsCreds !== undefined ? { tlsCreds } : {}),
    ...(tlsAuthz !== undefined ? { tlsAuthz } : {}),
    ...(xTlsKeepPlaintext ? { xTlsKeepPlaintext } : {}),
  };
}

/** BlockExportOptions for type=nbd (QAPI block-export.json), from --export or block-export-add. */
export function parseExportOptions(o: Record<string, unknown>, where = '--export'): ExportOptions {
  const k = new Keys(o, where);
  const type = k.req('type');
  if (type === 'fuse' || type === 'vhost-user-blk' || type === 'vduse-blk') throw new UsageError(`${at(where)}export type '${type}' is not supported (only 'nbd')`);
  if (type !== 'nbd') throw new UsageError(`${at(where)}Parameter 'type' does not accept value '${type}'`);
  const id = k.req('id');
  const nodeName = k.req('node-name');
  const name = k.str('name') ?? nodeName;
  const writable = k.bool('writable', false);
  const description = k.str('description');
  // 'bitmap' is nbd-server-add's; BlockExportOptionsNbd has only 'bitmaps' (qemu-storage-daemon 7.2).
  if (k.get('bitmap') !== undefined) throw new UsageError(`${at(where)}Parameter 'bitmap' is unexpected`);
  const bitmaps = exportBitmaps(k.get('bitmaps'), where);
  const allocationDepth = k.bool('allocation-depth', false);
  const xAllocationDepthZero = k.bool('x-allocation-depth-zero', false);
  const xBaseAllocationZero = k.bool('x-base-allocation-zero', false);
  // Accepted with no effect in a single-threaded reference: the cache mode, the I/O thread (but
  // it must exist: Daemon.addExport looks it up, as blk_exp_add does).
  k.bool('writethrough', false);
  const iothread = k.str('iothread');
  k.bool('fixed-iothread', false);
  k.finish();
  return {
    type: 'nbd', id, nodeName, name, writable, bitmaps,
    ...(allocationDepth ? { allocationDepth } : {}),
    ...(xAllocationDepthZero ? { xAllocationDepthZero } : {}),
    ...(xBaseAllocationZero ? { xBaseAllocationZero } : {}),
    ...(description !== undefined ? { description } : {}),
    ...(iothread !== undefined ? { iothread } : {}),
  };
}

function exportBitmaps(v: unknown, where: string): ExportBitmap[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new UsageError(`${at(where)}Invalid parameter type for 'bitmaps', expected: array`);
  return v.map((b, i) => {
    if (typeof b === 'string') return b;
    const o = b as { node?: unknown; name?: unknown };
    if (typeof b === 'object' && b !== null && typeof o.node === 'string' && typeof o.name === 'string' && Object.keys(b).length === 2) return { node: o.node, name: o.name };
    throw new UsageError(`${at(where)}Invalid parameter type for 'bitmaps[${i}]', expected: a bitmap name or {node, name}`);
  });
}

function parseChardev(o: Record<string, unknown>, where = '--chardev'): ChardevOptions {
  const k = new Keys(o, where);
  const backend = k.req('backend');
  if (backend !== 'socket') throw new UsageError(`${at(where)}backend '${backend}' is not supported (only 'socket')`);
  const id = k.req('id');
  const path = k.str('path');
  if (path === undefined) throw new UsageError(`${at(where)}only unix sockets are supported: parameter 'path' is missing`);
  if (!k.bool('server', false)) throw new UsageError(`${where} '${id}': client mode is not supported, use server=on`);
  k.bool('wait', true); // the reference never blocks waiting for a first client
  k.get('telnet');
  k.get('nodelay');
  // QemuOpts (chardevs are not QAPI-parsed on the command line): "Invalid parameter".
  const extra = Object.keys(o).find((key) => !['backend', 'id', 'path', 'server', 'wait', 'telnet', 'nodelay'].includes(key));
  if (extra !== undefined) throw new UsageError(`${at(where)}Invalid parameter '${extra}'`);
  k.finish();
  return { id, path };
}

const HELP = `usage: fleece serve [options]
The reference block stack, configured like qemu-storage-daemon.

  -h, --help             print this help and exit
  -V, --version          print version and exit
  --blockdev [driver=]<driver>[,node-name=<N>][,<driver options>]   or a JSON object
  --chardev socket,id=<id>,path=<path>,server=on[,wait=off]
  --export [type=]nbd,id=<id>,node-name=<node>[,name=<export name>][,writable=on|off]
           [,description=<text>][,bitmaps.0=<name>][,allocation-depth=on|off][,iothread=<id>]
  --monitor [chardev=]<id>[,mode=control][,pretty=on|off]
  --nbd-server addr.type=unix,addr.path=<path>
  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>
  --nbd-server addr.type=fd,addr.str=<fd>
           [,tls-creds=<id>[,tls-authz=<id>]][,max-connections=<n>][,handshake-max-seconds=<s>]
           max-connections defaults to 100 and handshake-max-seconds to 10 (0: no limit);
           with tls-creds every client must STARTTLS before any other option
  --object <type>,id=<id>[,<properties>]   or a JSON object; types: ${objectTypes().join(', ')}
           iothread (accepted, no effect: one event loop),
           throttle-group (limits.bps-total=, limits.iops-read=, ..., x-bps-total=, ...),
           tls-creds-x509,id=<id>,dir=<dir>,endpoint=server[,verify-peer=on|off]
               (dir: ca-cert.pem server-cert.pem server-key.pem [ca-crl.pem];
                verify-peer=on, the default, requires a client certificate from that CA)
           tls-creds-psk,id=<id>,dir=<dir>,endpoint=server   (dir/keys.psk: psktool's lines)
           authz-simple,id=<id>,identity=<x509 DN or PSK username>
           authz-list,id=<id>,policy=allow|deny,rules.0.match=<m>,rules.0.policy=allow|deny
               [,rules.0.format=exact|glob]
           authz-listfile,id=<id>,filename=<json>[,refresh=on|off]
  --pidfile <path>       write the process id to <path>

With systemd socket activation (LISTEN_PID/LISTEN_FDS) the NBD server listens on fd 3 and
no --nbd-server is needed; the export name "" selects the first export.
`;
export const USAGE = HELP;

/**
 * argv (after `serve`) → DaemonConfig. `env` and `pid` make socket activation testable.
 * Throws UsageError naming the option and the offending parameter.
 */
export function parseArgs(argv: readonly string[], env: Readonly<Record<string, string | undefined>> = {}, pid = 0): DaemonConfig {
  const actions: Action[] = [];
  let pidfile: string | undefined;
  let help = false;
  let version = false;
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i]!;
    let inline: string | undefined;
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    if (eq > 0) {
      inline = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    let given: string | undefined;
    const value = (): string => {
      if (inline !== undefined) return (given = inline);
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`option '${arg}' requires an argument`);
      return (given = v);
    };
    const before = actions.length;
    // qemu-storage-daemon reports an option's errors after the option and its value as given
    // ("--object foo,id=x: Parameter 'qom-type' does not accept value 'foo'"): `where`.
    let where = arg;
    const kv = (implied?: string): KeyvalObject => {
      const text = value();
      where = `${arg} ${text}`;
      try {
        return parseKeyval(text, implied);
      } catch (e) {
        if (e instanceof KeyvalError) throw new UsageError(`${at(where)}${e.message}`);
        throw e;
      }
    };
    switch (arg) {
      case '-h':
      case '--help':
        help = true;
        break;
      case '-V':
      case '--version':
        version = true;
        break;
      case '--blockdev':
        actions.push({ kind: 'blockdev', options: kv('driver') });
        break;
      case '--nbd-server': {
        const o = kv();
        actions.push({ kind: 'nbd-server', options: parseNbdServerOptions(o, where) });
        break;
      }
      case '--export': {
        const o = kv('type');
        actions.push({ kind: 'export', options: parseExportOptions(o, where) });
        break;
      }
      case '--chardev': {
        const o = kv('backend');
        actions.push({ kind: 'chardev', options: parseChardev(o, where) });
        break;
      }
      case '--monitor': {
        const o = kv('chardev');
        const k = new Keys(o, where);
        const chardev = k.req('chardev');
        const mode = k.str('mode') ?? 'control';
        if (mode !== 'control' && mode !== 'readline') throw new UsageError(`${at(where)}Parameter 'mode' does not accept value '${mode}'`);
        if (mode !== 'control') throw new UsageError(`${at(where)}mode '${mode}' is not supported (only 'control', QMP)`);
        const pretty = k.bool('pretty', false);
        k.get('id');
        k.finish();
        actions.push({ kind: 'monitor', chardev, pretty });
        break;
      }
      case '--pidfile':
        pidfile = value();
        break;
      case '-T':
      case '--trace':
        value(); // QEMU trace events have no counterpart here; accepted and ignored
        break;
      case '--object': {
        const o = kv('qom-type');
        actions.push({ kind: 'object', options: parseObjectOptions(o, where, where.startsWith('--object {')) });
        break;
      }
      case '--daemonize':
        throw new UsageError(`option '${arg}' is not supported by fleece serve`);
      default:
        // getopt_long's and qemu-storage-daemon's words.
        if (arg.startsWith('-')) throw new UsageError(`unrecognized option '${arg}'`);
        throw new UsageError(`${arg}: Unexpected argument`);
    }
    if (actions.length > before) actions[before] = { ...actions[before]!, source: `${arg} ${given ?? ''}`.trim() };
  }
  // sd_listen_fds(3): honour the fds only when they were meant for this process.
  let activationFds: number[] = [];
  if (env.LISTEN_PID !== undefined && env.LISTEN_FDS !== undefined && Number(env.LISTEN_PID) === pid) {
    const n = Number(env.LISTEN_FDS);
    if (!Number.isInteger(n) || n < 1) throw new UsageError(`LISTEN_FDS='${env.LISTEN_FDS}' is not a positive count`);
    activationFds = Array.from({ length: n }, (_, j) => 3 + j);
    if (actions.some((a) => a.kind === 'nbd-server')) {
      throw new UsageError('--nbd-server cannot be used together with systemd socket activation (LISTEN_FDS)');
    }
  }
  return { actions, help, version, activationFds, ...(pidfile !== undefined ? { pidfile } : {}) };
}
