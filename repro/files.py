"""Files read by relative path from a tree: a directory, a tar read in place, or a sub-tree of either.

Layouts, archives and packages are input like any other: a reader takes a `Files`, never a plain path,
so every name is looked up without following a link out of the tree (a directory through
repro.confined, a tar through its own member table) and every document is read with a bound.
"""

from __future__ import annotations

import os
import stat
import tarfile
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, Protocol

from repro.confined import Tree, clean_path, not_regular
from repro.digest import MAX_DOCUMENT_SIZE, RawReader, read_bounded
from repro.errors import ReproError
from repro.layers import sniff_compression
from repro.tarstream import TarDamaged, TarStream

MAX_LINKS = 16  # symlinks and hardlinks followed from one name inside a tar

# Why a link is refused where a regular file belongs, by the kind of tar holding it.
_REGULAR_ONLY = {
    "archive": "documents and blobs are regular files; the archive is damaged or hostile",
    "package": "a bag holds regular files only; the package is damaged or hostile",
}


def _plain(name: str, what: str, kind: str) -> str:
    """Names inside a layout or package come from digests and fixed names: '..' or '/' means hostile."""
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ReproError(f"{what}: {name!r} is not a plain relative path", f"the {kind} is damaged or hostile")
    return name


def regular_file_exists(root: Path, name: str, what: str, kind: str = "layout") -> bool:
    """Whether `name` is under `root`; a symlink or special file there, or on the way, is an error."""
    with Tree(root, what) as tree:
        return tree.is_regular(_plain(name, what, kind), follow=False, kind=kind)


def open_regular(root: Path, name: str, what: str, kind: str = "layout") -> BinaryIO:
    """Open the regular file `name` under `root`, following no symlink on the way (repro.confined): a
    blob or document that links to /dev/zero or to a host file is refused, never read."""
    with Tree(root, what) as tree:
        return tree.open_file(_plain(name, what, kind), follow=False, kind=kind)


class Files(Protocol):
    """The regular files of a tree by clean relative path; `name` says which tree in messages."""

    name: str

    def names(self) -> list[str]: ...

    def exists(self, name: str) -> bool: ...

    def size(self, name: str) -> int: ...

    def open(self, name: str) -> BinaryIO: ...

    def read(self, name: str, limit: int = ...) -> bytes: ...


class DirectoryFiles:
    """A tree in a directory. Every file is opened without following a symlink, its parents' included: a
    link could point at /dev/zero or at a host file. `kind` ("layout", "package") words the errors."""

    def __init__(self, root: Path, name: str = "", kind: str = "layout") -> None:
        self.root, self.name, self.kind = Path(root), name or str(root), kind

    def names(self) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            for name in [*dirnames, *filenames]:
                path = name if rel == "." else f"{rel}/{name}"
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    out.append(path)
                elif not stat.S_ISDIR(st.st_mode):
                    raise not_regular(self.name, path, st, self.kind)
        return sorted(out)

    def exists(self, name: str) -> bool:
        return regular_file_exists(self.root, name, self.name, self.kind)

    def size(self, name: str) -> int:
        with self.open(name) as f:
            return os.fstat(f.fileno()).st_size

    def open(self, name: str) -> BinaryIO:
        return open_regular(self.root, name, self.name, self.kind)

    def read(self, name: str, limit: int = MAX_DOCUMENT_SIZE) -> bytes:
        with self.open(name) as f:
            return read_bounded(f, limit, f"{self.name}: {name}", f"the {self.kind} is not valid")


class FileSlice(RawReader):
    """A reader of `size` bytes at `offset` of a file, using pread (no shared file position)."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._pos = offset
        self._end = offset + size

    def read(self, size: int = -1) -> bytes:
        remaining = self._end - self._pos
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size <= 0:
            return b""
        data = os.pread(self._fd, size, self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class TarFiles:
    """The members of an uncompressed tar file, read in place at their offsets (many at once, nothing
    extracted), scanned once by repro's own tar reader.

    With `follow_links` a symlink or hardlink member resolves to the regular member it names inside the
    archive (docker save links a layer that appears twice); without, a link where a file is asked for is
    refused. `root` is the directory inside the tar the names are relative to; `kind` words the errors."""

    def __init__(self, path: str | os.PathLike, what: str, follow_links: bool = True, root: str = "",
                 kind: str = "archive") -> None:
        self.path, self.what, self.name = Path(path), what, what
        self.follow_links, self.root, self.kind = follow_links, root, kind
        if not self.path.exists():
            raise ReproError(f"{what}: {self.path} does not exist", "check the path")
        if not self.path.is_file():
            raise ReproError(f"{what}: {self.path} is not a file", "give the path of a tar archive")

    @cached_property
    def members(self) -> dict[str, tarfile.TarInfo]:
        """Every member by clean path (a later member of the same name wins, as in extraction)."""
        with open(self.path, "rb") as f:
            compression = sniff_compression(f.read(4))
        if compression:
            raise ReproError(
                f"{self.what}: {self.path} is {compression}-compressed",
                "decompress it first (gunzip -k FILE or unzstd FILE)",
            )
        out: dict[str, tarfile.TarInfo] = {}
        with open(self.path, "rb") as f:
            try:
                for info in TarStream(f, f"{self.what}: {self.path}", seekable=True):
                    out[clean_path(info.name)] = info
            except TarDamaged as exc:
                raise ReproError(f"{self.what}: {self.path} is not a readable tar archive ({exc.detail})",
                                 "the archive is damaged") from None
        return out

    def _label(self, name: str) -> str:
        return f"member {name}" if self.kind == "archive" else name

    def refuse_link(self, name: str) -> None:
        """A member asked for as a document or blob must be a regular file: a link there is refused."""
        info = self.members.get(self.root + clean_path(name))
        if info is not None and not info.isreg():
            shape = "a symlink" if info.issym() else "a hardlink" if info.islnk() else "not a regular file"
            raise ReproError(f"{self.what}: {self._label(name)} is {shape}", _REGULAR_ONLY[self.kind])

    def _resolve(self, name: str) -> tarfile.TarInfo | None:
        if not self.follow_links:
            self.refuse_link(name)
        info = self.members.get(self.root + clean_path(name))
        for _ in range(MAX_LINKS):
            if info is None or not (info.issym() or info.islnk()):
                break
            target = info.linkname
            if info.issym() and not target.startswith("/"):
                target = f"{clean_path(info.name).rpartition('/')[0]}/{target}"
            info = self.members.get(clean_path(target))
        return info if info is not None and info.isreg() else None

    def names(self) -> list[str]:
        return sorted(n[len(self.root):] for n, info in self.members.items()
                      if n.startswith(self.root) and not info.isdir() and self._resolve(n[len(self.root):]))

    def exists(self, name: str) -> bool:
        return self._resolve(name) is not None

    def size(self, name: str) -> int:
        info = self._resolve(name)
        if info is None:
            raise FileNotFoundError(name)
        return info.size

    def open(self, name: str) -> BinaryIO:
        info = self._resolve(name)
        if info is None:
            raise FileNotFoundError(name)
        return FileSlice(self.path, info.offset_data, info.size)  # type: ignore[return-value]

    def read(self, name: str, limit: int = MAX_DOCUMENT_SIZE) -> bytes:
        if self.size(name) > limit:
            raise ReproError(f"{self.what}: {self._label(name)} is larger than {limit} bytes",
                             f"the {self.kind} is not valid")
        with self.open(name) as f:
            return f.read()


class SubFiles:
    """The files under `prefix` (ending in '/') of another tree, by paths relative to it."""

    def __init__(self, files: Files, prefix: str) -> None:
        self.files, self.prefix, self.name = files, prefix, f"{files.name}/{prefix.rstrip('/')}"

    def names(self) -> list[str]:
        return [n[len(self.prefix):] for n in self.files.names() if n.startswith(self.prefix)]

    def exists(self, name: str) -> bool:
        return self.files.exists(self.prefix + name)

    def size(self, name: str) -> int:
        return self.files.size(self.prefix + name)

    def open(self, name: str) -> BinaryIO:
        return self.files.open(self.prefix + name)

    def read(self, name: str, limit: int = MAX_DOCUMENT_SIZE) -> bytes:
        return self.files.read(self.prefix + name, limit)
