// Reading an option's keys (a --blockdev/--export/--object keyval, or a QMP command's arguments
// given the same treatment) with the errors qemu-storage-daemon 7.2 gives for them: the wording
// of QEMU's QAPI input visitors (qapi/qobject-input-visitor.c), prefixed with `where` (on the
// command line, the option and its value, as qemu-storage-daemon's error_report does).
import { toBool } from './keyval.ts';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** The prefix of a message about `where`: "--object foo,id=x: " on the command line; nothing
 * for a QMP command, whose errors QEMU words without one. */
export function at(where: string): string {
  return where ? `${where}: ` : '';
}

export interface KeysOptions {
  /** Dotted path of this struct in the option (`addr.`), for the keys' names in errors. */
  readonly path?: string;
  /** Values come typed (JSON: QMP, or a JSON --object): a string where a number or boolean
   * belongs is QAPI's "Invalid parameter type", not keyval's "expects integer". */
  readonly typed?: boolean;
}

/** Reads the keys of an options object, rejecting those nobody asked for. */
export class Keys {
  private readonly used = new Set<string>();
  private readonly path: string;
  private readonly typed: boolean;
  constructor(
    private readonly o: Record<string, unknown>,
    private readonly where: string,
    opts: KeysOptions | string = {},
  ) {
    const k = typeof opts === 'string' ? { path: opts } : opts;
    this.path = k.path ?? '';
    this.typed = k.typed ?? false;
  }
  private fail(message: string): never {
    throw new UsageError(`${at(this.where)}${message}`);
  }
  /** The key's full dotted name, as QEMU's errors give it. */
  name(key: string): string {
    return `${this.path}${key}`;
  }
  get(key: string): unknown {
    this.used.add(key);
    return this.o[key];
  }
  has(key: string): boolean {
    return this.o[key] !== undefined;
  }
  str(key: string): string | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') this.fail(`Invalid parameter type for '${this.name(key)}', expected: string`);
    return v;
  }
  req(key: string): string {
    const v = this.str(key);
    if (v === undefined) this.fail(`Parameter '${this.name(key)}' is missing`);
    return v;
  }
  bool(key: string, def: boolean): boolean {
    const v = this.get(key);
    if (v === undefined) return def;
    if (this.typed && typeof v !== 'boolean') this.fail(`Invalid parameter type for '${this.name(key)}', expected: boolean`);
    try {
      return toBool(v, `Parameter '${this.name(key)}'`);
    } catch {
      if (typeof v !== 'string') this.fail(`Invalid parameter type for '${this.name(key)}', expected: boolean`);
      return this.fail(`Parameter '${this.name(key)}' expects 'on' or 'off'`);
    }
  }
  /** Any integer (QAPI int64; keyval's strings, or JSON numbers); range checks are the caller's. */
  integer(key: string): number | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    if (typeof v === 'number') {
      if (!Number.isSafeInteger(v)) this.fail(`Invalid parameter type for '${this.name(key)}', expected: integer`);
      return v;
    }
    if (typeof v !== 'string' || this.typed) this.fail(`Invalid parameter type for '${this.name(key)}', expected: integer`);
    if (!/^-?\d+$/.test(v)) this.fail(`Parameter '${this.name(key)}' expects integer`);
    const n = Number(v);
    if (!Number.isSafeInteger(n)) this.fail(`Parameter '${this.name(key)}' expects integer`);
    return n;
  }
  int(key: string, def: number): number {
    const n = this.integer(key);
    if (n === undefined) return def;
    // QAPI uint32/uint64 refuse a minus sign the same way.
    if (n < 0) this.fail(`Parameter '${this.name(key)}' expects integer`);
    return n;
  }
  /** A nested struct (`addr`, `limits`): its own reader, whose keys are named `addr.x`. */
  struct(key: string): Keys | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(`Invalid parameter type for '${this.name(key)}', expected: object`);
    return new Keys(v as Record<string, unknown>, this.where, { path: `${this.name(key)}.`, typed: this.typed });
  }
  /** visit_check_struct: "Parameter 'x' is unexpected", for the first key nobody asked for. */
  finish(): void {
    const extra = Object.keys(this.o).find((k) => !this.used.has(k));
    if (extra !== undefined) this.fail(`Parameter '${this.name(extra)}' is unexpected`);
  }
}
