"""What repro writes, read by independent tools; what those tools write, read by repro."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import repro, run


def hashes(ref: str, files: bool = False) -> dict:
    return json.loads(repro("hash", "--json", *(["--files"] if files else []), ref).stdout)


def tree_of(root: Path) -> dict[str, tuple]:
    """(type, mode, uid, gid, sha256 or link target) for every path under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", 0o777, st.st_uid, st.st_gid, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, "")
            else:
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest)
    return out


def tree_from_inventory(files: list[dict]) -> dict[str, tuple]:
    out = {}
    for f in files:
        kind = "file" if f["type"] == "hardlink" else f["type"]
        value = f["target"] if kind == "symlink" else f["sha256"]
        mode = 0o777 if kind == "symlink" else int(f["mode"], 8)
        out[f["path"]] = (kind, mode, f["uid"], f["gid"], value)
    return out


@pytest.mark.parametrize("fmt", ["oci", "oci-archive", "docker-archive"])
def test_skopeo_reads_what_repro_writes(busybox_layout, tmp_path, fmt):
    ours = hashes(f"oci:{busybox_layout}:1")
    dst = f"{fmt}:{tmp_path}/out" + (":x:1" if fmt == "docker-archive" else ":1")
    repro("convert", f"oci:{busybox_layout}:1", dst)
    info = json.loads(run("skopeo", "inspect", dst).stdout)
    config = run("skopeo", "inspect", "--config", "--raw", dst).stdout.encode()
    assert "sha256:" + hashlib.sha256(config).hexdigest() == ours["config"]
    if fmt != "docker-archive":
        assert info["Digest"] == ours["digest"]
        raw = run("skopeo", "inspect", "--raw", dst).stdout.encode()
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == ours["digest"]
    # skopeo copies it on to a layout of its own; the layers' content is unchanged (skopeo rewrites
    # the config of a Docker image when it turns it into an OCI one, so that is compared only for OCI).
    run("skopeo", "copy", "-q", dst, f"oci:{tmp_path}/skopeo:copy")
    copied = hashes(f"oci:{tmp_path}/skopeo:copy")
    if fmt != "docker-archive":
        assert copied["config"] == ours["config"]
    assert [x["diff_id"] for x in copied["layers"]] == [x["diff_id"] for x in ours["layers"]]


@pytest.mark.parametrize("fmt", ["oci", "oci-archive", "docker-archive"])
def test_repro_reads_what_skopeo_writes(busybox_layout, tmp_path, fmt):
    ours = hashes(f"oci:{busybox_layout}:1")
    dst = f"{fmt}:{tmp_path}/theirs" + (":x:1" if fmt == "docker-archive" else ":t")
    run("skopeo", "copy", "-q", f"oci:{busybox_layout}:1", dst)
    theirs = hashes(dst, files=True)
    assert theirs["config"] == ours["config"]
    assert [x["diff_id"] for x in theirs["layers"]] == [x["diff_id"] for x in ours["layers"]]
    assert tree_from_inventory(theirs["files"]) == tree_from_inventory(hashes(f"oci:{busybox_layout}:1", True)["files"])


def test_umoci_unpacks_what_repro_writes(busybox_layout, tmp_path):
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{tmp_path}/d.tar")
    repro("convert", f"docker-archive:{tmp_path}/d.tar", f"oci:{tmp_path}/layout:t")
    run("umoci", "unpack", "--image", f"{tmp_path}/layout:t", str(tmp_path / "bundle"))
    expected = tree_from_inventory(hashes(f"oci:{tmp_path}/layout:t", files=True)["files"])
    assert tree_of(tmp_path / "bundle" / "rootfs") == expected
    assert "etc/gone" not in expected and "etc/motd" in expected


def test_repro_reads_what_buildah_writes(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (ctx / "busybox").chmod(0o755)
    (ctx / "Containerfile").write_text('FROM scratch\nCOPY busybox /bin/busybox\nENV FOO=bar\nCMD ["/bin/busybox"]\n')
    store = ["--root", str(tmp_path / "root"), "--runroot", str(tmp_path / "run"), "--storage-driver", "vfs"]
    try:
        run("buildah", *store, "bud", "-q", "--isolation", "chroot", "-t", "test:1", "-f", str(ctx / "Containerfile"),
            str(ctx))
        for dst in (f"oci-archive:{tmp_path}/b.tar:test", f"docker-archive:{tmp_path}/b-docker.tar:test:1",
                    f"oci:{tmp_path}/b-layout:test"):
            run("buildah", *store, "push", "-q", "test:1", dst)
            result = hashes(dst, files=True)
            info = json.loads(repro("inspect", "--json", dst).stdout)
            assert "FOO=bar" in info["env"]
            busybox = next(f for f in result["files"] if f["path"] == "bin/busybox")
            assert busybox["sha256"] == hashlib.sha256(Path("/bin/busybox").read_bytes()).hexdigest()
            assert busybox["mode"] == "0755"
    finally:
        run("buildah", *store, "rm", "--all", check=False)
        run("umount", "-R", str(tmp_path / "root"), check=False)


def test_docker_loads_and_runs_what_repro_writes(busybox_layout, tmp_path, dockerd):
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{tmp_path}/d.tar:repro-test/busybox:1")
    loaded = run("docker", "load", "-i", str(tmp_path / "d.tar"), env=dockerd).stdout
    assert "repro-test/busybox:1" in loaded
    out = run("docker", "run", "--rm", "--network", "none", "repro-test/busybox:1", env=dockerd).stdout
    assert out == "hello from repro\n"
    out = run("docker", "run", "--rm", "--network", "none", "repro-test/busybox:1",
              "echo $GREETING; pwd; cat /etc/motd.link; test -e /etc/gone || echo gone", env=dockerd).stdout
    assert out == "hi there\n/srv\nhello from repro\ngone\n"
    image_id = run("docker", "inspect", "--format", "{{.Id}}", "repro-test/busybox:1", env=dockerd).stdout.strip()
    assert image_id == hashes(f"oci:{busybox_layout}:1")["config"]


def test_repro_reads_what_docker_save_writes(busybox_layout, tmp_path, dockerd):
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{tmp_path}/d.tar:repro-test/saved:1")
    run("docker", "load", "-i", str(tmp_path / "d.tar"), env=dockerd)
    run("docker", "tag", "repro-test/saved:1", "repro-test/saved:2", env=dockerd)
    run("docker", "save", "-o", str(tmp_path / "saved.tar"), "repro-test/saved:1", "repro-test/saved:2", env=dockerd)
    ours = hashes(f"oci:{busybox_layout}:1")
    theirs = hashes(f"docker-archive:{tmp_path}/saved.tar:repro-test/saved:2")
    assert theirs["config"] == ours["config"]
    assert [x["diff_id"] for x in theirs["layers"]] == [x["diff_id"] for x in ours["layers"]]
    repro("convert", f"docker-archive:{tmp_path}/saved.tar:repro-test/saved:1", f"oci:{tmp_path}/back:1")
    assert hashes(f"oci:{tmp_path}/back:1")["config"] == ours["config"]
