// QMP wire format (QEMU docs/interop/qmp-spec): a stream of JSON texts in each direction.
// Pure functions: a streaming JSON lexer and splitter that behaves as QEMU's json-lexer.c and
// json-streamer.c do (a text ends where its braces and brackets balance; a lexical error is
// reported and the lexer skips to the next structural or control character; nesting is limited
// to 1024), a small parser over the tokens, and encoders for the server's messages.

export class QmpProtocolError extends Error {
  override readonly name = 'QmpProtocolError';
}

export type Decoded = { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly error: string };

/** QEMU json-streamer.c MAX_NESTING: braces and brackets open at once. */
export const MAX_NESTING = 1024;
/** The longest JSON text the monitor takes (QEMU's limit, MAX_TOKEN_SIZE, is 64 MiB; one QMP
 * command of the block layer is a few KiB). */
export const MAX_TEXT_BYTES = 1 << 20;

type TokenType = '{' | '}' | '[' | ']' | ',' | ':' | 'string' | 'number' | 'keyword';
interface Token {
  readonly type: TokenType;
  /** The token as sent (for messages); a string's decoded value is in `value`. */
  readonly text: string;
  readonly value?: string | number;
}

type LexState = 'start' | 'string' | 'escape' | 'unicode' | 'number' | 'keyword' | 'recovery';

const STRUCTURAL = new Set(['{', '}', '[', ']', ',', ':']);
const ESCAPES: Record<string, string> = { '"': '"', "'": "'", '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
const NUMBER = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/;
const isSpace = (c: string) => c === ' ' || c === '\t' || c === '\r' || c === '\n';
const isDigit = (c: string) => c >= '0' && c <= '9';
const isLetter = (c: string) => (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
/** Characters that end error recovery and reset the parser (QEMU: ASCII control characters other
 * than tab, and the bytes 0xFE/0xFF, which arrive here as U+FFFD after UTF-8 decoding). */
const isReset = (c: string) => (c < ' ' && c !== '\t') || c === '\uFFFD';
const show = (t: string) => (t.length > 32 ? `${t.slice(0, 32)}...` : t);

/**
 * Finds complete JSON texts in a character stream. Everything it buffers is bounded by
 * `maxBytes`: a text that grows past it, or nests deeper than MAX_NESTING, is answered with one
 * error and its remaining tokens are skipped until it balances, so the stream resynchronises at
 * the next text without recursing over or keeping what was refused.
 */
export class JsonStreamParser {
  private state: LexState = 'start';
  private quote = '"';
  private tok = ''; // the token being lexed, as sent
  private str = ''; // a string token's decoded value
  private hex = '';
  private tokTooBig = false;
  private tokens: Token[] = [];
  private depth = 0; // braces + brackets open
  private braces = 0;
  private brackets = 0;
  private size = 0;
  /** A text broke a limit and was answered: skip its tokens until depth 0. */
  private skipping = false;
  private emit: (d: Decoded) => void = () => {};

  constructor(private readonly maxBytes = MAX_TEXT_BYTES) {}

  feed(chunk: string, emit: (d: Decoded) => void): void {
    this.emit = emit;
    for (let i = 0; i < chunk.length; ) {
      const c = chunk[i]!;
      switch (this.state) {
        case 'start':
          i++;
          if (isSpace(c)) break;
          if (STRUCTURAL.has(c)) this.token({ type: c as TokenType, text: c }, emit);
          else if (c === '"' || c === "'") this.begin('string', c, c);
          else if (c === '-' || isDigit(c)) this.begin('number', c);
          else if (isLetter(c)) this.begin('keyword', c);
          else this.lexError(c, emit);
          break;
        case 'string':
          i++;
          if (c === this.quote) {
            this.state = 'start';
            this.token({ type: 'string', text: this.tok + c, value: this.str }, emit);
          } else if (c === '\\') {
            this.append(c, '');
            this.state = 'escape';
          } else if (c < ' ') this.lexError(this.tok + c, emit);
          else this.append(c, c);
          break;
        case 'escape':
          i++;
          if (c === 'u') {
            this.append(c, '');
            this.hex = '';
            this.state = 'unicode';
          } else if (c in ESCAPES) {
            this.append(c, ESCAPES[c]!);
            this.state = 'string';
          } else this.lexError(this.tok + c, emit);
          break;
        case 'unicode':
          i++;
          if (!/[0-9a-fA-F]/.test(c)) {
            this.lexError(this.tok + c, emit);
            break;
          }
          this.hex += c;
          this.append(c, '');
          if (this.hex.length === 4) {
            this.append('', String.fromCharCode(parseInt(this.hex, 16)));
            this.state = 'string';
          }
          break;
        case 'number':
        case 'keyword': {
          const more = this.state === 'number' ? isDigit(c) || c === '.' || c === 'e' || c === 'E' || c === '+' || c === '-' : isLetter(c);
          if (more) {
            i++;
            this.append(c, '');
            break;
          }
          // The character after the token is looked at again in 'start'.
          const text = this.tok;
          if (this.state === 'number') {
            this.state = 'start';
            if (!NUMBER.test(text)) this.lexError(text, emit);
            else this.token({ type: 'number', text, value: Number(text) }, emit);
          } else {
            this.state = 'start';
            this.token({ type: 'keyword', text }, emit);
          }
          break;
        }
        case 'recovery':
          // json-lexer.c IN_RECOVERY: skip to a structural or control character.
          if (c === '{' || c === '}' || c === '[' || c === ']') this.state = 'start';
          else {
            i++;
            if (isReset(c)) this.state = 'start';
          }
          break;
      }
    }
  }

  private begin(state: LexState, tok: string, quote = '"'): void {
    this.state = state;
    this.quote = quote;
    this.tok = tok;
    this.str = '';
    this.tokTooBig = false;
  }

  /** Adds to the token being lexed, unless it has already outgrown the limit (then it is only
   * scanned to its end, never kept). */
  private append(text: string, value: string): void {
    if (this.tokTooBig) return;
    this.tok += text;
    this.str += value;
    if (this.size + this.tok.length > this.maxBytes) {
      this.tokTooBig = true;
      this.tok = this.tok.slice(0, 32);
      this.str = '';
      if (!this.skipping) this.overLimit(`JSON parse error, input exceeds ${this.maxBytes} bytes`, true);
    }
  }

  /** Answers the text in progress with `error` and skips the rest of it: what is open is still
   * counted, so the skipping ends where the text balances (or the token in progress ends, for a
   * text that is one token). */
  private overLimit(error: string, inToken: boolean): void {
    const { braces, brackets } = this;
    this.reset();
    if (inToken || braces > 0 || brackets > 0) {
      this.skipping = true;
      this.braces = braces;
      this.brackets = brackets;
      this.depth = braces + brackets;
    }
    this.emit({ ok: false, error });
  }

  private lexError(text: string, emit: (d: Decoded) => void): void {
    this.state = 'recovery';
    const wasSkipping = this.skipping;
    this.reset();
    // Inside a text already answered for its size or nesting, the error is part of that text.
    if (!wasSkipping) emit({ ok: false, error: `JSON parse error, stray '${show(text)}'` });
  }

  private reset(): void {
    this.tokens = [];
    this.depth = this.braces = this.brackets = 0;
    this.size = 0;
    this.skipping = false;
  }

  private token(t: Token, emit: (d: Decoded) => void): void {
    this.tokTooBig = false;
    if (t.type === '{') this.braces++;
    else if (t.type === '}') this.braces--;
    else if (t.type === '[') this.brackets++;
    else if (t.type === ']') this.brackets--;
    this.depth = this.braces + this.brackets;
    if (this.skipping) {
      if (this.depth <= 0) this.reset();
      return;
    }
    this.tokens.push(t);
    this.size += t.text.length;
    if (this.depth > MAX_NESTING) return this.overLimit('JSON nesting depth limit exceeded', false);
    if (this.size > this.maxBytes) return this.overLimit(`JSON parse error, input exceeds ${this.maxBytes} bytes`, false);
    // json-streamer.c: keep collecting while something is open; a text is complete (or a stray
    // closer is an error of its own) once nothing is.
    if (this.braces > 0 || this.brackets > 0) {
      if (this.braces >= 0 && this.brackets >= 0) return;
    }
    const tokens = this.tokens;
    this.reset();
    emit(parseTokens(tokens));
  }
}

class ParseError extends Error {}

/** Builds the value of one complete text (at most MAX_NESTING deep, so recursion is bounded). */
function parseTokens(tokens: readonly Token[]): Decoded {
  let pos = 0;
  const fail = (why: string): never => {
    throw new ParseError(`JSON parse error, ${why}`);
  };
  const value = (): unknown => {
    const t = tokens[pos++];
    if (!t) return fail('expecting value');
    switch (t.type) {
      case 'string':
      case 'number':
        return t.value;
      case 'keyword':
        if (t.text === 'true') return true;
        if (t.text === 'false') return false;
        if (t.text === 'null') return null;
        return fail(`invalid keyword '${show(t.text)}'`);
      case '[': {
        const out: unknown[] = [];
        if (tokens[pos]?.type === ']') {
          pos++;
          return out;
        }
        for (;;) {
          out.push(value());
          const sep = tokens[pos++];
          if (sep?.type === ']') return out;
          if (sep?.type !== ',') return fail('expected separator in list');
        }
      }
      case '{': {
        const out: Record<string, unknown> = {};
        if (tokens[pos]?.type === '}') {
          pos++;
          return out;
        }
        for (;;) {
          const k = tokens[pos++];
          if (k?.type !== 'string') return fail('key is not a string in object');
          if (tokens[pos++]?.type !== ':') return fail('missing : in object pair');
          const key = k.value as string;
          if (Object.prototype.hasOwnProperty.call(out, key)) return fail(`duplicate key '${show(key)}'`);
          // defineProperty: a key named __proto__ is data, not the object's prototype.
          Object.defineProperty(out, key, { value: value(), enumerable: true, writable: true, configurable: true });
          const sep = tokens[pos++];
          if (sep?.type === '}') return out;
          if (sep?.type !== ',') return fail('expected separator in dict');
        }
      }
      default:
        return fail('expecting value');
    }
  };
  try {
    const v = value();
    if (pos !== tokens.length) fail('expecting value');
    return { ok: true, value: v };
  } catch (e) {
    if (e instanceof ParseError) return { ok: false, error: e.message };
    throw e;
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
