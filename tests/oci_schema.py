"""Validation against the OCI image-spec JSON schemas, as Debian's golang-github-opencontainers-image-spec-dev
installs them (scripts/setup-debian.sh installs that package; REPRO_OCI_SCHEMAS names another directory)."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

DEBIAN_PACKAGE = "golang-github-opencontainers-image-spec-dev"
SCHEMA_DIR = Path(
    os.environ.get("REPRO_OCI_SCHEMAS", "/usr/share/gocode/src/github.com/opencontainers/image-spec/schema")
)
SCHEMAS = {
    "manifest": "image-manifest-schema.json",
    "index": "image-index-schema.json",
    "config": "config-schema.json",
    "layout": "image-layout-schema.json",
    "descriptor": "content-descriptor.json",
}


def _load(name: str) -> dict:
    return json.loads((SCHEMA_DIR / name).read_text())


def _retrieve(uri: str) -> Resource:
    # The schemas name each other by URLs; each file is found by its last path component.
    return Resource.from_contents(_load(uri.rsplit("/", 1)[-1]), default_specification=DRAFT4)


@cache
def validator(kind: str) -> Draft4Validator:
    missing = [name for name in SCHEMAS.values() if not (SCHEMA_DIR / name).is_file()]
    if missing:
        raise AssertionError(f"OCI schemas not found ({missing[0]} is not in {SCHEMA_DIR}): install the Debian "
                             f"package {DEBIAN_PACKAGE} (make setup does), or set REPRO_OCI_SCHEMAS to the "
                             "image-spec's schema/ directory")
    return Draft4Validator(_load(SCHEMAS[kind]), registry=Registry(retrieve=_retrieve))


def validate(kind: str, document: bytes | dict) -> None:
    obj = json.loads(document) if isinstance(document, bytes) else document
    errors = sorted(validator(kind).iter_errors(obj), key=str)
    assert not errors, f"{kind} does not validate: {errors[0].message} at {list(errors[0].path)}"


def validate_layout(path: Path) -> int:
    """Validate oci-layout, index.json and every manifest, index and config reachable from it."""
    validate("layout", (path / "oci-layout").read_bytes())
    index = json.loads((path / "index.json").read_bytes())
    validate("index", index)
    count = 2
    pending = list(index["manifests"])
    while pending:
        descriptor = pending.pop()
        blob = (path / "blobs" / descriptor["digest"].replace(":", "/")).read_bytes()
        if descriptor["mediaType"].endswith("index.v1+json"):
            validate("index", blob)
            pending.extend(json.loads(blob)["manifests"])
        else:
            validate("manifest", blob)
            manifest = json.loads(blob)
            validate("config", (path / "blobs" / manifest["config"]["digest"].replace(":", "/")).read_bytes())
            count += 1
        count += 1
    return count
