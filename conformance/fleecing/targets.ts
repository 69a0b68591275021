// Fleecing targets: a live (writable) export and a snapshot export of one
// disk, started privately with the command lines of docs/requirements/qemu-fleecing.md §5.1 (modern:
// copy-before-write + snapshot-access) and §5.2 (legacy: blockdev-backup sync=none into a
// qcow2 temp backed by the source, over QMP), and torn down afterwards.
//   reference          fleece serve, §5.1 (raw in place of qcow2)
//   reference-legacy   fleece serve, §5.2 (the qcow2 temp as written there; source raw)
//   reference-racy     reference-legacy with the UNSAFE x-unserialized-target-writes: the
//                      pre-3.0 race (§3, §6 B0) - the known-bad target every check must catch
//   reference-hbitmap-status   reference with the UNSAFE cbw x-hbitmap-status-bug: QEMU 7.2's
//                      hbitmap_status (findings F1/F3) - known bad, fails the straddle cases
//   qemu               qemu-storage-daemon, §5.1 verbatim
//   qemu-legacy        qemu-storage-daemon, §5.2 verbatim
//   reference-tls-x509, reference-tls-psk, qemu-tls-x509, qemu-tls-psk   the modern graph with
//                      the NBD server behind TLS (--object tls-creds-*, --nbd-server
//                      tls-creds=tls0): every connection of the suite does STARTTLS first
//   --live URI --snapshot URI   anything else (a setup the user runs)
// A case asks the target for a setup with a configuration (content, a delay under the source, a
// cbw bitmap, snapshot discard, an injected target error); each setup is its own process in its
// own directory, so cases never see each other's writes.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Address } from '../nbd/client.ts';
import { HarnessError } from '../targets/errors.ts';
import { ManagedProcess, requirePeer, waitFile, waitListening } from '../targets/process.ts';
import { peerCommand, recordStarted } from '../targets/peers.ts';
import type { ExportRef, RunningTarget, TargetDef, TargetStartOptions } from '../targets/types.ts';
import { parseNbdUri } from '../targets/uri.ts';
import { QmpClient } from '../qmp/client.ts';
import { Cmd } from '../nbd/constants.ts';
import { open } from '../nbd/session.ts';
import { CONTENTS, qemuIoWrites, writeRaw, type Content } from './content.ts';
import type { TlsClientConfig } from '../nbd/tls.ts';
import { makePki } from '../tls/pki.ts';
import { Lab } from '../runner/lab.ts';

export type FleeceTls = 'x509' | 'psk';

/** The credentials of a TLS setup, made in its directory: the --object arguments (given before
 * --nbd-server, which refers to them), the --nbd-server suffix, the client's credentials. */
function tlsSetup(mode: FleeceTls | undefined, dir: string): { objects: string[]; suffix: string; creds?: TlsClientConfig } {
  if (!mode) return { objects: [], suffix: '' };
  const pki = makePki(path.join(dir, 'tls'));
  const creds = mode === 'x509' ? `tls-creds-x509,id=tls0,dir=${pki.server.dir},endpoint=server,verify-peer=on` : `tls-creds-psk,id=tls0,dir=${pki.psk.serverDir},endpoint=server`;
  return {
    objects: ['--object', creds],
    suffix: ',tls-creds=tls0',
    creds: mode === 'x509' ? { type: 'x509', certificates: pki.client.dir } : { type: 'psk', pskFile: pki.psk.clientFile, identity: pki.psk.identity },
  };
}

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export type OnCbwError = 'break-guest-write' | 'break-snapshot';

/** What a case needs from a fleecing setup. Plain data: it is recorded in traces. */
export interface FleeceConfig {
  /** Disk content at snapshot time (a key of CONTENTS). */
  content: 'iotest' | 'dense';
  /** Read latency added under the source, to widen race windows (reference: the `delay`
   * driver; QEMU: the source is an NBD client of `nbdkit --filter=delay`). */
  sourceReadDelayMs?: number;
  /** copy-before-write `bitmap`: only the content's regions are in the snapshot (§5.1 variant). */
  bitmap?: boolean;
  /** discard=unmap on the snapshot-access node and the temp, and a writable snapshot export (§5.1). */
  snapshotDiscard?: boolean;
  /** blkdebug under the cbw target failing the first write with EIO, and this policy (§4.2). */
  cbwError?: OnCbwError;
  /** Known-bad knob: with snapshotDiscard, leave the snapshot-access node at discard=ignore, so a
   * snapshot discard succeeds and does nothing (docs/requirements/qemu-fleecing.md §6 B8). */
  discardIgnored?: boolean;
  /** Known-bad knob of the reference only: copy-before-write's UNSAFE x-no-copy-reset, so a
   * snapshot discard does not drop the copy duty of its clusters (§2.3 "Snapshot discard"). */
  noCopyReset?: boolean;
  /** Known-bad knob of the reference only: blockdev-backup's UNSAFE x-no-job-progress (legacy
   * graph), so the job's `offset` stays 0 (§5.2). */
  noJobProgress?: boolean;
  /** With cbwError: the errno blkdebug injects (default 5, EIO; 28 is ENOSPC, a temp out of space). */
  cbwErrno?: number;
  /** Known-bad knob of the reference only: copy-before-write's UNSAFE x-copy-error-eio (every
   * failed copy reported as EIO, whatever the target said). */
  copyErrorEio?: boolean;
}

export type Graph = 'modern' | 'legacy' | 'external';

export interface FleeceSetup {
  readonly live: ExportRef;
  readonly snapshot: ExportRef;
  readonly description: string;
  readonly graph: Graph;
  /** The raw temp image the judge made for the modern graph (not under blkdebug), which a case
   * may read to see what copy-before-write copied into it. */
  readonly temp?: string;
  /** The judge's QMP monitor of the setup, when it holds one (the legacy graph's backup job). */
  readonly qmp?: QmpClient;
  /** undefined while the server runs; else how it ended ('signal SIGABRT', 'exit code 1'). */
  exited(): string | undefined;
  logs(): string;
  stop(): Promise<void>;
}

export interface FleeceFlavor {
  readonly name: string;
  readonly summary: string;
  readonly graph: Graph;
  readonly peers: readonly string[];
  /** Why this target cannot build `config` (the case is then skipped), or undefined. */
  unsupported(config: FleeceConfig): string | undefined;
  launch(config: FleeceConfig, dir: string, startTimeoutMs: number): Promise<FleeceSetup>;
}

const unix = (p: string): Address => ({ kind: 'unix', path: p });

// ------------------------------------------------------------------------------------------
// Processes

interface Started {
  procs: ManagedProcess[];
  qmp?: QmpClient;
}

function makeSetup(started: Started, live: ExportRef, snapshot: ExportRef, description: string, graph: Graph, main: ManagedProcess, temp?: string): FleeceSetup {
  return {
    ...(temp ? { temp } : {}),
    ...(started.qmp ? { qmp: started.qmp } : {}),
    live,
    snapshot,
    description,
    graph,
    exited: () => (main.hasExited ? main.exitStatus : undefined),
    logs: () => started.procs.map((p) => `--- ${p.label} (${p.exitStatus})\n${p.output.trim()}`).join('\n'),
    stop: async () => {
      started.qmp?.close();
      for (const p of [...started.procs].reverse()) await p.stop();
    },
  };
}

async function guarded<T>(started: Started, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    started.qmp?.close();
    for (const p of [...started.procs].reverse()) await p.stop();
    const logs = started.procs.map((p) => `--- ${p.label} (${p.exitStatus})\n${p.output.trim()}`).join('\n');
    throw new HarnessError(`${(e as Error).message}${logs ? `\n${logs}` : ''}`);
  }
}

/** nbdkit serving the source image with a read delay: the widened race window under QEMU. */
async function startDelayedSource(dir: string, image: string, delayMs: number, started: Started, timeoutMs: number): Promise<string> {
  const sock = path.join(dir, 'delay.sock');
  const p = ManagedProcess.spawn('nbdkit --filter=delay', 'nbdkit', ['-f', '-U', sock, '--filter=delay', 'file', image, `rdelay=${delayMs}ms`]);
  started.procs.push(p);
  await waitListening(unix(sock), p, timeoutMs);
  return sock;
}

// ------------------------------------------------------------------------------------------
// The reference: fleece serve with qemu-storage-daemon's command line

/** A known-bad option of the reference: `racy` is the backup job's
 * x-unserialized-target-writes (legacy graph), `hbitmap-status` copy-before-write's
 * x-hbitmap-status-bug (modern graph). */
type ReferenceBug = 'racy' | 'hbitmap-status';

function referenceFlavor(name: string, graph: 'modern' | 'legacy', bug?: ReferenceBug, tls?: FleeceTls): FleeceFlavor {
  const racy = bug === 'racy';
  const hbitmapBug = bug === 'hbitmap-status';
  return {
    name,
    graph,
    // The legacy temp is a qcow2 image, made by qemu-img as in §5.2.
    peers: [...(tls ? ['certtool', 'psktool'] : []), ...(graph === 'legacy' ? ['qemu-img'] : [])],
    summary: tls
      ? `fleece serve, copy-before-write + snapshot-access, NBD over ${tls} TLS (qemu-storage-daemon's --object tls-creds-${tls} and --nbd-server tls-creds)`
      : racy
      ? 'fleece serve, legacy graph with the UNSAFE x-unserialized-target-writes (the pre-3.0 race, known bad)'
      : hbitmapBug
        ? "fleece serve, copy-before-write + snapshot-access with the UNSAFE x-hbitmap-status-bug (QEMU 7.2's hbitmap_status, findings F1/F3, known bad)"
        : graph === 'modern'
          ? 'fleece serve, copy-before-write + snapshot-access (docs/requirements/qemu-fleecing.md §5.1, raw for qcow2)'
          : 'fleece serve, blockdev-backup sync=none into a qcow2 temp backed by the source (§5.2)',
    unsupported(c) {
      if (graph === 'legacy' && (c.bitmap || c.snapshotDiscard || c.cbwError)) return 'cbw bitmap, snapshot discard and on-cbw-error exist only with copy-before-write + snapshot-access (the modern graph)';
      if (c.bitmap && (c.cbwError || c.snapshotDiscard)) return 'the bitmap set-up builds the plain modern graph only';
      return undefined;
    },
    async launch(c, dir, timeoutMs) {
      const content = CONTENTS[c.content]!;
      const src = path.join(dir, 'src.raw');
      const tmp = path.join(dir, 'tmp.raw');
      writeRaw(src, content);
      fs.writeFileSync(tmp, '');
      fs.truncateSync(tmp, content.size);
      const nbd = path.join(dir, 'nbd.sock');
      const qmp = path.join(dir, 'qmp.sock');
      const t = tlsSetup(tls, dir);
      const args: string[] = [path.join(REPO, 'bin/fleece.mjs'), 'serve', ...t.objects];
      const bd = (s: string) => args.push('--blockdev', s);
      if (c.sourceReadDelayMs) {
        bd(`driver=file,node-name=source-file,filename=${src}`);
        bd(`driver=delay,node-name=source,file=source-file,read-delay-ms=${c.sourceReadDelayMs}`);
      } else bd(`driver=file,node-name=source,filename=${src}`);
      if (graph === 'modern' && c.bitmap) {
        // Raw images carry no persistent bitmap: add bitmap0 over QMP, dirty it by writing the
        // content again through a seed export, then build cbw (bitmap=bitmap0) and
        // snapshot-access over QMP (§5.1 bitmap variant; the QMP order of §5.1's last note).
        bd(`driver=file,node-name=temp,filename=${tmp}`);
        args.push('--nbd-server', `addr.type=unix,addr.path=${nbd}${t.suffix}`);
        args.push('--export', 'type=nbd,id=exp-seed,node-name=source,name=seed,writable=on');
      } else if (graph === 'modern') {
        const unmap = c.snapshotDiscard && !c.discardIgnored ? ',discard=unmap' : '';
        if (c.cbwError) {
          bd(JSON.stringify({ driver: 'blkdebug', 'node-name': 'temp', image: { driver: 'file', filename: tmp }, 'inject-error': [{ event: 'write_aio', errno: c.cbwErrno ?? 5, once: true }] }));
        } else bd(`driver=file,node-name=temp,filename=${tmp}${unmap}`);
        bd(`driver=copy-before-write,node-name=fl-cbw,file=source,target=temp${c.cbwError ? `,on-cbw-error=${c.cbwError}` : ''}${hbitmapBug ? ',x-hbitmap-status-bug=on' : ''}${c.noCopyReset ? ',x-no-copy-reset=on' : ''}${c.copyErrorEio ? ',x-copy-error-eio=on' : ''}`);
        bd(`driver=snapshot-access,node-name=fl-access,file=fl-cbw${unmap}`);
        args.push('--nbd-server', `addr.type=unix,addr.path=${nbd}${t.suffix}`);
        args.push('--export', 'type=nbd,id=exp-live,node-name=fl-cbw,name=live,writable=on');
        args.push('--export', `type=nbd,id=exp-fleece,node-name=fl-access,name=fleece${c.snapshotDiscard ? ',writable=on' : ''}`);
      } else {
        const temp = path.join(dir, 'tmp.qcow2');
        execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', temp, String(content.size)], { stdio: 'pipe' });
        bd(`driver=qcow2,node-name=temp,file.driver=file,file.filename=${temp},backing=source`);
        args.push('--nbd-server', `addr.type=unix,addr.path=${nbd}${t.suffix}`);
        args.push('--export', 'type=nbd,id=exp-live,node-name=source,name=live,writable=on');
      }
      args.push('--chardev', `socket,id=qmp0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=qmp0');
      const started: Started = { procs: [] };
      const proc = new ManagedProcess('fleece serve', spawn(process.execPath, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] }));
      started.procs.push(proc);
      return guarded(started, async () => {
        await waitListening(unix(nbd), proc, Math.max(timeoutMs, 20_000));
        await waitFile(qmp, proc, timeoutMs);
        if (graph === 'legacy') {
          started.qmp = await QmpClient.connect(qmp);
          await started.qmp.ok('blockdev-backup', { 'job-id': 'fleecing', device: 'source', target: 'temp', sync: 'none', ...(racy ? { 'x-unserialized-target-writes': true } : {}), ...(c.noJobProgress ? { 'x-no-job-progress': true } : {}) });
          await started.qmp.ok('block-export-add', { type: 'nbd', id: 'exp-fleece', 'node-name': 'temp', name: 'fleece' });
        } else if (c.bitmap) {
          const q = (started.qmp = await QmpClient.connect(qmp));
          await q.ok('block-dirty-bitmap-add', { node: 'source', name: 'bitmap0' });
          await seedThroughNbd(unix(nbd), 'seed', content, timeoutMs, t.creds);
          await q.ok('block-export-del', { id: 'exp-seed', mode: 'hard' });
          await q.ok('blockdev-add', { driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'source', target: 'temp', bitmap: { node: 'source', name: 'bitmap0' }, ...(hbitmapBug ? { 'x-hbitmap-status-bug': true } : {}) });
          await q.ok('blockdev-add', { driver: 'snapshot-access', 'node-name': 'fl-access', file: 'fl-cbw' });
          await q.ok('block-export-add', { type: 'nbd', id: 'exp-live', 'node-name': 'fl-cbw', name: 'live', writable: true });
          await q.ok('block-export-add', { type: 'nbd', id: 'exp-fleece', 'node-name': 'fl-access', name: 'fleece' });
        }
        return makeSetup(started, { address: unix(nbd), name: 'live', tls: t.creds }, { address: unix(nbd), name: 'fleece', tls: t.creds }, `${this.summary}; ${describeConfig(c)}`, graph, proc, graph === 'modern' && !c.cbwError ? tmp : undefined);
      });
    },
  };
}

/** Writes the content's regions through an NBD export (so a dirty bitmap records them). */
async function seedThroughNbd(address: Address, name: string, content: Content, timeoutMs: number, tls?: TlsClientConfig): Promise<void> {
  const { conn } = await open(address, { exportName: name, timeoutMs: Math.max(timeoutMs, 5000), tls });
  try {
    for (const r of content.regions) {
      const reply = await conn.request({ type: Cmd.WRITE, offset: r.offset, payload: Buffer.alloc(r.length, r.byte) });
      if (reply.error) throw new HarnessError(`seeding the source for the bitmap set-up: write of ${r.length} bytes at ${r.offset} failed (NBD error ${reply.error})`);
    }
  } finally {
    conn.close();
  }
}

// ------------------------------------------------------------------------------------------
// QEMU: qemu-storage-daemon with the verified 7.2 command lines

function qemuImg(args: string[]): void {
  requirePeer(peerCommand('qemu-img'));
  recordStarted(`qemu-img: ${[peerCommand('qemu-img'), ...args].join(' ')}`);
  execFileSync(peerCommand('qemu-img'), args, { stdio: 'pipe' });
}

/** A qcow2 source holding `content`; with `bitmap`, a persistent bitmap0 added before the content
 * is written, so exactly the content's clusters are dirty (image-fleecing's bitmap variant). */
function qcow2Source(file: string, raw: string, content: Content, bitmap: boolean): void {
  if (!bitmap) {
    qemuImg(['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, file]);
    return;
  }
  qemuImg(['create', '-q', '-f', 'qcow2', file, String(content.size)]);
  qemuImg(['bitmap', '--add', file, 'bitmap0']);
  requirePeer(peerCommand('qemu-io'));
  const ioArgs = ['-f', 'qcow2', ...qemuIoWrites(content).flatMap((w) => ['-c', w]), file];
  recordStarted(`qemu-io: ${[peerCommand('qemu-io'), ...ioArgs].join(' ')}`);
  execFileSync(peerCommand('qemu-io'), ioArgs, { stdio: 'pipe' });
}

function qemuFlavor(name: string, graph: 'modern' | 'legacy', tls?: FleeceTls): FleeceFlavor {
  return {
    name,
    graph,
    peers: ['qemu-storage-daemon', 'qemu-img', 'qemu-io', ...(tls ? ['certtool', 'psktool'] : [])],
    summary: tls
      ? `qemu-storage-daemon, copy-before-write + snapshot-access (§5.1), NBD over ${tls} TLS (--object tls-creds-${tls}, --nbd-server tls-creds)`
      : graph === 'modern'
        ? 'qemu-storage-daemon, copy-before-write + snapshot-access (docs/requirements/qemu-fleecing.md §5.1)'
        : 'qemu-storage-daemon, blockdev-backup sync=none into a qcow2 temp backed by the source (§5.2)',
    unsupported(c) {
      if (graph === 'legacy' && (c.bitmap || c.snapshotDiscard || c.cbwError)) return 'cbw bitmap, snapshot discard and on-cbw-error exist only with copy-before-write + snapshot-access (the modern graph)';
      if (c.bitmap && c.sourceReadDelayMs) return 'a bitmap needs the qcow2 source, a delay the NBD source';
      if (c.noCopyReset || c.noJobProgress || c.copyErrorEio) return 'x-no-copy-reset, x-no-job-progress and x-copy-error-eio are UNSAFE options of the reference only';
      return undefined;
    },
    async launch(c, dir, timeoutMs) {
      for (const p of this.peers) requirePeer(peerCommand(p));
      const content = CONTENTS[c.content]!;
      const raw = path.join(dir, 'src.raw');
      writeRaw(raw, content);
      const nbd = path.join(dir, 'nbd.sock');
      const qmp = path.join(dir, 'qmp.sock');
      const started: Started = { procs: [] };
      const t = tlsSetup(tls, dir);
      let tempFile: string | undefined;
      return guarded(started, async () => {
        const args: string[] = [...t.objects];
        const bd = (s: string) => args.push('--blockdev', s);
        if (c.sourceReadDelayMs) {
          requirePeer('nbdkit');
          const sock = await startDelayedSource(dir, raw, c.sourceReadDelayMs, started, timeoutMs);
          bd(`driver=nbd,node-name=source,server.type=unix,server.path=${sock}`);
        } else {
          const q = path.join(dir, 'src.qcow2');
          qcow2Source(q, raw, content, c.bitmap ?? false);
          bd(`driver=qcow2,node-name=source,file.driver=file,file.filename=${q}`);
        }
        if (graph === 'modern') {
          const tmp = path.join(dir, 'tmp.raw');
          if (!c.cbwError) tempFile = tmp;
          qemuImg(['create', '-q', '-f', 'raw', tmp, String(content.size)]);
          const unmap = c.snapshotDiscard && !c.discardIgnored ? ',discard=unmap' : '';
          if (c.cbwError) {
            // blkdebug raises write_aio only for writes its parent format driver announces, so
            // the target is raw over blkdebug over the file, as in iotest copy-before-write (§4.2).
            bd(JSON.stringify({
              driver: 'raw', 'node-name': 'temp',
              file: { driver: 'blkdebug', image: { driver: 'file', filename: tmp }, 'inject-error': [{ event: 'write_aio', errno: c.cbwErrno ?? 5, once: true }] },
            }));
          } else bd(`driver=file,node-name=temp,filename=${tmp}${unmap}`);
          const bitmap = c.bitmap ? ',bitmap.node=source,bitmap.name=bitmap0' : '';
          bd(`driver=copy-before-write,node-name=fl-cbw,file=source,target=temp${bitmap}${c.cbwError ? `,on-cbw-error=${c.cbwError}` : ''}`);
          bd(`driver=snapshot-access,node-name=fl-access,file=fl-cbw${unmap}`);
          args.push('--nbd-server', `addr.type=unix,addr.path=${nbd}${t.suffix}`);
          args.push('--export', 'type=nbd,id=exp-live,node-name=fl-cbw,name=live,writable=on');
          args.push('--export', `type=nbd,id=exp-fleece,node-name=fl-access,name=fleece${c.snapshotDiscard ? ',writable=on' : ''}`);
        } else {
          const tmp = path.join(dir, 'tmp.qcow2');
          qemuImg(['create', '-q', '-f', 'qcow2', tmp, String(content.size)]);
          bd(`driver=qcow2,node-name=temp,file.driver=file,file.filename=${tmp},backing=source`);
          args.push('--nbd-server', `addr.type=unix,addr.path=${nbd}${t.suffix}`);
          args.push('--export', 'type=nbd,id=exp-live,node-name=source,name=live,writable=on');
        }
        args.push('--chardev', `socket,id=qmp0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=qmp0');
        const proc = ManagedProcess.spawn('qemu-storage-daemon', 'qemu-storage-daemon', args);
        started.procs.push(proc);
        await waitListening(unix(nbd), proc, timeoutMs);
        await waitFile(qmp, proc, timeoutMs);
        if (graph === 'legacy') {
          started.qmp = await QmpClient.connect(qmp);
          for (const [cmd, a] of [
            ['blockdev-backup', { 'job-id': 'fleecing', device: 'source', target: 'temp', sync: 'none' }],
            ['block-export-add', { type: 'nbd', id: 'exp-fleece', 'node-name': 'temp', name: 'fleece' }],
          ] as const) {
            recordStarted(`qemu-storage-daemon QMP: ${JSON.stringify({ execute: cmd, arguments: a })}`);
            await started.qmp.ok(cmd, a);
          }
        }
        return makeSetup(started, { address: unix(nbd), name: 'live', tls: t.creds }, { address: unix(nbd), name: 'fleece', tls: t.creds }, `${this.summary}; ${describeConfig(c)}`, graph, proc, tempFile);
      });
    },
  };
}

// ------------------------------------------------------------------------------------------
// External: --live URI --snapshot URI

/** A fleecing setup the user runs. The runner cannot know its content at snapshot time, so it
 * reads the snapshot once first and uses that as the shadow copy (see FleeceLab.external). */
export function externalFlavor(liveUri: string, snapshotUri: string): FleeceFlavor {
  const live = parseNbdUri(liveUri);
  const snapshot = parseNbdUri(snapshotUri);
  return {
    name: `--live ${liveUri} --snapshot ${snapshotUri}`,
    graph: 'external',
    peers: [],
    summary: 'a fleecing setup started by the user',
    unsupported(c) {
      if (c.bitmap || c.snapshotDiscard || c.cbwError || c.sourceReadDelayMs) return 'the runner cannot reconfigure a setup it did not start (delay, bitmap, discard, injected errors)';
      return undefined;
    },
    async launch() {
      return { live, snapshot, description: `live ${liveUri}, snapshot ${snapshotUri}`, graph: 'external', exited: () => undefined, logs: () => '', stop: async () => undefined };
    },
  };
}

export function describeConfig(c: FleeceConfig): string {
  const parts = [`content ${c.content}`];
  if (c.sourceReadDelayMs) parts.push(`source read delay ${c.sourceReadDelayMs} ms`);
  if (c.bitmap) parts.push('cbw bitmap');
  if (c.snapshotDiscard) parts.push('snapshot discard=unmap, writable snapshot export');
  if (c.cbwError) parts.push(`blkdebug ${c.cbwErrno === 28 ? 'ENOSPC' : c.cbwErrno === undefined || c.cbwErrno === 5 ? 'EIO' : `errno ${c.cbwErrno}`} on the first target write, on-cbw-error=${c.cbwError}`);
  if (c.discardIgnored) parts.push('snapshot-access left at discard=ignore');
  if (c.noCopyReset) parts.push('copy-before-write with the UNSAFE x-no-copy-reset');
  if (c.noJobProgress) parts.push('blockdev-backup with the UNSAFE x-no-job-progress');
  if (c.copyErrorEio) parts.push('copy-before-write with the UNSAFE x-copy-error-eio');
  return parts.join(', ');
}

/** A known-bad variant of a target for tests: the same launch with the configuration changed
 * (a dropped bitmap, a flipped on-cbw-error policy, discard=ignore) or the snapshot export
 * replaced by the live one. Every check of the suite is shown failing on one of these. */
export function mutantFlavor(base: FleeceFlavor, name: string, m: { config?: (c: FleeceConfig) => FleeceConfig; snapshotIsLive?: boolean }): FleeceFlavor {
  return {
    ...base,
    name,
    summary: `${base.summary} [known bad: ${name}]`,
    unsupported: (c) => base.unsupported(m.config ? m.config(c) : c),
    async launch(c, dir, timeoutMs) {
      const s = await base.launch(m.config ? m.config(c) : c, dir, timeoutMs);
      return m.snapshotIsLive ? { ...s, snapshot: s.live, exited: s.exited, logs: s.logs, stop: s.stop } : s;
    },
  };
}

export const FLAVORS: readonly FleeceFlavor[] = [
  referenceFlavor('reference', 'modern'),
  referenceFlavor('reference-legacy', 'legacy'),
  referenceFlavor('reference-racy', 'legacy', 'racy'),
  referenceFlavor('reference-hbitmap-status', 'modern', 'hbitmap-status'),
  qemuFlavor('qemu', 'modern'),
  qemuFlavor('qemu-legacy', 'legacy'),
  referenceFlavor('reference-tls-x509', 'modern', undefined, 'x509'),
  referenceFlavor('reference-tls-psk', 'modern', undefined, 'psk'),
  qemuFlavor('qemu-tls-x509', 'modern', 'x509'),
  qemuFlavor('qemu-tls-psk', 'modern', 'psk'),
];

export function findFlavor(name: string): FleeceFlavor | undefined {
  return FLAVORS.find((f) => f.name === name);
}

// ------------------------------------------------------------------------------------------
// The lab: what a fleecing RunningTarget hands to the suite

/** Starts setups for cases in fresh subdirectories of the runner's work dir; stops them all. */
export class FleeceLab {
  private readonly lab: Lab<FleeceSetup>;
  constructor(
    readonly flavor: FleeceFlavor,
    workDir: string,
    readonly startTimeoutMs: number,
  ) {
    this.lab = new Lab(workDir);
  }

  launch(config: FleeceConfig): Promise<FleeceSetup> {
    return this.lab.launch(
      (dir) => this.flavor.launch(config, dir, this.startTimeoutMs),
      (s, stop) => ({
        ...(s.temp ? { temp: s.temp } : {}),
        ...(s.qmp ? { qmp: s.qmp } : {}),
        live: s.live,
        snapshot: s.snapshot,
        description: s.description,
        graph: s.graph,
        exited: () => s.exited(),
        logs: () => s.logs(),
        stop,
      }),
    );
  }

  stopAll(): Promise<void> {
    return this.lab.stopAll();
  }
}

/** The runner's view: a TargetDef whose RunningTarget carries the lab in `extra.fleecing`. */
export function fleeceTargetDef(flavor: FleeceFlavor): TargetDef {
  return {
    name: flavor.name,
    summary: flavor.summary,
    peers: flavor.peers,
    async start(opts: TargetStartOptions): Promise<RunningTarget> {
      for (const p of flavor.peers) requirePeer(p);
      const lab = new FleeceLab(flavor, opts.workDir, Math.max(opts.startTimeoutMs, 10_000));
      return {
        name: flavor.name,
        description: flavor.summary,
        exports: {},
        extra: { fleecing: lab },
        logs: () => '',
        stop: () => lab.stopAll(),
      };
    },
  };
}

export function labOf(target: RunningTarget): FleeceLab {
  const lab = target.extra?.fleecing;
  if (!(lab instanceof FleeceLab)) {
    throw new HarnessError(`target ${target.name} is not a fleecing target: use ${FLAVORS.map((f) => f.name).join(', ')}, or --live URI --snapshot URI`);
  }
  return lab;
}
