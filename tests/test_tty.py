"""`repro run -i` and `-t` behave as docker's (issue 16): without -i the command reads /dev/null; -t runs
it on a pseudo-terminal (its own /dev/pts path, repro's window size, following a SIGWINCH) with its exit
status kept; -it needs a terminal on stdin and fails in one line without one. Jobs need no terminal.
Each case runs as root (runc) and as a plain user (bwrap, proot), on a pty from Python's pty module."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from repro.run.executors import runc
from repro.run.executors.command import Command
from tests.conftest import REPRO, busybox_layers, public_directory
from tests.imagekit import E, make_image

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
WHO = {"runc": [], "bwrap": NOBODY, "proot": NOBODY}  # runc is root's executor, the others a plain user's


@pytest.fixture(scope="module")
def public():
    with public_directory("repro-tty-") as path:
        yield path


@pytest.fixture(scope="module")
def image(public) -> str:
    layout = public / "layout"
    make_image(layout, "1", busybox_layers(), config={"Env": ["PATH=/bin"]})
    subprocess.run(["chmod", "-R", "a+rX", str(layout)], check=True)
    return f"oci:{layout}:1"


def environment(public, executor: str = "runc") -> dict[str, str]:
    """A store per executor: root's and the plain user's trees are unpacked with different owners."""
    return {**os.environ, "HOME": str(public), "REPRO_STORE": str(public / f"store-{executor}")}


def _set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def on_terminal(argv: list[str], env: dict, script: list[tuple[bytes, bytes]] = (), resize_after: bytes = b"",
                timeout: float = 120) -> tuple[str, int]:
    """Run `argv` as a terminal session would (a pty of 33x101 as its controlling terminal); for each
    (wait_for, send) of `script`, type `send` once `wait_for` has been printed; with `resize_after`,
    resize the terminal to 40x120 once that has been printed. Returns what was printed and the status."""
    master, slave = os.openpty()
    _set_size(slave, 33, 101)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    output, steps, deadline = b"", list(script), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the session has closed the terminal
                    break
                if not data:
                    break
                output += data
            if steps and steps[0][0] in output:
                os.write(master, steps.pop(0)[1])
            if resize_after and resize_after in output:
                _set_size(master, 40, 120)
                resize_after = b""
        else:
            proc.kill()
    finally:
        os.close(master)
    return output.decode(errors="replace").replace("\r", ""), proc.wait(timeout=30)


@pytest.mark.parametrize("executor", WHO)
def test_t_runs_the_command_on_its_own_pseudo_terminal(image, public, executor):
    argv = [*WHO[executor], REPRO, "run", "--executor", executor, "-t", image, "--", "/bin/sh", "-c",
            "/bin/busybox tty; test -t 0 && echo stdin-is-a-terminal; /bin/busybox stty size; exit 7"]
    output, code = on_terminal(argv, environment(public, executor))
    lines = output.splitlines()
    assert code == 7, output
    assert lines[0].startswith("/dev/pts/") and "stdin-is-a-terminal" in lines and "33 101" in lines, output


@pytest.mark.parametrize("executor", WHO)
def test_without_t_the_command_has_no_terminal_on_stdin(image, public, executor):
    argv = [*WHO[executor], REPRO, "run", "--executor", executor, image, "--", "/bin/sh", "-c",
            "test -t 0 && echo terminal || echo no-terminal; exit 3"]
    output, code = on_terminal(argv, environment(public, executor))
    assert code == 3 and output.strip().splitlines()[-1] == "no-terminal", output


@pytest.mark.parametrize("executor", WHO)
def test_it_gives_an_interactive_shell_whose_keys_and_exit_status_go_through(image, public, executor):
    """The terminal is raw while the shell runs: its own line discipline echoes and edits."""
    argv = [*WHO[executor], REPRO, "run", "--executor", executor, "-it", image, "--", "/bin/sh"]
    output, code = on_terminal(argv, environment(public, executor),
                               [(b"# ", b"echo $((6 * 7))\n"), (b"42", b"exit 5\n")])
    assert code == 5, output
    assert "echo $((6 * 7))\n42\n" in output, output  # echoed once, by the shell's terminal


@pytest.mark.parametrize("executor", WHO)
def test_a_resized_terminal_resizes_the_command_s(image, public, executor):
    argv = [*WHO[executor], REPRO, "run", "--executor", executor, "-t", image, "--", "/bin/sh", "-c",
            "/bin/busybox stty size; echo resize-now; /bin/busybox sleep 3; /bin/busybox stty size"]
    output, code = on_terminal(argv, environment(public, executor), resize_after=b"resize-now")
    assert code == 0 and output.split() == ["33", "101", "resize-now", "40", "120"], output


def test_it_without_a_terminal_on_stdin_fails_in_one_line(image, public):
    proc = subprocess.run([REPRO, "run", "-it", image, "--", "/bin/true"], input="", capture_output=True, text=True,
                          env=environment(public))
    assert proc.returncode == 2
    assert proc.stderr.startswith("repro: the input device is not a TTY") and proc.stderr.count("\n") == 1


def test_t_alone_needs_no_terminal_and_a_job_needs_neither(image, public):
    """As docker's: -t without -i allocates the pty even in a pipeline; with neither, no terminal at all."""
    env = environment(public)
    tty = subprocess.run([REPRO, "run", "-t", image, "--", "/bin/sh", "-c", "test -t 0 && test -t 1 && exit 4"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    assert tty.returncode == 4, tty.stderr
    job = subprocess.run([REPRO, "run", image, "--", "/bin/sh", "-c", "test -t 0 || test -t 1 || exit 6"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    assert job.returncode == 6, job.stderr


def test_stdin_reaches_the_command_only_with_i(image, public):
    env = environment(public)
    closed = subprocess.run([REPRO, "run", image, "--", "/bin/cat"], input="piped\n", capture_output=True, text=True,
                            env=env)
    assert closed.returncode == 0 and closed.stdout == ""
    attached = subprocess.run([REPRO, "run", "-i", image, "--", "/bin/cat"], input="piped\n", capture_output=True,
                              text=True, env=env)
    assert attached.returncode == 0 and attached.stdout == "piped\n"


# Types a command into its standard output's terminal, as a hostile image would into the user's shell.
TYPIST = r"""
#include <stdio.h>
#include <sys/ioctl.h>
int main(void) {
    for (const char *c = "echo typed-by-the-image\n"; *c; c++)
        if (ioctl(1, TIOCSTI, c) != 0) { puts("tiocsti: blocked"); return 0; }
    puts("tiocsti: typed");
    return 0;
}
"""


@pytest.fixture(scope="module")
def typist(public) -> tuple[str, str]:
    """(the program, an image with it at /typist)."""
    (public / "typist.c").write_text(TYPIST)
    program = public / "typist"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(program), str(public / "typist.c")], check=True)
    layout = public / "typist-layout"
    make_image(layout, "1", [*busybox_layers(), [E("typist", program.read_bytes(), mode=0o755)]],
               config={"Env": ["PATH=/bin"]})
    subprocess.run(["chmod", "-R", "a+rX", str(layout)], check=True)
    return str(program), f"oci:{layout}:1"


def typed_into_terminal(argv: list[str], env: dict) -> tuple[int, str]:
    """Run `argv` on a terminal as the user's shell would; returns how many bytes were pushed into that
    terminal's input (what the shell would read next) and what was printed."""
    master, slave = os.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    output = b""
    try:
        while proc.poll() is None or select.select([master], [], [], 0.2)[0]:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    output += os.read(master, 4096)
                except OSError:
                    break
        pending = struct.unpack("i", fcntl.ioctl(slave, termios.FIONREAD, b"\0" * 4))[0]
    finally:
        os.close(master)
        os.close(slave)
    return pending, output.decode(errors="replace")


def test_the_typist_does_type_into_a_terminal_when_unconfined(typist, public):
    """The check below can fail: run on the host, the program's keystrokes reach the terminal's input
    (unless this kernel refuses TIOCSTI to everyone: dev.tty.legacy_tiocsti = 0)."""
    legacy = Path("/proc/sys/dev/tty/legacy_tiocsti")
    pending, output = typed_into_terminal([typist[0]], environment(public))
    if legacy.exists() and legacy.read_text().strip() == "0":
        assert pending == 0 and "blocked" in output
    else:
        assert pending == len("echo typed-by-the-image\n") and "tiocsti: typed" in output, output


@pytest.mark.parametrize("tty", [False, True], ids=["no-tty", "tty"])
@pytest.mark.parametrize("executor", WHO)
def test_the_command_cannot_type_into_the_user_s_terminal(typist, public, executor, tty):
    """Without -t the command runs in a session of its own (the terminal is not its controlling one);
    with -t it types into its own pty at most, never into the user's terminal."""
    argv = [*WHO[executor], REPRO, "run", "--executor", executor, *(["-t"] if tty else []), typist[1], "--",
            "/typist"]
    pending, output = typed_into_terminal(argv, environment(public, executor))
    assert pending == 0 and "tiocsti: " in output, output


def test_runc_gets_the_terminal_size_before_the_command_starts(tmp_path):
    """runc sizes its pty from its standard input only once the command runs, so a first `stty size`
    could read 0 0 (it did, under load): the size goes into the spec, which runc sets before exec."""
    master, slave = os.openpty()
    try:
        command = Command(["/bin/sh"], {}, tty=os.ttyname(slave))
        assert "consoleSize" not in runc.config(tmp_path, command)["process"]  # no size yet: none given
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        assert runc.config(tmp_path, command)["process"]["consoleSize"] == {"height": 33, "width": 101}
        assert "consoleSize" not in runc.config(tmp_path, Command(["/bin/sh"], {}))["process"]
    finally:
        os.close(master)
        os.close(slave)
