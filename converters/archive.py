"""`archive:PATH`: the image inside a repro preservation package (a directory or a .tar), read in place.

Written only by `repro archive`, which makes the whole package (SBOMs, provenance, records) around it;
where the image lies in the package is said here, below the preservation floor that writes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from converters.oci_layout import read_from_files
from repro.errors import ReproError
from repro.files import DirectoryFiles, Files, SubFiles, TarFiles
from repro.image import Image
from repro.refs import Options, Reference, Transport

LAYOUT_DIR = "image"  # the OCI layout's folder under the bag's data/
LAYOUT_TAG = "image"  # the image's tag in that layout


def open_package(path: str | os.PathLike) -> Files:
    """A package's files by path relative to the bag's top directory: a directory, or a tar holding one
    top-level directory (RFC 8493's serialization) whose members are taken as they are: a link is
    refused, never followed to another member."""
    p = Path(path)
    if p.is_dir():
        return DirectoryFiles(p, str(p), "package")
    if p.is_file():
        tar = TarFiles(p, str(p), follow_links=False, kind="package")
        tops = {n.split("/", 1)[0] for n in tar.members}
        if len(tops) != 1:
            raise ReproError(f"{path}: a packaged bag holds one top-level directory, found {len(tops)}",
                             "give a tar made by repro archive")
        tar.root = tops.pop() + "/"
        return tar
    raise ReproError(f"{path}: does not exist", "give a package directory or .tar made by repro archive")


def read(ref: Reference, options: Options) -> Image:
    if not ref.body:
        raise ReproError(f"{ref}: missing path", "write it as archive:PACKAGE (a directory or .tar)")
    files = open_package(ref.body)
    if not files.exists("bagit.txt"):
        raise ReproError(f"{ref}: not a preservation package (no bagit.txt)", "give a package made by repro archive")
    return read_from_files(SubFiles(files, f"data/{LAYOUT_DIR}/"), LAYOUT_TAG, options, str(ref))


TRANSPORT = Transport("archive", read=read, write_hint="packages are made with repro archive", package=True,
                      naming="path")
