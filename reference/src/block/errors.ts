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

/** strerror(3)'s text for a Node system error, as QEMU's messages end ("No such file or directory"). */
export function strerror(e: unknown): string {
  const code = (e as NodeJS.ErrnoException)?.code;
  const text: Record<string, string> = {
    ENOENT: 'No such file or directory', EACCES: 'Permission denied', ENOTDIR: 'Not a directory', EISDIR: 'Is a directory',
    EROFS: 'Read-only file system', EEXIST: 'File exists', EPERM: 'Operation not permitted', ELOOP: 'Too many levels of symbolic links',
  };
  return (code && text[code]) ?? (e as Error)?.message ?? String(e);
}
