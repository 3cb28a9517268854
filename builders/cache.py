"""The build cache: a step's layer is reused when its key matches.

The key is the parent's chain of diff_ids, the step's definition and the content hashes of its inputs
(never mtimes). Entries live beside the store's OCI layout, in cache/<key>.json, naming blobs that the
layout holds.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from repro.atomic import atomic_file
from repro.blobs import BlobImage
from repro.errors import ReproError
from repro.image import Descriptor, Manifest, canonical_json, parse_json
from repro.refs import open_image, write_image
from repro.store import Layout, copy_into

KEY_PATTERN = re.compile(r"[0-9a-f]{64}")
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")


def check_key(cache_key: str, where: str) -> str:
    """A cache key names a file in the cache: only the exact sha256 hex form may become one."""
    if not isinstance(cache_key, str) or not KEY_PATTERN.fullmatch(cache_key):
        raise ReproError(f"{where}: cache key {str(cache_key)[:80]!r} is not a sha256 hex key",
                         "the build cache is damaged or hostile; do not use it")
    return cache_key


def check_left_out(record: object, where: str) -> Descriptor | None:
    """A cache entry's account of what its step left out of the layer (builders/hygiene.py); returns
    the blob that holds those files, if any. Its paths only ever name files inside the working tree."""
    if record is None:
        return None
    problem = ""
    if not isinstance(record, dict):
        problem = "is not an object"
    elif not isinstance(record.get("paths", {}), dict) or not all(
            isinstance(k, str) and isinstance(v, bool) for k, v in record.get("paths", {}).items()):
        problem = "paths are not a map of path to true/false"
    # "removed" is optional: a copy or file step's record (the account after a run left files out) has
    # none, and reading it as record["removed"] made every such entry a miss (a KeyError, caught as damage)
    elif not isinstance(record.get("removed", []), list) or not all(
            isinstance(p, str) for p in record.get("removed", [])):
        problem = "removed is not a list of paths"
    elif record.get("state", "") and not KEY_PATTERN.fullmatch(str(record["state"])):
        problem = "state is not a sha256 hex digest"
    elif "descriptor" in record and not DIGEST_PATTERN.fullmatch(str(record.get("diff_id"))):
        problem = "diff_id is not a sha256 digest"
    if problem:
        raise ReproError(f"{where}: left_out {problem}", "the build cache is damaged or hostile; do not use it")
    return Descriptor.from_json(record["descriptor"], where) if "descriptor" in record else None


def key(parent_diff_ids: list[str], definition: dict, inputs: dict[str, str]) -> str:
    material = canonical_json({"parent": parent_diff_ids, "step": definition, "inputs": inputs})
    return hashlib.sha256(material).hexdigest()


@dataclass
class CacheEntry:
    """One step's layer in the cache: the layer, its history, and what the step resolved beside it.
    `packages` (a packages step's, a Debian base's) and `left_out` (builders/hygiene.py's account of what
    the step kept out of its layer) are written only when the step has them, so entries keep their bytes."""

    descriptor: Descriptor
    diff_id: str
    history: dict
    packages: list[dict] | None = None
    left_out: dict | None = None

    @classmethod
    def from_json(cls, entry: object, where: str) -> CacheEntry:
        """An entry read from the cache or a shared cache, checked: it may be damaged or hostile."""
        if not isinstance(entry, dict) or not isinstance(entry.get("history"), dict):
            raise ReproError(f"{where}: not a cache entry", "the build cache is damaged or hostile; do not use it")
        descriptor = Descriptor.from_json(entry.get("descriptor"), where)
        if not isinstance(entry.get("diff_id"), str) or not DIGEST_PATTERN.fullmatch(entry["diff_id"]):
            raise ReproError(f"{where}: diff_id is not a sha256 digest", "the build cache is damaged or hostile")
        check_left_out(entry.get("left_out"), where)
        return cls(descriptor, entry["diff_id"], entry["history"], entry.get("packages"), entry.get("left_out"))

    def to_json(self) -> dict:
        out = {"descriptor": self.descriptor.to_json(), "diff_id": self.diff_id, "history": self.history}
        if self.packages is not None:
            out["packages"] = self.packages
        if self.left_out is not None:
            out["left_out"] = self.left_out
        return out


class Cache:
    def __init__(self, layout: Layout, enabled: bool = True) -> None:
        self.layout = layout
        self.enabled = enabled
        self.directory = layout.path / "cache"

    def get(self, cache_key: str) -> CacheEntry | None:
        """The entry under `cache_key`, or None when there is none, it is damaged or its blobs are gone."""
        if not self.enabled:
            return None
        path = self.directory / f"{check_key(cache_key, str(self.directory))}.json"
        if not path.is_file():
            return None
        try:
            entry = CacheEntry.from_json(json.loads(path.read_bytes()), str(path))
            left_out = check_left_out(entry.left_out, str(path))
        except (ValueError, KeyError, TypeError, ReproError):
            return None
        if not self.layout.has_blob(entry.descriptor.digest):
            return None
        if left_out is not None and not self.layout.has_blob(left_out.digest):
            return None  # what the step left out of its layer is gone: run it again
        return entry

    def put(self, cache_key: str, entry: CacheEntry) -> None:
        self.directory.mkdir(exist_ok=True)
        with atomic_file(self.directory / f"{check_key(cache_key, str(self.directory))}.json") as out:
            out.write(canonical_json(entry.to_json()))


def hash_inputs(paths: list[Path]) -> dict[str, str]:
    """Content hashes (and modes) of a copy step's sources, files in sorted order."""
    out: dict[str, str] = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*"))
        for path in files:
            rel = str(path.relative_to(root.parent))
            if path.is_symlink():
                out[rel] = "symlink:" + str(path.readlink())
            elif path.is_file():
                out[rel] = f"{path.stat().st_mode & 0o7777:o}:" + hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                out[rel] = f"dir:{path.stat().st_mode & 0o7777:o}"
    return out


CACHE_ANNOTATION = "dev.repro.build-cache"


def export_to(cache: Cache, images: list, keys: list[str], ref: str) -> str:
    """Share this build's cache through any writable reference (a registry, for CI machines): the
    built image, with the cache entries for its layers in a manifest annotation. A multi-platform build
    shares one image holding every platform's layers (its config lists them all), so one reference
    carries the cache of every platform."""
    entries = {}
    for cache_key in keys:
        path = cache.directory / f"{cache_key}.json"
        if path.is_file():
            entries[cache_key] = json.loads(path.read_bytes())
    image = images[0]
    manifest = image.manifest
    annotations = {**manifest.annotations, CACHE_ANNOTATION: canonical_json(entries).decode()}
    config, layers = manifest.config, manifest.layers
    kept = [(Descriptor.from_json(e["left_out"]["descriptor"], ref), e["left_out"]["diff_id"])
            for e in entries.values() if "descriptor" in (e.get("left_out") or {})]
    if len(images) > 1 or kept:  # a carrier image: every platform's layers and what steps left out
        seen: dict[str, tuple] = {}
        for one in images:
            for descriptor, layer in zip(one.manifest.layers, one.layers, strict=True):
                seen.setdefault(descriptor.digest, (descriptor, layer.diff_id))
        for descriptor, diff_id in kept:
            seen.setdefault(descriptor.digest, (descriptor, diff_id))
        layers = tuple(d for d, _ in seen.values())
        document = {"architecture": image.config.platform.architecture, "os": image.config.platform.os,
                    "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in seen.values()]}}
        config = cache.layout.put_bytes(canonical_json(document), manifest.config.media_type)
    raw = canonical_json(Manifest(manifest.media_type, config, layers, annotations).to_json())
    cache.layout.put_bytes(raw, manifest.media_type)
    return write_image(BlobImage(image.source, raw, manifest.media_type), ref).digest


def import_from(cache: Cache, ref: str) -> int:
    """Fetch the layers and cache entries that `export_to` published; returns how many entries."""

    image = open_image(ref)
    text = image.manifest.annotations.get(CACHE_ANNOTATION)
    if not text:
        raise ReproError(f"{ref}: has no build cache", "publish one with repro build --cache-to")
    entries = parse_json(text.encode(), f"{ref}: {CACHE_ANNOTATION} annotation")
    if not isinstance(entries, dict):
        raise ReproError(f"{ref}: {CACHE_ANNOTATION} annotation is not a JSON object", "publish it again")
    checked = {}
    for cache_key, entry in entries.items():
        check_key(cache_key, ref)
        where = f"{ref}: cache entry {str(cache_key)[:80]!r}"
        checked[cache_key] = (CacheEntry.from_json(entry, where).descriptor, entry)
    with cache.layout.transaction():
        copy_into(cache.layout, image)
    count = 0
    for cache_key, (descriptor, entry) in checked.items():
        if cache.layout.has_blob(descriptor.digest) and not (cache.directory / f"{cache_key}.json").exists():
            cache.directory.mkdir(exist_ok=True)
            with atomic_file(cache.directory / f"{cache_key}.json") as out:
                out.write(canonical_json(entry))
            count += 1
    return count
