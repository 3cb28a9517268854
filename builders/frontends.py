"""A spec file of any kind, loaded by its name: an Apptainer def file (*.def), a Containerfile or
Dockerfile, or a YAML spec. Kept apart from the builder so that a YAML build does not import the
front ends."""

from __future__ import annotations

from builders import containerfile, deffile
from builders import spec as _spec


def load(spec_file: str) -> _spec.Spec:
    """The spec of `spec_file`, translated by its front end with no build arguments, for this machine."""
    if spec_file.endswith(".def"):
        return deffile.load(spec_file)
    if containerfile.is_containerfile(spec_file):
        return containerfile.load(spec_file)
    return _spec.load(spec_file)
