"""The one careful unpacker: every write into a root filesystem goes through here.

Names are resolved component by component from a descriptor of the root, with O_NOFOLLOW, so nothing
is ever created, changed or read outside the root: `..` is clamped at the root, and a symlink met on
the way is resolved as if the root were `/` (like chroot), never followed out. Rootless quirks
(no chown, no device nodes, directories that must stay writable) are handled here and nowhere else.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from repro.digest import CHUNK
from repro.errors import ReproError
from repro.flatten import clean_path

log = logging.getLogger(__name__)
MAX_SYMLINKS = 40
XATTR_PREFIX = "SCHILY.xattr."


@dataclass
class ExtractStats:
    files: int = 0
    skipped_devices: int = 0
    skipped_xattrs: int = 0
    unresolved_links: list[str] = field(default_factory=list)


class Extractor:
    """Writes tar entries under `root`, which must be an existing directory."""

    def __init__(self, root: Path, what: str) -> None:
        self.root = Path(root)
        self.what = what
        self.privileged = os.geteuid() == 0
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self.stats = ExtractStats()
        self._dir_meta: dict[str, tarfile.TarInfo] = {}
        self._dirs: dict[tuple[str, ...], int] = {}
        self._pending_links: list[tuple[str, str]] = []

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        os.close(self.root_fd)

    # --- resolving names inside the root --------------------------------------------------
    def _open_dir(self, parts: list[str], create: bool) -> int:
        """A descriptor of the directory `parts` inside the root, resolving symlinks within it.

        Resolved directories are remembered (entries of a layer mostly share their parents); what
        is removed or replaced is forgotten, so a cached descriptor never outlives its meaning."""
        key = tuple(parts)
        cached = self._dirs.get(key)
        if cached is not None:
            return os.dup(cached)
        fd = self._resolve_dir(parts, create)
        if len(self._dirs) >= 512:
            os.close(self._dirs.pop(next(iter(self._dirs))))
        self._dirs[key] = os.dup(fd)
        return fd

    def _forget(self, path: str) -> None:
        prefix = tuple(path.split("/"))
        for key in [k for k in self._dirs if k[: len(prefix)] == prefix]:
            os.close(self._dirs.pop(key))

    def _resolve_dir(self, parts: list[str], create: bool) -> int:
        todo = list(parts)
        fd = os.dup(self.root_fd)
        followed = 0
        try:
            while todo:
                name = todo.pop(0)
                try:
                    new = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, 0o755, dir_fd=fd)
                    new = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise ReproError(f"{self.what}: {name!r} is not a directory but an entry is placed under it",
                                         "the image is malformed") from None
                    followed += 1
                    if followed > MAX_SYMLINKS:
                        raise ReproError(f"{self.what}: too many symlinks resolving {'/'.join(parts)}",
                                         "the image has a symlink loop") from None
                    target = os.readlink(name, dir_fd=fd)
                    # Resolve the link inside the root: start again from the root with the link's
                    # target (absolute targets are relative to the root) and the rest of the path.
                    here = self._path_of(fd)
                    base = "" if target.startswith("/") else here
                    todo = clean_path(f"{base}/{target}").split("/") + todo
                    todo = [p for p in todo if p]
                    os.close(fd)
                    fd = os.dup(self.root_fd)
                    continue
                os.close(fd)
                fd = new
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _path_of(self, fd: int) -> str:
        """The root-relative path of a directory descriptor (for resolving relative link targets)."""
        real = os.readlink(f"/proc/self/fd/{fd}")
        root = os.readlink(f"/proc/self/fd/{self.root_fd}")
        rel = os.path.relpath(real, root)
        return "" if rel == "." else rel

    def _parent(self, path: str, create: bool = True) -> tuple[int, str]:
        parts = path.split("/")
        return self._open_dir(parts[:-1], create=create), parts[-1]

    # --- writing entries ------------------------------------------------------------------
    def _clear(self, dir_fd: int, name: str, keep_dir: bool, path: str = "") -> None:
        """Remove what is at `name` so an entry can take its place (a later duplicate wins)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if path and not (keep_dir and stat.S_ISDIR(st.st_mode)):
            self._forget(path)
        if stat.S_ISDIR(st.st_mode) and keep_dir:
            return
        _remove(dir_fd, name, st)

    def add(self, path: str, info: tarfile.TarInfo, content: BinaryIO | None) -> None:
        """Write one entry; `path` is clean and relative (see flatten.clean_path)."""
        if not path:
            return
        dir_fd, name = self._parent(path)
        try:
            self._add(dir_fd, name, path, info, content)
        finally:
            os.close(dir_fd)

    def _add(self, dir_fd: int, name: str, path: str, info: tarfile.TarInfo, content: BinaryIO | None) -> None:
        if info.isdir():
            self._clear(dir_fd, name, keep_dir=True, path=path)
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=dir_fd)
            self._dir_meta[path] = info
            return
        if info.islnk():
            self._pending_links.append((path, clean_path(info.linkname)))
            return
        if (info.ischr() or info.isblk()) and not self.privileged:
            self.stats.skipped_devices += 1
            return
        self._clear(dir_fd, name, keep_dir=False, path=path)
        if info.isreg():
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
            with os.fdopen(fd, "wb") as out:
                if content is not None:
                    while chunk := content.read(CHUNK):
                        out.write(chunk)
                self._set_meta(out.fileno(), info)
            self.stats.files += 1
        elif info.issym():
            os.symlink(info.linkname, name, dir_fd=dir_fd)
            if self.privileged:
                os.chown(name, info.uid, info.gid, dir_fd=dir_fd, follow_symlinks=False)
            with contextlib.suppress(OSError):
                os.utime(name, (info.mtime, info.mtime), dir_fd=dir_fd, follow_symlinks=False)
        elif info.ischr() or info.isblk():
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
            os.mknod(name, kind | 0o600, os.makedev(info.devmajor, info.devminor), dir_fd=dir_fd)
            self._set_meta_at(dir_fd, name, info)
        elif info.isfifo():
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
            self._set_meta_at(dir_fd, name, info)

    def _mode(self, info: tarfile.TarInfo) -> int:
        mode = info.mode & 0o7777
        if not self.privileged:
            mode |= 0o700 if info.isdir() else 0o600  # the owner must still be able to read and write
        return mode

    def _set_meta(self, fd: int, info: tarfile.TarInfo) -> None:
        if self.privileged:
            os.fchown(fd, info.uid, info.gid)
        os.fchmod(fd, self._mode(info))
        self._set_xattrs(fd, info)
        os.utime(fd, (info.mtime, info.mtime))

    def _set_meta_at(self, dir_fd: int, name: str, info: tarfile.TarInfo) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_PATH", 0), dir_fd=dir_fd)
        try:
            if self.privileged:
                os.chown(name, info.uid, info.gid, dir_fd=dir_fd, follow_symlinks=False)
            os.chmod(f"/proc/self/fd/{fd}", self._mode(info))
            os.utime(f"/proc/self/fd/{fd}", (info.mtime, info.mtime))
        finally:
            os.close(fd)

    def _set_xattrs(self, fd: int, info: tarfile.TarInfo) -> None:
        for key, value in info.pax_headers.items():
            if not key.startswith(XATTR_PREFIX):
                continue
            try:
                os.setxattr(fd, key[len(XATTR_PREFIX):], value.encode("utf-8", "surrogateescape"))
            except OSError:
                self.stats.skipped_xattrs += 1

    # --- finishing ------------------------------------------------------------------------
    def finish(self) -> ExtractStats:
        """Create hardlinks (their targets may come from lower layers) and set directory metadata
        last, deepest first, so that a read-only or mode-000 directory did not stop the writes."""
        for path, target in self._pending_links:
            self._link(path, target)
        for path in sorted(self._dir_meta, key=lambda p: p.count("/"), reverse=True):
            info = self._dir_meta[path]
            dir_fd, name = self._parent(path)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    self._set_meta(fd, info)
                finally:
                    os.close(fd)
            finally:
                os.close(dir_fd)
        return self.stats

    def _link(self, path: str, target: str) -> None:
        try:
            src_fd, src_name = self._parent(target, create=False)
        except (FileNotFoundError, ReproError):
            self.stats.unresolved_links.append(path)
            return
        try:
            st = os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise ReproError(f"{self.what}: hardlink {path} points at directory {target}", "the image is malformed")
            dst_fd, dst_name = self._parent(path)
            try:
                self._clear(dst_fd, dst_name, keep_dir=False, path=path)
                os.link(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            finally:
                os.close(dst_fd)
        except FileNotFoundError:
            self.stats.unresolved_links.append(path)
        finally:
            os.close(src_fd)


def _remove(dir_fd: int, name: str, st: os.stat_result) -> None:
    """Remove `name` in `dir_fd`, a whole directory tree included, never following a symlink."""
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        for entry in os.listdir(sub):
            _remove(sub, entry, os.stat(entry, dir_fd=sub, follow_symlinks=False))
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dir_fd)


def open_inside(root: Path, path: str) -> BinaryIO:
    """Open the regular file `path` under `root`, resolving symlinks of its parents inside the root and
    refusing a symlink at the end: a command run in the root may have left links that point out of it."""
    extractor = Extractor(root, str(root))
    try:
        dir_fd, name = extractor._parent(clean_path(path), create=False)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ReproError(f"{path}: cannot be read in the container ({exc.strerror})",
                         "name a regular file the command writes") from None
    finally:
        extractor.close()
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ReproError(f"{path}: is not a regular file", "name a regular file the command writes")
    return os.fdopen(fd, "rb")
