// The permissions suite's `locking` section: image locking between the target and QEMU's own
// tools on one local image (docs/requirements/qemu-fleecing.md §1.7). QEMU's file-posix locks one
// byte per permission a node takes (offset 100 + bit) and per permission it does not share
// (200 + bit); every QEMU process checks them, so a tool that would write an image a fleecing
// graph depends on is refused before it writes. A target that does not lock lets a writer bypass
// copy-before-write: the snapshot silently changes.
//
// Two directions, one table each:
// - the target holds the modern fleecing graph (§5.1) over two local images; qemu-io and
//   qemu-img open them; each row's verdict (refused with QEMU's words, or let in) is what QEMU
//   7.2's own daemon gets, measured with qemu-storage-daemon holding the same graph;
// - qemu-storage-daemon (started by the judge) holds that graph; the target is asked over QMP
//   to open the images and export them.
// The cases run on the targets with a monitor and the local file system (the permission
// targets); the judge spawns processes and never looks inside the target.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { CaseContext, CaseDef, Level } from '../runner/model.ts';
import { ManagedProcess, requirePeer } from '../targets/process.ts';
import type { PermEnv } from './cases.ts';
import type { PermSession } from './targets.ts';

const IMAGE_SIZE = 1 << 20;
const HINT = (image: string) => `Is another process using the image [${image}]?`;

/** A QEMU tool opening an image the target holds: `IMG` in args is the image's path. */
interface ToolRow {
  readonly name: string;
  readonly title: string;
  readonly image: 'source' | 'temp';
  readonly command: 'qemu-io' | 'qemu-img';
  readonly args: readonly string[];
  /** QEMU's refusal, after the tool's own prefix; undefined when QEMU lets the tool in. */
  readonly refusal?: string;
  /** Why QEMU decides so (for the case page). */
  readonly because: string;
  /** MUST where a wrong verdict lets a writer bypass cbw or resize under an export; SHOULD where
   * it only refuses a harmless opener. */
  readonly level: Level;
}

const TOOL_ROWS: readonly ToolRow[] = [
  { name: 'qemu-io-write-source', title: 'qemu-io opening the source read-write is refused: "write" lock', image: 'source', command: 'qemu-io', args: ['-f', 'raw', '-c', 'write -P 0x5a 0 4096', 'IMG'], refusal: 'Failed to get "write" lock', because: 'cbw unshares write on its source (byte 201): a writer there would bypass copy-before-write', level: 'MUST' },
  { name: 'qemu-img-convert-source', title: 'qemu-img convert reading the source (sharing no write) is refused: shared "write" lock', image: 'source', command: 'qemu-img', args: ['convert', '-f', 'raw', '-O', 'raw', 'IMG', 'OUT'], refusal: 'Failed to get shared "write" lock', because: 'qemu-img convert does not share write, and the live export writes the source (byte 101)', level: 'SHOULD' },
  { name: 'qemu-img-resize-temp', title: 'qemu-img resize of the temp image is refused: "resize" lock', image: 'temp', command: 'qemu-img', args: ['resize', '-f', 'raw', 'IMG', '2M'], refusal: 'Failed to get "resize" lock', because: 'cbw and the NBD exports unshare resize (byte 203)', level: 'MUST' },
  { name: 'qemu-io-read-source', title: 'qemu-io reading the source read-only is let in', image: 'source', command: 'qemu-io', args: ['-f', 'raw', '-r', '-c', 'read 0 4096', 'IMG'], because: 'a read-only qemu-io takes consistent read and shares everything; nobody unshares consistent read (byte 200)', level: 'SHOULD' },
  { name: 'qemu-img-convert-force-share', title: 'qemu-img convert -U (force-share) of the source is let in', image: 'source', command: 'qemu-img', args: ['convert', '-U', '-f', 'raw', '-O', 'raw', 'IMG', 'OUT'], because: 'force-share: a read-only opener that shares everything', level: 'SHOULD' },
  { name: 'qemu-io-write-temp', title: 'qemu-io writing the temp image is let in (cbw shares write on its target)', image: 'temp', command: 'qemu-io', args: ['-f', 'raw', '-c', 'write -P 0x5a 0 4096', 'IMG'], because: 'cbw shares everything but resize on its target: QEMU does not protect the snapshot store from other writers (§6 B6)', level: 'SHOULD' },
];

/** The target asked over QMP to use an image qemu-storage-daemon holds with the fleecing graph. */
interface QmpRow {
  readonly name: string;
  readonly title: string;
  readonly image: 'source' | 'temp';
  readonly writable: boolean;
  readonly refusal?: string;
  readonly because: string;
  readonly level: Level;
}

const QMP_ROWS: readonly QmpRow[] = [
  { name: 'writable-export-on-held-source', title: 'a writable export of the source qemu-storage-daemon holds under cbw is refused: "write" lock', image: 'source', writable: true, refusal: 'Failed to get "write" lock', because: 'cbw in the other process unshares write on its source', level: 'MUST' },
  { name: 'readonly-export-on-held-source', title: 'a read-only export of the source qemu-storage-daemon holds is accepted', image: 'source', writable: false, because: 'consistent read is shared by every holder; the export unshares resize, which nobody there takes', level: 'SHOULD' },
];

function runTool(command: string, args: readonly string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(command, [...args], { timeout: 30_000 }, (err, _stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stderr: String(stderr).trim() });
    });
  });
}

function rawImage(p: string): string {
  fs.writeFileSync(p, '');
  fs.truncateSync(p, IMAGE_SIZE);
  return p;
}

/** The modern fleecing graph over two local images, as QMP commands (names under `prefix`). */
function fleecingGraph(prefix: string, src: string, tmp: string, fileOptions: Readonly<Record<string, unknown>> = {}): Array<[string, Record<string, unknown>]> {
  const n = (x: string) => `${prefix}${x}`;
  return [
    ['blockdev-add', { driver: 'file', 'node-name': n('source'), filename: src, ...fileOptions }],
    ['blockdev-add', { driver: 'file', 'node-name': n('temp'), filename: tmp, ...fileOptions }],
    ['blockdev-add', { driver: 'copy-before-write', 'node-name': n('cbw'), file: n('source'), target: n('temp') }],
    ['blockdev-add', { driver: 'snapshot-access', 'node-name': n('access'), file: n('cbw') }],
    ['block-export-add', { type: 'nbd', id: n('live'), 'node-name': n('cbw'), name: n('live'), writable: true }],
    ['block-export-add', { type: 'nbd', id: n('fleece'), 'node-name': n('access'), name: n('fleece') }],
  ];
}

/** Builds the graph on the target; false (with a failed MUST) when the target refuses it. */
async function buildOnTarget(ctx: CaseContext<PermEnv>, s: PermSession, prefix: string, src: string, tmp: string): Promise<boolean> {
  for (const [command, args] of fleecingGraph(prefix, src, tmp, s.fileOptions)) {
    const r = await s.qmp.execute(command, args);
    ctx.observe(`QMP -> ${JSON.stringify({ execute: command, arguments: args })} <- ${r.ok ? '{"return": {}}' : JSON.stringify({ error: r.error })}`);
    if (!r.ok) {
      ctx.must(false, `the target builds the fleecing graph (${command})`, r.error?.desc);
      return false;
    }
  }
  return true;
}

/** qemu-storage-daemon holding the fleecing graph over src and tmp, until the case ends. */
async function qsdHolding(ctx: CaseContext<PermEnv>, dir: string, prefix: string, src: string, tmp: string): Promise<void> {
  requirePeer('qemu-storage-daemon');
  const sock = path.join(dir, `${prefix}holder-nbd.sock`);
  // qemu-storage-daemon writes its pid file after every --blockdev and --export is open (and
  // documents that order); the NBD socket appears before them.
  const pidfile = path.join(dir, `${prefix}holder.pid`);
  const args = ['--pidfile', pidfile, '--nbd-server', `addr.type=unix,addr.path=${sock}`];
  for (const [command, a] of fleecingGraph('h-', src, tmp)) {
    const kv = Object.entries(a).map(([k, v]) => `${k}=${v === true ? 'on' : String(v)}`).join(',');
    args.push(command === 'blockdev-add' ? '--blockdev' : '--export', kv);
  }
  const p = ManagedProcess.spawn('qemu-storage-daemon (lock holder)', 'qemu-storage-daemon', args);
  ctx.defer(() => p.stop());
  const deadline = Date.now() + 15_000;
  while (!fs.existsSync(pidfile)) {
    if (p.hasExited || Date.now() > deadline) throw new Error(`the lock holder did not start (${p.exitStatus}): ${p.output.trim()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  ctx.observe(`holder: qemu-storage-daemon ${args.join(' ')}`);
}

/** `words`: what the refusal must contain to say what QEMU says (a tool's line and hint). */
function verdictChecks(ctx: CaseContext<PermEnv>, level: Level, refusal: string | undefined, refused: boolean, said: string, because: string, words = refusal): void {
  if (refusal === undefined) {
    ctx.check(level, !refused, `let in, as QEMU 7.2 lets it in: ${because}`, said || 'accepted');
    return;
  }
  ctx.check(level, refused, `refused, as QEMU 7.2 refuses it: ${because}`, refused ? said : `let in${said ? `: ${said}` : ''}`);
  if (refused) ctx.should(said.includes(words!), `the refusal says what QEMU says: ${JSON.stringify(words)}`, said);
}

function toolCase(row: ToolRow, index: number): CaseDef<PermEnv> {
  const prefix = `lk${index}-`;
  return {
    id: `permissions/locking/${row.name}`,
    section: 'docs/requirements/qemu-fleecing.md §1.7 (image locking: file-posix lock bytes 100+bit, 200+bit)',
    level: row.level,
    title: `The target holds the fleecing graph: ${row.title}`,
    description: `The target builds the modern fleecing graph (§5.1) over two local raw images by QMP; then \`${row.command} ${row.args.join(' ')}\` runs on the ${row.image} image (IMG).`,
    expectation: row.refusal
      ? `${row.command} exits non-zero with "${row.refusal}" and QEMU's hint "${HINT('IMG')}" (${row.because}).`
      : `${row.command} succeeds (${row.because}).`,
    async run(ctx) {
      requirePeer(row.command);
      const s = await ctx.env.lab.session();
      const src = rawImage(path.join(s.dir, `${prefix}src.img`));
      const tmp = rawImage(path.join(s.dir, `${prefix}tmp.img`));
      if (!(await buildOnTarget(ctx, s, prefix, src, tmp))) return;
      const img = row.image === 'source' ? src : tmp;
      const args = row.args.map((a) => (a === 'IMG' ? img : a === 'OUT' ? path.join(s.dir, `${prefix}out.img`) : a));
      const r = await runTool(row.command, args);
      ctx.observe(`${row.command} ${args.join(' ')} -> exit ${r.code}${r.stderr ? `: ${r.stderr}` : ''}`);
      // The tool's words depend on which byte the target holds: the line names the permission.
      verdictChecks(ctx, row.level, row.refusal, r.code !== 0, r.stderr, row.because, row.refusal && `${row.refusal}\n${HINT(img)}`);
      const dead = s.exited();
      ctx.must(!dead, 'the daemon keeps running', dead);
    },
  };
}

function qmpCase(row: QmpRow, index: number): CaseDef<PermEnv> {
  const prefix = `lq${index}-`;
  return {
    id: `permissions/locking/${row.name}`,
    section: 'docs/requirements/qemu-fleecing.md §1.7 (image locking: file-posix lock bytes 100+bit, 200+bit)',
    level: row.level,
    title: `qemu-storage-daemon holds the fleecing graph: ${row.title}`,
    description: `The judge starts qemu-storage-daemon 7.2 with the modern fleecing graph over two local raw images; the target gets blockdev-add (driver file) on the ${row.image} image and a ${row.writable ? 'writable' : 'read-only'} block-export-add of that node.`,
    expectation: row.refusal ? `The export is refused with "${row.refusal}" (${row.because}).` : `Both commands are accepted (${row.because}).`,
    async run(ctx) {
      const s = await ctx.env.lab.session();
      const src = rawImage(path.join(s.dir, `${prefix}src.img`));
      const tmp = rawImage(path.join(s.dir, `${prefix}tmp.img`));
      await qsdHolding(ctx, s.dir, prefix, src, tmp);
      const node = `${prefix}node`;
      const steps: Array<[string, Record<string, unknown>]> = [
        ['blockdev-add', { driver: 'file', 'node-name': node, filename: row.image === 'source' ? src : tmp, ...s.fileOptions }],
        ['block-export-add', { type: 'nbd', id: `${prefix}exp`, 'node-name': node, name: `${prefix}exp`, writable: row.writable }],
      ];
      let said = '';
      let refused = false;
      for (const [command, args] of steps) {
        const r = await s.qmp.execute(command, args);
        ctx.observe(`QMP -> ${JSON.stringify({ execute: command, arguments: args })} <- ${r.ok ? '{"return": {}}' : JSON.stringify({ error: r.error })}`);
        if (!r.ok) {
          refused = true;
          said = `${command}: ${r.error?.desc ?? ''}`;
          break;
        }
      }
      verdictChecks(ctx, row.level, row.refusal, refused, said, row.because);
      const dead = s.exited();
      ctx.must(!dead, 'the daemon keeps running', dead);
    },
  };
}

/** The locking section's cases (table rows run by toolCase and qmpCase). */
export const lockingCases: readonly CaseDef<PermEnv>[] = [...TOOL_ROWS.map((r, i) => toolCase(r, i + 1)), ...QMP_ROWS.map((r, i) => qmpCase(r, i + 1))];
