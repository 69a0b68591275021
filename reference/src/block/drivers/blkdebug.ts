// `blkdebug`: error injection in the shape of QEMU's blkdebug (child `image`, rules
// `inject-error: [{event, errno, once, sector}]`), so tests can make a copy-before-write target
// fail (docs/requirements/qemu-fleecing.md §4.2).
import { BlockError, type Errno } from '../errors.ts';
import { FilterNode } from '../node.ts';
import type { RequestFlags } from '../types.ts';
import type { DriverContext } from './registry.ts';

/** The blkdebug events the reference raises, by QEMU's names. */
export const BLKDEBUG_EVENTS = ['read_aio', 'write_aio', 'pwritev_zero', 'pdiscard', 'flush_to_disk'] as const;
export type BlkdebugEvent = (typeof BLKDEBUG_EVENTS)[number];

const ERRNO_BY_NUMBER: Record<number, Errno> = {
  1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 13: 'EACCES', 22: 'EINVAL', 28: 'ENOSPC', 95: 'ENOTSUP', 110: 'ETIMEDOUT',
};

export interface InjectErrorRule {
  event: BlkdebugEvent;
  errno: Errno;
  once: boolean;
  /** Only requests touching this 512-byte sector, as blkdebug's `sector`. */
  sector?: number;
}

export class BlkdebugNode extends FilterNode {
  private rules: InjectErrorRule[] = [];
  /** How many times each event fired (for tests). */
  readonly fired = new Map<BlkdebugEvent, number>();

  constructor(ctx: DriverContext) {
    super(ctx.nodeName, 'blkdebug', ctx.common);
    const list = ctx.opts.raw('inject-error');
    ctx.opts.ignore('config', 'align', 'set-state');
    const items = list === undefined ? [] : Array.isArray(list) ? list : [list];
    items.forEach((item, i) => this.rules.push(parseRule(item, `node '${ctx.nodeName}': inject-error[${i}]`)));
    ctx.addChild(this, 'image', 'filtered', true);
  }

  inject(rule: Partial<InjectErrorRule> & { event: BlkdebugEvent }): void {
    this.rules.push({ errno: 'EIO', once: false, ...rule });
  }

  clearRules(): void {
    this.rules = [];
  }

  private check(event: BlkdebugEvent, offset: number, bytes: number): void {
    const i = this.rules.findIndex(
      (r) => r.event === event && (r.sector === undefined || (r.sector * 512 < offset + bytes && offset < r.sector * 512 + 512)),
    );
    if (i < 0) return;
    const rule = this.rules[i]!;
    if (rule.once) this.rules.splice(i, 1);
    this.fired.set(event, (this.fired.get(event) ?? 0) + 1);
    throw new BlockError(rule.errno, `injected ${rule.errno} on ${event} at node '${this.nodeName}'`, {
      node: this.nodeName, op: event, offset, bytes,
    });
  }

  protected override async coRead(offset: number, bytes: number, flags: RequestFlags): Promise<Buffer> {
    this.check('read_aio', offset, bytes);
    return super.coRead(offset, bytes, flags);
  }
  protected override async coWrite(offset: number, data: Buffer, flags: RequestFlags): Promise<void> {
    this.check('write_aio', offset, data.length);
    return super.coWrite(offset, data, flags);
  }
  protected override async coWriteZeroes(offset: number, bytes: number, flags: RequestFlags): Promise<void> {
    this.check('pwritev_zero', offset, bytes);
    return super.coWriteZeroes(offset, bytes, flags);
  }
  protected override async coDiscard(offset: number, bytes: number): Promise<void> {
    this.check('pdiscard', offset, bytes);
    return super.coDiscard(offset, bytes);
  }
  protected override async coFlush(): Promise<void> {
    this.check('flush_to_disk', 0, 0);
    return super.coFlush();
  }
}

function parseRule(item: unknown, where: string): InjectErrorRule {
  if (typeof item !== 'object' || item === null) {
    throw new BlockError('EINVAL', `${where}: expected an object {event, errno, once}`);
  }
  const o = item as Record<string, unknown>;
  const event = o['event'];
  if (typeof event !== 'string' || !(BLKDEBUG_EVENTS as readonly string[]).includes(event)) {
    throw new BlockError('EINVAL', `${where}: unknown event ${JSON.stringify(event)} (known: ${BLKDEBUG_EVENTS.join(', ')})`);
  }
  const errnoNum = o['errno'] === undefined ? 5 : Number(o['errno']);
  const errno = ERRNO_BY_NUMBER[errnoNum];
  if (!errno) throw new BlockError('EINVAL', `${where}: unsupported errno ${JSON.stringify(o['errno'])}`);
  const onceRaw = o['once'];
  const once = onceRaw === true || onceRaw === 'on' || onceRaw === 'true';
  const rule: InjectErrorRule = { event: event as BlkdebugEvent, errno, once };
  if (o['sector'] !== undefined) rule.sector = Number(o['sector']);
  const unknown = Object.keys(o).filter((k) => !['event', 'errno', 'once', 'sector', 'state', 'immediately'].includes(k));
  if (unknown.length) throw new BlockError('EINVAL', `${where}: invalid parameter '${unknown[0]}'`);
  return rule;
}
