"""Debian bases, bootstrapped by mmdebstrap into a tarball and imported as one layer.

mmdebstrap honours SOURCE_DATE_EPOCH, so the same packages give the same tree; a customize hook
records every installed package (name, version, architecture) and the sha256 of each .deb for the
lock file before mmdebstrap cleans its caches.

`options["arch"]` (Debian's name: arm64, armhf, ...) bootstraps another architecture; when the host
cannot run it, its maintainer scripts run under QEMU. mmdebstrap chroots into the tree on the host, so
as root qemu is registered host-wide with binfmt_misc for the bootstrap (repro.run.emulation.global_handler,
removed after). A plain user's mmdebstrap runs in root mode inside a user namespace that maps the
user's subordinate ids (as its unshare mode does) and has qemu in its own binfmt_misc (Linux 6.7 and
later); on older kernels only the host's own handler (with F) for that architecture lets it work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from builders.hygiene import is_volatile_stream_path
from repro.errors import ReproError
from repro.image import Platform
from repro.layers import TarWriter
from repro.run import emulation
from repro.tarstream import copy_tar_stream

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBIAN_ARCHITECTURES = {"amd64": "amd64", "arm64": "arm64", "arm/v7": "armhf", "arm/v5": "armel", "386": "i386",
                        "ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64", "mips64le": "mips64el"}


def debian_architecture(platform: Platform) -> str:
    """Debian's name of an OCI platform's architecture (arm64, armhf, ppc64el, ...)."""
    key = f"{platform.architecture}/{platform.variant}" if platform.architecture == "arm" else platform.architecture
    if key == "arm":
        key = "arm/v7"
    if key not in DEBIAN_ARCHITECTURES:
        raise ReproError(f"platform {platform}: Debian has no such architecture",
                         f"use one of {', '.join('linux/' + k for k in DEBIAN_ARCHITECTURES)}")
    return DEBIAN_ARCHITECTURES[key]



def bootstrap(options: dict, epoch: int, tar: TarWriter, what: str) -> list[dict]:
    """Write the base layer into `tar`; returns the installed packages for the lock."""

    if shutil.which("mmdebstrap") is None:
        raise ReproError("mmdebstrap is not installed", "install it (make setup does)")
    with tempfile.TemporaryDirectory(prefix="repro-debian-") as tmp:
        out = Path(tmp) / "base.tar"
        record = Path(tmp)
        packages = options.get("packages") or []
        arch = options.get("arch") or ""
        prefix, mode, context = _emulation(arch, what)
        command = [
            *prefix, "mmdebstrap", f"--variant={options.get('variant', 'minbase')}", f"--mode={mode}", "--format=tar",
            # Single quotes: the hook runs in a shell, and dpkg-query expands ${Package} itself.
            "--customize-hook", f"chroot \"$1\" dpkg-query -W -f '${{Package}}\\t${{Version}}\\t${{Architecture}}\\n' "
                                f"> {record}/packages.tsv",
            "--customize-hook", f'cd "$1/var/cache/apt/archives" && (sha256sum *.deb || true) > {record}/debs.sha256',
            "--skip=cleanup/apt/cache",
            "--customize-hook", 'rm -f "$1"/var/cache/apt/archives/*.deb',
        ]
        if packages:
            command.append("--include=" + ",".join(packages))
        if arch:
            command.append(f"--arch={arch}")
        command += [options["suite"], str(out), options.get("mirror") or DEFAULT_MIRROR]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        with context:
            proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode != 0 and prefix and "/etc/sub" in proc.stderr:
            raise ReproError(f"{what}: bootstrapping Debian {arch} as a plain user needs subordinate ids "
                             "(/etc/subuid and /etc/subgid), as mmdebstrap's unshare mode does",
                             "ask an administrator: usermod --add-subuids FIRST-LAST --add-subgids FIRST-LAST USER")
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("E: ")]
            tail = errors[0] if errors else (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            unknown = [p for p in packages if f"Unable to locate package {p}" in proc.stderr or
                       f"'{p}' has no installation candidate" in proc.stderr]
            if unknown:
                raise ReproError(f"{what}: unknown Debian package {unknown[0]!r} in {options['suite']}",
                                 "check the name with apt-cache search")
            raise ReproError(f"{what}: mmdebstrap failed: {tail}", "check the suite, mirror and network")
        with open(out, "rb") as f:
            copy_tar_stream(f, tar, what, epoch, skip=is_volatile_stream_path)
        return _installed(record)


def host_architecture() -> str:
    proc = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _emulation(arch: str, what: str) -> tuple[list[str], str, contextlib.AbstractContextManager]:
    """(command prefix, mmdebstrap mode, context to run it in) that let mmdebstrap run `arch`'s
    maintainer scripts here: nothing more for the host's architecture (or one its CPU runs, as i386 on
    amd64) as root, a user namespace of the user's subordinate ids for a plain user; else qemu,
    registered host-wide for the bootstrap as root, or in a plain user's own user namespace where the
    kernel allows it."""
    if not arch or arch == host_architecture() or (host_architecture(), arch) == ("amd64", "i386"):
        if os.geteuid() == 0:
            return [], "root", contextlib.nullcontext()
        # A plain user: mmdebstrap's root mode as root of a user namespace that maps the user's subordinate
        # ids, as its unshare mode does; but there the hooks would run as a subordinate id, which cannot
        # write the package records into this process's private temporary directory.
        unshare = shutil.which("unshare") or "unshare"
        return ([unshare, "--map-auto", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc"], "root",
                contextlib.nullcontext())
    emu = emulation.debian_emulator(arch)
    if shutil.which("arch-test") is None:
        raise ReproError(f"{what}: bootstrapping Debian {arch} needs arch-test", "apt-get install arch-test")
    if os.geteuid() == 0:
        return [], "root", emulation.global_handler(emu)
    if emulation.namespaced():
        return emulation.namespace_prefix(emu, all_ids=True), "root", contextlib.nullcontext()
    if emulation.host_handler(emu) is None:
        raise ReproError(f"{what}: as a plain user, bootstrapping Debian {arch} needs Linux 6.7 or later, or this "
                         f"host's binfmt_misc to run {arch} binaries, which it does not",
                         "build as root (repro registers qemu for the bootstrap), or have an administrator "
                         "install qemu-user-static and binfmt-support")
    return [], "unshare", contextlib.nullcontext()


def _installed(record: Path) -> list[dict]:
    hashes: dict[str, str] = {}
    if (record / "debs.sha256").exists():
        for line in (record / "debs.sha256").read_text().splitlines():
            digest, _, name = line.partition("  ")
            hashes[name.strip()] = digest
    out = []
    for line in (record / "packages.tsv").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0]:
            raise ReproError(f"mmdebstrap's package list has a malformed line {line!r}", "report this as a bug")
        name, version, arch = fields
        deb = f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
        out.append({"name": name, "version": version, "architecture": arch, "sha256": hashes.get(deb, "")})
    return sorted(out, key=lambda p: p["name"])
