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
from typing import BinaryIO

from repro.errors import ReproError
from repro.image import Image

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


def clean_path(name: str) -> str:
    """A tar member name as a relative path inside the root: '.', '..' and '/' resolved lexically,
    never above the root ('../../etc/x' -> 'etc/x')."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def ancestors(path: str) -> Iterator[str]:
    """'a/b/c' -> 'a', 'a/b' (proper ancestors, outermost first)."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


@dataclass
class _Upper:
    """What the layers above the current one have said about paths."""

    claimed: dict[str, bool] = field(default_factory=dict)  # path -> is a directory
    deleted: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)

    def hides(self, path: str) -> bool:
        if path in self.claimed or path in self.deleted:
            return True
        for parent in ancestors(path):
            if parent in self.deleted or parent in self.opaque:
                return True
            is_dir = self.claimed.get(parent)
            if is_dir is False:
                return True
        return False


@dataclass(frozen=True, slots=True)
class MergedEntry:
    layer: int  # index in image.layers, 0 = bottom
    path: str  # clean relative path
    info: tarfile.TarInfo
    content: BinaryIO | None  # for regular files: readable until the next entry is produced


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
        claimed: dict[str, bool] = {}
        deleted: set[str] = set()
        opaque: set[str] = set()
        what = f"{image.name}: layer {layer.descriptor.digest}"
        with layer.open_uncompressed() as stream:
            try:
                tar = tarfile.open(  # noqa: SIM115 - closed in the finally below
                    fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape"
                )
            except tarfile.TarError as exc:
                raise ReproError(f"{what}: not a tar stream ({exc})", "the layer is damaged") from None
            try:
                for info in tar:
                    path = clean_path(info.name)
                    if not path:
                        continue
                    kind = whiteout_target(path)
                    if kind is not None:
                        if kind[0] == "opaque":
                            opaque.add(kind[1])
                        elif kind[0] == "whiteout":
                            deleted.add(kind[1])
                        continue
                    if upper.hides(path):
                        continue
                    claimed[path] = info.isdir()
                    content = tar.extractfile(info) if info.isreg() else None
                    yield MergedEntry(index, path, info, content)
            except tarfile.TarError as exc:
                raise ReproError(f"{what}: damaged tar stream ({exc})", "the layer is corrupt") from None
            finally:
                tar.close()
            # Drain what tarfile left unread so the digest check at the end of the stream runs.
            finish = getattr(stream, "finish", None)
            if finish is not None:
                finish()
        upper.claimed.update(claimed)
        upper.deleted |= deleted
        upper.opaque |= opaque
