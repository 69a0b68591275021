// `fleece serve`: the reference storage daemon with qemu-storage-daemon's command line.
// Exit codes, as qemu-storage-daemon's: 0 after quit/SIGTERM, 1 when the command line or the
// configuration fails (bad option, unknown driver, permission conflict).
import type { Subcommand } from '../../../cli/main.ts';
import { isBlockError } from '../block/errors.ts';
import { imageLocking } from '../block/locks.ts';
import { NbdServerError } from '../nbd/server.ts';
import { sendBufferTuning } from '../nbd/sockopt.ts';
import { QmpError } from '../qmp/dispatcher.ts';
import { DEFAULT_HANDSHAKE_MAX_SECONDS, USAGE, UsageError, parseArgs } from './args.ts';
import { Daemon } from './daemon.ts';

export interface ServeIo {
  readonly stdout: { write(s: string): unknown };
  readonly stderr: { write(s: string): unknown };
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly pid: number;
}

/** Runs the daemon until quit or a signal. `io` is injectable so configuration failures can be
 * tested in-process; a running daemon always uses the real process. */
export async function serve(argv: string[], io: ServeIo = process): Promise<number> {
  let config;
  try {
    config = parseArgs(argv, io.env, io.pid);
  } catch (e) {
    if (e instanceof UsageError) {
      // qemu-storage-daemon exits 1 for every command-line error.
      io.stderr.write(`fleece serve: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  if (config.help) {
    io.stdout.write(USAGE);
    return 0;
  }
  if (config.version) {
    io.stdout.write('fleece serve (reference storage daemon), QMP-compatible with qemu-storage-daemon 7.2\n');
    return 0;
  }
  const verbose = process.env.FLEECE_SERVE_DEBUG === '1';
  const daemon = new Daemon({ log: verbose ? (m) => io.stderr.write(`fleece serve: ${m}\n`) : undefined });
  // Not fatal (the server runs with the kernel's default), but slower for unix clients: say so.
  if (!sendBufferTuning.available && io.env.FLEECE_NBD_UNIX_SNDBUF !== '0') {
    io.stderr.write(`fleece serve: warning: unix connections keep the kernel's send buffer: ${sendBufferTuning.reason}\n`);
  }
  // Not fatal either, but other processes' locks go unseen and ours untaken: say so.
  if (!imageLocking.available) {
    io.stderr.write(`fleece serve: warning: image locking is off (file nodes with locking=auto do not lock, locking=on is refused): ${imageLocking.reason}\n`);
  }
  try {
    if (config.activationFds.length > 0) {
      // sd_listen_fds(3): the first handed-over fd is the NBD listening socket.
      delete process.env.LISTEN_PID;
      delete process.env.LISTEN_FDS;
      delete process.env.LISTEN_FDNAMES;
      await daemon.startNbdServer({ addr: { type: 'fd', fd: config.activationFds[0]! }, maxConnections: 0, handshakeMaxSeconds: DEFAULT_HANDSHAKE_MAX_SECONDS });
    }
    for (const action of config.actions) {
      try {
        await daemon.apply(action);
      } catch (e) {
        // qemu-storage-daemon: "--nbd-server addr.type=unix,addr.path=P: Failed to bind socket ...".
        if (e instanceof Error && action.source && !e.message.startsWith(`${action.source}: `)) e.message = `${action.source}: ${e.message}`;
        throw e;
      }
      // A kernel-chosen TCP port is only useful if the user learns it.
      if (action.kind === 'nbd-server' && action.options.addr.type === 'inet' && action.options.addr.port === 0) {
        const a = daemon.nbdServerAddress;
        io.stderr.write(`fleece serve: NBD server listening on ${a?.host}:${a?.port}\n`);
      }
    }
    if (config.pidfile) Daemon.writePidfile(config.pidfile);
  } catch (e) {
    const known = e instanceof UsageError || e instanceof QmpError || e instanceof NbdServerError || isBlockError(e);
    io.stderr.write(`fleece serve: ${known ? (e as Error).message : String((e as Error).stack ?? e)}\n`);
    await daemon.close().catch(() => {});
    return 1;
  }
  // With nothing to serve the daemon still runs until quit or a signal, as qemu-storage-daemon
  // does (Node would otherwise exit with 13, an unsettled top-level await).
  const keepAlive = setInterval(() => {}, 1 << 30);
  const signalled = new Promise<void>((resolve) => {
    process.once('SIGTERM', () => resolve());
    process.once('SIGINT', () => resolve());
    process.once('SIGHUP', () => resolve());
  });
  await Promise.race([daemon.quitting, signalled]);
  clearInterval(keepAlive);
  await daemon.close().catch((e) => process.stderr.write(`fleece serve: while closing: ${String(e)}\n`));
  if (config.pidfile) Daemon.removePidfile(config.pidfile);
  // Lingering sockets or timers must not keep a quit daemon alive.
  setImmediate(() => process.exit(0));
  return 0;
}

const command: Subcommand = {
  summary: 'run the reference storage daemon (qemu-storage-daemon command line, NBD, QMP)',
  run: serve,
};
export default command;
