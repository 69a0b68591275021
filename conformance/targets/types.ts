// What a target is: how to start an implementation and where its exports are.
// Suites ask for exports by role ('rw', 'ro'; the fleecing suite adds 'live' and 'snapshot').
import type { Address } from '../nbd/client.ts';
import type { TlsClientConfig } from '../nbd/tls.ts';
import type { ImageLayout } from './image.ts';

export interface ExportRef {
  address: Address;
  name: string;
  /** Credentials to reach it over TLS (STARTTLS first); absent: plaintext. */
  tls?: TlsClientConfig | undefined;
}

export interface RunningTarget {
  /** Target name as given on the command line ('qemu-nbd', 'nbd://...'). */
  readonly name: string;
  /** Human description, e.g. the server version. */
  readonly description: string;
  /** Exports by role. */
  readonly exports: Readonly<Record<string, ExportRef>>;
  /** Layout of the generated image behind the exports, when the runner generated it. */
  readonly image?: ImageLayout;
  /** false for an export the user runs and did not allow writing (a URI without --allow-writes):
   * cases that would write inside it are skipped, saying why. */
  readonly writesAllowed?: boolean;
  /** The command lines of the processes the runner started for this target (for reports). */
  readonly commands?: () => string[];
  /** QMP monitor socket, for targets that have one (used by later suites). */
  readonly qmp?: string;
  /** Anything else a suite-specific target wants to hand to its cases. */
  readonly extra?: Readonly<Record<string, unknown>>;
  /** Process ids of the servers the target started (for RSS sampling); absent for URIs. */
  pids?(): number[];
  /** Output of the processes the target started (for harness errors). */
  logs(): string;
  /** undefined while every process of the target runs; else what died and how (with its last output). */
  died?(): string | undefined;
  stop(): Promise<void>;
}

export interface TargetStartOptions {
  /** A fresh private directory for sockets and images; removed by the runner afterwards. */
  workDir: string;
  /** How long to wait for the server to listen. */
  startTimeoutMs: number;
}

export interface TargetDef {
  readonly name: string;
  readonly summary: string;
  /** Commands the target needs on PATH (checked before starting; missing = harness error). */
  readonly peers: readonly string[];
  start(opts: TargetStartOptions): Promise<RunningTarget>;
}
