// The nbd suite's per-target environment (capabilities probed once from what the server
// advertises, docs/requirements/nbd.md §7) and the helpers cases share.
import { encodeMetaRequest, type OptionReply } from '../../nbd/codec.ts';
import { NbdConnection } from '../../nbd/client.ts';
import { Cmd, Errno, HS_NO_ZEROES, Info, Opt, TF, errnoName, flagNames, repName } from '../../nbd/constants.ts';
import { NbdClientError } from '../../nbd/errors.ts';
import type { Reply } from '../../nbd/reply.ts';
import type { TlsClientConfig } from '../../nbd/tls.ts';
import { greet, negotiate, type NegotiateOptions, type Session } from '../../nbd/session.ts';
import { encodeInfoRequest } from '../../nbd/codec.ts';
import type { CaseContext, CaseDef, Level } from '../../runner/model.ts';
import { expectedContent } from '../../targets/image.ts';
import type { ExportRef, RunningTarget } from '../../targets/types.ts';

export interface ExportCaps {
  ref: ExportRef;
  handshakeFlags: number;
  structured: boolean;
  size: bigint;
  transmissionFlags: number;
  blockSize?: { minimum: number; preferred: number; maximum: number };
  /** Whether LIST/SET_META_CONTEXT are implemented (not ERR_UNSUP). */
  meta: boolean;
  /** Contexts listed for a LIST_META_CONTEXT with zero queries. */
  contexts: string[];
}

export interface NbdEnv {
  target: RunningTarget;
  rw: ExportCaps;
  ro?: ExportCaps;
  /** Reply to NBD_OPT_EXTENDED_HEADERS on a fresh connection. */
  extendedHeaders: 'ack' | string;
  timeoutMs: number;
  /** Hands out a private, 64 KiB-aligned region for a case that writes. */
  scratch(length: number): number;
}

export type Ctx = CaseContext<NbdEnv>;
export type NbdCase = CaseDef<NbdEnv>;

async function probeExport(ref: ExportRef, timeoutMs: number): Promise<ExportCaps> {
  const conn = await NbdConnection.connect(ref.address, { timeoutMs, tls: ref.tls });
  try {
    const { handshakeFlags } = await greet(conn);
    const sr = await conn.option(Opt.STRUCTURED_REPLY);
    const structured = sr[sr.length - 1]?.body.reply === 'ack';
    let meta = false;
    const contexts: string[] = [];
    if (structured) {
      const lm = await conn.option(Opt.LIST_META_CONTEXT, encodeMetaRequest(ref.name, []));
      meta = lm[lm.length - 1]?.body.reply === 'ack';
      for (const m of lm) if (m.body.reply === 'meta-context') contexts.push(m.body.name);
    }
    const go = await conn.option(Opt.GO, encodeInfoRequest(ref.name, [Info.BLOCK_SIZE]));
    const last = go[go.length - 1];
    if (last?.body.reply !== 'ack') throw new NbdClientError('refused', `NBD_OPT_GO "${ref.name}" refused: ${last ? repName(last.type) : 'no reply'}`);
    let size = -1n;
    let transmissionFlags = 0;
    let blockSize: ExportCaps['blockSize'];
    for (const m of go) {
      if (m.body.reply !== 'info') continue;
      if (m.body.info === 'export') ({ size, transmissionFlags } = m.body);
      if (m.body.info === 'block-size') blockSize = { minimum: m.body.minimum, preferred: m.body.preferred, maximum: m.body.maximum };
    }
    return { ref, handshakeFlags, structured, size, transmissionFlags, ...(blockSize ? { blockSize } : {}), meta, contexts };
  } finally {
    conn.close();
  }
}

async function probeExtendedHeaders(ref: ExportRef, timeoutMs: number): Promise<string> {
  const conn = await NbdConnection.connect(ref.address, { timeoutMs, tls: ref.tls });
  try {
    await greet(conn);
    const r = await conn.option(Opt.EXTENDED_HEADERS);
    const last = r[r.length - 1];
    return last?.body.reply === 'ack' ? 'ack' : last ? repName(last.type) : 'no reply';
  } catch (e) {
    return `failed: ${(e as Error).message}`;
  } finally {
    conn.close();
  }
}

export async function setupNbd(target: RunningTarget, opts: { timeoutMs: number }): Promise<NbdEnv> {
  const rwRef = target.exports.rw;
  if (!rwRef) throw new Error("target has no 'rw' export");
  // The probe is not a conformance check: give a server that is slow to serve its first
  // connection (nbd-server forks one process per connection) plenty of time.
  const probeMs = Math.max(opts.timeoutMs * 4, 10_000);
  const rw = await probeExport(rwRef, probeMs);
  const roRef = target.exports.ro;
  const ro = roRef ? (roRef === rwRef ? rw : await probeExport(roRef, probeMs)) : undefined;
  const extendedHeaders = await probeExtendedHeaders(rwRef, probeMs);
  const area = target.image?.scratch ?? { offset: 0, length: Math.min(Number(rw.size), 16 << 20) };
  let next = area.offset;
  return {
    target,
    rw,
    ...(ro ? { ro } : {}),
    extendedHeaders,
    timeoutMs: opts.timeoutMs,
    scratch(length) {
      const at = next;
      next += Math.ceil(length / 65536) * 65536;
      if (next > area.offset + area.length) throw new Error('scratch area exhausted');
      return at;
    },
  };
}

export function describeNbdEnv(env: NbdEnv): Record<string, unknown> {
  const caps = (c: ExportCaps) => ({
    export: c.ref.name,
    handshakeFlags: `0x${c.handshakeFlags.toString(16)}`,
    structuredReplies: c.structured,
    size: Number(c.size),
    transmissionFlags: `0x${c.transmissionFlags.toString(16)} (${flagNames(c.transmissionFlags)})`,
    blockSize: c.blockSize ?? 'not sent',
    metaContexts: c.meta ? c.contexts : 'not supported',
  });
  return { rw: caps(env.rw), ...(env.ro && env.ro !== env.rw ? { ro: caps(env.ro) } : {}), extendedHeaders: env.extendedHeaders };
}

// ------------------------------------------------------------------------------------------
// Helpers for cases

export function nbdCase(def: Omit<NbdCase, 'id'> & { id: `nbd/${string}` }): NbdCase {
  return def;
}

/** A raw connection to an export, logged into the case's wire log and closed after the case. */
export async function connect(ctx: Ctx, role: 'rw' | 'ro' = 'rw'): Promise<NbdConnection> {
  return connectTo(ctx, role);
}

/** As connect(), to any role, with other credentials or none (`tls: undefined`: plaintext). */
export async function connectTo(ctx: Ctx, role: string, override?: { tls: TlsClientConfig | undefined }): Promise<NbdConnection> {
  const ref = ctx.target.exports[role];
  if (!ref) ctx.skip(`target has no '${role}' export`);
  const conn = await NbdConnection.connect(ref.address, { timeoutMs: ctx.timeoutMs, log: ctx.wire, random: ctx.random, tls: override ? override.tls : ref.tls });
  ctx.defer(() => conn.close());
  // The user's own export: nothing inside it is changed unless they allowed it.
  if (ctx.target.writesAllowed === false) conn.forbidWrites(ctx.env.rw.size, `${ctx.target.name} is the user's export; --allow-writes lets the cases that write in it run`);
  return conn;
}

/** A connection negotiated the ordinary way, ready for transmission. */
export async function session(ctx: Ctx, opts: Partial<NegotiateOptions> & { role?: 'rw' | 'ro' } = {}): Promise<{ conn: NbdConnection; s: Session }> {
  const role = opts.role ?? 'rw';
  const conn = await connect(ctx, role);
  const s = await negotiate(conn, { exportName: ctx.target.exports[role]!.name, ...opts });
  return { conn, s };
}

export function caps(ctx: Ctx, role: 'rw' | 'ro' = 'rw'): ExportCaps {
  const c = role === 'rw' ? ctx.env.rw : ctx.env.ro;
  if (!c) ctx.skip(`target has no '${role}' export`);
  return c;
}

export function requireStructured(ctx: Ctx): void {
  if (!ctx.env.rw.structured) ctx.skip('structured replies not supported (NBD_OPT_STRUCTURED_REPLY refused)');
}

export function requireMeta(ctx: Ctx, context = 'base:allocation'): void {
  requireStructured(ctx);
  if (!ctx.env.rw.meta) ctx.skip('meta contexts not supported (NBD_OPT_LIST_META_CONTEXT refused)');
  if (!ctx.env.rw.contexts.includes(context)) ctx.skip(`meta context ${context} not offered`);
}

export function requireFlag(ctx: Ctx, flag: number, role: 'rw' | 'ro' = 'rw'): void {
  const c = caps(ctx, role);
  if ((c.transmissionFlags & flag) === 0) ctx.skip(`${flagNames(flag)} not advertised`);
}

export function requireWritable(ctx: Ctx): void {
  if (ctx.env.rw.transmissionFlags & TF.READ_ONLY) ctx.skip("the 'rw' export is read-only");
}

/** The generated content of [offset, offset+length), or undefined for a target the runner did not create. */
export function expected(ctx: Ctx, offset: number, length: number): Buffer | undefined {
  return ctx.target.image ? expectedContent(ctx.target.image, offset, length) : undefined;
}

export const err = (n: number): string => errnoName(n);

/** Payload bytes from the case's seed (xorshift32), so a run with the same --seed sends the same data. */
export function seededBytes(ctx: Ctx, n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = (Math.floor(ctx.random() * 2 ** 32) | 1) >>> 0;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32BE(x >>> 0, i);
  }
  for (; i < n; i++) b[i] = Math.floor(ctx.random() * 256);
  return b;
}

export function describeReply(r: Reply): string {
  const how = r.structured ? 'structured' : 'simple';
  return r.error === 0 ? `success (${how} reply)` : `${errnoName(r.error)} (${how} reply${r.errorMessage ? `, "${r.errorMessage}"` : ''})`;
}

export function describeOption(replies: readonly OptionReply[]): string {
  return replies.map((r) => repName(r.type)).join(', ') || 'no reply';
}

export function finalOf(replies: readonly OptionReply[]): OptionReply | undefined {
  return replies[replies.length - 1];
}

/**
 * After a negative transmission case: the connection is still usable (checklist B44) - a valid
 * READ gets a correct reply.
 */
export async function usableAfter(ctx: Ctx, conn: NbdConnection, what: string, level: Level = 'MUST'): Promise<boolean> {
  try {
    const r = await conn.request({ type: Cmd.READ, offset: 0, length: 512 });
    const exp = expected(ctx, 0, 512);
    const ok = r.error === 0 && (!exp || (r.data?.equals(exp) ?? false));
    return ctx.check(level, ok, `the connection is still usable after ${what} (a READ of [0, 512) succeeds with the right data)`, ok ? undefined : describeReply(r));
  } catch (e) {
    return ctx.check(level, false, `the connection is still usable after ${what}`, (e as Error).message);
  }
}

/**
 * After a negative handshake case: the option stream is still in sync (checklist A5/A6) -
 * NBD_OPT_GO succeeds and a READ works.
 */
export async function optionsInSync(ctx: Ctx, conn: NbdConnection, what: string, structured = false): Promise<boolean> {
  const name = ctx.target.exports.rw!.name;
  try {
    const go = await conn.option(Opt.GO, encodeInfoRequest(name, []));
    const ok = finalOf(go)?.body.reply === 'ack';
    if (!ctx.must(ok, `the option stream is still in sync after ${what} (NBD_OPT_GO succeeds)`, describeOption(go))) return false;
    conn.enterTransmission(structured);
    return usableAfter(ctx, conn, what);
  } catch (e) {
    return ctx.must(false, `the option stream is still in sync after ${what} (NBD_OPT_GO succeeds)`, (e as Error).message);
  }
}

/** Sends an option and classifies the outcome: the replies, or the server closing, or silence. */
export async function optionOutcome(conn: NbdConnection, option: number, data?: Uint8Array): Promise<{ kind: 'replies'; replies: OptionReply[] } | { kind: 'closed' } | { kind: 'timeout' }> {
  try {
    conn.sendOption(option, data);
    return { kind: 'replies', replies: await conn.readOptionReplies(option) };
  } catch (e) {
    if (e instanceof NbdClientError && e.kind === 'closed') return { kind: 'closed' };
    if (e instanceof NbdClientError && e.kind === 'timeout') return { kind: 'timeout' };
    throw e;
  }
}

export { Cmd, Errno, HS_NO_ZEROES, Info, Opt, TF };
