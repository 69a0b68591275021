// QMP commands over the block graph's breakpoints (docs/design.md "Interleavings"), in the spirit of QEMU's
// blkdebug `break`/`resume`/`wait_break` and qemu-io's `break`, `resume`, `wait_break`, but graph
// wide and over QMP, so a conformance runner can hold an in-flight NBD request at a named event
// and let it go later:
//   x-breakpoint-add    {event, tag, node?, offset?, bytes?}   arm
//   x-breakpoint-list   {}                                     [{tag, event, state, filter, hit?}]
//   x-breakpoint-wait   {tag, timeout-ms?}                     the hit, once a request is parked
//   x-breakpoint-resume {tag, errno?}                          let the parked request go on (with
//                                                              errno: fail it there, e.g. "EIO")
//   x-breakpoint-remove {tag}                                  disarm (resumes a parked request)
// and the event BREAKPOINT_HIT {tag, event, node, offset, bytes, seq} whenever a request parks.
//
// x-breakpoint-wait awaits (QMP commands may), so it holds its monitor session until the hit;
// `timeout-ms` bounds that (a GenericError afterwards), and removing a breakpoint ends every
// wait on it with a GenericError instead of leaving the session stuck.
import { BlockError, type Errno } from '../block/errors.ts';
import type { BlockGraph } from '../block/graph.ts';
import type { BreakpointHit } from '../block/breakpoints.ts';
import { QmpError, type QmpArgs, type QmpDispatcher } from './dispatcher.ts';

/** Errors a resumed request can be failed with (what a failing disk or a timeout gives). */
const INJECTABLE: readonly Errno[] = ['EIO', 'ENOSPC', 'ETIMEDOUT', 'EPERM'];

function asQmp(e: unknown): never {
  if (e instanceof BlockError) throw new QmpError('GenericError', e.message);
  throw e;
}

/** Registers the x-breakpoint-* commands and the BREAKPOINT_HIT event for `graph`. */
export function registerBreakpointCommands(d: QmpDispatcher, graph: BlockGraph, emit: (event: string, data?: unknown) => void): void {
  const bp = graph.breakpoints;
  /** Waits to cancel when their tag is removed (per tag). */
  const cancels = new Map<string, Set<(why: string) => void>>();
  const cancel = (tag: string, why: string) => {
    for (const c of cancels.get(tag) ?? []) c(why);
    cancels.delete(tag);
  };
  bp.events.on('hit', (h: BreakpointHit) => emit('BREAKPOINT_HIT', { ...h }));

  const tagOf = (a: QmpArgs) => {
    const tag = a.str('tag');
    if (tag === '') throw new QmpError('GenericError', "Parameter 'tag' must not be empty");
    return tag;
  };

  d.register('x-breakpoint-add', (a) => {
    const event = a.str('event');
    const tag = tagOf(a);
    const node = a.optStr('node');
    const offset = a.optInt('offset');
    const bytes = a.optInt('bytes');
    a.finish();
    if (bytes !== undefined && offset === undefined) throw new QmpError('GenericError', "Parameter 'bytes' needs 'offset'");
    if ((offset !== undefined && offset < 0) || (bytes !== undefined && bytes <= 0)) {
      throw new QmpError('GenericError', "Parameters 'offset' and 'bytes' must be non-negative and positive");
    }
    if (node !== undefined && !graph.node(node)) throw new QmpError('DeviceNotFound', `Cannot find node-name '${node}'`);
    try {
      bp.arm(event, tag, { ...(node !== undefined ? { node } : {}), ...(offset !== undefined ? { offset } : {}), ...(bytes !== undefined ? { bytes } : {}) });
    } catch (e) {
      asQmp(e);
    }
    return {};
  });

  d.register('x-breakpoint-list', (a) => {
    a.finish();
    return bp.list().map((b) => ({ tag: b.tag, event: b.event, state: b.state, ...b.filter, ...(b.hit ? { hit: { ...b.hit } } : {}) }));
  });

  d.register('x-breakpoint-wait', async (a) => {
    const tag = tagOf(a);
    const timeoutMs = a.optInt('timeout-ms');
    a.finish();
    let hit: Promise<BreakpointHit>;
    try {
      hit = bp.wait(tag);
    } catch (e) {
      asQmp(e);
    }
    let timer: NodeJS.Timeout | undefined;
    let onCancel: ((why: string) => void) | undefined;
    const stop = new Promise<never>((_, reject) => {
      onCancel = (why) => reject(new QmpError('GenericError', why));
      const set = cancels.get(tag) ?? new Set();
      set.add(onCancel);
      cancels.set(tag, set);
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => reject(new QmpError('GenericError', `breakpoint '${tag}' was not hit within ${timeoutMs} ms`)), timeoutMs);
      }
    });
    try {
      return { ...(await Promise.race([hit, stop])) };
    } finally {
      clearTimeout(timer);
      cancels.get(tag)?.delete(onCancel!);
    }
  });

  d.register('x-breakpoint-resume', (a) => {
    const tag = tagOf(a);
    const errno = a.optStr('errno');
    a.finish();
    if (errno !== undefined && !INJECTABLE.includes(errno as Errno)) {
      throw new QmpError('GenericError', `Parameter 'errno' must be one of ${INJECTABLE.join(', ')}`);
    }
    try {
      bp.resume(tag, errno as Errno | undefined);
    } catch (e) {
      asQmp(e);
    }
    return {};
  });

  d.register('x-breakpoint-remove', (a) => {
    const tag = tagOf(a);
    a.finish();
    try {
      bp.remove(tag);
    } catch (e) {
      asQmp(e);
    }
    cancel(tag, `breakpoint '${tag}' was removed before it was hit`);
    return {};
  });
}
