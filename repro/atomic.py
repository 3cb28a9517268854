"""Outputs appear whole or not at all: write under a temporary name, fsync, rename.

A run that fails removes its temporary; a run that is killed leaves only a hidden
`.NAME.repro-tmp-*` beside the destination, never a half-written destination.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from repro.confined import remove_tree
from repro.digest import CHUNK
from repro.errors import ReproError


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.repro-tmp-"


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        raise ReproError(f"{path}: directory {path.parent} does not exist", "create it first")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_special(path: Path) -> bool:
    """A device, FIFO or socket (through links: /dev/stdout): written into, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def copy_into_special(source: Path, path: Path) -> None:
    with open(source, "rb") as src, open(path, "wb", buffering=0) as target:
        shutil.copyfileobj(src, target, CHUNK)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a writable, seekable file that becomes `path` only when the block completes.

    A destination that is a device, a FIFO or a socket (`-o /dev/null`, `/dev/stdout`) is written
    into when the block completes, never replaced: renaming over /dev/null as root would make it a file."""
    path = Path(path)
    _check_parent(path)
    if is_special(path):
        with tempfile.TemporaryFile() as staged:
            yield staged  # type: ignore[misc]
            staged.seek(0)
            with open(path, "wb", buffering=0) as target:
                shutil.copyfileobj(staged, target, CHUNK)
        return
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "w+b") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory that becomes `path` (which must not exist) when the block completes."""
    path = Path(path)
    _check_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755 & ~_umask())
        try:
            os.rename(tmp, path)
        except OSError as exc:
            raise ReproError(
                f"{path}: cannot create ({exc.strerror})", "remove it or choose another path"
            ) from None
        fsync_dir(path.parent)
    except BaseException:
        remove_tree(tmp)  # an image's mode-000 directories and links included
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
