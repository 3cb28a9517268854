"""The SBOM of a multi-platform index: one document that describes every platform's image.

Each platform's image is catalogued as a single image is, then the documents are joined: the index is
the subject, it contains one container per platform, and each container holds its own packages. Element
ids get the platform as a suffix (SPDX) or prefix (CycloneDX), since the same package (a pypi wheel, a
config file's package) can be in several platforms' images.
"""

from __future__ import annotations

import json
import uuid

from repro.blobs import IndexImage
from repro.clock import document_time
from repro.image import canonical_json
from sbom import cyclonedx
from sbom.generate import generate_many


def _slug(platform) -> str:
    return str(platform).replace("/", "-")


def generate_index(index: IndexImage, formats: tuple[str, ...], name: str) -> dict[str, bytes]:
    """Every format for `index`, one catalogue pass per platform."""
    parts = []
    for child in index.children:
        documents = {fmt: json.loads(data) for fmt, data in generate_many(child, formats, name).items()}
        parts.append((child.config.platform, child.digest, documents))
    created = max(document_time(child) for child in index.children)
    out = {}
    for fmt in formats:
        join = _spdx if fmt == "spdx-json" else _cyclonedx
        out[fmt] = canonical_json(join(name, index.digest, created, [(p, d, docs[fmt]) for p, d, docs in parts]))
        out[fmt] += b"\n"
    return out


def _spdx(name: str, digest: str, created: str, parts: list) -> dict:
    index_id = "SPDXRef-Index"
    packages = [{
        "SPDXID": index_id, "name": name, "versionInfo": digest, "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": digest.split(":", 1)[1]}],
        "comment": "a multi-platform image index; it contains one image per platform",
    }]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": index_id}]
    extracted: dict[str, dict] = {}
    tool = parts[0][2]["creationInfo"]["creators"]
    for platform, _digest, doc in parts:
        suffix = "-" + _slug(platform)

        def renamed(element: str, suffix: str = suffix) -> str:
            return element if element == "SPDXRef-DOCUMENT" else element + suffix

        for package in doc["packages"]:
            package = {**package, "SPDXID": renamed(package["SPDXID"])}
            if package["SPDXID"] == "SPDXRef-Image" + suffix:
                package["comment"] = f"the image for {platform}"
            packages.append(package)
        for relation in doc["relationships"]:
            if relation["spdxElementId"] == "SPDXRef-DOCUMENT":  # DESCRIBES the platform's image
                relationships.append({"spdxElementId": index_id, "relationshipType": "CONTAINS",
                                      "relatedSpdxElement": renamed(relation["relatedSpdxElement"])})
            else:
                relationships.append({**relation, "spdxElementId": renamed(relation["spdxElementId"]),
                                      "relatedSpdxElement": renamed(relation["relatedSpdxElement"])})
        for info in doc.get("hasExtractedLicensingInfos", []):
            extracted.setdefault(info["licenseId"], info)
    out = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{name}@{digest}",
        "documentNamespace": f"https://repro.invalid/spdx/{digest.replace(':', '-')}",
        "creationInfo": {"created": created, "creators": tool},
        "packages": sorted(packages, key=lambda p: p["SPDXID"]),
        "relationships": sorted(relationships, key=lambda r: (r["spdxElementId"], r["relatedSpdxElement"])),
    }
    if extracted:
        out["hasExtractedLicensingInfos"] = [extracted[k] for k in sorted(extracted)]
    return out


def _cyclonedx(name: str, digest: str, created: str, parts: list) -> dict:
    index_ref = f"index:{digest}"
    images = []
    dependencies = [{"ref": index_ref, "dependsOn": sorted(f"image:{d}" for _, d, _ in parts)}]
    for platform, _image_digest, doc in parts:
        prefix = _slug(platform) + ":"
        image = dict(doc["metadata"]["component"])
        image["properties"] = [{"name": "repro:platform", "value": str(platform)}]
        image["components"] = [{**c, "bom-ref": prefix + c["bom-ref"]} for c in doc["components"]]
        images.append(image)
        dependencies.append({"ref": image["bom-ref"],
                             "dependsOn": sorted(prefix + c["bom-ref"] for c in doc["components"])})
    first = parts[0][2]
    return {
        "$schema": first["$schema"],
        "bomFormat": "CycloneDX",
        "specVersion": first["specVersion"],
        "serialNumber": f"urn:uuid:{uuid.uuid5(cyclonedx.NAMESPACE, digest)}",
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": first["metadata"]["tools"],
            "component": {"type": "container", "bom-ref": index_ref, "name": name, "version": digest,
                          "hashes": [{"alg": "SHA-256", "content": digest.split(":", 1)[1]}],
                          "description": "a multi-platform image index; its components are the platforms' images"},
        },
        "components": sorted(images, key=lambda c: c["bom-ref"]),
        "dependencies": sorted(dependencies, key=lambda d: d["ref"]),
    }
