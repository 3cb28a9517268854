"""SPEC.lock: what a build resolved, so that `--locked` can refuse a build that resolves differently.

It records the base image's digest, every Debian package (name, version, architecture, sha256 of the
.deb) and the layers' compressor with its version. Canonical JSON, so a lock file is itself reproducible.

The compressor is part of the reproducibility promise: the same tar under another compressor is another
blob, so a build keeps the compressor its lock names (a lock from before the parallel gzip keeps the
single stream), and only a build without a lock takes the newest (DEFAULT_COMPRESSOR).
"""

from __future__ import annotations

import json
from pathlib import Path

from repro import parallel_gzip
from repro.atomic import atomic_file
from repro.errors import ReproError
from repro.layers import GZIP_COMPRESSORS, compressor_versions

LOCK_VERSION = 1
DEFAULT_COMPRESSOR = parallel_gzip.ID


def lock_path(spec_path: Path) -> Path:
    """spec.yaml -> spec.lock, app.def -> app.lock; a Containerfile keeps its whole name (Dockerfile.prod ->
    Dockerfile.prod.lock), so that Dockerfile and Dockerfile.prod do not share one."""
    stem, dot, suffix = spec_path.name.rpartition(".")
    if dot and suffix in ("yaml", "yml", "def"):
        return spec_path.with_name(stem + ".lock")
    return spec_path.with_name(spec_path.name + ".lock")


def new_lock(base: dict, packages: list[dict], compressor: str, stages: dict | None = None,
             sources: dict | None = None) -> dict:
    """The lock; `stages` (each earlier stage's base) and `sources` (images copied from, by digest) only
    when the spec has them, so that single-stage locks stay as they were."""
    lock = {
        "lock": LOCK_VERSION,
        "base": base,
        "packages": packages,
        "compressor": {"layers": compressor, "versions": compressor_versions()},
    }
    if stages:
        lock["stages"] = stages
    if sources:
        lock["sources"] = sources
    return lock


def for_platforms(locks: dict[str, dict]) -> dict:
    """The lock of a multi-platform build: each platform's base and packages, one compressor."""
    first = next(iter(locks.values()))
    return {"lock": LOCK_VERSION, "compressor": first["compressor"],
            "platforms": {name: {k: v for k, v in lock.items() if k not in ("lock", "compressor")}
                          for name, lock in sorted(locks.items())}}


def write(spec_path: Path, lock: dict) -> Path:
    path = lock_path(spec_path)
    with atomic_file(path) as out:
        out.write(json.dumps(lock, indent=2, sort_keys=True).encode() + b"\n")
    return path


def read(spec_path: Path) -> dict | None:
    path = lock_path(spec_path)
    if not path.exists():
        return None
    try:
        lock = json.loads(path.read_text())
    except ValueError:
        raise ReproError(f"{path}: not valid JSON", "delete it and build without --locked to recreate it") from None
    if not isinstance(lock, dict):
        raise ReproError(f"{path}: not a lock file (no JSON object)", "delete it and build to recreate it")
    return lock


def layer_compressor(spec_path: Path, lock: dict | None) -> str:
    """The gzip compressor for a build's layers: the one its lock names, else DEFAULT_COMPRESSOR."""
    if lock is None:
        return DEFAULT_COMPRESSOR
    named = lock.get("compressor")
    named = named.get("layers") if isinstance(named, dict) else None
    if named in GZIP_COMPRESSORS:
        return named
    raise ReproError(f"{lock_path(spec_path)}: the layers' compressor {named!r} is not one this repro has, so it "
                     "cannot give the locked bytes", "build with the repro that wrote the lock, or delete the "
                     "lock file to build with this repro's compressor")


def compare(spec_path: Path, locked: dict, resolved: dict) -> None:
    """Raise naming the first difference between the lock and what this build resolved."""
    path = lock_path(spec_path)
    if "platforms" in locked or "platforms" in resolved:
        old, new = locked.get("platforms") or {}, resolved.get("platforms") or {}
        if sorted(old) != sorted(new):
            raise ReproError(f"{path}: the build is for {', '.join(sorted(new)) or 'the host'}, the lock for "
                             f"{', '.join(sorted(old)) or 'the host'}", "build without --locked to update the lock")
        for name in sorted(new):
            compare(spec_path, old[name], new[name])
        return
    if locked.get("base") != resolved.get("base"):
        raise ReproError(f"{path}: the base resolved to {resolved.get('base')}, the lock says {locked.get('base')}",
                         "build without --locked to update the lock")
    for key, what in (("stages", "the stages' bases"), ("sources", "the images copied from")):
        if locked.get(key) != resolved.get(key):
            raise ReproError(f"{path}: {what} resolved to {resolved.get(key)}, the lock says {locked.get(key)}",
                             "build without --locked to update the lock")
    old = {p["name"]: p for p in locked.get("packages", [])}
    new = {p["name"]: p for p in resolved.get("packages", [])}
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a is None or b is None or (a["version"], a["architecture"]) != (b["version"], b["architecture"]) or (
                a.get("sha256") and b.get("sha256") and a["sha256"] != b["sha256"]):
            was = f"{a['version']} {a['architecture']}" if a else "absent"
            now = f"{b['version']} {b['architecture']}" if b else "absent"
            raise ReproError(f"{path}: package {name} resolved to {now}, the lock says {was}",
                             "build without --locked to update the lock")
