"""Provenance: an in-toto Statement v1 whose predicate is SLSA provenance v1, saying how an image was built.

The build definition is the spec (its text and digest), its lock (every resolved Debian package with
the sha256 of its .deb, the base image's digest) and SOURCE_DATE_EPOCH; the builder is this repro. The
statement names no wall-clock time and no host, so the same build gives the same statement bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from repro import __version__
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


def statement(image: Image, name: str, spec_path: Path, lock: dict | None, epoch: int | None) -> bytes:
    """The statement for `image` (named `name`), built from the spec at `spec_path` and its lock."""
    spec_bytes = spec_path.read_bytes()
    parameters = {"spec": {"path": spec_path.name, "sha256": _sha256(spec_bytes),
                           "text": spec_bytes.decode("utf-8", "replace")}}
    if lock is not None:
        lock_bytes = canonical_json(lock)
        parameters["lock"] = {"sha256": _sha256(lock_bytes), "compressor": lock.get("compressor", {})}
    internal = {"SOURCE_DATE_EPOCH": epoch} if epoch is not None else {}
    body = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": image.digest.partition(":")[2]}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": parameters,
                "internalParameters": internal,
                "resolvedDependencies": _dependencies(lock),
            },
            "runDetails": {"builder": {"id": BUILDER_ID, "version": {"repro": __version__}},
                           "metadata": {"invocationId": image.digest}},
        },
    }
    return (json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def subject_digests(document: bytes) -> list[str]:
    """The sha256 digests a statement is about ("sha256:<hex>")."""
    obj = json.loads(document)
    return [f"sha256:{s['digest']['sha256']}" for s in obj.get("subject", []) if "sha256" in s.get("digest", {})]


def for_spec(image: Image, spec_file: str) -> bytes:
    """Provenance from a spec file and the lock beside it: what `repro build` attaches to what it builds
    (named by the spec's tag, so `repro archive --spec` of the same build gives the same statement)."""
    from builders import containerfile, deffile
    from builders.spec import load

    if spec_file.endswith(".def"):
        return for_build(image, deffile.load(spec_file))
    if containerfile.is_containerfile(spec_file):
        return for_build(image, containerfile.load(spec_file))
    return for_build(image, load(spec_file))


def for_build(image: Image, spec) -> bytes:
    """Provenance of a loaded spec (YAML, or a Containerfile or def file translated by its front end):
    its file's text and the lock beside it."""
    from builders import lock as _lock
    from repro.clock import source_date_epoch

    epoch = source_date_epoch(int(spec.raw.get("source_date_epoch", 0)))
    return statement(image, spec.tag, spec.path, _lock.read(spec.path), epoch)
