"""builders.listing names what the extractor would make of the same layers: each stack is applied
both ways, by the real Extractor to a directory and by the listing to its table, and the two must
agree path for path on kind and link target. Stacks are drawn at random over a small set of names,
so links, whiteouts through links, opaque directories and replaced directories keep meeting."""

from __future__ import annotations

import io
import json
import os
import random
import stat
import tarfile
from pathlib import Path

from builders.listing import Listing
from repro.confined import resolve_listed
from repro.errors import ReproError
from repro.extract import Extractor
from repro.flatten import apply_layer
from tests.conftest import busybox_layers, repro
from tests.imagekit import make_image

NAMES = ["a", "b", "c"]


def layer_bytes(entries: list[tarfile.TarInfo]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return out.getvalue()


def entry(path: str, kind: str, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                 "char": tarfile.CHRTYPE}[kind]
    info.mode = 0o755 if kind == "dir" else 0o644
    info.mtime = 1700000000
    info.linkname = target
    info.size = 1 if kind == "file" else 0
    return info


def random_layer(rng: random.Random) -> list[tarfile.TarInfo]:
    entries = []
    for _ in range(rng.randrange(1, 7)):
        path = "/".join(rng.choice(NAMES) for _ in range(rng.randrange(1, 4)))
        parent, _, name = path.rpartition("/")
        roll = rng.random()
        if roll < 0.3:
            entries.append(entry(path, "dir"))
        elif roll < 0.5:
            entries.append(entry(path, "file"))
        elif roll < 0.55:
            entries.append(entry(path, "char"))  # a working tree takes none: what was there stays
        elif roll < 0.8:
            target = "/".join(rng.choice([*NAMES, "..", ""]) for _ in range(rng.randrange(1, 3))) or "."
            entries.append(entry(path, "symlink", ("/" if rng.random() < 0.4 else "") + target))
        elif roll < 0.93:
            entries.append(entry(f"{parent}/.wh.{name}".lstrip("/"), "file"))
        else:
            entries.append(entry(f"{path}/.wh..wh..opq", "file"))
    # one name once per layer (a later duplicate is a tar's own business); whiteouts anywhere in it, and an
    # opaque directory keeps what its layer wrote before the marker
    unique = list({e.name: e for e in entries}.values())
    rng.shuffle(unique)
    return unique


def on_disk(root: Path) -> dict[str, tuple[str, str]]:
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                found[rel] = ("symlink", os.readlink(path))
            else:
                found[rel] = ("dir" if stat.S_ISDIR(mode) else "file", "")
    return found


def extract_stack(layers: list[bytes], root: Path) -> bool:
    """The stack applied by the real extractor; False where it refuses it (a build would stop there)."""
    for number, data in enumerate(layers):
        extractor = Extractor(root, f"layer {number}")
        try:
            apply_layer(extractor, io.BytesIO(data), f"layer {number}")
            extractor.finish()
        except (ReproError, OSError):
            return False
        finally:
            extractor.close()
    return True


def test_the_listing_names_what_the_extractor_makes(tmp_path):
    compared = 0
    for seed in range(400):
        rng = random.Random(seed)
        layers = [layer_bytes(random_layer(rng)) for _ in range(rng.randrange(2, 5))]
        root = tmp_path / str(seed)
        root.mkdir()
        if not extract_stack(layers, root):
            continue  # the extractor refused the stack: a build stops there, whatever the listing says
        listing = Listing()
        for number, data in enumerate(layers):
            listing.apply(io.BytesIO(data), f"layer {number}")
        assert listing.entries == on_disk(root), f"seed {seed}"
        compared += 1
    assert compared > 380, compared  # a loop a whiteout meets is refused


def test_links_are_resolved_as_on_disk():
    names = {"bin": ("symlink", "usr/bin"), "usr": ("dir", ""), "usr/bin": ("dir", ""),
             "loop": ("symlink", "loop"), "up": ("symlink", "../../usr"), "f": ("file", ""),
             "abs": ("symlink", "/usr/bin")}
    assert resolve_listed("bin/x", names.get) == "usr/bin/x"
    assert resolve_listed("up/bin", names.get) == "usr/bin"  # `..` stops at the root
    assert resolve_listed("abs/new/deeper", names.get) == "usr/bin/new/deeper"
    assert resolve_listed("loop/x", names.get) is None
    assert resolve_listed("f/x", names.get) is None
    assert resolve_listed("f", names.get) is None
    assert resolve_listed("", names.get) == ""


def test_a_file_step_after_cached_steps_lands_through_links_without_a_working_tree(tmp_path, monkeypatch):
    """A changed file step after cached steps looks its destination up in the listing: through a link
    of a cached layer (/opt -> /usr/local/tools) and through one a cached run left out of its layer
    (/tmp/out -> /srv), and makes the same image as a build without the cache, which uses the tree."""
    from builders import build as builder  # noqa: PLC0415 - in-process, to watch the working tree
    from builders.frontend import load_spec  # noqa: PLC0415

    base = tmp_path / "base"
    make_image(base, "1", busybox_layers(), config={"Env": ["PATH=/bin"]})
    run = "busybox mkdir -p /usr/local/tools /srv && busybox ln -s /usr/local/tools /opt && busybox ln -s /srv /tmp/out"

    def spec(content: str) -> Path:
        path = tmp_path / f"{content}.yaml"
        path.write_text(f"spec: 1\nname: l\ntag: l:1\nbase: {{image: 'oci:{base}:1'}}\nsteps:\n"
                        f"  - run: {json.dumps(run)}\n"
                        f"  - file: {{dst: /opt/note, content: {content}}}\n"
                        f"  - file: {{dst: /tmp/out/kept, content: {content}}}\n")
        return path

    store = tmp_path / "store"
    repro("build", str(spec("first")), "--store", str(store))

    def no_tree(self):
        raise AssertionError("a working tree was made for a file step")

    with monkeypatch.context() as patched:
        patched.setattr(builder.Builder, "_materialize", no_tree)
        changed = builder.build(load_spec(str(spec("second")), None, [], None, None, None), builder.open_store(store))
    assert [r.cached for r in changed.steps[1:]] == [True, False, False]
    fresh = json.loads(repro("build", str(spec("second")), "--store", str(tmp_path / "fresh"), "--no-cache",
                             "--json").stdout)
    assert changed.digest == fresh["digest"]
    root = tmp_path / "root"
    repro("flatten", f"oci:{store}:l:1", f"rootfs:{root}")
    assert (root / "opt").is_symlink() and (root / "usr/local/tools/note").read_text() == "second"
    assert (root / "srv/kept").read_text() == "second" and not (root / "tmp/out").exists()
