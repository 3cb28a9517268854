"""proot, for plain users where nothing else works (ptrace, no namespaces: udocker's default mode).
It cannot cut the network, so `network: false` is not enforced; as root it would confine nothing.
With `-q` (a foreign tree) it also shows the host's `/` at /host-rootfs: only on request (see repro.run.emulation)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from repro.run.executors.command import Command


def available() -> bool:
    return shutil.which("proot") is not None


@contextlib.contextmanager
def launch(root: Path, command: Command) -> Iterator[tuple[list[str], dict[str, str] | None]]:
    who = ["-0"] if command.user == (0, 0) else ["-i", f"{command.user[0]}:{command.user[1]}"]
    argv = [shutil.which("proot") or "proot", *who, "-r", str(root), "-b", "/dev", "-b", "/proc", "-b", "/sys",
            "-w", command.workdir]
    if command.emulator is not None:  # proot runs foreign binaries through qemu itself (and shows / at /host-rootfs)
        argv += ["-q", command.emulator.path]
    if command.resolv_conf:
        argv += ["-b", f"/etc/resolv.conf:/{command.resolv_conf}"]
    for source, destination in command.binds:
        argv += ["-b", f"{source}:/{destination}"]
    env = dict(command.env)
    if "PROOT_TMP_DIR" in os.environ:
        env["PROOT_TMP_DIR"] = os.environ["PROOT_TMP_DIR"]
    yield [*argv, *command.argv], env
