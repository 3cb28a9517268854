"""Clean-up that survives repro: a batch system's SIGKILL ends repro without running any `finally`.

A reaper is a small shell started in its own session that waits for repro's end of a pipe to close,
which happens however repro ends, and then runs its clean-up commands (stop a container, remove a
temporary tree). When repro ends normally it has done the same clean-up already; the commands are
idempotent, so the reaper's run is then harmless.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Iterator, Sequence


@contextlib.contextmanager
def reaper(*commands: Sequence[str], disarm: bool = False) -> Iterator[None]:
    """Run `commands` once repro is gone or the block ends. With `disarm`, the block cleans up after
    itself when it ends without an exception: the reaper is then stopped without running them (a
    build's runc runs would otherwise each start five processes that find nothing to do)."""
    script = "read _ignored; " + "; ".join(shlex.join(c) + " >/dev/null 2>&1" for c in commands)
    proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    clean = False
    try:
        yield
        clean = disarm
    finally:
        if clean:  # still blocked in `read`: it has run nothing, and now never will
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait()


def remove_command(path: str) -> list[str]:
    """A tree that may hold mode-000 directories (a plain user's unpack): made writable, then removed;
    files of the user's subordinate ids (a killed build step, see executors/subids.py) as root of
    the user's namespace of them."""
    return ["/bin/sh", "-c", 'chmod -R u+rwX "$1" 2>/dev/null; rm -rf "$1" 2>/dev/null || '
            'unshare --map-auto --map-root-user rm -rf --one-file-system "$1"', "repro-reaper", path]
