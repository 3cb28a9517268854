"""`tar:PATH`: a flattened root filesystem as one tarball (like `docker export` / `docker import`).

Written from the merged view of the layers with the reproducibility rules of the tar writer, so the
same image gives the same bytes (and only the cleaned names: the writer drops the pax records of the
input). Read as a one-layer image (gzip/zstd/xz/bz2 input is accepted) with repro's own tar reader,
which refuses the headers that make tarfile loop or lose its place.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from repro.atomic import atomic_file
from repro.clock import source_date_epoch
from repro.errors import ReproError
from repro.flatten import flat_entries, flattening
from repro.image import Image
from repro.layers import TarWriter
from repro.mutate import image_from_layer_writer
from repro.refs import Options, Reference, Transport, Written
from repro.tarstream import copy_tar_stream


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
