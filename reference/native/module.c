/*
 * The reference's one Node-API module, reference/native/build/fleece.node: the fd-level calls Node
 * does not expose. sockopt.c: SO_SNDBUF on stream sockets; ofdlock.c: open-file-description byte
 * locks (QEMU's image locking). Built by scripts/build-native.sh; the daemon runs without it and
 * says what it lost (reference/src/native.ts).
 */
#include "fleece_native.h"

static napi_value init(napi_env env, napi_value exports) {
  sockopt_register(env, exports);
  ofdlock_register(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
