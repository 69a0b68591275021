// nbd/handshake/*: checklist A (docs/requirements/nbd.md A1-A31; proto.md "Newstyle negotiation",
// "Fixed newstyle negotiation", "Option types", "Metadata querying").
import { encodeInfoRequest, encodeMetaRequest } from '../../nbd/codec.ts';
import { CF_FIXED_NEWSTYLE, CF_NO_ZEROES, HS_FIXED_NEWSTYLE, Rep, repName } from '../../nbd/constants.ts';
import { NbdClientError } from '../../nbd/errors.ts';
import { greet } from '../../nbd/session.ts';
import {
  Cmd,
  HS_NO_ZEROES,
  Info,
  Opt,
  TF,
  connect,
  describeOption,
  describeReply,
  finalOf,
  nbdCase,
  optionOutcome,
  optionsInSync,
  requireMeta,
  requireStructured,
  usableAfter,
  type NbdCase,
} from './env.ts';
import { finalIs, hasExportInfo, onlyReply, optionCase } from './rows.ts';

const NEG = 'proto.md "Newstyle negotiation"';
const FIXED = 'proto.md "Fixed newstyle negotiation"';
const OPTS = 'proto.md "Option types"';
const META = 'proto.md "Metadata querying"';
const sec = (spec: string, n: string) => `${spec}; docs/requirements/nbd.md ${n}`;
const hex = (n: number) => `0x${n.toString(16)}`;

export const handshakeCases: NbdCase[] = [
  nbdCase({
    id: 'nbd/handshake/greeting',
    section: sec(NEG, 'A1'),
    level: 'MUST',
    title: 'Newstyle greeting with only known handshake flags',
    description: 'Reads the greeting: NBDMAGIC, IHAVEOPT, u16 handshake flags.',
    expectation: 'Fixed newstyle greeting (baseline); only bits 0 (FIXED_NEWSTYLE) and 1 (NO_ZEROES) may be set.',
    async run(ctx) {
      const conn = await connect(ctx);
      const g = await conn.readGreeting();
      if (!ctx.must(g.kind === 'greeting', 'the server speaks newstyle negotiation', g.kind)) return;
      if (g.kind !== 'greeting') return;
      ctx.must((g.handshakeFlags & ~3) === 0, 'no handshake flag other than FIXED_NEWSTYLE and NO_ZEROES is set', hex(g.handshakeFlags));
      ctx.must((g.handshakeFlags & HS_FIXED_NEWSTYLE) !== 0, 'FIXED_NEWSTYLE is set (baseline interoperability)', hex(g.handshakeFlags));
    },
  }),
  nbdCase({
    id: 'nbd/handshake/unknown-client-flags',
    section: sec(NEG, 'A2'),
    level: 'MUST',
    title: 'Unknown client flag: the server drops the connection',
    description: 'Sends client flags with bit 31 set (unknown), then NBD_OPT_LIST.',
    expectation: 'The server MUST close the connection instead of negotiating further.',
    async run(ctx) {
      const conn = await connect(ctx);
      const { handshakeFlags } = await greet(conn, CF_FIXED_NEWSTYLE | 0x80000000);
      void handshakeFlags;
      const out = await optionOutcome(conn, Opt.LIST);
      ctx.must(out.kind === 'closed', 'the server drops the connection after an unknown client flag',
        out.kind === 'replies' ? `kept negotiating: answered NBD_OPT_LIST with ${describeOption(out.replies)}` : out.kind === 'timeout' ? 'neither closed nor answered (hang)' : 'closed');
    },
  }),
  nbdCase({
    id: 'nbd/handshake/no-zeroes-not-offered',
    section: sec(NEG, 'A3'),
    level: 'MUST',
    title: 'C_NO_ZEROES without the server offering NO_ZEROES: drop',
    description: 'Only applicable to a server that does not offer NO_ZEROES: sends C_NO_ZEROES anyway.',
    expectation: 'The server MUST close the connection.',
    async run(ctx) {
      if (ctx.env.rw.handshakeFlags & HS_NO_ZEROES) ctx.skip('the server offers NO_ZEROES; the case needs a server that does not');
      const conn = await connect(ctx);
      await greet(conn, CF_FIXED_NEWSTYLE | CF_NO_ZEROES);
      const out = await optionOutcome(conn, Opt.LIST);
      ctx.must(out.kind === 'closed', 'the server drops the connection', out.kind);
    },
  }),
  nbdCase({
    id: 'nbd/handshake/option-reply-header',
    section: sec(FIXED, 'A4'),
    level: 'MUST',
    title: 'Option replies carry the reply magic and echo the option',
    description: 'Sends NBD_OPT_INFO and NBD_OPT_LIST; the strict codec checks every reply header.',
    expectation: 'Each reply starts with 0x0003e889045565a9, echoes the option sent, and the last one is final (ACK or error).',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      const info = await conn.option(Opt.INFO, encodeInfoRequest(ctx.target.exports.rw!.name, []));
      ctx.must(finalOf(info)?.final === true, 'NBD_OPT_INFO replies end with a final reply', describeOption(info));
      const list = await conn.option(Opt.LIST);
      ctx.must(finalOf(list)?.final === true, 'NBD_OPT_LIST replies end with a final reply', describeOption(list));
    },
  }),
  optionCase({
    id: 'nbd/handshake/unknown-option',
    section: sec(`${FIXED}; proto.md "Compatibility and interoperability"`, 'A5'),
    level: 'MUST',
    title: 'Unknown option: NBD_REP_ERR_UNSUP, and the next option still parses',
    description: 'Sends option 0x7654321 with 4 bytes of data, then NBD_OPT_GO.',
    expectation: 'NBD_REP_ERR_UNSUP (baseline MUST); the option stream stays in sync.',
    option: 0x7654321,
    data: () => Buffer.from([1, 2, 3, 4]),
    checks: [{ level: 'MUST', claim: 'an unknown option is answered with NBD_REP_ERR_UNSUP', ok: finalIs(Rep.ERR_UNSUP) }],
    inSync: 'an unknown option',
  }),
  optionCase({
    id: 'nbd/handshake/info-bad-name-length',
    section: sec(`${OPTS} NBD_OPT_INFO`, 'A6, A13'),
    level: 'MUST',
    title: 'INFO whose name length exceeds its data: ERR_INVALID, payload consumed',
    description: 'Sends NBD_OPT_INFO with a name length of 256 in 10 bytes of data, then NBD_OPT_GO.',
    expectation: 'NBD_REP_ERR_INVALID; the server consumes the whole option payload, so the following GO is answered normally.',
    option: Opt.INFO,
    // u32 name length 256, then only "disk" and u16 zero information requests: 10 bytes.
    data: () => Buffer.from('00000100' + Buffer.from('disk').toString('hex') + '0000', 'hex'),
    checks: [{ level: 'MUST', claim: 'the malformed NBD_OPT_INFO is answered with NBD_REP_ERR_INVALID', ok: finalIs(Rep.ERR_INVALID) }],
    inSync: 'a malformed NBD_OPT_INFO',
  }),
  optionCase({
    id: 'nbd/handshake/list-with-data',
    section: sec(`${OPTS} NBD_OPT_LIST`, 'A7'),
    level: 'SHOULD',
    title: 'LIST with data: ERR_INVALID as the only final reply',
    description: 'Sends NBD_OPT_LIST with 4 bytes of data, then NBD_OPT_GO.',
    expectation: 'NBD_REP_ERR_INVALID (SHOULD), and nothing else for that option (MUST: one final reply per option, or the stream desyncs).',
    option: Opt.LIST,
    data: () => Buffer.alloc(4),
    checks: [{ level: 'SHOULD', claim: 'NBD_OPT_LIST with data is answered with NBD_REP_ERR_INVALID', ok: finalIs(Rep.ERR_INVALID) }],
    inSync: 'NBD_OPT_LIST with data',
  }),
  nbdCase({
    id: 'nbd/handshake/list',
    section: sec(`${OPTS} NBD_OPT_LIST`, 'A8'),
    level: 'MUST',
    title: 'LIST: zero or more SERVER replies, then ACK',
    description: 'Sends NBD_OPT_LIST; the codec checks each SERVER reply (name length within the reply).',
    expectation: 'NBD_REP_SERVER* then NBD_REP_ACK.',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      const r = await conn.option(Opt.LIST);
      ctx.must(finalOf(r)?.type === Rep.ACK, 'NBD_OPT_LIST ends with NBD_REP_ACK', describeOption(r));
      ctx.must(r.slice(0, -1).every((m) => m.type === Rep.SERVER), 'every reply before the ACK is NBD_REP_SERVER', describeOption(r));
      ctx.observe(`exports listed: ${r.flatMap((m) => (m.body.reply === 'server' ? [JSON.stringify(m.body.name)] : [])).join(', ') || 'none'}`);
      await optionsInSync(ctx, conn, 'NBD_OPT_LIST');
    },
  }),
  nbdCase({
    id: 'nbd/handshake/abort',
    section: sec(`${OPTS} NBD_OPT_ABORT`, 'A9'),
    level: 'MUST',
    title: 'ABORT: ACK, then the connection closes',
    description: 'Sends NBD_OPT_ABORT.',
    expectation: 'The server MUST reply NBD_REP_ACK; then the connection closes.',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      const out = await optionOutcome(conn, Opt.ABORT);
      const observed = out.kind === 'replies' ? describeOption(out.replies) : out.kind === 'closed' ? 'closed without a reply' : 'no reply (hang)';
      ctx.must(out.kind === 'replies' && finalOf(out.replies)?.type === Rep.ACK, 'NBD_OPT_ABORT is answered with NBD_REP_ACK', observed);
      if (out.kind === 'replies') ctx.should(await conn.waitClosed(), 'the server closes the connection after acknowledging NBD_OPT_ABORT', 'still open');
    },
  }),
  nbdCase({
    id: 'nbd/handshake/abort-with-data',
    section: sec(`${OPTS} NBD_OPT_ABORT`, 'A10'),
    level: 'SHOULD',
    title: 'ABORT with data is still honoured',
    description: 'Sends NBD_OPT_ABORT with 4 bytes of data (the server SHOULD ignore the data).',
    expectation: 'The abort is honoured: the server ends the negotiation and closes (ideally after NBD_REP_ACK).',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      const out = await optionOutcome(conn, Opt.ABORT, Buffer.from([0, 0, 0, 0]));
      if (out.kind === 'replies') {
        ctx.observe(`replied ${describeOption(out.replies)}`);
        ctx.should(finalOf(out.replies)?.type === Rep.ACK || (await conn.waitClosed()), 'the abort is honoured (ACK, or the connection closes)', describeOption(out.replies));
        if (finalOf(out.replies)?.type === Rep.ACK) ctx.should(await conn.waitClosed(), 'the server closes after the ACK', 'still open');
      } else {
        ctx.should(out.kind === 'closed', 'the abort is honoured (the connection closes)', out.kind);
        ctx.observe('closed without NBD_REP_ACK');
      }
    },
  }),
  nbdCase({
    id: 'nbd/handshake/starttls-without-tls',
    section: sec('proto.md "TLS support"', 'A11'),
    level: 'MUST',
    title: 'STARTTLS on a server without TLS: ERR_POLICY or ERR_UNSUP',
    description: 'Sends NBD_OPT_STARTTLS, then NBD_OPT_GO.',
    expectation: 'In NOTLS mode NBD_REP_ERR_POLICY or NBD_REP_ERR_UNSUP, never NBD_REP_ERR_TLS_REQD; the stream stays in sync.',
    async run(ctx) {
      if (ctx.target.exports.rw?.tls) ctx.skip('the target runs TLS, so NOTLS rules do not apply (nbd/tls/* cover it)');
      const conn = await connect(ctx);
      await greet(conn);
      const r = await conn.option(Opt.STARTTLS);
      const t = finalOf(r)?.type;
      if (t === Rep.ACK) ctx.skip('the server offers TLS but the target gives no credentials: run a -tls- target variant');
      ctx.must(t === Rep.ERR_POLICY || t === Rep.ERR_UNSUP, 'NBD_OPT_STARTTLS is refused with NBD_REP_ERR_POLICY or NBD_REP_ERR_UNSUP', describeOption(r));
      await optionsInSync(ctx, conn, 'a refused NBD_OPT_STARTTLS');
    },
  }),
  nbdCase({
    id: 'nbd/handshake/go',
    section: sec(`${OPTS} NBD_OPT_GO`, 'A12'),
    level: 'MUST',
    title: 'GO: INFO_EXPORT, ACK, no padding, transmission starts',
    description: 'Sends NBD_OPT_GO (asking for NBD_INFO_BLOCK_SIZE), then a READ right away.',
    expectation: 'NBD_REP_INFO with NBD_INFO_EXPORT, then NBD_REP_ACK; no bytes follow the ACK, so the READ reply parses.',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      const r = await conn.option(Opt.GO, encodeInfoRequest(ctx.target.exports.rw!.name, [Info.BLOCK_SIZE]));
      ctx.must(finalOf(r)?.type === Rep.ACK, 'NBD_OPT_GO ends with NBD_REP_ACK', describeOption(r));
      ctx.must(r.some((m) => m.body.reply === 'info' && m.body.info === 'export'), 'NBD_OPT_GO success includes NBD_INFO_EXPORT', describeOption(r));
      conn.enterTransmission(false);
      await usableAfter(ctx, conn, 'NBD_OPT_GO');
    },
  }),
  optionCase({
    id: 'nbd/handshake/info',
    section: sec(`${OPTS} NBD_OPT_INFO`, 'A12'),
    level: 'MUST',
    title: 'INFO: INFO_EXPORT and ACK, negotiation continues',
    description: 'Sends NBD_OPT_INFO, then NBD_OPT_GO.',
    expectation: 'NBD_REP_INFO with NBD_INFO_EXPORT then NBD_REP_ACK; the server stays in negotiation.',
    option: Opt.INFO,
    data: (ctx) => encodeInfoRequest(ctx.target.exports.rw!.name, []),
    checks: [
      { level: 'MUST', claim: 'NBD_OPT_INFO ends with NBD_REP_ACK', ok: finalIs(Rep.ACK) },
      { level: 'MUST', claim: 'NBD_OPT_INFO success includes NBD_INFO_EXPORT', ok: hasExportInfo },
    ],
    inSync: 'NBD_OPT_INFO',
  }),
  nbdCase({
    id: 'nbd/handshake/info-unknown-export',
    section: sec(`${OPTS} NBD_OPT_INFO`, 'A14'),
    level: 'SHOULD',
    title: 'INFO on an unknown export: ERR_UNKNOWN',
    description: 'Sends NBD_OPT_INFO for an export name that was never configured.',
    expectation: 'NBD_REP_ERR_UNKNOWN with no NBD_REP_INFO before it. A server that serves any name is allowed (info).',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      const r = await conn.option(Opt.INFO, encodeInfoRequest(`no-such-export-${Math.floor(ctx.random() * 1e9)}`, []));
      const last = finalOf(r);
      if (last?.type === Rep.ACK) {
        ctx.check('MAY', false, 'an unknown export name is refused', 'the server serves any export name (allowed by its policy)');
      } else {
        ctx.should(last?.type === Rep.ERR_UNKNOWN, 'the unknown export is refused with NBD_REP_ERR_UNKNOWN', describeOption(r));
        ctx.should(r.length === 1, 'no NBD_REP_INFO precedes the error', describeOption(r));
      }
      await optionsInSync(ctx, conn, 'NBD_OPT_INFO on an unknown export');
    },
  }),
  optionCase({
    id: 'nbd/handshake/info-unknown-type',
    section: sec(`${OPTS} NBD_OPT_INFO`, 'A15'),
    level: 'MUST',
    title: 'Unknown information requests are ignored',
    description: 'Sends NBD_OPT_INFO asking for info type 0x7777 and NBD_INFO_BLOCK_SIZE.',
    expectation: 'The server MUST ignore the unknown type: success with NBD_INFO_EXPORT.',
    option: Opt.INFO,
    data: (ctx) => encodeInfoRequest(ctx.target.exports.rw!.name, [0x7777, Info.BLOCK_SIZE]),
    checks: [{ level: 'MUST', claim: 'NBD_OPT_INFO succeeds with NBD_INFO_EXPORT', ok: (r) => finalIs(Rep.ACK)(r) && hasExportInfo(r) }],
    inSync: 'NBD_OPT_INFO with an unknown info type',
  }),
  nbdCase({
    id: 'nbd/handshake/info-go-consistent',
    section: sec(`${OPTS} NBD_OPT_INFO`, 'A16'),
    level: 'MUST',
    title: 'INFO then GO with the same parameters: identical INFO_EXPORT',
    description: 'Sends NBD_OPT_INFO and NBD_OPT_GO for the same export with nothing in between.',
    expectation: 'Both carry the same size and transmission flags.',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      const data = encodeInfoRequest(ctx.target.exports.rw!.name, [Info.BLOCK_SIZE]);
      const pick = (rs: Awaited<ReturnType<typeof conn.option>>) => {
        for (const m of rs) if (m.body.reply === 'info' && m.body.info === 'export') return `size ${m.body.size}, flags ${hex(m.body.transmissionFlags)}`;
        return 'no NBD_INFO_EXPORT';
      };
      const info = pick(await conn.option(Opt.INFO, data));
      const go = pick(await conn.option(Opt.GO, data));
      ctx.must(info === go, 'NBD_OPT_INFO and NBD_OPT_GO report the same export information', `INFO: ${info}; GO: ${go}`);
    },
  }),
  nbdCase({
    id: 'nbd/handshake/go-without-block-size',
    section: sec('proto.md "Size constraints"', 'A17'),
    level: 'SHOULD',
    title: 'GO without a BLOCK_SIZE request is not refused',
    description: 'Sends NBD_OPT_GO with no information requests.',
    expectation: 'Success; a server that can work with the default sizes SHOULD NOT answer NBD_REP_ERR_BLOCK_SIZE_REQD (and if it does, NBD_INFO_BLOCK_SIZE SHOULD come first).',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      const r = await conn.option(Opt.GO, encodeInfoRequest(ctx.target.exports.rw!.name, []));
      const t = finalOf(r)?.type;
      if (t === Rep.ERR_BLOCK_SIZE_REQD) {
        ctx.should(false, 'GO without NBD_INFO_BLOCK_SIZE is accepted', describeOption(r));
        ctx.should(r.some((m) => m.body.reply === 'info' && m.body.info === 'block-size'), 'NBD_INFO_BLOCK_SIZE precedes NBD_REP_ERR_BLOCK_SIZE_REQD', describeOption(r));
        return;
      }
      ctx.must(t === Rep.ACK, 'NBD_OPT_GO succeeds', describeOption(r));
      conn.enterTransmission(false);
      await usableAfter(ctx, conn, 'NBD_OPT_GO without info requests');
    },
  }),
  nbdCase({
    id: 'nbd/handshake/block-size-valid',
    section: sec('proto.md "NBD_INFO_BLOCK_SIZE"', 'A18'),
    level: 'MUST',
    title: 'NBD_INFO_BLOCK_SIZE values are valid',
    description: 'Sends NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE.',
    expectation: 'If sent: minimum a power of 2 and <= 64 KiB; preferred a power of 2 and >= max(minimum, 512); maximum >= preferred.',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      const r = await conn.option(Opt.GO, encodeInfoRequest(ctx.target.exports.rw!.name, [Info.BLOCK_SIZE]));
      ctx.must(finalOf(r)?.type === Rep.ACK, 'NBD_OPT_GO succeeds', describeOption(r));
      const bs = r.map((m) => m.body).find((b) => b.reply === 'info' && b.info === 'block-size');
      if (!bs || bs.reply !== 'info' || bs.info !== 'block-size') {
        ctx.observe('no NBD_INFO_BLOCK_SIZE sent: the defaults apply (1 / 4096 / 32 MiB)');
        return;
      }
      const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
      const v = `${bs.minimum} / ${bs.preferred} / ${bs.maximum}`;
      ctx.observe(`block sizes ${v}`);
      ctx.must(pow2(bs.minimum) && bs.minimum <= 65536, 'minimum is a power of 2 and at most 64 KiB', v);
      ctx.must(pow2(bs.preferred) && bs.preferred >= Math.max(bs.minimum, 512), 'preferred is a power of 2 and at least max(minimum, 512)', v);
      ctx.must(bs.maximum >= bs.preferred, 'maximum is at least preferred', v);
      ctx.should(bs.maximum >= 1 << 20, 'maximum is at least 1 MiB', v);
    },
  }),
  nbdCase({
    id: 'nbd/handshake/export-name',
    section: sec(`${OPTS} NBD_OPT_EXPORT_NAME`, 'A19'),
    level: 'MUST',
    title: 'EXPORT_NAME without NO_ZEROES: size, flags, 124 zero bytes',
    description: 'Negotiates without C_NO_ZEROES and ends with NBD_OPT_EXPORT_NAME, then READs.',
    expectation: 'u64 size, u16 transmission flags, 124 zero bytes; the transmission phase works right after.',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn, CF_FIXED_NEWSTYLE);
      conn.sendOption(Opt.EXPORT_NAME, Buffer.from(ctx.target.exports.rw!.name));
      const e = await conn.readExportNameReply(false);
      ctx.must(e.size === ctx.env.rw.size, 'the size matches NBD_OPT_GO', `${e.size} vs ${ctx.env.rw.size}`);
      conn.enterTransmission(false);
      await usableAfter(ctx, conn, 'NBD_OPT_EXPORT_NAME');
    },
  }),
  nbdCase({
    id: 'nbd/handshake/export-name-no-zeroes',
    section: sec(`${OPTS} NBD_OPT_EXPORT_NAME`, 'A19'),
    level: 'MUST',
    title: 'EXPORT_NAME with NO_ZEROES: no padding',
    description: 'Negotiates C_NO_ZEROES and ends with NBD_OPT_EXPORT_NAME, then READs immediately.',
    expectation: 'Exactly 10 bytes (size and flags); the READ reply parses (no stray padding).',
    async run(ctx) {
      if (!(ctx.env.rw.handshakeFlags & HS_NO_ZEROES)) ctx.skip('the server does not offer NO_ZEROES');
      const conn = await connect(ctx);
      await greet(conn, CF_FIXED_NEWSTYLE | CF_NO_ZEROES);
      conn.sendOption(Opt.EXPORT_NAME, Buffer.from(ctx.target.exports.rw!.name));
      await conn.readExportNameReply(true);
      conn.enterTransmission(false);
      await usableAfter(ctx, conn, 'NBD_OPT_EXPORT_NAME');
    },
  }),
  nbdCase({
    id: 'nbd/handshake/export-name-unknown',
    section: sec(`${OPTS} NBD_OPT_EXPORT_NAME`, 'A19'),
    level: 'MUST',
    title: 'EXPORT_NAME of an unknown export: the server closes',
    description: 'Ends the negotiation with NBD_OPT_EXPORT_NAME for a name that was never configured.',
    expectation: 'The server MUST close the connection (there is no error reply). A server that serves any name is allowed (info).',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      conn.sendOption(Opt.EXPORT_NAME, Buffer.from(`no-such-export-${Math.floor(ctx.random() * 1e9)}`));
      try {
        const e = await conn.readExportNameReply((ctx.env.rw.handshakeFlags & HS_NO_ZEROES) !== 0);
        ctx.check('MAY', false, 'an unknown export name is refused', `served it: size ${e.size} (the server serves any export name)`);
      } catch (e) {
        if (!(e instanceof NbdClientError)) throw e;
        ctx.must(e.kind === 'closed', 'the server closes the connection', e.message);
      }
    },
  }),
  nbdCase({
    id: 'nbd/handshake/transmission-flags',
    section: sec('proto.md "Transmission flags"', 'A20'),
    level: 'MUST',
    title: 'Transmission flags are consistent',
    description: 'Checks the flags from NBD_OPT_GO (with structured replies) and from NBD_OPT_EXPORT_NAME (without).',
    expectation: 'HAS_FLAGS set; SEND_FAST_ZERO only with SEND_WRITE_ZEROES; SEND_DF only if structured replies were negotiated; READ_ONLY on the read-only export.',
    async run(ctx) {
      const f = ctx.env.rw.transmissionFlags;
      ctx.must((f & TF.HAS_FLAGS) !== 0, 'HAS_FLAGS is set', hex(f));
      ctx.must(!(f & TF.SEND_FAST_ZERO) || (f & TF.SEND_WRITE_ZEROES) !== 0, 'SEND_FAST_ZERO implies SEND_WRITE_ZEROES', hex(f));
      const conn = await connect(ctx);
      await greet(conn, CF_FIXED_NEWSTYLE);
      conn.sendOption(Opt.EXPORT_NAME, Buffer.from(ctx.target.exports.rw!.name));
      const e = await conn.readExportNameReply(false);
      ctx.must((e.transmissionFlags & TF.HAS_FLAGS) !== 0, 'HAS_FLAGS is set (EXPORT_NAME)', hex(e.transmissionFlags));
      ctx.must((e.transmissionFlags & TF.SEND_DF) === 0, 'SEND_DF is clear without structured replies', hex(e.transmissionFlags));
      if (ctx.env.ro && ctx.env.ro !== ctx.env.rw) ctx.must((ctx.env.ro.transmissionFlags & TF.READ_ONLY) !== 0, 'the read-only export advertises READ_ONLY', hex(ctx.env.ro.transmissionFlags));
      ctx.observe(`GO flags ${hex(f)}, EXPORT_NAME flags ${hex(e.transmissionFlags)}`);
    },
  }),
  optionCase({
    id: 'nbd/handshake/structured-reply-with-data',
    section: sec(`${OPTS} NBD_OPT_STRUCTURED_REPLY`, 'A21'),
    level: 'SHOULD',
    title: 'STRUCTURED_REPLY with data: ERR_INVALID',
    description: 'Sends NBD_OPT_STRUCTURED_REPLY with 4 bytes of data, then NBD_OPT_GO.',
    expectation: 'NBD_REP_ERR_INVALID; the stream stays in sync.',
    needs: ['structured'],
    option: Opt.STRUCTURED_REPLY,
    data: () => Buffer.alloc(4),
    checks: [{ level: 'SHOULD', claim: 'answered with NBD_REP_ERR_INVALID', ok: finalIs(Rep.ERR_INVALID) }],
    inSync: 'NBD_OPT_STRUCTURED_REPLY with data',
    // A server that acknowledged it anyway has structured replies on.
    structured: finalIs(Rep.ACK),
  }),
  optionCase({
    id: 'nbd/handshake/structured-reply-twice',
    section: sec(`${OPTS} NBD_OPT_STRUCTURED_REPLY`, 'A22'),
    level: 'MAY',
    title: 'STRUCTURED_REPLY twice: ACK or ERR_INVALID',
    description: 'Negotiates structured replies twice, then GO and a structured READ.',
    expectation: 'The second request gets NBD_REP_ACK or NBD_REP_ERR_INVALID (both allowed); structured replies stay on.',
    needs: ['structured'],
    before: [Opt.STRUCTURED_REPLY],
    option: Opt.STRUCTURED_REPLY,
    checks: [{ level: 'MUST', claim: 'the second NBD_OPT_STRUCTURED_REPLY gets ACK or ERR_INVALID', ok: finalIs(Rep.ACK, Rep.ERR_INVALID) }],
    observe: 'second request answered',
    inSync: 'a repeated NBD_OPT_STRUCTURED_REPLY',
    structured: true,
  }),
  optionCase({
    id: 'nbd/handshake/set-meta-before-structured',
    section: sec(`${META}`, 'A23'),
    level: 'SHOULD',
    title: 'SET_META_CONTEXT before structured replies: ERR_INVALID',
    description: 'Sends NBD_OPT_SET_META_CONTEXT for base:allocation without negotiating structured replies first.',
    expectation: 'NBD_REP_ERR_INVALID; the stream stays in sync.',
    needs: ['meta'],
    option: Opt.SET_META_CONTEXT,
    data: (ctx) => encodeMetaRequest(ctx.target.exports.rw!.name, ['base:allocation']),
    checks: [{ level: 'SHOULD', claim: 'answered with NBD_REP_ERR_INVALID', ok: finalIs(Rep.ERR_INVALID) }],
    inSync: 'NBD_OPT_SET_META_CONTEXT before structured replies',
  }),
  nbdCase({
    id: 'nbd/handshake/list-meta-all',
    section: sec(`${META} NBD_OPT_LIST_META_CONTEXT`, 'A24'),
    level: 'MUST',
    title: 'LIST_META_CONTEXT: zero queries list everything, "base:" lists base:allocation',
    description: 'Lists meta contexts with no query, then with the query "base:".',
    expectation: 'META_CONTEXT replies then ACK; the "base:" query returns base:allocation.',
    async run(ctx) {
      requireMeta(ctx);
      const conn = await connect(ctx);
      await greet(conn);
      await conn.option(Opt.STRUCTURED_REPLY);
      const all = await conn.option(Opt.LIST_META_CONTEXT, encodeMetaRequest(ctx.target.exports.rw!.name, []));
      ctx.must(finalOf(all)?.type === Rep.ACK, 'the listing ends with NBD_REP_ACK', describeOption(all));
      ctx.observe(`contexts: ${all.flatMap((m) => (m.body.reply === 'meta-context' ? [m.body.name] : [])).join(', ')}`);
      const base = await conn.option(Opt.LIST_META_CONTEXT, encodeMetaRequest(ctx.target.exports.rw!.name, ['base:']));
      ctx.must(base.some((m) => m.body.reply === 'meta-context' && m.body.name === 'base:allocation'), 'the query "base:" lists base:allocation', describeOption(base));
      ctx.must(finalOf(base)?.type === Rep.ACK, 'the listing ends with NBD_REP_ACK', describeOption(base));
      await optionsInSync(ctx, conn, 'NBD_OPT_LIST_META_CONTEXT', true);
    },
  }),
  optionCase({
    id: 'nbd/handshake/list-meta-unknown-namespace',
    section: sec(META, 'A25'),
    level: 'MUST',
    title: 'A query in an unknown namespace is ignored',
    description: 'Lists meta contexts with the query "x-nonexist:foo".',
    expectation: 'Just NBD_REP_ACK: no context, no error.',
    needs: ['meta'],
    before: [Opt.STRUCTURED_REPLY],
    option: Opt.LIST_META_CONTEXT,
    data: (ctx) => encodeMetaRequest(ctx.target.exports.rw!.name, ['x-nonexist:foo']),
    checks: [{ level: 'MUST', claim: 'answered with NBD_REP_ACK only', ok: onlyReply(Rep.ACK) }],
    inSync: 'a query in an unknown namespace',
    structured: true,
  }),
  optionCase({
    id: 'nbd/handshake/list-meta-no-colon',
    section: sec(META, 'A26'),
    level: 'MAY',
    title: 'A query without a colon: ERR_INVALID or ignored',
    description: 'Lists meta contexts with the query "nocolon".',
    expectation: 'Either is allowed; the stream stays in sync.',
    needs: ['meta'],
    before: [Opt.STRUCTURED_REPLY],
    option: Opt.LIST_META_CONTEXT,
    data: (ctx) => encodeMetaRequest(ctx.target.exports.rw!.name, ['nocolon']),
    checks: [],
    observe: 'answered',
    inSync: 'a query without a colon',
    structured: true,
  }),
  nbdCase({
    id: 'nbd/handshake/set-meta',
    section: sec(`${META} NBD_OPT_SET_META_CONTEXT`, 'A27'),
    level: 'MUST',
    title: 'SET_META_CONTEXT: one reply per selected context, unique ids, ACK',
    description: 'Selects every listed context, then selects with zero queries.',
    expectation: 'One NBD_REP_META_CONTEXT per context with distinct ids, then ACK; zero queries select nothing.',
    async run(ctx) {
      requireMeta(ctx);
      const conn = await connect(ctx);
      await greet(conn);
      await conn.option(Opt.STRUCTURED_REPLY);
      const wanted = ctx.env.rw.contexts.filter((c) => c === 'base:allocation' || c === 'qemu:allocation-depth');
      const r = await conn.option(Opt.SET_META_CONTEXT, encodeMetaRequest(ctx.target.exports.rw!.name, wanted));
      const got = r.flatMap((m) => (m.body.reply === 'meta-context' ? [m.body] : []));
      ctx.must(finalOf(r)?.type === Rep.ACK, 'ends with NBD_REP_ACK', describeOption(r));
      ctx.must(got.length === wanted.length && wanted.every((w) => got.some((g) => g.name === w)), `one NBD_REP_META_CONTEXT for each of ${wanted.join(', ')}`, got.map((g) => g.name).join(', '));
      ctx.must(new Set(got.map((g) => g.contextId)).size === got.length, 'context ids are unique', got.map((g) => `${g.name}=${g.contextId}`).join(', '));
      const none = await conn.option(Opt.SET_META_CONTEXT, encodeMetaRequest(ctx.target.exports.rw!.name, []));
      ctx.must(none.length === 1 && none[0]?.type === Rep.ACK, 'zero queries select nothing (just ACK)', describeOption(none));
      await optionsInSync(ctx, conn, 'NBD_OPT_SET_META_CONTEXT', true);
    },
  }),
  nbdCase({
    id: 'nbd/handshake/set-meta-replaces',
    section: sec(`${META} NBD_OPT_SET_META_CONTEXT`, 'A28'),
    level: 'SHOULD',
    title: 'A second SET_META_CONTEXT replaces the first selection',
    description: 'Selects base:allocation, then selects nothing, then issues BLOCK_STATUS.',
    expectation: 'The old selection is gone: BLOCK_STATUS fails (EINVAL) instead of reporting base:allocation.',
    async run(ctx) {
      requireMeta(ctx);
      const conn = await connect(ctx);
      await greet(conn);
      await conn.option(Opt.STRUCTURED_REPLY);
      const first = await conn.option(Opt.SET_META_CONTEXT, encodeMetaRequest(ctx.target.exports.rw!.name, ['base:allocation']));
      const ids = first.flatMap((m) => (m.body.reply === 'meta-context' ? [m.body.contextId] : []));
      await conn.option(Opt.SET_META_CONTEXT, encodeMetaRequest(ctx.target.exports.rw!.name, []));
      const go = await conn.option(Opt.GO, encodeInfoRequest(ctx.target.exports.rw!.name, []));
      ctx.must(finalOf(go)?.type === Rep.ACK, 'NBD_OPT_GO succeeds', describeOption(go));
      conn.enterTransmission(true, ids); // accept the stale id so a kept selection is judged, not a framing error
      const r = await conn.request({ type: Cmd.BLOCK_STATUS, offset: 0, length: 65536 });
      ctx.should(r.error !== 0, 'BLOCK_STATUS reports no context (the earlier selection was replaced)', describeReply(r) + (r.status.size ? ` with contexts ${[...r.status.keys()].join(',')}` : ''));
      await usableAfter(ctx, conn, 'BLOCK_STATUS without a selected context');
    },
  }),
  nbdCase({
    id: 'nbd/handshake/extended-headers',
    section: sec('proto.md (extension-ext-header) "NBD_OPT_EXTENDED_HEADERS"', 'A31'),
    level: 'MUST',
    title: 'EXTENDED_HEADERS: ACK or ERR_UNSUP, stream in sync',
    description: 'Sends option 11 (NBD_OPT_EXTENDED_HEADERS).',
    expectation: 'NBD_REP_ACK or NBD_REP_ERR_UNSUP; after ERR_UNSUP the negotiation continues normally.',
    async run(ctx) {
      const conn = await connect(ctx);
      await greet(conn);
      const r = await conn.option(Opt.EXTENDED_HEADERS);
      const t = finalOf(r)?.type;
      ctx.must(t === Rep.ACK || t === Rep.ERR_UNSUP, 'answered with NBD_REP_ACK or NBD_REP_ERR_UNSUP', describeOption(r));
      if (t === Rep.ACK) {
        ctx.observe('extended headers supported; the extended cases are not implemented by this client');
        return;
      }
      await optionsInSync(ctx, conn, `NBD_OPT_EXTENDED_HEADERS (${t !== undefined ? repName(t) : 'no reply'})`);
    },
  }),
];

