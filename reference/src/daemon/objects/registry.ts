// User-creatable objects (`--object`, QMP `object-add`/`object-del`): QEMU's QOM
// user_creatable_add_type, reduced to what the reference has. An object type validates its
// properties without I/O when the command line is parsed (QAPI's job in QEMU, so a bad --object
// fails before anything starts) and is created when its turn comes (it may read files then, as
// tls-creds reads its directory). Other options refer to objects by id (tls-creds=, iothread=,
// throttle-group=) and hold them, so an object in use cannot be deleted.
import { Keys, UsageError, at } from '../keys.ts';

export interface ObjectType<P = unknown> {
  /** QOM type name, as in `--object help`. */
  readonly qomType: string;
  /** Reads and checks the properties (everything but qom-type and id); no I/O. */
  parse(k: Keys, where: string): P;
  /** Creates the object's run-time state; may read files. Defaults to the parsed properties. */
  create?(id: string, props: P, where: string): unknown | Promise<unknown>;
  /** Releases what create() took (object-del, daemon exit). */
  destroy?(instance: unknown): void | Promise<void>;
}

const types = new Map<string, ObjectType<any>>();

export function registerObjectType<P>(t: ObjectType<P>): void {
  if (types.has(t.qomType)) throw new Error(`object type '${t.qomType}' registered twice`);
  types.set(t.qomType, t);
}

export function objectTypes(): string[] {
  return [...types.keys()].sort();
}

export interface ObjectOptions {
  readonly qomType: string;
  readonly id: string;
  readonly props: unknown;
}

/** `--object qom-type=T,id=X,...` (keyval with qom-type implied) or object-add's arguments. */
export function parseObjectOptions(o: Record<string, unknown>, where = '--object', typed = false): ObjectOptions {
  const k = new Keys(o, where, { typed });
  const qomType = k.req('qom-type');
  const t = types.get(qomType);
  // QAPI's enum check on ObjectOptions.qom-type, QEMU's wording.
  if (!t) throw new UsageError(`${at(where)}Parameter 'qom-type' does not accept value '${qomType}'`);
  const id = k.req('id');
  // id_wellformed (util/id.c), in user_creatable_add_qapi's words.
  if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(id)) {
    throw new UsageError(`${at(where)}Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.`);
  }
  const props = t.parse(k, where);
  k.finish();
  return { qomType, id, props };
}

export interface LiveObject {
  readonly qomType: string;
  readonly id: string;
  readonly instance: unknown;
  /** Holders (e.g. "NBD server", "export 'e0'"): object-del refuses while any remain. */
  readonly users: Set<string>;
}

export class ObjectStore {
  private readonly objects = new Map<string, LiveObject>();

  async add(o: ObjectOptions, where = '--object'): Promise<void> {
    if (this.objects.has(o.id)) {
      // object_property_try_add_child on /objects: QEMU's wording.
      throw new UsageError(`${at(where)}attempt to add duplicate property '${o.id}' to object (type 'container')`);
    }
    const t = types.get(o.qomType)!;
    const instance = t.create ? await t.create(o.id, o.props, where) : o.props;
    this.objects.set(o.id, { qomType: o.qomType, id: o.id, instance, users: new Set() });
  }

  /** The object `id` of type `qomType` for a user option (`tls-creds=ID`), held by `user`. */
  use<T>(id: string, qomTypes: readonly string[], user: string, where: string): T {
    const obj = this.objects.get(id);
    if (!obj) throw new UsageError(`${at(where)}No object with id '${id}'`);
    if (!qomTypes.includes(obj.qomType)) {
      throw new UsageError(`${at(where)}object '${id}' is a '${obj.qomType}', expected ${qomTypes.map((t) => `'${t}'`).join(' or ')}`);
    }
    obj.users.add(user);
    return obj.instance as T;
  }

  release(id: string, user: string): void {
    this.objects.get(id)?.users.delete(user);
  }

  get(id: string): LiveObject | undefined {
    return this.objects.get(id);
  }

  async delete(id: string): Promise<void> {
    const obj = this.objects.get(id);
    if (!obj) throw new UsageError(`object '${id}' not found`);
    if (obj.users.size) throw new UsageError(`object '${id}' is in use, can not be deleted`);
    this.objects.delete(id);
    await types.get(obj.qomType)!.destroy?.(obj.instance);
  }

  async clear(): Promise<void> {
    for (const id of [...this.objects.keys()].reverse()) {
      const obj = this.objects.get(id)!;
      this.objects.delete(id);
      await types.get(obj.qomType)!.destroy?.(obj.instance);
    }
  }

  list(): LiveObject[] {
    return [...this.objects.values()];
  }
}
