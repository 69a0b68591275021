/*
 * ofdlock: open-file-description byte-range locks (fcntl F_OFD_SETLK / F_OFD_GETLK), which Node
 * does not expose. The reference's `file` driver takes them at the byte offsets QEMU's
 * file-posix takes (reference/src/block/locks.ts), so the reference and QEMU's tools see each
 * other's use of an image.
 *
 * Why OFD locks and not POSIX (F_SETLK) ones: a POSIX lock belongs to the process, so closing any
 * descriptor of the file drops all of them, and two descriptors of one process never conflict;
 * an OFD lock belongs to the open file description, as QEMU relies on (qemu_lock_fd,
 * util/osdep.c). QEMU's 'auto' means "on if OFD locks work here" (raw_open_common); the
 * reference has no POSIX fallback, so without OFD locks it does not lock at all.
 *
 * Every call returns 0 or -errno (the caller words the error: QEMU elides the errno text for
 * EAGAIN/EACCES, which only say "someone else holds it"); errnoText(n) gives strerror.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "fleece_native.h"

static int args_int(napi_env env, napi_callback_info info, size_t want, int64_t *out) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, NULL, "ofdlock: missing argument");
    return -1;
  }
  for (size_t i = 0; i < want; i++) {
    if (napi_get_value_int64(env, argv[i], &out[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, "ofdlock: arguments must be integers");
      return -1;
    }
  }
  return 0;
}

static napi_value int_value(napi_env env, int v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

static int ofd(int fd, int cmd, short type, int64_t start, int64_t len, struct flock *fl) {
  memset(fl, 0, sizeof *fl);
  fl->l_whence = SEEK_SET;
  fl->l_start = start;
  fl->l_len = len;
  fl->l_type = type;
  fl->l_pid = 0; /* F_OFD_* require 0 */
  return fcntl(fd, cmd, fl) == -1 ? -errno : 0;
}

/* ofdLock(fd, start, len): a shared (read) lock, as QEMU takes every lock byte (qemu_lock_fd
 * with exclusive=false): many holders of one byte are fine; what conflicts is a probe for an
 * exclusive lock on it. */
static napi_value ofd_lock(napi_env env, napi_callback_info info) {
  int64_t a[3];
  struct flock fl;
  if (args_int(env, info, 3, a)) return NULL;
  return int_value(env, ofd((int)a[0], F_OFD_SETLK, F_RDLCK, a[1], a[2], &fl));
}

/* ofdUnlock(fd, start, len) */
static napi_value ofd_unlock(napi_env env, napi_callback_info info) {
  int64_t a[3];
  struct flock fl;
  if (args_int(env, info, 3, a)) return NULL;
  return int_value(env, ofd((int)a[0], F_OFD_SETLK, F_UNLCK, a[1], a[2], &fl));
}

/* ofdTest(fd, start, len, exclusive): 0 if a lock of that kind could be taken, -EAGAIN if another
 * open file description holds a conflicting lock (qemu_lock_fd_test), else -errno. Locks held
 * through this same description never conflict. */
static napi_value ofd_test(napi_env env, napi_callback_info info) {
  int64_t a[4];
  struct flock fl;
  if (args_int(env, info, 4, a)) return NULL;
  int r = ofd((int)a[0], F_OFD_GETLK, a[3] ? F_WRLCK : F_RDLCK, a[1], a[2], &fl);
  if (r) return int_value(env, r);
  return int_value(env, fl.l_type == F_UNLCK ? 0 : -EAGAIN);
}

/* ofdAvailable(): whether the kernel has OFD locks (qemu_probe_lock_ops probes /dev/null the
 * same way: F_OFD_GETLK fails with EINVAL on kernels without them). */
static napi_value ofd_available(napi_env env, napi_callback_info info) {
  (void)info;
  struct flock fl;
  int fd = open("/dev/null", O_RDWR);
  if (fd < 0) fd = open("/dev/null", O_RDONLY);
  int ok = 0;
  if (fd >= 0) {
    ok = ofd(fd, F_OFD_GETLK, F_WRLCK, 0, 0, &fl) == 0;
    close(fd);
  }
  napi_value r;
  napi_get_boolean(env, ok, &r);
  return r;
}

/* errnoText(n): strerror(|n|), for the errors QEMU words with the errno text. */
static napi_value errno_text(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (args_int(env, info, 1, a)) return NULL;
  napi_value r;
  const char *s = strerror((int)(a[0] < 0 ? -a[0] : a[0]));
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &r);
  return r;
}

void ofdlock_register(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "ofdAvailable", NULL, ofd_available, NULL, NULL, NULL, napi_enumerable, NULL },
    { "ofdLock", NULL, ofd_lock, NULL, NULL, NULL, napi_enumerable, NULL },
    { "ofdUnlock", NULL, ofd_unlock, NULL, NULL, NULL, napi_enumerable, NULL },
    { "ofdTest", NULL, ofd_test, NULL, NULL, NULL, napi_enumerable, NULL },
    { "errnoText", NULL, errno_text, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
