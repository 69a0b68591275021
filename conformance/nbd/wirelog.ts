// Wire log: every byte sent and received, with a one-line decoding, for reports (hex).
export type Direction = 'send' | 'recv' | 'note';

export interface WireEntry {
  /** Milliseconds since the log started. */
  t: number;
  dir: Direction;
  /** Which connection (several per case are possible). */
  conn: number;
  /** Offset in that direction's byte stream. */
  offset: number;
  /** Total byte count of the message. */
  size: number;
  /** Hex of the first bytes (truncated for large payloads). */
  hex: string;
  note: string;
}

const MAX_HEX_BYTES = 96;

export class WireLog {
  readonly entries: WireEntry[] = [];
  private readonly start = performance.now();
  private nextConn = 0;
  /** Caps the log so a 32 MiB transfer or a long fuzz run cannot blow up the report. */
  constructor(private readonly maxEntries = 2000) {}

  newConnection(): number {
    return ++this.nextConn;
  }

  add(dir: Direction, conn: number, offset: number, bytes: Uint8Array, note: string): void {
    if (this.entries.length >= this.maxEntries) {
      if (this.entries.length === this.maxEntries) this.push({ t: this.now(), dir: 'note', conn, offset, size: 0, hex: '', note: 'wire log truncated' });
      return;
    }
    const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.push({ t: this.now(), dir, conn, offset, size: b.length, hex: b.subarray(0, MAX_HEX_BYTES).toString('hex'), note });
  }

  note(conn: number, note: string): void {
    this.push({ t: this.now(), dir: 'note', conn, offset: 0, size: 0, hex: '', note });
  }

  private push(e: WireEntry): void {
    if (this.entries.length <= this.maxEntries) this.entries.push(e);
  }

  private now(): number {
    return Math.round((performance.now() - this.start) * 10) / 10;
  }
}
