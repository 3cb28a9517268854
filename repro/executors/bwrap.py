"""bubblewrap, for plain users: a user namespace in which the caller is root, pivot_root into the tree,
a fresh /proc and a minimal /dev, no_new_privs. As root it would keep root's ids, so it is not used then."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from repro import emulation
from repro.executors.command import Command


def available() -> bool:
    if shutil.which("bwrap") is None:
        return False
    probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-user", "--uid", "0", "true"],
                           capture_output=True)
    return probe.returncode == 0


@contextlib.contextmanager
def launch(root: Path, command: Command) -> Iterator[tuple[list[str], dict[str, str] | None]]:
    argv = ["bwrap", "--bind", str(root), "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
            "--uid", str(command.user[0]), "--gid", str(command.user[1]), "--die-with-parent",
            "--chdir", command.workdir, "--clearenv"]
    if command.network:
        argv += ["--share-net"]
    if command.resolv_conf:
        argv += ["--ro-bind", "/etc/resolv.conf", "/" + command.resolv_conf]
    for source, destination in command.binds:
        argv += ["--bind", source, "/" + destination]
    for key, value in sorted(command.env.items()):
        argv += ["--setenv", key, value]
    # a foreign tree: bwrap runs in a user namespace whose own binfmt_misc has qemu (Linux 6.7 and later)
    prefix = emulation.namespace_prefix(command.emulator) if command.emulator is not None else []
    yield [*prefix, *argv, *command.argv], None
