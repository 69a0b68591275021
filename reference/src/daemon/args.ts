// `fleece serve` command line: qemu-storage-daemon's options (qemu-storage-daemon(1);
// docs/requirements/qemu-fleecing.md §5.1), parsed into an ordered list of actions without touching any I/O.
// Options act in the order given, as in qemu-storage-daemon: an --export needs its node and the
// NBD server to exist already.
import type { ListenAddress } from '../nbd/server.ts';
import { KeyvalError, parseKeyval, toBool, type KeyvalObject } from './keyval.ts';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

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
}

export type ExportBitmap = string | { readonly node: string; readonly name: string };

export interface NbdServerOptions {
  readonly addr: ListenAddress;
  /** 0 = unlimited (QEMU's default). */
  readonly maxConnections: number;
}

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

/** Reads the keys of an options object, rejecting those nobody asked for. */
class Keys {
  private readonly used = new Set<string>();
  constructor(
    private readonly o: Record<string, unknown>,
    private readonly where: string,
  ) {}
  get(key: string): unknown {
    this.used.add(key);
    return this.o[key];
  }
  str(key: string): string | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw new UsageError(`${this.where}: parameter '${key}' expects a string, got ${JSON.stringify(v)}`);
    return v;
  }
  req(key: string): string {
    const v = this.str(key);
    if (v === undefined || v === '') throw new UsageError(`${this.where}: parameter '${key}' is missing`);
    return v;
  }
  bool(key: string, def: boolean): boolean {
    const v = this.get(key);
    if (v === undefined) return def;
    try {
      return toBool(v, `${this.where}: parameter '${key}'`);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }
  int(key: string, def: number): number {
    const v = this.get(key);
    if (v === undefined) return def;
    const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
      throw new UsageError(`${this.where}: parameter '${key}' expects a non-negative integer, got ${JSON.stringify(v)}`);
    }
    return n;
  }
  /** QEMU "Parameter 'x' is unexpected" / "Invalid parameter 'x'". */
  finish(): void {
    const extra = Object.keys(this.o).filter((k) => !this.used.has(k));
    if (extra.length) throw new UsageError(`${this.where}: invalid parameter${extra.length > 1 ? 's' : ''} ${extra.map((k) => `'${k}'`).join(', ')}`);
  }
}

/** SocketAddress, flat (`type=unix,path=...`) or QMP's legacy form (`{type, data: {...}}`). */
export function parseSocketAddress(raw: unknown, where: string): ListenAddress {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new UsageError(`${where}: parameter 'addr' is missing`);
  let o = raw as Record<string, unknown>;
  if (o.data !== undefined && typeof o.data === 'object' && o.data !== null) o = { type: o.type, ...(o.data as object) };
  const k = new Keys(o, where);
  const type = k.req('type');
  let addr: ListenAddress;
  switch (type) {
    case 'unix':
      addr = { type: 'unix', path: k.req('path') };
      // Accepted with QEMU's defaults (no abstract namespace here).
      if (k.get('abstract') !== undefined && k.bool('abstract', false)) throw new UsageError(`${where}: abstract unix sockets are not supported`);
      k.get('tight');
      break;
    case 'inet': {
      const host = k.req('host');
      const port = k.req('port');
      if (!/^\d+$/.test(port) || Number(port) > 65535) throw new UsageError(`${where}: port '${port}' is not a port number`);
      k.get('numeric');
      addr = { type: 'inet', host, port: Number(port) };
      break;
    }
    case 'fd': {
      const s = k.req('str');
      if (!/^\d+$/.test(s)) throw new UsageError(`${where}: fd '${s}' must be a file descriptor number`);
      addr = { type: 'fd', fd: Number(s) };
      break;
    }
    default:
      throw new UsageError(`${where}: address type '${type}' is not supported (use unix, inet or fd)`);
  }
  k.finish();
  return addr;
}

export function parseNbdServerOptions(o: Record<string, unknown>, where = '--nbd-server'): NbdServerOptions {
  const k = new Keys(o, where);
  const addr = parseSocketAddress(k.get('addr'), where);
  if (k.get('tls-creds') !== undefined || k.get('tls-authz') !== undefined) {
    throw new UsageError(`${where}: TLS ('tls-creds', 'tls-authz') is not supported by the reference server`);
  }
  const maxConnections = k.int('max-connections', 0);
  k.finish();
  return { addr, maxConnections };
}

/** BlockExportOptions for type=nbd (QAPI block-export.json), from --export or block-export-add. */
export function parseExportOptions(o: Record<string, unknown>, where = '--export'): ExportOptions {
  const k = new Keys(o, where);
  const type = k.req('type');
  if (type !== 'nbd') throw new UsageError(`${where}: export type '${type}' is not supported (only 'nbd')`);
  const id = k.req('id');
  const nodeName = k.req('node-name');
  const name = k.str('name') ?? nodeName;
  const writable = k.bool('writable', false);
  const description = k.str('description');
  // 'bitmap' is nbd-server-add's; BlockExportOptionsNbd has only 'bitmaps' (qemu-storage-daemon 7.2).
  if (k.get('bitmap') !== undefined) throw new UsageError(`${where}: Parameter 'bitmap' is unexpected`);
  const bitmaps = exportBitmaps(k.get('bitmaps'), where);
  const allocationDepth = k.bool('allocation-depth', false);
  const xAllocationDepthZero = k.bool('x-allocation-depth-zero', false);
  const xBaseAllocationZero = k.bool('x-base-allocation-zero', false);
  // Accepted with no effect in a single-threaded reference: I/O threads and the cache mode.
  k.get('writethrough');
  k.get('iothread');
  k.get('fixed-iothread');
  k.finish();
  return { type: 'nbd', id, nodeName, name, writable, bitmaps, ...(allocationDepth ? { allocationDepth } : {}), ...(xAllocationDepthZero ? { xAllocationDepthZero } : {}), ...(xBaseAllocationZero ? { xBaseAllocationZero } : {}), ...(description !== undefined ? { description } : {}) };
}

function exportBitmaps(v: unknown, where: string): ExportBitmap[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new UsageError(`${where}: Invalid parameter type for 'bitmaps', expected: array`);
  return v.map((b, i) => {
    if (typeof b === 'string') return b;
    const o = b as { node?: unknown; name?: unknown };
    if (typeof b === 'object' && b !== null && typeof o.node === 'string' && typeof o.name === 'string' && Object.keys(b).length === 2) return { node: o.node, name: o.name };
    throw new UsageError(`${where}: Invalid parameter type for 'bitmaps[${i}]', expected: a bitmap name or {node, name}`);
  });
}

function parseChardev(o: Record<string, unknown>): ChardevOptions {
  const where = '--chardev';
  const k = new Keys(o, where);
  const backend = k.req('backend');
  if (backend !== 'socket') throw new UsageError(`${where}: backend '${backend}' is not supported (only 'socket')`);
  const id = k.req('id');
  const path = k.str('path');
  if (path === undefined) throw new UsageError(`${where}: only unix sockets are supported: parameter 'path' is missing`);
  if (!k.bool('server', false)) throw new UsageError(`${where} '${id}': client mode is not supported, use server=on`);
  k.bool('wait', true); // the reference never blocks waiting for a first client
  k.get('telnet');
  k.get('nodelay');
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
           [,description=<text>][,bitmaps.0=<name>][,allocation-depth=on|off]
  --monitor [chardev=]<id>[,mode=control][,pretty=on|off]
  --nbd-server addr.type=unix,addr.path=<path>
  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>
  --nbd-server addr.type=fd,addr.str=<fd>       [,max-connections=<n>]
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
    const kv = (implied?: string): KeyvalObject => {
      try {
        return parseKeyval(value(), implied);
      } catch (e) {
        if (e instanceof KeyvalError) throw new UsageError(`${arg}: ${e.message}`);
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
      case '--nbd-server':
        actions.push({ kind: 'nbd-server', options: parseNbdServerOptions(kv()) });
        break;
      case '--export':
        actions.push({ kind: 'export', options: parseExportOptions(kv('type')) });
        break;
      case '--chardev':
        actions.push({ kind: 'chardev', options: parseChardev(kv('backend')) });
        break;
      case '--monitor': {
        const k = new Keys(kv('chardev'), '--monitor');
        const chardev = k.req('chardev');
        const mode = k.str('mode') ?? 'control';
        if (mode !== 'control') throw new UsageError(`--monitor: mode '${mode}' is not supported (only 'control', QMP)`);
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
      case '--object':
      case '--daemonize':
        throw new UsageError(`option '${arg}' is not supported by fleece serve`);
      default:
        if (arg.startsWith('-')) throw new UsageError(`unknown option '${arg}'`);
        throw new UsageError(`unexpected argument '${arg}'`);
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
