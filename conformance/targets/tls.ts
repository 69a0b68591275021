// Targets over TLS: the built-in servers started with credentials the runner makes in the
// target's temp dir (conformance/tls/pki.ts), their exports reached with STARTTLS first.
//   <server>-tls-x509   x509, the server verifies client certificates (QEMU verify-peer=on,
//                       nbdkit --tls-verify-peer) and, where the server has one, an authorization
//                       list naming the runner's client (QEMU authz-simple)
//   <server>-tls-psk    PSK from keys.psk (QEMU tls-creds-psk, nbdkit --tls-psk)
// QEMU's and qemu-storage-daemon's command lines: docs QEMU system/tls.rst and
// tools/qemu-storage-daemon.rst; nbdkit: nbdkit-tls(1); nbd-server: nbd-server(5).
// The reference variants use qemu-storage-daemon's command line verbatim (fleece serve).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TlsClientConfig } from '../nbd/tls.ts';
import { makePki, type Pki } from '../tls/pki.ts';
import { images, launchNbdServer, startAll, unix } from './builtin.ts';
import { ManagedProcess } from './process.ts';
import { registerTarget } from './registry.ts';
import type { RunningTarget, TargetDef, TargetStartOptions } from './types.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export type TlsMode = 'x509' | 'psk';

/** What the TLS cases need to know about a target (RunningTarget.extra.tls). */
export interface TlsTargetInfo {
  mode: TlsMode;
  /** proto.md "Server-side requirements": 'forced' (FORCEDTLS), 'selective' (some export in the
   * clear, others TLS-only), 'optional' (TLS offered, no export requires it); 'unknown' for a
   * server the user runs (the cases that depend on the mode are skipped). */
  policy: 'forced' | 'selective' | 'optional' | 'unknown';
  /** The runner's credentials, wrong ones included; absent for a server the user runs. */
  pki?: Pki;
  /** x509: the server requires and checks a client certificate. */
  verifyPeer?: boolean;
  /** The server has an authorization list (QEMU tls-authz): this credential authenticates but
   * is not on it. */
  authzDenied?: TlsClientConfig;
  /** SELECTIVETLS: the role of an export served without TLS (the others are TLS-only). */
  clearRole?: string;
}

export function clientCreds(pki: Pki, mode: TlsMode): TlsClientConfig {
  return mode === 'x509' ? { type: 'x509', certificates: pki.client.dir } : { type: 'psk', pskFile: pki.psk.clientFile, identity: pki.psk.identity };
}

/** QEMU option values double their commas (a DN has several). */
const qemuValue = (v: string) => v.replace(/,/g, ',,');

/** QEMU --object lines for `mode`, with an authz-simple list allowing only the runner's client. */
function qemuObjects(pki: Pki, mode: TlsMode): string[] {
  const creds = mode === 'x509' ? `tls-creds-x509,id=tls0,dir=${pki.server.dir},endpoint=server,verify-peer=on` : `tls-creds-psk,id=tls0,dir=${pki.psk.serverDir},endpoint=server`;
  const identity = mode === 'x509' ? pki.clientDn : pki.psk.identity;
  return ['--object', creds, '--object', `authz-simple,id=auth0,identity=${qemuValue(identity)}`];
}

function info(pki: Pki, mode: TlsMode, authz: boolean, policy: TlsTargetInfo['policy'] = 'forced', verifyPeer = mode === 'x509'): TlsTargetInfo {
  const denied: TlsClientConfig = mode === 'x509' ? { type: 'x509', certificates: pki.stranger.dir } : { type: 'psk', pskFile: pki.psk.strangerFile, identity: pki.psk.strangerIdentity };
  return { mode, policy, pki, verifyPeer, ...(authz ? { authzDenied: denied } : {}) };
}

function withTls(t: RunningTarget, creds: TlsClientConfig, tls: TlsTargetInfo, clear: string[] = []): RunningTarget {
  const exports = Object.fromEntries(Object.entries(t.exports).map(([role, ref]) => [role, clear.includes(role) ? ref : { ...ref, tls: creds }]));
  return { ...t, exports, extra: { ...(t.extra ?? {}), tls } };
}

function pkiIn(opts: TargetStartOptions): Pki {
  return makePki(path.join(opts.workDir, 'tls'));
}

function qemuNbdTls(mode: TlsMode): TargetDef {
  const name = `qemu-nbd-tls-${mode}`;
  return {
    name,
    summary: `qemu-nbd over ${mode === 'x509' ? 'x509 TLS (verify-peer=on)' : 'PSK TLS'} with --tls-authz (authz-simple)`,
    peers: ['qemu-nbd', 'certtool', 'psktool'],
    async start(opts) {
      const pki = pkiIn(opts);
      const img = images(opts.workDir);
      const rw = unix(opts.workDir, 'rw.sock');
      const ro = unix(opts.workDir, 'ro.sock');
      const common = [...qemuObjects(pki, mode), '--tls-creds', 'tls0', '--tls-authz', 'auth0', '-f', 'raw', '-x', 'disk', '--persistent', '--shared=8', '-A', '--cache=writeback'];
      const sockPath = (a: typeof rw) => (a as { path: string }).path;
      const t = await startAll(
        name,
        `qemu-nbd, raw image, ${mode} TLS required, authz-simple`,
        [
          { proc: ManagedProcess.spawn(`${name} (rw)`, 'qemu-nbd', [...common, '-k', sockPath(rw), img.rw]), address: rw },
          { proc: ManagedProcess.spawn(`${name} (ro)`, 'qemu-nbd', [...common, '-r', '-k', sockPath(ro), img.ro]), address: ro },
        ],
        { rw: { address: rw, name: 'disk' }, ro: { address: ro, name: 'disk' } },
        opts,
      );
      return withTls(t, clientCreds(pki, mode), info(pki, mode, true));
    },
  };
}

/** qemu-storage-daemon's command line with TLS; `program` runs it (qsd itself, or fleece serve). */
function qsdArgs(pki: Pki, mode: TlsMode, img: { rw: string; ro: string }, sock: string, qmp: string, raw: boolean): string[] {
  return [
    ...qemuObjects(pki, mode),
    '--chardev', `socket,id=m0,path=${qmp},server=on,wait=off`,
    '--monitor', 'chardev=m0',
    ...(raw
      ? ['--blockdev', `driver=file,node-name=f0,filename=${img.rw}`, '--blockdev', 'driver=raw,node-name=disk0,file=f0', '--blockdev', `driver=file,node-name=f1,filename=${img.ro},read-only=on`, '--blockdev', 'driver=raw,node-name=ro0,file=f1,read-only=on']
      : ['--blockdev', `driver=file,node-name=disk0,filename=${img.rw}`, '--blockdev', `driver=file,node-name=ro0,filename=${img.ro}`]),
    '--nbd-server', `addr.type=unix,addr.path=${sock},max-connections=16,tls-creds=tls0,tls-authz=auth0`,
    '--export', 'type=nbd,id=e0,node-name=disk0,name=disk,writable=on',
    '--export', 'type=nbd,id=e1,node-name=ro0,name=ro',
  ];
}

function qsdTls(mode: TlsMode, flavour: 'qemu-storage-daemon' | 'reference'): TargetDef {
  const name = `${flavour}-tls-${mode}`;
  const ref = flavour === 'reference';
  return {
    name,
    summary: `${ref ? 'fleece serve' : 'qemu-storage-daemon'} with --nbd-server tls-creds (${mode === 'x509' ? 'x509, verify-peer=on' : 'PSK'}) and tls-authz (authz-simple)`,
    peers: ref ? ['certtool', 'psktool'] : ['qemu-storage-daemon', 'certtool', 'psktool'],
    async start(opts) {
      const pki = pkiIn(opts);
      const img = images(opts.workDir);
      const sock = unix(opts.workDir, 'qsd.sock');
      const qmp = path.join(opts.workDir, 'qsd-qmp.sock');
      const args = qsdArgs(pki, mode, img, (sock as { path: string }).path, qmp, !ref);
      const proc = ref ? ManagedProcess.spawn(name, process.execPath, [path.join(REPO, 'bin/fleece.mjs'), 'serve', ...args]) : ManagedProcess.spawn(name, 'qemu-storage-daemon', args);
      const t = await startAll(
        name,
        `${ref ? 'fleece serve (reference/)' : 'qemu-storage-daemon'}, ${mode} TLS required, authz-simple`,
        [{ proc, address: sock }],
        { rw: { address: sock, name: 'disk' }, ro: { address: sock, name: 'ro' } },
        ref ? { ...opts, startTimeoutMs: Math.max(opts.startTimeoutMs, 15_000) } : opts,
        qmp,
      );
      return withTls(t, clientCreds(pki, mode), info(pki, mode, true));
    },
  };
}

function nbdkitTls(mode: TlsMode, level: 'require' | 'on'): TargetDef {
  const name = level === 'on' ? `nbdkit-tls-${mode}-optional` : `nbdkit-tls-${mode}`;
  return {
    name,
    summary: `nbdkit file plugin, --tls=${level} ${mode === 'x509' ? '--tls-certificates --tls-verify-peer' : '--tls-psk'}`,
    peers: ['nbdkit', 'certtool', 'psktool'],
    async start(opts) {
      const pki = pkiIn(opts);
      const img = images(opts.workDir);
      const rw = unix(opts.workDir, 'rw.sock');
      const ro = unix(opts.workDir, 'ro.sock');
      const tls = [`--tls=${level}`, ...(mode === 'x509' ? [`--tls-certificates=${pki.server.dir}`, '--tls-verify-peer'] : [`--tls-psk=${pki.psk.serverFile}`])];
      const p = (a: typeof rw) => (a as { path: string }).path;
      const t = await startAll(
        name,
        `nbdkit file plugin, --tls=${level}, ${mode}`,
        [
          { proc: ManagedProcess.spawn(`${name} (rw)`, 'nbdkit', ['-f', ...tls, '-U', p(rw), '-e', 'disk', 'file', img.rw]), address: rw },
          { proc: ManagedProcess.spawn(`${name} (ro)`, 'nbdkit', ['-f', ...tls, '-r', '-U', p(ro), '-e', 'disk', 'file', img.ro]), address: ro },
        ],
        { rw: { address: rw, name: 'disk' }, ro: { address: ro, name: 'disk' } },
        opts,
      );
      return withTls(t, clientCreds(pki, mode), info(pki, mode, false, level === 'on' ? 'optional' : 'forced'));
    },
  };
}

/** nbd-server in SELECTIVETLS mode: [disk] and [ro] with force_tls, [clear] without (x509 only:
 * nbd-server has no PSK). Client certificates are checked against cacertfile. */
const nbdServerTls: TargetDef = {
  name: 'nbd-server-tls-x509',
  summary: 'nbd-server, x509 (certfile/keyfile/cacertfile), SELECTIVETLS: disk and ro force_tls, clear in the clear',
  peers: ['nbd-server', 'certtool', 'psktool'],
  async start(opts) {
    const pki = pkiIn(opts);
    const t = await launchNbdServer(
      opts,
      'nbd-server-tls-x509',
      'nbd-server, x509 TLS, SELECTIVETLS (force_tls on disk and ro; clear without)',
      {
        generic: [`certfile = ${pki.server.cert}`, `keyfile = ${pki.server.key}`, `cacertfile = ${pki.server.caCert}`],
        disk: ['force_tls = true'],
        ro: ['force_tls = true'],
        sections: { clear: ['exportname = $RO', 'readonly = true'] },
      },
      (address) => ({ rw: { address, name: 'disk' }, ro: { address, name: 'ro' }, clear: { address, name: 'clear' } }),
    );
    return withTls(t, clientCreds(pki, 'x509'), { ...info(pki, 'x509', false, 'selective', true), clearRole: 'clear' }, ['clear']);
  },
};

export const TLS_TARGETS: TargetDef[] = [
  qemuNbdTls('x509'),
  qemuNbdTls('psk'),
  qsdTls('x509', 'qemu-storage-daemon'),
  qsdTls('psk', 'qemu-storage-daemon'),
  nbdkitTls('x509', 'require'),
  nbdkitTls('psk', 'require'),
  nbdkitTls('x509', 'on'),
  nbdServerTls,
  qsdTls('x509', 'reference'),
  qsdTls('psk', 'reference'),
];

for (const t of TLS_TARGETS) registerTarget(t);
