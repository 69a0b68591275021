// Raw-socket NBD client for the conformance runner (the I/O edge). It frames nothing itself:
// bytes go through codec.ts, per-request chunk rules through reply.ts. It tolerates split frames
// and interleaved chunks of different requests, matches replies by cookie, and turns silence into
// a timeout that means "the server hung or the stream is out of sync" (docs/requirements/nbd.md §7).
import net from 'node:net';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import {
  decodeExportNameReply,
  decodeGreeting,
  decodeOptionReply,
  decodeTransmissionReply,
  describe,
  encodeClientFlags,
  encodeOption,
  encodeRequest,
  type Decoded,
  type ExportNameReply,
  type Greeting,
  type OldstyleGreeting,
  type OptionReply,
  type PendingRequest,
  type Request,
  type ServerMessage,
  type TransmissionReply,
} from './codec.ts';
import { Cmd, cmdName, optName } from './constants.ts';
import { NbdClientError, NbdProtocolError } from './errors.ts';
import { ReplyAssembler, type Reply } from './reply.ts';
import { describeTls, TlsConfigError, tlsConnectOptions, type TlsClientConfig } from './tls.ts';
import { WireLog } from './wirelog.ts';

export type Address = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export function formatAddress(a: Address): string {
  return a.kind === 'unix' ? `unix:${a.path}` : `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}

export interface ConnectOptions {
  /** How long to wait for any expected reply before declaring a hang or desync. */
  timeoutMs: number;
  log?: WireLog;
  /** Source of cookies (a seeded PRNG makes a run's wire trace reproducible); default crypto. */
  random?: () => number;
  /** Credentials for STARTTLS: with them, greet() upgrades the connection before any other
   * option (session.ts); without them the connection stays plaintext. */
  tls?: TlsClientConfig | undefined;
}

type Decoder<T> = (buf: Buffer, base: number) => Decoded<T>;

interface Waiter {
  decode: Decoder<ServerMessage>;
  resolve(m: ServerMessage): void;
  reject(e: Error): void;
}

interface InFlight {
  assembler: ReplyAssembler;
  resolve(r: Reply): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
  what: string;
}

export interface RequestInput {
  type: number;
  flags?: number;
  offset?: bigint | number;
  length?: number;
  cookie?: bigint;
  payload?: Uint8Array;
  /** Overrides the connection's timeout (large transfers). */
  timeoutMs?: number;
}

export class NbdConnection {
  readonly log: WireLog;
  readonly id: number;
  private parts: Buffer[] = [];
  private buffered = 0;
  /** Bytes consumed from the server->client stream (offset of the buffer's first byte). */
  private consumed = 0;
  private sent = 0;
  private waiter: Waiter | undefined;
  private transmission: { structured: boolean } | undefined;
  private readonly inflight = new Map<bigint, InFlight>();
  private selected = new Set<number>();
  private closedErr: Error | undefined;
  private broken: NbdProtocolError | undefined;
  private closeWaiters: (() => void)[] = [];
  private needed = 0;
  /** Set once the TLS handshake has finished: what it agreed on. */
  private tlsDone: string | undefined;
  /** Credentials given at connect time (greet() uses them), if any. */
  readonly tls: TlsClientConfig | undefined;

  private constructor(
    private socket: net.Socket,
    readonly timeoutMs: number,
    log: WireLog | undefined,
    private readonly random?: () => number,
    tlsConfig?: TlsClientConfig,
    private readonly host?: string,
  ) {
    this.log = log ?? new WireLog();
    this.id = this.log.newConnection();
    this.tls = tlsConfig;
    this.listen(socket);
  }

  private listen(socket: net.Socket): void {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (e) => this.onClose(e));
    socket.on('close', () => this.onClose());
    socket.on('end', () => this.onClose());
  }

  /** The TLS session in use ('TLSv1.3 TLS_AES_256_GCM_SHA384'), or undefined in plaintext. */
  get tlsSession(): string | undefined {
    return this.tlsDone;
  }

  /**
   * Runs the TLS handshake on this connection, after the server ACKed NBD_OPT_STARTTLS
   * (proto.md "NBD_OPT_STARTTLS": the TLS handshake starts right after the reply). Bytes the
   * server sent after the ACK in plaintext are a protocol error (nothing may precede the TLS
   * handshake). A failed handshake is an NbdClientError 'tls' naming why; the socket is closed.
   */
  async startTls(config: TlsClientConfig | undefined = this.tls): Promise<string> {
    if (!config) throw new NbdClientError('usage', 'startTls without TLS credentials');
    if (this.tlsDone) throw new NbdClientError('usage', 'TLS is already running on this connection');
    if (this.closedErr) throw this.closedErr;
    if (this.buffered > 0) {
      const bytes = this.view();
      const err = new NbdProtocolError(`${bytes.length} plaintext bytes after the NBD_OPT_STARTTLS acknowledgement, before the TLS handshake`, this.consumed, bytes.subarray(0, 64));
      this.protocolFailure(err);
      throw err;
    }
    const raw = this.socket;
    for (const ev of ['data', 'error', 'close', 'end']) raw.removeAllListeners(ev);
    let options: tls.ConnectionOptions;
    try {
      options = tlsConnectOptions(config, raw, this.host);
    } catch (e) {
      raw.destroy();
      this.onClose(e as Error);
      throw e instanceof TlsConfigError ? new NbdClientError('usage', e.message) : e;
    }
    this.log.note(this.id, `TLS handshake (${config.type}) starts`);
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect(options);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new NbdClientError('timeout', `no TLS handshake within ${this.timeoutMs} ms after NBD_OPT_STARTTLS`));
      }, this.timeoutMs);
      const fail = (why: string) => {
        clearTimeout(timer);
        s.destroy();
        reject(new NbdClientError('tls', `TLS handshake failed: ${why}`));
      };
      s.once('secureConnect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        s.removeAllListeners('close');
        resolve(s);
      });
      s.once('error', (e) => fail(e.message));
      s.once('close', () => fail('the server closed the connection during the handshake'));
    }).catch((e: Error) => {
      this.log.note(this.id, e.message);
      this.onClose(e);
      throw e;
    });
    // With a PSK the key is the only authentication: a server that answered with a certificate
    // instead (TLS 1.3 allows either) has not shown it knows the key.
    if (config.type === 'psk' && Object.keys(secure.getPeerCertificate() ?? {}).length > 0) {
      secure.destroy();
      const e = new NbdClientError('tls', 'TLS handshake failed: the server authenticated with a certificate, not the pre-shared key');
      this.log.note(this.id, e.message);
      this.onClose(e);
      throw e;
    }
    secure.setNoDelay(true);
    this.socket = secure;
    this.tlsDone = describeTls(secure);
    this.log.note(this.id, `TLS established: ${this.tlsDone}`);
    this.listen(secure);
    return this.tlsDone;
  }

  static connect(address: Address, opts: ConnectOptions): Promise<NbdConnection> {
    return new Promise((resolve, reject) => {
      const sock = address.kind === 'unix' ? net.createConnection({ path: address.path }) : net.createConnection({ host: address.host, port: address.port });
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new NbdClientError('unreachable', `could not connect to ${formatAddress(address)} within ${opts.timeoutMs} ms`));
      }, opts.timeoutMs);
      sock.once('error', (e) => {
        clearTimeout(timer);
        reject(new NbdClientError('unreachable', `cannot connect to ${formatAddress(address)}: ${e.message}`));
      });
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeAllListeners('error');
        sock.setNoDelay(true);
        resolve(new NbdConnection(sock, opts.timeoutMs, opts.log, opts.random, opts.tls, address.kind === 'tcp' ? address.host : undefined));
      });
    });
  }

  get isClosed(): boolean {
    return this.closedErr !== undefined;
  }

  get protocolError(): NbdProtocolError | undefined {
    return this.broken;
  }

  // ---------------------------------------------------------------- raw I/O

  /** Sends bytes as they are (the caller is responsible for their meaning). */
  sendRaw(bytes: Uint8Array, note = 'raw bytes'): void {
    if (this.closedErr) throw new NbdClientError('closed', `cannot send ${note}: ${this.closedErr.message}`);
    this.log.add('send', this.id, this.sent, bytes, note);
    this.sent += bytes.length;
    this.socket.write(bytes);
  }

  /** Number of received bytes not yet decoded (e.g. stray replies in the handshake). */
  get unread(): number {
    return this.buffered;
  }

  /** Timers of everything waiting for bytes: silence, not total time, means hang or desync. */
  private readonly timers = new Set<NodeJS.Timeout>();

  private onData(d: Buffer): void {
    for (const t of this.timers) t.refresh();
    this.parts.push(d);
    this.buffered += d.length;
    if (this.buffered >= this.needed) this.pump();
  }

  private onClose(e?: Error): void {
    if (this.closedErr) return;
    this.closedErr = e ? new NbdClientError('closed', `connection error: ${e.message}`) : new NbdClientError('closed', 'the server closed the connection');
    this.log.note(this.id, e ? `socket error: ${e.message}` : 'server closed the connection (EOF)');
    this.pump();
    this.failAll(this.closedErr);
    for (const w of this.closeWaiters.splice(0)) w();
  }

  private failAll(err: Error): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(err);
    for (const [cookie, f] of this.inflight) {
      clearTimeout(f.timer);
      this.inflight.delete(cookie);
      f.reject(err);
    }
  }

  private view(): Buffer {
    if (this.parts.length > 1) this.parts = [Buffer.concat(this.parts)];
    return this.parts[0] ?? Buffer.alloc(0);
  }

  private take(n: number): Buffer {
    const buf = this.view();
    const msg = buf.subarray(0, n);
    this.parts = n < buf.length ? [buf.subarray(n)] : [];
    this.buffered -= n;
    this.consumed += n;
    return msg;
  }

  private protocolFailure(err: NbdProtocolError): void {
    this.broken = err;
    this.log.add('recv', this.id, err.offset, err.bytes, `PROTOCOL ERROR: ${err.reason}`);
    this.failAll(err);
    this.socket.destroy();
  }

  /** Decodes as many messages as the buffer holds for whoever is waiting. */
  private pump(): void {
    for (;;) {
      if (this.broken) return;
      const decode: Decoder<ServerMessage> | undefined = this.waiter?.decode ?? (this.transmission && this.inflight.size > 0 ? this.decodeTransmission : undefined);
      if (!decode || this.buffered === 0) {
        this.needed = 1;
        return;
      }
      let res: Decoded<ServerMessage>;
      try {
        res = decode(this.view(), this.consumed);
      } catch (e) {
        if (e instanceof NbdProtocolError) return this.protocolFailure(e);
        throw e;
      }
      if (!res.ok) {
        this.needed = res.need;
        if (this.closedErr && this.buffered > 0) {
          const bytes = this.view();
          this.protocolFailure(new NbdProtocolError(`the server closed the connection in the middle of a message (${bytes.length} of ${res.need} bytes)`, this.consumed, bytes.subarray(0, 64)));
        }
        return;
      }
      const at = this.consumed;
      const raw = this.take(res.size);
      this.log.add('recv', this.id, at, raw, describe(res.msg));
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w.resolve(res.msg);
      } else {
        try {
          this.dispatch(res.msg as TransmissionReply, at, raw);
        } catch (e) {
          if (e instanceof NbdProtocolError) return this.protocolFailure(e);
          throw e;
        }
      }
    }
  }

  private readonly decodeTransmission: Decoder<TransmissionReply> = (buf, base) =>
    decodeTransmissionReply(buf, base, {
      structuredReplies: this.transmission?.structured ?? false,
      pending: (cookie) => this.inflight.get(cookie)?.assembler.request,
    });

  private dispatch(msg: TransmissionReply, at: number, raw: Buffer): void {
    const f = this.inflight.get(msg.cookie);
    if (!f) throw new NbdProtocolError(`reply for cookie 0x${msg.cookie.toString(16)} with no request in flight`, at, raw.subarray(0, 20));
    const reply = msg.kind === 'simple-reply' ? f.assembler.simple(msg) : f.assembler.chunk(msg, { offset: at, bytes: raw.subarray(0, Math.min(raw.length, 64)) });
    if (reply) {
      clearTimeout(f.timer);
      this.inflight.delete(msg.cookie);
      f.resolve(reply);
    }
  }

  /** Waits for the next message decoded by `decode`. */
  private next<T extends ServerMessage>(decode: Decoder<T>, what: string): Promise<T> {
    if (this.broken) return Promise.reject(this.broken);
    if (this.waiter) return Promise.reject(new NbdClientError('usage', `already waiting for a message while asked for ${what}`));
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.waiter === w) this.waiter = undefined;
        this.log.note(this.id, `TIMEOUT after ${this.timeoutMs} ms waiting for ${what}`);
        this.timers.delete(timer);
        reject(new NbdClientError('timeout', `no ${what} within ${this.timeoutMs} ms: the server hung or the stream is out of sync`));
      }, this.timeoutMs);
      this.timers.add(timer);
      const w: Waiter = {
        decode,
        resolve: (m) => {
          clearTimeout(timer);
          this.timers.delete(timer);
          resolve(m as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          this.timers.delete(timer);
          reject(e);
        },
      };
      this.waiter = w;
      if (this.closedErr && this.buffered === 0) {
        this.waiter = undefined;
        w.reject(this.closedErr);
        return;
      }
      this.pump();
    });
  }

  // ---------------------------------------------------------------- handshake

  readGreeting(): Promise<Greeting | OldstyleGreeting> {
    return this.next(decodeGreeting, 'server greeting');
  }

  sendClientFlags(flags: number): void {
    this.sendRaw(encodeClientFlags(flags), `client flags 0x${flags.toString(16)}`);
  }

  /** Sends an option (fixed newstyle) without waiting. */
  sendOption(option: number, data?: Uint8Array, note?: string): void {
    this.sendRaw(encodeOption(option, data), note ?? `${optName(option)}${data?.length ? ` (${data.length} data bytes)` : ''}`);
  }

  /** Reads one option reply, which MUST echo `option`. */
  readOptionReply(option: number): Promise<OptionReply> {
    return this.next((b, base) => decodeOptionReply(b, base, option), `reply to ${optName(option)}`);
  }

  /** Reads replies to `option` up to and including the final one (ACK or an error). */
  async readOptionReplies(option: number): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply(option);
      out.push(r);
      if (r.final) return out;
    }
  }

  /** Sends an option and collects every reply up to the final one. */
  async option(option: number, data?: Uint8Array, note?: string): Promise<OptionReply[]> {
    this.sendOption(option, data, note);
    return this.readOptionReplies(option);
  }

  readExportNameReply(noZeroes: boolean): Promise<ExportNameReply> {
    return this.next((b, base) => decodeExportNameReply(b, base, noZeroes), 'reply to NBD_OPT_EXPORT_NAME');
  }

  /** Switches the decoder to transmission-phase replies. */
  enterTransmission(structured: boolean, selectedContexts: Iterable<number> = []): void {
    this.transmission = { structured };
    this.selected = new Set(selectedContexts);
    this.pump();
  }

  // ---------------------------------------------------------------- transmission

  /** Shuts down our sending side (shutdown(SHUT_WR)): the server sees EOF, and we keep reading. */
  shutdownWrite(note = 'shutdown(SHUT_WR)'): void {
    if (this.closedErr) throw new NbdClientError('closed', `cannot shut down: ${this.closedErr.message}`);
    this.log.note(this.id, note);
    this.socket.end();
  }

  static randomCookie(): bigint {
    return randomBytes(8).readBigUInt64BE(0);
  }

  private writePolicy: { size: bigint; reason: string } | undefined;

  /** From now on, refuse to send a request that would change data inside [0, size): the export
   * is someone else's. Requests wholly past the end (which must fail) still go out. */
  forbidWrites(size: bigint, reason: string): void {
    this.writePolicy = { size, reason };
  }

  /** Encodes a request without sending it (for pipelining several in one write). */
  prepare(input: RequestInput): { bytes: Buffer; reply: Promise<Reply> } {
    if (!this.transmission) throw new NbdClientError('usage', 'request before the handshake ended');
    const changes = input.type === Cmd.WRITE || input.type === Cmd.WRITE_ZEROES || input.type === Cmd.TRIM;
    if (changes && this.writePolicy && BigInt(input.offset ?? 0) < this.writePolicy.size) {
      throw new NbdClientError('not-allowed', `${cmdName(input.type)} at ${input.offset ?? 0} not sent: ${this.writePolicy.reason}`);
    }
    const next = () => (this.random ? (BigInt(Math.floor(this.random() * 2 ** 32)) << 32n) | BigInt(Math.floor(this.random() * 2 ** 32)) : NbdConnection.randomCookie());
    let cookie = input.cookie ?? next();
    while (input.cookie === undefined && this.inflight.has(cookie)) cookie = next();
    if (this.inflight.has(cookie)) throw new NbdClientError('usage', `cookie 0x${cookie.toString(16)} is already in flight`);
    const req: Request = {
      type: input.type,
      flags: input.flags ?? 0,
      cookie,
      offset: BigInt(input.offset ?? 0),
      length: input.length ?? input.payload?.length ?? 0,
    };
    const bytes = encodeRequest(req, input.payload);
    const what = `${cmdName(req.type)} cookie 0x${cookie.toString(16)}`;
    const pending: PendingRequest & { cookie: bigint; flags: number } = { type: req.type, offset: req.offset, length: req.length, cookie, flags: req.flags };
    const reply =
      req.type === Cmd.DISC
        ? Promise.resolve(undefined as unknown as Reply)
        : new Promise<Reply>((resolve, reject) => {
            if (this.broken) return reject(this.broken);
            if (this.closedErr) return reject(this.closedErr);
            const timer = setTimeout(() => {
              this.timers.delete(timer);
              this.inflight.delete(cookie);
              this.log.note(this.id, `TIMEOUT after ${input.timeoutMs ?? this.timeoutMs} ms waiting for the reply to ${what}`);
              reject(new NbdClientError('timeout', `no complete reply to ${what} within ${input.timeoutMs ?? this.timeoutMs} ms: the server hung or the stream is out of sync`));
            }, input.timeoutMs ?? this.timeoutMs);
            this.timers.add(timer);
            const done = () => {
              clearTimeout(timer);
              this.timers.delete(timer);
            };
            this.inflight.set(cookie, {
              assembler: new ReplyAssembler(pending, this.selected),
              resolve: (r) => {
                done();
                resolve(r);
              },
              reject: (e) => {
                done();
                reject(e);
              },
              timer,
              what,
            });
          });
    reply.catch(() => undefined); // the caller awaits it; avoid an unhandled rejection if it never does
    return { bytes, reply };
  }

  /** Sends one request and waits for its complete reply. */
  request(input: RequestInput): Promise<Reply> {
    const { bytes, reply } = this.prepare(input);
    this.sendRaw(bytes, `${cmdName(input.type)} offset ${input.offset ?? 0} length ${input.length ?? input.payload?.length ?? 0}${input.flags ? ` flags 0x${input.flags.toString(16)}` : ''}`);
    this.pump();
    return reply;
  }

  /** Sends several requests in a single write; replies may come in any order. */
  pipeline(inputs: RequestInput[]): Promise<Reply[]> {
    const prepared = inputs.map((i) => this.prepare(i));
    this.sendRaw(Buffer.concat(prepared.map((p) => p.bytes)), `${inputs.length} pipelined requests`);
    return Promise.all(prepared.map((p) => p.reply));
  }

  /** Resolves true if the server closes the connection within `ms`, false if it stays open. */
  waitClosed(ms = this.timeoutMs): Promise<boolean> {
    if (this.closedErr) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), ms);
      this.closeWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  close(): void {
    this.failAll(new NbdClientError('closed', 'closed by the client'));
    this.socket.destroy();
  }
}
