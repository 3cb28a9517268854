"""The merged view of an image's layers: each path once, as the top-most layer that has it says.

Layers are walked from the top down, so what a higher layer replaces or deletes is never produced
from a lower one (OCI image-spec layer.md: whiteouts and opaque whiteouts hide lower layers only).
Everything that needs the final filesystem (flatten, per-file hashes, SBOM catalogers) reads it here.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from repro.confined import clean_path
from repro.errors import ReproError
from repro.image import Image
from repro.tarstream import Content, TarStream

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


def ancestors(path: str) -> Iterator[str]:
    """'a/b/c' -> 'a', 'a/b' (proper ancestors, outermost first)."""
    end = path.find("/")
    while end > 0:
        yield path[:end]
        end = path.find("/", end + 1)


DIR, IMPLICIT_DIR, OTHER = "dir", "implicit", "other"


@dataclass
class _Upper:
    """What the layers above the current one have said about paths."""

    claimed: dict[str, str] = field(default_factory=dict)  # path -> DIR, IMPLICIT_DIR (a parent) or OTHER
    deleted: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    sealed: set[str] = field(default_factory=set)  # nothing from further down survives at or under these

    def hides(self, path: str, is_dir: bool) -> bool:
        """True if a lower layer's entry at `path` is replaced or deleted by an upper layer.

        A directory that an upper layer only implies (as the parent of its entries) still takes its
        metadata from the lower layer that has its entry, unless a non-directory came in between."""
        claim = self.claimed.get(path)
        if claim in (DIR, IMPLICIT_DIR) and not is_dir:
            # This non-directory had replaced everything below it before an upper layer made the
            # path a directory again: nothing further down survives at or under it.
            self.sealed.add(path)
            return True
        if path in self.sealed or path in self.deleted or (claim is not None and claim != IMPLICIT_DIR):
            return True
        for parent in ancestors(path):
            if (parent in self.deleted or parent in self.opaque or parent in self.sealed
                    or self.claimed.get(parent) == OTHER):
                return True
        return False


@dataclass(frozen=True, slots=True)
class MergedEntry:
    layer: int  # index in image.layers, 0 = bottom
    path: str  # clean relative path
    info: tarfile.TarInfo
    content: Content | None  # for regular files: readable until the next entry is produced


def whiteout_target(path: str) -> tuple[str, str] | None:
    """('whiteout'|'opaque', target) if `path` is a whiteout entry, else None."""
    parent, base = posixpath.split(path)
    if base == OPAQUE_WHITEOUT:
        return "opaque", parent
    if base.startswith(WHITEOUT_PREFIX):
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", "..") or target.startswith(WHITEOUT_PREFIX):
            return "invalid", path
        return "whiteout", posixpath.join(parent, target)
    return None


def merged(image: Image) -> Iterator[MergedEntry]:
    """Yield the entries of the flattened filesystem, top layer first; the root itself is skipped.

    Within one layer a later duplicate of a path replaces the earlier one, as tar extraction does:
    consumers that collect entries by path get that behaviour by overwriting.
    """
    upper = _Upper()
    layers = image.layers
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index]
        claimed: dict[str, str] = {}
        deleted: set[str] = set()
        opaque: set[str] = set()
        what = f"{image.name}: layer {layer.descriptor.digest}"
        with layer.open_uncompressed(read_ahead=True) as stream:
            tar = TarStream(stream, what)
            for info in tar:
                path = clean_path(info.name)
                if not path:
                    continue
                kind = whiteout_target(path)
                if kind is not None:
                    if kind[0] == "invalid":
                        raise ReproError(f"{what}: {info.name!r} is not a valid whiteout",
                                         "the layer is damaged or hostile; do not use this image")
                    if kind[0] == "opaque":
                        opaque.add(kind[1])
                    elif kind[0] == "whiteout":
                        deleted.add(kind[1])
                    # A whiteout lives in its directory: that directory exists in this layer.
                    for parent in ancestors(path):
                        if parent not in claimed and upper.claimed.get(parent) is None:
                            claimed[parent] = IMPLICIT_DIR
                    continue
                if upper.hides(path, info.isdir()):
                    continue
                if index:  # the bottom layer has nothing below it to hide: remember nothing
                    claimed[path] = DIR if info.isdir() else OTHER
                    for parent in ancestors(path):
                        if parent not in claimed and upper.claimed.get(parent) is None:
                            claimed[parent] = IMPLICIT_DIR
                content = tar.content() if info.isreg() else None
                yield MergedEntry(index, path, info, content)
            # Drain what the tar reader left unread so the digest check at the end of the stream runs.
            stream.finish()
        for path, claim in claimed.items():
            if upper.claimed.get(path) != DIR:
                upper.claimed[path] = claim
        upper.deleted |= deleted
        upper.opaque |= opaque


def flat_entries(image: Image) -> Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]:
    """The merged view as tar entries named by their clean paths, hardlinks last (after every
    possible target, since a link's target may come from a lower layer)."""
    links: list[tarfile.TarInfo] = []
    for entry in merged(image):
        info = entry.info
        info.name = entry.path
        if info.islnk():
            info.linkname = clean_path(info.linkname)
            links.append(info)
            continue
        yield info, entry.content
    yield from ((info, None) for info in links)


def extract(image: Image, root: Path, policy=None):
    """Flatten `image` into the existing directory `root`; returns the extraction statistics."""
    from repro.extract import Extractor, Policy

    extractor = Extractor(root, image.name, policy or Policy())
    try:
        for entry in merged(image):
            extractor.add(entry.path, entry.info, entry.content)
        return extractor.finish()
    finally:
        extractor.close()
