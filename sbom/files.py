"""Per-file inventory of the flattened image: type, mode, owner, size, sha256, link target, layer.

Every byte of every regular file is hashed once while the layers stream past; nothing is extracted.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from repro.confined import clean_path, resolve_listed
from repro.digest import CHUNK
from repro.flatten import MergedEntry, flattening, merged
from repro.image import Image
from sbom.record_store import FileRecord, RecordStore

_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def printable(path: str) -> str:
    """A path for JSON and terminals: bytes that are not UTF-8 become \\xNN escapes."""
    if path.isascii():  # the common case, and the same object: no second copy of the path is kept
        return path
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_MODES = [f"{mode:04o}" for mode in range(0o10000)]  # one string per mode, shared by all records
XATTR = "SCHILY.xattr."


@dataclass
class Scan:
    """One pass over the flattened image: every file's record (sbom.record_store: in memory, or on
    disk for a large image), the md5 of regular files (for dpkg's md5sums), and the content of the
    small files a cataloger asked for (package databases)."""

    files: RecordStore
    contents: dict[str, bytes]

    @property
    def records(self) -> Iterator[FileRecord]:
        """Every record, sorted by path (byte order)."""
        return self.files.sorted()

    def by_path(self) -> RecordStore:
        return self.files

    def md5(self, path: str) -> str | None:
        return self.files.md5(path)

    @cached_property
    def _directories(self) -> dict[str, str | None]:
        """A directory's path -> that path with its links resolved (None: a loop, a file on the way): a Debian image's
        package lists name ~70,000 files in a few thousand directories."""
        return {}

    def resolve(self, path: str) -> str:
        """`path` with every symlinked directory on the way resolved inside the image; the last name
        is not followed (a package's own symlink is a file of the package).

        Package databases record the paths their packages shipped (/bin/sh), which a merged-/usr image
        holds under a linked directory (bin -> usr/bin). Links are resolved in the records by
        repro.confined.resolve_listed, as Tree does on disk; after a loop or through a file, the path
        is returned as it stands."""
        path = clean_path(path)
        parent, _, name = path.rpartition("/")
        if not parent:
            return path
        directories = self._directories
        if parent not in directories:
            directories[parent] = self._follow(parent)
        resolved = directories[parent]
        if resolved is None:
            return path
        return f"{resolved}/{name}" if resolved else name

    def _follow(self, directory: str) -> str | None:
        """`directory` with every link on the way followed, itself included (see resolve)."""
        records = self.files

        def lookup(path: str) -> tuple[str, str] | None:
            record = records.get(path)
            return None if record is None else (record.type, record.target)

        return resolve_listed(directory, lookup)

    def find(self, path: str) -> tuple[str, FileRecord | None]:
        """(resolved path, its record or None when the image has nothing there)."""
        resolved = self.resolve(path)
        return resolved, self.files.get(resolved)


MAX_CAPTURE = 16 << 20


def inventory(image: Image) -> list[FileRecord]:
    """The flattened image's files, sorted by path (byte order)."""
    found = scan(image)
    try:
        return list(found.records)
    finally:
        found.files.close()


def entries(image: Image) -> Iterator[MergedEntry]:
    """The flattened filesystem: read in place where the image is a directory (rootfs:), else the
    merged view of its layers."""
    in_place = getattr(image, "merged_entries", None)
    return in_place() if in_place is not None else merged(image)


def scan(image: Image, capture=None, with_md5: bool = False) -> Scan:
    """Walk the merged layers once; `capture(path)` selects files whose content is kept."""
    return flattening(lambda: _scan(image, capture, with_md5))


def _scan(image: Image, capture, with_md5: bool) -> Scan:
    contents: dict[str, bytes] = {}
    files = RecordStore()
    try:
        for entry in entries(image):
            info = entry.info
            record = FileRecord(
                path=printable(entry.path),
                type=_TYPES.get(info.type, "other"),
                mode=_MODES[info.mode & 0o7777],
                uid=info.uid,
                gid=info.gid,
                size=info.size if info.isreg() else 0,
                sha256="",
                target=printable(info.linkname) if (info.issym() or info.islnk()) else "",
                layer=entry.layer,
                mtime=int(info.mtime),
                xattrs=({k[len(XATTR):]: v for k, v in sorted(info.pax_headers.items()) if k.startswith(XATTR)}
                        or None) if info.pax_headers else None,
            )
            md5 = None
            if entry.content is not None:
                h = hashlib.sha256()
                m = hashlib.md5(usedforsecurity=False) if with_md5 else None
                keep = capture is not None and info.size <= MAX_CAPTURE and capture(entry.path)
                kept = bytearray() if keep else None
                while chunk := entry.content.readview(CHUNK):
                    h.update(chunk)
                    if m is not None:
                        m.update(chunk)
                    if kept is not None:
                        kept += chunk
                record.sha256 = h.hexdigest()
                if m is not None:
                    md5 = m.hexdigest()
                if kept is not None:
                    contents[entry.path] = bytes(kept)
            # a hardlink is the file it names (see RecordStore.finish): the merged view names one it gave
            files.add(entry.path, record, md5, clean_path(info.linkname) if info.islnk() else None)
        files.finish()
    except BaseException:
        files.close()
        raise
    return Scan(files, contents)
