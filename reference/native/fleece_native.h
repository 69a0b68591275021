/* The parts of the reference's one Node-API module; module.c registers each on the exports. */
#ifndef FLEECE_NATIVE_H
#define FLEECE_NATIVE_H
#include <node_api.h>
void sockopt_register(napi_env env, napi_value exports);
void ofdlock_register(napi_env env, napi_value exports);
#endif
