// Reading an option's keys (a --blockdev/--export/--object keyval, or a QMP command's arguments
// given the same treatment) with the errors qemu-storage-daemon gives for them.
import { toBool } from './keyval.ts';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** Reads the keys of an options object, rejecting those nobody asked for. */
export class Keys {
  private readonly used = new Set<string>();
  constructor(
    private readonly o: Record<string, unknown>,
    private readonly where: string,
  ) {}
  get(key: string): unknown {
    this.used.add(key);
    return this.o[key];
  }
  str(key: string): string | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw new UsageError(`${this.where}: parameter '${key}' expects a string, got ${JSON.stringify(v)}`);
    return v;
  }
  req(key: string): string {
    const v = this.str(key);
    if (v === undefined || v === '') throw new UsageError(`${this.where}: parameter '${key}' is missing`);
    return v;
  }
  bool(key: string, def: boolean): boolean {
    const v = this.get(key);
    if (v === undefined) return def;
    try {
      return toBool(v, `${this.where}: parameter '${key}'`);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }
  int(key: string, def: number): number {
    const v = this.get(key);
    if (v === undefined) return def;
    const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
      throw new UsageError(`${this.where}: parameter '${key}' expects a non-negative integer, got ${JSON.stringify(v)}`);
    }
    return n;
  }
  /** QEMU "Parameter 'x' is unexpected" / "Invalid parameter 'x'". */
  finish(): void {
    const extra = Object.keys(this.o).filter((k) => !this.used.has(k));
    if (extra.length) throw new UsageError(`${this.where}: invalid parameter${extra.length > 1 ? 's' : ''} ${extra.map((k) => `'${k}'`).join(', ')}`);
  }
}
