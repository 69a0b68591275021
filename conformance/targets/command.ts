// A server the runner starts itself: `--target '[ CMD ARGS ]'`, as nbdinfo(1) and nbdcopy(1) take
// one. Two ways to reach it:
// - placeholders: `$unixsocket` (a socket path the runner picks and connects to) or `$port` (a free
//   TCP port on 127.0.0.1) in an argument;
// - otherwise systemd socket activation (sd_listen_fds(3)): the runner listens on a unix socket in
//   its temp dir and hands it over as fd 3 with LISTEN_FDS=1 and LISTEN_PID = the server's pid, as
//   libnbd's nbd_connect_systemd_socket_activation does (no LISTEN_FDNAMES: libnbd sets none by
//   default either).
// `$image` is a scratch raw image the runner writes with its generated content (image.ts): the
// expected data is known and the cases may write there. Without it the storage is the user's, and
// nothing in it is written unless --allow-writes says so (the rule of URI targets).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Address } from '../nbd/client.ts';
import { NbdConnection, formatAddress } from '../nbd/client.ts';
import { Cmd, Opt } from '../nbd/constants.ts';
import { NbdClientError } from '../nbd/errors.ts';
import { greet, negotiate } from '../nbd/session.ts';
import { HarnessError } from './errors.ts';
import { DEFAULT_LAYOUT, writeImage } from './image.ts';
import { ManagedProcess, freePort } from './process.ts';
import type { RunningTarget, TargetDef, TargetStartOptions } from './types.ts';

/** A `[ CMD ARGS ]` target that cannot be understood (a usage error: exit 2). */
export class CommandTargetError extends Error {
  override readonly name = 'CommandTargetError';
}

export const PLACEHOLDERS = ['unixsocket', 'port', 'image'] as const;
type Placeholder = (typeof PLACEHOLDERS)[number];

export function isCommandTarget(spec: string): boolean {
  return spec.trimStart().startsWith('[');
}

/** Splits a command line as sh does for words: blanks separate, '...' is literal, "..." keeps
 * \" \\ \$ \` escapes, a backslash outside quotes escapes the next character. No expansion: `$`
 * stays for the placeholders. */
export function splitWords(text: string, where: string): string[] {
  const words: string[] = [];
  let cur: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === ' ' || ch === '\t' || ch === '\n') {
      if (cur !== undefined) words.push(cur);
      cur = undefined;
    } else if (ch === "'") {
      const end = text.indexOf("'", i + 1);
      if (end < 0) throw new CommandTargetError(`${where}: unterminated ' (single quote) at character ${i + 1}`);
      cur = (cur ?? '') + text.slice(i + 1, end);
      i = end;
    } else if (ch === '"') {
      let s = '';
      let j = i + 1;
      for (; j < text.length && text[j] !== '"'; j++) {
        if (text[j] === '\\' && j + 1 < text.length && '"\\$`'.includes(text[j + 1]!)) j++;
        s += text[j];
      }
      if (j >= text.length) throw new CommandTargetError(`${where}: unterminated " (double quote) at character ${i + 1}`);
      cur = (cur ?? '') + s;
      i = j;
    } else if (ch === '\\') {
      if (i + 1 >= text.length) throw new CommandTargetError(`${where}: a backslash ends the command`);
      cur = (cur ?? '') + text[++i];
    } else cur = (cur ?? '') + ch;
  }
  if (cur !== undefined) words.push(cur);
  return words;
}

/** A word as sh would read it back (for names and re-run lines). `$` needs no quoting: the runner
 * splits the command itself, no shell expands it. */
export function quoteWord(w: string): string {
  return /^[A-Za-z0-9_@%+=:,./$-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`;
}

/** The canonical target spec for a command given as separate argv words between `[` and `]`. */
export function commandSpec(words: readonly string[]): string {
  return `[ ${words.map(quoteWord).join(' ')} ]`;
}

/** `[ CMD ARGS ]` → argv; usage errors name what is wrong. */
export function parseCommandTarget(spec: string): string[] {
  const where = `--target ${spec}`;
  const words = splitWords(spec, where);
  if (words[0] !== '[') throw new CommandTargetError(`${where}: a command target starts with '[' as a word of its own: '[ CMD ARGS ]'`);
  if (words[words.length - 1] !== ']' || words.length < 2) throw new CommandTargetError(`${where}: unterminated '[': the command ends with ']' as a word of its own ('[ CMD ARGS ]')`);
  const argv = words.slice(1, -1);
  if (argv.length === 0) throw new CommandTargetError(`${where}: no command between '[' and ']'`);
  const inner = argv.indexOf(']');
  if (inner >= 0) throw new CommandTargetError(`${where}: ']' before the end (one command per --target)`);
  for (const w of argv) {
    for (const m of w.matchAll(/\$([a-z][a-z0-9_]*)/g)) {
      if (!(PLACEHOLDERS as readonly string[]).includes(m[1]!)) throw new CommandTargetError(`${where}: unknown placeholder $${m[1]} (known: ${PLACEHOLDERS.map((p) => `$${p}`).join(', ')})`);
    }
  }
  return argv;
}

const uses = (argv: readonly string[], p: Placeholder): boolean => argv.some((w) => w.includes(`$${p}`));

/** Whether the command's storage is the runner's own scratch image (`$image`): writes allowed. */
export function commandOwnsStorage(spec: string): boolean {
  return uses(parseCommandTarget(spec), 'image');
}

/** CMD's absolute path on PATH, if it is there. */
function which(cmd: string): string | undefined {
  if (cmd.includes('/')) return path.resolve(cmd);
  const r = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { encoding: 'utf8' });
  return (r.status === 0 && r.stdout.trim()) || undefined;
}

/** Where CMD is, or why it cannot be run: a clear error before anything starts. */
function resolveCommand(cmd: string): string {
  if (cmd.includes('/')) {
    try {
      fs.accessSync(cmd, fs.constants.X_OK);
      return cmd;
    } catch (e) {
      throw new HarnessError(`command '${cmd}' ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'is not executable'}`);
    }
  }
  const found = which(cmd);
  if (!found) throw new HarnessError(`command '${cmd}' not found on PATH`);
  return found;
}

/** The last lines a process printed, for one harness error instead of a flood. */
const tail = (p: ManagedProcess, n = 8): string => {
  const t = p.output.trim().split('\n').slice(-n).join('\n');
  return t ? `; its last output:\n${t}` : ' (it printed nothing)';
};

/** Connects, greets and lists the exports (NBD_OPT_LIST, docs/requirements/nbd.md §1.6). */
async function listExports(address: Address, timeoutMs: number): Promise<string[] | undefined> {
  const conn = await NbdConnection.connect(address, { timeoutMs });
  try {
    await greet(conn);
    const replies = await conn.option(Opt.LIST);
    const last = replies[replies.length - 1];
    // A clean end of the handshake, so the server logs no failed negotiation.
    conn.sendOption(Opt.ABORT);
    await conn.readOptionReply(Opt.ABORT).catch(() => undefined);
    if (last?.body.reply !== 'ack') return undefined;
    return replies.flatMap((r) => (r.body.reply === 'server' ? [r.body.name] : []));
  } finally {
    conn.close();
  }
}

/** Waits until the server greets on `address` (with socket activation the socket accepts before
 * the server runs, so a bare connect proves nothing), then chooses the export. */
async function ready(address: Address, proc: ManagedProcess, timeoutMs: number): Promise<{ name: string; listed: string[] | undefined }> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    if (proc.hasExited && proc.exitStatus === 'exit code 0' && (await stillServes(address))) throw daemonized(proc);
    if (proc.hasExited) throw new HarnessError(`${quoteWord(proc.label)} exited (${proc.exitStatus}) before serving NBD on ${formatAddress(address)}${tail(proc)}`);
    try {
      const listed = await listExports(address, Math.min(5000, Math.max(500, deadline - Date.now())));
      // One export listed: that one. Otherwise the default export "" (proto.md: an empty name
      // selects the server's default, which fleece serve and nbdkit map to their first export).
      const name = listed && listed.length === 1 ? listed[0]! : '';
      return { name, listed };
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > deadline) throw new HarnessError(`no NBD greeting on ${formatAddress(address)} within ${timeoutMs} ms (${last})${tail(proc)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Listens on `sockPath` and returns the listening fd for the child; the caller closes the server
 * once the child has it. libuv unlinks a unix socket's path on close, so the socket is made at a
 * temporary path and renamed: the inode, and the child's listener, stay reachable at `sockPath`. */
async function activationSocket(sockPath: string): Promise<{ fd: number; close: () => Promise<void> }> {
  const tmp = `${sockPath}.bind`;
  const srv = net.createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(tmp, () => resolve());
  });
  const fd = (srv as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    srv.close();
    throw new HarnessError('socket activation: this Node exposes no listening fd');
  }
  return {
    fd,
    close: async () => {
      fs.renameSync(tmp, sockPath);
      await new Promise<void>((resolve) => srv.close(() => resolve()));
    },
  };
}

/** A fresh connection through NBD_OPT_GO, so that a server counts it as a client (qemu-nbd
 * without --persistent exits after its last negotiated client, not after a bare greeting). */
async function negotiated(address: Address, exportName: string, timeoutMs: number): Promise<NbdConnection> {
  const conn = await NbdConnection.connect(address, { timeoutMs });
  try {
    await negotiate(conn, { exportName });
    return conn;
  } catch (e) {
    conn.close();
    throw e;
  }
}

/** Ends a session politely (NBD_CMD_DISC) so the server logs nothing odd. */
function disconnect(conn: NbdConnection): void {
  conn.request({ type: Cmd.DISC }).then(
    () => conn.close(),
    () => conn.close(),
  );
}

const exitedSoon = async (proc: ManagedProcess): Promise<boolean> => {
  for (let i = 0; i < 20 && !proc.hasExited; i++) await new Promise((r) => setTimeout(r, 50));
  return proc.hasExited;
};

/** The suites run cases side by side, each with connections of its own: a server that serves one
 * client at a time (qemu-nbd's default --shared=1) or exits after its first (qemu-nbd without
 * --persistent) would make every case fail. Said here, once, with what to change. */
async function servesMany(address: Address, exportName: string, proc: ManagedProcess): Promise<void> {
  const hint = 'the suites open several connections at once and one after another';
  let open: NbdConnection[] = [];
  try {
    open = await Promise.all([negotiated(address, exportName, 3000), negotiated(address, exportName, 3000)]);
  } catch (e) {
    for (const c of open) c.close();
    if (await exitedSoon(proc)) throw new HarnessError(`the server exited (${proc.exitStatus}) after its first connection; ${hint} (qemu-nbd: --persistent)${tail(proc)}`);
    const why = e instanceof NbdClientError && e.kind === 'timeout' ? 'no greeting within 3 s' : (e as Error).message;
    throw new HarnessError(`the server did not greet a second connection while another was open (${why}); ${hint} (qemu-nbd: --shared=N, the default is 1)${tail(proc)}`);
  }
  for (const c of open) disconnect(c);
  let failed: string | undefined;
  try {
    disconnect(await negotiated(address, exportName, 3000));
  } catch (e) {
    failed = (e as Error).message;
  }
  // qemu-nbd without --persistent may still greet while it shuts down after its last client.
  if ((await exitedSoon(proc)) || failed !== undefined) {
    if (proc.hasExited && (await stillServes(address))) throw daemonized(proc);
    throw new HarnessError(`the server stopped serving after its first connections (${proc.hasExited ? proc.exitStatus : failed}); ${hint} (qemu-nbd: --persistent)${tail(proc)}`);
  }
}

/** Whether something still greets on `address` (a server that went to the background). */
async function stillServes(address: Address): Promise<boolean> {
  try {
    (await NbdConnection.connect(address, { timeoutMs: 1000 }).then(async (c) => {
      try {
        await c.readGreeting();
      } finally {
        c.close();
      }
    }));
    return true;
  } catch {
    return false;
  }
}

/** The command forked its server into the background and exited: the runner could neither see
 * it die nor stop it, so it refuses to go on (nbdkit forks unless -f or --exit-with-parent). */
const daemonized = (proc: ManagedProcess) =>
  new HarnessError(`${quoteWord(proc.label)} exited (${proc.exitStatus}) while its server still answers: it went to the background, where the runner can neither watch nor stop it; run it in the foreground (nbdkit: -f or --exit-with-parent; qemu-nbd: no --fork) and stop that server yourself${tail(proc)}`);

export function commandTarget(spec: string, opts: { allowWrites?: boolean } = {}): TargetDef {
  const argv = parseCommandTarget(spec);
  const ownsStorage = uses(argv, 'image');
  const viaSocket = uses(argv, 'unixsocket');
  const viaPort = uses(argv, 'port');
  const activation = !viaSocket && !viaPort;
  const writesAllowed = ownsStorage || opts.allowWrites === true;
  return {
    name: spec,
    summary: `a server the runner starts: ${argv.join(' ')}`,
    // The version recorded is of the binary that runs: the one on PATH, by its path.
    peers: [which(argv[0]!) ?? argv[0]!],
    async start(o: TargetStartOptions): Promise<RunningTarget> {
      const cmd = resolveCommand(argv[0]!);
      const sockPath = path.join(o.workDir, 'nbd.sock');
      const imagePath = path.join(o.workDir, 'image.raw');
      const port = viaPort ? await freePort() : 0;
      if (ownsStorage) writeImage(imagePath, DEFAULT_LAYOUT);
      const values: Record<Placeholder, string> = { unixsocket: sockPath, port: String(port), image: imagePath };
      const args = argv.map((w) => w.replace(/\$(unixsocket|port|image)/g, (_, p: Placeholder) => values[p]));
      const address: Address = viaPort ? { kind: 'tcp', host: '127.0.0.1', port } : { kind: 'unix', path: sockPath };
      // Inherited LISTEN_* would make the server take fds that are not there.
      const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('LISTEN_')));
      let proc: ManagedProcess;
      let shown: string;
      if (activation) {
        const sock = await activationSocket(sockPath);
        // Node cannot set LISTEN_PID to the child's pid before exec: sh exports its own pid ($$)
        // and execs the server, which keeps that pid.
        const child = spawn('sh', ['-c', 'LISTEN_PID=$$; LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; exec "$@"', 'sh', cmd, ...args.slice(1)], { stdio: ['ignore', 'pipe', 'pipe', sock.fd], env });
        proc = new ManagedProcess(argv[0]!, child);
        // The child has its copy of the listener: the runner's own must not accept anything.
        await sock.close().catch(async (e: Error) => {
          await proc.stop();
          throw new HarnessError(`socket activation: could not hand over ${sockPath}: ${e.message}`);
        });
        shown = `LISTEN_FDS=1 LISTEN_PID=${child.pid ?? '?'} ${args.map(quoteWord).join(' ')}  # socket activation: fd 3 listens on ${sockPath}`;
      } else {
        proc = new ManagedProcess(argv[0]!, spawn(cmd, args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env }));
        shown = args.map(quoteWord).join(' ');
      }
      const stop = () => proc.stop();
      try {
        const { name, listed } = await ready(address, proc, Math.max(o.startTimeoutMs, 10_000));
        await servesMany(address, name, proc);
        const ref = { address, name };
        const exportsSaid = listed === undefined ? 'NBD_OPT_LIST refused, default export ""' : listed.length === 1 ? `export "${name}" (the one listed)` : `default export "" (${listed.length} listed)`;
        return {
          name: spec,
          description: `${activation ? 'socket activation' : viaPort ? `TCP 127.0.0.1:${port}` : 'unix socket'}, ${exportsSaid}; ${ownsStorage ? "the runner's scratch image" : writesAllowed ? 'your storage, writes allowed (--allow-writes)' : 'your storage, not written (no --allow-writes)'}`,
          exports: { rw: ref, ro: ref },
          ...(ownsStorage ? { image: DEFAULT_LAYOUT } : {}),
          writesAllowed,
          commands: () => [shown],
          pids: () => (proc.child.pid !== undefined ? [proc.child.pid] : []),
          logs: () => `--- ${proc.label}\n${proc.output}`,
          died: () => (proc.hasExited ? `${proc.label} exited (${proc.exitStatus}): ${proc.output.trim().split('\n').slice(-3).join(' | ')}` : undefined),
          stop,
        };
      } catch (e) {
        await stop();
        throw e;
      }
    },
  };
}

/** For the CLI parsers: `--target [ CMD ARGS ]` as separate argv words from `argv[at]` (the `[`):
 * the canonical spec and the index of the closing `]`. Words in between are the command's, even
 * those that look like options. */
export function commandFromArgv(argv: readonly string[], at: number): { spec: string; end: number } {
  const end = argv.indexOf(']', at + 1);
  if (end < 0) throw new CommandTargetError(`--target [ ${argv.slice(at + 1).map(quoteWord).join(' ')}: unterminated '[': the command ends with ']' as a word of its own ('[ CMD ARGS ]')`);
  const spec = commandSpec(argv.slice(at + 1, end));
  parseCommandTarget(spec);
  return { spec, end };
}

/** One argument for a re-run line the user pastes into sh: quoted when sh would split or
 * expand it (a `[ CMD ]` target holds blanks and `$image`). */
export function shellArg(w: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`;
}
