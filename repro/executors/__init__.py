"""Running a command inside a root filesystem directory, with or without root.

- chroot: fresh mount, pid and uts namespaces (`unshare`) and chroot; needs root.
- bwrap: bubblewrap in a user namespace; for plain users where the kernel allows it.
- proot: ptrace-based, needs nothing but the binary: the HPC path (udocker's default mode).

`choose()` picks the first that works here; `--executor` overrides it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from repro.errors import ReproError

NAMES = ("chroot", "bwrap", "proot")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Result:
    exit_code: int
    output: str  # stdout and stderr together
    tail: str  # the last 20 lines, for error messages


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    workdir: str = "/"
    network: bool = False
    binds: tuple[tuple[str, str], ...] = ()  # (host path, path inside the root)


def _run(argv: list[str], stream_to=None, env: dict[str, str] | None = None) -> Result:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    lines: deque[str] = deque(maxlen=20)
    chunks = []
    for raw in proc.stdout:  # type: ignore[union-attr]
        text = raw.decode(errors="replace")
        chunks.append(text)
        lines.append(text)
        if stream_to is not None:
            stream_to(text)
    code = proc.wait()
    return Result(code, "".join(chunks), "".join(lines))


def _env_args(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(env.items())]




def chroot_argv(root: Path, command: Command) -> tuple[list[str], dict[str, str] | None]:
    """unshare + chroot, as root. /proc, /dev and binds are mounted in the private mount namespace only."""
    binds = "".join(f'mount --rbind "$REPRO_BIND_SRC_{i}" "$root/$REPRO_BIND_DST_{i}"; '
                    for i in range(len(command.binds)))
    script = (
        'set -e; root="$1"; shift; '
        'mount -t proc proc "$root/proc"; '
        'mount --rbind /dev "$root/dev"; ' + binds +
        # Without network a fresh namespace has only loopback, and that starts down (docker brings it up).
        'if [ "$REPRO_NETWORK" != 1 ]; then ip link set lo up 2>/dev/null || true; fi; '
        'if [ "$REPRO_NETWORK" = 1 ] && [ -f /etc/resolv.conf ] && [ -f "$root/etc/resolv.conf" ]; then '
        'mount --bind /etc/resolv.conf "$root/etc/resolv.conf"; fi; '
        'exec "$@"'
    )
    unshare = ["unshare", "--mount", "--pid", "--uts", "--fork", "--propagation", "private"]
    if not command.network:
        unshare.append("--net")
    # env and unshare run on the host: the image needs no shell for the command to start.
    unshare_bin = shutil.which("unshare") or "/usr/bin/unshare"
    inner = ["env", "-i", *_env_args(command.env), unshare_bin, f"--root={root}", f"--wd={command.workdir}",
             *command.argv]
    bind_env = [f"REPRO_BIND_SRC_{i}={src}" for i, (src, _) in enumerate(command.binds)]
    bind_env += [f"REPRO_BIND_DST_{i}={dst.lstrip('/')}" for i, (_, dst) in enumerate(command.binds)]
    argv = [
        *unshare,
        "env",
        f"REPRO_NETWORK={int(command.network)}",
        *bind_env,
        "/bin/sh",
        "-c",
        script,
        "repro-chroot",
        str(root),
        *inner,
    ]
    return argv, None


def bwrap_argv(root: Path, command: Command) -> tuple[list[str], dict[str, str] | None]:
    argv = [
        "bwrap",
        "--bind",
        str(root),
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--unshare-all",
        "--uid",
        "0",
        "--gid",
        "0",
        "--die-with-parent",
        "--chdir",
        command.workdir,
        "--clearenv",
    ]
    if command.network:
        argv += ["--share-net"]
        if Path("/etc/resolv.conf").is_file() and (root / "etc" / "resolv.conf").is_file():
            argv += ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]
    for src, dst in command.binds:
        argv += ["--bind", src, dst]
    for key, value in sorted(command.env.items()):
        argv += ["--setenv", key, value]
    return [*argv, *command.argv], None


def proot_argv(root: Path, command: Command) -> tuple[list[str], dict[str, str] | None]:
    """proot -0 (fake root); it has no way to cut the network, so `network: false` is not enforced."""
    argv = [
        shutil.which("proot") or "proot",
        "-0",
        "-r",
        str(root),
        "-b",
        "/dev",
        "-b",
        "/proc",
        "-b",
        "/sys",
        "-w",
        command.workdir,
    ]
    if command.network and Path("/etc/resolv.conf").is_file():
        argv += ["-b", "/etc/resolv.conf"]
    for src, dst in command.binds:
        argv += ["-b", f"{src}:{dst}"]
    env = dict(command.env)
    if "PROOT_TMP_DIR" in os.environ:
        env["PROOT_TMP_DIR"] = os.environ["PROOT_TMP_DIR"]
    return [*argv, *command.argv], env


RUNNERS = {"chroot": chroot_argv, "bwrap": bwrap_argv, "proot": proot_argv}


def available(name: str) -> bool:
    if name == "chroot":
        return os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("chroot") is not None
    if name == "bwrap":
        if shutil.which("bwrap") is None:
            return False
        probe = subprocess.run(
            ["bwrap", "--ro-bind", "/", "/", "--unshare-user", "--uid", "0", "true"], capture_output=True
        )
        return probe.returncode == 0
    return shutil.which(name) is not None


def choose(requested: str | None = None) -> str:
    if requested:
        if requested not in RUNNERS:
            raise ReproError(f"--executor {requested}: unknown", f"use one of {', '.join(NAMES)}")
        if not available(requested):
            raise ReproError(
                f"--executor {requested}: not usable here",
                "chroot needs root; bwrap needs user namespaces; proot needs the proot binary",
            )
        return requested
    for name in NAMES:
        if available(name):
            return name
    raise ReproError("no executor can run commands here", "install proot (make setup does)")


def _argv(name: str, root: Path, command: Command) -> tuple[list[str], dict[str, str] | None]:
    for mount_point in ("proc", "dev", "sys"):
        if not (root / mount_point).is_dir():
            raise ReproError(f"{root}: /{mount_point} is missing", "internal: prepare_root() was not called")
    for _, inside in command.binds:
        (root / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return RUNNERS[name](root, command)


def run(name: str, root: Path, command: Command, stream_to=None) -> Result:
    """Run `command` inside `root` with executor `name`; stdout and stderr together (build logs)."""
    argv, env = _argv(name, root, command)
    return _run(argv, stream_to, env=env)


def run_attached(name: str, root: Path, command: Command, stdin=None, stdout=None, stderr=None) -> int:
    """Run with the given standard streams (the caller's terminal by default); returns the exit status."""
    argv, env = _argv(name, root, command)
    return subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env).returncode


def prepare_root(root: Path) -> list[Path]:
    """Create the mount points a run needs; returns those that were made (to remove afterwards)."""
    made = []
    for mount_point in ("proc", "dev", "sys"):
        path = root / mount_point
        if not path.exists() and not path.is_symlink():
            path.mkdir(mode=0o755)
            made.append(path)
    return made
