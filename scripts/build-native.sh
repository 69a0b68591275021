#!/usr/bin/env bash
# Builds the reference's one Node-API module, reference/native/build/fleece.node, from
# reference/native/*.c (module.c registers the parts: sockopt.c, SO_SNDBUF for the NBD server's
# unix sockets; ofdlock.c, the OFD byte locks of the `file` driver's image locking) with the C
# compiler and the running Node's headers.
# Idempotent: does nothing when the module is newer than its sources. Without a compiler or the
# headers it says so and exits 0: the server then runs with the kernel's default send buffer and
# without image locking (reference/src/native.ts reports why), and the test suite fails under
# CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
srcs=(reference/native/module.c reference/native/sockopt.c reference/native/ofdlock.c)
hdr=reference/native/fleece_native.h
out=reference/native/build/fleece.node
fresh=1
for f in "${srcs[@]}" "$hdr" "$0"; do [[ -f $out && $out -nt $f ]] || fresh=0; done
if [[ $fresh == 1 ]]; then exit 0; fi
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
"$cc" -O2 -Wall -Wextra -Werror -fPIC -shared -DNODE_GYP_MODULE_NAME=fleece -I"$inc" -o "$out.tmp" "${srcs[@]}"
mv "$out.tmp" "$out"
rm -f reference/native/build/sockopt.node # the module's name before it had more than sockopt.c
echo "build-native: built $out" >&2
