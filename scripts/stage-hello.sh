#!/usr/bin/env bash
# Puts catalog/hello's copy sources beside its spec: the host's Debian busybox-static as `busybox` (the
# Containerfile's and app.def's source) and as `busybox-ARCH` (spec.yaml's, per ${TARGETARCH}), and for
# every other ARCH named (OCI names: arm64, ...) Debian's busybox-static for it, from apt
# (`apt-get download busybox-static:ARCH`; the architecture must be known to dpkg: dpkg --add-architecture).
#   scripts/stage-hello.sh [ARCH...]
set -euo pipefail
dir="$(cd "$(dirname "$0")/../catalog/hello" && pwd)"
host=$(dpkg --print-architecture)
cmp -s /bin/busybox "$dir/busybox" || cp /bin/busybox "$dir/busybox"
cmp -s /bin/busybox "$dir/busybox-$host" || cp /bin/busybox "$dir/busybox-$host"
for arch in "$@"; do
  [ "$arch" = "$host" ] && continue
  [ -s "$dir/busybox-$arch" ] && continue
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt's _apt user downloads into it
  (cd "$tmp" && apt-get download -q "busybox-static:$arch" > /dev/null)
  dpkg-deb --fsys-tarfile "$tmp"/busybox-static_*_"$arch".deb | tar -xO ./bin/busybox > "$tmp/busybox"
  mv "$tmp/busybox" "$dir/busybox-$arch"
  rm -rf "$tmp"
done
