/*
 * sockopt: the one socket option the reference needs that Node does not expose for stream
 * sockets, SO_SNDBUF (Node has setSendBufferSize for dgram sockets only).
 *
 * Why: a unix socket's send buffer defaults to net.core.wmem_default (208 KiB here), less than
 * one 256 KiB READ reply, and a unix socket only turns writable again once 3/4 of it has
 * drained (unix_writable, Linux net/unix/af_unix.c). An event-loop server is woken later than
 * the client takes to read the last quarter, so the client waits on every reply. With 1 MiB
 * the client finds data waiting.
 * Measured: reference/src/daemon/README.md.
 *
 * One part of the reference's single Node-API module (module.c registers it), built by
 * scripts/build-native.sh with the C compiler and Node's own headers; Node-API only, so the
 * binary does not depend on the V8 version.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <node_api.h>
#include "fleece_native.h"

static napi_value throw_errno(napi_env env, const char *what, int fd) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s on fd %d: %s", what, fd, strerror(errno));
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static int arg_int(napi_env env, napi_callback_info info, size_t want, int32_t *out) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, NULL, "sockopt: missing argument");
    return -1;
  }
  for (size_t i = 0; i < want; i++) {
    if (napi_get_value_int32(env, argv[i], &out[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, "sockopt: arguments must be integers");
      return -1;
    }
  }
  return 0;
}

/* The socket's SO_SNDBUF as the kernel reports it (Linux doubles what was set). */
static napi_value send_buffer_of(napi_env env, int fd) {
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, &len) != 0) return throw_errno(env, "getsockopt(SO_SNDBUF)", fd);
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

/* getSendBuffer(fd) */
static napi_value get_send_buffer(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (arg_int(env, info, 1, a)) return NULL;
  return send_buffer_of(env, a[0]);
}

/* setSendBuffer(fd, bytes): sets SO_SNDBUF (capped by net.core.wmem_max), returns getSendBuffer(fd). */
static napi_value set_send_buffer(napi_env env, napi_callback_info info) {
  int32_t a[2];
  if (arg_int(env, info, 2, a)) return NULL;
  int v = a[1];
  if (setsockopt(a[0], SOL_SOCKET, SO_SNDBUF, &v, sizeof v) != 0) return throw_errno(env, "setsockopt(SO_SNDBUF)", a[0]);
  return send_buffer_of(env, a[0]);
}

void sockopt_register(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "getSendBuffer", NULL, get_send_buffer, NULL, NULL, NULL, napi_enumerable, NULL },
    { "setSendBuffer", NULL, set_send_buffer, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
