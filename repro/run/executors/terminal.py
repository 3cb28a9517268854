"""`repro run -t`: the contained command runs on a pseudo-terminal that repro allocates and relays, as
docker's -t does.

repro opens a pty pair and starts the executor on its slave, as the controlling terminal of a session
of its own; it copies what the master gives to its own standard output and, with -i, its standard
input to the master, with its own terminal in raw mode meanwhile so that every key (Ctrl-C, Ctrl-D,
Ctrl-Z) goes to the command's line discipline. A SIGWINCH copies repro's terminal size to the pty.
The command never holds repro's own terminal: it can neither push input into the user's shell
(TIOCSTI) nor change that terminal's modes.

runc makes a pty of its own inside the container (`terminal: true`), sized and fed from the slave it
runs on; bwrap and proot run the command on the slave itself (bwrap shows it at its /dev/pts path).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import tty
from collections.abc import Callable

from repro.errors import ReproError


def check(interactive: bool, allocate: bool, stdin_fd: int = 0) -> None:
    """docker's rule: -i with -t needs a terminal on standard input (a pipe cannot be made raw)."""
    if interactive and allocate and not os.isatty(stdin_fd):
        raise ReproError("the input device is not a TTY", "-it needs a terminal on stdin; without -t, -i "
                         "passes a pipe or a file as it is")


def _controlling_terminal() -> None:
    """In the child, after setsid: its standard input (the slave) becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def size_of(path: str) -> tuple[int, int] | None:
    """(rows, columns) of the terminal at `path`, None when it has no size yet (or is not a terminal)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        rows, columns = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
    except OSError:
        return None
    finally:
        os.close(fd)
    return (rows, columns) if rows and columns else None


class Terminal:
    """A pty for one run. `input_fd` None: nothing is forwarded (no -i), the command reads from a
    terminal that never gives anything, as under docker -t without -i. `raw` for a runtime that makes
    the command's pty itself (runc) and relays it to this one."""

    def __init__(self, input_fd: int | None, output_fd: int, raw: bool = False) -> None:
        self.input_fd, self.output_fd = input_fd, output_fd
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        if raw:  # a runtime's own pty inside does the line discipline: this one only carries bytes
            tty.setraw(self.slave)
        self.resize()

    def popen_options(self) -> dict:
        return {"stdin": self.slave, "stdout": self.slave, "stderr": self.slave, "start_new_session": True,
                "preexec_fn": _controlling_terminal}

    def _user_terminal(self) -> int | None:
        for fd in (self.input_fd, self.output_fd):
            if fd is not None and os.isatty(fd):
                return fd
        return None

    def resize(self, *_signal) -> None:
        """The pty takes the size of repro's terminal; the kernel tells the command with a SIGWINCH."""
        source = self._user_terminal()
        if source is None:
            return
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def relay(self, proc: subprocess.Popen, tick: Callable[[], None]) -> None:
        """Copy between repro's standard streams and the pty until the command's side is closed (or the
        executor has exited and nothing more comes). `tick` is called a few times a second."""
        os.close(self.slave)
        self.slave = -1
        raw = self.input_fd is not None and os.isatty(self.input_fd)
        saved = termios.tcgetattr(self.input_fd) if raw else None
        previous = signal.signal(signal.SIGWINCH, self.resize)
        os.set_blocking(self.master, False)
        pending, reading = b"", self.input_fd is not None
        try:
            if raw:
                tty.setraw(self.input_fd)
            while True:
                readers = [self.master] + ([self.input_fd] if reading and not pending else [])
                ready, writable, _ = select.select(readers, [self.master] if pending else [], [], 0.2)
                if self.master in ready:
                    try:
                        data = os.read(self.master, 65536)
                    except BlockingIOError:
                        data = None
                    except OSError as exc:
                        if exc.errno != errno.EIO:  # EIO: every holder of the slave has closed it
                            raise
                        break
                    if data == b"":
                        break
                    if data:
                        _write_all(self.output_fd, data)
                if self.input_fd in ready:
                    data = os.read(self.input_fd, 65536)
                    if data:
                        pending += data
                    else:
                        reading = False
                if writable:
                    with contextlib.suppress(BlockingIOError):
                        pending = pending[os.write(self.master, pending):]
                tick()
                if not ready and proc.poll() is not None:  # a process left behind may hold the slave
                    break
        finally:
            if saved is not None:
                termios.tcsetattr(self.input_fd, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, previous)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1
