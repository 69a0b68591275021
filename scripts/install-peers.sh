#!/usr/bin/env bash
# Installs the real peers the suite tests against (Debian packages), once.
# Idempotent: does nothing when every command is already present.
# Used by `npm test` (pretest), `.ci/run` and the README.
set -euo pipefail

# command -> Debian package that ships it
declare -A PEERS=(
  [qemu-img]=qemu-utils
  [qemu-io]=qemu-utils
  [qemu-nbd]=qemu-utils
  [qemu-storage-daemon]=qemu-system-common
  [nbdkit]=nbdkit
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbd-server]=nbd-server
  [spin]=spin
  [fio]=fio
  [strace]=strace
  [certtool]=gnutls-bin
  [psktool]=gnutls-bin
)
# qemu-block-extra has no command of its own (it adds block drivers, e.g. blkdebug is built in,
# curl/iscsi/... are modules); check its package status instead.
EXTRA_PKGS=(qemu-block-extra)

missing=()
for cmd in "${!PEERS[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PEERS[$cmd]}")
done
for pkg in "${EXTRA_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-peers: all peers present"
  exit 0
fi

mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-peers: installing ${pkgs[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "install-peers: need root for apt-get (missing: ${pkgs[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# nbd-server's postinst may start a daemon on port 10809; the suite starts its own instances.
systemctl stop nbd-server >/dev/null 2>&1 || true
for cmd in "${!PEERS[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "install-peers: $cmd still missing after install" >&2; exit 1; }
done
echo "install-peers: done"
