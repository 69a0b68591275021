// QEMU's command-line option syntax (util/keyval.c), as qemu-storage-daemon reads --blockdev,
// --export, --nbd-server and --monitor: `key=value` pairs separated by commas, `,,` for a literal
// comma, dotted keys building nested objects (`file.driver=file`), numeric components building
// lists (`a.0=x,a.1=y`), an optional implied first key (`--blockdev raw,...` = `driver=raw`), and
// a JSON object instead when the argument starts with `{`. Values stay strings: the consumer
// converts them against its schema, as QEMU's keyval visitor does.

export class KeyvalError extends Error {
  override readonly name = 'KeyvalError';
}

export type KeyvalObject = { [key: string]: KeyvalValue };
export type KeyvalValue = string | KeyvalObject | KeyvalValue[];

const KEY_RE = /^[A-Za-z0-9_-]+$/;

/** Splits on unescaped commas; `,,` is a comma inside a value. */
function splitPairs(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (ch === ',') {
      if (s[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      out.push(cur);
      cur = '';
      continue;
    }
    cur += ch;
  }
  out.push(cur);
  return out;
}

/**
 * Parses `key=value,...` (or JSON). `impliedKey` names the key of a leading bare value.
 * The same key given twice: the last one wins (keyval.c).
 */
export function parseKeyval(text: string, impliedKey?: string): KeyvalObject {
  const t = text.trimStart();
  if (t.startsWith('{')) {
    let v: unknown;
    try {
      v = JSON.parse(t);
    } catch (e) {
      throw new KeyvalError(`JSON parse error, ${(e as Error).message}`);
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new KeyvalError('JSON form must be an object');
    return v as KeyvalObject;
  }
  const root: Record<string, unknown> = {};
  const pairs = splitPairs(text);
  pairs.forEach((pair, idx) => {
    const eq = pair.indexOf('=');
    let key: string;
    let value: string;
    if (eq < 0) {
      if (idx === 0 && impliedKey !== undefined && pair !== '') {
        key = impliedKey;
        value = pair;
      } else if (pair === '' && idx === pairs.length - 1 && idx > 0) {
        return; // a trailing comma
      } else {
        throw new KeyvalError(`Expected '=' after parameter '${pair}'`);
      }
    } else {
      key = pair.slice(0, eq);
      value = pair.slice(eq + 1);
    }
    const parts = key.split('.');
    for (const p of parts) if (!KEY_RE.test(p)) throw new KeyvalError(`Invalid parameter '${key}'`);
    let obj = root;
    for (let i = 0; i < parts.length - 1; i++) {
      const p = parts[i]!;
      const next = obj[p];
      if (next === undefined) obj[p] = {};
      else if (typeof next !== 'object') {
        throw new KeyvalError(`Parameters '${parts.slice(0, i + 1).join('.')}.*' used inconsistently`);
      }
      obj = obj[p] as Record<string, unknown>;
    }
    const leaf = parts[parts.length - 1]!;
    if (typeof obj[leaf] === 'object') throw new KeyvalError(`Parameters '${key}.*' used inconsistently`);
    obj[leaf] = value;
  });
  return listify(root, '') as KeyvalObject;
}

/** Objects whose keys are all decimal indices 0..n-1 become arrays (keyval_listify). */
function listify(v: unknown, path: string): KeyvalValue {
  if (typeof v !== 'object' || v === null) return v as string;
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o);
  const numeric = keys.filter((k) => /^\d+$/.test(k));
  if (numeric.length > 0) {
    if (numeric.length !== keys.length) throw new KeyvalError(`Parameters '${path}*' used inconsistently`);
    const arr: KeyvalValue[] = [];
    for (let i = 0; i < keys.length; i++) {
      if (!(String(i) in o)) throw new KeyvalError(`Parameter '${path}${i}' missing`);
      arr.push(listify(o[String(i)], `${path}${i}.`));
    }
    return arr;
  }
  const out: KeyvalObject = {};
  for (const k of keys) out[k] = listify(o[k], `${path}${k}.`);
  return out;
}

/** QAPI bool from a keyval string or JSON boolean. */
export function toBool(v: unknown, where: string): boolean {
  if (v === true || v === 'on' || v === 'true' || v === 'yes') return true;
  if (v === false || v === 'off' || v === 'false' || v === 'no') return false;
  throw new KeyvalError(`${where} expects 'on' or 'off'`);
}
