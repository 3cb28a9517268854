"""runc, the standard OCI runtime, for root: the step runs as root in a user namespace that maps it to
an unprivileged range of host ids, so root inside is nobody outside.

The bundle is made for one run: pid, ipc, uts, mount, cgroup and user namespaces (network too unless
asked for), pivot_root into the tree, a fresh /proc with the kernel's sensitive files masked, a tmpfs
/dev holding only null, zero, full, random, urandom, tty, pts and shm, no_new_privs and docker's
default capabilities, which in a user namespace are powers over that namespace only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from repro.errors import ReproError
from repro.run import emulation
from repro.run.executors import terminal
from repro.run.executors.command import Command
from repro.run.reaper import reaper, remove_command

log = logging.getLogger(__name__)
ID_BASE = 100000  # host uid and gid of root inside
ID_COUNT = 65536  # ids 0..65535 inside map to ID_BASE..ID_BASE+65535 outside

CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
MASKED = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]
READ_ONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("runc") is not None


def id_mappings() -> list[dict]:
    """Root inside is ID_BASE outside (as root); a plain user's own id is root inside (rootless)."""
    if os.geteuid() == 0:
        return [{"containerID": 0, "hostID": ID_BASE, "size": ID_COUNT}]
    return [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]


def config(root: Path | str, command: Command, user: tuple[int, int] = (0, 0)) -> dict:
    """The OCI runtime configuration of one run (runtime-spec config.json)."""
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ]
    if command.host_pid or command.host_ipc:  # MPI ranks, which run as a plain user (see repro.run.mpi)
        raise ReproError("runc: the host's PID and IPC namespaces are never shared as root", "internal")
    namespaces = ["pid", "ipc", "uts", "mount", "cgroup", "user"]
    if command.resolv_conf:
        mounts.append({"destination": "/" + command.resolv_conf, "type": "bind", "source": "/etc/resolv.conf",
                       "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
    if not command.network:
        namespaces.append("network")
        # sysfs can be mounted only by the owner of the network namespace.
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", "ro"]})
    for source, destination in command.binds:
        mounts.append({"destination": "/" + destination, "type": "bind", "source": source,
                       "options": ["rbind", "nosuid", "nodev"]})
    uid_map = id_mappings()
    gid_map = [{**uid_map[0], "hostID": os.getegid()}] if os.geteuid() else uid_map
    hooks = {}
    if command.emulator is not None and emulation.namespaced():  # qemu in the container's own binfmt_misc
        hooks = {"hooks": {"createRuntime": [emulation.runc_hook(command.emulator, root)]}}
    # runc sizes the container's pty from its own standard input only after the command has started,
    # so a first `stty size` could see 0 0; the size in the spec is set before the command runs
    size = terminal.size_of(command.tty) if command.tty else None
    console = {"consoleSize": {"height": size[0], "width": size[1]}} if size else {}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": bool(command.tty),  # runc makes the container's own pty and relays it to its stdio
            **console,
            "user": {"uid": user[0], "gid": user[1]},
            "args": list(command.argv),
            "env": [f"{k}={v}" for k, v in sorted(command.env.items())],
            "cwd": command.workdir or "/",
            "noNewPrivileges": True,
            # as docker: a process run as another user than root starts with no capabilities in effect
            "capabilities": {kind: CAPABILITIES if user[0] == 0 or kind == "bounding" else []
                             for kind in ("bounding", "effective", "permitted")},
        },
        "root": {"path": str(root), "readonly": False},
        "hostname": "repro",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": kind} for kind in namespaces],
            "uidMappings": uid_map,
            "gidMappings": gid_map,
            "maskedPaths": MASKED,
            "readonlyPaths": READ_ONLY,
        },
        **hooks,
    }


def _check_reachable(root: Path) -> None:
    """runc sets the root up as root inside; that id must be able to reach the tree."""
    for directory in [root, *root.parents]:
        st = directory.stat()
        if not st.st_mode & stat.S_IXOTH and st.st_uid != ID_BASE:
            raise ReproError(f"{root}: root in the container (host uid {ID_BASE}) cannot enter {directory}",
                             "set TMPDIR to a directory all users can enter, like /tmp")


def _warn_unwritable(source: str) -> None:
    """Root inside is an unprivileged id outside: a host directory it cannot write is worth one line."""
    st = os.stat(source)
    mode = st.st_mode
    if not stat.S_ISDIR(mode):
        return
    mapped = range(ID_BASE, ID_BASE + ID_COUNT)
    if (mode & stat.S_IWOTH or (st.st_uid in mapped and mode & stat.S_IWUSR)
            or (st.st_gid in mapped and mode & stat.S_IWGRP)):
        return
    log.warning("-v %s: root in the container is host uid %d and cannot write there (chown %d:%d %s, "
                "or run repro as a plain user)", source, ID_BASE, ID_BASE, ID_BASE, source)


@contextlib.contextmanager
def launch(root: Path, command: Command) -> Iterator[tuple[list[str], dict[str, str] | None]]:
    """The runc command line of one run; its bundle and state exist while the context lasts."""
    _check_reachable(root)
    for source, _ in command.binds:
        _warn_unwritable(source)
    bundle = Path(tempfile.mkdtemp(prefix="repro-runc-"))
    state = bundle / "state"
    name = f"repro-{uuid.uuid4().hex[:16]}"

    def clean_up() -> None:
        if (state / name).exists():  # still there when runc was stopped before it cleaned up
            subprocess.run(["runc", "--root", str(state), "delete", "--force", name], capture_output=True)
        shutil.rmtree(bundle, ignore_errors=True)

    try:
        (bundle / "config.json").write_text(json.dumps(config(root, command, command.user)))
        # the reaper is for a repro killed during the run; otherwise clean_up has done its work
        with (reaper(["runc", "--root", str(state), "delete", "--force", name], remove_command(str(bundle)),
                     disarm=True),
              _host_emulation(command)):
            try:
                yield ["runc", "--root", str(state), "run", "--bundle", str(bundle), name], None
            finally:
                clean_up()
    finally:
        clean_up()


def _host_emulation(command: Command) -> contextlib.AbstractContextManager:
    """Where a user namespace cannot have its own binfmt_misc, qemu is registered host-wide for the run."""
    if command.emulator is None or emulation.namespaced():
        return contextlib.nullcontext()
    return emulation.global_handler(command.emulator)
