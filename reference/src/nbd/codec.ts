// The NBD wire codec: pure functions over buffers, no I/O (in the style of node-postgres'
// pg-protocol: one incremental Parser that turns bytes into client messages, one encoder per
// server message). Layout facts: docs/requirements/nbd.md §1.2-1.6; doc/proto.md "Option haggling",
// "Transmission phase", "Structured reply chunk message types".
import {
  CHUNK,
  CHUNK_FLAG_DONE,
  CMD,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO,
  MAX_OPTION_PAYLOAD,
  MAX_PAYLOAD,
  MAX_STRING,
  NBDMAGIC,
  OPTION_REPLY_MAGIC,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
} from './constants.ts';

/** The NBD layer's one error class: what was wrong, where in the stream, and the bytes. */
export class NbdProtocolError extends Error {
  override readonly name = 'NbdProtocolError';
  constructor(
    message: string,
    /** Byte offset of the offending field in the client's stream. */
    readonly streamOffset: number,
    /** The offending bytes (at most 64 are kept). */
    readonly bytes: Buffer = Buffer.alloc(0),
  ) {
    super(`${message} (at stream offset ${streamOffset}${bytes.length ? `, bytes ${bytes.subarray(0, 64).toString('hex')}` : ''})`);
  }
}

// ------------------------------------------------------------------------------------------
// Client → server: the incremental parser

export type Phase = 'client-flags' | 'options' | 'transmission' | 'closed';

export interface Request {
  readonly kind: 'request';
  readonly flags: number;
  readonly type: number;
  /** Opaque 8 bytes echoed in every reply (§1.6 "cookies are opaque"). */
  readonly cookie: Buffer;
  /** u64 as a number; values above 2^53 lose precision but stay far past any export's end. */
  readonly offset: number;
  readonly length: number;
  /** WRITE payload. */
  readonly data?: Buffer;
  /** Where the request header started in the stream, for error context. */
  readonly streamOffset: number;
}

export type ClientMessage =
  | { readonly kind: 'client-flags'; readonly flags: number; readonly streamOffset: number }
  | {
      readonly kind: 'option';
      readonly option: number;
      readonly data: Buffer;
      readonly streamOffset: number;
    }
  /** An option whose payload exceeded MAX_OPTION_PAYLOAD: its bytes were skipped, not buffered. */
  | {
      readonly kind: 'option-too-big';
      readonly option: number;
      readonly length: number;
      readonly streamOffset: number;
    }
  | Request;

/**
 * Bytes received but not yet parsed, kept as the socket delivered them: appending never copies,
 * so a frame that arrives in many pieces costs one copy of each byte, not one per piece.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes of chunks[0] already taken
  private size = 0;

  get length(): number {
    return this.size;
  }

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.size += b.length;
  }

  /** The first `n` bytes (n <= length) as one buffer, without taking them. A view where they lie
   * in one chunk; a copy of just those `n` where they span chunks (headers are 4-28 bytes). */
  peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const out = Buffer.allocUnsafe(n);
    this.copyTo(out, 0, n, false);
    return out;
  }

  /** Takes `n` bytes (n <= length) into a buffer of their own. */
  take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    this.copyTo(out, 0, n, true);
    return out;
  }

  /** Copies up to `n` bytes to `target` at `at`, taking them; returns how many were copied. */
  takeInto(target: Buffer, at: number, n: number): number {
    const k = Math.min(n, this.size);
    this.copyTo(target, at, k, true);
    return k;
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    const k = Math.min(n, this.size);
    let left = k;
    while (left > 0) {
      const c = this.chunks[0]!;
      const here = Math.min(c.length - this.head, left);
      left -= here;
      this.advance(here);
    }
    return k;
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.size = 0;
  }

  private copyTo(target: Buffer, at: number, n: number, consume: boolean): void {
    let i = 0;
    let off = this.head;
    let done = 0;
    while (done < n) {
      const c = this.chunks[i]!;
      const here = Math.min(c.length - off, n - done);
      c.copy(target, at + done, off, off + here);
      done += here;
      if (consume) {
        this.advance(here);
        off = this.head;
      } else if (off + here === c.length) {
        i++;
        off = 0;
      } else off += here;
    }
  }

  private advance(n: number): void {
    this.head += n;
    this.size -= n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}

/** A WRITE whose header has been parsed and whose payload is still arriving into `data`. */
interface PendingWrite {
  readonly req: Request & { readonly data: Buffer };
  filled: number;
}

/**
 * Turns a byte stream into client messages. Feed it whatever the socket delivers (partial
 * frames, many pipelined frames in one chunk); it calls `emit` once per complete message.
 * The session switches the phase from inside `emit` (after GO, transmission requests may follow
 * in the same chunk), which is why the phase is re-read for every message.
 *
 * Cost is linear in the bytes received: pieces are queued, not concatenated, and a WRITE payload
 * is copied once, straight into a buffer of its own length as its pieces arrive.
 */
export class Parser {
  phase: Phase = 'client-flags';
  /** Where a WRITE payload's buffer comes from (the session lends pooled ones). */
  constructor(private readonly allocPayload: (bytes: number) => Buffer = (n) => Buffer.allocUnsafe(n)) {}
  /** Set by the session to stop taking messages (flow control): the rest stays buffered until the
   * next parse() call after it is cleared. */
  held = false;
  private readonly queue = new ByteQueue();
  private consumed = 0; // stream offset of the queue's first byte
  private skipLeft = 0; // bytes of an oversized option still to discard
  private pendingTooBig: { option: number; length: number; streamOffset: number } | undefined;
  private pendingWrite: PendingWrite | undefined;

  /** Total bytes taken from the stream so far. */
  get streamOffset(): number {
    return this.consumed;
  }
  /** Bytes received but not yet emitted as a message (a partial frame, or frames held back). */
  get buffered(): number {
    return this.queue.length + (this.pendingWrite?.filled ?? 0);
  }

  /** Takes every byte received but not yet parsed (none may be a partial WRITE payload): the
   * session drops the plaintext a client pipelined after NBD_OPT_STARTTLS (proto.md "TLS
   * support": after the ACK all data is TLS). */
  takeBuffered(): Buffer {
    const out = this.queue.take(this.queue.length);
    this.consumed += out.length;
    this.skipLeft = 0;
    this.pendingTooBig = undefined;
    return out;
  }

  parse(chunk: Buffer, emit: (msg: ClientMessage) => void): void {
    if (this.phase === 'closed') return;
    this.queue.push(chunk);
    const q = this.queue;
    for (;;) {
      if (this.skipLeft > 0) {
        const n = q.skip(this.skipLeft);
        this.skipLeft -= n;
        this.consumed += n;
        if (this.skipLeft > 0) return;
        const m = this.pendingTooBig!;
        this.pendingTooBig = undefined;
        emit({ kind: 'option-too-big', ...m });
        continue;
      }
      const pw = this.pendingWrite;
      if (pw) {
        const n = q.takeInto(pw.req.data, pw.filled, pw.req.length - pw.filled);
        pw.filled += n;
        this.consumed += n;
        if (pw.filled < pw.req.length || this.held) return;
        this.pendingWrite = undefined;
        emit(pw.req);
        continue;
      }
      if (this.held) return;
      const phase = this.phase as Phase;
      const avail = q.length;
      const at = this.consumed;
      if (phase === 'closed') {
        q.clear();
        return;
      }
      if (phase === 'client-flags') {
        if (avail < 4) return;
        const flags = q.peek(4).readUInt32BE(0);
        this.take(4);
        emit({ kind: 'client-flags', flags, streamOffset: at });
        continue;
      }
      if (phase === 'options') {
        if (avail < 16) return;
        const h = q.peek(16);
        const magic = h.readBigUInt64BE(0);
        if (magic !== IHAVEOPT) {
          this.phase = 'closed';
          throw new NbdProtocolError('option request without IHAVEOPT magic', at, Buffer.from(h));
        }
        const option = h.readUInt32BE(8);
        const length = h.readUInt32BE(12);
        if (length > MAX_OPTION_PAYLOAD) {
          // Drain rather than buffer: the length lets us stay in sync without holding the bytes
          // (docs/requirements/nbd.md §1.2 "the length lets a server skip any option it does not know").
          this.take(16);
          this.skipLeft = length;
          this.pendingTooBig = { option, length, streamOffset: at };
          continue;
        }
        if (avail < 16 + length) return;
        this.take(16);
        const data = q.take(length);
        this.consumed += length;
        emit({ kind: 'option', option, data, streamOffset: at });
        continue;
      }
      // transmission
      if (avail < 28) return;
      const h = q.peek(28);
      const magic = h.readUInt32BE(0);
      if (magic !== REQUEST_MAGIC) {
        this.phase = 'closed';
        throw new NbdProtocolError('request without NBD_REQUEST_MAGIC', at, Buffer.from(h));
      }
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const length = h.readUInt32BE(24);
      if (type === CMD.WRITE && length > MAX_PAYLOAD) {
        // §1.8: a payload above 32 MiB MAY be treated as a denial of service; we cannot skip
        // it without reading it, so we hard-disconnect (as QEMU does).
        this.phase = 'closed';
        throw new NbdProtocolError(`WRITE payload of ${length} bytes exceeds the ${MAX_PAYLOAD}-byte cap`, at, Buffer.from(h));
      }
      const req: Request = {
        kind: 'request',
        flags,
        type,
        cookie: Buffer.from(h.subarray(8, 16)),
        offset: h.readUInt32BE(16) * 0x1_0000_0000 + h.readUInt32BE(20),
        length,
        streamOffset: at,
      };
      this.take(28);
      if (type === CMD.WRITE) {
        // The payload lands in place as it arrives; the request is emitted once it is whole.
        (req as { data?: Buffer }).data = this.allocPayload(length);
        this.pendingWrite = { req: req as PendingWrite['req'], filled: 0 };
        continue;
      }
      emit(req);
    }
  }

  private take(n: number): void {
    this.queue.skip(n);
    this.consumed += n;
  }
}

// ------------------------------------------------------------------------------------------
// Option payload decoders (throw NbdProtocolError → the session answers ERR_INVALID)

export interface InfoRequest {
  readonly name: string;
  readonly infos: number[];
}

/** NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 n, n × u16 (§1.3). */
export function decodeInfoRequest(data: Buffer, streamOffset = 0): InfoRequest {
  if (data.length < 6) throw new NbdProtocolError(`INFO/GO payload of ${data.length} bytes is shorter than 6`, streamOffset, data);
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) {
    throw new NbdProtocolError(`INFO/GO name length ${nameLen} exceeds the payload (${data.length} bytes)`, streamOffset, data);
  }
  if (nameLen > MAX_STRING) throw new NbdProtocolError(`export name of ${nameLen} bytes exceeds ${MAX_STRING}`, streamOffset, data);
  const name = data.toString('utf8', 4, 4 + nameLen);
  const n = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * n) {
    throw new NbdProtocolError(`INFO/GO with ${n} info requests needs ${6 + nameLen + 2 * n} bytes, got ${data.length}`, streamOffset, data);
  }
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { name, infos };
}

export interface MetaContextRequest {
  readonly exportName: string;
  readonly queries: string[];
}

/** LIST/SET_META_CONTEXT data: u32 len, export name, u32 n, n × (u32 len, query) (§1.3). */
export function decodeMetaContextRequest(data: Buffer, streamOffset = 0): MetaContextRequest {
  const fail = (why: string): never => {
    throw new NbdProtocolError(`meta context request: ${why}`, streamOffset, data);
  };
  if (data.length < 8) fail(`payload of ${data.length} bytes is shorter than 8`);
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8) fail(`export name length ${nameLen} past the payload`);
  if (nameLen > MAX_STRING) fail(`export name of ${nameLen} bytes exceeds ${MAX_STRING}`);
  const exportName = data.toString('utf8', 4, 4 + nameLen);
  let p = 4 + nameLen;
  const n = data.readUInt32BE(p);
  p += 4;
  const queries: string[] = [];
  for (let i = 0; i < n; i++) {
    if (p + 4 > data.length) fail(`query ${i} of ${n} is missing`);
    const len = data.readUInt32BE(p);
    p += 4;
    if (len > data.length - p) fail(`query ${i} length ${len} past the payload`);
    if (len > MAX_STRING) fail(`query ${i} of ${len} bytes exceeds ${MAX_STRING}`);
    queries.push(data.toString('utf8', p, p + len));
    p += len;
  }
  if (p !== data.length) fail(`${data.length - p} trailing bytes after ${n} queries`);
  return { exportName, queries };
}

// ------------------------------------------------------------------------------------------
// Server → client encoders

export function encodeGreeting(): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

/** NBD_REP_SERVER data: u32 name length, name, description (§1.3 LIST). */
export function encodeServerEntry(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function encodeInfoExport(size: number, tflags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(INFO.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(tflags, 10);
  return b;
}

export function encodeInfoString(type: number, s: string): Buffer {
  const v = Buffer.from(s, 'utf8');
  const b = Buffer.alloc(2 + v.length);
  b.writeUInt16BE(type, 0);
  v.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(INFO.BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

/** NBD_REP_META_CONTEXT data: u32 context id, name. */
export function encodeMetaContext(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(id, 0);
  n.copy(b, 4);
  return b;
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags, then 124 zeroes unless NO_ZEROES (§1.2). */
export function encodeExportNameReply(size: number, tflags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : 124));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(tflags, 8);
  return b;
}

export function encodeSimpleReply(cookie: Buffer, error: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8);
  return b;
}

export function encodeChunkHeader(cookie: Buffer, type: number, done: boolean, length: number, extra = 0): Buffer {
  const b = Buffer.alloc(20 + extra);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(done ? CHUNK_FLAG_DONE : 0, 4);
  b.writeUInt16BE(type, 6);
  cookie.copy(b, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

/** NBD_REPLY_TYPE_NONE: length 0, always DONE. */
export function encodeNoneChunk(cookie: Buffer): Buffer {
  return encodeChunkHeader(cookie, CHUNK.NONE, true, 0);
}

/** Header + u64 offset of an OFFSET_DATA chunk; the data follows separately (no copy). */
export function encodeOffsetDataHeader(cookie: Buffer, offset: number, dataLength: number, done: boolean): Buffer {
  const b = encodeChunkHeader(cookie, CHUNK.OFFSET_DATA, done, 8 + dataLength, 8);
  b.writeBigUInt64BE(BigInt(offset), 20);
  return b;
}

export function encodeOffsetHole(cookie: Buffer, offset: number, size: number, done: boolean): Buffer {
  const b = encodeChunkHeader(cookie, CHUNK.OFFSET_HOLE, done, 12, 12);
  b.writeBigUInt64BE(BigInt(offset), 20);
  b.writeUInt32BE(size, 28);
  return b;
}

/** NBD_REPLY_TYPE_ERROR: u32 error, u16 message length, message (§1.6). Always DONE here. */
export function encodeErrorChunk(cookie: Buffer, error: number, message: string): Buffer {
  let m = Buffer.from(message, 'utf8');
  if (m.length > MAX_STRING) m = m.subarray(0, MAX_STRING);
  const b = encodeChunkHeader(cookie, CHUNK.ERROR, true, 6 + m.length, 6 + m.length);
  b.writeUInt32BE(error, 20);
  b.writeUInt16BE(m.length, 24);
  m.copy(b, 26);
  return b;
}

export interface StatusExtent {
  readonly length: number;
  readonly flags: number;
}

export function encodeBlockStatusChunk(cookie: Buffer, contextId: number, extents: readonly StatusExtent[], done: boolean): Buffer {
  const len = 4 + 8 * extents.length;
  const b = encodeChunkHeader(cookie, CHUNK.BLOCK_STATUS, done, len, len);
  b.writeUInt32BE(contextId, 20);
  let p = 24;
  for (const e of extents) {
    b.writeUInt32BE(e.length, p);
    b.writeUInt32BE(e.flags, p + 4);
    p += 8;
  }
  return b;
}

export function hex(b: Buffer, max = 64): string {
  return b.subarray(0, max).toString('hex') + (b.length > max ? '…' : '');
}
