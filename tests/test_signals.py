"""A batch system stays in control: its stop signals reach the contained command, nothing of the run
survives repro, and the exit status is the command's (128+N when a signal ended it)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPRO, busybox_layers, public_directory
from tests.imagekit import make_image


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    layout = tmp_path_factory.mktemp("signals") / "layout"
    make_image(layout, "1", busybox_layers(), config={"Env": ["PATH=/bin"]})
    return f"oci:{layout}:1"


def leftovers() -> set[str]:
    return set(glob.glob("/tmp/repro-run-*") + glob.glob("/tmp/repro-runc-*"))


def running(marker: str) -> list[str]:
    """Contained processes whose command line has `marker` (repro's own command line has it too)."""
    out = subprocess.run(["pgrep", "-f", f"^/bin/[^ ]+ .*{marker}"], capture_output=True, text=True).stdout
    return out.split()


def start(image: str, *command: str, stop_timeout: str = "10") -> subprocess.Popen:
    proc = subprocess.Popen([REPRO, "run", "--stop-timeout", stop_timeout, image, "--", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not running(command[-1][-12:]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running(command[-1][-12:]), proc.communicate()
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
def test_a_stop_signal_reaches_the_command_and_its_status_is_reported(image, signum):
    before = leftovers()
    # The shell is the container's first process: it gets the signal only through a handler.
    name = signal.Signals(signum).name[3:]
    script = f"trap 'exit 42' {name}; while :; do /bin/busybox sleep 1; done; : marker-{signum}"
    proc = start(image, "/bin/sh", "-c", script)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 42, err
    assert running(f"marker-{signum}") == []
    assert leftovers() == before


def test_a_command_that_ignores_the_signal_is_killed_after_the_stop_timeout(image):
    before = leftovers()
    proc = start(image, "/bin/busybox", "sleep", "7777", stop_timeout="1")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL
    assert time.monotonic() - started < 15
    assert running("sleep 7777") == []
    assert leftovers() == before


def test_the_exit_status_is_the_command_s(image):
    for code in (0, 3, 77):
        proc = subprocess.run([REPRO, "run", image, "--", "/bin/sh", "-c", f"exit {code}"], capture_output=True)
        assert proc.returncode == code


def test_sigkill_of_repro_leaves_no_process_and_no_temporary_files(image):
    """SIGKILL runs no clean-up code in repro: its reaper stops the container and removes the tree."""
    before = leftovers()
    proc = start(image, "/bin/busybox", "sleep", "7778")
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 20
    while (running("sleep 7778") or leftovers() != before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running("sleep 7778") == []
    assert leftovers() == before


def _cgroups(pid: str) -> dict[str, str]:
    """hierarchy -> path of a process, from the host's view."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return {line.split(":", 2)[1]: line.split(":", 2)[2] for line in lines}


def test_the_run_stays_inside_repro_s_cgroups_and_limits(image):
    """The batch system's accounting sees the contained processes: every cgroup they are in is repro's
    own or one below it, and they keep the limits repro was started with."""
    marker = "5.1415926"
    proc = subprocess.Popen(["prlimit", "--nofile=777:777", REPRO, "run", image, "--", "/bin/sh", "-c",
                             f"ulimit -n; exec /bin/busybox sleep {marker}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not running(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = running(marker)
    assert pids, proc.communicate()
    mine = _cgroups("self")
    theirs = _cgroups(pids[-1])
    for hierarchy, path in mine.items():
        assert theirs[hierarchy] == path or theirs[hierarchy].startswith(path.rstrip("/") + "/"), (hierarchy, theirs)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "777"


@pytest.fixture(scope="module")
def public_image():
    """The busybox image where a plain user can read it, and a store of its own beside it."""
    with public_directory("repro-signals-") as public:
        make_image(public / "layout", "1", busybox_layers(), config={"Env": ["PATH=/bin"]})
        subprocess.run(["chmod", "-R", "a+rwX", str(public)], check=True)
        yield public


def start_as_a_plain_user(public: Path, executor: str, script: str) -> subprocess.Popen:
    """`repro run` of `script` as nobody, once the script has printed its first line ("started")."""
    proc = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", REPRO, "run", "--executor", executor,
         "--store", str(public / "store"), f"oci:{public / 'layout'}:1", "--", "/bin/sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HOME": str(public)})
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    return proc


@pytest.mark.parametrize("executor", ["bwrap", "proot"])
def test_a_plain_user_s_command_gets_the_signal_and_its_grace_period(public_image, executor):
    """bwrap and proot die of a signal and take the command down unwarned: the command's own processes
    get it instead, its handler runs, and its exit status comes back."""
    proc = start_as_a_plain_user(public_image, executor, 'trap "echo cleaned up; exit 7" TERM; echo started; '
                                 "while true; do /bin/busybox sleep 0.1; done")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (7, "cleaned up\n"), err


@pytest.mark.parametrize("executor", ["bwrap", "proot"])
def test_sigkill_of_a_plain_user_s_run_leaves_no_process(public_image, executor):
    """bwrap dies with repro (--die-with-parent); proot's tracees would not: repro's reaper ends their
    session."""
    marker = "61.25" if executor == "bwrap" else "61.75"
    proc = start_as_a_plain_user(public_image, executor, f"echo started; exec /bin/busybox sleep {marker}")
    assert running(marker)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while running(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(marker)
