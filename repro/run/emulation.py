"""Running a tree of another architecture under QEMU user emulation, confined as a native run is.

The kernel runs a foreign binary through the interpreter that binfmt_misc names for its ELF header.
Where that registration lives decides everything:

- In a user namespace of the run's own (Linux 6.7 and later, `sandboxed()`): binfmt_misc mounted by
  root of a user namespace is an instance of that namespace and its children only. A run registers
  qemu there and nothing outside changes; the instance ends with the namespace, also when repro is
  killed. runc registers it from a createRuntime hook in the container's user and mount namespaces,
  before pivot_root (so the `F` flag opens the host's qemu); bwrap runs in a user namespace that
  registered it first. Either way the command runs in its user namespace, pivot_root, root inside
  is nobody outside.
- Host-wide (`global_handler`, root only): older kernels have one binfmt_misc for the whole machine.
  repro registers qemu under a name of its own (`repro-ARCH-RANDOM`) with `F`, so the interpreter is
  opened at registration and works in any mount namespace, and removes it when the run ends; a
  reaper removes it if repro is killed. A handler that is not repro's and would run the same
  binaries without `F` is refused; one with `F` is used as it is.
- proot `-q` (plain users, `--executor proot` only): needs no kernel support, but proot shows the
  host's `/` to the image at /host-rootfs, so it is never chosen without being asked for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from repro.errors import ReproError
from repro.image import Platform
from repro.run.reaper import reaper

log = logging.getLogger(__name__)

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
PREFIX = "repro-"  # the names of repro's own host-wide registrations

# OCI architecture -> QEMU's name for it (qemu-NAME-static)
QEMU_ARCH = {
    "amd64": "x86_64", "arm64": "aarch64", "arm": "arm", "386": "i386", "ppc64le": "ppc64le",
    "s390x": "s390x", "riscv64": "riscv64", "mips64le": "mips64el", "loong64": "loongarch64",
}
NATIVE_TOO = {"amd64": ("386",)}  # run by the host's kernel and CPU as they are
# Debian's architecture names (mmdebstrap --arch) -> QEMU's
DEBIAN_QEMU_ARCH = {
    "amd64": "x86_64", "arm64": "aarch64", "armhf": "arm", "armel": "arm", "i386": "i386",
    "ppc64el": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "mips64el": "mips64el",
    "loong64": "loongarch64",
}

_ELF64_LE = "\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00"
_ELF32_LE = "\\x7f\\x45\\x4c\\x46\\x01\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00"
_MASK = ("\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff"
         "\\xfe\\xff\\xff\\xff")
_MASK_OSABI = ("\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfc\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff"
               "\\xfe\\xff\\xff\\x00")
_MASK_X86 = ("\\xff\\xff\\xff\\xff\\xff\\xfe\\xfe\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff"
             "\\xfe\\xff\\xff\\xff")
# QEMU name -> (magic, mask) of the ELF headers it runs, as QEMU's qemu-binfmt-conf.sh and Debian's
# /usr/lib/binfmt.d/ give them.
MAGIC = {
    "aarch64": (_ELF64_LE + "\\xb7\\x00", _MASK),
    "arm": (_ELF32_LE + "\\x28\\x00", _MASK),
    "riscv64": (_ELF64_LE + "\\xf3\\x00", _MASK),
    "mips64el": (_ELF64_LE + "\\x08\\x00",
                 "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xfe\\xff\\xff\\xff\\xff\\xff\\xff\\xff"
                 "\\xfe\\xff\\xff\\xff"),
    "ppc64le": (_ELF64_LE + "\\x15\\x00", _MASK_OSABI),
    "s390x": ("\\x7f\\x45\\x4c\\x46\\x02\\x02\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02"
              "\\x00\\x16",
              "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfc\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe"
              "\\xff\\xff"),
    "loongarch64": (_ELF64_LE + "\\x02\\x01",
                    "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfc\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff"
                    "\\xfe\\xff\\xff\\xff"),
    "x86_64": (_ELF64_LE + "\\x3e\\x00", _MASK_X86),
    "i386": (_ELF32_LE + "\\x03\\x00", _MASK_X86),
}


def _bytes(escaped: str) -> bytes:
    return bytes.fromhex(escaped.replace("\\x", ""))


@dataclass(frozen=True)
class Emulator:
    """QEMU for one foreign platform: what a run registers with binfmt_misc or gives proot."""

    platform: str  # for messages: linux/arm64
    arch: str  # QEMU's name: aarch64
    path: str  # the static qemu-user binary on the host
    binfmt_path: str  # what binfmt_misc names: Debian's -binfmt-P link when there is one
    flags: str  # F: opened at registration; P: argv[0] kept (with the -binfmt-P name qemu expects)

    def registration(self, name: str) -> str:
        """The line written to binfmt_misc's `register` file."""
        magic, mask = MAGIC[self.arch]
        return f":{name}:M::{magic}:{mask}:{self.binfmt_path}:{self.flags}"


def is_foreign(platform: Platform | None) -> bool:
    """True when binaries of `platform` cannot run natively here (an unknown architecture counts as native)."""
    if platform is None or not platform.architecture:
        return False
    host = Platform.host().architecture
    return platform.architecture not in (host, *NATIVE_TOO.get(host, ()))


def qemu_arch(platform: Platform) -> str:
    arch = QEMU_ARCH.get(platform.architecture)
    if arch is None:
        raise ReproError(f"platform {platform}: repro knows no QEMU emulator for it",
                         f"repro emulates {', '.join(f'linux/{a}' for a in QEMU_ARCH)}")
    return arch


def emulator(platform: Platform | str, arch: str = "") -> Emulator:
    """The emulator of `platform` (or of QEMU architecture `arch`, `platform` then only naming it in
    messages); one line naming the package if it is missing."""
    arch = arch or qemu_arch(platform)  # type: ignore[arg-type]
    binary = shutil.which(f"qemu-{arch}-static")
    if binary is None:
        raise ReproError(f"running {platform} binaries needs qemu-{arch}-static, which is not installed",
                         "apt-get install qemu-user-static")
    binary = os.path.realpath(binary)
    wrapper = f"/usr/libexec/qemu-binfmt/{arch}-binfmt-P"
    if os.path.realpath(wrapper) == binary:  # Debian's: qemu keeps argv[0] when called by this name
        return Emulator(str(platform), arch, binary, wrapper, "PF")
    return Emulator(str(platform), arch, binary, binary, "F")


def debian_emulator(arch: str) -> Emulator:
    """The emulator of Debian architecture `arch` (arm64, armhf, ppc64el, ...)."""
    if arch not in DEBIAN_QEMU_ARCH:
        raise ReproError(f"Debian architecture {arch!r}: repro knows no QEMU emulator for it",
                         f"use one of {', '.join(DEBIAN_QEMU_ARCH)}")
    return emulator(f"Debian {arch}", DEBIAN_QEMU_ARCH[arch])


@functools.cache
def sandboxed() -> bool:
    """Whether a user namespace can have its own binfmt_misc here (Linux 6.7 and later)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "/bin/sh", "-c",
                            f"mount -t binfmt_misc binfmt_misc {BINFMT_DIR} && test -e {BINFMT_DIR}/register"],
                           capture_output=True)
    return probe.returncode == 0


def forced_global() -> bool:
    """REPRO_BINFMT=global: register host-wide even where a user namespace could have its own (tests)."""
    return os.environ.get("REPRO_BINFMT", "") == "global"


def namespaced() -> bool:
    """Whether runs register qemu in their own user namespace (else host-wide, root only)."""
    return sandboxed() and not forced_global()


# --- a registration in a user namespace of its own -----------------------------------------------------
# Mounts binfmt_misc (the namespace's own instance) at $1 and registers $2; then runs the rest.
REGISTER_SCRIPT = 'mount -t binfmt_misc binfmt_misc "$1" && printf "%s" "$2" > "$1/register" && shift 2 && exec "$@"'


def namespace_prefix(emu: Emulator, all_ids: bool = False) -> list[str]:
    """A command prefix for a plain user: a new user and mount namespace with qemu registered in its
    own binfmt_misc instance, in which the rest of the command line (bwrap) runs. With `all_ids` the
    namespace maps the user's subordinate ids too (/etc/subuid, as mmdebstrap's unshare mode) and has
    its own PID namespace and /proc: a root in which mmdebstrap --mode=root works."""
    unshare = shutil.which("unshare") or "unshare"
    ids = ["--map-auto", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc"] if all_ids else [
        "--user", "--map-root-user", "--mount"]
    return [unshare, *ids, "/bin/sh", "-c", REGISTER_SCRIPT, "repro-binfmt", str(BINFMT_DIR),
            emu.registration(f"{PREFIX}{emu.arch}")]


def runc_hook(emu: Emulator, root: Path | str) -> dict:
    """An OCI createRuntime hook for runc: it runs on the host once the container's namespaces and
    mounts exist, before pivot_root, and enters the container's user and mount namespaces to
    register qemu in the binfmt_misc instance of the container's user namespace, mounted on the
    container's /proc/sys/fs/binfmt_misc. The host's qemu is still in view then, and `F` keeps it open."""
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    script = ('pid=$(sed -n \'s/.*"pid": *\\([0-9][0-9]*\\).*/\\1/p\') && [ -n "$pid" ] && '
              f'exec {nsenter} --target "$pid" --user --mount /bin/sh -c \'{REGISTER_SCRIPT}\' repro-binfmt '
              '"$1/proc/sys/fs/binfmt_misc" "$2" true')
    return {"path": "/bin/sh", "args": ["sh", "-c", script, "repro-binfmt-hook", str(root),
                                        emu.registration(f"{PREFIX}{emu.arch}")],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "timeout": 30}


# --- a host-wide registration (root, kernels before 6.7) -----------------------------------------------
@dataclass(frozen=True)
class Entry:
    name: str
    enabled: bool
    interpreter: str
    flags: str
    offset: int
    magic: bytes
    mask: bytes

    def handles(self, header: bytes) -> bool:
        """Whether this entry claims a binary starting with `header`."""
        mask = self.mask or b"\xff" * len(self.magic)
        part = header[self.offset:self.offset + len(self.magic)]
        if len(part) < len(self.magic):
            return False
        return all((h & m) == (g & m) for h, m, g in zip(part, mask, self.magic, strict=True))


def entries(directory: Path = BINFMT_DIR) -> list[Entry]:
    """The magic-type entries registered in the binfmt_misc mounted at `directory`."""
    found = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.name in ("register", "status"):
            continue
        try:
            text = path.read_text()
        except OSError:
            continue  # removed meanwhile
        fields: dict[str, str] = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            fields[key.rstrip(":")] = value.strip()
        if "magic" not in fields:
            continue  # an extension-type entry: matched by file name, not by header
        found.append(Entry(path.name, "enabled" in text.splitlines()[:1], fields.get("interpreter", ""),
                           fields.get("flags", ""), int(fields.get("offset", "0") or 0),
                           bytes.fromhex(fields["magic"]), bytes.fromhex(fields.get("mask", ""))))
    return found


def host_handler(emu: Emulator, directory: Path = BINFMT_DIR) -> Entry | None:
    """An enabled handler that is not repro's and claims `emu`'s binaries: returned when it opened its
    interpreter at registration (`F`, usable from a container), refused otherwise."""
    header = _bytes(MAGIC[emu.arch][0])
    theirs = [e for e in entries(directory) if e.enabled and not e.name.startswith(PREFIX) and e.handles(header)]
    for entry in theirs:
        if "F" not in entry.flags:
            raise ReproError(
                f"binfmt_misc already runs {emu.platform} binaries with {entry.name} ({entry.interpreter}), "
                "which is not repro's and lacks the F flag a container needs",
                f"remove it (echo -1 > {directory}/{entry.name}) or register it with flag F")
    return theirs[0] if theirs else None


def _mounted(directory: Path) -> None:
    if (directory / "register").exists():
        return
    proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(directory)], capture_output=True,
                          text=True)
    if proc.returncode != 0 or not (directory / "register").exists():
        detail = (proc.stderr.strip().splitlines() or ["no register file"])[-1]
        raise ReproError(f"binfmt_misc cannot be mounted at {directory}: {detail}",
                         "load the binfmt_misc module (modprobe binfmt_misc) or mount it")


@contextlib.contextmanager
def global_handler(emu: Emulator, directory: Path = BINFMT_DIR) -> Iterator[None]:
    """qemu registered host-wide while the context lasts (root): under a name of repro's own, removed
    at the end and by a reaper if repro is killed. A handler of the host's with F is used as it is."""
    if os.geteuid() != 0:
        raise ReproError(f"running {emu.platform} binaries needs binfmt_misc, which only root can set up "
                         "on this kernel (before Linux 6.7)",
                         "run as root, or use --executor proot (it shows the host's / to the image)")
    _mounted(directory)
    if (directory / "status").read_text().strip() != "enabled":
        raise ReproError(f"binfmt_misc is disabled on this host ({directory}/status)",
                         f"enable it: echo 1 > {directory}/status")
    if host_handler(emu, directory) is not None:
        yield
        return
    name = f"{PREFIX}{emu.arch}-{uuid.uuid4().hex[:12]}"
    entry = directory / name
    remove = ["/bin/sh", "-c", 'if [ -e "$1" ]; then echo -1 > "$1"; fi', "repro-binfmt", str(entry)]
    with reaper(remove):
        try:
            (directory / "register").write_text(emu.registration(name))
        except OSError as exc:
            raise ReproError(f"binfmt_misc refused repro's handler for {emu.platform}: {exc.strerror}",
                             "check dmesg; the kernel may lack binfmt_misc's F flag support") from None
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                entry.write_text("-1")
