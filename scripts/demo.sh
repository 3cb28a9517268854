#!/usr/bin/env bash
# `make demo`: the main job on an embedded default. catalog/hello (busybox-static on an empty base,
# nothing downloaded) is built reproducibly, tested, and converted to every format repro writes.
# Outputs land in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
repro=.venv/bin/repro
out=demo-out
rm -rf "$out"
mkdir -p "$out"
bash scripts/stage-hello.sh

step() { printf '\n$ %s\n' "$*"; "$@"; }
step $repro build catalog/hello/spec.yaml --store "$out/store" --test -o "oci:$out/layout:hello"
step $repro build catalog/hello/spec.yaml --store "$out/store"
step $repro build --check catalog/hello/spec.yaml
step $repro convert "oci:$out/layout:hello" "oci-archive:$out/hello.oci.tar"
step $repro convert "oci:$out/layout:hello" "docker-archive:$out/hello.docker.tar:hello:1"
step $repro convert "oci:$out/layout:hello" "sif:$out/hello.sif"
step $repro flatten "oci:$out/layout:hello" "squashfs:$out/hello.sqfs"
step $repro flatten "oci:$out/layout:hello" "tar:$out/hello-rootfs.tar"
step $repro flatten "oci:$out/layout:hello" "rootfs:$out/hello-rootfs"
step $repro convert "sif:$out/hello.sif" "oci:$out/layout:from-sif"
step $repro inspect "oci:$out/layout:hello"
step $repro inspect "sif:$out/hello.sif"
step $repro hash "docker-archive:$out/hello.docker.tar"
printf '
$ %s | tail -4
' "$repro hash --files oci:$out/layout:hello"
$repro hash --files "oci:$out/layout:hello" | tail -4
step $repro archive "oci:$out/store:hello:1.0" -o "$out/hello-package.tar" --record 'cat /etc/motd' --with sif,rootfs
step $repro verify "$out/hello-package.tar"
step $repro replay "$out/hello-package.tar"
step $repro run "archive:$out/hello-package.tar" -- 'echo $GREETING from $(uname -m)'
printf '\nThe same spec gives the same digest on any machine with the same busybox-static; run `make demo` again.\n'
