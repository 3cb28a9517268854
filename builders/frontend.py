"""Which front end reads a build's input: a YAML spec, an Apptainer def file or a Containerfile.

`repro build` takes any of them, by name or as a directory holding a Containerfile or Dockerfile; a
front end translates its file into a Spec for the platform built.
"""

from __future__ import annotations

import os
from pathlib import Path

from builders import containerfile, deffile
from builders import spec as _spec
from repro.errors import ReproError
from repro.image import Platform


def load_spec(spec: str | None, file: str | None, build_args: list[str], target: str | None,
              registry: str | None, platform: str | None) -> _spec.Spec:
    """The spec to build: a YAML spec, an Apptainer def file (*.def), or a Containerfile/Dockerfile (by name,
    or `file` with `spec` as the build context; a directory alone means its Containerfile or Dockerfile).

    `build_args` are NAME=VALUE, or NAME for the value in the environment (as docker's); `platform` is the
    first platform built, for which a front end translates its file (TARGETARCH, the labels)."""
    path, context = spec, None
    if file:
        path, context = file, spec or "."
    elif path and Path(path).is_dir():
        found = [Path(path) / n for n in ("Containerfile", "Dockerfile") if (Path(path) / n).is_file()]
        if not found:
            raise ReproError(f"{path}: no Containerfile or Dockerfile in this directory", "name the file with -f")
        path, context = str(found[0]), path
    if not path:
        raise ReproError("repro build: no spec or Containerfile given", "repro build SPEC.yaml, repro build "
                         "Containerfile or repro build -f Dockerfile DIR")
    values = {}
    for item in build_args:
        key, eq, value = item.partition("=")
        if eq:
            values[key] = value
        elif key in os.environ:
            values[key] = os.environ[key]
    first = Platform.parse(platform) if platform else None
    if path.endswith(".def") and not file:  # an Apptainer definition file
        if target:
            raise ReproError("--target is for Containerfiles", "a def file builds its last stage")
        return deffile.load(path, values, registry, first)
    yaml_spec = (not file and path.endswith((".yaml", ".yml"))
                 and not Path(path).name.lower().startswith(("dockerfile.", "containerfile.")))
    if not yaml_spec and (file or containerfile.is_containerfile(path)):
        return containerfile.load(path, context, values, target, registry, first)
    if build_args or target or registry:
        raise ReproError("--build-arg, --target and --registry are for Containerfiles and def files",
                         "leave them out for a spec")
    return _spec.load(path)


def load(spec_file: str) -> _spec.Spec:
    """A spec file of any kind, by its name, with no build arguments, for this machine: what
    `repro archive --spec` names."""
    return load_spec(spec_file, None, [], None, None, None)
