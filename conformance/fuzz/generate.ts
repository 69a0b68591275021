// Grammar-aware generators (fast-check arbitraries) for fuzz cases. They build well-formed
// messages and then mutate them along the grammar's seams - lengths that lie, counts that do not
// match, values at and past every bound - so most inputs get past the first check a server makes.
// Everything here is pure; fast-check shrinks a failing case towards the well-formed one.
// Grammar: proto.md "Option types" (INFO/GO: u32 name length, name, u16 count, count u16s;
// META_CONTEXT: u32 name length, name, u32 count, count x (u32 length, query)), "Request types",
// "Command flags"; QMP: qmp-spec "Commands" (execute, arguments, id).
import fc from 'fast-check';
import { CF as CmdFlag, CF_FIXED_NEWSTYLE, CF_NO_ZEROES, Cmd, Opt } from '../nbd/constants.ts';
import type { HandshakeMsg, NbdCase, OptionMsg, QmpCase, RawMsg, RequestMsg, TransmissionMsg } from './case.ts';

export interface GenContext {
  /** Export names by role. */
  readonly exports: { readonly rw: string; readonly ro: string };
  /** Export size in bytes (learnt from the target before the campaign). */
  readonly size: number;
  /** Where well-placed writes go, so the image's known data regions stay intact. */
  readonly scratch: { readonly offset: number; readonly length: number };
  /** Longest request pipeline per connection. */
  readonly maxRequests: number;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const bytes = (maxLength: number) => fc.uint8Array({ maxLength });

/** A length that is right most of the time, and otherwise off by a little or by a lot. */
const lenDelta = fc.oneof(
  { weight: 12, arbitrary: fc.constant(0) },
  { weight: 3, arbitrary: fc.integer({ min: -8, max: 8 }) },
  { weight: 1, arbitrary: fc.constantFrom(-0x10000, 0x10000, 0x7fffffff, 0xffffffff) },
);

function nameArb(ctx: GenContext) {
  return fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(ctx.exports.rw, ctx.exports.ro) },
    { weight: 2, arbitrary: fc.string({ maxLength: 12 }) },
    { weight: 1, arbitrary: fc.constantFrom('', 'x'.repeat(4096), 'x'.repeat(4097), '\u0000', '\uffff\u00e9') },
  );
}

/** INFO/GO data with a name-length and a request count that may lie. */
function infoData(ctx: GenContext) {
  return fc
    .record({
      name: nameArb(ctx),
      nameLenDelta: lenDelta,
      infos: fc.array(fc.oneof(fc.constantFrom(0, 1, 2, 3), fc.integer({ min: 0, max: 0xffff })), { maxLength: 6 }),
      countDelta: lenDelta,
    })
    .map(({ name, nameLenDelta, infos, countDelta }) => {
      const n = Buffer.from(name, 'utf8');
      const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
      b.writeUInt32BE(Math.max(0, Math.min(0xffffffff, n.length + nameLenDelta)), 0);
      n.copy(b, 4);
      b.writeUInt16BE(Math.max(0, Math.min(0xffff, infos.length + countDelta)), 4 + n.length);
      infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
      return b;
    });
}

const QUERIES = ['base:allocation', 'base:', 'qemu:allocation-depth', 'qemu:dirty-bitmap:', 'qemu:', 'x-nonexist:foo', 'nocolon', '', 'base:allocation\u0000'];

/** LIST/SET_META_CONTEXT data with lying name length, query count and query lengths. */
function metaData(ctx: GenContext) {
  return fc
    .record({
      name: nameArb(ctx),
      nameLenDelta: lenDelta,
      queries: fc.array(fc.oneof(fc.constantFrom(...QUERIES), fc.string({ maxLength: 20 })), { maxLength: 4 }),
      countDelta: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(1, -1, 1000, 0x7fffffff, 0xffffffff) }),
      qLenDelta: lenDelta,
    })
    .map(({ name, nameLenDelta, queries, countDelta, qLenDelta }) => {
      const n = Buffer.from(name, 'utf8');
      const qs = queries.map((q) => Buffer.from(q, 'utf8'));
      const parts: Buffer[] = [];
      const u32 = (v: number) => {
        const b = Buffer.alloc(4);
        b.writeUInt32BE(Math.max(0, Math.min(0xffffffff, v)) >>> 0);
        return b;
      };
      parts.push(u32(n.length + nameLenDelta), n, u32(qs.length + countDelta));
      qs.forEach((q, i) => parts.push(u32(q.length + (i === 0 ? qLenDelta : 0)), q));
      return Buffer.concat(parts);
    });
}

const option = (opt: number, data: fc.Arbitrary<Uint8Array>): fc.Arbitrary<OptionMsg> =>
  fc.record({ data, lenDelta, badMagic: fc.oneof({ weight: 30, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }) }).map(({ data, lenDelta, badMagic }) => ({
    kind: 'option' as const,
    opt,
    data: hex(data),
    ...(lenDelta !== 0 ? { lenDelta } : {}),
    ...(badMagic ? { magic: '49484156454f5055' } : {}),
  }));

/** Any option, well-formed or not: every option type of proto.md plus unknown ones. */
export function optionArb(ctx: GenContext): fc.Arbitrary<HandshakeMsg> {
  const empty = fc.oneof({ weight: 6, arbitrary: fc.constant(new Uint8Array(0)) }, { weight: 1, arbitrary: bytes(16) });
  return fc.oneof(
    { weight: 3, arbitrary: option(Opt.STRUCTURED_REPLY, empty) },
    { weight: 2, arbitrary: option(Opt.LIST, empty) },
    { weight: 3, arbitrary: option(Opt.INFO, infoData(ctx)) },
    { weight: 1, arbitrary: option(Opt.GO, infoData(ctx)) },
    { weight: 2, arbitrary: option(Opt.LIST_META_CONTEXT, metaData(ctx)) },
    { weight: 2, arbitrary: option(Opt.SET_META_CONTEXT, metaData(ctx)) },
    { weight: 1, arbitrary: option(Opt.STARTTLS, empty) },
    { weight: 1, arbitrary: option(Opt.EXTENDED_HEADERS, empty) },
    { weight: 1, arbitrary: option(Opt.PEEK_EXPORT, empty) },
    { weight: 1, arbitrary: option(Opt.ABORT, empty) },
    { weight: 1, arbitrary: fc.integer({ min: 12, max: 0xffffffff }).chain((opt) => option(opt, bytes(32))) },
    { weight: 1, arbitrary: bytes(24).map((b): RawMsg => ({ kind: 'raw', bytes: hex(b) })) },
  );
}

/** How the handshake ends: GO (usually well-formed), EXPORT_NAME, ABORT, or not at all. */
function enterArb(ctx: GenContext, role: 'rw' | 'ro'): fc.Arbitrary<HandshakeMsg[]> {
  const name = role === 'rw' ? ctx.exports.rw : ctx.exports.ro;
  const goData = (infos: number[]) => {
    const n = Buffer.from(name, 'utf8');
    const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
    b.writeUInt32BE(n.length, 0);
    n.copy(b, 4);
    b.writeUInt16BE(infos.length, 4 + n.length);
    infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
    return b;
  };
  return fc.oneof(
    { weight: 16, arbitrary: fc.subarray([3, 1, 2, 0]).map((infos): HandshakeMsg[] => [{ kind: 'option', opt: Opt.GO, data: hex(goData(infos)) }]) },
    { weight: 2, arbitrary: fc.constant<HandshakeMsg[]>([{ kind: 'option', opt: Opt.EXPORT_NAME, data: hex(Buffer.from(name, 'utf8')) }]) },
    { weight: 1, arbitrary: option(Opt.EXPORT_NAME, nameArb(ctx).map((s) => Buffer.from(s, 'utf8'))).map((m) => [m]) },
    { weight: 1, arbitrary: option(Opt.GO, infoData(ctx)).map((m) => [m]) },
    { weight: 1, arbitrary: fc.constant<HandshakeMsg[]>([]) },
  );
}

const MiB = 1 << 20;

/** Offsets at and past every bound of the export, and ordinary ones in the scratch area. */
function offsetArb(ctx: GenContext): fc.Arbitrary<bigint> {
  const s = BigInt(ctx.size);
  return fc.oneof(
    { weight: 10, arbitrary: fc.integer({ min: 0, max: Math.floor(ctx.scratch.length / 512) - 1 }).map((k) => BigInt(ctx.scratch.offset + k * 512)) },
    { weight: 2, arbitrary: fc.integer({ min: 0, max: ctx.scratch.length - 1 }).map((k) => BigInt(ctx.scratch.offset + k)) },
    { weight: 3, arbitrary: fc.constantFrom(s - 512n, s - 1n, s, s + 1n, s + 512n, 0n, 1n << 31n, 1n << 32n, (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 512n, (1n << 64n) - 1n) },
  );
}

function lengthArb(): fc.Arbitrary<number> {
  return fc.oneof(
    { weight: 10, arbitrary: fc.integer({ min: 1, max: 16 }).map((k) => k * 512) },
    { weight: 3, arbitrary: fc.integer({ min: 0, max: 70_000 }) },
    { weight: 2, arbitrary: fc.constantFrom(0, 1, 4095, 4096, 65536, MiB, 32 * MiB - 1, 32 * MiB, 32 * MiB + 1, 0x7fffffff, 0xffffffff) },
  );
}

const KNOWN_FLAGS = [0, 0, 0, CmdFlag.FUA, CmdFlag.NO_HOLE, CmdFlag.DF, CmdFlag.REQ_ONE, CmdFlag.FAST_ZERO, CmdFlag.FAST_ZERO | CmdFlag.NO_HOLE, CmdFlag.PAYLOAD_LEN];

/** Longest WRITE payload really sent: a declared length above it is sent truncated (a lie). */
const MAX_SENT = 256 * 1024;

function requestArb(ctx: GenContext): fc.Arbitrary<Omit<RequestMsg, 'cookie'>> {
  return fc
    .record({
      type: fc.oneof(
        { weight: 6, arbitrary: fc.constantFrom(Cmd.READ, Cmd.WRITE) },
        { weight: 4, arbitrary: fc.constantFrom(Cmd.FLUSH, Cmd.TRIM, Cmd.CACHE, Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS) },
        { weight: 1, arbitrary: fc.constantFrom(Cmd.DISC, Cmd.RESIZE) },
        { weight: 1, arbitrary: fc.integer({ min: 9, max: 0xffff }) },
      ),
      flags: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...KNOWN_FLAGS) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
      offset: offsetArb(ctx),
      length: lengthArb(),
      lie: fc.oneof({ weight: 14, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -600, max: 600 }) }),
      magic: fc.oneof({ weight: 60, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constantFrom(0x21e41c71, 0x25609514, 0, 0x67446698) }),
    })
    .map(({ type, flags, offset, length, lie, magic }) => {
      // DISC and FLUSH carry offset 0 and length 0 unless mutated.
      const plain = type === Cmd.DISC || type === Cmd.FLUSH;
      const off = plain && lie === 0 ? 0n : offset;
      const len = plain && lie === 0 ? 0 : type === Cmd.WRITE && lie === 0 ? Math.min(length, MAX_SENT) : length;
      const payload = type === Cmd.WRITE ? Math.max(0, Math.min(MAX_SENT, len + lie)) : Math.max(0, lie);
      return { kind: 'request' as const, type, flags, offset: off.toString(), length: len, payload, ...(magic !== undefined ? { magic } : {}) };
    });
}

/** A request pipeline: unique cookies (a duplicate cookie is a separate, rarer mutation). */
export function pipelineArb(ctx: GenContext): fc.Arbitrary<TransmissionMsg[]> {
  return fc
    .record({
      // fast-check keeps arrays short by default; one pipeline in five is long (half the
      // maximum or more), so deep queues and replies out of order get exercised too.
      reqs: fc.oneof(
        { weight: 4, arbitrary: fc.array(requestArb(ctx), { minLength: 1, maxLength: ctx.maxRequests }) },
        { weight: 1, arbitrary: fc.array(requestArb(ctx), { minLength: Math.max(1, ctx.maxRequests >> 1), maxLength: ctx.maxRequests, size: 'max' }) },
      ),
      dup: fc.oneof({ weight: 40, arbitrary: fc.constant(-1) }, { weight: 1, arbitrary: fc.nat() }),
      tail: fc.oneof({ weight: 10, arbitrary: fc.constant<'disc' | 'none' | 'raw'>('disc') }, { weight: 3, arbitrary: fc.constant<'disc' | 'none' | 'raw'>('none') }, { weight: 1, arbitrary: fc.constant<'disc' | 'none' | 'raw'>('raw') }),
      raw: bytes(40),
    })
    .map(({ reqs, dup, tail, raw }) => {
      const out: TransmissionMsg[] = reqs.map((r, i) => ({ ...r, cookie: dup >= 0 && i === reqs.length - 1 && reqs.length > 1 ? dup % (reqs.length - 1) : i + 1 }));
      if (tail === 'disc') out.push({ kind: 'request', type: Cmd.DISC, flags: 0, cookie: 0xd15c, offset: '0', length: 0, payload: 0 });
      if (tail === 'raw') out.push({ kind: 'raw', bytes: hex(raw) });
      return out;
    });
}

function clientFlagsArb() {
  return fc.oneof(
    { weight: 30, arbitrary: fc.constantFrom(CF_FIXED_NEWSTYLE | CF_NO_ZEROES, CF_FIXED_NEWSTYLE) },
    { weight: 1, arbitrary: fc.constantFrom(0, CF_NO_ZEROES, 4, 0x80000001, 0xffffffff) },
  );
}

export function nbdCaseArb(ctx: GenContext): fc.Arbitrary<NbdCase> {
  return fc.constantFrom<'rw' | 'ro'>('rw', 'rw', 'rw', 'ro').chain((role) =>
    fc
      .record({
        clientFlags: clientFlagsArb(),
        sr: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
        meta: fc.boolean(),
        options: fc.array(optionArb(ctx), { maxLength: 4 }),
        enter: enterArb(ctx, role),
        requests: pipelineArb(ctx),
        cut: fc.oneof({ weight: 12, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.nat({ max: 400 }) }),
      })
      .map(({ clientFlags, sr, meta, options, enter, requests, cut }): NbdCase => {
        const name = role === 'rw' ? ctx.exports.rw : ctx.exports.ro;
        const pre: HandshakeMsg[] = [];
        if (sr) pre.push({ kind: 'option', opt: Opt.STRUCTURED_REPLY, data: '' });
        if (sr && meta) {
          const n = Buffer.from(name, 'utf8');
          const q = Buffer.from('base:allocation');
          const b = Buffer.alloc(4 + n.length + 4 + 4 + q.length);
          b.writeUInt32BE(n.length, 0);
          n.copy(b, 4);
          b.writeUInt32BE(1, 4 + n.length);
          b.writeUInt32BE(q.length, 8 + n.length);
          q.copy(b, 12 + n.length);
          pre.push({ kind: 'option', opt: Opt.SET_META_CONTEXT, data: hex(b) });
        }
        return { proto: 'nbd', role, clientFlags, handshake: [...pre, ...options, ...enter], requests, ...(cut !== undefined ? { cut } : {}) };
      }),
  );
}

// ---- QMP ------------------------------------------------------------------------------------

const QMP_COMMANDS = ['qmp_capabilities', 'query-version', 'query-commands', 'query-block', 'query-named-block-nodes', 'query-jobs', 'blockdev-add', 'blockdev-del', 'block-dirty-bitmap-add', 'nbd-server-add', 'block-export-add', 'transaction', 'blockdev-backup', 'job-cancel', 'quit-not', 'x-nonexistent', ''];

/** A JSON value that is the wrong type wherever it is put. */
const wrongValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(null, true, false, 0, -1, 1e308, 4294967296, '', 'on', [], {}, [[[]]], { a: { b: {} } }),
  fc.string({ maxLength: 10 }),
  fc.integer(),
);

function nested(depth: number, leaf: string): string {
  return '['.repeat(depth) + leaf + ']'.repeat(depth);
}

/** `huge`: also texts of 64 KiB to 1 MiB and nesting thousands deep (a monitor may take
 * seconds over each; a short smoke leaves them out). */
export function qmpTextArb(huge = true): fc.Arbitrary<string> {
  const command = fc
    .record({
      execute: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...QMP_COMMANDS) }, { weight: 1, arbitrary: wrongValue }),
      args: fc.oneof(
        { weight: 3, arbitrary: fc.constant(undefined) },
        { weight: 2, arbitrary: fc.dictionary(fc.constantFrom('enable', 'node-name', 'driver', 'name', 'id', 'device', 'actions', 'x'), wrongValue, { maxKeys: 3 }) },
        { weight: 1, arbitrary: wrongValue },
      ),
      id: fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 2, arbitrary: wrongValue }),
      extra: fc.oneof({ weight: 8, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constantFrom('exec-oob', 'control', 'bogus') }),
    })
    .map(({ execute, args, id, extra }) => {
      const o: Record<string, unknown> = { execute };
      if (args !== undefined) o.arguments = args;
      if (id !== undefined) o.id = id;
      if (extra !== undefined) o[extra] = extra === 'exec-oob' ? execute : 1;
      return JSON.stringify(o);
    });
  const caps = fc.constantFrom(
    '{"execute":"qmp_capabilities","arguments":{"enable":42}}',
    '{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}',
    '{"execute":"qmp_capabilities","arguments":{"enable":["oob",1]}}',
    '{"execute":"qmp_capabilities","arguments":{"enable":[{}]}}',
    '{"execute":"qmp_capabilities","arguments":[]}',
    '{"execute":"qmp_capabilities","arguments":null}',
    '{"execute":"qmp_capabilities","arguments":{"enable":["nope"]}}',
    '{"execute":"qmp_capabilities"}',
  );
  const malformed = fc.oneof(
    command.chain((t) => fc.nat({ max: Math.max(0, t.length - 1) }).map((n) => t.slice(0, n))),
    fc.constantFrom('{', '}', '[', ']', '"', '{"execute":}', '{"execute":"query-version",}', "{'execute':'query-version'}", '\u00ff\u00fe', '{"a":1e99999}', '{"a":-}', '\\u0000', '{"execute":"query-version"}}', 'nul', 'tru', '{"execute":"\\ud800"}'),
    fc.string({ maxLength: 30 }),
    fc.uint8Array({ maxLength: 30 }).map((b) => Buffer.from(b).toString('latin1')),
  );
  const hugeText = fc.oneof(
    fc.integer({ min: 1, max: 6000 }).map((d) => `{"execute":"query-version","id":${nested(d, '1')}}`),
    fc.integer({ min: 1, max: 6000 }).map((d) => '{"a":'.repeat(d) + '1' + '}'.repeat(d)),
    fc.constantFrom(1 << 16, 1 << 20).map((n) => `{"execute":"${'x'.repeat(n)}"}`),
    fc.constantFrom(1 << 16, 1 << 20).map((n) => '['.repeat(n)),
    fc.constantFrom(1 << 20).map((n) => ' '.repeat(n) + '{"execute":"query-version"}'),
  );
  return fc.oneof({ weight: 8, arbitrary: command }, { weight: 3, arbitrary: caps }, { weight: 4, arbitrary: malformed }, { weight: huge ? 1 : 0, arbitrary: hugeText });
}

export function qmpCaseArb(huge = true): fc.Arbitrary<QmpCase> {
  return fc.record({
    capabilities: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    texts: fc.array(qmpTextArb(huge), { minLength: 1, maxLength: 8 }),
    joined: fc.oneof({ weight: 5, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  }).map((r): QmpCase => ({ proto: 'qmp', ...r }));
}
