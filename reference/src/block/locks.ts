// Image locking as QEMU's file-posix does it (raw_handle_perm_lock and its helpers), so that the
// reference and QEMU's tools (qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon) opening one image
// see each other's use of it.
//
// The protocol: one byte of the image file per permission bit, locked with a shared OFD lock by
// every holder. Byte PERM_BASE + i says "I use permission bit i"; byte SHARED_BASE + i says "I do
// not let others use bit i". A new user of permission i checks that nobody locks SHARED_BASE + i
// (nobody forbids it); a new holder that does not share i checks that nobody locks PERM_BASE + i
// (nobody uses it). The check is a probe for an exclusive lock, which any other description's
// shared lock blocks; a description's own locks never conflict with it. Bit order is QEMU's
// BLK_PERM_* (perm.ts), so the bytes are the ones QEMU uses (measured against
// qemu-storage-daemon 7.2: reference/test/locking.test.ts).
//
// Transactions follow bdrv_refresh_perms: prepare (raw_check_perm: lock the union of the old and
// new bytes, then probe) before anything commits, then commit (raw_set_perm: drop the bytes the
// new permissions do not need) or abort (raw_abort_perm: back to the old bytes).
import { BlockError } from './errors.ts';
import { PERM_ALL } from './perm.ts';
import { native, nativeReason } from '../native.ts';

/** RAW_LOCK_PERM_BASE, RAW_LOCK_SHARED_BASE (file-posix): above byte 0, which some formats' own
 * headers might want, with room left for future use. */
export const LOCK_PERM_BASE = 100;
export const LOCK_SHARED_BASE = 200;

/** The permission bits QEMU 7.2 has (BLK_PERM_ALL: four of them). */
const BITS = [0, 1, 2, 3].filter((i) => (1 << i) & PERM_ALL);

/** bdrv_perm_names' words, which QEMU's lock errors use (with spaces, unlike the QAPI names;
 * read from qemu-io 7.2's strings): bit i's name. */
const QEMU_PERM_NAME = ['consistent read', 'write', 'write unchanged', 'resize'];

export type LockingMode = 'on' | 'off' | 'auto';

/** The fd-level calls this needs: the native module's, or a test's fake. Each returns 0 or -errno. */
export interface LockOps {
  available(): boolean;
  lock(fd: number, start: number, len: number): number;
  unlock(fd: number, start: number, len: number): number;
  test(fd: number, start: number, len: number, exclusive: boolean): number;
  errnoText(errno: number): string;
}

const EAGAIN = -11;
const EACCES = -13;

function nativeOps(): LockOps | undefined {
  const m = native;
  if (!m) return undefined;
  return {
    available: () => m.ofdAvailable(),
    lock: (fd, s, l) => m.ofdLock(fd, s, l),
    unlock: (fd, s, l) => m.ofdUnlock(fd, s, l),
    test: (fd, s, l, x) => m.ofdTest(fd, s, l, x ? 1 : 0),
    errnoText: (e) => m.errnoText(e),
  };
}

/** Whether this process can lock images, and if not, why (for the daemon's startup warning). */
export const imageLocking: { readonly available: boolean; readonly reason?: string; readonly ops?: LockOps } = (() => {
  const ops = nativeOps();
  if (!ops) return { available: false, reason: nativeReason };
  if (!ops.available()) return { available: false, reason: 'the kernel has no open-file-description locks (F_OFD_GETLK failed on /dev/null)' };
  return { available: true, ops };
})();

/** The bytes a holder of (perm, shared) locks: its perms, and the perms it does not share. */
export function lockedBytes(perm: number, shared: number): number[] {
  const out: number[] = [];
  for (const i of BITS) if (perm & (1 << i)) out.push(LOCK_PERM_BASE + i);
  for (const i of BITS) if (~shared & (1 << i)) out.push(LOCK_SHARED_BASE + i);
  return out;
}

/**
 * Whether a `file` node locks, from its `locking` option (raw_open_common). 'auto' is on where
 * OFD locks work. QEMU's 'on' without OFD locks falls back to POSIX locks with a warning; the
 * reference has no lock calls at all without its native module (Node has no fcntl locks), so
 * 'on' there is refused rather than silently unlocked.
 */
export function lockingEnabled(mode: LockingMode, node: string, have = imageLocking): boolean {
  if (mode === 'off') return false;
  if (mode === 'auto') return have.available;
  if (!have.available) {
    throw new BlockError('ENOTSUP', `node '${node}' (driver file): locking=on, but the reference cannot lock images here: ${have.reason}`, { node });
  }
  return true;
}

/** One open image's lock state (the use_lock half of BDRVRawState). */
export class ImageLock {
  /** The permissions committed (s->perm, s->shared_perm): a fresh node uses nothing, shares all. */
  private perm = 0;
  private shared = PERM_ALL;
  /** Bits whose bytes this description holds (s->locked_perm, s->locked_shared_perm). */
  private lockedPerm = 0;
  private lockedUnshared = 0;

  /** Where the two byte sets start: QEMU's offsets, or swapped by the UNSAFE known-bad
   * x-lock-bytes-swapped (a holder that publishes its perms where others look for what it
   * forbids: QEMU's tools then refuse harmless readers and name the wrong permission). */
  private readonly permBase: number;
  private readonly sharedBase: number;

  constructor(
    private readonly fd: number,
    private readonly filename: string,
    private readonly node: string,
    private readonly ops: LockOps,
    swapped = false,
  ) {
    this.permBase = swapped ? LOCK_SHARED_BASE : LOCK_PERM_BASE;
    this.sharedBase = swapped ? LOCK_PERM_BASE : LOCK_SHARED_BASE;
  }

  /** raw_check_perm (RAW_PL_PREPARE): take what the new permissions need on top of the old ones,
   * then check nobody else forbids them; on failure, back to the old bytes. */
  prepare(perm: number, shared: number): void {
    // Only dropping bytes cannot conflict: nothing to check (QEMU skips it too).
    if ((this.perm | perm) === this.perm && (this.shared & shared) === this.shared) return;
    try {
      this.apply(this.perm | perm, ~this.shared | ~shared, false);
      this.check(perm, shared);
    } catch (e) {
      this.abort();
      throw e;
    }
  }

  /** raw_set_perm (RAW_PL_COMMIT): hold exactly the new permissions' bytes. */
  commit(perm: number, shared: number): void {
    this.applyQuietly(perm, ~shared);
    this.perm = perm;
    this.shared = shared;
  }

  /** raw_abort_perm (RAW_PL_ABORT): back to the committed permissions' bytes. */
  abort(): void {
    this.applyQuietly(this.perm, ~this.shared);
  }

  /** On close: every byte goes (closing the descriptor would drop them too; this says so first). */
  release(): void {
    this.commit(0, PERM_ALL);
  }

  /** Bytes held now (for tests and x-debug output). */
  held(): number[] {
    const out: number[] = [];
    for (const i of BITS) if (this.lockedPerm & (1 << i)) out.push(this.permBase + i);
    for (const i of BITS) if (this.lockedUnshared & (1 << i)) out.push(this.sharedBase + i);
    return out.sort((a, b) => a - b);
  }

  /** raw_apply_lock_bytes: lock the bytes of `permBits` and `unsharedBits` this description does
   * not hold yet; with `unlock`, also drop the ones they do not name. */
  private apply(permBits: number, unsharedBits: number, unlock: boolean): void {
    const sets = [
      { base: this.permBase, want: permBits, key: 'lockedPerm' as const },
      { base: this.sharedBase, want: unsharedBits, key: 'lockedUnshared' as const },
    ];
    for (const { base, want, key } of sets) {
      for (const i of BITS) {
        const bit = 1 << i;
        const off = base + i;
        if (want & bit && !(this[key] & bit)) {
          const r = this.ops.lock(this.fd, off, 1);
          if (r) throw this.error(r, `Failed to lock byte ${off}`);
          this[key] |= bit;
        } else if (unlock && this[key] & bit && !(want & bit)) {
          const r = this.ops.unlock(this.fd, off, 1);
          if (r) throw this.error(r, `Failed to unlock byte ${off}`, true);
          this[key] &= ~bit;
        }
      }
    }
  }

  /** Unlocking "cannot fail"; if it does anyway QEMU warns and carries on (warn_report_err), and
   * so does this: the bytes stay held, which errs on the side of refusing others. */
  private applyQuietly(permBits: number, unsharedBits: number): void {
    try {
      this.apply(permBits, unsharedBits, true);
    } catch (e) {
      process.emitWarning((e as Error).message, { code: 'FLEECE_IMAGE_UNLOCK' });
    }
  }

  /** raw_check_lock_bytes: nobody forbids a permission we take, nobody uses one we do not share. */
  private check(perm: number, shared: number): void {
    for (const i of BITS) {
      const bit = 1 << i;
      if (!(perm & bit)) continue;
      const r = this.ops.test(this.fd, this.sharedBase + i, 1, true);
      if (r) throw this.error(r, `Failed to get "${QEMU_PERM_NAME[i]}" lock`, false, true);
    }
    for (const i of BITS) {
      const bit = 1 << i;
      if (shared & bit) continue;
      const r = this.ops.test(this.fd, this.permBase + i, 1, true);
      if (r) throw this.error(r, `Failed to get shared "${QEMU_PERM_NAME[i]}" lock`, false, true);
    }
  }

  /** QEMU's wording (raw_lock_error_setg_errno): the errno text is left out for EAGAIN and EACCES,
   * which only mean "another holder"; a failed probe adds the hint naming the image. The hint
   * goes on the error's second line (QEMU prints it under the message on its command line). */
  private error(errno: number, what: string, unlocking = false, hint = false): BlockError {
    const busy = !unlocking && (errno === EAGAIN || errno === EACCES);
    let message = busy ? what : `${what}: ${this.ops.errnoText(errno)}`;
    if (hint) message += `\nIs another process using the image [${this.filename}]?`;
    // QEMU's -EAGAIN is "held by another"; the reference's errno names have EBUSY for it.
    return new BlockError(busy ? 'EBUSY' : 'EIO', message, { node: this.node, op: 'lock' });
  }
}
