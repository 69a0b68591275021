// `fleece bench` / `npm run bench`: runs every benchmark part and writes reports/bench/*.json.
// Benchmarks are ratios against a peer measured in the same run, never absolute thresholds.
import type { Subcommand } from '../cli/main.ts';

interface BenchPart {
  readonly name: string;
  load(): Promise<{ run(argv: string[]): Promise<number> }>;
}

const PARTS: BenchPart[] = [
  { name: 'server', load: () => import('./server.ts') },
  { name: 'writes', load: () => import('./writes.ts') },
  { name: 'explorer', load: () => import('./explorer.ts') },
  { name: 'breakpoints', load: () => import('./breakpoints.ts') },
];

const command: Subcommand = {
  summary: 'run benchmarks (results under reports/bench)',
  async run(argv) {
    const only = argv.includes('--only') ? argv[argv.indexOf('--only') + 1] : undefined;
    if (argv.includes('--help')) {
      process.stdout.write(`usage: fleece bench [--only ${PARTS.map((p) => p.name).join('|')}]\n`);
      return 0;
    }
    const parts = PARTS.filter((p) => only === undefined || p.name === only);
    if (parts.length === 0) {
      process.stderr.write(`fleece bench: no benchmark part named '${only}'\n`);
      return 2;
    }
    let rc = 0;
    for (const part of parts) {
      const mod = await part.load();
      rc = Math.max(rc, await mod.run(argv));
    }
    return rc;
  },
};
export default command;
