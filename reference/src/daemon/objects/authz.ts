// Authorization objects a TLS server consults with the client's identity (the x509 distinguished
// name, or the PSK username): QEMU's qapi/authz.json and authz/{simple,list,listfile}.c.
//   authz-simple,id=,identity=NAME                 allows exactly NAME
//   authz-list,id=,policy=allow|deny,rules.N.match=,rules.N.policy=,rules.N.format=exact|glob
//                                                  first matching rule decides, else `policy`
//   authz-listfile,id=,filename=F[,refresh=on|off] the same list read from a JSON file
// authz-pam is not provided (no PAM in the reference).
import * as fs from 'node:fs';
import { Keys, UsageError, at as prefix } from '../keys.ts';
import { registerObjectType } from './registry.ts';

export interface Authz {
  readonly id: string;
  isAllowed(identity: string): boolean;
}

export const AUTHZ_TYPES = ['authz-simple', 'authz-list', 'authz-listfile'] as const;

type Policy = 'allow' | 'deny';
interface Rule {
  readonly match: string;
  readonly policy: Policy;
  readonly format: 'exact' | 'glob';
}
interface ListProps {
  readonly policy: Policy;
  readonly rules: readonly Rule[];
}

function policyOf(v: unknown, where: string, key: string): Policy {
  if (v !== 'allow' && v !== 'deny') throw new UsageError(`${prefix(where)}Parameter '${key}' does not accept value '${String(v)}'`);
  return v;
}

/** AuthZListProperties (policy defaults to deny, QAPI's default), from keyval or JSON. */
function parseList(o: Record<string, unknown>, where: string, k = new Keys(o, where)): ListProps {
  const p = k.get('policy');
  const policy = p === undefined ? 'deny' : policyOf(p, where, 'policy');
  const raw = k.get('rules') ?? [];
  // keyval gives `rules.0.match=` as a list; JSON gives a list too.
  const list = Array.isArray(raw) ? raw : typeof raw === 'object' && raw !== null ? Object.values(raw) : undefined;
  if (!list) throw new UsageError(`${prefix(where)}Parameter 'rules' expects a list of rules`);
  const rules = list.map((r, i): Rule => {
    const at = `${prefix(where)}rules.${i}`;
    if (r === null || typeof r !== 'object' || Array.isArray(r)) throw new UsageError(`${at}: expected a rule object`);
    // QEMU names a rule's keys by their dotted path: "Parameter 'rules.0.policy' is missing".
    const rk = new Keys(r as Record<string, unknown>, where, `rules.${i}.`);
    const match = rk.req('match');
    const policy = policyOf(rk.req('policy'), at, 'policy');
    const format = rk.str('format') ?? 'exact';
    if (format !== 'exact' && format !== 'glob') throw new UsageError(`${at}: Parameter 'format' does not accept value '${format}'`);
    rk.finish();
    return { match, policy, format };
  });
  return { policy, rules };
}

/** qauthz_list_is_allowed: the first rule that matches decides. */
function listAllows(l: ListProps, identity: string): boolean {
  for (const r of l.rules) {
    if (r.format === 'exact' ? r.match === identity : fnmatch(r.match, identity)) return r.policy === 'allow';
  }
  return l.policy === 'allow';
}

/** fnmatch(pattern, s, 0) as QEMU calls it for glob rules: `*`, `?`, `[...]` (with `!`/`^` and
 * ranges), backslash escapes; with no flags `*` also matches `/` and a leading `.`. */
export function fnmatch(pattern: string, s: string): boolean {
  const go = (pi: number, si: number): boolean => {
    while (pi < pattern.length) {
      const c = pattern[pi]!;
      if (c === '*') {
        while (pattern[pi] === '*') pi++;
        if (pi === pattern.length) return true;
        for (let k = si; k <= s.length; k++) if (go(pi, k)) return true;
        return false;
      }
      if (si >= s.length) return false;
      if (c === '?') {
        pi++;
        si++;
        continue;
      }
      if (c === '[') {
        const end = classEnd(pattern, pi);
        if (end > 0) {
          if (!classMatches(pattern.slice(pi + 1, end), s[si]!)) return false;
          pi = end + 1;
          si++;
          continue;
        }
      }
      let lit = c;
      if (c === '\\' && pi + 1 < pattern.length) lit = pattern[++pi]!;
      if (lit !== s[si]) return false;
      pi++;
      si++;
    }
    return si === s.length;
  };
  return go(0, 0);
}

/** Index of the `]` closing the class opened at `open`, or -1 (then `[` is literal). */
function classEnd(p: string, open: number): number {
  let i = open + 1;
  if (p[i] === '!' || p[i] === '^') i++;
  if (p[i] === ']') i++;
  for (; i < p.length; i++) if (p[i] === ']') return i;
  return -1;
}

function classMatches(body: string, ch: string): boolean {
  let neg = false;
  let i = 0;
  if (body[0] === '!' || body[0] === '^') {
    neg = true;
    i = 1;
  }
  let hit = false;
  for (; i < body.length; i++) {
    const lo = body[i]!;
    if (body[i + 1] === '-' && i + 2 < body.length) {
      if (ch >= lo && ch <= body[i + 2]!) hit = true;
      i += 2;
    } else if (lo === ch) hit = true;
  }
  return hit !== neg;
}

registerObjectType<{ identity: string }>({
  qomType: 'authz-simple',
  parse: (k) => ({ identity: k.req('identity') }),
  create: (id, p): Authz => ({ id, isAllowed: (who) => who === p.identity }),
});

registerObjectType<ListProps>({
  qomType: 'authz-list',
  parse(k, where) {
    // Keys has no "all remaining" view: read the two properties through it, then validate.
    return parseList({ policy: k.get('policy'), rules: k.get('rules') }, where);
  },
  create: (id, p): Authz => ({ id, isAllowed: (who) => listAllows(p, who) }),
});

interface ListfileProps {
  readonly filename: string;
  readonly refresh: boolean;
}

function readListfile(file: string, where: string): ListProps {
  let o: unknown;
  try {
    o = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UsageError(`${prefix(where)}cannot read authz list ${file}: ${(e as Error).message}`);
  }
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new UsageError(`${prefix(where)}${file}: expected a JSON object with 'policy' and 'rules'`);
  const l = parseList(o as Record<string, unknown>, `${prefix(where)}${file}`);
  return l;
}

registerObjectType<ListfileProps>({
  qomType: 'authz-listfile',
  parse: (k) => ({ filename: k.req('filename'), refresh: k.bool('refresh', true) }),
  create(id, p, where): Authz {
    let list = readListfile(p.filename, where);
    return {
      id,
      isAllowed(who) {
        // QEMU reloads on inotify when refresh=on; reading at each check gives the same answers.
        if (p.refresh) {
          try {
            list = readListfile(p.filename, where);
          } catch {
            /* keep the last good list, as QEMU does when a reload fails */
          }
        }
        return listAllows(list, who);
      },
    };
  },
});
