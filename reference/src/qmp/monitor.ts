// The QMP monitor's I/O edge: a unix socket (--chardev socket,server=on + --monitor), a
// greeting per connection, requests handed to the dispatcher in order, events broadcast to
// every session that finished capabilities negotiation.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as nodePath from 'node:path';
import { JsonStreamParser, encode, errorMsg, eventMsg, greeting, type Decoded } from './codec.ts';
import { QmpError, type QmpDispatcher } from './dispatcher.ts';

interface Session {
  readonly socket: net.Socket;
  negotiated: boolean;
  /** The client enabled the 'oob' capability in qmp_capabilities. */
  oob: boolean;
}

/** Texts parsed but not yet answered on one monitor connection before it stops being read
 * (QEMU's monitor suspends reading at QMP_REQ_QUEUE_LEN_MAX, 8). */
export const MAX_QUEUED_COMMANDS = 8;
/** Reply bytes waiting for a client before its monitor connection stops being read: a client that
 * sends commands and never reads the replies must not grow the daemon. */
export const MAX_QUEUED_REPLY_BYTES = 1 << 20;

export class QmpMonitor {
  private readonly sessions = new Set<Session>();
  private server: net.Server | undefined;

  constructor(
    private readonly dispatcher: QmpDispatcher,
    private readonly opts: { pretty?: boolean; log?: (m: string) => void; afterReply?: (cmd: string) => void } = {},
  ) {}

  async listen(path: string): Promise<void> {
    try {
      if (fs.statSync(path).isSocket()) fs.unlinkSync(path);
    } catch {
      /* absent */
    }
    // libuv reports a missing directory as EACCES; say what it is, in QEMU's words.
    if (!fs.existsSync(nodePath.dirname(nodePath.resolve(path)))) throw new QmpError('GenericError', `Failed to bind socket to ${path}: No such file or directory`);
    const srv = net.createServer((s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      srv.once('error', (e) => reject(new QmpError('GenericError', `Failed to bind socket to ${path}: ${e.message}`)));
      srv.listen(path, () => resolve());
    });
    srv.on('error', (e) => this.opts.log?.(`qmp: ${e.message}`));
    this.server = srv;
  }

  /** Serves one already-connected stream (tests, or an inherited socket). */
  accept(socket: net.Socket): void {
    const session: Session = { socket, negotiated: false, oob: false };
    this.sessions.add(session);
    const parser = new JsonStreamParser();
    const pending: Decoded[] = [];
    let running = false;
    let paused = false;
    const send = (m: unknown) => {
      if (!socket.destroyed) socket.write(encode(m, this.opts.pretty));
    };
    // Flow control, as the NBD side does: stop reading while commands or unread replies pile up.
    const flow = (): void => {
      const full = pending.length >= MAX_QUEUED_COMMANDS || socket.writableLength >= MAX_QUEUED_REPLY_BYTES;
      if (full && !paused) socket.pause();
      else if (!full && paused) socket.resume();
      paused = full;
    };
    // Requests run one at a time per session, in order (QEMU's monitor does the same for in-band
    // commands). A command that throws is answered with its error: nothing a client sends may
    // take the daemon, and every other client's disk, down with it.
    const run = async (): Promise<void> => {
      if (running) return;
      running = true;
      try {
        while (pending.length > 0 && !socket.destroyed) {
          // One chunk can hold thousands of short commands: past the cap, wait for the client to
          // take its replies before answering more.
          if (socket.writableLength >= MAX_QUEUED_REPLY_BYTES) {
            await new Promise<void>((r) => {
              const done = () => {
                socket.off('drain', done);
                socket.off('close', done);
                r();
              };
              socket.on('drain', done);
              socket.on('close', done);
            });
            continue;
          }
          const d = pending.shift()!;
          flow();
          if (!d.ok) {
            send(errorMsg('GenericError', d.error));
            continue;
          }
          let reply;
          try {
            reply = await this.dispatcher.dispatch(d.value, session);
          } catch (e) {
            this.opts.log?.(`qmp: command failed unexpectedly: ${(e as Error)?.stack ?? String(e)}`);
            reply = errorMsg('GenericError', `internal error: ${(e as Error)?.message ?? String(e)}`, idOf(d.value));
          }
          send(reply);
          const v = d.value as { execute?: unknown } | null;
          if (v && typeof v === 'object' && typeof v.execute === 'string' && !('error' in reply)) this.opts.afterReply?.(v.execute);
        }
      } finally {
        running = false;
        flow();
      }
    };
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      parser.feed(chunk, (d) => pending.push(d));
      flow();
      void run();
    });
    socket.on('drain', flow);
    socket.on('error', () => {});
    socket.on('close', () => {
      pending.length = 0;
      this.sessions.delete(session);
    });
    send(greeting());
  }

  /** Reply bytes written but not yet taken by clients, over every session (diagnostics, tests). */
  get queuedReplyBytes(): number {
    let n = 0;
    for (const s of this.sessions) n += s.socket.writableLength;
    return n;
  }

  emit(event: string, data?: unknown): void {
    const line = encode(eventMsg(event, data), this.opts.pretty);
    for (const s of this.sessions) if (s.negotiated && !s.socket.destroyed) s.socket.write(line);
  }

  async close(): Promise<void> {
    const srv = this.server;
    this.server = undefined;
    // server.close() waits for every connection: end ours (the last reply, e.g. to quit, still
    // goes out) and drop any the client keeps open.
    const closed = srv ? new Promise<void>((r) => srv.close(() => r())) : Promise.resolve();
    for (const s of this.sessions) {
      s.socket.end();
      setTimeout(() => s.socket.destroy(), 200).unref();
    }
    this.sessions.clear();
    await closed;
  }
}

/** The id of a request, echoed in its error reply where it has one. */
function idOf(v: unknown): unknown {
  return v && typeof v === 'object' && !Array.isArray(v) ? (v as { id?: unknown }).id : undefined;
}
