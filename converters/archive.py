"""`archive:PATH`: the image inside a repro preservation package (a directory or a .tar), read in place.

Written only by `repro archive`, which makes the whole package (SBOMs, provenance, records) around it.
"""

from __future__ import annotations

from converters.oci_layout import read_from_files
from repro.errors import ReproError
from repro.image import Image
from repro.preserve import bag
from repro.refs import Options, Reference, Transport


def read(ref: Reference, options: Options) -> Image:
    from repro.preserve.archive import LAYOUT_DIR, LAYOUT_TAG
    from repro.preserve.verify import Subdirectory

    if not ref.body:
        raise ReproError(f"{ref}: missing path", "write it as archive:PACKAGE (a directory or .tar)")
    files = bag.open_package(ref.body)
    if not files.exists("bagit.txt"):
        raise ReproError(f"{ref}: not a preservation package (no bagit.txt)", "give a package made by repro archive")
    layout = Subdirectory(files, f"data/{LAYOUT_DIR}/")
    return read_from_files(layout, LAYOUT_TAG, options, str(ref))


TRANSPORT = Transport("archive", read=read, write_hint="packages are made with repro archive", package=True,
                      naming="path")
