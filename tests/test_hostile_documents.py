"""Hostile documents and blobs: links out of a layout or package, endless files, huge documents.

Every input here must be refused with one line and exit status 2 (or 1 where `verify` reports a failed
check), quickly and in bounded memory: repro runs under a 2 GiB address-space limit and a timeout, so a
reader that holds a whole document fails here instead of taking the test host's memory. Host files
that a link points at are sentinels under tmp_path; their content must never reach the output.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from converters import sif_format as fmt
from tests.conftest import REPRO, repro
from tests.imagekit import E, make_image

MEMORY_LIMIT = 2 << 30
TIMEOUT = 30
SENTINEL = b"SENTINEL-" + uuid.uuid4().hex.encode() + b"-MUST-NOT-LEAK\n"
HUGE = 64 << 30  # a sparse file: costs no disk, but a whole read of it could never fit the memory limit


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def refused(*args: str, status: tuple[int, ...] = (2,)) -> str:
    """Run repro on hostile input; it must fail fast with one line on stderr. Returns that line."""
    start = time.monotonic()
    proc = subprocess.run([REPRO, *args], capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=_limit_memory)
    elapsed = time.monotonic() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode in status, proc.stderr
    assert len(lines) == 1 and "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert SENTINEL.decode().strip() not in proc.stdout + proc.stderr
    return lines[0]


def never_leaked(path: Path) -> None:
    """No file under `path` (an output that may or may not exist) holds the sentinel."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    for file in files:
        assert SENTINEL not in file.read_bytes(), f"{file} holds the host file's content"


# --- oci: layouts --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secret_layout(tmp_path_factory) -> Path:
    """An image whose one layer is stored uncompressed and holds the sentinel: the layer blob is what a
    host file carrying the sentinel would look like, byte for byte."""
    path = tmp_path_factory.mktemp("secret") / "layout"
    make_image(path, "1", [[E("etc", kind="dir"), E("etc/secret", SENTINEL)]], compression="")
    return path


def _manifest(layout: Path) -> tuple[Path, dict]:
    index = json.loads((layout / "index.json").read_bytes())
    path = layout / "blobs/sha256" / index["manifests"][0]["digest"].removeprefix("sha256:")
    return path, json.loads(path.read_bytes())


def _blob(layout: Path, which: str) -> Path:
    path, manifest = _manifest(layout)
    if which == "manifest":
        return path
    digest = manifest["config"]["digest"] if which == "config" else manifest["layers"][0]["digest"]
    return layout / "blobs/sha256" / digest.removeprefix("sha256:")


def _to_dev_zero(which: str) -> Callable[[Path, Path], None]:
    def damage(layout: Path, tmp: Path) -> None:
        blob = _blob(layout, which)
        blob.unlink()
        blob.symlink_to("/dev/zero")

    return damage


def _to_fifo(layout: Path, tmp: Path) -> None:
    blob = _blob(layout, "config")
    blob.unlink()
    os.mkfifo(blob)


def _huge_config(layout: Path, tmp: Path) -> None:
    """Not a link: a regular config blob far longer than its descriptor says."""
    os.truncate(_blob(layout, "config"), HUGE)


def _moved_out(relative: str) -> Callable[[Path, Path], None]:
    def damage(layout: Path, tmp: Path) -> None:
        outside = tmp / "outside"
        shutil.move(layout / relative, outside)
        (layout / relative).symlink_to(outside)

    return damage


def _index_to_dev_zero(layout: Path, tmp: Path) -> None:
    (layout / "index.json").unlink()
    (layout / "index.json").symlink_to("/dev/zero")


def _index_of_spaces(layout: Path, tmp: Path) -> None:
    (layout / "index.json").write_bytes(b" " * (100 << 20))


def _marker_to_dev_zero(layout: Path, tmp: Path) -> None:
    (layout / "oci-layout").unlink()
    (layout / "oci-layout").symlink_to("/dev/zero")


def _huge_marker(layout: Path, tmp: Path) -> None:
    os.truncate(layout / "oci-layout", HUGE)


LAYOUT_DAMAGE = {
    # name: (damage, what stderr says)
    "manifest blob links to /dev/zero": (_to_dev_zero("manifest"), "is a symlink"),
    "config blob links to /dev/zero": (_to_dev_zero("config"), "is a symlink"),
    "config blob is a FIFO": (_to_fifo, "is not a regular file"),
    "config blob is 64 GiB (sparse)": (_huge_config, "larger than"),
    "blobs/sha256 links out of the layout": (_moved_out("blobs/sha256"), "blobs/sha256 is a symlink"),
    "blobs links out of the layout": (_moved_out("blobs"), "blobs is a symlink"),
    "index.json links to /dev/zero": (_index_to_dev_zero, "index.json is a symlink"),
    "index.json is 100 MB of spaces": (_index_of_spaces, "index.json is larger than 4194304 bytes"),
    "oci-layout links to /dev/zero": (_marker_to_dev_zero, "oci-layout is a symlink"),
    "oci-layout is 64 GiB (sparse)": (_huge_marker, "oci-layout is larger than 4194304 bytes"),
}


@pytest.mark.parametrize("command", ["inspect", "convert"])
@pytest.mark.parametrize("case", list(LAYOUT_DAMAGE))
def test_hostile_layout_is_refused(secret_layout, tmp_path, case, command):
    layout = tmp_path / "layout"
    shutil.copytree(secret_layout, layout)
    damage, expected = LAYOUT_DAMAGE[case]
    damage(layout, tmp_path)
    out = tmp_path / "out"
    args = ["inspect", f"oci:{layout}:1"] if command == "inspect" else ["convert", f"oci:{layout}:1", f"oci:{out}:1"]
    assert expected in refused(*args)
    assert not out.exists()


@pytest.mark.parametrize("destination", ["oci", "oci-archive", "docker-archive"])
@pytest.mark.parametrize("which", ["layer", "blobs/sha256"])
def test_a_link_to_a_host_file_is_never_copied(secret_layout, tmp_path, which, destination):
    """The host file holds exactly the bytes the digest names, so only the link itself can betray it."""
    layout = tmp_path / "layout"
    shutil.copytree(secret_layout, layout)
    if which == "layer":
        blob = _blob(layout, "layer")
        assert SENTINEL in blob.read_bytes()
        secret = tmp_path / "secret"
        shutil.move(blob, secret)
        blob.symlink_to(secret)
    else:
        _moved_out("blobs/sha256")(layout, tmp_path)
    out = tmp_path / "out"
    line = refused("convert", f"oci:{layout}:1", f"{destination}:{out}")
    assert "is a symlink" in line and "damaged or hostile" in line
    never_leaked(out)


# --- oci-archive: and docker-archive: ---------------------------------------------------------------
def _rewrite_tar(path: Path, change: Callable[[tarfile.TarInfo, bytes], list[tuple[tarfile.TarInfo, bytes]]]) -> None:
    """Rewrite the tar at `path`, each member replaced by what `change` returns for it."""
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read() if info.isreg() else b"") for info in tar]  # type: ignore[union-attr]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            for new, content in change(info, data):
                new.size = len(content) if new.isreg() else 0
                tar.addfile(new, io.BytesIO(content) if new.isreg() else None)


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _regular(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


@pytest.fixture(scope="module")
def oci_archive(busybox_layout, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("oci-archive") / "image.tar"
    repro("convert", f"oci:{busybox_layout}:1", f"oci-archive:{path}:1")
    return path


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
@pytest.mark.parametrize("which", ["index.json", "manifest", "config"])
def test_oci_archive_member_that_is_a_link_is_refused(oci_archive, tmp_path, which, kind):
    """A document or blob member that links to another member holding the same bytes: followed before."""
    archive = tmp_path / "image.tar"
    shutil.copy(oci_archive, archive)
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest_name = "blobs/sha256/" + index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest = json.loads(tar.extractfile(manifest_name).read())  # type: ignore[union-attr]
    name = {"index.json": "index.json", "manifest": manifest_name,
            "config": "blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")}[which]

    def change(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name != name:
            return [(info, data)]
        target = "stash" if kind == tarfile.LNKTYPE else "../" * name.count("/") + "stash"
        return [(_regular("stash"), data), (_link(name, target, kind), b"")]

    _rewrite_tar(archive, change)
    line = refused("inspect", f"oci-archive:{archive}:1")
    assert f"member {name} is a {'symlink' if kind == tarfile.SYMTYPE else 'hardlink'}" in line


@pytest.fixture(scope="module")
def docker_archive(busybox_layout, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("docker-archive") / "image.tar"
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{path}:busybox:1")
    return path


def _docker_manifest(archive: Path) -> list[dict]:
    with tarfile.open(archive) as tar:
        return json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]


def test_docker_archive_with_a_huge_manifest_is_refused(docker_archive, tmp_path):
    archive = tmp_path / "image.tar"
    shutil.copy(docker_archive, archive)
    _rewrite_tar(archive, lambda info, data: [(info, b" " * (100 << 20) + data if info.name == "manifest.json"
                                                else data)])
    assert "manifest.json is larger than 4194304 bytes" in refused("inspect", f"docker-archive:{archive}")


@pytest.mark.parametrize("which", ["manifest.json", "config"])
def test_docker_archive_document_that_is_a_link_is_refused(docker_archive, tmp_path, which):
    archive = tmp_path / "image.tar"
    shutil.copy(docker_archive, archive)
    name = which if which == "manifest.json" else _docker_manifest(archive)[0]["Config"]

    def change(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name != name:
            return [(info, data)]
        return [(_regular("stash.json"), data), (_link(name, "stash.json", tarfile.SYMTYPE), b"")]

    _rewrite_tar(archive, change)
    assert f"member {name} is a symlink" in refused("inspect", f"docker-archive:{archive}")


def test_docker_archive_layer_may_link_to_another_member(docker_archive, tmp_path):
    """What docker save writes for a layer that appears twice, kept readable: only documents are strict."""
    archive = tmp_path / "image.tar"
    shutil.copy(docker_archive, archive)
    entries = _docker_manifest(archive)
    first = entries[0]["Layers"][0]
    entries[0]["Layers"][0] = "dup/layer.tar"

    def change(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name == "manifest.json":
            return [(info, json.dumps(entries).encode())]
        if info.name == first:
            return [(info, data), (_link("dup/layer.tar", f"../{first}", tarfile.SYMTYPE), b"")]
        return [(info, data)]

    _rewrite_tar(archive, change)
    repro("convert", f"docker-archive:{archive}", f"oci:{tmp_path}/out:1")


# --- SIF -------------------------------------------------------------------------------------------
def test_sif_with_a_huge_descriptor_table_is_refused(tmp_path):
    """A million descriptors (585 MB) announced by the header of a sparse file: the table is read whole,
    so it is capped like any other document."""

    path = tmp_path / "image.sif"
    total = 1 << 20
    header = fmt.HEADER.pack(fmt.LAUNCH_SCRIPT, fmt.MAGIC, fmt.VERSION, b"02\0", uuid.uuid4().bytes, 0, 0, total,
                             total, fmt.DESCRIPTORS_OFFSET, total * fmt.DESCRIPTOR.size, 0, 0)
    path.write_bytes(header)
    os.truncate(path, fmt.DESCRIPTORS_OFFSET + total * fmt.DESCRIPTOR.size + 4096)
    assert "descriptor table is" in refused("inspect", f"sif:{path}")


# --- archive: preservation packages -----------------------------------------------------------------
@pytest.fixture(scope="module")
def package(busybox_layout, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("package")
    repro("archive", f"oci:{busybox_layout}:1", "-o", str(base / "pkg"))
    repro("archive", f"oci:{busybox_layout}:1", "-o", str(base / "pkg.tar"))
    return {"dir": base / "pkg", "tar": base / "pkg.tar"}


def _runs_to_sentinel(pkg: Path, tmp: Path) -> None:
    secret = tmp / "secret"
    secret.write_bytes(b'{"runs": [], "note": "' + SENTINEL.strip() + b'"}\n')
    (pkg / "data/runs.json").unlink()
    (pkg / "data/runs.json").symlink_to(secret)


def _package_index_to_dev_zero(pkg: Path, tmp: Path) -> None:
    (pkg / "data/image/index.json").unlink()
    (pkg / "data/image/index.json").symlink_to("/dev/zero")


PACKAGE_DAMAGE = {
    "runs.json links to a host file": (_runs_to_sentinel, "data/runs.json is a symlink"),
    "data/image links out of the package": (_moved_out("data/image"), "data/image is a symlink"),
    "blobs/sha256 links out of the package": (_moved_out("data/image/blobs/sha256"),
                                              "data/image/blobs/sha256 is a symlink"),
    "index.json links to /dev/zero": (_package_index_to_dev_zero, "index.json is a symlink"),
}


@pytest.mark.parametrize(("case", "command"), [(case, command) for case in PACKAGE_DAMAGE for command in
                                               ("verify", "inspect") if not case.startswith("runs.json")
                                               or command == "verify"])  # reading the image needs no runs.json
def test_hostile_package_directory_is_refused(package, tmp_path, case, command):
    pkg = tmp_path / "pkg"
    shutil.copytree(package["dir"], pkg, symlinks=True)
    damage, expected = PACKAGE_DAMAGE[case]
    damage(pkg, tmp_path)
    args, status = (["verify", str(pkg)], (1, 2)) if command == "verify" else (["inspect", f"archive:{pkg}"], (2,))
    line = refused(*args, status=status)
    assert expected in line and "damaged or hostile" in line


@pytest.mark.parametrize("which", ["data/image/index.json", "data/runs.json"])
def test_hostile_package_tar_member_is_refused(package, tmp_path, which):
    archive = tmp_path / "pkg.tar"
    shutil.copy(package["tar"], archive)
    name = f"pkg/{which}"

    def change(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name != name:
            return [(info, data)]
        return [(_regular("pkg/stash"), data), (_link(name, "../stash" if "image" not in which else "../../stash",
                                                      tarfile.SYMTYPE), b"")]

    _rewrite_tar(archive, change)
    line = refused("verify", str(archive), status=(1, 2))
    assert f"{which} is a symlink" in line
    if which.endswith("index.json"):
        assert f"{which.removeprefix('data/image/')} is a symlink" in refused("inspect", f"archive:{archive}")
