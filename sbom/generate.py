"""`repro sbom`: catalog an image's packages and write SPDX or CycloneDX, deterministically."""

from __future__ import annotations

import logging

from repro import __version__
from repro.image import Image
from repro.layers import source_date_epoch
from repro.mutate import rfc3339
from sbom import cyclonedx, spdx
from sbom.catalogers import catalog, os_release, wanted
from sbom.files import scan

log = logging.getLogger(__name__)
FORMATS = ("spdx-json", "cyclonedx-json")
MEDIA_TYPES = {"spdx-json": "application/spdx+json", "cyclonedx-json": "application/vnd.cyclonedx+json"}


def packages_of(image: Image):
    from sbom.catalogers import rpm

    result = scan(image, capture=wanted, with_md5=True)
    if rpm.uses_berkeley_db(result):
        log.warning("%s: its RPM database is in the old Berkeley DB format, which repro does not read: "
                    "RPM packages are not listed", image.name)
    return catalog(result, os_release(result))


def created_time(image: Image) -> str:
    import os

    if os.environ.get("SOURCE_DATE_EPOCH"):
        return rfc3339(source_date_epoch())
    created = image.config.created
    return created[:19] + "Z" if created and len(created) >= 19 else rfc3339(0)


def generate(image: Image, fmt: str, name: str) -> bytes:
    packages = packages_of(image)
    created = created_time(image)
    if fmt == "spdx-json":
        return spdx.document(name, image.digest, created, packages, f"repro-{__version__}")
    return cyclonedx.document(name, image.digest, created, packages, "repro", __version__)
