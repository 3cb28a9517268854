#!/usr/bin/env bash
# `make demo`: the main job on an embedded default. A small image is made from busybox-static
# (nothing downloaded), written as an OCI layout, converted to an OCI archive and a Docker archive,
# and inspected and hashed. Outputs land in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
repro=.venv/bin/repro
out=demo-out
export SOURCE_DATE_EPOCH=1700000000
rm -rf "$out"
mkdir -p "$out/rootfs/bin" "$out/rootfs/etc"
cp /bin/busybox "$out/rootfs/bin/busybox"
for applet in sh ls cat echo env uname; do ln -s busybox "$out/rootfs/bin/$applet"; done
printf 'hello from a reproducible image\n' > "$out/rootfs/etc/motd"

step() { printf '\n$ %s\n' "$*"; "$@"; }
step $repro convert "rootfs:$out/rootfs" "oci:$out/layout:hello"
step $repro convert "oci:$out/layout:hello" "oci-archive:$out/hello.oci.tar"
step $repro convert "oci-archive:$out/hello.oci.tar" "docker-archive:$out/hello.docker.tar:hello:1"
step $repro convert "docker-archive:$out/hello.docker.tar" "oci:$out/layout:from-docker"
step $repro inspect "oci:$out/layout:hello"
step $repro hash "docker-archive:$out/hello.docker.tar"
step $repro hash --files "oci:$out/layout:hello"
printf '\nThe same inputs give the same digest on any machine; run `make demo` again to see it.\n'
