// `fleece bench --only breakpoints`: what the breakpoint hooks (docs/design.md "Interleavings") cost the data path.
// The same in-process fleecing workload (guest writes through copy-before-write, snapshot reads
// through snapshot-access, overlay reads in the legacy graph) runs with no breakpoint armed and
// with one armed breakpoint that never matches (every event then goes through the registry's
// matching code). Unarmed, each event costs one property read, so the ratio unarmed/armed shows
// the ceiling of what breakpoints could cost; rounds alternate so machine load hits both alike.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockGraph, exportPerms, type BlockBackend } from '../reference/src/block/index.ts';

const KiB = 1024;
const SIZE = 64 * 1024 * KiB;

interface Setup {
  graph: BlockGraph;
  live: BlockBackend;
  fleece: BlockBackend;
}

function modern(): Setup {
  const g = new BlockGraph();
  g.addNode({ driver: 'memory', 'node-name': 'source', size: SIZE });
  g.addNode({ driver: 'memory', 'node-name': 'temp', size: SIZE });
  g.addNode({ driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'source', target: 'temp' });
  g.addNode({ driver: 'snapshot-access', 'node-name': 'fl-access', file: 'fl-cbw' });
  const rw = exportPerms(true);
  const ro = exportPerms(false);
  return {
    graph: g,
    live: g.attachBackend('an unnamed block device', 'fl-cbw', rw.perm, rw.shared),
    fleece: g.attachBackend('an unnamed block device', 'fl-access', ro.perm, ro.shared),
  };
}

/** A deterministic mix: 4 KiB guest writes and snapshot reads, 16 in flight. */
async function workload(s: Setup, ops: number): Promise<number> {
  let x = 12345;
  const rnd = (): number => ((x = (x * 1103515245 + 12345) & 0x7fffffff), x);
  const buf = Buffer.alloc(4 * KiB, 0x5a);
  const t0 = process.hrtime.bigint();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < ops) {
      const i = next++;
      const off = (rnd() % (SIZE / (4 * KiB))) * 4 * KiB;
      if (i % 2 === 0) await s.live.write(off, buf);
      else await s.fleece.read(off, 4 * KiB);
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

export async function run(argv: string[]): Promise<number> {
  const quick = argv.includes('--quick');
  const ops = quick ? 20_000 : 100_000;
  const rounds = quick ? 3 : 5;
  const best = { unarmed: Infinity, armed: Infinity };
  for (let r = 0; r < rounds; r++) {
    for (const mode of ['unarmed', 'armed'] as const) {
      const s = modern();
      if (mode === 'armed') s.graph.breakpoints.arm('cbw-done-set', 'never', { node: 'no-such-node' });
      const secs = await workload(s, ops);
      best[mode] = Math.min(best[mode], secs);
      s.graph.breakpoints.clear();
    }
  }
  const result = {
    ops,
    rounds,
    unarmedOpsPerSec: Math.round(ops / best.unarmed),
    armedOpsPerSec: Math.round(ops / best.armed),
    ratioUnarmedToArmed: +(best.armed / best.unarmed).toFixed(3),
    note: 'unarmed events read one counter; armed runs every event through the matcher. Best of alternating rounds.',
  };
  const dir = path.join('reports', 'bench');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'breakpoints.json'), JSON.stringify(result, null, 2) + '\n');
  process.stdout.write(
    `breakpoints: ${ops} ops (4 KiB guest writes + snapshot reads, 16 in flight), best of ${rounds}\n` +
      `  unarmed ${result.unarmedOpsPerSec} ops/s, armed-never-matching ${result.armedOpsPerSec} ops/s, unarmed/armed speed ratio ${result.ratioUnarmedToArmed}\n` +
      `  -> ${path.join(dir, 'breakpoints.json')}\n`,
  );
  return 0;
}
