"""An image made runnable: a session that runs commands in it through one executor and reads files back.

Root-filesystem executors (runc, bwrap, proot) run in a fresh flattened copy of the image; docker and
udocker get the image loaded into their own stores under a temporary name, removed afterwards. Every
session runs a command with its standard output and error going to files the caller chose, which is
what `repro run`, recording and replay need alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from repro.confined import Tree, remove_tree
from repro.digest import RawReader
from repro.errors import ReproError
from repro.extract import Policy, open_inside
from repro.flatten import extract
from repro.image import Image
from repro.refs import write_image
from repro.run import executors, mpi, unpacked
from repro.run.reaper import reaper, remove_command

NAMES = (*executors.NAMES, "docker", "udocker")
MPI_LAUNCHERS = ("mpirun", "mpiexec", "orterun", "prterun", "mpiexec.hydra", "mpiexec.openmpi", "mpirun.openmpi")


@dataclass(frozen=True)
class Invocation:
    """What to run. `argv` None means the image's entrypoint and cmd; `shell` runs it with /bin/sh -c."""

    argv: Sequence[str] | None = None
    shell: str = ""
    binds: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    env: tuple[tuple[str, str], ...] = ()
    stop_timeout: float = executors.STOP_TIMEOUT  # after a stop signal, seconds before the command is killed
    network: bool = False  # the host's network (else none)
    tty: bool = False  # on a pseudo-terminal that repro relays (-t)
    mpi: bool = False  # a rank of an MPI job (see repro.run.mpi): the caller's ids, the host's PID and IPC
    entrypoint: str | None = None  # replaces the image's ENTRYPOINT and CMD (docker run --entrypoint); "" clears


class Session(Protocol):
    name: str

    def run(self, invocation: Invocation, stdout=None, stderr=None, stdin=None) -> int: ...

    def open_file(self, path: str) -> BinaryIO: ...


def image_env(image: Image, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    env = dict(e.partition("=")[::2] for e in image.config.env)
    env.setdefault("PATH", executors.DEFAULT_PATH)
    env.update(extra)
    return env


def command_line(image: Image, invocation: Invocation) -> list[str]:
    """docker run's rule: arguments replace CMD and follow ENTRYPOINT; a shell string replaces both. An MPI
    rank leaves out an ENTRYPOINT that is itself an MPI launcher (an image made to run standalone). A given
    entrypoint replaces the image's and its CMD, as docker run --entrypoint does."""
    if invocation.shell:
        return ["/bin/sh", "-c", invocation.shell]
    if invocation.entrypoint is not None:
        entrypoint = [invocation.entrypoint] if invocation.entrypoint else []
        argv = list(invocation.argv or [])
        if not entrypoint and not argv:
            raise ReproError(f"{image.name}: --entrypoint '' and no command", "give the command after --")
        return entrypoint + argv
    entrypoint = list(image.config.entrypoint or [])
    if invocation.mpi and entrypoint and os.path.basename(entrypoint[0]) in MPI_LAUNCHERS:
        entrypoint = []  # a rank of the host's launcher must not start a launcher of its own (see repro.run.mpi)
    argv = list(invocation.argv) if invocation.argv else list(image.config.cmd or [])
    if not entrypoint and not argv:
        raise ReproError(f"{image.name}: the image has no entrypoint or cmd", "give the command after --")
    return entrypoint + argv


class RootfsSession:
    """runc, bwrap or proot over a flattened copy of the image in a temporary directory, or (`store`
    given) over the image unpacked once in the store and seen through a throw-away overlay."""

    def __init__(self, image: Image, name: str, store: Path | None = None) -> None:
        self.image, self.name = image, name
        self.store = store if store is not None and executors.can_overlay(name) else None
        self.runs = 0

    def __enter__(self) -> RootfsSession:
        self._tmp = Path(tempfile.mkdtemp(prefix="repro-run-"))
        self._reaper = reaper(remove_command(str(self._tmp)))
        self._reaper.__enter__()
        try:
            if self.store is not None:
                self.root = unpacked.tree(self.store, self.image, self.name)
                os.chmod(self._tmp, 0o711)  # the runs' overlays are made below it
            else:
                self.root = executors.new_root(self._tmp, self.name)
                extract(self.image, self.root, Policy(id_offset=executors.id_offset(self.name)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        remove_tree(self._tmp)
        self._reaper.__exit__(None, None, None)

    def run(self, invocation: Invocation, stdout=None, stderr=None, stdin=None) -> int:
        env = image_env(self.image, invocation.env)
        if invocation.mpi:
            env = {**mpi.DEFAULTS, **env}
        command = executors.Command(command_line(self.image, invocation), env,
                                    invocation.workdir or self.image.config.workdir or "/",
                                    invocation.network or invocation.mpi, invocation.binds,
                                    user=(os.getuid(), os.getgid()) if invocation.mpi else (0, 0),
                                    host_pid=invocation.mpi, host_ipc=invocation.mpi)
        self.runs += 1
        scratch = None
        if self.store is not None:
            scratch = self._tmp / f"scratch-{self.runs}"
            scratch.mkdir()
        return executors.run_attached(self.name, self.root, command, stdin, stdout, stderr, invocation.stop_timeout,
                                      scratch, tty=invocation.tty)

    def open_file(self, path: str) -> BinaryIO:
        if self.store is not None:
            raise ReproError(f"{path}: a run over the shared unpacked image keeps no files", "internal: use a copy")
        return open_inside(self.root, path)


class DockerSession:
    """The Docker engine at DOCKER_HOST (or the default socket), through the docker CLI users have."""

    def __init__(self, image: Image, name: str = "docker") -> None:
        self.image, self.name = image, name
        self.tag = f"repro-run/{image.digest.partition(':')[2][:12]}:{uuid.uuid4().hex[:8]}"
        self.containers: list[str] = []

    def __enter__(self) -> DockerSession:
        if not shutil.which("docker"):
            raise ReproError("--executor docker: the docker command is missing", "install docker.io")
        write_image(self.image, f"docker-daemon:{self.tag}")
        return self

    def __exit__(self, *exc) -> None:
        for container in self.containers:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", self.tag], capture_output=True)

    def run(self, invocation: Invocation, stdout=None, stderr=None, stdin=None) -> int:
        container = f"repro-{uuid.uuid4().hex[:12]}"
        argv = ["docker", "run", "--name", container, "--network", "host" if invocation.network else "none"]
        if stdin is None:  # attached (repro run -i)
            argv += ["-i"]
        if invocation.tty:
            argv += ["-t"]
        for src, dst in invocation.binds:
            argv += ["-v", f"{os.path.abspath(src)}:{dst}"]
        for key, value in invocation.env:
            argv += ["-e", f"{key}={value}"]
        if invocation.workdir:
            argv += ["-w", invocation.workdir]
        if invocation.shell:
            argv += ["--entrypoint", "/bin/sh", self.tag, "-c", invocation.shell]
        else:
            if invocation.entrypoint is not None:
                argv += ["--entrypoint", invocation.entrypoint]
            argv += [self.tag, *(invocation.argv or ())]
        self.containers.append(container)
        return subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=stderr).returncode

    def open_file(self, path: str) -> BinaryIO:
        """The file from the last container, streamed out of `docker cp`'s tar (never held whole)."""
        if not self.containers:
            raise ReproError(f"{path}: no command has run", "internal")
        return _DockerCopy(self.containers[-1], path)


class _DockerCopy(RawReader):
    """A reader of one regular file inside a container, from the tar stream `docker cp C:PATH -` writes."""

    def __init__(self, container: str, path: str) -> None:
        self.proc = subprocess.Popen(["docker", "cp", f"{container}:{path}", "-"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        try:
            self.tar = tarfile.open(fileobj=self.proc.stdout, mode="r|")  # noqa: SIM115 - closed in close()
            member = self.tar.next()
        except tarfile.TarError:
            detail = self._stop()
            raise ReproError(f"{path}: cannot be read in the container ({detail or 'no such file'})",
                             "name a regular file the command writes") from None
        if member is None or not member.isreg():
            self._stop()
            raise ReproError(f"{path}: is not a regular file", "name a regular file the command writes")
        self.content = self.tar.extractfile(member)

    def _stop(self) -> str:
        self.proc.kill()
        _, err = self.proc.communicate()
        return err.decode(errors="replace").strip()

    def read(self, size: int = -1) -> bytes:
        return self.content.read(size)  # type: ignore[union-attr]

    def close(self) -> None:
        if not self.closed:
            self._stop()
        super().close()


class UdockerSession:
    """udocker (no root, no daemon): the image is loaded from a docker-archive into udocker's own store.
    udocker refuses to run as root; its tools come from UDOCKER_TARBALL where there is no network."""

    def __init__(self, image: Image, name: str = "udocker") -> None:
        self.image, self.name = image, name
        self.tag = f"repro-run/{image.digest.partition(':')[2][:12]}:{uuid.uuid4().hex[:8]}"
        self.container = f"repro-{uuid.uuid4().hex[:12]}"

    def _udocker(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run(["udocker", "--quiet", *args], **{"capture_output": True, **kwargs})
        if check and proc.returncode != 0:
            detail = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
            raise ReproError(f"udocker {args[0]} failed: {detail[-1] if detail else proc.returncode}",
                             "check `udocker install` (UDOCKER_TARBALL offline) and that you are not root")
        return proc

    def __enter__(self) -> UdockerSession:
        if os.geteuid() == 0:
            raise ReproError("--executor udocker: udocker refuses to run as root", "run repro as a plain user")
        if not shutil.which("udocker"):
            raise ReproError("--executor udocker: the udocker command is missing", "pip install udocker")
        with tempfile.TemporaryDirectory(prefix="repro-udocker-") as tmp:
            archive = Path(tmp) / "image.tar"
            write_image(self.image, f"docker-archive:{archive}:{self.tag}")
            self._udocker("load", "-i", str(archive))
        self._udocker("create", f"--name={self.container}", self.tag)
        root = Path(self._udocker("inspect", "-p", self.container).stdout.decode().strip())
        # udocker adds the user to copies of the image's passwd and group files and fails without them;
        # an image without them cannot depend on their content, so the host's do.
        with Tree(root) as tree:
            present = [tree.lstat(name) for name in ("etc/passwd", "etc/group")]
        self.hostauth = not all(st is not None and stat.S_ISREG(st.st_mode) for st in present)
        self.root = root
        return self

    def __exit__(self, *exc) -> None:
        self._udocker("rm", self.container, check=False)
        self._udocker("rmi", self.tag, check=False)

    def run(self, invocation: Invocation, stdout=None, stderr=None, stdin=None) -> int:
        workdir = invocation.workdir or self.image.config.workdir or "/"
        argv = ["udocker", "--quiet", "run", "--nobanner", f"--workdir={workdir}", *(["--hostauth"] * self.hostauth)]
        for src, dst in invocation.binds:
            argv.append(f"--volume={os.path.abspath(src)}:{dst}")
        for key, value in invocation.env:
            argv.append(f"--env={key}={value}")
        if invocation.shell:
            argv += ["--entrypoint=/bin/sh", self.container, "-c", invocation.shell]
        else:
            if invocation.entrypoint is not None:
                argv.append(f"--entrypoint={invocation.entrypoint}")
            argv += [self.container, *(invocation.argv or ())]
        return subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=stderr).returncode

    def open_file(self, path: str) -> BinaryIO:
        return open_inside(self.root, path)


def session(image: Image, executor: str | None, store: Path | None = None
            ) -> contextlib.AbstractContextManager[Session]:
    """A session in `image` with the executor asked for, else the first rootfs executor usable here.
    With `store`, runc and bwrap start from the image unpacked once there (see repro.run.unpacked)."""
    if executor == "docker":
        return DockerSession(image)
    if executor == "udocker":
        return UdockerSession(image)
    if executor and executor not in NAMES:
        raise ReproError(f"--executor {executor}: unknown", f"use one of {', '.join(NAMES)}")
    return RootfsSession(image, executors.choose(executor, image.config.platform), store)  # foreign: emulated
