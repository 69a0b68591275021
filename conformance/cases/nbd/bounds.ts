// nbd/bounds/*: checklist C (docs/requirements/nbd.md C45-C53; proto.md "Error values",
// "Size constraints").
import { NbdClientError } from '../../nbd/errors.ts';
import type { Reply } from '../../nbd/reply.ts';
import type { NbdConnection } from '../../nbd/client.ts';
import { BIG_WRITE_OFFSET } from '../../targets/image.ts';
import {
  Cmd,
  Errno,
  TF,
  caps,
  describeReply,
  err,
  expected,
  nbdCase,
  requireWritable,
  session,
  usableAfter,
  type NbdCase,
  seededBytes,
} from './env.ts';
import { rejectionCase, type Need } from './rows.ts';

const ERRS = 'proto.md "Error values"';
const SIZE = 'proto.md "Size constraints"';
const sec = (spec: string, n: string) => `${spec}; docs/requirements/nbd.md ${n}`;
const MiB = 1 << 20;
/** Timeout for 32 MiB transfers: the server may be busy with the data for a while. */
const BIG = 15_000;

/** Sends a request that may legitimately make the server disconnect; returns the reply or 'closed'. */
async function mayDisconnect(conn: NbdConnection, req: Parameters<NbdConnection['request']>[0]): Promise<Reply | 'closed'> {
  try {
    return await conn.request(req);
  } catch (e) {
    if (e instanceof NbdClientError && e.kind === 'closed') return 'closed';
    throw e;
  }
}

export const boundsCases: NbdCase[] = [
  ...(
    [
      { id: 'nbd/bounds/read-past-end', item: 'C45', title: 'READ past the end: EINVAL', what: 'READs', cmd: Cmd.READ, name: 'READ', errno: Errno.EINVAL },
      { id: 'nbd/bounds/write-past-end', item: 'C46', title: 'WRITE past the end: ENOSPC', what: 'WRITEs', cmd: Cmd.WRITE, name: 'WRITE', errno: Errno.ENOSPC, needs: ['writable'] },
      { id: 'nbd/bounds/write-zeroes-past-end', item: 'C47', title: 'WRITE_ZEROES past the end: ENOSPC', what: 'WRITE_ZEROES over', cmd: Cmd.WRITE_ZEROES, name: 'WRITE_ZEROES', errno: Errno.ENOSPC, needs: ['writable', { flag: TF.SEND_WRITE_ZEROES }] },
      { id: 'nbd/bounds/trim-past-end', item: 'C48', title: 'TRIM past the end: EINVAL', what: 'TRIMs', cmd: Cmd.TRIM, name: 'TRIM', errno: Errno.EINVAL, needs: ['writable', { flag: TF.SEND_TRIM }] },
    ] satisfies { id: `nbd/${string}`; item: string; title: string; what: string; cmd: number; name: string; errno: number; needs?: Need[] }[]
  ).map(({ item, what, cmd, name, ...row }) =>
    rejectionCase({
      ...row,
      section: sec(ERRS, item),
      level: 'SHOULD',
      description: `${what} [size-512, size+512).`,
      expectation: `An error (MUST), ${err(row.errno)} (SHOULD); the connection stays usable.`,
      request: (s) => ({ type: cmd, offset: s.size - 512n, length: 1024, ...(cmd === Cmd.WRITE ? { payload: Buffer.alloc(1024, 0xa5) } : {}) }),
      fails: `${name} crossing the end of the export fails`,
      after: `${name} past the end`,
    }),
  ),
  rejectionCase({
    id: 'nbd/bounds/block-status-past-end',
    section: sec(ERRS, 'C49'),
    level: 'SHOULD',
    title: 'BLOCK_STATUS starting past the end: EINVAL',
    description: 'BLOCK_STATUS at offset = size.',
    expectation: 'An error (MUST), EINVAL (SHOULD); the connection stays usable.',
    needs: ['meta'],
    meta: true,
    request: (s) => ({ type: Cmd.BLOCK_STATUS, offset: s.size, length: 512 }),
    fails: 'BLOCK_STATUS past the end fails',
    errno: Errno.EINVAL,
    after: 'BLOCK_STATUS past the end',
  }),
  rejectionCase({
    id: 'nbd/bounds/offset-overflow',
    section: sec(ERRS, 'C50'),
    level: 'SHOULD',
    title: 'Offset + length overflowing 64 bits: EINVAL, no crash',
    description: 'READs 1024 bytes at offset 2^64-512.',
    expectation: 'An error (MUST), EINVAL (SHOULD); the connection stays usable.',
    request: () => ({ type: Cmd.READ, offset: 2n ** 64n - 512n, length: 1024 }),
    fails: 'the overflowing READ fails',
    errno: Errno.EINVAL,
    after: 'an overflowing READ',
  }),
  nbdCase({
    id: 'nbd/bounds/read-32mib',
    section: sec(SIZE, 'C51'),
    level: 'SHOULD',
    title: 'A 32 MiB READ is not treated as an attack',
    description: 'READs min(32 MiB, advertised maximum) from offset 0.',
    expectation: 'Success with the right data.',
    async run(ctx) {
      const max = ctx.env.rw.blockSize?.maximum ?? 32 * MiB;
      const len = Math.min(32 * MiB, max, Number(ctx.env.rw.size));
      const { conn } = await session(ctx);
      const r = await conn.request({ type: Cmd.READ, offset: 0, length: len, timeoutMs: BIG });
      // Only the part below the scratch area is compared: other cases write there concurrently.
      const cmp = Math.min(len, ctx.target.image?.scratch.offset ?? len);
      const exp = expected(ctx, 0, cmp);
      ctx.should(r.error === 0 && (!exp || (r.data?.subarray(0, cmp).equals(exp) ?? false)), `a READ of ${len} bytes succeeds with the right data`, describeReply(r));
    },
  }),
  nbdCase({
    id: 'nbd/bounds/read-too-large',
    section: sec(SIZE, 'C51'),
    level: 'SHOULD',
    title: 'READ above the maximum payload: an error (or a disconnect above 32 MiB)',
    description: 'READs 32 MiB + 512 bytes (inside the export).',
    expectation: 'Above an advertised maximum: EINVAL or EOVERFLOW, and the connection stays usable. A disconnect is allowed above 32 MiB (MAY); without an advertised maximum, serving it is allowed.',
    async run(ctx) {
      const max = ctx.env.rw.blockSize?.maximum ?? 32 * MiB;
      const len = 32 * MiB + 512;
      if (max >= len) ctx.skip(`the server advertises a maximum payload of ${max} bytes`);
      if (ctx.env.rw.size < BigInt(len)) ctx.skip('the export is smaller than 32 MiB + 512');
      const { conn } = await session(ctx);
      const r = await mayDisconnect(conn, { type: Cmd.READ, offset: 0, length: len, timeoutMs: BIG });
      if (r === 'closed') {
        ctx.observe('the server disconnected (allowed above 32 MiB)');
        return;
      }
      if (r.error === 0 && !ctx.env.rw.blockSize) {
        ctx.observe('accepted: the server advertises no maximum and handles more than 32 MiB');
        return;
      }
      ctx.should(r.error === Errno.EINVAL || r.error === Errno.EOVERFLOW, 'the READ above the advertised maximum fails with EINVAL or EOVERFLOW', describeReply(r));
      await usableAfter(ctx, conn, 'an oversized READ');
    },
  }),
  nbdCase({
    id: 'nbd/bounds/unaligned-min-block',
    section: sec('proto.md "Block size constraints"', 'C52'),
    level: 'MUST',
    title: 'Requests not aligned to the minimum block size fail cleanly',
    description: 'Only with a minimum block size above 1: READ and WRITE at offset 1.',
    expectation: 'An error (EINVAL SHOULD), no data corruption, the connection stays usable.',
    async run(ctx) {
      const min = ctx.env.rw.blockSize?.minimum ?? 1;
      if (min <= 1) ctx.skip('the minimum block size is 1: every request is aligned');
      const { conn } = await session(ctx);
      const r = await conn.request({ type: Cmd.READ, offset: 1, length: min });
      ctx.must(r.error !== 0, 'an unaligned READ fails', describeReply(r));
      ctx.should(r.error === Errno.EINVAL, 'the error is EINVAL', err(r.error));
      if (!(ctx.env.rw.transmissionFlags & TF.READ_ONLY)) {
        const off = ctx.env.scratch(2 * min);
        const before = await conn.request({ type: Cmd.READ, offset: off, length: 2 * min });
        const w = await conn.request({ type: Cmd.WRITE, offset: off + 1, payload: Buffer.alloc(min, 0x5a) });
        ctx.must(w.error !== 0, 'an unaligned WRITE fails', describeReply(w));
        const after = await conn.request({ type: Cmd.READ, offset: off, length: 2 * min });
        ctx.must(!!before.data && !!after.data && before.data.equals(after.data), 'the failed WRITE changed nothing');
      }
      await usableAfter(ctx, conn, 'unaligned requests');
    },
  }),
  nbdCase({
    id: 'nbd/bounds/write-too-large',
    section: sec(SIZE, 'C53'),
    level: 'SHOULD',
    title: 'WRITE above the maximum payload: payload consumed, stream in sync',
    description: 'WRITEs 32 MiB + 512 bytes at 30 MiB (a region no other case uses).',
    expectation: 'An error and the server stays in sync (it consumed the payload), or it disconnects (allowed above 32 MiB).',
    async run(ctx) {
      requireWritable(ctx);
      const max = caps(ctx).blockSize?.maximum ?? 32 * MiB;
      const len = 32 * MiB + 512;
      if (max >= len) ctx.skip(`the server advertises a maximum payload of ${max} bytes`);
      const off = ctx.target.image ? BIG_WRITE_OFFSET : ctx.env.scratch(65536);
      if (ctx.env.rw.size < BigInt(off + len)) ctx.skip('the export is too small');
      const { conn } = await session(ctx);
      const r = await mayDisconnect(conn, { type: Cmd.WRITE, offset: off, payload: seededBytes(ctx, len), timeoutMs: BIG });
      if (r === 'closed') {
        ctx.observe('the server disconnected (allowed above 32 MiB)');
        return;
      }
      ctx.observe(`oversized WRITE: ${describeReply(r)}`);
      if (r.error !== 0 || caps(ctx).blockSize) ctx.should(r.error !== 0, 'the WRITE above the advertised maximum fails', describeReply(r));
      // Above 32 MiB the server MAY hard-disconnect, also right after its error reply.
      const next = await mayDisconnect(conn, { type: Cmd.READ, offset: 0, length: 512 });
      if (next === 'closed') ctx.observe('the server disconnected after its reply (allowed above 32 MiB)');
      else ctx.should(next.error === 0, 'the connection is still usable (the payload was consumed)', describeReply(next));
    },
  }),
];
