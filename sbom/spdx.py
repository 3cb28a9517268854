"""SPDX 2.3 JSON for an image: the image as the described package, its packages, CONTAINS relations.

Deterministic: the document namespace is derived from the image digest, `created` from
SOURCE_DATE_EPOCH (else the image's created time), everything sorted. The tool's version is recorded
in creationInfo.creators, where it belongs (it is not part of any image digest).

Every LicenseRef- a package's expression uses is declared in hasExtractedLicensingInfos with its text
(or the name the package gave it, when it came without one). One identifier names one text in a
document: where two packages give the same LicenseRef- different texts (each its own "permissive"),
each text gets the identifier followed by a hash of the text.
"""

from __future__ import annotations

import hashlib
import re

from repro.image import canonical_json
from sbom.licenses import refs_in

DIRECTORY_NOTE = ("a directory read in place (rootfs:); its checksum is the sha256 of its files as one "
                  "uncompressed layer, the diff_id of the image that importing it gives")


def _spdx_id(kind: str, key: str) -> str:
    return f"SPDXRef-{kind}-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]", "-", text) or "image"


def _extracted_licenses(packages) -> tuple[dict[str, str], list[dict]]:
    """(each package's expression with document-wide LicenseRef- ids, by purl; their declarations)."""
    texts: dict[str, set[str]] = {}
    wanted: dict[str, dict[str, str]] = {}
    for p in packages:
        own = {}
        for ref in refs_in(p.licenses):
            text = (p.license_refs.get(ref) or p.license_text or ref.removeprefix("LicenseRef-")).strip()
            own[ref] = text
            texts.setdefault(ref, set()).add(text)
        wanted[p.purl] = own
    declared: dict[str, dict] = {}
    expressions = {}
    for p in packages:
        expression = p.licenses
        for ref, text in wanted[p.purl].items():
            unique = ref if len(texts[ref]) == 1 else f"{ref}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
            declared.setdefault(unique, {"licenseId": unique, "name": ref.removeprefix("LicenseRef-"),
                                         "extractedText": text})
            if unique != ref:
                expression = re.sub(rf"(?<![\w.-]){re.escape(ref)}(?![\w.-])", unique, expression)
        expressions[p.purl] = expression
    return expressions, [declared[k] for k in sorted(declared)]


def document(image_name: str, digest: str, created: str, packages, tool: str, directory: bool = False) -> bytes:
    """The document; `directory` when the subject is a directory read in place, named by the diff_id
    of the layer it would be imported as (it has no image digest, so no pkg:oci purl either)."""
    image_id = "SPDXRef-Image"
    subject: dict = {
        "SPDXID": image_id,
        "name": image_name,
        "versionInfo": digest,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": digest.split(":", 1)[1]}],
    }
    if directory:
        subject["comment"] = DIRECTORY_NOTE
    else:
        subject["externalRefs"] = [
            {
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": f"pkg:oci/{_name(image_name).lower()}@{digest.replace(':', '%3A')}",
            }
        ]
    doc_packages = [subject]
    relationships = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id}
    ]
    ids = {p.purl: _spdx_id("Package", p.purl) for p in packages}
    expressions, extracted = _extracted_licenses(packages)
    for p in packages:
        entry = {
            "SPDXID": ids[p.purl],
            "name": p.name,
            "versionInfo": p.version or "NOASSERTION",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": expressions[p.purl] or "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "externalRefs": [
                {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": p.purl}
            ],
        }
        notes = [f"layer {p.layer}", f"database {p.database}", f"{len(p.files)} files"]
        if p.license_text:
            shown = p.license_text if len(p.license_text) <= 500 else p.license_text[:500] + "..."
            notes.append(f"license as declared: {shown}")
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
    if extracted:
        doc["hasExtractedLicensingInfos"] = extracted
    return canonical_json(doc) + b"\n"
