// The fuzz oracle on hand-made server byte streams: a well-behaved server passes, and each rule
// the oracle checks fails on a server that breaks it (the known-bad implementation per check).
import { describe, expect, it } from 'vitest';
import { encodeNbdCase, encodeRequestMsg, type NbdCase, type RequestMsg } from '../fuzz/case.ts';
import { reductions } from '../fuzz/shrink.ts';
import { SessionOracle } from '../fuzz/oracle.ts';
import { CF_FIXED_NEWSTYLE, CF_NO_ZEROES, CHUNK_FLAG_DONE, Chunk, Cmd, CF as CmdFlag, Errno, HS_FIXED_NEWSTYLE, HS_NO_ZEROES, IHAVEOPT, NBDMAGIC, OPTION_REPLY_MAGIC, Opt, Rep, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, TF } from '../nbd/constants.ts';
import { encodeInfoRequest, encodeOption } from '../nbd/codec.ts';

const greeting = (): Buffer => {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(HS_FIXED_NEWSTYLE | HS_NO_ZEROES, 16);
  return b;
};
const optReply = (opt: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer => {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
};
const infoExport = (size: bigint, flags: number): Buffer => {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(0, 0);
  b.writeBigUInt64BE(size, 2);
  b.writeUInt16BE(flags, 10);
  return b;
};
const simple = (cookie: number, error = 0, data?: Buffer): Buffer => {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(BigInt(cookie), 8);
  return data ? Buffer.concat([b, data]) : b;
};
const chunk = (cookie: number, type: number, flags: number, payload: Buffer): Buffer => {
  const b = Buffer.alloc(20);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(BigInt(cookie), 8);
  b.writeUInt32BE(payload.length, 16);
  return Buffer.concat([b, payload]);
};
const flagsBytes = (f = CF_FIXED_NEWSTYLE | CF_NO_ZEROES): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(f);
  return b;
};
const req = (type: number, cookie: number, over: Partial<RequestMsg> = {}): Buffer =>
  encodeRequestMsg({ kind: 'request', type, flags: 0, cookie, offset: '0', length: type === Cmd.READ || type === Cmd.WRITE ? 512 : 0, payload: type === Cmd.WRITE ? 512 : 0, ...over });

const SIZE = 1n << 20n;
const RW_FLAGS = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_WRITE_ZEROES | TF.SEND_TRIM;

/** An oracle past GO (optionally with structured replies), as a well-behaved server answers. */
function inTransmission(opts: { structured?: boolean; flags?: number } = {}): SessionOracle {
  const o = new SessionOracle({ exports: ['disk'] });
  o.serverSent(greeting());
  o.clientSent(flagsBytes());
  if (opts.structured) {
    o.clientSent(encodeOption(Opt.STRUCTURED_REPLY));
    o.serverSent(optReply(Opt.STRUCTURED_REPLY, Rep.ACK));
  }
  o.clientSent(encodeOption(Opt.GO, encodeInfoRequest('disk')));
  expect(o.owed()).toMatch(/NBD_OPT_GO/);
  o.serverSent(optReply(Opt.GO, Rep.INFO, infoExport(SIZE, opts.flags ?? RW_FLAGS)));
  o.serverSent(optReply(Opt.GO, Rep.ACK));
  expect(o.phase).toBe('transmission');
  return o;
}

describe('fuzz oracle: a well-behaved server passes', () => {
  it('handshake, pipelined requests answered out of order, DISC, close', () => {
    const o = inTransmission({ structured: true });
    o.clientSent(Buffer.concat([req(Cmd.READ, 1), req(Cmd.WRITE, 2), req(Cmd.FLUSH, 3)]));
    expect(o.owed()).toMatch(/3 request/);
    o.serverSent(simple(3));
    o.serverSent(simple(2));
    const off = Buffer.alloc(8);
    o.serverSent(chunk(1, Chunk.OFFSET_DATA, 0, Buffer.concat([off, Buffer.alloc(256, 1)])));
    const hole = Buffer.alloc(12);
    hole.writeBigUInt64BE(256n, 0);
    hole.writeUInt32BE(256, 8);
    o.serverSent(chunk(1, Chunk.OFFSET_HOLE, CHUNK_FLAG_DONE, hole));
    o.clientSent(req(Cmd.DISC, 4));
    expect(o.owed()).toMatch(/close after NBD_CMD_DISC/);
    o.serverClosed();
    expect(o.findings).toEqual([]);
  });

  it('a WRITE whose payload is still arriving is owed nothing; a lying option length swallows what follows', () => {
    const o = inTransmission();
    o.clientSent(req(Cmd.WRITE, 1, { length: 4096, payload: 100 }));
    expect(o.owed()).toBeUndefined();
    const p = new SessionOracle({ exports: ['disk'] });
    p.serverSent(greeting());
    p.clientSent(flagsBytes());
    p.clientSent(encodeOption(Opt.LIST).fill(0, 12, 16).fill(0x20, 15, 16)); // LIST claiming 32 bytes
    expect(p.owed()).toBeUndefined();
    p.clientSent(Buffer.alloc(32));
    expect(p.owed()).toMatch(/NBD_OPT_LIST/);
    p.serverSent(optReply(Opt.LIST, Rep.ERR_INVALID));
    expect(p.findings).toEqual([]);
  });
});

describe('fuzz oracle: each check fails on a server that breaks it', () => {
  it('a reply to NBD_CMD_DISC (session model: no-reply-to-disc)', () => {
    const o = inTransmission();
    o.clientSent(req(Cmd.DISC, 9));
    o.serverSent(simple(9));
    expect(o.findings[0]).toMatchObject({ kind: 'model' });
    expect(o.findings[0]!.message).toMatch(/DISC/);
  });

  it('a structured chunk without NBD_OPT_STRUCTURED_REPLY (framing)', () => {
    const o = inTransmission();
    o.clientSent(req(Cmd.FLUSH, 1));
    o.serverSent(chunk(1, Chunk.NONE, CHUNK_FLAG_DONE, Buffer.alloc(0)));
    expect(o.findings[0]).toMatchObject({ kind: 'framing' });
  });

  it('a reply for a cookie nobody sent (desync)', () => {
    const o = inTransmission();
    o.clientSent(req(Cmd.FLUSH, 1));
    o.serverSent(simple(77));
    expect(o.findings[0]!.message).toMatch(/matches no request/);
  });

  it('a close after DISC with requests unanswered (close-after-outstanding)', () => {
    const o = inTransmission();
    o.clientSent(Buffer.concat([req(Cmd.FLUSH, 1), req(Cmd.DISC, 2)]));
    o.serverClosed();
    expect(o.findings[0]!.message).toMatch(/after NBD_CMD_DISC with 1 request/);
  });

  it('a close with well-formed requests unanswered and no DISC', () => {
    const o = inTransmission();
    o.clientSent(req(Cmd.READ, 1));
    o.serverClosed();
    expect(o.findings[0]!.message).toMatch(/unanswered and no NBD_CMD_DISC/);
  });

  it('but a close after a bad request magic is allowed, and replies after it are not judged', () => {
    const o = inTransmission();
    o.clientSent(Buffer.concat([req(Cmd.READ, 1), req(Cmd.READ, 2, { magic: 0x12345678 })]));
    o.serverSent(simple(0x999, 22));
    o.serverClosed();
    expect(o.findings).toEqual([]);
  });

  it('an ACK to an unknown option', () => {
    const o = new SessionOracle({ exports: ['disk'] });
    o.serverSent(greeting());
    o.clientSent(flagsBytes());
    o.clientSent(encodeOption(0x1234));
    o.serverSent(optReply(0x1234, Rep.ACK));
    expect(o.findings[0]!.message).toMatch(/unknown option/);
  });

  it('an error to a well-formed GO for an export the target serves (the model allows INFO or ERR_UNKNOWN)', () => {
    const o = new SessionOracle({ exports: ['disk'] });
    o.serverSent(greeting());
    o.clientSent(flagsBytes());
    o.clientSent(encodeOption(Opt.GO, encodeInfoRequest('disk')));
    o.serverSent(optReply(Opt.GO, Rep.ERR_INVALID));
    expect(o.findings[0]).toMatchObject({ kind: 'model' });
  });

  it('GO acknowledged without NBD_INFO_EXPORT', () => {
    const o = new SessionOracle({ exports: ['disk'] });
    o.serverSent(greeting());
    o.clientSent(flagsBytes());
    o.clientSent(encodeOption(Opt.GO, encodeInfoRequest('disk')));
    o.serverSent(optReply(Opt.GO, Rep.ACK));
    expect(o.findings[0]).toMatchObject({ kind: 'model' });
  });

  it('an ACK before a lying option length has been satisfied', () => {
    const o = new SessionOracle({ exports: ['disk'] });
    o.serverSent(greeting());
    o.clientSent(flagsBytes());
    o.clientSent(encodeOption(Opt.STRUCTURED_REPLY).fill(0xff, 12, 16));
    o.serverSent(optReply(Opt.STRUCTURED_REPLY, Rep.ACK));
    expect(o.findings[0]!.message).toMatch(/before its 4294967295-byte data/);
  });

  it('a successful WRITE on a read-only export', () => {
    const o = inTransmission({ flags: TF.HAS_FLAGS | TF.READ_ONLY });
    o.clientSent(req(Cmd.WRITE, 1));
    o.serverSent(simple(1));
    expect(o.findings[0]!.message).toMatch(/read-only/);
  });

  it('a successful READ past the end of the export', () => {
    const o = inTransmission();
    o.clientSent(req(Cmd.READ, 1, { offset: String(SIZE) }));
    o.serverSent(simple(1, 0, Buffer.alloc(512)));
    expect(o.findings[0]!.message).toMatch(/past the end/);
  });

  it('ENOTSUP for WRITE_ZEROES without FAST_ZERO (allowed with it)', () => {
    const bad = inTransmission();
    bad.clientSent(req(Cmd.WRITE_ZEROES, 1, { length: 512 }));
    bad.serverSent(simple(1, Errno.ENOTSUP));
    expect(bad.findings[0]!.message).toMatch(/ENOTSUP/);
    const good = inTransmission();
    good.clientSent(req(Cmd.WRITE_ZEROES, 1, { length: 512, flags: CmdFlag.FAST_ZERO }));
    good.serverSent(simple(1, Errno.ENOTSUP));
    expect(good.findings).toEqual([]);
  });

  it('a successful READ whose chunks do not cover the request', () => {
    const o = inTransmission({ structured: true });
    o.clientSent(req(Cmd.READ, 1));
    o.serverSent(chunk(1, Chunk.OFFSET_DATA, CHUNK_FLAG_DONE, Buffer.concat([Buffer.alloc(8), Buffer.alloc(100)])));
    expect(o.findings[0]).toMatchObject({ kind: 'framing' });
  });

  it('bytes in the option phase with no option outstanding', () => {
    const o = new SessionOracle({ exports: ['disk'] });
    o.serverSent(greeting());
    o.serverSent(optReply(Opt.LIST, Rep.ACK));
    expect(o.findings[0]!.message).toMatch(/no option outstanding/);
  });

  it('a close in the middle of a reply', () => {
    const o = inTransmission();
    o.clientSent(req(Cmd.READ, 1));
    o.serverSent(simple(1, 0, Buffer.alloc(100)));
    o.serverClosed();
    expect(o.findings[0]!.message).toMatch(/middle of a message/);
  });
});

describe('fuzz cases', () => {
  it('a cut keeps exactly that many bytes of the client stream', () => {
    const c: NbdCase = { proto: 'nbd', role: 'rw', clientFlags: 3, handshake: [{ kind: 'option', opt: Opt.GO, data: encodeInfoRequest('disk').toString('hex') }], requests: [{ kind: 'request', type: Cmd.READ, flags: 0, cookie: 1, offset: '0', length: 512, payload: 0 }] };
    const whole = Buffer.concat(encodeNbdCase(c));
    for (const cut of [0, 1, 3, 4, 20, whole.length - 1, whole.length, whole.length + 5]) {
      expect(Buffer.concat(encodeNbdCase({ ...c, cut }))).toEqual(whole.subarray(0, cut));
    }
  });

  it('reductions drop one message at a time and clear flags bit by bit', () => {
    const c: NbdCase = { proto: 'nbd', role: 'rw', clientFlags: 3, handshake: [], requests: [{ kind: 'request', type: Cmd.WRITE_ZEROES, flags: 0x12, cookie: 1, offset: '0', length: 512, payload: 0 }, { kind: 'raw', bytes: '00' }] };
    const r = reductions(c) as NbdCase[];
    expect(r.some((x) => x.requests.length === 1 && x.requests[0]!.kind === 'request')).toBe(true);
    expect(r.some((x) => x.requests[0]!.kind === 'request' && x.requests[0]!.flags === 0x10)).toBe(true);
  });
});
