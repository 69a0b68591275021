// Reply state machine: consumes the decoded chunks of ONE request and checks the rules that span
// several chunks (docs/requirements/nbd.md §1.6, checklist B35, D54, D56, F67-68; proto.md "Structured
// replies"). Pure: no I/O. Violations are NbdProtocolErrors carrying the chunk's bytes.
import { Cmd, isErrorChunk } from './constants.ts';
import type { Extent, PendingRequest, ReplyChunk, SimpleReply } from './codec.ts';
import { NbdProtocolError } from './errors.ts';

export interface Reply {
  cookie: bigint;
  /** 0 on success, else the (first) error value. */
  error: number;
  errorMessage?: string;
  /** Whether the reply came as structured chunks. */
  structured: boolean;
  /** READ: the reassembled data (holes as zeroes). */
  data?: Buffer;
  /** READ under structured replies: the content chunks as they came (for DF and hole checks). */
  content: { kind: 'data' | 'hole'; offset: bigint; length: number }[];
  /** BLOCK_STATUS: extents per context id. */
  status: Map<number, Extent[]>;
  chunks: ReplyChunk[];
}

export interface ChunkBytes {
  /** Stream offset of the chunk and its bytes (for error reports). */
  offset: number;
  bytes: Uint8Array;
}

export class ReplyAssembler {
  private readonly reply: Reply;
  private readonly ranges: [bigint, bigint][] = [];
  private finished = false;

  constructor(
    readonly request: PendingRequest & { cookie: bigint; flags: number },
    private readonly selectedContexts: ReadonlySet<number>,
  ) {
    this.reply = { cookie: request.cookie, error: 0, structured: false, content: [], status: new Map(), chunks: [] };
    if (request.type === Cmd.READ) this.reply.data = Buffer.alloc(request.length);
  }

  get done(): boolean {
    return this.finished;
  }

  simple(msg: SimpleReply): Reply {
    this.finished = true;
    this.reply.error = msg.error;
    if (msg.error !== 0) delete this.reply.data;
    else if (msg.data && this.reply.data) msg.data.copy(this.reply.data);
    return this.reply;
  }

  /** Adds one chunk; returns the complete reply once the DONE chunk arrived. */
  chunk(msg: ReplyChunk, at: ChunkBytes): Reply | undefined {
    const bad = (reason: string): never => {
      throw new NbdProtocolError(reason, at.offset, at.bytes);
    };
    const r = this.reply;
    const req = this.request;
    r.structured = true;
    r.chunks.push(msg);
    const b = msg.body;
    const start = req.offset;
    const end = req.offset + BigInt(req.length);
    switch (b.chunk) {
      case 'offset-data':
      case 'offset-hole': {
        const len = b.chunk === 'offset-data' ? b.data.length : b.size;
        const from = b.offset;
        const to = from + BigInt(len);
        if (from < start || to > end) bad(`${b.chunk} chunk [${from}, ${to}) lies outside the request [${start}, ${end}) (proto.md "Structured replies": MUST stay inside)`);
        for (const [a, z] of this.ranges) {
          if (from < z && a < to) bad(`${b.chunk} chunk [${from}, ${to}) overlaps an earlier chunk [${a}, ${z})`);
        }
        this.ranges.push([from, to]);
        r.content.push({ kind: b.chunk === 'offset-data' ? 'data' : 'hole', offset: from, length: len });
        if (b.chunk === 'offset-data' && r.data) b.data.copy(r.data, Number(from - start));
        break;
      }
      case 'block-status': {
        if (r.status.has(b.contextId)) bad(`second NBD_REPLY_TYPE_BLOCK_STATUS chunk for context id ${b.contextId}`);
        if (!this.selectedContexts.has(b.contextId)) bad(`block status for context id ${b.contextId}, which was not selected with NBD_OPT_SET_META_CONTEXT`);
        r.status.set(b.contextId, b.extents);
        break;
      }
      case 'error':
      case 'unknown-error':
        if (b.chunk === 'error' && b.offset !== undefined && (b.offset < start || b.offset >= end)) {
          bad(`NBD_REPLY_TYPE_ERROR_OFFSET offset ${b.offset} outside the request [${start}, ${end})`);
        }
        if (r.error === 0) {
          r.error = b.error;
          r.errorMessage = b.message;
        }
        break;
      case 'none':
        break;
    }
    if (!msg.done) return undefined;
    this.finished = true;
    if (r.error === 0 && isErrorChunk(msg.type) === false && req.type === Cmd.READ) {
      // Success: the content chunks MUST cover the whole request.
      const covered = this.ranges.reduce((a, [x, y]) => a + (y - x), 0n);
      if (covered !== BigInt(req.length)) bad(`successful READ reply covers ${covered} of ${req.length} bytes`);
    }
    if (r.error === 0 && req.type === Cmd.BLOCK_STATUS && r.status.size === 0) {
      bad('successful BLOCK_STATUS reply without any NBD_REPLY_TYPE_BLOCK_STATUS chunk');
    }
    if (r.error !== 0) delete r.data;
    return r;
  }
}
