// One NBD session, fixed newstyle, as the protocol orders it (docs/requirements/nbd.md §1.2-§1.7):
// greeting -> client flags -> option haggling (one option at a time, each answered by zero or
// more partial replies and one final reply) -> transmission (pipelined requests with cookies,
// replies in any order, structured replies only once negotiated) -> NBD_CMD_DISC (no reply;
// the server finishes outstanding requests, then closes).
//
// `enabled(state)` is the answer to "which message may follow which": conformance uses it to
// know what a client may send next and what a server may answer. Options and requests are
// bounded by budgets so the state space stays finite.

import { match } from 'ts-pattern';
import type { ActionLabel, Behaviour, Invariant } from '../../explorer/behaviour.ts';
import { SpecError } from '../../explorer/errors.ts';

export type OptionName = 'STRUCTURED_REPLY' | 'LIST' | 'INFO' | 'GO' | 'EXPORT_NAME' | 'ABORT';
export type Command = 'READ' | 'WRITE' | 'FLUSH' | 'DISC';
/** Server answers in the option phase (NBD_REP_*), plus EXPORT_NAME's reply-less outcomes. */
export type OptionReply = 'ACK' | 'SERVER' | 'INFO' | 'ERR_UNKNOWN' | 'ERR_INVALID' | 'EXPORT_DATA' | 'CLOSE';

export type Phase = 'greeting' | 'client-flags' | 'options' | 'transmission' | 'closed';

export interface Outstanding {
  readonly cookie: number;
  readonly cmd: Command;
  /** A structured READ reply in progress (a data chunk sent without the DONE flag). */
  readonly chunked: boolean;
}

export interface NbdSessionState {
  readonly phase: Phase;
  /** Options sent and not yet finally answered (the protocol allows one). */
  readonly pendingOptions: readonly OptionName[];
  /** Partial replies already sent for the head option (REP_SERVER, REP_INFO). */
  readonly partials: number;
  /** NBD_OPT_STRUCTURED_REPLY was acknowledged. */
  readonly structured: boolean;
  readonly optionsSent: number;
  readonly requestsSent: number;
  readonly outstanding: readonly Outstanding[];
  readonly discSent: boolean;
  /** The last transmission reply the server sent: its cookie's command and whether it was a
   * structured chunk (for the reply invariants). */
  readonly lastReply: { readonly cmd: Command; readonly structured: boolean } | undefined;
}

export type NbdSessionAction =
  | { readonly kind: 'greet' }
  | { readonly kind: 'clientFlags' }
  | { readonly kind: 'option'; readonly name: OptionName }
  | { readonly kind: 'optionReply'; readonly reply: OptionReply }
  | { readonly kind: 'request'; readonly cmd: Command }
  | { readonly kind: 'reply'; readonly cookie: number; readonly chunk: 'simple' | 'data' | 'done' }
  | { readonly kind: 'close' };

export interface NbdSessionParams {
  /** Options the client may send besides NBD_OPT_ABORT (which is always possible). */
  readonly options: number;
  /** Transmission requests besides NBD_CMD_DISC. */
  readonly requests: number;
  /** Requests in flight at once (pipelining). */
  readonly inflight: number;
}

export const DEFAULT_NBD_SESSION_PARAMS: NbdSessionParams = { options: 3, requests: 2, inflight: 2 };

export interface NbdSessionVariant {
  readonly name: string;
  readonly summary: string;
  readonly clientPipelinesOptions: boolean;
  readonly clientRequestsBeforeGoAck: boolean;
  readonly serverRepliesToDisc: boolean;
  readonly serverClosesEarly: boolean;
  readonly serverStructuredUnasked: boolean;
  readonly expect: 'holds' | 'violates';
}

const correct = {
  clientPipelinesOptions: false,
  clientRequestsBeforeGoAck: false,
  serverRepliesToDisc: false,
  serverClosesEarly: false,
  serverStructuredUnasked: false,
};

export const NBD_SESSION: NbdSessionVariant = {
  ...correct,
  name: 'nbd-session',
  summary: 'NBD fixed-newstyle session: handshake, option haggling, transmission, disconnect',
  expect: 'holds',
};

export const NBD_SESSION_BAD: readonly NbdSessionVariant[] = [
  { ...correct, name: 'nbd-session-pipelined-options', summary: 'client sends an option before the previous final reply', clientPipelinesOptions: true, expect: 'violates' },
  { ...correct, name: 'nbd-session-early-request', summary: 'client sends a request after GO, before its ACK', clientRequestsBeforeGoAck: true, expect: 'violates' },
  { ...correct, name: 'nbd-session-disc-reply', summary: 'server replies to NBD_CMD_DISC', serverRepliesToDisc: true, expect: 'violates' },
  { ...correct, name: 'nbd-session-early-close', summary: 'server closes on DISC with requests outstanding', serverClosesEarly: true, expect: 'violates' },
  { ...correct, name: 'nbd-session-unasked-structured', summary: 'server sends structured replies without negotiation', serverStructuredUnasked: true, expect: 'violates' },
];

export function nbdSessionModel(
  variant: NbdSessionVariant = NBD_SESSION,
  params: Partial<NbdSessionParams> = {},
): Behaviour<NbdSessionState, NbdSessionAction> {
  const p: NbdSessionParams = { ...DEFAULT_NBD_SESSION_PARAMS, ...params };
  for (const [k, lo, hi] of [['options', 0, 6], ['requests', 0, 6], ['inflight', 1, 6]] as const) {
    if (!Number.isInteger(p[k]) || p[k] < lo || p[k] > hi) {
      throw new SpecError(`parameter ${k} must be an integer in [${lo}, ${hi}], got ${JSON.stringify(p[k])}`, variant.name);
    }
  }

  function optionReplies(s: NbdSessionState, opt: OptionName): OptionReply[] {
    return match(opt)
      .returnType<OptionReply[]>()
      .with('STRUCTURED_REPLY', () => (s.structured ? ['ERR_INVALID'] : ['ACK'])) // repeat: MAY be ERR_INVALID
      .with('LIST', () => (s.partials === 0 ? ['SERVER', 'ACK'] : ['ACK']))
      .with('INFO', 'GO', () => (s.partials === 0 ? ['INFO', 'ERR_UNKNOWN'] : ['ACK'])) // ACK needs INFO_EXPORT first
      .with('EXPORT_NAME', () => ['EXPORT_DATA', 'CLOSE']) // no reply format: data, or close on refusal
      .with('ABORT', () => ['ACK'])
      .exhaustive();
  }

  function enabled(s: NbdSessionState): NbdSessionAction[] {
    const out: NbdSessionAction[] = [];
    match(s.phase)
      .with('greeting', () => out.push({ kind: 'greet' }))
      .with('client-flags', () => out.push({ kind: 'clientFlags' }))
      .with('options', () => {
        // Client: the next option only after the final reply to the previous one.
        if (s.pendingOptions.length === 0 || (variant.clientPipelinesOptions && s.pendingOptions.length < 2)) {
          // Every option but ABORT spends the budget, so the model is acyclic (a failed GO cannot
          // be retried forever); ABORT is always possible, so no session gets stuck.
          const names: OptionName[] = s.optionsSent < p.options ? ['STRUCTURED_REPLY', 'LIST', 'INFO', 'GO', 'EXPORT_NAME'] : [];
          for (const name of [...names, 'ABORT' as const]) out.push({ kind: 'option', name });
        }
        const head = s.pendingOptions[0];
        if (head !== undefined) for (const reply of optionReplies(s, head)) out.push({ kind: 'optionReply', reply });
        if (variant.clientRequestsBeforeGoAck && head === 'GO' && s.requestsSent === 0) out.push({ kind: 'request', cmd: 'READ' });
      })
      .with('transmission', () => {
        if (!s.discSent && s.outstanding.length < p.inflight) {
          if (s.requestsSent < p.requests) for (const cmd of ['READ', 'WRITE', 'FLUSH'] as const) out.push({ kind: 'request', cmd });
          out.push({ kind: 'request', cmd: 'DISC' });
        }
        for (const o of s.outstanding) {
          if (o.cmd === 'DISC') {
            if (variant.serverRepliesToDisc) out.push({ kind: 'reply', cookie: o.cookie, chunk: 'simple' });
            continue;
          }
          const sr = s.structured || variant.serverStructuredUnasked;
          if (o.cmd === 'READ' && sr) {
            if (!o.chunked) out.push({ kind: 'reply', cookie: o.cookie, chunk: 'data' });
            out.push({ kind: 'reply', cookie: o.cookie, chunk: 'done' });
          } else {
            out.push({ kind: 'reply', cookie: o.cookie, chunk: 'simple' });
          }
        }
        // After DISC the server finishes what is outstanding, then closes.
        if (s.discSent && (variant.serverClosesEarly || s.outstanding.every((o) => o.cmd === 'DISC'))) out.push({ kind: 'close' });
      })
      .with('closed', () => {})
      .exhaustive();
    return out;
  }

  function step(s: NbdSessionState, a: NbdSessionAction): NbdSessionState {
    return match(a)
      .returnType<NbdSessionState>()
      .with({ kind: 'greet' }, () => ({ ...s, phase: 'client-flags' }))
      .with({ kind: 'clientFlags' }, () => ({ ...s, phase: 'options' }))
      .with({ kind: 'option' }, ({ name }) => ({
        ...s,
        pendingOptions: [...s.pendingOptions, name],
        optionsSent: name === 'ABORT' ? s.optionsSent : s.optionsSent + 1,
      }))
      .with({ kind: 'optionReply' }, ({ reply }) => {
        const head = s.pendingOptions[0]!;
        if (reply === 'SERVER' || reply === 'INFO') return { ...s, partials: s.partials + 1 };
        const rest = { ...s, pendingOptions: s.pendingOptions.slice(1), partials: 0 };
        return match([head, reply] as const)
          .returnType<NbdSessionState>()
          .with(['STRUCTURED_REPLY', 'ACK'], () => ({ ...rest, structured: true }))
          .with(['GO', 'ACK'], ['EXPORT_NAME', 'EXPORT_DATA'], () => ({ ...rest, phase: 'transmission' }))
          .with(['ABORT', 'ACK'], ['EXPORT_NAME', 'CLOSE'], () => ({ ...rest, phase: 'closed' }))
          .otherwise(() => rest);
      })
      .with({ kind: 'request' }, ({ cmd }) => ({
        ...s,
        requestsSent: cmd === 'DISC' ? s.requestsSent : s.requestsSent + 1,
        discSent: s.discSent || cmd === 'DISC',
        // Cookies are unique: nothing follows DISC, so it can reuse the next request number.
        outstanding: [...s.outstanding, { cookie: s.requestsSent, cmd, chunked: false }],
      }))
      .with({ kind: 'reply' }, ({ cookie, chunk }) => {
        const o = s.outstanding.find((x) => x.cookie === cookie)!;
        const lastReply = { cmd: o.cmd, structured: chunk !== 'simple' };
        if (chunk === 'data') {
          return { ...s, lastReply, outstanding: s.outstanding.map((x) => (x.cookie === cookie ? { ...x, chunked: true } : x)) };
        }
        return { ...s, lastReply, outstanding: s.outstanding.filter((x) => x.cookie !== cookie) };
      })
      .with({ kind: 'close' }, () => ({ ...s, phase: 'closed' }))
      .exhaustive();
  }

  const invariants: Invariant<NbdSessionState>[] = [
    {
      name: 'one-option-at-a-time',
      check: (s) =>
        s.pendingOptions.length > 1
          ? `client sent NBD_OPT_${s.pendingOptions[1]} before the final reply to NBD_OPT_${s.pendingOptions[0]}`
          : undefined,
    },
    {
      name: 'requests-only-in-transmission',
      check: (s) =>
        s.phase !== 'transmission' && s.phase !== 'closed' && s.outstanding.length > 0
          ? `client sent NBD_CMD_${s.outstanding[0]!.cmd} during the handshake (phase ${s.phase})`
          : undefined,
    },
    {
      name: 'no-reply-to-disc',
      check: (s) => (s.lastReply?.cmd === 'DISC' ? 'server replied to NBD_CMD_DISC, which has no reply' : undefined),
    },
    {
      name: 'close-after-outstanding',
      check: (s) =>
        s.phase === 'closed' && s.outstanding.some((o) => o.cmd !== 'DISC')
          ? `server closed after NBD_CMD_DISC with ${s.outstanding.filter((o) => o.cmd !== 'DISC').length} request(s) unanswered`
          : undefined,
    },
    {
      name: 'structured-only-if-negotiated',
      check: (s) =>
        s.lastReply?.structured && !s.structured
          ? 'server sent a structured reply chunk without NBD_OPT_STRUCTURED_REPLY being acknowledged'
          : undefined,
    },
  ];

  return {
    name: variant.name,
    params: { ...p },
    initial: () => [
      {
        phase: 'greeting',
        pendingOptions: [],
        partials: 0,
        structured: false,
        optionsSent: 0,
        requestsSent: 0,
        outstanding: [],
        discSent: false,
        lastReply: undefined,
      },
    ],
    enabled,
    step,
    label: (a): ActionLabel =>
      match(a)
        .returnType<ActionLabel>()
        .with({ kind: 'greet' }, () => ({ actor: 'server', action: 'greet' }))
        .with({ kind: 'clientFlags' }, () => ({ actor: 'client', action: 'clientFlags' }))
        .with({ kind: 'option' }, ({ name }) => ({ actor: 'client', action: 'option', args: { name } }))
        .with({ kind: 'optionReply' }, ({ reply }) => ({ actor: 'server', action: 'optionReply', args: { reply } }))
        .with({ kind: 'request' }, ({ cmd }) => ({ actor: 'client', action: 'request', args: { cmd } }))
        .with({ kind: 'reply' }, ({ cookie, chunk }) => ({ actor: 'server', action: 'reply', args: { cookie, chunk } }))
        .with({ kind: 'close' }, () => ({ actor: 'server', action: 'close' }))
        .exhaustive(),
    actionName: (a) => a.kind,
    key: (s) =>
      `${s.phase}|${s.pendingOptions.join(',')}|${s.partials}|${s.structured ? 1 : 0}|${s.optionsSent}|${s.requestsSent}|` +
      `${s.outstanding.map((o) => `${o.cookie}${o.cmd}${o.chunked ? '+' : ''}`).join(',')}|${s.discSent ? 1 : 0}|` +
      `${s.lastReply ? `${s.lastReply.cmd}${s.lastReply.structured ? 1 : 0}` : ''}`,
    invariants,
    pending: (s) => s.phase !== 'closed',
    actionNames: ['greet', 'clientFlags', 'option', 'optionReply', 'request', 'reply', 'close'],
    view: (s) => ({
      phase: s.phase,
      pendingOptions: `[${s.pendingOptions.join(',')}]`,
      structured: s.structured,
      outstanding: `[${s.outstanding.map((o) => `${o.cmd}#${o.cookie}${o.chunked ? '(chunked)' : ''}`).join(',')}]`,
      discSent: s.discSent,
    }),
  };
}
