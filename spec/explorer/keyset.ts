// The visited set of the explorer's fast path: byte-string keys (Behaviour.writeKey) stored back
// to back in one growing arena, found through an open-addressing table of state ids. No string or
// object per state, so the garbage collector has nothing to trace but a few large typed arrays.
//
// Ids are dense (0, 1, 2, ... in insertion order), so parents and BFS bookkeeping can be Int32Arrays.

export class KeySet {
  private arena = new Uint8Array(1 << 20);
  private used = 0;
  /** starts[id] = arena offset of key id; starts[size] = used. */
  private starts = new Int32Array(1 << 14);
  private hashes = new Int32Array(1 << 14);
  /** id + 1, 0 = empty slot. */
  private table = new Int32Array(1 << 15);
  private mask = (1 << 15) - 1;
  size = 0;

  /** The id of key `buf[0..len)`, adding it when new. Returns `~id` (negative) when it was
   * already present, `id` (>= 0) when it was just added. */
  addOrFind(buf: Uint8Array, len: number): number {
    return this.addOrFindAt(buf, 0, len);
  }

  /** addOrFind of the key `buf[at..at+len)`. */
  addOrFindAt(buf: Uint8Array, at: number, len: number): number {
    const h = hashBytes(buf, at, len);
    const table = this.table;
    const mask = this.mask;
    let slot = h & mask;
    for (;;) {
      const e = table[slot]!;
      if (e === 0) break;
      const id = e - 1;
      if (this.hashes[id] === h && this.equals(id, buf, at, len)) return ~id;
      slot = (slot + 1) & mask;
    }
    const id = this.size;
    if (id + 1 >= this.starts.length) this.growIds();
    if (this.used + len > this.arena.length) this.growArena(len);
    const arena = this.arena;
    const used = this.used;
    for (let i = 0; i < len; i++) arena[used + i] = buf[at + i]!;
    this.starts[id] = this.used;
    this.used += len;
    this.starts[id + 1] = this.used;
    this.hashes[id] = h;
    table[slot] = id + 1;
    this.size = id + 1;
    if (this.size * 2 > mask) this.rehash();
    return id;
  }

  /** A copy of key `id`. */
  keyOf(id: number): Uint8Array {
    return this.arena.slice(this.starts[id]!, this.starts[id + 1]!);
  }

  /** Bytes held (arena + tables), for memory estimates. */
  get bytes(): number {
    return this.arena.length + this.starts.byteLength + this.hashes.byteLength + this.table.byteLength;
  }

  /** Copies key `id` into `out` from `at`; returns its length. */
  copyKey(id: number, out: Uint8Array, at: number): number {
    const a = this.arena;
    const start = this.starts[id]!;
    const len = this.starts[id + 1]! - start;
    for (let i = 0; i < len; i++) out[at + i] = a[start + i]!;
    return len;
  }

  private equals(id: number, buf: Uint8Array, at: number, len: number): boolean {
    const a = this.arena;
    const start = this.starts[id]!;
    if (this.starts[id + 1]! - start !== len) return false;
    for (let i = 0; i < len; i++) if (a[start + i] !== buf[at + i]) return false;
    return true;
  }

  private growIds(): void {
    const n = this.starts.length * 2;
    const starts = new Int32Array(n);
    starts.set(this.starts);
    this.starts = starts;
    const hashes = new Int32Array(n);
    hashes.set(this.hashes);
    this.hashes = hashes;
  }

  private growArena(need: number): void {
    let n = this.arena.length * 2;
    while (n < this.used + need) n *= 2;
    const arena = new Uint8Array(n);
    arena.set(this.arena.subarray(0, this.used));
    this.arena = arena;
  }

  private rehash(): void {
    const cap = this.table.length * 2;
    const table = new Int32Array(cap);
    const mask = cap - 1;
    for (let id = 0; id < this.size; id++) {
      let slot = this.hashes[id]! & mask;
      while (table[slot] !== 0) slot = (slot + 1) & mask;
      table[slot] = id + 1;
    }
    this.table = table;
    this.mask = mask;
  }
}

/** Hash of `buf[at..at+len)`: murmur3-style rounds over 4-byte words, FNV-1a over the tail, murmur3's
 * final avalanche (fmix32). */
export function hashBytes(buf: Uint8Array, at: number, len: number): number {
  let h = 0x811c9dc5 | 0;
  const end = at + len;
  let i = at;
  // Four bytes per round (murmur3-style mixing), then the tail byte by byte.
  for (; i + 4 <= end; i += 4) {
    let k = buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    h ^= Math.imul(k, 0x1b873593);
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  for (; i < end; i++) h = Math.imul(h ^ buf[i]!, 0x01000193);
  h ^= len;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h;
}

/** The visited set of the packed search: fixed-width keys of `words` 32-bit words, stored by id in
 * chunks of 2^16 keys (the set grows without copying; the chunks double as the BFS frontier),
 * found through an open-addressing table. */
export class WordKeySet {
  private readonly chunks: Int32Array[] = [];
  /** Two words per slot: id + 1 (0 = empty) and the key's hash, so a probe touches the arena only
   * when the hashes agree. */
  private table: Int32Array;
  private mask: number;
  size = 0;

  /** Room for `capacity` keys (a power of two) in the table before it first grows: growing is rare
   * code that a short search would otherwise reach only after it was optimised without it. */
  constructor(
    readonly words: number,
    capacity = 1 << 16,
  ) {
    this.chunks.push(new Int32Array(words << CHUNK_BITS));
    this.table = new Int32Array(capacity * 4);
    this.mask = capacity * 2 - 1;
  }

  /** The id of the key `src[at..at+words)`: `id` (>= 0) when just added, `~id` when present. */
  addOrFind(src: Int32Array, at: number): number {
    const words = this.words;
    let h = 0x811c9dc5 | 0;
    for (let i = at; i < at + words; i++) h = Math.imul(h ^ src[i]!, 0x9e3779b1) ^ (h >>> 15);
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    const table = this.table;
    const mask = this.mask;
    const chunks = this.chunks;
    let slot = h & mask;
    for (;;) {
      const e = table[2 * slot]!;
      if (e === 0) break;
      if (table[2 * slot + 1] === h) {
        const id = e - 1;
        const chunk = chunks[id >>> CHUNK_BITS]!;
        const base = (id & CHUNK_MASK) * words;
        let i = 0;
        while (i < words && chunk[base + i] === src[at + i]) i++;
        if (i === words) return ~id;
      }
      slot = (slot + 1) & mask;
    }
    const id = this.size;
    if (id >>> CHUNK_BITS === chunks.length) chunks.push(new Int32Array(words << CHUNK_BITS));
    const chunk = chunks[id >>> CHUNK_BITS]!;
    const base = (id & CHUNK_MASK) * words;
    for (let i = 0; i < words; i++) chunk[base + i] = src[at + i]!;
    table[2 * slot] = id + 1;
    table[2 * slot + 1] = h;
    this.size = id + 1;
    if (this.size * 2 > mask) this.rehash();
    return id;
  }

  /** Copies key `id` into `out` from `at`. */
  copyKey(id: number, out: Int32Array, at: number): void {
    const words = this.words;
    const chunk = this.chunks[id >>> CHUNK_BITS]!;
    const base = (id & CHUNK_MASK) * words;
    for (let i = 0; i < words; i++) out[at + i] = chunk[base + i]!;
  }

  private rehash(): void {
    const old = this.table;
    const table = new Int32Array(old.length * 2);
    const mask = (table.length >> 1) - 1;
    for (let s = 0; s < old.length; s += 2) {
      const e = old[s]!;
      if (e === 0) continue;
      const h = old[s + 1]!;
      let slot = h & mask;
      while (table[2 * slot] !== 0) slot = (slot + 1) & mask;
      table[2 * slot] = e;
      table[2 * slot + 1] = h;
    }
    this.table = table;
    this.mask = mask;
  }
}

const CHUNK_BITS = 16;
const CHUNK_MASK = (1 << CHUNK_BITS) - 1;
