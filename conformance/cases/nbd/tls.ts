// nbd/tls/*: checklist J (docs/requirements/nbd.md J80-J92; proto.md "TLS support",
// "FORCEDTLS mode", "SELECTIVETLS mode", "NBD_OPT_STARTTLS", "TLS versions"). They run on
// targets that run TLS (RunningTarget.extra.tls: the -tls- variants of conformance/targets/tls.ts,
// or an nbds:// URI) and are skipped elsewhere, saying why. Three tables (options before TLS,
// credentials, SELECTIVETLS) run by one function each, and four cases of their own.
import { encodeInfoRequest, encodeMetaRequest, encodeOption, type OptionReply } from '../../nbd/codec.ts';
import type { NbdConnection } from '../../nbd/client.ts';
import { Rep, repName } from '../../nbd/constants.ts';
import { NbdClientError, NbdProtocolError } from '../../nbd/errors.ts';
import { greet } from '../../nbd/session.ts';
import type { TlsClientConfig } from '../../nbd/tls.ts';
import type { Level } from '../../runner/model.ts';
import type { Pki } from '../../tls/pki.ts';
import type { TlsTargetInfo } from '../../targets/tls.ts';
import { Cmd, Opt, connectTo, describeOption, describeReply, expected, finalOf, nbdCase, optionOutcome, type Ctx, type NbdCase } from './env.ts';

const TLS = 'proto.md "TLS support"';
const FORCED = 'proto.md "FORCEDTLS mode"';
const SELECTIVE = 'proto.md "SELECTIVETLS mode"';
const STARTTLS = 'proto.md "Option types" NBD_OPT_STARTTLS';
const AUTH = 'proto.md "Certificates, authentication and authorisation"';
const sec = (spec: string, n: string) => `${spec}; docs/requirements/nbd.md ${n}`;

function tlsOf(ctx: Ctx): TlsTargetInfo {
  const t = ctx.target.extra?.tls as TlsTargetInfo | undefined;
  if (!t || !ctx.target.exports.rw?.tls) ctx.skip('the target does not run TLS (the -tls- target variants and nbds:// URIs do)');
  return t;
}

function pkiOf(ctx: Ctx): Pki {
  const p = tlsOf(ctx).pki;
  if (!p) ctx.skip('the credentials are the user\'s: the wrong ones this case needs were not made by the runner');
  return p;
}

function requirePolicy(ctx: Ctx, ...policies: TlsTargetInfo['policy'][]): TlsTargetInfo {
  const t = tlsOf(ctx);
  if (!policies.includes(t.policy)) ctx.skip(`the case is for a ${policies.join(' or ')} TLS server; this target is ${t.policy}`);
  return t;
}

const rightCreds = (ctx: Ctx): TlsClientConfig => ctx.target.exports.rw!.tls!;

/** A connection in plaintext up to the client flags (no STARTTLS yet). */
async function plain(ctx: Ctx, role = 'rw'): Promise<NbdConnection> {
  return (await plainGreet(ctx, role)).conn;
}

async function plainGreet(ctx: Ctx, role = 'rw'): Promise<{ conn: NbdConnection; noZeroes: boolean }> {
  const conn = await connectTo(ctx, role, { tls: undefined });
  const { noZeroes } = await greet(conn, undefined, { plaintext: true });
  return { conn, noZeroes };
}

type Outcome =
  | { kind: 'served'; tls: string; conn: NbdConnection }
  | { kind: 'starttls-refused'; why: string }
  | { kind: 'handshake-failed'; why: string }
  | { kind: 'refused-after-tls'; tls: string; why: string };

function describeOutcome(o: Outcome): string {
  switch (o.kind) {
    case 'served':
      return `served over ${o.tls}`;
    case 'starttls-refused':
      return `NBD_OPT_STARTTLS not accepted: ${o.why}`;
    case 'handshake-failed':
      return `TLS handshake failed: ${o.why}`;
    case 'refused-after-tls':
      return `TLS up (${o.tls}), then no export: ${o.why}`;
  }
}

/** STARTTLS with `creds`, then NBD_OPT_GO on `role`: how far a client with those credentials gets. */
async function attempt(ctx: Ctx, creds: TlsClientConfig, role = 'rw'): Promise<Outcome> {
  const conn = await plain(ctx, role);
  const r = await optionOutcome(conn, Opt.STARTTLS);
  if (r.kind !== 'replies') return { kind: 'starttls-refused', why: r.kind };
  if (finalOf(r.replies)?.type !== Rep.ACK) return { kind: 'starttls-refused', why: describeOption(r.replies) };
  let tls: string;
  try {
    tls = await conn.startTls(creds);
  } catch (e) {
    if (e instanceof NbdClientError) return { kind: 'handshake-failed', why: e.message.replace(/^TLS handshake failed: /, '') };
    throw e;
  }
  const go = await optionOutcome(conn, Opt.GO, encodeInfoRequest(ctx.target.exports[role]!.name, []));
  if (go.kind !== 'replies') return { kind: 'refused-after-tls', tls, why: go.kind === 'closed' ? 'the server closed the connection' : 'no reply to NBD_OPT_GO' };
  if (finalOf(go.replies)?.type !== Rep.ACK) return { kind: 'refused-after-tls', tls, why: describeOption(go.replies) };
  conn.enterTransmission(false);
  return { kind: 'served', tls, conn };
}

/** After TLS with the right credentials: a READ returns the export's data. */
async function readsRight(ctx: Ctx, conn: NbdConnection, level: Level = 'MUST'): Promise<boolean> {
  try {
    const r = await conn.request({ type: Cmd.READ, offset: 0, length: 4096 });
    const exp = expected(ctx, 0, 4096);
    const ok = r.error === 0 && (!exp || (r.data?.equals(exp) ?? false));
    return ctx.check(level, ok, 'a READ of [0, 4096) over TLS returns the export\'s data', ok ? undefined : describeReply(r));
  } catch (e) {
    return ctx.check(level, false, 'a READ of [0, 4096) over TLS returns the export\'s data', (e as Error).message);
  }
}

/** After a refused client, the server still serves one with the right credentials. */
async function stillServes(ctx: Ctx): Promise<void> {
  const o = await attempt(ctx, rightCreds(ctx));
  ctx.must(o.kind === 'served', 'the server still serves a client with the right credentials afterwards', describeOutcome(o));
}

/** On a plaintext connection after an option was refused: STARTTLS, TLS and GO still work. */
async function tlsAfter(ctx: Ctx, conn: NbdConnection, what: string): Promise<void> {
  try {
    const r = await conn.option(Opt.STARTTLS);
    if (!ctx.must(finalOf(r)?.type === Rep.ACK, `the option stream is in sync after ${what}: NBD_OPT_STARTTLS is acknowledged`, describeOption(r))) return;
    await conn.startTls(rightCreds(ctx));
    const go = await conn.option(Opt.GO, encodeInfoRequest(ctx.target.exports.rw!.name, []));
    if (!ctx.must(finalOf(go)?.type === Rep.ACK, `after ${what} and TLS, NBD_OPT_GO succeeds`, describeOption(go))) return;
    conn.enterTransmission(false);
    await readsRight(ctx, conn);
  } catch (e) {
    ctx.must(false, `the option stream is in sync after ${what} (STARTTLS, TLS, GO)`, (e as Error).message);
  }
}

// ------------------------------------------------------------------------------------------
// J80-J81: FORCEDTLS, options before TLS

interface BeforeRow {
  name: string;
  title: string;
  option: number;
  data: (ctx: Ctx) => Buffer | undefined;
}

const exportName = (ctx: Ctx) => ctx.target.exports.rw!.name;

const BEFORE_TLS: BeforeRow[] = [
  { name: 'list', title: 'NBD_OPT_LIST', option: Opt.LIST, data: () => undefined },
  { name: 'info', title: 'NBD_OPT_INFO of the export', option: Opt.INFO, data: (ctx) => encodeInfoRequest(exportName(ctx), []) },
  { name: 'info-unknown-export', title: 'NBD_OPT_INFO of an export that does not exist', option: Opt.INFO, data: () => encodeInfoRequest('no-such-export', []) },
  { name: 'go', title: 'NBD_OPT_GO of the export', option: Opt.GO, data: (ctx) => encodeInfoRequest(exportName(ctx), []) },
  { name: 'structured-reply', title: 'NBD_OPT_STRUCTURED_REPLY', option: Opt.STRUCTURED_REPLY, data: () => undefined },
  { name: 'list-meta-context', title: 'NBD_OPT_LIST_META_CONTEXT', option: Opt.LIST_META_CONTEXT, data: (ctx) => encodeMetaRequest(exportName(ctx), ['base:allocation']) },
  { name: 'set-meta-context', title: 'NBD_OPT_SET_META_CONTEXT', option: Opt.SET_META_CONTEXT, data: (ctx) => encodeMetaRequest(exportName(ctx), ['base:allocation']) },
  { name: 'extended-headers', title: 'NBD_OPT_EXTENDED_HEADERS', option: Opt.EXTENDED_HEADERS, data: () => undefined },
  { name: 'unknown-option', title: 'an unknown option (0x7654321)', option: 0x7654321, data: () => Buffer.from([1, 2, 3, 4]) },
];

const beforeTlsCases: NbdCase[] = BEFORE_TLS.map((row) =>
  nbdCase({
    id: `nbd/tls/forced/${row.name}`,
    section: sec(FORCED, 'J80'),
    level: 'MUST',
    title: `TLS-only server: ${row.title} before STARTTLS gets ERR_TLS_REQD`,
    description: `In plaintext after the client flags, sends ${row.title}; then STARTTLS, the TLS handshake and NBD_OPT_GO on the same connection.`,
    expectation: 'NBD_REP_ERR_TLS_REQD and nothing else (no information, no transmission); the option stream stays in sync, so TLS and GO then work.',
    async run(ctx) {
      requirePolicy(ctx, 'forced');
      const conn = await plain(ctx);
      const out = await optionOutcome(conn, row.option, row.data(ctx));
      const observed = out.kind === 'replies' ? describeOption(out.replies) : out.kind === 'closed' ? 'the server closed the connection' : 'no reply (hang)';
      const ok = out.kind === 'replies' && out.replies.length === 1 && finalOf(out.replies)?.type === Rep.ERR_TLS_REQD;
      ctx.must(ok, `${row.title} before TLS is answered with NBD_REP_ERR_TLS_REQD only`, observed);
      if (out.kind === 'replies') await tlsAfter(ctx, conn, `${row.title} refused`);
    },
  }),
);

const forcedExportName = nbdCase({
  id: 'nbd/tls/forced/export-name',
  section: sec(FORCED, 'J81'),
  level: 'MUST',
  title: 'TLS-only server: NBD_OPT_EXPORT_NAME before STARTTLS ends the session',
  description: 'In plaintext after the client flags, sends NBD_OPT_EXPORT_NAME of the export.',
  expectation: 'The server terminates the session (EXPORT_NAME cannot be answered with an error); it never sends the export size and flags, so no transmission happens without TLS.',
  async run(ctx) {
    requirePolicy(ctx, 'forced');
    const { conn, noZeroes } = await plainGreet(ctx);
    conn.sendOption(Opt.EXPORT_NAME, Buffer.from(exportName(ctx), 'utf8'));
    try {
      const e = await conn.readExportNameReply(noZeroes);
      ctx.must(false, 'the server terminates the session instead of entering transmission in plaintext', `sent the export-name reply: size ${e.size}, flags 0x${e.transmissionFlags.toString(16)}`);
    } catch (e) {
      if (e instanceof NbdClientError && e.kind === 'closed') ctx.must(true, 'the server terminates the session', 'closed');
      else if (e instanceof NbdClientError && e.kind === 'timeout') ctx.must(false, 'the server terminates the session', 'neither closed nor answered (hang)');
      else if (e instanceof NbdProtocolError) ctx.must(false, 'the server terminates the session without sending anything', e.message);
      else throw e;
    }
  },
});

// ------------------------------------------------------------------------------------------
// J82: the STARTTLS injection

const injection = nbdCase({
  id: 'nbd/tls/starttls-injection',
  section: sec(`${FORCED}; ${STARTTLS}`, 'J82'),
  level: 'MUST',
  title: 'Plaintext pipelined after STARTTLS is never acted on',
  description:
    'In plaintext, sends NBD_OPT_STARTTLS and, in the same write, NBD_OPT_STRUCTURED_REPLY (what an attacker on the wire would inject). Then the TLS handshake, NBD_OPT_GO without structured replies, and a READ.',
  expectation:
    'Once STARTTLS is acknowledged all further data is TLS: the injected option gets no answer, neither in plaintext nor over TLS, and does not change the session (the READ gets a simple reply). The server may discard the bytes and complete the handshake, or hand them to its TLS layer, which then fails.',
  async run(ctx) {
    tlsOf(ctx);
    const conn = await plain(ctx);
    conn.sendRaw(Buffer.concat([encodeOption(Opt.STARTTLS), encodeOption(Opt.STRUCTURED_REPLY)]), 'NBD_OPT_STARTTLS + injected plaintext NBD_OPT_STRUCTURED_REPLY');
    let ack: OptionReply;
    try {
      ack = await conn.readOptionReply(Opt.STARTTLS);
    } catch (e) {
      if (e instanceof NbdClientError && e.kind === 'closed') return void ctx.must(true, 'the injected option is not acted on', 'the server closed before acknowledging STARTTLS');
      throw e;
    }
    if (ack.type !== Rep.ACK) return void ctx.must(false, 'NBD_OPT_STARTTLS is acknowledged', repName(ack.type));
    // A server that acted on the injected option in plaintext has its reply on the way now:
    // give it a moment to show (its absence proves nothing; its presence is the failure).
    await new Promise((r) => setTimeout(r, 100));
    if (!ctx.must(conn.unread === 0, 'no plaintext reply follows the STARTTLS acknowledgement', `${conn.unread} plaintext bytes after the ACK`)) return;
    try {
      ctx.observe(`TLS established despite the injected bytes: ${await conn.startTls(rightCreds(ctx))}`);
    } catch (e) {
      ctx.observe(`the TLS handshake failed (the server read the injected bytes as TLS): ${(e as Error).message}`);
      ctx.check('MAY', false, 'the server discards the injected plaintext and completes the TLS handshake', (e as Error).message);
      return;
    }
    try {
      const go = await conn.option(Opt.GO, encodeInfoRequest(exportName(ctx), []));
      if (!ctx.must(finalOf(go)?.type === Rep.ACK, 'NBD_OPT_GO over TLS succeeds', describeOption(go))) return;
      conn.enterTransmission(false);
      const r = await conn.request({ type: Cmd.READ, offset: 0, length: 512 });
      ctx.must(!r.structured, 'the READ gets a simple reply: the injected NBD_OPT_STRUCTURED_REPLY was not acted on', describeReply(r));
    } catch (e) {
      if (!(e instanceof NbdProtocolError)) throw e;
      ctx.must(false, 'the injected option is not answered over TLS', e.message);
    }
  },
});

// ------------------------------------------------------------------------------------------
// J83-J84: STARTTLS resets the negotiation; a second STARTTLS

const resetsState = nbdCase({
  id: 'nbd/tls/starttls-resets-state',
  section: sec(STARTTLS, 'J83 (A29)'),
  level: 'MUST',
  title: 'After STARTTLS, structured replies and meta contexts negotiated before are forgotten',
  description:
    'Where options work before TLS (TLS offered, or SELECTIVETLS): connection 1 negotiates structured replies in plaintext, then STARTTLS, GO without asking again, and READs; connection 2 also selects base:allocation before STARTTLS, asks for structured replies again after it, and sends BLOCK_STATUS.',
  expectation: 'The READ gets a simple reply; BLOCK_STATUS fails, as no context is selected any more.',
  async run(ctx) {
    requirePolicy(ctx, 'optional', 'selective');
    const name = exportName(ctx);
    const c1 = await plain(ctx);
    const sr = await c1.option(Opt.STRUCTURED_REPLY);
    if (finalOf(sr)?.type !== Rep.ACK) ctx.skip(`NBD_OPT_STRUCTURED_REPLY before TLS: ${describeOption(sr)}; no state to reset`);
    const st = await c1.option(Opt.STARTTLS);
    if (!ctx.must(finalOf(st)?.type === Rep.ACK, 'NBD_OPT_STARTTLS is acknowledged', describeOption(st))) return;
    await c1.startTls(rightCreds(ctx));
    const go = await c1.option(Opt.GO, encodeInfoRequest(name, []));
    if (!ctx.must(finalOf(go)?.type === Rep.ACK, 'NBD_OPT_GO over TLS succeeds', describeOption(go))) return;
    c1.enterTransmission(false);
    try {
      const r = await c1.request({ type: Cmd.READ, offset: 0, length: 512 });
      ctx.must(!r.structured && r.error === 0, 'the READ gets a simple reply (structured replies were forgotten)', describeReply(r));
    } catch (e) {
      if (!(e instanceof NbdProtocolError)) throw e;
      ctx.must(false, 'the READ gets a simple reply (structured replies were forgotten)', e.message);
    }

    const c2 = await plain(ctx);
    await c2.option(Opt.STRUCTURED_REPLY);
    const meta = await c2.option(Opt.SET_META_CONTEXT, encodeMetaRequest(name, ['base:allocation']));
    const ids = meta.flatMap((m) => (m.body.reply === 'meta-context' ? [m.body.contextId] : []));
    if (ids.length === 0) {
      ctx.observe(`base:allocation not selectable before TLS (${describeOption(meta)}): the context half is not exercised`);
      return;
    }
    const st2 = await c2.option(Opt.STARTTLS);
    if (!ctx.must(finalOf(st2)?.type === Rep.ACK, 'NBD_OPT_STARTTLS is acknowledged', describeOption(st2))) return;
    await c2.startTls(rightCreds(ctx));
    const sr2 = await c2.option(Opt.STRUCTURED_REPLY);
    ctx.must(finalOf(sr2)?.type === Rep.ACK, 'NBD_OPT_STRUCTURED_REPLY after STARTTLS is acknowledged (as a first request)', describeOption(sr2));
    const go2 = await c2.option(Opt.GO, encodeInfoRequest(name, []));
    if (!ctx.must(finalOf(go2)?.type === Rep.ACK, 'NBD_OPT_GO over TLS succeeds', describeOption(go2))) return;
    c2.enterTransmission(true, ids); // accept the stale id, so a kept selection is judged, not a framing error
    const bs = await c2.request({ type: Cmd.BLOCK_STATUS, offset: 0, length: 65536 });
    ctx.must(bs.error !== 0, 'BLOCK_STATUS fails: the context selected before STARTTLS was forgotten', describeReply(bs) + (bs.status.size ? ` with contexts ${[...bs.status.keys()].join(',')}` : ''));
  },
});

const starttlsTwice = nbdCase({
  id: 'nbd/tls/starttls-twice',
  section: sec(`${FORCED}; ${SELECTIVE}`, 'J84'),
  level: 'MUST',
  title: 'A second STARTTLS gets ERR_INVALID; no ERR_TLS_REQD once TLS is up',
  description: 'After STARTTLS and the TLS handshake: NBD_OPT_STARTTLS again, then NBD_OPT_LIST, NBD_OPT_INFO and NBD_OPT_GO.',
  expectation: 'NBD_REP_ERR_INVALID for the second STARTTLS; LIST and INFO answered without NBD_REP_ERR_TLS_REQD; GO succeeds.',
  async run(ctx) {
    tlsOf(ctx);
    const conn = await plain(ctx);
    const st = await conn.option(Opt.STARTTLS);
    if (!ctx.must(finalOf(st)?.type === Rep.ACK, 'NBD_OPT_STARTTLS is acknowledged', describeOption(st))) return;
    await conn.startTls(rightCreds(ctx));
    const again = await conn.option(Opt.STARTTLS);
    ctx.must(finalOf(again)?.type === Rep.ERR_INVALID, 'a second NBD_OPT_STARTTLS is answered with NBD_REP_ERR_INVALID', describeOption(again));
    const list = await conn.option(Opt.LIST);
    ctx.must(list.every((m) => m.type !== Rep.ERR_TLS_REQD) && finalOf(list)?.type === Rep.ACK, 'NBD_OPT_LIST over TLS succeeds (no ERR_TLS_REQD)', describeOption(list));
    const info = await conn.option(Opt.INFO, encodeInfoRequest(exportName(ctx), []));
    ctx.must(finalOf(info)?.type === Rep.ACK, 'NBD_OPT_INFO over TLS succeeds (no ERR_TLS_REQD)', describeOption(info));
    const go = await conn.option(Opt.GO, encodeInfoRequest(exportName(ctx), []));
    if (!ctx.must(finalOf(go)?.type === Rep.ACK, 'NBD_OPT_GO over TLS succeeds', describeOption(go))) return;
    conn.enterTransmission(false);
    await readsRight(ctx, conn);
  },
});

// ------------------------------------------------------------------------------------------
// J93: clients that stall in the handshake

const STALLED = 4;

const stalledHandshake = nbdCase({
  id: 'nbd/tls/stalled-handshake',
  section: sec('proto.md "Security considerations"', 'J93'),
  level: 'SHOULD',
  title: 'Clients stalled after STARTTLS do not keep others out',
  description: `${STALLED} clients send NBD_OPT_STARTTLS, read the acknowledgement and then send nothing (no TLS ClientHello); meanwhile a client with the right credentials connects.`,
  expectation: 'The client with the right credentials is served while the others stall (QEMU 9.1/10.0 bound the handshake time and the connections for this, CVE-2024-7409; here only the healthy client is judged, no time is measured).',
  async run(ctx) {
    tlsOf(ctx);
    const stalled: NbdConnection[] = [];
    for (let i = 0; i < STALLED; i++) {
      const c = await plain(ctx);
      const r = await c.option(Opt.STARTTLS);
      if (!ctx.must(finalOf(r)?.type === Rep.ACK, 'NBD_OPT_STARTTLS is acknowledged', describeOption(r))) return;
      stalled.push(c);
    }
    const o = await attempt(ctx, rightCreds(ctx));
    ctx.should(o.kind === 'served', `a client with the right credentials is served while ${STALLED} others stall in the handshake`, describeOutcome(o));
    if (o.kind === 'served') await readsRight(ctx, o.conn, 'SHOULD');
    ctx.observe(`${stalled.filter((c) => c.isClosed).length} of ${STALLED} stalled connections closed by the server by then`);
  },
});

// ------------------------------------------------------------------------------------------
// J85-J90: credentials

interface CredRow {
  name: string;
  section: string;
  level: Level;
  title: string;
  /** The credentials to try, or a reason to skip. */
  creds(ctx: Ctx): TlsClientConfig;
  /** true: the client must get to the export; false: it must not. */
  served: boolean;
  /** For a refusal: it must come from the client's own check (the server is right, the client
   * must not trust it), not from the server. */
  clientSide?: boolean;
  expectation: string;
}

const needMode = (ctx: Ctx, mode: 'x509' | 'psk') => {
  const t = tlsOf(ctx);
  if (t.mode !== mode) ctx.skip(`the target runs ${t.mode} TLS; the case is for ${mode}`);
};

const CREDENTIALS: CredRow[] = [
  {
    name: 'x509/accepted', section: sec(TLS, 'J85'), level: 'MUST', title: 'x509: the client with the right certificate is served',
    creds: (ctx) => (needMode(ctx, 'x509'), rightCreds(ctx)), served: true,
    expectation: 'STARTTLS is acknowledged, the handshake completes, GO succeeds, a READ returns the data.',
  },
  {
    name: 'x509/tls1.2', section: sec('proto.md "TLS versions"', 'J85'), level: 'MUST', title: 'x509 over TLS 1.2 (which every NBD TLS implementation must support)',
    creds: (ctx) => (needMode(ctx, 'x509'), { ...rightCreds(ctx), maxVersion: 'TLSv1.2' }), served: true,
    expectation: 'The handshake capped at TLS 1.2 completes and the export is served.',
  },
  {
    name: 'psk/accepted', section: sec(TLS, 'J85'), level: 'MUST', title: 'PSK: the client with the right identity and key is served',
    creds: (ctx) => (needMode(ctx, 'psk'), rightCreds(ctx)), served: true,
    expectation: 'STARTTLS is acknowledged, the handshake completes (TLS 1.3 when both ends offer it), GO succeeds, a READ returns the data.',
  },
  {
    name: 'psk/tls1.2', section: sec('proto.md "TLS versions"', 'J85'), level: 'MUST', title: 'PSK over TLS 1.2',
    creds: (ctx) => (needMode(ctx, 'psk'), { ...rightCreds(ctx), maxVersion: 'TLSv1.2' }), served: true,
    expectation: 'A TLS 1.2 PSK suite is agreed and the export is served.',
  },
  {
    name: 'x509/untrusted-server', section: sec('proto.md "Client-side requirements"', 'J86'), level: 'MUST', title: 'A server certificate from a CA the client does not trust is refused (client check)',
    creds: (ctx) => (needMode(ctx, 'x509'), { type: 'x509', certificates: pkiOf(ctx).untrusted.dir }), served: false, clientSide: true,
    expectation: 'The client, trusting only another CA, fails the handshake and terminates the session.',
  },
  {
    name: 'x509/wrong-host', section: sec('proto.md "Client-side requirements"', 'J86'), level: 'MUST', title: 'A server certificate for another host name is refused (client check)',
    creds: (ctx) => (needMode(ctx, 'x509'), { ...(rightCreds(ctx) as Extract<TlsClientConfig, { type: 'x509' }>), hostname: 'wrong.invalid' }), served: false, clientSide: true,
    expectation: 'The client expecting wrong.invalid fails the handshake: the certificate names localhost and 127.0.0.1.',
  },
  {
    name: 'x509/no-client-cert', section: sec(AUTH, 'J87'), level: 'MUST', title: 'verify-peer: a client without a certificate never reaches an export',
    creds: (ctx) => {
      needMode(ctx, 'x509');
      if (!tlsOf(ctx).verifyPeer) ctx.skip('the target does not ask for client certificates');
      return { ...(rightCreds(ctx) as Extract<TlsClientConfig, { type: 'x509' }>), noClientCert: true };
    },
    served: false,
    expectation: 'The server refuses the handshake (or closes right after it); GO never succeeds.',
  },
  {
    name: 'x509/untrusted-client-cert', section: sec(AUTH, 'J87'), level: 'MUST', title: 'verify-peer: a client certificate from an untrusted CA never reaches an export',
    creds: (ctx) => {
      needMode(ctx, 'x509');
      if (!tlsOf(ctx).verifyPeer) ctx.skip('the target does not ask for client certificates');
      return { type: 'x509', certificates: pkiOf(ctx).untrustedClient.dir };
    },
    served: false,
    expectation: 'The server refuses the certificate; GO never succeeds.',
  },
  {
    name: 'psk/wrong-key', section: sec(AUTH, 'J88'), level: 'MUST', title: 'PSK: the right identity with a wrong key never reaches an export',
    creds: (ctx) => (needMode(ctx, 'psk'), { type: 'psk', pskFile: pkiOf(ctx).psk.wrongKeyFile, identity: pkiOf(ctx).psk.identity }), served: false,
    expectation: 'The handshake fails (the finished messages do not verify).',
  },
  {
    name: 'psk/unknown-identity', section: sec(AUTH, 'J88'), level: 'MUST', title: 'PSK: an identity the server does not know never reaches an export',
    creds: (ctx) => (needMode(ctx, 'psk'), { type: 'psk', pskFile: pkiOf(ctx).psk.wrongIdentityFile, identity: 'nobody' }), served: false,
    expectation: 'The handshake fails.',
  },
  {
    name: 'authz/deny', section: sec(AUTH, 'J89'), level: 'MUST', title: 'Authorization: a certificate that verifies but whose name is not on the list never reaches an export',
    creds: (ctx) => (needMode(ctx, 'x509'), tlsOf(ctx).authzDenied ?? ctx.skip('the target has no authorization list (QEMU tls-authz)')),
    served: false,
    expectation: 'A client certificate of the same CA with another distinguished name is refused at or after the handshake; GO never succeeds.',
  },
  {
    // QEMU consults tls-authz for x509 distinguished names only: with PSK credentials its
    // credential check does nothing (crypto/tlssession.c, qcrypto_tls_session_check_credentials),
    // so this is a MAY, reported, not a failure of QEMU.
    name: 'authz/psk-identity', section: sec(AUTH, 'J89'), level: 'MAY', title: 'Authorization with PSK: an identity the server knows but the list does not name is refused',
    creds: (ctx) => (needMode(ctx, 'psk'), tlsOf(ctx).authzDenied ?? ctx.skip('the target has no authorization list (QEMU tls-authz)')),
    served: false,
    expectation: 'A second identity from the server\'s keys.psk, not the one on the authorization list, never reaches an export (QEMU does not apply tls-authz to PSK).',
  },
];

const credentialCases: NbdCase[] = CREDENTIALS.map((row) =>
  nbdCase({
    id: `nbd/tls/${row.name}`,
    section: row.section,
    level: row.level,
    title: row.title,
    description: 'A plaintext greeting, NBD_OPT_STARTTLS, the TLS handshake with the credentials named in the title, then NBD_OPT_GO.',
    expectation: row.expectation,
    async run(ctx) {
      const creds = row.creds(ctx);
      const o = await attempt(ctx, creds);
      ctx.observe(describeOutcome(o));
      if (row.served) {
        if (!ctx.check(row.level, o.kind === 'served', 'the client with these credentials reaches the export', describeOutcome(o))) return;
        if (o.kind === 'served') await readsRight(ctx, o.conn, row.level);
        return;
      }
      ctx.check(row.level, o.kind !== 'served', 'the client with these credentials never reaches an export', describeOutcome(o));
      if (row.clientSide) ctx.check(row.level, o.kind === 'handshake-failed', 'the conformance client itself refuses the server\'s certificate', describeOutcome(o));
      await stillServes(ctx);
    },
  }),
);

// ------------------------------------------------------------------------------------------
// J90-J92: SELECTIVETLS

interface SelectiveRow {
  name: string;
  section: string;
  title: string;
  expectation: string;
  run(ctx: Ctx, t: TlsTargetInfo): Promise<void>;
}

const clearName = (ctx: Ctx, t: TlsTargetInfo) => ctx.target.exports[t.clearRole!]!.name;

const SELECTIVE_ROWS: SelectiveRow[] = [
  {
    name: 'clear-export', section: sec(SELECTIVE, 'J90'), title: 'SELECTIVETLS: the export offered in the clear is served without TLS',
    expectation: 'NBD_OPT_GO of the clear export succeeds in plaintext and a READ works.',
    async run(ctx, t) {
      const conn = await plain(ctx, t.clearRole);
      const go = await conn.option(Opt.GO, encodeInfoRequest(clearName(ctx, t), []));
      if (!ctx.must(finalOf(go)?.type === Rep.ACK, 'NBD_OPT_GO of the clear export succeeds without TLS', describeOption(go))) return;
      conn.enterTransmission(false);
      const r = await conn.request({ type: Cmd.READ, offset: 0, length: 512 });
      ctx.must(r.error === 0, 'a READ of the clear export succeeds', describeReply(r));
    },
  },
  {
    name: 'tls-only-export', section: sec(SELECTIVE, 'J91'), title: 'SELECTIVETLS: INFO and GO of a TLS-only export before TLS get ERR_TLS_REQD',
    expectation: 'NBD_REP_ERR_TLS_REQD for both; the stream stays in sync (STARTTLS, TLS and GO then work).',
    async run(ctx) {
      const conn = await plain(ctx);
      for (const opt of [Opt.INFO, Opt.GO]) {
        const r = await conn.option(opt, encodeInfoRequest(exportName(ctx), []));
        ctx.must(r.length === 1 && finalOf(r)?.type === Rep.ERR_TLS_REQD, `${opt === Opt.INFO ? 'NBD_OPT_INFO' : 'NBD_OPT_GO'} of the TLS-only export before TLS gets NBD_REP_ERR_TLS_REQD only`, describeOption(r));
      }
      await tlsAfter(ctx, conn, 'INFO and GO refused');
    },
  },
  {
    name: 'tls-reqd-only-for-exports', section: sec(SELECTIVE, 'J92'), title: 'SELECTIVETLS: no ERR_TLS_REQD for options other than INFO, GO, EXPORT_NAME',
    expectation: 'NBD_OPT_LIST and NBD_OPT_STRUCTURED_REPLY before TLS are answered, never with NBD_REP_ERR_TLS_REQD.',
    async run(ctx, t) {
      const conn = await plain(ctx, t.clearRole);
      for (const opt of [Opt.LIST, Opt.STRUCTURED_REPLY]) {
        const r = await conn.option(opt);
        ctx.must(r.every((m) => m.type !== Rep.ERR_TLS_REQD), `${opt === Opt.LIST ? 'NBD_OPT_LIST' : 'NBD_OPT_STRUCTURED_REPLY'} before TLS is not refused with NBD_REP_ERR_TLS_REQD`, describeOption(r));
      }
    },
  },
  {
    name: 'export-name-tls-only', section: sec(SELECTIVE, 'J91'), title: 'SELECTIVETLS: EXPORT_NAME of a TLS-only export before TLS ends the session',
    expectation: 'The server terminates the session; it never sends the export size and flags.',
    async run(ctx) {
      const { conn, noZeroes } = await plainGreet(ctx);
      conn.sendOption(Opt.EXPORT_NAME, Buffer.from(exportName(ctx), 'utf8'));
      try {
        const e = await conn.readExportNameReply(noZeroes);
        ctx.must(false, 'the server terminates the session', `entered transmission in plaintext: size ${e.size}`);
      } catch (e) {
        if (!(e instanceof NbdClientError)) throw e;
        ctx.must(e.kind === 'closed', 'the server terminates the session', e.kind === 'timeout' ? 'neither closed nor answered (hang)' : e.message);
      }
    },
  },
];

const selectiveCases: NbdCase[] = SELECTIVE_ROWS.map((row) =>
  nbdCase({
    id: `nbd/tls/selective/${row.name}`,
    section: row.section,
    level: 'MUST',
    title: row.title,
    description: 'On a server that offers one export in the clear and the others TLS-only (nbd-server with per-export force_tls).',
    expectation: row.expectation,
    async run(ctx) {
      const t = requirePolicy(ctx, 'selective');
      if (!t.clearRole || !ctx.target.exports[t.clearRole]) ctx.skip('the target names no export offered in the clear');
      await row.run(ctx, t);
    },
  }),
);

export const tlsCases: NbdCase[] = [...beforeTlsCases, forcedExportName, injection, resetsState, starttlsTwice, stalledHandshake, ...credentialCases, ...selectiveCases];
