// The judge of one fuzzed NBD connection. Pure: it is fed the bytes the client sent and the
// bytes the server sent, in order, and says (1) whether the server owes an answer now (so the
// driver can tell a hang from a server that is rightly waiting for more input) and (2) every
// reply the session model or the framing rules do not allow.
//
// It reads the client stream with the same framing the server must use (a lying option length
// swallows what follows, as it does in the server), so it needs no knowledge of how a case was
// generated. Server bytes go through the strict codec (conformance/nbd/codec.ts) and the
// per-request chunk rules (reply.ts); each decoded reply is then projected onto a state of the
// spec's NBD session model (spec/models/nbd-session) and must be one of its enabled actions.
// The model counts options and requests against a budget to stay finite; the projection keeps
// only what the reply depends on (phase, the option or request answered, structured replies,
// DISC sent), so any session length is judged.
import { nbdSessionModel, type Command, type NbdSessionAction, type NbdSessionState, type OptionName, type OptionReply as ModelOptionReply } from '../../spec/models/nbd-session/index.ts';
import {
  decodeExportNameReply,
  decodeGreeting,
  decodeOptionReply,
  decodeTransmissionReply,
  type Decoded,
  type OptionReply,
  type PendingRequest,
  type TransmissionReply,
} from '../nbd/codec.ts';
import { CF_FIXED_NEWSTYLE, CF_NO_ZEROES, Cmd, CF as CmdFlag, Errno, HS_NO_ZEROES, IHAVEOPT, Opt, REQUEST_MAGIC, Rep, TF, cmdName, optName, repName } from '../nbd/constants.ts';
import { NbdProtocolError } from '../nbd/errors.ts';
import { ReplyAssembler } from '../nbd/reply.ts';

export type FindingKind = 'model' | 'framing' | 'hang' | 'dead' | 'health' | 'rss' | 'qmp';

export interface Finding {
  readonly kind: FindingKind;
  readonly message: string;
}

const MODEL = nbdSessionModel();
/** Largest payload a server must accept (proto.md "Block size constraints": 32 MiB when no
 * maximum is advertised); above it the server MAY disconnect instead of replying. */
const MAX_PAYLOAD = 32 << 20;

interface PendingOption {
  opt: number;
  /** Declared data length and how much of it has arrived. */
  length: number;
  got: number;
  data: Buffer[];
  replies: OptionReply[];
}

interface Outstanding extends PendingRequest {
  cookie: bigint;
  flags: number;
  /** All of the request (header and payload) has been sent: a reply is owed. */
  complete: boolean;
  assembler: ReplyAssembler;
}

type ClientPhase = 'flags' | 'options' | 'await-phase' | 'transmission' | 'ignored';

const MODEL_OPTIONS: Partial<Record<number, OptionName>> = {
  [Opt.STRUCTURED_REPLY]: 'STRUCTURED_REPLY',
  [Opt.LIST]: 'LIST',
  [Opt.INFO]: 'INFO',
  [Opt.GO]: 'GO',
  [Opt.EXPORT_NAME]: 'EXPORT_NAME',
  [Opt.ABORT]: 'ABORT',
};

const modelCmd = (type: number): Command => (type === Cmd.READ ? 'READ' : type === Cmd.WRITE ? 'WRITE' : type === Cmd.DISC ? 'DISC' : 'FLUSH');

function enabledHas(s: NbdSessionState, a: NbdSessionAction): boolean {
  return MODEL.enabled(s).some((e) => JSON.stringify(e) === JSON.stringify(a));
}

function baseState(over: Partial<NbdSessionState>): NbdSessionState {
  return { ...MODEL.initial()[0]!, ...over };
}

export interface OracleOptions {
  /** Export names the target serves (a GO for one of them is well-formed and must succeed). */
  readonly exports: readonly string[];
}

export class SessionOracle {
  readonly findings: Finding[] = [];
  /** Set once the judge stopped following the stream (a client violation it does not model). */
  lenient = false;
  private client: Buffer = Buffer.alloc(0);
  private server: Buffer = Buffer.alloc(0);
  private parts: Buffer[] = [];
  private partsSize = 0;
  private need = 0;
  private serverBase = 0;
  private cphase: ClientPhase = 'flags';
  private sphase: 'greeting' | 'options' | 'transmission' | 'closed' = 'greeting';
  private noZeroesOffered = false;
  private noZeroes = false;
  private structured = false;
  private contexts = new Set<number>();
  private pendingContexts: number[] = [];
  private option: PendingOption | undefined;
  private readonly outstanding: Outstanding[] = [];
  /** A WRITE whose payload is still arriving. */
  private writeLeft = 0;
  private discSent = false;
  /** Requests the spec lets a server answer with a disconnect (bad magic, oversized, after DISC). */
  private mayDisconnect = false;
  transmissionFlags = 0;
  exportSize: bigint | undefined;
  private eof = false;
  closed = false;

  constructor(private readonly opts: OracleOptions) {}

  get phase(): string {
    return this.sphase;
  }

  /** Set when replies can no longer be matched to requests (duplicate cookies in flight). */
  private unjudged = false;

  private find(kind: FindingKind, message: string): void {
    if (!this.unjudged && this.findings.length < 8) this.findings.push({ kind, message });
    this.lenient = true;
  }

  /** What the server owes right now, or undefined when it may rightly stay silent. */
  owed(): string | undefined {
    if (this.closed || this.lenient) return undefined;
    if (this.sphase === 'greeting') return 'the greeting';
    if (this.option && this.option.got >= this.option.length) return `the final reply to ${optName(this.option.opt)}`;
    if (this.sphase === 'transmission') {
      const due = this.outstanding.filter((o) => o.complete && o.type !== Cmd.DISC);
      if (due.length) return `replies to ${due.length} request(s) (first: ${cmdName(due[0]!.type)} cookie 0x${due[0]!.cookie.toString(16)})`;
      if (this.discSent) return 'the close after NBD_CMD_DISC';
    }
    return undefined;
  }

  // ---- client -> server ---------------------------------------------------------------------

  clientSent(bytes: Buffer): void {
    this.client = this.client.length ? Buffer.concat([this.client, bytes]) : bytes;
    this.parseClient();
  }

  /** The client half-closed its side: from here the server may close without more replies. */
  clientEof(): void {
    this.eof = true;
  }

  private parseClient(): void {
    for (;;) {
      if (this.cphase === 'ignored' || this.cphase === 'await-phase') return;
      if (this.cphase === 'flags') {
        if (this.client.length < 4) return;
        const f = this.client.readUInt32BE(0);
        this.client = this.client.subarray(4);
        this.noZeroes = this.noZeroesOffered && (f & CF_NO_ZEROES) !== 0;
        // Unknown client flags or no FIXED_NEWSTYLE: the server may close or fall back to plain
        // newstyle (proto.md "Newstyle negotiation"); not judged further.
        if ((f & ~(CF_FIXED_NEWSTYLE | CF_NO_ZEROES)) !== 0 || (f & CF_FIXED_NEWSTYLE) === 0) {
          this.cphase = 'ignored';
          this.lenient = true;
          return;
        }
        this.cphase = 'options';
        continue;
      }
      if (this.cphase === 'options') {
        if (this.option) {
          // Data of the option being sent (possibly a lie: the server reads what was declared).
          const take = Math.min(this.option.length - this.option.got, this.client.length);
          if (take > 0) {
            this.option.data.push(this.client.subarray(0, take));
            this.option.got += take;
            this.client = this.client.subarray(take);
          }
          if (this.option.got < this.option.length) return;
          // Complete: the server answers it before reading further (one option at a time).
          if (this.option.opt === Opt.GO || this.option.opt === Opt.EXPORT_NAME || this.option.opt === Opt.ABORT) this.cphase = 'await-phase';
          return;
        }
        if (this.client.length < 16) return;
        if (this.client.readBigUInt64BE(0) !== IHAVEOPT) {
          this.cphase = 'ignored'; // the server MUST close (proto.md "Option haggling"); not judged
          this.mayDisconnect = true;
          return;
        }
        this.option = { opt: this.client.readUInt32BE(8), length: this.client.readUInt32BE(12), got: 0, data: [], replies: [] };
        this.client = this.client.subarray(16);
        continue;
      }
      // transmission
      if (this.writeLeft > 0) {
        const take = Math.min(this.writeLeft, this.client.length);
        this.writeLeft -= take;
        this.client = this.client.subarray(take);
        if (this.writeLeft > 0) return;
        const w = this.outstanding[this.outstanding.length - 1];
        if (w) w.complete = true;
        continue;
      }
      if (this.client.length < 28) return;
      if (this.discSent) {
        this.mayDisconnect = true; // the client MUST NOT send after DISC; the server ignores it
        this.cphase = 'ignored';
        return;
      }
      if (this.client.readUInt32BE(0) !== REQUEST_MAGIC) {
        // The spec does not say how a server treats a bad magic; QEMU 7.2 answers the garbage
        // header with EINVAL under whatever cookie it holds. Replies are no longer judged.
        this.mayDisconnect = true;
        this.cphase = 'ignored';
        this.unjudged = true;
        return;
      }
      const flags = this.client.readUInt16BE(4);
      const type = this.client.readUInt16BE(6);
      const cookie = this.client.readBigUInt64BE(8);
      const offset = this.client.readBigUInt64BE(16);
      const length = this.client.readUInt32BE(24);
      this.client = this.client.subarray(28);
      if (length > MAX_PAYLOAD || type > Cmd.BLOCK_STATUS || type === Cmd.RESIZE) this.mayDisconnect = true;
      if (this.outstanding.some((o) => o.cookie === cookie)) {
        // Cookies in flight must be unique for replies to be matched; a duplicate is not judged.
        this.mayDisconnect = true;
        this.cphase = 'ignored';
        this.lenient = true;
        this.unjudged = true;
        return;
      }
      const req = { type, offset, length, cookie, flags };
      const o: Outstanding = { ...req, complete: type !== Cmd.WRITE || length === 0, assembler: new ReplyAssembler(req, this.contexts) };
      this.outstanding.push(o);
      if (type === Cmd.DISC) {
        this.discSent = true;
        // DISC with flags, an offset or a length is malformed (proto.md "NBD_CMD_DISC"): a server
        // may reject it as a request (nbd-server answers EINVAL and goes on) instead of closing.
        if ((flags & ~CmdFlag.FUA) !== 0 || offset !== 0n || length !== 0) {
          this.mayDisconnect = true;
          this.unjudged = true;
        }
      }
      if (type === Cmd.WRITE && length > 0) {
        if (length > MAX_PAYLOAD) {
          // A server may refuse an oversized payload by disconnecting without reading it.
          this.cphase = 'ignored';
          return;
        }
        this.writeLeft = length;
      }
    }
  }

  // ---- server -> client ---------------------------------------------------------------------

  serverSent(bytes: Buffer): void {
    if (this.lenient && this.sphase !== 'transmission') return;
    // Bytes pile up in a list until the decoder's last "need" is met: concatenating on every
    // 'data' event would be quadratic for a large READ reply.
    this.parts.push(bytes);
    this.partsSize += bytes.length;
    if (this.server.length + this.partsSize < this.need) return;
    this.server = Buffer.concat([this.server, ...this.parts]);
    this.parts = [];
    this.partsSize = 0;
    this.need = 0;
    try {
      this.parseServer();
    } catch (e) {
      if (e instanceof NbdProtocolError) this.find('framing', e.message);
      else throw e;
    }
  }

  serverClosed(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.lenient) return;
    if (this.partsSize > 0) {
      this.server = Buffer.concat([this.server, ...this.parts]);
      this.parts = [];
      this.partsSize = 0;
    }
    if (this.server.length > 0 && this.sphase !== 'closed') {
      this.find('framing', `server closed in the middle of a message (${this.server.length} bytes of it received: ${this.server.subarray(0, 32).toString('hex')})`);
      return;
    }
    if (this.sphase !== 'transmission' || this.eof || this.mayDisconnect) return;
    const unanswered = this.outstanding.filter((o) => o.complete && o.type !== Cmd.DISC);
    if (unanswered.length === 0) return;
    if (this.discSent) {
      // Project: DISC sent, one request still outstanding. The model enables 'close' only once
      // nothing but DISC is outstanding.
      const s = baseState({ phase: 'transmission', structured: this.structured, discSent: true, outstanding: [{ cookie: 0, cmd: modelCmd(unanswered[0]!.type), chunked: false }, { cookie: 1, cmd: 'DISC', chunked: false }] });
      if (!enabledHas(s, { kind: 'close' })) {
        this.find('model', `server closed after NBD_CMD_DISC with ${unanswered.length} request(s) unanswered (first ${cmdName(unanswered[0]!.type)} cookie 0x${unanswered[0]!.cookie.toString(16)}); the session model allows the close only after every reply (proto.md "NBD_CMD_DISC": the server MUST handle all outstanding requests)`);
      }
      return;
    }
    this.find('model', `server closed the connection with ${unanswered.length} well-formed request(s) unanswered and no NBD_CMD_DISC (first ${cmdName(unanswered[0]!.type)} cookie 0x${unanswered[0]!.cookie.toString(16)}); nothing in the request stream allows a disconnect`);
  }

  private take<T>(d: Decoded<T>): T | undefined {
    if (!d.ok) {
      this.need = d.need;
      return undefined;
    }
    this.server = this.server.subarray(d.size);
    this.serverBase += d.size;
    return d.msg;
  }

  private parseServer(): void {
    for (;;) {
      if (this.server.length === 0) return;
      switch (this.sphase) {
        case 'greeting': {
          const g = this.take(decodeGreeting(this.server, this.serverBase));
          if (!g) return;
          if (g.kind !== 'greeting') {
            this.lenient = true; // oldstyle: nothing to judge here
            return;
          }
          this.noZeroesOffered = (g.handshakeFlags & HS_NO_ZEROES) !== 0;
          this.sphase = 'options';
          continue;
        }
        case 'options': {
          const o = this.option;
          if (!o) {
            this.find('framing', `server sent ${this.server.length} byte(s) in the option phase with no option outstanding: ${this.server.subarray(0, 32).toString('hex')}`);
            return;
          }
          if (o.opt === Opt.EXPORT_NAME) {
            const r = this.take(decodeExportNameReply(this.server, this.serverBase, this.noZeroes));
            if (!r) return;
            if (o.got < o.length) return this.find('model', `server answered NBD_OPT_EXPORT_NAME before the ${o.length}-byte name was complete`);
            this.exportSize = r.size;
            this.transmissionFlags = r.transmissionFlags;
            this.enterTransmission();
            continue;
          }
          const r = this.take(decodeOptionReply(this.server, this.serverBase, o.opt));
          if (!r) return;
          this.judgeOptionReply(o, r);
          if (this.lenient) return;
          continue;
        }
        case 'transmission': {
          const start = this.serverBase;
          const before = this.server;
          const r = this.take(
            decodeTransmissionReply(this.server, this.serverBase, {
              structuredReplies: this.structured,
              pending: (c) => this.outstanding.find((x) => x.cookie === c),
            }),
          );
          if (!r) return;
          this.judgeReply(r, { offset: start, bytes: before.subarray(0, this.serverBase - start) });
          continue;
        }
        case 'closed':
          return this.find('framing', `server sent ${this.server.length} byte(s) after the session ended`);
      }
    }
  }

  private enterTransmission(): void {
    this.option = undefined;
    this.sphase = 'transmission';
    this.cphase = 'transmission';
    this.contexts = new Set(this.pendingContexts);
    this.parseClient();
  }

  /** Whether an option's data is well-formed for the options the model knows. */
  private wellFormed(o: PendingOption): boolean {
    const d = Buffer.concat(o.data);
    if (o.got < o.length) return false;
    switch (o.opt) {
      case Opt.STRUCTURED_REPLY:
      case Opt.LIST:
      case Opt.ABORT:
        return d.length === 0;
      case Opt.INFO:
      case Opt.GO: {
        if (d.length < 6) return false;
        const n = d.readUInt32BE(0);
        if (4 + n + 2 > d.length) return false;
        const count = d.readUInt16BE(4 + n);
        if (d.length !== 6 + n + 2 * count) return false;
        return this.opts.exports.includes(d.subarray(4, 4 + n).toString('utf8')) && n <= 4096;
      }
      default:
        return false;
    }
  }

  private judgeOptionReply(o: PendingOption, r: OptionReply): void {
    const complete = o.got >= o.length;
    if (!complete && !r.final) return this.find('model', `server sent ${repName(r.type)} (not final) to ${optName(o.opt)} before its ${o.length}-byte data had arrived (${o.got} so far)`);
    if (!complete && r.type === Rep.ACK) return this.find('model', `server acknowledged ${optName(o.opt)} before its ${o.length}-byte data had arrived (${o.got} so far)`);
    o.replies.push(r);
    const name = MODEL_OPTIONS[o.opt];
    if (name && complete && this.wellFormed(o)) {
      const reply: ModelOptionReply | undefined =
        r.type === Rep.ACK ? 'ACK'
        : r.type === Rep.SERVER ? 'SERVER'
        : r.type === Rep.INFO ? 'INFO'
        : r.type === Rep.ERR_UNKNOWN ? 'ERR_UNKNOWN'
        : r.final ? 'ERR_INVALID'
        : undefined;
      // The model abstracts a run of partial replies (INFO, SERVER) as one step: a partial is
      // judged as the first, the final reply as following one partial if any came.
      const partials = o.replies.length - 1;
      const s = baseState({ phase: 'options', pendingOptions: [name], partials: r.final ? Math.min(1, partials) : 0, structured: this.structured });
      // Checklist 22: a repeated STRUCTURED_REPLY MAY be acknowledged again (the model lists only
      // ERR_INVALID, the answer it prefers).
      const repeatAck = name === 'STRUCTURED_REPLY' && this.structured && reply === 'ACK';
      // A GO or INFO for an export the target serves is judged by the model, which lets it fail
      // only with ERR_UNKNOWN; a server may also refuse for policy (ERR_POLICY, ERR_TLS_REQD).
      // ERR_UNSUP: the server does not implement the option (nbd-server 3.24 has no structured
      // replies); the model describes a server that does.
      const policy = r.type === Rep.ERR_POLICY || r.type === Rep.ERR_TLS_REQD || r.type === Rep.ERR_SHUTDOWN || r.type === Rep.ERR_BLOCK_SIZE_REQD || (r.type === Rep.ERR_UNSUP && name !== 'ABORT');
      if (!repeatAck && !policy && (reply === undefined || !enabledHas(s, { kind: 'optionReply', reply }))) {
        return this.find('model', `${repName(r.type)} to a well-formed ${optName(o.opt)}${partials ? ` after ${partials} partial repl${partials === 1 ? 'y' : 'ies'}` : ''} is not allowed by the session model (it allows ${MODEL.enabled(s).filter((a) => a.kind === 'optionReply').map((a) => (a as { reply: string }).reply).join(', ')})`);
      }
    } else if (r.type === Rep.ACK && o.opt > Opt.EXTENDED_HEADERS) {
      return this.find('model', `server acknowledged unknown option ${optName(o.opt)} (proto.md "Option types": an unknown option MUST get NBD_REP_ERR_UNSUP)`);
    }
    if (r.body.reply === 'info' && r.body.info === 'export') {
      this.exportSize = r.body.size;
      this.transmissionFlags = r.body.transmissionFlags;
    }
    if (r.body.reply === 'meta-context' && o.opt === Opt.SET_META_CONTEXT) this.pendingContexts.push(r.body.contextId);
    if (!r.final) return;
    this.option = undefined;
    if (o.opt === Opt.SET_META_CONTEXT && r.type !== Rep.ACK) this.pendingContexts = [];
    if (o.opt === Opt.STRUCTURED_REPLY && r.type === Rep.ACK) this.structured = true;
    if (o.opt === Opt.STARTTLS && r.type === Rep.ACK) {
      this.lenient = true; // a TLS handshake follows; not ours to judge
      this.cphase = 'ignored';
      return;
    }
    if (o.opt === Opt.GO && r.type === Rep.ACK) {
      if (this.exportSize === undefined) return this.find('model', 'NBD_OPT_GO acknowledged without NBD_INFO_EXPORT (proto.md "NBD_OPT_INFO and NBD_OPT_GO")');
      return this.enterTransmission();
    }
    if (o.opt === Opt.ABORT) {
      this.sphase = 'closed';
      this.cphase = 'ignored';
      return;
    }
    if (this.cphase === 'await-phase') this.cphase = 'options';
    this.parseClient();
  }

  private judgeReply(r: TransmissionReply, at: { offset: number; bytes: Uint8Array }): void {
    const i = this.outstanding.findIndex((x) => x.cookie === r.cookie);
    const o = this.outstanding[i]!;
    const chunk = r.kind === 'simple-reply' ? 'simple' : r.done ? 'done' : 'data';
    // Project onto the model: the request answered is outstanding as cookie 0.
    const s = baseState({ phase: 'transmission', structured: this.structured, discSent: this.discSent, outstanding: [{ cookie: 0, cmd: modelCmd(o.type), chunked: false }] });
    const a: NbdSessionAction = { kind: 'reply', cookie: 0, chunk: chunk === 'done' && o.type !== Cmd.READ ? 'simple' : chunk };
    const structuredNonRead = r.kind === 'chunk' && o.type !== Cmd.READ;
    if (!structuredNonRead && !enabledHas(s, a)) {
      const next = MODEL.step(s, a);
      const broken = MODEL.invariants.map((inv) => inv.check(next)).find((m) => m !== undefined);
      return this.find('model', `${r.kind === 'chunk' ? 'structured chunk' : 'simple reply'} to ${cmdName(o.type)} cookie 0x${o.cookie.toString(16)} is not allowed by the session model${broken ? `: ${broken}` : ''}`);
    }
    if (o.type === Cmd.DISC) return this.find('model', 'server replied to NBD_CMD_DISC, which has no reply (proto.md "NBD_CMD_DISC")');
    let done: ReturnType<ReplyAssembler['chunk']>;
    try {
      done = r.kind === 'simple-reply' ? o.assembler.simple(r) : o.assembler.chunk(r, at);
    } catch (e) {
      if (e instanceof NbdProtocolError) return this.find('framing', e.message);
      throw e;
    }
    if (!done) return;
    this.outstanding.splice(i, 1);
    if (!o.complete) {
      // Answered before the payload arrived: the server will not read it as a payload.
      if (done.error === 0) return this.find('model', `server reported success for ${cmdName(o.type)} cookie 0x${o.cookie.toString(16)} before its ${o.length}-byte payload had arrived`);
      this.mayDisconnect = true;
      this.cphase = 'ignored';
      this.lenient = true;
      return;
    }
    this.judgeSemantics(o, done.error);
  }

  /** The MUSTs a reply's error value can break, whatever the server's choices elsewhere. */
  private judgeSemantics(o: Outstanding, error: number): void {
    const what = `${cmdName(o.type)} cookie 0x${o.cookie.toString(16)} [${o.offset}, +${o.length}] flags 0x${o.flags.toString(16)}`;
    const writes = o.type === Cmd.WRITE || o.type === Cmd.WRITE_ZEROES || o.type === Cmd.TRIM;
    if (error === 0 && writes && o.length > 0 && (this.transmissionFlags & TF.READ_ONLY) !== 0) {
      return this.find('model', `${what} succeeded on a read-only export (proto.md "NBD_FLAG_READ_ONLY": the server MUST fail writes, checklist 63)`);
    }
    if (error === 0 && this.exportSize !== undefined && o.length > 0 && (o.type === Cmd.READ || writes) && o.offset + BigInt(o.length) > this.exportSize) {
      return this.find('model', `${what} succeeded past the end of the ${this.exportSize}-byte export (checklist 45-48: it must fail, EINVAL or ENOSPC)`);
    }
    if (error === Errno.ENOTSUP && !(o.type === Cmd.WRITE_ZEROES && (o.flags & CmdFlag.FAST_ZERO) !== 0)) {
      return this.find('model', `${what} failed with ENOTSUP, which is only for WRITE_ZEROES with FAST_ZERO (proto.md "Error values")`);
    }
  }
}
