// A second shrinking pass after fast-check's: fast-check shrinks an array by dropping elements
// from its front, so a trailing message that does not matter survives. This pass tries removing
// each message on its own and simplifying a few fields (greedy delta debugging), keeping every
// change after which the case still shows a finding of the same kind. Pure: the candidates are
// computed here; the campaign runs them.
import type { FuzzCase, NbdCase, QmpCase, RequestMsg } from './case.ts';

function without<T>(xs: readonly T[], i: number): T[] {
  return [...xs.slice(0, i), ...xs.slice(i + 1)];
}

/** Simpler variants of a case, most reducing first. */
export function reductions(c: FuzzCase): FuzzCase[] {
  if (c.proto === 'qmp') {
    const q: QmpCase = c;
    const out: QmpCase[] = q.texts.map((_, i) => ({ ...q, texts: without(q.texts, i) })).filter((x) => x.texts.length > 0);
    if (q.joined) out.push({ ...q, joined: false });
    return out;
  }
  const n: NbdCase = c;
  const out: NbdCase[] = [];
  if (n.cut !== undefined) {
    const { cut: _cut, ...rest } = n;
    out.push(rest);
  }
  n.requests.forEach((_, i) => out.push({ ...n, requests: without(n.requests, i) }));
  n.handshake.forEach((_, i) => out.push({ ...n, handshake: without(n.handshake, i) }));
  n.requests.forEach((r, i) => {
    if (r.kind !== 'request') return;
    const simpler: Partial<RequestMsg>[] = [];
    if (r.flags !== 0) for (let b = 0; b < 16; b++) if (r.flags & (1 << b)) simpler.push({ flags: r.flags & ~(1 << b) });
    if (r.payload > 0 && r.type !== 1) simpler.push({ payload: 0 });
    for (const s of simpler) out.push({ ...n, requests: n.requests.map((x, j) => (j === i ? { ...r, ...s } : x)) });
  });
  return out;
}

/** Greedily applies reductions while `stillFails` holds; returns the smallest case and the steps. */
export async function minimize(c: FuzzCase, stillFails: (c: FuzzCase) => Promise<boolean>, maxTries = 200): Promise<{ case: FuzzCase; steps: number }> {
  let cur = c;
  let steps = 0;
  let tries = 0;
  for (let progress = true; progress && tries < maxTries; ) {
    progress = false;
    for (const cand of reductions(cur)) {
      if (++tries > maxTries) break;
      if (await stillFails(cand)) {
        cur = cand;
        steps++;
        progress = true;
        break;
      }
    }
  }
  return { case: cur, steps };
}
