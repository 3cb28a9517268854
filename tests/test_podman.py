"""Podman (Debian 12's 4.3) as a real client of what repro writes and a source of what it reads: podman load,
pull, save in both formats, run, and its API socket as `docker-daemon:` both ways. Podman runs with private
storage and configuration (tests/conftest.py: podman, podman_socket)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import repro

HELLO = "hello from repro\n"


@pytest.fixture(scope="module")
def ours(busybox_layout) -> dict:
    """The config digest and diff_ids any copy of the busybox image must keep."""
    return _identity(f"oci:{busybox_layout}:1")


def _identity(ref: str, env: dict | None = None) -> dict:
    hashed = json.loads(repro("hash", "--json", ref, env=env).stdout)
    return {"config": hashed["config"], "diff_ids": [layer["diff_id"] for layer in hashed["layers"]]}


def _podman_id(podman, name: str) -> str:
    return "sha256:" + podman("image", "inspect", "--format", "{{.Id}}", name).stdout.strip().removeprefix("sha256:")


def _runs(podman, name: str) -> None:
    assert podman("run", "--rm", "--network", "none", name).stdout == HELLO
    assert podman("run", "--rm", "--network", "none", name, "echo $GREETING; cat /srv/data.txt").stdout == \
        "hi there\n1 2 3\n"


def test_podman_loads_and_runs_a_docker_archive_written_by_repro(busybox_layout, podman, ours, tmp_path):
    archive = tmp_path / "img.tar"
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{archive}:repro-test/loaded:1")
    assert "repro-test/loaded:1" in podman("load", "-i", str(archive)).stdout
    assert _podman_id(podman, "repro-test/loaded:1") == ours["config"]
    _runs(podman, "repro-test/loaded:1")


def test_podman_pulls_what_repro_pushed(busybox_layout, podman, registry, ours):
    name = f"{registry.host}/podman/busybox:1"
    repro("convert", f"oci:{busybox_layout}:1", f"docker://{name}")
    podman("pull", "-q", "--tls-verify=false", name)
    assert _podman_id(podman, name) == ours["config"]
    _runs(podman, name)


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_repro_reads_what_podman_saves(busybox_layout, podman, ours, tmp_path, fmt):
    archive = tmp_path / f"saved-{fmt}.tar"
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{tmp_path}/in.tar:repro-test/saved:1")
    podman("load", "-i", str(tmp_path / "in.tar"))
    podman("save", "--format", fmt, "-o", str(archive), "repro-test/saved:1")
    info = json.loads(repro("inspect", "--json", f"{fmt}:{archive}").stdout)
    assert [x["diff_id"] for x in info["layers"]] == ours["diff_ids"]
    original = json.loads(repro("inspect", "--json", f"oci:{busybox_layout}:1").stdout)
    for key in ("platform", "created", "env", "entrypoint", "cmd", "workdir", "labels", "history"):
        assert info[key] == original[key], key
    # a docker-archive keeps the config's bytes; for oci-archive Podman writes the same config anew
    assert (info["config"]["digest"] == ours["config"]) == (fmt == "docker-archive")
    repro("convert", f"{fmt}:{archive}", f"oci:{tmp_path}/copy:1")
    assert _identity(f"oci:{tmp_path}/copy:1") == {**ours, "config": info["config"]["digest"]}
    repro("verify", "--deep", f"oci:{tmp_path}/copy:1")
    rootfs = tmp_path / "rootfs"
    repro("flatten", f"{fmt}:{archive}", f"rootfs:{rootfs}")
    assert (rootfs / "etc/motd").read_text() == HELLO and not (rootfs / "etc/gone").exists()


def test_podman_socket_as_docker_daemon_both_ways(busybox_layout, podman, podman_socket, registry, ours, tmp_path):
    repro("convert", f"oci:{busybox_layout}:1", "docker-daemon:repro-test/api:1", env=podman_socket)
    assert "localhost/repro-test/api:1" in podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    _runs(podman, "repro-test/api:1")
    # Podman names what it loaded localhost/repro-test/api:1 and exports it under that name
    repro("convert", "docker-daemon:repro-test/api:1", f"oci:{tmp_path}/back:1", env=podman_socket)
    assert _identity(f"oci:{tmp_path}/back:1") == ours
    assert _identity("docker-daemon:localhost/repro-test/api:1", env=podman_socket) == ours
    pulled = f"{registry.host}/podman/through-api:1"
    repro("convert", f"oci:{busybox_layout}:1", f"docker://{pulled}")
    podman("pull", "-q", "--tls-verify=false", pulled)
    assert _identity(f"docker-daemon:{pulled}", env=podman_socket) == ours


def _missing_is_one_line(env: dict, tmp_path: Path) -> None:
    """A missing image is said in one line naming the reference and the engine, before anything is exported."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for name in ("no/such:image", "repro-test/api:404", "nothing-here"):
        proc = repro("convert", f"docker-daemon:{name}", f"oci:{tmp_path}/none:1", check=False,
                     env={**env, "TMPDIR": str(scratch)})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"repro: docker-daemon:{name}: no such image in the engine at "
                                      f"{env['DOCKER_HOST']}"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "repro-daemon-" not in proc.stderr, proc.stderr
        assert list(scratch.iterdir()) == [] and not (tmp_path / "none").exists()


def test_a_missing_image_in_podman_is_one_line(podman_socket, tmp_path):
    _missing_is_one_line(podman_socket, tmp_path)


def test_a_missing_image_in_docker_is_one_line(dockerd, tmp_path):
    _missing_is_one_line({**os.environ, **dockerd}, tmp_path)
