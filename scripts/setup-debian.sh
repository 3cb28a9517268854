#!/usr/bin/env bash
# Install the Debian packages repro's tests and demo use; quick when they are all there already.
set -euo pipefail
packages=(
  skopeo umoci buildah squashfs-tools squashfs-tools-ng siftool docker.io docker-registry
  mmdebstrap proot bubblewrap busybox-static uidmap iptables apache2-utils iproute2 time
  runc golang-github-opencontainers-image-spec-dev podman
  openmpi-bin
  qemu-user-static arch-test
)
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
# tests/test_emulation.py downloads Debian's arm64 busybox-static (apt-get download busybox-static:arm64)
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "setup: adding the arm64 architecture to dpkg (for the emulation tests' arm64 package)"
  $sudo dpkg --add-architecture arm64
  $sudo apt-get update -qq
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "setup: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
