"""What changes on every run is left out of a step's layer but stays in the working tree, as a
Containerfile user expects: apt's lists from one RUN serve the next, /tmp lasts between RUNs, and a
cached step puts back what it left out (locally and through --cache-to/--cache-from)."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPRO, busybox_layers, repro
from tests.imagekit import make_image

LISTS = "var/lib/apt/lists"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    layers = busybox_layers()
    path = tmp_path_factory.mktemp("hygiene-base") / "layout"
    make_image(path, "1", layers, config={"Env": ["PATH=/bin"]})
    return f"oci:{path}:1"


def spec(where: Path, base: str, steps: list[str], name: str = "h") -> Path:
    body = "".join(f"  - run: {json.dumps(s)}\n" for s in steps)
    path = where / f"{name}.yaml"
    path.write_text(f"spec: 1\nname: {name}\ntag: {name}:1\nbase: {{image: '{base}'}}\nsteps:\n{body}")
    return path


def build(path: Path, store: Path, *args: str) -> dict:
    return json.loads(repro("build", str(path), "--store", str(store), "--json", *args).stdout)


def tree(store: Path, tag: str, where: Path) -> Path:
    repro("flatten", f"oci:{store}:{tag}", f"rootfs:{where}")
    return where


def layer_names(store: Path, tag: str) -> list[list[str]]:
    """The entry names of each layer of an image in a store."""
    index = json.loads((store / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = json.loads((store / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    out = []
    for layer in manifest["layers"]:
        data = gzip.decompress((store / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            out.append(tar.getnames())
    return out


UPDATE = f"busybox mkdir -p /{LISTS} && echo 'Package: x' > /{LISTS}/deb_Packages && echo scratch > /tmp/work"
INSTALL = f"busybox mkdir -p /srv && cat /{LISTS}/deb_Packages /tmp/work > /srv/installed"


def test_a_later_run_sees_what_an_earlier_run_left_out_of_its_layer(base, tmp_path):
    store = tmp_path / "store"
    build(spec(tmp_path, base, [UPDATE, INSTALL]), store)
    root = tree(store, "h:1", tmp_path / "root")
    assert (root / "srv" / "installed").read_text() == "Package: x\nscratch\n"
    assert not (root / LISTS / "deb_Packages").exists() and not (root / "tmp" / "work").exists()
    names = [n for layer in layer_names(store, "h:1") for n in layer]
    assert not any(n.endswith("deb_Packages") or n.endswith("tmp/work") for n in names), names


def test_a_cached_step_puts_back_what_it_left_out(base, tmp_path):
    store = tmp_path / "store"
    first = build(spec(tmp_path, base, [UPDATE, INSTALL]), store)
    # the first step comes from the cache; the next one, new, must still find the lists and /tmp
    other = build(spec(tmp_path, base, [UPDATE, INSTALL + " && echo again >> /srv/installed"], "o"), store)
    assert [s["cached"] for s in other["steps"][1:]] == [True, False]
    root = tree(store, "o:1", tmp_path / "root")
    assert (root / "srv" / "installed").read_text() == "Package: x\nscratch\nagain\n"
    again = build(spec(tmp_path, base, [UPDATE, INSTALL]), store)
    assert again["digest"] == first["digest"] and all(s["cached"] for s in again["steps"][1:])


def test_left_out_files_wait_under_cached_steps_for_the_first_step_that_runs(base, tmp_path):
    """Cached steps make no working tree; the first step that runs gets every cached step's left-out
    files in their place among the layers: the file step's /tmp/work (in its layer) is over the
    run's (left out), and the third step removed the lists the first wrote."""
    def steps(*more: str) -> Path:
        path = tmp_path / f"w{len(more)}.yaml"
        path.write_text(f"spec: 1\nname: w\ntag: w:{len(more)}\nbase: {{image: '{base}'}}\nsteps:\n"
                        f"  - run: {json.dumps(UPDATE)}\n  - file: {{dst: /tmp/work, content: second}}\n"
                        f"  - run: busybox rm /{LISTS}/deb_Packages\n" + "".join(f"  - run: {json.dumps(m)}\n"
                                                                              for m in more))
        return path

    store = tmp_path / "store"
    build(steps(), store)
    read = (f"busybox mkdir -p /srv && cat /tmp/work > /srv/out"
            f" && if test -e /{LISTS}/deb_Packages; then echo kept >> /srv/out; fi")
    other = build(steps(read), store)
    assert [s["cached"] for s in other["steps"][1:]] == [True, True, True, False]
    assert (tree(store, "w:1", tmp_path / "root") / "srv" / "out").read_text() == "second"


def test_a_build_of_cache_hits_makes_no_working_tree(base, tmp_path, monkeypatch):
    """Putting back what a cached step left out waits for a step that runs: a rebuild from the cache
    extracts nothing (it took 25-40 s for python-science when it did)."""
    from builders import build as builder  # noqa: PLC0415 - in-process, to watch the working tree
    from builders.frontend import load_spec  # noqa: PLC0415

    path, store = spec(tmp_path, base, [UPDATE, INSTALL]), tmp_path / "store"
    first = build(path, store)

    def no_tree(self):
        raise AssertionError("a working tree was made for a build of cache hits")

    monkeypatch.setattr(builder.Builder, "_materialize", no_tree)
    again = builder.build(load_spec(str(path), None, [], None, None, None), builder.open_store(store))
    assert again.digest == first["digest"] and all(r.cached for r in again.steps[1:])


def test_a_file_step_after_a_run_that_left_files_out_is_taken_from_the_cache(base, tmp_path):
    """A copy or file step after a run that left files out records the account of them without the
    run's "removed" list; that entry is still used (as an Apptainer def's /.singularity.d files after an
    apt-using %post), locally and through --cache-to/--cache-from."""
    path = tmp_path / "f.yaml"
    path.write_text(f"spec: 1\nname: f\ntag: f:1\nbase: {{image: '{base}'}}\nsteps:\n"
                    f"  - run: {json.dumps(UPDATE)}\n  - file: {{dst: /srv/note, content: hi}}\n")
    cache = f"oci:{tmp_path / 'cache'}:build"
    first = build(path, tmp_path / "store", "--cache-to", cache)
    for store, args in ((tmp_path / "store", ()), (tmp_path / "other", ("--cache-from", cache))):
        again = build(path, store, *args)
        assert again["digest"] == first["digest"]
        assert [s["cached"] for s in again["steps"][1:]] == [True, True]


def test_the_same_layer_with_other_left_out_files_is_another_starting_point(base, tmp_path):
    """Both first steps give the same (empty) layer; only what they left in /tmp differs. The
    second step must not be taken from the cache of the other build."""
    store = tmp_path / "store"
    build(spec(tmp_path, base, ["echo a > /tmp/a", "busybox mkdir -p /srv && cat /tmp/a > /srv/o"], "a"), store)
    b = build(spec(tmp_path, base, ["echo b > /tmp/a", "busybox mkdir -p /srv && cat /tmp/a > /srv/o"], "b"), store)
    assert [s["cached"] for s in b["steps"][1:]] == [False, False]
    assert (tree(store, "b:1", tmp_path / "root") / "srv" / "o").read_text() == "b\n"


def test_removing_a_left_out_file_writes_no_whiteout(base, tmp_path):
    store = tmp_path / "store"
    build(spec(tmp_path, base, ["echo x > /tmp/x", "busybox rm /tmp/x", "busybox rm /etc/motd"]), store)
    layers = layer_names(store, "h:1")[2:]
    assert layers[0] == [] and layers[1] == []  # nothing to say about a file the image never had
    assert layers[2] == ["etc/.wh.motd"]  # the image has /etc/motd: its removal is whited out


def test_new_python_caches_stay_out_of_the_layer_but_in_the_tree(base, tmp_path):
    store = tmp_path / "store"
    build(spec(tmp_path, base, ["busybox mkdir -p /srv/__pycache__ && echo c > /srv/__pycache__/m.pyc",
                                "cat /srv/__pycache__/m.pyc > /srv/seen"]), store)
    root = tree(store, "h:1", tmp_path / "root")
    assert (root / "srv" / "seen").read_text() == "c\n" and not (root / "srv" / "__pycache__").exists()


def test_what_was_left_out_travels_with_the_shared_cache(base, tmp_path):
    cache = f"oci:{tmp_path / 'cache'}:build"
    build(spec(tmp_path, base, [UPDATE, INSTALL]), tmp_path / "a", "--cache-to", cache)
    other = build(spec(tmp_path, base, [UPDATE, INSTALL + " && echo b >> /srv/installed"], "o"), tmp_path / "b",
                  "--cache-from", cache)
    assert [s["cached"] for s in other["steps"][1:]] == [True, False]
    root = tree(tmp_path / "b", "o:1", tmp_path / "root")
    assert (root / "srv" / "installed").read_text() == "Package: x\nscratch\nb\n"


def test_a_hostile_left_out_record_in_the_cache_is_not_used(base, tmp_path):
    store = tmp_path / "store"
    first = build(spec(tmp_path, base, [UPDATE, INSTALL]), store)
    for entry in (store / "cache").glob("*.json"):
        data = json.loads(entry.read_text())
        if "descriptor" in data.get("left_out", {}):  # the first step: it left the lists out
            data["left_out"]["removed"] = "../../etc"  # not a list of paths
            entry.write_text(json.dumps(data))
    again = build(spec(tmp_path, base, [UPDATE, INSTALL]), store)
    assert again["digest"] == first["digest"]
    assert [s["cached"] for s in again["steps"][1:]] == [False, True]


def test_a_containerfile_with_apt_update_and_install_in_two_runs(catalog_images, tmp_path):
    """What Containerfile users write: RUN apt-get update, then RUN apt-get install, then a RUN that
    reads /tmp from the one before. Built twice (the second from the cache, reinstalling after the
    cached update), the image has the package, no apt lists, and one digest."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    base = catalog_images["python-science"]["ref"]
    text = (f"ARG SOURCE_DATE_EPOCH=1700000000\nFROM {base}\nRUN apt-get update -qq && echo kept > /tmp/mark\n"
            "RUN apt-get install -y -qq --no-install-recommends hello > /dev/null\n"
            "RUN cat /tmp/mark > /opt/mark && hello > /opt/greeting\n")
    (ctx / "Containerfile").write_text(text)
    store = tmp_path / "store"
    first = build(ctx / "Containerfile", store)
    root = tree(store, "ctx:latest", tmp_path / "root")
    assert (root / "opt" / "greeting").read_text() == "Hello, world!\n"
    assert (root / "opt" / "mark").read_text() == "kept\n"
    assert [p.name for p in (root / LISTS).iterdir() if p.is_file() and p.name != "lock"] == []
    (ctx / "Containerfile").write_text(text + "RUN hello -g again > /opt/again\n")
    second = build(ctx / "Containerfile", store)
    assert [s["cached"] for s in second["steps"][-4:]] == [True, True, True, False]
    assert second["digest"] != first["digest"]
    root = tree(store, "ctx:latest", tmp_path / "again")
    assert (root / "opt" / "again").read_text().strip() == "again"


def test_a_build_that_fails_before_it_starts_leaves_no_working_directory(base, tmp_path, public_dir):
    """A --cache-from that cannot be read fails the build before any step: no repro-build-* directory
    stays in TMPDIR (the builder makes its working directory when it starts, not when it is made)."""


    scratch = public_dir / "tmp"  # runc's root inside must enter the working tree below it
    scratch.mkdir(mode=0o777)
    proc = subprocess.run([REPRO, "build", str(spec(tmp_path, base, ["true"])), "--store", str(tmp_path / "store"),
                           "--cache-from", f"oci:{tmp_path / 'missing'}:build"], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert list(scratch.iterdir()) == []
    built = subprocess.run([REPRO, "build", str(spec(tmp_path, base, ["true"])), "--store", str(tmp_path / "store")],
                           capture_output=True, text=True, env={**os.environ, "TMPDIR": str(scratch)})
    assert built.returncode == 0, built.stderr
    assert list(scratch.iterdir()) == []
