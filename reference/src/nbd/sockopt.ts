// The send-buffer size of an accepted connection's socket (SO_SNDBUF), through the reference's
// Node-API module (reference/native/sockopt.c, loaded by ../native.ts): Node sets it for dgram
// sockets only. This is the I/O edge; the protocol layers never see it.
import type * as net from 'node:net';
import { native, nativeReason } from '../native.ts';

export interface SockoptModule {
  getSendBuffer(fd: number): number;
  setSendBuffer(fd: number, bytes: number): number;
}

const loaded: { mod?: SockoptModule; reason?: string } = { mod: native, reason: nativeReason };

/** The native module itself (fd-level calls, for tests of its error reporting), if it loaded. */
export const nativeSockopt: SockoptModule | undefined = loaded.mod;

/** Whether send buffers can be set here, and if not, why (for logs and the test suite). */
export const sendBufferTuning: { readonly available: boolean; readonly reason?: string } = loaded.mod
  ? { available: true }
  : { available: false, reason: loaded.reason };

/** The socket's file descriptor: net.Socket keeps it on its libuv handle (Unix only). */
function fdOf(socket: net.Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** Sets SO_SNDBUF; returns what the kernel reports afterwards (Linux doubles the value and caps
 * it at net.core.wmem_max), or undefined when the module or the descriptor is not there. */
export function setSendBuffer(socket: net.Socket, bytes: number): number | undefined {
  const fd = fdOf(socket);
  if (!loaded.mod || fd === undefined) return undefined;
  return loaded.mod.setSendBuffer(fd, bytes);
}

/** The socket's SO_SNDBUF as the kernel reports it, or undefined (see setSendBuffer). */
export function getSendBuffer(socket: net.Socket): number | undefined {
  const fd = fdOf(socket);
  if (!loaded.mod || fd === undefined) return undefined;
  return loaded.mod.getSendBuffer(fd);
}
