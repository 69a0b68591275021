// From block-layer failures to NBD error values. QEMU maps -errno with nbd_errno_of()
// (nbd/server.c); we follow it except where the spec's SHOULDs differ and the issue asks us to
// follow the spec: EPERM for writes on a read-only export and ENOSPC for writes past the end are
// decided by the session before the backend is called (docs/requirements/nbd.md §1.10, §2 cases 46, 63).
import { isBlockError } from '../block/errors.ts';
import { NBD_ERR } from './constants.ts';

export interface WireError {
  readonly errno: number;
  readonly message: string;
}

/**
 * Maps a thrown value to the NBD error sent to the client.
 * - EACCES (snapshot-access on a discarded or clean cluster) becomes EINVAL, as on QEMU 7.2:
 *   -EACCES is not in its map (docs/requirements/qemu-fleecing.md §6 B7).
 * - ENOTSUP may only be sent for FAST_ZERO (§1.5 "without FAST_ZERO the server MUST NOT return
 *   ENOTSUP"); elsewhere it becomes EINVAL, QEMU's default.
 * - Anything that is not a BlockError is an internal fault: EIO, with the message kept.
 */
export function nbdErrorOf(e: unknown, opts: { fastZero?: boolean } = {}): WireError {
  if (!isBlockError(e)) {
    const message = e instanceof Error ? `internal error: ${e.message}` : `internal error: ${String(e)}`;
    return { errno: NBD_ERR.EIO, message };
  }
  const message = e.message;
  switch (e.errno) {
    case 'EPERM':
      return { errno: NBD_ERR.EPERM, message };
    case 'EIO':
      return { errno: NBD_ERR.EIO, message };
    case 'ENOMEM':
      return { errno: NBD_ERR.ENOMEM, message };
    case 'ENOSPC':
      return { errno: NBD_ERR.ENOSPC, message };
    case 'EOVERFLOW':
      return { errno: NBD_ERR.EOVERFLOW, message };
    case 'ESHUTDOWN':
      return { errno: NBD_ERR.ESHUTDOWN, message };
    case 'ENOTSUP':
      return { errno: opts.fastZero ? NBD_ERR.ENOTSUP : NBD_ERR.EINVAL, message };
    case 'EACCES':
    case 'EINVAL':
    case 'ETIMEDOUT':
    case 'EBUSY':
    case 'ENOENT':
    case 'EEXIST':
      return { errno: NBD_ERR.EINVAL, message };
  }
}
