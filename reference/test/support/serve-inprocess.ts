// `fleece serve ARGV` inside the test process: the same command line, with the daemon's log and
// the NBD server's counters at hand (the TLS tests count refusals and timeouts).
import { parseArgs } from '../../src/daemon/args.ts';
import { Daemon } from '../../src/daemon/daemon.ts';

export type Addr = string | { host: string; port: number };

export interface Served {
  readonly d: Daemon;
  readonly addr: Addr;
  readonly logs: string[];
}

export async function serveInProcess(argv: string[]): Promise<Served> {
  const logs: string[] = [];
  const d = new Daemon({ log: (m) => logs.push(m) });
  try {
    for (const a of parseArgs(argv).actions) await d.apply(a);
  } catch (e) {
    await d.close();
    throw e;
  }
  const b = d.nbdServerAddress;
  const addr: Addr = !b ? '' : b.type === 'unix' ? b.path! : { host: '127.0.0.1', port: b.port! };
  return { d, logs, addr };
}
