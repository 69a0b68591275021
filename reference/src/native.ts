// The reference's one Node-API module, reference/native/build/fleece.node (sources in
// reference/native/, built by scripts/build-native.sh): the fd-level calls Node does not expose.
// Loaded once here; each user (the NBD server's send buffers, the file driver's image locks)
// asks for it and, when it did not load, says what it goes without and why. I/O edge only.
import { createRequire } from 'node:module';

export interface NativeModule {
  getSendBuffer(fd: number): number;
  setSendBuffer(fd: number, bytes: number): number;
  /** Whether the kernel has open-file-description locks (F_OFD_GETLK works on /dev/null). */
  ofdAvailable(): boolean;
  /** Shared (read) OFD lock on [start, start+len): 0 or -errno. */
  ofdLock(fd: number, start: number, len: number): number;
  /** Drops this description's locks on the range: 0 or -errno. */
  ofdUnlock(fd: number, start: number, len: number): number;
  /** 0 if a lock of that kind could be taken, -EAGAIN if another description holds a conflicting one, else -errno. */
  ofdTest(fd: number, start: number, len: number, exclusive: number): number;
  /** strerror of an errno (sign ignored). */
  errnoText(errno: number): string;
}

const MODULE_PATH = '../native/build/fleece.node';

function load(): { mod?: NativeModule; reason?: string } {
  // How a user (and the test suite) sees the daemon as it runs where the module was not built.
  if (process.env.FLEECE_NO_NATIVE === '1') return { reason: 'reference/native/build/fleece.node not loaded (FLEECE_NO_NATIVE=1)' };
  try {
    return { mod: createRequire(import.meta.url)(MODULE_PATH) as NativeModule };
  } catch (e) {
    return { reason: `reference/native/build/fleece.node did not load (${(e as Error).message.split('\n')[0]}); run 'bash scripts/build-native.sh'` };
  }
}

const loaded = load();

/** The module, if it loaded. */
export const native: NativeModule | undefined = loaded.mod;
/** Why it did not load (undefined when it did). */
export const nativeReason: string | undefined = loaded.reason;
