"""bubblewrap, for plain users: a user namespace in which the caller is root, pivot_root into the tree,
a fresh /proc and a minimal /dev, no_new_privs. As root it would keep root's ids, so it is not used then.
An MPI rank (see repro.run.mpi) runs as the caller's own ids and shares the host's PID and IPC namespaces."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from repro.run import emulation
from repro.run.executors import subids
from repro.run.executors.command import Command


def available() -> bool:
    if shutil.which("bwrap") is None:
        return False
    probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-user", "--uid", "0", "true"],
                           capture_output=True)
    return probe.returncode == 0


@contextlib.contextmanager
def launch(root: Path, command: Command) -> Iterator[tuple[list[str], dict[str, str] | None]]:
    # in a namespace of the user's subordinate ids (a root step of a build, see subids.py) bwrap needs
    # no user namespace of its own; otherwise its own maps the caller to the command's one id
    ids = [] if command.owners else ["--unshare-user", "--uid", str(command.user[0]), "--gid", str(command.user[1])]
    argv = ["bwrap", "--bind", str(root), "/", "--dev", "/dev", *ids, "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--chdir", command.workdir, "--clearenv"]
    if not command.network:
        argv += ["--unshare-net"]
    # A fresh /proc needs a PID namespace of its own; the host's, for an MPI rank, is shown read-only.
    argv += ["--ro-bind", "/proc", "/proc"] if command.host_pid else ["--unshare-pid", "--proc", "/proc"]
    argv += ["--bind", "/dev/shm", "/dev/shm"] if command.host_ipc else ["--unshare-ipc"]
    if command.tty:  # the pty at its own path, so that ttyname() finds it (the rest of /dev/pts stays out)
        argv += ["--tmpfs", "/dev/pts", "--dev-bind", command.tty, command.tty]
    if command.resolv_conf:
        argv += ["--ro-bind", "/etc/resolv.conf", "/" + command.resolv_conf]
    for source, destination in command.binds:
        argv += ["--bind", source, "/" + destination]
    for key, value in sorted(command.env.items()):
        argv += ["--setenv", key, value]
    # a foreign tree: bwrap runs in a user namespace whose own binfmt_misc has qemu (Linux 6.7 and later)
    if command.owners:  # a root step with the user's subordinate ids; a foreign one with qemu registered there
        if command.user != (0, 0):
            raise ValueError("subordinate ids are for a root step")
        helper = subids.helper(root, *command.owners)
        prefix = ([*emulation.namespace_prefix(command.emulator, all_ids=True), *helper]
                  if command.emulator is not None else [*subids.unshare_prefix(), *helper])
    else:
        prefix = emulation.namespace_prefix(command.emulator) if command.emulator is not None else []
    yield [*prefix, *argv, *command.argv], None
