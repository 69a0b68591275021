// QMP command dispatch (QEMU qapi/qmp-dispatch.c semantics): request validation, capability
// negotiation, the command table, and errors as {"class", "desc"}. Commands are registered by
// whoever owns them (the daemon; later the breakpoint commands of qmp/breakpoints.ts).

/** A failed command: QEMU's error class (GenericError, CommandNotFound, DeviceNotFound,
 * DeviceNotActive) and the human-readable description. */
export class QmpError extends Error {
  override readonly name = 'QmpError';
  constructor(
    readonly errorClass: string,
    desc: string,
  ) {
    super(desc);
  }
}

export type QmpHandler = (args: QmpArgs) => unknown | Promise<unknown>;

export interface QmpReply {
  readonly return?: unknown;
  readonly error?: { readonly class: string; readonly desc: string };
  readonly id?: unknown;
}

/** Typed access to a command's arguments with QEMU's error wording; `finish` rejects extras. */
export class QmpArgs {
  private readonly used = new Set<string>();
  constructor(readonly raw: Readonly<Record<string, unknown>>) {}
  private typed(key: string, type: string, ok: (v: unknown) => boolean): unknown {
    this.used.add(key);
    const v = this.raw[key];
    if (v !== undefined && !ok(v)) throw new QmpError('GenericError', `Invalid parameter type for '${key}', expected: ${type}`);
    return v;
  }
  optStr(key: string): string | undefined {
    return this.typed(key, 'string', (v) => typeof v === 'string') as string | undefined;
  }
  str(key: string): string {
    const v = this.optStr(key);
    if (v === undefined) throw new QmpError('GenericError', `Parameter '${key}' is missing`);
    return v;
  }
  optBool(key: string): boolean | undefined {
    return this.typed(key, 'boolean', (v) => typeof v === 'boolean') as boolean | undefined;
  }
  optInt(key: string): number | undefined {
    return this.typed(key, 'integer', (v) => typeof v === 'number' && Number.isSafeInteger(v)) as number | undefined;
  }
  optObj(key: string): Record<string, unknown> | undefined {
    return this.typed(key, 'object', (v) => typeof v === 'object' && v !== null && !Array.isArray(v)) as Record<string, unknown> | undefined;
  }
  obj(key: string): Record<string, unknown> {
    const v = this.optObj(key);
    if (v === undefined) throw new QmpError('GenericError', `Parameter '${key}' is missing`);
    return v;
  }
  optList(key: string): unknown[] | undefined {
    return this.typed(key, 'array', Array.isArray) as unknown[] | undefined;
  }
  /** Marks keys as consumed without reading them (accepted, no effect). */
  accept(...keys: string[]): void {
    for (const k of keys) this.used.add(k);
  }
  /** QEMU: "Parameter 'x' is unexpected". */
  finish(): void {
    for (const k of Object.keys(this.raw)) {
      if (!this.used.has(k)) throw new QmpError('GenericError', `Parameter '${k}' is unexpected`);
    }
  }
}

export class QmpDispatcher {
  private readonly commands = new Map<string, QmpHandler>();

  register(name: string, handler: QmpHandler): void {
    if (this.commands.has(name)) throw new Error(`QMP command '${name}' registered twice`);
    this.commands.set(name, handler);
  }

  has(name: string): boolean {
    return this.commands.has(name);
  }

  list(): string[] {
    return [...this.commands.keys()].sort();
  }

  /**
   * Runs one request for a session. `session.negotiated` is the capabilities state: before
   * qmp_capabilities only that command is accepted (CommandNotFound otherwise, as QEMU).
   */
  async dispatch(request: unknown, session: { negotiated: boolean; oob?: boolean }): Promise<QmpReply> {
    if (typeof request !== 'object' || request === null || Array.isArray(request)) {
      return { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } };
    }
    const r = request as Record<string, unknown>;
    const id = r.id;
    const withId = (x: { return?: unknown; error?: { class: string; desc: string } }): QmpReply => (id === undefined ? x : { ...x, id });
    const err = (cls: string, desc: string) => withId({ error: { class: cls, desc } });
    for (const k of Object.keys(r)) {
      if (k !== 'execute' && k !== 'exec-oob' && k !== 'arguments' && k !== 'id') return err('GenericError', `QMP input member '${k}' is unexpected`);
    }
    // qmp-dispatch.c: exec-oob exists only once the client has enabled the 'oob' capability.
    if ('exec-oob' in r && !session.oob) return err('GenericError', "QMP input member 'exec-oob' is unexpected");
    if ('exec-oob' in r && 'execute' in r) return err('GenericError', "QMP input must not contain both 'execute' and 'exec-oob'");
    const oob = 'exec-oob' in r;
    const name = r.execute ?? r['exec-oob'];
    if (name === undefined) return err('GenericError', "QMP input lacks member 'execute'");
    if (typeof name !== 'string') return err('GenericError', `QMP input member '${oob ? 'exec-oob' : 'execute'}' must be a string`);
    const args = r.arguments ?? {};
    if (typeof args !== 'object' || args === null || Array.isArray(args)) return err('GenericError', "QMP input member 'arguments' must be an object");
    if (name === 'qmp_capabilities') {
      if (session.negotiated) return err('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
      try {
        const a = new QmpArgs(args as Record<string, unknown>);
        const enable = a.optList('enable') ?? [];
        a.finish();
        enable.forEach((c, i) => {
          if (typeof c !== 'string') throw new QmpError('GenericError', `Invalid parameter type for 'enable[${i}]', expected: string`);
          // QEMU 7.2's own wording for a value outside the QMPCapability enum.
          if (c !== 'oob') throw new QmpError('GenericError', `Parameter 'null' does not accept value '${c}'`);
        });
        session.negotiated = true;
        session.oob = enable.length > 0;
        return withId({ return: {} });
      } catch (e) {
        return err('GenericError', e instanceof Error ? e.message : String(e));
      }
    }
    if (!session.negotiated) return err('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
    const handler = this.commands.get(name);
    if (!handler) return err('CommandNotFound', `The command ${name} has not been found`);
    if (oob) return err('GenericError', `The command ${name} does not support OOB`);
    try {
      const a = new QmpArgs(args as Record<string, unknown>);
      const value = await handler(a);
      return withId({ return: value ?? {} });
    } catch (e) {
      if (e instanceof QmpError) return err(e.errorClass, e.message);
      // Every other failure (a BlockError, a graph refusal) is a GenericError with its message,
      // as QEMU reports error_setg() failures.
      return err('GenericError', e instanceof Error ? e.message : String(e));
    }
  }
}
