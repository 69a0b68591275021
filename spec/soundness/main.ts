// Stand-alone entry until `fleece explore` grows a flag for it (spec/cli.ts belongs to the
// explorer): `npx tsx spec/soundness/main.ts [--max-exports N] [--cbw-rule 7.2|9.1] [--json FILE]`.
// Prints the counts and the accepted-but-unsafe groups; exit 0 (the unsafe graphs are findings
// about QEMU, not failures of this suite), 2 on a usage error.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CbwRule } from '../models/permissions/drivers.ts';
import { soundnessJson, soundnessText } from './report.ts';
import { DEFAULT_SOUNDNESS, soundness } from './soundness.ts';

export function main(argv: readonly string[]): number {
  const arg = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i < 0 ? undefined : argv[i + 1];
  };
  const maxExports = Number(arg('--max-exports') ?? 3);
  const rule = (arg('--cbw-rule') ?? '7.2') as CbwRule;
  if (!Number.isInteger(maxExports) || maxExports < 0 || maxExports > 5 || !['7.2', '9.1'].includes(rule)) {
    process.stderr.write('usage: soundness [--max-exports 0..5] [--cbw-rule 7.2|9.1] [--json FILE]\n');
    return 2;
  }
  const r = soundness({ maxExports }, { ...DEFAULT_SOUNDNESS, permissions: { cbwRule: rule } });
  process.stdout.write(`${soundnessText(r)}\n`);
  const json = arg('--json');
  if (json !== undefined) {
    fs.mkdirSync(path.dirname(json), { recursive: true });
    fs.writeFileSync(json, `${JSON.stringify(soundnessJson(r), null, 2)}\n`);
    process.stdout.write(`written: ${json}\n`);
  }
  return 0;
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
