"""`tar:PATH`: a flattened root filesystem as one tarball (like `docker export` / `docker import`).

Written from the merged view of the layers with the reproducibility rules of the tar writer, so the
same image gives the same bytes (and only the cleaned names: the writer drops the pax records of the
input). Read as a one-layer image (gzip/zstd/xz/bz2 input is accepted) with repro's own tar reader,
which refuses the headers that make tarfile loop or lose its place.
"""

from __future__ import annotations

import bz2
import io
import lzma
from pathlib import Path
from typing import BinaryIO

from repro.atomic import atomic_file
from repro.clock import source_date_epoch
from repro.digest import RawReader
from repro.errors import ReproError
from repro.flatten import clean_path, flat_entries, flattening
from repro.image import Image
from repro.layers import GuardedReader, TarWriter, decompressed, sniff_compression
from repro.mutate import image_from_layer_writer
from repro.refs import Options, Reference, Transport, Written
from repro.tarstream import CHUNK, TarDamaged, TarStream

XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
INFLATE_DAMAGE = (lzma.LZMAError, EOFError, OSError)  # what xz and bzip2 readers raise for damaged input


def write_flat(image: Image, out: BinaryIO) -> None:
    tar = TarWriter(out)
    for info, content in flat_entries(image):
        tar.add(info, content)
    tar.close()


def write(image: Image, ref: Reference, options: Options, progress=None) -> Written:
    if not ref.body:
        raise ReproError(f"{ref}: missing file name", "write it as tar:FILE")
    with atomic_file(ref.body) as out:

        def rewind() -> None:  # the flattened stream starts over (see repro.flatten.flattening)
            out.seek(0)
            out.truncate()

        flattening(lambda: write_flat(image, out), rewind)
    return Written(image.digest)


class _Counted(RawReader):
    """The bytes already read to sniff the compression, then the rest of the source; `size` counts
    what was read (the decompression-bomb guard compares it with the output)."""

    def __init__(self, head: bytes, source: BinaryIO) -> None:
        self._head = head
        self._source = source
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
        else:
            data = self._source.read(size)
        self.size += len(data)
        return data


def _uncompressed(source: BinaryIO, what: str) -> BinaryIO:
    """`source` without its compression, if it has one that tar readers accept."""
    head = source.read(6)
    counted = _Counted(head, source)
    compression = sniff_compression(head)
    if compression:
        return decompressed(counted, compression, what)  # type: ignore[arg-type]
    if head.startswith(XZ_MAGIC):
        return GuardedReader(lzma.LZMAFile(counted), counted, what, "xz",  # type: ignore[arg-type]
                             INFLATE_DAMAGE, "the file is damaged")
    if head.startswith(BZIP2_MAGIC):
        return GuardedReader(bz2.BZ2File(counted), counted, what, "bzip2",  # type: ignore[arg-type]
                             INFLATE_DAMAGE, "the file is damaged")
    return counted  # type: ignore[return-value]


def copy_tar_stream(source: BinaryIO, tar: TarWriter, what: str, mtime_limit: int,
                    capture: tuple[set[str], dict[str, bytes]] | None = None, skip=None) -> None:
    """Copy a foreign tar stream into a layer: names cleaned, mtimes clamped, headers normalized.

    `capture` = (names, found): the content of those (small) files is also kept in `found`;
    `skip(name)` drops entries (the build's hygiene list)."""
    stream = TarStream(_uncompressed(source, what), what)
    try:
        for info in stream:
            name = clean_path(info.name)
            if not name or (skip is not None and skip(name)):
                continue
            info.name = name
            info.mtime = min(int(info.mtime), mtime_limit)
            if info.islnk():
                info.linkname = clean_path(info.linkname)
            content = stream.content() if info.isreg() else None
            if capture is not None and name in capture[0] and content is not None and info.size < (1 << 20):
                data = content.read()
                capture[1][name] = data
                content = io.BytesIO(data)  # type: ignore[assignment]
            tar.add(info, content)
    except TarDamaged as exc:
        raise ReproError(f"{what}: not a readable tar archive ({exc.detail})", "check the file") from None


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

    return image_from_layer_writer(produce, str(ref), options.platform)


TRANSPORT = Transport("tar", read=read, write=write, flat=True)
