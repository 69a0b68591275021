// Driving one model interleaving through a live `fleece serve` over real NBD connections, with
// breakpoints held and released through QMP (docs/design.md "Interleavings"): a refinement check.
//
// Every actor (guest write, snapshot read) has its own NBD connection. Between two model steps,
// every actor is either not yet submitted, parked at a breakpoint, finished, or (S3 only) blocked
// inside the implementation on a serialising wait the model also has. A model step of actor X:
//   1. arm X's next park point (the breakpoint event the mapping gives for X's next program
//      counter), filtered by X's byte range;
//   2. let X go: send its NBD request (first step) or resume the breakpoint it is parked at;
//   3. wait until X parks at the armed event (BREAKPOINT_HIT) or its reply arrives, whichever the
//      mapping says ends the step. Anything else (the reply comes while a park was expected, no
//      hit within the step timeout, a hit of the wrong kind) is a disagreement.
// Since only X moves, the implementation is deterministic between steps, and the order of the
// model is the order of the implementation. Replies are then compared byte for byte with the
// model's prediction.
// The blocking check (checkBlocked): before each step, each request the model has wait
// (ScenarioModel.blocked) is let go towards the first event past its wait and must not reach it
// within BLOCKED_GRACE_MS; it then stays let go, is re-checked at later states, and is picked up
// at that event once the model gives it its step.
import type { FleecingState } from '../../spec/models/fleecing/state.ts';
import { formatLabel } from '../../spec/explorer/label.ts';
import { predict, snapshotBytes, writeBytes, type BlockedStep, type FleecingScenario, type ScenarioExecution, type ScenarioModel, type ScenarioStep } from '../../spec/scenarios/fleecing.ts';
import type { NbdConnection } from '../nbd/client.ts';
import { Cmd, errnoName } from '../nbd/constants.ts';
import type { Reply } from '../nbd/reply.ts';
import type { QmpClient, QmpEvent } from '../qmp/client.ts';

/** Which breakpoint event ends each kind of model step (the park point before the next step). */
export interface Mapping {
  readonly name: string;
  /** Writer parked before its copy lands on the target (model pc copyWrite/serialise). */
  readonly writerBeforeCopy: string;
  /** Writer parked after the copy (done bit set), before the guest write (model pc write). */
  readonly writerBeforeWrite: string;
  /** Reader parked after its lookup/lock decision, before reading the data (model pc read). */
  readonly readerBeforeRead: { readonly legacy: string; readonly cbw: string };
  /** Writer parked before its wait for frozen reads when no done bit is set: its copy failed
   * under break-snapshot, or the snapshot was already broken (model pc write after copyFail, or
   * after a submit with snapshotError). */
  readonly writerBeforeWaitBroken: string;
  /** The blocking check's event for a guest write the model has wait for frozen reads: the
   * first event after that wait (the write is about to reach the source). */
  readonly writerPastWait: string;
  /** Snapshot discard parked with access dropped, before it waits for reads of the target range
   * (model discarder pc waiting), and the event past that wait. */
  readonly discardBeforeWait: string;
  readonly discardPastWait: string;
}

export const DEFAULT_MAPPING: Mapping = {
  name: 'default',
  writerBeforeCopy: 'cbw-target-write',
  writerBeforeWrite: 'cbw-done-set',
  readerBeforeRead: { legacy: 'overlay-lookup-done', cbw: 'snapshot-read-lock' },
  writerBeforeWaitBroken: 'cbw-wait-readers',
  writerPastWait: 'cbw-source-write',
  discardBeforeWait: 'snapshot-discard-wait',
  discardPastWait: 'snapshot-discard-target',
};

/** How long a request the model has waiting gets, once let go, to reach its next event. A bound,
 * not a timing assertion: an implementation that does wait never reaches the event however long
 * we wait, so a slow machine can only make the check miss a wrong request (never fail a right
 * one); an implementation that skips the wait reaches it in well under a millisecond of work. */
export const BLOCKED_GRACE_MS = 100;

/** Why a blocked step was not let go (counted in the reports). */
export type BlockedSkip =
  /** A request released towards its next park point (S3's serialising copy) may already be past
   * the step the model allows it: the implementation can be ahead of the model's state. */
  | 'ahead-of-model'
  /** The request waits for a serialising request that is itself waiting, which
   * bdrv_find_conflicting_request skips (docs/requirements/qemu-fleecing.md §2.1 rule c) and the S3 model does not. */
  | 'blocker-waiting'
  /** Not submitted yet: on its way to the wait it would cross the events armed for the request it
   * waits for (same clusters, same events), and breakpoints cannot tell the two apart. */
  | 'unsubmitted'
  /** Another request of an overlapping range is armed at an event on its way. */
  | 'shared-event';

export interface BlockingCounts {
  /** Blocked steps let go (or, for a request already released, watched for the grace period). */
  tried: number;
  /** Of those, how many did not reach their event while the model had them wait. */
  held: number;
  /** Later states where an already let-go request was checked again (still not at its event). */
  rechecked: number;
  skipped: Partial<Record<BlockedSkip, number>>;
}

export interface WireEvent {
  /** The model step (1-based) this event belongs to; 0 after the last step (cleanup). */
  readonly step: number;
  /** ms since the interleaving started. */
  readonly t: number;
  readonly actor: string;
  readonly text: string;
}

export interface InterleavingResult {
  readonly index: number;
  readonly region: number;
  /** The actor order, e.g. `R0 W0 W0 R0 W0`. */
  readonly order: string;
  readonly modelTrace: readonly string[];
  readonly wireTrace: readonly WireEvent[];
  /** The model's verdict on the invariant (undefined: holds). */
  readonly modelViolation: string | undefined;
  /** Implementation returned post-snapshot (or wrong) data for a snapshot read. */
  readonly implViolation: string | undefined;
  readonly agree: boolean;
  /** Why not, in one line. */
  readonly disagreement?: string;
  /** Model action names taken (for coverage) and breakpoint events hit. */
  readonly actions: readonly string[];
  readonly events: readonly string[];
  /** The blocking check: steps the model forbids, let go on the implementation. */
  readonly blocking: BlockingCounts;
  readonly durationMs: number;
}

export interface DriveContext {
  readonly model: ScenarioModel;
  readonly qmp: QmpClient;
  /** One connection per actor (W0.., R0..): writers on the live export, readers on the fleecing export. */
  readonly conns: ReadonlyMap<string, NbdConnection>;
  readonly mapping: Mapping;
  /** Step timeout: a park or reply not seen within it is a disagreement (blocked or ran through). */
  readonly stepTimeoutMs: number;
  readonly hits: HitWatcher;
  /** Node names the breakpoints are armed on: the copy-before-write filter (guest writes and,
   * modern, snapshot reads) and the temp overlay (legacy snapshot reads). */
  readonly nodes: { readonly cbw: string; readonly temp: string };
  /** The blocking check's grace period (BLOCKED_GRACE_MS); 0 turns the check off. */
  readonly blockedGraceMs: number;
}

/** Collects BREAKPOINT_HIT events by tag from a QMP connection. */
export class HitWatcher {
  private readonly hits = new Map<string, Record<string, unknown>>();
  private readonly waiters = new Map<string, (h: Record<string, unknown>) => void>();
  private stopped = false;
  constructor(private readonly qmp: QmpClient) {
    void this.loop();
  }
  private async loop(): Promise<void> {
    while (!this.stopped && !this.qmp.isClosed) {
      let e: QmpEvent;
      try {
        e = await this.qmp.waitEvent('BREAKPOINT_HIT', 500);
      } catch {
        continue;
      }
      const data = e.data ?? {};
      const tag = String(data.tag);
      this.hits.set(tag, data);
      this.waiters.get(tag)?.(data);
    }
  }
  /** Resolves with the hit of `tag` (already seen or future). */
  wait(tag: string): Promise<Record<string, unknown>> {
    const h = this.hits.get(tag);
    if (h) return Promise.resolve(h);
    return new Promise((r) => this.waiters.set(tag, r));
  }
  /** The hit of `tag`, if it was seen already. */
  seen(tag: string): Record<string, unknown> | undefined {
    return this.hits.get(tag);
  }
  forget(tag: string): void {
    this.hits.delete(tag);
    this.waiters.delete(tag);
  }
  stop(): void {
    this.stopped = true;
  }
}

type Plan = { arm?: string; await: 'hit' | 'reply' | 'none'; inject?: 'EIO' };

/** What ends step `st` of `actor` under `mapping` (see the header). */
export function planStep(kind: 'legacy' | 'cbw', st: ScenarioStep, mapping: Mapping): Plan {
  const last = st.parts[st.parts.length - 1]!;
  const s: FleecingState = st.after;
  if (st.actor.startsWith('D')) return s.discarder?.pc === 'waiting' ? { arm: mapping.discardBeforeWait, await: 'hit' } : { await: 'reply' };
  if (st.actor.startsWith('W')) {
    const w = Number(st.actor.slice(1));
    const pc = s.writers[w]!.pc;
    if (last.kind === 'serialise') return { arm: mapping.writerBeforeWrite, await: 'none' };
    // The environment fails the copy: the writer parked before its target write is resumed with
    // an I/O error there. break-guest-write: the write fails; break-snapshot: it goes on to wait
    // for frozen reads without setting done bits.
    if (last.kind === 'copyFail') return pc === 'write' ? { arm: mapping.writerBeforeWaitBroken, await: 'hit', inject: 'EIO' } : { await: 'reply', inject: 'EIO' };
    // A guest write after the snapshot broke copies nothing and only waits for frozen reads.
    if (last.kind === 'submit' && kind === 'cbw' && st.before.snapshotError && pc === 'write') return { arm: mapping.writerBeforeWaitBroken, await: 'hit' };
    if (pc === 'serialise' || pc === 'copyWrite' || pc === 'copyLate') return { arm: mapping.writerBeforeCopy, await: 'hit' };
    if (pc === 'write' || pc === 'writeEarly') return { arm: mapping.writerBeforeWrite, await: 'hit' };
    return { await: 'reply' };
  }
  const r = Number(st.actor.slice(1));
  const pc = s.readers[r]!.pc;
  if (pc === 'read') return { arm: mapping.readerBeforeRead[kind], await: 'hit' };
  if (pc === 'lookup' || pc === 'lock') throw new Error(`internal: reader step ends at ${pc} (not fused)`);
  return { await: 'reply' };
}

interface ActorRun {
  submitted: boolean;
  parked?: string;
  /** The event it is parked at. */
  parkedEvent?: string;
  /** Let go by the blocking check while the model has it wait: armed at `event` (tag), not yet
   * there. */
  held?: { tag: string; event: string; why: string };
  /** S3's released serialising copy was watched for the grace period in a blocked state. */
  watched?: boolean;
  /** Released towards `running.event`, tag already armed (S3 serialising wait). */
  running?: { tag: string; event: string };
  reply?: Promise<Reply>;
  settled?: Reply | Error;
}

let tagSeq = 0;

/** Drives execution `ex` in region `region` (byte offset `base`). Never throws for an
 * implementation fault: that is a disagreement. */
export async function driveInterleaving(ctx: DriveContext, ex: ScenarioExecution, region: number, base: number): Promise<InterleavingResult> {
  const m = ctx.model;
  const sc = m.scenario;
  const kind = m.scheme.kind;
  const t0 = performance.now();
  const wire: WireEvent[] = [];
  let stepNo = 0;
  let finished = false;
  const log = (actor: string, text: string) => wire.push({ step: finished ? 0 : stepNo, t: Math.round((performance.now() - t0) * 10) / 10, actor, text });
  const runs = new Map<string, ActorRun>(m.actors.map((a) => [a, { submitted: false }]));
  const armed: string[] = [];
  const replied = new Set<string>();
  const events: string[] = [];
  const actions: string[] = [];
  const prediction = predict(m, ex, region);
  const rangeOf = (actor: string) => {
    const k = Number(actor.slice(1));
    const r = actor.startsWith('W') ? sc.writes[k]! : actor.startsWith('D') ? sc.discards![k]! : sc.reads[k]!;
    return { offset: base + r.offset, length: r.length };
  };
  const qmpOk = async (cmd: string, args: Record<string, unknown>) => {
    const r = await ctx.qmp.execute(cmd, args);
    if (!r.ok) throw new StepFailure(`QMP ${cmd} ${JSON.stringify(args)} failed: ${r.error.class}: ${r.error.desc}`);
  };
  const submit = (actor: string, run: ActorRun) => {
    const conn = ctx.conns.get(actor)!;
    const { offset, length } = rangeOf(actor);
    if (actor.startsWith('W')) {
      const k = Number(actor.slice(1));
      if (sc.writes[k]!.zeroes) {
        run.reply = conn.request({ type: Cmd.WRITE_ZEROES, offset, length });
        log(actor, `NBD_CMD_WRITE_ZEROES offset ${offset} length ${length} (live export)`);
      } else {
        run.reply = conn.request({ type: Cmd.WRITE, offset, payload: writeBytes(k, length) });
        log(actor, `NBD_CMD_WRITE offset ${offset} length ${length} (live export)`);
      }
    } else if (actor.startsWith('D')) {
      run.reply = conn.request({ type: Cmd.TRIM, offset, length });
      log(actor, `NBD_CMD_TRIM offset ${offset} length ${length} (fleecing export: snapshot discard)`);
    } else {
      run.reply = conn.request({ type: Cmd.READ, offset, length });
      log(actor, `NBD_CMD_READ offset ${offset} length ${length} (fleecing export)`);
    }
    run.reply.then((r) => (run.settled = r), (e: Error) => (run.settled = e));
    run.submitted = true;
  };
  const within = <T>(p: Promise<T>, what: string): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => reject(new StepFailure(what)), ctx.stepTimeoutMs);
      p.then((v) => (clearTimeout(t), resolve(v)), (e: unknown) => (clearTimeout(t), reject(e)));
    });

  // The blocking check (see BLOCKED_GRACE_MS): before each step, every request the model has
  // wait is let go towards the first event past its wait, and must not get there.
  const blocking: BlockingCounts = { tried: 0, held: 0, rechecked: 0, skipped: {} };
  const skip = (why: BlockedSkip) => void (blocking.skipped[why] = (blocking.skipped[why] ?? 0) + 1);
  /** Tags armed and not hit yet, by actor and event. */
  const armedBy = new Map<string, { actor: string; event: string }>();
  /** The range a request's hits at `event` carry: its own bytes for copy-before-write's request
   * events, its clusters for block-copy's tasks and everything else. */
  const hitRange = (actor: string, event: string) => {
    const { offset, length } = rangeOf(actor);
    if (REQUEST_EVENTS.has(event)) return { lo: offset, hi: offset + length };
    const cs = sc.clusterSize;
    return { lo: Math.floor(offset / cs) * cs, hi: Math.ceil((offset + length) / cs) * cs };
  };
  const overlapping = (a: { lo: number; hi: number }, b: { lo: number; hi: number }) => a.lo < b.hi && b.lo < a.hi;
  const arm = async (actor: string, event: string, tag: string) => {
    const { offset, length } = rangeOf(actor);
    // Writers: block-copy works on whole clusters; the filter is the writer's own range,
    // which every event of its request overlaps.
    const node = event.startsWith('overlay-') ? ctx.nodes.temp : ctx.nodes.cbw;
    await qmpOk('x-breakpoint-add', { event, tag, node, offset, bytes: length });
    armed.push(tag);
    armedBy.set(tag, { actor, event });
    log(actor, `x-breakpoint-add ${event} tag ${tag} node ${node} offset ${offset} bytes ${length}`);
  };
  const onHit = (actor: string, run: ActorRun, tag: string, h: Record<string, unknown>) => {
    events.push(String(h.event));
    log(actor, `BREAKPOINT_HIT ${h.tag} ${h.event} node ${h.node} offset ${h.offset} bytes ${h.bytes}`);
    run.parked = tag;
    run.parkedEvent = String(h.event);
    armedBy.delete(tag);
  };
  /** The hit or the reply, if either comes within the grace period. */
  const graceWait = async (tag: string, run: ActorRun): Promise<string | undefined> => {
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      ctx.hits.wait(tag).then((h) => `${String(h.event)} (BREAKPOINT_HIT ${tag})`),
      run.reply!.then((x) => `its reply (${describeReply(x)})`, (e: Error) => `its reply (error ${e.message})`),
      new Promise<undefined>((res) => (timer = setTimeout(() => res(undefined), ctx.blockedGraceMs))),
    ]);
    clearTimeout(timer);
    return r;
  };
  const throughWait = (where: string, actor: string, what: string, b: BlockedStep) =>
    new StepFailure(`${where}: ${actor} reached ${what} while the model has it waiting for ${b.waitsFor.join(' and ') || '(nobody)'} (${WAIT_TEXT[b.wait]})`);
  /** A waiting request just let go (`after`: 'it was sent' or 'its release'): it must not reach
   * `event` within the grace period; it stays released, held, for the later steps. */
  const expectHeld = async (b: BlockedStep, run: ActorRun, tag: string, event: string, where: string, after: string) => {
    blocking.tried++;
    const got = await graceWait(tag, run);
    if (got) {
      log(b.actor, `reached ${got}`);
      throw throughWait(where, b.actor, got, b);
    }
    blocking.held++;
    run.held = { tag, event, why: b.waitsFor.join(' and ') };
    log(b.actor, `held: not at ${event} ${ctx.blockedGraceMs} ms after ${after}`);
  };
  /** A guest write not submitted yet that waits for another's in-flight copy of its clusters
   * (block_copy_wait_one): sent with the event that ends its submit step armed. It may go only
   * when nothing can confuse the breakpoints: it claims nothing once let go (so it crosses no
   * block-copy task event), the copy it waits for cannot fail (then it would copy itself), and no
   * other unfinished writer's byte range overlaps its own (every writer arms that event). */
  const trySubmit = async (b: BlockedStep, run: ActorRun, where: string, s: FleecingState) => {
    const event = ctx.mapping.writerBeforeWrite;
    const w = Number(b.actor.slice(1));
    const claims = m.base.step(s, b.action).writers[w]!.claim !== 0;
    const failing = new Set(sc.failingCopies ?? []);
    const blockerMayFail = b.waitsFor.some((x) => x.startsWith('W') && failing.has(Number(x.slice(1, x.indexOf('.')))));
    if (run.submitted || b.wait !== 'block-copy-inflight' || claims || blockerMayFail) { skip('unsubmitted'); return; }
    const mine = hitRange(b.actor, event);
    const shared = s.writers.some((o, j) => `W${j}` !== b.actor && o.pc !== 'done' && o.pc !== 'failed' && overlapping(hitRange(`W${j}`, event), mine));
    if (shared) { skip('shared-event'); return; }
    const tag = `${b.actor}-${++tagSeq}`;
    await arm(b.actor, event, tag);
    submit(b.actor, run);
    log(b.actor, `(blocking check: the model has ${b.actor} waiting for ${b.waitsFor.join(' and ')})`);
    await expectHeld(b, run, tag, event, where, 'it was sent');
  };
  const checkBlocked = async (s: FleecingState, where: string) => {
    if (ctx.blockedGraceMs <= 0) return;
    const enabled = new Set(m.steps(s).map((x) => x.actor));
    const blockedNow = m.blocked(s);
    // A copy released towards its park point may be ahead of the model: what it lets go on in
    // the implementation, the model may not have let go yet.
    const ahead = [...runs].some(([a, r]) => r.running !== undefined && enabled.has(a));
    // Requests let go earlier and still waiting in the model: not at their event yet.
    for (const b of ahead ? [] : blockedNow) {
      const run = runs.get(b.actor)!;
      const tag = run.held?.tag ?? (run.watched ? run.running?.tag : undefined);
      if (!tag) continue;
      const h = ctx.hits.seen(tag);
      if (h || run.settled) {
        log(b.actor, h ? `BREAKPOINT_HIT ${h.tag} ${h.event} (let go earlier; the model still has it wait)` : 'reply (let go earlier; the model still has it wait)');
        throw throughWait(where, b.actor, h ? String(h.event) : 'its reply', b);
      }
      blocking.rechecked++;
    }
    for (const b of blockedNow) {
      const run = runs.get(b.actor)!;
      if (run.held || run.watched) continue;
      if (run.running) {
        // S3: the serialising copy, released towards its park point, must wait where the model
        // has it wait (bdrv_wait_serialising_requests).
        run.watched = true;
        blocking.tried++;
        const got = await graceWait(run.running.tag, run);
        if (got) {
          log(b.actor, `reached ${got} while the model has it wait`);
          throw throughWait(where, b.actor, got, b);
        }
        blocking.held++;
        log(b.actor, `held: not at ${run.running.event} ${ctx.blockedGraceMs} ms after its release (the model has it waiting for ${b.waitsFor.join(' and ')})`);
        continue;
      }
      if (ahead) { skip('ahead-of-model'); continue; }
      if (b.blockerWaiting) { skip('blocker-waiting'); continue; }
      if (b.action.kind === 'submit') {
        await trySubmit(b, run, where, s);
        continue;
      }
      const isDiscard = b.action.kind === 'discard';
      if ((b.action.kind !== 'write' && !isDiscard) || !run.parked) { skip('unsubmitted'); continue; }
      const event = isDiscard ? ctx.mapping.discardPastWait : ctx.mapping.writerPastWait;
      const path = isDiscard || run.parkedEvent === ctx.mapping.writerBeforeWaitBroken ? [event] : [ctx.mapping.writerBeforeWaitBroken, event];
      const clash = [...armedBy.values()].some((x) => x.actor !== b.actor && path.includes(x.event) && overlapping(hitRange(x.actor, x.event), hitRange(b.actor, x.event)));
      if (clash) { skip('shared-event'); continue; }
      const tag = `${b.actor}-${++tagSeq}`;
      await arm(b.actor, event, tag);
      const p = run.parked;
      run.parked = undefined;
      run.parkedEvent = undefined;
      await qmpOk('x-breakpoint-resume', { tag: p });
      log(b.actor, `x-breakpoint-resume ${p} (blocking check: the model has ${b.actor} waiting for ${b.waitsFor.join(' and ')})`);
      await expectHeld(b, run, tag, event, where, 'its release');
    }
  };

  let disagreement: string | undefined;
  try {
    for (const st of ex.steps) {
      stepNo++;
      for (const p of st.parts) actions.push(p.kind);
      const run = runs.get(st.actor)!;
      const plan = planStep(kind, st, ctx.mapping);
      const stepName = `step ${stepNo} ${st.labels.map(formatLabel).join(' + ')}`;
      await checkBlocked(st.before, `before ${stepName}`);
      if (run.held) {
        // Let go by the blocking check while the model had it wait; the model lets it go on now.
        const held = run.held;
        run.held = undefined;
        const replyP = run.reply!.then((r) => ({ reply: r }), (e: Error) => ({ error: e }));
        const first = await within(
          Promise.race([ctx.hits.wait(held.tag).then((h) => ({ hit: h })), replyP]),
          `${stepName}: ${st.actor}, let go while it waited for ${held.why}, did not reach ${held.event} within ${ctx.stepTimeoutMs} ms of the model letting it go on`,
        );
        if (!('hit' in first)) {
          const what = 'reply' in first ? describeReply(first.reply) : `error ${first.error.message}`;
          log(st.actor, `reply: ${what}`);
          replied.add(st.actor);
          throw new StepFailure(`${stepName}: ${st.actor} finished (${what}) without parking at ${held.event}`);
        }
        onHit(st.actor, run, held.tag, first.hit);
        // Its step ends exactly where it was held (a submit let go towards cbw-done-set).
        if (plan.await === 'hit' && plan.arm === held.event) continue;
      }
      let tag: string | undefined;
      if (run.running && plan.arm === run.running.event) {
        tag = run.running.tag;
      } else if (plan.arm) {
        tag = `${st.actor}-${++tagSeq}`;
        await arm(st.actor, plan.arm, tag);
      }
      if (run.running) {
        run.running = undefined; // already released; nothing to let go
        run.watched = undefined;
      } else if (!run.submitted) {
        submit(st.actor, run);
      } else if (run.parked) {
        const p = run.parked;
        run.parked = undefined;
        run.parkedEvent = undefined;
        await qmpOk('x-breakpoint-resume', { tag: p, ...(plan.inject ? { errno: plan.inject } : {}) });
        log(st.actor, `x-breakpoint-resume ${p}${plan.inject ? ` errno ${plan.inject} (the model's copyFail: the copy's target write fails)` : ''}`);
      } else {
        throw new StepFailure(`${stepName}: ${st.actor} is neither parked nor waiting to be submitted (it already finished)`);
      }
      if (plan.await === 'none') {
        run.running = { tag: tag!, event: plan.arm! };
        log(st.actor, `released towards ${plan.arm} (may block on a serialising wait, as the model's guard says)`);
        continue;
      }
      if (plan.await === 'hit') {
        const hitP = ctx.hits.wait(tag!);
        const replyP = run.reply!.then(
          (r) => ({ reply: r }),
          (e: Error) => ({ error: e }),
        );
        const first = await within(
          Promise.race([hitP.then((h) => ({ hit: h })), replyP]),
          `${stepName}: ${st.actor} neither parked at ${plan.arm} nor replied within ${ctx.stepTimeoutMs} ms (the implementation blocks where the model allows the step)`,
        );
        if ('hit' in first) {
          onHit(st.actor, run, tag!, first.hit);
        } else {
          const what = 'reply' in first ? describeReply(first.reply) : `error ${first.error.message}`;
          log(st.actor, `reply: ${what}`);
          replied.add(st.actor);
          throw new StepFailure(`${stepName}: ${st.actor} finished (${what}) without parking at ${plan.arm}, where the model has it stop`);
        }
        continue;
      }
      // await reply
      const r = await within(run.reply!, `${stepName}: no reply from ${st.actor} within ${ctx.stepTimeoutMs} ms (the implementation blocks where the model lets the request finish)`);
      log(st.actor, `reply: ${describeReply(r)}`);
      replied.add(st.actor);
      if (st.actor.startsWith('D')) {
        if (r.error !== 0) throw new StepFailure(`${stepName}: snapshot discard ${st.actor} failed with ${errnoName(r.error)}; the model completes it`);
      } else if (st.actor.startsWith('W')) {
        const k = Number(st.actor.slice(1));
        if (prediction.writeFails[k]) {
          if (r.error === 0) throw new StepFailure(`${stepName}: guest write ${st.actor} succeeded; the model fails it (its copy-before-write failed, on-cbw-error=break-guest-write)`);
        } else if (r.error !== 0) throw new StepFailure(`${stepName}: guest write ${st.actor} failed with ${errnoName(r.error)}; the model completes it`);
      } else {
        const i = Number(st.actor.slice(1));
        if (prediction.readFails[i]) {
          if (r.error === 0) throw new StepFailure(`${stepName}: snapshot read ${st.actor} returned data; the model fails it (the snapshot is broken: EACCES)`);
          continue;
        }
        if (r.error !== 0) throw new StepFailure(`${stepName}: snapshot read ${st.actor} failed with ${errnoName(r.error)}; the model predicts data`);
        const want = prediction.reads[i]!;
        const got = r.data ?? Buffer.alloc(0);
        if (!got.equals(want)) {
          throw new StepFailure(`${stepName}: snapshot read ${st.actor} returned ${describeData(got, want, rangeOf(st.actor).offset, region, sc)}`);
        }
      }
    }
  } catch (e) {
    if (!(e instanceof StepFailure)) throw e;
    disagreement = e.message;
    log('-', `DISAGREEMENT: ${e.message}`);
  }
  finished = true;
  // Cleanup: release whatever is still held and let every request finish.
  const left = await ctx.qmp.execute('x-breakpoint-list', {});
  if (left.ok) {
    for (const b of left.value as { tag: string }[]) {
      if (!armed.includes(b.tag)) continue;
      await ctx.qmp.execute('x-breakpoint-remove', { tag: b.tag });
      log('-', `x-breakpoint-remove ${b.tag}`);
    }
  }
  for (const t of armed) ctx.hits.forget(t);
  let implViolation: string | undefined;
  for (const [actor, run] of runs) {
    if (!run.reply) continue;
    let r: Reply | undefined;
    try {
      r = await Promise.race([run.reply, new Promise<undefined>((res) => setTimeout(() => res(undefined), Math.max(2000, ctx.stepTimeoutMs * 2)))]);
    } catch {
      r = undefined;
    }
    if (!r) {
      disagreement ??= `${actor} never replied, even after every breakpoint was released`;
      log(actor, 'no reply, even after every breakpoint was released');
      continue;
    }
    if (!replied.has(actor)) log(actor, `reply: ${describeReply(r)}`);
    if (actor.startsWith('R') && r.error === 0 && r.data) {
      const i = Number(actor.slice(1));
      const rr = sc.reads[i]!;
      const snap = snapshotOf(region, sc).subarray(rr.offset, rr.offset + rr.length);
      if (!r.data.equals(snap)) {
        implViolation ??= `snapshot read ${actor} returned post-snapshot data: ${describeOrigins(r.data, snap, base + rr.offset)}`;
      }
    }
  }
  return {
    index: ex.index,
    region,
    order: ex.steps.map((s) => s.actor).join(' '),
    modelTrace: ex.steps.map((s, i) => `${i + 1}. ${s.labels.map(formatLabel).join(' + ')}`),
    wireTrace: wire,
    modelViolation: ex.violation,
    implViolation,
    agree: disagreement === undefined,
    ...(disagreement !== undefined ? { disagreement } : {}),
    actions,
    events,
    blocking,
    durationMs: Math.round(performance.now() - t0),
  };
}

class StepFailure extends Error {}

/** Events whose hits carry the guest request's own byte range (copy-before-write.ts). */
const REQUEST_EVENTS: ReadonlySet<string> = new Set(['cbw-done-set', 'cbw-wait-readers', 'cbw-source-write']);

/** Each wait of the model, in the implementation's terms. */
const WAIT_TEXT: Readonly<Record<BlockedStep['wait'], string>> = {
  'frozen-reads': 'the guest write waits for frozen snapshot reads of its clusters: reqlist_wait_all on frozen_read_reqs in cbw_do_copy_before_write',
  'block-copy-inflight': "block-copy waits for another request's in-flight copy of the same clusters: block_copy_wait_one",
  'serialising-target-write': 'the serialising copy into the temp image waits for overlapping tracked reads: bdrv_wait_serialising_requests, docs/requirements/qemu-fleecing.md §2.1 rule a',
  'serialising-read': 'a read on the temp image waits for an overlapping serialising copy: docs/requirements/qemu-fleecing.md §2.1 rule b',
  'cow-request': 'an overlapping copy-on-write request',
  'target-reads': "the snapshot discard frees the target range only once no snapshot read reads it from there (the reference's cbw snapshotDiscard; QEMU's cbw_co_pdiscard_snapshot does not wait)",
};

function snapshotOf(region: number, sc: FleecingScenario): Buffer {
  return snapshotBytes(region, sc.clusters * sc.clusterSize);
}

export function describeReply(r: Reply): string {
  if (r.error !== 0) return `error ${errnoName(r.error)}${r.errorMessage ? ` (${r.errorMessage})` : ''}`;
  return r.data ? `OK, ${r.data.length} bytes` : 'OK';
}

/** Where the bytes came from, as runs: "[0, 4096) W0, [4096, 65536) snapshot". */
export function describeOrigins(b: Buffer, snap: Buffer, absOffset: number): string {
  const runs: string[] = [];
  let start = 0;
  const src = (i: number) => (b[i] === snap[i] ? 'snapshot' : (b[i]! & 0x80) !== 0 ? `W${(b[i]! >> 4) & 7}` : b[i] === 0 ? 'zeroes' : 'other');
  for (let i = 1; i <= b.length; i++) {
    if (i === b.length || src(i) !== src(start)) {
      runs.push(`[${absOffset + start}, ${absOffset + i}) ${src(start)}`);
      start = i;
    }
  }
  return runs.join(', ');
}

/** "[0, 4096) W0, ...; the model predicted [0, 65536) snapshot". */
function describeData(got: Buffer, want: Buffer, absOffset: number, region: number, sc: FleecingScenario): string {
  const rel = absOffset - region * sc.clusters * sc.clusterSize;
  const snap = snapshotOf(region, sc).subarray(rel, rel + got.length);
  return `${describeOrigins(got, snap, absOffset)}; the model predicted ${describeOrigins(want, snap, absOffset)}`;
}
