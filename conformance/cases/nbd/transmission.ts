// nbd/transmission/*: checklist B (docs/requirements/nbd.md B32-B44; proto.md "Transmission",
// "Simple reply message", "Structured reply message", "Request types").
import { CF } from '../../nbd/constants.ts';
import {
  Cmd,
  Errno,
  TF,
  describeReply,
  err,
  expected,
  nbdCase,
  requireStructured,
  session,
  usableAfter,
  type NbdCase,
} from './env.ts';
import { probeCase, rejectionCase } from './rows.ts';

const TX = 'proto.md "Transmission"';
type NbdConnectionLike = Awaited<ReturnType<typeof session>>['conn'];
const sec = (spec: string, n: string) => `${spec}; docs/requirements/nbd.md ${n}`;

export const transmissionCases: NbdCase[] = [
  nbdCase({
    id: 'nbd/transmission/cookie-echo',
    section: sec(`${TX} "Request message"`, 'B32'),
    level: 'MUST',
    title: 'Every reply echoes its cookie',
    description: 'Pipelines READs with cookies 0, 2^64-1, 0x0123456789abcdef and a random one.',
    expectation: 'Each reply carries the exact cookie of its request, with the right data.',
    async run(ctx) {
      const { conn } = await session(ctx);
      const cookies = [0n, 2n ** 64n - 1n, 0x0123456789abcdefn, BigInt(Math.floor(ctx.random() * 2 ** 32)) * 2n ** 31n + 1n];
      const replies = await conn.pipeline(cookies.map((cookie, i) => ({ type: Cmd.READ, offset: i * 4096, length: 4096, cookie })));
      replies.forEach((r, i) => {
        const exp = expected(ctx, i * 4096, 4096);
        ctx.must(r.error === 0 && (!exp || (r.data?.equals(exp) ?? false)), `the READ with cookie 0x${cookies[i]!.toString(16)} is answered with the right data`, describeReply(r));
      });
    },
  }),
  nbdCase({
    id: 'nbd/transmission/simple-replies-without-structured',
    section: sec(`${TX} "Simple reply message"`, 'B33'),
    level: 'MUST',
    title: 'Without structured replies: only simple replies, data only on success',
    description: 'Negotiates without NBD_OPT_STRUCTURED_REPLY, READs valid and past-the-end ranges.',
    expectation: 'Simple replies only; a failed READ carries no data (the next reply still parses).',
    async run(ctx) {
      const { conn, s } = await session(ctx, { structured: false });
      const ok = await conn.request({ type: Cmd.READ, offset: 0, length: 8192 });
      const exp = expected(ctx, 0, 8192);
      ctx.must(ok.error === 0 && !ok.structured && (!exp || (ok.data?.equals(exp) ?? false)), 'a valid READ gets a simple reply with the right data', describeReply(ok));
      const bad = await conn.request({ type: Cmd.READ, offset: s.size, length: 512 });
      ctx.must(bad.error !== 0 && !bad.structured, 'a READ past the end gets a simple error reply', describeReply(bad));
      await usableAfter(ctx, conn, 'a failed READ');
    },
  }),
  nbdCase({
    id: 'nbd/transmission/structured-read',
    section: sec(`${TX} "Structured reply message"`, 'B34'),
    level: 'MUST',
    title: 'With structured replies, READ always gets a structured reply',
    description: 'READs a valid range and a range past the end with structured replies negotiated.',
    expectation: 'Both replies are structured (an early EINVAL too); the codec rejects a simple reply to READ.',
    async run(ctx) {
      requireStructured(ctx);
      const { conn, s } = await session(ctx);
      const ok = await conn.request({ type: Cmd.READ, offset: 0, length: 8192 });
      ctx.must(ok.error === 0 && ok.structured, 'a valid READ gets a structured reply', describeReply(ok));
      const bad = await conn.request({ type: Cmd.READ, offset: s.size, length: 512 });
      ctx.must(bad.error !== 0 && bad.structured, 'a READ past the end gets a structured error reply', describeReply(bad));
      await usableAfter(ctx, conn, 'a failed structured READ');
    },
  }),
  nbdCase({
    id: 'nbd/transmission/structured-done',
    section: sec(`${TX} "Structured reply message"`, 'B35'),
    level: 'MUST',
    title: 'Every structured reply ends with exactly one DONE chunk',
    description: 'Sends READ, FLUSH and an invalid command under structured replies, then more requests.',
    expectation: 'One DONE per reply, nothing after it for that cookie (a late chunk would match no request); NONE chunks have length 0 and DONE.',
    async run(ctx) {
      requireStructured(ctx);
      const { conn, s } = await session(ctx);
      const flush = (s.transmissionFlags & TF.SEND_FLUSH) !== 0;
      const rs = await conn.pipeline([
        { type: Cmd.READ, offset: 0, length: 65536 },
        { type: Cmd.READ, offset: 1 << 20, length: 65536 },
        ...(flush ? [{ type: Cmd.FLUSH }] : []),
        { type: Cmd.READ, offset: s.size, length: 512 },
      ]);
      ctx.must(rs.length >= 3, 'every request is answered', `${rs.length} replies`);
      await usableAfter(ctx, conn, 'several structured replies');
    },
  }),
  nbdCase({
    id: 'nbd/transmission/error-chunk',
    section: sec(`${TX} "Structured reply types" NBD_REPLY_TYPE_ERROR`, 'B36'),
    level: 'MUST',
    title: 'Error chunks are well-formed',
    description: 'Provokes errors (READ past the end, unknown command) under structured replies.',
    expectation: 'ERROR chunks: length >= 6, error != 0, message length fits; ERROR_OFFSET inside the request.',
    async run(ctx) {
      requireStructured(ctx);
      const { conn, s } = await session(ctx);
      const r = await conn.request({ type: Cmd.READ, offset: s.size - 512n, length: 4096 });
      ctx.must(r.error !== 0, 'a READ crossing the end fails', describeReply(r));
      if (r.errorMessage) ctx.observe(`error message: "${r.errorMessage}"`);
      await usableAfter(ctx, conn, 'an error chunk');
    },
  }),
  nbdCase({
    id: 'nbd/transmission/disconnect',
    section: sec(`${TX} NBD_CMD_DISC`, 'B37'),
    level: 'MUST',
    title: 'DISC: no reply; requests in flight are answered, then the server closes',
    description: 'Pipelines 4 READs and NBD_CMD_DISC in one write; repeated on 8 connections, since losing the race is timing-dependent.',
    expectation: 'Every time: all 4 READ replies arrive, no reply to DISC, then EOF ("The server MUST handle all outstanding requests").',
    exclusive: true,
    async run(ctx) {
      const ATTEMPTS = 8;
      for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
        const { conn } = await session(ctx);
        const reads = [0, 1, 2, 3].map((i) => conn.prepare({ type: Cmd.READ, offset: i * 65536, length: 65536 }));
        const disc = conn.prepare({ type: Cmd.DISC });
        conn.sendRaw(Buffer.concat([...reads.map((r) => r.bytes), disc.bytes]), '4 READs + NBD_CMD_DISC');
        const rs = await Promise.allSettled(reads.map((r) => r.reply));
        const answered = rs.filter((r) => r.status === 'fulfilled' && r.value.error === 0).length;
        const lost = rs.flatMap((r) => (r.status === 'rejected' ? [(r.reason as Error).message] : []));
        const ok = ctx.must(answered === reads.length, 'every READ in flight before NBD_CMD_DISC is answered ("The server MUST handle all outstanding requests")', `attempt ${attempt}: ${answered} of ${reads.length} answered${lost.length ? `; ${lost[0]}` : ''}`);
        const closed = ctx.must(await conn.waitClosed(), 'the server closes the connection after DISC', 'still open');
        ctx.must(conn.unread === 0 && !conn.protocolError, 'no reply to NBD_CMD_DISC', `${conn.unread} stray bytes`);
        if (!ok || !closed) return;
      }
      ctx.observe(`${ATTEMPTS} attempts, every READ answered`);
    },
  }),
  nbdCase({
    id: 'nbd/transmission/half-close',
    section: sec(`${TX}; "Terminating the transmission phase"`, 'B37'),
    level: 'SHOULD',
    title: 'A client that half-closes after its last request still gets every reply',
    description:
      'Sends one FLUSH, FUA WRITE of 64 KiB or READ of 1 MiB, then shuts down its sending side (shutdown(SHUT_WR)) and keeps reading; 10 trials of each, since the reply is lost only when it completes after the EOF is seen.',
    expectation:
      'Every reply arrives before the server closes. The spec defines only NBD_CMD_DISC and dropping the connection; a half-closed client has done neither, so the server SHOULD answer what it received (nbdkit does; simple clients and scripts end this way).',
    exclusive: true,
    async run(ctx) {
      const TRIALS = 10;
      const writable = (ctx.env.rw.transmissionFlags & TF.READ_ONLY) === 0;
      const fua = (ctx.env.rw.transmissionFlags & TF.SEND_FUA) !== 0;
      const readLen = Math.min(1 << 20, ctx.env.rw.blockSize?.maximum ?? 1 << 20, Number(ctx.env.rw.size));
      const kinds: { name: string; input: () => Parameters<NbdConnectionLike['prepare']>[0] }[] = [
        { name: 'FLUSH', input: () => ({ type: Cmd.FLUSH }) },
        ...(writable ? [{ name: `${fua ? 'FUA ' : ''}WRITE of 64 KiB`, input: () => ({ type: Cmd.WRITE, flags: fua ? CF.FUA : 0, offset: ctx.env.scratch(65536), payload: Buffer.alloc(65536, 0x5a) }) }] : []),
        { name: `READ of ${readLen} bytes`, input: () => ({ type: Cmd.READ, offset: 0, length: readLen }) },
      ];
      if ((ctx.env.rw.transmissionFlags & TF.SEND_FLUSH) === 0) kinds.shift();
      const lost: string[] = [];
      const refused: string[] = [];
      for (const k of kinds) {
        let delivered = 0;
        for (let i = 0; i < TRIALS; i++) {
          const { conn } = await session(ctx);
          const p = conn.prepare(k.input());
          conn.sendRaw(p.bytes, `${k.name}, then shutdown(SHUT_WR)`);
          conn.shutdownWrite();
          const r = await p.reply.then((x) => x, (e: Error) => e);
          if (r instanceof Error) {
            if (lost.length < 3) lost.push(`${k.name}, trial ${i + 1}: ${r.message}`);
          } else {
            delivered++;
            // A reply that refuses (ESHUTDOWN: "the server is shutting down") is still a reply.
            if (r.error !== 0) refused.push(`${k.name}, trial ${i + 1}: ${describeReply(r)}`);
          }
          await conn.waitClosed(2000);
          conn.close();
        }
        ctx.should(delivered === TRIALS, `the reply to a ${k.name} sent just before a half-close is delivered`, `${delivered} of ${TRIALS} delivered${lost.length ? `; ${lost[0]}` : ''}`);
        ctx.observe(`${k.name}: ${delivered} of ${TRIALS} replies delivered after the half-close`);
      }
      if (refused.length) ctx.observe(`${refused.length} delivered replies were errors, e.g. ${refused[0]}`);
    },
  }),
  rejectionCase({
    id: 'nbd/transmission/unknown-command',
    section: sec(`${TX} "Request types"; proto.md "Error values"`, 'B38'),
    level: 'SHOULD',
    title: 'Unknown command: EINVAL, connection stays usable',
    description: 'Sends command type 99.',
    expectation: 'An error (EINVAL SHOULD); the connection stays usable.',
    request: () => ({ type: 99, offset: 0, length: 0 }),
    fails: 'an unknown command fails',
    errno: Errno.EINVAL,
    after: 'an unknown command',
  }),
  rejectionCase({
    id: 'nbd/transmission/unknown-command-flag',
    section: sec(`${TX} "Command flags"`, 'B39'),
    level: 'SHOULD',
    title: 'Unknown command flag: EINVAL',
    description: 'Sends a READ with command flag bit 15 set.',
    expectation: 'EINVAL; the connection stays usable.',
    request: () => ({ type: Cmd.READ, flags: 1 << 15, offset: 0, length: 512 }),
    errno: Errno.EINVAL,
    errnoClaim: 'a READ with an unknown flag fails with EINVAL',
    after: 'an unknown command flag',
  }),
  rejectionCase({
    id: 'nbd/transmission/flag-not-valid-for-command',
    section: sec(`${TX} "Command flags"`, 'B40'),
    level: 'SHOULD',
    title: 'A flag not valid for the command: EINVAL',
    description: 'Sends a READ with NBD_CMD_FLAG_REQ_ONE (a BLOCK_STATUS flag).',
    expectation: 'EINVAL; the connection stays usable.',
    request: () => ({ type: Cmd.READ, flags: CF.REQ_ONE, offset: 0, length: 512 }),
    errno: Errno.EINVAL,
    errnoClaim: 'a READ with REQ_ONE fails with EINVAL',
    after: 'an invalid command flag',
  }),
  nbdCase({
    id: 'nbd/transmission/pipelined-64',
    section: sec(`${TX} "Ordering of messages and writes"`, 'B41'),
    level: 'MUST',
    title: '64 pipelined requests in one write, replies matched by cookie',
    description: 'Sends 64 READs of 4 KiB at scattered offsets in a single write.',
    expectation: 'All 64 are answered, each with the data of its own range (replies may come in any order).',
    async run(ctx) {
      const { conn } = await session(ctx);
      const offsets = Array.from({ length: 64 }, (_, i) => (i * 37 % 64) * 16384 + (i % 3) * 512);
      const rs = await conn.pipeline(offsets.map((offset) => ({ type: Cmd.READ, offset, length: 4096 })));
      const wrong = rs.filter((r, i) => r.error !== 0 || (expected(ctx, offsets[i]!, 4096) && !r.data?.equals(expected(ctx, offsets[i]!, 4096)!)));
      ctx.must(wrong.length === 0, 'every pipelined READ returns its own range', `${wrong.length} wrong`);
      const order = conn.log.entries.filter((e) => e.dir === 'recv' && e.conn === conn.id).length;
      ctx.observe(`${order} reply messages received`);
    },
  }),
  probeCase({
    id: 'nbd/transmission/zero-length-read',
    section: sec(`${TX} NBD_CMD_READ`, 'B42'),
    level: 'MAY',
    title: 'Zero-length READ: unspecified, but no disconnect',
    description: 'Sends a READ of length 0.',
    expectation: 'Success or an error, both allowed (info); the server SHOULD NOT disconnect.',
    requests: () => [['zero-length READ', { type: Cmd.READ, offset: 0, length: 0 }]],
    after: 'a zero-length READ',
  }),
  probeCase({
    id: 'nbd/transmission/zero-length-other',
    section: sec(TX, 'B42'),
    level: 'MAY',
    title: 'Zero-length WRITE, TRIM, WRITE_ZEROES, BLOCK_STATUS: no disconnect',
    description: 'Sends each advertised command with length 0.',
    expectation: 'Any reply is allowed (info); the server SHOULD NOT disconnect.',
    meta: (ctx) => ctx.env.rw.meta && ctx.env.rw.contexts.includes('base:allocation'),
    requests(ctx, s) {
      const offset = ctx.env.scratch(65536);
      const advertised: [string, number, boolean][] = [
        ['WRITE', Cmd.WRITE, !(s.transmissionFlags & TF.READ_ONLY)],
        ['TRIM', Cmd.TRIM, (s.transmissionFlags & TF.SEND_TRIM) !== 0],
        ['WRITE_ZEROES', Cmd.WRITE_ZEROES, (s.transmissionFlags & TF.SEND_WRITE_ZEROES) !== 0],
        ['BLOCK_STATUS', Cmd.BLOCK_STATUS, ctx.env.rw.meta && ctx.env.rw.contexts.includes('base:allocation')],
      ];
      return advertised.filter(([, , on]) => on).map(([name, type]) => [`${name} length 0`, { type, offset, length: 0 }] as const);
    },
    after: 'zero-length requests',
  }),
  probeCase({
    id: 'nbd/transmission/flush-with-length',
    section: sec(`${TX} NBD_CMD_FLUSH`, 'B43'),
    level: 'MAY',
    title: 'FLUSH with a non-zero length: a client error, no disconnect',
    description: 'Sends NBD_CMD_FLUSH with offset 0 and length 512.',
    expectation: 'Accepting or refusing it are both seen (info); the server SHOULD NOT disconnect.',
    needs: [{ flag: TF.SEND_FLUSH }],
    requests: () => [['FLUSH length 512', { type: Cmd.FLUSH, offset: 0, length: 512 }]],
    after: 'FLUSH with a length',
  }),
  nbdCase({
    id: 'nbd/transmission/survives-errors',
    section: sec(TX, 'B44'),
    level: 'MUST',
    title: 'The connection survives a series of error replies',
    description: 'On one connection: READ past the end, unknown command, unknown flag, offset overflow, then a valid READ.',
    expectation: 'Every error is a reply, not a disconnect; the final READ succeeds.',
    async run(ctx) {
      const { conn, s } = await session(ctx);
      const errs = [
        await conn.request({ type: Cmd.READ, offset: s.size, length: 512 }),
        await conn.request({ type: 77, offset: 0, length: 0 }),
        await conn.request({ type: Cmd.READ, flags: 1 << 14, offset: 0, length: 512 }),
        await conn.request({ type: Cmd.READ, offset: 2n ** 64n - 512n, length: 1024 }),
      ];
      ctx.must(errs.every((r) => r.error !== 0), 'each invalid request fails', errs.map(describeReply).join('; '));
      await usableAfter(ctx, conn, 'four error replies');
    },
  }),
];

