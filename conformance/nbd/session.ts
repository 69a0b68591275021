// Handshake helpers on top of NbdConnection: the ordinary, well-behaved way to reach the
// transmission phase (greeting, client flags, SR, SET_META_CONTEXT, GO or EXPORT_NAME).
// Cases that test the handshake itself drive NbdConnection directly.
import { encodeInfoRequest, encodeMetaRequest, type OptionReply } from './codec.ts';
import { CF_FIXED_NEWSTYLE, CF_NO_ZEROES, HS_FIXED_NEWSTYLE, HS_NO_ZEROES, Info, Opt, repName } from './constants.ts';
import { NbdConnection, type Address, type ConnectOptions } from './client.ts';
import { NbdClientError } from './errors.ts';

export interface NegotiateOptions {
  exportName: string;
  /** Ask for structured replies (default true). */
  structured?: boolean;
  /** Meta contexts to select (needs structured replies). */
  meta?: readonly string[];
  /** End with NBD_OPT_GO (default) or the old NBD_OPT_EXPORT_NAME. */
  via?: 'go' | 'export-name';
  /** Info types requested in GO (default: BLOCK_SIZE). */
  infos?: readonly number[];
}

export interface Session {
  handshakeFlags: number;
  noZeroes: boolean;
  structured: boolean;
  size: bigint;
  transmissionFlags: number;
  blockSize?: { minimum: number; preferred: number; maximum: number };
  /** Selected meta contexts by name -> id. */
  contexts: Map<string, number>;
  goReplies: OptionReply[];
}

/** Greeting + client flags, then STARTTLS and the TLS handshake when the connection was made
 * with TLS credentials (unless `plaintext`: cases that test what a server does before TLS).
 * Returns the handshake flags. */
export async function greet(conn: NbdConnection, clientFlags?: number, opts: { plaintext?: boolean } = {}): Promise<{ handshakeFlags: number; noZeroes: boolean }> {
  const g = await conn.readGreeting();
  if (g.kind !== 'greeting') throw new NbdClientError('refused', 'server speaks oldstyle negotiation; the suite needs fixed newstyle');
  const noZeroes = (g.handshakeFlags & HS_NO_ZEROES) !== 0;
  const flags = clientFlags ?? ((g.handshakeFlags & HS_FIXED_NEWSTYLE ? CF_FIXED_NEWSTYLE : 0) | (noZeroes ? CF_NO_ZEROES : 0));
  conn.sendClientFlags(flags);
  // Flags the server must drop the connection for (unknown bits, NO_ZEROES not offered, no
  // FIXED_NEWSTYLE: proto.md "TLS requires fixed newstyle") are sent as the case asked, in clear.
  const valid = (flags & ~(CF_FIXED_NEWSTYLE | CF_NO_ZEROES)) === 0 && (flags & CF_FIXED_NEWSTYLE) !== 0 && ((flags & CF_NO_ZEROES) === 0 || noZeroes);
  if (conn.tls && !opts.plaintext && valid) await startTls(conn);
  return { handshakeFlags: g.handshakeFlags, noZeroes: noZeroes && (flags & CF_NO_ZEROES) !== 0 };
}

/** NBD_OPT_STARTTLS, which must be ACKed, then the TLS handshake (proto.md "NBD_OPT_STARTTLS"). */
export async function startTls(conn: NbdConnection): Promise<string> {
  const r = await conn.option(Opt.STARTTLS);
  const last = r[r.length - 1];
  if (last?.body.reply !== 'ack') throw new NbdClientError('tls', `NBD_OPT_STARTTLS refused: ${last ? repName(last.type) : 'no reply'}`);
  return conn.startTls();
}

function finalError(replies: OptionReply[]): OptionReply | undefined {
  const last = replies[replies.length - 1];
  return last?.body.reply === 'error' ? last : undefined;
}

export async function negotiate(conn: NbdConnection, opts: NegotiateOptions): Promise<Session> {
  const { handshakeFlags, noZeroes } = await greet(conn);
  let structured = false;
  if (opts.structured ?? true) {
    const r = await conn.option(Opt.STRUCTURED_REPLY);
    structured = !finalError(r);
  }
  const contexts = new Map<string, number>();
  if (opts.meta?.length) {
    if (!structured) throw new NbdClientError('refused', 'meta contexts requested but structured replies were refused');
    const r = await conn.option(Opt.SET_META_CONTEXT, encodeMetaRequest(opts.exportName, opts.meta));
    const err = finalError(r);
    if (err) throw new NbdClientError('refused', `NBD_OPT_SET_META_CONTEXT refused: ${repName(err.type)}`);
    for (const m of r) if (m.body.reply === 'meta-context') contexts.set(m.body.name, m.body.contextId);
  }
  if (opts.via === 'export-name') {
    conn.sendOption(Opt.EXPORT_NAME, Buffer.from(opts.exportName, 'utf8'));
    const e = await conn.readExportNameReply(noZeroes);
    conn.enterTransmission(structured, contexts.values());
    return { handshakeFlags, noZeroes, structured, size: e.size, transmissionFlags: e.transmissionFlags, contexts, goReplies: [] };
  }
  const goReplies = await conn.option(Opt.GO, encodeInfoRequest(opts.exportName, opts.infos ?? [Info.BLOCK_SIZE]));
  const err = finalError(goReplies);
  if (err) throw new NbdClientError('refused', `NBD_OPT_GO for export "${opts.exportName}" refused: ${repName(err.type)}${err.body.reply === 'error' && err.body.message ? ` "${err.body.message}"` : ''}`);
  let size: bigint | undefined;
  let transmissionFlags = 0;
  let blockSize: Session['blockSize'];
  for (const m of goReplies) {
    const b = m.body;
    if (b.reply !== 'info') continue;
    if (b.info === 'export') {
      size = b.size;
      transmissionFlags = b.transmissionFlags;
    } else if (b.info === 'block-size') blockSize = { minimum: b.minimum, preferred: b.preferred, maximum: b.maximum };
  }
  if (size === undefined) throw new NbdClientError('refused', 'NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
  conn.enterTransmission(structured, contexts.values());
  return { handshakeFlags, noZeroes, structured, size, transmissionFlags, ...(blockSize ? { blockSize } : {}), contexts, goReplies };
}

/** Connects and negotiates in one go. */
export async function open(address: Address, opts: NegotiateOptions & ConnectOptions): Promise<{ conn: NbdConnection; session: Session }> {
  const conn = await NbdConnection.connect(address, opts);
  try {
    return { conn, session: await negotiate(conn, opts) };
  } catch (e) {
    conn.close();
    throw e;
  }
}
