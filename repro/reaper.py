"""Clean-up that survives repro: a batch system's SIGKILL ends repro without running any `finally`.

A reaper is a small shell started in its own session that waits for repro's end of a pipe to close,
which happens however repro ends, and then runs its clean-up commands (stop a container, remove a
temporary tree). When repro ends normally it has done the same clean-up already; the commands are
idempotent, so the reaper's run is then harmless.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from collections.abc import Iterator, Sequence


@contextlib.contextmanager
def reaper(*commands: Sequence[str]) -> Iterator[None]:
    script = "read _ignored; " + "; ".join(shlex.join(c) + " >/dev/null 2>&1" for c in commands)
    proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    try:
        yield
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait()


def remove_command(path: str) -> list[str]:
    """A tree that may hold mode-000 directories (a plain user's unpack): made writable, then removed."""
    return ["/bin/sh", "-c", 'chmod -R u+rwX "$1" 2>/dev/null; rm -rf "$1"', "repro-reaper", path]
