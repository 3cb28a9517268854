"""What an executor runs, and what comes back."""

from __future__ import annotations

from dataclasses import dataclass

from repro.run.emulation import Emulator

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
    binds: tuple[tuple[str, str], ...] = ()  # (host path, clean symlink-free path inside the root)
    resolv_conf: str = ""  # with network: the image's own /etc/resolv.conf, resolved in the tree, to bind over
    user: tuple[int, int] = (0, 0)  # uid and gid inside
    emulator: Emulator | None = None  # a foreign tree: its binaries run under this QEMU (see repro.run.emulation)
    host_pid: bool = False  # the host's PID namespace and /proc (an MPI rank: see repro.run.mpi)
    host_ipc: bool = False  # the host's IPC namespace and /dev/shm (an MPI rank)
    tty: str = ""  # -t: the host's pty (/dev/pts/N) the command runs on; runc makes its own inside
    # a plain user's root step with subordinate ids (bwrap only): the owners table given and the one taken
    # back (see executors/subids.py)
    owners: tuple[str, str] | None = None
