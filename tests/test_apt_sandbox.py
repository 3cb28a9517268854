"""apt's setting for a build step (builders/apt_sandbox.py): a RUN step of an image with /etc/apt/apt.conf.d
sees APT::Sandbox::User "root" there, as root (runc) and as a plain user (bwrap, proot), and no layer holds
it; the image is the same in all three. Fast: busybox, no apt (the Debian defs build with apt in test-slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from builders import apt_sandbox
from tests.conftest import REPRO

CONTAINERFILE = """\
ARG SOURCE_DATE_EPOCH=1700000000
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /etc/apt/apt.conf.d && echo 'APT::Install-Recommends "false";' > /etc/apt/apt.conf.d/00own
RUN cat /etc/apt/apt.conf.d/zz-repro-apt-sandbox > /seen && ls /etc/apt/apt.conf.d > /listing
RUN echo 'Dpkg::Use-Pty "0";' > /etc/apt/apt.conf.d/01added
"""


def _build(public: Path, who: str) -> dict:
    argv = [REPRO, "build", str(public / "Containerfile"), "--store", str(public / who), "--json", "--no-cache",
            "-o", f"rootfs:{public / who}-tree"]
    if who != "root":
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv, "--executor", who]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HOME": str(public)}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _layer_names(store: Path, digest: str) -> list[list[str]]:
    """The entry names of each layer of the image `digest` (its manifest's) in the store, an OCI layout."""
    blobs = store / "blobs" / "sha256"
    manifest = json.loads((blobs / digest.split(":")[1]).read_text())
    out = []
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].split(":")[1]) as tar:
            out.append(tar.getnames())
    return out


def test_a_run_step_sees_the_setting_and_no_layer_holds_it(public_dir):
    (public_dir / "Containerfile").write_text(CONTAINERFILE)
    shutil.copy2("/bin/busybox", public_dir / "busybox")
    subprocess.run(["chmod", "-R", "a+rwX", str(public_dir)], check=True)
    digests = {who: _build(public_dir, who)["digest"] for who in ("root", "bwrap", "proot")}
    assert len(set(digests.values())) == 1, digests
    for who in digests:
        tree = public_dir / f"{who}-tree"
        assert (tree / "seen").read_bytes() == apt_sandbox.SNIPPET
        assert (tree / "listing").read_text() == f"00own\n{apt_sandbox.NAME}\n"
        assert sorted(os.listdir(tree / "etc/apt/apt.conf.d")) == ["00own", "01added"]
    layers = _layer_names(public_dir / "root", digests["root"])
    assert not any(name.endswith(apt_sandbox.NAME) for names in layers for name in names)
    assert "etc/apt/apt.conf.d" not in layers[-2]  # the step that read it changed nothing there


@pytest.mark.parametrize("entry", ["file", "none"])
def test_the_mount_point_is_made_and_removed_only_by_repro(tmp_path, entry):
    """An entry of that name in the image is left alone (and nothing is bound over it); an image without
    apt.conf.d gets nothing; the directory's mtime is put back."""
    tree = tmp_path / "rootfs"
    conf = tree / "etc/apt/apt.conf.d"
    conf.mkdir(parents=True)
    if entry == "file":
        (conf / apt_sandbox.NAME).write_text("the image's own\n")
    os.utime(conf, ns=(1_000_000_000, 1_000_000_000))
    with apt_sandbox.during_step(tree, tmp_path) as binds:
        if entry == "file":
            assert binds == ()
        else:
            assert binds == ((str(tmp_path / "apt-sandbox.conf"), f"etc/apt/apt.conf.d/{apt_sandbox.NAME}"),)
            assert (conf / apt_sandbox.NAME).read_bytes() == b""
            assert (tmp_path / "apt-sandbox.conf").read_bytes() == apt_sandbox.SNIPPET
    assert os.listdir(conf) == ([apt_sandbox.NAME] if entry == "file" else [])
    if entry == "none":
        assert conf.stat().st_mtime_ns == 1_000_000_000
    shutil.rmtree(tree / "etc/apt")
    with apt_sandbox.during_step(tree, tmp_path) as binds:
        assert binds == ()

