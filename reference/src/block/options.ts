// Reading a blockdev's options (QAPI BlockdevOptions as JSON, or the strings the dotted
// command-line form produces) with QEMU 7.2's wording for a bad one (the QAPI input visitors':
// "Parameter 'file.x' expects 'on' or 'off'", "... does not accept value ...", "... is missing",
// and visit_check_struct's "Parameter 'x' is unexpected" for the first key nobody consumed). The
// key is named by its full dotted path, so an error in a nested child says where it is.
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
    /** e.g. "node 'temp' (driver overlay)", for the reference's own messages */
    readonly where: string,
    /** Dotted path of this blockdev inside its parent's options ('file.'), '' at the top. */
    readonly path = '',
    readonly nodeName?: string,
  ) {}

  /** The key as QEMU names it in errors: its full dotted path. */
  name(key: string): string {
    return `${this.path}${key}`;
  }

  private error(message: string): BlockError {
    return new BlockError('EINVAL', message, this.nodeName !== undefined ? { node: this.nodeName } : {});
  }

  private fail(key: string, expected: string, value: unknown): never {
    // QEMU's keyval visitor: "expects 'on' or 'off'" / "expects integer"; its QObject visitor (QMP
    // JSON) says "Invalid parameter type for 'x', expected: boolean"; one wording serves both.
    void value;
    throw this.error(`Parameter '${this.name(key)}' expects ${expected}`);
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
    if (typeof v !== 'string') throw this.error(`Invalid parameter type for '${this.name(key)}', expected: string`);
    return v;
  }

  requiredString(key: string): string {
    const v = this.string(key);
    if (v === undefined) throw this.error(`Parameter '${this.name(key)}' is missing`);
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
      if (def === undefined) throw this.error(`Parameter '${this.name(key)}' is missing`);
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
      // QAPI's enum check (visit_type_enum): QEMU names the value, not the choices.
      throw this.error(`Parameter '${this.name(key)}' does not accept value '${String(v)}'`);
    }
    return v as T;
  }

  /** Marks keys as accepted-and-ignored (QEMU options with no meaning for the reference). */
  ignore(...keys: string[]): void {
    for (const k of keys) this.used.add(k);
  }

  /** A nested struct option (`cache`): its own reader, whose keys are named `cache.x`. */
  struct(key: string): OptionReader {
    const v = this.raw(key);
    if (v !== undefined && (typeof v !== 'object' || v === null || Array.isArray(v))) {
      throw this.error(`Invalid parameter type for '${this.name(key)}', expected: object`);
    }
    const r = new OptionReader((v ?? {}) as Record<string, unknown>, this.where, `${this.name(key)}.`, this.nodeName);
    r.used.clear();
    return r;
  }

  /** QAPI's visit_check_struct: the first key nobody consumed (QEMU names only one). */
  finish(): void {
    const unknown = Object.keys(this.options).find((k) => !this.used.has(k) && this.options[k] !== undefined);
    if (unknown !== undefined) throw this.error(`Parameter '${this.name(unknown)}' is unexpected`);
  }
}
