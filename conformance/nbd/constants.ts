// NBD wire constants, as named in the spec (docs/requirements/nbd.md §1; proto.md "Values" and
// "Reserved Magic values"). Plain numbers and bigints only: no behaviour lives here.

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const CLISERV_MAGIC = 0x00420281861253n; // oldstyle greeting
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const EXTENDED_REQUEST_MAGIC = 0x21e41c71;
export const EXTENDED_REPLY_MAGIC = 0x6e8a278c;

/** Handshake flags (server, u16) - proto.md "Newstyle negotiation". */
export const HS_FIXED_NEWSTYLE = 1 << 0;
export const HS_NO_ZEROES = 1 << 1;
/** Client flags (u32). */
export const CF_FIXED_NEWSTYLE = 1 << 0;
export const CF_NO_ZEROES = 1 << 1;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
  ERR_EXT_HEADER_REQD: 0x8000000a,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags (u16) - proto.md "Transmission flags". */
export const TF = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
  BLOCK_STATUS_PAYLOAD: 1 << 12,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

/** Command flags (u16). */
export const CF = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5,
} as const;

export const Chunk = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  BLOCK_STATUS_EXT: 6,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;
export const CHUNK_FLAG_DONE = 1;

/** Transmission errors - proto.md "Error values". */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

/** Strings (names, messages) MUST be at most 4096 bytes - proto.md "Conventions". */
export const MAX_STRING = 4096;

function invert(o: Record<string, number>): Map<number, string> {
  return new Map(Object.entries(o).map(([k, v]) => [v, k]));
}
const OPT_NAMES = invert(Opt);
const REP_NAMES = invert(Rep);
const CMD_NAMES = invert(Cmd);
const CHUNK_NAMES = invert(Chunk);
const ERRNO_NAMES = invert(Errno);
const INFO_NAMES = invert(Info);

export const optName = (n: number): string => `NBD_OPT_${OPT_NAMES.get(n) ?? `#${n}`}`;
export const repName = (n: number): string => `NBD_REP_${REP_NAMES.get(n) ?? `0x${n.toString(16)}`}`;
export const cmdName = (n: number): string => `NBD_CMD_${CMD_NAMES.get(n) ?? `#${n}`}`;
export const chunkName = (n: number): string => `NBD_REPLY_TYPE_${CHUNK_NAMES.get(n) ?? `0x${n.toString(16)}`}`;
export const errnoName = (n: number): string => (n === 0 ? 'OK' : (ERRNO_NAMES.get(n) ?? `errno ${n}`));
export const infoName = (n: number): string => `NBD_INFO_${INFO_NAMES.get(n) ?? `#${n}`}`;
export const isErrorReply = (rep: number): boolean => (rep & 0x80000000) !== 0;
export const isErrorChunk = (type: number): boolean => (type & 0x8000) !== 0;

export function flagNames(flags: number): string {
  const names = Object.entries(TF)
    .filter(([, bit]) => (flags & bit) !== 0)
    .map(([k]) => k);
  const known = Object.values(TF).reduce((a, b) => a | b, 0);
  if (flags & ~known) names.push(`0x${(flags & ~known).toString(16)}`);
  return names.join('|') || '0';
}
