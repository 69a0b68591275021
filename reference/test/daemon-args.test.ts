// The qemu-storage-daemon command line, parsed without I/O (docs/requirements/qemu-fleecing.md §5.1).
import { describe, expect, it } from 'vitest';
import { parseArgs, UsageError } from '../src/daemon/args.ts';
import { parseKeyval } from '../src/daemon/keyval.ts';

describe('keyval (QEMU util/keyval.c syntax)', () => {
  it('dotted keys nest, ,, escapes a comma, implied first key, numeric keys make lists, JSON form', () => {
    expect(parseKeyval('driver=qcow2,node-name=source,file.driver=file,file.filename=/a,,b')).toEqual({
      driver: 'qcow2',
      'node-name': 'source',
      file: { driver: 'file', filename: '/a,b' },
    });
    expect(parseKeyval('raw,node-name=r', 'driver')).toEqual({ driver: 'raw', 'node-name': 'r' });
    expect(parseKeyval('bitmaps.0=a,bitmaps.1=b')).toEqual({ bitmaps: ['a', 'b'] });
    expect(parseKeyval('{"driver":"file","filename":"x","aio":"threads"}')).toEqual({ driver: 'file', filename: 'x', aio: 'threads' });
    expect(parseKeyval('a=1,a=2')).toEqual({ a: '2' });
  });
  it('rejects bad syntax with the offending key', () => {
    expect(() => parseKeyval('node-name')).toThrow(/Expected '=' after parameter 'node-name'/);
    expect(() => parseKeyval('file=x,file.driver=y')).toThrow(/'file\.\*' used inconsistently|'file.driver.*' used inconsistently/);
    expect(() => parseKeyval('a.0=x,a.2=y')).toThrow(/'a\.1' missing/);
    expect(() => parseKeyval('{"x":')).toThrow(/JSON parse error/);
  });
});

describe('fleece serve argv', () => {
  const D = '/tmp/fleece-lab';
  // docs/requirements/qemu-fleecing.md §5.1, verbatim apart from the program name.
  const modern = [
    '--blockdev', `driver=file,node-name=source,filename=${D}/src.raw`,
    '--blockdev', `driver=file,node-name=temp,filename=${D}/tmp.raw`,
    '--blockdev', 'driver=copy-before-write,node-name=fl-cbw,file=source,target=temp',
    '--blockdev', 'driver=snapshot-access,node-name=fl-access,file=fl-cbw',
    '--nbd-server', `addr.type=unix,addr.path=${D}/nbd.sock`,
    '--export', 'type=nbd,id=exp-live,node-name=fl-cbw,name=live,writable=on',
    '--export', 'type=nbd,id=exp-fleece,node-name=fl-access,name=fleece',
    '--chardev', `socket,id=qmp0,path=${D}/qmp.sock,server=on,wait=off`, '--monitor', 'chardev=qmp0',
  ];

  it('parses the §5.1 modern fleecing command line into ordered actions', () => {
    const c = parseArgs(modern);
    expect(c.actions.map((a) => a.kind)).toEqual(['blockdev', 'blockdev', 'blockdev', 'blockdev', 'nbd-server', 'export', 'export', 'chardev', 'monitor']);
    // Each action keeps the option as given: errors while acting on it start with it.
    expect(c.actions[2]).toEqual({ kind: 'blockdev', options: { driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'source', target: 'temp' }, source: '--blockdev driver=copy-before-write,node-name=fl-cbw,file=source,target=temp' });
    expect(c.actions[4]).toEqual({ kind: 'nbd-server', options: { addr: { type: 'unix', path: `${D}/nbd.sock` }, maxConnections: 100, handshakeMaxSeconds: 10 }, source: `--nbd-server addr.type=unix,addr.path=${D}/nbd.sock` });
    expect(c.actions[5]).toEqual({ kind: 'export', options: { type: 'nbd', id: 'exp-live', nodeName: 'fl-cbw', name: 'live', writable: true, bitmaps: [] }, source: '--export type=nbd,id=exp-live,node-name=fl-cbw,name=live,writable=on' });
    expect(c.actions[6]).toMatchObject({ options: { name: 'fleece', writable: false } });
    expect(c.actions[7]).toMatchObject({ kind: 'chardev', options: { id: 'qmp0', path: `${D}/qmp.sock` } });
    expect(c.actions[8]).toEqual({ kind: 'monitor', chardev: 'qmp0', pretty: false, source: '--monitor chardev=qmp0' });
    expect(c.activationFds).toEqual([]);
  });

  it('accepts --opt=value, inet addresses, JSON blockdevs, export name defaulting to the node name', () => {
    const c = parseArgs([
      '--blockdev={"driver":"memory","node-name":"m","size":1048576}',
      '--nbd-server', 'addr.type=inet,addr.host=127.0.0.1,addr.port=0',
      '--export', 'nbd,id=e,node-name=m',
      '--pidfile', '/tmp/p',
    ]);
    expect(c.actions[0]).toMatchObject({ kind: 'blockdev', options: { driver: 'memory', 'node-name': 'm', size: 1048576 } });
    expect(c.actions[1]).toMatchObject({ options: { addr: { type: 'inet', host: '127.0.0.1', port: 0 } } });
    expect(c.actions[2]).toMatchObject({ options: { name: 'm', writable: false } });
    expect(c.pidfile).toBe('/tmp/p');
  });

  it('socket activation: honoured only when LISTEN_PID is ours; exclusive with --nbd-server', () => {
    expect(parseArgs([], { LISTEN_PID: '42', LISTEN_FDS: '1' }, 42).activationFds).toEqual([3]);
    expect(parseArgs([], { LISTEN_PID: '41', LISTEN_FDS: '1' }, 42).activationFds).toEqual([]);
    expect(() => parseArgs(['--nbd-server', 'addr.type=unix,addr.path=/x'], { LISTEN_PID: '42', LISTEN_FDS: '1' }, 42)).toThrow(
      /cannot be used together with systemd socket activation/,
    );
  });

  it.each([
    [['--frobnicate'], /unrecognized option '--frobnicate'/],
    [['stray'], /^stray: Unexpected argument$/],
    [['--export'], /option '--export' requires an argument/],
    [['--export', 'type=nbd,id=e,node-name=n,colour=red'], /^--export type=nbd,id=e,node-name=n,colour=red: Parameter 'colour' is unexpected$/],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n'], /export type 'vhost-user-blk' is not supported/],
    [['--export', 'type=nbd,id=e,node-name=n,writable=maybe'], /Parameter 'writable' expects 'on' or 'off'/],
    [['--export', 'type=nbd,id=e'], /^--export type=nbd,id=e: Parameter 'node-name' is missing$/],
    [['--nbd-server', 'addr.type=vsock,addr.cid=3'], /address type 'vsock' is not supported/],
    [['--nbd-server', 'addr.type=inet,addr.host=h,addr.port=http'], /port 'http' is not a port number/],
    [['--nbd-server', 'addr.type=unix,addr.path=/x,tls-authz=a'], /'tls-authz' is not supported without 'tls-creds'/],
    [['--nbd-server', 'addr.type=unix,addr.path=/x,handshake-max-seconds=-1'], /Parameter 'handshake-max-seconds' expects integer/],
    [['--object', 'tls-creds-x509,id=t,dir=/d,endpoint=middle'], /Parameter 'endpoint' does not accept value 'middle'/],
    [['--object', 'tls-creds-x509,id=t,endpoint=server'], /Missing 'dir' property value/],
    [['--object', 'tls-creds-psk,id=t,dir=/d,priority=NORMAL'], /'priority' \(a GnuTLS priority string\) is not supported/],
    [['--object', 'authz-simple,id=a'], /Parameter 'identity' is missing/],
    [['--object', 'authz-list,id=a,policy=maybe'], /Parameter 'policy' does not accept value 'maybe'/],
    [['--object', 'authz-list,id=a,rules.0.match=x'], /Parameter 'rules\.0\.policy' is missing/],
    [['--object', 'authz-list,id=a,rules.0.match=x,rules.0.policy=allow,rules.0.format=regex'], /Parameter 'format' does not accept value 'regex'/],
    [['--object', 'authz-pam,id=a,service=x'], /Parameter 'qom-type' does not accept value 'authz-pam'/],
    [['--chardev', 'socket,id=q,path=/x'], /client mode is not supported/],
    [['--chardev', 'file,id=q,path=/x'], /backend 'file' is not supported/],
    [['--monitor', 'chardev=q,mode=readline'], /mode 'readline' is not supported/],
    [['--object', 'secret,id=s'], /Parameter 'qom-type' does not accept value 'secret'/],
    [['--object', 'iothread'], /^--object iothread: Parameter 'id' is missing$/],
    [['--object', 'iothread,id=io0,colour=red'], /^--object iothread,id=io0,colour=red: Parameter 'colour' is unexpected$/],
    [['--object', 'iothread,id=io0,poll-max-ns=-1'], /poll-max-ns value must be in range \[0, 9223372036854775807\]/],
  ])('%j → UsageError %s', (argv, re) => {
    expect(() => parseArgs(argv)).toThrow(UsageError);
    expect(() => parseArgs(argv)).toThrow(re);
  });
});
