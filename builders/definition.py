"""What a build's provenance names: the spec file the image was built from, the lock beside it and
SOURCE_DATE_EPOCH. Reading specs, Containerfiles, def files and locks is the builder's business; the
statement itself is assembled from these by repro/preserve/provenance.py.
"""

from __future__ import annotations

from typing import NamedTuple

from builders import containerfile, deffile
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


def of_file(spec_file: str) -> Definition:
    """The definition of a spec file, a Containerfile or a def file, by its name."""
    if spec_file.endswith(".def"):
        return of_spec(deffile.load(spec_file))
    if containerfile.is_containerfile(spec_file):
        return of_spec(containerfile.load(spec_file))
    return of_spec(_spec.load(spec_file))
