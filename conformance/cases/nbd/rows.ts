// Case shapes the nbd catalogue repeats, each run by one function, so that a case that differs
// from its neighbours only in bytes and expectations is a row of data (as h2spec's catalogue
// reads). A case whose logic is its own stays a function in its section's file.
import type { RequestInput } from '../../nbd/client.ts';
import type { OptionReply } from '../../nbd/codec.ts';
import { greet, type Session } from '../../nbd/session.ts';
import type { Level } from '../../runner/model.ts';
import {
  Errno,
  connect,
  describeOption,
  describeReply,
  err,
  finalOf,
  nbdCase,
  optionsInSync,
  requireFlag,
  requireMeta,
  requireStructured,
  requireWritable,
  session,
  usableAfter,
  type Ctx,
  type NbdCase,
} from './env.ts';

/** What a case needs of the target; a need not met skips the case with the reason. */
export type Need = 'writable' | 'structured' | 'meta' | { readonly flag: number };

export function requireAll(ctx: Ctx, needs: readonly Need[] = []): void {
  for (const n of needs) {
    if (n === 'writable') requireWritable(ctx);
    else if (n === 'structured') requireStructured(ctx);
    else if (n === 'meta') requireMeta(ctx);
    else requireFlag(ctx, n.flag);
  }
}

interface CaseText {
  readonly id: `nbd/${string}`;
  readonly section: string;
  readonly level: Level;
  readonly title: string;
  readonly description: string;
  readonly expectation: string;
}

/**
 * A request the server must refuse with an error reply, not a disconnect: proto.md "Error values".
 * Checks, in order: the request fails (MUST, when `fails` names the claim), the error is `errno`
 * (SHOULD), and the connection still serves a READ (MUST).
 */
export interface RejectionRow extends CaseText {
  readonly needs?: readonly Need[];
  /** Negotiate base:allocation first (for BLOCK_STATUS). */
  readonly meta?: boolean;
  readonly request: (s: Session) => RequestInput;
  /** The MUST claim that the request fails; without it only the error value is judged. */
  readonly fails?: string;
  readonly errno: number;
  /** The SHOULD claim about the error value; by default "the error is E" observed as the errno,
   * otherwise observed as the whole reply. */
  readonly errnoClaim?: string;
  /** What the connection must survive (usableAfter). */
  readonly after: string;
}

export function rejectionCase(row: RejectionRow): NbdCase {
  const { needs, meta, request, fails, errno, errnoClaim, after, ...text } = row;
  return nbdCase({
    ...text,
    async run(ctx) {
      requireAll(ctx, needs);
      const { conn, s } = await session(ctx, meta ? { meta: ['base:allocation'] } : {});
      const r = await conn.request(request(s));
      if (fails !== undefined) ctx.must(r.error !== 0, fails, describeReply(r));
      if (errnoClaim !== undefined) ctx.should(r.error === errno, errnoClaim, describeReply(r));
      else ctx.should(r.error === errno, `the error is ${err(errno)}`, err(r.error));
      await usableAfter(ctx, conn, after);
    },
  });
}

/** A request at the edge of the spec (left unspecified, or a client error the spec lets the server
 * take either way): each reply is recorded, and the server SHOULD NOT disconnect. */
export interface ProbeRow extends CaseText {
  readonly needs?: readonly Need[];
  readonly meta?: (ctx: Ctx) => boolean;
  /** Labelled requests, sent in order on one connection. */
  readonly requests: (ctx: Ctx, s: Session) => readonly (readonly [label: string, input: RequestInput])[];
  readonly after: string;
}

export function probeCase(row: ProbeRow): NbdCase {
  const { needs, meta, requests, after, ...text } = row;
  return nbdCase({
    ...text,
    async run(ctx) {
      requireAll(ctx, needs);
      const { conn, s } = await session(ctx, meta?.(ctx) ? { meta: ['base:allocation'] } : {});
      for (const [label, input] of requests(ctx, s)) {
        const r = await conn.request(input);
        ctx.observe(`${label}: ${describeReply(r)}`);
      }
      await usableAfter(ctx, conn, after, 'SHOULD');
    },
  });
}

/** A claim about the replies to one option, judged at its level and observed as the replies. */
export interface OptionCheck {
  readonly level: Level;
  readonly claim: string;
  readonly ok: (replies: readonly OptionReply[]) => boolean;
}

/** The final reply is one of `types`. */
export const finalIs = (...types: number[]) => (r: readonly OptionReply[]) => types.includes(finalOf(r)?.type ?? -1);
/** The only reply is `type`. */
export const onlyReply = (type: number) => (r: readonly OptionReply[]) => r.length === 1 && r[0]?.type === type;
/** Among the replies is NBD_REP_INFO carrying NBD_INFO_EXPORT. */
export const hasExportInfo = (r: readonly OptionReply[]) => r.some((m) => m.body.reply === 'info' && m.body.info === 'export');

/**
 * One option sent during negotiation (after `before`, whose replies are not judged), its replies
 * judged by `checks`, then the option stream must still be in sync: proto.md "Option haggling"
 * wants exactly one final reply per option and the server still negotiating.
 */
export interface OptionRow extends CaseText {
  readonly needs?: readonly Need[];
  readonly before?: readonly number[];
  readonly option: number;
  readonly data?: (ctx: Ctx) => Buffer;
  readonly checks: readonly OptionCheck[];
  /** Record the replies as `${observe} ${replies}`. */
  readonly observe?: string;
  /** What the stream must stay in sync after (optionsInSync). */
  readonly inSync: string;
  /** Whether structured replies are on for that check: fixed, or read off the replies. */
  readonly structured?: boolean | ((replies: readonly OptionReply[]) => boolean);
}

export function optionCase(row: OptionRow): NbdCase {
  const { needs, before = [], option, data, checks, observe, inSync, structured = false, ...text } = row;
  return nbdCase({
    ...text,
    async run(ctx) {
      requireAll(ctx, needs);
      const conn = await connect(ctx);
      await greet(conn);
      for (const o of before) await conn.option(o);
      const r = await conn.option(option, data?.(ctx));
      for (const c of checks) ctx.check(c.level, c.ok(r), c.claim, describeOption(r));
      if (observe !== undefined) ctx.observe(`${observe} ${describeOption(r)}`);
      await optionsInSync(ctx, conn, inSync, typeof structured === 'function' ? structured(r) : structured);
    },
  });
}

export { Errno };
