"""repro diff: explains a crafted pair down to the field, and finds nothing between an image and
itself after a trip through another format (semantic mode)."""

from __future__ import annotations

import json

from tests.conftest import repro
from tests.imagekit import E, make_image


def test_diff_names_each_changed_field(tmp_path):
    common = [E("same", b"unchanged")]
    make_image(tmp_path / "a", "1", [[*common, E("when", b"t", mtime=1000), E("perm", b"p", mode=0o644),
                                      E("data", b"one")]])
    make_image(tmp_path / "b", "1", [[*common, E("when", b"t", mtime=2000), E("perm", b"p", mode=0o600),
                                      E("data", b"two")]])
    proc = repro("diff", "--json", f"oci:{tmp_path}/a:1", f"oci:{tmp_path}/b:1", check=False)
    assert proc.returncode == 1
    changes = {(d["path"], d["field"]) for d in json.loads(proc.stdout)["differences"] if d["what"] == "changed"}
    assert changes == {("when", "mtime"), ("perm", "mode"), ("data", "sha256")}
    text = repro("diff", f"oci:{tmp_path}/a:1", f"oci:{tmp_path}/b:1", check=False).stdout
    assert "changed when: mtime 1000 -> 2000" in text and "changed perm: mode 0644 -> 0600" in text


def test_semantic_diff_ignores_format_round_trips(busybox_layout, tmp_path):
    repro("convert", f"oci:{busybox_layout}:1", f"docker-archive:{tmp_path}/d.tar")
    repro("convert", f"docker-archive:{tmp_path}/d.tar", f"oci:{tmp_path}/back:1")
    strict = repro("diff", f"oci:{busybox_layout}:1", f"oci:{tmp_path}/back:1", check=False)
    assert strict.returncode == 1 and "manifest digest" in strict.stdout  # the layers are stored uncompressed now
    semantic = repro("diff", "--semantic", f"oci:{busybox_layout}:1", f"oci:{tmp_path}/back:1")
    assert semantic.returncode == 0 and "no differences" in semantic.stdout
    same = repro("diff", f"oci:{busybox_layout}:1", f"oci-archive:{tmp_path}/x.tar", check=False)
    assert same.returncode == 2  # a missing input is bad input, not a difference
