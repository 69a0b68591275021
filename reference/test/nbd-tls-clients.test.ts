// Real GnuTLS clients against `fleece serve` over TLS (libnbd's nbdinfo and nbdcopy, QEMU's
// qemu-img and qemu-io), x509 and PSK, with the command lines a user would type; the TLS objects'
// errors in qemu-storage-daemon's words, and nbd-server-start with tls-creds over QMP. Where
// node:tls (OpenSSL) and GnuTLS do not meet is pinned by a test, so a change on either side
// shows up (reference/src/daemon/README.md "TLS").
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseArgs } from '../src/daemon/args.ts';
import { Daemon } from '../src/daemon/daemon.ts';
import { run, runOk, tmpDir } from './nbd-helpers.ts';
import { serveInProcess, type Served } from './support/serve-inprocess.ts';
import { makeTestPki, type TestPki } from './support/tls-pki.ts';

const MiB = 1024 * 1024;

describe('real clients against fleece serve over TLS', () => {
  let pki: TestPki;
  const t = tmpDir('fleece-tls-clients-');
  const img = path.join(t.dir, 'disk.raw');
  const sock = (n: string) => path.join(t.dir, `${n}.sock`);
  const servers: Served[] = [];
  const start = async (name: string, creds: string, extraObjects: string[] = [], nbdExtra = '') => {
    const s = await serveInProcess([
      '--object', creds,
      ...extraObjects.flatMap((o) => ['--object', o]),
      '--blockdev', `driver=file,node-name=f,filename=${img}`,
      '--nbd-server', `addr.type=unix,addr.path=${sock(name)},tls-creds=tls0${nbdExtra}`,
      '--export', 'type=nbd,id=e,node-name=f,name=disk,writable=on',
    ]);
    servers.push(s);
    return s;
  };
  const x509 = () => `tls-creds-x509,id=tls0,dir=${pki.serverDir},endpoint=server`;
  const psk = () => `tls-creds-psk,id=tls0,dir=${pki.pskDir},endpoint=server`;
  const x509Uri = (name: string, dir = pki.clientDir) => `nbds+unix:///disk?socket=${sock(name)}&tls-certificates=${dir}`;
  const pskUri = (name: string, user: 'alice' | 'bob', file = pki.pskClient(user).file) => `nbds+unix://${user}@/disk?socket=${sock(name)}&tls-psk-file=${file}`;
  const qemuX509 = (dir = pki.clientDir) => `tls-creds-x509,id=c0,dir=${dir},endpoint=client`;
  const qemuPsk = (user: string, dir: string, priority = '') => `tls-creds-psk,id=c0,dir=${dir},endpoint=client,username=${user}${priority ? `,priority=${priority}` : ''}`;
  const qemuOpts = (name: string) => `driver=nbd,server.type=unix,server.path=${sock(name)},export=disk,tls-creds=c0,tls-hostname=localhost`;

  beforeAll(() => {
    pki = makeTestPki('fleece-tls-clients-pki-');
    fs.writeFileSync(img, Buffer.alloc(8 * MiB));
  });
  afterAll(async () => {
    for (const s of servers) await s.d.close();
    pki?.cleanup();
    t.cleanup();
  });

  describe('x509', () => {
    beforeAll(async () => {
      await start('x509', x509());
    });

    it('nbdinfo nbds+unix:// with tls-certificates= sees the export over TLS', async () => {
      const j = JSON.parse(await runOk('nbdinfo', ['--json', x509Uri('x509')]));
      expect(j.TLS).toBe(true);
      expect(j.exports[0]).toMatchObject({ 'export-name': 'disk', 'export-size': 8 * MiB });
    });

    it('nbdcopy into and out of the export over TLS', async () => {
      const src = path.join(t.dir, 'src.raw');
      const back = path.join(t.dir, 'back.raw');
      const content = crypto.randomBytes(8 * MiB);
      fs.writeFileSync(src, content);
      await runOk('nbdcopy', ['--flush', src, x509Uri('x509')]);
      await runOk('nbdcopy', [x509Uri('x509'), back]);
      expect(fs.readFileSync(back).equals(content)).toBe(true);
    });

    it('qemu-io and qemu-img with --object tls-creds-x509,endpoint=client', async () => {
      await runOk('qemu-io', ['--object', qemuX509(), '--image-opts', qemuOpts('x509'), '-c', 'write -P 0xab 1M 64k']);
      const r = await runOk('qemu-io', ['--object', qemuX509(), '--image-opts', qemuOpts('x509'), '-c', 'read -P 0xab 1M 64k']);
      expect(r).toMatch(/read 65536\/65536 bytes/);
      const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', '--object', qemuX509(), '--image-opts', qemuOpts('x509')]));
      expect(info['virtual-size']).toBe(8 * MiB);
      const out = path.join(t.dir, 'conv.qcow2');
      await runOk('qemu-img', ['convert', '-O', 'qcow2', '--object', qemuX509(), '--image-opts', qemuOpts('x509'), out]);
      const cmp = await run('qemu-img', ['compare', '--object', qemuX509(), '--image-opts', qemuOpts('x509'), `driver=qcow2,file.driver=file,file.filename=${out}`]);
      expect(cmp.code).toBe(0);
    });

    it('a client without TLS, without a certificate, or with one from another CA never reaches the export', async () => {
      const plain = await run('nbdinfo', ['--json', `nbd+unix:///disk?socket=${sock('x509')}`]);
      expect(plain.code).not.toBe(0);
      // libnbd maps ERR_TLS_REQD to ENOTSUP ("server requires TLS encryption first" on some paths).
      expect(plain.stderr).toMatch(/requires TLS|Operation not supported/);
      for (const dir of [pki.caOnlyDir, pki.rogueDir]) {
        const r = await run('nbdinfo', ['--json', x509Uri('x509', dir)]);
        expect(r.code).not.toBe(0);
        const q = await run('qemu-img', ['info', '--object', qemuX509(dir), '--image-opts', qemuOpts('x509')]);
        expect(q.code).not.toBe(0);
      }
      const plainQemu = await run('qemu-img', ['info', '--image-opts', `driver=nbd,server.type=unix,server.path=${sock('x509')},export=disk`]);
      expect(plainQemu.code).not.toBe(0);
      // ...and the server still serves a good client.
      expect(JSON.parse(await runOk('nbdinfo', ['--json', x509Uri('x509')])).exports).toHaveLength(1);
    });

    it('over TCP too: nbdinfo nbds://localhost:PORT and qemu-img with server.type=inet', async () => {
      const s = await serveInProcess([
        '--object', x509(),
        '--blockdev', `driver=file,node-name=f,filename=${img}`,
        '--nbd-server', 'addr.type=inet,addr.host=127.0.0.1,addr.port=0,tls-creds=tls0',
        '--export', 'type=nbd,id=e,node-name=f,name=disk',
      ]);
      servers.push(s);
      const port = (s.addr as { port: number }).port;
      expect((await runOk('nbdinfo', ['--size', `nbds://localhost:${port}/disk?tls-certificates=${pki.clientDir}`])).trim()).toBe(String(8 * MiB));
      const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', '--object', qemuX509(), '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=disk,tls-creds=c0,tls-hostname=localhost`]));
      expect(info['virtual-size']).toBe(8 * MiB);
      expect((await run('nbdinfo', ['--size', `nbd://localhost:${port}/disk`])).code).not.toBe(0);
    });

    it('tls-authz: the DN allowed by authz-simple gets in; authz-list denying it refuses nbdinfo and qemu-img', async () => {
      await start('x509-authz', x509(), [`{"qom-type":"authz-simple","id":"az0","identity":${JSON.stringify(pki.clientDn)}}`], ',tls-authz=az0');
      await runOk('nbdinfo', ['--size', x509Uri('x509-authz')]);
      const deny = await start('x509-deny', x509(), ['authz-list,id=az0,policy=allow,rules.0.match=*CN=client.example.com,rules.0.policy=deny,rules.0.format=glob'], ',tls-authz=az0');
      expect((await run('nbdinfo', ['--size', x509Uri('x509-deny')])).code).not.toBe(0);
      expect((await run('qemu-img', ['info', '--object', qemuX509(), '--image-opts', qemuOpts('x509-deny')])).code).not.toBe(0);
      expect(deny.logs.filter((l) => l.includes(`TLS x509 authz check for ${pki.clientDn} is denied`))).toHaveLength(2);
    });
  });

  describe('PSK', () => {
    beforeAll(async () => {
      await start('psk', psk(), ['authz-simple,id=az0,identity=alice'], ',tls-authz=az0');
    });

    it('nbdinfo tls-psk-file=, nbdcopy and qemu-io/qemu-img with tls-creds-psk', async () => {
      const j = JSON.parse(await runOk('nbdinfo', ['--json', pskUri('psk', 'alice')]));
      expect(j.TLS).toBe(true);
      const src = path.join(t.dir, 'psk-src.raw');
      const content = crypto.randomBytes(8 * MiB);
      fs.writeFileSync(src, content);
      await runOk('nbdcopy', [src, pskUri('psk', 'alice')]);
      const back = path.join(t.dir, 'psk-back.raw');
      await runOk('nbdcopy', [pskUri('psk', 'alice'), back]);
      expect(fs.readFileSync(back).equals(content)).toBe(true);
      const dir = pki.pskClient('alice').dir;
      const r = await runOk('qemu-io', ['--object', qemuPsk('alice', dir), '--image-opts', qemuOpts('psk'), '-c', `read -P ${content[0]} 0 1`]);
      expect(r).toMatch(/read 1\/1 bytes/);
      const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', '--object', qemuPsk('alice', dir), '--image-opts', qemuOpts('psk')]));
      expect(info['virtual-size']).toBe(8 * MiB);
    });

    it('a wrong key, or a username the authz denies (stricter than QEMU 7.2, which does not check PSK users), is refused', async () => {
      expect((await run('nbdinfo', ['--size', pskUri('psk', 'alice', pki.wrongPsk.file)])).code).not.toBe(0);
      expect((await run('qemu-img', ['info', '--object', qemuPsk('alice', pki.wrongPsk.dir), '--image-opts', qemuOpts('psk')])).code).not.toBe(0);
      expect((await run('nbdinfo', ['--size', pskUri('psk', 'bob')])).code).not.toBe(0);
      const s = servers.find((x) => x.d.nbdServerAddress?.path === sock('psk'))!;
      expect(s.logs).toContain('nbd: option negotiation failed: TLS PSK authz check for bob is denied');
    });

    it('where OpenSSL and GnuTLS meet: TLS 1.3 (default), TLS 1.2 with PSK, ECDHE-PSK and DHE-PSK suites; not a TLS 1.3 psk_ke-only client', async () => {
      const s = servers.find((x) => x.d.nbdServerAddress?.path === sock('psk'))!;
      const dir = pki.pskClient('alice').dir;
      const served = async (priority: string) => (await run('qemu-img', ['info', '--object', qemuPsk('alice', dir, priority), '--image-opts', qemuOpts('psk')])).code === 0;
      const before = s.logs.length;
      // QEMU appends +ECDHE-PSK:+DHE-PSK:+PSK to the priority it is given.
      expect(await served('NORMAL')).toBe(true);
      expect(await served('NORMAL:-VERS-TLS1.3')).toBe(true);
      expect(await served('NORMAL:-VERS-TLS1.3:-KX-ALL:+DHE-PSK')).toBe(true);
      const established = s.logs.slice(before).filter((l) => l.startsWith('nbd: TLS established'));
      expect(established[0]).toMatch(/TLSv1\.3/);
      expect(established[1]).toMatch(/TLSv1\.2, ECDHE-PSK-/);
      expect(established[2]).toMatch(/TLSv1\.2, DHE-PSK-/);
      // TLS 1.3 without any key-exchange group (psk_ke only): OpenSSL's server does not take it.
      expect(await served('NORMAL:-VERS-ALL:+VERS-TLS1.3:-GROUP-ALL')).toBe(false);
    });
  });

  describe('objects and QMP', () => {
    it.each([
      [['--nbd-server', 'addr.type=unix,addr.path=SOCK,tls-creds=nope'], "No TLS credentials with id 'nope'"],
      [['--object', 'authz-simple,id=a0,identity=x', '--nbd-server', 'addr.type=unix,addr.path=SOCK,tls-creds=a0'], "Object with id 'a0' is not TLS credentials"],
      [['--object', 'tls-creds-x509,id=t0,dir=CLIENTDIR', '--nbd-server', 'addr.type=unix,addr.path=SOCK,tls-creds=t0'], 'Expected TLS credentials for a server endpoint'],
      [['--object', 'tls-creds-x509,id=t0,dir=CLIENTDIR,endpoint=server'], 'Unable to access credentials CLIENTDIR/server-cert.pem: No such file or directory'],
      [['--object', 'tls-creds-psk,id=t0,dir=NODIR,endpoint=server'], 'Unable to access credentials NODIR/keys.psk: No such file or directory'],
      [['--object', 'tls-creds-psk,id=t0,dir=PSKDIR,endpoint=server', '--nbd-server', 'addr.type=unix,addr.path=SOCK,tls-creds=t0,tls-authz=nope'], "No authorization object with id 'nope'"],
    ])('%j fails: %s', async (argv, message) => {
      const sub = (x: string) => x.replace('SOCK', sock('bad')).replace('CLIENTDIR', pki.clientDir).replace('NODIR', path.join(t.dir, 'nodir')).replace('PSKDIR', pki.pskDir);
      await expect(serveInProcess(argv.map(sub))).rejects.toThrow(sub(message));
    });

    it('nbd-server-start with tls-creds over QMP; the credentials cannot be deleted while the server holds them', async () => {
      const d = new Daemon();
      const s = { negotiated: true };
      try {
        for (const a of parseArgs(['--blockdev', `driver=file,node-name=f,filename=${img}`]).actions) await d.apply(a);
        const q = (execute: string, args: Record<string, unknown> = {}) => d.dispatcher.dispatch({ execute, arguments: args }, s);
        expect(await q('object-add', { 'qom-type': 'tls-creds-psk', id: 'tls0', dir: pki.pskDir, endpoint: 'server' })).toEqual({ return: {} });
        expect(await q('nbd-server-start', { addr: { type: 'unix', data: { path: sock('qmp') } }, 'tls-creds': 'tls0', 'max-connections': 2 })).toEqual({ return: {} });
        expect(await q('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'f', name: 'disk' })).toEqual({ return: {} });
        await runOk('nbdinfo', ['--size', pskUri('qmp', 'alice')]);
        expect((await run('nbdinfo', ['--size', `nbd+unix:///disk?socket=${sock('qmp')}`])).code).not.toBe(0);
        expect(await q('object-del', { id: 'tls0' })).toMatchObject({ error: { class: 'GenericError', desc: "object 'tls0' is in use, can not be deleted" } });
        expect(await q('nbd-server-stop')).toEqual({ return: {} });
        expect(await q('object-del', { id: 'tls0' })).toEqual({ return: {} });
        expect(await q('nbd-server-start', { addr: { type: 'unix', path: sock('qmp') }, 'tls-creds': 'tls0' })).toMatchObject({ error: { desc: "No TLS credentials with id 'tls0'" } });
      } finally {
        await d.close();
      }
    });
  });
});
