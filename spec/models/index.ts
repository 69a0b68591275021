// The model registry: every model `fleece explore --model NAME` can run, with its parameters
// (name, type, default, range) so the CLI, replay files and benchmarks build models the same
// way. Other spec modules add their models with registerModel().

import type { Behaviour } from '../explorer/behaviour.ts';
import { SpecError } from '../explorer/errors.ts';
import { DEFAULT_FLEECING_PARAMS, fleecingModel, SCHEMES, type FleecingParams, type Scheme } from './fleecing/index.ts';
import { DEFAULT_NBD_SESSION_PARAMS, NBD_SESSION, NBD_SESSION_BAD, nbdSessionModel, type NbdSessionVariant } from './nbd-session/index.ts';
import {
  DEFAULT_SERIALIZATION_PARAMS,
  SERIALIZATION,
  SERIALIZATION_BAD,
  serializationModel,
  type SerializationVariant,
} from './serialization/index.ts';

export type ParamValue = string | number | boolean;

export interface ParamSpec {
  /** camelCase name as in Behaviour.params; the CLI flag is its kebab-case form. */
  readonly name: string;
  readonly type: 'int' | 'bool' | 'enum';
  readonly default: ParamValue;
  readonly min?: number;
  readonly max?: number;
  readonly choices?: readonly string[];
  readonly help: string;
}

export interface ModelEntry {
  readonly name: string;
  readonly summary: string;
  readonly family: string;
  /** What the explorer concludes with the default parameters. */
  readonly expect: 'holds' | 'violates' | 'deadlocks';
  readonly params: readonly ParamSpec[];
  /** Builds the model from complete, validated parameters. */
  build(params: Readonly<Record<string, ParamValue>>): Behaviour<unknown, unknown>;
}

const registry = new Map<string, ModelEntry>();

/** Adds a model (a later entry with the same name replaces the earlier one). */
export function registerModel(entry: ModelEntry): void {
  registry.set(entry.name, entry);
}

export function listModels(): ModelEntry[] {
  return [...registry.values()];
}

export function findModel(name: string): ModelEntry | undefined {
  return registry.get(name);
}

/** `--write-size` for `writeSize`. */
export function flagName(param: string): string {
  return param.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/**
 * Builds model `name` from (possibly partial) parameters, checking names, types and ranges.
 * `where` names the source of the parameters in errors (a file, "command line").
 */
export function buildModel(name: string, given: Readonly<Record<string, ParamValue>> = {}, where?: string): Behaviour<unknown, unknown> {
  const entry = registry.get(name);
  if (!entry) {
    throw new SpecError(`unknown model '${name}'; known models: ${[...registry.keys()].join(', ')}`, where);
  }
  const full: Record<string, ParamValue> = {};
  for (const spec of entry.params) full[spec.name] = spec.default;
  for (const [k, v] of Object.entries(given)) {
    const spec = entry.params.find((s) => s.name === k);
    if (!spec) {
      throw new SpecError(`model '${name}' has no parameter '${k}'; its parameters: ${entry.params.map((s) => s.name).join(', ') || '(none)'}`, where);
    }
    full[k] = checkValue(entry.name, spec, v, where);
  }
  return entry.build(full);
}

/** Parses a command-line string for a parameter (ints, true/false, enum choices). */
export function parseParamValue(model: string, spec: ParamSpec, text: string, where?: string): ParamValue {
  if (spec.type === 'int') {
    if (!/^-?\d+$/.test(text)) throw new SpecError(`${flagName(spec.name)} expects an integer, got '${text}'`, where);
    return checkValue(model, spec, Number(text), where);
  }
  if (spec.type === 'bool') {
    if (text === 'true' || text === '1' || text === 'yes') return true;
    if (text === 'false' || text === '0' || text === 'no') return false;
    throw new SpecError(`${flagName(spec.name)} expects true or false, got '${text}'`, where);
  }
  return checkValue(model, spec, text, where);
}

function checkValue(model: string, spec: ParamSpec, v: ParamValue, where?: string): ParamValue {
  const bad = (why: string) => new SpecError(`model '${model}': parameter ${spec.name} ${why}, got ${JSON.stringify(v)}`, where);
  if (spec.type === 'int') {
    if (typeof v !== 'number' || !Number.isInteger(v)) throw bad('must be an integer');
    if ((spec.min !== undefined && v < spec.min) || (spec.max !== undefined && v > spec.max)) {
      throw bad(`must be in [${spec.min ?? '-inf'}, ${spec.max ?? 'inf'}]`);
    }
  } else if (spec.type === 'bool') {
    if (typeof v !== 'boolean') throw bad('must be true or false');
  } else if (typeof v !== 'string' || !spec.choices?.includes(v)) {
    throw bad(`must be one of ${spec.choices?.join(', ')}`);
  }
  return v;
}

// --- fleecing schemes ---------------------------------------------------------------------

function fleecingParamSpecs(scheme: Scheme): ParamSpec[] {
  const d: FleecingParams = { ...DEFAULT_FLEECING_PARAMS, ...scheme.defaults };
  const specs: ParamSpec[] = [
    { name: 'clusters', type: 'int', default: d.clusters, min: 1, max: 16, help: 'clusters in the disk' },
    { name: 'writers', type: 'int', default: d.writers, min: 0, max: 8, help: 'concurrent guest writes' },
    { name: 'readers', type: 'int', default: d.readers, min: 0, max: 8, help: 'concurrent snapshot reads' },
    { name: 'writeSize', type: 'int', default: d.writeSize, min: 1, max: 16, help: 'guest write length in clusters' },
    { name: 'readSize', type: 'int', default: d.readSize, min: 1, max: 16, help: 'snapshot read length in clusters' },
    {
      name: 'tempWriters',
      type: 'int',
      default: d.tempWriters,
      min: 0,
      max: 4,
      help: 'clients writing the temp/target image via a writable export (docs/requirements/qemu-fleecing.md §6 B6)',
    },
  ];
  if (scheme.kind === 'cbw') {
    specs.push(
      { name: 'bitmap', type: 'bool', default: d.bitmap, help: 'cbw bitmap: snapshot only the first half of the disk' },
      { name: 'discard', type: 'bool', default: d.discard, help: 'the snapshot client discards one cluster' },
      {
        name: 'onCbwError',
        type: 'enum',
        default: d.onCbwError,
        choices: ['break-guest-write', 'break-snapshot'],
        help: 'what a failed copy-before-write breaks',
      },
      { name: 'cbwFailures', type: 'int', default: d.cbwFailures, min: 0, max: 8, help: 'copies the environment may fail' },
    );
  }
  return specs;
}

for (const scheme of SCHEMES) {
  registerModel({
    name: scheme.name,
    summary: scheme.summary,
    family: 'fleecing',
    expect: scheme.expect,
    params: fleecingParamSpecs(scheme),
    build: (p) => fleecingModel(scheme, p as Partial<FleecingParams>) as Behaviour<unknown, unknown>,
  });
}

// --- request serialization ----------------------------------------------------------------

const d = DEFAULT_SERIALIZATION_PARAMS;
const serializationSpecs: ParamSpec[] = [
  { name: 'sectors', type: 'int', default: d.sectors, min: 1, max: 64, help: 'node size in request-alignment units' },
  { name: 'clusterSize', type: 'int', default: d.clusterSize, min: 1, max: 64, help: 'cluster size (serialising alignment) in units' },
  { name: 'reads', type: 'int', default: d.reads, min: 0, max: 4, help: 'normal reads' },
  { name: 'writes', type: 'int', default: d.writes, min: 0, max: 4, help: 'normal writes' },
  { name: 'serialising', type: 'int', default: d.serialising, min: 0, max: 4, help: 'serialising writes (BDRV_REQ_SERIALISING)' },
  { name: 'length', type: 'int', default: d.length, min: 1, max: 64, help: 'request length in units' },
];
for (const v of [SERIALIZATION, ...SERIALIZATION_BAD] as SerializationVariant[]) {
  registerModel({
    name: v.name,
    summary: v.summary,
    family: 'serialization',
    expect: v.expect,
    params: serializationSpecs,
    build: (p) => serializationModel(v, p) as Behaviour<unknown, unknown>,
  });
}

// --- NBD session --------------------------------------------------------------------------

const n = DEFAULT_NBD_SESSION_PARAMS;
const nbdSpecs: ParamSpec[] = [
  { name: 'options', type: 'int', default: n.options, min: 0, max: 6, help: 'options the client may send (besides ABORT)' },
  { name: 'requests', type: 'int', default: n.requests, min: 0, max: 6, help: 'transmission requests (besides DISC)' },
  { name: 'inflight', type: 'int', default: n.inflight, min: 1, max: 6, help: 'requests in flight at once' },
];
for (const v of [NBD_SESSION, ...NBD_SESSION_BAD] as NbdSessionVariant[]) {
  registerModel({
    name: v.name,
    summary: v.summary,
    family: 'nbd-session',
    expect: v.expect,
    params: nbdSpecs,
    build: (p) => nbdSessionModel(v, p) as Behaviour<unknown, unknown>,
  });
}
