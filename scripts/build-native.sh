#!/usr/bin/env bash
# Builds reference/native/build/sockopt.node (SO_SNDBUF for the reference NBD server's unix
# sockets, see reference/native/sockopt.c) with the C compiler and the running Node's headers.
# Idempotent: does nothing when the module is newer than its source. Without a compiler or the
# headers it says so and exits 0: the server then runs with the kernel's default send buffer
# (reference/src/nbd/sockopt.ts reports why), and the test suite fails under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
src=reference/native/sockopt.c
out=reference/native/build/sockopt.node
if [[ -f $out && $out -nt $src && $out -nt "$0" ]]; then exit 0; fi
cc=${CC:-cc}
if ! command -v "$cc" >/dev/null; then
  echo "build-native: no C compiler ('$cc'): $out not built; install build-essential" >&2
  exit 0
fi
inc=$(node -p "require('path').resolve(process.execPath, '../../include/node')")
if [[ ! -f $inc/node_api.h ]]; then
  echo "build-native: Node's headers are not in $inc (node_api.h): $out not built; install the nodejs package that ships them (or libnode-dev)" >&2
  exit 0
fi
mkdir -p "$(dirname "$out")"
"$cc" -O2 -Wall -Werror -fPIC -shared -DNODE_GYP_MODULE_NAME=sockopt -I"$inc" -o "$out.tmp" "$src"
mv "$out.tmp" "$out"
echo "build-native: built $out" >&2
