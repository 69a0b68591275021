// Reading a blockdev's options (QAPI BlockdevOptions as JSON, or the strings the dotted
// command-line form produces) with errors that name the node and the offending key, and a final
// check that rejects every key nobody consumed, as QEMU's "Invalid parameter" does.
import { BlockError } from './errors.ts';

const SIZE_SUFFIX: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

export function parseSize(value: unknown, where: string): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
  if (typeof value === 'string') {
    const m = /^(\d+)([bkmgt]?)$/i.exec(value.trim());
    if (m) return Number(m[1]) * SIZE_SUFFIX[(m[2] ?? '').toLowerCase()]!;
  }
  throw new BlockError('EINVAL', `${where}: expected a size (bytes, or with suffix k/M/G), got ${JSON.stringify(value)}`);
}

export class OptionReader {
  private readonly used = new Set<string>(['driver', 'node-name']);

  constructor(
    readonly options: Readonly<Record<string, unknown>>,
    /** e.g. "node 'temp' (driver overlay)" */
    readonly where: string,
  ) {}

  private fail(key: string, expected: string, value: unknown): never {
    throw new BlockError('EINVAL', `${this.where}: parameter '${key}' expects ${expected}, got ${JSON.stringify(value)}`);
  }

  has(key: string): boolean {
    return this.options[key] !== undefined;
  }

  raw(key: string): unknown {
    this.used.add(key);
    return this.options[key];
  }

  string(key: string): string | undefined;
  string(key: string, def: string): string;
  string(key: string, def?: string): string | undefined {
    const v = this.raw(key);
    if (v === undefined) return def;
    if (typeof v !== 'string') this.fail(key, 'a string', v);
    return v;
  }

  requiredString(key: string): string {
    const v = this.string(key);
    if (v === undefined) throw new BlockError('EINVAL', `${this.where}: parameter '${key}' is missing`);
    return v;
  }

  number(key: string, def: number): number {
    const v = this.raw(key);
    if (v === undefined) return def;
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) this.fail(key, 'a non-negative number', v);
    return n;
  }

  size(key: string, def?: number): number {
    const v = this.raw(key);
    if (v === undefined) {
      if (def === undefined) throw new BlockError('EINVAL', `${this.where}: parameter '${key}' is missing`);
      return def;
    }
    return parseSize(v, `${this.where}: parameter '${key}'`);
  }

  bool(key: string, def: boolean): boolean {
    const v = this.raw(key);
    if (v === undefined) return def;
    if (v === true || v === 'on' || v === 'true' || v === 'yes') return true;
    if (v === false || v === 'off' || v === 'false' || v === 'no') return false;
    return this.fail(key, "'on' or 'off'", v);
  }

  enumeration<T extends string>(key: string, values: readonly T[], def: T): T {
    const v = this.raw(key);
    if (v === undefined) return def;
    if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
      return this.fail(key, `one of ${values.map((x) => `'${x}'`).join(', ')}`, v);
    }
    return v as T;
  }

  /** Marks keys as accepted-and-ignored (QEMU options with no meaning for the reference). */
  ignore(...keys: string[]): void {
    for (const k of keys) this.used.add(k);
  }

  /** QEMU: "Invalid parameter 'x'" (block.c bdrv_open_driver leftover options). */
  finish(): void {
    const unknown = Object.keys(this.options).filter((k) => !this.used.has(k) && this.options[k] !== undefined);
    if (unknown.length > 0) {
      throw new BlockError(
        'EINVAL',
        `${this.where}: invalid parameter${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `'${k}'`).join(', ')}`,
      );
    }
  }
}
