// `file`: a raw image file on the host (QEMU's file-posix, without O_DIRECT). Image locking
// (locking=on|off|auto, QEMU's byte-range OFD locks) is in ../locks.ts. Node has
// no SEEK_DATA/SEEK_HOLE or hole punching, so every range reports allocated data and discard is a
// no-op: both are allowed by the contract (discard is advisory; "holes as data" is legitimate).
// Durability: a flush and a FUA write end with fdatasync, as file-posix's raw_co_flush_to_disk
// does, so what the NBD client was told is stable survives a crash of the host (proto.md
// "NBD_CMD_FLUSH", "NBD_CMD_FLAG_FUA"). x-skip-flush=on is an UNSAFE known-bad option that skips
// it (tests show the durability check failing on it); the data then lives only in the page cache.
import * as fs from 'node:fs';
import { BlockError, strerror, type Errno } from '../errors.ts';
import { ImageLock, imageLocking, lockingEnabled } from '../locks.ts';
import { BlockNode, readBuffers } from '../node.ts';
import type { PermPair } from '../perm.ts';
import type { StorageIdentity } from '../storage.ts';
import type { RequestFlags } from '../types.ts';
import type { DriverContext } from './registry.ts';

function ioError(e: unknown, node: string, op: string, offset: number, bytes: number): BlockError {
  const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
  const known: Errno[] = ['EIO', 'ENOSPC', 'EPERM', 'EACCES', 'EINVAL'];
  const errno = (known as string[]).includes(code) ? (code as Errno) : 'EIO';
  return new BlockError(errno, `${op} on node '${node}' failed: ${(e as Error).message}`, { node, op, offset, bytes });
}

/** Reads and writes up to this size are done synchronously, on the event loop: for an image in
 * the page cache, a small pread/pwrite is one short copy, while handing it to libuv's thread pool
 * adds a mutex, two thread wake-ups and a completion callback, which cost more than the copy (4 KiB
 * random reads at queue depth 16 were 1.2-1.8x qemu-nbd this way). Larger requests go to the pool,
 * as QEMU's aio=threads does with every request: there the copy runs on another CPU while the
 * event loop keeps the sockets fed. Measured with nbdcopy (256 KiB reads, 2 CPUs): with 256 KiB
 * reads on the event loop the CPUs sat idle 17% of the time against qemu-nbd's 11% and sequential
 * read was 0.93x qemu-nbd; through the pool, 11% and 1.0x. The trade-off that remains: an image on
 * a slow or cold disk holds the event loop (other connections, QMP) for each small request. */
export const SYNC_IO_MAX = 64 * 1024;

export class FileNode extends BlockNode {
  readonly filename: string;
  private readonly fd: number;
  private size: number;
  /** UNSAFE, known bad: flush and FUA do not reach stable storage. */
  private readonly skipFlush: boolean;
  /** The open file's device and inode (storage.ts); undefined with the UNSAFE
   * x-no-storage-identity, which makes this node private storage as if no other could alias it. */
  private readonly storageId: StorageIdentity | undefined;
  /** The image's lock bytes, when locking is on (undefined: off, or unavailable under 'auto'). */
  readonly lock: ImageLock | undefined;

  constructor(ctx: DriverContext) {
    super(ctx.nodeName, 'file', ctx.common);
    this.filename = ctx.opts.requiredString('filename');
    this.skipFlush = ctx.opts.bool('x-skip-flush', false);
    // UNSAFE x-no-storage-identity: nodes over one file are separate disks to this node, in this
    // process and to others (no image locks either, unless locking= says otherwise).
    const noIdentity = ctx.opts.bool('x-no-storage-identity', false);
    /** UNSAFE, known bad: the perm and shared lock bytes trade places (locks.ts). */
    const swapped = ctx.opts.bool('x-lock-bytes-swapped', false);
    const locking = lockingEnabled(ctx.opts.enumeration('locking', ['on', 'off', 'auto'] as const, noIdentity ? 'off' : 'auto'), ctx.nodeName);
    ctx.opts.ignore('aio', 'cache', 'x-check-cache-dropped', 'pr-manager', 'drop-cache');
    try {
      this.fd = fs.openSync(this.filename, this.readOnly ? 'r' : 'r+');
      // fstat of the descriptor, not stat of the path: identity is what was opened.
      const st = fs.fstatSync(this.fd, { bigint: true });
      this.size = Number(st.size);
      this.storageId = noIdentity ? undefined : { key: `${st.dev}:${st.ino}`, file: this.filename, dev: String(st.dev), ino: String(st.ino) };
    } catch (e) {
      throw new BlockError('ENOENT', `Could not open '${this.filename}': ${strerror(e)}`, { node: ctx.nodeName });
    }
    this.lock = locking ? new ImageLock(this.fd, this.filename, ctx.nodeName, imageLocking.ops!, swapped) : undefined;
  }

  // The lock bytes follow the node's permissions (raw_check_perm, raw_set_perm, raw_abort_perm).
  override checkPerm(perm: number, shared: number): void {
    this.lock?.prepare(perm, shared);
  }

  override setPerm(perm: number, shared: number): void {
    this.lock?.commit(perm, shared);
  }

  override abortPerm(): void {
    this.lock?.abort();
  }

  length(): number {
    return this.size;
  }

  override storage(): StorageIdentity | undefined {
    return this.storageId;
  }

  childPerm(): PermPair {
    throw new Error('file has no children');
  }

  /** A writable file grows when written past its end (file-posix with RESIZE permission). */
  override growable(): boolean {
    return !this.readOnly;
  }

  /** Past the end reads as zeroes, as coRead does. */
  override readAtOpen(offset: number, bytes: number): Buffer {
    const buf = Buffer.alloc(bytes);
    try {
      for (let done = 0; done < bytes; ) {
        const n = fs.readSync(this.fd, buf, done, bytes - done, offset + done);
        if (n === 0) break;
        done += n;
      }
    } catch (err) {
      throw ioError(err, this.nodeName, 'read', offset, bytes);
    }
    return buf;
  }

  protected coRead(offset: number, bytes: number): Promise<Buffer> {
    const buf = readBuffers.take(bytes);
    if (bytes <= SYNC_IO_MAX) return this.readSync(buf, offset, bytes);
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        if (done >= bytes) return resolve(buf);
        fs.read(this.fd, buf, done, bytes - done, offset + done, (err, n) => {
          if (err) {
            readBuffers.give(buf);
            return reject(ioError(err, this.nodeName, 'read', offset, bytes));
          }
          if (n === 0) {
            buf.fill(0, done); // short file: past EOF reads as zeroes
            return resolve(buf);
          }
          step(done + n);
        });
      };
      step(0);
    });
  }

  /** A read of at most SYNC_IO_MAX bytes, on the event loop. */
  private readSync(buf: Buffer, offset: number, bytes: number): Promise<Buffer> {
    let done = 0;
    try {
      while (done < bytes) {
        const n = fs.readSync(this.fd, buf, done, bytes - done, offset + done);
        if (n === 0) {
          buf.fill(0, done); // short file: past EOF reads as zeroes
          break;
        }
        done += n;
      }
    } catch (err) {
      readBuffers.give(buf);
      return Promise.reject(ioError(err, this.nodeName, 'read', offset, bytes));
    }
    return Promise.resolve(buf);
  }

  protected async coWrite(offset: number, data: Buffer, flags: RequestFlags = {}): Promise<void> {
    await this.writeData(offset, data);
    this.size = Math.max(this.size, offset + data.length);
    // FUA: durable before the write completes (QEMU emulates it with a flush, BDRV_REQ_FUA).
    if (flags.fua) await this.coFlush();
  }

  private writeData(offset: number, data: Buffer): Promise<void> {
    if (data.length <= SYNC_IO_MAX) {
      try {
        for (let done = 0; done < data.length; ) done += fs.writeSync(this.fd, data, done, data.length - done, offset + done);
      } catch (err) {
        return Promise.reject(ioError(err, this.nodeName, 'write', offset, data.length));
      }
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        if (done >= data.length) return resolve();
        fs.write(this.fd, data, done, data.length - done, offset + done, (err, n) => {
          if (err) return reject(ioError(err, this.nodeName, 'write', offset, data.length));
          step(done + n);
        });
      };
      step(0);
    });
  }

  protected override coFlush(): Promise<void> {
    if (this.skipFlush) return Promise.resolve();
    return new Promise((resolve, reject) =>
      fs.fdatasync(this.fd, (err) => (err ? reject(ioError(err, this.nodeName, 'flush', 0, 0)) : resolve())),
    );
  }

  override async close(): Promise<void> {
    this.lock?.release();
    fs.closeSync(this.fd);
  }
}
