// The reference storage daemon at run time: one block graph, one NBD server, exports, QMP
// monitors, and the QMP commands the suite needs (docs/architecture.md "reference/"), with qemu-storage-daemon's
// wording where a client could compare (docs/requirements/qemu-fleecing.md §5).
import * as fs from 'node:fs';
import { BlockGraph } from '../block/graph.ts';
import type { BlockNode } from '../block/node.ts';
import { PERM, PERM_ALL } from '../block/perm.ts';
import type { BlockBackend } from '../block/types.ts';
import { NbdServer, type BoundAddress } from '../nbd/server.ts';
import type { DirtyBitmapSource, NbdExport } from '../nbd/session.ts';
import { QmpDispatcher, QmpError, type QmpArgs } from '../qmp/dispatcher.ts';
import { QmpMonitor } from '../qmp/monitor.ts';
import { registerBreakpointCommands } from '../qmp/breakpoints.ts';
import { ObjectStore, parseObjectOptions } from './objects/index.ts';
import { serverTlsFor } from './objects/server-tls.ts';
import {
  UsageError,
  parseExportOptions,
  parseNbdServerOptions,
  type Action,
  type ChardevOptions,
  type ExportOptions,
  type NbdServerOptions,
} from './args.ts';

interface LiveExport {
  readonly opts: ExportOptions;
  readonly backend: BlockBackend;
  readonly nbd: NbdExport;
}

/** The export's BlockBackend user, as QEMU names it in permission-conflict messages. */
const EXPORT_USER = 'an unnamed block device';
/** The holder of the tls-creds and tls-authz objects while the NBD server runs. */
const NBD_SERVER_USER = 'NBD server';

/** blk_exp_add + the NBD export: CONSISTENT_READ (+WRITE if writable), shared all but RESIZE
 * (docs/requirements/qemu-fleecing.md §1.5-1.6). */
export function exportPermissions(writable: boolean): { perm: number; shared: number } {
  return { perm: PERM.CONSISTENT_READ | (writable ? PERM.WRITE : 0), shared: PERM_ALL & ~PERM.RESIZE };
}

/** Modules that add QMP commands or behaviour to every daemon (e.g. the breakpoint commands of
 * the interleavings suite) register here; each runs once per Daemon, after the built-in commands. */
const extensions: ((d: Daemon) => void)[] = [];
export function registerDaemonExtension(f: (d: Daemon) => void): void {
  extensions.push(f);
}

export interface DaemonOptions {
  readonly log?: (msg: string) => void;
  readonly graph?: BlockGraph;
}

export class Daemon {
  readonly graph: BlockGraph;
  readonly dispatcher = new QmpDispatcher();
  private nbd: NbdServer | undefined;
  private nbdAddress: BoundAddress | undefined;
  private nbdOpts: NbdServerOptions | undefined;
  private readonly exports = new Map<string, LiveExport>();
  private readonly chardevs = new Map<string, ChardevOptions>();
  private readonly monitors: QmpMonitor[] = [];
  /** User-creatable objects (--object, object-add), by id. */
  readonly objects = new ObjectStore();
  private quitRequested!: () => void;
  /** Resolves when a QMP client sent `quit`. */
  readonly quitting: Promise<void> = new Promise((r) => (this.quitRequested = r));
  private readonly log: (msg: string) => void;

  constructor(opts: DaemonOptions = {}) {
    this.graph = opts.graph ?? new BlockGraph();
    this.log = opts.log ?? (() => {});
    this.graph.events.on('qmp-event', (name: string, data: unknown) => this.emit(name, data));
    this.registerCommands();
    for (const ext of extensions) ext(this);
  }

  emit(event: string, data?: unknown): void {
    for (const m of this.monitors) m.emit(event, data);
  }

  /** Applies one command-line action (qemu-storage-daemon processes them in order). */
  async apply(action: Action): Promise<void> {
    switch (action.kind) {
      case 'blockdev':
        this.graph.addNode(action.options);
        return;
      case 'nbd-server':
        await this.startNbdServer(action.options);
        return;
      case 'export':
        this.addExport(action.options);
        return;
      case 'object':
        await this.objects.add(action.options);
        return;
      case 'chardev':
        if (this.chardevs.has(action.options.id)) throw new UsageError(`--chardev: duplicate chardev id '${action.options.id}'`);
        this.chardevs.set(action.options.id, action.options);
        return;
      case 'monitor': {
        const cd = this.chardevs.get(action.chardev);
        if (!cd) throw new UsageError(`--monitor: chardev '${action.chardev}' not found`);
        const mon = new QmpMonitor(this.dispatcher, {
          pretty: action.pretty,
          log: this.log,
          afterReply: (cmd) => {
            if (cmd === 'quit') this.quitRequested();
          },
        });
        await mon.listen(cd.path);
        this.monitors.push(mon);
        return;
      }
    }
  }

  // ------------------------------------------------------------------ NBD server and exports

  async startNbdServer(opts: NbdServerOptions): Promise<BoundAddress> {
    if (this.nbd) throw new QmpError('GenericError', 'NBD server already running');
    // The credentials and authz objects are held while the server runs (object-del refuses).
    const tls = this.usage(() => serverTlsFor(this.objects, opts, NBD_SERVER_USER));
    const srv = new NbdServer({
      log: this.log,
      maxConnections: opts.maxConnections,
      handshakeMaxSeconds: opts.handshakeMaxSeconds,
      unixSendBufferBytes: unixSendBufferFromEnv(),
      ...(tls ? { tls: { ...tls, ...(opts.xTlsKeepPlaintext ? { keepPlaintext: true } : {}) } } : {}),
    });
    try {
      this.nbdAddress = await srv.listen(opts.addr);
    } catch (e) {
      await srv.close();
      this.releaseNbdObjects(opts);
      throw e;
    }
    this.nbdOpts = opts;
    this.nbd = srv;
    return this.nbdAddress;
  }

  private releaseNbdObjects(opts: NbdServerOptions): void {
    if (opts.tlsCreds !== undefined) this.objects.release(opts.tlsCreds, NBD_SERVER_USER);
    if (opts.tlsAuthz !== undefined) this.objects.release(opts.tlsAuthz, NBD_SERVER_USER);
  }

  /** The running NBD server (tests read its counters). */
  get nbdServer(): NbdServer | undefined {
    return this.nbd;
  }

  get nbdServerAddress(): BoundAddress | undefined {
    return this.nbdAddress;
  }

  async stopNbdServer(): Promise<void> {
    const srv = this.nbd;
    if (!srv) throw new QmpError('GenericError', 'NBD server not running');
    // nbd-server-stop closes every NBD export with the server (blk_exp_close_all_type).
    for (const id of [...this.exports.keys()]) this.removeExport(id);
    this.nbd = undefined;
    this.nbdAddress = undefined;
    await srv.close();
    if (this.nbdOpts) this.releaseNbdObjects(this.nbdOpts);
    this.nbdOpts = undefined;
  }

  addExport(o: ExportOptions): void {
    if (this.exports.has(o.id)) throw new QmpError('GenericError', `Block export id '${o.id}' is already in use`);
    const srv = this.nbd;
    if (!srv) throw new QmpError('GenericError', 'NBD server not running');
    if (srv.list().some((e) => e.name === o.name)) {
      throw new QmpError('GenericError', `NBD server already has export named '${o.name}'`);
    }
    const node = this.graph.requireNode(o.nodeName);
    if (o.writable && node.readOnly) throw new QmpError('GenericError', `Cannot export read-only node '${o.nodeName}' as writable`);
    const bitmaps = new Map<string, DirtyBitmapSource>();
    for (const b of o.bitmaps) bitmaps.set(b, this.bitmapSource(node, b));
    const { perm, shared } = exportPermissions(o.writable);
    const backend = this.graph.attachBackend(EXPORT_USER, o.nodeName, perm, shared);
    const nbd: NbdExport = {
      name: o.name,
      backend,
      writable: o.writable,
      ...(o.description !== undefined ? { description: o.description } : {}),
      ...(bitmaps.size ? { bitmaps } : {}),
    };
    try {
      srv.addExport(nbd);
    } catch (e) {
      backend.detach();
      throw e;
    }
    this.exports.set(o.id, { opts: o, backend, nbd });
  }

  /** A dirty bitmap on the node or down its filter/backing chain (QEMU searches the same way). */
  private bitmapSource(node: BlockNode, name: string): DirtyBitmapSource {
    for (let n: BlockNode | undefined = node; n; n = (n.filtered() ?? n.backing())?.node) {
      const bm = n.dirtyBitmaps.get(name);
      if (bm) {
        return {
          async status(offset: number, bytes: number) {
            const out: { length: number; dirty: boolean }[] = [];
            for (let pos = offset; pos < offset + bytes; ) {
              const s = bm.status(pos, offset + bytes - pos);
              const length = Math.max(1, Math.min(s.bytes, offset + bytes - pos));
              out.push({ length, dirty: s.set });
              pos += length;
            }
            return out;
          },
        };
      }
    }
    throw new QmpError('GenericError', `Bitmap '${name}' is not found`);
  }

  /** block-export-del; 'safe' refuses while clients are connected, 'hard' drops them. */
  removeExport(id: string, mode: 'safe' | 'hard' = 'hard'): void {
    const e = this.exports.get(id);
    if (!e) throw new QmpError('GenericError', `Export '${id}' is not found`);
    if (mode === 'safe' && this.nbd && this.nbd.connectionsOn(e.nbd) > 0) {
      throw new QmpError('GenericError', `export '${id}' still in use`);
    }
    this.nbd?.removeExport(e.nbd.name, 'hard');
    this.exports.delete(id);
    e.backend.detach();
    this.emit('BLOCK_EXPORT_DELETED', { id });
  }

  // ------------------------------------------------------------------ QMP commands

  private registerCommands(): void {
    const d = this.dispatcher;
    const noArgs = (f: () => unknown) => (a: QmpArgs) => {
      a.finish();
      return f();
    };
    d.register('blockdev-add', (a) => {
      a.accept(...Object.keys(a.raw));
      this.graph.addNode(a.raw);
      return {};
    });
    d.register('blockdev-del', async (a) => {
      const name = a.str('node-name');
      a.finish();
      await this.graph.deleteNode(name);
      return {};
    });
    d.register('object-add', async (a) => {
      a.accept(...Object.keys(a.raw));
      const o = this.usage(() => parseObjectOptions(a.raw as Record<string, unknown>, 'object-add'));
      await this.usageAsync(() => this.objects.add(o, 'object-add'));
      return {};
    });
    d.register('object-del', async (a) => {
      const id = a.str('id');
      a.finish();
      await this.usageAsync(() => this.objects.delete(id));
      return {};
    });
    d.register('nbd-server-start', async (a) => {
      a.accept(...Object.keys(a.raw));
      await this.startNbdServer(this.usage(() => parseNbdServerOptions(a.raw as Record<string, unknown>, 'nbd-server-start')));
      return {};
    });
    d.register('nbd-server-stop', noArgs(async () => {
      await this.stopNbdServer();
      return {};
    }));
    d.register('block-export-add', (a) => {
      a.accept(...Object.keys(a.raw));
      this.addExport(this.usage(() => parseExportOptions(a.raw as Record<string, unknown>, 'block-export-add')));
      return {};
    });
    d.register('block-export-del', (a) => {
      const id = a.str('id');
      const mode = a.optStr('mode') ?? 'safe';
      a.finish();
      if (mode !== 'safe' && mode !== 'hard') throw new QmpError('GenericError', `Parameter 'mode' does not accept value '${mode}'`);
      this.removeExport(id, mode);
      return {};
    });
    // The pre-5.2 commands image-fleecing's iotest still uses (deprecated, present in 7.2):
    // the export id is the export name, which defaults to the device (node) name.
    d.register('nbd-server-add', (a) => {
      const device = a.str('device');
      const name = a.optStr('name') ?? device;
      const description = a.optStr('description');
      const writable = a.optBool('writable') ?? false;
      const bitmap = a.optStr('bitmap');
      a.finish();
      this.addExport({
        type: 'nbd', id: name, nodeName: device, name, writable,
        bitmaps: bitmap === undefined ? [] : [bitmap],
        ...(description !== undefined ? { description } : {}),
      });
      return {};
    });
    d.register('nbd-server-remove', (a) => {
      const name = a.str('name');
      const mode = a.optStr('mode') ?? 'safe';
      a.finish();
      if (mode !== 'safe' && mode !== 'hard') throw new QmpError('GenericError', `Parameter 'mode' does not accept value '${mode}'`);
      const e = [...this.exports.values()].find((x) => x.nbd.name === name);
      if (!e) throw new QmpError('GenericError', `Export '${name}' is not found`);
      this.removeExport(e.opts.id, mode);
      return {};
    });
    d.register('query-block-exports', noArgs(() =>
      [...this.exports.values()].map((e) => ({ type: 'nbd', id: e.opts.id, 'node-name': e.opts.nodeName, 'shutting-down': false })),
    ));
    d.register('blockdev-backup', (a) => {
      const device = a.str('device');
      const jobId = a.optStr('job-id') ?? device;
      const target = a.str('target');
      const sync = a.str('sync');
      const filterNodeName = a.optStr('filter-node-name');
      const unsafe = a.optBool('x-unserialized-target-writes');
      const noProgress = a.optBool('x-no-job-progress');
      // Accepted with no effect: the reference job has no rate limit and finishes immediately.
      a.accept('speed', 'auto-finalize', 'auto-dismiss', 'on-source-error', 'on-target-error', 'compress');
      a.finish();
      if (sync !== 'none') throw new QmpError('GenericError', `backup sync='${sync}' is not supported by the reference (only 'none')`);
      this.graph.startBackup({
        jobId,
        device,
        target,
        sync: 'none',
        ...(filterNodeName !== undefined ? { filterNodeName } : {}),
        ...(unsafe !== undefined ? { xUnserializedTargetWrites: unsafe } : {}),
        ...(noProgress !== undefined ? { xNoJobProgress: noProgress } : {}),
      });
      return {};
    });
    d.register('block-job-cancel', async (a) => {
      const device = a.str('device');
      a.optBool('force');
      a.finish();
      if (!this.graph.job(device)) throw new QmpError('DeviceNotActive', `Block job '${device}' not found`);
      await this.graph.cancelJob(device);
      return {};
    });
    d.register('block-dirty-bitmap-add', (a) => {
      const node = a.str('node');
      const name = a.str('name');
      const granularity = a.optInt('granularity') ?? 65536;
      a.accept('persistent', 'disabled');
      a.finish();
      if (granularity < 512 || (granularity & (granularity - 1)) !== 0) {
        throw new QmpError('GenericError', 'Granularity must be power of 2, and at least 512');
      }
      this.graph.requireNode(node).addDirtyBitmap(name, granularity);
      return {};
    });
    d.register('block_resize', (a) => {
      const nodeName = a.optStr('node-name');
      const device = a.optStr('device');
      const size = a.optInt('size');
      a.finish();
      if (size === undefined) throw new QmpError('GenericError', "Parameter 'size' is missing");
      const name = nodeName ?? device;
      if (name === undefined) throw new QmpError('GenericError', 'Need a block device or node-name');
      // The permission step is the part that matters here (a RESIZE user is refused while an
      // export unshares it, docs/requirements/qemu-fleecing.md §1.4); the reference's drivers have fixed sizes.
      this.graph.resize(name, size);
      return {};
    });
    d.register('query-block-jobs', noArgs(() => this.graph.queryJobs()));
    d.register('query-named-block-nodes', (a) => {
      a.optBool('flat');
      a.finish();
      return this.graph.queryNamedNodes();
    });
    d.register('x-debug-query-block-graph', noArgs(() => this.graph.queryGraph()));
    d.register('query-version', noArgs(() => ({ qemu: { major: 7, minor: 2, micro: 0 }, package: 'fleece-reference' })));
    d.register('query-commands', noArgs(() => ['qmp_capabilities', ...d.list()].map((name) => ({ name }))));
    d.register('quit', noArgs(() => ({})));
    registerBreakpointCommands(d, this.graph, (e, data) => this.emit(e, data));
  }

  /** Option-parsing failures inside QMP commands are GenericErrors with the same text. */
  private usage<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      if (e instanceof UsageError) throw new QmpError('GenericError', e.message);
      throw e;
    }
  }

  private async usageAsync<T>(f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      if (e instanceof UsageError) throw new QmpError('GenericError', e.message);
      throw e;
    }
  }

  async close(): Promise<void> {
    for (const m of this.monitors.splice(0)) await m.close();
    if (this.nbd) await this.stopNbdServer().catch(() => {});
    await this.graph.close();
    await this.objects.clear();
  }

  /** Writes the pid file (qemu-storage-daemon --pidfile), in QEMU's words when it cannot. */
  static writePidfile(path: string): void {
    try {
      fs.writeFileSync(path, `${process.pid}\n`);
    } catch (e) {
      throw new UsageError(`cannot create PID file: Could not create '${path}': ${errnoText(e)}`);
    }
  }

  /** Removes our pid file at exit, as QEMU does; one that now holds another pid is left alone. */
  static removePidfile(path: string): void {
    try {
      if (fs.readFileSync(path, 'utf8').trim() === String(process.pid)) fs.unlinkSync(path);
    } catch {
      /* already gone */
    }
  }
}

/** FLEECE_NBD_UNIX_SNDBUF: SO_SNDBUF in bytes for unix-socket NBD connections, 0 for the kernel's
 * default (the server bench measures both); unset, the server's UNIX_SEND_BUFFER_BYTES. */
function unixSendBufferFromEnv(): number | undefined {
  const v = process.env.FLEECE_NBD_UNIX_SNDBUF;
  if (v === undefined || v === '') return undefined;
  if (!/^\d+$/.test(v) || Number(v) > 2 ** 30) {
    throw new QmpError('GenericError', `FLEECE_NBD_UNIX_SNDBUF must be a byte count from 0 to 1073741824, got '${v}'`);
  }
  return Number(v);
}

/** strerror-style text for a Node system error ('No such file or directory'). */
export function errnoText(e: unknown): string {
  const code = (e as NodeJS.ErrnoException)?.code;
  const text: Record<string, string> = { ENOENT: 'No such file or directory', EACCES: 'Permission denied', ENOTDIR: 'Not a directory', EISDIR: 'Is a directory', EROFS: 'Read-only file system', EEXIST: 'File exists' };
  return (code && text[code]) ?? (e as Error)?.message ?? String(e);
}
