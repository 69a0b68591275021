// The conformance runner's own QMP client (the I/O edge): JSON messages over a unix socket,
// QEMU's greeting, `qmp_capabilities`, command replies matched by id, asynchronous events kept
// in order. It must not import reference/ (a checker that shares code with what it checks can
// share its bugs). Works against qemu-storage-daemon and `fleece serve` alike.
import net from 'node:net';

export class QmpClientError extends Error {
  override readonly name = 'QmpClientError';
  constructor(
    message: string,
    readonly context: Readonly<{ socket?: string; command?: string }> = {},
  ) {
    super(message);
  }
}

export interface QmpErrorBody {
  class: string;
  desc: string;
}

/** The outcome of one command: a return value or QEMU's error (class and text). */
export type QmpReply = { ok: true; value: unknown } | { ok: false; error: QmpErrorBody };

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  command: string;
  resolve(r: QmpReply): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  readonly events: QmpEvent[] = [];
  greeting: Record<string, unknown> | undefined;
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private eventWaiters: { name: string; where(data: Record<string, unknown>): boolean; resolve(e: QmpEvent): void }[] = [];
  private closed: Error | undefined;
  private greetingWaiter: ((g: Record<string, unknown>) => void) | undefined;

  private constructor(
    private readonly socket: net.Socket,
    readonly path: string,
    readonly timeoutMs: number,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => this.onData(d));
    socket.on('close', () => this.fail(new QmpClientError(`QMP connection to ${path} closed`, { socket: path })));
    socket.on('error', (e) => this.fail(new QmpClientError(`QMP connection to ${path}: ${e.message}`, { socket: path })));
  }

  /** Connects, reads the greeting and negotiates capabilities (command mode). */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    const attempt = () =>
      new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection({ path });
        const t = setTimeout(() => {
          s.destroy();
          reject(new QmpClientError(`no QMP connection to ${path} within ${timeoutMs} ms`, { socket: path }));
        }, timeoutMs);
        s.once('connect', () => {
          clearTimeout(t);
          s.removeAllListeners('error');
          resolve(s);
        });
        s.once('error', (e) => {
          clearTimeout(t);
          reject(new QmpClientError(`cannot connect to QMP socket ${path}: ${e.message}`, { socket: path }));
        });
      });
    let socket: net.Socket;
    for (;;) {
      try {
        socket = await attempt();
        break;
      } catch (e) {
        // The socket file appears before the daemon listens on it: retry until the deadline.
        if (Date.now() > deadline || !/ECONNREFUSED|ENOENT/.test((e as Error).message)) throw e;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    const c = new QmpClient(socket, path, timeoutMs);
    const greeting = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const t = setTimeout(() => reject(new QmpClientError(`no QMP greeting from ${path} within ${timeoutMs} ms`, { socket: path })), timeoutMs);
      c.greetingWaiter = (g) => {
        clearTimeout(t);
        resolve(g);
      };
      if (c.greeting) c.greetingWaiter(c.greeting);
    });
    if (!('QMP' in greeting)) throw new QmpClientError(`${path} did not greet with {"QMP": ...}: ${JSON.stringify(greeting)}`, { socket: path });
    const r = await c.execute('qmp_capabilities');
    if (!r.ok) throw new QmpClientError(`qmp_capabilities refused: ${r.error.desc}`, { socket: path, command: 'qmp_capabilities' });
    return c;
  }

  private onData(d: string): void {
    this.buf += d;
    for (;;) {
      const i = this.buf.indexOf('\n');
      if (i < 0) return;
      const line = this.buf.slice(0, i).trim();
      this.buf = this.buf.slice(i + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        this.fail(new QmpClientError(`QMP peer sent a line that is not JSON: ${line.slice(0, 200)}`, { socket: this.path }));
        return;
      }
      this.dispatch(msg);
    }
  }

  private dispatch(msg: Record<string, unknown>): void {
    if ('QMP' in msg) {
      this.greeting = msg;
      this.greetingWaiter?.(msg);
      return;
    }
    if (typeof msg.event === 'string') {
      const ev = msg as unknown as QmpEvent;
      this.events.push(ev);
      const keep: typeof this.eventWaiters = [];
      let taken = false;
      for (const w of this.eventWaiters) {
        if (!taken && w.name === ev.event && w.where(ev.data ?? {})) {
          taken = true;
          w.resolve(ev);
        } else keep.push(w);
      }
      this.eventWaiters = keep;
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id !== undefined ? this.pending.get(id) : undefined;
    if (!p || id === undefined) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const e = msg.error as Partial<QmpErrorBody>;
      p.resolve({ ok: false, error: { class: String(e.class ?? 'GenericError'), desc: String(e.desc ?? '') } });
    } else p.resolve({ ok: true, value: msg.return });
  }

  private fail(e: Error): void {
    if (this.closed) return;
    this.closed = e;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new QmpClientError(`${e.message} while waiting for the reply to ${p.command}`, { socket: this.path, command: p.command }));
    }
  }

  get isClosed(): boolean {
    return this.closed !== undefined;
  }

  /** Sends a command; resolves with its return value or QEMU's error. Rejects only on I/O failure. */
  execute(command: string, args?: Record<string, unknown>): Promise<QmpReply> {
    if (this.closed) return Promise.reject(this.closed);
    const id = `c${this.nextId++}`;
    return new Promise<QmpReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpClientError(`no reply to ${command} within ${this.timeoutMs} ms`, { socket: this.path, command }));
      }, this.timeoutMs);
      this.pending.set(id, { command, resolve, reject, timer });
      this.socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
  }

  /** Like execute, but a QMP error becomes an exception. */
  async ok(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const r = await this.execute(command, args);
    if (!r.ok) throw new QmpClientError(`${command} failed: ${r.error.class}: ${r.error.desc}`, { socket: this.path, command });
    return r.value;
  }

  /** The next event named `name` (one already received and not yet consumed counts), optionally
   * one whose data matches `where`. */
  waitEvent(name: string, timeoutMs = this.timeoutMs, where: (data: Record<string, unknown>) => boolean = () => true): Promise<QmpEvent> {
    const i = this.events.findIndex((e) => e.event === name && where(e.data ?? {}));
    if (i >= 0) return Promise.resolve(this.events.splice(i, 1)[0]!);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.eventWaiters = this.eventWaiters.filter((w) => w !== waiter);
        reject(new QmpClientError(`no ${name} event within ${timeoutMs} ms`, { socket: this.path }));
      }, timeoutMs);
      const waiter = {
        name,
        where,
        resolve: (e: QmpEvent) => {
          clearTimeout(t);
          const j = this.events.indexOf(e);
          if (j >= 0) this.events.splice(j, 1);
          resolve(e);
        },
      };
      this.eventWaiters.push(waiter);
    });
  }

  close(): void {
    this.fail(new QmpClientError('closed by the client', { socket: this.path }));
    this.socket.destroy();
  }
}
