// One fuzz input and its bytes. A case is plain JSON (so a finding can be saved and replayed) and
// encodes to the exact client->server byte stream by pure functions: no I/O here.
// Wire layouts: proto.md "Fixed newstyle negotiation" (options: IHAVEOPT, u32 option, u32 length,
// data) and "Request message" (u32 magic, u16 flags, u16 type, u64 cookie, u64 offset, u32 length).
import { IHAVEOPT, REQUEST_MAGIC } from '../nbd/constants.ts';

/** An option as sent: `lenDelta` makes the declared length lie about the data that follows. */
export interface OptionMsg {
  readonly kind: 'option';
  readonly opt: number;
  /** Option data, hex. */
  readonly data: string;
  /** Declared length = data length + lenDelta (clamped to u32). */
  readonly lenDelta?: number;
  /** Replace IHAVEOPT by this (hex, 8 bytes) - a bad option magic. */
  readonly magic?: string;
}

/** A transmission request as sent: `payload` bytes follow the header whatever `length` says. */
export interface RequestMsg {
  readonly kind: 'request';
  readonly type: number;
  readonly flags: number;
  readonly cookie: number;
  /** Decimal, u64. */
  readonly offset: string;
  readonly length: number;
  /** How many payload bytes are really sent (a WRITE that lies about its length). */
  readonly payload: number;
  /** A request magic other than 0x25609513. */
  readonly magic?: number;
}

/** Bytes sent as they are (hex): garbage between messages, a half header. */
export interface RawMsg {
  readonly kind: 'raw';
  readonly bytes: string;
}

export type HandshakeMsg = OptionMsg | RawMsg;
export type TransmissionMsg = RequestMsg | RawMsg;

export interface NbdCase {
  readonly proto: 'nbd';
  /** Which export role the case talks to ('rw' or 'ro'; a URI target has one export). */
  readonly role: 'rw' | 'ro';
  /** Client flags (u32): FIXED_NEWSTYLE | NO_ZEROES normally; anything for mutation. */
  readonly clientFlags: number;
  readonly handshake: readonly HandshakeMsg[];
  readonly requests: readonly TransmissionMsg[];
  /** Send only the first `cut` bytes of the whole client stream, then half-close (a close at
   * every byte). Absent: everything is sent, then half-close. */
  readonly cut?: number;
}

export interface QmpCase {
  readonly proto: 'qmp';
  /** Negotiate capabilities first (otherwise commands come before qmp_capabilities). */
  readonly capabilities: boolean;
  /** Texts sent one after another, each followed by a newline unless `joined`. */
  readonly texts: readonly string[];
  readonly joined: boolean;
}

export type FuzzCase = NbdCase | QmpCase;

const U32 = 0xffffffff;

export function encodeOptionMsg(m: OptionMsg): Buffer {
  const data = Buffer.from(m.data, 'hex');
  const b = Buffer.alloc(16 + data.length);
  if (m.magic !== undefined) Buffer.from(m.magic.padEnd(16, '0').slice(0, 16), 'hex').copy(b, 0);
  else b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(m.opt >>> 0, 8);
  b.writeUInt32BE(Math.max(0, Math.min(U32, data.length + (m.lenDelta ?? 0))), 12);
  data.copy(b, 16);
  return b;
}

/** Payload bytes: a pattern that names the request, so a misplaced payload is recognisable. */
function payloadBytes(n: number, cookie: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  b.fill((cookie * 37 + 0x5a) & 0xff);
  return b;
}

export function encodeRequestMsg(m: RequestMsg): Buffer {
  const b = Buffer.alloc(28 + m.payload);
  b.writeUInt32BE((m.magic ?? REQUEST_MAGIC) >>> 0, 0);
  b.writeUInt16BE(m.flags & 0xffff, 4);
  b.writeUInt16BE(m.type & 0xffff, 6);
  b.writeBigUInt64BE(BigInt.asUintN(64, BigInt(m.cookie)), 8);
  b.writeBigUInt64BE(BigInt.asUintN(64, BigInt(m.offset)), 16);
  b.writeUInt32BE(m.length >>> 0, 24);
  if (m.payload > 0) payloadBytes(m.payload, m.cookie).copy(b, 28);
  return b;
}

export function encodeMsg(m: HandshakeMsg | TransmissionMsg): Buffer {
  switch (m.kind) {
    case 'option':
      return encodeOptionMsg(m);
    case 'request':
      return encodeRequestMsg(m);
    case 'raw':
      return Buffer.from(m.bytes, 'hex');
  }
}

/** The client stream in the pieces the driver sends (it waits for the server between handshake
 * pieces, as the session model orders options one at a time): client flags, each handshake
 * message, then the whole request pipeline. `cut` trims the stream; pieces past it are dropped. */
export function encodeNbdCase(c: NbdCase): Buffer[] {
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(c.clientFlags >>> 0);
  const pieces = [flags, ...c.handshake.map(encodeMsg), Buffer.concat(c.requests.map(encodeMsg))];
  if (c.cut === undefined) return pieces;
  const out: Buffer[] = [];
  let left = c.cut;
  for (const p of pieces) {
    if (left <= 0) break;
    out.push(p.length <= left ? p : p.subarray(0, left));
    left -= p.length;
  }
  return out;
}

/** Messages in a case: what the campaign counts as inputs (each option, request, raw piece and
 * QMP text is one input; the client flags are part of the connection). */
export function inputCount(c: FuzzCase): number {
  return c.proto === 'nbd' ? c.handshake.length + c.requests.length : c.texts.length;
}

// ---------------------------------------------------------------------------------------------
// Replay files: the case plus where it was found. Checked field by field so a hand-edited file
// fails with the name of what is wrong.

export interface ReplayFile {
  readonly fleeceFuzz: 1;
  readonly target: string;
  readonly seed?: number;
  readonly finding?: { readonly kind: string; readonly message: string };
  readonly case: FuzzCase;
}

export class CaseError extends Error {
  override readonly name = 'CaseError';
}

function expect(cond: boolean, where: string, what: string): void {
  if (!cond) throw new CaseError(`${where}: ${what}`);
}

const isInt = (v: unknown, lo: number, hi: number): boolean => typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi;
const isHex = (v: unknown): boolean => typeof v === 'string' && /^([0-9a-f]{2})*$/i.test(v);

function checkMsg(m: unknown, where: string): void {
  expect(typeof m === 'object' && m !== null, where, 'must be an object');
  const o = m as Record<string, unknown>;
  switch (o.kind) {
    case 'option':
      expect(isInt(o.opt, 0, U32), `${where}.opt`, `must be a u32, got ${JSON.stringify(o.opt)}`);
      expect(isHex(o.data), `${where}.data`, 'must be a hex string');
      expect(o.lenDelta === undefined || isInt(o.lenDelta, -U32, U32), `${where}.lenDelta`, 'must be an integer');
      expect(o.magic === undefined || (isHex(o.magic) && (o.magic as string).length === 16), `${where}.magic`, 'must be 16 hex digits');
      break;
    case 'request':
      expect(isInt(o.type, 0, 0xffff), `${where}.type`, 'must be a u16');
      expect(isInt(o.flags, 0, 0xffff), `${where}.flags`, 'must be a u16');
      expect(isInt(o.cookie, 0, Number.MAX_SAFE_INTEGER), `${where}.cookie`, 'must be a non-negative integer');
      expect(typeof o.offset === 'string' && /^\d+$/.test(o.offset) && BigInt(o.offset) < 1n << 64n, `${where}.offset`, 'must be a decimal u64 string');
      expect(isInt(o.length, 0, U32), `${where}.length`, 'must be a u32');
      expect(isInt(o.payload, 0, 64 << 20), `${where}.payload`, 'must be a byte count up to 64 MiB');
      expect(o.magic === undefined || isInt(o.magic, 0, U32), `${where}.magic`, 'must be a u32');
      break;
    case 'raw':
      expect(isHex(o.bytes), `${where}.bytes`, 'must be a hex string');
      break;
    default:
      throw new CaseError(`${where}.kind: must be 'option', 'request' or 'raw', got ${JSON.stringify(o.kind)}`);
  }
}

export function checkCase(c: unknown, where = 'case'): FuzzCase {
  expect(typeof c === 'object' && c !== null, where, 'must be an object');
  const o = c as Record<string, unknown>;
  if (o.proto === 'nbd') {
    expect(o.role === 'rw' || o.role === 'ro', `${where}.role`, `must be 'rw' or 'ro', got ${JSON.stringify(o.role)}`);
    expect(isInt(o.clientFlags, 0, U32), `${where}.clientFlags`, 'must be a u32');
    expect(Array.isArray(o.handshake), `${where}.handshake`, 'must be an array');
    expect(Array.isArray(o.requests), `${where}.requests`, 'must be an array');
    (o.handshake as unknown[]).forEach((m, i) => checkMsg(m, `${where}.handshake[${i}]`));
    (o.requests as unknown[]).forEach((m, i) => checkMsg(m, `${where}.requests[${i}]`));
    expect(o.cut === undefined || isInt(o.cut, 0, Number.MAX_SAFE_INTEGER), `${where}.cut`, 'must be a byte count');
  } else if (o.proto === 'qmp') {
    expect(typeof o.capabilities === 'boolean', `${where}.capabilities`, 'must be a boolean');
    expect(typeof o.joined === 'boolean', `${where}.joined`, 'must be a boolean');
    expect(Array.isArray(o.texts) && (o.texts as unknown[]).every((t) => typeof t === 'string'), `${where}.texts`, 'must be an array of strings');
  } else {
    throw new CaseError(`${where}.proto: must be 'nbd' or 'qmp', got ${JSON.stringify(o.proto)}`);
  }
  return c as FuzzCase;
}

export function parseReplayFile(text: string, file: string): ReplayFile {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (e) {
    throw new CaseError(`${file}: not JSON: ${(e as Error).message}`);
  }
  expect(typeof j === 'object' && j !== null, file, 'must hold a JSON object');
  const o = j as Record<string, unknown>;
  expect(o.fleeceFuzz === 1, `${file}: fleeceFuzz`, 'must be 1 (a file written by fleece fuzz)');
  expect(typeof o.target === 'string', `${file}: target`, 'must be a string');
  checkCase(o.case, `${file}: case`);
  return j as ReplayFile;
}
