// The I/O edge of the NBD server: listening sockets (unix, TCP, an inherited fd), one NbdSession
// per connection, and the export table. Nothing here parses or encodes protocol bytes.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { NbdSession, type ExportLookup, type NbdExport, type SessionLimits } from './session.ts';
import { startServerTls, type ServerTls } from './tls.ts';
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
  /** The plain socket, then the TLS socket once STARTTLS has handed it over. */
  socket: net.Socket;
  readonly session: NbdSession;
  /** Bookkeeping when the connection is gone (from whichever socket closes first). */
  closed?: () => void;
}

export interface NbdServerOptions {
  readonly limits?: SessionLimits;
  readonly log?: (msg: string) => void;
  /** Called when the last connection on a deleted export is gone (QMP BLOCK_EXPORT_DELETED). */
  readonly onConnectionClosed?: (exp: NbdExport | undefined) => void;
  /** Refuse connections beyond this many (nbd-server-start max-connections; 0 = unlimited). */
  readonly maxConnections?: number;
  /** Drop a client that has not entered transmission this many seconds after it connected
   * (QEMU 10.0's handshake-max-seconds, CVE-2024-7409; 0 or unset = no limit). */
  readonly handshakeMaxSeconds?: number;
  /** TLS credentials: the server is then TLS-only (FORCEDTLS). */
  readonly tls?: ServerTls & {
    /** UNSAFE, known-bad (x-tls-keep-plaintext): see SessionTls.keepPlaintext. */
    readonly keepPlaintext?: boolean;
  };
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

  private accept(plain: net.Socket): void {
    // The socket the session talks through: `plain`, then the TLS socket after STARTTLS.
    let socket: net.Socket = plain;
    const max = this.opts.maxConnections ?? 0;
    if (max > 0 && this.conns.size >= max) {
      // QEMU stops accepting at the limit; we close at once so the client sees EOF, not a hang.
      this.opts.log?.(`nbd: refusing a connection: ${max} already open (max-connections)`);
      this.connectionsRefused++;
      plain.destroy();
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
        ...(this.opts.tls ? { startTls: () => this.upgrade(conn, plain, resume, (t) => (socket = t)) } : {}),
      },
      this.opts.limits,
      this.opts.tls ? { ...(this.opts.tls.keepPlaintext ? { keepPlaintext: true } : {}) } : undefined,
    );
    conn = { socket, session };
    this.conns.add(conn);
    this.attach(conn, socket);
    let gone = false;
    const onClose = (): void => {
      if (gone) return;
      gone = true;
      clearTimeout(limit);
      session.clientGone();
      this.conns.delete(conn);
      this.opts.onConnectionClosed?.(session.export);
    };
    conn.closed = onClose;
    socket.on('close', onClose);
    // A client that connects and never finishes negotiating holds a connection slot; QEMU drops
    // it after handshake-max-seconds (nbd_client_handshake's timer).
    const secs = this.opts.handshakeMaxSeconds ?? 0;
    const limit = secs > 0
      ? setTimeout(() => {
          if (gone || session.export !== undefined) return;
          this.opts.log?.(`nbd: dropping a client that did not finish the handshake in ${secs} s (handshake-max-seconds)`);
          this.handshakeTimeouts++;
          session.terminate('handshake-max-seconds');
          conn.socket.destroy();
          plain.destroy();
        }, secs * 1000)
      : undefined;
    limit?.unref();
    session.start();
  }

  /** The session's bytes come from `s` (the plain socket, later the TLS one). */
  private attach(conn: Conn, s: net.Socket): void {
    const session = conn.session;
    s.on('data', (chunk: Buffer) => session.feed(chunk));
    s.on('end', () => session.clientEnded());
    s.on('error', (e) => this.opts.log?.(`nbd: connection error: ${e.message}`));
  }

  /** NBD_OPT_STARTTLS was acknowledged: from now on the plain socket carries TLS only. The ACK is
   * already handed to the kernel, and the client may not start its handshake before reading it,
   * so bytes already read from the plain socket are plaintext the session will drop. */
  private upgrade(conn: Conn, plain: net.Socket, resume: () => void, use: (t: net.Socket) => void): void {
    plain.removeAllListeners('data');
    plain.removeAllListeners('end');
    plain.removeAllListeners('drain');
    const { socket: t, ready } = startServerTls(plain, this.opts.tls!);
    conn.socket = t;
    use(t);
    t.on('error', () => {}); // reported through `ready` or the session
    ready.then(
      (identity) => {
        if (conn.session.phase === 'closed') return;
        this.opts.log?.(`nbd: TLS established (${t.getProtocol()}, ${t.getCipher().name})${identity ? ` with ${identity}` : ''}`);
        this.attach(conn, t);
        t.on('drain', resume);
        t.on('close', () => conn.closed?.());
        conn.session.tlsEstablished();
      },
      (e: Error) => {
        // QEMU: "option negotiation failed: <reason>", then the connection is closed.
        this.opts.log?.(`nbd: option negotiation failed: ${e.message}`);
        this.tlsRefusals++;
        conn.session.terminate(e.message);
        t.destroy();
        plain.destroy();
      },
    );
  }

  /** Clients refused at or just after the TLS handshake (bad certificate, key, identity). */
  tlsRefusals = 0;
  /** Clients dropped by handshake-max-seconds. */
  handshakeTimeouts = 0;
  /** Connections refused by max-connections. */
  connectionsRefused = 0;

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
