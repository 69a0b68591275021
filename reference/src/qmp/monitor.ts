// The QMP monitor's I/O edge: a unix socket (--chardev socket,server=on + --monitor), a
// greeting per connection, requests handed to the dispatcher in order, events broadcast to
// every session that finished capabilities negotiation.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { JsonStreamParser, encode, errorMsg, eventMsg, greeting } from './codec.ts';
import type { QmpDispatcher } from './dispatcher.ts';

interface Session {
  readonly socket: net.Socket;
  negotiated: boolean;
}

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
    const srv = net.createServer((s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      srv.once('error', (e) => reject(new Error(`cannot listen on QMP socket ${path}: ${e.message}`)));
      srv.listen(path, () => resolve());
    });
    srv.on('error', (e) => this.opts.log?.(`qmp: ${e.message}`));
    this.server = srv;
  }

  /** Serves one already-connected stream (tests, or an inherited socket). */
  accept(socket: net.Socket): void {
    const session: Session = { socket, negotiated: false };
    this.sessions.add(session);
    const parser = new JsonStreamParser();
    let queue = Promise.resolve();
    const send = (m: unknown) => {
      if (!socket.destroyed) socket.write(encode(m, this.opts.pretty));
    };
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      parser.feed(chunk, (d) => {
        // Requests run one at a time per session, in order (QEMU's monitor does the same for
        // in-band commands).
        queue = queue.then(async () => {
          if (!d.ok) return send(errorMsg('GenericError', d.error));
          const reply = await this.dispatcher.dispatch(d.value, session);
          send(reply);
          const v = d.value as { execute?: unknown } | null;
          if (v && typeof v === 'object' && typeof v.execute === 'string' && !reply.error) this.opts.afterReply?.(v.execute);
        });
      });
    });
    socket.on('error', () => {});
    socket.on('close', () => this.sessions.delete(session));
    send(greeting());
  }

  emit(event: string, data?: unknown): void {
    const line = encode(eventMsg(event, data), this.opts.pretty);
    for (const s of this.sessions) if (s.negotiated && !s.socket.destroyed) s.socket.write(line);
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.socket.end();
    this.sessions.clear();
    const srv = this.server;
    this.server = undefined;
    if (srv) await new Promise<void>((r) => srv.close(() => r()));
  }
}
