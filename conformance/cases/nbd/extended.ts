// nbd/extended/*: checklist A31 / F71 / G72-74, gated on NBD_OPT_EXTENDED_HEADERS
// (branch extension-ext-header of proto.md). Nothing installed here supports it (§6 item 9).
import { nbdCase, type Ctx, type NbdCase } from './env.ts';

const EXT = 'proto.md (extension-ext-header) "Extended headers"';
const gate = (ctx: Ctx): never =>
  ctx.skip(ctx.env.extendedHeaders === 'ack' ? 'the server offers extended headers, but the conformance client does not implement them yet' : `extended headers not offered (NBD_OPT_EXTENDED_HEADERS: ${ctx.env.extendedHeaders})`);

export const extendedCases: NbdCase[] = [
  nbdCase({
    id: 'nbd/extended/every-reply-extended',
    section: `${EXT}; docs/requirements/nbd.md G72`,
    level: 'MUST',
    title: 'After EXTENDED_HEADERS, every reply uses the extended header',
    description: 'Negotiates extended headers, sends requests including failing ones.',
    expectation: 'Every reply is a 32-byte extended reply with the request offset.',
    run: async (ctx) => gate(ctx),
  }),
  nbdCase({
    id: 'nbd/extended/payload-len',
    section: `${EXT}; docs/requirements/nbd.md G73`,
    level: 'MUST',
    title: 'PAYLOAD_LEN rules, payload consumed on errors',
    description: 'WRITE without PAYLOAD_LEN, PAYLOAD_LEN on READ.',
    expectation: 'EINVAL and the stream stays in sync.',
    run: async (ctx) => gate(ctx),
  }),
  nbdCase({
    id: 'nbd/extended/64-bit-length',
    section: `${EXT}; docs/requirements/nbd.md G74`,
    level: 'MUST',
    title: '64-bit effect lengths are not truncated',
    description: 'WRITE_ZEROES over more than 4 GiB.',
    expectation: 'Accepted or EINVAL/EOVERFLOW, never truncated mod 2^32.',
    run: async (ctx) => gate(ctx),
  }),
  nbdCase({
    id: 'nbd/extended/block-status-ext',
    section: `${EXT}; docs/requirements/nbd.md F71`,
    level: 'MUST',
    title: 'BLOCK_STATUS_EXT chunks are well-formed',
    description: 'BLOCK_STATUS with extended headers.',
    expectation: 'count != 0, length = 8 + 16 count, upper 32 status bits 0 for base:.',
    run: async (ctx) => gate(ctx),
  }),
];
