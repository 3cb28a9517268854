"""Property test: random layer stacks flatten exactly as a small reference model of the OCI rules says.

The model applies layers bottom-up the way the image-spec describes (whiteouts and opaque whiteouts
delete from the layers below, then the layer's entries are added); repro walks top-down. Both must
give the same files, types, contents and link targets.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import repro
from sbom.files import inventory
from tests.imagekit import E, make_image

NAMES = st.sampled_from(["a", "b", "c"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join)


@st.composite
def entries(draw) -> E:
    path = draw(PATHS)
    kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "whiteout", "opaque"]))
    if kind == "file":
        return E(path, draw(st.sampled_from([b"1", b"2", b"3"])))
    if kind == "dir":
        return E(path, kind="dir")
    if kind == "symlink":
        return E(path, kind="symlink", target=draw(PATHS))
    parent, _, base = path.rpartition("/")
    if kind == "whiteout":
        return E(f"{parent}/.wh.{base}".lstrip("/"), b"")
    return E(f"{path}/.wh..wh..opq", b"")


def well_formed(layer: list[E]) -> list[E]:
    """One entry per path, and nothing placed under a non-directory of the same layer."""
    seen: dict[str, E] = {}
    for e in layer:
        seen.setdefault(e.path, e)
    non_dirs = {p for p, e in seen.items() if e.kind != "dir" and ".wh." not in p}
    return [e for p, e in seen.items() if not any(p.startswith(n + "/") for n in non_dirs)]


LAYERS = st.lists(st.lists(entries(), min_size=1, max_size=8).map(well_formed), min_size=1, max_size=4)


def model(layers: list[list[E]]) -> dict[str, tuple]:
    fs: dict[str, tuple] = {}

    def drop(path: str, children_only: bool = False) -> None:
        for p in list(fs):
            if p.startswith(path + "/") or (p == path and not children_only) or (path == "" and children_only):
                del fs[p]

    def replace_non_dir_ancestors(path: str) -> None:
        """An entry's parents are directories: a file or symlink in their place is replaced."""
        parts = path.split("/")
        for i in range(1, len(parts)):
            ancestor = "/".join(parts[:i])
            if ancestor in fs and fs[ancestor][0] != "dir":
                drop(ancestor)

    for layer in layers:
        for e in layer:
            parent, _, base = e.path.rpartition("/")
            if base.startswith(".wh."):
                replace_non_dir_ancestors(e.path)
            if base == ".wh..wh..opq":
                drop(parent, children_only=True)
            elif base.startswith(".wh."):
                drop(f"{parent}/{base[4:]}".lstrip("/"))
        for e in layer:
            if ".wh." in e.path.rpartition("/")[2]:
                continue
            replace_non_dir_ancestors(e.path)
            if e.kind != "dir" or (e.path in fs and fs[e.path][0] != "dir"):
                drop(e.path)
            if e.kind == "file":
                fs[e.path] = ("file", hashlib.sha256(e.content or b"").hexdigest())
            elif e.kind == "symlink":
                fs[e.path] = ("symlink", e.target)
            else:
                fs[e.path] = ("dir", "")
    return fs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LAYERS)
def test_flatten_agrees_with_the_reference_model(layers):
    with tempfile.TemporaryDirectory() as tmp:
        make_image(Path(tmp) / "layout", "p", layers)
        image = repro.open(f"oci:{tmp}/layout:p")
        got = {r.path: (r.type, r.sha256 or r.target) for r in inventory(image)}
    assert got == model(layers)
