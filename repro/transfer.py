"""What moves when an image is copied: its blobs in a fixed order, each opened only when needed."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from repro.digest import VerifyingReader
from repro.image import Descriptor, Image

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Blob:
    descriptor: Descriptor
    open: Callable[[], BinaryIO]


def image_blobs(image: Image) -> list[Blob]:
    """The config and the layers of `image` (not the manifest), each verified as it streams.

    A blob that appears twice in the manifest (an empty layer repeated) is listed once.
    """
    out: dict[str, Blob] = {}
    for layer in image.layers:
        out.setdefault(layer.descriptor.digest, Blob(layer.descriptor, layer.open))
    config = image.manifest.config
    raw_config = image.raw_config
    out.setdefault(config.digest, Blob(config, lambda: bytes_reader(raw_config, config)))
    return list(out.values())


def bytes_reader(data: bytes, descriptor: Descriptor) -> VerifyingReader:
    """Bytes already in memory, read through the same check as every other blob."""
    return VerifyingReader(io.BytesIO(data), descriptor.digest, descriptor.size, f"blob {descriptor.digest}")


def manifest_descriptor(image: Image, annotations: dict[str, str] | None = None) -> Descriptor:
    return Descriptor(
        image.manifest.media_type, image.digest, len(image.raw_manifest), dict(annotations or {})
    )


class with_progress:
    """A reader that reports the size of each chunk read to `progress`."""

    def __init__(self, src: BinaryIO, progress: Progress | None) -> None:
        self._src, self._progress = src, progress

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if self._progress is not None and data:
            self._progress(len(data))
        return data


def blob_progress(progress: Progress | None, descriptor: Descriptor, total: int | None = -1) -> Progress | None:
    """The counter for one blob: a bar of its own where the display offers one (`progress.blob`), else the
    overall counter. `total` is the number of bytes that will pass (default: the blob's size; None: unknown)."""
    if progress is None:
        return None
    start = getattr(progress, "blob", None)
    return start(descriptor.digest, descriptor.size if total == -1 else total) if start else progress
