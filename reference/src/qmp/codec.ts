// QMP wire format (QEMU docs/interop/qmp-spec): a stream of JSON objects in each direction.
// Pure functions: a splitter that finds complete JSON texts in arbitrary chunks (as QEMU's
// json-streamer does, by bracket depth outside strings), and encoders for the server's messages.

export class QmpProtocolError extends Error {
  override readonly name = 'QmpProtocolError';
}

export type Decoded = { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly error: string };

/** Finds complete JSON values in a character stream. A text larger than `maxBytes` is dropped
 * with an error rather than buffered without bound. */
export class JsonStreamParser {
  private buf = '';
  private depth = 0;
  private inString = false;
  private escape = false;
  private scanned = 0;

  constructor(private readonly maxBytes = 1 << 20) {}

  feed(chunk: string, emit: (d: Decoded) => void): void {
    this.buf += chunk;
    let start = 0;
    let i = this.scanned;
    for (; i < this.buf.length; i++) {
      const ch = this.buf[i]!;
      if (this.inString) {
        if (this.escape) this.escape = false;
        else if (ch === '\\') this.escape = true;
        else if (ch === '"') this.inString = false;
        continue;
      }
      if (ch === '"') {
        if (this.depth === 0) {
          // A bare string at top level: find its end as a scalar token.
          this.inString = true;
          this.depth = 0;
        } else this.inString = true;
        continue;
      }
      if (ch === '{' || ch === '[') {
        this.depth++;
        continue;
      }
      if (ch === '}' || ch === ']') {
        this.depth--;
        if (this.depth <= 0) {
          const text = this.buf.slice(start, i + 1);
          start = i + 1;
          this.depth = 0;
          emit(parse(text));
        }
        continue;
      }
      if (this.depth === 0) {
        if (ch === ' ' || ch === '\t' || ch === '\r' || ch === '\n') {
          const text = this.buf.slice(start, i).trim();
          if (text) emit(parse(text));
          start = i + 1;
        }
      }
    }
    this.buf = this.buf.slice(start);
    this.scanned = this.buf.length;
    if (this.buf.length > this.maxBytes) {
      this.buf = '';
      this.scanned = 0;
      this.depth = 0;
      this.inString = false;
      this.escape = false;
      emit({ ok: false, error: `JSON parse error, input exceeds ${this.maxBytes} bytes` });
    }
  }
}

function parse(text: string): Decoded {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (e) {
    return { ok: false, error: `JSON parse error, ${(e as Error).message}` };
  }
}

export type QmpId = unknown;

export function encode(msg: unknown, pretty = false): string {
  return (pretty ? JSON.stringify(msg, null, 4) : JSON.stringify(msg)) + '\r\n';
}

/** QEMU 7.2's greeting shape: version triple, package, capabilities. */
export function greeting(): Record<string, unknown> {
  return { QMP: { version: { qemu: { micro: 0, minor: 2, major: 7 }, package: 'fleece-reference' }, capabilities: ['oob'] } };
}

export function returnMsg(value: unknown, id?: QmpId): Record<string, unknown> {
  return id === undefined ? { return: value } : { return: value, id };
}

export function errorMsg(errorClass: string, desc: string, id?: QmpId): Record<string, unknown> {
  const error = { class: errorClass, desc };
  return id === undefined ? { error } : { error, id };
}

export function eventMsg(event: string, data: unknown, now = Date.now()): Record<string, unknown> {
  return {
    timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 },
    event,
    ...(data === undefined ? {} : { data }),
  };
}
