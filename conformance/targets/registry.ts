// Target registry: built-in targets register here; later suites register their own
// (e.g. fleecing targets with 'live' and 'snapshot' exports). A URI is a target too.
import { HarnessError } from './errors.ts';
import type { RunningTarget, TargetDef } from './types.ts';
import { isNbdUri, parseNbdUri } from './uri.ts';
import { commandTarget, isCommandTarget } from './command.ts';

const TARGETS = new Map<string, TargetDef>();

export function registerTarget(def: TargetDef): void {
  TARGETS.set(def.name, def);
}

export function listTargets(): TargetDef[] {
  return [...TARGETS.values()];
}

/** A target for a server the user runs: `nbd://` or `nbd+unix://`. Its export plays 'rw' and 'ro'
 *  (cases check the READ_ONLY flag themselves); the content is unknown to the runner. */
export function uriTarget(uri: string, opts: { allowWrites?: boolean } = {}): TargetDef {
  const ref = parseNbdUri(uri);
  return {
    name: uri,
    summary: 'a server started by the user',
    peers: [],
    async start(): Promise<RunningTarget> {
      // Over TLS with the user's credentials: the TLS cases that need wrong ones are skipped.
      const tls = ref.tls ? { extra: { tls: { mode: ref.tls.type, policy: 'unknown' } } } : {};
      return { name: uri, description: `external server at ${uri}${opts.allowWrites ? ' (writes allowed)' : ', not written (no --allow-writes)'}`, exports: { rw: ref, ro: ref }, writesAllowed: opts.allowWrites === true, ...tls, logs: () => '', stop: async () => undefined };
    },
  };
}

export function resolveTarget(spec: string, opts: { allowWrites?: boolean } = {}): TargetDef {
  if (isNbdUri(spec)) return uriTarget(spec, opts);
  if (isCommandTarget(spec)) return commandTarget(spec, opts);
  const def = TARGETS.get(spec);
  if (!def) throw new HarnessError(`unknown target '${spec}' (known: ${[...TARGETS.keys()].join(', ')}, or an nbd://, nbd+unix://, nbds:// or nbds+unix:// URI)`);
  return def;
}
