"""Flatten: whiteout rules against umoci, the three outputs agree, and hostile layers stay contained."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import repro, run
from tests.imagekit import E, make_image

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
    assert (tmp_path / "out" / "escape").read_bytes() == b"x"  # through the link, resolved inside the root


@pytest.fixture
def public_tmp():
    """A directory a plain user can reach (pytest's own temporary root is private to root)."""
    import shutil
    import tempfile

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
    from tests.conftest import REPRO

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
    import tarfile

    with tarfile.open(out / "flat.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["locked"].mode == 0 and members["dev/null2"].ischr() and members["locked/file"].uid == 0
