// The I/O edge of the fuzzer: one case over one socket, with the oracle fed every byte each way.
// The driver sends the handshake one message at a time and waits while the oracle says the server
// owes an answer (the session model orders options one at a time), then the request pipeline in
// one go, then half-closes. Silence while an answer is owed, past the timeout, is a hang; a server
// that does not close after the client's EOF leaks the connection and is a hang too.
import fs from 'node:fs';
import net from 'node:net';
import { type Address } from '../nbd/client.ts';
import { Cmd } from '../nbd/constants.ts';
import { open } from '../nbd/session.ts';
import type { NbdConnection } from '../nbd/client.ts';
import { encodeNbdCase, type NbdCase, type QmpCase } from './case.ts';
import { SessionOracle, type Finding } from './oracle.ts';

export function connectRaw(address: Address, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = address.kind === 'unix' ? net.createConnection({ path: address.path }) : net.createConnection({ host: address.host, port: address.port });
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`connect timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(t);
      s.removeAllListeners('error');
      s.setNoDelay(true);
      resolve(s);
    });
    s.once('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
  });
}

export interface CaseOutcome {
  readonly findings: Finding[];
  /** The case reached the transmission phase. */
  readonly transmission: boolean;
  /** The connection could not even be opened (a dead or saturated server). */
  readonly connectError?: string;
  /** Transmission flags the server sent (INFO_EXPORT or the EXPORT_NAME reply). */
  readonly transmissionFlags?: number;
}

/** Runs one NBD case against `address` and judges it. */
export async function runNbdCase(address: Address, c: NbdCase, exportNames: readonly string[], timeoutMs: number): Promise<CaseOutcome> {
  let sock: net.Socket;
  try {
    sock = await connectRaw(address, timeoutMs);
  } catch (e) {
    return { findings: [], transmission: false, connectError: (e as Error).message };
  }
  const oracle = new SessionOracle({ exports: exportNames });
  let wake: (() => void) | undefined;
  const poke = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  sock.on('data', (d: Buffer) => {
    oracle.serverSent(d);
    poke();
  });
  const onClose = () => {
    oracle.serverClosed();
    poke();
  };
  sock.on('end', onClose);
  sock.on('close', onClose);
  sock.on('error', () => undefined); // EPIPE / ECONNRESET: the close event follows

  /** Waits until nothing is owed or the server closed; a timeout while owed is a hang. */
  const settle = async (): Promise<boolean> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const owed = oracle.owed();
      if (owed === undefined || oracle.closed) return true;
      const left = deadline - Date.now();
      if (left <= 0) {
        oracle.findings.push({ kind: 'hang', message: `no answer within ${timeoutMs} ms: the server owes ${owed} (phase ${oracle.phase})` });
        return false;
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  };

  try {
    if (!(await settle())) return { findings: oracle.findings, transmission: false };
    for (const piece of encodeNbdCase(c)) {
      if (oracle.closed || oracle.findings.length) break;
      sock.write(piece);
      oracle.clientSent(piece);
      if (!(await settle())) break;
    }
    const transmission = oracle.phase === 'transmission' || oracle.exportSize !== undefined;
    if (!oracle.findings.some((f) => f.kind === 'hang')) {
      sock.end();
      oracle.clientEof();
      const closed = oracle.closed || (await waitFor(() => oracle.closed, () => (wake = undefined), (w) => (wake = w), timeoutMs));
      if (!closed) oracle.findings.push({ kind: 'hang', message: `the server did not close the connection within ${timeoutMs} ms of the client's EOF (phase ${oracle.phase})` });
    }
    return { findings: oracle.findings, transmission, ...(oracle.exportSize !== undefined ? { transmissionFlags: oracle.transmissionFlags } : {}) };
  } finally {
    sock.destroy();
  }
}

async function waitFor(done: () => boolean, clear: () => void, arm: (w: () => void) => void, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, left);
      arm(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
  clear();
  return true;
}

// ---- the healthy concurrent client -------------------------------------------------------------

/** A well-behaved client on its own connection, reading one known block again and again: if the
 * fuzzing stops it being served, the fuzzed server is failing its other users. */
export class HealthClient {
  private conn: NbdConnection | undefined;
  probes = 0;

  constructor(
    private readonly address: Address,
    private readonly exportName: string,
    private readonly timeoutMs: number,
    /** The content expected at offset 0 (a read-only export of a generated image); without it
     * only being served is checked (the fuzzer may write anywhere on a URI's one export). */
    private readonly expected?: Buffer,
  ) {}

  /** undefined when served correctly; else what went wrong. */
  async probe(): Promise<string | undefined> {
    this.probes++;
    try {
      if (!this.conn || this.conn.isClosed) {
        const had = this.conn !== undefined;
        this.conn = (await open(this.address, { exportName: this.exportName, timeoutMs: this.timeoutMs })).conn;
        if (had) return 'the healthy client\'s connection was closed by the server (reconnected)';
      }
      const r = await this.conn.request({ type: Cmd.READ, offset: 0, length: 4096 });
      if (r.error !== 0) return `the healthy client's READ failed with error ${r.error}`;
      if (this.expected && !this.expected.equals(r.data!)) return "the healthy client's READ of offset 0 returned data other than the image's";
      return undefined;
    } catch (e) {
      this.conn?.close();
      this.conn = undefined;
      return `the healthy client was not served: ${(e as Error).message}`;
    }
  }

  close(): void {
    this.conn?.close();
  }
}

/** Whether a process is alive: /proc says it exists and is neither a zombie nor dead. Unlike
 * the child's exit event, this is synchronous, so a crash is blamed on the case that caused it. */
export function pidAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Resident set size of a process in KiB (Linux /proc), or undefined. */
export function rssKiB(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

// ---- QMP ----------------------------------------------------------------------------------------

function qmpLines(sock: net.Socket, onLine: (l: string) => void): void {
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) onLine(line);
    }
  });
}

/** Checks one QMP server message: a JSON object that is a greeting, a return, an error or an
 * event (qmp-spec "Server responses"). */
function judgeQmpLine(line: string, first: boolean): string | undefined {
  let j: unknown;
  try {
    j = JSON.parse(line);
  } catch {
    return `the monitor sent a line that is not JSON: ${line.slice(0, 120)}`;
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) return `the monitor sent a JSON value that is not an object: ${line.slice(0, 120)}`;
  const o = j as Record<string, unknown>;
  if (first) return 'QMP' in o ? undefined : `the monitor's first message is not the QMP greeting: ${line.slice(0, 120)}`;
  if ('return' in o || 'event' in o) return undefined;
  if ('error' in o) {
    const e = o.error as Record<string, unknown> | null;
    if (typeof e !== 'object' || e === null || typeof e.class !== 'string' || typeof e.desc !== 'string') return `a QMP error without a string class and desc: ${line.slice(0, 120)}`;
    return undefined;
  }
  return `the monitor sent an object that is neither a return, an error nor an event: ${line.slice(0, 120)}`;
}

/** Runs one QMP case on a fresh monitor connection, then checks a new connection is served. */
export async function runQmpCase(path: string, c: QmpCase, timeoutMs: number): Promise<CaseOutcome> {
  const findings: Finding[] = [];
  let sock: net.Socket;
  try {
    sock = await connectWithRetry({ kind: 'unix', path }, timeoutMs);
  } catch (e) {
    return { findings, transmission: false, connectError: (e as Error).message };
  }
  const lines: string[] = [];
  let closed = false;
  let wake: (() => void) | undefined;
  qmpLines(sock, (l) => {
    const bad = judgeQmpLine(l, lines.length === 0);
    if (bad && findings.length < 4) findings.push({ kind: 'qmp', message: bad });
    lines.push(l);
    wake?.();
  });
  sock.on('close', () => {
    closed = true;
    wake?.();
  });
  sock.on('error', () => undefined);
  // A monitor reads and lexes input slowly (qemu-storage-daemon 7.2 takes about 5 s for 1 MiB of
  // whitespace): the time allowed grows with what was sent, so slowness is not called a hang.
  let sentBytes = 0;
  const waitLines = async (n: number): Promise<boolean> => {
    const deadline = Date.now() + timeoutMs + Math.ceil((sentBytes / (1 << 20)) * 8000);
    while (lines.length < n && !closed) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
    return lines.length >= n;
  };
  try {
    if (!(await waitLines(1))) {
      findings.push({ kind: 'hang', message: `no QMP greeting within ${timeoutMs} ms` });
      return { findings, transmission: false };
    }
    if (c.capabilities) {
      sock.write('{"execute":"qmp_capabilities"}\n');
      if (!(await waitLines(2))) findings.push({ kind: 'hang', message: `no reply to qmp_capabilities within ${timeoutMs} ms` });
      else if (!lines[1]!.includes('"return"')) findings.push({ kind: 'qmp', message: `qmp_capabilities on a fresh monitor failed: ${lines[1]!.slice(0, 200)}` });
    }
    const before = lines.length;
    const structured = c.texts.map((t) => {
      try {
        const j = JSON.parse(t) as unknown;
        return typeof j === 'object' && j !== null && !Array.isArray(j) ? (j as Record<string, unknown>) : undefined;
      } catch {
        return undefined;
      }
    });
    sentBytes = c.texts.reduce((a, t) => a + Buffer.byteLength(t) + 1, 0);
    if (c.joined) sock.write(c.texts.join(''));
    else for (const t of c.texts) sock.write(t + '\n');
    // When every text is a JSON object, each gets exactly one reply, in order (qmp-spec
    // "Commands responses"); commands before qmp_capabilities get an error (capabilities
    // negotiation mode), except qmp_capabilities itself.
    if (!c.joined && structured.every((s) => s !== undefined)) {
      if (!(await waitLines(before + c.texts.length))) {
        findings.push(
          closed
            ? { kind: 'qmp', message: `the monitor closed the connection after answering ${lines.length - before} of ${c.texts.length} QMP command(s)` }
            : { kind: 'hang', message: `${lines.length - before} of ${c.texts.length} QMP command(s) answered within ${timeoutMs} ms (+8 s per MiB sent)` },
        );
      } else {
        let capsDone = c.capabilities;
        const replies = lines.slice(before).filter((l) => !l.includes('"event"'));
        structured.forEach((s, i) => {
          const r = replies[i];
          if (!r) return;
          const isCaps = s!.execute === 'qmp_capabilities';
          if (!capsDone && !isCaps && r.includes('"return"')) findings.push({ kind: 'qmp', message: `a command before qmp_capabilities succeeded (${c.texts[i]!.slice(0, 80)} -> ${r.slice(0, 80)})` });
          if (isCaps && r.includes('"return"')) capsDone = true;
        });
      }
    }
  } finally {
    sock.destroy();
  }
  // Whatever this connection did, the monitor must serve the next one - once it has lexed what
  // this one left in its buffer, hence the same allowance per MiB sent.
  const alive = await qmpServes(path, timeoutMs + Math.ceil((sentBytes / (1 << 20)) * 8000));
  if (alive) findings.push({ kind: 'dead', message: `after the case, a new QMP connection is not served: ${alive}` });
  return { findings, transmission: false };
}

async function connectWithRetry(address: Address, timeoutMs: number): Promise<net.Socket> {
  // A QMP socket chardev serves one client at a time: the previous one may still be closing.
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await connectRaw(address, timeoutMs);
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** undefined when a fresh monitor connection gets a greeting and answers query-version. */
export async function qmpServes(path: string, timeoutMs: number): Promise<string | undefined> {
  let sock: net.Socket;
  try {
    sock = await connectWithRetry({ kind: 'unix', path }, timeoutMs);
  } catch (e) {
    return `cannot connect: ${(e as Error).message}`;
  }
  try {
    return await new Promise<string | undefined>((resolve) => {
      const lines: string[] = [];
      const t = setTimeout(() => resolve(`no answer within ${timeoutMs} ms (got ${lines.length} line(s))`), timeoutMs);
      sock.on('close', () => resolve(`closed after ${lines.length} line(s)`));
      sock.on('error', () => undefined);
      qmpLines(sock, (l) => {
        lines.push(l);
        if (lines.length === 1) sock.write('{"execute":"qmp_capabilities"}\n{"execute":"query-version","id":"fuzz-alive"}\n');
        if (l.includes('fuzz-alive')) {
          clearTimeout(t);
          resolve(l.includes('"return"') ? undefined : `query-version failed: ${l.slice(0, 200)}`);
        }
      });
    });
  } finally {
    sock.destroy();
  }
}
