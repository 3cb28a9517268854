"""`tar:PATH`: a flattened root filesystem as one tarball (like `docker export` / `docker import`).

Written from the merged view of the layers with the reproducibility rules of the tar writer, so the
same image gives the same bytes. Read as a one-layer image (gzip/xz/bz2 input is accepted).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import BinaryIO

from converters.rootfs import image_from_layer_writer
from repro.atomic import atomic_file
from repro.errors import ReproError
from repro.flatten import clean_path, flat_entries
from repro.image import Image
from repro.layers import TarWriter, iter_tar_stream, source_date_epoch
from repro.refs import Options, Reference


def write_flat(image: Image, out: BinaryIO) -> None:
    tar = TarWriter(out)
    for info, content in flat_entries(image):
        tar.add(info, content)
    tar.close()


def write(image: Image, ref: Reference, options: Options, progress=None) -> str:
    if not ref.body:
        raise ReproError(f"{ref}: missing file name", "write it as tar:FILE")
    with atomic_file(ref.body) as out:
        write_flat(image, out)
    return image.digest


def copy_tar_stream(source: BinaryIO, tar: TarWriter, what: str, mtime_limit: int,
                    capture: tuple[set[str], dict[str, bytes]] | None = None, skip=None) -> None:
    """Copy a foreign tar stream into a layer: names cleaned, mtimes clamped, headers normalized.

    `capture` = (names, found): the content of those (small) files is also kept in `found`;
    `skip(name)` drops entries (the build's hygiene list)."""
    try:
        with tarfile.open(fileobj=source, mode="r|*", encoding="utf-8", errors="surrogateescape") as src:
            for info in iter_tar_stream(src):
                name = clean_path(info.name)
                if not name or (skip is not None and skip(name)):
                    continue
                info.name = name
                info.mtime = min(int(info.mtime), mtime_limit)
                if info.islnk():
                    info.linkname = clean_path(info.linkname)
                content = src.extractfile(info) if info.isreg() else None
                if capture is not None and name in capture[0] and content is not None and info.size < (1 << 20):
                    data = content.read()
                    capture[1][name] = data
                    content = io.BytesIO(data)
                tar.add(info, content)
    except tarfile.TarError as exc:
        raise ReproError(f"{what}: not a readable tar archive ({exc})", "check the file") from None


def read(ref: Reference, options: Options) -> Image:
    path = Path(ref.body)
    if not ref.body:
        raise ReproError(f"{ref}: missing file name", "write it as tar:FILE")
    if not path.is_file():
        raise ReproError(f"{ref}: {path} does not exist" if not path.exists() else f"{ref}: {path} is not a file",
                         "check the path")
    epoch = source_date_epoch()

    def produce(tar: TarWriter) -> None:
        with open(path, "rb") as f:
            copy_tar_stream(f, tar, str(ref), epoch)

    return image_from_layer_writer(produce, str(ref), options)
