"""Every file of an image with the package that installed it: the join behind `repro hash --files`.

One streaming pass reads the merged layers (sbom/files.py) and keeps only what the catalogers read;
the package databases then say which paths each package owns.
"""

from __future__ import annotations

from collections.abc import Iterator

from repro.image import Image
from sbom.catalogers import catalog, os_release, wanted
from sbom.files import scan


def files_with_packages(image: Image) -> Iterator[dict]:
    """Each file's record (sbom.files.FileRecord.to_json) with "package": the owner's purl, or ""."""
    found = scan(image, capture=wanted)
    try:
        owner = {path: package.purl for package in catalog(found, os_release(found)) for path in package.files}
        for record in found.records:
            yield {**record.to_json(), "package": owner.get(record.path, "")}
    finally:
        found.files.close()
