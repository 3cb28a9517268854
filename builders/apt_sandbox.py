"""apt in a build step: it downloads as root inside, as root and as a plain user alike, and the image never knows.

apt drops to its `_apt` user to download and to verify (APT::Sandbox::User, `_apt` by default). A plain
user's build runs under bwrap in a user namespace that maps one id, the user's own, as root inside:
there is no `_apt` id there, and `apt-get update` fails ("setgroups 65534 failed", "seteuid 42 failed").
As root, runc maps 65536 ids and the drop works, but then apt leaves its `partial` directories owned by
`_apt`, and the images of root and of a plain user would differ. The spec's `packages` step gives apt
`-o APT::Sandbox::User=root` on its command line; a def file's `%post` or a Containerfile's `RUN` runs the
user's own `apt-get`, so the same setting goes where apt reads it whatever the command line:

- a one-line snippet `APT::Sandbox::User "root";` written once per build beside the working tree, owned
  by repro and read-only (0444; as root, runc's root inside is host uid 100000, which may read it, not
  write it), is bind-mounted at /etc/apt/apt.conf.d/zz-repro-apt-sandbox for the step's run only;
  named to sort last among the parts, so that it wins over the image's own (without a dot: apt reads
  part names without an extension, and ignores any extension but .conf);
- its mount point, an empty file, is made by repro just before the run and removed just after it,
  before the tree is compared with its snapshot, so it is never in a layer; the directory's times are
  put back (or left at the step's own change), so nothing of it stays in the tree either;
- with the setting apt makes its partial directories as root and leaves those of the base as they are
  (it gives them to the sandbox user only when that is not root): a Debian base's `_apt` ones stay
  `_apt`'s as root, which a plain user, who cannot see owners change, also leaves unrecorded;
- only where the image has an /etc/apt/apt.conf.d directory (a Debian-like image) and no entry of
  that name; elsewhere, or if the directory cannot take the file, the step runs as it would without.

Why not the environment (APT_CONFIG pointing at a file): the step would see one more variable, which a
`RUN env > file` or a build tool recording its environment would put in the image; and apt reads
APT_CONFIG before the image's apt.conf.d, whose parts would override it. The bind leaves the step's
environment exactly what the def file or Containerfile says, and root and plain user both get it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from repro.confined import Tree
from repro.errors import ReproError

CONF_DIR = "etc/apt/apt.conf.d"
NAME = "zz-repro-apt-sandbox"
SNIPPET = (b"// Put here by repro for one build step only, never in the image (builders/apt_sandbox.py):\n"
           b"// apt downloads as root inside the step, as root and as a plain user alike.\n"
           b'APT::Sandbox::User "root";\n')


def snippet(scratch: Path) -> str:
    """The host file to bind: made once in `scratch` (the build's private directory, which runc's root
    inside can enter), read-only."""
    path = scratch / "apt-sandbox.conf"
    if not path.exists():
        tmp = scratch / "apt-sandbox.conf.tmp"
        tmp.write_bytes(SNIPPET)
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    return str(path)


@contextlib.contextmanager
def during_step(tree: Path, scratch: Path) -> Iterator[tuple[tuple[str, str], ...]]:
    """The binds that give apt the setting while a step runs in `tree` (none when the image has no
    apt.conf.d); the mount point made for it is gone when the context ends."""
    made = _make_mount_point(tree)
    if made is None:
        yield ()
        return
    inside, ino, times = made
    try:
        yield ((snippet(scratch), f"{inside}/{NAME}"),)
    finally:
        _remove_mount_point(tree, inside, ino, times)


def _make_mount_point(tree: Path) -> tuple[str, int, tuple[int, int, int]] | None:
    """(the resolved directory, the inode of the empty file made in it, the directory's atime and mtime
    before and its mtime after), or None if nothing was made."""
    try:
        with Tree(tree) as confined:
            st = confined.lstat(CONF_DIR)
            if st is None or not stat.S_ISDIR(st.st_mode):
                return None
            inside = confined.resolve_dir(CONF_DIR)
            fd = confined.open_dir(inside, follow=False)
            try:
                before = os.fstat(fd)
                file_fd = os.open(NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                                  dir_fd=fd)
                ino = os.fstat(file_fd).st_ino
                os.close(file_fd)
                return inside, ino, (before.st_atime_ns, before.st_mtime_ns, os.fstat(fd).st_mtime_ns)
            finally:
                os.close(fd)
    except (OSError, ReproError):  # an entry of that name already, a read-only directory, a link out
        return None


def _remove_mount_point(tree: Path, inside: str, ino: int, times: tuple[int, int, int]) -> None:
    """Remove the empty file made for the bind, if the step left it where it was; put the directory's
    times back unless the step changed the directory itself (then its mtime is the step's)."""
    atime, mtime, made = times
    with contextlib.suppress(OSError, ReproError), Tree(tree) as confined:
        fd = confined.open_dir(inside, follow=False)
        try:
            st = os.stat(NAME, dir_fd=fd, follow_symlinks=False)
            if not (stat.S_ISREG(st.st_mode) and st.st_ino == ino and st.st_size == 0):
                return
            after = os.fstat(fd).st_mtime_ns
            os.unlink(NAME, dir_fd=fd)
            os.utime(fd, ns=(atime, mtime) if after == made else (os.fstat(fd).st_atime_ns, after))
        finally:
            os.close(fd)
