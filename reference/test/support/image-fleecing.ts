// The data tables of QEMU's image-fleecing iotest (docs/requirements/qemu-fleecing.md §4.1) as
// qemu-io commands, shared by the tests that drive it over NBD.
import { run } from '../nbd-helpers.ts';

export type Row = readonly [pattern: number, offset: number, length: number];
const k = 1024;
const M = 1024 * 1024;
/** Written to the base before the snapshot. */
export const patterns: Row[] = [[0x5d, 0, 64 * k], [0xd5, 1 * M, 64 * k], [0xdc, 32 * M, 64 * k], [0xcd, 0x3ff0000, 64 * k]];
/** Written by the guest after the export is up: full, partial-left, partial-right, adjacent. */
export const overwrite: Row[] = [[0xab, 0, 64 * k], [0xad, 0x00f8000, 64 * k], [0x1d, 0x2008000, 64 * k], [0xea, 0x3fe0000, 64 * k]];
/** Must still read as zeroes through the snapshot. */
export const zeroes: Row[] = [[0, 0x00f8000, 32 * k], [0, 0x2010000, 32 * k], [0, 0x3fe0000, 64 * k]];
/** Must hold in the base after shutdown, alongside the overwrites. */
export const remainder: Row[] = [[0xd5, 0x108000, 32 * k], [0xdc, 32 * M, 32 * k], [0xcd, 0x3ff0000, 64 * k]];

export const reads = (rows: readonly Row[]): string[] => rows.map(([p, o, l]) => `read -P ${p} ${o} ${l}`);
export const writes = (rows: readonly Row[]): string[] => rows.map(([p, o, l]) => `write -P ${p} ${o} ${l}`);

/** qemu-io with every command; returns the failures it printed (pattern mismatches, errors). */
export async function qemuIo(target: string, cmds: string[], readOnly: boolean, format = 'raw'): Promise<string[]> {
  const r = await run('qemu-io', [...(readOnly ? ['-r'] : []), '-f', format, ...cmds.flatMap((c) => ['-c', c]), target]);
  const out = r.stdout + r.stderr;
  const failures = out.split('\n').filter((l) => /Pattern verification failed|error|failed/i.test(l));
  if (r.code !== 0 && failures.length === 0) failures.push(`qemu-io exited ${r.code}: ${out}`);
  return failures;
}
