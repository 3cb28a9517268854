"""Attaching an SBOM to an image as an OCI 1.1 referrer: an artifact manifest whose `subject` is the
image's manifest, stored in the same `oci:` layout and listed in its index.json (untagged)."""

from __future__ import annotations

from repro.errors import ReproError
from repro.image import OCI_MANIFEST, Descriptor, Image, Manifest, canonical_json
from repro.refs import parse
from repro.store import Layout
from repro.transfer import manifest_descriptor
from sbom.generate import MEDIA_TYPES

EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


def attach(ref_text: str, image: Image, data: bytes, fmt: str) -> str:
    ref = parse(ref_text)
    if ref.transport != "oci":
        raise ReproError(f"{ref_text}: --attach stores referrers in oci: layouts", "registries come with docker://")
    layout = Layout.open_existing(ref.split_path()[0])
    media_type = MEDIA_TYPES[fmt]
    with layout.transaction():
        blob = layout.put_bytes(data, media_type)
        config = layout.put_bytes(b"{}", EMPTY_CONFIG)
        manifest = Manifest(OCI_MANIFEST, config, (blob,), {"org.opencontainers.image.created": "1970-01-01T00:00:00Z"},
                            manifest_descriptor(image), media_type)
        raw = canonical_json(manifest.to_json())
        stored = layout.put_bytes(raw, OCI_MANIFEST)
    layout.add_manifest(Descriptor(OCI_MANIFEST, stored.digest, stored.size, {}, None, (), media_type), "")
    return stored.digest
