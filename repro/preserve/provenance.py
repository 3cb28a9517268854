"""Provenance: an in-toto Statement v1 whose predicate is SLSA provenance v1, saying how an image was built.

The build definition is the spec (its text and digest), its lock (every resolved Debian package with
the sha256 of its .deb, the base image's digest) and SOURCE_DATE_EPOCH; the builder is this repro. The
statement names no wall-clock time and no host, so the same build gives the same statement bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from repro import __version__, referrers
from repro.clock import document_time
from repro.image import Image, canonical_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/repro-containers/repro/build-spec/v1"
BUILDER_ID = "https://github.com/repro-containers/repro"
MEDIA_TYPE = "application/vnd.in-toto+json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dependencies(lock: dict | None) -> list[dict]:
    out = []
    if not lock:
        return out
    base = lock.get("base") or {}
    if str(base.get("digest", "")).startswith("sha256:"):
        out.append({"uri": str(base.get("image", "")), "digest": {"sha256": base["digest"].partition(":")[2]}})
    for package in lock.get("packages") or []:
        uri = f"pkg:deb/debian/{package['name']}@{package['version']}?arch={package['architecture']}"
        entry: dict = {"uri": uri, "name": package["name"]}
        if package.get("sha256"):
            entry["digest"] = {"sha256": package["sha256"]}
        out.append(entry)
    return out


def statement(image: Image, name: str, spec_name: str, spec_bytes: bytes, lock: dict | None, epoch: int) -> bytes:
    """The statement for `image` (named `name`), built from the spec file `spec_name` (its bytes
    `spec_bytes`), its lock and SOURCE_DATE_EPOCH (builders/definition.py reads them)."""
    parameters = {"spec": {"path": spec_name, "sha256": _sha256(spec_bytes),
                           "text": spec_bytes.decode("utf-8", "replace")}}
    if lock is not None:
        lock_bytes = canonical_json(lock)
        parameters["lock"] = {"sha256": _sha256(lock_bytes), "compressor": lock.get("compressor", {})}
    body = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": image.digest.partition(":")[2]}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": parameters,
                "internalParameters": {"SOURCE_DATE_EPOCH": epoch},
                "resolvedDependencies": _dependencies(lock),
            },
            "runDetails": {"builder": {"id": BUILDER_ID, "version": {"repro": __version__}},
                           "metadata": {"invocationId": image.digest}},
        },
    }
    return (json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def attach(store: Path, image: Image, document: bytes) -> None:
    """A build's statement as a referrer of its image in the store, so that it travels with
    `convert --referrers` and into `repro archive`. Same build, same statement bytes."""
    referrers.attach(f"oci:{store}", image, document, MEDIA_TYPE, MEDIA_TYPE, document_time(image))


def subject_digests(document: bytes) -> list[str]:
    """The sha256 digests a statement is about ("sha256:<hex>")."""
    obj = json.loads(document)
    return [f"sha256:{s['digest']['sha256']}" for s in obj.get("subject", []) if "sha256" in s.get("digest", {})]
