"""`repro sbom`: catalog an image's packages and write SPDX or CycloneDX, deterministically."""

from __future__ import annotations

import json
import logging

from repro import __version__
from repro.clock import document_time
from repro.image import Image
from sbom import cyclonedx, spdx
from sbom.catalogers import catalog, os_release, rpm, wanted
from sbom.files import scan

log = logging.getLogger(__name__)
FORMATS = ("spdx-json", "cyclonedx-json")
MEDIA_TYPES = {"spdx-json": "application/spdx+json", "cyclonedx-json": "application/vnd.cyclonedx+json"}


def packages_of(image: Image):
    result = scan(image, capture=wanted, with_md5=True)
    try:
        if rpm.uses_berkeley_db(result):
            log.warning("%s: its RPM database is in the old Berkeley DB format, which repro does not read: "
                        "RPM packages are not listed", image.name)
        return catalog(result, os_release(result))
    finally:
        result.files.close()


def generate(image: Image, fmt: str, name: str) -> bytes:
    return generate_many(image, (fmt,), name)[fmt]


def subject(image: Image) -> tuple[str, str, bool]:
    """(digest, time, whether it is a directory) that an SBOM names its subject by.

    A directory read in place (rootfs:) has no image digest until a layer of it is compressed, which
    takes several times longer than the SBOM itself: it is named by the sha256 of its files as one
    uncompressed layer, the diff_id that importing it (`repro convert rootfs:DIR ...`) gives."""
    tree_digest = getattr(image, "tree_digest", None)
    if isinstance(tree_digest, str):
        return tree_digest, image.created, True  # type: ignore[attr-defined]
    return image.digest, document_time(image), False


def generate_many(image: Image, formats: tuple[str, ...], name: str) -> dict[str, bytes]:
    """Several formats from one pass over the image."""
    packages = packages_of(image)
    digest, created, directory = subject(image)
    out = {}
    for fmt in formats:
        if fmt == "spdx-json":
            out[fmt] = spdx.document(name, digest, created, packages, f"repro-{__version__}", directory)
        else:
            out[fmt] = cyclonedx.document(name, digest, created, packages, "repro", __version__, directory)
    return out


def subject_digest(document: bytes) -> str:
    """The image digest an SBOM we wrote is about ("sha256:<hex>"), for checking it against the image."""
    obj = json.loads(document)
    if "spdxVersion" in obj:
        described = {r["relatedSpdxElement"] for r in obj.get("relationships", [])
                     if r.get("spdxElementId") == "SPDXRef-DOCUMENT" and r.get("relationshipType") == "DESCRIBES"}
        for package in obj.get("packages", []):
            if package.get("SPDXID") in described:
                for checksum in package.get("checksums", []):
                    if checksum.get("algorithm") == "SHA256":
                        return "sha256:" + checksum["checksumValue"]
        return ""
    component = (obj.get("metadata") or {}).get("component") or {}
    return next(("sha256:" + h["content"] for h in component.get("hashes", []) if h.get("alg") == "SHA-256"), "")
