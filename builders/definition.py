"""What a build's provenance names: the spec file the image was built from (YAML, Containerfile or def
file), the lock beside it and SOURCE_DATE_EPOCH. Knowing specs and locks is the builder's business; the
statement is assembled from these by repro/preserve/provenance.py, which knows no spec.
"""

from __future__ import annotations

from typing import NamedTuple

from builders import lock as _lock
from builders import spec as _spec


class Definition(NamedTuple):
    """The arguments of provenance.statement after the image, in its order."""

    name: str  # the spec's tag: the statement's subject name
    spec_name: str  # the spec file's name
    spec_bytes: bytes  # its text as on disk
    lock: dict | None  # the lock beside it, if any
    epoch: int  # the build's SOURCE_DATE_EPOCH


def of_spec(spec: _spec.Spec) -> Definition:
    """The definition of a loaded spec (YAML, or a Containerfile or def file translated by its front end)."""
    return Definition(spec.tag, spec.path.name, spec.path.read_bytes(), _lock.read(spec.path), spec.epoch)
