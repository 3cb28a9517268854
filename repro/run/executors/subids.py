"""A plain user's root build steps with the user's subordinate ids (/etc/subuid, /etc/subgid), as
rootless podman and buildah run theirs: as root of a user namespace that maps 0 to the user and 1..N
to the user's subordinate range. There dpkg's chown to `_apt`, `adm` or a group a package makes
(openssh-client's `_ssh`) works as it does for root; bwrap's own user namespace maps one id only.

The working tree stays the user's between steps, so that repro, outside the namespace, reads,
snapshots and removes it as before; the image's owners of its other files live in a table (path ->
uid, gid). For one step `main` runs inside the namespace: it gives the table's paths their owners,
runs bwrap (without a user namespace of its own: the one around it confines the step), then takes
every path that is not root's into a new table and gives it back to the user. A chown clears
setuid and setgid bits, so each mode is put back after its chown.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from repro.confined import Tree
from repro.errors import ReproError

Owners = dict[str, tuple[int, int]]
FAILED = 125  # main's status when the owners could not be given (docker run's status for its own errors)
COMM = b"repro-subids"  # this helper's process name, which repro's signal forwarding passes over


def unshare_prefix() -> list[str]:
    """A user namespace of the user's subordinate ids, the user its root (newuidmap, as podman)."""
    return [shutil.which("unshare") or "unshare", "--map-auto", "--map-root-user"]


@functools.cache
def available() -> bool:
    """Whether this plain user has subordinate ids that newuidmap maps, and bwrap runs inside them."""
    if os.geteuid() == 0 or shutil.which("bwrap") is None:
        return False
    probe = subprocess.run([*unshare_prefix(), "bwrap", "--ro-bind", "/", "/", "--unshare-pid", "true"],
                           capture_output=True)
    return probe.returncode == 0


def helper(root: Path | str, given: Path | str, taken: Path | str) -> list[str]:
    """The command prefix that runs the rest (bwrap's argv) once inside the namespace, owners from
    `given` put on the tree at `root` before and read back into `taken` after: `main` in a Python of
    its own, isolated (-I), which needs nothing but the standard library. This Python, or the system's
    python3 where this user cannot run this one again (it lies under a home directory only its owner
    may enter, as root's virtualenv run by another user)."""
    python = sys.executable if os.access(sys.executable, os.X_OK) else shutil.which("python3") or sys.executable
    package = str(Path(__file__).resolve().parents[3])
    code = (f"import sys; sys.path.insert(0, {package!r}); from repro.run.executors.subids import main; "
            "sys.exit(main(sys.argv[1:]))")
    return [python, "-I", "-c", code, str(root), str(given), str(taken), "--"]


def remove(path: Path | str) -> None:
    """Remove a tree that still holds files of subordinate ids, which the user can only remove as
    root of their namespace."""
    subprocess.run([*unshare_prefix(), "rm", "-rf", "--one-file-system", "--", str(path)], check=True,
                   capture_output=True)


def write_table(path: Path, owners: Owners) -> None:
    path.write_text(json.dumps({p: list(ids) for p, ids in sorted(owners.items())}))


def read_table(path: Path) -> Owners:
    return {p: (int(ids[0]), int(ids[1])) for p, ids in json.loads(path.read_text()).items()}


# --- inside the namespace -------------------------------------------------------------------------
def _chown(dir_fd: int, name: str, st: os.stat_result, uid: int, gid: int) -> None:
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd)


def give(root: str, owners: Owners) -> None:
    """Give each path of the table its owners (a path the tree no longer has is passed over)."""
    with Tree(root) as tree:
        for path, (uid, gid) in sorted(owners.items()):
            try:
                dir_fd, name = tree.parent(path, follow=False)
            except (FileNotFoundError, NotADirectoryError, ReproError):
                continue  # gone, or its parent is no longer the directory the table saw
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                _chown(dir_fd, name, st, uid, gid)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise OSError(f"/{path}: owner {uid}:{gid} is beyond this user's subordinate ids ({exc.strerror})"
                              ) from None
            finally:
                os.close(dir_fd)


def take_back(root: str) -> Owners:
    """Every path that is not root's, with its owners; each is given back to root (the user)."""
    owners: Owners = {}
    base = os.fsencode(root)
    skip = len(base.rstrip(b"/")) + 1
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(base):
        prefix = dirpath[skip:] + b"/" if len(dirpath) > len(base) else b""
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_uid or st.st_gid:
                owners[os.fsdecode(prefix + name)] = (st.st_uid, st.st_gid)
                _chown(dir_fd, os.fsdecode(name), st, 0, 0)
    return owners


def _run(command: list[str]) -> int:
    """Run the step; the signals repro forwards are for it, not for this helper, which must live on
    to give the tree back."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, lambda *_: None)  # a handler, not SIG_IGN: the step must not inherit it
    proc = subprocess.Popen(command)
    code = proc.wait()
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    root, given, taken, separator, *command = argv
    assert separator == "--" and command, "usage: ROOT GIVEN TAKEN -- COMMAND..."
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_bytes(COMM)
    try:
        give(root, read_table(Path(given)))
        code = _run(command)
    except OSError as exc:
        print(f"repro: {exc}", file=sys.stderr)
        code = FAILED
    owners = take_back(root)
    fd, tmp = tempfile.mkstemp(prefix=".owners-", dir=os.path.dirname(taken))
    os.close(fd)
    write_table(Path(tmp), owners)
    os.replace(tmp, taken)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
