// nbd/block-status/*: checklist F (docs/requirements/nbd.md F66-F71; proto.md "Metadata querying",
// NBD_CMD_BLOCK_STATUS, "base:allocation metadata context").
import { CF, STATE_ZERO } from '../../nbd/constants.ts';
import type { Extent } from '../../nbd/codec.ts';
import {
  Cmd,
  Errno,
  describeReply,
  err,
  nbdCase,
  requireMeta,
  session,
  usableAfter,
  type NbdCase,
} from './env.ts';

const BS = 'proto.md NBD_CMD_BLOCK_STATUS';
const sec = (spec: string, n: string) => `${spec}; docs/requirements/nbd.md ${n}`;
const MiB = 1 << 20;

function describeExtents(e: readonly Extent[]): string {
  const shown = e.slice(0, 8).map((x) => `${x.length}:${x.flags}`).join(' ');
  return e.length > 8 ? `${shown} ... (${e.length} extents)` : shown;
}

export const blockStatusCases: NbdCase[] = [
  nbdCase({
    id: 'nbd/block-status/no-context',
    section: sec(BS, 'F66'),
    level: 'SHOULD',
    title: 'BLOCK_STATUS without a selected context: EINVAL, no disconnect',
    description: 'With structured replies but no SET_META_CONTEXT (or without structured replies), sends BLOCK_STATUS.',
    expectation: 'An error (EINVAL SHOULD); the connection stays usable.',
    async run(ctx) {
      const { conn } = await session(ctx);
      const r = await conn.request({ type: Cmd.BLOCK_STATUS, offset: 0, length: 65536 });
      ctx.must(r.error !== 0, 'BLOCK_STATUS without a selected context fails', describeReply(r));
      ctx.should(r.error === Errno.EINVAL, 'the error is EINVAL', err(r.error));
      await usableAfter(ctx, conn, 'BLOCK_STATUS without a context');
    },
  }),
  nbdCase({
    id: 'nbd/block-status/one-chunk-per-context',
    section: sec(BS, 'F67'),
    level: 'MUST',
    title: 'One BLOCK_STATUS chunk per selected context; REQ_ONE gives one extent',
    description: 'Selects every offered context among base:allocation and qemu:allocation-depth, queries [0, 4 MiB), then with REQ_ONE.',
    expectation: 'Exactly one chunk per selected id; with REQ_ONE each chunk has one extent no longer than the request.',
    async run(ctx) {
      requireMeta(ctx);
      const wanted = ctx.env.rw.contexts.filter((c) => c === 'base:allocation' || c === 'qemu:allocation-depth');
      const { conn, s } = await session(ctx, { meta: wanted });
      const ids = [...s.contexts.values()];
      const r = await conn.request({ type: Cmd.BLOCK_STATUS, offset: 0, length: 4 * MiB });
      ctx.must(r.error === 0, 'BLOCK_STATUS succeeds', describeReply(r));
      ctx.must(r.status.size === ids.length && ids.every((id) => r.status.has(id)), `one chunk for each selected context (${[...s.contexts].map(([n, i]) => `${n}=${i}`).join(', ')})`, `chunks for ids ${[...r.status.keys()].join(', ')}`);
      const one = await conn.request({ type: Cmd.BLOCK_STATUS, flags: CF.REQ_ONE, offset: 0, length: 4 * MiB });
      for (const [id, ext] of one.status) {
        ctx.must(ext.length === 1 && (ext[0]?.length ?? 0) <= 4 * MiB, `REQ_ONE: one extent no longer than the request (context ${id})`, describeExtents(ext));
      }
    },
  }),
  nbdCase({
    id: 'nbd/block-status/extents-valid',
    section: sec(BS, 'F68'),
    level: 'MUST',
    title: 'Extents are non-empty, consecutive, and do not pass the end',
    description: 'Queries base:allocation over [0, 4 MiB) and over the last 1 MiB of the export.',
    expectation: 'Lengths > 0; all but the last extent inside the request; the last not past the end of the export. SHOULD: aligned to 512 except at EOF, at most 2^20 extents.',
    async run(ctx) {
      requireMeta(ctx);
      const { conn, s } = await session(ctx, { meta: ['base:allocation'] });
      const id = s.contexts.get('base:allocation')!;
      const size = Number(s.size);
      for (const [off, len] of [[0, 4 * MiB], [size - MiB, MiB]] as const) {
        const r = await conn.request({ type: Cmd.BLOCK_STATUS, offset: off, length: len });
        const ext = r.status.get(id) ?? [];
        ctx.must(r.error === 0 && ext.length > 0, `BLOCK_STATUS [${off}, +${len}) returns extents`, describeReply(r));
        let pos = off;
        ext.forEach((e, i) => {
          if (i < ext.length - 1) ctx.must(pos + e.length < off + len, 'every extent but the last ends inside the request', describeExtents(ext));
          pos += e.length;
        });
        ctx.must(pos <= size, 'the last extent does not pass the end of the export', `ends at ${pos}, size ${size}`);
        ctx.should(ext.every((e, i) => e.length % 512 === 0 || (i === ext.length - 1 && pos === size)), 'extents are 512-byte aligned', describeExtents(ext));
        ctx.should(ext.length <= 1 << 20, 'at most 2^20 extents', `${ext.length}`);
      }
    },
  }),
  nbdCase({
    id: 'nbd/block-status/zero-reads-zero',
    section: sec('proto.md "base:allocation metadata context"', 'F69'),
    level: 'MUST',
    title: 'base:allocation: an extent with ZERO reads back as zeroes',
    description: 'Queries [0, 4 MiB) and reads every extent flagged NBD_STATE_ZERO.',
    expectation: 'Every ZERO extent reads as zeroes.',
    async run(ctx) {
      requireMeta(ctx);
      const { conn, s } = await session(ctx, { meta: ['base:allocation'] });
      const id = s.contexts.get('base:allocation')!;
      const r = await conn.request({ type: Cmd.BLOCK_STATUS, offset: 0, length: 4 * MiB });
      const ext = r.status.get(id) ?? [];
      let pos = 0;
      let zeroExtents = 0;
      for (const e of ext) {
        const len = Math.min(e.length, 4 * MiB - pos);
        if (e.flags & STATE_ZERO && len > 0) {
          zeroExtents++;
          const d = await conn.request({ type: Cmd.READ, offset: pos, length: len });
          ctx.must(d.data?.every((b) => b === 0) ?? false, `the ZERO extent [${pos}, +${len}) reads as zeroes`, describeReply(d));
        }
        pos += e.length;
      }
      ctx.observe(`${ext.length} extent(s), ${zeroExtents} with ZERO: ${describeExtents(ext)}`);
    },
  }),
  nbdCase({
    id: 'nbd/block-status/reserved-bits',
    section: sec('proto.md "base:allocation metadata context"', 'F70'),
    level: 'SHOULD',
    title: 'base:allocation uses only the HOLE and ZERO bits',
    description: 'Queries [0, 4 MiB) and inspects the flags.',
    expectation: 'Bits other than 0 and 1 are 0.',
    async run(ctx) {
      requireMeta(ctx);
      const { conn, s } = await session(ctx, { meta: ['base:allocation'] });
      const r = await conn.request({ type: Cmd.BLOCK_STATUS, offset: 0, length: 4 * MiB });
      const ext = r.status.get(s.contexts.get('base:allocation')!) ?? [];
      ctx.should(ext.every((e) => (e.flags & ~3) === 0), 'no reserved status bits are set', describeExtents(ext));
      await usableAfter(ctx, conn, 'BLOCK_STATUS');
    },
  }),
];

