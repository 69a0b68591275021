// Strict NBD codec for the client side: pure functions over buffers, no I/O
// (style of node-postgres pg-protocol: one switch per message kind).
// Every magic, length and padding is checked; anything the spec forbids becomes an
// NbdProtocolError carrying the offending bytes and their stream offset.
// References: docs/requirements/nbd.md §1.2-1.6; proto.md "Fixed newstyle negotiation", "Option types",
// "Transmission", "Structured reply chunk message types".
import {
  CHUNK_FLAG_DONE,
  Chunk,
  Cmd,
  CLISERV_MAGIC,
  EXTENDED_REPLY_MAGIC,
  IHAVEOPT,
  Info,
  MAX_STRING,
  NBDMAGIC,
  OPTION_REPLY_MAGIC,
  REQUEST_MAGIC,
  Rep,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  chunkName,
  cmdName,
  isErrorChunk,
  isErrorReply,
  optName,
  repName,
} from './constants.ts';
import { NbdProtocolError } from './errors.ts';

// ---------------------------------------------------------------------------------------------
// Decoded messages (server -> client)

export interface Greeting {
  kind: 'greeting';
  handshakeFlags: number;
}
export interface OldstyleGreeting {
  kind: 'oldstyle';
  size: bigint;
  flags: number;
}
export interface ExportNameReply {
  kind: 'export-name-reply';
  size: bigint;
  transmissionFlags: number;
  /** Whether the 124 zero bytes were present. */
  padded: boolean;
}

export type InfoPayload =
  | { info: 'export'; size: bigint; transmissionFlags: number }
  | { info: 'name'; name: string }
  | { info: 'description'; description: string }
  | { info: 'block-size'; minimum: number; preferred: number; maximum: number }
  | { info: 'unknown'; infoType: number; data: Buffer };

export type OptionReplyBody =
  | { reply: 'ack' }
  | { reply: 'server'; name: string; description: string }
  | ({ reply: 'info' } & InfoPayload)
  | { reply: 'meta-context'; contextId: number; name: string }
  | { reply: 'error'; code: number; message: string };

export interface OptionReply {
  kind: 'option-reply';
  option: number;
  type: number;
  body: OptionReplyBody;
  /** ACK or an error: no further reply to this option follows. */
  final: boolean;
}

export interface SimpleReply {
  kind: 'simple-reply';
  error: number;
  cookie: bigint;
  data?: Buffer;
}

export interface Extent {
  length: number;
  flags: number;
}

export type ChunkBody =
  | { chunk: 'none' }
  | { chunk: 'offset-data'; offset: bigint; data: Buffer }
  | { chunk: 'offset-hole'; offset: bigint; size: number }
  | { chunk: 'block-status'; contextId: number; extents: Extent[] }
  | { chunk: 'error'; error: number; message: string; offset?: bigint }
  | { chunk: 'unknown-error'; type: number; error: number; message: string };

export interface ReplyChunk {
  kind: 'chunk';
  flags: number;
  type: number;
  cookie: bigint;
  done: boolean;
  body: ChunkBody;
}

export type TransmissionReply = SimpleReply | ReplyChunk;
export type ServerMessage = Greeting | OldstyleGreeting | ExportNameReply | OptionReply | TransmissionReply;

/** Result of a decode attempt: a message and how many bytes it took, or how many bytes are needed. */
export type Decoded<T> = { ok: true; msg: T; size: number } | { ok: false; need: number };

const need = (n: number): { ok: false; need: number } => ({ ok: false, need: n });

/** What the decoder must know about an outstanding request to frame its reply. */
export interface PendingRequest {
  type: number;
  offset: bigint;
  length: number;
}

export interface TransmissionContext {
  structuredReplies: boolean;
  pending(cookie: bigint): PendingRequest | undefined;
}

// ---------------------------------------------------------------------------------------------
// Helpers

const utf8 = new TextDecoder('utf-8', { fatal: true });

function fail(reason: string, base: number, buf: Buffer, from: number, to: number): never {
  throw new NbdProtocolError(reason, base + from, Uint8Array.prototype.slice.call(buf, from, Math.min(to, buf.length)));
}

function str(buf: Buffer, from: number, to: number, base: number, what: string): string {
  const bytes = buf.subarray(from, to);
  if (bytes.length > MAX_STRING) fail(`${what} is ${bytes.length} bytes, above the 4096-byte limit (proto.md "Conventions")`, base, buf, from, to);
  let s: string;
  try {
    s = utf8.decode(bytes);
  } catch {
    fail(`${what} is not valid UTF-8 (proto.md "Conventions")`, base, buf, from, to);
  }
  if (s.includes('\0')) fail(`${what} contains NUL (proto.md "Conventions")`, base, buf, from, to);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Handshake

/** Server greeting: NBDMAGIC + IHAVEOPT + u16 flags (newstyle) or NBDMAGIC + cliserv + 144 bytes (oldstyle). */
export function decodeGreeting(buf: Buffer, base = 0): Decoded<Greeting | OldstyleGreeting> {
  if (buf.length < 16) return need(16);
  if (buf.readBigUInt64BE(0) !== NBDMAGIC) fail('greeting does not start with NBDMAGIC', base, buf, 0, 8);
  const second = buf.readBigUInt64BE(8);
  if (second === CLISERV_MAGIC) {
    if (buf.length < 152) return need(152);
    const size = buf.readBigUInt64BE(16);
    const flags = buf.readUInt32BE(24);
    if (buf.subarray(28, 152).some((b) => b !== 0)) fail('oldstyle greeting: the 124 padding bytes are not zero', base, buf, 28, 152);
    return { ok: true, msg: { kind: 'oldstyle', size, flags }, size: 152 };
  }
  if (second !== IHAVEOPT) fail('greeting: second magic is neither IHAVEOPT nor the oldstyle cliserv magic', base, buf, 8, 16);
  if (buf.length < 18) return need(18);
  return { ok: true, msg: { kind: 'greeting', handshakeFlags: buf.readUInt16BE(16) }, size: 18 };
}

/** Upper bound for an option reply's data: strings are at most 4096 bytes (SERVER: name + description). */
const MAX_OPTION_REPLY = 4 + 2 * MAX_STRING + 16;

/**
 * Option reply (fixed newstyle): u64 magic, u32 option, u32 type, u32 length, data.
 * `expectOption` is the option the client sent; the server MUST echo it.
 */
export function decodeOptionReply(buf: Buffer, base: number, expectOption: number): Decoded<OptionReply> {
  if (buf.length < 20) return need(20);
  if (buf.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) fail('option reply magic is not 0x3e889045565a9', base, buf, 0, 20);
  const option = buf.readUInt32BE(8);
  const type = buf.readUInt32BE(12);
  const length = buf.readUInt32BE(16);
  if (option !== expectOption) {
    fail(`option reply echoes ${optName(option)} but ${optName(expectOption)} was sent (a stray or duplicated reply: the option stream is out of sync)`, base, buf, 0, 20);
  }
  if (length > MAX_OPTION_REPLY) fail(`option reply ${repName(type)} claims ${length} bytes of data, more than any reply type can hold`, base, buf, 0, 20);
  if (buf.length < 20 + length) return need(20 + length);
  const d = 20;
  const end = 20 + length;
  let body: OptionReplyBody;
  if (isErrorReply(type)) {
    body = { reply: 'error', code: type, message: str(buf, d, end, base, `${repName(type)} message`) };
  } else {
    switch (type) {
      case Rep.ACK:
        if (length !== 0) fail(`NBD_REP_ACK with ${length} bytes of data (must be 0)`, base, buf, 0, end);
        body = { reply: 'ack' };
        break;
      case Rep.SERVER: {
        if (length < 4) fail('NBD_REP_SERVER shorter than its 4-byte name length', base, buf, 0, end);
        const nameLen = buf.readUInt32BE(d);
        if (nameLen > length - 4) fail(`NBD_REP_SERVER name length ${nameLen} exceeds the reply length ${length} - 4`, base, buf, 0, end);
        body = {
          reply: 'server',
          name: str(buf, d + 4, d + 4 + nameLen, base, 'export name'),
          description: str(buf, d + 4 + nameLen, end, base, 'export description'),
        };
        break;
      }
      case Rep.INFO:
        body = { reply: 'info', ...decodeInfo(buf, d, end, base) };
        break;
      case Rep.META_CONTEXT: {
        if (length < 4) fail('NBD_REP_META_CONTEXT shorter than its 4-byte context id', base, buf, 0, end);
        body = { reply: 'meta-context', contextId: buf.readUInt32BE(d), name: str(buf, d + 4, end, base, 'meta context name') };
        break;
      }
      default:
        fail(`unknown option reply type ${type} (not an error type: a client cannot skip it safely)`, base, buf, 0, end);
    }
  }
  return { ok: true, msg: { kind: 'option-reply', option, type, body, final: type === Rep.ACK || isErrorReply(type) }, size: end };
}

function decodeInfo(buf: Buffer, d: number, end: number, base: number): InfoPayload {
  if (end - d < 2) fail('NBD_REP_INFO shorter than its 2-byte info type', base, buf, d - 20, end);
  const infoType = buf.readUInt16BE(d);
  const len = end - d;
  switch (infoType) {
    case Info.EXPORT:
      if (len !== 12) fail(`NBD_INFO_EXPORT has length ${len}, must be 12`, base, buf, d - 20, end);
      return { info: 'export', size: buf.readBigUInt64BE(d + 2), transmissionFlags: buf.readUInt16BE(d + 10) };
    case Info.NAME:
      return { info: 'name', name: str(buf, d + 2, end, base, 'NBD_INFO_NAME') };
    case Info.DESCRIPTION:
      return { info: 'description', description: str(buf, d + 2, end, base, 'NBD_INFO_DESCRIPTION') };
    case Info.BLOCK_SIZE:
      if (len !== 14) fail(`NBD_INFO_BLOCK_SIZE has length ${len}, must be 14`, base, buf, d - 20, end);
      return { info: 'block-size', minimum: buf.readUInt32BE(d + 2), preferred: buf.readUInt32BE(d + 6), maximum: buf.readUInt32BE(d + 10) };
    default:
      // proto.md "NBD_REP_INFO": the client MUST ignore information types it does not know.
      return { info: 'unknown', infoType, data: Buffer.from(buf.subarray(d + 2, end)) };
  }
}

/** Reply to NBD_OPT_EXPORT_NAME: u64 size, u16 flags, then 124 zeroes unless NO_ZEROES was negotiated. */
export function decodeExportNameReply(buf: Buffer, base: number, noZeroes: boolean): Decoded<ExportNameReply> {
  const total = noZeroes ? 10 : 134;
  if (buf.length < 10) return need(10);
  // A server that refuses the export MUST close; an option-reply magic here is a protocol error.
  if (buf.length >= 8 && buf.readBigUInt64BE(0) === OPTION_REPLY_MAGIC) {
    fail('NBD_OPT_EXPORT_NAME answered with an option reply (the server must send size+flags or close)', base, buf, 0, Math.min(buf.length, 20));
  }
  if (buf.length < total) return need(total);
  if (!noZeroes && buf.subarray(10, 134).some((b) => b !== 0)) fail('EXPORT_NAME reply: the 124 padding bytes are not zero', base, buf, 10, 134);
  return {
    ok: true,
    msg: { kind: 'export-name-reply', size: buf.readBigUInt64BE(0), transmissionFlags: buf.readUInt16BE(8), padded: !noZeroes },
    size: total,
  };
}

// ---------------------------------------------------------------------------------------------
// Transmission

/** Largest chunk payload we accept for a non-data chunk: block status with 2^20 extents. */
const MAX_STATUS_CHUNK = 4 + 8 * (1 << 20);

export function decodeTransmissionReply(buf: Buffer, base: number, ctx: TransmissionContext): Decoded<TransmissionReply> {
  if (buf.length < 4) return need(4);
  const magic = buf.readUInt32BE(0);
  switch (magic) {
    case SIMPLE_REPLY_MAGIC:
      return decodeSimple(buf, base, ctx);
    case STRUCTURED_REPLY_MAGIC:
      return decodeChunk(buf, base, ctx);
    case EXTENDED_REPLY_MAGIC:
      fail('extended reply header, but extended headers were not negotiated', base, buf, 0, Math.min(buf.length, 32));
    // falls through (fail never returns)
    default:
      fail(`unknown reply magic 0x${magic.toString(16).padStart(8, '0')} (neither simple 0x67446698 nor structured 0x668e33ef)`, base, buf, 0, Math.min(buf.length, 20));
  }
}

function decodeSimple(buf: Buffer, base: number, ctx: TransmissionContext): Decoded<SimpleReply> {
  if (buf.length < 16) return need(16);
  const error = buf.readUInt32BE(4);
  const cookie = buf.readBigUInt64BE(8);
  const req = ctx.pending(cookie);
  if (!req) fail(`simple reply for cookie 0x${cookie.toString(16)}, which matches no request in flight`, base, buf, 0, 16);
  if (req.type === Cmd.READ && ctx.structuredReplies) {
    fail('simple reply to NBD_CMD_READ after structured replies were negotiated (proto.md "Structured replies": MUST use a structured reply)', base, buf, 0, 16);
  }
  if (req.type === Cmd.READ && error === 0) {
    if (buf.length < 16 + req.length) return need(16 + req.length);
    return { ok: true, msg: { kind: 'simple-reply', error, cookie, data: Buffer.from(buf.subarray(16, 16 + req.length)) }, size: 16 + req.length };
  }
  return { ok: true, msg: { kind: 'simple-reply', error, cookie }, size: 16 };
}

function decodeChunk(buf: Buffer, base: number, ctx: TransmissionContext): Decoded<ReplyChunk> {
  if (buf.length < 20) return need(20);
  const flags = buf.readUInt16BE(4);
  const type = buf.readUInt16BE(6);
  const cookie = buf.readBigUInt64BE(8);
  const length = buf.readUInt32BE(16);
  const hdr = (reason: string): never => fail(reason, base, buf, 0, 20);
  if (!ctx.structuredReplies) hdr('structured reply chunk, but structured replies were not negotiated');
  const req = ctx.pending(cookie);
  if (!req) return hdr(`${chunkName(type)} chunk for cookie 0x${cookie.toString(16)}, which matches no request in flight`);
  if (flags & ~CHUNK_FLAG_DONE) hdr(`chunk flags 0x${flags.toString(16)} has bits other than NBD_REPLY_FLAG_DONE`);
  const done = (flags & CHUNK_FLAG_DONE) !== 0;
  // Length bounds per type, checked before waiting for the payload, so a desynced stream fails fast.
  switch (type) {
    case Chunk.NONE:
      if (length !== 0) hdr(`NBD_REPLY_TYPE_NONE with length ${length} (must be 0)`);
      if (!done) hdr('NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE');
      break;
    case Chunk.OFFSET_DATA:
      if (req.type !== Cmd.READ) hdr(`NBD_REPLY_TYPE_OFFSET_DATA in reply to ${cmdName(req.type)}`);
      if (length < 9) hdr(`NBD_REPLY_TYPE_OFFSET_DATA with length ${length} (must be at least 9)`);
      if (length > 8 + req.length) hdr(`NBD_REPLY_TYPE_OFFSET_DATA carries ${length - 8} bytes, more than the ${req.length} requested`);
      break;
    case Chunk.OFFSET_HOLE:
      if (req.type !== Cmd.READ) hdr(`NBD_REPLY_TYPE_OFFSET_HOLE in reply to ${cmdName(req.type)}`);
      if (length !== 12) hdr(`NBD_REPLY_TYPE_OFFSET_HOLE with length ${length} (must be 12)`);
      break;
    case Chunk.BLOCK_STATUS:
      if (req.type !== Cmd.BLOCK_STATUS) hdr(`NBD_REPLY_TYPE_BLOCK_STATUS in reply to ${cmdName(req.type)}`);
      if (length < 12 || (length - 4) % 8 !== 0) hdr(`NBD_REPLY_TYPE_BLOCK_STATUS with length ${length} (must be 4 + 8n, n >= 1)`);
      if (length > MAX_STATUS_CHUNK) hdr(`NBD_REPLY_TYPE_BLOCK_STATUS with ${(length - 4) / 8} extents (more than 2^20)`);
      break;
    case Chunk.ERROR:
      if (length < 6 || length > 6 + MAX_STRING) hdr(`NBD_REPLY_TYPE_ERROR with length ${length} (must be 6 + message length)`);
      break;
    case Chunk.ERROR_OFFSET:
      if (length < 14 || length > 14 + MAX_STRING) hdr(`NBD_REPLY_TYPE_ERROR_OFFSET with length ${length} (must be 14 + message length)`);
      break;
    default:
      if (!isErrorChunk(type)) hdr(`unknown non-error chunk type ${type} (the client MUST hard-disconnect, proto.md "Structured reply chunk message types")`);
      if (length < 6 || length > 6 + MAX_STRING + 65536) hdr(`unknown error chunk type 0x${type.toString(16)} with length ${length} (error chunks carry at least 6 bytes)`);
  }
  if (buf.length < 20 + length) return need(20 + length);
  const p = 20;
  const end = 20 + length;
  let body: ChunkBody;
  switch (type) {
    case Chunk.NONE:
      body = { chunk: 'none' };
      break;
    case Chunk.OFFSET_DATA:
      body = { chunk: 'offset-data', offset: buf.readBigUInt64BE(p), data: Buffer.from(buf.subarray(p + 8, end)) };
      break;
    case Chunk.OFFSET_HOLE: {
      const size = buf.readUInt32BE(p + 8);
      if (size === 0) fail('NBD_REPLY_TYPE_OFFSET_HOLE with hole size 0', base, buf, 0, end);
      body = { chunk: 'offset-hole', offset: buf.readBigUInt64BE(p), size };
      break;
    }
    case Chunk.BLOCK_STATUS: {
      const extents: Extent[] = [];
      for (let o = p + 4; o < end; o += 8) {
        const len = buf.readUInt32BE(o);
        if (len === 0) fail('block status extent of length 0 (extent lengths MUST be > 0)', base, buf, o, o + 8);
        extents.push({ length: len, flags: buf.readUInt32BE(o + 4) });
      }
      body = { chunk: 'block-status', contextId: buf.readUInt32BE(p), extents };
      break;
    }
    default: {
      // ERROR, ERROR_OFFSET, unknown error types: u32 error, u16 message length, message [, u64 offset]
      const error = buf.readUInt32BE(p);
      const msgLen = buf.readUInt16BE(p + 4);
      if (error === 0) fail(`${chunkName(type)} with error value 0`, base, buf, 0, end);
      const tail = type === Chunk.ERROR_OFFSET ? 8 : type === Chunk.ERROR ? 0 : -1;
      if (tail >= 0 ? 6 + msgLen + tail !== length : 6 + msgLen > length) {
        fail(`${chunkName(type)} message length ${msgLen} does not fit the chunk length ${length}`, base, buf, 0, end);
      }
      const message = str(buf, p + 6, p + 6 + msgLen, base, 'error message');
      if (type === Chunk.ERROR) body = { chunk: 'error', error, message };
      else if (type === Chunk.ERROR_OFFSET) body = { chunk: 'error', error, message, offset: buf.readBigUInt64BE(p + 6 + msgLen) };
      else body = { chunk: 'unknown-error', type, error, message };
    }
  }
  return { ok: true, msg: { kind: 'chunk', flags, type, cookie, done, body }, size: end };
}

// ---------------------------------------------------------------------------------------------
// Encoders (client -> server)

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0);
  return b;
}

export function encodeOption(option: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  b.set(data, 16);
  return b;
}

/** Data of NBD_OPT_INFO / NBD_OPT_GO: u32 name length, name, u16 count, u16 info types. */
export function encodeInfoRequest(name: string, infos: readonly number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  b.set(n, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

/** Data of NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT. */
export function encodeMetaRequest(exportName: string, queries: readonly string[]): Buffer {
  const n = Buffer.from(exportName, 'utf8');
  const qs = queries.map((q) => Buffer.from(q, 'utf8'));
  const b = Buffer.alloc(4 + n.length + 4 + qs.reduce((a, q) => a + 4 + q.length, 0));
  let o = b.writeUInt32BE(n.length, 0);
  b.set(n, o);
  o += n.length;
  o = b.writeUInt32BE(qs.length, o);
  for (const q of qs) {
    o = b.writeUInt32BE(q.length, o);
    b.set(q, o);
    o += q.length;
  }
  return b;
}

export interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
}

/** Compact request header (28 bytes), followed by the payload for WRITE. */
export function encodeRequest(req: Request, payload?: Uint8Array): Buffer {
  const b = Buffer.alloc(28 + (payload?.length ?? 0));
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(req.flags & 0xffff, 4);
  b.writeUInt16BE(req.type & 0xffff, 6);
  b.writeBigUInt64BE(BigInt.asUintN(64, req.cookie), 8);
  b.writeBigUInt64BE(BigInt.asUintN(64, req.offset), 16);
  b.writeUInt32BE(req.length >>> 0, 24);
  if (payload) b.set(payload, 28);
  return b;
}

// ---------------------------------------------------------------------------------------------
// One-line descriptions for the wire log.

export function describe(msg: ServerMessage): string {
  switch (msg.kind) {
    case 'greeting':
      return `greeting, handshake flags 0x${msg.handshakeFlags.toString(16)}`;
    case 'oldstyle':
      return `oldstyle greeting, size ${msg.size}`;
    case 'export-name-reply':
      return `export name reply: size ${msg.size}, flags 0x${msg.transmissionFlags.toString(16)}${msg.padded ? ', 124 zeroes' : ''}`;
    case 'option-reply': {
      const b = msg.body;
      const detail =
        b.reply === 'server' ? ` "${b.name}"`
        : b.reply === 'info' ? ` ${b.info}${b.info === 'export' ? ` size ${b.size} flags 0x${b.transmissionFlags.toString(16)}` : b.info === 'block-size' ? ` ${b.minimum}/${b.preferred}/${b.maximum}` : ''}`
        : b.reply === 'meta-context' ? ` id ${b.contextId} "${b.name}"`
        : b.reply === 'error' && b.message ? ` "${b.message}"`
        : '';
      return `${repName(msg.type)} to ${optName(msg.option)}${detail}`;
    }
    case 'simple-reply':
      return `simple reply cookie 0x${msg.cookie.toString(16)} error ${msg.error}${msg.data ? ` + ${msg.data.length} data bytes` : ''}`;
    case 'chunk': {
      const b = msg.body;
      const detail =
        b.chunk === 'offset-data' ? ` offset ${b.offset} +${b.data.length}`
        : b.chunk === 'offset-hole' ? ` offset ${b.offset} size ${b.size}`
        : b.chunk === 'block-status' ? ` ctx ${b.contextId}, ${b.extents.length} extent(s)`
        : b.chunk === 'error' || b.chunk === 'unknown-error' ? ` error ${b.error}${b.message ? ` "${b.message}"` : ''}`
        : '';
      return `${chunkName(msg.type)}${msg.done ? ' DONE' : ''} cookie 0x${msg.cookie.toString(16)}${detail}`;
    }
  }
}
