// The same TLS command lines given to `fleece serve` and to qemu-storage-daemon 7.2, with the
// same clients: the syntax is shared, the identity string the authz object sees is the same (the
// DN in QEMU's own denial message), and the one deliberate difference is pinned: the reference
// checks tls-authz against PSK usernames, QEMU 7.2 does not.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from './daemon-helpers.ts';
import { run, runOk, tmpDir } from './nbd-helpers.ts';
import { makeTestPki, type TestPki } from './support/tls-pki.ts';

describe.each(['fleece', 'qsd'] as const)('TLS command lines on %s', (kind) => {
  let pki: TestPki;
  const t = tmpDir(`fleece-tls-${kind}-`);
  const img = path.join(t.dir, 'disk.raw');
  const daemons: Daemon[] = [];
  const previousDebug = process.env.FLEECE_SERVE_DEBUG;
  const start = async (name: string, objects: string[], nbdExtra: string) => {
    const sock = path.join(t.dir, `${name}.sock`);
    const d = await startDaemon(kind, [
      ...objects.flatMap((o) => ['--object', o]),
      '--blockdev', `driver=file,node-name=f,filename=${img}`,
      '--nbd-server', `addr.type=unix,addr.path=${sock}${nbdExtra}`,
      '--export', 'type=nbd,id=e,node-name=f,name=disk',
    ], sock);
    daemons.push(d);
    return { d, sock };
  };

  beforeAll(() => {
    // The reference logs refused clients only in debug mode; QEMU always does.
    process.env.FLEECE_SERVE_DEBUG = '1';
    pki = makeTestPki(`fleece-tls-${kind}-pki-`);
    fs.writeFileSync(img, Buffer.alloc(1 << 20));
  });
  afterAll(async () => {
    for (const d of daemons) await d.kill();
    if (previousDebug === undefined) delete process.env.FLEECE_SERVE_DEBUG;
    else process.env.FLEECE_SERVE_DEBUG = previousDebug;
    pki?.cleanup();
    t.cleanup();
  });

  it('x509 with authz-simple naming the client DN: served with the certificate, refused without one or in plaintext', async () => {
    const { sock } = await start('x509', [
      `tls-creds-x509,id=tls0,dir=${pki.serverDir},endpoint=server`,
      `{"qom-type":"authz-simple","id":"az0","identity":${JSON.stringify(pki.clientDn)}}`,
    ], ',tls-creds=tls0,tls-authz=az0,max-connections=10');
    expect((await runOk('nbdinfo', ['--size', `nbds+unix:///disk?socket=${sock}&tls-certificates=${pki.clientDir}`])).trim()).toBe(String(1 << 20));
    expect((await run('nbdinfo', ['--size', `nbds+unix:///disk?socket=${sock}&tls-certificates=${pki.caOnlyDir}`])).code).not.toBe(0);
    expect((await run('nbdinfo', ['--size', `nbd+unix:///disk?socket=${sock}`])).code).not.toBe(0);
  });

  it('an authz-list that denies the DN: refused, and the DN in the denial is the same string on both', async () => {
    const { d, sock } = await start('x509-deny', [
      `tls-creds-x509,id=tls0,dir=${pki.serverDir},endpoint=server`,
      'authz-list,id=az0,policy=allow,rules.0.match=*CN=client.example.com,rules.0.policy=deny,rules.0.format=glob',
    ], ',tls-creds=tls0,tls-authz=az0');
    expect((await run('nbdinfo', ['--size', `nbds+unix:///disk?socket=${sock}&tls-certificates=${pki.clientDir}`])).code).not.toBe(0);
    for (let i = 0; i < 100 && !d.stderr().includes('is denied'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(d.stderr()).toContain(`option negotiation failed: TLS x509 authz check for ${pki.clientDn} is denied`);
  });

  it('PSK with authz-simple identity=alice: alice served; bob refused by the reference, let in by QEMU 7.2', async () => {
    const { sock } = await start('psk', [`tls-creds-psk,id=tls0,dir=${pki.pskDir},endpoint=server`, 'authz-simple,id=az0,identity=alice'], ',tls-creds=tls0,tls-authz=az0');
    const uri = (user: 'alice' | 'bob') => `nbds+unix://${user}@/disk?socket=${sock}&tls-psk-file=${pki.pskClient(user).file}`;
    await runOk('nbdinfo', ['--size', uri('alice')]);
    expect((await run('nbdinfo', ['--size', uri('bob')])).code === 0).toBe(kind === 'qsd');
    expect((await run('nbdinfo', ['--size', `nbds+unix://alice@/disk?socket=${sock}&tls-psk-file=${pki.wrongPsk.file}`])).code).not.toBe(0);
  });
});
