// Error classes of the conformance NBD client, one per layer:
//  - NbdProtocolError: the codec or the reply state machine saw bytes the spec forbids. It always
//    carries the offending bytes (hex) and their offset in the server->client stream.
//  - NbdClientError: the I/O edge - a timeout ("hang or desync"), an unexpected close, misuse.

export function toHex(bytes: Uint8Array, max = 64): string {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const hex = b.subarray(0, max).toString('hex').replace(/(..)/g, '$1 ').trim();
  return b.length > max ? `${hex} ... (${b.length} bytes)` : hex;
}

export class NbdProtocolError extends Error {
  override readonly name = 'NbdProtocolError';
  constructor(
    /** What is wrong, in spec terms, without the position. */
    readonly reason: string,
    /** Offset of the offending bytes in the server->client byte stream. */
    readonly offset: number,
    /** The offending bytes (usually the header or field in question). */
    readonly bytes: Uint8Array,
  ) {
    super(`${reason} (stream offset ${offset}, bytes: ${toHex(bytes)})`);
  }
  get hex(): string {
    return Buffer.from(this.bytes).toString('hex');
  }
}

/** 'unreachable': no connection could be made at all (nothing listens, or it stopped accepting).
 * 'not-allowed': the request would write an export the user did not allow us to write.
 * 'tls': the TLS handshake after NBD_OPT_STARTTLS failed (certificate, PSK, closed mid-way). */
export type ClientFailure = 'timeout' | 'closed' | 'usage' | 'refused' | 'unreachable' | 'not-allowed' | 'tls';

export class NbdClientError extends Error {
  override readonly name = 'NbdClientError';
  constructor(
    readonly kind: ClientFailure,
    message: string,
  ) {
    super(message);
  }
}
