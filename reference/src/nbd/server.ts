// The I/O edge of the NBD server: listening sockets (unix, TCP, an inherited fd), one NbdSession
// per connection, and the export table. Nothing here parses or encodes protocol bytes.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { NbdSession, type ExportLookup, type NbdExport, type SessionLimits } from './session.ts';
import { getSendBuffer, sendBufferTuning, setSendBuffer } from './sockopt.ts';

export type ListenAddress =
  | { readonly type: 'unix'; readonly path: string }
  | { readonly type: 'inet'; readonly host: string; readonly port: number }
  /** An already-listening socket handed over by systemd socket activation. */
  | { readonly type: 'fd'; readonly fd: number };

export interface BoundAddress {
  readonly type: 'unix' | 'inet' | 'fd';
  readonly path?: string;
  readonly host?: string;
  readonly port?: number;
}

/** Reply bytes queued on one connection before we stop reading its requests. It bounds memory
 * against a client that does not read, and it paces a fast one: past a few MiB, answering more
 * requests only piles up buffers the kernel cannot take yet, and a read buffer that cycles through
 * a small working set stays in the CPU cache for both its pread and its writev (sequential reads
 * at 256 KiB were measured faster and cheaper with 4 MiB than with 64 MiB). */
export const MAX_QUEUED_REPLY_BYTES = 4 * 1024 * 1024;

/** SO_SNDBUF asked for on each accepted unix-socket connection. The kernel default
 * (net.core.wmem_default, 208 KiB on Debian) is less than one 256 KiB READ reply, and a unix
 * socket turns writable only once 3/4 of its buffer has drained (unix_writable, Linux
 * net/unix/af_unix.c), so an event-loop server refills it later than the client takes to read
 * the rest: the client waits on every reply. With 1 MiB, sequential reads through nbdcopy were
 * 1.14x those with the default (20 of 20 paired runs) and 1.08x qemu-nbd's
 * (reference/src/daemon/README.md). TCP is left alone: its buffers autotune, and a fixed
 * SO_SNDBUF would turn that off. */
export const UNIX_SEND_BUFFER_BYTES = 1024 * 1024;

/** How long a connection we ended (ABORT, DISC, client EOF) may take to deliver its last replies
 * before it is dropped. */
export const SOFT_CLOSE_GRACE_MS = 10_000;

export class NbdServerError extends Error {
  override readonly name = 'NbdServerError';
}

interface Conn {
  readonly socket: net.Socket;
  readonly session: NbdSession;
}

export interface NbdServerOptions {
  readonly limits?: SessionLimits;
  readonly log?: (msg: string) => void;
  /** Called when the last connection on a deleted export is gone (QMP BLOCK_EXPORT_DELETED). */
  readonly onConnectionClosed?: (exp: NbdExport | undefined) => void;
  /** Refuse connections beyond this many (nbd-server-start max-connections; 0 = unlimited). */
  readonly maxConnections?: number;
  /** Reply bytes queued on one connection before it stops being read (default
   * MAX_QUEUED_REPLY_BYTES; tests use Infinity for the known-bad, unbounded variant). */
  readonly maxQueuedReplyBytes?: number;
  /** SO_SNDBUF for connections on unix sockets (default UNIX_SEND_BUFFER_BYTES; 0 keeps the
   * kernel's default). */
  readonly unixSendBufferBytes?: number;
}

export class NbdServer implements ExportLookup {
  private readonly exportsByName = new Map<string, NbdExport>();
  private readonly listeners: net.Server[] = [];
  private readonly conns = new Set<Conn>();
  private stopping = false;
  private sendBufferWarned = false;

  constructor(private readonly opts: NbdServerOptions = {}) {}

  // ------------------------------------------------------------------ ExportLookup
  find(name: string): NbdExport | undefined {
    const e = this.exportsByName.get(name);
    if (e || name !== '') return e;
    return this.exportsByName.values().next().value;
  }
  list(): readonly NbdExport[] {
    return [...this.exportsByName.values()];
  }
  get shuttingDown(): boolean {
    return this.stopping;
  }

  // ------------------------------------------------------------------ exports
  addExport(exp: NbdExport): void {
    if (this.exportsByName.has(exp.name)) throw new NbdServerError(`NBD server already has export named '${exp.name}'`);
    this.exportsByName.set(exp.name, exp);
  }

  /** Connections in transmission on an export. */
  connectionsOn(exp: NbdExport): number {
    let n = 0;
    for (const c of this.conns) if (c.session.export === exp) n++;
    return n;
  }

  /** Removes an export from the table; 'hard' also closes its connections (block-export-del mode). */
  removeExport(name: string, mode: 'safe' | 'hard' = 'hard'): NbdExport {
    const exp = this.exportsByName.get(name);
    if (!exp) throw new NbdServerError(`Export '${name}' is not found`);
    if (mode === 'safe' && this.connectionsOn(exp) > 0) throw new NbdServerError(`export '${name}' still in use`);
    this.exportsByName.delete(name);
    for (const c of [...this.conns]) if (c.session.export === exp) c.session.terminate(`export '${name}' deleted`);
    return exp;
  }

  // ------------------------------------------------------------------ listening
  async listen(addr: ListenAddress): Promise<BoundAddress> {
    // allowHalfOpen: a client that shuts down its sending side after its last request still
    // reads the replies; Node would otherwise end our side at once and drop them.
    const srv = net.createServer({ noDelay: true, allowHalfOpen: true } as net.ServerOpts, (s) => this.accept(s));
    srv.on('error', (e) => this.opts.log?.(`nbd: listener error: ${e.message}`));
    await new Promise<void>((resolve, reject) => {
      const onErr = (e: Error) => reject(new NbdServerError(`cannot listen on ${describe(addr)}: ${e.message}`));
      srv.once('error', onErr);
      const done = () => {
        srv.off('error', onErr);
        resolve();
      };
      if (addr.type === 'unix') {
        // libuv reports a missing directory as EACCES; say what it is, in QEMU's words.
        if (!fs.existsSync(path.dirname(path.resolve(addr.path)))) {
          reject(new NbdServerError(`Failed to bind socket to ${addr.path}: No such file or directory`));
          return;
        }
        // A stale socket file from an earlier run would make bind fail; QEMU unlinks it too.
        try {
          if (fs.statSync(addr.path).isSocket()) fs.unlinkSync(addr.path);
        } catch {
          /* absent */
        }
        srv.listen(addr.path, done);
      } else if (addr.type === 'inet') srv.listen(addr.port, addr.host, done);
      else srv.listen({ fd: addr.fd }, done);
    });
    this.listeners.push(srv);
    const a = srv.address();
    if (addr.type === 'unix') return { type: 'unix', path: addr.path };
    if (a && typeof a === 'object') return { type: addr.type, host: a.address, port: a.port };
    return { type: addr.type };
  }

  get listening(): boolean {
    return this.listeners.length > 0;
  }

  private accept(socket: net.Socket): void {
    const max = this.opts.maxConnections ?? 0;
    if (max > 0 && this.conns.size >= max) {
      // QEMU stops accepting at the limit; we close at once so the client sees EOF, not a hang.
      this.opts.log?.(`nbd: refusing a connection: ${max} already open (max-connections)`);
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    // A unix connection has no port (its address() is {}), whether we bound the path or
    // inherited the listener by socket activation.
    if (typeof (socket.address() as Partial<net.AddressInfo>).port !== 'number') this.tuneSendBuffer(socket);
    let conn: Conn;
    // A client that does not read its replies must not make us queue without bound: past the
    // cap the session holds (stops taking requests). Lifting the hold only on 'drain' (queue
    // empty) would stop and go, the client waiting for the next batch of reads, so the write
    // callbacks lift it once the queue is down to half. hold() and release() are idempotent.
    const maxQueued = this.opts.maxQueuedReplyBytes ?? MAX_QUEUED_REPLY_BYTES;
    const lowWater = maxQueued / 2;
    const resume = (): void => {
      if (socket.writableLength <= lowWater) session.release('drain');
    };
    socket.on('drain', resume);
    const session = new NbdSession(
      this,
      {
        send: (bufs, written) => {
          if (socket.destroyed) return;
          const done = (err?: Error | null): void => {
            if (!err) written?.();
            resume();
          };
          if (bufs.length === 1) socket.write(bufs[0]!, done);
          else {
            // One writev for header and payload; `done` rides on the last non-empty buffer.
            let last = bufs.length - 1;
            while (last > 0 && bufs[last]!.length === 0) last--;
            socket.cork();
            for (let i = 0; i < last; i++) if (bufs[i]!.length) socket.write(bufs[i]!);
            socket.write(bufs[last]!, done);
            socket.uncork();
          }
          // Node's own high-water mark (16 KiB) is below one READ reply; what matters is that a
          // client that stops reading cannot make us queue without bound.
          if (socket.writableLength > maxQueued) session.hold('drain');
        },
        close: (_reason, error) => {
          // A hard disconnect after a violation drops the link at once; a soft one (ABORT, DISC)
          // lets written replies reach the client first.
          if (error) socket.destroy();
          else {
            socket.end();
            // A client that never reads would keep a soft-closed connection open for ever.
            setTimeout(() => socket.destroy(), SOFT_CLOSE_GRACE_MS).unref();
          }
        },
        pause: () => socket.pause(),
        resume: () => socket.resume(),
        log: this.opts.log,
      },
      this.opts.limits,
    );
    conn = { socket, session };
    this.conns.add(conn);
    socket.on('data', (chunk: Buffer) => session.feed(chunk));
    socket.on('end', () => session.clientEnded());
    socket.on('error', (e) => this.opts.log?.(`nbd: connection error: ${e.message}`));
    socket.on('close', () => {
      session.clientGone();
      this.conns.delete(conn);
      this.opts.onConnectionClosed?.(session.export);
    });
    session.start();
  }

  private tuneSendBuffer(socket: net.Socket): void {
    const bytes = this.opts.unixSendBufferBytes ?? UNIX_SEND_BUFFER_BYTES;
    if (bytes <= 0) return;
    if (!sendBufferTuning.available) {
      if (!this.sendBufferWarned) this.opts.log?.(`nbd: unix connections keep the kernel's send buffer: ${sendBufferTuning.reason}`);
      this.sendBufferWarned = true;
      return;
    }
    try {
      setSendBuffer(socket, bytes);
    } catch (e) {
      // A connection that is already gone, or a kernel that refuses: serve it with the default.
      this.opts.log?.(`nbd: could not set the send buffer of a connection: ${(e as Error).message}`);
    }
  }

  /** SO_SNDBUF of each open connection's socket as the kernel reports it (diagnostics, tests);
   * undefined where it cannot be read. */
  get sendBuffers(): Array<number | undefined> {
    return [...this.conns].map((c) => getSendBuffer(c.socket));
  }

  /** Stops listening and closes every connection (nbd-server-stop, daemon exit). */
  async close(): Promise<void> {
    this.stopping = true;
    const ls = this.listeners.splice(0);
    // net.Server.close() calls back only once every connection is gone: end them first, or a
    // client that stays connected would hold up nbd-server-stop and quit for as long as it likes.
    const closed = ls.map((l) => new Promise<void>((r) => l.close(() => r())));
    for (const c of [...this.conns]) {
      c.session.terminate('server stopping');
      c.socket.destroy();
    }
    this.conns.clear();
    await Promise.all(closed);
    this.exportsByName.clear();
    this.stopping = false;
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  /** Reply bytes written but not yet taken by clients, over every connection (diagnostics). */
  get queuedReplyBytes(): number {
    let n = 0;
    for (const c of this.conns) n += c.socket.writableLength;
    return n;
  }
}

function describe(a: ListenAddress): string {
  return a.type === 'unix' ? `unix:${a.path}` : a.type === 'inet' ? `${a.host}:${a.port}` : `fd ${a.fd}`;
}
