// The reference block layer's one error class. Every failure of a block operation or a graph
// change is a BlockError carrying a POSIX errno name (what QEMU's -errno would be) and the
// context a user needs: node, operation, offset, bytes.

export type Errno =
  | 'EIO'
  | 'EPERM'
  | 'EACCES'
  | 'EINVAL'
  | 'ENOSPC'
  | 'ENOTSUP'
  | 'ETIMEDOUT'
  | 'EBUSY'
  | 'ENOENT'
  | 'EEXIST'
  | 'EOVERFLOW'
  | 'ENOMEM'
  | 'ESHUTDOWN';

export interface BlockErrorContext {
  readonly node?: string;
  readonly op?: string;
  readonly offset?: number;
  readonly bytes?: number;
}

export class BlockError extends Error {
  override readonly name = 'BlockError';
  constructor(
    readonly errno: Errno,
    message: string,
    readonly context: BlockErrorContext = {},
  ) {
    super(message);
  }
}

export function isBlockError(e: unknown): e is BlockError {
  return e instanceof BlockError;
}
