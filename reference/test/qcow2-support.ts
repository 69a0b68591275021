// Shared by the qcow2 tests: images made and checked by the real qemu-img / qemu-io (7.2), and
// the reference's qcow2 node opened over them.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockGraph, exportPerms, type BlockBackend } from '../src/block/index.ts';
import { run, runOk } from './nbd-helpers.ts';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** `qemu-img create -f qcow2 FILE SIZE` with -o options (compat, cluster_size, backing...). */
export async function createQcow2(file: string, size: number | string, o: Record<string, string | number> = {}): Promise<void> {
  const opts = Object.entries(o).map(([k, v]) => `${k}=${v}`).join(',');
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), file, String(size)]);
}

/** qemu-io commands on an image; throws with the output when one fails. */
export async function qemuIo(target: string, cmds: string[], fmt = 'qcow2', extra: string[] = []): Promise<string> {
  const args = [...(fmt ? ['-f', fmt] : []), ...extra, ...cmds.flatMap((c) => ['-c', c]), target];
  const r = await run('qemu-io', args);
  const out = r.stdout + r.stderr;
  if (r.code !== 0 || /Pattern verification failed|failed|error/i.test(out)) throw new Error(`qemu-io ${args.join(' ')}:\n${out}`);
  return out;
}

/** The guest view of an image as qemu-img sees it (its whole backing chain): `convert -O raw`,
 * with -U (force-share): the reference may still hold the image, and its image locks then refuse
 * a reader that does not share write (docs/requirements/qemu-fleecing.md §1.7). */
export async function qemuView(dir: string, image: string, imageOpts?: string): Promise<Buffer> {
  const out = path.join(dir, `view-${Math.random().toString(36).slice(2)}.raw`);
  await runOk('qemu-img', imageOpts ? ['convert', '-U', '--image-opts', imageOpts, '-O', 'raw', out] : ['convert', '-U', '-f', 'qcow2', '-O', 'raw', image, out]);
  const b = fs.readFileSync(out);
  fs.rmSync(out);
  return b;
}

export interface CheckResult {
  readonly code: number;
  readonly output: string;
}

/** `qemu-img check`: exit 0 and no leaks or errors is clean. */
export async function qemuCheck(image: string): Promise<CheckResult> {
  const r = await run('qemu-img', ['check', '-f', 'qcow2', image]);
  return { code: r.code, output: r.stdout + r.stderr };
}

export function isClean(c: CheckResult): boolean {
  return c.code === 0 && /No errors were found on the image/.test(c.output);
}

const rw = exportPerms(true);
const ro = exportPerms(false);

/** Opens `image` as qcow2 node `name` in `g` (file child `name-file`) and a backend on it. */
export function openQcow2(g: BlockGraph, name: string, image: string, extra: Record<string, unknown> = {}, writable = true): BlockBackend {
  g.addNode({ driver: 'qcow2', 'node-name': name, file: { driver: 'file', 'node-name': `${name}-file`, filename: image }, discard: 'unmap', ...extra });
  const p = writable ? rw : ro;
  return g.attachBackend(`block device '${name}'`, name, p.perm, p.shared);
}

/** Flushes, detaches and closes every node (the image is then as the reference left it). */
export async function closeAll(g: BlockGraph, backends: BlockBackend[]): Promise<void> {
  for (const b of backends) {
    await b.flush();
    b.detach();
  }
  for (const n of g.allNodes()) await n.close();
}

/** First differing offset, or undefined. */
export function firstDiff(a: Buffer, b: Buffer): number | undefined {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  if (a.equals(b)) return undefined;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return undefined;
}
