"""Running a command inside a root filesystem directory, always confined.

- runc: for root. A user namespace maps root inside to host uid 100000 (the tree is unpacked with its
  ids shifted by that much), pivot_root, fresh /proc, minimal /dev; see executors/runc.py.
- bwrap: bubblewrap in a user namespace; for plain users where the kernel allows it.
- proot: ptrace-based, needs nothing but the binary: the HPC path (udocker's default mode).

As root only runc is used: bwrap and proot would run the image with root's powers over the host.
`choose()` picks the first that works here; `--executor` overrides it.

A tree of another architecture runs under QEMU user emulation (see repro.run.emulation): `choose(name,
platform)` returns a name that remembers the platform, and `run`/`run_attached` with it run emulated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path

from repro.confined import Tree
from repro.errors import ReproError
from repro.image import Platform
from repro.run import emulation
from repro.run.executors import bwrap, proot, runc, terminal
from repro.run.executors.command import DEFAULT_PATH, Command, Result
from repro.run.reaper import reaper

__all__ = ["DEFAULT_PATH", "NAMES", "Command", "Executor", "Result", "choose", "id_offset", "new_root", "run",
           "run_attached"]

log = logging.getLogger(__name__)
MODULES = {"runc": runc, "bwrap": bwrap, "proot": proot}
NAMES = tuple(MODULES)
MOUNT_POINTS = ("proc", "dev", "sys")
OVERLAY_EXECUTORS = ("runc", "bwrap")  # proot cannot mount; it runs in a fresh copy


def available(name: str) -> bool:
    if os.geteuid() == 0 and name != "runc":
        return False
    return MODULES[name].available()


class Executor(str):
    """An executor's name ("runc", "bwrap", "proot") that remembers the platform of the trees it runs:
    `run` and `run_attached` run a foreign one under QEMU. It compares and hashes as the plain name."""

    platform: Platform | None

    def __new__(cls, name: str, platform: Platform | None = None) -> Executor:
        self = super().__new__(cls, name)
        self.platform = platform if emulation.is_foreign(platform) else None
        return self


def choose(requested: str | None = None, platform: Platform | None = None) -> Executor:
    """The executor asked for, or the first that works here; for a tree of `platform` when it is not
    the host's: then the emulator must be installed, and a plain user gets bwrap with qemu in its own
    user namespace (Linux 6.7 and later), or proot -q only when asked for by name."""
    if not emulation.is_foreign(platform):
        return Executor(_choose(requested))
    assert platform is not None
    emulation.emulator(platform)  # qemu installed? one line saying what to install, before any unpacking
    if os.geteuid() == 0:
        return Executor(_choose(requested), platform)
    if requested == "proot":
        log.warning("--executor proot: running %s binaries through qemu, proot shows this host's / to the image "
                    "at /host-rootfs", platform)
        return Executor(_choose(requested), platform)
    if requested in (None, "bwrap") and available("bwrap") and emulation.namespaced():
        return Executor("bwrap", platform)
    why = ("a plain user can run them confined only through bwrap in a user namespace with its own binfmt_misc "
           "(Linux 6.7 and later)")
    if requested and requested not in MODULES:
        _choose(requested)  # its own message
    raise ReproError(f"running {platform} binaries: {why}, which this host lacks",
                     "run as root (runc), or use --executor proot (it shows this host's / to the image)")


def _choose(requested: str | None = None) -> str:
    if requested:
        if requested not in MODULES:
            raise ReproError(f"--executor {requested}: unknown", f"use one of {', '.join(NAMES)}")
        if os.geteuid() == 0 and requested != "runc":
            raise ReproError(f"--executor {requested}: as root it would give the image root's powers over this host",
                             "use --executor runc (a user namespace; the default for root) or run as a plain user")
        if not available(requested):
            raise ReproError(f"--executor {requested}: not usable here",
                             "runc needs root; bwrap needs user namespaces; proot needs the proot binary")
        return requested
    for name in NAMES:
        if available(name):
            return name
    hint = "install runc (make setup does)" if os.geteuid() == 0 else "install proot (make setup does)"
    raise ReproError("no executor can run commands here", hint)


def id_offset(name: str) -> int:
    """What every uid and gid of a tree run by `name` is shifted by on the host."""
    return runc.ID_BASE if name == "runc" else 0


def new_root(parent: Path, name: str) -> Path:
    """An empty directory `parent/rootfs` ready to be unpacked into and run by executor `name`: owned by
    root inside, and reachable by it (`parent` was made by the caller, private to it until now)."""
    root = parent / "rootfs"
    root.mkdir()
    offset = id_offset(name)
    if offset:
        os.chmod(parent, stat.S_IMODE(parent.stat().st_mode) | 0o711)
        os.chown(root, offset, offset)
    return root


def _prepare(root: Path, name: str, command: Command, overlay: bool = False) -> tuple[list[str], Command]:
    """Make the mount points a run needs inside the tree, and resolve bind targets there (never through
    a symlink out of it). Returns the mount points that were made, for `_unprepare`.

    With `overlay` the tree is the read-only lower layer: nothing is made in it, targets are resolved
    as far as they exist and the runtime makes the rest in the overlay."""
    made = []
    offset = id_offset(name)
    with Tree(root, owner=offset or None) as tree:
        if not overlay:
            for mount_point in MOUNT_POINTS:
                if tree.lstat(mount_point) is None:
                    tree.resolve_dir(mount_point, create=True)
                    made.append(mount_point)
        binds = tuple((source, tree.resolve_existing(inside) if overlay else _bind_target(tree, source, inside))
                      for source, inside in command.binds)
        resolv_conf = ""
        if command.network and Path("/etc/resolv.conf").is_file():
            st = tree.lstat("etc/resolv.conf")
            if st is not None and stat.S_ISREG(st.st_mode):
                resolv_conf = tree.resolve_dir("etc") + "/resolv.conf"
    return made, dataclasses.replace(command, binds=binds, resolv_conf=resolv_conf)


def _bind_target(tree: Tree, source: str, inside: str) -> str:
    if Path(source).is_dir():
        return tree.resolve_dir(inside, create=True)
    dir_fd, name = tree.parent(inside, create=True)
    try:
        if tree.lstat(inside) is None:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd))
        return tree.resolve_dir(inside.rpartition("/")[0]) + "/" + name
    finally:
        os.close(dir_fd)


def can_overlay(name: str) -> bool:
    """Whether runs of `name` can see a shared tree through an overlay here: runc as root always; a
    plain user needs a kernel that lets a user namespace mount overlayfs (Linux 5.11 and later)."""
    if name not in OVERLAY_EXECUTORS:
        return False
    return os.geteuid() == 0 or _user_overlay_works()


@functools.cache
def _user_overlay_works() -> bool:
    with tempfile.TemporaryDirectory(prefix="repro-probe-") as tmp:
        for part in ("lower", "upper", "work", "merged"):
            os.mkdir(f"{tmp}/{part}")
        option = f"lowerdir={tmp}/lower,upperdir={tmp}/upper,workdir={tmp}/work"
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "overlay",
                                "repro", "-o", option, f"{tmp}/merged"], capture_output=True)
        return probe.returncode == 0


def _overlay(lower: Path, scratch: Path, name: str) -> tuple[Path, list[str]]:
    """(the merged root, the command prefix that mounts it): a private mount namespace in which an
    overlay puts the throw-away `scratch` over the unpacked tree. Mounted by the host's root (or, for a
    plain user, by the user as root of a new user namespace), it is gone with that namespace."""
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for path in (upper, work, merged):
        path.mkdir()
    lower_root = lower.stat()
    os.chmod(upper, stat.S_IMODE(lower_root.st_mode))  # the merged root takes the upper root's attributes
    if os.geteuid() == 0:
        os.chown(upper, lower_root.st_uid, lower_root.st_gid)
        os.chmod(scratch, 0o711)  # runc's root inside must reach the merged tree
    for path in (lower, upper, work):
        if any(c in str(path) for c in ",:\\"):
            raise ReproError(f"{path}: an overlay cannot use a path with ',' ':' or '\\'",
                             "set REPRO_STORE and TMPDIR to plain paths")
    prefix = [shutil.which("unshare") or "unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix += ["--user", "--map-root-user"]
    script = 'mount -t overlay repro -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" && shift 4 && exec "$@"'
    return merged, [*prefix, "/bin/sh", "-c", script, "repro-overlay", str(lower), str(upper), str(work), str(merged)]


def _unprepare(root: Path, made: list[str]) -> None:
    with Tree(root) as tree:
        for mount_point in made:
            tree.remove(mount_point, follow=False)


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
STOP_TIMEOUT = 10.0  # seconds between a forwarded signal and SIGKILL, as docker stop


WRAPPERS = frozenset({"bwrap", "unshare", "proot", "repro-subids"})  # executors' own processes, which pass no signal on


def command_processes(pid: int) -> list[int]:
    """The processes a stop signal is for: the first ones below `pid` that are not an executor's own
    (bwrap and its pid-1 helper, unshare, proot), that is the contained command, as docker signals it."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        close = text.rindex(")")
        names[int(entry)] = text[text.index("(") + 1:close]
        children.setdefault(int(text[close + 2:].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            (todo if names.get(child) in WRAPPERS else found).append(child)
    return found


class _Supervisor:
    """While a contained command runs, the batch system's signals go to it rather than killing repro:
    repro must outlive it to remove the container and the unpacked tree. One that has not exited
    `stop_timeout` seconds after the first signal is killed (runc's container then by `runc delete`).
    runc passes a signal on to the container's first process itself; bwrap and proot would die of it
    and take the command down unwarned, so the command's own processes are signalled instead."""

    def __init__(self, proc: subprocess.Popen, stop_timeout: float, name: str = "runc") -> None:
        self.proc, self.stop_timeout = proc, stop_timeout
        self.direct = str(name) in ("bwrap", "proot")
        self.received: list[int] = []
        self.deadline = 0.0

    def _forward(self, signum: int, _frame) -> None:
        if not self.received:
            self.deadline = time.monotonic() + self.stop_timeout
        self.received.append(signum)
        for pid in (command_processes(self.proc.pid) if self.direct else []) or [self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    @contextlib.contextmanager
    def forwarding(self):
        previous = {s: signal.signal(s, self._forward) for s in FORWARDED}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def tick(self) -> None:
        if self.received and time.monotonic() > self.deadline:
            self.proc.kill()

    def wait(self) -> int:
        with self.forwarding():
            while True:
                try:
                    code = self.proc.wait(timeout=0.2)  # short: a signal handler cannot end a blocking wait
                    break
                except subprocess.TimeoutExpired:
                    self.tick()
        return 128 - code if code < 0 else code  # killed by signal N: 128+N, as shells and docker say


def _emulated(name: str, command: Command, platform: Platform | None) -> Command:
    """`command` with the emulator of the tree's platform (given, or remembered by `name`) if it is foreign."""
    platform = platform if platform is not None else getattr(name, "platform", None)
    if not emulation.is_foreign(platform):
        return command
    assert platform is not None
    if name == "bwrap" and not emulation.namespaced():
        raise ReproError(f"--executor bwrap: cannot run {platform} binaries here",
                         "it needs a user namespace with its own binfmt_misc (Linux 6.7 and later)")
    return dataclasses.replace(command, emulator=emulation.emulator(platform))


def run(name: str, root: Path, command: Command, stream_to=None, platform: Platform | None = None) -> Result:
    """Run `command` inside `root` with executor `name`; stdout and stderr together (build logs).
    A tree of a foreign `platform` (or one `name` remembers, see `choose`) runs under QEMU."""
    command = _emulated(name, command, platform)
    made, command = _prepare(root, name, command)
    try:
        with MODULES[name].launch(root, command) as (argv, env):
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
            lines: deque[str] = deque(maxlen=20)
            chunks = []
            supervisor = _Supervisor(proc, STOP_TIMEOUT, name)
            previous = {s: signal.signal(s, supervisor._forward) for s in FORWARDED}
            try:
                for raw in proc.stdout:  # type: ignore[union-attr]
                    text = raw.decode(errors="replace")
                    chunks.append(text)
                    lines.append(text)
                    if stream_to is not None:
                        stream_to(text)
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
            code = supervisor.wait()
    finally:
        _unprepare(root, made)
    return Result(code, "".join(chunks), "".join(lines))


def run_attached(name: str, root: Path, command: Command, stdin=None, stdout=None, stderr=None,
                 stop_timeout: float = STOP_TIMEOUT, scratch: Path | None = None,
                 platform: Platform | None = None, tty: bool = False) -> int:
    """Run with the given standard streams (the caller's terminal by default); returns the exit status.

    With `scratch` (an empty directory), `root` is an unpacked tree that must not change: the command
    sees it through an overlay whose changes land in `scratch` (runc and bwrap; see `_overlay`).
    A tree of a foreign `platform` (or one `name` remembers, see `choose`) runs under QEMU.
    With `tty` the command runs on a pseudo-terminal that repro relays (see executors/terminal.py): to
    `stdout`, from `stdin` unless that is DEVNULL; `stderr` is not used then (a terminal has one output)."""
    if scratch is not None and name not in OVERLAY_EXECUTORS:
        raise ReproError(f"--executor {name}: cannot run a shared unpacked image", "use a fresh copy (--fresh)")
    command = _emulated(name, command, platform)
    made, command = _prepare(root, name, command, overlay=scratch is not None)
    prefix: list[str] = []
    if scratch is not None:
        root, prefix = _overlay(root, scratch, name)
    console = None
    if tty:
        console = terminal.Terminal(None if stdin == subprocess.DEVNULL else _fileno(stdin, 0), _fileno(stdout, 1),
                                    raw=name == "runc")
        command = dataclasses.replace(command, tty=console.path)
    try:
        with MODULES[name].launch(root, command) as (argv, env):
            if console is None:  # a session of its own: the caller's terminal is not its controlling terminal,
                # so it cannot push input into the caller's shell (TIOCSTI); repro forwards the terminal's signals
                proc = subprocess.Popen([*prefix, *argv], stdin=stdin, stdout=stdout, stderr=stderr, env=env,
                                        start_new_session=True)
                # proot's tracees outlive it; its session (the command's, unless it made its own) goes with repro
                with reaper(["kill", "-9", f"-{proc.pid}"]) if name == "proot" else contextlib.nullcontext():
                    return _Supervisor(proc, stop_timeout, name).wait()
            proc = subprocess.Popen([*prefix, *argv], env=env, **console.popen_options())
            supervisor = _Supervisor(proc, stop_timeout, name)
            with supervisor.forwarding():
                console.relay(proc, supervisor.tick)
            return supervisor.wait()
    finally:
        if console is not None:
            console.close()
        _unprepare(root, made)


def _fileno(stream, default: int) -> int:
    return default if stream is None else stream if isinstance(stream, int) else stream.fileno()
