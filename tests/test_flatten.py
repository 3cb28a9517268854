"""Flatten: whiteout rules against umoci, the three outputs agree, and hostile layers stay contained."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

import repro as repro_api
from converters import sif_format
from converters import sif_rootfs as sd
from repro import flatten
from repro.clock import rfc3339
from repro.extract import Extractor
from repro.image import Platform
from repro.layers import TarWriter
from repro.mutate import commit, new_config, write_layer
from repro.store import Layout
from repro.transfer import manifest_descriptor
from tests.conftest import REPRO, repro, run
from tests.imagekit import E, make_image
from tests.test_streaming import Noise, peak_rss_mb

LONG = "long-" + "x" * 150
NON_UTF8 = "caf\udce9"  # the byte 0xE9 alone: not UTF-8


def rules_layers() -> list[list[E]]:
    base = [
        E("a", kind="dir"), E("a/keep", b"kept"), E("a/gone", b"deleted by a whiteout"),
        E("opq", kind="dir"), E("opq/lower", b"hidden by an opaque whiteout"),
        E("dir2file", kind="dir"), E("dir2file/child", b"hidden: parent becomes a file"),
        E("file2dir", b"becomes a directory"),
        E("shared", kind="dir"), E("shared/orig", b"hardlinked from the layer above"),
        E("bin", kind="dir"), E("bin/tool", b"#!/bin/sh\n", mode=0o4755), E("bin/group", b"g", mode=0o2755),
        E("links", kind="dir"), E("links/rel", kind="symlink", target="../a/keep"),
        E("links/abs", kind="symlink", target="/etc/passwd"),
        E("x", kind="dir"), E("x/attr", b"with an xattr", pax={"SCHILY.xattr.user.repro": "yes"}),
        E(LONG, b"a name longer than 100 bytes"),
        E(NON_UTF8, b"latin-1 name"),
        E("pipe", kind="fifo"),
        E("owned", b"by 1000", uid=1000, gid=100),
    ]
    top = [
        E("a", kind="dir"), E("a/.wh.gone", b""), E("a/new", b"added"),
        E("opq", kind="dir"), E("opq/.wh..wh..opq", b""), E("opq/upper", b"same layer as the opaque whiteout"),
        E("dir2file", b"now a file"),
        E("file2dir", kind="dir"), E("file2dir/inside", b"in the new directory"),
        E("shared/link", kind="hardlink", target="shared/orig"),
        E("a/keep", b"overwritten", mode=0o600),
    ]
    return [base, top]


def tree_of(root: Path, mtimes: bool = False) -> dict[str, tuple]:
    out = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                value = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                value = ("dir", "")
            elif stat.S_ISFIFO(st.st_mode):
                value = ("fifo", "")
            else:
                first = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else rel
                value = ("file", full.read_bytes(), first if first != rel else "")
            mode = 0 if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
            out[rel] = (*value, mode, st.st_uid, st.st_gid)
            if mtimes and not stat.S_ISLNK(st.st_mode):
                out[rel] += (int(st.st_mtime),)
    return out


@pytest.fixture(scope="module")
def rules_layout(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "layout"
    make_image(path, "rules", rules_layers())
    return path


def test_flatten_matches_umoci(rules_layout, tmp_path):
    # umoci as root keeps setuid bits and device nodes; repro does when asked.
    repro("flatten", "--preserve-setuid", "--preserve-devices", f"oci:{rules_layout}:rules", f"rootfs:{tmp_path}/ours")
    run("umoci", "unpack", "--image", f"{rules_layout}:rules", str(tmp_path / "bundle"))
    ours, theirs = tree_of(tmp_path / "ours", mtimes=True), tree_of(tmp_path / "bundle" / "rootfs", mtimes=True)
    assert ours == theirs
    assert "a/gone" not in ours and "opq/lower" not in ours and "dir2file/child" not in ours
    assert ours["opq/upper"][0] == "file" and ours["dir2file"][0] == "file" and ours["file2dir/inside"]
    assert ours["a/keep"][1] == b"overwritten" and ours["a/keep"][3] == 0o600
    assert ours["bin/tool"][3] == 0o4755 and ours["bin/group"][3] == 0o2755
    assert ours["links/abs"] == ("symlink", "/etc/passwd", 0, 0, 0)
    assert ours["owned"][-3:-1] == (1000, 100)
    shared = tmp_path / "ours" / "shared"
    assert (shared / "link").stat().st_ino == (shared / "orig").stat().st_ino  # a hardlink across layers
    assert os.getxattr(tmp_path / "ours" / "x" / "attr", "user.repro") == b"yes"
    assert LONG in ours and NON_UTF8 in ours


def test_tar_and_squashfs_give_the_same_tree(rules_layout, tmp_path):
    # tar and squashfs record setuid bits as a plain user's would; a directory gets them when asked.
    repro("flatten", "--preserve-setuid", f"oci:{rules_layout}:rules", f"rootfs:{tmp_path}/dir")
    repro("flatten", f"oci:{rules_layout}:rules", f"tar:{tmp_path}/flat.tar")
    repro("flatten", f"oci:{rules_layout}:rules", f"squashfs:{tmp_path}/flat.sqfs")
    (tmp_path / "from-tar").mkdir()
    run("tar", "-xpf", str(tmp_path / "flat.tar"), "-C", str(tmp_path / "from-tar"), "--xattrs",
        "--xattrs-include=*")
    run("unsquashfs", "-q", "-d", str(tmp_path / "from-sqfs"), str(tmp_path / "flat.sqfs"))
    expected = tree_of(tmp_path / "dir")
    assert tree_of(tmp_path / "from-tar") == expected
    assert tree_of(tmp_path / "from-sqfs") == expected


@pytest.mark.parametrize("fmt", ["tar", "squashfs"])
def test_flat_outputs_are_reproducible(rules_layout, tmp_path, fmt):
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    repro("flatten", f"oci:{rules_layout}:rules", f"{fmt}:{tmp_path}/one", env=env)
    repro("flatten", f"oci:{rules_layout}:rules", f"{fmt}:{tmp_path}/two", env=env)
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()


@pytest.mark.parametrize("src", ["tar", "squashfs", "rootfs"])
def test_flat_formats_import_as_images(rules_layout, tmp_path, src):
    flat = tmp_path / "flat"
    repro("flatten", f"oci:{rules_layout}:rules", f"{src}:{flat}")
    repro("convert", f"{src}:{flat}", f"oci:{tmp_path}/imported:1")
    repro("flatten", f"oci:{tmp_path}/imported:1", f"rootfs:{tmp_path}/again")
    repro("flatten", f"oci:{rules_layout}:rules", f"rootfs:{tmp_path}/direct")
    strip_times = tree_of(tmp_path / "direct")
    assert tree_of(tmp_path / "again") == strip_times


def test_squashfs_compressors(rules_layout, tmp_path):
    for compression in ("zstd", "xz", "lz4"):
        out = tmp_path / f"{compression}.sqfs"
        repro("flatten", "--compression", compression, f"oci:{rules_layout}:rules", f"squashfs:{out}")
        info = run("unsquashfs", "-s", str(out)).stdout
        assert f"Compression {compression}" in info


# --- hostile layers ----------------------------------------------------------------------

HOSTILE: dict[str, list[list[E]]] = {
    "dotdot name": [[E("../escape", b"x")]],
    "deep dotdot name": [[E("a/../../../../tmp/escape", b"x")]],
    "absolute name": [[E("/escape-abs", b"x")]],
    "symlink to root then through it": [[E("l", kind="symlink", target="/"), E("l/escape", b"x")]],
    "symlink to dotdot then through it": [[E("up", kind="symlink", target=".."), E("up/escape", b"x")]],
    "symlink across layers": [[E("l", kind="symlink", target="/")], [E("l/escape", b"x")]],
    "dotdot symlink across layers": [[E("up", kind="symlink", target="../..")], [E("up/escape", b"x")]],
    "symlink chain": [[E("a", kind="symlink", target="b"), E("b", kind="symlink", target="c"),
                       E("c", kind="symlink", target="../../.."), E("a/escape", b"x")]],
    "symlink loop": [[E("p", kind="symlink", target="q"), E("q", kind="symlink", target="p"), E("p/escape", b"x")]],
    "hardlink to absolute outside": [[E("h", kind="hardlink", target="/etc/passwd")]],
    "hardlink with dotdot": [[E("h", kind="hardlink", target="../../../../etc/passwd")]],
    "hardlink through symlinked dir": [[E("s", kind="symlink", target="/etc"), E("h", kind="hardlink",
                                                                                  target="s/passwd")]],
    "whiteout naming dotdot": [[E("d", kind="dir"), E("d/keep", b"k")], [E("d/.wh...", b"")]],
    "bare whiteout": [[E("d", kind="dir"), E("d/keep", b"k")], [E("d/.wh.", b"")]],
    "opaque whiteout at root": [[E("keep", b"k")], [E(".wh..wh..opq", b""), E("new", b"n")]],
    "duplicate entries": [[E("dup", b"first"), E("dup", b"second")]],
    "file replaces dir holding an outward symlink": [
        [E("d", kind="dir"), E("d/out", kind="symlink", target="/")], [E("d", b"file now"), E("d/out/escape", b"x")]],
    "name with newline": [[E("new\nline", b"x")]],
    "file under a file": [[E("f", b"x"), E("f/escape", b"y")]],
    "absolute symlink is kept, never followed": [[E("abs", kind="symlink", target="/etc/shadow")]],
    "device node": [[E("dev", kind="dir"), E("dev/null2", kind="char")]],
    "setuid root file": [[E("suid", b"x", mode=0o4777)]],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_stay_inside(case, tmp_path):
    layout = tmp_path / "layout"
    make_image(layout, "h", HOSTILE[case])
    sandbox = tmp_path / "sandbox"
    (sandbox / "neighbour").mkdir(parents=True)
    (sandbox / "neighbour" / "canary").write_text("untouched")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    passwd = Path("/etc/passwd").stat()
    target = sandbox / "out"
    proc = repro("flatten", f"oci:{layout}:h", f"rootfs:{target}", check=False)
    assert proc.returncode in (0, 2), proc.stderr
    if proc.returncode == 2:
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert not target.exists()
    after = {p for p in tmp_path.rglob("*") if not str(p).startswith(str(target))}
    assert after == set(before) | ({sandbox / "out"} if target.exists() else set()) - {target}, "wrote outside"
    assert (sandbox / "neighbour" / "canary").read_text() == "untouched"
    assert Path("/etc/passwd").stat().st_nlink == passwd.st_nlink and Path("/etc/passwd").stat() == passwd
    assert not Path("/escape-abs").exists() and not Path("/tmp/escape").exists()
    if target.exists():
        for path in target.rglob("*"):
            if path.is_symlink():
                continue
            assert path.resolve().is_relative_to(target.resolve())


def test_duplicate_entry_later_wins(tmp_path):
    make_image(tmp_path / "layout", "d", HOSTILE["duplicate entries"])
    repro("flatten", f"oci:{tmp_path}/layout:d", f"rootfs:{tmp_path}/out")
    assert (tmp_path / "out" / "dup").read_bytes() == b"second"


def test_dotdot_names_are_clamped_inside(tmp_path):
    make_image(tmp_path / "layout", "d", HOSTILE["deep dotdot name"] + HOSTILE["symlink to root then through it"])
    repro("flatten", f"oci:{tmp_path}/layout:d", f"rootfs:{tmp_path}/out")
    assert (tmp_path / "out" / "tmp" / "escape").read_bytes() == b"x"
    # Never through the link, not even inside the root: the entry under it replaces it by a directory.
    assert (tmp_path / "out" / "l" / "escape").read_bytes() == b"x"
    assert not (tmp_path / "out" / "l").is_symlink() and not (tmp_path / "out" / "escape").exists()


@pytest.fixture
def public_tmp():
    """A directory a plain user can reach (pytest's own temporary root is private to root)."""

    path = Path(tempfile.mkdtemp(prefix="repro-user-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unprivileged_flatten(public_tmp):
    """As a plain user: files owned by the user, device nodes skipped with one warning, a mode-000
    directory still extracted and left usable by its owner."""
    tmp_path = public_tmp
    make_image(tmp_path / "dev", "d", [[E("dev", kind="dir"), E("dev/null2", kind="char"),
                                        E("locked", kind="dir", mode=0o000), E("locked/file", b"inside")]])
    for path in [tmp_path, *tmp_path.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    out = tmp_path / "out"
    os.mkdir(out)
    os.chown(out, 65534, 65534)

    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", REPRO, "flatten",
                           f"oci:{tmp_path}/dev:d", f"rootfs:{out}/tree"], capture_output=True, text=True,
                          env={**os.environ, "HOME": str(out)})
    assert proc.returncode == 0, proc.stderr
    assert "left out 1 device nodes" in proc.stderr
    tree = out / "tree"
    assert not (tree / "dev" / "null2").exists()
    assert (tree / "locked" / "file").read_bytes() == b"inside"
    assert (tree / "locked").stat().st_uid == 65534
    assert stat.S_IMODE((tree / "locked").stat().st_mode) & 0o700 == 0o700
    # tar: output still records the image's ownership and modes, which need no privileges.
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", REPRO, "flatten",
                           f"oci:{tmp_path}/dev:d", f"tar:{out}/flat.tar"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    with tarfile.open(out / "flat.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["locked"].mode == 0 and members["dev/null2"].ischr() and members["locked/file"].uid == 0


# --- one tree in every output ---------------------------------------------------------------------
# A layer's entries apply in order and a later one wins, as tar extraction applies them; an entry under
# a symlink (or a file) replaces it by a directory, never writing through it; a hardlink is the file its
# target named when the link came. rootfs:, tar:, squashfs: and sif: must all give that one tree.

PROBE = "repro-probe"  # a name no host directory has


def _dir(mode: int = 0o755) -> tuple:
    return ("dir", mode, "")


def _file(data: bytes, mode: int = 0o644) -> tuple:
    return ("file", mode, hashlib.sha256(data).hexdigest())


def _link(target: str) -> tuple:
    return ("symlink", 0, target)


# case -> (layers, expected tree, hardlinked groups)
SAME_TREE: dict[str, tuple[list[list[E]], dict[str, tuple], set[frozenset[str]]]] = {
    "file, dir, file again": (
        [[E("a", b"one"), E("a", kind="dir"), E("a/x", b"in"), E("a", b"two")]], {"a": _file(b"two")}, set()),
    "file, then a dir with a child": (
        [[E("a", b"one"), E("a", kind="dir", mode=0o750), E("a/x", b"in")]],
        {"a": _dir(0o750), "a/x": _file(b"in")}, set()),
    "dir with a child, then a file": (
        [[E("d", kind="dir"), E("d/x", b"x"), E("d/sub", kind="dir"), E("d/sub/y", b"y"), E("d", b"file")]],
        {"d": _file(b"file")}, set()),
    "same file twice": (
        [[E("dup", b"first"), E("dup", b"second", mode=0o600)]], {"dup": _file(b"second", 0o600)}, set()),
    "same directory twice": (
        [[E("d", kind="dir"), E("d/x", b"x"), E("d", kind="dir", mode=0o700), E("d/y", b"y")]],
        {"d": _dir(0o700), "d/x": _file(b"x"), "d/y": _file(b"y")}, set()),
    "file under a file": ([[E("f", b"x"), E("f/g", b"y")]], {"f": _dir(), "f/g": _file(b"y")}, set()),
    "symlink replaced by a file": (
        [[E("s", kind="symlink", target="t"), E("s", b"a file now")]], {"s": _file(b"a file now")}, set()),
    "symlink to a sibling, then an entry under it": (
        [[E("t", kind="dir"), E("t/old", b"o"), E("s", kind="symlink", target="t"), E("s/f", b"f")]],
        {"t": _dir(), "t/old": _file(b"o"), "s": _dir(), "s/f": _file(b"f")}, set()),
    "symlink to /etc, then an entry under it": (
        [[E("s", kind="symlink", target="/etc"), E(f"s/{PROBE}", b"f")]], {"s": _dir(), f"s/{PROBE}": _file(b"f")},
        set()),
    "symlink out of the tree, then an entry under it": (
        [[E("s", kind="symlink", target="../../outside"), E(f"s/{PROBE}", b"f")]],
        {"s": _dir(), f"s/{PROBE}": _file(b"f")}, set()),
    "symlink to a host directory, then an entry under it": (
        [[E("s", kind="symlink", target="{sentinel}"), E(f"s/{PROBE}", b"f")]],
        {"s": _dir(), f"s/{PROBE}": _file(b"f")}, set()),
    "symlink kept, a file beside it": (
        [[E("s", kind="symlink", target="/etc"), E("sf", b"beside")]], {"s": _link("/etc"), "sf": _file(b"beside")},
        set()),
    "hardlink to a file replaced later": (
        [[E("f", b"orig"), E("h", kind="hardlink", target="f"), E("f", b"new")]],
        {"f": _file(b"new"), "h": _file(b"orig")}, set()),
    "two hardlinks to a file replaced later by a directory": (
        [[E("f", b"orig", mode=0o640), E("h", kind="hardlink", target="f"), E("g", kind="hardlink", target="f"),
          E("f", kind="dir")]],
        {"f": _dir(), "g": _file(b"orig", 0o640), "h": _file(b"orig", 0o640)}, {frozenset({"g", "h"})}),
    "hardlink kept with its target": (
        [[E("f", b"same"), E("d", kind="dir"), E("d/h", kind="hardlink", target="f")]],
        {"f": _file(b"same"), "d": _dir(), "d/h": _file(b"same")}, {frozenset({"f", "d/h"})}),
    "hardlink to a directory is left out": (
        [[E("d", kind="dir"), E("h", kind="hardlink", target="d"), E("k", b"k")]], {"d": _dir(), "k": _file(b"k")},
        set()),
    # Across layers the same rule holds: the layers apply bottom up.
    "hardlink below, its target replaced above": (
        [[E("f", b"orig"), E("h", kind="hardlink", target="f")], [E("f", b"new")]],
        {"f": _file(b"new"), "h": _file(b"orig")}, set()),
    "hardlink above to a file below, replaced after the link": (
        [[E("f", b"orig")], [E("h", kind="hardlink", target="f"), E("f", b"new")]],
        {"f": _file(b"new"), "h": _file(b"orig")}, set()),
    "symlink below, an entry under it above": (
        [[E("s", kind="symlink", target="/etc")], [E(f"s/{PROBE}", b"f")]], {"s": _dir(), f"s/{PROBE}": _file(b"f")},
        set()),
}


def tree_and_links(root: Path) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """(path -> (type, mode, sha256 or link target), groups of hardlinked paths) of a directory tree."""
    tree: dict[str, tuple] = {}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(root))
            assert (st.st_uid, st.st_gid) == (0, 0), rel
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = _link(os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = _dir(stat.S_IMODE(st.st_mode))
            else:
                assert stat.S_ISREG(st.st_mode), rel
                tree[rel] = _file(full.read_bytes(), stat.S_IMODE(st.st_mode))
                inodes.setdefault(st.st_ino, set()).add(rel)
    return tree, {frozenset(paths) for paths in inodes.values() if len(paths) > 1}


def _untar(stream_command: list[str] | None, tar_file: Path | None, into: Path) -> Path:
    into.mkdir()
    if tar_file is not None:
        run("tar", "-xpf", str(tar_file), "-C", str(into), "--numeric-owner")
    else:
        run("sh", "-c", f'"$@" | tar -xpf - -C {shlex.quote(str(into))} --numeric-owner', "sh", *stream_command)
    return into


def _sif_partition(sif: Path, out: Path) -> Path:
    with open(sif, "rb") as f:
        _, descriptors = sif_format.read(f, sif.stat().st_size, str(sif))
        part = sif_format.primary_partition(descriptors, str(sif))
        f.seek(part.offset)
        out.write_bytes(f.read(part.size))
    return out


def _without_sif_files(tree: dict[str, tuple]) -> dict[str, tuple]:
    """The image's part of a SIF's tree: Apptainer's files and directories taken out."""

    added = {sd.SD, *sd.SYMLINKS, *sd.DEFAULT_DIRS, *sd.EMPTY_FILES}
    return {p: v for p, v in tree.items() if not any(p == a or p.startswith(a + "/") for a in added)}


@pytest.mark.parametrize("case", list(SAME_TREE))
def test_every_output_gives_the_same_tree(case, tmp_path):
    layers, expected, linked = SAME_TREE[case]
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "canary").write_text("untouched")
    outside = tmp_path / "outside"  # where `../../outside` leads from every output directory below
    outside.mkdir()
    layers = [[dataclasses.replace(e, target=e.target.replace("{sentinel}", str(sentinel))) for e in layer]
              for layer in layers]
    make_image(tmp_path / "layout", "t", layers)
    src = f"oci:{tmp_path}/layout:t"
    work = tmp_path / "work"
    work.mkdir()
    for out in (f"rootfs:{work}/rootfs", f"tar:{work}/flat.tar", f"squashfs:{work}/flat.sqfs"):
        proc = repro("flatten", src, out)
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 1, proc.stderr
    proc = repro("convert", src, f"sif:{work}/image.sif")
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 1, proc.stderr

    trees = {
        "rootfs": tree_and_links(work / "rootfs"),
        "tar": tree_and_links(_untar(None, work / "flat.tar", work / "from-tar")),
        "squashfs": tree_and_links(_untar(["sqfs2tar", "--no-skip", str(work / "flat.sqfs")], None,
                                          work / "from-sqfs")),
    }
    sif_tree, sif_links = tree_and_links(_untar(
        ["sqfs2tar", "--no-skip", str(_sif_partition(work / "image.sif", work / "sif.sqfs"))], None, work / "from-sif"))
    trees["sif"] = (_without_sif_files(sif_tree), sif_links)
    for fmt, got in trees.items():
        assert got == (expected, linked), fmt
    # Nothing was written through a link: not beside the outputs, not in the host directory, not in /etc.
    assert os.listdir(outside) == [] and os.listdir(sentinel) == ["canary"]
    assert (sentinel / "canary").read_text() == "untouched"
    assert not Path("/etc", PROBE).exists()


def test_the_extractor_applying_layers_in_order_gives_the_same_trees(tmp_path):
    """What `repro build` does to its working tree (each layer applied on the ones below, in order) gives
    the trees the flattened outputs give."""

    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    for number, (case, (layers, expected, linked)) in enumerate(SAME_TREE.items()):
        root = tmp_path / f"case{number}" / "probe" / "root"  # `../../outside` leads to case{number}/outside
        root.mkdir(parents=True)
        (root.parent.parent / "outside").mkdir()
        for layer in layers:
            extractor = Extractor(root, case)
            try:
                for e in layer:
                    e = dataclasses.replace(e, target=e.target.replace("{sentinel}", str(sentinel)))
                    extractor.add(e.path, e.tarinfo(), io.BytesIO(e.content or b"") if e.kind == "file" else None)
                extractor.finish()
            finally:
                extractor.close()
        assert tree_and_links(root) == (expected, linked), case
        assert os.listdir(root.parent.parent / "outside") == [] and os.listdir(sentinel) == [], case
    assert not Path("/etc", PROBE).exists()


def test_a_layer_replacing_what_it_gave_costs_no_memory(tmp_path):
    """A big file given twice in one layer (the flattened stream starts over, that layer's headers read
    first): memory stays that of a tiny image, in the tar and squashfs outputs alike."""

    size = 96 << 20
    path = tmp_path / "layout"
    path.mkdir()
    layout = Layout.initialize(path)

    def produce(tar: TarWriter) -> None:
        for seed in (b"first", b"second"):
            info = tarfile.TarInfo("data/big.bin")
            info.size = size
            tar.add(info, Noise(size, seed))
            if seed == b"first":  # a hardlink to the first: it keeps it when the second replaces it
                link = tarfile.TarInfo("data/old.bin")
                link.type, link.linkname = tarfile.LNKTYPE, "data/big.bin"
                tar.add(link)

    layer = write_layer(layout, produce, compression="")
    image = commit(layout, new_config(Platform.host(), rfc3339(0), [layer.diff_id], []), [layer])
    layout.add_manifest(manifest_descriptor(image, {"org.opencontainers.image.ref.name": "big"}), "big")
    make_image(tmp_path / "small", "s", [[E("x", b"tiny")]])
    for fmt in ("tar", "squashfs"):
        extra = ["--compression", "lz4"] if fmt == "squashfs" else []
        baseline = peak_rss_mb("flatten", *extra, f"oci:{tmp_path}/small:s", f"{fmt}:{tmp_path}/small.{fmt}")
        peak = peak_rss_mb("flatten", *extra, f"oci:{path}:big", f"{fmt}:{tmp_path}/big.{fmt}")
        assert peak < baseline + 40, f"{fmt}: peak RSS {peak:.0f} MB vs {baseline:.0f} MB for a tiny image"
    (tmp_path / "x").mkdir()
    run("tar", "-xf", str(tmp_path / "big.tar"), "-C", str(tmp_path / "x"))
    data = tmp_path / "x" / "data"
    assert sorted(os.listdir(data)) == ["big.bin", "old.bin"]
    for name, seed in (("big.bin", b"second"), ("old.bin", b"first")):
        assert (data / name).stat().st_size == size and (data / name).stat().st_nlink == 1
        with open(data / name, "rb") as f:
            assert f.read(1 << 16) == Noise(size, seed).read(1 << 16)
    listing = run("sh", "-c", f"sqfs2tar {shlex.quote(str(tmp_path / 'big.squashfs'))} | tar -tvf -").stdout
    assert listing.count("data/big.bin") == 1 and listing.count("data/old.bin") == 1 and " link to " not in listing


def test_a_link_to_a_file_a_higher_layer_replaced_rereads_only_its_layer(tmp_path, monkeypatch):
    """Layer 0 has a file and a hardlink to it, layer 1 replaces the file: the link keeps layer 0's
    content, got by reading layer 0 once more, never by reading the layers headers first (that keeps a
    model of every name of each layer below, in memory that grows with the image's file count)."""
    make_image(tmp_path / "layout", "l", [
        [E("d", kind="dir"), E("d/data", b"old content"), E("d/link", kind="hardlink", target="d/data"),
         E("d/other", b"stays")],
        [E("d/data", b"new content")],
    ])

    def no_plan(self, index):
        raise AssertionError(f"layer {index} was read headers first")

    monkeypatch.setattr(flatten._Merge, "_plan", no_plan)
    image = repro_api.open(f"oci:{tmp_path}/layout:l")
    tree = tmp_path / "tree"
    tree.mkdir()
    flatten.extract(image, tree)
    assert (tree / "d" / "data").read_bytes() == b"new content"
    assert (tree / "d" / "link").read_bytes() == b"old content"
    assert (tree / "d" / "other").read_bytes() == b"stays"


def test_the_hashes_an_extraction_records_are_those_of_the_files_it_left(rules_layout, tmp_path):
    """A build's first snapshot takes each file's sha256 from its extraction instead of reading the
    tree again: every recorded hash is the file's on disk, and the snapshot is the one made by reading."""
    from builders import tree as build_tree  # noqa: PLC0415 - the build's snapshot, beside the extractor it trusts
    from repro.refs import open_image  # noqa: PLC0415

    root, hashes = tmp_path / "root", {}
    root.mkdir()
    flatten.extract(open_image(f"oci:{rules_layout}:rules"), root, hashes=hashes)
    on_disk = {}
    for dirpath, _, filenames in os.walk(os.fsencode(root)):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                on_disk[os.fsdecode(os.path.relpath(full, os.fsencode(root)))] = hashlib.sha256(
                    Path(os.fsdecode(full)).read_bytes()).hexdigest()
    assert hashes and all(on_disk[path] == digest for path, digest in hashes.items())
    assert set(on_disk) - set(hashes) == {"shared/link"}  # a hardlink is made at the end, not written
    assert build_tree.snapshot(root, known=hashes) == build_tree.snapshot(root)
