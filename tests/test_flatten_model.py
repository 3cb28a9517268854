"""Property test: random layer stacks flatten exactly as a small reference model of the OCI rules says.

The model applies layers bottom-up the way the image-spec describes (whiteouts and opaque whiteouts
delete from the layers below, then the layer's entries are added in order, as tar extraction adds
them: a later entry wins, a directory over a directory keeps its contents, an entry under a file or
symlink replaces it by a directory, a hardlink is the file its target names at that moment); repro
walks top-down, once, starting again where a layer turns out to replace what it already gave. Both
must give the same files, types, contents and link targets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import repro
from repro.flatten import merged
from sbom.files import inventory
from tests.imagekit import E, make_image

NAMES = st.sampled_from(["a", "b", "c"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join)


KINDS = ["file", "file", "dir", "symlink", "hardlink", "whiteout", "opaque"]


@st.composite
def entries(draw, kinds=KINDS) -> E:
    path = draw(PATHS)
    kind = draw(st.sampled_from(kinds))
    if kind == "file":
        return E(path, draw(st.sampled_from([b"1", b"2", b"3"])))
    if kind == "dir":
        return E(path, kind="dir")
    if kind in ("symlink", "hardlink"):
        return E(path, kind=kind, target=draw(PATHS))
    parent, _, base = path.rpartition("/")
    if kind == "whiteout":
        return E(f"{parent}/.wh.{base}".lstrip("/"), b"")
    return E(f"{path}/.wh..wh..opq", b"")


LAYERS = st.lists(st.lists(entries(), min_size=1, max_size=8), min_size=1, max_size=4)


def replacing_nothing(layer: list[E]) -> list[E]:
    """One entry per path, and nothing placed under a non-directory of the layer: what nearly every
    real layer is, and what the merged view reads in one pass."""
    seen: dict[str, E] = {}
    for e in layer:
        seen.setdefault(e.path, e)
    non_dirs = {p for p, e in seen.items() if e.kind != "dir" and ".wh." not in p}
    return [e for p, e in seen.items() if not any(p.startswith(n + "/") for n in non_dirs)]


@st.composite
def one_pass_layer(draw) -> list[E]:
    """A layer replacing nothing, whose hardlinks name its own earlier entries half of the time."""
    layer: list[E] = []
    for e in draw(st.lists(entries([*KINDS, "hardlink", "hardlink"]), min_size=1, max_size=10)):
        if e.kind == "hardlink" and layer and draw(st.booleans()):
            e = dataclasses.replace(e, target=draw(st.sampled_from([x.path for x in layer])))
        layer.append(e)
    return replacing_nothing(layer)


ONE_PASS_LAYERS = st.lists(one_pass_layer(), min_size=1, max_size=4)


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
            source = fs.get(e.target) if e.kind == "hardlink" else None  # what the target is now
            replace_non_dir_ancestors(e.path)
            if e.kind != "dir" or (e.path in fs and fs[e.path][0] != "dir"):
                drop(e.path)
            if e.kind == "file":
                fs[e.path] = ("file", hashlib.sha256(e.content or b"").hexdigest())
            elif e.kind == "symlink":
                fs[e.path] = ("symlink", e.target)
            elif e.kind == "hardlink":
                if source is not None and source[0] != "dir":  # else it names nothing: left out
                    fs[e.path] = source
            else:
                fs[e.path] = ("dir", "")
    return fs


def flattened(image) -> dict[str, tuple]:
    """The inventory's view: a hardlink is the file it names (another name in the tree)."""
    records = {r.path: r for r in inventory(image)}
    got = {}
    for path, r in records.items():
        if r.type == "hardlink":
            r = records[r.target]
            assert r.type != "hardlink"
        got[path] = (r.type, r.sha256 or r.target)
    return got


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LAYERS)
def test_flatten_agrees_with_the_reference_model(layers):
    with tempfile.TemporaryDirectory() as tmp:
        make_image(Path(tmp) / "layout", "p", layers)
        image = repro.open(f"oci:{tmp}/layout:p")
        got = flattened(image)  # one pass, started again where a layer replaces what it gave
        # Outside flattening() every layer's headers are read first: the same names, each once.
        names = [e.path for e in merged(image)]
    assert got == model(layers)
    assert sorted(names) == sorted(got) and len(set(names)) == len(names)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ONE_PASS_LAYERS)
def test_layers_replacing_nothing_agree_with_the_reference_model(layers):
    with tempfile.TemporaryDirectory() as tmp:
        make_image(Path(tmp) / "layout", "p", layers)
        got = flattened(repro.open(f"oci:{tmp}/layout:p"))
    assert got == model(layers)
