"""SPDX 2.3 JSON for an image: the image as the described package, its packages, CONTAINS relations.

Deterministic: the document namespace is derived from the image digest, `created` from
SOURCE_DATE_EPOCH (else the image's created time), everything sorted. The tool's version is recorded
in creationInfo.creators, where it belongs (it is not part of any image digest).
"""

from __future__ import annotations

import hashlib
import re

from repro.image import canonical_json


def _spdx_id(kind: str, key: str) -> str:
    return f"SPDXRef-{kind}-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]", "-", text) or "image"


def document(image_name: str, digest: str, created: str, packages, tool: str) -> bytes:
    image_id = "SPDXRef-Image"
    doc_packages = [
        {
            "SPDXID": image_id,
            "name": image_name,
            "versionInfo": digest,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "primaryPackagePurpose": "CONTAINER",
            "checksums": [{"algorithm": "SHA256", "checksumValue": digest.split(":", 1)[1]}],
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": f"pkg:oci/{_name(image_name).lower()}@{digest.replace(':', '%3A')}",
                }
            ],
        }
    ]
    relationships = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id}
    ]
    ids = {p.purl: _spdx_id("Package", p.purl) for p in packages}
    for p in packages:
        entry = {
            "SPDXID": ids[p.purl],
            "name": p.name,
            "versionInfo": p.version or "NOASSERTION",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": p.licenses or "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "externalRefs": [
                {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": p.purl}
            ],
        }
        notes = [f"layer {p.layer}", f"database {p.database}", f"{len(p.files)} files"]
        if p.license_text:
            notes.append(f"license as declared: {p.license_text}")
        if p.modified:
            notes.append("modified files: " + ", ".join(sorted(p.modified)[:50]))
        if p.missing:
            notes.append("missing files: " + ", ".join(sorted(p.missing)[:50]))
        entry["comment"] = "; ".join(notes)
        doc_packages.append(entry)
        parent = ids.get(p.part_of, image_id)
        relationships.append(
            {"spdxElementId": parent, "relationshipType": "CONTAINS", "relatedSpdxElement": ids[p.purl]}
        )
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{image_name}@{digest}",
        "documentNamespace": f"https://repro.invalid/spdx/{digest.replace(':', '-')}",
        "creationInfo": {"created": created, "creators": [f"Tool: {tool}"]},
        "packages": sorted(doc_packages, key=lambda p: p["SPDXID"]),
        "relationships": sorted(relationships, key=lambda r: (r["spdxElementId"], r["relatedSpdxElement"])),
    }
    return canonical_json(doc) + b"\n"
