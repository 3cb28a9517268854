"""`python -m benchmarks [--quick] [--pairs N] [--only NAME]`: repro against the peer tools.

For each operation, repro and the peer run alternately on the same input (a warm-up of each, then
N pairs), so page cache and machine noise fall on both alike. Reported: median wall time, CPU time,
peak RSS of the whole process tree, the ratio repro/peer and the min-max spread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.emulated import NAME as EMULATED_NAME
from benchmarks.emulated import emulated_build
from benchmarks.inputs import TAG, decompress_command, synthetic_image
from benchmarks.measure import Sample, run
from benchmarks.memory import NAME as MEMORY_NAME
from benchmarks.memory import memory_rows, memory_table
from benchmarks.registry import LocalRegistry

HERE = Path(__file__).resolve().parent
REPRO = str(Path(sys.executable).parent / "repro")


@dataclass
class Operation:
    name: str
    peer: str
    ours: list[str] | str
    theirs: list[str] | str
    outputs: list[Path] = field(default_factory=list)
    prepare: Callable[[], None] | None = None  # before every run, untimed (e.g. an empty registry)
    pairs: int | None = None  # at most this many measured pairs (operations of many minutes)
    warm_up: bool = True  # a first, unmeasured run of each side
    skipped: str = ""  # why the peer cannot run here (printed in the row; repro is measured alone)

    def clean(self, trash: Path) -> bool:
        """Make way for the next run: outputs are moved into `trash` (deleted after the row, see
        measure), since deleting a tree here would slow the run after it. Returns whether any moved."""
        if self.prepare is not None:
            self.prepare()
        moved = False
        for path in self.outputs:
            if path.exists() or path.is_symlink():
                trash.mkdir(parents=True, exist_ok=True)
                path.rename(trash / f"{len(list(trash.iterdir()))}-{path.name}")
                moved = True
        return moved


# ext4 without a journal (this machine's root) skips, for each new inode, every inode freed in the
# last 60 s (360 s while its inode table block is unwritten): creating 50,000 files right after
# deleting 50,000 costs several times the system time. A row's outputs are deleted after it, synced,
# and the next row waits this long, so no run pays for what an earlier one left behind.
SETTLE_AFTER_DELETION_S = 65


def registry_operations(image: Path, work: Path, push: LocalRegistry, pull: LocalRegistry) -> list[Operation]:
    """Push into an empty registry (restarted on empty storage before every run, so neither tool finds a
    blob there or can mount one), and pull from a second registry into a new layout."""
    src = f"oci:{image}:{TAG}"
    out = work / "out"
    pulled = f"docker://{pull.host}/bench/pulled:1"
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", src, pulled], check=True)
    registry = push
    return [
        Operation(
            "push to a local registry",
            "skopeo copy",
            [REPRO, "convert", src, f"docker://{registry.host}/bench/ours:1"],
            ["skopeo", "copy", "-q", "--dest-tls-verify=false", src, f"docker://{registry.host}/bench/peer:1"],
            [],
            registry.reset,
        ),
        Operation(
            "pull from a local registry",
            "skopeo copy",
            [REPRO, "convert", pulled, f"oci:{out}/pulled-ours:1"],
            ["skopeo", "copy", "-q", "--src-tls-verify=false", pulled, f"oci:{out}/pulled-peer:1"],
            [out / "pulled-ours", out / "pulled-peer"],
        ),
    ]


def operations(image: Path, work: Path) -> list[Operation]:
    src = f"oci:{image}:{TAG}"
    docker_tar = work / "input-docker.tar"
    if not docker_tar.exists():
        subprocess.run(
            [REPRO, "convert", src, f"docker-archive:{docker_tar}:bench:1"], check=True, stdout=subprocess.DEVNULL
        )
    flat = work / "input-rootfs"
    if not flat.exists():
        subprocess.run([REPRO, "flatten", src, f"rootfs:{flat}"], check=True, stdout=subprocess.DEVNULL)
    out = work / "out"
    out.mkdir(exist_ok=True)
    return [
        Operation(
            "oci -> docker-archive",
            "skopeo copy",
            [REPRO, "convert", src, f"docker-archive:{out}/ours.tar:bench:1"],
            ["skopeo", "copy", "-q", src, f"docker-archive:{out}/peer.tar:bench:1"],
            [out / "ours.tar", out / "peer.tar"],
        ),
        Operation(
            "docker-archive -> oci",
            "skopeo copy",
            [REPRO, "convert", f"docker-archive:{docker_tar}", f"oci:{out}/ours:1"],
            ["skopeo", "copy", "-q", f"docker-archive:{docker_tar}", f"oci:{out}/peer:1"],
            [out / "ours", out / "peer"],
        ),
        Operation(
            "flatten to a directory",
            "umoci unpack",
            [REPRO, "flatten", src, f"rootfs:{out}/ours-rootfs"],
            ["umoci", "unpack", "--image", f"{image}:{TAG}", f"{out}/peer-bundle"],
            [out / "ours-rootfs", out / "peer-bundle"],
        ),
        Operation(
            "floor: flatten to a directory",
            "igzip -dc of the layers > /dev/null",
            [REPRO, "flatten", src, f"rootfs:{out}/ours-rootfs"],
            f"{decompress_command(image, TAG)} > /dev/null",
            [out / "ours-rootfs"],
        ),
        Operation(
            "OCI -> squashfs",
            "umoci unpack + mksquashfs",
            [REPRO, "flatten", src, f"squashfs:{out}/ours.sqfs"],
            f"umoci unpack --image {image}:{TAG} {out}/peer-sq && "
            f"mksquashfs {out}/peer-sq/rootfs {out}/peer.sqfs -comp gzip -noappend -quiet >/dev/null",
            [out / "ours.sqfs", out / "peer-sq", out / "peer.sqfs"],
        ),
        Operation(
            "OCI -> SIF",
            "umoci unpack + mksquashfs + siftool new/add",
            [REPRO, "convert", src, f"sif:{out}/ours.sif"],
            f"umoci unpack --image {image}:{TAG} {out}/peer-sif && "
            f"mksquashfs {out}/peer-sif/rootfs {out}/peer-sif.sqfs -comp gzip -noappend -quiet >/dev/null && "
            f"siftool new {out}/peer.sif && siftool add {out}/peer.sif {out}/peer-sif.sqfs "
            "--datatype 4 --parttype 2 --partfs 1 --partarch 2",
            [out / "ours.sif", out / "peer-sif", out / "peer-sif.sqfs", out / "peer.sif"],
        ),
        Operation(
            "image digest verification",
            "sha256sum of the blobs",
            [REPRO, "verify", src],
            f"sha256sum {image}/blobs/sha256/* > /dev/null",
            [],
        ),
        Operation(
            "per-file hashes",
            "sha256sum over the flattened tree",
            f"{REPRO} hash --files --json {src} > /dev/null",
            f"cd {flat} && find . -type f -print0 | xargs -0 sha256sum > /dev/null",
            [],
        ),
        Operation(
            "floor: per-file hashes",
            "igzip -dc of the layers, piped to openssl sha256",
            f"{REPRO} hash --files --json {src} > /dev/null",
            f"{decompress_command(image, TAG)} | openssl dgst -sha256 > /dev/null",
            [],
        ),
    ]


DEBIAN_PACKAGES = ("python3,python3-numpy,python3-scipy,python3-pandas,python3-matplotlib,perl,git,curl,make,gcc,"
                   "libc6-dev,less,procps,openssl")


def debian_operations(cache: Path, work: Path) -> list[Operation]:
    """An SBOM of a Debian image of a few hundred packages (mmdebstrap, cached), with per-file hashes,
    next to sha256sum over its flattened files."""

    base_tar = cache / f"debian-sbom-{hashlib.sha256(DEBIAN_PACKAGES.encode()).hexdigest()[:12]}.tar"
    if not base_tar.exists():
        subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet",
                        f"--include={DEBIAN_PACKAGES}", "bookworm", str(base_tar) + ".tmp",
                        "http://deb.debian.org/debian"],
                       check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
        os.replace(str(base_tar) + ".tmp", base_tar)
    layout = work / base_tar.stem
    if not layout.exists():
        subprocess.run([REPRO, "convert", f"tar:{base_tar}", f"oci:{layout}:1"], check=True, stdout=subprocess.DEVNULL)
    flat = work / f"{base_tar.stem}-rootfs"
    if not flat.exists():
        subprocess.run([REPRO, "flatten", f"oci:{layout}:1", f"rootfs:{flat}"], check=True, stdout=subprocess.DEVNULL)
    run_store = work / "run-store"
    return [
        Operation(
            "repro run of a Debian image (unpacked once, reused)",
            "umoci unpack + runc run, each time",
            f"REPRO_STORE={run_store} {REPRO} run oci:{layout}:1 -- /bin/true",
            f"umoci unpack --image {layout}:1 {work}/peer-run >/dev/null && "
            f"sed -i 's/\"terminal\": true/\"terminal\": false/' {work}/peer-run/config.json && "
            f"runc run --bundle {work}/peer-run repro-bench-$$ < /dev/null",
            [work / "peer-run"],
        ),
        Operation(
            "SBOM of a Debian image (per-file hashes)",
            "sha256sum over the flattened tree",
            f"{REPRO} sbom --format spdx-json oci:{layout}:1 > /dev/null",
            f"cd {flat} && find . -type f -print0 | xargs -0 sha256sum > /dev/null",
            [],
        ),
        Operation(
            "floor: SBOM of a Debian image",
            "igzip -dc of the layers, piped to openssl sha256",
            f"{REPRO} sbom --format spdx-json oci:{layout}:1 > /dev/null",
            f"{decompress_command(layout)} | openssl dgst -sha256 > /dev/null",
            [],
        ),
    ]


BUILD_SPEC = """spec: 1
name: bench-science
tag: bench-science:1
source_date_epoch: 1700000000
base:
  image: {base}
steps:
  - packages: [python3-numpy, python3-scipy]
  - copy: {{src: main.py, dst: /opt/app/main.py}}
config:
  entrypoint: [python3, /opt/app/main.py]
"""
CONTAINERFILE = """FROM {base}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
    python3-numpy python3-scipy > /dev/null && rm -rf /var/lib/apt/lists/*
COPY main.py /opt/app/main.py
ENTRYPOINT ["python3", "/opt/app/main.py"]
"""


COLD_SCIENCE = "build python-science (cold)"
COLD_SMALL = "build a small spec (cold)"


def build_operations(cache: Path, work: Path) -> list[Operation]:
    """python-science's packages on the same Debian base (one mmdebstrap tarball imported by both)."""
    base_tar = cache / "debian-base.tar"
    if not base_tar.exists():
        subprocess.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--format=tar",
                "--quiet",
                "--include=python3-minimal",
                "bookworm",
                str(base_tar) + ".tmp",
                "http://deb.debian.org/debian",
            ],
            check=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"},
        )
        os.replace(str(base_tar) + ".tmp", base_tar)
    ctx = work / "build-context"
    ctx.mkdir(exist_ok=True)
    base_archive = work / "debian-base.docker.tar"
    if not base_archive.exists():
        subprocess.run(
            [REPRO, "convert", f"tar:{base_tar}", f"docker-archive:{base_archive}:bench/debian:base"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    (ctx / "main.py").write_text("import numpy, scipy\nprint(numpy.__version__, scipy.__version__)\n")
    (ctx / "spec.yaml").write_text(BUILD_SPEC.format(base=f"docker-archive:{base_archive}"))
    buildah = [
        "buildah",
        "--root",
        str(work / "buildah-root"),
        "--runroot",
        str(work / "buildah-run"),
        "--storage-driver",
        "vfs",
    ]
    if subprocess.run([*buildah, "inspect", "bench/debian:base"], capture_output=True).returncode != 0:
        subprocess.run(
            [*buildah, "pull", "-q", f"docker-archive:{base_archive}"], check=True, stdout=subprocess.DEVNULL
        )
    (ctx / "Containerfile").write_text(CONTAINERFILE.format(base="bench/debian:base"))
    store = work / "build-store"
    peer_oci = work / "build-peer-oci"
    bud = f"{' '.join(buildah)} bud -q --isolation chroot"
    return [
        Operation(
            COLD_SCIENCE,
            "buildah bud --layers=false, then buildah push to oci:",
            f"{REPRO} build {ctx}/spec.yaml --store {store} --no-cache > /dev/null",
            f"{bud} --layers=false -t bench/science:1 -f {ctx}/Containerfile {ctx} > /dev/null && "
            f"{' '.join(buildah)} push -q bench/science:1 oci:{peer_oci}:1 > /dev/null && "
            f"{' '.join(buildah)} rmi -f bench/science:1 > /dev/null",
            [store, peer_oci, ctx / "spec.lock"],  # without its lock, as a new spec: today's compressor
        ),
        Operation(
            "build python-science (warm, cached)",
            "buildah bud --layers (cached)",
            f"{REPRO} build {ctx}/spec.yaml --store {store} > /dev/null",
            f"{bud} --layers -t bench/science:2 -f {ctx}/Containerfile {ctx} > /dev/null",
            [],
        ),
    ]


SMALL_SPEC = """spec: 1
name: bench-small
tag: bench-small:1
source_date_epoch: 1700000000
base:
  scratch: true
steps:
  - copy: {src: busybox, dst: /bin/busybox, mode: "0755"}
  - run: [/bin/busybox, --install, -s, /bin]
  - run: mkdir -p /etc /tmp && chmod 1777 /tmp
  - file: {dst: /etc/motd, content: "hello from a reproducible image\\n"}
config:
  entrypoint: [/bin/sh, -c]
  cmd: ["cat /etc/motd"]
"""
SMALL_CONTAINERFILE = """FROM scratch
COPY --chmod=0755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /etc /tmp && chmod 1777 /tmp
COPY motd /etc/motd
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /etc/motd"]
"""


def small_build_operations(work: Path) -> list[Operation]:
    """catalog/hello's kind of spec (scratch, busybox copied in, two runs, a file), cold: repro into a new
    store each time, buildah without layers and then pushed to an oci: directory (vfs keeps layers
    uncompressed until then), both from the same context."""
    ctx = work / "small-context"
    ctx.mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", ctx / "busybox")
    (ctx / "motd").write_text("hello from a reproducible image\n")
    (ctx / "spec.yaml").write_text(SMALL_SPEC)
    (ctx / "Containerfile").write_text(SMALL_CONTAINERFILE)
    buildah = " ".join(["buildah", "--root", str(work / "buildah-root"), "--runroot", str(work / "buildah-run"),
                        "--storage-driver", "vfs"])
    store, peer_oci = work / "small-store", work / "small-peer-oci"
    return [
        Operation(
            COLD_SMALL,
            "buildah bud --layers=false, then buildah push to oci:",
            f"{REPRO} build {ctx}/spec.yaml --store {store} --no-cache > /dev/null",
            f"{buildah} bud -q --isolation chroot --layers=false -t bench/small:1 -f {ctx}/Containerfile {ctx} "
            f"> /dev/null && {buildah} push -q bench/small:1 oci:{peer_oci}:1 > /dev/null && "
            f"{buildah} rmi -f bench/small:1 > /dev/null",
            [store, peer_oci, ctx / "spec.lock"],
        ),
    ]


def emulated_build_operations(cache: Path, work: Path) -> list[Operation]:
    """python-science's packages installed on an arm64 Debian base under QEMU, by repro and by buildah."""
    return [emulated_build(cache, work, BUILD_SPEC, CONTAINERFILE, REPRO, Operation)]


def measure(op: Operation, pairs: int, trash: Path, settle: bool) -> dict:
    samples: dict[str, list[Sample]] = {"repro": [], "peer": []}
    pairs = min(pairs, op.pairs or pairs)
    moved = False
    for round_number in range(0 if op.warm_up else 1, pairs + 1):  # round 0 is the warm-up of both
        for who, command in (("repro", op.ours), ("peer", op.theirs))[:1 if op.skipped else 2]:
            moved |= op.clean(trash)
            sample = run(command)
            if round_number:
                samples[who].append(sample)
    moved |= op.clean(trash)
    if trash.exists():
        shutil.rmtree(trash)
    if moved and settle:
        os.sync()
        time.sleep(SETTLE_AFTER_DELETION_S)

    def summary(items: list[Sample]) -> dict:
        walls = [s.wall for s in items]
        return {
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "max_s": max(walls),
            "cpu_s": statistics.median(s.cpu for s in items),
            "peak_rss_mb": max(s.peak_rss_mb for s in items),
        }

    ours = summary(samples["repro"])
    if op.skipped:
        return {"operation": op.name, "peer": op.peer, "repro": ours, "skipped": op.skipped}
    theirs = summary(samples["peer"])
    return {
        "operation": op.name,
        "peer": op.peer,
        "repro": ours,
        "peer_result": theirs,
        "ratio": ours["median_s"] / theirs["median_s"] if theirs["median_s"] else float("nan"),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| operation | peer | repro s | peer s | ratio | repro spread | peer spread | repro CPU s | "
        "peer CPU s | repro RSS MB | peer RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("skipped"):
            o = r["repro"]
            lines.append(f"| {r['operation']} | {r['peer']} | {o['median_s']:.2f} | not measured: {r['skipped']} | "
                         f"| {o['min_s']:.2f}-{o['max_s']:.2f} | | {o['cpu_s']:.2f} | | {o['peak_rss_mb']:.0f} | |")
            continue
        o, p = r["repro"], r["peer_result"]
        lines.append(
            f"| {r['operation']} | {r['peer']} | {o['median_s']:.2f} | {p['median_s']:.2f} | {r['ratio']:.2f} | "
            f"{o['min_s']:.2f}-{o['max_s']:.2f} | {p['min_s']:.2f}-{p['max_s']:.2f} | {o['cpu_s']:.2f} | "
            f"{p['cpu_s']:.2f} | {o['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // (1 << 20)
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory} GiB, Linux {platform.release()}, Python {platform.python_version()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="~50 MB inputs, one pair: checks every benchmark runs")
    parser.add_argument("--pairs", type=int, help="measured pairs per operation (default 3, quick 1)")
    parser.add_argument("--only", help="run only operations whose name contains this")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache", help="where generated inputs are kept")
    args = parser.parse_args()
    scale = 0.05 if args.quick else 1.0
    pairs = args.pairs or (1 if args.quick else 3)
    args.cache.mkdir(parents=True, exist_ok=True)
    work = args.cache / f"work-{scale:g}"
    work.mkdir(exist_ok=True)
    results = []
    # --only NAME of one row that needs none of the others' inputs (a GiB image, Debian tarballs): that row alone
    emulated_only = bool(args.only) and "emulated" in args.only and args.only in EMULATED_NAME
    # --only memory: the 1 GiB / 4 GiB memory row alone (it generates its own inputs)
    memory_only = bool(args.only) and "memory" in args.only and args.only in MEMORY_NAME
    small_only = bool(args.only) and args.only in COLD_SMALL and args.only not in COLD_SCIENCE
    science_only = bool(args.only) and "science" in args.only and args.only in COLD_SCIENCE
    alone = emulated_only or small_only or science_only or memory_only
    image: Path | None = None
    ops: list[Operation] = []
    registries: tuple[LocalRegistry, ...] = ()
    if not alone:
        print(f"generating inputs (scale {scale:g}) in {args.cache} ...", file=sys.stderr)
        image = synthetic_image(args.cache, scale)
        ops += operations(image, work)
        registries = LocalRegistry(work / "push-registry"), LocalRegistry(work / "pull-registry")
        ops += registry_operations(image, work, *registries)
    if not args.quick:  # minutes each: never in make test's quick mode
        if not alone:
            ops += debian_operations(args.cache, work)
        if not alone or science_only:
            ops += build_operations(args.cache, work)
        if not alone or small_only:
            ops += small_build_operations(work)
        if not alone or emulated_only:
            ops += emulated_build_operations(args.cache, work)
    for op in ops:
        if args.only and args.only not in op.name:
            continue
        print(f"  {op.name} vs {op.peer} ...", file=sys.stderr)
        if op.skipped:
            print(f"    {op.peer} not measured: {op.skipped}", file=sys.stderr)
        results.append(measure(op, pairs, work / "trash", settle=not args.quick))
        r = results[-1]
        if op.skipped:
            print(f"    repro alone: {r['repro']['median_s']:.2f} s", file=sys.stderr)
            continue
        print(f"    ratio {r['ratio']:.2f} ({r['repro']['median_s']:.2f} s vs {r['peer_result']['median_s']:.2f} s)",
              file=sys.stderr)
    for registry in registries:
        registry.stop()
    memory: list[dict] = []
    if not args.quick and (not args.only or args.only in MEMORY_NAME):  # minutes, 4 GiB of input: never quick
        memory = memory_rows(args.cache, REPRO)
    report = {
        "machine": machine(),
        "scale": scale,
        "pairs": pairs,
        "image_bytes": sum(p.stat().st_size for p in (image / "blobs" / "sha256").iterdir()) if image else 0,
        "results": results,
        "memory": memory,
    }
    markdown = table(results)
    if memory:
        markdown += f"\n\n{MEMORY_NAME} (each command once per size):\n\n{memory_table(memory)}"
    print(markdown)
    # a quick or partial run (--only) never replaces the full results beside this file
    destination = HERE if not (args.quick or args.only) else args.cache
    (destination / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (destination / "results.md").write_text(f"Machine: {report['machine']}\n\n{markdown}\n")
    for r in results:
        if r.get("skipped") and r["repro"]["median_s"] > 0:
            continue
        if not (r["repro"]["median_s"] > 0 and r["peer_result"]["median_s"] > 0):
            print(f"benchmark {r['operation']} produced no number", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
