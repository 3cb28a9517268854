"""`bundle:DIR` writes an OCI runtime bundle that runc runs, as root and as a plain user, and whose
process matches what `umoci unpack` derives from the same image (other differences: converters/bundle.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_CONFIG, REPRO, busybox_layers, public_directory, repro, run
from tests.imagekit import make_image

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="module")
def public():
    with public_directory("repro-bundle-") as path:
        yield path


@pytest.fixture(scope="module")
def layout(public) -> Path:
    path = public / "layout"
    config = {**BUSYBOX_CONFIG, "User": "1000:100"}
    make_image(path, "1", busybox_layers(), config=BUSYBOX_CONFIG)
    make_image(path, "user", busybox_layers(), config=config)
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)
    return path


def test_runc_runs_the_bundle_as_root(layout, public):
    bundle = public / "root-bundle"
    repro("convert", f"oci:{layout}:1", f"bundle:{bundle}")
    proc = run("runc", "--root", str(public / "state"), "run", "--bundle", str(bundle), "repro-bundle-test",
               stdin=subprocess.DEVNULL)
    assert proc.stdout == "hello from repro\n"
    assert (bundle / "rootfs" / "srv" / "data.txt").stat().st_uid == 100000 + 1000  # ids shifted, as mapped


def test_the_process_matches_umoci(layout, public):
    ours, theirs = public / "ours", public / "umoci"
    repro("convert", f"oci:{layout}:user", f"bundle:{ours}")
    run("umoci", "unpack", "--image", f"{layout}:user", str(theirs))
    mine = json.loads((ours / "config.json").read_text())["process"]
    umoci = json.loads((theirs / "config.json").read_text())["process"]
    assert mine["args"] == umoci["args"] == ["/bin/sh", "-c", "cat /etc/motd"]
    assert mine["cwd"] == umoci["cwd"] == "/srv"
    assert mine["user"]["uid"] == umoci["user"]["uid"] == 1000 and mine["user"]["gid"] == umoci["user"]["gid"] == 100
    assert set(umoci["env"]) - {"TERM=xterm"} == set(mine["env"])  # no terminal, no TERM
    config = json.loads((ours / "config.json").read_text())
    assert {"type": "user"} in config["linux"]["namespaces"] and config["linux"]["uidMappings"][0]["hostID"] == 100000


def test_runc_runs_the_bundle_as_a_plain_user(layout, public):
    bundle = public / "user-bundle"
    env = {**os.environ, "HOME": str(public), "XDG_RUNTIME_DIR": str(public)}
    proc = subprocess.run([*NOBODY, REPRO, "convert", f"oci:{layout}:1", f"bundle:{bundle}"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*NOBODY, "runc", "--root", str(public / "user-state"), "run", "--bundle", str(bundle),
                           "repro-bundle-user"], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stdout == "hello from repro\n", proc.stderr
    mappings = json.loads((bundle / "config.json").read_text())["linux"]["uidMappings"]
    assert mappings == [{"containerID": 0, "hostID": 65534, "size": 1}]


def test_an_existing_directory_is_not_overwritten(layout, public):
    (public / "taken").mkdir()
    proc = repro("convert", f"oci:{layout}:1", f"bundle:{public / 'taken'}", check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr
