// The NBD session state machine: consumes decoded client messages (codec.ts), talks to
// BlockBackends, and produces encoded replies through a small output interface. No sockets here:
// the I/O edge (server.ts) feeds bytes in and writes buffers out.
//
// States (docs/requirements/nbd.md §1.2): client-flags → options → transmission → closed.
import { extentHasData, type BlockBackend, type Extent } from '../block/types.ts';
import { readBuffers, writeBuffers } from '../block/node.ts';
import {
  BLOCK_SIZE_MIN,
  BLOCK_SIZE_PREFERRED,
  CLIENT_FLAG_FIXED_NEWSTYLE,
  CLIENT_FLAG_NO_ZEROES,
  CMD,
  CMD_FLAG,
  INFO,
  MAX_EXTENTS,
  MAX_PAYLOAD,
  MAX_STRING,
  NBD_ERR,
  OPT,
  REP,
  STATE_HOLE,
  STATE_ZERO,
  TFLAG,
} from './constants.ts';
import {
  NbdProtocolError,
  Parser,
  decodeInfoRequest,
  decodeMetaContextRequest,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeNoneChunk,
  encodeOffsetDataHeader,
  encodeOptionReply,
  encodeServerEntry,
  encodeSimpleReply,
  type ClientMessage,
  type Request,
  type StatusExtent,
} from './codec.ts';
import { nbdErrorOf, type WireError } from './errors.ts';

/** A dirty bitmap exposed as `qemu:dirty-bitmap:NAME` (bit 0 = dirty). */
export interface DirtyBitmapSource {
  status(offset: number, bytes: number): Promise<{ length: number; dirty: boolean }[]>;
}

/** `qemu:allocation-depth` (QEMU docs/interop/nbd.txt): per extent, 0 where no layer of the
 * backing chain allocates the data, 1 where the exported node itself does, N+1 where its N-th
 * backing layer does. */
export interface AllocationDepthSource {
  status(offset: number, bytes: number): Promise<{ length: number; depth: number }[]>;
}

/** What an NBD export is to the session: a BlockBackend plus how it is offered. */
export interface NbdExport {
  readonly name: string;
  readonly description?: string;
  readonly backend: BlockBackend;
  readonly writable: boolean;
  readonly bitmaps?: ReadonlyMap<string, DirtyBitmapSource>;
  readonly allocationDepth?: AllocationDepthSource;
  /** UNSAFE, known bad: base:allocation reports NBD_STATE_ZERO over data. */
  readonly xBaseAllocationZero?: boolean;
}

export interface ExportLookup {
  /** The export a client names; '' is the default export (the first one), as nbdkit and qemu-nbd
   * serve it, so `nbdinfo -- [ fleece serve ... ]` works. */
  find(name: string): NbdExport | undefined;
  list(): readonly NbdExport[];
  /** True while the server is shutting down: options get ERR_SHUTDOWN, requests ESHUTDOWN. */
  readonly shuttingDown?: boolean;
}

export interface SessionOutput {
  /** Queues `bufs` in order; `written`, when given, is called once the I/O edge no longer needs
   * them (handed to the kernel), and not at all if the connection is gone first. */
  send(bufs: Buffer[], written?: () => void): void;
  /** Ends the connection: `error` set for a hard disconnect after a protocol violation. */
  close(reason: string, error?: Error): void;
  /** Flow control: stop / restart reading from the client (bounded memory, §1.8). */
  pause(): void;
  resume(): void;
  /** After the STARTTLS ACK: hand the connection to TLS now (the I/O edge calls
   * tlsEstablished() once the handshake and the identity checks passed, or closes). */
  startTls?(): void;
  log?(msg: string): void;
}

/** FORCEDTLS (proto.md "TLS support"): the server was given TLS credentials. */
export interface SessionTls {
  /** UNSAFE, known-bad: feed the plaintext pipelined after STARTTLS to the parser once TLS is up
   * (the STARTTLS injection), so that tests can show the check catching it. */
  readonly keepPlaintext?: boolean;
}

export interface SessionLimits {
  /** Requests in flight per connection before we stop reading (default 64). */
  readonly maxInFlight?: number;
  /** Payload bytes in flight per connection before we stop reading (default 64 MiB). */
  readonly maxInFlightBytes?: number;
}

/** Transmission flags for an export (docs/requirements/nbd.md §1.4). Read-only exports advertise what
 * QEMU does (0x48f with SR: FLUSH FUA DF CACHE); writable ones add TRIM, WRITE_ZEROES, FAST_ZERO.
 * CAN_MULTI_CONN: every connection shares one backend in this process and FLUSH flushes it
 * whole, so flush/FUA effects are visible on every connection (§1.7). */
export function transmissionFlags(exp: NbdExport, structured: boolean): number {
  let f = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.CAN_MULTI_CONN | TFLAG.SEND_CACHE;
  if (structured) f |= TFLAG.SEND_DF;
  if (exp.writable) f |= TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES | TFLAG.SEND_FAST_ZERO;
  else f |= TFLAG.READ_ONLY;
  return f;
}

const BASE_ALLOCATION = 'base:allocation';
const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
const ALLOCATION_DEPTH = 'qemu:allocation-depth';

interface MetaContext {
  readonly id: number;
  readonly name: string;
}

/** Thrown inside command handling to answer the request with an error. */
class RequestFailed extends Error {
  constructor(readonly wire: WireError) {
    super(wire.message);
  }
}
const fail = (errno: number, message: string): never => {
  throw new RequestFailed({ errno, message });
};

const FLAGS_FOR: Record<number, number> = {
  [CMD.READ]: CMD_FLAG.FUA | CMD_FLAG.DF,
  [CMD.WRITE]: CMD_FLAG.FUA,
  [CMD.DISC]: CMD_FLAG.FUA,
  [CMD.FLUSH]: CMD_FLAG.FUA,
  [CMD.TRIM]: CMD_FLAG.FUA,
  [CMD.CACHE]: CMD_FLAG.FUA,
  [CMD.WRITE_ZEROES]: CMD_FLAG.FUA | CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO,
  [CMD.BLOCK_STATUS]: CMD_FLAG.FUA | CMD_FLAG.REQ_ONE,
};

export class NbdSession {
  private readonly parser = new Parser((n) => writeBuffers.take(n));
  private noZeroes = false;
  private structured = false;
  private meta: MetaContext[] = [];
  private metaExport: string | undefined;
  private exp: NbdExport | undefined;
  private inFlight = 0;
  private inFlightBytes = 0;
  /** Why we are not taking requests: 'in-flight' (our caps) or the I/O edge's reasons
   * ('drain': the client is not reading replies). While any hold is set, the parser keeps the
   * bytes it has and the socket is not read. */
  private readonly holds = new Set<string>();
  private disconnecting = false;
  /** The client shut down its sending side: nothing more will arrive. */
  private eof = false;
  private closed = false;
  private readonly maxInFlight: number;
  private readonly maxInFlightBytes: number;
  /** Resolves when every in-flight request has been answered. */
  private drainWaiters: (() => void)[] = [];

  /** TLS state: 'off' (NOTLS server), 'required' (FORCEDTLS, not yet up), 'pending' (ACK sent,
   * handshake under way), 'active'. */
  private tls: 'off' | 'required' | 'pending' | 'active';

  constructor(
    private readonly exports: ExportLookup,
    private readonly out: SessionOutput,
    limits: SessionLimits = {},
    private readonly tlsMode?: SessionTls,
  ) {
    this.tls = tlsMode ? 'required' : 'off';
    this.maxInFlight = limits.maxInFlight ?? 64;
    this.maxInFlightBytes = limits.maxInFlightBytes ?? 64 * 1024 * 1024;
  }

  /** The export this connection is in transmission on, if any. */
  get export(): NbdExport | undefined {
    return this.exp;
  }
  get phase(): string {
    return this.closed ? 'closed' : this.parser.phase;
  }
  get requestsInFlight(): number {
    return this.inFlight;
  }
  /** True once TLS is up on a TLS-only server. */
  get tlsActive(): boolean {
    return this.tls === 'active';
  }

  /**
   * The I/O edge finished the TLS handshake (and the identity checks). Whatever the client sent
   * in plaintext after STARTTLS is dropped, not parsed: proto.md says all data after the ACK is
   * TLS, and acting on it would let a man in the middle inject options (the STARTTLS injection).
   * Negotiated state is forgotten (NBD_OPT_STARTTLS: "the server MUST NOT preserve any
   * negotiation state"), so the client negotiates structured replies and contexts again. In
   * FORCEDTLS nothing can have been negotiated yet (every other option got TLS_REQD); the reset
   * keeps the rule true whatever runs before, a SELECTIVETLS mode included.
   */
  tlsEstablished(): void {
    if (this.tls !== 'pending' || this.closed) return;
    const plain = this.parser.takeBuffered();
    if (plain.length) this.out.log?.(`nbd: dropping ${plain.length} bytes sent in plaintext after NBD_OPT_STARTTLS`);
    this.structured = false;
    this.meta = [];
    this.metaExport = undefined;
    this.tls = 'active';
    this.release('tls');
    if (this.tlsMode?.keepPlaintext && plain.length) this.feed(plain);
  }

  start(): void {
    this.out.send([encodeGreeting()]);
  }

  /** Bytes from the client. Never throws: a protocol violation closes this connection only. */
  feed(chunk: Buffer): void {
    if (this.closed || this.disconnecting) return;
    try {
      this.parser.parse(chunk, (m) => this.onMessage(m));
    } catch (e) {
      this.hardClose(e instanceof NbdProtocolError ? e.message : `internal error: ${String(e)}`, e as Error);
    }
  }

  /**
   * The client shut down its sending side (EOF, or shutdown(SHUT_WR)). It can still read: every
   * request already received is answered, requests held back by flow control included, and only
   * then is the connection closed (as for NBD_CMD_DISC, proto.md "Terminating the transmission
   * phase"). A partial frame left in the parser can never complete and is dropped.
   */
  clientEnded(): void {
    if (this.closed || this.eof) return;
    this.eof = true;
    if (this.parser.buffered > 0 && this.holds.size === 0) this.out.log?.(`nbd: client closed with ${this.parser.buffered} bytes of a partial message`);
    this.finishAfterEof();
  }

  private finishAfterEof(): void {
    // While a hold is set, received requests are still waiting in the parser: release() comes
    // back here once they have been parsed.
    if (!this.eof || this.closed || this.holds.size > 0) return;
    this.whenDrained(() => this.terminate('client closed its side of the connection'));
  }

  /** The connection is gone (both directions, or a socket error). In-flight replies are dropped. */
  clientGone(): void {
    this.closed = true;
    this.parser.phase = 'closed';
  }

  /** Server-initiated close (export deleted, server stopping). */
  terminate(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.parser.phase = 'closed';
    this.out.close(reason);
  }

  private hardClose(reason: string, error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.parser.phase = 'closed';
    this.out.log?.(`nbd: disconnecting client: ${reason}`);
    this.out.close(reason, error ?? new Error(reason));
  }

  private onMessage(m: ClientMessage): void {
    if (this.closed) return;
    switch (m.kind) {
      case 'client-flags':
        return this.onClientFlags(m.flags, m.streamOffset);
      case 'option':
        return this.onOption(m.option, m.data, m.streamOffset);
      case 'option-too-big':
        // §1.3 ERR_TOO_BIG: "the request or the reply is too large to process"; EXPORT_NAME has no
        // reply format, so that one is a disconnect.
        if (m.option === OPT.EXPORT_NAME) return this.hardClose(`EXPORT_NAME of ${m.length} bytes`);
        return this.reply(m.option, REP.ERR_TOO_BIG, `option ${m.option} payload of ${m.length} bytes is too large`);
      case 'request':
        return this.onRequest(m);
    }
  }

  // ---------------------------------------------------------------- handshake

  private onClientFlags(flags: number, at: number): void {
    const known = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;
    if ((flags & ~known) !== 0) {
      // §1.2: "The server MUST drop the connection if a client flag is unknown".
      return this.hardClose(new NbdProtocolError(`unknown client flags 0x${(flags >>> 0).toString(16)}`, at).message);
    }
    this.noZeroes = (flags & CLIENT_FLAG_NO_ZEROES) !== 0;
    this.parser.phase = 'options';
  }

  private reply(option: number, type: number, data: Buffer | string = Buffer.alloc(0)): void {
    const payload = typeof data === 'string' ? Buffer.from(data, 'utf8').subarray(0, MAX_STRING) : data;
    this.out.send([encodeOptionReply(option, type, payload)]);
  }

  private onOption(option: number, data: Buffer, at: number): void {
    if (this.exports.shuttingDown && option !== OPT.ABORT) {
      if (option === OPT.EXPORT_NAME) return this.hardClose('server shutting down');
      return this.reply(option, REP.ERR_SHUTDOWN, 'server is shutting down');
    }
    if ((this.tls === 'required' || this.tls === 'pending') && option !== OPT.STARTTLS && option !== OPT.ABORT) {
      // FORCEDTLS: EXPORT_NAME cannot be refused with a reply, so the session ends.
      if (option === OPT.EXPORT_NAME) return this.hardClose('NBD_OPT_EXPORT_NAME before TLS on a TLS-only server');
      return this.reply(option, REP.ERR_TLS_REQD, `option ${option} not permitted before TLS`);
    }
    switch (option) {
      case OPT.EXPORT_NAME:
        return this.optExportName(data);
      case OPT.ABORT:
        // §1.3: the server MUST reply ACK (data SHOULD be ignored), then the client closes.
        this.reply(option, REP.ACK);
        return this.terminate('client sent NBD_OPT_ABORT');
      case OPT.LIST:
        if (data.length) return this.reply(option, REP.ERR_INVALID, 'NBD_OPT_LIST must not carry data');
        for (const e of this.exports.list()) this.reply(option, REP.SERVER, encodeServerEntry(e.name, e.description ?? ''));
        return this.reply(option, REP.ACK);
      case OPT.STARTTLS:
        if (data.length) return this.reply(option, REP.ERR_INVALID, 'NBD_OPT_STARTTLS must not carry data');
        // §1.11: in NOTLS mode STARTTLS MUST be ERR_POLICY or ERR_UNSUP, never ERR_TLS_REQD.
        if (this.tls === 'off' || !this.out.startTls) return this.reply(option, REP.ERR_POLICY, 'TLS is not configured on this server');
        // FORCEDTLS: a second STARTTLS once TLS is up MUST get ERR_INVALID.
        if (this.tls === 'active') return this.reply(option, REP.ERR_INVALID, 'TLS is already negotiated');
        this.reply(option, REP.ACK);
        // Nothing more is parsed from the plaintext stream; tlsEstablished() drops what is left.
        this.tls = 'pending';
        this.hold('tls');
        this.out.startTls();
        return;
      case OPT.INFO:
      case OPT.GO:
        return this.optInfoGo(option, data, at);
      case OPT.STRUCTURED_REPLY:
        if (data.length) return this.reply(option, REP.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY must not carry data');
        // §1.3: repeating it MAY give ERR_INVALID; QEMU does.
        if (this.structured) return this.reply(option, REP.ERR_INVALID, 'structured replies already negotiated');
        this.structured = true;
        return this.reply(option, REP.ACK);
      case OPT.LIST_META_CONTEXT:
      case OPT.SET_META_CONTEXT:
        return this.optMetaContext(option, data, at);
      default:
        // §1.12 baseline: ERR_UNSUP for an unknown option, and the stream stays in sync (the
        // parser consumed exactly `length` bytes).
        return this.reply(option, REP.ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private optExportName(data: Buffer): void {
    if (data.length > MAX_STRING) return this.hardClose(`EXPORT_NAME of ${data.length} bytes exceeds ${MAX_STRING}`);
    const name = data.toString('utf8');
    const exp = this.exports.find(name);
    // §1.2: "if the server refuses the export it MUST close the connection".
    if (!exp) return this.hardClose(`EXPORT_NAME for unknown export '${quoted(name)}'`);
    this.out.send([encodeExportNameReply(exp.backend.length(), transmissionFlags(exp, this.structured), this.noZeroes)]);
    this.enterTransmission(exp);
  }

  private optInfoGo(option: number, data: Buffer, at: number): void {
    let req;
    try {
      req = decodeInfoRequest(data, at);
    } catch (e) {
      return this.reply(option, REP.ERR_INVALID, (e as Error).message);
    }
    const exp = this.exports.find(req.name);
    if (!exp) return this.reply(option, REP.ERR_UNKNOWN, `export '${quoted(req.name)}' not present`);
    const out: Buffer[] = [];
    const info = (b: Buffer) => out.push(encodeOptionReply(option, REP.INFO, b));
    // Unknown info types MUST be ignored (§1.3); duplicates are a client error we tolerate.
    const wanted = new Set(req.infos);
    if (wanted.has(INFO.NAME)) info(encodeInfoString(INFO.NAME, exp.name));
    if (wanted.has(INFO.DESCRIPTION) && exp.description) info(encodeInfoString(INFO.DESCRIPTION, exp.description));
    // Block sizes are always sent, as QEMU does: 1 / 4096 / 32 MiB (§1.8 defaults, stated).
    info(encodeInfoBlockSize(BLOCK_SIZE_MIN, BLOCK_SIZE_PREFERRED, MAX_PAYLOAD));
    // INFO_EXPORT MUST be part of every successful INFO/GO.
    info(encodeInfoExport(exp.backend.length(), transmissionFlags(exp, this.structured)));
    out.push(encodeOptionReply(option, REP.ACK));
    this.out.send(out);
    if (option === OPT.GO) this.enterTransmission(exp);
  }

  /** The contexts an export offers, in a stable order. */
  private contextsOf(exp: NbdExport): string[] {
    // QEMU's order: base:allocation, qemu:allocation-depth, then the bitmaps.
    return [BASE_ALLOCATION, ...(exp.allocationDepth ? [ALLOCATION_DEPTH] : []), ...[...(exp.bitmaps?.keys() ?? [])].map((b) => DIRTY_BITMAP_PREFIX + b)];
  }

  private optMetaContext(option: number, data: Buffer, at: number): void {
    const isSet = option === OPT.SET_META_CONTEXT;
    if (isSet) {
      // SET replaces the selection even when it fails (§1.3).
      this.meta = [];
      this.metaExport = undefined;
    }
    // §1.9: SET needs structured replies first (SHOULD be ERR_INVALID); QEMU asks the same for LIST.
    if (!this.structured) return this.reply(option, REP.ERR_INVALID, 'structured replies must be negotiated first');
    let req;
    try {
      req = decodeMetaContextRequest(data, at);
    } catch (e) {
      return this.reply(option, REP.ERR_INVALID, (e as Error).message);
    }
    const exp = this.exports.find(req.exportName);
    if (!exp) return this.reply(option, REP.ERR_UNKNOWN, `export '${quoted(req.exportName)}' not present`);
    const available = this.contextsOf(exp);
    let selected: string[];
    if (req.queries.length === 0) {
      // LIST with no queries → every context; SET with none selects nothing.
      selected = isSet ? [] : available;
    } else {
      const set = new Set<string>();
      for (const q of req.queries) {
        for (const c of available) {
          if (c === q) set.add(c);
          // Namespace/prefix wildcards work in LIST only: `base:` MUST be ignored in SET (§1.9).
          else if (!isSet && q.endsWith(':') && c.startsWith(q)) set.add(c);
        }
      }
      selected = available.filter((c) => set.has(c));
    }
    const out: Buffer[] = [];
    const chosen: MetaContext[] = [];
    selected.forEach((name, i) => {
      // LIST ids SHOULD be 0; SET ids are unique per connection.
      const id = isSet ? i + 1 : 0;
      if (isSet) chosen.push({ id, name });
      out.push(encodeOptionReply(option, REP.META_CONTEXT, encodeMetaContext(id, name)));
    });
    out.push(encodeOptionReply(option, REP.ACK));
    if (isSet) {
      this.meta = chosen;
      this.metaExport = exp.name;
    }
    this.out.send(out);
  }

  private enterTransmission(exp: NbdExport): void {
    this.exp = exp;
    // Contexts negotiated for another export do not apply to this one.
    if (this.metaExport !== undefined && this.exports.find(this.metaExport) !== exp) this.meta = [];
    this.parser.phase = 'transmission';
  }

  // ---------------------------------------------------------------- transmission

  private onRequest(req: Request): void {
    if (req.type === CMD.DISC) {
      // §1.5: no reply; finish outstanding requests, then close. Later bytes are ignored.
      this.disconnecting = true;
      this.parser.phase = 'closed';
      this.whenDrained(() => this.terminate('client sent NBD_CMD_DISC'));
      return;
    }
    this.inFlight++;
    const bytes = req.type === CMD.WRITE || req.type === CMD.READ ? req.length : 0;
    this.inFlightBytes += bytes;
    if (this.inFlight >= this.maxInFlight || this.inFlightBytes >= this.maxInFlightBytes) this.hold('in-flight');
    const settled = (): void => {
      this.inFlight--;
      this.inFlightBytes -= bytes;
      if (this.inFlight < this.maxInFlight && this.inFlightBytes < this.maxInFlightBytes) this.release('in-flight');
      if (this.inFlight === 0) {
        const w = this.drainWaiters;
        this.drainWaiters = [];
        for (const f of w) f();
      }
    };
    this.handle(req).then(settled, (e) => {
      try {
        this.sendError(req, e instanceof RequestFailed ? e.wire : nbdErrorOf(e, { fastZero: (req.flags & CMD_FLAG.FAST_ZERO) !== 0 }));
      } finally {
        settled();
      }
    });
  }

  /** Stops taking requests for `reason` (idempotent). */
  hold(reason: string): void {
    if (this.holds.has(reason)) return;
    this.holds.add(reason);
    this.parser.held = true;
    if (this.holds.size === 1) this.out.pause();
  }

  /** Lifts one hold; with none left, parses what was buffered and reads the socket again. */
  release(reason: string): void {
    if (!this.holds.delete(reason) || this.holds.size > 0) return;
    this.parser.held = false;
    if (this.closed) return;
    this.out.resume();
    if (this.parser.buffered > 0) this.feed(Buffer.alloc(0));
    this.finishAfterEof();
  }

  private whenDrained(f: () => void): void {
    if (this.inFlight === 0) f();
    else this.drainWaiters.push(f);
  }

  /** Validates a request (docs/requirements/nbd.md §1.5, §1.8, §1.10) and runs it against the backend. */
  private async handle(req: Request): Promise<void> {
    const exp = this.exp!;
    const be = exp.backend;
    if (this.exports.shuttingDown) fail(NBD_ERR.ESHUTDOWN, 'server is shutting down');
    const allowed = FLAGS_FOR[req.type];
    if (allowed === undefined) fail(NBD_ERR.EINVAL, `unknown command ${req.type}`);
    if ((req.flags & ~allowed!) !== 0) {
      fail(NBD_ERR.EINVAL, `flags 0x${req.flags.toString(16)} not valid for command ${req.type}`);
    }
    if (req.flags & CMD_FLAG.DF && !this.structured) fail(NBD_ERR.EINVAL, 'DF without structured replies');
    const size = be.length();
    const end = req.offset + req.length;
    const writes = req.type === CMD.WRITE || req.type === CMD.WRITE_ZEROES || req.type === CMD.TRIM;
    if (writes && !exp.writable) fail(NBD_ERR.EPERM, `export '${exp.name}' is read-only`);
    const fua = (req.flags & CMD_FLAG.FUA) !== 0;
    switch (req.type) {
      case CMD.READ: {
        if (req.length > MAX_PAYLOAD) fail(NBD_ERR.EINVAL, `READ of ${req.length} bytes exceeds the ${MAX_PAYLOAD}-byte maximum`);
        if (end > size) fail(NBD_ERR.EINVAL, `READ [${req.offset}, ${end}) past the end of the export (${size} bytes)`);
        const data = req.length === 0 ? Buffer.alloc(0) : await be.read(req.offset, req.length);
        return this.sendRead(req, data);
      }
      case CMD.WRITE:
        if (end > size) fail(NBD_ERR.ENOSPC, `WRITE [${req.offset}, ${end}) past the end of the export (${size} bytes)`);
        if (req.length > 0) await be.write(req.offset, req.data!, { fua });
        // Written: no driver holds the payload any more (see writeBuffers).
        writeBuffers.give(req.data!);
        return this.sendOk(req);
      case CMD.WRITE_ZEROES: {
        if (end > size) fail(NBD_ERR.ENOSPC, `WRITE_ZEROES [${req.offset}, ${end}) past the end of the export (${size} bytes)`);
        const fastZero = (req.flags & CMD_FLAG.FAST_ZERO) !== 0;
        if (req.length > 0) {
          await be.writeZeroes(req.offset, req.length, { fua, noHole: (req.flags & CMD_FLAG.NO_HOLE) !== 0, fastZero });
        }
        return this.sendOk(req);
      }
      case CMD.TRIM:
        if (end > size) fail(NBD_ERR.EINVAL, `TRIM [${req.offset}, ${end}) past the end of the export (${size} bytes)`);
        if (req.length > 0) await be.discard(req.offset, req.length);
        if (fua) await be.flush();
        return this.sendOk(req);
      case CMD.FLUSH:
        // Offset and length MUST be 0; QEMU accepts other values, and so do we (§2 case 43).
        await be.flush();
        return this.sendOk(req);
      case CMD.CACHE:
        // Advisory (§1.5); there is no cache to prefill, so a bounds-checked no-op.
        if (end > size) fail(NBD_ERR.EINVAL, `CACHE [${req.offset}, ${end}) past the end of the export (${size} bytes)`);
        return this.sendOk(req);
      case CMD.BLOCK_STATUS:
        return this.blockStatus(req, size);
    }
    fail(NBD_ERR.EINVAL, `unknown command ${req.type}`);
  }

  private async blockStatus(req: Request, size: number): Promise<void> {
    const exp = this.exp!;
    if (!this.structured || this.meta.length === 0) {
      fail(NBD_ERR.EINVAL, 'BLOCK_STATUS needs structured replies and a selected meta context');
    }
    if (req.length === 0) fail(NBD_ERR.EINVAL, 'BLOCK_STATUS of length 0');
    const end = req.offset + req.length;
    if (end > size) fail(NBD_ERR.EINVAL, `BLOCK_STATUS [${req.offset}, ${end}) past the end of the export (${size} bytes)`);
    const one = (req.flags & CMD_FLAG.REQ_ONE) !== 0;
    const chunks: { id: number; extents: StatusExtent[] }[] = [];
    for (const ctx of this.meta) {
      let ext: StatusExtent[];
      if (ctx.name === BASE_ALLOCATION) {
        const e = await exp.backend.blockStatus(req.offset, req.length);
        ext = e.map((x: Extent) => ({ length: x.length, flags: (extentHasData(x) ? 0 : STATE_HOLE) | (x.zero || exp.xBaseAllocationZero ? STATE_ZERO : 0) }));
      } else if (ctx.name === ALLOCATION_DEPTH) {
        const e = await exp.allocationDepth!.status(req.offset, req.length);
        ext = e.map((x) => ({ length: x.length, flags: x.depth }));
      } else {
        const bm = exp.bitmaps?.get(ctx.name.slice(DIRTY_BITMAP_PREFIX.length));
        if (!bm) fail(NBD_ERR.EINVAL, `meta context ${ctx.name} is gone`);
        const e = await bm!.status(req.offset, req.length);
        ext = e.map((x) => ({ length: x.length, flags: x.dirty ? 1 : 0 }));
      }
      chunks.push({ id: ctx.id, extents: normaliseExtents(ext, req.length, size - req.offset, one) });
    }
    this.out.send(chunks.map((c, i) => encodeBlockStatusChunk(req.cookie, c.id, c.extents, i === chunks.length - 1)));
  }

  private sendRead(req: Request, data: Buffer): void {
    if (this.closed) return;
    // Once on the wire, a read buffer the block layer lent out can serve the next read.
    const written = () => readBuffers.give(data);
    if (!this.structured) {
      this.out.send([encodeSimpleReply(req.cookie, 0), data], written);
      return;
    }
    if (data.length === 0) {
      this.out.send([encodeNoneChunk(req.cookie)]);
      return;
    }
    // One OFFSET_DATA chunk with DONE: it satisfies DF too (at most one content chunk, §1.6).
    this.out.send([encodeOffsetDataHeader(req.cookie, req.offset, data.length, true), data], written);
  }

  private sendOk(req: Request): void {
    if (this.closed) return;
    // A simple reply is allowed under SR for any reply without payload except READ (§1.6).
    this.out.send([encodeSimpleReply(req.cookie, 0)]);
  }

  private sendError(req: Request, err: WireError): void {
    if (this.closed) return;
    this.out.log?.(`nbd: request type ${req.type} cookie ${req.cookie.toString('hex')} offset ${req.offset} length ${req.length}: ${err.message}`);
    if (this.structured) this.out.send([encodeErrorChunk(req.cookie, err.errno, err.message)]);
    else this.out.send([encodeSimpleReply(req.cookie, err.errno)]);
  }
}

/** A client's string as it may appear in our messages: proto.md "Conventions" says strings MUST
 * NOT contain NUL, so control characters (and U+FFFD, what invalid UTF-8 decoded to) are
 * written as escapes; a long one is cut. */
export function quoted(s: string, max = 256): string {
  // eslint-disable-next-line no-control-regex
  const safe = s.replace(/[\u0000-\u001f\u007f\ufffd]/g, (c) => `\\x${c.charCodeAt(0) > 0xff ? '{fffd}' : c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return safe.length > max ? `${safe.slice(0, max)}...` : safe;
}

/**
 * Makes a backend's extent list satisfy §1.9: lengths > 0, merged where flags are equal, the
 * first N−1 inside the request, the last not past the end of the export; REQ_ONE → exactly one
 * extent no longer than the request; at most MAX_EXTENTS.
 */
export function normaliseExtents(ext: readonly StatusExtent[], reqLength: number, toEnd: number, one: boolean): StatusExtent[] {
  const out: { length: number; flags: number }[] = [];
  let covered = 0;
  for (const e of ext) {
    if (covered >= reqLength) break;
    let len = Math.min(e.length, toEnd - covered);
    if (len <= 0) continue;
    const last = out[out.length - 1];
    if (last && last.flags === e.flags) last.length += len;
    else out.push({ length: len, flags: e.flags });
    covered += len;
    if (out.length >= MAX_EXTENTS) break;
  }
  if (out.length === 0) {
    // A backend that answered nothing: status 0 is always a safe answer (§1.9).
    out.push({ length: Math.min(reqLength, toEnd), flags: 0 });
  }
  // An extent that fits in 32 bits (compact replies).
  for (const e of out) if (e.length > 0xffffffff) e.length = 0xffffffff;
  if (one) {
    const first = out[0]!;
    return [{ length: Math.min(first.length, reqLength), flags: first.flags }];
  }
  return out;
}
