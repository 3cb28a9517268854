"""BagIt 1.0 (RFC 8493): the container a preservation package is, written and checked.

Written here rather than with bagit-python's make_bag, which writes BagIt-Version 0.97 and today's date;
a package must say 1.0 and be byte-identical when made again. bagit-python validates what we write (in
tests). Checking works on a directory or on a tar holding one, read in place (`PackageFiles`).
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

from repro.confined import not_regular
from repro.digest import MAX_DOCUMENT_SIZE, read_bounded, sha256_stream
from repro.errors import CheckFailed, ReproError
from repro.store import open_regular, regular_file_exists

ALGORITHM = "sha256"
MANIFEST = f"manifest-{ALGORITHM}.txt"
TAG_MANIFEST = f"tagmanifest-{ALGORITHM}.txt"
BAGIT_TXT = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"


class PackageFiles(Protocol):
    """A bag's files by path relative to the bag's top directory."""

    name: str

    def names(self) -> list[str]: ...

    def exists(self, name: str) -> bool: ...

    def size(self, name: str) -> int: ...

    def open(self, name: str) -> BinaryIO: ...

    def read(self, name: str, limit: int = ...) -> bytes: ...


class DirectoryFiles:
    """A bag in a directory. Every file is opened without following a symlink, its parents' included: a
    package is input like any other, and a link in it could point at /dev/zero or at a host file."""

    def __init__(self, root: Path) -> None:
        self.root, self.name = Path(root), str(root)

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
                    raise not_regular(self.name, path, st, "package")
        return sorted(out)

    def exists(self, name: str) -> bool:
        return regular_file_exists(self.root, name, self.name, "package")

    def size(self, name: str) -> int:
        with self.open(name) as f:
            return os.fstat(f.fileno()).st_size

    def open(self, name: str) -> BinaryIO:
        return open_regular(self.root, name, self.name, "package")

    def read(self, name: str, limit: int = MAX_DOCUMENT_SIZE) -> bytes:
        with self.open(name) as f:
            return read_bounded(f, limit, f"{self.name}: {name}", "the package is not valid")


class TarPackageFiles:
    """The bag inside a tar: one top-level directory holding bagit.txt (RFC 8493's serialization). Its
    members are taken as they are: a link is refused, never followed to another member."""

    def __init__(self, path: Path) -> None:
        from repro.tarfiles import TarFiles

        self.tar, self.name = TarFiles(path, str(path)), str(path)
        tops = {n.split("/", 1)[0] for n in self.tar.members}
        if len(tops) != 1:
            raise ReproError(f"{path}: a packaged bag holds one top-level directory, found {len(tops)}",
                             "give a tar made by repro archive")
        self.prefix = tops.pop() + "/"

    def names(self) -> list[str]:
        return sorted(n[len(self.prefix):] for n in self.tar.members
                      if n.startswith(self.prefix) and self._member(n[len(self.prefix):]) is not None)

    def _member(self, name: str) -> tarfile.TarInfo | None:
        info = self.tar.members.get(self.prefix + name)
        if info is not None and not info.isreg():
            if info.isdir():
                return None
            shape = "is a symlink" if info.issym() else "is a hardlink" if info.islnk() else "is not a regular file"
            raise ReproError(f"{self.name}: {name} {shape}",
                             "a bag holds regular files only; the package is damaged or hostile")
        return info

    def exists(self, name: str) -> bool:
        return self._member(name) is not None

    def size(self, name: str) -> int:
        info = self._member(name)
        if info is None:
            raise FileNotFoundError(name)
        return info.size

    def open(self, name: str) -> BinaryIO:
        if self._member(name) is None:
            raise FileNotFoundError(name)
        return self.tar.open(self.prefix + name)

    def read(self, name: str, limit: int = MAX_DOCUMENT_SIZE) -> bytes:
        if self.size(name) > limit:
            raise ReproError(f"{self.name}: {name} is larger than {limit} bytes", "the package is not valid")
        with self.open(name) as f:
            return read_bounded(f, limit, f"{self.name}: {name}", "the package is not valid")


def open_package(path: str | os.PathLike) -> PackageFiles:
    p = Path(path)
    if p.is_dir():
        return DirectoryFiles(p)
    if p.is_file():
        return TarPackageFiles(p)
    raise ReproError(f"{path}: does not exist", "give a package directory or .tar made by repro archive")


def encode_path(name: str) -> str:
    """RFC 8493 2.1.3: percent-encode %, CR and LF in manifest paths."""
    return name.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def decode_path(name: str) -> str:
    return name.replace("%0A", "\n").replace("%0a", "\n").replace("%0D", "\r").replace("%0d", "\r").replace(
        "%25", "%")


def file_hash(stream: BinaryIO) -> tuple[str, int]:
    return sha256_stream(stream)


def _manifest_text(entries: Iterable[tuple[str, str]]) -> bytes:
    return "".join(f"{digest}  {encode_path(name)}\n" for name, digest in sorted(entries)).encode()


def make(root: Path, info: list[tuple[str, str]]) -> None:
    """Turn `root`, whose payload is already under `root/data`, into a bag: manifests and tag files."""
    files = DirectoryFiles(root)
    payload, total = [], 0
    for name in files.names():
        if not name.startswith("data/"):
            raise ReproError(f"{root}: {name} is outside data/", "internal: payload goes under data/")
        with files.open(name) as stream:
            digest, size = file_hash(stream)
        payload.append((name, digest))
        total += size
    (root / MANIFEST).write_bytes(_manifest_text(payload))
    (root / "bagit.txt").write_bytes(BAGIT_TXT)
    fields = [*info, ("Payload-Oxum", f"{total}.{len(payload)}")]
    (root / "bag-info.txt").write_bytes("".join(f"{k}: {v}\n" for k, v in fields).encode())
    tags = []
    for name in ("bag-info.txt", "bagit.txt", MANIFEST):
        with open(root / name, "rb") as stream:
            tags.append((name, file_hash(stream)[0]))
    (root / TAG_MANIFEST).write_bytes(_manifest_text(tags))


def read_info(files: PackageFiles) -> dict[str, str]:
    """bag-info.txt as a dict (continuation lines joined)."""
    out: dict[str, str] = {}
    last = ""
    for line in files.read("bag-info.txt").decode("utf-8", "replace").splitlines():
        if line[:1] in (" ", "\t") and last:
            out[last] += " " + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            out[last.strip()] = value.strip()
    return out


def _parse_manifest(files: PackageFiles, name: str) -> dict[str, str]:
    entries = {}
    for number, line in enumerate(files.read(name).decode("utf-8", "replace").splitlines(), 1):
        digest, sep, path = line.partition(" ")
        if not sep or not path.strip():
            raise CheckFailed(f"{files.name}: {name} line {number} is malformed", "the package is damaged")
        entries[decode_path(path.lstrip(" *"))] = digest.lower()
    return entries


def check(files: PackageFiles) -> list[tuple[str, str]]:
    """Completeness and fixity; returns (check, detail) rows of what passed, raises CheckFailed at the first
    file that is wrong, naming it."""
    rows = []
    for required in ("bagit.txt", MANIFEST):
        if not files.exists(required):
            raise CheckFailed(f"{files.name}: {required} is missing", "not a BagIt bag, or a damaged one")
    version = files.read("bagit.txt").decode("utf-8", "replace")
    if "BagIt-Version:" not in version:
        raise CheckFailed(f"{files.name}: bagit.txt has no BagIt-Version", "the package is damaged")
    present = set(files.names())
    if files.exists(TAG_MANIFEST):
        for name, digest in sorted(_parse_manifest(files, TAG_MANIFEST).items()):
            if name not in present:
                raise CheckFailed(f"{files.name}: {name} is missing (listed in {TAG_MANIFEST})", "")
            with files.open(name) as stream:
                if file_hash(stream)[0] != digest:
                    raise CheckFailed(f"{files.name}: {name} does not match its {ALGORITHM} in {TAG_MANIFEST}",
                                      "the package's metadata was changed")
        rows.append(("tag files", f"{TAG_MANIFEST} matches"))
    manifest = _parse_manifest(files, MANIFEST)
    payload = sorted(n for n in present if n.startswith("data/"))
    extra = [n for n in payload if n not in manifest]
    if extra:
        raise CheckFailed(f"{files.name}: {extra[0]} is in the payload but not in {MANIFEST}",
                          "a file was added to the package")
    total = 0
    for name in sorted(manifest):
        if name not in present:
            raise CheckFailed(f"{files.name}: {name} is missing (listed in {MANIFEST})", "a file was deleted")
        with files.open(name) as stream:
            digest, size = file_hash(stream)
        if digest != manifest[name]:
            raise CheckFailed(f"{files.name}: {name} does not match its {ALGORITHM} in {MANIFEST}",
                              "the file was changed or damaged")
        total += size
    oxum = read_info(files).get("Payload-Oxum", "") if files.exists("bag-info.txt") else ""
    if oxum and oxum != f"{total}.{len(manifest)}":
        raise CheckFailed(f"{files.name}: Payload-Oxum {oxum} does not match the payload ({total}.{len(manifest)})",
                          "the package is damaged")
    rows.append(("payload", f"{len(manifest)} files, {total} bytes, every {ALGORITHM} matches"))
    return rows
