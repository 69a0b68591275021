// nbd/structured-read/*: checklist D (docs/requirements/nbd.md D54-D58; proto.md "Structured reply
// types", NBD_CMD_FLAG_DF).
import { CF } from '../../nbd/constants.ts';
import { Errno, TF, describeReply, expected, nbdCase, requireFlag, requireStructured, session, usableAfter, type NbdCase } from './env.ts';
import type { ErrorInjection } from '../../targets/builtin.ts';
import { Cmd } from '../../nbd/constants.ts';

const SR = 'proto.md "Structured reply types"';
const sec = (spec: string, n: string) => `${spec}; docs/requirements/nbd.md ${n}`;
const MiB = 1 << 20;

export const structuredCases: NbdCase[] = [
  nbdCase({
    id: 'nbd/structured-read/coverage',
    section: sec(SR, 'D54'),
    level: 'MUST',
    title: 'READ chunks cover the request exactly, and the data is right',
    description: 'READs [0, 4 MiB) (or up to the advertised maximum payload), which mixes data and holes, under structured replies.',
    expectation: 'Chunks inside the request, no overlap, full coverage; the reassembled data equals the image.',
    async run(ctx) {
      requireStructured(ctx);
      const { conn } = await session(ctx);
      const len = Math.min(4 * MiB, ctx.env.rw.blockSize?.maximum ?? 4 * MiB);
      const r = await conn.request({ type: Cmd.READ, offset: 0, length: len });
      ctx.must(r.error === 0, `the READ of [0, ${len}) succeeds`, describeReply(r));
      const exp = expected(ctx, 0, len);
      if (exp) ctx.must(r.data?.equals(exp) ?? false, 'the reassembled data equals the image content');
      ctx.observe(`${r.content.length} content chunk(s): ${r.content.filter((c) => c.kind === 'data').length} data, ${r.content.filter((c) => c.kind === 'hole').length} hole`);
    },
  }),
  nbdCase({
    id: 'nbd/structured-read/holes',
    section: sec(`${SR} NBD_REPLY_TYPE_OFFSET_HOLE`, 'D55'),
    level: 'MAY',
    title: 'Holes as OFFSET_HOLE or as data',
    description: 'READs [1 MiB, 2 MiB), a hole in the image.',
    expectation: 'Zeroes, sent as OFFSET_HOLE chunks or as data: both allowed (info).',
    async run(ctx) {
      requireStructured(ctx);
      const { conn } = await session(ctx);
      const r = await conn.request({ type: Cmd.READ, offset: MiB, length: MiB });
      ctx.must(r.error === 0 && (r.data?.every((b) => b === 0) ?? false), 'the hole reads as zeroes', describeReply(r));
      const holes = r.content.filter((c) => c.kind === 'hole').length;
      ctx.observe(holes ? `holes sent as ${holes} OFFSET_HOLE chunk(s)` : `holes sent as data (${r.content.length} OFFSET_DATA chunk(s))`);
    },
  }),
  nbdCase({
    id: 'nbd/structured-read/df',
    section: sec(`${SR}; proto.md NBD_CMD_FLAG_DF`, 'D56'),
    level: 'MUST',
    title: 'DF: at most one content chunk',
    description: 'READs [1 MiB - 64 KiB, 1 MiB + 64 KiB) (data then hole) with NBD_CMD_FLAG_DF.',
    expectation: 'A single OFFSET_DATA chunk (holes included as zeroes); the data is right.',
    async run(ctx) {
      requireStructured(ctx);
      requireFlag(ctx, TF.SEND_DF);
      const { conn } = await session(ctx);
      const off = MiB - 65536;
      const r = await conn.request({ type: Cmd.READ, flags: CF.DF, offset: off, length: 131072 });
      ctx.must(r.error === 0, 'the DF READ succeeds', describeReply(r));
      ctx.must(r.content.length <= 1, 'at most one content chunk', `${r.content.length} chunks`);
      const exp = expected(ctx, off, 131072);
      if (exp) ctx.must(r.data?.equals(exp) ?? false, 'the data equals the image content');
    },
  }),
  nbdCase({
    id: 'nbd/structured-read/df-no-eoverflow',
    section: sec('proto.md NBD_CMD_FLAG_DF', 'D57'),
    level: 'MUST',
    title: 'DF with length <= 64 KiB never fails with EOVERFLOW',
    description: 'READs 64 KiB with NBD_CMD_FLAG_DF.',
    expectation: 'Not EOVERFLOW (success expected).',
    async run(ctx) {
      requireStructured(ctx);
      requireFlag(ctx, TF.SEND_DF);
      const { conn } = await session(ctx);
      const r = await conn.request({ type: Cmd.READ, flags: CF.DF, offset: 0, length: 65536 });
      ctx.must(r.error !== Errno.EOVERFLOW, 'no EOVERFLOW for a 64 KiB DF READ', describeReply(r));
      ctx.must(r.error === 0, 'the DF READ succeeds', describeReply(r));
    },
  }),
  nbdCase({
    id: 'nbd/structured-read/error-midway',
    section: sec(SR, 'D58'),
    level: 'MUST',
    title: 'A READ failing part-way sends an error chunk',
    description: 'With error injection armed in the target (e.g. nbdkit --filter=error), READs 64 KiB under structured replies.',
    exclusive: true, // the injected fault hits every reader of the export while armed
    expectation: 'A structured reply ending in a well-formed error chunk (any started OFFSET_DATA chunk completed); the connection stays usable once the fault is gone.',
    async run(ctx) {
      const inj = ctx.target.extra?.errorInjection as ErrorInjection | undefined;
      if (!inj) return ctx.skip('the target has no error injection (try --target nbdkit-policy)');
      requireStructured(ctx);
      const { conn } = await session(ctx);
      inj.armReadError();
      let r;
      try {
        r = await conn.request({ type: Cmd.READ, offset: 0, length: 65536 });
      } finally {
        inj.disarmReadError();
      }
      ctx.must(r.error !== 0, 'the READ reports the injected failure', describeReply(r));
      ctx.must(r.structured && r.chunks.some((c) => c.body.chunk === 'error'), 'the failure comes as an error chunk', r.chunks.map((c) => c.body.chunk).join(', '));
      ctx.observe(`chunks: ${r.chunks.map((c) => c.body.chunk).join(', ')}; error ${r.error}${r.errorMessage ? ` "${r.errorMessage}"` : ''}`);
      await usableAfter(ctx, conn, 'a failed READ');
    },
  }),
];
