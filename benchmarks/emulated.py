"""The emulated build: python-science's packages (python3-numpy, python3-scipy and what they pull in)
installed on a Debian bookworm arm64 minbase under QEMU user emulation, by
`repro build --platform linux/arm64 --no-cache` and by `buildah bud --platform linux/arm64`.

Both start from one base, built once and cached (not timed): the arm64 minbase with python3-minimal,
bootstrapped by repro (mmdebstrap --arch=arm64) and written as a docker-archive that repro's spec names
and buildah pulls into its vfs storage. Both then run apt-get under QEMU against the same mirror and
write an image, as the native build row does.

buildah's RUN needs the host kernel to run arm64 binaries: a binfmt_misc handler for them with the F
flag (Debian's qemu-user-static with binfmt-support gives one). When the host has none, the peer's
command registers qemu host-wide for the duration of its own build (root only) under a name of its
own, and removes it after; the registration is part of its timed command (microseconds). repro
registers qemu itself, in the build step's own user namespace. Where buildah cannot run the build
here, the row says why instead of giving numbers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from repro.errors import ReproError
from repro.image import Platform
from repro.run import emulation

PLATFORM = "linux/arm64"
BASE_TAG = "bench/debian:base-arm64"
BASE_SPEC = """spec: 1
name: bench-base-arm64
tag: bench-base-arm64:1
source_date_epoch: 1700000000
base:
  debian: {suite: bookworm, variant: minbase, packages: [python3-minimal]}
"""
NAME = "emulated build, python-science linux/arm64"
PEER = "buildah bud --platform linux/arm64"


def arm64_base(cache: Path, repro: str) -> Path:
    """The arm64 minbase with python3-minimal as a docker-archive (one arm64 bootstrap, ~10 min, cached)."""
    archive = cache / "debian-base-arm64.docker.tar"
    if archive.exists():
        return archive
    with tempfile.TemporaryDirectory(prefix="bench-base-arm64-", dir=cache) as tmp:
        (Path(tmp) / "spec.yaml").write_text(BASE_SPEC)
        subprocess.run([repro, "build", f"{tmp}/spec.yaml", "--platform", PLATFORM, "--store", f"{tmp}/store",
                        "-o", f"docker-archive:{tmp}/base.tar:{BASE_TAG}"], check=True, stdout=subprocess.DEVNULL)
        os.replace(f"{tmp}/base.tar", archive)
    return archive


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def peer_obstacle() -> str:
    """Why buildah cannot run an arm64 build here ("" when nothing is known to stop it)."""
    if shutil.which("buildah") is None:
        return "buildah is not installed"
    if os.geteuid() != 0:
        return ("the benchmark runs buildah as root (its RUN steps need a host-wide binfmt_misc handler for "
                "arm64, which only root registers); run make bench as root")

    try:
        emulation.host_handler(emulation.emulator(Platform.parse(PLATFORM)))
    except ReproError as exc:
        return str(exc)
    if not (emulation.BINFMT_DIR / "register").exists():
        return f"binfmt_misc is not mounted at {emulation.BINFMT_DIR}"
    return ""


def with_handler(command: str) -> str:
    """`command` (shell) run with a host-wide qemu handler for arm64: the host's own when it has one with
    F, else one registered for the command and removed after (also when it fails)."""

    emu = emulation.emulator(Platform.parse(PLATFORM))
    if emulation.host_handler(emu) is not None:
        return command
    name = f"bench-{emu.arch}-{os.getpid()}"
    directory = emulation.BINFMT_DIR
    return (f"printf '%s' '{emu.registration(name)}' > {directory}/register && "
            f"trap 'echo -1 > {directory}/{name}' EXIT && {command}")


def emulated_build(cache: Path, work: Path, spec: str, containerfile: str, repro: str, operation):
    """The operation (an `Operation` of benchmarks.__main__): one measured pair, no warm-up (each side
    takes minutes under QEMU); where buildah cannot run it here, repro alone and why buildah cannot."""
    ctx = work / "emulated-context"
    store = work / "emulated-store"
    ours = (f"rm -rf {store} && {repro} build {ctx}/spec.yaml --platform {PLATFORM} --store {store} "
            "--no-cache > /dev/null")
    base = arm64_base(cache, repro)
    ctx.mkdir(exist_ok=True)
    (ctx / "main.py").write_text("import numpy, scipy\nprint(numpy.__version__, scipy.__version__)\n")
    (ctx / "spec.yaml").write_text(spec.format(base=f"docker-archive:{base}"))
    (ctx / "Containerfile").write_text(containerfile.format(base=BASE_TAG))
    obstacle = peer_obstacle()
    if obstacle:
        return operation(NAME, PEER, ours, "", skipped=obstacle, pairs=1, warm_up=False)
    buildah = " ".join(["buildah", "--root", str(work / "buildah-arm64-root"), "--runroot",
                        str(work / "buildah-arm64-run"), "--storage-driver", "vfs"])
    if subprocess.run(f"{buildah} inspect {BASE_TAG}", shell=True, capture_output=True).returncode != 0:
        pulled = subprocess.run(f"{buildah} pull -q docker-archive:{base}", shell=True, capture_output=True,
                                text=True)
        if pulled.returncode != 0:
            return operation(NAME, PEER, ours, "", skipped=f"buildah pull of the arm64 base failed: "
                             f"{_last_line(pulled.stderr)}", pairs=1, warm_up=False)
    # a first look: can buildah run an arm64 binary in this base at all?
    probe_dir = work / "emulated-probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "Containerfile").write_text(f"FROM {BASE_TAG}\nRUN uname -m > /arch && cat /arch\n")
    probe = subprocess.run(with_handler(f"{buildah} bud --platform {PLATFORM} --isolation chroot --layers=false "
                                        f"-t bench/probe-arm64:1 -f {probe_dir}/Containerfile {probe_dir} && "
                                        f"{buildah} rmi -f bench/probe-arm64:1 > /dev/null"),
                           shell=True, capture_output=True, text=True, executable="/bin/bash")
    if probe.returncode != 0 or "aarch64" not in probe.stdout:
        return operation(NAME, PEER, ours, "", skipped="buildah bud --platform linux/arm64 cannot run an arm64 "
                         f"RUN step here: {_last_line(probe.stderr or probe.stdout)}", pairs=1, warm_up=False)
    theirs = with_handler(f"{buildah} bud -q --platform {PLATFORM} --isolation chroot --layers=false "
                          f"-t bench/science-arm64:1 -f {ctx}/Containerfile {ctx} > /dev/null && "
                          f"{buildah} rmi -f bench/science-arm64:1 > /dev/null")
    return operation(NAME, PEER, ours, theirs, pairs=1, warm_up=False)
