"""repro build --platform: one spec, an OCI image index with a manifest per platform, the same index
digest every time, a lock per platform, readable by skopeo."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from tests import oci_schema
from tests.conftest import repro

SPEC = """\
spec: 1
name: multi
tag: multi:1
source_date_epoch: 1700000000
base: {scratch: true}
steps:
  - file: {dst: /etc/motd, content: "one spec, two platforms\\n"}
config:
  entrypoint: [/bin/sh]
"""


def _spec(where: Path) -> Path:
    (where / "spec.yaml").write_text(SPEC)
    return where / "spec.yaml"


def test_index_of_two_platforms(tmp_path):
    spec = _spec(tmp_path)
    built = json.loads(repro("build", str(spec), "--store", str(tmp_path / "store"), "--json",
                             "--platform", "linux/amd64,linux/arm64", "-o", f"oci:{tmp_path / 'out'}:multi").stdout)
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'out'}:multi"], capture_output=True,
                         check=True).stdout
    oci_schema.validate("index", raw)
    index = json.loads(raw)
    assert [m["platform"] for m in index["manifests"]] == [{"architecture": "amd64", "os": "linux"},
                                                           {"architecture": "arm64", "os": "linux"}]
    assert built["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    for platform in ("linux/amd64", "linux/arm64"):
        shown = json.loads(repro("inspect", "--json", "--platform", platform, f"oci:{tmp_path / 'out'}:multi").stdout)
        assert shown["platform"] == platform
    subprocess.run(["skopeo", "copy", "--all", "-q", f"oci:{tmp_path / 'out'}:multi", f"oci:{tmp_path / 'copy'}:m"],
                   check=True)
    lock = json.loads((tmp_path / "spec.lock").read_text())
    assert sorted(lock["platforms"]) == ["linux/amd64", "linux/arm64"]
    # --locked accepts the same platforms only; the host's manifest is the image a plain build makes
    refused = repro("build", str(spec), "--store", str(tmp_path / "store"), "--locked", check=False)
    assert refused.returncode != 0 and "the lock for linux/amd64, linux/arm64" in refused.stderr
    repro("build", str(spec), "--store", str(tmp_path / "store"), "--locked", "--platform", "linux/amd64,linux/arm64")
    plain = json.loads(repro("build", str(spec), "--store", str(tmp_path / "plain"), "--json",
                             "--platform", "linux/amd64").stdout)
    assert plain["digest"] == index["manifests"][0]["digest"]
    again = repro("build", "--check", str(spec), "--platform", "linux/amd64,linux/arm64")
    assert f"reproducible: {built['digest']}" in again.stdout


def test_an_index_cannot_go_to_a_single_image_format(tmp_path):
    spec = _spec(tmp_path)
    proc = repro("build", str(spec), "--store", str(tmp_path / "store"), "--platform", "linux/amd64,linux/arm64",
                 "-o", f"docker-archive:{tmp_path / 'x.tar'}", check=False)
    assert proc.returncode != 0 and "holds one platform" in proc.stderr
    assert not (tmp_path / "x.tar").exists()
