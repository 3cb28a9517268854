"""Random access to the members of an uncompressed tar file (OCI and Docker archives).

The archive is scanned once for its headers (by repro's own tar reader, which refuses what would
make tarfile loop or lose its place, and seeks over content); a member is then read straight from its
offset in the file, so blobs are never extracted to a temporary directory and many can be read at once.
"""

from __future__ import annotations

import os
import tarfile
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from repro.digest import RawReader
from repro.errors import ReproError
from repro.layers import member_name, sniff_compression
from repro.tarstream import TarDamaged, TarStream


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
    """The members of a tar archive by clean path, following symlinks and hardlinks inside it."""

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        self.path = Path(path)
        self.what = what
        if not self.path.exists():
            raise ReproError(f"{what}: {self.path} does not exist", "check the path")
        if not self.path.is_file():
            raise ReproError(f"{what}: {self.path} is not a file", "give the path of a tar archive")

    @cached_property
    def members(self) -> dict[str, tarfile.TarInfo]:
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
                    out[member_name(info.name)] = info
            except TarDamaged as exc:
                raise ReproError(f"{self.what}: {self.path} is not a readable tar archive ({exc.detail})",
                                 "the archive is damaged") from None
        return out

    def _resolve(self, name: str) -> tarfile.TarInfo | None:
        seen = 0
        info = self.members.get(member_name(name))
        while info is not None and (info.issym() or info.islnk()) and seen < 16:
            seen += 1
            if info.islnk():
                target = info.linkname
            else:
                base = member_name(info.name).rpartition("/")[0]
                target = info.linkname if info.linkname.startswith("/") else f"{base}/{info.linkname}"
            parts: list[str] = []
            for part in target.split("/"):
                if part == "..":
                    if parts:
                        parts.pop()
                elif part not in ("", "."):
                    parts.append(part)
            info = self.members.get("/".join(parts))
        return info if info is not None and info.isreg() else None

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
        return FileSlice(self.path, info.offset_data, info.size)

    def read(self, name: str, limit: int = 4 << 20) -> bytes:
        if self.size(name) > limit:
            raise ReproError(
                f"{self.what}: member {name} is larger than {limit} bytes", "the archive is not valid"
            )
        with self.open(name) as f:
            return f.read()
