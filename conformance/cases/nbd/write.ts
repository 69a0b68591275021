// nbd/write/*: checklist E (docs/requirements/nbd.md E59-E65; proto.md "Request types", "Ordering of
// messages and writes", "Error values").
import { CF } from '../../nbd/constants.ts';
import { NbdClientError } from '../../nbd/errors.ts';
import {
  Cmd,
  Errno,
  TF,
  caps,

  describeReply,
  err,
  nbdCase,
  requireFlag,
  requireWritable,
  session,
  usableAfter,
  type NbdCase,
  seededBytes,
} from './env.ts';

const REQ = 'proto.md "Request types"';
const sec = (spec: string, n: string) => `${spec}; docs/requirements/nbd.md ${n}`;

export const writeCases: NbdCase[] = [
  nbdCase({
    id: 'nbd/write/read-back',
    section: sec(`${REQ} NBD_CMD_WRITE`, 'E59'),
    level: 'MUST',
    title: 'WRITE then READ returns the same bytes',
    description: 'Writes 64 KiB of random data, and 1-3 bytes at odd offsets when the minimum block size is 1.',
    expectation: 'Each READ returns exactly what was written.',
    async run(ctx) {
      requireWritable(ctx);
      const { conn } = await session(ctx);
      const off = ctx.env.scratch(131072);
      const data = seededBytes(ctx, 65536);
      const w = await conn.request({ type: Cmd.WRITE, offset: off, payload: data });
      ctx.must(w.error === 0, 'the WRITE succeeds', describeReply(w));
      const r = await conn.request({ type: Cmd.READ, offset: off, length: 65536 });
      ctx.must(r.data?.equals(data) ?? false, 'the READ returns the written bytes', describeReply(r));
      if ((ctx.env.rw.blockSize?.minimum ?? 1) === 1) {
        for (const [o, n] of [[65536 + 1, 1], [65536 + 7, 2], [65536 + 513, 3]] as const) {
          const small = seededBytes(ctx, n);
          const ws = await conn.request({ type: Cmd.WRITE, offset: off + o, payload: small });
          const rs = await conn.request({ type: Cmd.READ, offset: off + o, length: n });
          ctx.must(ws.error === 0 && (rs.data?.equals(small) ?? false), `an unaligned ${n}-byte WRITE at +${o} reads back`, `${describeReply(ws)} / ${describeReply(rs)}`);
        }
      }
    },
  }),
  nbdCase({
    id: 'nbd/write/flush',
    section: sec(`${REQ} NBD_CMD_FLUSH`, 'E59'),
    level: 'MUST',
    title: 'FLUSH after WRITE succeeds',
    description: 'Writes, then flushes (offset and length 0).',
    expectation: 'The FLUSH succeeds.',
    async run(ctx) {
      requireWritable(ctx);
      requireFlag(ctx, TF.SEND_FLUSH);
      const { conn } = await session(ctx);
      const off = ctx.env.scratch(4096);
      await conn.request({ type: Cmd.WRITE, offset: off, payload: seededBytes(ctx, 4096) });
      const f = await conn.request({ type: Cmd.FLUSH });
      ctx.must(f.error === 0, 'FLUSH succeeds', describeReply(f));
    },
  }),
  nbdCase({
    id: 'nbd/write/write-zeroes',
    section: sec(`${REQ} NBD_CMD_WRITE_ZEROES`, 'E60'),
    level: 'MUST',
    title: 'WRITE_ZEROES makes the range read as zeroes (with and without NO_HOLE)',
    description: 'Writes data, zeroes part of it, reads back; again with NBD_CMD_FLAG_NO_HOLE.',
    expectation: 'The zeroed range reads as zeroes; the rest is untouched.',
    async run(ctx) {
      requireWritable(ctx);
      requireFlag(ctx, TF.SEND_WRITE_ZEROES);
      const { conn } = await session(ctx);
      for (const flags of [0, CF.NO_HOLE]) {
        const off = ctx.env.scratch(65536);
        const data = seededBytes(ctx, 65536);
        await conn.request({ type: Cmd.WRITE, offset: off, payload: data });
        const z = await conn.request({ type: Cmd.WRITE_ZEROES, flags, offset: off + 4096, length: 32768 });
        ctx.must(z.error === 0, `WRITE_ZEROES${flags ? ' with NO_HOLE' : ''} succeeds`, describeReply(z));
        const r = await conn.request({ type: Cmd.READ, offset: off, length: 65536 });
        const exp = Buffer.from(data);
        exp.fill(0, 4096, 4096 + 32768);
        ctx.must(r.data?.equals(exp) ?? false, `the zeroed range reads as zeroes and the rest is unchanged${flags ? ' (NO_HOLE)' : ''}`);
      }
    },
  }),
  nbdCase({
    id: 'nbd/write/fua',
    section: sec('proto.md NBD_CMD_FLAG_FUA', 'E61'),
    level: 'MUST',
    title: 'FUA is accepted on WRITE, WRITE_ZEROES and READ',
    description: 'Sends each with NBD_CMD_FLAG_FUA.',
    expectation: 'The server MUST accept FUA whenever SEND_FUA is set.',
    async run(ctx) {
      requireWritable(ctx);
      requireFlag(ctx, TF.SEND_FUA);
      const { conn, s } = await session(ctx);
      const off = ctx.env.scratch(8192);
      const data = seededBytes(ctx, 4096);
      const w = await conn.request({ type: Cmd.WRITE, flags: CF.FUA, offset: off, payload: data });
      ctx.must(w.error === 0, 'WRITE with FUA succeeds', describeReply(w));
      if (s.transmissionFlags & TF.SEND_WRITE_ZEROES) {
        const z = await conn.request({ type: Cmd.WRITE_ZEROES, flags: CF.FUA, offset: off + 4096, length: 4096 });
        ctx.must(z.error === 0, 'WRITE_ZEROES with FUA succeeds', describeReply(z));
      }
      const r = await conn.request({ type: Cmd.READ, flags: CF.FUA, offset: off, length: 4096 });
      ctx.must(r.error === 0 && (r.data?.equals(data) ?? false), 'READ with FUA succeeds with the written data', describeReply(r));
    },
  }),
  nbdCase({
    id: 'nbd/write/fast-zero',
    section: sec('proto.md NBD_CMD_FLAG_FAST_ZERO', 'E62'),
    level: 'MUST',
    title: 'FAST_ZERO: success or ENOTSUP, nothing else',
    description: 'With SEND_FAST_ZERO advertised: WRITE_ZEROES with and without NBD_CMD_FLAG_FAST_ZERO.',
    expectation: 'FAST_ZERO gives success or ENOTSUP (contents unchanged on ENOTSUP); without FAST_ZERO never ENOTSUP.',
    async run(ctx) {
      requireWritable(ctx);
      requireFlag(ctx, TF.SEND_FAST_ZERO);
      const { conn } = await session(ctx);
      const off = ctx.env.scratch(8192);
      const data = seededBytes(ctx, 4096);
      await conn.request({ type: Cmd.WRITE, offset: off, payload: data });
      const fz = await conn.request({ type: Cmd.WRITE_ZEROES, flags: CF.FAST_ZERO, offset: off, length: 4096 });
      ctx.must(fz.error === 0 || fz.error === Errno.ENOTSUP, 'WRITE_ZEROES with FAST_ZERO gives success or ENOTSUP', describeReply(fz));
      const r = await conn.request({ type: Cmd.READ, offset: off, length: 4096 });
      if (fz.error === Errno.ENOTSUP) ctx.must(r.data?.equals(data) ?? false, 'after ENOTSUP the contents are unchanged');
      else ctx.must(r.data?.every((b) => b === 0) ?? false, 'after success the range reads as zeroes');
      const z = await conn.request({ type: Cmd.WRITE_ZEROES, offset: off + 4096, length: 4096 });
      ctx.must(z.error !== Errno.ENOTSUP, 'WRITE_ZEROES without FAST_ZERO never fails with ENOTSUP', err(z.error));
    },
  }),
  nbdCase({
    id: 'nbd/write/fast-zero-unadvertised',
    section: sec('proto.md NBD_CMD_FLAG_FAST_ZERO; "Command flags"', 'E62'),
    level: 'SHOULD',
    title: 'FAST_ZERO without SEND_FAST_ZERO: EINVAL',
    description: 'The server advertises WRITE_ZEROES but not FAST_ZERO; the client sends WRITE_ZEROES with NBD_CMD_FLAG_FAST_ZERO anyway.',
    expectation: 'The client is in violation; the server SHOULD answer EINVAL and stay usable.',
    async run(ctx) {
      requireWritable(ctx);
      requireFlag(ctx, TF.SEND_WRITE_ZEROES);
      if (ctx.env.rw.transmissionFlags & TF.SEND_FAST_ZERO) ctx.skip('the server advertises SEND_FAST_ZERO');
      const { conn } = await session(ctx);
      const off = ctx.env.scratch(4096);
      try {
        const fz = await conn.request({ type: Cmd.WRITE_ZEROES, flags: CF.FAST_ZERO, offset: off, length: 4096 });
        ctx.should(fz.error === Errno.EINVAL, 'the unadvertised FAST_ZERO is refused with EINVAL', describeReply(fz));
      } catch (e) {
        if (!(e instanceof NbdClientError && e.kind === 'closed')) throw e;
        ctx.should(false, 'the unadvertised FAST_ZERO is refused with EINVAL', 'the server dropped the connection instead of replying');
        return;
      }
      await usableAfter(ctx, conn, 'an unadvertised FAST_ZERO', 'SHOULD');
    },
  }),
  nbdCase({
    id: 'nbd/write/read-only-export',
    section: sec('proto.md "Error values"; NBD_FLAG_READ_ONLY', 'E63'),
    level: 'SHOULD',
    title: 'Writes on a read-only export: EPERM',
    description: "On the target's read-only export: WRITE, and TRIM / WRITE_ZEROES when advertised.",
    expectation: 'Each MUST fail, SHOULD with EPERM; the connection stays usable.',
    async run(ctx) {
      const ro = caps(ctx, 'ro');
      if (!(ro.transmissionFlags & TF.READ_ONLY)) ctx.skip("the 'ro' export does not advertise READ_ONLY");
      const { conn } = await session(ctx, { role: 'ro' });
      const reqs: [string, Parameters<typeof conn.request>[0]][] = [['WRITE', { type: Cmd.WRITE, offset: 16 << 20, payload: Buffer.alloc(4096, 0xee) }]];
      if (ro.transmissionFlags & TF.SEND_TRIM) reqs.push(['TRIM', { type: Cmd.TRIM, offset: 16 << 20, length: 4096 }]);
      if (ro.transmissionFlags & TF.SEND_WRITE_ZEROES) reqs.push(['WRITE_ZEROES', { type: Cmd.WRITE_ZEROES, offset: 16 << 20, length: 4096 }]);
      for (const [name, req] of reqs) {
        const r = await conn.request(req);
        ctx.must(r.error !== 0, `${name} on a read-only export fails`, describeReply(r));
        ctx.should(r.error === Errno.EPERM, `${name} fails with EPERM`, describeReply(r));
      }
      await usableAfter(ctx, conn, 'writes on a read-only export');
    },
  }),
  nbdCase({
    id: 'nbd/write/multi-conn',
    section: sec('proto.md NBD_FLAG_CAN_MULTI_CONN', 'E64'),
    level: 'MUST',
    title: 'CAN_MULTI_CONN: a flushed write is visible on another connection',
    description: 'Connection A writes and flushes; connection B then reads.',
    expectation: 'B reads the new data.',
    async run(ctx) {
      requireWritable(ctx);
      requireFlag(ctx, TF.CAN_MULTI_CONN);
      requireFlag(ctx, TF.SEND_FLUSH);
      const a = await session(ctx);
      const b = await session(ctx);
      const off = ctx.env.scratch(4096);
      const data = seededBytes(ctx, 4096);
      await b.conn.request({ type: Cmd.READ, offset: off, length: 4096 });
      const w = await a.conn.request({ type: Cmd.WRITE, offset: off, payload: data });
      const f = await a.conn.request({ type: Cmd.FLUSH });
      ctx.must(w.error === 0 && f.error === 0, 'WRITE and FLUSH on connection A succeed', `${describeReply(w)} / ${describeReply(f)}`);
      const r = await b.conn.request({ type: Cmd.READ, offset: off, length: 4096 });
      ctx.must(r.data?.equals(data) ?? false, 'connection B reads the data flushed by A', describeReply(r));
    },
  }),
  nbdCase({
    id: 'nbd/write/unadvertised-command',
    section: sec(REQ, 'E65'),
    level: 'SHOULD',
    title: 'A command the server did not advertise: an error, no disconnect',
    description: 'Sends the first of TRIM, WRITE_ZEROES, CACHE whose flag is not advertised.',
    expectation: 'The client is in violation; the server SHOULD answer (an error, or success for CACHE) and stay connected.',
    async run(ctx) {
      const f = ctx.env.rw.transmissionFlags;
      const pick = ([['TRIM', Cmd.TRIM, TF.SEND_TRIM], ['WRITE_ZEROES', Cmd.WRITE_ZEROES, TF.SEND_WRITE_ZEROES], ['CACHE', Cmd.CACHE, TF.SEND_CACHE]] as const).find(([, , flag]) => !(f & flag));
      if (!pick) return ctx.skip('the server advertises TRIM, WRITE_ZEROES and CACHE');
      const { conn } = await session(ctx);
      let r;
      try {
        r = await conn.request({ type: pick[1], offset: ctx.env.scratch(4096), length: 4096 });
      } catch (e) {
        if (!(e instanceof NbdClientError && e.kind === 'closed')) throw e;
        ctx.should(false, `the server answers the unadvertised ${pick[0]} and stays connected`, 'it dropped the connection');
        return;
      }
      ctx.observe(`unadvertised ${pick[0]}: ${describeReply(r)}`);
      ctx.should(pick[1] === Cmd.CACHE ? r.error === 0 || r.error === Errno.EINVAL : r.error !== 0, `the unadvertised ${pick[0]} is refused${pick[1] === Cmd.CACHE ? ' or harmlessly accepted' : ''}`, describeReply(r));
      await usableAfter(ctx, conn, `an unadvertised ${pick[0]}`, 'SHOULD');
    },
  }),
  nbdCase({
    id: 'nbd/write/large-write-scaling',
    section: sec(`${REQ} NBD_CMD_WRITE; proto.md "Block size constraints"`, 'E59'),
    level: 'SHOULD',
    title: 'Large WRITEs cost time linear in their size, and do not starve other connections',
    description:
      'Times WRITEs of half the maximum payload and of the maximum (32 MiB unless the server advertises less; the fastest of 5 each, one connection), then 4 maximum-size WRITEs on 4 connections at once while a fifth connection READs 4 KiB back to back. Needs the generated image: it writes [30 MiB, 62 MiB).',
    expectation:
      'Doubling the size at most triples the time (linear is 2x, and the page cache adds up to about 2.7x on a 2-core machine; re-copying the partial input per socket read is 4x: a ratio from the same run, never an absolute time), and the reader served while the WRITEs arrive: 2 or more READs answered before the first WRITE is (a server that holds other connections until the payloads are in answers at most one). The longest READ is reported beside one WRITE alone.',
    exclusive: true,
    async run(ctx) {
      requireWritable(ctx);
      if (!ctx.target.image) ctx.skip('needs the generated image layout, to know where 32 MiB may be written');
      const max = Math.min(32 << 20, ctx.env.rw.blockSize?.maximum ?? 32 << 20);
      if (max < 4 << 20) ctx.skip(`the server's maximum payload is ${max} bytes; too small to measure scaling`);
      const at = 30 << 20;
      const timeoutMs = Math.max(ctx.timeoutMs, 60_000);
      const payload = seededBytes(ctx, max);
      const { conn } = await session(ctx);
      const timeOne = async (len: number): Promise<number> => {
        const times: number[] = [];
        for (let i = 0; i < 5; i++) {
          const t0 = performance.now();
          const r = await conn.request({ type: Cmd.WRITE, offset: at, payload: payload.subarray(0, len), timeoutMs });
          times.push(performance.now() - t0);
          if (!ctx.must(r.error === 0, `a WRITE of ${len} bytes succeeds`, describeReply(r))) return NaN;
        }
        // The fastest of 5: load on the machine only ever adds time.
        return Math.min(...times);
      };
      const half = await timeOne(max / 2);
      const full = await timeOne(max);
      if (Number.isNaN(half) || Number.isNaN(full)) return;
      const growth = full / half;
      ctx.observe(`WRITE of ${max / 2} bytes: ${half.toFixed(1)} ms; of ${max} bytes: ${full.toFixed(1)} ms (fastest of 5): ${growth.toFixed(2)}x`);
      ctx.should(growth <= 3, `doubling the WRITE size (${max / 2} to ${max} bytes) at most triples the time`, `${growth.toFixed(2)}x (${half.toFixed(1)} ms to ${full.toFixed(1)} ms)`);

      // Fairness: 4 writers at once, a healthy reader beside them.
      const writers = await Promise.all([0, 1, 2, 3].map(() => session(ctx)));
      const reader = (await session(ctx)).conn;
      let done = false;
      let worst = 0;
      let reads = 0;
      let readsBeforeFirstWrite: number | undefined;
      const readLoop = (async () => {
        while (!done) {
          const t0 = performance.now();
          const r = await reader.request({ type: Cmd.READ, offset: 0, length: 4096, timeoutMs });
          worst = Math.max(worst, performance.now() - t0);
          reads++;
          if (r.error !== 0) return ctx.must(false, 'a 4 KiB READ beside the large WRITEs succeeds', describeReply(r));
        }
        return true;
      })();
      const t0 = performance.now();
      const ws = await Promise.all(
        writers.map(({ conn: w }) =>
          w.request({ type: Cmd.WRITE, offset: at, payload, timeoutMs }).then((r) => {
            readsBeforeFirstWrite ??= reads;
            return r;
          }),
        ),
      );
      const writeMs = performance.now() - t0;
      done = true;
      await readLoop;
      for (const w of ws) ctx.must(w.error === 0, `each concurrent WRITE of ${max} bytes succeeds`, describeReply(w));
      ctx.observe(
        `4 concurrent WRITEs of ${max} bytes: ${writeMs.toFixed(0)} ms; meanwhile ${reads} READs of 4 KiB (${readsBeforeFirstWrite} before the first WRITE was answered), the longest ${worst.toFixed(1)} ms (${(worst / full).toFixed(2)}x one WRITE alone, ${(worst / writeMs).toFixed(2)}x the 4 WRITEs)`,
      );
      // Counted, not timed: a server that holds other connections until the payloads are in
      // answers at most the one READ it took before they began.
      ctx.should((readsBeforeFirstWrite ?? 0) >= 2, 'a 4 KiB READ on another connection is answered while the WRITEs are still arriving (2 or more before the first WRITE is answered)', `${readsBeforeFirstWrite} READs answered before the first WRITE reply`);
    },
  }),
];
