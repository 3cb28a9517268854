"""Round trips between oci:, oci-archive: and docker-archive:, determinism, schemas, platforms."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

import repro as api
from repro.image import Platform
from tests.conftest import REPRO, repro
from tests.imagekit import E, add_index, make_image
from tests.oci_schema import validate, validate_layout


def hashes(ref: str) -> dict:
    return json.loads(repro("hash", "--json", ref).stdout)


def test_oci_archive_round_trip_keeps_manifest_digest(busybox_layout, tmp_path):
    original = hashes(f"oci:{busybox_layout}:1")
    repro("convert", f"oci:{busybox_layout}:1", f"oci-archive:{tmp_path}/a.tar:v1")
    repro("convert", f"oci-archive:{tmp_path}/a.tar:v1", f"oci:{tmp_path}/back:v1")
    assert hashes(f"oci-archive:{tmp_path}/a.tar:v1")["digest"] == original["digest"]
    assert hashes(f"oci:{tmp_path}/back:v1") == original
    validate_layout(tmp_path / "back")


def test_docker_archive_round_trip_keeps_config_and_diff_ids(busybox_layout, tmp_path):
    original = hashes(f"oci:{busybox_layout}:1")
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{tmp_path}/d.tar:example/busybox:1")
    repro("convert", f"docker-archive:{tmp_path}/d.tar", f"oci:{tmp_path}/back:1")
    back = hashes(f"oci:{tmp_path}/back:1")
    assert back["config"] == original["config"]
    assert [layer["diff_id"] for layer in back["layers"]] == [layer["diff_id"] for layer in original["layers"]]
    # Uncompressed layers: the blob digest is the diff_id.
    assert [layer["digest"] for layer in back["layers"]] == [layer["diff_id"] for layer in back["layers"]]
    validate_layout(tmp_path / "back")
    # And back to a docker archive: the same config and layers again.
    repro("convert", f"oci:{tmp_path}/back:1", f"docker-archive:{tmp_path}/d2.tar:example/busybox:1")
    assert (tmp_path / "d.tar").read_bytes() == (tmp_path / "d2.tar").read_bytes()


def test_docker_archive_layout(busybox_layout, tmp_path):
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{tmp_path}/d.tar:example/busybox:1")
    with tarfile.open(tmp_path / "d.tar") as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
        repositories = json.loads(tar.extractfile("repositories").read())
    assert names == sorted(names)
    assert manifest[0]["RepoTags"] == ["example/busybox:1"]
    top = manifest[0]["Layers"][-1].split("/")[0]
    assert repositories == {"example/busybox": {"1": top}}
    for layer in manifest[0]["Layers"]:
        layer_id = layer.split("/")[0]
        assert {f"{layer_id}/VERSION", f"{layer_id}/json", f"{layer_id}/layer.tar"} <= set(names)


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_archives_are_byte_for_byte_reproducible(busybox_layout, tmp_path, fmt):
    repro("convert", f"oci:{busybox_layout}:1", f"{fmt}:{tmp_path}/one.tar")
    repro("convert", f"oci:{busybox_layout}:1", f"{fmt}:{tmp_path}/two.tar")
    data = (tmp_path / "one.tar").read_bytes()
    assert data == (tmp_path / "two.tar").read_bytes()
    # The trailer convention: two zero blocks, no padding to a 10 KiB record.
    assert data.endswith(b"\0" * 1024)
    assert len(data) % 512 == 0
    with tarfile.open(tmp_path / "one.tar") as tar:
        assert all(m.uname == "" and m.gname == "" for m in tar.getmembers())
        assert not any("PaxHeader" in m.name for m in tar.getmembers())


def test_rootfs_import_is_reproducible(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "file").write_text("x")
    (tree / "b").symlink_to("a/file")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    first = repro("convert", f"rootfs:{tree}", f"oci:{tmp_path}/one:1", env=env).stdout.split()[-1]
    (tree / "a" / "file").touch()  # a later mtime is clamped to SOURCE_DATE_EPOCH
    second = repro("convert", f"rootfs:{tree}", f"oci:{tmp_path}/two:1", env=env).stdout.split()[-1]
    assert first == second
    validate_layout(tmp_path / "one")


def test_existing_layout_gets_new_tags(busybox_layout, tmp_path):
    dst = tmp_path / "shared"
    repro("convert", f"oci:{busybox_layout}:1", f"oci:{dst}:a")
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{tmp_path}/d.tar")
    repro("convert", f"docker-archive:{tmp_path}/d.tar", f"oci:{dst}:b")
    repro("convert", f"oci:{busybox_layout}:1", f"oci:{dst}:a")  # the same tag again replaces, not duplicates
    index = json.loads((dst / "index.json").read_bytes())
    names = sorted(d["annotations"]["org.opencontainers.image.ref.name"] for d in index["manifests"])
    assert names == ["a", "b"]
    validate_layout(dst)


def test_concurrent_writers_keep_every_tag(busybox_layout, tmp_path):
    dst = tmp_path / "shared"
    repro("convert", f"oci:{busybox_layout}:1", f"oci:{dst}:seed")
    procs = [subprocess.Popen([REPRO, "convert", f"oci:{busybox_layout}:1", f"oci:{dst}:t{i}"]) for i in range(6)]
    assert all(p.wait(120) == 0 for p in procs)
    index = json.loads((dst / "index.json").read_bytes())
    names = {d["annotations"]["org.opencontainers.image.ref.name"] for d in index["manifests"]}
    assert names == {"seed", *(f"t{i}" for i in range(6))}


def test_written_json_validates_against_oci_schemas(busybox_layout, tmp_path):
    assert validate_layout(busybox_layout) >= 4
    repro("convert", f"oci:{busybox_layout}:1", f"oci-archive:{tmp_path}/a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        validate("index", tar.extractfile("index.json").read())
        validate("layout", tar.extractfile("oci-layout").read())


def test_multi_platform_index(tmp_path):
    layout = tmp_path / "multi"
    for arch in ("amd64", "arm64"):
        make_image(layout, arch, [[E("arch", arch.encode())]], platform=Platform("linux", arch))
    add_index(layout, "multi", [("amd64", Platform("linux", "amd64")), ("arm64", Platform("linux", "arm64"))])
    validate_layout(layout)
    arm = json.loads(repro("inspect", "--json", "--platform", "linux/arm64", f"oci:{layout}:multi").stdout)
    assert arm["platform"] == "linux/arm64"
    host = json.loads(repro("inspect", "--json", f"oci:{layout}:multi").stdout)
    assert host["platform"] == str(Platform.host())
    missing = repro("inspect", "--platform", "linux/s390x", f"oci:{layout}:multi", check=False)
    assert missing.returncode == 2 and "no manifest for platform linux/s390x" in missing.stderr
    repro("convert", "--platform", "linux/arm64", f"oci:{layout}:multi", f"docker-archive:{tmp_path}/arm.tar")
    assert json.loads(repro("inspect", "--json", f"docker-archive:{tmp_path}/arm.tar").stdout)["platform"] == (
        "linux/arm64"
    )


def test_hash_files_sees_the_flattened_tree(busybox_layout):
    result = json.loads(repro("hash", "--files", "--json", f"oci:{busybox_layout}:1").stdout)
    files = {f["path"]: f for f in result["files"]}
    assert "etc/gone" not in files  # whiteout in layer 2
    assert files["etc/motd"]["sha256"] == hashlib.sha256(b"hello from repro\n").hexdigest()
    assert files["etc/motd"]["layer"] == 1
    assert files["etc/motd.link"]["type"] == "hardlink"
    assert files["etc/motd.link"]["sha256"] == files["etc/motd"]["sha256"]
    assert files["bin/sh"] == {**files["bin/sh"], "type": "symlink", "target": "busybox"}
    assert files["srv/data.txt"]["uid"] == 1000
    assert files["tmp"]["mode"] == "1777"
    assert list(files) == sorted(files)


def test_inspect_shows_config(busybox_layout):
    info = json.loads(repro("inspect", "--json", f"oci:{busybox_layout}:1").stdout)
    assert info["entrypoint"] == ["/bin/sh", "-c"]
    assert info["env"] == ["PATH=/bin", "GREETING=hi there"]
    assert len(info["layers"]) == 2
    assert info["labels"]["org.opencontainers.image.title"] == "busybox-test"
    text = repro("inspect", f"oci:{busybox_layout}:1").stdout
    assert info["digest"] in text and info["layers"][0]["diff_id"] in text


def test_python_api(busybox_layout, tmp_path):
    image = api.open(f"oci:{busybox_layout}:1")
    digest = api.write(image, f"oci-archive:{tmp_path}/x.tar")
    assert digest == image.digest
    assert api.open(f"oci-archive:{tmp_path}/x.tar").config.diff_ids == image.config.diff_ids


def test_reads_docker_25_mixed_oci_archive(busybox_layout, tmp_path):
    """Docker 25+ `docker save`: an OCI layout (uncompressed blobs) plus a manifest.json naming them."""
    repro("convert", f"oci:{busybox_layout}:1", f"oci:{tmp_path}/plain:1")
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{tmp_path}/classic.tar")
    repro("convert", f"docker-archive:{tmp_path}/classic.tar", f"oci:{tmp_path}/plain:u")  # uncompressed layers
    layout = tmp_path / "plain"
    index = json.loads((layout / "index.json").read_bytes())
    entry = next(d for d in index["manifests"] if d["annotations"]["org.opencontainers.image.ref.name"] == "u")
    manifest = json.loads((layout / "blobs" / entry["digest"].replace(":", "/")).read_bytes())
    docker_manifest = [{
        "Config": "blobs/" + manifest["config"]["digest"].replace(":", "/"),
        "RepoTags": ["example/new:25"],
        "Layers": ["blobs/" + layer["digest"].replace(":", "/") for layer in manifest["layers"]],
    }]
    out = tmp_path / "docker25.tar"
    with tarfile.open(out, "w") as tar:
        for name in ("oci-layout", "index.json"):
            tar.add(layout / name, name)
        for digest in [manifest["config"]["digest"], entry["digest"], *(x["digest"] for x in manifest["layers"])]:
            rel = "blobs/" + digest.replace(":", "/")
            tar.add(layout / rel, rel)
        data = json.dumps(docker_manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)

        tar.addfile(info, io.BytesIO(data))
    ours = json.loads(repro("hash", "--json", f"oci:{busybox_layout}:1").stdout)
    theirs = json.loads(repro("hash", "--json", f"docker-archive:{out}:example/new:25").stdout)
    assert theirs["config"] == ours["config"]
    assert [x["diff_id"] for x in theirs["layers"]] == [x["diff_id"] for x in ours["layers"]]
