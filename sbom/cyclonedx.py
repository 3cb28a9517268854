"""CycloneDX 1.6 JSON for an image: the image as metadata.component, its packages as components.

Deterministic: the serial number is a UUID derived from the image digest, the timestamp comes from
SOURCE_DATE_EPOCH (else the image's created time), components are sorted. The tool's version is in
metadata.tools.
"""

from __future__ import annotations

import uuid

from repro.image import canonical_json
from sbom.spdx import DIRECTORY_NOTE

NAMESPACE = uuid.UUID("3b0a8c59-8c1d-4a57-9b3e-5f2d7c1e0a94")


def document(image_name: str, digest: str, created: str, packages, tool_name: str, tool_version: str,
             directory: bool = False) -> bytes:
    """The document; `directory` when the subject is a directory read in place (see sbom.spdx)."""
    components = []
    for p in packages:
        component: dict = {"type": "library", "bom-ref": p.purl, "name": p.name, "version": p.version, "purl": p.purl}
        if p.licenses:
            component["licenses"] = [{"expression": p.licenses}]
        elif p.license_text:
            component["licenses"] = [{"license": {"name": p.license_text[:200]}}]
        properties = [{"name": "repro:layer", "value": str(p.layer)}, {"name": "repro:database", "value": p.database}]
        properties += [{"name": "repro:modified-file", "value": f} for f in sorted(p.modified)]
        properties += [{"name": "repro:missing-file", "value": f} for f in sorted(p.missing)]
        if p.part_of:
            properties.append({"name": "repro:part-of", "value": p.part_of})
        component["properties"] = properties
        components.append(component)
    image_ref = f"image:{digest}"
    doc = {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid5(NAMESPACE, digest)}",
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": {"components": [{"type": "application", "name": tool_name, "version": tool_version}]},
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": image_name,
                "version": digest,
                "hashes": [{"alg": "SHA-256", "content": digest.split(":", 1)[1]}],
                **({"description": DIRECTORY_NOTE} if directory else {}),
            },
        },
        "components": sorted(components, key=lambda c: c["bom-ref"]),
        "dependencies": [{"ref": image_ref, "dependsOn": sorted(c["bom-ref"] for c in components)}],
    }
    return canonical_json(doc) + b"\n"
