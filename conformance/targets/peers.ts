// Which QEMU build the suites test: the paths of qemu-storage-daemon, qemu-nbd, qemu-img and
// qemu-io, from `fleece conform --qemu-... PATH` or FLEECE_QEMU_... (the option wins), else the
// command of that name on PATH. Everything in conformance that starts one of them asks
// peerCommand(). And a log of what was started and sent to set it up (command lines, set-up
// QMP), so each report can say exactly what it tested.
import fs from 'node:fs';
import { HarnessError } from './errors.ts';

export interface PeerPathOption {
  readonly peer: string;
  readonly option: string;
  readonly env: string;
}

export const PEER_PATH_OPTIONS: readonly PeerPathOption[] = [
  { peer: 'qemu-storage-daemon', option: '--qemu-storage-daemon', env: 'FLEECE_QEMU_STORAGE_DAEMON' },
  { peer: 'qemu-nbd', option: '--qemu-nbd', env: 'FLEECE_QEMU_NBD' },
  { peer: 'qemu-img', option: '--qemu-img', env: 'FLEECE_QEMU_IMG' },
  { peer: 'qemu-io', option: '--qemu-io', env: 'FLEECE_QEMU_IO' },
];

const chosen = new Map<string, { path: string; from: string }>();

/** Uses `file` for `peer`; `from` names where it came from ("--qemu-img", "FLEECE_QEMU_IMG"),
 * for the error when it is not an executable file. */
export function setPeerPath(peer: string, file: string, from: string): void {
  let why: string | undefined;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) why = 'not a regular file';
    else fs.accessSync(file, fs.constants.X_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    why ??= code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'not executable' : (e as Error).message;
  }
  if (why) throw new HarnessError(`${from} ${file}: ${why} (the ${peer} to test)`);
  chosen.set(peer, { path: file, from });
}

/** FLEECE_QEMU_* from the environment, for peers no option has set. */
export function peerPathsFromEnv(env: Readonly<Record<string, string | undefined>>): void {
  for (const o of PEER_PATH_OPTIONS) {
    const v = env[o.env];
    if (v && !chosen.has(o.peer)) setPeerPath(o.peer, v, o.env);
  }
}

/** Forgets the chosen paths (tests). */
export function resetPeerPaths(): void {
  chosen.clear();
}

/** The command to run for `peer`: the chosen path, or the name itself. */
export function peerCommand(peer: string): string {
  return chosen.get(peer)?.path ?? peer;
}

/** What was started, in order: "LABEL: argv" and "LABEL QMP: {...}" lines. */
const started: string[] = [];

export function recordStarted(line: string): void {
  started.push(line);
  if (started.length > 10_000) started.splice(0, 5_000);
}

/** Lines recorded since `mark` (a startedMark()), each once. */
export function startedSince(mark: number): string[] {
  return [...new Set(started.slice(mark))];
}

export function startedMark(): number {
  return started.length;
}
